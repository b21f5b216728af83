"""A config dict as commented YAML: each key on its own line with the evidence for its value beside it.

PyYAML drops comments, so the file is emitted here line by line with YAML's own flow style for each value;
the text is parsed back and compared with the dict before anything is written.
"""

from __future__ import annotations

from typing import Any

import yaml

from comp.config import yaml_load

BLOCKS = ("layout", "mixup", "fields", "labels")  # nested mappings written as blocks, not inline
COLUMN = 44


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _line(indent: int, head: str, comment: str | None) -> str:
    text = " " * indent + head
    if comment:
        text = text.ljust(COLUMN) + "  # " + " ".join(comment.split())
    return text


def _mapping(obj: dict[str, Any], comments: dict[str, str], prefix: str, indent: int) -> list[str]:
    lines = []
    for key, value in obj.items():
        dotted = f"{prefix}{key}"
        note = comments.get(dotted)
        if isinstance(value, dict) and value and (indent == 0 or key in BLOCKS):
            lines.append(_line(indent, f"{key}:", note))
            lines += _mapping(value, comments, dotted + ".", indent + 2)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(_line(indent, f"{key}:", note))
            for i, item in enumerate(value):
                lines.append(_line(indent + 2, f"- {_flow(item)}", comments.get(f"{dotted}.{i}")))
        else:
            lines.append(_line(indent, f"{key}: {_flow(value)}", note))
    return lines


def to_yaml(obj: dict[str, Any], comments: dict[str, str], header: list[str]) -> str:
    """``obj`` as YAML with ``comments`` (dotted key -> text) beside the keys and ``header`` lines on top."""
    lines = [f"# {h}" if h else "#" for h in header]
    lines += _mapping(obj, comments, "", 0)
    text = "\n".join(lines) + "\n"
    if yaml_load(text) != obj:  # the emitter and the parser must agree, or the comments lied about a value
        raise AssertionError(f"comp init wrote YAML that does not read back as the config:\n{text}")
    return text
