r"""Teaching baselines: equal-width and equal-probability cells.

Two codebooks that are *not* Lloyd-Max (except for the uniform law), to be
compared with it (:func:`~polarquant.codebooks.expected_mse` evaluates any of
them under any law):

* :func:`~polarquant.codebooks.uniform_codebook` -- equal-width cells with
  midpoint centroids on a finite support; the Lloyd-Max optimum for the
  uniform law, hence also the closed-form level-1 angle codebook of PolarQuant
  (:func:`~polarquant.codebooks.angle_codebook`).
* :func:`~polarquant.codebooks.quantile_codebook` -- equal-probability cells
  with conditional-mean centroids, the "Lloyd-Max" of some ports; its
  thresholds are not midpoints, so quantizing with it is not nearest-centroid,
  and its error is 1.1x to 2x the optimum.

Neither is used by the quantizers except through the level-1 angle codebook.
"""

from __future__ import annotations

import numpy as np

from .._array import check_bits
from .codebook import Codebook
from .lloyd_max_solver import _law_summary, _with_mse
from .moments import Moments, _check_support

__all__ = ["uniform_codebook", "quantile_codebook"]


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
