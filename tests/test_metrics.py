"""Metrics and the theorems' bounds (TurboQuant Thms 1-3, QJL Lemmas 3.2 and 3.5)."""

import math

import numpy as np
import pytest

from polarquant import metrics

#: Chooses its backends explicitly (or uses none): CI's Numba pass leaves it out (conftest.py).
pytestmark = pytest.mark.backend_independent


def test_bounds_use_the_right_constants():
    """sqrt(3) pi / 2 = 2.72, not sqrt(3 pi) / 2 = 1.53 (field-notes, defect 10)."""
    lo, hi = metrics.turboquant_mse_bounds(2)
    assert lo == 1 / 16 and hi == pytest.approx(2.7207 / 16, rel=1e-4)
    lo, hi = metrics.turboquant_prod_bounds(3, 128)
    assert lo == pytest.approx(1 / 64 / 128) and hi == pytest.approx(
        math.sqrt(3) * math.pi**2 / 64 / 128
    )


def test_relative_mse_and_bias_slope(rng):
    x = rng.standard_normal((100, 16))
    assert metrics.d_mse(x, 0.9 * x) == pytest.approx(0.01)
    assert metrics.d_mse(np.zeros((2, 4)), np.zeros((2, 4))) == 0.0
    t = rng.standard_normal(1000)
    assert metrics.bias_slope(0.7 * t, t) == pytest.approx(0.7)
    assert metrics.prod_distortion(t + 0.1, t) == pytest.approx(0.01)


def test_qjl_variance_and_sketch_size():
    q, k = np.array([1.0, 0.0]), np.array([1.0, 1.0])
    assert float(metrics.qjl_variance(q, k, 10)) == pytest.approx((math.pi / 2 * 2 - 1) / 10)
    assert metrics.qjl_sketch_size(0.5, 0.05) == math.ceil(4 / 3 * 1.5 / 0.25 * math.log(40))
    with pytest.raises(ValueError, match="eps and delta"):
        metrics.qjl_sketch_size(0, 0.1)


def test_attention_kl_with_causal_masks():
    """KL >= 0, 0 for identical scores, finite with -inf masked entries, and no warnings."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 6))
    mask = np.tril(np.ones((4, 6), bool), k=2)
    t = np.where(mask, logits, -np.inf)
    e = np.where(mask, logits + 0.3 * rng.standard_normal((4, 6)), -np.inf)
    kl = metrics.attention_kl(t, e)
    assert np.all(kl > 0) and np.isfinite(kl).all()
    np.testing.assert_allclose(metrics.attention_kl(t, t), 0.0, atol=1e-15)
    p = metrics.softmax(t)
    np.testing.assert_allclose(p.sum(1), 1.0)
    assert (p[~mask] == 0).all()
    assert metrics.topk_overlap(t, t, 2) == 1.0
