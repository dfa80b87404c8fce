"""Random rotations: orthogonality, Haar distribution, seeding, randomized Hadamard for any dim."""

import numpy as np
import pytest
from scipy import stats

import polarquant as pq
from polarquant.distributions import coordinate_density
from polarquant.rotation import (
    HaarRotation,
    RandomizedHadamard,
    fwht,
    haar_matrix,
    hadamard_signs,
    make_rotation,
)

#: Chooses its backends explicitly (or uses none): CI's Numba pass leaves it out (conftest.py).
pytestmark = pytest.mark.backend_independent


@pytest.mark.parametrize("dim", [2, 3, 64, 96, 128])
def test_haar_is_orthogonal_and_seeded(dim):
    q = haar_matrix(dim, seed=7)
    np.testing.assert_allclose(q @ q.T, np.eye(dim), atol=1e-12)
    np.testing.assert_array_equal(q, haar_matrix(dim, seed=7))
    assert not np.allclose(q, haar_matrix(dim, seed=8))


def test_haar_first_column_follows_the_coordinate_law():
    """Q e_1 is uniform on the sphere for a Haar Q, so its coordinates follow Lemma 1's law.

    Without Mezzadri's sign fix, QR's Q is not Haar (its diagonal is biased
    positive); the KS test over 400 seeds x 16 coordinates would catch the bias
    in the diagonal entries, which we also test directly: E[Q_11] = 0.
    """
    d = 16
    samples = np.array([haar_matrix(d, s)[:, 0] for s in range(400)]).ravel()
    grid = np.linspace(-1, 1, 20001)
    cdf = np.cumsum(coordinate_density(grid, d)) * (grid[1] - grid[0])
    p = stats.kstest(samples, lambda t: np.interp(t, grid, cdf / cdf[-1])).pvalue
    assert p > 1e-3
    diag = np.array([np.diag(haar_matrix(d, s)) for s in range(400)]).ravel()
    # mean of 6400 values with sd 1/sqrt(d) = 0.25: 4 standard errors = 0.0125
    assert abs(diag.mean()) < 4 * 0.25 / np.sqrt(diag.size)


@pytest.mark.parametrize("kind", ["haar", "hadamard"])
@pytest.mark.parametrize("dim", [5, 64, 96])
def test_apply_inverse_round_trip(kind, dim, rng, xp):
    x = rng.standard_normal((3, 2, dim))
    rot = make_rotation(kind, dim, seed=3)
    y = rot.apply(xp.asarray(x))
    assert y.shape == (3, 2, rot.out_dim)
    np.testing.assert_allclose(
        np.linalg.norm(np.asarray(y), axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-12
    )
    np.testing.assert_allclose(np.asarray(rot.inverse(y)), x, atol=1e-12)


def test_float32_stays_float32(rng):
    x = rng.standard_normal((4, 32)).astype(np.float32)
    for kind in ("haar", "hadamard"):
        assert make_rotation(kind, 32, 0).apply(x).dtype == np.float32


def test_hadamard_padding_and_fwht():
    assert RandomizedHadamard(96, 0).out_dim == 128
    assert RandomizedHadamard(128, 0).out_dim == 128
    h = fwht(np.eye(8))
    np.testing.assert_allclose(h @ h, np.eye(8), atol=1e-12)
    np.testing.assert_allclose(np.abs(h), np.full((8, 8), 8**-0.5))
    with pytest.raises(ValueError, match="power-of-two"):
        fwht(np.ones(6))


def test_random_signs_defeat_a_hadamard_row():
    """A plain Hadamard maps a Hadamard row to a single spike; the random signs spread it.

    With signs, the image of ``h = H e_5`` has coordinates that are sums of
    +-1/sqrt(n) terms; its largest coordinate is far below 1 (for n = 256 the
    spike would be 1.0, a spread vector has max about sqrt(2 log n / n) ~ 0.3).
    """
    n = 256
    row = fwht(np.eye(n))[5]
    assert np.max(np.abs(fwht(row))) == pytest.approx(1.0)
    y = RandomizedHadamard(n, seed=1).apply(row)
    assert np.max(np.abs(y)) < 0.5
    assert set(np.unique(hadamard_signs(n, 1))) == {-1.0, 1.0}


def test_bad_input():
    with pytest.raises(ValueError, match="unknown rotation"):
        make_rotation("givens", 8)
    for make in (
        lambda: make_rotation(["haar"], 8),
        lambda: pq.TurboQuantMSE(8, 2, rotation=["haar"]),
    ):
        with pytest.raises(ValueError, match=r"unknown rotation \['haar'\]; valid rotations"):
            make()  # a list: the same error, not "unhashable type"
    with pytest.raises(ValueError, match="last dimension 8"):
        HaarRotation(8).apply(np.ones((2, 7)))
    with pytest.raises(ValueError, match="seed"):
        HaarRotation(8, seed=-1)
    with pytest.raises(TypeError, match="dim"):
        HaarRotation(8.0)
