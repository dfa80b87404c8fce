r"""How far a compressed cache's attention is from exact attention, per layer.

Unbiased is not the same as good after a softmax (field-notes: variance is
amplified by the exponential), so we measure what attention actually uses,
for the same queries, against float32 attention on the uncompressed keys and
values:

``score_rmse``
    root-mean-square error of the scaled logits ``scale <q, k>`` over the
    visible (causally unmasked) entries, in logit units (nats);
``score_rel_error``
    the same divided by the RMS of the exact logits;
``kl``
    mean over query rows of ``KL(p || p_hat)`` in nats, ``p`` the exact softmax;
``top_k_overlap``
    mean fraction of the exact top-``k`` keys (by attention weight) found in the
    cache's top-``k`` (``k`` capped by the number of visible keys);
``output_rel_error``
    mean over query rows of ``||o_hat - o|| / ||o||`` for the attention outputs.

:func:`compare_layers` runs these for a list of layers with one cache
configuration (one prefill per layer, then the queries of the last tokens).
"""

from __future__ import annotations

import numpy as np

from .attention import (
    causal_mask,
    check_attention_inputs,
    check_float_array,
    check_scale,
    exact_attention,
    softmax,
)
from .cache import KVCache

__all__ = ["attention_fidelity", "compare_layers", "METRICS"]

METRICS = ("score_rmse", "score_rel_error", "kl", "top_k_overlap", "output_rel_error")


def _exact_scores(queries, keys, scale):
    b, h, n, d = keys.shape
    hq, nq = queries.shape[1], queries.shape[2]
    g = hq // h
    k = np.repeat(keys.astype(np.float32), g, axis=1)  # query head j reads kv head j // g
    s = np.einsum("bhqd,bhnd->bhqn", queries.astype(np.float32), k) * np.float32(scale)
    mask = causal_mask(n, nq, 1)
    if mask is not None:
        s = np.where(mask[None, None], s, np.float32(-np.inf))
    return s


def attention_fidelity(
    cache: KVCache, keys, values, queries, *, scale=None, top_k: int = 8
) -> dict:
    """Fidelity of ``cache`` (holding ``keys, values (B, H, N, d)``) for ``queries (B, G*H, nq, d)``.

    The queries are the last ``nq`` tokens.  Returns a dict of the
    :data:`METRICS` (floats).
    """
    keys = check_float_array(keys, "keys")
    values = check_float_array(values, "values")
    queries = check_float_array(queries, "queries")
    if keys.ndim != 4:
        raise ValueError(
            f"keys must have shape (batch, kv_heads, tokens, head_dim), got {tuple(keys.shape)}"
        )
    if len(cache) != keys.shape[2]:
        raise ValueError(f"the cache holds {len(cache)} tokens, keys hold {keys.shape[2]}")
    b, h, n, d = keys.shape
    check_attention_inputs(queries, d, b, h, n)
    scale = check_scale(scale, d)
    s = _exact_scores(queries, keys, scale)
    s_hat = cache.scores(queries, scale)
    visible = np.isfinite(s)
    err = s_hat[visible] - s[visible]
    rmse = float(np.sqrt(np.mean(err**2)))
    p, p_hat = softmax(s), softmax(s_hat)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(p_hat)), 0.0)
    kl = float(np.mean(np.sum(terms, axis=-1)))
    counts = visible.sum(axis=-1)
    overlaps = []
    for idx in np.ndindex(*s.shape[:-1]):
        k = int(min(top_k, counts[idx]))
        a = np.argpartition(-p[idx], k - 1)[:k]
        c = np.argpartition(-p_hat[idx], k - 1)[:k]
        overlaps.append(len(np.intersect1d(a, c)) / k)
    o = exact_attention(queries, keys, values, scale)
    o_hat = cache.attention(queries, scale)
    rel = np.linalg.norm(o_hat - o, axis=-1) / np.linalg.norm(o, axis=-1)
    return {
        "score_rmse": rmse,
        "score_rel_error": rmse / float(np.sqrt(np.mean(s[visible] ** 2))),
        "kl": kl,
        "top_k_overlap": float(np.mean(overlaps)),
        "output_rel_error": float(np.mean(rel)),
    }


def compare_layers(layers, *, top_k: int = 8, scale=None, **cache_kwargs) -> list[dict]:
    """:func:`attention_fidelity` for each ``(keys, values, queries)`` of ``layers``.

    Each layer gets a fresh ``KVCache(head_dim, **cache_kwargs)`` filled by
    one prefill; each result also holds the cache's ``bits_per_coordinate``
    and ``fp16_ratio``.

    Example
    -------
    >>> import polarquant
    >>> data = polarquant.datasets.load_smollm2_kv()
    >>> layers = list(zip(data["keys"], data["values"], data["queries"]))
    >>> rows = compare_layers([(k[None], v[None], q[None]) for k, v, q in layers],
    ...                       key_method="turboquant-mse", key_bits=4, window=32)
    >>> [round(r["top_k_overlap"], 2) for r in rows]  # doctest: +SKIP
    """
    out = []
    for keys, values, queries in layers:
        cache = KVCache(keys.shape[-1], **cache_kwargs)
        cache.append(keys, values)
        row = attention_fidelity(cache, keys, values, queries, scale=scale, top_k=top_k)
        row["bits_per_coordinate"] = cache.bits_per_coordinate
        row["fp16_ratio"] = cache.fp16_ratio
        out.append(row)
    return out
