"""Tests of polarquant.distributions against independent oracles.

Oracles: ``scipy.integrate.quad`` (normalisation, moments), ``scipy.stats.beta``
(the Beta form of both laws), a Monte Carlo of the mechanism behind PolarQuant
Lemma 2 (angles of Gaussian blocks), and asymptotic expansions (Stirling,
Edgeworth) for large dimensions.  Every threshold is derived in the docstring.
"""

from __future__ import annotations

import math

import array_api_strict as xps
import numpy as np
import pytest
from scipy import integrate, stats

from polarquant.distributions import (
    angle_cdf,
    angle_density,
    angle_std,
    angle_support,
    coordinate_cdf,
    coordinate_density,
    coordinate_partial_moments,
    gaussian_coordinate_density,
    gaussian_coordinate_partial_moments,
    normal_partial_moments,
)

#: Chooses its backends explicitly (or uses none): CI's Numba pass leaves it out (conftest.py).
pytestmark = pytest.mark.backend_independent

LEVELS = list(range(1, 13))
DIMS = [2, 3, 4, 5, 16, 128, 1000, 100_000]


def _quad(f, lo, hi, points=None):
    value, _ = integrate.quad(f, lo, hi, points=points, limit=400, epsabs=1e-13, epsrel=1e-12)
    return value


def _coordinate_breaks(dim):
    """Break points at +-10 std so that quad sees the narrow bulk of large-``dim`` laws."""
    s = 10 / math.sqrt(dim)
    return [-s, 0.0, s] if s < 1 else [0.0]


# -- supports and normalisation -----------------------------------------------------------------
def test_angle_support():
    assert angle_support(1) == (0.0, 2 * math.pi)
    for level in (2, 3, 12):
        assert angle_support(level) == (0.0, math.pi / 2)


@pytest.mark.parametrize("level", LEVELS)
def test_angle_density_integrates_to_one(level):
    """quad's relative accuracy is ~1e-12 for these smooth, bounded densities.

    Level 12 has std 0.011 rad; the break point at the mode pi/4 lets quad find it.
    """
    lo, hi = angle_support(level)
    points = [math.pi / 4] if level > 1 else None
    assert _quad(lambda p: float(angle_density(p, level)), lo, hi, points) == pytest.approx(
        1, abs=1e-9
    )


@pytest.mark.parametrize("dim", DIMS)
def test_coordinate_density_integrates_to_one(dim):
    """Includes dim = 2, whose integrable 1/sqrt(1 - x^2) end singularities quad extrapolates
    to ~1e-10, and dim = 100000 (normalising constant via log-gamma, std 0.003)."""
    total = _quad(lambda x: float(coordinate_density(x, dim)), -1, 1, _coordinate_breaks(dim))
    assert total == pytest.approx(1, abs=1e-9)


def test_gaussian_coordinate_density_integrates_to_one():
    for dim in (2, 128, 100_000):
        s = 1 / math.sqrt(dim)
        total = _quad(
            lambda x, dim=dim: float(gaussian_coordinate_density(x, dim)), -40 * s, 40 * s, [0.0]
        )
        assert total == pytest.approx(1, abs=1e-10)


# -- the laws against independent forms -----------------------------------------------------------
@pytest.mark.parametrize("dim", [2, 3, 4, 7, 64, 128, 1536])
def test_coordinate_density_is_the_beta_law(dim):
    """(X + 1)/2 ~ Beta((d-1)/2, (d-1)/2) (TurboQuant Lemma 1): f_X(x) = beta.pdf((x+1)/2) / 2.

    Both sides are float64 evaluations of the same function by different routes
    (log-gamma here, Boost there): agreement to 1e-10 relative in the bulk.
    """
    a = (dim - 1) / 2
    x = np.linspace(-0.999, 0.999, 1001)
    expected = stats.beta.pdf((x + 1) / 2, a, a) / 2
    keep = expected > 1e-250
    np.testing.assert_allclose(coordinate_density(x, dim)[keep], expected[keep], rtol=1e-10)
    np.testing.assert_allclose(
        coordinate_cdf(x, dim), stats.beta.cdf((x + 1) / 2, a, a), rtol=1e-10, atol=1e-300
    )


