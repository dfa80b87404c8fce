"""The shared life cycle of every quantizer: validate, encode, decode, score, save.

Each method (TurboQuant, QJL, PolarQuant, the blog's composition) implements
four row-wise steps on 2-D arrays ``(n, dim)`` in the compute dtype:

``_encode_rows(x) -> fields``
    the stored arrays of :class:`~polarquant.compressed.CompressedVectors`;
``_decode_rows(fields, dtype) -> x_hat``
    the reconstruction, computed in ``dtype`` (float32, or float64 for float64 input);
``_prepare_queries(q) -> state``
    the query transformed once (rotated, projected);
``_score_rows(state, fields) -> scores``
    the estimated inner products ``(n_queries, n)`` computed from the codes.

and may override ``_weighted_sum_rows(w, fields)``, the dual of scoring
(``w @ x_hat``, the attention-weighted sum of values), whose default decodes
the chunk; methods with a rotation accumulate in the rotated domain instead and
rotate the ``(n_weights, D)`` result back once.

This base class owns everything else, once: input validation (shape, dtype,
NaN/Inf), batch dimensions ``(..., dim)``, dtype and namespace preservation,
chunking of the scoring loop, configuration checks when codes are decoded,
and the storage of scalar side information (norms, radii) in ``float16`` or
``float32``.
"""

from __future__ import annotations

import abc
import inspect
import math
import numbers
from collections.abc import Mapping
from typing import Any, ClassVar

from array_api_compat import device as array_device

from ._array import (
    as_vectors,
    check_finite,
    check_int,
    compact,
    compute_dtype,
    detached,
    namespace,
    quiet_overflow,
)
from ._seeding import check_seed
from .compressed import CompressedVectors

__all__ = ["Quantizer", "from_config", "METHODS", "check_norm_dtype", "DECODE_DTYPES"]

#: method name -> quantizer class, filled by subclasses.
METHODS: dict[str, type] = {}

#: Rows are processed in chunks of about this many elements (4M floats = 16 MB
#: in float32): encoding, decoding and scoring stream over the batch, so the
#: temporaries stay a fixed size however many vectors are processed.
CHUNK_ELEMENTS = 1 << 22

NORM_DTYPES = ("float16", "float32")

#: The float dtypes codes may record as the encoded (and decoded) dtype.
DECODE_DTYPES = ("float16", "float32", "float64", "bfloat16")


def check_norm_dtype(norm_dtype: str) -> str:
    if norm_dtype not in NORM_DTYPES:
        raise ValueError(f"norm_dtype must be one of {NORM_DTYPES}, got {norm_dtype!r}")
    return norm_dtype


def dtype_name(xp, dtype) -> str:
    """A dtype's plain name (``"float32"``, ``"bfloat16"``...), whatever the namespace."""
    for name in ("float16", "float32", "float64", "uint8"):
        if hasattr(xp, name) and dtype == getattr(xp, name):
            return name
    return str(dtype).rsplit(".", 1)[-1]  # e.g. torch.bfloat16 -> "bfloat16"


def resolve_dtype(xp, name: str, default=None):
    """The dtype object called ``name`` in namespace ``xp`` (or in the library it wraps).

    A namespace without it (NumPy has no bfloat16, ``array_api_strict`` no
    float16) gives ``default``, or a ``TypeError`` when no default is given.
    """
    dtype = getattr(xp, name, None)
    if dtype is None:  # dtypes beyond the standard (torch.bfloat16) live in the library itself
        import importlib

        try:
            library = importlib.import_module(xp.__name__.rsplit(".", 1)[-1])
        except ImportError:
            library = None
        dtype = getattr(library, name, None)
    if dtype is None:
        if default is not None:
            return default
        raise TypeError(f"array namespace {xp.__name__} has no dtype {name!r}")
    return dtype


#: Representable ranges of the storage dtypes: (largest finite, smallest normal).
_STORAGE_RANGE = {"float16": (65504.0, 6.103515625e-05), "float32": (3.4028234e38, 1.1754944e-38)}


