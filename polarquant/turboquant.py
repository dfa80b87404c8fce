r"""TurboQuant (Zandieh, Daliri, Hadian, Mirrokni, ICLR 2026; arXiv 2504.19874).

``TurboQuantMSE`` -- Algorithm 1 (Sec. 3.1)
    Store ``||x||``; rotate the unit vector, ``y = Q x / ||x||``; quantize every
    coordinate of ``y`` to the nearest of ``2**b`` Lloyd-Max centroids for the
    coordinate law of a rotated unit vector (Lemma 1; exact Beta law at finite
    ``d`` by default, its Gaussian limit N(0, 1/d) on request).  Decode
    ``x_hat = ||x|| Q^T c[idx]``.  Theorem 1:
    ``4**-b <= D_mse <= (sqrt(3) pi / 2) 4**-b`` per vector, for unit ``x``.
    It is biased for inner products: ``E<y, x_hat> = (1 - D_mse) <y, x>``
    for large ``d`` (Sec. 3.2; ``2/pi`` at ``b = 1``).

``TurboQuantProd`` -- Algorithm 2 (Sec. 3.2)
    TurboQuantMSE with ``b - 1`` bits, residual ``r = x - x_hat_mse`` (on the unit
    vector), then QJL with ``m = d`` on ``r``, storing ``gamma = ||r||``.
    Decode ``x_hat = ||x|| (x_hat_mse + sqrt(pi/2)/d gamma S^T sign(S r))``.
    Unbiased for every ``y``; Theorem 2: ``D_prod <= (sqrt(3) pi^2 / d) 4**-b``
    (``||y|| = 1``), lower bound ``(1/d) 4**-b`` (Theorem 3).  At ``b = 1`` the
    MSE stage has no bits and the method is plain QJL with ``m = d``.

Scoring from codes (Sec. 3, "inner product"): rotate the query once, ``Qq``;
then ``<q, x_hat_mse> = ||x|| sum_j (Qq)_j c[idx_j]``, plus for the product
variant the QJL term ``||x|| sqrt(pi/2)/d gamma <S q, sign(S r)>``.  The
encoded vectors are never rotated back.

Symbols: ``Q`` rotation (:mod:`polarquant.rotation`), ``c`` the codebook
(:func:`polarquant.codebooks.coordinate_codebook`), ``idx`` codes, ``S`` the
sketch (:mod:`polarquant.qjl`), ``gamma`` residual norm.

Departures from the paper: the input norm is stored (the paper assumes unit
vectors and says to store norms separately); with ``rotation="hadamard"`` the
vector is zero-padded to the next power of two and every padded coordinate is
quantized too (see :mod:`polarquant.rotation`), with the codebook of the padded
dimension.

Layout per vector (``D`` = rotated dimension, ``d`` for Haar):
``codes`` ``ceil(b D / 8)`` bytes + ``norms`` 2 bytes (float16) for TurboQuantMSE;
``codes`` ``ceil((b-1) D / 8)`` + ``signs`` ``ceil(d/8)`` + ``norms`` 2 +
``residual_norms`` 2 bytes for TurboQuantProd.  At ``d = 128``, ``b = 4``:
66 bytes (4.125 bits/coordinate) and 68 bytes (4.25).
"""

from __future__ import annotations

import math

from ._array import check_bits, namespace
from .codebooks import coordinate_codebook
from .plan import ResidualPlan, ScalarPlan
from .qjl import QJL_SCALE, SignSketch
from .quantizer import Quantizer, check_norm_dtype, safe_norms, store_scalars
from .rotation import check_rotation, make_rotation

__all__ = ["TurboQuantMSE", "TurboQuantProd", "CODEBOOK_LAWS"]

#: ``codebook=`` values: which coordinate law the Lloyd-Max codebook is fitted to.
CODEBOOK_LAWS = ("exact", "gaussian")


def _check_law(codebook: str) -> str:
    if codebook not in CODEBOOK_LAWS:
        raise ValueError(f"codebook must be one of {CODEBOOK_LAWS}, got {codebook!r}")
    return codebook


