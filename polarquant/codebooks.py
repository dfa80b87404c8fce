r"""Scalar codebooks: Lloyd-Max for a known law, k-means++ for samples.

Both PolarQuant and TurboQuant quantize numbers whose law is known after a
random rotation (:mod:`polarquant.distributions`), one number at a time, to the
nearest of :math:`K = 2^b` centroids.  The best such codebook for a law with
density :math:`f` minimises

.. math::

    D = E|X - c(X)|^2 = \sum_{k=0}^{K-1} \int_{t_{k-1}}^{t_k} (x - c_k)^2 f(x)\,dx,

and satisfies the Lloyd-Max conditions (Max 1960; Lloyd 1982):

.. math::

    t_k = \frac{c_k + c_{k+1}}{2}, \qquad
    c_k = \frac{\int_{t_{k-1}}^{t_k} x f}{\int_{t_{k-1}}^{t_k} f}
        = \frac{m_1(t_{k-1}, t_k)}{m_0(t_{k-1}, t_k)},

with :math:`t_{-1}, t_{K-1}` the ends of the support.  The solver
:func:`lloyd_max` therefore needs nothing but the *partial moments*
:math:`m_j(u, v) = \int_u^v x^j f(x)\,dx`, ``j = 0, 1, 2`` (``m_2`` gives the
distortion): closed forms for the coordinate laws of TurboQuant
(:func:`polarquant.distributions.coordinate_partial_moments`), Gauss-Legendre
quadrature of the density for the angle laws of PolarQuant
(:func:`density_moments`).

Where each codebook comes from
------------------------------
* :func:`angle_codebook` -- PolarQuant (arXiv 2502.02617) Sec. 3-4: one codebook
  per level of the polar transform for the angle law of Lemma 2.  Level 1
  (uniform on :math:`[0, 2\pi)`) has the closed-form optimum
  :math:`c_k = (k + 1/2)\, 2\pi / K`; levels :math:`\ge 2` are solved by Lloyd-Max.
* :func:`coordinate_codebook` -- TurboQuant (arXiv 2504.19874) Sec. 3.1,
  Algorithm 1: the codebook for one coordinate of a rotated unit vector, for
  the exact law of Lemma 1 or its Gaussian limit :math:`N(0, 1/d)` (the N(0, 1)
  codebook scaled by :math:`1/\sqrt{d}`).  Theorem 1 bounds the per-vector
  distortion :math:`d\,D` between :math:`4^{-b}` and
  :math:`(\sqrt{3}\pi/2)\,4^{-b}`.
* :func:`kmeans_codebook` -- PolarQuant Sec. 4: 1-D k-means++ (Arthur and
  Vassilvitskii 2007) on samples, the paper's "online"/"offline" codebooks.
* :func:`uniform_codebook`, :func:`quantile_codebook` -- teaching baselines
  (equal-width cells; equal-probability cells, the "Lloyd-Max" of some ports).

Symbols
-------
==============  =============================================================
``K``           number of centroids, ``2**bits``
``c``           centroids ``c_0 < ... < c_{K-1}`` (``Codebook.centroids``)
``t``           decision thresholds ``t_0 <= ... <= t_{K-2}`` (``boundaries``)
``(lo, hi)``    the support; cell ``k`` is ``[t_{k-1}, t_k)``
``m0, m1, m2``  partial moments of the law on an interval
``D``           expected squared error per scalar (``Codebook.mse``)
==============  =============================================================

Numerics (departures from the textbook iteration, not from the conditions):
Lloyd's fixed-point iteration converges linearly and very slowly for 8 bits,
so :func:`lloyd_max` starts from the asymptotically optimal companding
initialisation (Panter and Dite 1951: point density proportional to
:math:`f^{1/3}`) and takes safeguarded Newton steps on the Lloyd-Max conditions
(a tridiagonal system), falling back to a plain Lloyd step whenever a Newton
step would not reduce the residual.  The answer is the fixed point of the plain
iteration; convergence is declared when one Lloyd step moves no centroid by
more than ``tol`` standard deviations of the law.

References
----------
.. [1] J. Max. Quantizing for minimum distortion. IRE Trans. Inf. Theory, 1960.
.. [2] S. Lloyd. Least squares quantization in PCM. IEEE Trans. Inf. Theory, 1982.
.. [3] P. Panter, W. Dite. Quantization distortion in pulse-count modulation
   with nonuniform spacing of levels. Proc. IRE, 1951.
.. [4] D. Arthur, S. Vassilvitskii. k-means++: the advantages of careful
   seeding. SODA 2007.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

import numpy as np
from array_api_compat import is_array_api_obj
from scipy.linalg import solve_banded

from ._array import check_bits, check_int, compute_dtype, host_to_like, namespace, to_host
from ._seeding import generator
from .distributions import (
    _check_dim,
    _check_level,
    angle_density,
    angle_support,
    coordinate_partial_moments,
    normal_partial_moments,
)

__all__ = [
    "Codebook",
    "Moments",
    "density_moments",
    "lloyd_max",
    "lloyd_max_density",
    "angle_codebook",
    "coordinate_codebook",
    "kmeans_codebook",
    "uniform_codebook",
    "quantile_codebook",
    "expected_mse",
    "quantize",
    "dequantize",
]

#: ``moments(u, v) -> (m0, m1, m2)``: partial moments of a law on the intervals
#: ``[u, v]`` (NumPy float64 arrays of equal shape), vectorized.
Moments = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


# -- the codebook object ---------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Codebook:
    """A scalar quantizer: ``2**bits`` sorted centroids and their decision thresholds.

    Parameters
    ----------
    centroids : array_like, shape (2**bits,)
        Reconstruction values, strictly increasing (stored as read-only float64).
    boundaries : array_like, shape (2**bits - 1,)
        Decision thresholds ``t``: cell ``k`` is ``[t_{k-1}, t_k)``.  For
        Lloyd-Max and k-means codebooks they are the midpoints of neighbouring
        centroids (nearest-centroid quantization); ``c_k <= t_k <= c_{k+1}``.
    support : tuple of float
        ``(lo, hi)`` of the law the codebook was designed for (may be infinite).
    mse : float
        Expected squared error per scalar under that law; for a fitted codebook,
        the mean squared error on the fitting samples.
    name : str
        Where the codebook comes from, e.g. ``"lloyd-max angle level 3, 2 bits"``.
    """

    centroids: np.ndarray
    boundaries: np.ndarray
    support: tuple[float, float]
    mse: float
    name: str = ""

    def __post_init__(self) -> None:
        c = _read_only_vector(self.centroids, "centroids")
        k = c.shape[0]
        if k < 2 or k > 256 or k & (k - 1):
            raise ValueError(f"centroids must hold 2**bits values, bits in [1, 8]; got {k}")
        if not np.all(np.diff(c) > 0):
            raise ValueError(f"centroids must be strictly increasing, got {c.tolist()}")
        t = _read_only_vector(self.boundaries, "boundaries")
        if t.shape != (k - 1,):
            raise ValueError(f"{k} centroids need {k - 1} boundaries, got {t.shape[0]}")
        if not (np.all(c[:-1] <= t) and np.all(t <= c[1:])):
            raise ValueError("every boundary t_k must lie between centroids c_k and c_{k+1}")
        if not isinstance(self.support, (tuple, list)) or len(self.support) != 2:
            raise TypeError(f"support must be a pair (lo, hi), got {self.support!r}")
        lo, hi = (float(s) for s in self.support)
        if not (lo < hi and lo <= c[0] and c[-1] <= hi):
            raise ValueError(f"support {(lo, hi)} must satisfy lo < hi and contain every centroid")
        if isinstance(self.mse, bool) or not isinstance(self.mse, numbers.Real):
            raise TypeError(f"mse must be a real number, got {self.mse!r}")
        if not (math.isfinite(self.mse) and self.mse >= 0):
            raise ValueError(f"mse must be finite and >= 0, got {self.mse!r}")
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a string, got {self.name!r}")
        object.__setattr__(self, "centroids", c)
        object.__setattr__(self, "boundaries", t)
        object.__setattr__(self, "support", (lo, hi))
        object.__setattr__(self, "mse", float(self.mse))

    @property
    def bits(self) -> int:
        """Bits per code, ``log2(len(centroids))``."""
        return self.centroids.shape[0].bit_length() - 1

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Codebook):
            return NotImplemented
        return (
            np.array_equal(self.centroids, other.centroids)
            and np.array_equal(self.boundaries, other.boundaries)
            and self.support == other.support
            and self.mse == other.mse
            and self.name == other.name
        )

    def __hash__(self) -> int:
        return hash(
            (self.centroids.tobytes(), self.boundaries.tobytes(), self.support, self.mse, self.name)
        )

    def to_dict(self) -> dict:
        """A JSON-able dict of plain lists and floats (infinite support ends as ``"inf"``).

        Python's ``json`` writes floats with ``repr``, which round-trips float64
        exactly, so ``Codebook.from_dict(json.loads(json.dumps(cb.to_dict())))``
        equals ``cb``.
        """
        return {
            "name": self.name,
            "bits": self.bits,
            "centroids": self.centroids.tolist(),
            "boundaries": self.boundaries.tolist(),
            "support": [s if math.isfinite(s) else str(s) for s in self.support],
            "mse": self.mse,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Codebook:
        """Rebuild a codebook written by :meth:`to_dict`, validating sizes and order."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a codebook dict is expected, got {type(data).__name__}")
        missing = {"centroids", "boundaries", "support", "mse"} - set(data)
        if missing:
            raise ValueError(f"codebook dict lacks {sorted(missing)}")
        support = data["support"]
        if not isinstance(support, (list, tuple)) or len(support) != 2:
            raise ValueError(f"codebook support must be a pair, got {support!r}")
        book = cls(
            np.asarray(data["centroids"], dtype=np.float64),
            np.asarray(data["boundaries"], dtype=np.float64),
            (float(support[0]), float(support[1])),
            float(data["mse"]),
            str(data.get("name", "")),
        )
        if "bits" in data and data["bits"] != book.bits:
            raise ValueError(
                f"codebook dict says bits={data['bits']!r} but holds "
                f"{book.centroids.shape[0]} centroids"
            )
        return book


