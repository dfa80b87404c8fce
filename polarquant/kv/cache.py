r"""A compressed key/value cache for one attention layer, append-only, scored from codes.

What it does (the three papers' KV-cache setting: QJL Sec. 4, PolarQuant
Sec. 5, TurboQuant Sec. 4.3):

* holds keys and values shaped ``(batch, kv_heads, tokens, head_dim)``, any
  ``head_dim`` the chosen methods support (64, 80, 96, 128, 256...), in the
  array namespace and on the device of the first append: NumPy on the host
  (backends ``numpy``, ``numba``), CuPy on a GPU (backend ``cupy``; CUDA
  torch tensors are shared through DLPack), or any array-API namespace with
  the ``numpy`` reference; the NumPy-only baselines need NumPy;
* **appends**: a prefill of ``T`` tokens or one-token decode steps; the newest
  ``window`` tokens (default 128) stay in full precision (``window_dtype``,
  float16 by default, the cache we are compared with); tokens that leave the
  window are compressed **once**, in aligned blocks of ``block`` tokens, and
  never re-quantized (field-notes, defect 6).  ``block`` is the least common
  multiple of ``flush`` (default 1; ``polarquant.kv.hf.PolarquantCache``
  uses 32: one compression per 32 decode steps instead of one per step) and
  the codecs' ``group`` (1 for per-token methods, 32 for QJL's outlier groups
  and KIVI's per-channel keys).  The window therefore holds between ``window``
  and ``window + block - 1`` tokens;
* **attention from codes** (:meth:`KVCache.attention`): for the queries of the
  last ``nq`` appended tokens, scores of compressed keys come from their codes
  (each query rotated or projected once per stream), scores of the window are
  exact, then ``scale``, the causal mask, a float32 softmax, and the weighted
  sum of values, again from the codes (rotated-domain accumulation); no
  decoded key or value is materialised;
* **honest accounting** (:attr:`KVCache.nbytes`): codes, norms, per-group
  metadata, the full-precision window, and each codec's state (a seed for a
  rotation or sketch, data-dependent channel choices), compared with an fp16
  cache of the same tokens.

Compression is deterministic per token and per aligned group, and always
starts from the window's stored copy, so the codes do not depend on how the
tokens were split into appends (a prefill or token by token gives the same
bytes).  Appends are atomic: bad input raises before anything changes.

Example
-------
>>> import numpy as np, polarquant
>>> rng = np.random.default_rng(0)
>>> cache = polarquant.KVCache(64, key_method="turboquant-mse", key_bits=4, window=16)
>>> k, v = rng.standard_normal((2, 1, 3, 100, 64)).astype(np.float32)
>>> cache.append(k, v)
>>> len(cache), cache.compressed_tokens
(100, 84)
>>> q = rng.standard_normal((1, 9, 1, 64)).astype(np.float32)  # 9 query heads, 3 kv heads
>>> cache.attention(q).shape
(1, 9, 1, 64)
>>> round(cache.fp16_ratio, 2)
2.61
"""

from __future__ import annotations

import math

import numpy as np
from array_api_compat import device as array_device

from .._array import check_int, compact, contiguous, empty_on, namespace, to_host, zeros_on
from ..compressed import array_nbytes
from ..quantizer import safe_norms
from .attention import (
    causal_mask,
    check_attention_inputs,
    check_float_array,
    check_scale,
    group_queries,
    like_input,
    same_place,
    scalar_like,
    softmax,
    stream_matmul,
    transposed,
    ungroup_outputs,
)
from .methods import make_codec, store_tokens

__all__ = ["KVCache"]

#: Attention is computed for blocks of query rows so that the score matrix
#: stays near this many float32 elements (16 MB) whatever the prefill length.
SCORE_ELEMENTS = 1 << 22


