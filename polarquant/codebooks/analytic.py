r"""Codebooks the quantizers use: Lloyd-Max for the angle and coordinate laws, cached.

* :func:`~polarquant.codebooks.angle_codebook` -- PolarQuant (arXiv 2502.02617)
  Sec. 3-4: one codebook per level of the polar transform for the angle law of
  Lemma 2.  Level 1 (uniform on :math:`[0, 2\pi)`) has the closed-form optimum
  :math:`c_k = (k + 1/2)\, 2\pi / K`; levels :math:`\ge 2` are solved by
  Lloyd-Max.
* :func:`~polarquant.codebooks.coordinate_codebook` -- TurboQuant (arXiv
  2504.19874) Sec. 3.1, Algorithm 1: the codebook for one coordinate of a
  rotated unit vector, for the exact law of Lemma 1 or its Gaussian limit
  :math:`N(0, 1/d)` (the N(0, 1) codebook scaled by :math:`1/\sqrt{d}`).
  Theorem 1 bounds the per-vector distortion :math:`d\,D` between
  :math:`4^{-b}` and :math:`(\sqrt{3}\pi/2)\,4^{-b}`.

The laws come from :mod:`polarquant.distributions` (the angle densities,
integrated by :func:`~polarquant.codebooks.density_moments`; the closed-form
coordinate moments), the solver from :mod:`polarquant.codebooks.lloyd_max_solver`.
Every codebook is computed once per argument tuple and cached for the life of
the process (``functools.cache`` on the private helpers; the public functions
validate their arguments first, so ``angle_codebook(3, 2)`` and
``angle_codebook(np.int64(3), 2)`` share one entry).

Left out: the "online"/"offline" codebooks of PolarQuant Sec. 4, fitted to
samples rather than derived from the law (:mod:`polarquant.codebooks.kmeans`).
"""

from __future__ import annotations

import math
from functools import cache, partial

import numpy as np  # noqa: F401 (the Examples below use np)

from .._array import check_bits
from ..distributions import (
    _check_dim,
    _check_level,
    angle_density,
    angle_support,
    coordinate_partial_moments,
    normal_partial_moments,
)
from .baselines import uniform_codebook
from .codebook import Codebook
from .lloyd_max_solver import lloyd_max
from .moments import Moments, density_moments

__all__ = ["angle_codebook", "coordinate_codebook"]


def angle_codebook(level: int, bits: int) -> Codebook:
    r"""Lloyd-Max codebook for the level-``level`` PolarQuant angles (Sec. 3, Lemma 2). Cached.

    Level 1 (uniform on :math:`[0, 2\pi)`) is the closed form
    :math:`c_k = (k + 1/2)\,2\pi/K`, :math:`t_k = (k+1)\,2\pi/K`,
    :math:`D = (2\pi/K)^2/12` (:func:`uniform_codebook`); levels :math:`\ge 2`
    solve :func:`lloyd_max` on
    :func:`polarquant.distributions.angle_density`, symmetric about
    :math:`\pi/4`.

    Examples
    --------
    >>> cb = angle_codebook(3, 2)
    >>> np.round(cb.centroids, 6).tolist(), round(cb.mse, 5)
    ([0.42625, 0.674385, 0.896411, 1.144547], 0.00616)
    """
    return _angle_codebook(_check_level(level), check_bits(bits))


@cache
def _angle_moments(level: int) -> Moments:
    return density_moments(partial(angle_density, level=level), angle_support(level))


@cache
def _angle_codebook(level: int, bits: int) -> Codebook:
    name = f"lloyd-max angle level {level}, {bits} bits"
    if level == 1:
        return uniform_codebook(angle_support(1), bits, name=name)
    return lloyd_max(_angle_moments(level), angle_support(level), bits, symmetric=True, name=name)


def coordinate_codebook(dim: int, bits: int, *, exact: bool = True) -> Codebook:
    r"""Lloyd-Max codebook for one coordinate of a rotated unit vector in R^dim. Cached.

    TurboQuant Sec. 3.1, Lemma 1 and Algorithm 1.  ``exact=True``: the exact law
    (:math:`(X+1)/2 \sim \mathrm{Beta}((d-1)/2, (d-1)/2)`, closed-form partial
    moments), support ``[-1, 1]``.  ``exact=False``: the Gaussian limit
    :math:`N(0, 1/d)`, i.e. the N(0, 1) codebook scaled by :math:`1/\sqrt{d}`,
    support the real line.  The per-vector distortion of TurboQuant_mse for
    unit vectors is ``dim * codebook.mse`` (Theorem 1:
    :math:`4^{-b} \le d\,D \le (\sqrt3 \pi/2)\, 4^{-b}`).

    Examples
    --------
    >>> [round(128 * coordinate_codebook(128, b, exact=False).mse, 5) for b in (1, 2, 3, 4)]
    [0.36338, 0.11748, 0.03455, 0.0095]
    """
    if not isinstance(exact, bool):
        raise TypeError(f"exact must be True or False, got {exact!r}")
    return _coordinate_codebook(_check_dim(dim), check_bits(bits), exact)


@cache
def _standard_normal_codebook(bits: int) -> Codebook:
    return lloyd_max(
        normal_partial_moments,
        (-math.inf, math.inf),
        bits,
        symmetric=True,
        name=f"lloyd-max N(0, 1), {bits} bits",
    )


@cache
def _coordinate_codebook(dim: int, bits: int, exact: bool) -> Codebook:
    if exact:
        return lloyd_max(
            partial(coordinate_partial_moments, dim=dim),
            (-1.0, 1.0),
            bits,
            symmetric=True,
            name=f"lloyd-max coordinate dim {dim} (exact beta law), {bits} bits",
        )
    unit = _standard_normal_codebook(bits)
    scale = 1.0 / math.sqrt(dim)
    return Codebook(
        unit.centroids * scale,
        unit.boundaries * scale,
        unit.support,
        unit.mse / dim,
        f"lloyd-max coordinate dim {dim} (gaussian limit), {bits} bits",
    )
