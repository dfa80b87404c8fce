"""Tests of polarquant.codebooks.

The slow oracle here is ``scipy.integrate.quad`` on densities re-implemented in
plain ``math`` below (PolarQuant Lemma 2, TurboQuant Lemma 1): it checks the
Lloyd-Max conditions cell by cell, independently of the library's moments and
solver.  Published numbers (algorithms.md, the TurboQuant and PolarQuant papers)
are compared to the precision they are printed with.  Thresholds are derived in
each docstring.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import FrozenInstanceError
from functools import partial

import array_api_strict as xps
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

from polarquant.codebooks import (
    Codebook,
    angle_codebook,
    coordinate_codebook,
    density_moments,
    dequantize,
    expected_mse,
    kmeans_codebook,
    lloyd_max,
    lloyd_max_density,
    quantile_codebook,
    quantize,
    uniform_codebook,
)
from polarquant.distributions import (
    angle_density,
    angle_std,
    angle_support,
    coordinate_density,
    coordinate_partial_moments,
    normal_partial_moments,
)

#: Chooses its backends explicitly (or uses none): CI's Numba pass leaves it out (conftest.py).
pytestmark = pytest.mark.backend_independent

SQRT3_PI_2 = math.sqrt(3) * math.pi / 2  # TurboQuant Theorem 1's constant (not sqrt(3 pi)/2)


# -- independent scalar densities for the quad oracle ----------------------------------------------
def oracle_angle_pdf(level):
    """PolarQuant Lemma 2 in plain math (level >= 2)."""
    n = 2 ** (level - 1)
    log_c = math.lgamma(n) - (n - 2) * math.log(2) - 2 * math.lgamma(n / 2)

    def pdf(p):
        s = math.sin(2 * p)
        return math.exp(log_c + (n - 1) * math.log(s)) if s > 0 else 0.0

    return pdf


def oracle_coordinate_pdf(dim):
    """TurboQuant Lemma 1 in plain math."""
    log_c = math.lgamma(dim / 2) - 0.5 * math.log(math.pi) - math.lgamma((dim - 1) / 2)

    def pdf(x):
        return math.exp(log_c + 0.5 * (dim - 3) * math.log1p(-x * x)) if abs(x) < 1 else 0.0

    return pdf


def oracle_gaussian_pdf(dim):
    return lambda x: math.sqrt(dim / (2 * math.pi)) * math.exp(-0.5 * dim * x * x)


def quad_cells(pdf, edges, mode):
    """Masses and first two moments of every cell [edges[k], edges[k+1]] by quad."""
    out = np.zeros((3, len(edges) - 1))
    for k, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        points = [mode] if a < mode < b and math.isfinite(a) and math.isfinite(b) else None
        for j in range(3):
            out[j, k] = integrate.quad(
                lambda x, j=j: x**j * pdf(x),
                a,
                b,
                points=points,
                limit=200,
                epsabs=1e-15,
                epsrel=1e-13,
            )[0]
    return out


def cells(cb):
    return np.concatenate([[cb.support[0]], cb.boundaries, [cb.support[1]]])


# (codebook factory, oracle pdf, std of the law, mode)
LAWS = {
    "angle-2": (partial(angle_codebook, 2), oracle_angle_pdf(2), angle_std(2), math.pi / 4),
    "angle-3": (partial(angle_codebook, 3), oracle_angle_pdf(3), angle_std(3), math.pi / 4),
    "angle-5": (partial(angle_codebook, 5), oracle_angle_pdf(5), angle_std(5), math.pi / 4),
    "angle-12": (partial(angle_codebook, 12), oracle_angle_pdf(12), angle_std(12), math.pi / 4),
    "exact-4": (partial(coordinate_codebook, 4), oracle_coordinate_pdf(4), 0.5, 0.0),
    "exact-16": (partial(coordinate_codebook, 16), oracle_coordinate_pdf(16), 0.25, 0.0),
    "exact-128": (partial(coordinate_codebook, 128), oracle_coordinate_pdf(128), 128**-0.5, 0.0),
    "gauss-128": (
        partial(coordinate_codebook, 128, exact=False),
        oracle_gaussian_pdf(128),
        128**-0.5,
        0.0,
    ),
}


# -- published numbers ---------------------------------------------------------------------------
#: N(0, 1) Lloyd-Max centroids, positive half (TurboQuant Sec. 3.1 / algorithms.md), 6 decimals.
GAUSSIAN_CENTROIDS = {
    1: [0.797885],
    2: [0.452780, 1.510418],
    3: [0.245094, 0.756005, 1.343909, 2.151946],
    4: [0.128395, 0.388048, 0.656759, 0.942340, 1.256231, 1.618046, 2.069017, 2.732590],
}
#: Per-vector D_mse = d * mse, printed with these decimals (algorithms.md table).
D_MSE_GAUSSIAN = {1: (0.3634, 4), 2: (0.1175, 4), 3: (0.03455, 5), 4: (0.00950, 5)}
D_MSE_EXACT_128 = {1: (0.3609, 4), 2: (0.1160, 4), 3: (0.03397, 5), 4: (0.00931, 5)}


@pytest.mark.parametrize("dim", [64, 128, 1536])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_gaussian_limit_centroids_match_published(dim, bits):
    """The dim-d Gaussian-limit codebook is the N(0, 1) codebook / sqrt(d).  The published
    values have 6 decimals: within 5e-7 of them, plus 1e-9 for our own convergence."""
    cb = coordinate_codebook(dim, bits, exact=False)
    half = cb.centroids[1 << (bits - 1) :] * math.sqrt(dim)
    np.testing.assert_allclose(half, GAUSSIAN_CENTROIDS[bits], rtol=0, atol=5e-7 + 1e-9)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_d_mse_tables(bits):
    """d * mse equals the printed table values up to the rounding of their last digit
    (half a unit: much stricter than 0.5%).  At b = 1 the Gaussian value is 1 - 2/pi."""
    value, decimals = D_MSE_GAUSSIAN[bits]
    for dim in (16, 128, 1536):
        got = dim * coordinate_codebook(dim, bits, exact=False).mse
        assert abs(got - value) <= 0.5 * 10.0**-decimals
    value, decimals = D_MSE_EXACT_128[bits]
    assert abs(128 * coordinate_codebook(128, bits).mse - value) <= 0.5 * 10.0**-decimals
    assert 128 * coordinate_codebook(128, 1, exact=False).mse == pytest.approx(
        1 - 2 / math.pi, rel=1e-12
    )


@pytest.mark.parametrize("dim", [2, 3, 5, 128, 100_000])
def test_exact_one_bit_closed_form(dim):
    """One bit, symmetric law: cells (-1, 0), (0, 1), centroids +-E|X| with
    E|X| = Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)) and mse = E X^2 - E|X|^2 = 1/d - E|X|^2.
    (E|X| = 2/pi for the arcsine law at d = 2.)  The log-gamma difference loses about
    eps * lgamma(d/2) ~ 1e-16 * 5e5 relative at d = 1e5: 1e-10 relative."""
    mean_abs = math.exp(math.lgamma(dim / 2) - 0.5 * math.log(math.pi) - math.lgamma((dim + 1) / 2))
    cb = coordinate_codebook(dim, 1)
    np.testing.assert_allclose(cb.centroids, [-mean_abs, mean_abs], rtol=1e-10)
    assert cb.boundaries.tolist() == [0.0]
    assert cb.mse == pytest.approx(1 / dim - mean_abs**2, rel=1e-10)


def test_dim_three_is_uniform():
    """At d = 3 the coordinate law is uniform on [-1, 1] (Archimedes), so Lloyd-Max is the
    uniform quantizer and d * mse = 3 (2/K)^2 / 12 = 4^-b: TurboQuant's lower bound exactly."""
    for bits in range(1, 9):
        cb = coordinate_codebook(3, bits)
        ref = uniform_codebook((-1.0, 1.0), bits)
        np.testing.assert_allclose(cb.centroids, ref.centroids, rtol=0, atol=1e-12)
        assert 3 * cb.mse == pytest.approx(4.0**-bits, rel=1e-9)


