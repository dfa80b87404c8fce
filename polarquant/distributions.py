r"""The probability laws that the codebooks are designed for.

A random rotation makes every input look the same, so each quantizer of
polarquant quantizes numbers whose law is known in advance.  This module writes
those laws down, exactly, once:

* **PolarQuant angles** (Han et al., arXiv 2502.02617, Sec. 3, Lemma 2).  For a
  Gaussian (equivalently, randomly rotated) input, the level-1 angles of the
  recursive polar transform are uniform on :math:`[0, 2\pi)` and a level
  :math:`l \ge 2` angle has density

  .. math::

      f_l(\psi) = \frac{\Gamma(2^{l-1})}{2^{2^{l-1}-2}\,\Gamma(2^{l-2})^2}
                  \sin^{2^{l-1}-1}(2\psi), \qquad \psi \in [0, \pi/2].

  Equivalently :math:`\sin^2\psi \sim \mathrm{Beta}(a, a)` with
  :math:`a = 2^{l-2}`: :math:`\psi = \arctan(r_2/r_1)` where :math:`r_1^2, r_2^2`
  are independent :math:`\chi^2_{2a}` (the squared radii of the two halves of a
  block of :math:`2^l` coordinates).  This gives the distribution function
  :func:`angle_cdf` and, through a reduction formula, :func:`angle_std`.

* **TurboQuant coordinates** (Zandieh et al., arXiv 2504.19874, Sec. 3.1,
  Lemma 1).  One coordinate :math:`X` of a uniformly random unit vector of
  :math:`\mathbb{R}^d` has density

  .. math::

      f_d(x) = \frac{\Gamma(d/2)}{\sqrt{\pi}\,\Gamma((d-1)/2)} (1 - x^2)^{(d-3)/2},
      \qquad x \in [-1, 1],

  i.e. :math:`(X + 1)/2 \sim \mathrm{Beta}((d-1)/2, (d-1)/2)`, and
  :math:`\sqrt{d} X \to N(0, 1)`: the Gaussian limit :math:`N(0, 1/d)`
  (:func:`gaussian_coordinate_density`).

Partial moments (used by the Lloyd-Max solver of :mod:`polarquant.codebooks`).
Since :math:`\frac{d}{dx}\big[(1-x^2) f_d(x)\big] = -(d-1)\, x f_d(x)` and
:math:`(1 - x^2) f_d = \frac{d-1}{d} f_{d+2}`, integration by parts gives, on any
interval :math:`[u, v]`,

.. math::

    \int_u^v x f_d = \frac{f_{d+2}(u) - f_{d+2}(v)}{d}, \qquad
    \int_u^v x^2 f_d = \frac{u f_{d+2}(u) - v f_{d+2}(v) + F_{d+2}(v) - F_{d+2}(u)}{d},

closed forms free of the catastrophic cancellation of the textbook route through
:math:`E[Y^k]` of the Beta variable (:func:`coordinate_partial_moments`).  The
Gaussian limit has the same structure with :math:`f_{d+2}, F_{d+2}` replaced by
the :math:`N(0, 1/d)` density and distribution function
(:func:`gaussian_coordinate_partial_moments`).

Symbols
-------
=========  ==========================================================
``psi``    a polar angle (radians)
``level``  the level ``l >= 1`` of the recursive polar transform
``a``      Beta shape: ``2**(l-2)`` (angles), ``(d-1)/2`` (coordinates)
``x``      one coordinate of a rotated unit vector
``dim``    the dimension ``d >= 2`` of that vector
``u, v``   the ends of an interval (a quantization cell)
=========  ==========================================================

Departures from the papers: none in the laws.  Numerically, every normalising
constant is evaluated in log space with :func:`math.lgamma` (``Gamma`` overflows
float64 beyond ``d ~ 340`` and from angle level 9 on), so ``dim = 100000`` and
angle levels 12 and beyond work.  The densities follow the input's array
namespace and dtype (float16 is computed in float32); the distribution
functions and partial moments are host (NumPy float64) functions, since they
serve codebook design and tests, not the data path.

References
----------
.. [1] I. Han, P. Kacham, A. Karbasi, V. Mirrokni, A. Zandieh. PolarQuant:
   Quantizing KV Caches with Polar Transformation. arXiv 2502.02617, Lemma 2.
.. [2] A. Zandieh, M. Daliri, M. Hadian, V. Mirrokni. TurboQuant: Online Vector
   Quantization with Near-optimal Distortion Rate. arXiv 2504.19874, Lemma 1.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from array_api_compat import is_array_api_obj
from scipy import special

from ._array import check_int, compute_dtype, namespace

__all__ = [
    "angle_support",
    "angle_density",
    "angle_cdf",
    "angle_std",
    "coordinate_support",
    "coordinate_density",
    "coordinate_cdf",
    "coordinate_partial_moments",
    "gaussian_coordinate_density",
    "gaussian_coordinate_partial_moments",
    "normal_partial_moments",
]

TWO_PI = 2.0 * math.pi


# -- validation -------------------------------------------------------------------------------
def _check_level(level: Any) -> int:
    return check_int(level, "level", low=1)


def _check_dim(dim: Any) -> int:
    return check_int(dim, "dim", low=2)


def _float_input(x: Any, name: str):
    """Return ``(xp, x_compute, out_dtype)`` for a density argument.

    Real floating arrays keep their dtype on output (float16 is computed in
    float32); integer arrays and Python numbers are computed and returned in
    float64.
    """
    if isinstance(x, bool) or (
        not is_array_api_obj(x) and not isinstance(x, (numbers.Real, list, tuple))
    ):
        raise TypeError(f"{name} must be a real number or a real array, got {type(x).__name__}")
    if not is_array_api_obj(x):
        x = np.asarray(x)
        if x.dtype.kind not in "iuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
        x = x.astype(np.float64)
    xp = namespace(x)
    if xp.isdtype(x.dtype, "real floating"):
        out_dtype = x.dtype
        work = compute_dtype(xp, x.dtype)
    elif xp.isdtype(x.dtype, "integral"):
        out_dtype = work = xp.float64
    else:
        raise TypeError(f"{name} must have a real (floating or integer) dtype, got {x.dtype}")
    return xp, xp.astype(x, work), out_dtype


def _finish(xp, x, value, out_dtype):
    """NaN in, NaN out; cast back to the caller's dtype."""
    value = xp.where(xp.isnan(x), x, value)
    return xp.astype(value, out_dtype)


