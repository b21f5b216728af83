"""The banded near-duplicate index finds exactly the exhaustive scan's pairs, including pairs at the threshold."""

from __future__ import annotations

import numpy as np
import pytest

from comp.diagnostics import _near
from comp.diagnostics._near import band_masks, exhaustive_pairs, near_pairs, plan


def _flip(h: np.ndarray, bits) -> np.ndarray:
    out = h.copy()
    for b in bits:
        out ^= np.uint64(1) << np.uint64(b)
    return out


def _adversarial(rng: np.random.Generator, n: int, threshold: int) -> np.ndarray:
    """Random hashes plus, for many of them, partners at distances threshold - 1, threshold and threshold + 1,
    with the flipped bits spread one per band (only one band left untouched), on band edges, or in one band;
    and a cluster of identical hashes (one large bucket in every band)."""
    base = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)
    masks = band_masks(threshold)
    edges = [int(m).bit_length() for m in masks]  # one past each band's highest bit
    lows = [0, *edges[:-1]]
    extra = []
    for k in range(min(n, 400)):
        h = base[k : k + 1]
        for d in (max(threshold - 1, 0), threshold, threshold + 1):
            skip = rng.integers(len(masks))  # spread: one flipped bit in every band but one
            spread = [int(rng.integers(lo, hi)) for b, (lo, hi) in enumerate(zip(lows, edges)) if b != skip][:d]
            edge = sorted({*lows[1:], *[e - 1 for e in edges]})[:d]  # bits at band boundaries
            wide = [
                (int(m).bit_length() - bin(int(m)).count("1"), int(m).bit_length())
                for m in band_masks(threshold, plan(threshold, 10**6, 10**6)[0])
            ]
            probe = [int(rng.integers(lo, hi)) for lo, hi in (wide * (d + 1))[:d]]  # round robin over the probed bands
            extra += [
                _flip(h, spread),
                _flip(h, edge),
                _flip(h, probe),
                _flip(h, rng.choice(64, size=min(d, 64), replace=False)),
            ]
    extra.append(np.repeat(base[:1], 60))
    out = np.concatenate([base, *extra])
    return out[rng.permutation(len(out))]


@pytest.mark.parametrize("threshold", [0, 2, 5, 9, 13])
def test_banded_pairs_equal_the_exhaustive_scan(threshold):
    rng = np.random.default_rng(threshold)
    a = _adversarial(rng, 2000, threshold)
    b = np.concatenate([a[rng.choice(len(a), 500, replace=False)], _adversarial(rng, 300, threshold)])
    for x, y, same in ((a, a, True), (a, b, False)):
        ref = exhaustive_pairs(x, y, threshold, same)
        ref = ref[np.lexsort((ref[:, 1], ref[:, 0]))]
        got = near_pairs(x, y, threshold, same)
        assert len(ref) > 100  # the adversarial partners are there to be found
        assert (ref[:, 2] == threshold).any()  # including pairs exactly at the threshold
        np.testing.assert_array_equal(got, ref)
        if same:
            assert (got[:, 0] < got[:, 1]).all()


def test_buckets_larger_than_a_chunk_are_split_not_dropped(monkeypatch):
    monkeypatch.setattr(_near, "CHUNK", 97)  # every bucket of the identical cluster spans several chunks
    rng = np.random.default_rng(1)
    a = np.concatenate([np.repeat(np.uint64(12345), 50), rng.integers(0, 2**63, 300, dtype=np.uint64)])
    b = np.concatenate([np.repeat(np.uint64(12345 ^ 6), 30), a[:40]])
    for x, y, same in ((a, a, True), (a, b, False)):
        ref = exhaustive_pairs(x, y, 3, same)
        np.testing.assert_array_equal(near_pairs(x, y, 3, same), ref[np.lexsort((ref[:, 1], ref[:, 0]))])
    assert len(near_pairs(a, a, 3, True)) >= 50 * 49 // 2


def test_bands_cover_every_bit_once():
    for t in range(0, 13):
        masks = band_masks(t)
        assert len(masks) == t + 1
        total = np.uint64(0)
        for m in masks:
            assert int(total) & int(m) == 0
            total |= m
        assert int(total) == 2**64 - 1
        widths = [bin(int(m)).count("1") for m in masks]
        assert max(widths) - min(widths) <= 1


def test_empty_inputs_give_no_pairs():
    h = np.array([1, 2, 3], dtype=np.uint64)
    assert near_pairs(h[:0], h, 5, same=False).shape == (0, 3)
    assert near_pairs(h[:1], h[:1], 5, same=True).shape == (0, 3)


@pytest.mark.parametrize(
    ("threshold", "bands"),
    [(5, 3), (3, 4), *(pytest.param(t, m, marks=pytest.mark.slow) for t, m in ((5, 2), (4, 2), (8, 3)))],
)
def test_wide_bands_probed_within_a_radius_find_the_same_pairs(monkeypatch, threshold, bands):
    """The plan a large set gets (few wide bands, each probed with every key a bit or two away), forced on a
    small one, against the exhaustive scan."""
    monkeypatch.setattr(_near, "plan", lambda t, n_a, n_b: (bands, t // bands))
    rng = np.random.default_rng(bands)
    a = _adversarial(rng, 1500, threshold)
    b = np.concatenate([a[rng.choice(len(a), 300, replace=False)], _adversarial(rng, 200, threshold)])
    for x, y, same in ((a, a, True), (a, b, False)):
        ref = exhaustive_pairs(x, y, threshold, same)
        assert (ref[:, 2] == threshold).any()
        np.testing.assert_array_equal(near_pairs(x, y, threshold, same), ref[np.lexsort((ref[:, 1], ref[:, 0]))])