def test_angle_reference_values():
    """algorithms.md: 2-bit centroids (6 decimals) and MSE (3 significant digits)."""
    level3, level4 = angle_codebook(3, 2), angle_codebook(4, 2)
    np.testing.assert_allclose(
        level3.centroids, [0.426250, 0.674385, 0.896411, 1.144547], rtol=0, atol=5e-7 + 1e-9
    )
    np.testing.assert_allclose(
        level4.centroids, [0.524214, 0.705909, 0.864887, 1.046582], rtol=0, atol=5e-7 + 1e-9
    )
    assert abs(level3.mse - 6.16e-3) <= 5e-6
    assert abs(level4.mse - 3.39e-3) <= 5e-6


@pytest.mark.parametrize("bits", range(1, 9))
def test_level_one_is_the_uniform_closed_form(bits):
    """Level-1 angles are uniform on [0, 2 pi): c_k = (k + 1/2) 2 pi / K, t_k = (k+1) 2 pi / K,
    mse = (2 pi / K)^2 / 12, to rounding."""
    k = 1 << bits
    cb = angle_codebook(1, bits)
    np.testing.assert_allclose(cb.centroids, (np.arange(k) + 0.5) * 2 * math.pi / k, rtol=1e-15)
    np.testing.assert_allclose(cb.boundaries, np.arange(1, k) * 2 * math.pi / k, rtol=1e-15)
    assert cb.mse == pytest.approx((2 * math.pi / k) ** 2 / 12, rel=1e-15)
    assert cb.support == (0.0, 2 * math.pi)


