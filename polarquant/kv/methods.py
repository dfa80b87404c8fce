r"""Which compression method a KV cache uses for keys and for values, by name.

:func:`make_codec` turns ``(method, bits, role)`` into a token codec (see
:mod:`polarquant.kv.codec`).  The methods and what ``bits`` means for each:

=====================  =====  ======  ==========================================================
method                 keys   values  ``bits``
=====================  =====  ======  ==========================================================
``"turboquant-mse"``   yes    yes     int 1..8 (Algorithm 1); ``k + 0.5`` = the paper's outlier
                                      channel split (Sec. 4.3, :mod:`polarquant.kv.outliers`)
``"turboquant-prod"``  yes    no      as above, Algorithm 2 (``b - 1`` MSE bits + 1 QJL bit)
``"qjl"``              yes    no      sign bits per coordinate, ``m = bits * head_dim``; with
                                      the per-group outlier split of QJL Sec. 4 by default
``"polarquant"``       yes    yes     tuple of per-level angle bits, or a nominal number (the
                                      ``L = 4`` tuple whose stored bits are closest to it)
``"polarquant-qjl"``   yes    no      as polarquant, plus a 1-bit QJL residual (``m = d``)
``"kivi"``             yes    yes     int 1..8, KIVI-style asymmetric uniform (baseline)
``"hadamard-rtn"``     yes    yes     int 2..8, Hadamard + round-to-nearest (baseline)
``"fp8"``              yes    yes     8 (emulated e4m3, baseline)
``"none"``             yes    yes     ignored: tokens stay at the window's dtype (fp16 default)
=====================  =====  ======  ==========================================================

Values are combined linearly by attention, so only mean-squared-error
quantizers serve as value methods: the unbiased inner-product estimators
(QJL, TurboQuant_prod, the composition) are refused there, with the reason.
Method-specific options (``rotation``, ``codebook``, ``levels``, ``outliers``,
``group_size``...) pass through ``options``.
"""

from __future__ import annotations

import functools
import itertools
import numbers

import numpy as np

from .._array import check_bits
from ..composition import PolarQuantQJL
from ..compressed import CompressedVectors
from ..polar_quant import PolarQuant
from ..qjl import QJL
from ..turboquant import TurboQuantMSE, TurboQuantProd
from .attention import stream_matmul
from .codec import SEED_NBYTES, KeyCodec, ValueCodec

__all__ = [
    "KEY_METHODS",
    "VALUE_METHODS",
    "QuantizerCodec",
    "FullPrecision",
    "make_codec",
    "polar_preset",
]

KEY_METHODS = (
    "turboquant-mse",
    "turboquant-prod",
    "qjl",
    "polarquant",
    "polarquant-qjl",
    "kivi",
    "hadamard-rtn",
    "fp8",
    "none",
)
VALUE_METHODS = ("turboquant-mse", "polarquant", "kivi", "hadamard-rtn", "fp8", "none")


