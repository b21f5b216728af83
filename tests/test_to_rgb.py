"""comp's RGB reader and the standalone bundle script's copy of it (which cannot import comp) agree on every mode."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comp.data._table import to_rgb

SCRIPT = Path(__file__).resolve().parents[1] / "comp" / "inference" / "bundle_predict.py"
SIZE = (13, 7)


def _script_to_rgb():
    spec = importlib.util.spec_from_file_location("bundle_predict_for_rgb", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module.to_rgb


script_to_rgb = _script_to_rgb()


def image(mode: str) -> Image.Image:
    """A seeded image of ``mode``, with the full value range of 16-bit and float modes and some transparency."""
    rng = np.random.default_rng(sum(map(ord, mode)))
    if mode.startswith("I;16"):
        arr = rng.integers(0, 65536, SIZE[::-1]).astype(np.uint16)
        return Image.frombytes(mode, SIZE, arr.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    if mode == "I":
        return Image.fromarray(rng.integers(-10, 70000, SIZE[::-1]).astype(np.int32), "I")
    if mode == "F":
        return Image.fromarray(rng.uniform(-5, 400, SIZE[::-1]).astype(np.float32), "F")
    rgba = Image.fromarray(rng.integers(0, 256, (*SIZE[::-1], 4), dtype=np.uint8), "RGBA")
    if mode == "P":
        pal = rgba.convert("RGB").quantize(12)
        pal.info["transparency"] = 3
        return pal
    return rgba.convert(mode)


MODES = [m for m in Image.MODES if m != "I;16N"]  # I;16N is the platform's native byte order of I;16 or I;16B


@pytest.mark.parametrize("mode", [*MODES, "P-opaque"])
def test_bundle_script_reads_every_mode_like_comp(mode):
    im = image(mode) if mode != "P-opaque" else image("RGB").quantize(12)
    assert im.mode == mode.split("-")[0]
    try:
        ours = to_rgb(im)
    except ValueError as exc:  # a mode Pillow cannot convert (La): the script fails the same way
        with pytest.raises(type(exc)):
            script_to_rgb(im)
        return
    theirs = script_to_rgb(im)
    assert ours.dtype == theirs.dtype == np.uint8 and ours.shape == (SIZE[1], SIZE[0], 3)
    np.testing.assert_array_equal(ours, theirs)