# -- Lloyd-Max optimality by the slow oracle -------------------------------------------------------
@pytest.mark.parametrize("law", list(LAWS))
@pytest.mark.parametrize("bits", [1, 2, 4])
def test_lloyd_max_conditions_by_quadrature(law, bits):
    """Max's conditions, checked with quad on an independent density: every centroid is the
    conditional mean of its cell and every boundary the midpoint of its centroids.  The
    solver stops when one Lloyd step moves no centroid by more than 1e-10 std; quad is
    accurate to ~1e-13 relative: 1e-9 std bounds both.  The MSE is recomputed from the same
    integrals (relative 1e-8: the sum m2 - 2 c m1 + c^2 m0 cancels ~4 digits at level 12)."""
    factory, pdf, std, mode = LAWS[law]
    cb = factory(bits)
    np.testing.assert_allclose(
        cb.boundaries,
        0.5 * (cb.centroids[:-1] + cb.centroids[1:]),
        rtol=0,
        atol=1e-15 * max(1.0, np.max(np.abs(cb.centroids))),
    )
    m0, m1, m2 = quad_cells(pdf, cells(cb), mode)
    assert np.sum(m0) == pytest.approx(1, abs=1e-10)
    np.testing.assert_allclose(m1 / m0, cb.centroids, rtol=0, atol=1e-9 * std)
    c = cb.centroids
    assert cb.mse == pytest.approx(np.sum(m2 - 2 * c * m1 + c * c * m0), rel=1e-8)


