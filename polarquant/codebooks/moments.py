r"""Partial moments of a law: all the Lloyd-Max solver needs to know about it.

The Lloyd-Max conditions (:mod:`polarquant.codebooks.lloyd_max_solver`) and the
distortion of a codebook involve the law with density :math:`f` only through
its *partial moments*

.. math::

    m_j(u, v) = \int_u^v x^j f(x)\,dx, \qquad j = 0, 1, 2

(``m_2`` gives the distortion), so a law is handed to the solver as a
:data:`Moments` function ``moments(u, v) -> (m0, m1, m2)``, vectorized over
intervals.  Two sources:

* closed forms, for the coordinate laws of TurboQuant (arXiv 2504.19874,
  Lemma 1: :func:`polarquant.distributions.coordinate_partial_moments`, and
  the Gaussian limit, :func:`polarquant.distributions.normal_partial_moments`);
  they live in :mod:`polarquant.distributions`, not here;
* Gauss-Legendre quadrature of the density, for the angle laws of PolarQuant
  (arXiv 2502.02617, Lemma 2): :func:`~polarquant.codebooks.density_moments`.

Left out: infinite supports (quadrature needs a finite one: pass closed-form
moments instead) and densities with endpoint singularities such as the arcsine
law, on which the quadrature converges slowly.

Symbols:

==============  =============================================================
``(lo, hi)``    the support of the law
``m0, m1, m2``  partial moments of the law on an interval ``[u, v]``
==============  =============================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .._array import check_int

__all__ = ["Moments", "density_moments"]


#: ``moments(u, v) -> (m0, m1, m2)``: partial moments of a law on the intervals
#: ``[u, v]`` (NumPy float64 arrays of equal shape), vectorized.
Moments = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _check_support(support: Any, *, finite: bool = False) -> tuple[float, float]:
    if not isinstance(support, (tuple, list)) or len(support) != 2:
        raise TypeError(f"support must be a pair (lo, hi), got {support!r}")
    lo, hi = float(support[0]), float(support[1])
    if not lo < hi:
        raise ValueError(f"support must satisfy lo < hi, got {(lo, hi)}")
    if finite and not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(
            f"support must be finite here, got {(lo, hi)}; for an infinite "
            "support pass closed-form moments to lloyd_max"
        )
    return lo, hi


def density_moments(
    density: Callable, support: tuple[float, float], *, panels: int = 1024, nodes: int = 16
) -> Moments:
    r"""Partial moments of a density on a finite support, by Gauss-Legendre quadrature.

    The support is cut into ``panels`` equal panels whose moments are computed
    once (``nodes``-point Gauss-Legendre per panel).  An interval ``[u, v]`` is
    then the partial panel from ``u``, a run of whole panels (summed from
    whichever end of the support is nearer, so that tail cells keep their
    relative precision) and the partial panel up to ``v``, each partial panel
    by its own ``nodes``-point rule.  A 16-point rule is exact for polynomials
    of degree 31; for densities smooth on the scale of a panel (every
    PolarQuant angle law through level 24 at least, std down to 1.7e-4 rad)
    the result is accurate to ~1e-13 absolute.  Densities with endpoint
    singularities (the arcsine law) converge slowly: give those closed-form
    moments instead.

    Parameters
    ----------
    density : callable
        ``density(x)`` for a NumPy float64 array ``x`` of any shape.
    support : tuple of float
        Finite ``(lo, hi)``; the density is integrated over it only.
    panels, nodes : int
        Quadrature resolution.

    Returns
    -------
    Moments
        ``moments(u, v) -> (m0, m1, m2)``, vectorized over arrays of ends.
    """
    lo, hi = _check_support(support, finite=True)
    panels = check_int(panels, "panels", low=1)
    nodes = check_int(nodes, "nodes", low=2)
    x_gl, w_gl = np.polynomial.legendre.leggauss(nodes)
    width = (hi - lo) / panels
    edges = lo + width * np.arange(panels + 1)
    edges[-1] = hi

    def rule(a, b):
        """Gauss-Legendre moments of every ``[a, b]`` (arrays of equal shape)."""
        half = 0.5 * (b - a)
        s = (0.5 * (a + b))[..., None] + half[..., None] * x_gl
        f = np.asarray(density(s), dtype=np.float64)
        if not np.all(np.isfinite(f)):
            raise ValueError("the density returned non-finite values inside its support")
        wf = w_gl * f
        return [half * np.sum(wf * s**j, axis=-1) for j in range(3)]

    per_panel = rule(edges[:-1], edges[1:])
    # Integrals over whole panels, from lo (``below``) and from hi (``above``): a run of
    # panels is summed from the nearer end, so tail cells keep their relative precision.
    below = [np.concatenate([[0.0], np.cumsum(m)]) for m in per_panel]
    above = [np.concatenate([np.cumsum(m[::-1])[::-1], [0.0]]) for m in per_panel]
    if abs(below[0][-1] - 1.0) > 1e-6:
        raise ValueError(f"the density integrates to {below[0][-1]:.8g} over {(lo, hi)}, not 1")

    def panel_of(x):
        return np.clip(((x - lo) // width).astype(np.int64), 0, panels - 1)

    def moments(u, v):
        u, v = np.broadcast_arrays(np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64))
        u, v = np.clip(u, lo, hi), np.clip(v, lo, hi)
        ju, jv = panel_of(u), panel_of(v)
        same = ju == jv
        # [u, v] = [u, edge ju+1] + whole panels ju+1 .. jv-1 + [edge jv, v]
        first = rule(u, np.where(same, v, edges[ju + 1]))
        last = rule(np.where(same, v, edges[jv]), v)
        a, b = np.minimum(ju + 1, jv), jv
        near_lo = below[0][b] <= 0.5
        out = []
        for i in range(3):
            whole = np.where(near_lo, below[i][b] - below[i][a], above[i][a] - above[i][b])
            out.append(first[i] + np.where(same, 0.0, whole + last[i]))
        return tuple(out)

    return moments
