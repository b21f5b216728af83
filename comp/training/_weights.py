"""Pretrained weights, online or not: where ``models[].pretrained`` finds them, checked before the first write.

- ``pretrained: true``: timm's own source. timm loads most weights from the Hugging Face hub through
  ``huggingface_hub``, which honours ``HF_HOME`` / ``HF_HUB_CACHE`` and, with ``HF_HUB_OFFLINE=1`` (Kaggle
  notebooks with the internet off), reads only that cache. ``check_hub_weights`` fetches or finds the file
  first, so a missing one is a one-line error saying where comp looked and how to make the folder.
- ``pretrained: PATH``: a weights file (``.safetensors``, ``.pth``, ``.pt``, ``.bin``) or a folder in the hub's
  layout (``config.json`` beside ``model.safetensors`` or ``pytorch_model.bin``: what timm's ``save_for_hf`` and
  ``comp weights`` write, and what weight datasets on Kaggle ship). Checked against the architecture.
- ``fetch_weights``: ``comp weights``: the hub folders of a config's models, ready to upload as a dataset.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import timm
import torch

from comp.errors import CompError

log = logging.getLogger(__name__)
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
HUB_FILES = ("model.safetensors", "pytorch_model.bin")
MAKE_FOLDER = (
    "where you have internet, run `comp weights --config CONFIG --out weights` and point models[].pretrained at "
    "weights/<model name> (or upload the folder as a dataset and point at its copy)"
)


def weights_file(path: str | Path, where: str = "models[].pretrained") -> tuple[Path, str | None]:
    """(the weights file, the architecture its folder's config.json names) of a ``pretrained: PATH``."""
    p = Path(path)
    if p.is_dir():
        found = [p / f for f in HUB_FILES if (p / f).is_file()]
        if not found:
            raise CompError(
                f"{where}: folder {p} holds no {' or '.join(HUB_FILES)}; give a weights file or a folder in the "
                f"Hugging Face layout; {MAKE_FOLDER}"
            )
        arch = None
        if (p / "config.json").is_file():
            try:
                arch = json.loads((p / "config.json").read_text()).get("architecture")
            except (OSError, ValueError, AttributeError):
                arch = None
        return found[0], arch
    if not p.is_file():
        raise CompError(
            f"{where}: pretrained weights {p} not found; set models[].pretrained to a file, a folder or true; {MAKE_FOLDER}"
        )
    if p.suffix.lower() not in WEIGHT_SUFFIXES:
        raise CompError(f"{where}: {p} is not a weights file ({', '.join(WEIGHT_SUFFIXES)}) or a weights folder")
    return p, None


def load_weights(path: Path) -> dict[str, Any]:
    """A state dict from a weights file (safetensors without pickle; torch files with ``weights_only``)."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read means the file is not weights
        raise CompError(
            f"pretrained weights file {path} cannot be read as weights ({type(exc).__name__}); save them with "
            "torch.save(model.state_dict(), path) or safetensors"
        ) from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state:
        raise CompError(
            f"pretrained weights file {path} holds no state dict; save torch.save(model.state_dict(), path)"
        )
    return state


def check_local_weights(path: str | Path, name: str, kwargs: dict[str, Any]) -> Path:
    """The weights file of ``pretrained: PATH`` after checking it fits architecture ``name`` (the classifier may
    differ: another class count); a CompError naming the file otherwise."""
    file, arch = weights_file(path)
    base = name.split(".")[0]
    if arch is not None and str(arch).split(".")[0] != base:
        raise CompError(
            f"pretrained weights folder {Path(path)} holds {arch!r} (its config.json), not '{base}'; "
            "point models[].pretrained at that architecture's weights"
        )
    state = load_weights(file)
    with torch.device("meta"):
        want = set(timm.create_model(base, pretrained=False, **kwargs).state_dict())
    have = {k.removeprefix("module.") for k in state}
    missing = want - have
    if len(missing) > max(4, 0.1 * len(want)):
        raise CompError(
            f"pretrained weights file {file} does not fit '{name}': {len(missing)} of {len(want)} tensors "
            f"missing (e.g. {sorted(missing)[0]!r}); give weights of that architecture"
        )
    return file


def hub_source(name: str) -> tuple[str, str | None]:
    """(kind, location) timm loads ``name``'s pretrained weights from: ('hf-hub', repo id) or ('url', url)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        raise CompError(f"timm has no pretrained weights for '{name}'; set pretrained: false or a weights file")
    if cfg.hf_hub_id:
        return "hf-hub", str(cfg.hf_hub_id)
    return "url", str(cfg.url) if cfg.url else None


def check_hub_weights(name: str) -> None:
    """Fetch (online) or find (offline, in the cache) ``name``'s pretrained weights before anything is written;
    one line saying where comp looked when they are not there."""
    kind, loc = hub_source(name)
    if kind == "url":
        if not loc:
            return
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(loc).name
        if cache.is_file():
            return
        try:
            from timm.models._hub import download_cached_file

            download_cached_file(loc)
        except Exception as exc:  # noqa: BLE001 - no network, a proxy, a dead URL: all mean "not here"
            raise CompError(
                f"pretrained weights for '{name}' are not in torch's cache ({cache}) and could not be downloaded "
                f"({type(exc).__name__}); {MAKE_FOLDER}"
            ) from None
        return
    from huggingface_hub import constants, hf_hub_download

    assert loc is not None
    errors = []
    for filename in HUB_FILES:
        try:
            hf_hub_download(loc, filename)
            return
        except Exception as exc:  # noqa: BLE001 - offline, not cached, no network: try the other file, then say so
            errors.append(type(exc).__name__)
    offline = " with HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else ""
    raise CompError(
        f"pretrained weights for '{name}' ({loc}) are not in the Hugging Face cache {constants.HF_HUB_CACHE}"
        f"{offline} and could not be downloaded ({', '.join(errors)}); {MAKE_FOLDER}"
    )


def fetch_weights(names: list[str], out: str | Path) -> list[Path]:
    """``comp weights``: each model's pretrained weights as a folder in the hub layout under ``out`` (config.json +
    model.safetensors, timm's ``save_for_hf``), plus a dataset-metadata.json for ``kaggle datasets create``."""
    from timm.models import save_for_hf

    out = Path(out)
    done = []
    for name in dict.fromkeys(names):
        check_hub_weights(name)  # downloads it (or says why not)
        model = timm.create_model(name, pretrained=True)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        save_for_hf(model, str(folder), safe_serialization=True)
        log.info("%s -> %s", name, folder)
        done.append(folder)
    meta = out / "dataset-metadata.json"
    if not meta.exists():  # what `kaggle datasets init` writes; the id is the user's to fill in
        meta.write_text(
            json.dumps(
                {
                    "title": "comp pretrained weights",
                    "id": "INSERT_USERNAME/comp-weights",
                    "licenses": [{"name": "other"}],
                },
                indent=2,
            )
            + "\n"
        )
    return done