@pytest.mark.parametrize("law", list(LAWS))
def test_symmetric_laws_give_symmetric_codebooks(law):
    """Angles (l >= 2) are symmetric about pi/4, coordinates about 0: centroids and boundaries
    mirror exactly up to one rounding (2 ulp of the largest value); the middle boundary is the
    centre itself."""
    factory, _, _, centre = LAWS[law]
    for bits in (1, 3, 8):
        cb = factory(bits)
        scale = 4 * np.spacing(max(1.0, float(np.max(np.abs(cb.centroids)))))
        np.testing.assert_allclose(
            cb.centroids + cb.centroids[::-1], 2 * centre, rtol=0, atol=scale
        )
        np.testing.assert_allclose(
            cb.boundaries + cb.boundaries[::-1], 2 * centre, rtol=0, atol=scale
        )
        assert cb.boundaries[(1 << bits) // 2 - 1] == centre


@pytest.mark.parametrize("law", list(LAWS))
def test_mse_strictly_decreases_with_bits(law):
    """One more bit splits every cell: the optimum strictly improves (by ~4x at high rate)."""
    factory = LAWS[law][0]
    mse = [factory(bits).mse for bits in range(1, 9)]
    assert all(b < a for a, b in zip(mse, mse[1:], strict=False))
    assert all(
        2.5 < a / b < 6 for a, b in zip(mse, mse[1:], strict=False)
    )  # Panter-Dite: ratio -> 4


@pytest.mark.parametrize("dim", [3, 4, 5, 16, 64, 128, 1536, 100_000])
def test_turboquant_theorem_1_bounds(dim):
    """TurboQuant Thm 1 / Thm 3: 4^-b <= d * mse <= (sqrt(3) pi / 2) 4^-b, b = 1..8, for the
    exact law and its Gaussian limit.  The upper constant is Panter-Dite's high-rate limit
    for N(0, 1), approached from below (2.699 at b = 8 vs 2.721); d = 3 sits exactly on the
    lower bound (uniform law, see test_dim_three_is_uniform), hence a 1e-9 relative slack: the
    mse is a sum of m2 - 2 c m1 + c^2 m0 over cells, which cancels ~5 digits at 8 bits."""
    for bits in range(1, 9):
        for exact in (True, False):
            per_vector = dim * coordinate_codebook(dim, bits, exact=exact).mse
            assert 4.0**-bits * (1 - 1e-9) <= per_vector <= SQRT3_PI_2 * 4.0**-bits


def test_lower_bound_does_not_hold_at_dim_two():
    """Thm 3's 4^-b is a large-d statement: at d = 2 (arcsine law) the 1-bit optimum is
    centroids +-2/pi, so d * mse = 2 (1/2 - 4/pi^2) = 1 - 8/pi^2 = 0.189 < 1/4."""
    assert 2 * coordinate_codebook(2, 1).mse == pytest.approx(1 - 8 / math.pi**2, rel=1e-12)


def test_gaussian_limit_is_scale_free():
    """The Gaussian-limit codebook for any d is one N(0, 1) codebook scaled by 1/sqrt(d)."""
    for bits in (2, 8):
        ref = coordinate_codebook(2, bits, exact=False).centroids * math.sqrt(2)
        for dim in (64, 128, 100_000):
            got = coordinate_codebook(dim, bits, exact=False).centroids * math.sqrt(dim)
            np.testing.assert_allclose(got, ref, rtol=1e-15)


# -- the generic solver and its building blocks ----------------------------------------------------
def test_density_moments_match_closed_forms():
    """Gauss-Legendre on 1024 panels of [-1, 1] for the smooth d = 128 density (std 0.088,
    ~45 panels per std) against the closed forms: 1e-12 absolute."""
    moments = density_moments(partial(coordinate_density, dim=128), (-1.0, 1.0))
    rng = np.random.default_rng(7)
    ends = np.sort(rng.uniform(-0.4, 0.4, size=(200, 2)), axis=1)
    got = moments(ends[:, 0], ends[:, 1])
    expected = coordinate_partial_moments(ends[:, 0], ends[:, 1], 128)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-12)


def test_lloyd_max_density_equals_closed_form_path():
    """Two routes to the same fixed point (quadrature vs closed-form moments) agree to the
    solver tolerance (1e-10 std, std = 0.088) plus quadrature error."""
    quad_route = lloyd_max_density(
        partial(coordinate_density, dim=128), (-1.0, 1.0), 3, symmetric=True
    )
    np.testing.assert_allclose(
        quad_route.centroids, coordinate_codebook(128, 3).centroids, rtol=0, atol=1e-10
    )
    assert quad_route.mse == pytest.approx(coordinate_codebook(128, 3).mse, rel=1e-9)


def test_lloyd_max_beats_the_baselines():
    """Lloyd-Max is the minimum-MSE scalar quantizer, so on non-uniform laws it beats
    equal-width cells and equal-probability cells (the "Lloyd-Max" of some ports): by 13% or
    more from 2 bits on for these laws (1.8x to 66x for equal width).  At 1 bit the median of a
    symmetric law is its centre, so the quantile codebook *is* Lloyd-Max; on the uniform law
    (level-1 angles) Lloyd-Max *is* the uniform codebook."""
    angle_moments = density_moments(partial(angle_density, level=3), angle_support(3))
    exact_moments = partial(coordinate_partial_moments, dim=128)
    for bits in (1, 2, 3, 4):
        for best, moments, support in (
            (angle_codebook(3, bits), angle_moments, angle_support(3)),
            (coordinate_codebook(128, bits), exact_moments, (-1.0, 1.0)),
        ):
            uniform = expected_mse(uniform_codebook(support, bits), moments)
            quantile = quantile_codebook(moments, support, bits)
            assert best.mse < uniform / 1.5
            if bits == 1:
                np.testing.assert_allclose(quantile.centroids, best.centroids, rtol=1e-12)
            else:
                assert best.mse < quantile.mse / 1.1
            # equal-probability cells really are equal
            m0 = moments(cells(quantile)[:-1], cells(quantile)[1:])[0]
            np.testing.assert_allclose(m0, 1 / (1 << bits), rtol=1e-9)
    assert (
        uniform_codebook((0.0, 2 * math.pi), 3).centroids.tolist()
        == angle_codebook(1, 3).centroids.tolist()
    )


