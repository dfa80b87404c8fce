"""QJL (arXiv 2406.03482): unbiasedness (Lemma 3.2), the exact variance, the oracle, the layout."""

import math

import numpy as np
import pytest

from polarquant import QJL
from polarquant.metrics import qjl_sketch_size, qjl_variance
from polarquant.qjl import gaussian_sketch
from tests import naive
from tests.conftest import correlated_pair


def _estimates(q, k, m, seeds):
    d = q.shape[-1]
    return np.array(
        [
            float(
                QJL(d, m, seed=s, norm_dtype="float32").score(
                    q, QJL(d, m, seed=s, norm_dtype="float32").encode(k)
                )
            )
            for s in seeds
        ]
    )


def test_unbiased_with_the_exact_variance():
    """Mean over 3000 sketches within a 4-sigma CI of <q, k>; variance matches Lemma 3.2's formula.

    The pair has ||q|| = 2, ||k|| = 1.5 and <q, k> = 0.7 ||q|| ||k|| (correlated:
    independent random pairs have <q,k> ~ 0 and would hide a multiplicative
    bias).  A constant off by any factor c != 1 moves the mean by
    |1 - c| * 2.1, far outside the interval (half-width ~0.06 here).  The sample
    variance of 3000 near-Gaussian estimates has relative standard error
    sqrt(2/2999) = 2.6%; we allow 12% (4.6 sigma).
    """
    d, m = 32, 64
    q, k = correlated_pair(np.random.default_rng(11), d, 0.7)
    q, k = 2.0 * q, 1.5 * k
    est = _estimates(q, k, m, range(3000))
    truth = float(q @ k)
    half = 4 * est.std(ddof=1) / math.sqrt(est.size)
    assert abs(est.mean() - truth) < half
    assert half < 0.1 * abs(truth)  # the interval is tight enough to see a 10% bias
    assert est.var(ddof=1) == pytest.approx(float(qjl_variance(q, k, m)), rel=0.12)


def test_variance_falls_as_one_over_m():
    """Var(m=256) / Var(m=32) = 1/8 by the formula; checked empirically within sampling error."""
    d = 32
    q, k = correlated_pair(np.random.default_rng(3), d, 0.5)
    v32 = _estimates(q, k, 32, range(1500)).var(ddof=1)
    v256 = _estimates(q, k, 256, range(1500)).var(ddof=1)
    assert v256 / v32 == pytest.approx(1 / 8, rel=0.15)


def test_matches_the_per_pair_oracle(rng):
    """Vectorized scores equal the estimator summed one sketch row at a time."""
    d, m = 20, 40
    k = rng.standard_normal((9, d))
    q = rng.standard_normal((4, d))
    qjl = QJL(d, m, seed=9, norm_dtype="float32")
    s = qjl.score(q, qjl.encode(k))
    sketch = gaussian_sketch(m, d, 9)
    for i in range(4):
        for j in range(9):
            assert s[i, j] == pytest.approx(
                naive.qjl_estimate(q[i], k[j], sketch), rel=1e-5, abs=1e-5
            )


def test_decode_is_the_unbiased_reconstruction(rng):
    """decode(k) = sqrt(pi/2)/m ||k|| S^T sign(S k); averaged over seeds it approaches k."""
    d = 16
    k = rng.standard_normal(d)
    mean = np.mean(
        [
            QJL(d, 64, seed=s, norm_dtype="float32").decode(
                QJL(d, 64, seed=s, norm_dtype="float32").encode(k)
            )
            for s in range(2000)
        ],
        axis=0,
    )
    # per-coordinate sd of one reconstruction ~ sqrt(pi/2 / 64) ||k||; 2000 seeds -> se ~0.0035 ||k||
    assert np.max(np.abs(mean - k)) < 6 * math.sqrt(math.pi / 2 / 64) * np.linalg.norm(
        k
    ) / math.sqrt(2000)


def test_layout_and_sketch():
    x = np.random.default_rng(0).standard_normal((10, 128)).astype(np.float32)
    codes = QJL(128, 256, seed=1).encode(x)
    assert codes.nbytes == 10 * (32 + 2)
    assert codes.bits_per_coordinate == 2.125
    s = gaussian_sketch(256, 128, 1)
    # i.i.d. N(0,1): the mean of 32768 entries is within 4/sqrt(32768) of 0 and the variance near 1
    assert abs(s.mean()) < 4 / math.sqrt(s.size) and s.var() == pytest.approx(1, abs=0.03)
    assert qjl_sketch_size(0.1, 0.01) == math.ceil(4 / 3 * 1.1 / 0.01 * math.log(200))