def test_coordinate_density_edges():
    """At |x| = 1: +inf for the arcsine law (dim 2), 1/2 for the uniform law (dim 3), 0 above;
    0 outside [-1, 1]; NaN propagates."""
    x = np.array([-1.0, 1.0])
    assert np.all(np.isinf(coordinate_density(x, 2)))
    np.testing.assert_array_equal(coordinate_density(x, 3), [0.5, 0.5])
    np.testing.assert_array_equal(coordinate_density(x, 4), [0.0, 0.0])
    np.testing.assert_array_equal(coordinate_density(np.array([-1.5, 2.0]), 2), [0.0, 0.0])
    assert np.isnan(coordinate_density(np.nan, 5))


@pytest.mark.parametrize("level", range(2, 11))
def test_angle_density_is_the_beta_law(level):
    """PolarQuant Lemma 2 rewritten: sin^2(psi) ~ Beta(a, a), a = 2^(l-2), so
    f_l(psi) = beta.pdf(sin^2 psi; a, a) * sin(2 psi).  scipy's route rounds
    sin^2 psi before raising it to the power a - 1 (up to 255 here), which costs
    ~a * 1e-16 relative in the tails: 1e-9 covers it with margin."""
    a = 2 ** (level - 2)
    psi = np.linspace(0.01, math.pi / 2 - 0.01, 1001)
    expected = stats.beta.pdf(np.sin(psi) ** 2, a, a) * np.sin(2 * psi)
    keep = expected > 1e-250
    np.testing.assert_allclose(angle_density(psi, level)[keep], expected[keep], rtol=1e-9)
    np.testing.assert_allclose(
        angle_cdf(psi, level), stats.beta.cdf(np.sin(psi) ** 2, a, a), rtol=1e-10, atol=1e-300
    )


def test_angle_density_outside_support_and_nan():
    psi = np.array([-0.1, 0.0, math.pi / 2 + 0.1, np.nan])
    out = angle_density(psi, 3)
    np.testing.assert_array_equal(out[:3], [0.0, 0.0, 0.0])
    assert np.isnan(out[3])
    level1 = angle_density(np.array([-0.1, 0.0, 3.0, 2 * math.pi]), 1)
    np.testing.assert_array_equal(level1, [0.0, 1 / (2 * math.pi), 1 / (2 * math.pi), 0.0])


@pytest.mark.parametrize("level", [2, 3, 4, 5])
def test_angle_law_matches_gaussian_blocks(level):
    """The mechanism behind Lemma 2: psi = atan(||g2|| / ||g1||) for independent standard
    Gaussian blocks g1, g2 of 2^(l-1) coordinates each (the two level-(l-1) radii of a
    block of 2^l coordinates).  Kolmogorov-Smirnov with n = 20000 seeded samples: the 0.1%
    critical value of sqrt(n) D is 1.95, so the test fails by chance for one seed in a
    thousand (not for this one), while the next level's law (the wrong exponent) is rejected.
    """
    rng = np.random.default_rng(20250202 + level)
    n = 20_000
    blocks = rng.standard_normal((n, 2, 2 ** (level - 1)))
    r = np.linalg.norm(blocks, axis=-1)
    psi = np.arctan2(r[:, 1], r[:, 0])
    d_stat = stats.kstest(psi, lambda p: angle_cdf(p, level)).statistic
    assert math.sqrt(n) * d_stat < 1.95
    wrong = stats.kstest(psi, lambda p: angle_cdf(p, level + 1)).statistic
    assert math.sqrt(n) * wrong > 1.95


# -- moments -------------------------------------------------------------------------------------
def test_angle_std_reference_values():
    """PolarQuant Sec. 3 / algorithms.md print 0.342, 0.248, 0.176, 0.125 rad (3 decimals)."""
    for level, printed in zip((2, 3, 4, 5), (0.342, 0.248, 0.176, 0.125), strict=True):
        assert abs(angle_std(level) - printed) <= 5e-4
    assert angle_std(1) == pytest.approx(2 * math.pi / math.sqrt(12), rel=1e-15)


