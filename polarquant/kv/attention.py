r"""Scaled dot-product attention pieces shared by the cache, its fidelity helpers and benchmarks.

Attention of a decoder layer (Vaswani et al. 2017, Sec. 3.2.1) for queries at
the *last* ``nq`` positions of a sequence of ``N`` tokens:

.. math::

    \mathrm{out}_i = \sum_{t \le \mathrm{pos}_i} p_{it}\, v_t, \qquad
    p_{i\cdot} = \mathrm{softmax}\big(\mathrm{scale}\,\langle q_i, k_t\rangle\big),
    \qquad \mathrm{pos}_i = N - n_q + i,

with ``scale = 1/sqrt(head_dim)`` unless given.  Grouped-query attention
(Ainslie et al. 2023): ``q_heads = G * kv_heads`` and query head ``h`` reads kv
head ``h // G`` (the order of Hugging Face's ``repeat_kv``).  Internally the
``G`` query heads of a kv head and their ``nq`` positions are stacked into one
axis of ``G * nq`` rows per *stream* (batch x kv head), so every compressed
token is scored against all the queries that read it in one pass.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from array_api_compat import is_torch_array

__all__ = [
    "exact_attention",
    "check_float_array",
    "check_scale",
    "like_input",
    "softmax",
    "causal_mask",
    "group_queries",
    "ungroup_outputs",
    "check_attention_inputs",
    "stream_matmul",
]


def check_float_array(a, name: str) -> np.ndarray:
    """``a`` as a floating NumPy array (torch CPU tensors converted), else ``TypeError``.

    The cache computes on the host with NumPy.  A torch tensor on the CPU is
    detached and read without a copy (``tensor.detach().numpy()``) when NumPy
    has its dtype (float16, float32, float64); bfloat16, which NumPy lacks, is
    cast to float32 (exact: every bfloat16 is a float32).  Nothing is moved
    between devices implicitly: CUDA tensors and CuPy arrays are refused with
    the conversion to make.
    """
    if is_torch_array(a):
        if a.device.type != "cpu":
            raise TypeError(
                f"{name} is a torch tensor on {a.device}; KVCache computes on the host (NumPy) "
                f"and never moves data implicitly: pass {name}.cpu()"
            )
        if not a.dtype.is_floating_point or a.dtype.is_complex:
            raise TypeError(f"{name} must be a floating tensor, got dtype {a.dtype}")
        t = a.detach()
        if t.dtype not in _torch_numpy_floats():
            t = t.float()  # bfloat16 (and other floats NumPy lacks): exact in float32
        return t.numpy()
    if not isinstance(a, np.ndarray):
        kind = f"{type(a).__module__}.{type(a).__qualname__}"
        hint = (
            f" (the cache computes on the host: copy it with {name}.get())"
            if kind.startswith("cupy")
            else ""
        )
        raise TypeError(f"{name} must be a NumPy array or a torch CPU tensor, got {kind}{hint}")
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating array, got dtype {a.dtype}")
    return a


def _torch_numpy_floats():
    import torch

    return (torch.float16, torch.float32, torch.float64)


def like_input(out: np.ndarray, like):
    """``out`` (float32 NumPy) in the caller's array type: a torch tensor of ``like``'s dtype
    when ``like`` is one (``torch.from_numpy``, no copy for float32), else ``out`` itself."""
    if is_torch_array(like):
        import torch

        return torch.from_numpy(np.ascontiguousarray(out)).to(like.dtype)
    return out


def check_scale(scale, head_dim: int) -> float:
    """The logit scale: ``1/sqrt(head_dim)`` for ``None``, else a finite positive real number.

    NaN or an infinite scale would make every logit NaN (an all-NaN output),
    and zero or a negative scale is not the attention of any model: all
    are refused with a ``ValueError`` (``TypeError`` for a non-number).
    """
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {scale!r}")
    value = float(scale)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"scale must be a finite positive number (default 1/sqrt(head_dim)), got {scale!r}"
        )
    return value


def check_attention_inputs(queries, head_dim: int, batch: int, kv_heads: int, tokens: int):
    """Validate ``queries (batch, q_heads, nq, head_dim)`` against a cache; return ``G``."""
    q = check_float_array(queries, "queries")
    if q.ndim != 4:
        raise ValueError(
            f"queries must have shape (batch, q_heads, nq, head_dim), got {tuple(q.shape)}"
        )
    b, hq, nq, d = q.shape
    if d != head_dim:
        raise ValueError(f"queries have head_dim {d}, the cache holds head_dim {head_dim}")
    if b != batch:
        raise ValueError(f"queries have batch {b}, the cache holds batch {batch}")
    if hq == 0 or hq % kv_heads:
        raise ValueError(
            f"queries have {hq} heads, not a positive multiple of the cache's {kv_heads} kv heads "
            "(grouped-query attention needs q_heads = G * kv_heads)"
        )
    if not 1 <= nq <= tokens:
        raise ValueError(
            f"{nq} queries but the cache holds {tokens} tokens: the queries are the last nq "
            "appended tokens (append their keys and values first)"
        )
    if not np.all(np.isfinite(q)):
        raise ValueError("queries contain NaN or Inf")
    return hq // kv_heads


def group_queries(queries, kv_heads: int) -> np.ndarray:
    """``(B, G*H, nq, d)`` -> ``(B*H, G*nq, d)`` float32: the queries that read each stream."""
    b, hq, nq, d = queries.shape
    g = hq // kv_heads
    q = np.asarray(queries, dtype=np.float32).reshape(b, kv_heads, g, nq, d)
    return q.reshape(b * kv_heads, g * nq, d)


def ungroup_outputs(out, batch: int, kv_heads: int, nq: int) -> np.ndarray:
    """Inverse of :func:`group_queries` for ``(B*H, G*nq, d)`` outputs."""
    bh, gnq, d = out.shape
    g = gnq // nq
    return out.reshape(batch, kv_heads, g, nq, d).reshape(batch, kv_heads * g, nq, d)


def causal_mask(n_keys: int, nq: int, groups: int, start: int = 0, stop: int | None = None):
    """Boolean ``(groups*nq, stop-start)``: True where key ``t`` is visible to the query row.

    Query row ``r`` (any group) sits at position ``n_keys - nq + r % nq``; key
    columns are positions ``start..stop-1``.  ``None`` when every key is visible.
    """
    stop = n_keys if stop is None else stop
    first_query = n_keys - nq
    if stop - 1 <= first_query:  # the newest key in range is visible to the oldest query
        return None
    pos = first_query + np.tile(np.arange(nq), groups)
    return np.arange(start, stop)[None, :] <= pos[:, None]


def stream_matmul(a, b) -> np.ndarray:
    """``a[h] @ b[h]`` for every stream ``h``, one 2-D BLAS call each.

    NumPy's stacked ``matmul`` does not hand transposed operands to BLAS (it
    was 10-50x slower here on ``(8, 4, 128) @ (8, 128, 32768)``), so attention
    loops over streams; there are few of them (batch x kv heads).
    """
    if a.shape[0] == 0:
        return np.zeros((0, a.shape[1], b.shape[2]), dtype=np.result_type(a, b))
    return np.stack([a[h] @ b[h] for h in range(a.shape[0])])


def softmax(scores, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (``-inf`` entries get probability 0)."""
    m = np.max(scores, axis=axis, keepdims=True)
    e = np.exp(scores - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def exact_attention(queries, keys, values, scale: float | None = None) -> np.ndarray:
    """Reference attention in float32 on uncompressed ``keys, values (B, H, N, d)``.

    ``queries (B, G*H, nq, d)`` are the last ``nq`` positions (causal among
    themselves); returns ``(B, G*H, nq, d)`` float32 (a torch tensor of the
    queries' dtype for torch queries).  This is the "exact" side of every
    fidelity measurement and benchmark.  ``scale``: see :func:`check_scale`.
    """
    keys = check_float_array(keys, "keys")
    values = check_float_array(values, "values")
    q_in, queries = queries, check_float_array(queries, "queries")
    if keys.ndim != 4 or keys.shape != values.shape:
        raise ValueError(
            f"keys and values must share a shape (batch, kv_heads, tokens, head_dim), got "
            f"{tuple(keys.shape)} and {tuple(values.shape)}"
        )
    b, h, n, d = keys.shape
    check_attention_inputs(queries, d, b, h, n)
    nq = queries.shape[2]
    g = queries.shape[1] // h
    scale = check_scale(scale, d)
    q = group_queries(queries, h)
    k = keys.astype(np.float32, copy=False).reshape(b * h, n, d)
    v = values.astype(np.float32, copy=False).reshape(b * h, n, d)
    s = stream_matmul(q, k.transpose(0, 2, 1)) * np.float32(scale)
    mask = causal_mask(n, nq, g)
    if mask is not None:
        s = np.where(mask[None], s, -np.inf)
    return like_input(ungroup_outputs(stream_matmul(softmax(s), v), b, h, nq), q_in)