def _read_only_vector(values: Any, name: str) -> np.ndarray:
    a = np.array(values, dtype=np.float64)  # always a private copy
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite, got {a.tolist()}")
    a.setflags(write=False)
    return a


# -- partial moments ---------------------------------------------------------------------------
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


# -- the Lloyd-Max solver ----------------------------------------------------------------------
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


# -- baselines -------------------------------------------------------------------------------
def uniform_codebook(
    support: tuple[float, float], bits: int, *, name: str | None = None
) -> Codebook:
    r"""Equal-width cells with midpoint centroids on a finite support.

    :math:`c_k = lo + (k + 1/2) w`, :math:`t_k = lo + (k + 1) w`,
    :math:`w = (hi - lo)/K`; ``mse`` is :math:`w^2/12`, its error under the
    uniform law (for which it is the Lloyd-Max optimum).  Evaluate it under
    another law with :func:`expected_mse`.
    """
    bits = check_bits(bits)
    lo, hi = _check_support(support, finite=True)
    k = 1 << bits
    width = (hi - lo) / k
    centroids = lo + (np.arange(k) + 0.5) * width
    boundaries = lo + np.arange(1, k) * width
    return Codebook(
        centroids, boundaries, (lo, hi), width * width / 12.0, name or f"uniform, {bits} bits"
    )


