"""Near-duplicate pairs among 64-bit hashes: every pair within a Hamming distance, without comparing every pair.

The banded index (multi-index hashing): split the 64 bits into ``threshold + 1`` bands. Two hashes that differ in
at most ``threshold`` bits leave at least one band untouched (pigeonhole), so they share that band's value
exactly. Only pairs that share a band value are compared, and a pair is counted in the first band it shares, so
each appears once. The pairs are exactly the exhaustive scan's; on random-looking hashes the candidates are a
fraction ``(threshold + 1) / 2**(64 / (threshold + 1))`` of all pairs (1/300 at the default threshold 5).
No library we depend on does this for uint64 hashes with an exact guarantee, hence this module.
"""

from __future__ import annotations

import numpy as np

POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
CHUNK = 1 << 20  # candidate pairs compared per vectorised step: ~60 MB of temporaries
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


def band_masks(threshold: int) -> list[np.uint64]:
    """``threshold + 1`` contiguous bit masks covering 64 bits, widths differing by at most one."""
    n = threshold + 1
    edges = [round(64 * k / n) for k in range(n + 1)]
    return [np.uint64(((1 << (hi - lo)) - 1) << lo) for lo, hi in zip(edges[:-1], edges[1:])]


def near_pairs(a: np.ndarray, b: np.ndarray, threshold: int, same: bool, progress=None) -> np.ndarray:
    """(i, j, distance) rows, sorted, of every pair with Hamming distance <= threshold; ``same`` keeps i < j
    (``a`` and ``b`` are one set). ``progress`` (a :class:`comp._progress.Progress`) advances once per band."""
    a = np.ascontiguousarray(a, dtype=np.uint64)
    b = np.ascontiguousarray(b, dtype=np.uint64)
    if len(a) == 0 or len(b) == 0 or threshold < 0:
        return np.empty((0, 3), dtype=np.int64)
    if threshold > MAX_BANDED:
        return exhaustive_pairs(a, b, threshold, same)
    masks = band_masks(threshold)
    out = []
    for k, mask in enumerate(masks):
        earlier = masks[:k]
        for ia, ib in _shared(a & mask, b & mask, same):
            x = a[ia] ^ b[ib]
            first = np.ones(len(x), dtype=bool)  # the pair is counted in the first band it shares
            for m in earlier:
                first &= (x & m) != 0
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


def _shared(ka: np.ndarray, kb: np.ndarray, same: bool):
    """Yield (ia, ib) index arrays, about CHUNK pairs at a time, of every pair with ka[ia] == kb[ib]
    (``same``: ka is kb, and only ia < ib, each pair once)."""
    oa, ua, sa, ca = _runs(ka)
    n = len(ka)
    run_of = np.repeat(np.arange(len(ca)), ca)  # each row of a, in sorted order: the run of its key
    if same:  # a row's partners: the rows after it in its own run
        ob = oa
        start = np.arange(n) + 1
        count = ca[run_of] - 1 - (np.arange(n) - sa[run_of])
    else:  # a row's partners: the whole run of its key in b, if b has that key
        ob, ub, sb, cb = _runs(kb)
        at = np.minimum(np.searchsorted(ub, ua), max(len(ub) - 1, 0))
        hit = (ub[at] == ua) if len(ub) else np.zeros(len(ua), dtype=bool)
        start = np.where(hit, sb[at], 0)[run_of]
        count = np.where(hit, cb[at], 0)[run_of]
    rows = np.flatnonzero(count > 0)
    start, count = start[rows], count[rows]
    group = (np.cumsum(count) - count) // CHUNK  # consecutive rows, about CHUNK pairs per group
    edges = np.r_[0, np.flatnonzero(np.diff(group)) + 1, len(rows)]
    for lo, hi in zip(edges[:-1], edges[1:]):
        c = count[lo:hi]
        rep = np.repeat(np.arange(lo, hi), c)
        off = np.arange(len(rep)) - np.repeat(np.cumsum(c) - c, c)
        yield oa[rows[rep]], ob[start[rep] + off]
