r"""The Lloyd-Max solver: the minimum-MSE scalar codebook of a law given by its moments.

The best codebook with :math:`K = 2^b` centroids for a law with density
:math:`f` minimises

.. math::

    D = E|X - c(X)|^2 = \sum_{k=0}^{K-1} \int_{t_{k-1}}^{t_k} (x - c_k)^2 f(x)\,dx,

and satisfies the Lloyd-Max conditions (Max 1960; Lloyd 1982):

.. math::

    t_k = \frac{c_k + c_{k+1}}{2}, \qquad
    c_k = \frac{\int_{t_{k-1}}^{t_k} x f}{\int_{t_{k-1}}^{t_k} f}
        = \frac{m_1(t_{k-1}, t_k)}{m_0(t_{k-1}, t_k)},

with :math:`t_{-1}, t_{K-1}` the ends of the support.  The solver
:func:`~polarquant.codebooks.lloyd_max` therefore needs nothing but the
*partial moments* :math:`m_j(u, v) = \int_u^v x^j f(x)\,dx`, ``j = 0, 1, 2``
(``m_2`` gives the distortion): closed forms for the coordinate laws of
TurboQuant (:func:`polarquant.distributions.coordinate_partial_moments`),
Gauss-Legendre quadrature of the density for the angle laws of PolarQuant
(:func:`~polarquant.codebooks.density_moments`, in
:mod:`polarquant.codebooks.moments`).  :func:`~polarquant.codebooks.expected_mse`
evaluates :math:`D` for any codebook under any law, and
:func:`~polarquant.codebooks.lloyd_max_density` solves for a density given
directly.

This module solves for the law it is given; which laws PolarQuant and
TurboQuant need, and the caching of their codebooks, are left to
:mod:`polarquant.codebooks.analytic`.

Symbols: as in :mod:`polarquant.codebooks` (``K``, ``c``, ``t``, ``(lo, hi)``, ``m0, m1, m2``, ``D``).

Numerics (departures from the textbook iteration, not from the conditions):
Lloyd's fixed-point iteration converges linearly and very slowly for 8 bits,
so :func:`~polarquant.codebooks.lloyd_max` starts from the asymptotically
optimal companding initialisation (Panter and Dite 1951: point density
proportional to :math:`f^{1/3}`) and takes safeguarded Newton steps on the
Lloyd-Max conditions (a tridiagonal system), falling back to a plain Lloyd
step whenever a Newton step would not reduce the residual.  The answer is the
fixed point of the plain iteration; convergence is declared when one Lloyd
step moves no centroid by more than ``tol`` standard deviations of the law.

References
----------
.. [1] J. Max. Quantizing for minimum distortion. IRE Trans. Inf. Theory, 1960.
.. [2] S. Lloyd. Least squares quantization in PCM. IEEE Trans. Inf. Theory, 1982.
.. [3] P. Panter, W. Dite. Quantization distortion in pulse-count modulation
   with nonuniform spacing of levels. Proc. IRE, 1951.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.linalg import solve_banded

from .._array import check_bits, check_int
from .codebook import Codebook
from .moments import Moments, _check_support, density_moments

__all__ = ["lloyd_max", "expected_mse", "lloyd_max_density"]


def _law_summary(moments: Moments, lo: float, hi: float) -> tuple[float, float]:
    """Mean and standard deviation of the law; checks that its mass is 1."""
    m0, m1, m2 = (
        float(np.asarray(m).reshape(-1)[0]) for m in moments(np.array([lo]), np.array([hi]))
    )
    if not abs(m0 - 1.0) <= 1e-6:
        raise ValueError(f"the law has mass {m0:.8g} on the support {(lo, hi)}, not 1")
    return m1, math.sqrt(max(m2 - m1 * m1, 0.0))


def _symmetrizer(moments: Moments, lo: float, hi: float, mean: float, std: float):
    """``c -> c`` mirrored about the law's centre, averaged; checks the law is symmetric."""
    if math.isfinite(lo) and math.isfinite(hi):
        centre = 0.5 * (lo + hi)
    elif math.isinf(lo) and math.isinf(hi):
        centre = mean
    else:
        raise ValueError(f"symmetric=True needs a support symmetric about a centre, got {(lo, hi)}")
    half = float(moments(np.array([lo]), np.array([centre]))[0][0])
    if abs(half - 0.5) > 1e-9 or abs(mean - centre) > 1e-6 * std:
        raise ValueError(
            f"symmetric=True but the law is not symmetric about {centre!r} "
            f"(mass below it {half!r}, mean {mean!r})"
        )

    def symmetrize(values: np.ndarray) -> np.ndarray:
        dev = values - centre
        return centre + 0.5 * (dev - dev[::-1])

    return symmetrize


