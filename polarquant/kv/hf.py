r"""A Hugging Face transformers (5.x) KV cache that attends from the codes.

Use it like any other cache, with the attention implementation it registers::

    import polarquant.kv.hf as pqhf
    model = AutoModelForCausalLM.from_pretrained(..., attn_implementation="polarquant")
    # or, on a loaded model: model.set_attn_implementation("polarquant")
    cache = pqhf.PolarquantCache(model.config, key_method="turboquant-mse", key_bits=4,
                                 value_method="turboquant-mse", value_bits=4, window=128)
    out = model.generate(**inputs, cache=cache, max_new_tokens=50, do_sample=False)

(``past_key_values=cache`` before transformers 5.24, see :data:`CACHE_ARGUMENT`;
``**pqhf.cache_kwargs(cache)`` works with every transformers 5 release.)

Two pieces, wired together:

:class:`PolarquantCache` (a ``transformers.cache_utils.Cache``)
    holds one :class:`polarquant.KVCache` per decoder layer, in
    :class:`PolarquantLayer` objects.  ``update(key_states, value_states, layer_idx)``,
    which the model calls in every attention layer right after RoPE, takes the
    **new** tokens as float32 NumPy: a decode step is appended at once, a
    multi-token update (a prompt) is held until its attention has run (see
    "Prefill") and appended then; tokens that leave the newest-``window``
    full-precision window are compressed once and never re-quantized (unlike
    ``transformers.QuantizedCache``, whose layers re-quantize the whole history
    each time their residual fills).
:func:`polarquant_attention` (registered as ``attn_implementation="polarquant"``)
    is called by the model right after ``update`` with the layer's queries.  It
    finds the layer's KVCache and returns ``KVCache.attention(queries)``:
    scores from the key codes, softmax, the weighted sum from the value codes
    (for a held prompt, that plus the prompt's own tokens, exactly).  No
    dequantized history is ever materialized by this module.

How the attention function finds the cache
------------------------------------------
A transformers attention layer does::

    key_states, value_states = cache.update(key_states, value_states, self.layer_idx, ...)
    out, _ = attention_interface(self, query_states, key_states, value_states, mask, ...)

The layer API must return key/value tensors, so :meth:`PolarquantLayer.update`
returns the tensors it was given (the new tokens only: no copy, nothing
dequantized) with the layer attached as the attribute ``_polarquant_layer``.
The attention function reads that attribute, checks that the layer index
matches ``module.layer_idx``, and calls the layer's KVCache.  Because any
other attention function would silently attend to the new tokens only, the
cache refuses to go on when it is misused:

* ``update`` raises if the model's ``config._attn_implementation`` is not
  ``"polarquant"``;
* ``update`` raises if the previous layer's attention did not go through
  :func:`polarquant_attention` (each update must be consumed before the next);
* :func:`polarquant_attention` raises if the key tensor carries no layer (no
  ``PolarquantCache`` was passed: e.g. ``use_cache=False``).

Masks
-----
:class:`polarquant.KVCache` applies the causal mask itself (the queries are the
last appended tokens).  The mask function registered for ``"polarquant"``
builds no mask; it only checks the 2-D ``attention_mask``: a padded batch (any
zero) raises ``ValueError`` instead of giving a wrong answer, and so does any
mask that is not plain causal (packed sequences, sliding windows, custom
4-D masks).  A batch of equal-length sequences without padding is supported.

Prefill
-------
By default (``prefill="exact"``, the papers' setting: QJL Sec. 4, "prefill
attention is exact; compressed keys serve decoding") a prompt attends to
itself exactly, through torch's fused ``scaled_dot_product_attention`` (no
``T x T`` score matrix is held, whatever the prompt's length), and is
compressed afterwards; only later tokens read its codes.  A prompt fed in
chunks (``generate(..., prefill_chunk_size=N)``, bounded activation memory)
attends to the earlier chunks through the cache and to itself exactly
(:meth:`polarquant.KVCache.attention` with ``new=``, in blocks of query rows).
``prefill="cache"`` appends a prompt first and attends to it through the cache
like decode steps.  :meth:`PolarquantCache.extend_from` stores a prefilled
``DynamicCache``'s tokens (what an exact prefill stores).

Torch <-> NumPy or CuPy, threads
--------------------------------
Keys, values and queries cross the boundary as float32 arrays without a copy
where one exists.  On the host (backends ``numpy`` and ``numba``), a float32
CPU tensor is read in place (``tensor.numpy()`` shares its memory), and the
output goes back as a tensor of the query's dtype and device
(``torch.from_numpy``, no copy for float32).  On a GPU (``backend="cupy"``, a
model on a CUDA device), a float32 CUDA tensor is shared with CuPy through
DLPack (``cupy.from_dlpack``), the layer's codes and window stay in GPU memory,
the kernels are the cupy backend's, and the output comes back through
``torch.from_dlpack``: nothing crosses to the host.  Other dtypes (bfloat16,
float16) are converted to float32 first.  A CUDA tensor with a host backend is
copied to the host and back, two transfers per layer and step.  Tokens leave
each layer's window in blocks of 32 (``flush``), so a decode step compresses
nothing 31 times out of 32.  The Numba kernels use torch's thread count, and
leave it unchanged (see :class:`_TorchThreads`).

Not supported (each raises with the reason): beam search and any other cache
reordering or batch expansion (``reorder_cache``, ``batch_repeat_interleave``,
``batch_select_indices``), ``crop`` (assisted decoding), ``torch.compile``,
models with sliding-window, chunked or linear-attention layers, attention
dropout (training), logit soft-capping.

Requires ``torch`` and ``transformers>=5`` (the ``hf`` extra: ``python -m pip install -e ".[hf]"``
from a clone, with a CPU build of torch first, see :data:`polarquant.kv.evaluation.INSTALL_HINT`);
``import polarquant`` never imports them, only ``import polarquant.kv.hf`` does.
"""

