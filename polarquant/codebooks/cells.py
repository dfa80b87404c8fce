r"""Quantize and dequantize with a codebook: the hot path.

Both PolarQuant (arXiv 2502.02617, Sec. 3-4) and TurboQuant (arXiv
2504.19874, Sec. 3.1, Algorithm 1) encode every scalar as the index of its
cell, the nearest centroid, and decode an index as the centroid ``c[idx]``:

* :func:`~polarquant.codebooks.quantize` -- the index of the cell
  ``[t_{k-1}, t_k)`` of every element, ``searchsorted(boundaries, x,
  side="right")``: the nearest centroid for Lloyd-Max and k-means codebooks,
  whose thresholds are midpoints;
* :func:`~polarquant.codebooks.dequantize` -- the centroid ``c[idx]`` of every
  index.

Both validate their arguments once and call the array cores ``cell_index`` and
``cell_value``, which take arrays only (thresholds and centroids already cast
to the input's namespace, device and dtype) and which the backends and the KV
baselines call directly.  Everything works in any array-API namespace; the
codebook stays on the host and is copied to the input's device.

Left out: bit packing of the indices (:mod:`polarquant.packing`), NaN checks
(the quantizers validate their input once), and the circular wrap of level-1
angles (map them to ``[0, 2 pi)`` first).
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from array_api_compat import is_array_api_obj

from .._array import compute_dtype, host_to_like, namespace
from .codebook import Codebook

__all__ = ["quantize", "dequantize", "cell_index", "cell_value"]


def quantize(x: Any, codebook: Codebook):
    """Index of the cell of every element of ``x``: ``searchsorted(boundaries, x, side="right")``.

    For Lloyd-Max and k-means codebooks (midpoint boundaries) this is the
    nearest centroid.  Conventions:

    * a value equal to a threshold goes to the **upper** cell (``side="right"``);
    * values outside the support fall in the end cells (clamped by
      construction); level-1 angles must be mapped to ``[0, 2 pi)`` first, since
      ``2 pi - eps`` and ``+eps`` are neighbours on the circle but not here;
    * the thresholds are cast to the compute dtype of ``x`` (float16 is compared
      in float32), so float32 input is quantized against float32-rounded
      thresholds;
    * NaN is not checked here (the quantizers validate their input once).

    Parameters
    ----------
    x : array
        Real floating array of any shape, NumPy or any array-API namespace.
    codebook : Codebook

    Returns
    -------
    array of uint8
        Same shape, namespace and device as ``x``.
    """
    if not isinstance(codebook, Codebook):
        raise TypeError(f"codebook must be a Codebook, got {type(codebook).__name__}")
    if not is_array_api_obj(x):
        if isinstance(x, bool) or not isinstance(x, (numbers.Real, list, tuple)):
            raise TypeError(f"x must be a real floating array, got {type(x).__name__}")
        x = np.asarray(x, dtype=np.float64)
    xp = namespace(x)
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"x must have a real floating dtype, got {x.dtype}")
    work = compute_dtype(xp, x.dtype)
    return cell_index(xp.astype(x, work), host_to_like(codebook.boundaries, x, dtype=work))


def cell_index(x, thresholds):
    """The array core of :func:`quantize`: ``searchsorted(thresholds, x, side="right")`` as uint8.

    ``x`` and the sorted ``thresholds`` share namespace, device and dtype.
    """
    xp = namespace(x, thresholds)
    idx = xp.searchsorted(thresholds, xp.reshape(x, (-1,)), side="right")
    return xp.reshape(xp.astype(idx, xp.uint8), x.shape)


def cell_value(indices, centroids):
    """The array core of :func:`dequantize`: ``centroids[indices]`` for any shape of indices."""
    xp = namespace(indices, centroids)
    flat = xp.astype(xp.reshape(indices, (-1,)), xp.int64)  # array-API take wants 1-D indices
    return xp.reshape(xp.take(centroids, flat, axis=0), indices.shape)


def dequantize(indices: Any, codebook: Codebook, dtype: Any = None):
    """Centroid values ``codebook.centroids[indices]``, in the namespace of ``indices``.

    Parameters
    ----------
    indices : array
        Integer array of any shape with values in ``[0, 2**bits)`` (not
        checked: NumPy raises ``IndexError`` out of range, other namespaces
        may not).
    codebook : Codebook
    dtype : dtype, optional
        Output dtype of the ``indices``' namespace; default float64.

    Returns
    -------
    array
        Same shape and device as ``indices``.
    """
    if not isinstance(codebook, Codebook):
        raise TypeError(f"codebook must be a Codebook, got {type(codebook).__name__}")
    if not is_array_api_obj(indices):
        raise TypeError(f"indices must be an integer array, got {type(indices).__name__}")
    xp = namespace(indices)
    if not xp.isdtype(indices.dtype, "integral"):
        raise TypeError(f"indices must have an integer dtype, got {indices.dtype}")
    table = host_to_like(codebook.centroids, indices, dtype=xp.float64 if dtype is None else dtype)
    return cell_value(indices, table)