def _compander_init(
    moments: Moments, lo: float, hi: float, mean: float, std: float, k: int, cells: int = 4096
) -> np.ndarray:
    r"""Centroids at the ``(j + 1/2)/K`` quantiles of the density :math:`\propto f^{1/3}`.

    Panter and Dite's high-resolution optimum; the law is tabulated on a grid
    of ``cells`` over the support cut to ``mean +- 12 std``.
    """
    a, b = max(lo, mean - 12 * std), min(hi, mean + 12 * std)
    edges = np.linspace(a, b, cells + 1)
    mass = np.maximum(moments(edges[:-1], edges[1:])[0], 0.0)
    weight = np.cbrt(mass / np.diff(edges)) * np.diff(edges)
    cum = np.concatenate([[0.0], np.cumsum(weight)])
    targets = (np.arange(k) + 0.5) / k * cum[-1]
    return np.interp(targets, cum, edges)


def _cells(c: np.ndarray, lo: float, hi: float):
    t = 0.5 * (c[:-1] + c[1:])
    return t, np.concatenate([[lo], t]), np.concatenate([t, [hi]])


def _valid(c: np.ndarray, lo: float, hi: float) -> bool:
    return bool(np.all(np.isfinite(c)) and np.all(np.diff(c) > 0) and lo < c[0] and c[-1] < hi)