from __future__ import annotations

import contextlib
import re
import sys

from .._array import check_int
from ..backends import current_backend
from .attention import check_float_array, like_input
from .cache import KVCache
from .evaluation import INSTALL_HINT as _HINT

try:
    import torch
    import transformers
    from transformers import AttentionInterface
    from transformers.cache_utils import Cache, CacheLayerMixin
    from transformers.masking_utils import AttentionMaskInterface, causal_mask_function
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"polarquant.kv.hf needs torch and transformers>=5 ({exc}); install them with: {_HINT}"
    ) from exc

#: transformers' (major, minor) release
_VERSION = tuple(int(p) for p in re.findall(r"\d+", transformers.__version__)[:2])

if _VERSION < (5,):  # pragma: no cover
    raise ImportError(
        f"polarquant.kv.hf needs transformers>=5, found {transformers.__version__}; {_HINT}"
    )

#: The keyword under which a model's forward and ``generate`` take the cache: ``cache``
#: since transformers 5.24, ``past_key_values`` before (5.24 still accepts it, deprecated).
#: On an older release ``cache=`` is silently ignored and the model builds its own cache.
CACHE_ARGUMENT = "cache" if _VERSION >= (5, 24) else "past_key_values"

__all__ = [
    "ATTN_IMPLEMENTATION",
    "CACHE_ARGUMENT",
    "cache_kwargs",
    "PREFILL_MODES",
    "PolarquantCache",
    "PolarquantLayer",
    "polarquant_attention",
    "polarquant_mask",
    "register",
]

#: How a multi-token update attends (:class:`PolarquantCache`'s ``prefill``).
PREFILL_MODES = ("exact", "cache", "stepwise")

#: The ``attn_implementation`` name under which :func:`polarquant_attention` is registered.
ATTN_IMPLEMENTATION = "polarquant"

_TAG = "_polarquant_layer"


