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
from array_api_compat import array_namespace, is_array_api_obj, is_torch_array
from array_api_compat import device as array_device

from .._array import host_to_like

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
    "transposed",
    "same_place",
    "scalar_like",
]


def check_float_array(a, name: str):
    """``a`` as a floating array the cache computes on, else ``TypeError``.

    * NumPy arrays, CuPy arrays and arrays of any other array-API namespace
      (``array_api_strict``...) are taken as they are: the cache computes in
      the namespace, and on the device, of the data it holds.
    * A torch tensor on the CPU is detached and read without a copy
      (``tensor.detach().numpy()``) when NumPy has its dtype (float16,
      float32, float64); bfloat16, which NumPy lacks, is cast to float32
      (exact: every bfloat16 is a float32).  The host kernels (NumPy, Numba)
      then run on it.
    * A torch tensor on a GPU becomes a CuPy array sharing its memory
      (``cupy.from_dlpack``, no copy; bfloat16 is cast to float32 first, as
      CuPy has no bfloat16), for the ``cupy`` backend's kernels; CuPy must be
      installed (the error says how).

    Nothing is moved between host and device implicitly.
    """
    if is_torch_array(a):
        if not a.dtype.is_floating_point or a.dtype.is_complex:
            raise TypeError(f"{name} must be a floating tensor, got dtype {a.dtype}")
        t = a.detach()
        if t.dtype not in _torch_numpy_floats():
            t = t.float()  # bfloat16 (and other floats NumPy lacks): exact in float32
        if t.device.type == "cpu":
            return t.numpy()
        if t.device.type != "cuda":
            raise TypeError(
                f"{name} is a torch tensor on {a.device}; the cache computes on the host (CPU "
                f"tensors, NumPy) or on a CUDA GPU (CUDA tensors, CuPy) and never moves data "
                f"implicitly: pass {name}.cpu()"
            )
        return _cupy_module(f"{name} is a torch tensor on {a.device}").from_dlpack(t)
    if not is_array_api_obj(a):
        raise TypeError(
            f"{name} must be an array (NumPy, CuPy or another array-API namespace) or a torch "
            f"tensor, got {type(a).__module__}.{type(a).__qualname__}"
        )
    xp = array_namespace(a)
    if not xp.isdtype(a.dtype, "real floating"):
        raise TypeError(f"{name} must be a floating array, got dtype {a.dtype}")
    return a


def _cupy_module(why: str):
    """CuPy (through the cupy backend's loader), or an ``ImportError`` saying why it was
    needed and how to install it."""
    from ..backends.cupy_backend._launch import get_cupy

    try:
        return get_cupy()
    except ImportError as exc:
        raise ImportError(
            f"{why}: a GPU tensor is attended on the GPU by the cupy backend, as a CuPy "
            f"array ({exc}); or move the tensor to the host with .cpu()"
        ) from exc


def _torch_numpy_floats():
    import torch

    return (torch.float16, torch.float32, torch.float64)


def like_input(out, like):
    """``out`` (float32) in the caller's array type: for a torch ``like``, a tensor of its
    dtype on its device (``torch.from_numpy`` for NumPy, ``torch.from_dlpack`` for a
    device array: no copy before the cast or move); else ``out`` itself."""
    if is_torch_array(like):
        import torch

        if isinstance(out, np.ndarray):
            t = torch.from_numpy(np.ascontiguousarray(out))
        else:
            t = torch.from_dlpack(out)
        return t.to(device=like.device, dtype=like.dtype)
    return out


def same_place(a, b, name: str, other: str) -> None:
    """Refuse ``a`` (named ``name``) if it is not of the namespace and device of ``b`` (``other``).

    Attention computes where its data are and never moves data implicitly.
    """
    xa, xb = array_namespace(a), array_namespace(b)
    da, db = array_device(a), array_device(b)
    if xa is not xb or da != db:
        raise TypeError(
            f"{name} is a {_where(xa, da)} array but {other} are {_where(xb, db)} arrays; "
            "polarquant never moves data between namespaces or devices implicitly: convert "
            "it first"
        )


def _where(xp, dev) -> str:
    return f"{xp.__name__.rsplit('.', 1)[-1]} ({dev})"


def scalar_like(value: float, like):
    """A 0-d array of ``value`` in ``like``'s namespace, dtype and device (for ``where``)."""
    return host_to_like(np.asarray(value), like, like.dtype)


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
    xp = array_namespace(q)
    if not bool(xp.all(xp.isfinite(q))):
        raise ValueError("queries contain NaN or Inf")
    return hq // kv_heads