def test_gaussian_codebook_on_the_exact_law():
    """expected_mse evaluates any codebook on any law: the Gaussian-limit codebook used on the
    exact d = 128 law is worse than the exact Lloyd-Max codebook (which is optimal there)
    but only slightly (the laws differ by O(1/d))."""
    exact_moments = partial(coordinate_partial_moments, dim=128)
    for bits in (1, 2, 3, 4):
        gauss = expected_mse(coordinate_codebook(128, bits, exact=False), exact_moments)
        best = coordinate_codebook(128, bits).mse
        assert best < gauss < 1.01 * best


def test_lloyd_max_errors():
    moments = normal_partial_moments
    line = (-math.inf, math.inf)
    with pytest.raises(RuntimeError, match="did not converge"):
        lloyd_max(moments, line, 4, max_iter=1, init=np.linspace(-0.1, 0.1, 16) + 3)
    with pytest.raises(ValueError, match="mass"):
        lloyd_max(moments, (0.0, math.inf), 2)
    with pytest.raises(ValueError, match="not symmetric"):
        lloyd_max(
            lambda u, v: normal_partial_moments(np.asarray(u) - 1, np.asarray(v) - 1),
            (-math.inf, math.inf),
            2,
            symmetric=True,
        )
    with pytest.raises(ValueError, match="init"):
        lloyd_max(moments, line, 2, init=[0.0, 1.0, 0.5, 2.0])
    with pytest.raises(ValueError, match="lo < hi"):
        lloyd_max(moments, (1.0, 0.0), 2)
    with pytest.raises(ValueError, match="finite"):
        density_moments(lambda x: np.exp(-x * x / 2) / math.sqrt(2 * math.pi), line)
    with pytest.raises(ValueError, match="integrates"):
        density_moments(lambda x: np.ones_like(x), (0.0, 2.0))


def test_asymmetric_law_without_symmetry():
    """An asymmetric law (N(1, 1) seen through shifted moments) is solved as well: its codebook
    is the N(0, 1) codebook shifted by 1."""
    shifted = lloyd_max(lambda u, v: _shifted_normal(u, v, 1.0), (-math.inf, math.inf), 3)
    np.testing.assert_allclose(
        shifted.centroids,
        coordinate_codebook(2, 3, exact=False).centroids * math.sqrt(2) + 1,
        rtol=0,
        atol=1e-9,
    )


def _shifted_normal(u, v, shift):
    m0, m1, m2 = normal_partial_moments(np.asarray(u) - shift, np.asarray(v) - shift)
    return m0, m1 + shift * m0, m2 + 2 * shift * m1 + shift**2 * m0


@pytest.mark.parametrize(
    "bad,error", [(0, ValueError), (9, ValueError), (2.5, TypeError), (True, TypeError)]
)
def test_bits_out_of_range(bad, error):
    with pytest.raises(error, match="bits"):
        angle_codebook(3, bad)
    with pytest.raises(error, match="bits"):
        coordinate_codebook(128, bad)
    with pytest.raises(error, match="bits"):
        lloyd_max(normal_partial_moments, (-math.inf, math.inf), bad)
    with pytest.raises(error, match="bits"):
        kmeans_codebook(np.linspace(0, 1, 1000), bad, seed=0)
    with pytest.raises(error, match="bits"):
        uniform_codebook((0.0, 1.0), bad)


def test_bad_level_dim_exact():
    with pytest.raises(ValueError, match="level"):
        angle_codebook(0, 2)
    with pytest.raises(ValueError, match="dim"):
        coordinate_codebook(1, 2)
    with pytest.raises(TypeError, match="exact"):
        coordinate_codebook(128, 2, exact="yes")