def _as_array(t: torch.Tensor, on_gpu: bool):
    """``t`` as a float32 array for the layer's KVCache, without a copy where one exists.

    A float32 CPU tensor is read in place as NumPy (``.numpy()``); on a GPU layer
    (``on_gpu``: the cupy backend) a float32 CUDA tensor is shared with CuPy through
    DLPack (:func:`polarquant.kv.attention.check_float_array`); other dtypes are
    converted first, and a CUDA tensor feeding a host backend is copied to the host.
    """
    t = t.detach().to(torch.float32)
    if t.device.type == "cpu" or not on_gpu:
        return t.cpu().numpy()
    return check_float_array(t, "tensor")


class _TorchThreads:
    """Kernels use torch's intra-op thread count, and leave it as they found it.

    The integration runs inside a torch model, whose thread count
    (``torch.set_num_threads``) says how many cores the user gives it: the
    Numba kernels are run with as many threads (at most Numba's own limit)
    rather than all cores, which on a small machine made decode steps slower,
    each parallel kernel's threads competing with torch's.  And Numba's OpenMP
    threading layer sets the OpenMP thread count, which torch shares, when its
    pool starts: without the restore, ``torch.set_num_threads(1)`` would
    silently become 2 after the first compressed attention.
    """

    def __enter__(self):
        self.threads = torch.get_num_threads()
        numba = sys.modules.get("numba")  # only if a kernel backend loaded it already
        self.numba = None
        if numba is not None:
            self.numba = (numba, numba.get_num_threads())
            numba.set_num_threads(max(1, min(self.threads, numba.config.NUMBA_NUM_THREADS)))

    def __exit__(self, *exc):
        if self.numba is not None:
            numba, threads = self.numba
            numba.set_num_threads(threads)
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)


def _exact_causal(query, keys, values, scaling):
    """Exact causal attention of a prompt on itself (``keys``/``values`` ``(B, H, T, d)``),
    grouped-query, as float32: torch's fused kernel, which never holds the ``T x T`` scores."""
    groups = query.shape[1] // keys.shape[1]
    if query.device.type == "cpu":  # the CPU's fused kernel takes float32 and grouped heads
        q, k, v = (t.to(torch.float32) for t in (query, keys, values))
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scaling, enable_gqa=groups > 1
        )
        return out.to(query.dtype)
    # on a GPU the fused kernels want one dtype and as many kv heads as query heads (else
    # torch falls back to the math kernel, which holds the T x T scores)
    k, v = (t.to(query.dtype).repeat_interleave(groups, dim=1) for t in (keys, values))
    return torch.nn.functional.scaled_dot_product_attention(
        query, k, v, is_causal=True, scale=scaling
    )