def lloyd_max(
    moments: Moments,
    support: tuple[float, float],
    bits: int,
    *,
    tol: float = 1e-10,
    max_iter: int = 100,
    init: Any = None,
    symmetric: bool = False,
    name: str | None = None,
) -> Codebook:
    r"""The minimum-MSE scalar quantizer of a law given by its partial moments (Max 1960).

    Solves the Lloyd-Max conditions (module docstring)

    .. math::

        t_k = \tfrac12 (c_k + c_{k+1}), \qquad c_k = m_1(t_{k-1}, t_k) / m_0(t_{k-1}, t_k)

    by safeguarded Newton iteration on :math:`F(c) = T(c) - c`, where
    :math:`T` is one Lloyd step.  The Jacobian of :math:`T` is tridiagonal:
    with :math:`f` the density,
    :math:`\partial c_k^{new} / \partial t_k = f(t_k) (t_k - c_k^{new}) / m_0^{(k)}` and
    :math:`\partial c_k^{new} / \partial t_{k-1} = f(t_{k-1}) (c_k^{new} - t_{k-1}) / m_0^{(k)}`;
    :math:`f(t)` is read off the moments, :math:`m_0(t - h, t + h) / 2h`.

    Parameters
    ----------
    moments : Moments
        ``moments(u, v) -> (m0, m1, m2)``, vectorized over float64 arrays; must
        accept the support's ends (infinite ones included) and integrate to 1.
    support : tuple of float
        ``(lo, hi)``, the outer ends of the first and last cells.
    bits : int
        1..8; the codebook has ``2**bits`` centroids.
    tol : float
        Convergence: one Lloyd step moves no centroid by more than ``tol``
        standard deviations of the law.
    max_iter : int
        Maximum number of (Newton or Lloyd) steps.
    init : array_like, optional
        Initial centroids (strictly increasing, inside the support); default:
        the companding (``f**(1/3)``) quantiles.
    symmetric : bool
        The law is symmetric about the centre of its support (or about its mean
        for the real line): enforce exactly mirrored centroids and boundaries.
        A law that is not symmetric is refused.
    name : str, optional
        Stored in the codebook.

    Returns
    -------
    Codebook
        ``mse`` is the expected squared error per scalar under the law.

    Raises
    ------
    RuntimeError
        If the iteration has not converged after ``max_iter`` steps (or a cell
        lost all its probability mass).
    """
    bits = check_bits(bits)
    lo, hi = _check_support(support)
    if not (isinstance(tol, numbers.Real) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    max_iter = check_int(max_iter, "max_iter", low=1)
    k = 1 << bits
    mean, std = _law_summary(moments, lo, hi)
    symmetrize = _symmetrizer(moments, lo, hi, mean, std) if symmetric else (lambda c: c)
    if init is None:
        c = _compander_init(moments, lo, hi, mean, std, k)
    else:
        c = np.array(init, dtype=np.float64)
        if c.shape != (k,) or not _valid(c, lo, hi):
            raise ValueError(f"init must hold {k} strictly increasing values inside {(lo, hi)}")
    c = symmetrize(c)
    h = 1e-6 * std

    def lloyd_step(c):
        """One Lloyd step: ``(T(c), cell masses, max |T(c) - c|)``."""
        _, left, right = _cells(c, lo, hi)
        m0, m1, _ = moments(left, right)
        if not np.all(m0 > 0):
            raise RuntimeError(f"Lloyd-Max: a cell of {(lo, hi)} has no probability mass")
        new = symmetrize(m1 / m0)
        return new, m0, float(np.max(np.abs(new - c)))

    new, m0, err = lloyd_step(c)
    for _ in range(max_iter):
        if err <= tol * std:
            break
        t = 0.5 * (c[:-1] + c[1:])
        a, b = np.maximum(t - h, lo), np.minimum(t + h, hi)
        f_t = moments(a, b)[0] / (b - a)
        d_right = f_t * (t - new[:-1]) / m0[:-1]  # d new_k / d t_k
        d_left = f_t * (new[1:] - t) / m0[1:]  # d new_{k+1} / d t_k
        banded = np.zeros((3, k))
        banded[0, 1:] = -0.5 * d_right  # (k, k+1)
        banded[1] = 1.0 - 0.5 * (np.append(d_right, 0.0) + np.insert(d_left, 0, 0.0))
        banded[2, :-1] = -0.5 * d_left  # (k+1, k)
        trial = symmetrize(c + solve_banded((1, 1), banded, new - c))
        if _valid(trial, lo, hi):
            t_new, t_m0, t_err = lloyd_step(trial)
            if t_err < err:
                c, new, m0, err = trial, t_new, t_m0, t_err
                continue
        c = new  # fall back on a plain Lloyd step, which never increases D
        new, m0, err = lloyd_step(c)
    else:
        if err > tol * std:
            raise RuntimeError(
                f"Lloyd-Max did not converge in {max_iter} steps: a Lloyd step "
                f"still moves a centroid by {err:.3g} ({err / std:.3g} std)"
            )
    centroids = new
    boundaries = symmetrize(np.concatenate([[lo], 0.5 * (centroids[:-1] + centroids[1:]), [hi]]))
    book = Codebook(centroids, boundaries[1:-1], (lo, hi), 0.0, name or f"lloyd-max, {bits} bits")
    return _with_mse(book, moments)


def _with_mse(book: Codebook, moments: Moments) -> Codebook:
    return Codebook(
        book.centroids, book.boundaries, book.support, expected_mse(book, moments), book.name
    )


def expected_mse(codebook: Codebook, moments: Moments) -> float:
    r"""Expected squared error per scalar of ``codebook`` under a law given by its moments.

    .. math::

        D = \sum_k m_2^{(k)} - 2 c_k m_1^{(k)} + c_k^2 m_0^{(k)}

    over the cells ``[t_{k-1}, t_k)`` of the codebook's own boundaries (so a
    quantile codebook is evaluated with its quantile cells).  Use it to compare
    codebooks on one law, e.g. the Gaussian-limit codebook on the exact law.
    """
    lo, hi = codebook.support
    edges = np.concatenate([[lo], codebook.boundaries, [hi]])
    m0, m1, m2 = moments(edges[:-1], edges[1:])
    c = codebook.centroids
    return float(max(np.sum(m2 - 2.0 * c * m1 + c * c * m0), 0.0))


def lloyd_max_density(
    density: Callable, support: tuple[float, float], bits: int, **kwargs: Any
) -> Codebook:
    """:func:`lloyd_max` for a density on a finite support (moments by :func:`density_moments`)."""
    return lloyd_max(density_moments(density, support), support, bits, **kwargs)
