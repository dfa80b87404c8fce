"""Sign bits on the GPU (QJL Def. 2.1; TurboQuant Alg. 2, line 6): the entry points of ``sign.cu``.

Mirrors :func:`polarquant.backends.numpy_backend.sign_encode`,
``sign_values`` and ``sign_score``: same signatures, same checks in the same
order, same result dtypes.  Signs are one-bit codes against the fixed
codebook ``(-1, +1)``, so the kernels need no constants; see
:mod:`polarquant.backends.cupy_backend` for the kernels' table.

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
    product_dtypes,
    score_shape,
    work_dtype,
)
from . import _launch
from ._arrays import SUFFIX, as_rows, check_cupy, device_of, kernel_name

__all__ = ["sign_encode", "sign_values", "sign_score"]


def sign_encode(plan, p):
    """Packed sign bits (1 for ``p >= 0``) of the rows ``p (..., m)``."""
    cp = _launch.get_cupy()
    check_cupy(cp, (p, "x"))
    check_rows(p, plan.m)
    dev = device_of(p)
    work = work_dtype(p.dtype)
    m, nbytes = plan.m, plan.nbytes
    with cp.cuda.Device(dev):
        p2 = as_rows(cp, p, m, work)
        rows = p2.shape[0]
        out = cp.empty((rows, nbytes), dtype=np.uint8)
        args = (p2, np.int64(rows), np.int32(m), out)
        _launch.elementwise(kernel_name("sign_encode", work), rows * nbytes, args, 0, dev)
    return out.reshape(*p.shape[:-1], nbytes)


def sign_values(plan, packed, dtype):
    """The packed signs as ``+1/-1`` of ``dtype``, ``(..., m)``."""
    cp = _launch.get_cupy()
    check_cupy(cp, (packed, "packed codes"))
    check_codes(packed, plan.nbytes)
    check_values_dtype(dtype)
    dev = device_of(packed)
    dtype = np.dtype(dtype)
    work = work_dtype(dtype)
    m = plan.m
    with cp.cuda.Device(dev):
        p2 = as_rows(cp, packed, plan.nbytes, np.uint8)
        rows = p2.shape[0]
        out = cp.empty((rows, m), dtype=work)
        args = (p2, np.int64(rows), np.int32(m), out)
        _launch.elementwise(kernel_name("sign_values", work), rows * m, args, 0, dev)
    return out.reshape(*packed.shape[:-1], m).astype(dtype, copy=False)


def sign_score(plan, s, packed):
    """``s (..., m) @ sign.T`` -> ``(..., rows)``, without writing the decoded signs."""
    cp = _launch.get_cupy()
    check_cupy(cp, (packed, "packed codes"), (s, "queries"))
    check_codes(packed, plan.nbytes)
    check_query_width(s, plan.m)
    shape = score_shape(s, packed)
    dev = device_of(packed, s)
    _, result, work = product_dtypes(s.dtype)
    m, nbytes = plan.m, plan.nbytes
    with cp.cuda.Device(dev):
        s2 = as_rows(cp, s, m, work)
        p2 = as_rows(cp, packed, nbytes, np.uint8)
        rows, nq = p2.shape[0], s2.shape[0]
        out = (cp.zeros if m == 0 else cp.empty)((nq, rows), dtype=work)
        head = (s2, np.int64(nq), p2, np.int64(rows), np.int32(m))
        shape_ = (rows, nq, nbytes, m)
        _launch.scores_lut_or_gather(
            "sign", SUFFIX[work], 1, head, shape_, 0, out, work.itemsize, dev
        )
    return out.reshape(shape).astype(result, copy=False)