class PolarquantLayer(CacheLayerMixin):
    """One decoder layer's cache: a :class:`polarquant.KVCache`, built on the first update.

    ``kvcache_kwargs`` are passed to ``KVCache(head_dim, **kvcache_kwargs)``; the
    head dim is read from the first key tensor.  :attr:`kv` is the KVCache
    (``None`` before the first update).  ``keys``/``values`` stay ``None``: the
    history is held only as codes (plus the KVCache's full-precision window).
    """

    is_compileable = False
    is_croppable = False
    is_sliding = False

    def __init__(self, layer_idx: int = 0, owner: PolarquantCache | None = None, **kvcache_kwargs):
        super().__init__()
        self.layer_idx = layer_idx
        self.owner = owner
        self.kvcache_kwargs = kvcache_kwargs
        self.kv: KVCache | None = None
        self._held = None  # a prompt's (keys, values) waiting for their exact attention

    def __repr__(self) -> str:
        return f"PolarquantLayer(layer_idx={self.layer_idx}, kv={self.kv!r})"

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.dtype = key_states.dtype
        self.kv = KVCache(int(key_states.shape[-1]), **self.kvcache_kwargs)
        #: the cupy backend keeps the layer on the GPU: CUDA tensors are shared with CuPy
        self.on_gpu = current_backend(self.kv.backend) == "cupy"
        self.is_initialized = True

    def _array(self, t: torch.Tensor):
        return _as_array(t, self.on_gpu)

    def _device(self, t: torch.Tensor):
        """On a GPU layer, the tensor's CUDA device as CuPy's current device (where CuPy
        allocates and launches: a model spread over several GPUs keeps each layer on its own)."""
        if not self.on_gpu or t.device.type != "cuda":
            return contextlib.nullcontext()
        from ..backends.cupy_backend._launch import get_cupy

        return get_cupy().cuda.Device(t.device.index)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Take the new tokens; return them, tagged for :func:`polarquant_attention`.

        A decode step (one token), or any update with ``prefill="cache"``, is
        appended now (compressing the tokens that leave the window), so that
        the attention reads it from the cache.  A multi-token update with
        ``prefill="exact"`` (the default) is held until its attention, which
        reads it exactly, has run, and appended then.  The returned tensors are
        the inputs themselves (the new tokens only); see the module docstring.
        """
        if key_states.ndim != 4 or key_states.shape != value_states.shape:
            raise ValueError(
                "key_states and value_states must share a shape (batch, kv_heads, tokens, head_dim), "
                f"got {tuple(key_states.shape)} and {tuple(value_states.shape)}"
            )
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self._held is not None:
            self._held = None  # raised once: the next update starts clean
            raise RuntimeError(
                f"layer {self.layer_idx}: the previous update's tokens were never attended "
                "(polarquant_attention stores a prompt after its attention), so they were not "
                "stored; this update is refused too"
            )
        if key_states.shape[-2] > 1 and self.prefill == "exact":
            self._held = (key_states, value_states)
        elif key_states.shape[-2] > 1 and self.prefill == "stepwise":
            if len(self.kv):
                raise ValueError(
                    'prefill="stepwise" evaluates one sequence in one forward pass from an empty '
                    f"cache; layer {self.layer_idx} holds {len(self.kv)} tokens already"
                )
            self._append(key_states, value_states)
            self._held = (key_states, value_states)
        elif key_states.shape[-2] > 0:
            self._append(key_states, value_states)
        setattr(key_states, _TAG, self)
        setattr(value_states, _TAG, self)
        return key_states, value_states

    @property
    def prefill(self) -> str:
        return "exact" if self.owner is None else self.owner.prefill

    def attend(self, query: torch.Tensor, scaling: float | None) -> torch.Tensor:
        """Attention of ``query (batch, q_heads, nq, head_dim)``, a tensor like ``query``.

        From the cache (:meth:`polarquant.KVCache.attention`); for held prompt
        tokens (``prefill="exact"``), the cache's tokens plus the prompt's own,
        exact: torch's ``scaled_dot_product_attention`` (causal, bounded memory)
        when the cache is empty, else ``KVCache.attention(new=...)``; then the
        prompt is appended.
        """
        if self.owner is not None:
            self.owner._consumed(self.layer_idx)
        with _TorchThreads(), self._device(query):
            return self._attend(query, scaling)

    def _attend(self, query, scaling):
        held, self._held = self._held, None
        if held is None:
            return like_input(self.kv.attention(self._array(query), scale=scaling), query)
        keys, values = (self._array(t) for t in held)
        if self.prefill == "stepwise":
            out = self.kv.stepwise_attention(self._array(query), keys, values, scale=scaling)
            return like_input(out, query)
        if len(self.kv):
            out = like_input(
                self.kv.attention(self._array(query), scale=scaling, new=(keys, values)), query
            )
        else:
            out = _exact_causal(query, *held, scaling)
        self.kv.append(keys, values)  # checks the tokens (NaN, range) before storing any
        self._stored()
        return out

    def _append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append tensors to the layer's KVCache (kernels at torch's thread count); counted."""
        with _TorchThreads(), self._device(keys):
            self.kv.append(self._array(keys), self._array(values))
        self._stored()

    def _stored(self) -> None:
        if self.owner is not None:
            self.owner._layers_stored += 1

    def get_seq_length(self) -> int:
        held = 0 if self._held is None or self.prefill != "exact" else self._held[0].shape[-2]
        return (0 if self.kv is None else len(self.kv)) + int(held)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.kv = None
        self._held = None
        self.is_initialized = False

    def offload(self):  # codes stay where the backend computes (host, or GPU for cupy)
        pass

    def prefetch(self):
        pass

    def _refuse(self, what: str):
        raise NotImplementedError(
            f"PolarquantCache does not support {what}: its history is append-only codes "
            "(no beam search, batch expansion or cropping; use greedy or sampling, one cache per batch)"
        )

    def reorder_cache(self, beam_idx) -> None:
        self._refuse("reorder_cache (beam search)")

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._refuse("batch_repeat_interleave")

    def batch_select_indices(self, indices) -> None:
        self._refuse("batch_select_indices")

    def crop(self, tokens_to_remove: int) -> None:
        self._refuse("crop (assisted decoding)")