# -- PolarQuant angles (Lemma 2) -----------------------------------------------------------------
def angle_support(level: int) -> tuple[float, float]:
    """Support of the level-``level`` angles: ``(0, 2 pi)`` for level 1, else ``(0, pi/2)``.

    Level 1 is ``atan2`` of a pair of coordinates, mapped to the half-open
    interval ``[0, 2 pi)``; higher levels are ``atan`` of a ratio of radii.
    """
    return (0.0, TWO_PI) if _check_level(level) == 1 else (0.0, math.pi / 2)


def _angle_shape(level: int) -> int:
    """Beta shape ``a = 2**(l-2)``: ``sin^2 psi ~ Beta(a, a)`` at level ``l >= 2``."""
    return 1 << (level - 2)


def _log_angle_constant(level: int) -> float:
    r"""``log(Gamma(2a) / (2**(2a-2) Gamma(a)**2))`` with ``a = 2**(l-2)`` (Lemma 2)."""
    a = _angle_shape(level)
    return math.lgamma(2 * a) - (2 * a - 2) * math.log(2.0) - 2.0 * math.lgamma(a)


def angle_density(psi: Any, level: int):
    r"""Density of a level-``level`` PolarQuant angle (PolarQuant Sec. 3, Lemma 2).

    .. math::

        f_1(\psi) = \frac{1}{2\pi} \text{ on } [0, 2\pi), \qquad
        f_l(\psi) = \frac{\Gamma(2^{l-1})}{2^{2^{l-1}-2}\Gamma(2^{l-2})^2}
                    \sin^{2^{l-1}-1}(2\psi) \text{ on } [0, \pi/2].

    Parameters
    ----------
    psi : float or array
        Angles in radians, NumPy or any array-API array.
    level : int
        Level ``l >= 1`` of the recursive polar transform.

    Returns
    -------
    array
        The density, in the namespace of ``psi`` and with its floating dtype
        (float64 for integer or Python input); zero outside the support, NaN
        where ``psi`` is NaN.

    Examples
    --------
    >>> round(float(angle_density(np.pi / 4, 3)), 6)   # the mode, 3/2
    1.5
    """
    level = _check_level(level)
    xp, x, out_dtype = _float_input(psi, "psi")
    zero = xp.zeros_like(x)
    if level == 1:
        inside = (x >= 0) & (x < TWO_PI)
        value = xp.where(inside, zero + 1.0 / TWO_PI, zero)
    else:
        power = 2 * _angle_shape(level) - 1
        # Near the mode pi/4, sin(2 psi) = 1 - q with q = 2 sin^2(psi - pi/4): raising the
        # rounded number close to 1 to the power 2a - 1 (2047 at level 12) would amplify
        # its rounding error, log1p(-q) does not.  Away from the mode, 2 sin(psi) cos(psi)
        # is exact at psi = 0 (abs: a float32 pi/2 lies a hair beyond pi/2).
        q = 2.0 * xp.sin(x - math.pi / 4) ** 2
        near = q < 0.5
        from_mode = xp.exp(power * xp.log1p(-xp.where(near, q, zero)))
        direct = xp.abs(2.0 * xp.sin(x) * xp.cos(x)) ** power
        inside = (x >= 0) & (x <= math.pi / 2)
        value = xp.where(
            inside, math.exp(_log_angle_constant(level)) * xp.where(near, from_mode, direct), zero
        )
    return _finish(xp, x, value, out_dtype)