class _TurboQuant(Quantizer):
    """What both TurboQuant variants share: bits, rotation, codebook law, norm storage."""

    def __init__(
        self,
        dim: int,
        bits: int,
        seed: int = 0,
        *,
        rotation: str = "haar",
        codebook: str = "exact",
        norm_dtype: str = "float16",
        backend: str | None = None,
    ):
        super().__init__(dim, seed, backend)
        self.bits = check_bits(bits)
        self.rotation_kind = check_rotation(rotation)
        self.codebook_law = _check_law(codebook)
        self.norm_dtype = check_norm_dtype(norm_dtype)
        self._build()

    def _build(self) -> None:
        """Build the seeded stages (rotation + codebook, sketch) of the variant."""
        raise NotImplementedError

    # -- the scalar stage: rotation + per-coordinate Lloyd-Max codes (Alg. 1, lines 2-3, 6-8) ------
    def _build_scalar_stage(self, bits: int) -> None:
        """The rotation ``Q``, the codebook of the rotated coordinates' law and its plan."""
        self.rotation = make_rotation(self.rotation_kind, self.dim, self.seed)
        self.out_dim = self.rotation.out_dim
        self.codebook = coordinate_codebook(self.out_dim, bits, exact=self.codebook_law == "exact")
        self.scalar_plan = ScalarPlan(self.out_dim, self.codebook)

    def _rotate_units(self, x, divisor=None):
        """``Q (x / divisor)``: the rows the scalar codes are taken of.

        The rotation is linear, so ``Q (x / r) = (Q x) / r``: the division is
        done in place on the rotated copy, which saves a pass over the input
        and a temporary of its size.
        """
        y = self.rotation.apply(x)
        if divisor is not None:
            y /= divisor[:, None]
        return y

    def _scalar_codes(self, x, divisor=None):
        """Packed codes of the unit rows ``x / divisor[:, None]`` (``x`` itself if no divisor)."""
        return self._ops().scalar_encode(self.scalar_plan, self._rotate_units(x, divisor))

    def _scalar_decode(self, codes, dtype):
        """Unit-vector reconstruction ``Q^T c[idx]`` ``(n, d)``."""
        return self.rotation.inverse(self._ops().scalar_values(self.scalar_plan, codes, dtype))

    def config(self) -> dict:
        return {
            "method": self.method,
            "dim": self.dim,
            "bits": self.bits,
            "seed": self.seed,
            "rotation": self.rotation_kind,
            "codebook": self.codebook_law,
            "norm_dtype": self.norm_dtype,
        }