class QuantizerCodec(KeyCodec, ValueCodec):
    """Any :class:`~polarquant.Quantizer` as a token codec: one quantizer, one seed, all streams.

    Keys are scored with the quantizer's score-from-codes path (the query
    rotated or projected once per stream) and values summed with its
    :meth:`~polarquant.Quantizer.weighted_sum` path (rotated-domain
    accumulation for TurboQuantMSE and PolarQuant); nothing is decoded back to
    the input space.  Work is chunked over tokens as in the quantizer itself.
    """

    def __init__(self, quantizer):
        super().__init__(quantizer.dim)
        self.quantizer = quantizer
        self.method = quantizer.method

    def config(self) -> dict:
        return self.quantizer.config()

    @property
    def bits_per_coordinate(self) -> float:
        return self.quantizer.bits_per_coordinate

    def state_nbytes(self, heads: int) -> int:
        # the rotation and sketch are rebuilt from the seed; fitted codebooks are stored
        books = getattr(self.quantizer, "codebooks", None)
        fitted = getattr(self.quantizer, "fitted", False)
        return SEED_NBYTES + (sum(cb.centroids.nbytes for cb in books) if fitted else 0)

    def encode(self, x) -> dict:
        return dict(self.quantizer.encode(x).fields)

    def _codes(self, fields: dict) -> CompressedVectors:
        any_field = next(iter(fields.values()))
        q = self.quantizer
        return CompressedVectors(q.method, q.config(), fields, tuple(any_field.shape[:2]), q.dim)

    def decode(self, fields: dict):
        return self.quantizer.decode(self._codes(fields))

    def _per_stream(self, fields: dict, h: int) -> dict:
        n = next(iter(fields.values())).shape[1]
        layout = self.quantizer.field_layout()
        return {k: v[h].reshape((n,) + tuple(layout[k][0])) for k, v in fields.items()}

    def prepare(self, q):
        return [self.quantizer._prepare_queries(q[h]) for h in range(q.shape[0])]

    def score(self, state, fields: dict):
        q = self.quantizer
        n = next(iter(fields.values())).shape[1]
        out = np.empty((len(state), _rows(state[0]), n), dtype=np.float32)
        for h, st in enumerate(state):
            f = self._per_stream(fields, h)
            for a, b in q._chunks(n):
                out[h, :, a:b] = q._score_rows(st, {k: v[a:b] for k, v in f.items()})
        return out

    def weighted_sum(self, p, fields: dict):
        q = self.quantizer
        n = p.shape[2]
        out = np.zeros((p.shape[0], p.shape[1], self.head_dim), dtype=np.float32)
        for h in range(p.shape[0]):
            f = self._per_stream(fields, h)
            for a, b in q._chunks(n):
                out[h] += q._weighted_sum_rows(p[h, :, a:b], {k: v[a:b] for k, v in f.items()})
        return out


def _rows(state) -> int:
    """Number of query rows in a prepared query state (an array or a tuple of arrays)."""
    if isinstance(state, tuple):
        return next(s.shape[0] for s in state if s is not None)
    return state.shape[0]


class FullPrecision(KeyCodec, ValueCodec):
    """No compression: tokens stored at ``dtype`` (float16 by default, the cache we compare with)."""

    method = "none"

    def __init__(self, head_dim: int, dtype: str = "float16"):
        super().__init__(head_dim)
        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
        self.dtype = dtype

    def config(self) -> dict:
        return {"method": self.method, "dim": self.head_dim, "dtype": self.dtype}

    @property
    def bits_per_coordinate(self) -> float:
        return 8.0 * np.dtype(self.dtype).itemsize

    def state_nbytes(self, heads: int) -> int:
        return 0

    def encode(self, x) -> dict:
        return {"x": store_tokens(x, self.dtype)}

    def decode(self, fields: dict):
        return fields["x"].astype(np.float32)

    def prepare(self, q):
        return q

    def score(self, state, fields: dict):
        return stream_matmul(state, fields["x"].astype(np.float32).transpose(0, 2, 1))

    def weighted_sum(self, p, fields: dict):
        return stream_matmul(p, fields["x"].astype(np.float32))


def store_tokens(x, dtype: str) -> np.ndarray:
    """``x`` cast to ``dtype`` for storage, refusing values float16 would turn into ``inf``."""
    if dtype == "float16" and x.size:
        big = float(np.max(np.abs(x)))
        if big > 65504.0:
            raise ValueError(
                f"values up to {big:.4g} exceed the float16 range (65504); "
                "build the cache with window_dtype='float32'"
            )
    return np.asarray(x).astype(dtype)


