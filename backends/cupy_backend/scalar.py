"""Scalar codebooks on the GPU (TurboQuant Alg. 1, lines 3 and 7): the entry points of ``scalar.cu``.

Mirrors :func:`polarquant.backends.numpy_backend.scalar_encode`,
``scalar_values``, ``scalar_score`` and ``scalar_weighted_sum``: same
signatures, same checks in the same order, same result dtypes.  Each function
checks its arguments, normalises them to C-contiguous rows of the kernel's
dtype (float32 or float64) on their device, fetches the plan's codebook there
(cast once per dtype and device, kept with the plan), allocates the output and
launches; see :mod:`polarquant.backends.cupy_backend` for the kernels' table.

Held to the reference by ``tests/test_backends.py`` (on a GPU) and
``tests/test_cuda.py`` (the kernels emulated on the CPU, every launch checked).
"""

from __future__ import annotations

import numpy as np

from .._checks import (
    check_codes,
    check_query_width,
    check_rows,
    check_values_dtype,
    check_weight_width,
    compute_dtype,
    per_stream,
    product_dtypes,
    score_shape,
    work_dtype,
)
from . import _launch
from ._arrays import SUFFIX, as_rows, check_cupy, device_of, device_table, kernel_name

__all__ = ["scalar_encode", "scalar_values", "scalar_score", "scalar_weighted_sum"]


def scalar_encode(plan, y):
    """Codes of the rows ``y (..., n)`` against the plan's codebook, packed ``(..., nbytes)``."""
    cp = _launch.get_cupy()
    check_cupy(cp, (y, "x"))
    check_rows(y, plan.n)
    dev = device_of(y)
    work = work_dtype(y.dtype)
    compute = compute_dtype(y.dtype)  # the reference compares with thresholds rounded to this
    n, bits, nbytes = plan.n, plan.bits, plan.nbytes
    with cp.cuda.Device(dev):
        y2 = as_rows(cp, y, n, work)
        build = lambda: cp.asarray(plan.boundary_table(compute)[0], dtype=work)  # noqa: E731
        bnd = device_table(plan, ("boundaries", compute.str, work.str), dev, build)
        rows = y2.shape[0]
        out = cp.empty((rows, nbytes), dtype=np.uint8)
        args = (y2, np.int64(rows), np.int32(n), np.int32(bits), bnd, out)
        shared = ((1 << bits) - 1) * work.itemsize
        _launch.elementwise(kernel_name("scalar_encode", work), rows * nbytes, args, shared, dev)
    return out.reshape(*y.shape[:-1], nbytes)


def _centroids(cp, plan, dtype, work, dev):
    """The ``2**bits`` centroids rounded to ``dtype`` (float16: as the reference rounds them),
    held in ``work`` on device ``dev``: made once per plan, dtypes and device."""
    build = lambda: cp.asarray(plan.centroids.astype(dtype), dtype=work)  # noqa: E731
    return device_table(plan, ("centroids", np.dtype(dtype).str, work.str), dev, build)


def scalar_values(plan, packed, dtype):
    """``c[idx]`` of packed codes ``(..., nbytes)`` -> ``(..., n)`` of ``dtype``."""
    cp = _launch.get_cupy()
    check_cupy(cp, (packed, "packed codes"))
    check_codes(packed, plan.nbytes)
    check_values_dtype(dtype)
    dev = device_of(packed)
    dtype = np.dtype(dtype)
    work = work_dtype(dtype)
    n, bits = plan.n, plan.bits
    with cp.cuda.Device(dev):
        p2 = as_rows(cp, packed, plan.nbytes, np.uint8)
        cents = _centroids(cp, plan, dtype, work, dev)
        rows = p2.shape[0]
        out = cp.empty((rows, n), dtype=work)
        args = (p2, np.int64(rows), np.int32(n), np.int32(bits), cents, out)
        shared = (1 << bits) * work.itemsize
        _launch.elementwise(kernel_name("scalar_values", work), rows * n, args, shared, dev)
    return out.reshape(*packed.shape[:-1], n).astype(dtype, copy=False)


def scalar_score(plan, q, packed):
    """``q (..., n) @ c[idx].T`` -> ``(..., rows)``, without writing the decoded rows; stacked
    streams as the reference (one launch per stream)."""
    cp = _launch.get_cupy()
    check_cupy(cp, (packed, "packed codes"), (q, "queries"))
    check_codes(packed, plan.nbytes)
    stack = per_stream(scalar_score, plan, q, packed, "queries")
    if stack is not None:
        return stack
    check_query_width(q, plan.n)
    shape = score_shape(q, packed)
    dev = device_of(packed, q)
    values, result, work = product_dtypes(q.dtype)
    n, bits, nbytes = plan.n, plan.bits, plan.nbytes
    with cp.cuda.Device(dev):
        q2 = as_rows(cp, q, n, work)
        p2 = as_rows(cp, packed, nbytes, np.uint8)
        cents = _centroids(cp, plan, values, work, dev)
        rows, nq = p2.shape[0], q2.shape[0]
        out = (cp.zeros if n == 0 else cp.empty)((nq, rows), dtype=work)
        head = (q2, np.int64(nq), p2, np.int64(rows), np.int32(n), np.int32(bits), cents)
        _launch.scores_lut_or_gather(
            "scalar",
            SUFFIX[work],
            bits,
            head,
            (rows, nq, nbytes, n),
            (1 << bits) * work.itemsize,
            out,
            work.itemsize,
            dev,
        )
    return out.reshape(shape).astype(result, copy=False)


def scalar_weighted_sum(plan, w, packed):
    """``w (..., rows) @ c[idx]`` -> ``(..., n)``: the dual of ``scalar_score`` (attention values);
    stacked streams as the reference (one launch per stream)."""
    cp = _launch.get_cupy()
    check_cupy(cp, (packed, "packed codes"), (w, "weights"))
    check_codes(packed, plan.nbytes)
    stack = per_stream(scalar_weighted_sum, plan, w, packed, "weights")
    if stack is not None:
        return stack
    check_weight_width(w, packed)
    dev = device_of(packed, w)
    values, result, work = product_dtypes(w.dtype)
    n, bits, rows = plan.n, plan.bits, packed.shape[0]
    with cp.cuda.Device(dev):
        w2 = as_rows(cp, w, rows, work)
        p2 = as_rows(cp, packed, plan.nbytes, np.uint8)
        cents = _centroids(cp, plan, values, work, dev)
        nw = w2.shape[0]
        out = cp.zeros((nw, n), dtype=work)
        args = (w2, np.int64(nw), p2, np.int64(rows), np.int32(n), np.int32(bits), cents)
        shared = (1 << bits) * work.itemsize
        name = kernel_name("scalar_weighted_sum", work)
        _launch.weighted_sums(name, rows, nw, n, args, out, shared, dev)
    return out.reshape(*w.shape[:-1], n).astype(result, copy=False)