class TurboQuantMSE(_TurboQuant):
    r"""TurboQuant for mean-squared error (Algorithm 1).

    Parameters
    ----------
    dim : int
        Vector dimension ``d`` (any ``d >= 2``).
    bits : int
        Bits per coordinate ``b``, 1..8.
    seed : int
        Seed of the rotation.
    rotation : {"haar", "hadamard"}
        Dense Haar rotation (the paper) or randomized Hadamard (fast; zero-pads to a power of two).
    codebook : {"exact", "gaussian"}
        Lloyd-Max codebook for the exact coordinate law at this ``d`` (Lemma 1) or its
        Gaussian limit N(0, 1/d).
    norm_dtype : {"float16", "float32"}
        Storage of ``||x||``.
    backend : str, optional
        Kernel backend.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((2000, 128))
    >>> tq = TurboQuantMSE(128, bits=3, seed=0)
    >>> codes = tq.encode(x)
    >>> codes.nbytes // 2000, codes.bits_per_coordinate
    (50, 3.125)
    >>> x_hat = tq.decode(codes)
    >>> d_mse = np.mean(np.sum((x - x_hat) ** 2, 1) / np.sum(x ** 2, 1))
    >>> bool(abs(d_mse - 0.034) < 0.002)
    True
    """

    method = "turboquant-mse"

    def _build(self) -> None:
        self._build_scalar_stage(self.bits)

    @property
    def plan(self) -> ScalarPlan:
        """What the backend's scalar operations take: bits, codebook, bytes per row."""
        return self.scalar_plan

    def field_layout(self) -> dict:
        return {"codes": ((self.scalar_plan.nbytes,), "uint8"), "norms": ((), self.norm_dtype)}

    @property
    def expected_mse(self) -> float:
        """Per-vector D_mse of the codebook for unit vectors, ``d * E|y_j - c(y_j)|^2``.

        ``D`` rotated coordinates are quantized; with a zero-padded Hadamard
        rotation the inverse keeps a ``d``-dimensional part of the error, about
        ``d / D`` of it when the error is isotropic.  That holds with light
        padding (d = 96, D = 128: a few percent off from 2 bits up; at 1 bit the
        error follows the signal: 0.30 measured vs 0.27), not with heavy padding:
        for ``d`` just above a power of two (D close to 2d) the rotated
        coordinates of the padded vector are far from independent and the kept
        part holds more of the error, up to about twice this value (measured at
        2 bits: 1.41x at d = 65, 1.75x at d = 513).  A Haar rotation has no
        padding and this is the exact value.
        """
        return self.dim * self.codebook.mse

    def _encode_rows(self, x) -> dict:
        norms, safe = safe_norms(x)
        return {
            "codes": self._scalar_codes(x, safe),
            "norms": store_scalars(norms, self.norm_dtype, "norms"),
        }

    def _decode_rows(self, fields, dtype):
        xp = namespace(fields["codes"])
        norms = xp.astype(fields["norms"], dtype)
        return self._scalar_decode(fields["codes"], dtype) * norms[:, None]

    def _prepare_vectors(self, x):
        return self._rotate_units(x, safe_norms(x)[1])  # Q x / ||x||, as _encode_rows codes it

    def _prepare_queries(self, q):
        return self.rotation.apply(q)

    #: :meth:`_score_rows` and :meth:`_weighted_sum_rows` also take *stacks* of streams
    #: (fields ``(S, rows, ...)`` with queries or weights ``(S, k, ...)``; the backends'
    #: stacked operations, ``polarquant.backends._checks.per_stream``): the KV cache
    #: scores all its heads in one call.
    stacks_streams = True

    def _weighted_sum_rows(self, w, fields):
        # sum_i w_i ||x_i|| Q^T c[idx_i] = Q^T sum_i (w_i ||x_i||) c[idx_i]: one rotation per weight row
        xp = namespace(w)
        wn = w * xp.astype(fields["norms"], w.dtype)[..., None, :]
        sums = self._ops().scalar_weighted_sum(self.scalar_plan, wn, fields["codes"])
        return self.rotation.inverse(sums)

    def _table_form(self):
        """``(plan, field, factor)``: a score is ``factor * norms * scalar_score(plan, Q q,
        fields[field])`` (Alg. 1's dequantization in the rotated domain), what a fast scan
        (:mod:`polarquant.fastscan`) approximates."""
        return self.scalar_plan, "codes", 1.0

    def _score_rows(self, qr, fields):
        xp = namespace(qr)
        s = self._ops().scalar_score(self.scalar_plan, qr, fields["codes"])
        return s * xp.astype(fields["norms"], qr.dtype)[..., None, :]