class PolarquantCache(Cache):
    """A transformers ``Cache`` with one :class:`polarquant.KVCache` per decoder layer.

    Parameters
    ----------
    config : transformers.PreTrainedConfig
        The model's config (``model.config``).  Only full-attention decoders are
        accepted.  The model must run with ``attn_implementation="polarquant"``
        (checked at every update).
    prefill : {"exact", "cache", "stepwise"}
        How a multi-token update (a prompt, or a chunk of one) attends.
        ``"exact"`` (default, the papers' setting: QJL Sec. 4, and the
        TurboQuant and PolarQuant long-context experiments built on it): the
        prompt's tokens attend to each other exactly and to the tokens already
        held through the cache; the prompt is compressed afterwards and only
        later tokens read it from the codes.  ``"cache"``: the prompt is
        appended first and attended from the cache like decode steps (its
        tokens older than the window through their codes).  ``"stepwise"``
        (evaluation): a sequence fed to an empty cache in one forward pass gets,
        at every position, the attention a token-by-token decode would have
        computed there (:meth:`polarquant.KVCache.stepwise_attention`):
        teacher forcing in one pass.
    flush : int
        Tokens leave each layer's full-precision window in blocks of a multiple
        of ``flush`` (default 32, see :class:`polarquant.KVCache`): one
        compression per 32 decode steps; the window holds up to 31 more tokens,
        counted in :attr:`nbytes`.
    **kvcache_kwargs
        Passed to every layer's ``polarquant.KVCache(head_dim, **kvcache_kwargs)``:
        ``key_method``, ``key_bits``, ``value_method``, ``value_bits``, ``window``,
        ``seed``, ``backend``, ``key_options``, ``value_options``.  Every layer
        uses the same seed (the same rotations and sketches): a seed costs 8
        bytes per codec, and each layer's data are independent of the others.

    Attributes
    ----------
    layers : list of PolarquantLayer
        ``cache.layers[i].kv`` is layer ``i``'s KVCache.
    """

    def __init__(self, config, *, prefill: str = "exact", flush: int = 32, **kvcache_kwargs):
        if prefill not in PREFILL_MODES:
            raise ValueError(f"prefill must be one of {PREFILL_MODES}, got {prefill!r}")
        self.prefill = prefill
        kvcache_kwargs["flush"] = check_int(flush, "flush", low=1)
        text_config = config.get_text_config(decoder=True)
        self.config = text_config
        layer_types = getattr(text_config, "layer_types", None) or ["full_attention"]
        bad = set(layer_types) - {"full_attention"}
        sliding = getattr(text_config, "sliding_window", None) is not None and getattr(
            text_config, "use_sliding_window", True
        )
        if bad or sliding:
            raise ValueError(
                "PolarquantCache supports models whose layers are all full attention; "
                f"this config has layer types {sorted(set(layer_types))} "
                f"and sliding_window={getattr(text_config, 'sliding_window', None)}"
            )
        self.kvcache_kwargs = dict(kvcache_kwargs)
        layers = [
            PolarquantLayer(i, owner=self, **kvcache_kwargs)
            for i in range(text_config.num_hidden_layers)
        ]
        super().__init__(layers=layers)
        self._pending: int | None = None
        self._layers_stored = 0  # layers that stored the current forward's tokens

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        impl = getattr(self.config, "_attn_implementation", None)
        if impl != ATTN_IMPLEMENTATION:
            raise RuntimeError(
                f"PolarquantCache computes attention from the codes and needs "
                f'attn_implementation="{ATTN_IMPLEMENTATION}", but the model uses {impl!r}: '
                f"import polarquant.kv.hf, then load the model with "
                f'attn_implementation="{ATTN_IMPLEMENTATION}" or call '
                f'model.set_attn_implementation("{ATTN_IMPLEMENTATION}")'
            )
        if layer_idx == 0:
            self._begin_forward()
        if self._pending is not None:
            raise RuntimeError(
                f"layer {self._pending}'s attention did not go through polarquant_attention "
                "(another attention function would attend to the new tokens only); "
                f'the model must run with attn_implementation="{ATTN_IMPLEMENTATION}"'
            )
        out = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        self._pending = layer_idx
        return out

    def extend_from(self, cache) -> None:
        """Store the tokens of another cache's layers (e.g. a prefilled ``DynamicCache``).

        What an exact prefill stores (``prefill="exact"``): each layer's keys
        and values, appended in one block (compressed as they leave the
        window).  ``cache.layers[i].keys`` / ``.values`` are read, not changed.
        This cache must be empty; if any layer refuses its tokens (shape, NaN,
        range), every layer is emptied again and the error raised.
        """
        sources = getattr(cache, "layers", None)
        if sources is None or len(sources) != len(self.layers):
            raise ValueError(
                f"extend_from needs a cache with {len(self.layers)} layers, "
                f"got {type(cache).__name__} with {len(sources or ())}"
            )
        if self.get_seq_length():
            raise ValueError("extend_from fills an empty PolarquantCache; this one holds tokens")
        for i, src in enumerate(sources):
            k, v = getattr(src, "keys", None), getattr(src, "values", None)
            if not (torch.is_tensor(k) and torch.is_tensor(v)) or k.ndim != 4 or k.shape != v.shape:
                raise ValueError(
                    f"layer {i} of the source cache holds no (batch, kv_heads, tokens, head_dim) "
                    "keys and values of one shape"
                )
        try:
            for layer, src in zip(self.layers, sources, strict=True):
                layer.lazy_initialization(src.keys, src.values)
                layer._append(src.keys, src.values)
        except Exception:
            self.reset()
            raise

    def _consumed(self, layer_idx: int) -> None:
        self._pending = None

    def _begin_forward(self) -> None:
        """Layer 0's update: a new forward pass.  If the previous one failed after some but not
        all layers stored its tokens, the layers disagree and the cache is refused until
        :meth:`reset`; a pass that failed before any layer stored leaves nothing behind."""
        stored, total = self._layers_stored, len(self.layers)
        if 0 < stored < total:
            raise RuntimeError(
                f"a previous forward pass failed after {stored} of {total} layers stored its "
                "tokens, so the layers now hold different tokens; call cache.reset() (or use a "
                "new cache) before going on"
            )
        self._pending = None
        self._layers_stored = 0
        for layer in self.layers:
            layer._held = None

    def reset(self):
        super().reset()
        self._pending = None
        self._layers_stored = 0

    # -- memory, summed over layers ------------------------------------------------------------
    @property
    def kv_caches(self) -> list:
        """The layers' :class:`polarquant.KVCache` objects (``None`` where not yet used)."""
        return [layer.kv for layer in self.layers]

    @property
    def nbytes(self) -> int:
        """Bytes held by all layers' KVCaches (codes, norms, metadata, state, window)."""
        return int(sum(kv.nbytes for kv in self.kv_caches if kv is not None))

    @property
    def coordinates(self) -> int:
        """Key and value coordinates held, over all layers."""
        return int(sum(kv.coordinates for kv in self.kv_caches if kv is not None))

    @property
    def bits_per_coordinate(self) -> float:
        """``8 * nbytes / coordinates`` over all layers: every held bit, windows and state included."""
        return 8.0 * self.nbytes / self.coordinates if self.coordinates else 0.0

    @property
    def fp16_ratio(self) -> float:
        """Bytes of an fp16 cache of the same tokens divided by :attr:`nbytes` (as ``KVCache.fp16_ratio``)."""
        return 2.0 * self.coordinates / self.nbytes if self.nbytes else float("nan")


