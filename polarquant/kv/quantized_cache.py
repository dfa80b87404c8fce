r"""transformers' own quantized KV cache as a baseline: ``QuantizedCache`` with quanto or HQQ.

Users who want a smaller KV cache in transformers are pointed first at its
``QuantizedCache`` (backends ``"quanto"``, from optimum-quanto, and ``"hqq"``,
from HQQ), described by its authors after KIVI (Liu et al., ICML 2024,
arXiv 2402.02750).  The needle grid (:mod:`polarquant.kv.needle`) runs it beside
the papers' methods; this module builds it, fills it from an exact prefill and
counts the bytes it holds.

What the cache does (transformers 5, ``QuantizedLayer``)
---------------------------------------------------------
* The **first** ``update`` of a layer (the prompt) quantizes *every* token it
  receives and returns them exact for the prompt's own attention.  There is no
  full-precision window over the prompt: the residual buffer
  (``residual_length``, 128 by default) only collects the tokens that come
  after, and when it fills, the whole cache is dequantized, the buffer
  appended and everything quantized again.
* Every later step dequantizes the whole cache and attends to it with the
  model's own attention: the saving is memory, not attention work.
* Quantization is per group of ``q_group_size = 64`` coordinates, with a scale
  and a zero point per group stored in the model's dtype (float32 here: 1 bit
  per coordinate).  The layout is ``axis=0``, transformers' default and the only
  one that runs here for every length and width (quanto's ``axis=-1`` needs
  the group size to divide the token count; HQQ's ``axis=1`` fails to
  dequantize 3-bit codes, and 4-bit codes of an odd number of groups).  What a
  group is differs between the backends, for a layer's tensor of ``N``
  coordinates (batch, heads, tokens, head_dim):

  - **quanto** groups 64 consecutive coordinates: at head_dim 64, **one group
    per token and head** (per-token quantization, not KIVI's per-channel keys);
    2 or 4 bits, min-max.
  - **HQQ** reshapes the tensor to 64 rows of ``N / 64`` and quantizes each
    column: a group is 64 coordinates **spaced** ``N / 64`` **apart** (flat
    index ``f`` is in group ``f mod N/64``), mixing tokens, heads and channels,
    and regrouped whenever the cache is quantized again (a new ``N``); 1, 2,
    3, 4 or 8 bits, zero points refined by its half-quadratic solver.  Its
    3-bit codes are packed ten to a 32-bit word along the 64 rows (7 words: 3.5
    bits per coordinate).

:func:`grid` gives the needle grid's rows, :func:`make_cache` the cache of one
row, :func:`fill` stores an exact prefill in it the way the prompt pass of
``generate`` would, and :func:`memory` measures what it holds, in the format of
:func:`polarquant.kv.evaluation.cache_memory`.
"""

from __future__ import annotations

import importlib.util

__all__ = ["BACKENDS", "available", "require", "grid", "make_cache", "fill", "memory"]

#: backend -> (module to import, pip requirement, bit widths transformers accepts for it)
BACKENDS = {
    "quanto": ("optimum.quanto", "optimum-quanto>=0.2.5", (2, 4)),
    "hqq": ("hqq", "hqq>=0.2.8", (1, 2, 3, 4, 8)),
}
#: What a quantization group is, per backend (module docstring).
_GROUPS = {"quanto": "a group per token and head", "hqq": "groups strided over the layer"}
#: transformers' defaults, kept: coordinates per quantization group, tokens in the residual buffer.
Q_GROUP_SIZE = 64
RESIDUAL_LENGTH = 128
#: How to install the backends (the distribution is not on a package index: from a clone).
INSTALL = 'in a clone of polarquant, python -m pip install -e ".[hf,hf-quantized]" "torch==2.13.0"'


def available(backend: str) -> bool:
    """Whether ``backend``'s package is installed (located, not imported)."""
    module = BACKENDS[_known(backend)][0]
    top = module.split(".")[0]
    return (
        importlib.util.find_spec(top) is not None and importlib.util.find_spec(module) is not None
    )


def require(backend: str) -> None:
    """Raise ``ImportError`` naming the package ``backend`` needs (missing or too old) and its
    install command."""
    requirement = BACKENDS[_known(backend)][1]
    name, minimum = requirement.split(">=")
    if not available(backend):
        raise ImportError(
            f"transformers' QuantizedCache with the {backend} backend needs "
            f"{requirement}, not installed: {INSTALL}"
        )
    from importlib.metadata import version

    from packaging.version import Version

    found = version(name)
    if Version(found) < Version(minimum):
        raise ImportError(
            f"transformers' QuantizedCache with the {backend} backend needs {requirement}, "
            f"found {found}: {INSTALL}"
        )


def _known(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown QuantizedCache backend {backend!r}; valid: {', '.join(BACKENDS)}"
        )
    return backend


