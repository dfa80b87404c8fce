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
import inspect
import itertools
import json
import math
import numbers

import numpy as np

from .._array import check_bits, contiguous, empty_on, namespace, quiet_overflow, zeros_on
from ..composition import PolarQuantQJL
from ..compressed import CompressedVectors
from ..polar_quant import PolarQuant
from ..qjl import QJL
from ..turboquant import TurboQuantMSE, TurboQuantProd
from .attention import stream_matmul, transposed
from .codec import FP16_MAX, SEED_NBYTES, KeyCodec, Limits, ValueCodec, norm_limit

__all__ = [
    "KEY_METHODS",
    "VALUE_METHODS",
    "QuantizerCodec",
    "FullPrecision",
    "make_codec",
    "polar_preset",
    "encode_storable",
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
        # all streams in one call where the quantizer takes stacks (TurboQuantMSE), else a loop
        self._stacked = getattr(quantizer, "stacks_streams", False)

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

    def storable_limits(self) -> Limits:
        """Token norms up to the storage range of the quantizer's norms or radii.

        Every stored scalar is at most the token's norm (norms, polar radii,
        TurboQuant_prod's residual norm of the *unit* vector is at most 2), except the
        composition's residual norm ``||x - x_polar||``, at most ``||x|| + ||x_polar||``,
        i.e. ``2 ||x||`` up to float16 rounding of the radii (bound 2).
        """
        key, dtype = _scalar_dtype(self.quantizer)
        bound = 2.0 if isinstance(self.quantizer, PolarQuantQJL) else 1.0
        what = "norms" if key == "norm_dtype" else "radii"
        if bound > 1:
            what += " and residual norms"
        return Limits(
            max_norm=norm_limit(dtype) / bound, storage=f"{dtype} {what}", fix={key: "float32"}
        )

    def encode(self, x) -> dict:
        return encode_storable(self.quantizer, x)

    def _codes(self, fields: dict) -> CompressedVectors:
        any_field = next(iter(fields.values()))
        q = self.quantizer
        return CompressedVectors(q.method, q.config(), fields, tuple(any_field.shape[:2]), q.dim)

    def decode(self, fields: dict):
        return self.quantizer.decode(self._codes(fields))

    def _per_stream(self, fields: dict, h: int) -> dict:
        n = next(iter(fields.values())).shape[1]
        layout = self.quantizer.field_layout()
        return {
            k: namespace(v).reshape(v[h, ...], (n,) + tuple(layout[k][0]))
            for k, v in fields.items()
        }

    def prepare(self, q):
        if self._stacked:
            return self.quantizer._prepare_queries(q)
        return [self.quantizer._prepare_queries(q[h, ...]) for h in range(q.shape[0])]

    def score(self, state, fields: dict):
        q = self.quantizer
        n = next(iter(fields.values())).shape[1]
        if self._stacked:
            out = empty_on(state, state.shape[:2] + (n,))
            for a, b in q._chunks(n):
                out[:, :, a:b] = q._score_rows(
                    state, {k: v[:, a:b, ...] for k, v in fields.items()}
                )
            return out
        first = _any_array(state[0])
        out = empty_on(first, (len(state), first.shape[0], n))
        for h, st in enumerate(state):
            f = self._per_stream(fields, h)
            for a, b in q._chunks(n):
                out[h, :, a:b] = q._score_rows(st, {k: v[a:b, ...] for k, v in f.items()})
        return out

    def weighted_sum(self, p, fields: dict):
        q = self.quantizer
        n = p.shape[2]
        out = zeros_on(p, (p.shape[0], p.shape[1], self.head_dim))
        if self._stacked:
            for a, b in q._chunks(n):
                out += q._weighted_sum_rows(
                    contiguous(p[:, :, a:b]), {k: v[:, a:b, ...] for k, v in fields.items()}
                )
            return out
        for h in range(p.shape[0]):
            f = self._per_stream(fields, h)
            for a, b in q._chunks(n):
                out[h, ...] += q._weighted_sum_rows(
                    p[h, :, a:b], {k: v[a:b, ...] for k, v in f.items()}
                )
        return out


def _any_array(state):
    """An array of a prepared query state (an array, or a tuple of arrays and ``None``s:
    TurboQuant_prod at 1 bit prepares ``(None, S q)``)."""
    if isinstance(state, tuple):
        return next(s for s in state if s is not None)
    return state


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

    def storable_limits(self) -> Limits:
        """float16 storage holds coordinates up to 65504 (float32: any finite input)."""
        top = FP16_MAX if self.dtype == "float16" else math.inf
        return Limits(max_abs=top, storage=f"{self.dtype} storage", fix={"dtype": "float32"})

    def encode(self, x) -> dict:
        return {"x": store_tokens(x, self.dtype)}

    def decode(self, fields: dict):
        x = fields["x"]
        return namespace(x).astype(x, namespace(x).float32)

    def prepare(self, q):
        return q

    def score(self, state, fields: dict):
        return stream_matmul(state, transposed(self.decode(fields)))

    def weighted_sum(self, p, fields: dict):
        return stream_matmul(p, self.decode(fields))


# -- scalars below float16's normal range ----------------------------------------------------------
def _scalar_dtype(quantizer) -> tuple[str, str]:
    """``(option, dtype)`` of the quantizer's stored norms or radii (``norm_dtype``/``radius_dtype``)."""
    config = quantizer.config()
    key = "norm_dtype" if "norm_dtype" in config else "radius_dtype"
    return key, config[key]


@functools.lru_cache(maxsize=32)
def _float32_twin(cls, config: str, backend):
    """The quantizer of ``config`` (JSON) with float32 norms or radii: same codes, wider scalars."""
    args = {k: v for k, v in json.loads(config).items() if k != "method"}
    args["norm_dtype" if "norm_dtype" in args else "radius_dtype"] = "float32"
    return cls(**args, backend=backend)


def encode_storable(quantizer, x) -> dict:
    """``quantizer.encode(x).fields``; float16 norms or radii below the normal range are kept.

    The quantizers refuse a float16 norm, radius or residual norm below
    float16's smallest normal (6.1e-5: it would lose relative precision).  In a
    KV cache that refusal would come when a token *leaves the window*, long
    after the cache accepted it, and every later append would fail on the same
    token.  Here such scalars are stored as float16 subnormals (or zero)
    instead: an absolute error of at most ``2**-25`` (3e-8), no more than
    float16 storage of the token itself already costs (the window rounds a
    coordinate ``v`` with an error up to ``max(2**-11 |v|, 2**-25)``).  They
    occur for tokens of tiny norm, and for ordinary tokens whose polar radii,
    residual, or outlier or regular part nearly vanish.

    The normal path is the quantizer's own encode, bytes unchanged.  Only when
    it refuses the block is the block encoded by the same configuration with
    float32 scalars (identical codes: the rotation, sketch and codebooks are
    rebuilt from the same seed, and the norms and radii are computed before
    they are stored); the rows that needed it take those scalars rounded to
    float16, every other row is re-encoded by the quantizer itself, so each
    token's bytes do not depend on the block it was compressed in.  Scalars
    above float16's range are not stored: the cache refuses such tokens at
    append (:meth:`~polarquant.kv.codec.TokenCodec.storable_limits`), and the
    error is re-raised here if one gets through.
    """
    try:
        return dict(quantizer.encode(x).fields)
    except ValueError:
        if _scalar_dtype(quantizer)[1] != "float16":
            raise
        twin = _float32_twin(
            type(quantizer), json.dumps(quantizer.config(), sort_keys=True), quantizer.backend
        )
        wide = dict(twin.encode(x).fields)
        scalars = [k for k, (_, dt) in quantizer.field_layout().items() if dt == "float16"]
        xp = namespace(x)
        batch = tuple(x.shape[:-1])
        tiny = zeros_on(x, batch, xp.bool)
        for k in scalars:
            v = xp.reshape(wide[k], batch + (-1,))
            if not bool(xp.all(v <= FP16_MAX)):  # beyond float16: the quantizer's error stands
                raise
            small = (v > 0) & (v < float(np.finfo(np.float16).smallest_normal))
            tiny = tiny | xp.any(small, axis=-1)
        if not bool(xp.any(tiny)):  # refused for another reason
            raise
    fields = {k: (xp.astype(v, xp.float16) if k in scalars else v) for k, v in wide.items()}
    ok = xp.logical_not(tiny)
    if bool(xp.any(ok)):  # rows with normal scalars: the quantizer's own bytes
        # encoding is row by row, so every tiny row is replaced by a normal one and the
        # whole block encoded: the normal rows get exactly the bytes the quantizer gives them
        first = int(xp.argmax(xp.astype(ok, xp.int8)))
        normal = xp.where(ok[..., None], x, _row(x, first))
        exact = quantizer.encode(normal).fields
        for k in fields:
            keep = xp.reshape(ok, batch + (1,) * (fields[k].ndim - len(batch)))
            fields[k] = xp.where(keep, exact[k], fields[k])
    return fields


def _row(x, flat: int):
    """Row ``flat`` of ``x (..., d)`` counted over the batch dimensions (C order)."""
    xp = namespace(x)
    return xp.reshape(x, (-1, x.shape[-1]))[flat, ...]


def store_tokens(x, dtype: str, *, check: bool = True):
    """``x`` copied as ``dtype`` for storage, refusing values ``dtype`` would turn into ``inf``.

    The range is checked (one reduction, read back) only when ``dtype`` is
    narrower than ``x``'s: float32 into float16, float64 into float32.  With
    ``check=False`` the cast is made quietly and the caller must refuse a
    non-finite result itself (:meth:`polarquant.kv.KVCache.append` reads one
    peak for all its checks).
    """
    xp = namespace(x)
    target = getattr(xp, dtype, None)
    if target is None:  # array_api_strict has no float16
        raise TypeError(
            f"the array namespace {xp.__name__} has no {dtype}: build the cache with "
            "window_dtype='float32' (and float32 norms: key_options/value_options "
            "norm_dtype='float32' or radius_dtype='float32')"
        )
    top = float(xp.finfo(target).max)
    if check and math.prod(x.shape) and top < float(xp.finfo(x.dtype).max):
        big = float(xp.max(xp.abs(x)))
        if not big <= top:  # NaN too: a caller that skipped the finite check learns here
            fix = (
                "build the cache with window_dtype='float32'"
                if dtype == "float16"
                else "rescale the input (the cache computes in float32)"
            )
            raise ValueError(f"values up to {big:.4g} exceed the {dtype} range ({top:g}); {fix}")
    with quiet_overflow(xp):
        return xp.astype(x, target, copy=True)


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
    if role not in ("key", "value"):
        raise ValueError(f"role must be 'key' or 'value', got {role!r}")
    if options is not None and not isinstance(options, dict):
        raise TypeError(
            f"{role}_options must be a dict of method options, got {type(options).__name__}"
        )
    opts = dict(options or {})
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
    from . import baselines

    if method == "none":
        _check_options(None, opts, role, method, extra=("dtype",))
        return FullPrecision(head_dim, opts.pop("dtype", window_dtype))
    if method in ("turboquant-mse", "turboquant-prod"):
        if _half_bits(bits):
            from .outliers import ChannelSplitTurboQuant

            _check_options(ChannelSplitTurboQuant, opts, role, method, exclude=("variant",))
            variant = method.split("-")[1]
            return ChannelSplitTurboQuant(head_dim, bits, variant=variant, **common, **opts)
        cls = TurboQuantMSE if method == "turboquant-mse" else TurboQuantProd
        _check_options(cls, opts, role, method)
        return QuantizerCodec(cls(head_dim, check_bits(bits), **common, **opts))
    if method == "qjl":
        outliers = opts.get("outliers", None)
        if outliers == 0:
            opts.pop("outliers")
            _check_options(QJL, opts, role, method, extra=("outliers",))
            proj = _sketch_size(bits, head_dim)
            return QuantizerCodec(QJL(head_dim, proj, **common, **opts))
        from .outliers import QJLOutlierKeys

        _check_options(QJLOutlierKeys, opts, role, method)
        return QJLOutlierKeys(head_dim, bits, **common, **opts)
    if method in ("polarquant", "polarquant-qjl"):
        residual = method == "polarquant-qjl"
        cls = PolarQuantQJL if residual else PolarQuant
        _check_options(cls, opts, role, method, extra=("levels",))
        levels = opts.pop("levels", 4)
        level_bits = _polar_bits(bits, head_dim, levels, residual)
        return QuantizerCodec(cls(head_dim, levels, level_bits, **common, **opts))
    if method == "kivi":
        cls = baselines.KIVIKeys if role == "key" else baselines.KIVIValues
        _check_options(cls, opts, role, method)
        return cls(head_dim, bits, **common, **opts)
    if method == "hadamard-rtn":
        _check_options(baselines.HadamardRTN, opts, role, method)
        return baselines.HadamardRTN(head_dim, bits, **common, **opts)
    _check_options(baselines.FP8, opts, role, method)
    return baselines.FP8(head_dim, 8 if bits is None else bits, **common, **opts)


def _check_options(cls, opts: dict, role: str, method: str, extra=(), exclude=()) -> None:
    """Refuse option names ``method`` does not take, naming ``{role}_options`` and the valid ones.

    The valid names are the keyword-only parameters of the class that
    implements the method (less ``seed`` and ``backend``, which the cache
    sets), plus ``extra`` (options :func:`make_codec` reads itself).
    """
    valid = list(extra)
    if cls is not None:
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.name not in ("seed", "backend", *exclude):
                valid.append(p.name)
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        raise ValueError(
            f"{role}_options for method {method!r} has unknown option(s) "
            f"{', '.join(map(repr, unknown))}; valid options: {', '.join(sorted(valid)) or 'none'}"
        )


def _sketch_size(bits, head_dim: int) -> int:
    if not isinstance(bits, numbers.Real) or isinstance(bits, bool) or not bits > 0:
        raise ValueError(
            f"qjl bits (sign bits per coordinate) must be a positive number, got {bits!r}"
        )
    m = round(float(bits) * head_dim)
    if m < 1:
        raise ValueError(f"qjl bits={bits} gives no sign bit at head_dim {head_dim}")
    return m