def angle_cdf(psi: Any, level: int) -> np.ndarray:
    r"""Distribution function of a level-``level`` angle (host, NumPy float64).

    Level 1: :math:`\psi / 2\pi`; level :math:`l \ge 2`:
    :math:`F_l(\psi) = I_{\sin^2\psi}(a, a)`, the regularized incomplete Beta
    function with :math:`a = 2^{l-2}` (because :math:`\sin^2\psi \sim
    \mathrm{Beta}(a, a)`, PolarQuant Lemma 2).  Clipped to ``[0, 1]`` outside the
    support.  Useful for Kolmogorov-Smirnov tests of the polar transform.
    """
    level = _check_level(level)
    x = np.asarray(psi, dtype=np.float64)
    lo, hi = angle_support(level)
    x = np.clip(x, lo, hi)
    if level == 1:
        return x / TWO_PI
    a = _angle_shape(level)
    return special.betainc(a, a, np.sin(x) ** 2)


def angle_std(level: int) -> float:
    r"""Standard deviation (radians) of a level-``level`` angle.

    Level 1 (uniform on :math:`[0, 2\pi)`): :math:`2\pi/\sqrt{12}`.  Level
    :math:`l \ge 2`: the angle is symmetric about :math:`\pi/4`; with
    :math:`s = 2\psi - \pi/2` the density of :math:`s` is proportional to
    :math:`\cos^m s` on :math:`[-\pi/2, \pi/2]`, :math:`m = 2a - 1`.  Integrating
    :math:`s^2 (\cos^m s)''` by parts twice gives the reduction
    :math:`E_m[s^2] = E_{m-2}[s^2] - 2/m^2` (:math:`m \ge 3`), and directly
    :math:`E_1[s^2] = \pi^2/4 - 2`; with :math:`\sum_{k \text{ odd}} k^{-2} = \pi^2/8`,

    .. math::

        \operatorname{Var}\psi = \frac{1}{4} E_m[s^2]
          = \frac{1}{2} \sum_{k \text{ odd} > m} \frac{1}{k^2}
          = \frac{\psi_1(a + 1/2)}{8} \approx \frac{1}{2^{l+1}},

    with :math:`\psi_1` the trigamma function.  Values 0.342, 0.248, 0.176,
    0.125 rad for levels 2..5 (PolarQuant Sec. 3).

    Examples
    --------
    >>> [round(angle_std(level), 3) for level in (2, 3, 4, 5)]
    [0.342, 0.248, 0.176, 0.125]
    """
    level = _check_level(level)
    if level == 1:
        return TWO_PI / math.sqrt(12.0)
    return math.sqrt(float(special.polygamma(1, _angle_shape(level) + 0.5)) / 8.0)