class TurboQuantProd(_TurboQuant):
    r"""TurboQuant for unbiased inner products (Algorithm 2): (b-1)-bit MSE stage + 1-bit QJL residual.

    Parameters
    ----------
    dim : int
        Vector dimension ``d``.
    bits : int
        Total bits per coordinate ``b`` (1..8): ``b - 1`` for the MSE stage, 1 for the
        QJL residual sketch (``m = d`` sign bits).
    seed : int
        Seed of the rotation and of the residual sketch (independent streams).
    rotation, codebook, norm_dtype, backend
        As in :class:`TurboQuantMSE`.

    Notes
    -----
    ``E[score] = <q, x>`` exactly (over the sketch), with
    ``d * D_prod ~ (pi/2) D_mse(b - 1)`` for unit vectors.
    """

    method = "turboquant-prod"

    def _build(self) -> None:
        if self.bits > 1:
            self._build_scalar_stage(self.bits - 1)
        else:  # no MSE stage: plain QJL with m = d
            self.rotation = self.codebook = self.scalar_plan = None
            self.out_dim = self.dim
        self.sketch = SignSketch(self.dim, self.dim, self.seed, "residual-sketch", self.backend)

    @property
    def plan(self) -> ResidualPlan:
        """The MSE stage's :class:`~polarquant.plan.ScalarPlan` (``None`` at 1 bit) and the
        residual's :class:`~polarquant.plan.SignPlan`."""
        return ResidualPlan(self.scalar_plan, self.sketch.plan)

    @property
    def expected_mse(self) -> float:
        """Expected D_mse of ``decode``: ``D_mse(b-1) (pi/2 - 1/d)`` (``pi/2 - 1/d`` at b = 1).

        The QJL reconstruction of the residual is unbiased but noisy:
        ``E||r_hat - r||^2 = ||r||^2 ((pi/2) d/m - 1/m)`` with ``m = d``
        (see :attr:`polarquant.PolarQuantQJL.expected_mse`).
        """
        residual = 1.0 if self.codebook is None else self.dim * self.codebook.mse
        return residual * (math.pi / 2 - 1 / self.dim)

    def field_layout(self) -> dict:
        layout = {}
        if self.scalar_plan is not None:
            layout["codes"] = ((self.scalar_plan.nbytes,), "uint8")
        layout["signs"] = ((self.sketch.nbytes,), "uint8")
        layout["norms"] = ((), self.norm_dtype)
        layout["residual_norms"] = ((), self.norm_dtype)
        return layout

    def _encode_rows(self, x) -> dict:
        xp = namespace(x)
        norms, safe = safe_norms(x)
        u = x / safe[:, None]
        fields = {}
        if self.scalar_plan is not None:
            fields["codes"] = self._scalar_codes(u)
            r = u - self._scalar_decode(fields["codes"], u.dtype)
        else:
            r = u
        gamma = xp.linalg.vector_norm(r, axis=-1)
        fields["signs"] = self.sketch.encode(r)
        fields["norms"] = store_scalars(norms, self.norm_dtype, "norms")
        # gamma is the residual of the *unit* vector: no rescaling of the input can lift a tiny
        # one into float16's normal range, so it is stored as a subnormal (absolute error at
        # most 2**-25 of the unit norm) rather than refused
        fields["residual_norms"] = store_scalars(
            gamma, self.norm_dtype, "residual norms", keep_subnormal=True
        )
        return fields

    def _decode_rows(self, fields, dtype):
        xp = namespace(fields["signs"])
        gamma = xp.astype(fields["residual_norms"], dtype)
        u_hat = self.sketch.reconstruct(fields["signs"], gamma)
        if self.scalar_plan is not None:
            u_hat = u_hat + self._scalar_decode(fields["codes"], dtype)
        return u_hat * xp.astype(fields["norms"], dtype)[:, None]

    def _prepare_vectors(self, x):
        # the first stage's input, as _encode_rows computes it: Q u for the MSE stage, u = x / ||x||
        # (the residual's sketch input depends on its codes); at 1 bit the sketch S u of u itself
        u = x / safe_norms(x)[1][:, None]
        return self.sketch.project(u) if self.rotation is None else self.rotation.apply(u)

    def _prepare_queries(self, q):
        return (None if self.rotation is None else self.rotation.apply(q), self.sketch.project(q))

    def _score_rows(self, state, fields):
        qr, sq = state
        xp = namespace(sq)
        gamma = xp.astype(fields["residual_norms"], sq.dtype)
        s = (QJL_SCALE / self.sketch.m) * self.sketch.inner(sq, fields["signs"]) * gamma[None, :]
        if self.scalar_plan is not None:
            s = s + self._ops().scalar_score(self.scalar_plan, qr, fields["codes"])
        return s * xp.astype(fields["norms"], sq.dtype)[None, :]
