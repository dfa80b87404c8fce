"""Random rotations: the data-oblivious preconditioning shared by all three methods.

After a uniformly random rotation, every unit vector looks the same: each
coordinate follows one known law (TurboQuant Sec. 3.1, Lemma 1; PolarQuant
Sec. 3, "PolarQuant-R"), so one quantizer designed for that law is near-optimal
for any input, with no calibration.  Two rotations are offered:

``HaarRotation`` (the papers' choice)
    ``Q`` uniformly distributed on the orthogonal group O(d): QR decomposition
    of a d x d standard-normal matrix ``G = Q R``, then column ``j`` of ``Q``
    multiplied by ``sign(R_jj)`` (Mezzadri 2007: without that fix the QR factor
    is not exactly Haar).  The matrix is generated once per seed on the host in
    float64 with NumPy (PCG64), then cast and moved to the input's namespace and
    device, so every backend uses the same matrix and codes decode anywhere.
    Cost O(d^2) per vector.

``RandomizedHadamard`` (the fast option)
    ``y = H D x / sqrt(n)`` with ``D`` a seeded random +-1 diagonal and ``H`` the
    Walsh-Hadamard matrix of order ``n``, applied with the fast transform in
    O(n log n).  The random signs are kept: a plain Hadamard is not
    data-oblivious (an input equal to a Hadamard row is mapped to a single
    spike).  **Any dim**: when ``dim`` is not a power of two the input is padded
    with zeros to ``n = 2**ceil(log2(dim))`` and the rotated vector has ``n``
    coordinates (``out_dim``); the inverse transforms back and drops the padding.
    Padding is exact (an orthogonal embedding of R^dim in R^n) at the price of
    ``n - dim`` extra coordinates to quantize: 96 -> 128 costs a third more
    code bits, which the quantizers count.  A randomized Hadamard is not Haar:
    its coordinates are Rademacher sums, close to but not exactly the law of
    Lemma 1.

Symbols: ``x`` input (..., dim); ``y`` rotated (..., out_dim); ``Q`` Haar
matrix; ``D`` signs; ``H`` Hadamard.  ``apply`` computes ``y = Q x`` row-wise as
``x @ Q.T``; ``inverse`` computes ``Q.T y``.

Reproducibility across machines: NumPy's PCG64 stream is platform-independent;
the QR factorization goes through LAPACK, whose rounding may differ in the last
bits between BLAS builds (field-notes, defect 8).  The randomized Hadamard uses
only additions and sign flips and is bit-exact everywhere.
"""

from __future__ import annotations

import functools

import numpy as np
from array_api_compat import device as array_device

from ._array import ConstantCache, check_int, compute_dtype, namespace
from ._seeding import check_seed, generator

__all__ = [
    "haar_matrix",
    "hadamard_signs",
    "fwht",
    "HaarRotation",
    "RandomizedHadamard",
    "check_rotation",
    "make_rotation",
    "ROTATIONS",
]


@functools.lru_cache(maxsize=8)
def _haar_matrix_cached(dim: int, seed: int) -> np.ndarray:
    g = generator(seed, "rotation").standard_normal((dim, dim))
    q, r = np.linalg.qr(g)
    q *= np.sign(np.diag(r))[None, :]  # Mezzadri's fix: makes Q exactly Haar
    q.setflags(write=False)
    return q


def haar_matrix(dim: int, seed: int) -> np.ndarray:
    """The seeded Haar-random orthogonal matrix ``Q`` (float64, host, read-only).

    Examples
    --------
    >>> q = haar_matrix(4, seed=0)
    >>> bool(np.allclose(q @ q.T, np.eye(4)))
    True
    """
    return _haar_matrix_cached(check_int(dim, "dim", low=1), check_seed(seed))


@functools.lru_cache(maxsize=8)
def _hadamard_signs_cached(n: int, seed: int) -> np.ndarray:
    s = generator(seed, "hadamard-signs").integers(0, 2, size=n).astype(np.float64) * 2 - 1
    s.setflags(write=False)
    return s


