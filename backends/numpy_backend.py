"""The NumPy/array-API reference backend: the operations the quantizers dispatch.

Every accelerated backend (``numba``, ``cupy``) provides these same names with
the same signatures and must produce the same packed bytes (away from decision
boundaries) and the same values within float tolerance.  Here each operation
is a composition of the readable core functions; the quantizers call nothing
else on their hot paths.  Every operation takes the quantizer's plan first
(:mod:`polarquant.plan`: bit widths, codebooks, layouts, checked once), then
arrays of the data's namespace (any array-API library: NumPy, CuPy, torch...).

=========================  ==================================================  =================================
operation                  computes                                            reference functions
=========================  ==================================================  =================================
``scalar_encode``          nearest-centroid codes of every coordinate, packed  ``codebooks.cell_index``, ``packing.pack_codes``
``scalar_values``          centroid values ``c[idx]`` of packed codes          ``packing.unpack_codes``, ``codebooks.cell_value``
``scalar_score``           ``sum_j q_j c[idx_j]`` for every query and row      ``scalar_values`` then a product
``scalar_weighted_sum``    ``sum_rows w_row c[idx_row]`` for every weight row  ``scalar_values`` then a product
``sign_encode``            packed sign bits of ``p >= 0``                      ``packing.pack_signs``
``sign_values``            the signs as +-1                                    ``packing.unpack_signs``
``sign_score``             ``<s, sign>`` for every query and row               ``sign_values`` then a product
``polar_encode``           polar transform, angle codes of all levels, radii   ``polar.polar_transform``, ``cell_index``, ``pack_codes``
``polar_values``           the reconstruction in the rotated domain            ``unpack_codes``, ``cell_value``, ``polar.inverse_polar_transform``
``polar_score``            ``<q, y_hat>`` for every query and row              ``polar_values`` then a product
``polar_weighted_sum``     ``sum_rows w_row y_hat_row`` for every weight row   ``polar_values`` then a product
``fastscan_sums``          integer sums of byte tables over the block layout   ``fastscan.scan_sums``
``fastscan_topk``          the ``c`` largest keys ``scale (S + bias) + w t``   ``fastscan.scan_sums``, ``scan_keys``,
                           and their positions                                 ``top_candidates``
=========================  ==================================================  =================================

Encoding: ties go to the upper cell (``x == t_k`` gets code ``k + 1``).  The
angle codes of all levels of a row are one byte array, level ``l`` at bytes
``plan.offsets[l-1]:plan.offsets[l]`` (:class:`polarquant.plan.PolarPlan`).

Every operation first runs the argument checks of
:mod:`polarquant.backends._checks`, the same functions in the same order as
the accelerated backends, so that the same bad input raises the same
exception, with the same message, on every backend (a plain ``@`` would raise
its own, or broadcast).

Examples
--------
>>> import numpy as np
>>> from polarquant import TurboQuantMSE
>>> from polarquant.backends import numpy_backend as ref
>>> plan = TurboQuantMSE(4, bits=2).plan
>>> codes = ref.scalar_encode(plan, np.array([[-0.9, -0.1, 0.1, 0.9]]))
>>> codes, f"{codes[0, 0]:08b}"  # codes 0, 1, 2, 3: two bits each, first code highest
(array([[27]], dtype=uint8), '00011011')
"""

from __future__ import annotations

import numpy as np

from polarquant import fastscan
from polarquant._array import compute_dtype, namespace
from polarquant.codebooks import cell_index, cell_value
from polarquant.packing import pack_codes, pack_signs, unpack_codes, unpack_signs
from polarquant.polar import inverse_polar_transform, polar_transform

from . import OPERATIONS
from ._checks import (
    check_codes,
    check_fastscan,
    check_no_thread_options,
    check_query_width,
    check_radii,
    check_rows,
    check_values_dtype,
    check_weight_width,
    per_stream,
    score_shape,
)

NAME = "numpy"

#: The score operations decode the codes to values first (``q @ values.T``): quantizers
#: hand them rows in chunks, so that the decoded rows stay chunk-sized.
SCORES_FROM_CODES = False

__all__ = ["NAME", "SCORES_FROM_CODES", "configure_threads", *OPERATIONS]


# -- scalar codebooks (TurboQuant Alg. 1) ---------------------------------------------------------
def scalar_encode(plan, y):
    """Codes of the rows ``y (..., n)`` against the plan's codebook, packed ``(..., nbytes)``."""
    check_rows(y, plan.n)
    return pack_codes(cell_index(y, plan.constant("boundaries", y)), plan.bits)


def scalar_values(plan, packed, dtype):
    """``c[idx]`` of packed codes ``(..., nbytes)`` -> ``(..., n)`` of ``dtype``."""
    check_codes(packed, plan.nbytes)
    check_values_dtype(dtype)
    return cell_value(
        unpack_codes(packed, plan.bits, plan.n), plan.constant("centroids", packed, dtype)
    )


def scalar_score(plan, q, packed):
    """``q (..., n) @ c[idx].T`` -> ``(..., rows)``; stacked ``(S, nq, n)`` with ``(S, rows,
    nbytes)`` -> ``(S, nq, rows)`` (one batch per stream, ``_checks.per_stream``)."""
    check_codes(packed, plan.nbytes)
    stack = per_stream(scalar_score, plan, q, packed, "queries")
    if stack is not None:
        return stack
    check_query_width(q, plan.n)
    score_shape(q, packed)
    return q @ _values_like(scalar_values, plan, packed, q).T