def test_eight_bit_build_time():
    """A guard against pathological slowness, not a benchmark: plain Lloyd iterations need
    thousands of steps at 8 bits; the Newton solver needs ~10 and builds each of these in
    ~10-30 ms on a laptop core.  5 s per codebook is generous on any CI machine."""
    builds = {
        f"angle level {level}": (
            lambda level=level: lloyd_max_density(
                partial(angle_density, level=level), angle_support(level), 8, symmetric=True
            )
        )
        for level in (2, 3, 4, 5, 12)
    }
    builds.update(
        {
            f"exact dim {dim}": (
                lambda dim=dim: lloyd_max(
                    partial(coordinate_partial_moments, dim=dim), (-1.0, 1.0), 8, symmetric=True
                )
            )
            for dim in (2, 64, 128, 1536, 100_000)
        }
    )
    builds["N(0, 1)"] = lambda: lloyd_max(
        normal_partial_moments, (-math.inf, math.inf), 8, symmetric=True
    )
    for name, build in builds.items():
        start = time.perf_counter()
        cb = build()
        elapsed = time.perf_counter() - start
        assert elapsed < 5.0, f"{name}: {elapsed:.2f} s"
        assert cb.bits == 8


# -- k-means++ -------------------------------------------------------------------------------------
def _level3_angles(n, seed):
    """Level-3 angles the way the polar transform makes them (Lemma 2's mechanism):
    atan of the ratio of the norms of two independent Gaussian 4-vectors."""
    g = np.random.default_rng(seed).standard_normal((n, 2, 4))
    r = np.linalg.norm(g, axis=-1)
    return np.arctan2(r[:, 1], r[:, 0])


def _lloyd_jacobian(cb, pdf):
    """Jacobian J of the Lloyd map c -> conditional means at the codebook (quad oracle).

    With t_k = (c_k + c_{k+1}) / 2 and P_k the mass of cell k:
    d mean_k / d t_k = f(t_k) (t_k - mean_k) / P_k,  d mean_k / d t_{k-1} = f(t_{k-1})
    (mean_k - t_{k-1}) / P_k, and d t / d c = 1/2 on both neighbours.
    """
    k = cb.centroids.size
    m0, m1, _ = quad_cells(pdf, cells(cb), math.pi / 4)
    mean, t = m1 / m0, cb.boundaries
    jac = np.zeros((k, k))
    for i in range(k):
        if i < k - 1:
            right = pdf(t[i]) * (t[i] - mean[i]) / m0[i]
            jac[i, i] += right / 2
            jac[i, i + 1] += right / 2
        if i > 0:
            left = pdf(t[i - 1]) * (mean[i] - t[i - 1]) / m0[i]
            jac[i, i] += left / 2
            jac[i, i - 1] += left / 2
    return jac


def test_kmeans_approaches_lloyd_max():
    """PolarQuant Sec. 4 fits angle codebooks by k-means++ on samples; on 200k samples of the
    level-3 law it must approach the analytic Lloyd-Max codebook c*.

    Centroids: each cell's sample mean errs by about eps_k = sd_k / sqrt(n_k) (~3e-4 here), and
    the fixed point of the sample Lloyd map moves by (I - J)^-1 eps, J the Jacobian of the Lloyd
    map (computed by the quad oracle; ||(I - J)^-1||_inf is ~8 at 2 bits: the angle law is
    flat enough for the optimum to be soft).  Tolerance: 4 ||(I - J)^-1||_inf max_k eps_k
    (4 standard errors).

    Distortion: with D(c) the true MSE of a codebook (nearest-centroid cells), D(c) >= D(c*)
    since c* is the unique optimum of this log-concave law, and keeping the cells of c* gives
    D(c) <= D(c*) + sum_k P_k (c_k - c*_k)^2 <= D(c*) + max_k |c_k - c*_k|^2: both exact.
    """
    psi = _level3_angles(200_000, seed=11)
    best = angle_codebook(3, 2)
    fit = kmeans_codebook(psi, 2, seed=3, support=angle_support(3))
    cell = np.searchsorted(fit.boundaries, psi, side="right")
    counts = np.bincount(cell, minlength=4)
    sds = np.array([psi[cell == k].std() for k in range(4)])
    eps = np.max(sds / np.sqrt(counts))
    amplification = np.linalg.norm(
        np.linalg.inv(np.eye(4) - _lloyd_jacobian(best, oracle_angle_pdf(3))), np.inf
    )
    deviation = np.max(np.abs(fit.centroids - best.centroids))
    assert deviation <= 4 * amplification * eps
    true_mse = expected_mse(fit, density_moments(partial(angle_density, level=3), angle_support(3)))
    assert best.mse <= true_mse <= best.mse + deviation**2
    # the stored mse is the error on the fitting samples, through quantize/dequantize
    recon = dequantize(quantize(psi, fit), fit)
    assert fit.mse == pytest.approx(np.mean((psi - recon) ** 2), rel=1e-12)


