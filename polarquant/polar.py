"""The recursive polar transform of PolarQuant (Han et al., Sec. 3, Definition 1).

A vector ``x`` of dimension ``d`` (a multiple of ``2**L``) is rewritten as
``d / 2**L`` radii and ``d (1 - 2**-L)`` angles, level by level:

* level 1 pairs adjacent coordinates, ``psi_j = atan2(x_{2j}, x_{2j-1})`` in
  ``[0, 2 pi)`` and ``r_j = hypot(x_{2j-1}, x_{2j})`` (1-based indices as in the
  paper; in code pair ``(x[2j], x[2j+1])``, 0-based);
* level ``l >= 2`` pairs adjacent radii of level ``l - 1``,
  ``psi_j = atan2(r_{2j}, r_{2j-1})`` in ``[0, pi/2]`` (radii are >= 0) and the new
  radius is their ``hypot``.

The inverse runs from level ``L`` down to 1 with
``r_{2j-1} = r_j cos psi_j``, ``r_{2j} = r_j sin psi_j`` (level 1 uses the full
circle).  We implement this loop rather than the paper's closed-form index
expression of Definition 1 (algorithms.md, Sec. 3: the closed form is fragile).

Zero vectors and zero sub-blocks: ``atan2(0, 0) = 0`` and ``hypot(0, 0) = 0``, so
they give angle 0 and radius 0, never NaN, and the inverse returns exact zeros.

Symbols: ``x`` (..., d); ``angles[l-1]`` the level-``l`` angles, shape
(..., d / 2**l); ``radii`` (..., d / 2**L).
"""

from __future__ import annotations

import math

from ._array import check_int, namespace

__all__ = ["polar_transform", "inverse_polar_transform", "check_levels", "angle_counts"]


def check_levels(dim: int, levels: int) -> int:
    """Validate ``levels`` (L >= 1) against ``dim`` (a multiple of ``2**L``)."""
    levels = check_int(levels, "levels", low=1)
    if dim % (1 << levels):
        raise ValueError(
            f"dim={dim} is not divisible by 2**levels = {1 << levels}; the polar transform "
            f"with {levels} levels needs a multiple of {1 << levels}"
        )
    return levels


def angle_counts(dim: int, levels: int) -> list[int]:
    """Number of angles per level: ``[d/2, d/4, ..., d/2**L]``."""
    check_levels(dim, levels)
    return [dim >> level for level in range(1, levels + 1)]


def _pairs(v):
    """Split the last axis into adjacent pairs: returns (v[..., 0::2], v[..., 1::2])."""
    xp = namespace(v)
    *batch, n = v.shape
    w = xp.reshape(v, (*batch, n // 2, 2))
    return w[..., 0], w[..., 1]


def polar_transform(x, levels: int):
    """Recursive polar transform of ``x (..., d)`` to ``levels`` levels.

    Returns
    -------
    radii : array (..., d / 2**levels)
    angles : list of arrays; ``angles[l-1]`` has shape (..., d / 2**l), level 1 in
        ``[0, 2 pi)``, levels >= 2 in ``[0, pi/2]``.

    Examples
    --------
    >>> import numpy as np
    >>> r, a = polar_transform(np.array([3.0, 4.0, 0.0, 0.0]), 2)
    >>> r, [np.round(t, 4) for t in a]
    (array([5.]), [array([0.9273, 0.    ]), array([0.])])
    """
    xp = namespace(x)
    check_levels(x.shape[-1], levels)
    a, b = _pairs(x)
    psi = xp.atan2(b, a)
    psi = xp.where(psi < 0, psi + 2 * math.pi, psi)
    # atan2 of a tiny negative value plus 2 pi can round up to exactly 2 pi
    psi = xp.where(psi >= 2 * math.pi, xp.zeros_like(psi), psi)
    angles = [psi]
    r = xp.hypot(a, b)
    for _ in range(2, levels + 1):
        a, b = _pairs(r)
        angles.append(xp.atan2(b, a))
        r = xp.hypot(a, b)
    return r, angles


def inverse_polar_transform(radii, angles):
    """Exact inverse of :func:`polar_transform` (level L down to 1)."""
    xp = namespace(radii, *angles)
    r = radii
    for psi in reversed(angles):
        if psi.shape != r.shape:
            raise ValueError(
                f"angle array of shape {tuple(psi.shape)} does not match radii of shape "
                f"{tuple(r.shape)} at this level"
            )
        pair = xp.stack([r * xp.cos(psi), r * xp.sin(psi)], axis=-1)
        r = xp.reshape(pair, (*r.shape[:-1], 2 * r.shape[-1]))
    return r