def polarquant_attention(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs
):
    """Attention from the codes: the ``attn_implementation="polarquant"`` function.

    Same signature and return as transformers' ``sdpa_attention_forward``:
    ``query (batch, q_heads, nq, head_dim)``; ``key``/``value`` are what
    :meth:`PolarquantLayer.update` returned (they carry the layer); returns
    ``(attn_output (batch, nq, q_heads, head_dim), None)``.
    """
    layer = getattr(key, _TAG, None)
    if layer is None:
        raise RuntimeError(
            f'attn_implementation="{ATTN_IMPLEMENTATION}" attends from a PolarquantCache, but none '
            f"was used in this forward pass: pass {CACHE_ARGUMENT}=PolarquantCache(model.config, "
            "...) with use_cache=True (or switch to model.set_attn_implementation('sdpa') for "
            "exact attention)"
        )
    idx = getattr(module, "layer_idx", layer.layer_idx)
    if idx != layer.layer_idx:
        raise RuntimeError(
            f"attention of layer {idx} received the cache of layer {layer.layer_idx}"
        )
    if dropout:
        raise NotImplementedError(
            "polarquant attention does not apply attention dropout (inference only)"
        )
    for name in ("sliding_window", "softcap", "s_aux"):
        if kwargs.get(name) is not None:
            raise NotImplementedError(
                f"polarquant attention does not support {name}={kwargs[name]!r}"
            )
    if attention_mask is not None:
        raise NotImplementedError(
            "polarquant attention applies the causal mask itself and accepts no prepared mask "
            f"(got a {tuple(attention_mask.shape)} mask: custom 4-D masks are not supported)"
        )
    out = layer.attend(query, scaling)  # (batch, q_heads, nq, head_dim)
    return out.transpose(1, 2).contiguous(), None


