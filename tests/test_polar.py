"""The recursive polar transform (PolarQuant Definition 1) and the angle laws (Lemma 2)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import integrate, stats

from polarquant.distributions import angle_density
from polarquant.polar import angle_counts, inverse_polar_transform, polar_transform
from tests import naive

#: Chooses its backends explicitly (or uses none): CI's Numba pass leaves it out (conftest.py).
pytestmark = pytest.mark.backend_independent


@pytest.mark.parametrize(("dim", "levels"), [(16, 4), (128, 4), (64, 6), (8, 3), (96, 5), (2, 1)])
def test_matches_naive_and_round_trips(dim, levels, rng, xp):
    x = rng.standard_normal((5, dim))
    radii, angles = polar_transform(xp.asarray(x), levels)
    assert [a.shape[-1] for a in angles] == angle_counts(dim, levels)
    for i in range(5):
        r_ref, a_ref = naive.polar_transform(x[i], levels)
        np.testing.assert_allclose(np.asarray(radii)[i], r_ref, rtol=1e-13)
        for level in range(levels):
            np.testing.assert_allclose(np.asarray(angles[level])[i], a_ref[level], atol=1e-13)
    back = np.asarray(inverse_polar_transform(radii, angles))
    np.testing.assert_allclose(back, x, atol=1e-13)


def test_angle_ranges(rng):
    r, a = polar_transform(rng.standard_normal((1000, 64)), 4)
    assert a[0].min() >= 0 and a[0].max() < 2 * math.pi
    for psi in a[1:]:
        assert psi.min() >= 0 and psi.max() <= math.pi / 2
    assert r.min() >= 0


def test_zero_vectors_and_zero_blocks_give_no_nan():
    x = np.zeros((3, 32))
    x[1, 5] = 2.0  # one non-zero coordinate: most sub-blocks are zero
    x[2, :16] = 1.0
    r, a = polar_transform(x, 4)
    assert np.isfinite(r).all() and all(np.isfinite(t).all() for t in a)
    np.testing.assert_array_equal(inverse_polar_transform(r, a)[0], 0.0)
    np.testing.assert_allclose(inverse_polar_transform(r, a), x, atol=1e-15)


@settings(max_examples=50, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 3), st.sampled_from([8, 16, 32])),
        elements=st.floats(-1e6, 1e6, allow_subnormal=False),
    )
)
def test_round_trip_property(x):
    """Exact inverse for arbitrary finite vectors, zeros and mixed scales included."""
    r, a = polar_transform(x, 3)
    back = inverse_polar_transform(r, a)
    scale = max(1.0, float(np.max(np.abs(x))))
    np.testing.assert_allclose(back, x, atol=1e-12 * scale)


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
def test_angles_follow_lemma_2(level):
    """KS test of each level's angles (Gaussian input) against the density of Lemma 2.

    20,000 angles; a wrong exponent or constant in the density shifts the CDF
    by far more than the KS critical value (~0.014 at alpha = 1e-3).
    """
    rng = np.random.default_rng(level)
    x = rng.standard_normal((20000 * 2**level // 32, 32))
    _, angles = polar_transform(x, 5)
    psi = angles[level - 1].ravel()[:20000]
    hi = 2 * math.pi if level == 1 else math.pi / 2

    grid = np.linspace(0, hi, 20001)
    table = integrate.cumulative_trapezoid(angle_density(grid, level), grid, initial=0)
    assert table[-1] == pytest.approx(1.0, abs=1e-4)  # level 1: density is 0 at 2 pi itself
    p = stats.kstest(psi, lambda t: np.interp(t, grid, table)).pvalue
    assert p > 1e-3


def test_bad_levels():
    with pytest.raises(ValueError, match="not divisible by 2\\*\\*levels = 16"):
        polar_transform(np.ones((2, 24)), 4)
    with pytest.raises(ValueError, match="levels must be >= 1"):
        polar_transform(np.ones((2, 24)), 0)
    with pytest.raises(ValueError, match="does not match"):
        inverse_polar_transform(np.ones((2, 3)), [np.ones((2, 4))])
