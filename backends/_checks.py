"""Argument checks shared by the accelerated backends' entry points (library-independent).

The numba and cupy entry points validate the same shapes and dtypes before
launching kernels, so that the same bad input raises the same exception on
every backend; what differs (NumPy vs CuPy arrays, devices) stays in each
backend's module.  The reference backend uses the width checks too, so the
messages are the same everywhere, and they name the caller's arguments
(``queries``, ``weights``; ``x`` for the vectors being encoded), not the
backends' internal variables (``q``, ``s``, ``w``, ``y``, ``p``).
"""

from __future__ import annotations

import numpy as np

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def work_dtype(backend: str, *dtypes) -> np.dtype:
    """The kernel dtype for data of ``dtypes``: their promotion, float16 -> float32, ints -> float64."""
    dt = np.result_type(*dtypes)
    if dt in _FLOATS:
        return dt
    if dt == np.float16:
        return np.dtype(np.float32)
    if dt.kind in "biu":
        return np.dtype(np.float64)
    raise TypeError(f"the {backend} backend computes on real floats, got dtype {dt}")


def check_query_width(q, n: int, name: str = "queries") -> None:
    """``q`` must be ``(..., n)``: the number of values per row the codes hold."""
    if q.ndim == 0:
        raise ValueError(f"{name} must have shape (..., {n}), got a 0-d array")
    if q.shape[-1] != n:
        raise ValueError(
            f"{name} has last dimension {q.shape[-1]}, but the codes hold {n} values per row "
            f"(matmul mismatch: {q.shape} @ ({n}, rows))"
        )


def score_shape(q, rows_ndim: int, rows: int) -> tuple:
    """Shape of ``q @ values.T``: ``q.shape[:-1] + (rows,)``, or ``q.shape[:-1]`` for one 1-D row."""
    if rows_ndim == 1:
        return tuple(q.shape[:-1])
    if rows_ndim != 2:
        raise ValueError(f"scores need codes shaped (rows, nbytes), got {rows_ndim} dimensions")
    return tuple(q.shape[:-1]) + (rows,)


def check_polar_levels(packed, centroids, bits) -> tuple[list, list, list]:
    """One packed code array, one codebook and one bit width per polar level, as lists."""
    packed, centroids, bits = list(packed), list(centroids), list(bits)
    if not len(packed) == len(centroids) == len(bits):
        raise ValueError(
            f"{len(packed)} levels of codes, {len(centroids)} codebooks and {len(bits)} bit "
            "widths: one of each per level"
        )
    return packed, centroids, bits


def check_weight_width(w, rows: int, codes_ndim: int, name: str = "weights"):
    """``w (..., rows)``: one weight per row of a ``(rows, nbytes)`` batch of codes.

    Stricter than the reference's ``w @ values``: codes of other shapes are a
    ``ValueError`` (for one 1-D row ``@`` would contract ``w`` with the row's
    coordinates instead, and stacks of batches would broadcast).
    """
    if codes_ndim != 2:
        raise ValueError(
            f"weighted sums need codes shaped (rows, nbytes), got {codes_ndim} dimensions"
        )
    if w.ndim == 0:
        raise ValueError(f"{name} must have shape (..., {rows}), got a 0-d array")
    if w.shape[-1] != rows:
        raise ValueError(
            f"{name} has last dimension {w.shape[-1]}, but there are {rows} rows of codes "
            f"(matmul mismatch: {w.shape} @ ({rows}, n))"
        )
    return w