def test_kmeans_is_reproducible_and_namespace_agnostic():
    psi = _level3_angles(5000, seed=1)
    a = kmeans_codebook(psi, 3, seed=5)
    assert kmeans_codebook(psi, 3, seed=5) == a
    strict = kmeans_codebook(xps.asarray(psi), 3, seed=5)
    assert strict.centroids.tolist() == a.centroids.tolist()
    assert a.support == (float(psi.min()), float(psi.max()))
    assert kmeans_codebook(psi[::-1].copy(), 3, seed=5) == a  # the order of samples is irrelevant


def test_kmeans_exact_on_separated_clusters():
    """K well separated clusters: k-means++ puts one seed in each with probability
    prod_k (cluster share of D^2 mass) ~ 1 here, and Lloyd then returns the cluster means."""
    rng = np.random.default_rng(2)
    means = np.array([-30.0, -10.0, 5.0, 40.0])
    samples = (means[:, None] + rng.uniform(-0.5, 0.5, (4, 250))).ravel()
    cb = kmeans_codebook(samples, 2, seed=0)
    np.testing.assert_allclose(cb.centroids, samples.reshape(4, 250).mean(axis=1), rtol=1e-14)


def test_kmeans_validation():
    with pytest.raises(ValueError, match="distinct"):
        kmeans_codebook(np.array([0.1, 0.2, 0.2, 0.3] * 10), 2, seed=0)
    with pytest.raises(ValueError, match="NaN"):
        kmeans_codebook(np.array([0.1, np.nan, 0.3, 0.4, 0.5]), 1, seed=0)
    with pytest.raises(ValueError, match="1-D"):
        kmeans_codebook(np.zeros((10, 10)), 1, seed=0)
    with pytest.raises(TypeError, match="floating"):
        kmeans_codebook(np.arange(100), 2, seed=0)
    with pytest.raises(ValueError, match="outside the support"):
        kmeans_codebook(np.linspace(0, 2, 100), 2, seed=0, support=(0.0, 1.0))
    with pytest.raises(ValueError, match="seed"):
        kmeans_codebook(np.linspace(0, 1, 100), 2, seed=-1)


# -- quantize / dequantize ------------------------------------------------------------------------
BOOKS = [
    angle_codebook(1, 4),
    angle_codebook(3, 2),
    coordinate_codebook(128, 8),
    coordinate_codebook(64, 3, exact=False),
]


@pytest.mark.parametrize("cb", BOOKS, ids=lambda cb: cb.name)
def test_round_trip_numpy_and_strict(cb):
    """Quantizing a centroid returns its index, so decode(encode(c)) == c, exactly in float64
    and equal to the float32 rounding of c in float32 (centroids are well inside their cells,
    far more than one float32 ulp from a boundary for these codebooks)."""
    idx = np.arange(cb.centroids.size, dtype=np.uint8)
    for to, dtype in (
        (np.asarray, np.float64),
        (np.asarray, np.float32),
        (xps.asarray, xps.float64),
        (xps.asarray, xps.float32),
    ):
        x = to(cb.centroids.reshape(-1, 2), dtype=dtype)
        codes = quantize(x, cb)
        assert codes.dtype == (np.uint8 if to is np.asarray else xps.uint8)
        assert codes.shape == x.shape
        np.testing.assert_array_equal(np.asarray(codes).ravel(), idx)
        back = dequantize(codes, cb, dtype=dtype)
        assert back.dtype == dtype and type(back) is type(x)
        np.testing.assert_array_equal(
            np.asarray(back).ravel(), cb.centroids.astype(np.asarray(x).dtype)
        )


def test_ties_go_to_the_upper_cell():
    """A value equal to a threshold t_k belongs to cell k + 1 (searchsorted side="right")."""
    cb = angle_codebook(3, 3)
    k = np.arange(1, 8)
    np.testing.assert_array_equal(quantize(cb.boundaries, cb), k)
    below = np.nextafter(cb.boundaries, -np.inf)
    np.testing.assert_array_equal(quantize(below, cb), k - 1)
    x32 = xps.asarray(cb.boundaries.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(quantize(x32, cb)), k)


