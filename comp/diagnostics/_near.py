"""Near-duplicate pairs among 64-bit hashes: every pair within a Hamming distance, without comparing every pair.

The banded index (multi-index hashing): split the 64 bits into ``threshold + 1`` bands. Two hashes that differ in
at most ``threshold`` bits leave at least one band untouched (pigeonhole), so they share that band's value
exactly. Only pairs that share a band value are compared, and a pair is counted in the first band it shares, so
each appears once. The pairs are exactly the exhaustive scan's; on random-looking hashes the candidates are a
fraction ``(threshold + 1) / 2**(64 / (threshold + 1))`` of all pairs (1/300 at the default threshold 5).
No library we depend on does this for uint64 hashes with an exact guarantee, hence this module.
"""

from __future__ import annotations

import math

import numpy as np

POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
CHUNK = 1 << 20  # candidate pairs compared per vectorised step: ~60 MB of temporaries
PROBE_COST = 10  # one probe of a hash against a sorted band, in candidate comparisons (measured roughly)
MAX_BANDED = 12  # above this threshold the bands are too narrow to prune: compare every pair


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2: a hardware popcount, ~10x the lookup table below
        return np.bitwise_count(x).astype(np.int64)
    return POPCOUNT[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1).astype(np.int64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between two uint64 hash vectors -> (len(a), len(b))."""
    return popcount(np.bitwise_xor(a[:, None], b[None, :]))


def exhaustive_pairs(a: np.ndarray, b: np.ndarray, threshold: int, same: bool, chunk: int = 512) -> np.ndarray:
    """(i, j, distance) rows with distance <= threshold, comparing every pair; ``same`` keeps i < j."""
    out = []
    for s in range(0, len(a), chunk):
        d = hamming(a[s : s + chunk], b)
        ii, jj = np.nonzero(d <= threshold)
        ii = ii + s
        if same:
            keep = ii < jj
            ii, jj = ii[keep], jj[keep]
        out.append(np.stack([ii, jj, d[ii - s, jj]], axis=1))
    return _rows(out)


def band_masks(threshold: int, bands: int | None = None) -> list[np.uint64]:
    """``bands`` (default ``threshold + 1``) contiguous bit masks covering 64 bits, widths differing by at most
    one."""
    n = threshold + 1 if bands is None else bands
    edges = [round(64 * k / n) for k in range(n + 1)]
    return [np.uint64(((1 << (hi - lo)) - 1) << lo) for lo, hi in zip(edges[:-1], edges[1:])]


def plan(threshold: int, n_a: int, n_b: int) -> tuple[int, int]:
    """(bands, radius) for ``n_a`` by ``n_b`` hashes: two hashes within ``threshold`` differ by at most
    ``radius = threshold // bands`` bits in some band. Narrow bands probed exactly (radius 0) cost little per
    hash but their buckets grow with n (candidates ~ n^2 / 2^width); wide bands probed with every key one or
    two bits away cost more per hash and stay near-linear. The cheaper of the two by a rough count wins."""
    best: tuple[float, int, int] | None = None
    for bands in range(1, threshold + 2):
        radius, width = threshold // bands, 64 // bands
        probes = bands * sum(math.comb(width, i) for i in range(radius + 1))
        cost = PROBE_COST * probes * (n_a + n_b) + probes * n_a * n_b / 2.0**width
        if best is None or cost < best[0]:
            best = (cost, bands, radius)
    assert best is not None
    return best[1], best[2]


def _flips(mask: np.uint64, radius: int) -> list[np.uint64]:
    """Every pattern of at most ``radius`` set bits inside ``mask`` (the empty one first)."""
    from itertools import combinations

    bits = [np.uint64(1) << np.uint64(i) for i in range(64) if int(mask) >> i & 1]
    out = [np.uint64(0)]
    for r in range(1, radius + 1):
        for combo in combinations(bits, r):
            v = np.uint64(0)
            for bit in combo:
                v |= bit
            out.append(v)
    return out


def near_pairs(a: np.ndarray, b: np.ndarray, threshold: int, same: bool, progress=None) -> np.ndarray:
    """(i, j, distance) rows, sorted, of every pair with Hamming distance <= threshold; ``same`` keeps i < j
    (``a`` and ``b`` are one set). ``progress`` (a :class:`comp._progress.Progress`) advances once per band.

    With m bands, two hashes within ``threshold`` differ in at most ``threshold // m`` bits of some band
    (pigeonhole); each band is probed with every key within that many bits of a hash's own, and a pair is
    counted in the first band where it is that close."""
    a = np.ascontiguousarray(a, dtype=np.uint64)
    b = np.ascontiguousarray(b, dtype=np.uint64)
    if len(a) == 0 or len(b) == 0 or threshold < 0:
        return np.empty((0, 3), dtype=np.int64)
    if threshold > MAX_BANDED:
        return exhaustive_pairs(a, b, threshold, same)
    bands, radius = plan(threshold, len(a), len(b))
    masks = band_masks(threshold, bands)
    out = []
    for k, mask in enumerate(masks):
        earlier = masks[:k]
        kb = b & mask
        b_runs = _runs(kb)  # b's band sorted once, probed by every flip
        for f, flip in enumerate(_flips(mask, radius)):
            # the empty flip within one set pairs each bucket with itself; any other is a probe of b by a
            pairs = _shared(a & mask, kb, True) if same and f == 0 else _shared((a & mask) ^ flip, kb, False, b_runs)
            for ia, ib in pairs:
                if same and f:
                    keep = ia < ib  # the pair (j, i) is found by the same flip from j
                    ia, ib = ia[keep], ib[keep]
                x = a[ia] ^ b[ib]
                first = np.ones(len(x), dtype=bool)  # the pair is counted in the first band close enough
                for m in earlier:
                    first &= popcount(x & m) > radius
                d = popcount(x)
                keep = first & (d <= threshold)
                out.append(np.stack([ia[keep], ib[keep], d[keep]], axis=1))
        if progress is not None:
            progress.update(1)
    rows = _rows(out)
    return rows[np.lexsort((rows[:, 1], rows[:, 0]))]


def _rows(parts: list[np.ndarray]) -> np.ndarray:
    parts = [p for p in parts if len(p)]
    return np.concatenate(parts).astype(np.int64) if parts else np.empty((0, 3), dtype=np.int64)


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stable sort order, and per distinct key: the key, its first position in that order, its count."""
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    counts = np.diff(np.r_[starts, len(ks)])
    return order, ks[starts], starts, counts


def _shared(ka: np.ndarray, kb: np.ndarray, same: bool, b_runs=None):
    """Yield (ia, ib) index arrays, about CHUNK pairs at a time, of every pair with ka[ia] == kb[ib]
    (``same``: ka is kb, and only ia < ib, each pair once). ``b_runs``: ``_runs(kb)`` when already known."""
    n = len(ka)
    if same:  # a row's partners: the rows after it in its own run (rows in sorted order)
        oa, _, sa, ca = _runs(ka)
        run_of = np.repeat(np.arange(len(ca)), ca)
        ob, rows_a = oa, oa
        start = np.arange(n) + 1
        count = ca[run_of] - 1 - (np.arange(n) - sa[run_of])
    else:  # a row's partners: the whole run of its key in b, if b has that key
        ob, ub, sb, cb = b_runs if b_runs is not None else _runs(kb)
        at = np.minimum(np.searchsorted(ub, ka), len(ub) - 1)
        hit = ub[at] == ka
        rows_a = np.arange(n)
        start, count = np.where(hit, sb[at], 0), np.where(hit, cb[at], 0)
    rows = np.flatnonzero(count > 0)
    start, count = start[rows], count[rows]
    group = (np.cumsum(count) - count) // CHUNK  # consecutive rows, about CHUNK pairs per group
    edges = np.r_[0, np.flatnonzero(np.diff(group)) + 1, len(rows)]
    for lo, hi in zip(edges[:-1], edges[1:]):
        c = count[lo:hi]
        rep = np.repeat(np.arange(lo, hi), c)
        off = np.arange(len(rep)) - np.repeat(np.cumsum(c) - c, c)
        yield rows_a[rows[rep]], ob[start[rep] + off]