def quantile_codebook(
    moments: Moments, support: tuple[float, float], bits: int, *, name: str | None = None
) -> Codebook:
    """Equal-probability cells with conditional-mean centroids (a baseline, not Lloyd-Max).

    The thresholds are the ``j/K`` quantiles of the law (found by bisection on
    ``m0``), the centroids the conditional means of the cells; the thresholds are
    *not* midpoints, so quantizing with it is not nearest-centroid.  Some ports
    ship this as "Lloyd-Max"; its error is 1.1x to 2x the optimum.
    """
    bits = check_bits(bits)
    lo, hi = _check_support(support)
    k = 1 << bits
    mean, std = _law_summary(moments, lo, hi)
    # Chebyshev: P(|X - mean| > 20 std) <= 1/400 < 1/K, so every quantile is in the bracket.
    left = np.full(k - 1, max(lo, mean - 20 * std))
    right = np.full(k - 1, min(hi, mean + 20 * std))
    targets = np.arange(1, k) / k
    for _ in range(100):
        mid = 0.5 * (left + right)
        below = moments(np.full(k - 1, lo), mid)[0] < targets
        left, right = np.where(below, mid, left), np.where(below, right, mid)
    t = 0.5 * (left + right)
    m0, m1, _ = moments(np.concatenate([[lo], t]), np.concatenate([t, [hi]]))
    book = Codebook(m1 / m0, t, (lo, hi), 0.0, name or f"quantile, {bits} bits")
    return _with_mse(book, moments)