@pytest.mark.parametrize("level", LEVELS)
def test_angle_std_matches_quadrature(level):
    """The trigamma closed form against quad of (psi - mean)^2 f; quad reaches ~1e-12."""
    lo, hi = angle_support(level)
    mean = (lo + hi) / 2
    points = [math.pi / 4] if level > 1 else None
    var = _quad(lambda p: (p - mean) ** 2 * float(angle_density(p, level)), lo, hi, points)
    assert angle_std(level) == pytest.approx(math.sqrt(var), rel=1e-9)


@pytest.mark.parametrize("dim", [2, 3, 5, 16, 128, 1536])
def test_coordinate_partial_moments_match_quadrature(dim):
    """The integration-by-parts closed forms against quad on cells of a 3-bit-like partition
    (quad reaches ~1e-12; 1e-9 relative).  The arcsine law (dim 2) is integrated in the angle
    x = -cos(theta), where it is uniform, to avoid its end singularities.  Also
    E[X^2] = 1/d exactly (a unit vector has squared norm 1 = sum of d equal parts)."""
    edges = np.array([-1.0, -0.4, -0.05, 0.0, 0.02, 0.3, 1.0])
    u, v = edges[:-1], edges[1:]
    got = coordinate_partial_moments(u, v, dim)
    for j in range(3):
        if dim == 2:
            expected = [
                _quad(lambda t, j=j: (-math.cos(t)) ** j / math.pi, math.acos(-a), math.acos(-b))
                for a, b in zip(u, v, strict=True)
            ]
        else:
            expected = [
                _quad(lambda x, j=j: x**j * float(coordinate_density(x, dim)), a, b)
                for a, b in zip(u, v, strict=True)
            ]
        np.testing.assert_allclose(got[j], expected, rtol=1e-9, atol=1e-13)
    m0, m1, m2 = coordinate_partial_moments(-1.0, 1.0, dim)
    assert (m0, m1, m2 * dim) == (
        pytest.approx(1, abs=1e-14),
        pytest.approx(0, abs=1e-14),
        pytest.approx(1, abs=1e-13),
    )


def test_gaussian_partial_moments():
    """Closed forms against quad, including infinite ends; N(0, 1/d) has E X^2 = 1/d."""
    dim = 64
    s = 1 / math.sqrt(dim)
    edges = np.array([-np.inf, -2 * s, -0.1 * s, 0.5 * s, 3 * s, np.inf])
    got = gaussian_coordinate_partial_moments(edges[:-1], edges[1:], dim)
    for j in range(3):
        expected = [
            _quad(lambda x, j=j: x**j * float(gaussian_coordinate_density(x, dim)), a, b)
            for a, b in zip(edges[:-1], edges[1:], strict=True)
        ]
        np.testing.assert_allclose(got[j], expected, rtol=1e-9, atol=1e-15)
    m0, m1, m2 = normal_partial_moments(-np.inf, np.inf, 2.0)
    assert (float(m0), float(m1), float(m2)) == (1.0, 0.0, pytest.approx(4.0, rel=1e-15))
    with pytest.raises(ValueError, match="u <= v"):
        normal_partial_moments(1.0, 0.0)
    with pytest.raises(ValueError, match="scale"):
        normal_partial_moments(0.0, 1.0, scale=-1.0)


# -- large dimensions ----------------------------------------------------------------------------
def test_coordinate_density_large_dim_no_overflow():
    """Gamma(50000) overflows float64; log-gamma does not.  Stirling gives the constant:
    f_d(0) = Gamma(d/2) / (sqrt(pi) Gamma((d-1)/2)) = sqrt(d / 2 pi) (1 - 3 / (4 (d-1)) + O(d^-2)),
    the O(d^-2) remainder being ~1e-10 at d = 1e5 (the bound 1e-8 leaves room for rounding)."""
    d = 100_000
    x = np.array([0.0, 0.001, 0.01, 0.05, 1.0])
    f = coordinate_density(x, d)
    assert np.all(np.isfinite(f))
    ratio = f[0] / math.sqrt(d / (2 * math.pi))
    assert abs(ratio - (1 - 3 / (4 * (d - 1)))) < 1e-8
    assert f[3] == 0.0 or f[3] < 1e-50  # 0.05 is 16 std away
    assert f[4] == 0.0


