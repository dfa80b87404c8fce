"""Fast scan on the GPU (André et al., VLDB 2015): the entry points of ``fastscan.cu``.

Mirrors :func:`polarquant.backends.numpy_backend.fastscan_sums` and ``fastscan_topk``: same
signatures, same checks in the same order (:func:`polarquant.backends._checks.check_fastscan`),
same results.  A query's byte tables (``2 nbytes x 16`` bytes) are staged in shared memory by
every block; a thread sums one vector's lookups, the 32 lanes of a warp reading one byte of 32
vectors side by side (the block layout of :mod:`polarquant.fastscan`).  ``fastscan_topk``
writes every key (``nq x n`` float32) and keeps the ``c`` largest with CuPy's stable
``argsort`` (equal keys by position, as the reference); a selection inside the kernel is the
next step once it can be measured on a device.

Held to the reference by ``tests/test_cuda.py`` (the kernels emulated on the CPU, every launch
checked; on a device under the ``gpu`` mark).
"""

from __future__ import annotations

import numpy as np

from .._checks import check_fastscan
from . import _launch
from ._arrays import check_cupy, device_of

__all__ = ["fastscan_sums", "fastscan_topk"]


def _launch_scan(cp, name, tq, blocks, n, args, out, dev):
    nq, nbytes = tq.shape[0], blocks.shape[1]
    if n == 0 or nq == 0:
        return
    shared = 32 * nbytes  # the query's tables: 2 nbytes nibbles x 16 entries
    _launch.check_shared(shared, dev, "fast scan")
    grid = _launch.score_grid(n, nq, 1, shared, _launch.device_limits(dev))
    head = (cp.ascontiguousarray(tq), np.int64(nq), cp.ascontiguousarray(blocks), np.int64(n))
    _launch.launch(
        name, grid, (_launch.THREADS,), (*head, np.int32(nbytes), *args, out), shared, dev
    )


def fastscan_sums(plan, tq, blocks, n):
    """``uint32 (nq, n)`` integer sums of the byte tables over the codes (the reference's)."""
    cp = _launch.get_cupy()
    check_cupy(cp, (tq, "byte tables"), (blocks, "fast-scan blocks"))
    n = check_fastscan(plan, tq, blocks, n)
    dev = device_of(tq, blocks)
    with cp.cuda.Device(dev):
        out = cp.empty((tq.shape[0], n), dtype=np.uint32)
        _launch_scan(cp, "fastscan_sums", tq, blocks, n, (), out, dev)
    return out


def fastscan_topk(plan, tq, blocks, n, c, bias, scale, shift=None, weight=None):
    """The ``c`` largest keys ``scale (S + bias) + weight shift`` per query and their positions,
    largest first, equal keys by position: ``(keys float32 (nq, c), positions int64 (nq, c))``;
    keys of ``-inf`` or NaN are no candidates (key ``-inf``, position ``-1``)."""
    cp = _launch.get_cupy()
    check_cupy(cp, (tq, "byte tables"), (blocks, "fast-scan blocks"))
    given = ((bias, "bias"), (scale, "scale"), (shift, "shift"), (weight, "weight"))
    check_cupy(cp, *((a, name) for a, name in given if a is not None))
    n, c, bias, scale, shift, weight = check_fastscan(
        plan, tq, blocks, n, c, bias, scale, shift, weight
    )
    nq = tq.shape[0]
    dev = device_of(tq, blocks, scale, *([] if shift is None else [shift]))
    with cp.cuda.Device(dev):
        if c == 0 or nq == 0:
            return cp.empty((nq, c), dtype=np.float32), cp.empty((nq, c), dtype=np.int64)
        has_shift = shift is not None
        if not has_shift:  # a zero weight on the scale itself: the kernel skips the term
            shift, weight = scale, cp.zeros(nq, dtype=np.float32)
        keys = cp.empty((nq, n), dtype=np.float32)
        args = (bias, scale, weight, shift, np.int32(has_shift))
        _launch_scan(cp, "fastscan_keys", tq, blocks, n, args, keys, dev)
        order = cp.argsort(-keys, axis=1)[:, :c]  # stable: equal keys by position
        top = cp.take_along_axis(keys, order, axis=1)
        positions = cp.where(top == -np.inf, -1, order).astype(np.int64)
    return top, positions
