r"""Sign bits (QJL Def. 2.1; the residual sketch of TurboQuant Alg. 2, line 6) as Numba kernels.

Mirrors :func:`polarquant.backends.numpy_backend.sign_encode`,
:func:`~polarquant.backends.numpy_backend.sign_values` and
:func:`~polarquant.backends.numpy_backend.sign_score`: same signatures, same
checks in the same order (:mod:`polarquant.backends._checks`), same result
dtypes.  ``tests/test_backends.py`` holds them to the reference: packed bytes
identical, values equal, scores within the float tolerances.

==========================  ==================  ==========  ============================
kernel                      reference           fastmath    differs from the reference
==========================  ==================  ==========  ============================
``sign_encode_kernel``      ``sign_encode``     none        never
``scalar_values_kernel``    ``sign_values``     none        never
``byte_tables`` +           ``sign_score``      score set   summation order
``scalar_score_kernel``
==========================  ==================  ==========  ============================

A sign bit is a 1-bit code whose codebook is ``(-1, +1)``: ``sign_values`` and
``sign_score`` run the scalar kernels of :mod:`polarquant.backends.numba_backend.scalar` with that codebook (the
same compiled kernels as TurboQuant's, for the same dtypes).  ``sign_encode``
has its own kernel because its decision ``p >= 0`` differs from the codebook
rule on NaN (the codebook rule sends NaN to the top cell, ``>= 0`` to bit 0, as
the reference does).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._checks import (
    check_rows,
    work_dtype,
)
from ._common import _kernel, _numpy, _rows
from .scalar import code_score, code_values

__all__ = ["sign_encode", "sign_values", "sign_score"]


# -- entry points ---------------------------------------------------------------------------------
def sign_encode(plan, p):
    """Packed sign bits (1 for ``p >= 0``) of the rows ``p (..., m)``."""
    check_rows(_numpy(p, "x"), plan.m)
    p2 = _rows(p, plan.m, work_dtype(p.dtype))
    out = np.empty((p2.shape[0], plan.nbytes), dtype=np.uint8)
    sign_encode_kernel(p2, out)
    return out.reshape(*p.shape[:-1], plan.nbytes)


def sign_values(plan, packed, dtype):
    """The packed signs as ``+1/-1`` of ``dtype``, ``(..., m)``."""
    return code_values(plan, plan.m, packed, dtype)


def sign_score(plan, s, packed):
    """``s (..., m) @ sign.T`` -> ``(..., rows)``."""
    return code_score(plan, plan.m, s, packed)


# -- kernel ---------------------------------------------------------------------------------------
@_kernel(parallel=True)
def sign_encode_kernel(p, out):
    """Packed sign bits of ``p (rows, m)``: bit 1 for ``p >= 0`` (0 and -0 give 1, NaN 0).

    Eight comparisons per output byte; no fastmath (the comparison is the code).
    """
    rows, m = p.shape
    full = m // 8
    for row in prange(rows):
        for k in range(full):
            byte = 0
            for t in range(8):
                byte = (byte << 1) | (1 if p[row, 8 * k + t] >= 0 else 0)
            out[row, k] = byte
        if m % 8:
            byte = 0
            for t in range(8):
                c = 8 * full + t
                byte = (byte << 1) | (1 if c < m and p[row, c] >= 0 else 0)
            out[row, full] = byte