class _Growable:
    """An array that grows along axis 1 with amortised O(1) appends (capacity doubling),
    in the namespace and on the device of the first array appended."""

    def __init__(self):
        self._data = None
        self.size = 0

    def extend(self, a) -> None:
        if self._data is None:
            self._data = empty_on(a, a.shape[:1] + (max(16, a.shape[1]),) + a.shape[2:], a.dtype)
        need = self.size + a.shape[1]
        if need > self._data.shape[1]:
            cap = max(need, 2 * self._data.shape[1])
            grown = empty_on(a, a.shape[:1] + (cap,) + a.shape[2:], a.dtype)
            grown[:, : self.size, ...] = self._data[:, : self.size, ...]
            self._data = grown
        self._data[:, self.size : need, ...] = a
        self.size = need

    def view(self):
        return self._data[:, : self.size, ...]

    @property
    def nbytes(self) -> int:
        """Bytes of the stored items (the spare capacity is allocator slack, not cache content)."""
        return 0 if self._data is None else array_nbytes(self.view())


class KVCache:
    r"""Compressed KV cache of one attention layer (see the module docstring).

    Parameters
    ----------
    head_dim : int
        Dimension of each key and value vector.
    key_method, value_method : str
        Compression of keys and of values, chosen independently (see
        :mod:`polarquant.kv.methods` for the names and what ``bits`` means for
        each): ``"qjl"``, ``"turboquant-mse"``, ``"turboquant-prod"``,
        ``"polarquant"``, ``"polarquant-qjl"`` (keys only for the unbiased
        estimators), ``"kivi"``, ``"hadamard-rtn"``, ``"fp8"``, ``"none"``.
    key_bits, value_bits : int, float or tuple
        Bit width of each method's codes.
    window : int
        Newest tokens kept in full precision (default 128; 0 with ``flush=1``
        compresses every token of a per-token method).
    flush : int
        Tokens leave the window in blocks of a multiple of ``flush`` (default 1:
        as soon as the codecs' groups allow).  A decode loop is faster with a
        larger block (each compression has a fixed cost), at the price of up to
        ``flush - 1`` more full-precision tokens, which :attr:`nbytes` counts.
    window_dtype : {"float16", "float32"}
        Storage of the window (and of ``"none"``).
    seed : int
        Seed of the rotations and sketches (keys use ``seed``, values ``seed + 1``).
    backend : str, optional
        Kernel backend (``"numpy"``, ``"numba"``...) for the codecs.
    key_options, value_options : dict, optional
        Method options (``rotation``, ``codebook``, ``levels``, ``outliers``, ``group_size``...).

    Attributes
    ----------
    batch : int or None
        Fixed by the first :meth:`append`.
    kv_heads : int or None
        Fixed by the first :meth:`append`.
    """

    def __init__(
        self,
        head_dim: int,
        key_method: str = "turboquant-mse",
        key_bits=4,
        value_method: str = "turboquant-mse",
        value_bits=4,
        *,
        window: int = 128,
        flush: int = 1,
        window_dtype: str = "float16",
        seed: int = 0,
        backend: str | None = None,
        key_options: dict | None = None,
        value_options: dict | None = None,
    ):
        self.head_dim = check_int(head_dim, "head_dim", low=2)
        self.window = check_int(window, "window", low=0)
        self.flush = check_int(flush, "flush", low=1)
        if window_dtype not in ("float16", "float32"):
            raise ValueError(f"window_dtype must be 'float16' or 'float32', got {window_dtype!r}")
        self.window_dtype = window_dtype
        self.seed = check_int(seed, "seed", low=0)
        from ..backends import check_backend_name

        self.backend = None if backend is None else check_backend_name(backend)
        common = {"seed": self.seed, "backend": backend, "window_dtype": window_dtype}
        self.key_codec = make_codec(
            key_method, key_bits, self.head_dim, role="key", options=key_options, **common
        )
        common["seed"] = self.seed + 1
        self.value_codec = make_codec(
            value_method, value_bits, self.head_dim, role="value", options=value_options, **common
        )
        self.group = math.lcm(self.key_codec.group, self.value_codec.group)
        #: Tokens leave the window in multiples of this many (``lcm(flush, group)``).
        self.block = math.lcm(self.group, self.flush)
        self.batch: int | None = None
        self.kv_heads: int | None = None
        self._keys = {}  # field name -> _Growable (compressed keys)
        self._values = {}
        self._win_k = None  # (B*H, Tw, d) window_dtype
        self._win_v = None
        self.compressed_tokens = 0

    # -- description ------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return (
            f"KVCache(head_dim={self.head_dim}, keys={self.key_codec.method!r}, "
            f"values={self.value_codec.method!r}, window={self.window}, tokens={len(self)})"
        )

    def config(self) -> dict:
        """The configuration of both codecs and the window."""
        return {
            "head_dim": self.head_dim,
            "window": self.window,
            "flush": self.flush,
            "window_dtype": self.window_dtype,
            "keys": self.key_codec.config(),
            "values": self.value_codec.config(),
        }

    def __len__(self) -> int:
        """Tokens held (compressed and in the window)."""
        return self.compressed_tokens + self.window_tokens

    @property
    def window_tokens(self) -> int:
        return 0 if self._win_k is None else self._win_k.shape[1]

    # -- appending --------------------------------------------------------------------------------
    def _check_place(self, a, name: str) -> None:
        """``a`` must live where the cache's tokens do; before the first append, where the
        backend and both codecs compute (see :meth:`append`)."""
        if self._win_k is not None:
            same_place(a, self._win_k, name, "the tokens this cache holds")
            return
        from ..backends import current_backend

        backend = current_backend(self.backend)
        kind = f"{type(a).__module__}.{type(a).__qualname__}"
        if backend == "cupy":
            from ..backends.cupy_backend._launch import get_cupy

            if not isinstance(a, get_cupy().ndarray):
                raise TypeError(
                    f"{name} is a {kind}, but the cupy backend computes on CuPy arrays (GPU "
                    "memory): pass CuPy arrays or CUDA torch tensors, or use backend='numpy' "
                    "or 'numba' on the host"
                )
        elif not isinstance(a, np.ndarray) and backend != "numpy":
            raise TypeError(
                f"{name} is a {kind}, but the {backend} backend computes on NumPy arrays (the "
                "host): pass NumPy arrays or torch CPU tensors, or use backend='cupy' for CuPy "
                "arrays (GPU) or 'numpy' for other array-API namespaces"
            )
        for role, codec in (("key", self.key_codec), ("value", self.value_codec)):
            if codec.host_only and not isinstance(a, np.ndarray):
                raise TypeError(
                    f"{name} is a {kind}, but the {role} method {codec.method!r} is a baseline "
                    "with a NumPy path only: use it on NumPy arrays or torch CPU tensors"
                )

    def _check_block(self, a, name: str, *, finite: bool = True):
        """``a`` as an array of the cache's place and shape; its values finite unless
        ``finite=False`` (:meth:`append` checks them with the window's copy in one read)."""
        a = check_float_array(a, name)
        self._check_place(a, name)
        if a.ndim != 4:
            raise ValueError(
                f"{name} must have shape (batch, kv_heads, tokens, head_dim), got {tuple(a.shape)}"
            )
        b, h, t, d = a.shape
        if d != self.head_dim:
            raise ValueError(f"{name} have head_dim {d}, the cache was built for {self.head_dim}")
        if t < 1 or b < 1 or h < 1:
            raise ValueError(f"{name} must hold at least one token, batch and head, got {a.shape}")
        if self.batch is not None and (b, h) != (self.batch, self.kv_heads):
            raise ValueError(
                f"{name} have batch {b} and {h} kv heads, the cache holds batch {self.batch} "
                f"and {self.kv_heads} kv heads"
            )
        if finite:
            _check_finite(a, name)
        return a

    def _stored(self, keys, values) -> list:
        """``keys``, ``values`` as the window stores them, ``(B*H, T, d)`` each, refused if
        they hold NaN or Inf, exceed ``window_dtype``, or hold a token a codec could not
        compress when it leaves the window.

        One reduction read back for both blocks (on a GPU, one synchronisation per
        append instead of one per check): the largest magnitude ``p`` of each stored
        copy.  A NaN or an Inf in the input makes ``p`` NaN or infinite, and so does a
        value the cast rounds beyond ``window_dtype``'s largest finite value ``top``
        (one just above ``top`` rounds to it: ``p = top`` is checked on the input); a
        finite ``p`` bounds every coordinate by ``p`` and every token norm by
        ``p sqrt(d)``, which settles the codecs' limits (:meth:`_check_storable`)
        without computing norms unless the bound is above a limit.  Only then are the
        values read again, with the errors (and their order) of the checks one by one:
        NaN/Inf in keys, in values, the window's range of each, the codecs' limits.
        """
        xp = namespace(keys)
        b, h, t, d = keys.shape
        blocks = [xp.reshape(a, (b * h, t, d)) for a in (keys, values)]
        stored = [store_tokens(a, self.window_dtype, check=False) for a in blocks]
        peaks = to_host(xp.stack([xp.max(xp.abs(s)) for s in stored])).tolist()
        top = float(xp.finfo(stored[0].dtype).max)
        names = ("keys", "values")
        for block, peak, name in zip(blocks, peaks, names, strict=True):
            if not peak < top:
                _check_finite(block, name)
        for block, peak, name in zip(blocks, peaks, names, strict=True):
            if not peak < top:  # beyond the window's range, or exactly its largest value
                try:
                    store_tokens(block, self.window_dtype)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
        roles = (("key", self.key_codec), ("value", self.value_codec))
        for copy, peak, name, (role, codec) in zip(stored, peaks, names, roles, strict=True):
            lim = codec.storable_limits()
            if not (peak <= lim.max_abs and peak * math.sqrt(d) <= lim.max_norm):
                self._check_storable(copy, h, name, role, codec)
        return stored

    def _check_storable(self, stored, heads: int, name: str, role: str, codec) -> None:
        """Refuse tokens ``stored (B*H, T, d)`` that ``codec`` could not compress later.

        A token accepted into the window is compressed when it leaves it, maybe
        many appends later; if its codec could not store it then (a float16
        norm beyond 65504, an fp8 value beyond 448), every later append would
        fail on it.  The limits (:meth:`~polarquant.kv.codec.TokenCodec.storable_limits`)
        hold for any block the token is compressed in, so the check is made
        here, on the stored copy, before anything changes.
        """
        lim = codec.storable_limits()
        xp = namespace(stored)
        bad = None
        if math.isfinite(lim.max_abs):
            size = xp.astype(xp.max(xp.abs(stored), axis=2), xp.float32)
            what, limit = "largest coordinate", lim.max_abs
            bad = size > limit
        if math.isfinite(lim.max_norm) and (bad is None or not bool(xp.any(bad))):
            rows = xp.astype(xp.reshape(stored, (-1, self.head_dim)), xp.float32)
            size = xp.reshape(safe_norms(rows)[0], stored.shape[:2])
            what, limit = "norm", lim.max_norm
            bad = size > limit
        if bad is not None and bool(xp.any(bad)):
            first = int(xp.argmax(xp.astype(xp.reshape(bad, (-1,)), xp.int8)))
            s, t = divmod(first, stored.shape[1])
            b, h = divmod(s, heads)
            fix = f"pass {role}_options={lim.fix!r}" if lim.fix else "rescale the input"
            raise ValueError(
                f"{name}: token {len(self) + t} (batch {b}, kv head {h}) has {what} "
                f"{float(size[s, t]):.4g}, more than {codec.method!r} {role}s hold in "
                f"{lim.storage} ({limit:.4g}) when they leave the window; {fix}"
            )

    def append(self, keys, values) -> None:
        """Append ``keys, values (batch, kv_heads, T, head_dim)``: a prefill or a decode step.

        NumPy arrays or torch CPU tensors, CuPy arrays or CUDA torch tensors, or
        arrays of another array-API namespace (float16, bfloat16, float32,
        float64; see :func:`~polarquant.kv.attention.check_float_array`); the
        first append fixes where the cache computes (the module docstring of
        :mod:`polarquant.kv.cache` and ``docs/kv-cache.md``).  Tokens older
        than the newest ``window`` are compressed once, in aligned groups.
        Raises ``TypeError`` / ``ValueError`` (mismatched shapes, wrong dtype,
        NaN/Inf, values outside what the window or the codecs store) before
        changing anything: a token the cache accepts is always compressed
        later (a norm too large for float16 norms is refused here, naming the
        token and the option that stores it; one below float16's normal range
        is stored, see :func:`~polarquant.kv.methods.encode_storable`).
        """
        keys = self._check_block(keys, "keys", finite=False)
        values = self._check_block(values, "values", finite=False)
        if keys.shape != values.shape:
            raise ValueError(
                f"keys {tuple(keys.shape)} and values {tuple(values.shape)} must have the same shape"
            )
        same_place(values, keys, "values", "keys")
        xp = namespace(keys)
        b, h = keys.shape[:2]
        new_k, new_v = self._stored(keys, values)
        win_k = new_k if self._win_k is None else xp.concat([self._win_k, new_k], axis=1)
        win_v = new_v if self._win_v is None else xp.concat([self._win_v, new_v], axis=1)
        flush = int(self._leaving(win_k.shape[1]))
        if flush:  # encode first: a failure leaves the cache (and its codecs) as they were
            key_state = dict(vars(self.key_codec))
            kf = self._encode(self.key_codec, win_k[:, :flush, ...], "key")
            try:
                vf = self._encode(self.value_codec, win_v[:, :flush, ...], "value")
            except Exception:
                _restore(self.key_codec, key_state)
                raise
        # commit
        self.batch, self.kv_heads = b, h
        if flush:
            for store, fields in ((self._keys, kf), (self._values, vf)):
                for name, a in fields.items():
                    store.setdefault(name, _Growable()).extend(a)
            self.compressed_tokens += flush
            win_k, win_v = win_k[:, flush:, ...], win_v[:, flush:, ...]
        self._win_k, self._win_v = compact(win_k), compact(win_v)  # own bytes: nbytes is honest

    def _encode(self, codec, block, role: str) -> dict:
        """``codec.encode`` of a block, restoring the codec's attributes if it fails.

        Some codecs fix data-dependent state on their first block (the channel
        split's outlier channels); a failed append must not keep it.
        """
        saved = dict(vars(codec))
        try:
            return codec.encode(namespace(block).astype(block, namespace(block).float32))
        except ValueError as exc:
            _restore(codec, saved)
            raise ValueError(
                f"cannot compress these {role}s: {exc} (method options go in {role}_options=...)"
            ) from exc
        except Exception:
            _restore(codec, saved)
            raise

    def key_fields(self) -> dict:
        """The compressed keys' fields, ``(B*H, items, ...)`` each (views; read-only on NumPy,
        CuPy has no read-only arrays: do not write into them)."""
        return {k: _readonly(g.view()) for k, g in self._keys.items()}

    def value_fields(self) -> dict:
        """The compressed values' fields, ``(B*H, items, ...)`` each (views, as :meth:`key_fields`)."""
        return {k: _readonly(g.view()) for k, g in self._values.items()}

    def _leaving(self, held):
        """Tokens that leave a window holding ``held`` (an int or a NumPy array of them): whole
        ``block``s beyond ``window``, oldest first (the rest stay)."""
        return np.maximum(0, held - self.window) // self.block * self.block

    # -- attention --------------------------------------------------------------------------------
    def _check_queries(self, queries, new):
        """``G`` and the stream-major float32 ``new`` keys and values (``None`` without ``new``)."""
        if new is None:
            if self.batch is None:
                raise ValueError("the cache is empty: append keys and values before attending")
            same_place(queries, self._win_k, "queries", "the tokens this cache holds")
            groups = check_attention_inputs(
                queries, self.head_dim, self.batch, self.kv_heads, len(self)
            )
            return groups, None, None
        if not isinstance(new, tuple | list) or len(new) != 2:
            raise TypeError("new must be a pair (keys, values) of the queries' own tokens")
        keys, values = (
            self._check_block(a, name)
            for a, name in zip(new, ("new keys", "new values"), strict=True)
        )
        if keys.shape != values.shape:
            raise ValueError(
                f"new keys {tuple(keys.shape)} and values {tuple(values.shape)} must have the same shape"
            )
        same_place(values, keys, "new values", "new keys")
        same_place(queries, keys, "queries", "new keys")
        b, h, t, d = keys.shape
        groups = check_attention_inputs(queries, d, b, h, t)
        if queries.shape[2] != t:
            raise ValueError(
                f"{queries.shape[2]} queries but {t} new tokens: with new=(keys, values) the "
                "queries are those tokens' own"
            )
        xp = namespace(keys)
        stream = (b * h, t, d)
        return (
            groups,
            xp.reshape(xp.astype(keys, xp.float32, copy=False), stream),
            xp.reshape(xp.astype(values, xp.float32, copy=False), stream),
        )

    def _block_scores(self, qs, kf, rows: slice, nq: int, groups: int, scale: float, new_k):
        """Scaled, masked scores of query rows ``rows`` against every token: ``(B*H, r, N)``.

        Columns: the compressed tokens (from their codes), the window, then the
        ``new_k`` tokens when given (exact; the queries are theirs).
        """
        xp = namespace(qs)
        q = contiguous(qs[:, rows, ...])
        parts = []
        if self.compressed_tokens:  # each query transformed once, then scored from the codes
            parts.append(self.key_codec.score(self.key_codec.prepare(q), kf))
        if self.window_tokens:
            parts.append(stream_matmul(q, transposed(xp.astype(self._win_k, xp.float32))))
        if new_k is not None:
            parts.append(stream_matmul(q, transposed(new_k)))
        s = (xp.concat(parts, axis=2) if len(parts) > 1 else parts[0]) * scale
        n = len(self) + (0 if new_k is None else new_k.shape[1])
        mask = causal_mask(n, nq, groups, like=s)
        if mask is not None:
            s = xp.where(mask[None, rows, ...], s, scalar_like(-math.inf, s))
        return s

    def _attend(self, queries, scale, new):
        groups, new_k, new_v = self._check_queries(queries, new)
        nq = queries.shape[2]
        scale = check_scale(scale, self.head_dim)
        qs = group_queries(queries, queries.shape[1] // groups)
        kf = self.key_fields()
        n = len(self) + (0 if new_k is None else nq)
        step = max(1, SCORE_ELEMENTS // max(1, n * qs.shape[0]))
        for start in range(0, qs.shape[1], step):
            rows = slice(start, min(start + step, qs.shape[1]))
            yield rows, self._block_scores(qs, kf, rows, nq, groups, scale, new_k), new_v

    def scores(self, queries, scale: float | None = None, *, new=None):
        """Scaled, causally masked attention logits ``(batch, q_heads, nq, tokens)`` (``-inf`` masked).

        float32 in the cache's namespace, or a torch tensor of the queries'
        dtype for torch queries; ``new``: as in :meth:`attention` (its tokens
        are the last columns).
        """
        q_in, queries = queries, check_float_array(queries, "queries")
        blocks = [s for _, s, _ in self._attend(queries, scale, new)]
        xp = namespace(blocks[0])
        s = xp.concat(blocks, axis=1) if len(blocks) > 1 else blocks[0]
        b, hq, nq, _ = queries.shape
        h = s.shape[0] // b
        s = xp.reshape(xp.reshape(s, (b, h, hq // h, nq, -1)), (b, hq, nq, -1))
        return like_input(s, q_in)

    def attention(self, queries, scale: float | None = None, *, new=None):
        """Attention output ``(batch, q_heads, nq, head_dim)`` float32 for the last ``nq`` tokens.

        ``queries (batch, q_heads, nq, head_dim)``: ``q_heads`` a multiple of
        ``kv_heads`` (grouped-query attention: query head ``h`` reads kv head
        ``h // G``); the queries are the last ``nq`` appended tokens, so they
        are causally masked among themselves; ``scale`` defaults to
        ``1/sqrt(head_dim)`` (NaN, infinite, zero or negative scales are
        refused).  Keys and values older than the window are used through
        their codes only.  The queries are an array of the cache's namespace
        and device (NumPy or a torch CPU tensor for a cache on the host, CuPy
        or a CUDA torch tensor for one on a GPU); the output is float32 in that
        namespace, or a torch tensor of the queries' dtype and device.

        ``new=(keys, values)``, each ``(batch, kv_heads, nq, head_dim)``: the
        queries' own tokens, **not** appended (the cache may be empty): every
        held token is visible to every query and the new tokens are attended
        exactly, causally among themselves, in one softmax with the held ones.
        This is the prefill of the papers' setting, where a prompt's attention
        is exact and only later tokens read the compressed cache (QJL,
        Sec. 4: "prefill attention is exact; compressed keys serve decoding");
        append the new tokens afterwards.  Nothing is stored by this call.
        """
        q_in, queries = queries, check_float_array(queries, "queries")
        nc = self.compressed_tokens
        nw = self.window_tokens
        vf = self.value_fields()
        win_v = None
        outs = []
        for _, s, new_v in self._attend(queries, scale, new):
            xp = namespace(s)
            if nw and win_v is None:
                win_v = xp.astype(self._win_v, xp.float32)
            p = softmax(s)
            out = zeros_on(p, p.shape[:2] + (self.head_dim,))
            if nw:
                out += stream_matmul(p[:, :, nc : nc + nw], win_v)
            if new_v is not None:
                out += stream_matmul(p[:, :, nc + nw :], new_v)
            if nc:
                out += self.value_codec.weighted_sum(contiguous(p[:, :, :nc]), vf)
            outs.append(out)
        out = xp.concat(outs, axis=1) if len(outs) > 1 else outs[0]
        b, hq, nq, _ = queries.shape
        out = ungroup_outputs(out, b, out.shape[0] // b, nq)
        return like_input(out, q_in)

    def stepwise_attention(self, queries, keys, values, scale: float | None = None):
        """Attention of every held token as a token-by-token decode would have computed it.

        For teacher-forced evaluation in one pass: the cache must hold exactly
        ``keys``, ``values (batch, kv_heads, N, head_dim)``, appended in one block
        to an empty cache, and ``queries (batch, q_heads, N, head_dim)`` are
        theirs.  Token ``i``'s query sees what the cache held after token ``i``
        was appended alone: tokens ``t < c(i)`` from their codes, with
        ``c(i) = max(0, floor((i + 1 - window) / block) * block)`` (the
        compressed count of a token-by-token cache of ``i + 1`` tokens), and
        tokens ``c(i) <= t <= i`` as the window stores them (``window_dtype``).
        Codes do not depend on how tokens were appended (module docstring), so
        this equals ``N`` decode steps up to float32 summation order (tested
        through a model in ``tests/test_kv_hf.py``), for ``N`` times less model
        work.  Rows are computed in blocks as in :meth:`attention`.
        """
        q_in, queries = queries, check_float_array(queries, "queries")
        keys = self._check_block(keys, "keys")
        values = self._check_block(values, "values")
        n = keys.shape[2]
        if keys.shape != values.shape or len(self) != n:
            raise ValueError(
                f"stepwise_attention needs the cache to hold exactly the {n} given tokens, "
                f"appended in one block to an empty cache; it holds {len(self)}"
            )
        groups = check_attention_inputs(queries, self.head_dim, self.batch, self.kv_heads, n)
        if queries.shape[2] != n:
            raise ValueError(f"{queries.shape[2]} queries for {n} tokens: one query per token")
        scale = check_scale(scale, self.head_dim)
        same_place(queries, keys, "queries", "keys")
        xp = namespace(keys)
        bh, d = self.batch * self.kv_heads, self.head_dim
        k_win = store_tokens(xp.reshape(keys, (bh, n, d)), self.window_dtype)
        v_win = store_tokens(xp.reshape(values, (bh, n, d)), self.window_dtype)
        nc = self.compressed_tokens
        if not (
            bool(xp.all(k_win[:, nc:, ...] == self._win_k))
            and bool(xp.all(v_win[:, nc:, ...] == self._win_v))
        ):
            raise ValueError("stepwise_attention: these are not the tokens the cache holds")
        k_win, v_win = xp.astype(k_win, xp.float32), xp.astype(v_win, xp.float32)
        qs = group_queries(queries, self.kv_heads)
        host_pos = np.tile(np.arange(n), groups)  # query row -> its token
        bound = xp.asarray(self._leaving(host_pos + 1), device=array_device(keys))
        pos = xp.asarray(host_pos, device=array_device(keys))  # (compressed after token pos,
        cols = xp.asarray(np.arange(n), device=array_device(keys))  # appended alone: bound)
        kf, vf = self.key_fields(), self.value_fields()
        step = max(1, SCORE_ELEMENTS // max(1, 2 * n * bh))
        outs = []
        for start in range(0, qs.shape[1], step):
            rows = slice(start, min(start + step, qs.shape[1]))
            q = contiguous(qs[:, rows, ...])
            s = stream_matmul(q, transposed(k_win))
            coded = cols[None, :nc] < bound[rows, None]  # (r, nc): read from the codes
            if nc:
                from_codes = self.key_codec.score(self.key_codec.prepare(q), kf)
                s[:, :, :nc] = xp.where(coded[None, ...], from_codes, s[:, :, :nc])
            visible = (cols[None, :] <= pos[rows, None])[None, ...]
            s = xp.where(visible, s * scale, scalar_like(-math.inf, s))
            p = softmax(s)
            out = zeros_on(p, p.shape[:2] + (d,))
            if nc:
                p_codes = xp.where(coded[None, ...], p[:, :, :nc], scalar_like(0.0, p))
                out += self.value_codec.weighted_sum(contiguous(p_codes), vf)
                p[:, :, :nc] -= p_codes
            out += stream_matmul(p, v_win)
            outs.append(out)
        out = xp.concat(outs, axis=1) if len(outs) > 1 else outs[0]
        return like_input(ungroup_outputs(out, self.batch, self.kv_heads, n), q_in)

    def decoded(self):
        """Keys and values as attention sees them, ``(batch, kv_heads, tokens, head_dim)`` float32.

        Decodes the compressed part (for tests, fidelity studies and the
        decode-then-attend baseline); :meth:`attention` never calls it.
        In the cache's namespace, on its device.
        """
        if self.batch is None:
            raise ValueError("the cache is empty")
        xp = namespace(self._win_k)
        ks, vs = [], []
        if self.compressed_tokens:
            ks.append(xp.astype(self.key_codec.decode(self.key_fields()), xp.float32))
            vs.append(xp.astype(self.value_codec.decode(self.value_fields()), xp.float32))
        ks.append(xp.astype(self._win_k, xp.float32))
        vs.append(xp.astype(self._win_v, xp.float32))
        shape = (self.batch, self.kv_heads, len(self), self.head_dim)
        return tuple(xp.reshape(xp.concat(parts, axis=1), shape) for parts in (ks, vs))

    # -- accounting -------------------------------------------------------------------------------
    def memory(self) -> dict:
        """Bytes held, by part: compressed keys and values, window, codec state, and the total."""
        streams = 0 if self.batch is None else self.batch * self.kv_heads
        parts = {
            "key_codes": sum(g.nbytes for g in self._keys.values()),
            "value_codes": sum(g.nbytes for g in self._values.values()),
            "window": 0
            if self._win_k is None
            else array_nbytes(self._win_k) + array_nbytes(self._win_v),
            "state": self.key_codec.state_nbytes(streams) + self.value_codec.state_nbytes(streams),
        }
        parts["total"] = sum(parts.values())
        return parts

    @property
    def nbytes(self) -> int:
        """Bytes actually held: codes, norms, metadata, the full-precision window, codec state."""
        return self.memory()["total"]

    @property
    def coordinates(self) -> int:
        """Key and value coordinates held: ``2 * batch * kv_heads * tokens * head_dim``."""
        return (
            0 if self.batch is None else 2 * self.batch * self.kv_heads * len(self) * self.head_dim
        )

    @property
    def bits_per_coordinate(self) -> float:
        """``8 * nbytes / coordinates``: every held bit, window and state included."""
        return 8.0 * self.nbytes / self.coordinates if self.coordinates else 0.0

    @property
    def fp16_ratio(self) -> float:
        """Bytes of an fp16 cache of the same tokens divided by :attr:`nbytes`."""
        return 2.0 * self.coordinates / self.nbytes if self.nbytes else float("nan")

    @property
    def key_bits_per_coordinate(self) -> float:
        """Stored bits per coordinate of a compressed key (codes, norms, per-group metadata)."""
        return self.key_codec.bits_per_coordinate

    @property
    def value_bits_per_coordinate(self) -> float:
        """Stored bits per coordinate of a compressed value."""
        return self.value_codec.bits_per_coordinate


def _check_finite(a, name: str) -> None:
    """``ValueError`` naming ``name`` if ``a`` holds NaN or Inf."""
    xp = namespace(a)
    if not bool(xp.all(xp.isfinite(a))):
        raise ValueError(f"{name} contain NaN or Inf")


def _restore(codec, saved: dict) -> None:
    """Put back the attributes ``codec`` had when ``saved = dict(vars(codec))`` was taken."""
    vars(codec).clear()
    vars(codec).update(saved)


def _readonly(a):
    """A read-only view of a NumPy array; arrays of other namespaces as they are."""
    if not isinstance(a, np.ndarray):
        return a
    v = a.view()
    v.flags.writeable = False
    return v