# -- PolarQuant presets --------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def polar_preset(nominal: float, head_dim: int, levels: int = 4, residual: bool = False) -> tuple:
    """The ``levels``-level angle bits whose stored bits per coordinate are closest to ``nominal``.

    Candidates are non-increasing tuples (the level-1 angle, uniform on the
    whole circle, is the most sensitive; Lemma 2) of widths 1..6; ties go to
    the lowest expected MSE.  With ``residual`` the count includes the
    composition's 1-bit QJL residual and its norms (:class:`PolarQuantQJL`).
    """
    cls = PolarQuantQJL if residual else PolarQuant
    best = None
    for bits in itertools.combinations_with_replacement(range(6, 0, -1), levels):
        pq = cls(head_dim, levels, bits)
        key = (abs(pq.bits_per_coordinate - nominal), pq.expected_mse)
        if best is None or key < best[0]:
            best = (key, bits)
    return best[1]


def _polar_bits(bits, head_dim: int, levels: int, residual: bool):
    if isinstance(bits, numbers.Real) and not isinstance(bits, bool):
        return polar_preset(float(bits), head_dim, levels, residual)
    return bits


def _half_bits(bits) -> bool:
    return isinstance(bits, numbers.Real) and float(bits) % 1 == 0.5


def make_codec(
    method: str,
    bits,
    head_dim: int,
    *,
    role: str = "key",
    seed: int = 0,
    backend: str | None = None,
    window_dtype: str = "float16",
    options: dict | None = None,
):
    """Build the codec of ``method`` at ``bits`` for keys (``role="key"``) or values."""
    opts = dict(options or {})
    if role not in ("key", "value"):
        raise ValueError(f"role must be 'key' or 'value', got {role!r}")
    valid = KEY_METHODS if role == "key" else VALUE_METHODS
    if method not in valid:
        hint = ""
        if role == "value" and method in KEY_METHODS:
            hint = (
                f" ({method!r} is an unbiased inner-product estimator for keys; attention sums "
                "values linearly, so values need a mean-squared-error quantizer)"
            )
        raise ValueError(f"unknown {role} method {method!r}{hint}; valid: {', '.join(valid)}")
    common = {"seed": seed, "backend": backend}
    if method == "none":
        return FullPrecision(head_dim, opts.pop("dtype", window_dtype))
    if method in ("turboquant-mse", "turboquant-prod"):
        if _half_bits(bits):
            from .outliers import ChannelSplitTurboQuant

            variant = method.split("-")[1]
            return ChannelSplitTurboQuant(head_dim, bits, variant=variant, **common, **opts)
        cls = TurboQuantMSE if method == "turboquant-mse" else TurboQuantProd
        return QuantizerCodec(cls(head_dim, check_bits(bits), **common, **opts))
    if method == "qjl":
        outliers = opts.get("outliers", None)
        if outliers == 0:
            opts.pop("outliers")
            proj = _sketch_size(bits, head_dim)
            return QuantizerCodec(QJL(head_dim, proj, **common, **opts))
        from .outliers import QJLOutlierKeys

        return QJLOutlierKeys(head_dim, bits, **common, **opts)
    if method in ("polarquant", "polarquant-qjl"):
        levels = opts.pop("levels", 4)
        residual = method == "polarquant-qjl"
        level_bits = _polar_bits(bits, head_dim, levels, residual)
        cls = PolarQuantQJL if residual else PolarQuant
        return QuantizerCodec(cls(head_dim, levels, level_bits, **common, **opts))
    from . import baselines

    if method == "kivi":
        cls = baselines.KIVIKeys if role == "key" else baselines.KIVIValues
        return cls(head_dim, bits, **common, **opts)
    if method == "hadamard-rtn":
        return baselines.HadamardRTN(head_dim, bits, **common, **opts)
    return baselines.FP8(head_dim, 8 if bits is None else bits, **common, **opts)


def _sketch_size(bits, head_dim: int) -> int:
    if not isinstance(bits, numbers.Real) or isinstance(bits, bool) or not bits > 0:
        raise ValueError(
            f"qjl bits (sign bits per coordinate) must be a positive number, got {bits!r}"
        )
    m = round(float(bits) * head_dim)
    if m < 1:
        raise ValueError(f"qjl bits={bits} gives no sign bit at head_dim {head_dim}")
    return m