def store_scalars(
    values, norm_dtype: str, what: str, option: str = "norm_dtype", keep_subnormal: bool = False
):
    """Cast non-negative scalars (norms, radii) to their storage dtype, refusing lossy values.

    float16 holds values up to 65504 with 11 significant bits above 6.1e-5
    (float32: 3.4e38 and 1.2e-38); outside that range a stored norm would be
    ``inf``, zero, or lose its precision silently, so we raise instead and say
    which option (``option``, e.g. ``norm_dtype`` or ``radius_dtype``) to change.
    Exact zeros (zero vectors) are stored as zeros.  With ``keep_subnormal``,
    values below the normal range are stored as they round (an absolute error of
    at most half the smallest subnormal, ``2**-25`` in float16) instead of
    refused: the KV cache's policy (:func:`polarquant.kv.methods.encode_storable`).
    """
    xp = namespace(values)
    big_limit, tiny_limit = _STORAGE_RANGE[norm_dtype]
    if math.prod(values.shape):
        big = float(xp.max(values))
        if not big <= big_limit:  # also catches inf and NaN
            raise ValueError(
                f"{what} up to {big:.4g} exceed the {norm_dtype} range (max {big_limit:.4g})"
                + (
                    f"; build the quantizer with {option}='float32'"
                    if norm_dtype == "float16"
                    else "; rescale the input"
                )
            )
        if not keep_subnormal:  # (kept subnormals need no second read of the values)
            positive = xp.where(values > 0, values, xp.full_like(values, math.inf))
            small = float(xp.min(positive))
            if small < tiny_limit:
                raise ValueError(
                    f"{what} as small as {small:.4g} lose precision in {norm_dtype} (smallest "
                    f"normal {tiny_limit:.2g}); rescale the input"
                    + (f" or use {option}='float32'" if norm_dtype == "float16" else "")
                )
    dtype = getattr(xp, norm_dtype, None)
    if dtype is None:  # namespaces without float16 (array_api_strict)
        raise TypeError(
            f"the array namespace {xp.__name__} has no {norm_dtype}; use {option}='float32'"
        )
    return xp.astype(values, dtype)


def safe_norms(x):
    """Row norms ``||x||`` of ``(n, d)`` and the divisor (1 where the norm is 0).

    Fast path ``sqrt(x . x)``, taken when every squared norm is finite and at
    least ``tiny / eps`` (no precision lost to underflow).  Otherwise (overflow,
    tiny rows, or zero rows, since a tiny non-zero row can square to zero) the
    careful path computes ``s ||x / s||`` with ``s = max |x_i|``, accurate for
    any finite input.
    """
    xp = namespace(x)
    info = xp.finfo(x.dtype)
    with quiet_overflow(xp):
        squares = xp.vecdot(x, x, axis=-1)
    if bool(xp.all(xp.isfinite(squares) & (squares >= info.smallest_normal / info.eps))):
        norms = xp.sqrt(squares)
    else:
        scale = xp.max(xp.abs(x), axis=-1)
        scale = xp.where(scale > 0, scale, xp.ones_like(scale))
        norms = scale * xp.linalg.vector_norm(x / scale[:, None], axis=-1)
    safe = xp.where(norms > 0, norms, xp.ones_like(norms))
    return norms, safe


