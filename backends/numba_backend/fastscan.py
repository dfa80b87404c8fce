r"""Fast scan (André et al., VLDB 2015; FAISS's ``IndexPQFastScan``) as Numba kernels.

Mirrors :func:`polarquant.backends.numpy_backend.fastscan_sums` and
:func:`~polarquant.backends.numpy_backend.fastscan_topk`, which compose the reference of
:mod:`polarquant.fastscan` (read it first: the nibble tables, the block layout, the keys).
Same signatures, same checks in the same order (:mod:`polarquant.backends._checks`);
``tests/test_fastscan_kernels.py`` holds every variant the test machine can run to the
reference bit for bit.

=========================  ===================  ==========================================  =================
kernel                     reference            per block of 32 vectors                     differs
=========================  ===================  ==========================================  =================
``sums_kernel(v)``         ``fastscan_sums``    ``_simd.group_sums`` over each group of     never (integers)
                                                128 bytes (``uint16``), added in
                                                ``uint32``
``topk_kernel(v, group)``  ``fastscan_topk``    ``_simd.block_keys``: the sums, the 32      which of equal
                                                keys ``scale (S + bias) + weight shift``    keys is kept
                                                (float32 registers, the reference's
                                                operations in its order) and their
                                                comparison with each query's running
                                                ``c``-th best; only lanes above it reach
                                                the heap of their query and chunk
=========================  ===================  ==========================================  =================

``v`` is the instruction-set variant of :mod:`._simd`, chosen in Python from the compilation
target before any kernel is compiled (one compiled kernel per variant, cached on disk).
Several queries are taken four at a time (``group`` = ``QUERY_GROUP``, their number padded
with zero tables whose heaps are dropped), so that each load of a block's codes serves four
tables (the prototype measured 1.6 ms per query in a batch of 32 against 2.6 ms alone, 1M x
128); one query has its own, smaller kernel (``group`` = 1), so that its first search compiles
only that.  The last block's per-vector arrays are copied to 32 padded lanes (NaN keys: never
kept).  The ``scalar`` variant computes the same sums with plain loops (:func:`_block_sums`).
Parallelism: ``prange`` over contiguous chunks of blocks, one heap per query and chunk, merged
by the entry point.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from polarquant.fastscan import BLOCK

from .._checks import check_fastscan
from ._common import _chunk, _kernel, _numpy, _readonly
from ._simd import block_keys, group_sums, variant, variant_code

__all__ = ["fastscan_sums", "fastscan_topk", "register_tables"]

#: Queries that share one load of a block's codes.
QUERY_GROUP = 4
#: Code bytes of the tile of blocks scanned for every group of queries in turn (the tile stays
#: in the L1/L2 cache while the groups' tables take their turns).
TILE_BYTES = 1 << 14


# -- entry points ---------------------------------------------------------------------------------
def fastscan_sums(plan, tq, blocks, n):
    """``uint32 (nq, n)`` integer sums of the byte tables over the codes (the reference's)."""
    _numpy(tq, "byte tables")
    _numpy(blocks, "fast-scan blocks")
    n = check_fastscan(plan, tq, blocks, n)
    out = np.empty((tq.shape[0], n), dtype=np.uint32)
    if n and tq.shape[0]:
        sums_kernel(variant())(register_tables(tq), _contiguous(blocks), n, _groups(plan), out)
    return out


def fastscan_topk(plan, tq, blocks, n, c, bias, scale, shift=None, weight=None):
    """The ``c`` largest keys ``scale (S + bias) + weight shift`` per query and their positions,
    largest first: ``(keys float32 (nq, c), positions int64 (nq, c))``, ``c <= n``."""
    _numpy(tq, "byte tables")
    _numpy(blocks, "fast-scan blocks")
    n, c, bias, scale, shift, weight = check_fastscan(
        plan, tq, blocks, n, c, bias, scale, shift, weight
    )
    nq = tq.shape[0]
    if c == 0 or nq == 0:
        return np.empty((nq, c), np.float32), np.empty((nq, c), np.int64)
    if shift is None:  # a zero weight on the scale itself: one compiled kernel for both forms
        shift, weight = scale, np.zeros(nq, np.float32)
    group = 1 if nq == 1 else QUERY_GROUP
    padded = -(-nq // group) * group  # extra queries of zero tables, their heaps dropped
    luts = register_tables(tq)
    if padded > nq:
        more = padded - nq
        luts = np.concatenate([luts, np.zeros((more, *luts.shape[1:]), np.uint8)])
        bias = np.concatenate([bias, np.zeros(more, np.float32)])
        weight = np.concatenate([weight, np.zeros(more, np.float32)])
    nchunks = max(1, min(blocks.shape[0], numba.get_num_threads()))
    heap_keys = np.full((padded, nchunks, c), -np.inf, dtype=np.float32)
    heap_pos = np.full((padded, nchunks, c), -1, dtype=np.int64)
    topk_kernel(variant(), group)(
        luts,
        _contiguous(blocks),
        n,
        _contiguous(bias),
        _contiguous(scale),
        _contiguous(shift),
        _contiguous(weight),
        _groups(plan),
        heap_keys,
        heap_pos,
    )
    return _merge(heap_keys[:nq].reshape(nq, -1), heap_pos[:nq].reshape(nq, -1), c)


def _contiguous(a: np.ndarray) -> np.ndarray:
    """``a`` C-contiguous and read-only: the SIMD kernels read their arguments' raw memory at
    flat offsets, so a strided view (Fortran order, a slice with a step) must be copied."""
    return _readonly(np.ascontiguousarray(a))


def register_tables(tq) -> np.ndarray:
    """Byte tables ``(nq, nibbles, 16)`` -> ``(nq, 2, nbytes, 32)``: for byte ``j`` of a vector,
    the table of its high nibble (``2 j``) and of its low nibble (``2 j + 1``), each twice (one
    copy per 16-byte lane of a 32-byte register)."""
    high, low = tq[:, 0::2, :], tq[:, 1::2, :]
    return np.ascontiguousarray(
        np.stack([np.concatenate([t, t], axis=-1) for t in (high, low)], axis=1)
    )


def _groups(plan) -> np.ndarray:
    return _readonly(np.array(plan.groups, dtype=np.int64).reshape(-1, 2))


def _merge(keys, positions, c):
    """The ``c`` best of the chunks' heaps, largest key first, equal keys by position."""
    order = np.lexsort((positions, -keys), axis=1)[:, :c]
    return np.take_along_axis(keys, order, axis=1), np.take_along_axis(positions, order, axis=1)


# -- kernels --------------------------------------------------------------------------------------
_SUMS: dict = {}
_TOPK: dict = {}


def sums_kernel(name: str):
    """``sums_kernel(variant)(luts, blocks, n, groups, out)``: ``out[q, i]`` the uint32 sum of
    vector ``i`` (compiled once per variant)."""
    if name not in _SUMS:
        _SUMS[name] = _make_sums(variant_code(name))
    return _SUMS[name]


def topk_kernel(name: str, group: int = QUERY_GROUP):
    """``topk_kernel(variant, group)(luts, blocks, n, bias, scale, shift, weight, groups,
    heap_keys, heap_pos)``: per query and chunk of blocks, the ``c`` largest keys in a min-heap;
    queries ``group`` at a time (1, or ``QUERY_GROUP``: then their number must be a
    multiple of it).  One compiled kernel per variant and group, so that a first single-query
    search compiles only the small one."""
    key = (name, group)
    if key not in _TOPK:
        _TOPK[key] = _make_topk(variant_code(name), group)
    return _TOPK[key]


@_kernel(inline="always")
def _block_sums(WHICH, blocks, b, luts, q0, qb, groups, part, acc):
    """``acc[t, v]`` = the uint32 sums of the 32 vectors of block ``b`` for queries ``q0 + t``,
    ``t < qb``: ``group_sums`` per group of bytes (``QUERY_GROUP`` queries per load when
    ``qb`` is that many), or plain loops for the scalar variant (``WHICH == 0``)."""
    for t in range(qb):
        for v in range(BLOCK):
            acc[t, v] = 0
    nbytes = blocks.shape[1]
    if WHICH == 0:
        for t in range(qb):
            for j in range(nbytes):
                for v in range(BLOCK):
                    byte = blocks[b, j, v]
                    acc[t, v] += luts[q0 + t, 0, j, byte >> 4] + luts[q0 + t, 1, j, byte & 15]
        return
    start = b * nbytes * BLOCK
    for g in range(groups.shape[0]):
        if qb == 4:
            group_sums(WHICH, 4, blocks, start, luts, q0, groups[g, 0], groups[g, 1], part)
            for t in range(4):
                for v in range(BLOCK):
                    acc[t, v] += part[t, v]
        else:
            for t in range(qb):
                group_sums(WHICH, 1, blocks, start, luts, q0 + t, groups[g, 0], groups[g, 1], part)
                for v in range(BLOCK):
                    acc[t, v] += part[0, v]


def _make_sums(WHICH):
    @_kernel(parallel=True, boundscheck=False)
    def kernel(luts, blocks, n, groups, out):
        nq = luts.shape[0]
        nblocks = blocks.shape[0]
        nchunks = min(nblocks, 64)
        for ch in prange(nchunks):
            part = np.empty((4, BLOCK), np.uint16)
            acc = np.empty((4, BLOCK), np.uint32)
            start, stop = _chunk(nblocks, nchunks, ch)
            for b in range(start, stop):
                lanes = min(BLOCK, n - b * BLOCK)
                for q0 in range(0, nq, 4):
                    qb = min(4, nq - q0)
                    _block_sums(WHICH, blocks, b, luts, q0, qb, groups, part, acc)
                    for t in range(qb):
                        for v in range(lanes):
                            out[q0 + t, b * BLOCK + v] = acc[t, v]

    return kernel


@_kernel(inline="always")
def _push(keys, positions, key, position):
    """Replace the root of the min-heap ``keys`` (with ``positions``) by ``key`` and sift down."""
    c = keys.shape[0]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= c:
            break
        if child + 1 < c and keys[child + 1] < keys[child]:
            child += 1
        if keys[child] >= key:
            break
        keys[i] = keys[child]
        positions[i] = positions[child]
        i = child
    keys[i] = key
    positions[i] = position


def _make_topk(WHICH, QB):
    if WHICH == 0:
        return _make_topk_scalar()

    @_kernel(parallel=True, boundscheck=False)
    def kernel(luts, blocks, n, bias, scale, shift, weight, groups, heap_keys, heap_pos):
        nq = luts.shape[0]
        nblocks = blocks.shape[0]
        nbytes = blocks.shape[1]
        nchunks = heap_keys.shape[1]
        for ch in prange(nchunks):
            keys = np.empty((QB, BLOCK), np.float32)
            limits = np.empty(QB, np.float32)
            tail_scale = np.zeros(BLOCK, np.float32)
            tail_shift = np.full(BLOCK, np.nan, np.float32)  # padding lanes: NaN keys, never kept
            start, stop = _chunk(nblocks, nchunks, ch)
            tile = max(1, TILE_BYTES // (nbytes * BLOCK))
            for t0 in range(start, stop, tile):  # a tile of blocks stays in cache for all queries
                for q0 in range(0, nq, QB):
                    for t in range(QB):
                        limits[t] = heap_keys[q0 + t, ch, 0]
                    for b in range(t0, min(stop, t0 + tile)):
                        base = b * BLOCK
                        lanes = min(BLOCK, n - base)
                        sc, sh, at = scale, shift, base
                        if lanes < BLOCK:  # the last block: per-vector arrays padded to 32 lanes
                            for v in range(lanes):
                                tail_scale[v] = scale[base + v]
                                tail_shift[v] = shift[base + v]
                            sc, sh, at = tail_scale, tail_shift, 0
                        start_byte = b * nbytes * BLOCK
                        mask = block_keys(
                            WHICH, QB, blocks, start_byte, luts, q0, groups, sc, sh, at, bias,
                            weight, limits, keys,
                        )  # fmt: skip
                        if mask != 0:
                            for t in range(QB):
                                hk = heap_keys[q0 + t, ch]
                                _offer(hk, heap_pos[q0 + t, ch], keys[t], mask, base)
                                limits[t] = hk[0]

    return kernel


def _make_topk_scalar():
    @_kernel(parallel=True, boundscheck=False)
    def kernel(luts, blocks, n, bias, scale, shift, weight, groups, heap_keys, heap_pos):
        nq = luts.shape[0]
        nblocks = blocks.shape[0]
        nchunks = heap_keys.shape[1]
        for ch in prange(nchunks):
            part = np.empty((4, BLOCK), np.uint16)
            acc = np.empty((4, BLOCK), np.uint32)
            start, stop = _chunk(nblocks, nchunks, ch)
            for b in range(start, stop):
                base = b * BLOCK
                lanes = min(BLOCK, n - base)
                for q0 in range(0, nq, 4):
                    qb = min(4, nq - q0)
                    _block_sums(0, blocks, b, luts, q0, qb, groups, part, acc)
                    for t in range(qb):
                        q = q0 + t
                        hk = heap_keys[q, ch]
                        hp = heap_pos[q, ch]
                        for v in range(lanes):
                            key = scale[base + v] * (np.float32(acc[t, v]) + bias[q])
                            key = key + weight[q] * shift[base + v]
                            if key > hk[0] and key < np.inf:  # not finite: no candidate
                                _push(hk, hp, key, base + v)

    return kernel


@_kernel(inline="always")
def _offer(hk, hp, keys, mask, base):
    """Push the lanes of ``mask`` whose finite key beats the heap's minimum (re-checked: the
    mask may hold other queries' lanes, and the minimum rises as lanes are pushed)."""
    for v in range(BLOCK):
        if (mask >> v) & 1 and keys[v] > hk[0] and keys[v] < np.inf:  # not finite: no candidate
            _push(hk, hp, keys[v], base + v)