def polarquant_mask(
    batch_size,
    q_length,
    kv_length,
    q_offset=0,
    kv_offset=0,
    mask_function=causal_mask_function,
    attention_mask=None,
    **kwargs,
):
    """Mask function of ``"polarquant"``: checks that the mask is plain causal, builds none.

    Raises ``ValueError`` for a padded batch (a 2-D ``attention_mask`` with a
    zero) and ``NotImplementedError`` for any non-causal mask pattern.
    """
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError(
            "PolarquantCache does not support padded batches (attention_mask has zeros): "
            "KVCache.attention applies a plain causal mask, so padding would be attended to. "
            "Run one sequence per batch, or equal-length sequences without padding."
        )
    if mask_function is not causal_mask_function or kv_offset:
        raise NotImplementedError(
            "polarquant attention supports plain causal masks only "
            "(no packed sequences, sliding windows, chunks or custom mask functions)"
        )
    return None


def cache_kwargs(cache) -> dict:
    """``{CACHE_ARGUMENT: cache}``: ``model(input_ids=..., **cache_kwargs(cache))`` and
    ``model.generate(..., **cache_kwargs(cache))`` pass the cache under the keyword of the
    installed transformers (``cache`` from 5.24, ``past_key_values`` before)."""
    return {CACHE_ARGUMENT: cache}


def register(name: str = ATTN_IMPLEMENTATION) -> str:
    """Register :func:`polarquant_attention` and :func:`polarquant_mask` under ``name`` (done on import)."""
    AttentionInterface.register(name, polarquant_attention)
    AttentionMaskInterface.register(name, polarquant_mask)
    return name


register()
