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


def _frombytes(mode: str, arr: np.ndarray) -> Image.Image:
    return (
        Image.frombytes(mode, arr.shape[::-1], arr.astype("<u2").tobytes())
        if mode.startswith("I;16")
        else Image.fromarray(arr, mode)
    )


@pytest.mark.parametrize(
    "mode, values, want",
    [
        ("F", np.array([[0.0, 0.5, 1.0, 2.0]], np.float32), [0, 128, 255, 255]),  # 0..1; above clips
        ("F", np.array([[0.1, 0.2, 0.3, 0.4]], np.float32), [26, 51, 77, 102]),  # a dim float image is not black
        ("F", np.array([[-1.0, np.nan, 0.25, 1.0]], np.float32), [0, 0, 64, 255]),
        ("I", np.array([[0, 200, 32768, 65535]], np.int32), [0, 1, 128, 255]),  # 16-bit data, even when all <= 255
        ("I", np.array([[-5, 70000, 255, 257]], np.int32), [0, 255, 1, 1]),
        ("I;16", np.array([[0, 200, 32768, 65535]], np.uint16), [0, 1, 128, 255]),
    ],
    ids=["F", "F-dim", "F-nan-negative", "I", "I-outside", "I;16"],
)
def test_the_scale_follows_the_mode_not_the_pixels(mode, values, want):
    im = _frombytes(mode, values)
    assert im.mode == mode
    for read in (to_rgb, script_to_rgb):
        got = read(im)
        assert got.shape == (1, 4, 3) and list(got[0, :, 0]) == want, (read.__module__, list(got[0, :, 0]))


def test_one_data_set_one_scale():
    """Two 16-bit images of one data set, one dark (max 200) and one bright: the same value reads the same."""
    dark = Image.fromarray(np.array([[100, 200]], np.int32), "I")
    bright = Image.fromarray(np.array([[100, 60000]], np.int32), "I")
    assert to_rgb(dark)[0, 0, 0] == to_rgb(bright)[0, 0, 0]