def scalar_weighted_sum(plan, w, packed):
    """``w (..., rows) @ c[idx]`` -> ``(..., n)``: the dual of ``scalar_score`` (attention values);
    stacked ``(S, nw, rows)`` with ``(S, rows, nbytes)`` -> ``(S, nw, n)``."""
    check_codes(packed, plan.nbytes)
    stack = per_stream(scalar_weighted_sum, plan, w, packed, "weights")
    if stack is not None:
        return stack
    check_weight_width(w, packed)
    return w @ _values_like(scalar_values, plan, packed, w)


# -- sign bits (QJL Def. 2.1) -----------------------------------------------------------------------
def sign_encode(plan, p):
    """Packed sign bits (1 for ``p >= 0``) of the rows ``p (..., m)``."""
    check_rows(p, plan.m)
    return pack_signs(p)


def sign_values(plan, packed, dtype):
    """The packed signs as ``+1/-1`` of ``dtype``, ``(..., m)``."""
    check_codes(packed, plan.nbytes)
    check_values_dtype(dtype)
    return unpack_signs(packed, plan.m, dtype=dtype)


def sign_score(plan, s, packed):
    """``s (..., m) @ sign.T`` -> ``(..., rows)``."""
    check_codes(packed, plan.nbytes)
    check_query_width(s, plan.m)
    score_shape(s, packed)
    return s @ _values_like(sign_values, plan, packed, s).T


# -- the polar transform (PolarQuant Sec. 3.1, Alg. 1) ------------------------------------------------
def polar_encode(plan, y):
    """Polar transform of the rows ``y (..., D)``: (angle codes ``(..., nbytes)``, radii ``(..., D/2**L)``)."""
    check_rows(y, plan.dim)
    xp = namespace(y)
    radii, angles = polar_transform(y, plan.levels)
    bounds = plan.constant("boundaries", radii)
    parts = [
        pack_codes(cell_index(psi, t), b)
        for psi, t, b in zip(angles, bounds, plan.bits, strict=True)
    ]
    return xp.concat(parts, axis=-1), radii


def polar_values(plan, codes, radii, dtype):
    """Inverse polar transform of the decoded angles and the radii -> ``(..., D)`` of ``dtype``."""
    check_codes(codes, plan.nbytes, "angle codes")
    check_radii(radii, plan.radii, codes)
    check_values_dtype(dtype)
    xp = namespace(codes)
    angles = [
        cell_value(unpack_codes(codes[..., plan.level_slice(level)], b, n), c)
        for level, (b, n, c) in enumerate(
            zip(plan.bits, plan.counts, plan.constant("centroids", codes, dtype), strict=True), 1
        )
    ]
    return inverse_polar_transform(xp.astype(radii, dtype), angles)


def polar_score(plan, q, codes, radii):
    """``q (..., D) @ polar_values(...).T`` -> ``(..., rows)``."""
    check_codes(codes, plan.nbytes, "angle codes")
    check_radii(radii, plan.radii, codes)
    check_query_width(q, plan.dim)
    score_shape(q, codes)
    return q @ _values_like(polar_values, plan, codes, q, radii).T


def polar_weighted_sum(plan, w, codes, radii):
    """``w (..., rows) @ polar_values(...)`` -> ``(..., D)``: the dual of ``polar_score``."""
    check_codes(codes, plan.nbytes, "angle codes")
    check_radii(radii, plan.radii, codes)
    check_weight_width(w, codes)
    return w @ _values_like(polar_values, plan, codes, w, radii)


# -- fast scan (André et al., VLDB 2015): byte tables over the block layout ----------------------------
def fastscan_sums(plan, tq, blocks, n):
    """``uint32 (nq, n)``: ``sum_g tq[q, g, h_g(i)]`` over the nibbles of each of the ``n``
    vectors held by ``blocks`` (:func:`polarquant.fastscan.scan_sums`; NumPy arrays only)."""
    n = check_fastscan(plan, tq, blocks, n)
    return fastscan.scan_sums(plan, tq, blocks, n)


def fastscan_topk(plan, tq, blocks, n, c, bias, scale, shift=None, weight=None):
    """The ``c`` largest keys ``scale (S + bias) + weight shift`` of each query and their
    positions, largest first, equal keys by position: ``(keys float32 (nq, c), positions int64
    (nq, c))``, ``c`` at most ``n`` (:func:`~polarquant.fastscan.scan_keys`,
    :func:`~polarquant.fastscan.top_candidates`; NumPy arrays only)."""
    n, c, bias, scale, shift, weight = check_fastscan(
        plan, tq, blocks, n, c, bias, scale, shift, weight
    )
    if c == 0:
        return np.empty((tq.shape[0], 0), np.float32), np.empty((tq.shape[0], 0), np.int64)
    sums = fastscan.scan_sums(plan, tq, blocks, n)
    return fastscan.top_candidates(fastscan.scan_keys(sums, bias, scale, shift, weight), c)


# -- helpers ----------------------------------------------------------------------------------------
def _values_like(values, plan, codes, like, *more):
    """Decoded rows in the dtype a product with ``like`` computes in (float64 stays, else float32)."""
    xp = namespace(like)
    dtype = compute_dtype(xp, xp.result_type(like.dtype, *(m.dtype for m in more)))
    return values(plan, codes, *more, dtype)


def configure_threads(threads: int | None = None, **options) -> None:
    """Nothing to set: the reference runs in the caller's thread (its BLAS products use BLAS's
    own threads, set with ``threadpoolctl`` or ``OMP_NUM_THREADS``).  Unknown options are a
    ``TypeError``, as on every backend."""
    check_no_thread_options(NAME, threads, options)
