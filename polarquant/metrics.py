r"""Distortion metrics and the theorems' bounds.

Definitions (unit-norm conventions of the papers; for non-unit inputs every
metric is normalised so that it reads the same):

* per-vector relative MSE ``||x - x_hat||^2 / ||x||^2``; its mean over vectors
  is TurboQuant's ``D_mse`` (Sec. 1.1, Eq. (1); **per vector**, not per
  coordinate: a per-coordinate MSE is ``d`` times smaller, field-notes defect 4);
* inner-product distortion ``D_prod = E |<y, x> - <y, x_hat>|^2`` for unit
  ``x, y`` (Eq. (2)), normalised here by ``||y||^2 ||x||^2``;
* bias: the least-squares slope of estimated on true inner products
  (1 for an unbiased estimator; ``1 - D_mse`` for TurboQuant_mse, Sec. 3.2);
* attention fidelity: softmax KL divergence and top-k overlap of scores.

Bounds: TurboQuant Theorem 1 (``4**-b <= D_mse <= sqrt(3) pi/2 4**-b``),
Theorems 2-3 (``4**-b / d <= D_prod <= sqrt(3) pi^2 / d 4**-b``), QJL
Lemma 3.2 (exact variance) and Lemma 3.5 (sketch size for an ``eps`` error).
Note ``sqrt(3) pi / 2 = 2.72``, not ``sqrt(3 pi)/2 = 1.53`` (field-notes, defect 10).
"""

from __future__ import annotations

import math

from ._array import namespace

__all__ = [
    "relative_mse",
    "d_mse",
    "bias_slope",
    "prod_distortion",
    "turboquant_mse_bounds",
    "turboquant_prod_bounds",
    "qjl_variance",
    "qjl_sketch_size",
    "softmax",
    "attention_kl",
    "topk_overlap",
]


def relative_mse(x, x_hat):
    """Per-vector ``||x - x_hat||^2 / ||x||^2`` over the last axis (0/0 counts as 0)."""
    xp = namespace(x, x_hat)
    err = xp.sum((x - x_hat) ** 2, axis=-1)
    ref = xp.sum(x**2, axis=-1)
    return err / xp.where(ref > 0, ref, xp.ones_like(ref))


def d_mse(x, x_hat) -> float:
    """TurboQuant's ``D_mse``: the mean per-vector relative squared error."""
    xp = namespace(x, x_hat)
    return float(xp.mean(relative_mse(x, x_hat)))


def bias_slope(estimate, truth) -> float:
    """Least-squares slope through the origin of ``estimate`` on ``truth`` (1 = unbiased)."""
    xp = namespace(estimate, truth)
    return float(xp.sum(estimate * truth) / xp.sum(truth * truth))


def prod_distortion(estimate, truth, scale=None) -> float:
    """Mean of ``(estimate - truth)^2 / scale``; pass ``scale = ||q||^2 ||x||^2`` for D_prod."""
    xp = namespace(estimate, truth)
    err = (estimate - truth) ** 2
    if scale is not None:
        err = err / scale
    return float(xp.mean(err))


def turboquant_mse_bounds(bits: int) -> tuple[float, float]:
    """``(4**-b, sqrt(3) pi/2 * 4**-b)``: TurboQuant Theorems 3 and 1 for ``D_mse``."""
    return 4.0**-bits, math.sqrt(3) * math.pi / 2 * 4.0**-bits


def turboquant_prod_bounds(bits: int, dim: int) -> tuple[float, float]:
    """``(4**-b / d, sqrt(3) pi^2 / d * 4**-b)``: Theorems 3 and 2 for ``D_prod`` (unit y)."""
    return 4.0**-bits / dim, math.sqrt(3) * math.pi**2 / dim * 4.0**-bits


def qjl_variance(q, k, m: int):
    """Exact variance of the QJL estimate: ``((pi/2)||q||^2 ||k||^2 - <q,k>^2) / m``.

    ``q`` (..., d) and ``k`` (..., d) broadcast against each other (pairs).
    """
    xp = namespace(q, k)
    qq = xp.sum(q * q, axis=-1)
    kk = xp.sum(k * k, axis=-1)
    qk = xp.sum(q * k, axis=-1)
    return (math.pi / 2 * qq * kk - qk**2) / m


def qjl_sketch_size(eps: float, delta: float) -> int:
    """QJL Lemma 3.5 as stated: ``m >= (4/3)(1+eps)/eps^2 log(2/delta)``.

    The lemma promises an error at most ``eps ||q|| ||k||`` with probability
    ``1 - delta``.  Measured, that is optimistic for small ``eps``: the estimate
    of an orthogonal pair has variance ``(pi/2)/m`` (Lemma 3.2), so the normal
    approximation needs ``m ~ (pi/2) z_{1-delta/2}^2 / eps^2`` (604 rather than
    542 at ``eps = 0.1, delta = 0.05``; docs, errata; tutorial 2).
    """
    if not (0 < eps < 1 and 0 < delta < 1):
        raise ValueError(f"eps and delta must lie in (0, 1), got eps={eps}, delta={delta}")
    return math.ceil(4 / 3 * (1 + eps) / eps**2 * math.log(2 / delta))


def softmax(logits, axis: int = -1):
    """Numerically stable softmax (``-inf`` entries get probability 0)."""
    xp = namespace(logits)
    z = logits - xp.max(logits, axis=axis, keepdims=True)
    e = xp.exp(z)
    return e / xp.sum(e, axis=axis, keepdims=True)


def attention_kl(true_logits, est_logits, axis: int = -1):
    """Per-row KL divergence ``KL(softmax(true) || softmax(est))`` (masked entries: ``-inf`` in both)."""
    xp = namespace(true_logits, est_logits)
    p = softmax(true_logits, axis)
    lp = true_logits - xp.max(true_logits, axis=axis, keepdims=True)
    lp = lp - xp.log(xp.sum(xp.exp(lp), axis=axis, keepdims=True))
    lq = est_logits - xp.max(est_logits, axis=axis, keepdims=True)
    lq = lq - xp.log(xp.sum(xp.exp(lq), axis=axis, keepdims=True))
    zero = xp.zeros_like(p)
    visible = p > 0  # masked entries (-inf in both) would give inf - inf
    return xp.sum(p * (xp.where(visible, lp, zero) - xp.where(visible, lq, zero)), axis=axis)


def topk_overlap(true_scores, est_scores, k: int) -> float:
    """Mean fraction of each row's true top-``k`` entries found in the estimated top-``k``."""
    import numpy as np

    from ._array import to_host

    t = np.argsort(-to_host(true_scores), axis=-1)[..., :k]
    e = np.argsort(-to_host(est_scores), axis=-1)[..., :k]
    hits = (t[..., :, None] == e[..., None, :]).any(-1).sum(-1)
    return float(np.mean(hits / k))