# -- the codebooks the quantizers use -----------------------------------------------------------
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


# -- k-means++ on samples (PolarQuant Sec. 4) ---------------------------------------------------
def _host_samples(samples: Any) -> np.ndarray:
    if is_array_api_obj(samples):
        samples = to_host(samples)  # explicit device -> host copy: fitting runs on the host
    elif not isinstance(samples, (list, tuple)):
        raise TypeError(f"samples must be an array, got {type(samples).__name__}")
    x = np.asarray(samples)
    if x.dtype.kind != "f":
        raise TypeError(f"samples must have a real floating dtype, got {x.dtype}")
    if x.ndim != 1:
        raise ValueError(f"samples must be 1-D, got shape {x.shape}")
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        raise ValueError(f"samples contain {bad} NaN or Inf value(s)")
    return np.sort(x.astype(np.float64))


def _kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Arthur-Vassilvitskii seeding: each new centre drawn with probability ~ D(x)^2."""
    centres = [x[rng.integers(x.size)]]
    d2 = (x - centres[0]) ** 2
    for _ in range(1, k):
        cum = np.cumsum(d2)
        i = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
        if i == x.size:  # rng.random() * total rounded up to the total
            i = int(np.flatnonzero(d2)[-1])
        centres.append(x[i])
        d2 = np.minimum(d2, (x - x[i]) ** 2)
    return np.sort(np.asarray(centres))


def kmeans_codebook(
    samples: Any,
    bits: int,
    *,
    seed: int,
    support: tuple[float, float] | None = None,
    max_iter: int = 100,
) -> Codebook:
    """Fit a codebook to samples: 1-D k-means++ seeding, then Lloyd (k-means) iterations.

    PolarQuant Sec. 4 fits each level's angle codebook this way, on the angles
    of one prompt ("online") or of a calibration set ("offline").  Seeding is
    Arthur and Vassilvitskii's D^2 sampling with the ``"kmeans"`` stream of
    ``seed`` (:mod:`polarquant._seeding`); the iterations are exact 1-D Lloyd
    steps on the sorted samples (cells by ``searchsorted`` on the midpoints,
    sums by prefix sums), stopped when the cells no longer change or after
    ``max_iter`` steps.  An empty cell keeps its centroid.  Samples equal to a
    threshold go to the upper cell, as in :func:`quantize`.

    Parameters
    ----------
    samples : array
        Finite 1-D floats, NumPy or any array-API array (copied to the host).
    bits : int
        1..8.
    seed : int
        Seed of the k-means++ draws.
    support : tuple of float, optional
        The support recorded in the codebook (every sample must lie in it);
        default ``(min, max)`` of the samples.
    max_iter : int
        Maximum number of Lloyd steps.

    Returns
    -------
    Codebook
        ``mse`` is the mean squared error of the samples quantized with it.

    Raises
    ------
    ValueError
        Fewer than ``2**bits`` distinct sample values, non-finite samples,
        samples outside ``support``.
    """
    bits = check_bits(bits)
    max_iter = check_int(max_iter, "max_iter", low=1)
    rng = generator(seed, "kmeans")
    x = _host_samples(samples)
    k = 1 << bits
    distinct = 1 + int(np.count_nonzero(np.diff(x) > 0)) if x.size else 0
    if distinct < k:
        raise ValueError(
            f"samples have {distinct} distinct value(s); a {bits}-bit codebook needs at least {k}"
        )
    if support is None:
        lo, hi = float(x[0]), float(x[-1])
    else:
        lo, hi = _check_support(support)
        if x[0] < lo or x[-1] > hi:
            raise ValueError(f"samples span [{x[0]!r}, {x[-1]!r}], outside the support {(lo, hi)}")
    shift = float(np.mean(x))  # prefix sums of centred values keep their precision
    prefix = np.concatenate([[0.0], np.cumsum(x - shift)])
    c = _kmeans_plus_plus(x, k, rng)
    cuts = None
    for _ in range(max_iter):
        new_cuts = np.searchsorted(x, 0.5 * (c[:-1] + c[1:]), side="left")
        if cuts is not None and np.array_equal(new_cuts, cuts):
            break
        cuts = new_cuts
        start, stop = np.concatenate([[0], cuts]), np.concatenate([cuts, [x.size]])
        count = stop - start
        sums = prefix[stop] - prefix[start]
        c = np.where(count > 0, shift + sums / np.maximum(count, 1), c)
    boundaries = 0.5 * (c[:-1] + c[1:])
    cell = np.searchsorted(boundaries, x, side="right")
    mse = float(np.mean((x - c[cell]) ** 2))
    return Codebook(
        c, boundaries, (lo, hi), mse, f"k-means++ {bits} bits ({x.size} samples, seed {seed})"
    )


# -- quantize / dequantize (the hot path) ----------------------------------------------------------
def quantize(x: Any, codebook: Codebook):
    """Index of the cell of every element of ``x``: ``searchsorted(boundaries, x, side="right")``.

    For Lloyd-Max and k-means codebooks (midpoint boundaries) this is the
    nearest centroid.  Conventions:

    * a value equal to a threshold goes to the **upper** cell (``side="right"``);
    * values outside the support fall in the end cells (clamped by
      construction); level-1 angles must be mapped to ``[0, 2 pi)`` first, since
      ``2 pi - eps`` and ``+eps`` are neighbours on the circle but not here;
    * the thresholds are cast to the compute dtype of ``x`` (float16 is compared
      in float32), so float32 input is quantized against float32-rounded
      thresholds;
    * NaN is not checked here (the quantizers validate their input once).

    Parameters
    ----------
    x : array
        Real floating array of any shape, NumPy or any array-API namespace.
    codebook : Codebook

    Returns
    -------
    array of uint8
        Same shape, namespace and device as ``x``.
    """
    if not isinstance(codebook, Codebook):
        raise TypeError(f"codebook must be a Codebook, got {type(codebook).__name__}")
    if not is_array_api_obj(x):
        if isinstance(x, bool) or not isinstance(x, (numbers.Real, list, tuple)):
            raise TypeError(f"x must be a real floating array, got {type(x).__name__}")
        x = np.asarray(x, dtype=np.float64)
    xp = namespace(x)
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"x must have a real floating dtype, got {x.dtype}")
    work = compute_dtype(xp, x.dtype)
    return cell_index(xp.astype(x, work), host_to_like(codebook.boundaries, x, dtype=work))


def cell_index(x, thresholds):
    """The array core of :func:`quantize`: ``searchsorted(thresholds, x, side="right")`` as uint8.

    ``x`` and the sorted ``thresholds`` share namespace, device and dtype.
    """
    xp = namespace(x, thresholds)
    idx = xp.searchsorted(thresholds, xp.reshape(x, (-1,)), side="right")
    return xp.reshape(xp.astype(idx, xp.uint8), x.shape)


def cell_value(indices, centroids):
    """The array core of :func:`dequantize`: ``centroids[indices]`` for any shape of indices."""
    xp = namespace(indices, centroids)
    flat = xp.astype(xp.reshape(indices, (-1,)), xp.int64)  # array-API take wants 1-D indices
    return xp.reshape(xp.take(centroids, flat, axis=0), indices.shape)


def dequantize(indices: Any, codebook: Codebook, dtype: Any = None):
    """Centroid values ``codebook.centroids[indices]``, in the namespace of ``indices``.

    Parameters
    ----------
    indices : array
        Integer array of any shape with values in ``[0, 2**bits)`` (not
        checked: NumPy raises ``IndexError`` out of range, other namespaces
        may not).
    codebook : Codebook
    dtype : dtype, optional
        Output dtype of the ``indices``' namespace; default float64.

    Returns
    -------
    array
        Same shape and device as ``indices``.
    """
    if not isinstance(codebook, Codebook):
        raise TypeError(f"codebook must be a Codebook, got {type(codebook).__name__}")
    if not is_array_api_obj(indices):
        raise TypeError(f"indices must be an integer array, got {type(indices).__name__}")
    xp = namespace(indices)
    if not xp.isdtype(indices.dtype, "integral"):
        raise TypeError(f"indices must have an integer dtype, got {indices.dtype}")
    table = host_to_like(codebook.centroids, indices, dtype=xp.float64 if dtype is None else dtype)
    return cell_value(indices, table)