# -- TurboQuant coordinates (Lemma 1) ------------------------------------------------------------
def coordinate_support(dim: int) -> tuple[float, float]:
    """Support ``(-1, 1)`` of one coordinate of a unit vector (``dim`` is validated)."""
    _check_dim(dim)
    return (-1.0, 1.0)


def _log_coordinate_constant(dim: int) -> float:
    """``log(Gamma(d/2) / (sqrt(pi) Gamma((d-1)/2)))`` (TurboQuant Lemma 1)."""
    return math.lgamma(dim / 2) - 0.5 * math.log(math.pi) - math.lgamma((dim - 1) / 2)


def _log_one_minus_square(xp, t):
    """``log(1 - t**2)`` for ``|t| < 1``, accurate at both ends.

    ``log1p(-t*t)`` keeps the relative accuracy of small ``t`` (what matters when
    the exponent ``(d-3)/2`` is huge); ``log((1-t)(1+t))`` is exact near
    ``|t| = 1``, where ``t*t`` may round to 1.  Each branch only sees its own
    (masked) values, so neither warns.
    """
    small = t * t < 0.25
    ts = xp.where(small, t, xp.zeros_like(t))
    tb = xp.where(small, xp.zeros_like(t) + 0.75, t)
    return xp.where(small, xp.log1p(-(ts * ts)), xp.log((1.0 - tb) * (1.0 + tb)))


def coordinate_density(x: Any, dim: int):
    r"""Exact density of one coordinate of a uniformly random unit vector (TurboQuant Lemma 1).

    .. math::

        f_d(x) = \frac{\Gamma(d/2)}{\sqrt{\pi}\,\Gamma((d-1)/2)} (1 - x^2)^{(d-3)/2},
        \qquad x \in [-1, 1],

    i.e. :math:`(x+1)/2 \sim \mathrm{Beta}((d-1)/2, (d-1)/2)`.  Evaluated in
    log space, so ``dim = 100000`` works.  At ``|x| = 1`` the density is 0 for
    ``dim >= 4``, ``1/2`` for ``dim = 3`` (uniform law) and ``+inf`` for
    ``dim = 2`` (the arcsine law is singular at its ends, integrably so).

    Parameters
    ----------
    x : float or array
        Points, NumPy or any array-API array.
    dim : int
        Dimension ``d >= 2`` of the unit vector.

    Returns
    -------
    array
        The density in the namespace of ``x`` and with its floating dtype
        (float64 for integer or Python input); zero outside ``[-1, 1]``.

    Examples
    --------
    >>> round(float(coordinate_density(0.0, 3)), 6)   # uniform on [-1, 1]
    0.5
    """
    dim = _check_dim(dim)
    xp, x, out_dtype = _float_input(x, "x")
    zero = xp.zeros_like(x)
    inside = (x > -1.0) & (x < 1.0)
    t = xp.where(inside, x, zero)
    value = xp.exp(_log_coordinate_constant(dim) + 0.5 * (dim - 3) * _log_one_minus_square(xp, t))
    edge_value = {2: math.inf, 3: 0.5}.get(dim, 0.0)
    at_edge = xp.abs(x) == 1.0
    value = xp.where(inside, value, xp.where(at_edge, zero + edge_value, zero))
    return _finish(xp, x, value, out_dtype)


def gaussian_coordinate_density(x: Any, dim: int):
    r"""The Gaussian limit :math:`N(0, 1/d)` of :func:`coordinate_density` (TurboQuant Sec. 3.1).

    .. math::

        g_d(x) = \sqrt{\frac{d}{2\pi}}\, e^{-d x^2 / 2}.

    Same conventions as :func:`coordinate_density` (any array namespace, the
    input's floating dtype); the support is the whole real line.
    """
    dim = _check_dim(dim)
    xp, x, out_dtype = _float_input(x, "x")
    value = math.sqrt(dim / TWO_PI) * xp.exp(-0.5 * dim * (x * x))
    return _finish(xp, x, value, out_dtype)


def coordinate_cdf(x: Any, dim: int) -> np.ndarray:
    r"""Distribution function of :func:`coordinate_density` (host, NumPy float64).

    :math:`F_d(x) = I_{(x+1)/2}(a, a)`, :math:`a = (d-1)/2`, the regularized
    incomplete Beta function (TurboQuant Lemma 1).
    """
    dim = _check_dim(dim)
    x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
    a = 0.5 * (dim - 1)
    return special.betainc(a, a, 0.5 * (1.0 + x))


