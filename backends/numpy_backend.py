"""The NumPy/array-API reference backend: the operations the quantizers dispatch.

Every accelerated backend (``numba``, ``cupy``) provides these same names with
the same signatures and must produce the same packed bytes (away from decision
boundaries) and the same values within float tolerance.  Here each operation
is a composition of the readable core functions; the quantizers call nothing
else on their hot paths.  Arguments are arrays of the data's namespace (all
constants already cast to the data's dtype and device) and Python ints.

=========================  ==================================================  =================================
operation                  computes                                            reference functions
=========================  ==================================================  =================================
``scalar_encode``          nearest-centroid codes of every coordinate, packed  ``codebooks.quantize``, ``packing.pack_codes``
``scalar_values``          centroid values ``c[idx]`` of packed codes          ``packing.unpack_codes``, ``codebooks.dequantize``
``scalar_score``           ``sum_j q_j c[idx_j]`` for every query and row      ``scalar_values`` then a product
``sign_encode``            packed sign bits of ``p >= 0``                      ``packing.pack_signs``
``sign_values``            the signs as +-1                                    ``packing.unpack_signs``
``sign_score``             ``<s, sign>`` for every query and row               ``sign_values`` then a product
``polar_encode``           polar transform, angle codes per level, radii       ``polar.polar_transform``, ``quantize``, ``pack_codes``
``polar_values``           the reconstruction in the rotated domain            ``unpack_codes``, ``dequantize``, ``polar.inverse_polar_transform``
``polar_score``            ``<q, y_hat>`` for every query and row              ``polar_values`` then a product
``scalar_weighted_sum``    ``sum_rows w_row c[idx_row]`` for every weight row  ``scalar_values`` then a product
``polar_weighted_sum``     ``sum_rows w_row y_hat_row`` for every weight row   ``polar_values`` then a product
=========================  ==================================================  =================================

The codebook of an operation is given by its ``boundaries`` (encode; ties go
to the upper cell) or ``centroids`` (decode, score); ``bits`` is the code
width, ``n`` the number of codes per row.

The scores and weighted sums check the width of the queries and weights as
the accelerated backends do (:mod:`polarquant.backends._checks`), so that the
same bad input raises the same ``ValueError``, with the same message, on every
backend (a plain ``@`` would raise its own, or broadcast).
"""

from __future__ import annotations

from polarquant.codebooks import cell_index, cell_value
from polarquant.packing import pack_codes, pack_signs, unpack_codes, unpack_signs
from polarquant.polar import inverse_polar_transform, polar_transform

from . import OPERATIONS
from ._checks import check_query_width, check_weight_width

NAME = "numpy"

#: The score operations decode the codes to values first (``q @ values.T``): quantizers
#: hand them rows in chunks, so that the decoded rows stay chunk-sized.
SCORES_FROM_CODES = False

__all__ = ["NAME", "SCORES_FROM_CODES", *OPERATIONS]


def scalar_encode(y, boundaries, bits: int):
    """Codes of ``y (n, D)`` against one scalar codebook, packed ``(n, ceil(D b / 8))``."""
    return pack_codes(cell_index(y, boundaries), bits)


def scalar_values(packed, centroids, bits: int, n: int):
    """``c[idx]`` of packed codes ``(rows, .)`` -> ``(rows, n)`` in the centroids' dtype."""
    return cell_value(unpack_codes(packed, bits, n), centroids)


def scalar_score(q, packed, centroids, bits: int, n: int):
    """``q (nq, n) @ c[idx].T`` -> ``(nq, rows)``."""
    check_query_width(q, n)
    return q @ scalar_values(packed, centroids, bits, n).T


def sign_encode(p):
    """Packed sign bits (1 for ``p >= 0``) of ``p (rows, m)``."""
    return pack_signs(p)


def sign_values(packed, m: int, dtype):
    """The packed signs as ``+1/-1`` of ``dtype``, ``(rows, m)``."""
    return unpack_signs(packed, m, dtype=dtype)


def sign_score(s, packed, m: int):
    """``s (nq, m) @ sign.T`` -> ``(nq, rows)``."""
    check_query_width(s, m)
    return s @ sign_values(packed, m, s.dtype).T


def polar_encode(y, levels: int, boundaries, bits):
    """Polar transform of ``y (n, D)``; returns (packed angle codes per level, radii)."""
    radii, angles = polar_transform(y, levels)
    packed = [
        pack_codes(cell_index(psi, bnd), b)
        for psi, bnd, b in zip(angles, boundaries, bits, strict=True)
    ]
    return packed, radii


def polar_values(packed, radii, centroids, bits, dim: int):
    """Inverse polar transform of the decoded angles and the radii -> ``(rows, dim)``."""
    angles = []
    for level, (codes, cents, b) in enumerate(zip(packed, centroids, bits, strict=True), start=1):
        angles.append(cell_value(unpack_codes(codes, b, dim >> level), cents))
    return inverse_polar_transform(radii, angles)


def polar_score(q, packed, radii, centroids, bits, dim: int):
    """``q (nq, dim) @ polar_values(...).T`` -> ``(nq, rows)``."""
    check_query_width(q, dim)
    return q @ polar_values(packed, radii, centroids, bits, dim).T


def scalar_weighted_sum(w, packed, centroids, bits: int, n: int):
    """``w (nw, rows) @ c[idx]`` -> ``(nw, n)``: the dual of ``scalar_score`` (attention values)."""
    check_weight_width(w, packed.shape[0] if packed.ndim else 0, packed.ndim)
    return w @ scalar_values(packed, centroids, bits, n)


def polar_weighted_sum(w, packed, radii, centroids, bits, dim: int):
    """``w (nw, rows) @ polar_values(...)`` -> ``(nw, dim)``: the dual of ``polar_score``."""
    check_weight_width(w, radii.shape[0] if radii.ndim else 0, radii.ndim)
    return w @ polar_values(packed, radii, centroids, bits, dim)
