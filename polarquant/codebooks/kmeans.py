r"""Codebooks fitted to samples: 1-D k-means++ (PolarQuant Sec. 4).

:func:`~polarquant.codebooks.kmeans_codebook` -- PolarQuant (arXiv 2502.02617)
Sec. 4: 1-D k-means++ (Arthur and Vassilvitskii 2007) on samples, the paper's
"online"/"offline" codebooks: each level's angle codebook fitted on the angles
of one prompt ("online") or of a calibration set ("offline"), instead of
derived from the law (:mod:`polarquant.codebooks.analytic`).

Seeding is the D^2 sampling of k-means++ with a seeded generator
(:mod:`polarquant._seeding`); the iterations are exact 1-D Lloyd (k-means)
steps on the sorted samples, done with ``searchsorted`` and prefix sums rather
than with distances to every centre.  Fitting runs on the host in float64:
samples from another array namespace are copied there first.

Left out: mini-batch and streaming variants, and weighting of the samples.

References
----------
D. Arthur, S. Vassilvitskii. k-means++: the advantages of careful seeding.
SODA 2007.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from array_api_compat import is_array_api_obj

from .._array import check_bits, check_int, to_host
from .._seeding import generator
from .codebook import Codebook
from .moments import _check_support

__all__ = ["kmeans_codebook"]


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