def _interval_mass(lower_tail, u, v):
    """``P(u < X < v)`` for a law symmetric about 0 with lower tail ``P(X < x)``.

    Intervals in the upper half use the upper tail ``P(X > x) = lower_tail(-x)``,
    so both ends are small numbers and their difference keeps full precision.
    """
    return np.where(u >= 0, lower_tail(-u) - lower_tail(-v), lower_tail(v) - lower_tail(u))


def _as_interval_ends(u, v):
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    if np.any(u > v):
        raise ValueError("every interval must have u <= v")
    return u, v


def coordinate_partial_moments(u: Any, v: Any, dim: int):
    r"""Partial moments :math:`\int_u^v x^k f_d(x)\,dx`, ``k = 0, 1, 2`` (host, float64).

    Closed forms (see the module docstring), exact for every ``dim >= 2``,
    including the singular ends of the arcsine law at ``dim = 2``:

    .. math::

        m_0 = F_d(v) - F_d(u), \quad
        m_1 = \frac{f_{d+2}(u) - f_{d+2}(v)}{d}, \quad
        m_2 = \frac{u f_{d+2}(u) - v f_{d+2}(v) + F_{d+2}(v) - F_{d+2}(u)}{d}.

    Parameters
    ----------
    u, v : array_like
        Interval ends (broadcast together), ``u <= v``; clipped to ``[-1, 1]``.
    dim : int
        Dimension ``d >= 2``.

    Returns
    -------
    m0, m1, m2 : numpy.ndarray
    """
    dim = _check_dim(dim)
    u, v = _as_interval_ends(u, v)
    u, v = np.clip(u, -1.0, 1.0), np.clip(v, -1.0, 1.0)
    m0 = _interval_mass(lambda x: coordinate_cdf(x, dim), u, v)
    fu, fv = coordinate_density(u, dim + 2), coordinate_density(v, dim + 2)
    m1 = (fu - fv) / dim
    m2 = (u * fu - v * fv + _interval_mass(lambda x: coordinate_cdf(x, dim + 2), u, v)) / dim
    return m0, m1, m2


def gaussian_coordinate_partial_moments(u: Any, v: Any, dim: int):
    r"""Partial moments of the Gaussian limit :math:`N(0, s^2)`, :math:`s = 1/\sqrt{d}` (host).

    With :math:`\phi, \Phi` the standard normal density and distribution
    function and :math:`z = x / s`:

    .. math::

        m_0 = \Phi(z_v) - \Phi(z_u), \quad
        m_1 = s\,(\phi(z_u) - \phi(z_v)), \quad
        m_2 = s^2\,(z_u \phi(z_u) - z_v \phi(z_v) + m_0).

    Infinite ends are allowed (``z phi(z)`` is 0 there).
    """
    dim = _check_dim(dim)
    u, v = _as_interval_ends(u, v)
    return normal_partial_moments(u, v, 1.0 / math.sqrt(dim))


def normal_partial_moments(u: Any, v: Any, scale: float = 1.0):
    """Partial moments of ``N(0, scale**2)`` on ``[u, v]`` (host, float64).

    The formulas of :func:`gaussian_coordinate_partial_moments`, for any
    standard deviation ``scale > 0`` (``scale = 1`` gives the N(0, 1) law whose
    Lloyd-Max codebook TurboQuant tabulates).
    """
    u, v = _as_interval_ends(u, v)
    if not (isinstance(scale, numbers.Real) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite positive number, got {scale!r}")
    zu, zv = u / scale, v / scale
    m0 = _interval_mass(special.ndtr, zu, zv)

    def phi(z):
        return (
            np.exp(-0.5 * np.where(np.isfinite(z), z, 0.0) ** 2)
            * np.isfinite(z)
            / math.sqrt(TWO_PI)
        )

    def z_phi(z):
        return np.where(np.isfinite(z), z, 0.0) * phi(z)

    m1 = scale * (phi(zu) - phi(zv))
    m2 = scale**2 * (z_phi(zu) - z_phi(zv) + m0)
    return m0, m1, m2
