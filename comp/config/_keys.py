"""Dotted config keys (``train.epochs``, ``models.0.lr``) set in a plain nested config dict."""

from __future__ import annotations

from typing import Any

from comp.errors import ConfigError, closest


def set_key(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` (or ``models.0.lr``) in a nested config dict; sections must exist, leaves may be new
    (validation names an unknown leaf with the closest valid key)."""
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"--set {dotted}: empty key part; write keys like train.epochs=3")
    node: Any = cfg
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[:i])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {dotted}: '{part}' is not an index of the {len(node)}-entry list '{where}'")
            if isinstance(node[int(part)], str):  # `- resnet18` shorthand
                node[int(part)] = {"name": node[int(part)]}
            node = node[int(part)]
        elif isinstance(node, dict):
            if node.get(part) is None and part in ("tune", "track") and i == 0:
                node[part] = {}
            if part not in node or not isinstance(node[part], (dict, list)):
                raise ConfigError(
                    f"--set {dotted}: unknown section '{'.'.join(parts[: i + 1])}'{closest(part, node.keys())}"
                )
            node = node[part]
        else:
            raise ConfigError(f"--set {dotted}: '{where}' is a value, not a section")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set {dotted}: '{last}' is not an index of the list")
        node[int(last)] = value
    else:
        node[last] = value