def group_queries(queries, kv_heads: int):
    """``(B, G*H, nq, d)`` -> ``(B*H, G*nq, d)`` float32: the queries that read each stream."""
    xp = array_namespace(queries)
    b, hq, nq, d = queries.shape
    g = hq // kv_heads
    q = xp.reshape(xp.astype(queries, xp.float32, copy=False), (b, kv_heads, g, nq, d))
    return xp.reshape(q, (b * kv_heads, g * nq, d))


def ungroup_outputs(out, batch: int, kv_heads: int, nq: int):
    """Inverse of :func:`group_queries` for ``(B*H, G*nq, d)`` outputs."""
    xp = array_namespace(out)
    bh, gnq, d = out.shape
    g = gnq // nq
    return xp.reshape(xp.reshape(out, (batch, kv_heads, g, nq, d)), (batch, kv_heads * g, nq, d))


def causal_mask(
    n_keys: int, nq: int, groups: int, start: int = 0, stop: int | None = None, *, like=None
):
    """Boolean ``(groups*nq, stop-start)``: True where key ``t`` is visible to the query row.

    Query row ``r`` (any group) sits at position ``n_keys - nq + r % nq``; key
    columns are positions ``start..stop-1``.  ``None`` when every key is visible.
    The mask is built in the namespace and on the device of ``like`` (NumPy
    without it).
    """
    stop = n_keys if stop is None else stop
    first_query = n_keys - nq
    if stop - 1 <= first_query:  # the newest key in range is visible to the oldest query
        return None
    xp = np if like is None else array_namespace(like)
    dev = None if like is None else array_device(like)
    pos = first_query + xp.tile(xp.arange(nq, device=dev), (groups,))
    return xp.arange(start, stop, device=dev)[None, :] <= pos[:, None]


def transposed(a):
    """``a`` with its last two axes swapped (a view), in its own namespace."""
    return array_namespace(a).matrix_transpose(a)


def stream_matmul(a, b):
    """``a[h] @ b[h]`` for every stream ``h``.

    NumPy's stacked ``matmul`` does not hand transposed operands to BLAS (it
    was 10-50x slower here on ``(8, 4, 128) @ (8, 128, 32768)``), so on NumPy
    arrays attention loops over streams, one 2-D BLAS call each (there are few
    streams: batch x kv heads); other namespaces (CuPy: one batched GEMM) get
    their own stacked ``matmul``.
    """
    if not isinstance(a, np.ndarray):
        return array_namespace(a, b).matmul(a, b)
    if a.shape[0] == 0:
        return np.zeros((0, a.shape[1], b.shape[2]), dtype=np.result_type(a, b))
    return np.stack([a[h] @ b[h] for h in range(a.shape[0])])


def softmax(scores, axis: int = -1):
    """Numerically stable softmax (``-inf`` entries get probability 0)."""
    xp = array_namespace(scores)
    m = xp.max(scores, axis=axis, keepdims=True)
    e = xp.exp(scores - m)
    return e / xp.sum(e, axis=axis, keepdims=True)


def exact_attention(queries, keys, values, scale: float | None = None):
    """Reference attention in float32 on uncompressed ``keys, values (B, H, N, d)``.

    ``queries (B, G*H, nq, d)`` are the last ``nq`` positions (causal among
    themselves); returns ``(B, G*H, nq, d)`` float32 in the arrays' namespace
    (a torch tensor of the queries' dtype for torch queries).  This is the
    "exact" side of every fidelity measurement and benchmark.  ``scale``: see
    :func:`check_scale`.
    """
    keys = check_float_array(keys, "keys")
    values = check_float_array(values, "values")
    q_in, queries = queries, check_float_array(queries, "queries")
    if keys.ndim != 4 or keys.shape != values.shape:
        raise ValueError(
            f"keys and values must share a shape (batch, kv_heads, tokens, head_dim), got "
            f"{tuple(keys.shape)} and {tuple(values.shape)}"
        )
    same_place(values, keys, "values", "keys")
    same_place(queries, keys, "queries", "keys")
    xp = array_namespace(keys)
    b, h, n, d = keys.shape
    check_attention_inputs(queries, d, b, h, n)
    nq = queries.shape[2]
    g = queries.shape[1] // h
    scale = check_scale(scale, d)
    q = group_queries(queries, h)
    k = xp.reshape(xp.astype(keys, xp.float32, copy=False), (b * h, n, d))
    v = xp.reshape(xp.astype(values, xp.float32, copy=False), (b * h, n, d))
    s = stream_matmul(q, transposed(k)) * scale
    mask = causal_mask(n, nq, g, like=s)
    if mask is not None:
        s = xp.where(mask[None, ...], s, scalar_like(-math.inf, s))
    return like_input(ungroup_outputs(stream_matmul(softmax(s), v), b, h, nq), q_in)