def test_out_of_support_is_clamped_and_shapes_kept():
    cb = angle_codebook(2, 2)
    out = quantize(np.array([[-5.0, 10.0], [0.0, math.pi / 2]]), cb)
    np.testing.assert_array_equal(out, [[0, 3], [0, 3]])
    scalar = quantize(np.float64(0.8), cb)
    assert scalar.shape == () and int(scalar) == 2
    assert quantize(0.8, cb).dtype == np.uint8


def test_float16_is_computed_in_float32():
    cb = coordinate_codebook(16, 4)
    x = np.linspace(-0.6, 0.6, 101).astype(np.float16)
    codes = quantize(x, cb)
    assert codes.dtype == np.uint8
    np.testing.assert_array_equal(codes, quantize(x.astype(np.float32), cb))
    assert dequantize(codes, cb, dtype=np.float16).dtype == np.float16


def test_dequantize_defaults_and_errors():
    cb = angle_codebook(3, 2)
    out = dequantize(np.array([3, 0], dtype=np.int64), cb)
    assert out.dtype == np.float64 and out.tolist() == [cb.centroids[3], cb.centroids[0]]
    with pytest.raises(TypeError, match="integer"):
        dequantize(np.array([0.0, 1.0]), cb)
    with pytest.raises(TypeError, match="floating"):
        quantize(np.array([0, 1]), cb)
    with pytest.raises(TypeError, match="Codebook"):
        quantize(np.array([0.5]), cb.to_dict())
    with pytest.raises(IndexError):
        dequantize(np.array([4]), cb)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(
    st.lists(st.floats(min_value=-1.5, max_value=3.5, allow_nan=False), min_size=1, max_size=50),
    st.sampled_from(range(len(BOOKS))),
)
def test_quantize_is_nearest_centroid(values, which):
    """For midpoint boundaries, searchsorted is the nearest centroid: up to the rounding of a
    midpoint (1 ulp), no centroid is closer than the chosen one."""
    cb = BOOKS[which]
    x = np.asarray(values)
    chosen = cb.centroids[quantize(x, cb)]
    nearest = np.min(np.abs(x[:, None] - cb.centroids[None, :]), axis=1)
    assert np.all(np.abs(x - chosen) <= nearest + 4 * np.spacing(np.maximum(np.abs(x), 1.0)))


# -- the Codebook object --------------------------------------------------------------------------
def test_codebook_is_frozen_and_read_only():
    cb = angle_codebook(3, 2)
    with pytest.raises(ValueError):
        cb.centroids[0] = 0.0
    with pytest.raises(FrozenInstanceError):
        cb.mse = 0.0
    assert cb.bits == 2 and cb.name == "lloyd-max angle level 3, 2 bits"
    copy = Codebook.from_dict(cb.to_dict())
    assert copy == cb and copy is not cb and hash(copy) == hash(cb)
    assert angle_codebook(3, 2) is cb  # cached


@pytest.mark.parametrize(
    "cb", BOOKS + [kmeans_codebook(_level3_angles(2000, 0), 4, seed=0)], ids=lambda cb: cb.name
)
def test_dict_round_trip_through_json(cb):
    """Python's json writes floats by repr, which round-trips float64: the copy is equal,
    including the infinite support of the Gaussian-limit codebook (stored as "inf")."""
    text = json.dumps(cb.to_dict())
    assert "Infinity" not in text
    assert Codebook.from_dict(json.loads(text)) == cb


def test_from_dict_validates():
    good = angle_codebook(3, 2).to_dict()
    for change, error, match in [
        ({"centroids": good["centroids"][::-1]}, ValueError, "increasing"),
        ({"boundaries": good["boundaries"][:-1]}, ValueError, "boundaries"),
        (
            {"centroids": good["centroids"][:3], "boundaries": good["boundaries"][:2]},
            ValueError,
            "2\\*\\*bits",
        ),
        ({"bits": 3}, ValueError, "bits"),
        ({"support": [1.0, 0.0]}, ValueError, "support"),
        ({"mse": -1.0}, ValueError, "mse"),
        ({"boundaries": [0.5, 0.7, 0.8]}, ValueError, "between"),
    ]:
        with pytest.raises(error, match=match):
            Codebook.from_dict({**good, **change})
    with pytest.raises(ValueError, match="lacks"):
        Codebook.from_dict({k: v for k, v in good.items() if k != "mse"})
    with pytest.raises(TypeError):
        Codebook.from_dict([1, 2])