def hadamard_signs(n: int, seed: int) -> np.ndarray:
    """The seeded random signs ``D`` (float64 +-1, host) of a randomized Hadamard of order n."""
    return _hadamard_signs_cached(check_int(n, "n", low=1), check_seed(seed))


def fwht(x):
    """Normalized fast Walsh-Hadamard transform along the last axis.

    ``x`` has shape ``(..., n)`` with ``n`` a power of two; returns ``H x / sqrt(n)``
    (orthogonal and its own inverse).  Butterflies written with array-API
    reshapes, O(n log n), no Python loop over vectors.
    """
    xp = namespace(x)
    *batch, n = x.shape
    if n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {n}")
    h = 1
    y = x
    while h < n:
        y = xp.reshape(y, (*batch, n // (2 * h), 2, h))
        a, b = y[..., 0, :], y[..., 1, :]
        y = xp.stack([a + b, a - b], axis=-2)
        h *= 2
    y = xp.reshape(y, (*batch, n))
    return y / (n**0.5)


class _Rotation:
    """Common plumbing: seeded host constants cached per namespace/device/dtype."""

    kind: str

    def __init__(self, dim: int, seed: int = 0):
        self.dim = check_int(dim, "dim", low=1)
        self.seed = check_seed(seed)
        self._consts = ConstantCache()

    def _const(self, name: str, host: np.ndarray, like):
        return self._consts.get(name, host, like)

    def _check(self, x, width: int, what: str):
        if x.shape[-1] != width:
            raise ValueError(f"{what} must have last dimension {width}, got shape {tuple(x.shape)}")
        xp = namespace(x)
        return xp.astype(x, compute_dtype(xp, x.dtype), copy=False)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "dim": self.dim, "seed": self.seed}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, seed={self.seed})"


class HaarRotation(_Rotation):
    """Seeded Haar-random rotation ``y = Q x`` (TurboQuant Alg. 1 line 2; PolarQuant-R)."""

    kind = "haar"

    @property
    def out_dim(self) -> int:
        return self.dim

    @property
    def matrix(self) -> np.ndarray:
        """``Q`` on the host, float64."""
        return haar_matrix(self.dim, self.seed)

    def apply(self, x):
        """Rotate ``x (..., dim)`` -> ``y (..., dim)``, computed in float32/float64."""
        x = self._check(x, self.dim, "x")
        return x @ self._const("QT", self.matrix.T, x)

    def inverse(self, y):
        """Rotate back: ``x = Q^T y``."""
        y = self._check(y, self.dim, "y")
        return y @ self._const("Q", self.matrix, y)


class RandomizedHadamard(_Rotation):
    """Seeded randomized Hadamard rotation ``y = H D [x; 0] / sqrt(n)``, any dim (zero padding)."""

    kind = "hadamard"

    @property
    def out_dim(self) -> int:
        return 1 << (self.dim - 1).bit_length()

    def apply(self, x):
        x = self._check(x, self.dim, "x")
        xp = namespace(x)
        n = self.out_dim
        if n != self.dim:
            pad = xp.zeros((*x.shape[:-1], n - self.dim), dtype=x.dtype, device=array_device(x))
            x = xp.concat([x, pad], axis=-1)
        return fwht(x * self._const("D", hadamard_signs(n, self.seed), x))

    def inverse(self, y):
        y = self._check(y, self.out_dim, "y")
        x = fwht(y) * self._const("D", hadamard_signs(self.out_dim, self.seed), y)
        return x[..., : self.dim]


ROTATIONS = {"haar": HaarRotation, "hadamard": RandomizedHadamard}


def check_rotation(kind) -> str:
    """``kind`` if it names a rotation (``"haar"``, ``"hadamard"``), else ``ValueError``
    listing them (also for a non-string, e.g. a list, which is not hashable)."""
    if not isinstance(kind, str) or kind not in ROTATIONS:
        raise ValueError(f"unknown rotation {kind!r}; valid rotations: {sorted(ROTATIONS)}")
    return kind


def make_rotation(kind: str, dim: int, seed: int = 0):
    """Build a rotation by name: ``"haar"`` or ``"hadamard"``."""
    return ROTATIONS[check_rotation(kind)](dim, seed)