def grid(backends=None, bits=(3.0, 4.0)) -> list[dict]:
    """The needle grid's ``QuantizedCache`` rows: for each backend (default: all of
    :data:`BACKENDS`) and each nominal width of ``bits`` except 8 (the fp8 row's), the
    largest width the backend accepts that is not above it (quanto: 3 -> 2, 4 -> 4; HQQ:
    3 -> 3, 4 -> 4), as KIVI's integer widths are rounded down in
    :func:`polarquant.kv.evaluation.default_grid`.

    Rows have the keys of that grid's (``key_method`` is the backend) plus
    ``cache: "transformers"`` and a ``setting`` text.

    >>> [(c["key_method"], c["key_bits"], c["nominal_bits"]) for c in grid()]
    [('quanto', 2, 3.0), ('quanto', 4, 4.0), ('hqq', 3, 3.0), ('hqq', 4, 4.0)]
    """
    rows = []
    for backend in BACKENDS if backends is None else backends:
        widths = BACKENDS[_known(backend)][2]
        seen = set()
        for b in bits:
            if b == 8.0:
                continue
            fits = [w for w in widths if w <= b]
            if not fits or fits[-1] in seen:
                continue
            w = fits[-1]
            seen.add(w)
            rows.append(
                {
                    "key_method": backend,
                    "key_bits": w,
                    "value_method": backend,
                    "value_bits": w,
                    "nominal_bits": float(b),
                    "cache": "transformers",
                    "setting": f"int{w}, " + _GROUPS[backend],
                }
            )
    return rows


def make_cache(model_config, config: dict):
    """An empty ``transformers.QuantizedCache`` for one row of :func:`grid` (both keys and
    values at ``config["key_bits"]``, axis 0, transformers' group size and residual length)."""
    backend = _known(config["key_method"])
    require(backend)
    from transformers import QuantizedCache

    return QuantizedCache(
        backend,
        model_config,
        nbits=int(config["key_bits"]),
        axis_key=0,
        axis_value=0,
        q_group_size=Q_GROUP_SIZE,
        residual_length=RESIDUAL_LENGTH,
    )


def fill(cache, exact) -> None:
    """Store the keys and values of ``exact`` (a filled ``DynamicCache``) in ``cache``, one
    ``update`` per layer, as the prompt pass of ``generate`` stores them (all quantized)."""
    if len(cache.layers) != len(exact.layers):
        raise ValueError(
            f"the caches have {len(cache.layers)} and {len(exact.layers)} layers: not the same model"
        )
    for i, layer in enumerate(exact.layers):
        cache.update(layer.keys, layer.values, i)


def _tensor_nbytes(t) -> int:
    """Bytes of a tensor, of the inner tensors of a tensor subclass (quanto's packed codes,
    scales, shifts), or of an HQQ ``(codes, meta)`` pair (codes, scales, zero points)."""
    import torch

    if isinstance(t, tuple):
        codes, meta = t
        return _tensor_nbytes(codes) + sum(
            _tensor_nbytes(v) for v in meta.values() if isinstance(v, torch.Tensor)
        )
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_nbytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def memory(cache) -> dict:
    """What a filled ``QuantizedCache`` holds, in the keys of
    :func:`polarquant.kv.evaluation.cache_memory`: ``bits_keys`` / ``bits_values`` (quantized
    part: codes, scales and zero points per coordinate), ``bits_overall`` and ``fp16_ratio``
    (the residual buffer's full-precision tokens included), ``nbytes``, ``tokens``,
    ``compressed_tokens``."""
    layers = [layer for layer in cache.layers if getattr(layer, "is_initialized", False)]
    out: dict = {}
    total = coords = 0
    for name in ("keys", "values"):
        nbytes = quantized = 0
        for layer in layers:
            q, residual = getattr(layer, f"_quantized_{name}"), getattr(layer, name)
            b, h, t, d = _shape(q)
            q_bytes = _tensor_nbytes(q)
            nbytes += q_bytes
            quantized += b * h * t * d
            total += q_bytes + _tensor_nbytes(residual)
            coords += b * h * (t + (residual.shape[-2] if residual.dim() == 4 else 0)) * d
        out[f"bits_{name}"] = 8.0 * nbytes / quantized if quantized else float("nan")
    out["bits_overall"] = 8.0 * total / coords if coords else float("nan")
    out["fp16_ratio"] = 2.0 * coords / total if total else float("nan")
    out["nbytes"] = int(total)
    out["tokens"] = int(layers[0].cumulative_length) if layers else 0
    out["compressed_tokens"] = int(_shape(layers[0]._quantized_keys)[2]) if layers else 0
    return out


def _shape(q) -> tuple:
    """(batch, heads, tokens, head_dim) of a quantized tensor (HQQ keeps it in its meta)."""
    return tuple(q[1]["shape"] if isinstance(q, tuple) else q.shape)