class Quantizer(abc.ABC):
    """Base class: see the module docstring.  Subclasses set ``method``."""

    method: ClassVar[str]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "method" in cls.__dict__:
            METHODS[cls.method] = cls

    def __init__(self, dim: int, seed: int = 0, backend: str | None = None):
        self.dim = check_int(dim, "dim", low=2)
        self.seed = check_seed(seed)
        from .backends import check_backend_name

        self.backend = None if backend is None else check_backend_name(backend)

    @property
    def backend(self) -> str | None:
        """The kernel backend (``None``: resolved at each call, see :mod:`polarquant.backends`).

        Setting it (e.g. on a quantizer rebuilt from a file) checks the name and sets it on
        the parts that run kernels of their own (the sign sketches of QJL, TurboQuantProd,
        PolarQuantQJL), so that every operation of the quantizer runs on the same backend.
        """
        return self._backend

    @backend.setter
    def backend(self, name: str | None) -> None:
        from .backends import check_backend_name

        name = None if name is None else check_backend_name(name)
        self._backend = name
        for part in vars(self).values():
            if getattr(part, "follows_owner_backend", False):
                part.backend = name

    # -- configuration ---------------------------------------------------------------------
    @abc.abstractmethod
    def config(self) -> dict:
        """Everything needed to rebuild this quantizer (JSON-able)."""

    @classmethod
    def from_config(cls, config: Mapping) -> Quantizer:
        """Rebuild the quantizer from :meth:`config`.

        Raises
        ------
        TypeError
            ``config`` is not a mapping, or a value has the wrong type (as the constructor).
        ValueError
            Another method, a missing required key (``dim``...), an unknown key, or
            a value out of range.
        """
        if not isinstance(config, Mapping):
            raise TypeError(
                f"config must be a dict (as returned by config()), got {type(config).__name__}"
            )
        method = config.get("method", cls.method)
        if method != cls.method:
            raise ValueError(f"config is for method {method!r}, not {cls.method!r}")
        params = dict(inspect.signature(cls.__init__).parameters)
        params.pop("self")
        params.pop("backend", None)  # a run-time choice, never part of a configuration
        args = {k: v for k, v in config.items() if k != "method"}
        unknown = sorted((k for k in args if k not in params), key=str)
        if unknown:
            raise ValueError(
                f"{cls.method} config has unknown key(s) {unknown}; valid keys: {list(params)}"
            )
        missing = [
            k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in args
        ]
        if missing:
            raise ValueError(f"{cls.method} config lacks the required key(s) {missing}")
        return cls(**args)

    def __repr__(self) -> str:
        args = ", ".join(
            f"{k}={v!r}"
            for k, v in self.config().items()
            if k != "method" and not isinstance(v, dict)
        )
        return f"{type(self).__name__}({args})"

    @abc.abstractmethod
    def field_layout(self) -> dict[str, tuple[tuple, str]]:
        """Stored fields: name -> (per-vector shape, dtype name)."""

    def nbytes_per_vector(self) -> int:
        """The layout formula: bytes stored per encoded vector."""
        sizes = {"uint8": 1, "float16": 2, "float32": 4}
        return sum(math.prod(shape) * sizes[dt] for shape, dt in self.field_layout().values())

    @property
    def bits_per_coordinate(self) -> float:
        """Stored bits per coordinate predicted by :meth:`field_layout`."""
        return 8.0 * self.nbytes_per_vector() / self.dim

    # -- the four row-wise steps -----------------------------------------------------------
    @abc.abstractmethod
    def _encode_rows(self, x) -> dict: ...

    @abc.abstractmethod
    def _decode_rows(self, fields: dict, dtype): ...

    @abc.abstractmethod
    def _prepare_queries(self, q): ...

    @abc.abstractmethod
    def _score_rows(self, state, fields: dict): ...

    @property
    def plan(self):
        """What this quantizer hands the kernel backends (:mod:`polarquant.plan`), built once."""
        raise NotImplementedError(f"{type(self).__name__} defines no plan")

    def _table_form(self):
        """``(plan, field, factor)`` when a score is ``factor * norms * <prepared query,
        centroids of fields[field]>`` under a one-codebook ``plan`` (what a fast scan,
        :mod:`polarquant.fastscan`, approximates), else ``None`` (the default)."""
        return None

    def _prepare_vectors(self, x):
        """The rows the backend's encode operation receives for ``x`` (see :meth:`prepare_vectors`)."""
        raise NotImplementedError(f"{type(self).__name__} has no single encode input")

    def _ops(self):
        """The kernel module of this quantizer's backend (:func:`polarquant.backends.get_backend`)."""
        from .backends import get_backend

        return get_backend(self.backend)

    def _weighted_sum_rows(self, w, fields):
        """``w (nw, n) @ x_hat (n, dim)`` for a chunk of rows (default: decode the chunk)."""
        return w @ self._decode_rows(fields, w.dtype)

    def _row_elements(self) -> int:
        """Widest per-row temporary of this method (``dim``; QJL's sketch is ``proj_dim`` wide)."""
        return max(self.dim, getattr(self, "proj_dim", 0) or 0)

    def _chunks(self, n: int):
        """``(start, stop)`` row ranges of at most ``CHUNK_ELEMENTS // row_elements`` rows."""
        step = max(1, CHUNK_ELEMENTS // self._row_elements())
        return [(start, min(start + step, n)) for start in range(0, n, step)]

    def _score_chunks(self, n: int):
        """Row ranges for :meth:`score`: all rows at once when the backend scores packed codes
        without decoding them (its ``SCORES_FROM_CODES``; every temporary is then the size
        of the scores themselves, and per-call work such as the query's lookup tables is
        done once), else :meth:`_chunks`."""
        from .backends import get_backend

        if n and get_backend(self.backend).SCORES_FROM_CODES:
            return [(0, n)]
        return self._chunks(n)

    # -- public API ------------------------------------------------------------------------
    def encode(self, x) -> CompressedVectors:
        """Compress vectors ``x`` of shape ``(..., dim)``.

        ``x`` must be an array (NumPy, or any array-API namespace) of a real
        floating dtype; Python lists are refused (say which dtype you mean:
        ``np.asarray(x, dtype=np.float32)``).  A torch tensor that requires grad
        is encoded without its autograd graph: codes are not differentiable.
        Every field of the result owns exactly its bytes, so ``nbytes`` is the
        memory really held.

        Raises
        ------
        TypeError
            ``x`` is not an array, or not a floating one.
        ValueError
            Wrong last dimension, NaN or Inf values, or norms outside the storage range.
        """
        xp, x = as_vectors(detached(x), self.dim, "x", finite=False)
        batch = tuple(x.shape[:-1])
        rows = xp.reshape(x, (-1, self.dim))
        work = compute_dtype(xp, x.dtype)
        parts = []
        for start, stop in self._chunks(rows.shape[0]):  # stream: temporaries stay chunk-sized
            chunk = rows[start:stop, ...]
            check_finite(chunk, "x")
            parts.append(self._encode_rows(xp.astype(chunk, work, copy=False)))
        if not parts:  # an empty batch still has a layout
            parts.append(self._encode_rows(xp.astype(rows[0:0, ...], work)))
        layout = self.field_layout()
        fields = {
            k: compact(  # a view of a larger buffer would make nbytes under-count
                xp.reshape(
                    xp.concat([p[k] for p in parts], axis=0) if len(parts) > 1 else parts[0][k],
                    batch + tuple(layout[k][0]),
                )
            )
            for k in parts[0]
        }
        return CompressedVectors(
            self.method, self.config(), fields, batch, self.dim, dtype_name(xp, x.dtype)
        )

    def check_codes(self, codes: CompressedVectors) -> None:
        """Refuse codes written by another configuration (method, dim, seed, bits...).

        Also refuses codes whose own description is inconsistent: a ``dim`` other
        than the configuration's, a recorded dtype that is not one of float16,
        float32, float64 or bfloat16, a batch shape that is not a tuple of
        non-negative integers, and fields whose names, shapes or dtypes differ
        from :meth:`field_layout`.
        """
        if not isinstance(codes, CompressedVectors):
            raise TypeError(f"expected CompressedVectors, got {type(codes).__name__}")
        mine, theirs = self.config(), dict(codes.config)
        if mine != theirs:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            detail = ", ".join(
                f"{k}: codes {theirs.get(k)!r} vs quantizer {mine.get(k)!r}" for k in diff
            )
            raise ValueError(f"these codes were written by another configuration ({detail})")
        if isinstance(codes.dim, bool) or codes.dim != self.dim:
            raise ValueError(f"codes say dim={codes.dim!r}, their configuration says {self.dim}")
        if codes.dtype not in DECODE_DTYPES:
            raise ValueError(
                f"codes record the encoded dtype {codes.dtype!r}, not one of {DECODE_DTYPES}"
            )
        batch = codes.batch_shape
        if not isinstance(batch, tuple) or not all(
            isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 0 for n in batch
        ):
            raise ValueError(f"codes have batch shape {batch!r}, not a tuple of integers >= 0")
        layout = self.field_layout()
        if set(codes.fields) != set(layout):
            raise ValueError(f"codes hold fields {sorted(codes.fields)}, expected {sorted(layout)}")
        nb = len(codes.batch_shape)
        for name, (shape, dt) in layout.items():
            a = codes.fields[name]
            if not hasattr(a, "shape") or not hasattr(a, "dtype"):
                raise TypeError(f"field {name!r} is a {type(a).__name__}, not an array")
            if tuple(a.shape[:nb]) != tuple(codes.batch_shape):
                raise ValueError(
                    f"field {name!r} has batch shape {tuple(a.shape[:nb])}, the codes say "
                    f"{tuple(codes.batch_shape)}"
                )
            if tuple(a.shape[nb:]) != tuple(shape) or dtype_name(namespace(a), a.dtype) != dt:
                raise ValueError(
                    f"field {name!r} has per-vector shape {tuple(a.shape[nb:])} and dtype {a.dtype}, "
                    f"expected {tuple(shape)} and {dt}"
                )

    def _flat_fields(self, codes: CompressedVectors) -> dict:
        n = codes.n_vectors
        out = {}
        for name, (shape, _) in self.field_layout().items():
            a = codes.fields[name]
            out[name] = namespace(a).reshape(a, (n,) + tuple(shape))
        return out

    def decode(self, codes: CompressedVectors):
        """Reconstruct ``(..., dim)`` vectors from ``codes``, in the dtype that was encoded.

        Where the fields' namespace lacks that dtype (bfloat16 codes loaded from
        a file are NumPy arrays, and NumPy has no bfloat16; ``array_api_strict``
        has no float16), the result is float32, the dtype the reconstruction is
        computed in.
        """
        self.check_codes(codes)
        flat = self._flat_fields(codes)
        xp = namespace(*flat.values())
        work = xp.float64 if codes.dtype == "float64" else xp.float32
        out_dtype = resolve_dtype(xp, codes.dtype, default=work)
        flat_any = next(iter(flat.values()))
        parts = [
            xp.astype(self._decode_rows({k: v[a:b, ...] for k, v in flat.items()}, work), out_dtype)
            for a, b in self._chunks(codes.n_vectors)
        ]
        if not parts:
            parts = [xp.zeros((0, self.dim), dtype=out_dtype, device=array_device(flat_any))]
        x_hat = xp.concat(parts, axis=0) if len(parts) > 1 else parts[0]
        return xp.reshape(x_hat, tuple(codes.batch_shape) + (self.dim,))

    def _compute_rows(self, xp, a):
        """``a (..., dim)`` as rows ``(n, dim)`` in its compute dtype (float64 stays, else float32)."""
        return xp.reshape(xp.astype(a, compute_dtype(xp, a.dtype)), (-1, self.dim))

    def prepare_vectors(self, x):
        """The rows ``(n, D)`` that :meth:`encode` hands its backend's encode operation.

        What ``encode`` computes before the kernel (TurboQuantMSE: the rotated
        unit vectors ``Q x / ||x||``; PolarQuant: ``Q x``; QJL: the sketch
        ``S x``; TurboQuantProd and PolarQuantQJL: their first stage's input, the
        rotated unit vectors or, for TurboQuantProd at 1 bit, their sketch),
        for timing or checking a backend operation on its own, with
        ``quantizer.plan``:
        ``get_backend("numba").scalar_encode(tq.plan, tq.prepare_vectors(x))``
        equals ``tq.encode(x).fields["codes"]``.  ``x`` is validated as
        :meth:`encode` does; the rows are in its compute dtype.
        """
        xp, x = as_vectors(x, self.dim, "x")
        check_finite(x, "x")
        return self._prepare_vectors(self._compute_rows(xp, x))

    def prepare_queries(self, queries):
        """The queries transformed once, as :meth:`score` hands them to the backend.

        ``Q q`` for the rotated methods, ``S q`` for QJL, a pair
        ``(Q q, S q)`` for TurboQuantProd and PolarQuantQJL; rows ``(n, D)`` in
        the queries' compute dtype.  With ``quantizer.plan`` this is what a
        backend's score operation takes:
        ``ops.scalar_score(tq.plan, tq.prepare_queries(q), codes.fields["codes"])``
        is ``tq.score(q, codes)`` before the norms are applied.
        """
        xp, q = as_vectors(queries, self.dim, "queries")
        return self._prepare_queries(self._compute_rows(xp, q))

    def score(self, queries, codes: CompressedVectors):
        """Estimated inner products ``<q, x>`` for every query and every encoded vector.

        Computed from the codes: each query is transformed once (rotated or
        projected), then combined with the stored codes; the encoded vectors are
        never decoded back to the input space.

        Returns
        -------
        array of shape ``queries.shape[:-1] + codes.shape``, in the queries' dtype
            (``queries @ x.T`` for 2-D inputs).
        """
        self.check_codes(codes)
        xp, q = as_vectors(queries, self.dim, "queries")
        flat = self._flat_fields(codes)
        _check_same_namespace(q, "queries", flat)
        qshape = tuple(q.shape[:-1])
        qc = self._compute_rows(xp, q)
        state = self._prepare_queries(qc)
        parts = [
            self._score_rows(state, {k: v[a:b, ...] for k, v in flat.items()})
            for a, b in self._score_chunks(codes.n_vectors)
        ]
        if parts:
            s = xp.concat(parts, axis=1) if len(parts) > 1 else parts[0]
        else:
            s = xp.zeros((qc.shape[0], 0), dtype=qc.dtype, device=array_device(qc))
        return xp.reshape(xp.astype(s, q.dtype), qshape + tuple(codes.batch_shape))

    def weighted_sum(self, weights, codes: CompressedVectors):
        """``sum_i weights[..., i] x_hat_i``: weighted sums of the encoded vectors, from the codes.

        The dual of :meth:`score`, and what attention does with values
        (``softmax(...) @ V``).  ``weights`` has shape ``(..., *codes.shape)``;
        the result ``(..., dim)`` is in the weights' dtype.  Methods with a
        rotation accumulate the code values in the rotated domain and rotate the
        sums back once (:class:`TurboQuantMSE`, :class:`PolarQuant`); the others
        decode chunk by chunk.  Equal to ``weights @ decode(codes)`` up to
        float rounding.
        """
        self.check_codes(codes)
        if not hasattr(weights, "dtype") or not hasattr(weights, "shape"):
            raise TypeError(f"weights must be an array, got {type(weights).__name__}")
        xp = namespace(weights)
        if not xp.isdtype(weights.dtype, "real floating"):
            raise TypeError(f"weights must be a real floating array, got dtype {weights.dtype}")
        flat = self._flat_fields(codes)
        _check_same_namespace(weights, "weights", flat)
        batch = tuple(codes.batch_shape)
        if (
            tuple(weights.shape[weights.ndim - len(batch) :]) != batch
            or weights.ndim <= len(batch) - 1
        ):
            raise ValueError(
                f"weights of shape {tuple(weights.shape)} do not end with the codes' shape {batch}"
            )
        check_finite(weights, "weights")
        lead = tuple(weights.shape[: weights.ndim - len(batch)])
        # explicit row count: reshape(-1, 0) is ambiguous when there are no encoded vectors
        rows = (math.prod(lead), codes.n_vectors)
        w = xp.reshape(xp.astype(weights, compute_dtype(xp, weights.dtype)), rows)
        out = xp.zeros((w.shape[0], self.dim), dtype=w.dtype, device=array_device(w))
        for a, b in self._chunks(codes.n_vectors):
            out = out + self._weighted_sum_rows(
                w[:, a:b], {k: v[a:b, ...] for k, v in flat.items()}
            )
        return xp.reshape(xp.astype(out, weights.dtype), lead + (self.dim,))

    def save(self, path, codes: CompressedVectors) -> None:
        """Write ``codes`` to ``path`` (``.npz``, no pickle; see :mod:`polarquant.io`)."""
        from .io import save

        self.check_codes(codes)
        save(path, codes)

    def load(self, path) -> CompressedVectors:
        """Read codes from ``path``, refusing files written by another configuration."""
        from .io import load

        codes = load(path)
        self.check_codes(codes)
        return codes


def _check_same_namespace(a, name: str, fields: dict) -> None:
    """Refuse ``a`` (``queries``, ``weights``) from another namespace or device than the codes."""
    try:
        namespace(a, *fields.values())
    except TypeError as exc:
        raise TypeError(
            f"{name} and codes live in different array namespaces or devices; "
            "polarquant never moves data implicitly: convert one of them first"
        ) from exc


def from_config(config: Mapping[str, Any]) -> Quantizer:
    """Rebuild the quantizer described by ``config`` (as stored in codes and files).

    Raises
    ------
    TypeError
        ``config`` is not a mapping, or one of its values has the wrong type.
    ValueError
        An unknown method, a missing or unknown key, or a value out of range
        (see :meth:`polarquant.Quantizer.from_config`).
    """
    if not isinstance(config, Mapping):
        raise TypeError(
            f"config must be a dict (as returned by config()), got {type(config).__name__}"
        )
    method = config.get("method")
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known methods: {sorted(METHODS)}")
    return METHODS[method].from_config(config)
