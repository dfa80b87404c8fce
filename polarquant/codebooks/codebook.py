r"""The codebook object: sorted centroids, their decision thresholds, support and error.

Both PolarQuant (arXiv 2502.02617, Sec. 3-4) and TurboQuant (arXiv 2504.19874,
Sec. 3.1, Algorithm 1) quantize numbers whose law is known after a random
rotation (:mod:`polarquant.distributions`), one number at a time, to the
nearest of :math:`K = 2^b` centroids.
:class:`~polarquant.codebooks.Codebook` holds what that takes: the centroids
``c``, the decision thresholds ``t`` (cell ``k`` is ``[t_{k-1}, t_k)``), the
support ``(lo, hi)`` of the law it was designed for and its expected squared
error ``D`` (``mse``).  It is what every constructor of
:mod:`polarquant.codebooks` returns.

A codebook is immutable (read-only float64 copies), compared and hashed by
value, and written to and read from a JSON-able dict (``to_dict`` /
``from_dict``: fitted PolarQuant codebooks are saved that way).  It validates
its fields and computes nothing: building codebooks is left to the other
modules of the package (``lloyd_max_solver``, ``analytic``, ``kmeans``,
``baselines``), quantizing with them to ``cells``.

Symbols: as in :mod:`polarquant.codebooks` (``K``, ``c``, ``t``, ``(lo, hi)``, ``D``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Codebook"]


@dataclass(frozen=True, eq=False)
class Codebook:
    """A scalar quantizer: ``2**bits`` sorted centroids and their decision thresholds.

    Parameters
    ----------
    centroids : array_like, shape (2**bits,)
        Reconstruction values, strictly increasing (stored as read-only float64).
    boundaries : array_like, shape (2**bits - 1,)
        Decision thresholds ``t``: cell ``k`` is ``[t_{k-1}, t_k)``.  For
        Lloyd-Max and k-means codebooks they are the midpoints of neighbouring
        centroids (nearest-centroid quantization); ``c_k <= t_k <= c_{k+1}``.
    support : tuple of float
        ``(lo, hi)`` of the law the codebook was designed for (may be infinite).
    mse : float
        Expected squared error per scalar under that law; for a fitted codebook,
        the mean squared error on the fitting samples.
    name : str
        Where the codebook comes from, e.g. ``"lloyd-max angle level 3, 2 bits"``.
    """

    centroids: np.ndarray
    boundaries: np.ndarray
    support: tuple[float, float]
    mse: float
    name: str = ""

    def __post_init__(self) -> None:
        c = _read_only_vector(self.centroids, "centroids")
        k = c.shape[0]
        if k < 2 or k > 256 or k & (k - 1):
            raise ValueError(f"centroids must hold 2**bits values, bits in [1, 8]; got {k}")
        if not np.all(np.diff(c) > 0):
            raise ValueError(f"centroids must be strictly increasing, got {c.tolist()}")
        t = _read_only_vector(self.boundaries, "boundaries")
        if t.shape != (k - 1,):
            raise ValueError(f"{k} centroids need {k - 1} boundaries, got {t.shape[0]}")
        if not (np.all(c[:-1] <= t) and np.all(t <= c[1:])):
            raise ValueError("every boundary t_k must lie between centroids c_k and c_{k+1}")
        if not isinstance(self.support, (tuple, list)) or len(self.support) != 2:
            raise TypeError(f"support must be a pair (lo, hi), got {self.support!r}")
        lo, hi = (float(s) for s in self.support)
        if not (lo < hi and lo <= c[0] and c[-1] <= hi):
            raise ValueError(f"support {(lo, hi)} must satisfy lo < hi and contain every centroid")
        if isinstance(self.mse, bool) or not isinstance(self.mse, numbers.Real):
            raise TypeError(f"mse must be a real number, got {self.mse!r}")
        if not (math.isfinite(self.mse) and self.mse >= 0):
            raise ValueError(f"mse must be finite and >= 0, got {self.mse!r}")
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a string, got {self.name!r}")
        object.__setattr__(self, "centroids", c)
        object.__setattr__(self, "boundaries", t)
        object.__setattr__(self, "support", (lo, hi))
        object.__setattr__(self, "mse", float(self.mse))

    @property
    def bits(self) -> int:
        """Bits per code, ``log2(len(centroids))``."""
        return self.centroids.shape[0].bit_length() - 1

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Codebook):
            return NotImplemented
        return (
            np.array_equal(self.centroids, other.centroids)
            and np.array_equal(self.boundaries, other.boundaries)
            and self.support == other.support
            and self.mse == other.mse
            and self.name == other.name
        )

    def __hash__(self) -> int:
        return hash(
            (self.centroids.tobytes(), self.boundaries.tobytes(), self.support, self.mse, self.name)
        )

    def to_dict(self) -> dict:
        """A JSON-able dict of plain lists and floats (infinite support ends as ``"inf"``).

        Python's ``json`` writes floats with ``repr``, which round-trips float64
        exactly, so ``Codebook.from_dict(json.loads(json.dumps(cb.to_dict())))``
        equals ``cb``.
        """
        return {
            "name": self.name,
            "bits": self.bits,
            "centroids": self.centroids.tolist(),
            "boundaries": self.boundaries.tolist(),
            "support": [s if math.isfinite(s) else str(s) for s in self.support],
            "mse": self.mse,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Codebook:
        """Rebuild a codebook written by :meth:`to_dict`, validating sizes and order."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a codebook dict is expected, got {type(data).__name__}")
        missing = {"centroids", "boundaries", "support", "mse"} - set(data)
        if missing:
            raise ValueError(f"codebook dict lacks {sorted(missing)}")
        support = data["support"]
        if not isinstance(support, (list, tuple)) or len(support) != 2:
            raise ValueError(f"codebook support must be a pair, got {support!r}")
        book = cls(
            np.asarray(data["centroids"], dtype=np.float64),
            np.asarray(data["boundaries"], dtype=np.float64),
            (float(support[0]), float(support[1])),
            float(data["mse"]),
            str(data.get("name", "")),
        )
        if "bits" in data and data["bits"] != book.bits:
            raise ValueError(
                f"codebook dict says bits={data['bits']!r} but holds "
                f"{book.centroids.shape[0]} centroids"
            )
        return book


def _read_only_vector(values: Any, name: str) -> np.ndarray:
    a = np.array(values, dtype=np.float64)  # always a private copy
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite, got {a.tolist()}")
    a.setflags(write=False)
    return a
