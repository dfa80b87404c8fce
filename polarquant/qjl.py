r"""QJL: the 1-bit quantized Johnson-Lindenstrauss transform (Zandieh, Daliri, Han, AAAI 2025).

Paper: arXiv 2406.03482, Sec. 3 (Definition 3.1, Lemmas 3.2-3.5).

A key ``k`` in R^d is stored as the signs of a Gaussian sketch plus its norm;
a query is **projected, never quantized** (the "asymmetric" estimator):

.. math::

    \widehat{\langle q, k\rangle} = \frac{\sqrt{\pi/2}}{m}\, \|k\|\,
        \langle S q,\ \mathrm{sign}(S k) \rangle ,
    \qquad S \in \mathbb{R}^{m \times d},\ S_{ij} \sim \mathcal N(0, 1).

* Unbiased over ``S`` (Lemma 3.2): ``E[sign(s.k) s.q] = sqrt(2/pi) <q, k>/||k||``
  for one Gaussian row ``s``.
* Exact variance: ``((pi/2) ||q||^2 ||k||^2 - <q, k>^2) / m``
  (:func:`polarquant.metrics.qjl_variance`).
* Tail (Lemma 3.5): ``m >= (4/3)(1 + eps)/eps^2 log(2/delta)`` gives an error at
  most ``eps ||q|| ||k||`` with probability ``1 - delta``.

The constant ``sqrt(pi/2)/m`` belongs to i.i.d. N(0, 1) rows, which is what we
draw (seeded, float64, on the host).  Scaling rows by ``1/sqrt(m)`` or
orthogonalising them changes the constant; the official code orthogonalises in
chunks of ``d`` rows rescaled by ``sqrt(d)``; we keep the paper's Gaussian
sketch, whose constant is exact (field-notes, defect 1).

The sign bit is ``bit = 1`` for ``S k >= 0`` (:func:`polarquant.packing.pack_signs`).
Scoring from packed bits uses ``<s, sign(Sk)> = 2 sum_{i: bit_i = 1} s_i - sum_i s_i``
with ``s = S q``; this reference computes it with one matrix product over the
unpacked bits of a chunk of keys, the accelerated backends with a 256-entry
lookup table per byte.

Layout of :class:`QJL` codes, per vector: ``signs`` ``ceil(m/8)`` bytes and
``norms`` one float16 (or float32): ``m + 16`` bits, i.e. ``(m + 16)/d`` bits per
coordinate (4.125 for d = 128, m = 512; 2.125 for m = 256).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ._array import ConstantCache, check_int, namespace
from ._seeding import check_seed, generator
from .plan import SignPlan
from .quantizer import Quantizer, check_norm_dtype, safe_norms, store_scalars

__all__ = ["QJL", "SignSketch", "gaussian_sketch", "QJL_SCALE"]

#: The QJL constant ``sqrt(pi/2)`` for i.i.d. N(0, 1) sketch rows (Lemma 3.2).
QJL_SCALE = math.sqrt(math.pi / 2)


@functools.lru_cache(maxsize=8)
def _gaussian_sketch_cached(m: int, dim: int, seed: int, stream: str) -> np.ndarray:
    s = generator(seed, stream).standard_normal((m, dim))
    s.setflags(write=False)
    return s


def gaussian_sketch(m: int, dim: int, seed: int, stream: str = "qjl-sketch") -> np.ndarray:
    """The seeded sketch ``S`` (m x dim, i.i.d. N(0, 1), float64, host, read-only)."""
    return _gaussian_sketch_cached(
        check_int(m, "proj_dim", low=1), check_int(dim, "dim", low=1), check_seed(seed), stream
    )


class SignSketch:
    """A seeded Gaussian sign sketch: the QJL building block (also TurboQuant's residual stage).

    ``encode(v)`` -> packed ``sign(S v)``; ``project(q)`` -> ``S q``;
    ``inner(sq, signs)`` -> ``<S q, sign(S v)>``; ``reconstruct(signs, norms)`` ->
    ``sqrt(pi/2)/m * norms * S^T sign(S v)``, the unbiased estimate of ``v``.
    """

    #: A quantizer that holds it sets its backend here too (``Quantizer.backend``).
    follows_owner_backend = True

    def __init__(self, m: int, dim: int, seed: int, stream: str = "qjl-sketch", backend=None):
        self.m = check_int(m, "proj_dim", low=1)
        self.dim = dim
        self.seed = seed
        self.stream = stream
        self.backend = backend
        self.plan = SignPlan(self.m)
        self._consts = ConstantCache()

    @property
    def matrix(self) -> np.ndarray:
        return gaussian_sketch(self.m, self.dim, self.seed, self.stream)

    @property
    def nbytes(self) -> int:
        """Bytes of packed sign bits per vector."""
        return self.plan.nbytes

    def _const(self, name, like):
        host = self.matrix.T if name == "ST" else self.matrix
        return self._consts.get(name, host, like, like.dtype)

    def _ops(self):
        from .backends import get_backend

        return get_backend(self.backend)

    def project(self, v):
        """``S v`` for rows ``v (n, dim)`` -> ``(n, m)``."""
        return v @ self._const("ST", v)

    def encode(self, v):
        """Packed sign bits of ``S v`` (bit 1 for ``>= 0``): ``uint8 (n, ceil(m/8))``."""
        return self._ops().sign_encode(self.plan, self.project(v))

    def inner(self, sq, signs):
        """``<S q, sign(S v)>`` for projected queries ``sq (nq, m)`` and signs ``(n, .)`` -> ``(nq, n)``."""
        return self._ops().sign_score(self.plan, sq, signs)

    def reconstruct(self, signs, norms):
        """Unbiased estimate ``sqrt(pi/2)/m * norms * S^T sign(S v)`` of ``v``, rows ``(n, dim)``."""
        pm = self._ops().sign_values(self.plan, signs, norms.dtype)
        return (QJL_SCALE / self.m) * norms[:, None] * (pm @ self._const("S", norms[:, None]))


class QJL(Quantizer):
    r"""QJL key quantizer: ``m`` sign bits of a Gaussian sketch plus the norm (QJL Sec. 3).

    Parameters
    ----------
    dim : int
        Vector dimension ``d``.
    proj_dim : int
        Sketch size ``m`` (number of sign bits per vector); the paper uses 256 for
        head_dim 128 (512 in the first layers).
    seed : int
        Seed of the sketch ``S``.
    norm_dtype : {"float16", "float32"}
        Storage of ``||k||``.
    backend : str, optional
        Kernel backend (see :mod:`polarquant.backends`).

    Notes
    -----
    Stored per vector: ``ceil(m/8)`` bytes of signs + one norm.  ``decode`` returns
    the unbiased reconstruction ``sqrt(pi/2)/m ||k|| S^T sign(S k)`` (its mean is
    ``k``; its error is large, QJL is meant for ``score``).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> k = rng.standard_normal((1000, 128)).astype(np.float32)
    >>> qjl = QJL(128, proj_dim=256, seed=1)
    >>> codes = qjl.encode(k)
    >>> codes.bits_per_coordinate
    2.125
    >>> qjl.score(k[:2], codes).shape
    (2, 1000)
    """

    method = "qjl"

    def __init__(
        self,
        dim: int,
        proj_dim: int,
        seed: int = 0,
        *,
        norm_dtype: str = "float16",
        backend: str | None = None,
    ):
        super().__init__(dim, seed, backend)
        self.proj_dim = check_int(proj_dim, "proj_dim", low=1)
        self.norm_dtype = check_norm_dtype(norm_dtype)
        self.sketch = SignSketch(self.proj_dim, self.dim, self.seed, "qjl-sketch", backend)

    def config(self) -> dict:
        return {
            "method": self.method,
            "dim": self.dim,
            "proj_dim": self.proj_dim,
            "seed": self.seed,
            "norm_dtype": self.norm_dtype,
        }

    @property
    def expected_mse(self) -> float:
        """Expected relative MSE of ``decode``: ``(pi/2) d/m - 1/m`` (see :class:`SignSketch`)."""
        return math.pi / 2 * self.dim / self.proj_dim - 1 / self.proj_dim

    def field_layout(self) -> dict:
        return {"signs": ((self.sketch.nbytes,), "uint8"), "norms": ((), self.norm_dtype)}

    def _encode_rows(self, x) -> dict:
        norms, _ = safe_norms(x)
        return {
            "signs": self.sketch.encode(x),
            "norms": store_scalars(norms, self.norm_dtype, "norms"),
        }

    def _decode_rows(self, fields, dtype):
        xp = namespace(fields["norms"])
        norms = xp.astype(fields["norms"], dtype)
        return self.sketch.reconstruct(fields["signs"], norms)

    @property
    def plan(self) -> SignPlan:
        """What the backend's sign operations take: the sketch size and bytes per row."""
        return self.sketch.plan

    def _prepare_vectors(self, x):
        return self.sketch.project(x)

    def _prepare_queries(self, q):
        return self.sketch.project(q)

    def _table_form(self):
        """``(plan, field, factor)``: a score is ``factor * norms * sign_score(plan, S q,
        fields[field])`` with ``factor = sqrt(pi/2) / m`` (QJL Lemma 3.2), what a fast scan
        (:mod:`polarquant.fastscan`) approximates."""
        return self.plan, "signs", QJL_SCALE / self.proj_dim

    def _score_rows(self, sq, fields):
        xp = namespace(sq)
        norms = xp.astype(fields["norms"], sq.dtype)
        return (QJL_SCALE / self.proj_dim) * self.sketch.inner(sq, fields["signs"]) * norms[None, :]