@pytest.mark.parametrize("dim", [200, 2000, 20_000])
def test_coordinate_density_converges_to_gaussian_limit(dim):
    r"""Edgeworth: Z = sqrt(d) X has variance 1 and excess kurtosis -6/(d+2), so its density is
    phi(z) (1 - (6/d)/24 He_4(z)) + O(d^-2).  The sup of |He_4 phi| is 3 phi(0) at z = 0, hence
    d * sup_z |f_Z - phi| -> (6/24) * 3 / sqrt(2 pi) = 0.29921, with an O(1/d) correction whose
    constant is below 0.5.  In x units the sup difference of the densities is that / sqrt(d)."""
    z = np.linspace(-8, 8, 16001)
    x = z / math.sqrt(dim)
    sup = np.max(np.abs(coordinate_density(x, dim) - gaussian_coordinate_density(x, dim)))
    limit = 0.75 / math.sqrt(2 * math.pi)
    assert abs(sup * math.sqrt(dim) - limit) <= 0.5 / dim


# -- namespaces and dtypes -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "func,arg",
    [
        (angle_density, 1),
        (angle_density, 4),
        (coordinate_density, 2),
        (coordinate_density, 300),
        (gaussian_coordinate_density, 300),
    ],
)
def test_array_api_strict_keeps_namespace_and_dtype(func, arg):
    """float64 array_api_strict input equals the NumPy result exactly (same float64 ops);
    float32 within float32 precision times the exponent's amplification (<= 300 * 6e-8)."""
    values = [0.01, 0.05, 0.5, 0.78, 1.0]
    reference = func(np.asarray(values), arg)
    for dtype, rtol in ((xps.float64, 1e-15), (xps.float32, 3e-5)):
        out = func(xps.asarray(values, dtype=dtype), arg)
        assert isinstance(out, type(xps.asarray(0.0))) and out.dtype == dtype
        np.testing.assert_allclose(np.asarray(out), reference, rtol=rtol, atol=1e-30)


def test_numpy_dtypes_and_python_scalars():
    assert angle_density(np.float16(0.7), 3).dtype == np.float16
    assert coordinate_density(np.zeros(3, np.float32), 10).dtype == np.float32
    assert coordinate_density(np.array([0, 1]), 10).dtype == np.float64  # integers -> float64
    out = angle_density(math.pi / 4, 3)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    assert float(out) == pytest.approx(1.5, rel=1e-14)  # Gamma(4)/(2^2 Gamma(2)^2) = 3/2
    np.testing.assert_allclose(coordinate_density([0.0, 0.5], 3), [0.5, 0.5], rtol=1e-15)


# -- validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad,error",
    [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError), ("2", TypeError)],
)
def test_bad_level(bad, error):
    with pytest.raises(error, match="level"):
        angle_density(0.5, bad)
    with pytest.raises(error, match="level"):
        angle_std(bad)
    with pytest.raises(error, match="level"):
        angle_support(bad)


@pytest.mark.parametrize(
    "bad,error", [(1, ValueError), (0, ValueError), (2.0, TypeError), (False, TypeError)]
)
def test_bad_dim(bad, error):
    for func in (coordinate_density, gaussian_coordinate_density):
        with pytest.raises(error, match="dim"):
            func(0.5, bad)
    with pytest.raises(error, match="dim"):
        coordinate_partial_moments(0.0, 0.5, bad)


@pytest.mark.parametrize("bad", ["0.5", None, True, np.array([1 + 1j]), np.array([True])])
def test_bad_points(bad):
    with pytest.raises(TypeError):
        angle_density(bad, 2)
    with pytest.raises(TypeError):
        coordinate_density(bad, 8)
