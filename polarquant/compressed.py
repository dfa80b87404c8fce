"""The compressed object returned by every quantizer's ``encode``.

A :class:`CompressedVectors` is a bag of named arrays ("fields") that share the
batch shape of the encoded input, plus the configuration of the quantizer that
wrote them.  What a field holds depends on the method (see each quantizer's
docstring for its layout formula); typical fields are

``codes`` / ``angles``
    packed b-bit codebook indices (``uint8``, canonical layout of
    :mod:`polarquant.packing`; PolarQuant's ``angles`` holds every level's codes of a
    vector, level by level: :class:`polarquant.plan.PolarPlan`);
``signs``
    packed QJL sign bits (``uint8``);
``norms``, ``residual_norms``, ``radii``
    floating scalars stored in ``float16`` by default (``float32`` on request).

``nbytes`` is the memory actually held by those arrays, nothing left out: every
quantizer's ``encode`` (and :func:`polarquant.load`) returns fields that own
exactly their bytes, never views of a larger padded buffer.  A slice
``codes[a:b]`` is a view, like NumPy's: its ``nbytes`` counts the selected
vectors, while the parent's buffer stays alive as long as the view does.  The
seeded rotation, sketch and analytic codebooks are not stored (they are rebuilt
from the seed in the configuration), fitted codebooks are stored in the
configuration and counted by :attr:`metadata_nbytes`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._array import namespace

__all__ = ["CompressedVectors", "array_nbytes"]


def _axes_indexed(i) -> int:
    """How many batch axes the index item ``i`` consumes (a boolean mask: its ``ndim``)."""
    if i is Ellipsis:
        return 0
    dtype = getattr(i, "dtype", None)
    if dtype is not None and getattr(i, "ndim", 0) > 0 and namespace(i).isdtype(dtype, "bool"):
        return i.ndim
    return 1


def array_nbytes(a) -> int:
    """Bytes held by the elements of an array of any namespace."""
    n = getattr(a, "nbytes", None)
    if isinstance(n, int):
        return n
    xp = namespace(a)
    dtype = a.dtype
    if dtype == xp.bool:  # (array_api_strict arrays have no nbytes, and bool no iinfo)
        bits = 8
    elif xp.isdtype(dtype, "integral"):
        bits = xp.iinfo(dtype).bits
    else:
        bits = xp.finfo(dtype).bits
    return math.prod(a.shape) * bits // 8


@dataclass(frozen=True, eq=False)
class CompressedVectors:
    """Compressed vectors: packed codes and side information for a batch ``(...)``.

    Attributes
    ----------
    method : str
        Name of the quantizer that wrote the codes (e.g. ``"turboquant-mse"``).
    config : dict
        The quantizer's full configuration (JSON-able); decoding checks it.
    fields : dict of str -> array
        The stored arrays, each shaped ``batch_shape + field_shape``.
    batch_shape : tuple of int
        The leading shape of the encoded input.
    dim : int
        The dimension of the encoded vectors.
    dtype : str
        The float dtype of the encoded input; ``decode`` returns it.
    """

    method: str
    config: Mapping[str, Any]
    fields: Mapping[str, Any]
    batch_shape: tuple
    dim: int
    dtype: str = "float32"

    @property
    def shape(self) -> tuple:
        """The batch shape (one entry per encoded vector)."""
        return self.batch_shape

    @property
    def n_vectors(self) -> int:
        return math.prod(self.batch_shape)

    def __len__(self) -> int:
        if not self.batch_shape:
            raise TypeError("len() of a single compressed vector")
        return self.batch_shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored arrays (codes, signs, norms, radii)."""
        return sum(array_nbytes(a) for a in self.fields.values())

    @property
    def metadata_nbytes(self) -> int:
        """Bytes of the configuration as stored in a file (JSON), shared by the whole batch."""
        return len(json.dumps(dict(self.config), sort_keys=True).encode())

    @property
    def bits_per_coordinate(self) -> float:
        """Every stored bit (codes, norms, radii, signs) divided by the coordinates encoded.

        The per-batch configuration (:attr:`metadata_nbytes`: seed, bit widths,
        fitted codebooks) is not included; it does not grow with the batch.
        """
        n = self.n_vectors * self.dim
        return 8.0 * self.nbytes / n if n else 0.0

    @property
    def fp16_ratio(self) -> float:
        """``fp16 bytes / nbytes``: the compression ratio against an fp16 copy."""
        return (2.0 * self.n_vectors * self.dim) / self.nbytes if self.nbytes else float("inf")

    def __getitem__(self, index) -> CompressedVectors:
        """Select vectors along the batch dimensions.

        Accepts what NumPy accepts on the batch axes: integers, slices, ``...``,
        integer arrays (or lists) and boolean masks (a mask of ``k`` dimensions
        covers ``k`` batch axes).  The index applies to the batch axes only; the
        per-vector axes of every field are kept whole.  Like NumPy, a slice
        gives views of the fields (sharing their memory) and an array index
        gives copies.
        """
        if not self.batch_shape:
            raise IndexError("cannot index a single compressed vector")
        idx = index if isinstance(index, tuple) else (index,)
        # a list is an index array; an empty one selects nothing (NumPy would make it float64)
        idx = tuple(
            (np.asarray(i) if i else np.zeros(0, np.intp)) if isinstance(i, list) else i
            for i in idx
        )
        # identity tests only: ``==`` on an array index compares element-wise
        if any(i is None or isinstance(i, (bool, np.bool_)) for i in idx):
            raise IndexError(
                "new axes (None, True, False) are not supported when indexing compressed vectors"
            )
        ellipses = [at for at, i in enumerate(idx) if i is Ellipsis]
        if len(ellipses) > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        nb = len(self.batch_shape)
        used = sum(_axes_indexed(i) for i in idx)
        if used > nb:
            raise IndexError(
                f"too many indices: {used} batch axes indexed, the batch has shape "
                f"{self.batch_shape}"
            )
        if ellipses:
            at = ellipses[0]
            idx = idx[:at] + (slice(None),) * (nb - used) + idx[at + 1 :]
        else:
            idx = idx + (slice(None),) * (nb - used)  # spell out every batch axis
        new = {}
        shape = None
        for k, v in self.fields.items():
            trailing = v.ndim - nb
            new[k] = v[idx + (slice(None),) * trailing]
            shape = tuple(new[k].shape[: new[k].ndim - trailing])
        return CompressedVectors(self.method, self.config, new, shape, self.dim, self.dtype)

    def __repr__(self) -> str:
        return (
            f"CompressedVectors(method={self.method!r}, shape={self.batch_shape}, dim={self.dim}, "
            f"nbytes={self.nbytes}, bits_per_coordinate={self.bits_per_coordinate:.4g})"
        )

    def to_numpy(self) -> CompressedVectors:
        """A copy whose fields are NumPy arrays (explicit device-to-host transfer)."""
        from ._array import to_host

        new = {k: to_host(v) for k, v in self.fields.items()}
        return CompressedVectors(
            self.method, self.config, new, self.batch_shape, self.dim, self.dtype
        )
