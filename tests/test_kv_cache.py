"""The compressed KV cache (polarquant.kv.cache): attention from codes, appends, errors, bytes.

What is checked, and against what:

* attention from the codes equals exact float32 attention on the cache's own
  decoded keys and values, for every key and value method, head dims 64..256,
  batch 2 and grouped-query attention (2 kv heads, 6 query heads);
* an independent per-position oracle (Python loops, float64) for the
  uncompressed cache and for :func:`exact_attention`;
* append semantics: codes independent of how tokens are split into appends,
  history never re-quantized, window/compressed token counts;
* bad input: clear errors, and the cache left exactly as it was;
* accounting: bytes held equal the documented layout formula (fp16 baseline);
* unbiasedness of the QJL-based keys through the cache (field-notes defect 2)
  and TurboQuant_mse's multiplicative bias (TurboQuant Sec. 3.2);
* the numba backend gives the same bytes and the same attention as NumPy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import polarquant
from polarquant.kv import KEY_METHODS, VALUE_METHODS, KVCache, exact_attention
from polarquant.kv import cache as cache_module
from tests.conftest import correlated_pair

HEAD_DIMS = (64, 80, 96, 128, 256)

#: One representative width per method: (method, bits, options).  PolarQuant gets an explicit
#: per-level tuple (the nominal-number preset searches 126 tuples, seconds per cache).
BITS = {
    "turboquant-mse": 3,
    "turboquant-prod": 3,
    "qjl": 2,
    "polarquant": (4, 2, 2, 2),
    "polarquant-qjl": (4, 2, 2, 2),
    "kivi": 3,
    "hadamard-rtn": 4,
    "fp8": 8,
    "none": 16,
}

KEY_CASES = [(m, BITS[m], None) for m in KEY_METHODS] + [
    ("turboquant-mse", 2.5, None),  # TurboQuant Sec. 4.3 channel split
    ("turboquant-prod", 3.5, None),
    ("qjl", 2, {"outliers": 0}),  # plain QJL, no outlier groups
]
VALUE_CASES = [(m, BITS[m], None) for m in VALUE_METHODS] + [("turboquant-mse", 2.5, None)]


def _case_id(case):
    method, bits, opts = case
    return f"{method}-{bits}" + ("-" + "-".join(f"{k}{v}" for k, v in opts.items()) if opts else "")


def _kv(rng, b, h, t, d, dtype=np.float32):
    """Gaussian keys and values: N(0, 1) entries, so scaled logits are O(1)."""
    k = rng.standard_normal((b, h, t, d)).astype(dtype)
    v = rng.standard_normal((b, h, t, d)).astype(dtype)
    return k, v


def _cache(key, value, d, **kwargs):
    (km, kb, ko), (vm, vb, vo) = key, value
    return KVCache(d, km, kb, vm, vb, key_options=ko, value_options=vo, **kwargs)


def _fields_bytes(cache):
    """Every compressed field as raw bytes (dtype and shape included), keys then values."""
    out = {}
    for prefix, fields in (("k.", cache.key_fields()), ("v.", cache.value_fields())):
        for name, a in fields.items():
            out[prefix + name] = (a.dtype.str, a.shape, a.tobytes())
    return out


# -- 1. attention from codes == exact attention on the decoded cache --------------------------------
def _value_for(key_method):
    # key-only methods get KIVI values: no second rotation to build (QR at d = 256 is the cost)
    m = key_method if key_method in VALUE_METHODS else "kivi"
    return (m, BITS[m], None)


PAIRS = [(k, _value_for(k[0])) for k in KEY_CASES] + [
    (("turboquant-mse", 3, None), v) for v in VALUE_CASES if v[1] == 2.5
]


def test_every_method_is_covered():
    """The parametrization below names every registered key and value method."""
    assert {k[0] for k, _ in PAIRS} == set(KEY_METHODS)
    assert {v[0] for _, v in PAIRS} == set(VALUE_METHODS)


@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("pair", PAIRS, ids=[f"{_case_id(k)}/{_case_id(v)}" for k, v in PAIRS])
def test_attention_from_codes_equals_exact_attention_on_decoded(pair, d):
    """``cache.attention(q)`` == ``exact_attention(q, *cache.decoded())`` to float32 rounding.

    Batch 2, 2 kv heads read by 6 query heads (G = 3), 70 tokens with a window
    of 8: per-token codecs compress 62 tokens, 32-token-group codecs 32 (the
    window then holds 38).  ``nq`` = 1 (decode), 5, and 70 (a prefill whose
    queries span compressed tokens, causal among themselves).

    Both sides compute the same logits in a different order (rotated or
    projected domain from the codes vs. the decoded keys in the input domain).
    Entries are N(0, 1), so scaled logits are O(1) and a d-term float32 dot
    product computed two ways differs by ~eps * d / sqrt(2) unscaled
    (random-walk rounding of partial sums of size ~sqrt(t)): at d = 256,
    1.2e-7 * 181 / 16 ~ 1.4e-6 in scaled logits.  A logit error delta moves a
    softmax output by at most 2 delta max|v|, and the value side adds the same
    order again; 1e-5 * max|V| keeps a ~3x margin over that estimate while a
    wrong codebook, norm, GQA mapping or mask moves outputs by O(0.1).
    """
    key, value = pair
    rng = np.random.default_rng(1000 + d)
    b, h, g, t = 2, 2, 3, 70
    k, v = _kv(rng, b, h, t, d)
    cache = _cache(key, value, d, window=8, seed=3)
    cache.append(k, v)
    assert cache.compressed_tokens == (32 if cache.group == 32 else 62)
    keys, values = cache.decoded()
    assert keys.shape == values.shape == (b, h, t, d) and keys.dtype == np.float32
    tol = 1e-5 * float(np.max(np.abs(values)))
    for nq in (1, 5, t):
        q = rng.standard_normal((b, g * h, nq, d)).astype(np.float32)
        out = cache.attention(q)
        assert out.shape == (b, g * h, nq, d) and out.dtype == np.float32
        np.testing.assert_allclose(out, exact_attention(q, keys, values), rtol=0, atol=tol)
    # a non-default scale reaches both the scores and the softmax
    q = rng.standard_normal((b, g * h, 3, d)).astype(np.float32)
    np.testing.assert_allclose(
        cache.attention(q, scale=0.3), exact_attention(q, keys, values, scale=0.3), atol=tol, rtol=0
    )


def test_attention_blocked_over_query_rows_equals_one_block(monkeypatch):
    """A long prefill is attended in blocks of query rows (SCORE_ELEMENTS); blocks change nothing.

    The same rows computed in one block or in blocks of a few rows differ only
    by the BLAS order of summation in float32: a few ulps of the unscaled
    logits (|<q, k>| / sqrt(d) up to ~8 here, ulp 5e-7), hence 4e-6 on scores
    and outputs (convex combinations of N(0, 1) values); a wrong block offset
    or mask row moves them by O(1).
    """
    rng = np.random.default_rng(5)
    k, v = _kv(rng, 2, 2, 50, 64)
    cache = KVCache(64, "turboquant-mse", 3, "kivi", 3, window=4)
    cache.append(k, v)
    q = rng.standard_normal((2, 4, 50, 64)).astype(np.float32)
    one_out, one_scores = cache.attention(q), cache.scores(q)
    monkeypatch.setattr(cache_module, "SCORE_ELEMENTS", 300)  # 300 // (50 * 4) = 1 row per block
    np.testing.assert_allclose(cache.attention(q), one_out, rtol=0, atol=4e-6)
    np.testing.assert_allclose(cache.scores(q), one_scores, rtol=0, atol=4e-6)


@pytest.mark.parametrize(
    "pair", PAIRS[:4], ids=[f"{_case_id(k)}/{_case_id(v)}" for k, v in PAIRS[:4]]
)
def test_attention_with_new_tokens_equals_exact_attention_on_history_plus_them(pair):
    """``attention(q, new=(k, v))`` (the exact prefill of a chunk) == exact attention over the
    decoded history followed by the new tokens, the queries being the new tokens'.

    Same float32 tolerance argument as the test above (d = 64); the history
    (compressed tokens and window) is visible to every query, the new tokens
    causally.  Nothing is stored: the cache is unchanged afterwards.  With an
    empty cache it is plain causal attention on the new tokens.
    """
    key, value = pair
    rng = np.random.default_rng(77)
    b, h, g, t, d, nq = 2, 2, 3, 50, 64, 9
    k, v = _kv(rng, b, h, t, d)
    nk, nv = _kv(rng, b, h, nq, d)
    q = rng.standard_normal((b, g * h, nq, d)).astype(np.float32)
    cache = _cache(key, value, d, window=8, seed=3)
    cache.append(k, v)
    before = _fields_bytes(cache), len(cache)
    keys, values = cache.decoded()
    both = np.concatenate([keys, nk], axis=2), np.concatenate([values, nv], axis=2)
    tol = 1e-5 * float(np.max(np.abs(both[1])))
    out = cache.attention(q, new=(nk, nv))
    np.testing.assert_allclose(out, exact_attention(q, *both), rtol=0, atol=tol)
    s = cache.scores(q, new=(nk, nv))
    assert s.shape == (b, g * h, nq, t + nq) and np.all(np.isfinite(s[..., :t]))
    visible = np.isfinite(s[..., t:])  # the new tokens: causal among themselves
    assert np.array_equal(visible, np.broadcast_to(np.tri(nq, dtype=bool), visible.shape))
    assert (_fields_bytes(cache), len(cache)) == before
    empty = _cache(key, value, d, window=8, seed=3)
    np.testing.assert_allclose(
        empty.attention(q, new=(nk, nv)), exact_attention(q, nk, nv), rtol=0, atol=tol
    )


def test_attention_with_new_tokens_refuses_mismatches():
    rng = np.random.default_rng(78)
    cache = KVCache(32, window=4)
    k, v = _kv(rng, 1, 2, 10, 32)
    cache.append(k, v)
    nk, nv = _kv(rng, 1, 2, 3, 32)
    q = rng.standard_normal((1, 4, 3, 32)).astype(np.float32)
    with pytest.raises(ValueError, match="2 queries but 3 new tokens"):
        cache.attention(q[:, :, :2], new=(nk, nv))
    with pytest.raises(ValueError, match="kv heads"):
        cache.attention(q, new=(nk[:, :1], nv[:, :1]))
    with pytest.raises(ValueError, match="same shape"):
        cache.attention(q, new=(nk, nv[:, :, :2]))
    bad = nk.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cache.attention(q, new=(bad, nv))
    with pytest.raises(TypeError, match="pair"):
        cache.attention(q, new=nk)


def test_stepwise_attention_refuses_other_tokens_and_counts():
    """stepwise_attention needs the very tokens the cache holds, one query per token."""
    rng = np.random.default_rng(79)
    cache = KVCache(32, window=4)
    k, v = _kv(rng, 1, 2, 10, 32)
    cache.append(k, v)
    q = rng.standard_normal((1, 4, 10, 32)).astype(np.float32)
    assert cache.stepwise_attention(q, k, v).shape == (1, 4, 10, 32)
    with pytest.raises(ValueError, match="not the tokens"):
        cache.stepwise_attention(q, k + 1, v)
    with pytest.raises(ValueError, match="exactly the 9"):
        cache.stepwise_attention(q[:, :, :9], k[:, :, :9], v[:, :, :9])
    with pytest.raises(ValueError, match="9 queries for 10 tokens"):
        cache.stepwise_attention(q[:, :, :9], k, v)


# -- 2. an independent oracle ------------------------------------------------------------------------
def _oracle_attention(q, k, v, scale=None):
    """Causal grouped-query attention, one batch / query head / position at a time, in float64.

    Query head ``hq`` reads kv head ``hq // G``; query ``i`` of ``nq`` sits at
    position ``N - nq + i`` and sees keys ``0..N - nq + i``.
    """
    b_, hq_, nq, d = q.shape
    n, h = k.shape[2], k.shape[1]
    group = hq_ // h
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = np.zeros((b_, hq_, nq, d))
    for b in range(b_):
        for hq in range(hq_):
            kv = hq // group
            for i in range(nq):
                pos = n - nq + i
                logits = []
                for t in range(pos + 1):
                    dot = 0.0
                    for j in range(d):
                        dot += float(q[b, hq, i, j]) * float(k[b, kv, t, j])
                    logits.append(scale * dot)
                top = max(logits)
                weights = [math.exp(s - top) for s in logits]
                total = sum(weights)
                for t, w in enumerate(weights):
                    out[b, hq, i] += (w / total) * v[b, kv, t].astype(np.float64)
    return out


@pytest.mark.parametrize(
    "window, nq",
    [(4, 1), (4, 3), (4, 10), (4, 20), (0, 7), (32, 20), (20, 20)],
    ids=["decode", "nq<window", "nq>window", "nq=all", "window0", "all-in-window", "window=all"],
)
def test_uncompressed_cache_and_exact_attention_match_the_loop_oracle(window, nq):
    """KVCache("none", float32 window) and exact_attention equal the loop oracle.

    Nothing is rounded on the cache side (float32 storage of float32 input), so
    the only difference is float32 vs float64 arithmetic of O(1) logits over
    16-term dot products: 1e-5 relative to max|v| is ~100x float32 eps and far
    below any indexing error (a wrong kv head, mask or position moves outputs
    by O(0.1)).  Cases: a decode step, queries inside the window, queries
    spanning compressed tokens (nq > window), every token a query, window 0,
    and a window holding every token.
    """
    rng = np.random.default_rng(7 + window + nq)
    b, h, g, t, d = 2, 2, 3, 20, 16
    k, v = _kv(rng, b, h, t, d)
    q = rng.standard_normal((b, g * h, nq, d)).astype(np.float32)
    cache = KVCache(d, "none", 0, "none", 0, window=window, window_dtype="float32")
    cache.append(k, v)
    assert cache.compressed_tokens == max(0, t - window)
    expected = _oracle_attention(q, k, v)
    tol = 1e-5 * float(np.max(np.abs(v)))
    np.testing.assert_allclose(cache.attention(q), expected, rtol=0, atol=tol)
    np.testing.assert_allclose(exact_attention(q, k, v), expected, rtol=0, atol=tol)
    np.testing.assert_allclose(
        cache.attention(q, scale=0.5), _oracle_attention(q, k, v, 0.5), rtol=0, atol=tol
    )


def test_scores_are_scaled_and_causally_masked():
    """cache.scores: scale * <q, k> on visible keys, -inf exactly on the future (oracle loops)."""
    rng = np.random.default_rng(8)
    b, h, g, t, d, nq = 1, 2, 2, 12, 8, 5
    k, v = _kv(rng, b, h, t, d)
    q = rng.standard_normal((b, g * h, nq, d)).astype(np.float32)
    cache = KVCache(d, "none", 0, "none", 0, window=3, window_dtype="float32")
    cache.append(k, v)
    s = cache.scores(q)
    assert s.shape == (b, g * h, nq, t)
    for hq in range(g * h):
        for i in range(nq):
            for j in range(t):
                if j > t - nq + i:
                    assert s[0, hq, i, j] == -np.inf
                else:
                    exact = float(q[0, hq, i].astype(np.float64) @ k[0, hq // g, j]) / math.sqrt(d)
                    assert s[0, hq, i, j] == pytest.approx(exact, abs=1e-5)


# -- 3. append semantics -----------------------------------------------------------------------------
SPLIT_CASES = {
    "turboquant-mse": (("turboquant-mse", 4, None), ("turboquant-mse", 4, None)),
    "qjl-outliers": (("qjl", 2, {"group_size": 32}), ("turboquant-mse", 3, None)),
    "kivi": (("kivi", 2, {"group_size": 32}), ("kivi", 2, None)),
    "polarquant": (("polarquant", (4, 2, 2, 2), None), ("polarquant", (3, 2, 2, 2), None)),
}


def _chunkings(rng, t):
    """One prefill, one token at a time, and random chunk sizes 1..20 (all summing to t)."""
    sizes = []
    while sum(sizes) < t:
        sizes.append(int(min(rng.integers(1, 21), t - sum(sizes))))
    return {"prefill": [t], "token-by-token": [1] * t, "random": sizes}


def _fill(cache, k, v, sizes):
    start = 0
    for n in sizes:
        cache.append(k[:, :, start : start + n], v[:, :, start : start + n])
        start += n
    return cache


@pytest.mark.parametrize("name", sorted(SPLIT_CASES))
def test_codes_do_not_depend_on_how_tokens_were_appended(name):
    """A prefill, token-by-token decoding and random chunks give byte-identical caches.

    The cache compresses each token (or aligned group of 32) once, from the
    window's stored copy, so every field and every attention output must be
    bitwise equal whatever the split; 100 tokens with window 16 flush 64
    tokens for group-32 codecs and 84 for per-token ones.
    """
    key, value = SPLIT_CASES[name]
    rng = np.random.default_rng(17)
    k, v = _kv(rng, 1, 2, 100, 64)
    q = rng.standard_normal((1, 4, 6, 64)).astype(np.float32)
    results = {}
    for label, sizes in _chunkings(rng, 100).items():
        cache = _fill(_cache(key, value, 64, window=16, seed=2), k, v, sizes)
        results[label] = (
            _fields_bytes(cache),
            cache.decoded()[0].tobytes(),
            cache.decoded()[1].tobytes(),
            cache.attention(q),
            (len(cache), cache.compressed_tokens, cache.window_tokens, cache.nbytes),
        )
    ref = results.pop("prefill")
    assert ref[4][1] == (64 if name in ("qjl-outliers", "kivi") else 84)
    for label, res in results.items():
        assert res[0] == ref[0], label
        assert res[1] == ref[1] and res[2] == ref[2], label
        np.testing.assert_array_equal(res[3], ref[3], err_msg=label)
        assert res[4] == ref[4], label


@pytest.mark.parametrize("bits", [2.5, 3.5])
def test_channel_split_codes_do_not_depend_on_how_tokens_were_appended(bits):
    """The cache's contract (module docstring) also binds TurboQuant's fractional-bit split.

    ``"turboquant-mse"`` at ``k + 0.5`` bits chooses its outlier channels once,
    "from the first block of tokens the codec encodes" (outliers.py).  That
    block is whatever the first flush holds: 84 tokens after one prefill, one
    token when decoding token by token.  The cache promises that "the codes do
    not depend on how the tokens were split into appends (a prefill or token by
    token gives the same bytes)"; with a channel profile that differs between
    the first token and the rest, the two must still agree.
    """
    rng = np.random.default_rng(23)
    k, v = _kv(rng, 1, 2, 100, 64)
    k[:, :, 1:, :16] *= 4.0  # channels 0..15 dominate every token but the first
    results = []
    for sizes in ([100], [1] * 100):
        cache = _fill(
            KVCache(64, "turboquant-mse", bits, "turboquant-mse", bits, window=16), k, v, sizes
        )
        results.append(_fields_bytes(cache))
    assert results[0] == results[1]


def _all_fields(cache):
    return {**cache.key_fields(), **{"v." + n: a for n, a in cache.value_fields().items()}}


@pytest.mark.parametrize("name", sorted(SPLIT_CASES))
def test_history_is_never_requantized(name):
    """Fields snapshotted after N tokens are bitwise the first items of the fields after more appends.

    Also: the views handed out are read-only, so a caller cannot alter the history.
    """
    key, value = SPLIT_CASES[name]
    rng = np.random.default_rng(29)
    k, v = _kv(rng, 1, 2, 160, 64)
    cache = _cache(key, value, 64, window=8, seed=4)
    cache.append(k[:, :, :70], v[:, :, :70])
    snap = {n: a.copy() for n, a in _all_fields(cache).items()}
    assert snap and all(a.shape[1] > 0 for a in snap.values())
    for start in range(70, 160, 9):
        cache.append(k[:, :, start : start + 9], v[:, :, start : start + 9])
        now = _all_fields(cache)
        for n, a in snap.items():
            assert now[n].shape[1] >= a.shape[1]
            np.testing.assert_array_equal(now[n][:, : a.shape[1]], a, err_msg=n)
    fields = cache.key_fields()
    with pytest.raises(ValueError):
        next(iter(fields.values()))[0, 0] = 0


@pytest.mark.parametrize(
    "key, window",
    [
        (("turboquant-mse", 3, None), 0),
        (("turboquant-mse", 3, None), 5),
        (("polarquant", (3, 2, 2, 2), None), 16),
        (("kivi", 2, None), 0),
        (("kivi", 2, None), 5),
        (("qjl", 2, None), 16),
    ],
)
def test_window_and_compressed_token_counts(key, window):
    """After every append of random size (1..20 tokens, 200 in all):

    * ``len == compressed_tokens + window_tokens`` == tokens appended so far;
    * nothing is compressed while ``len <= window``;
    * once ``len > window``: ``window <= window_tokens <= window + group - 1``,
      and ``compressed_tokens`` is a multiple of ``group`` (aligned groups);
    * ``window = 0`` with a per-token codec (group 1) compresses everything.
    """
    rng = np.random.default_rng(31 + window)
    k, v = _kv(rng, 1, 2, 200, 64)
    cache = _cache(key, ("turboquant-mse", 2, None), 64, window=window)
    group = cache.group
    assert group == (32 if key[0] in ("kivi", "qjl") else 1)
    assert len(cache) == 0 and cache.compressed_tokens == 0 and cache.window_tokens == 0
    total = 0
    for n in _chunkings(rng, 200)["random"]:
        cache.append(k[:, :, total : total + n], v[:, :, total : total + n])
        total += n
        assert len(cache) == total == cache.compressed_tokens + cache.window_tokens
        assert cache.compressed_tokens % group == 0
        if total <= window:
            assert cache.compressed_tokens == 0
        else:
            assert window <= cache.window_tokens <= window + group - 1
        if window == 0 and group == 1:
            assert cache.window_tokens == 0 and cache.compressed_tokens == total


# -- 4. bad input --------------------------------------------------------------------------------------
def _snapshot(cache, q):
    return (
        len(cache),
        cache.compressed_tokens,
        cache.window_tokens,
        cache.nbytes,
        cache.memory(),
        _fields_bytes(cache),
        [a.tobytes() for a in cache.decoded()],
        cache.attention(q).tobytes(),
    )


def _filled_cache(rng, **kwargs):
    cache = KVCache(32, "turboquant-mse", 3, "kivi", 2, window=4, **kwargs)
    k, v = _kv(rng, 2, 2, 20, 32)
    cache.append(k, v)
    return cache


class _TensorLike:
    """Quacks like a torch tensor: converts with ``np.asarray`` but is not a NumPy array."""

    def __init__(self, a):
        self._a = a
        self.shape, self.dtype = a.shape, a.dtype

    def __array__(self, dtype=None, copy=None):
        return self._a if dtype is None else self._a.astype(dtype)


def _good(shape=(2, 2, 3, 32)):
    return np.random.default_rng(99).standard_normal(shape).astype(np.float32)


def _with(value, index=(0, 0, 1, 3)):
    a = _good()
    a[index] = value
    return a


BAD_APPENDS = [
    ("shape-mismatch", lambda: (_good(), _good((2, 2, 4, 32))), ValueError, "same shape"),
    ("head-dim", lambda: (_good((2, 2, 3, 16)),) * 2, ValueError, "head_dim"),
    ("3-d", lambda: (_good()[0],) * 2, ValueError, r"batch, kv_heads, tokens, head_dim"),
    ("5-d", lambda: (_good()[None],) * 2, ValueError, r"batch, kv_heads, tokens, head_dim"),
    ("int-dtype", lambda: (_good().astype(np.int32),) * 2, TypeError, "floating"),
    ("bool-dtype", lambda: (_good() > 0,) * 2, TypeError, "floating"),
    ("nan-keys", lambda: (_with(np.nan), _good()), ValueError, "NaN or Inf"),
    ("inf-values", lambda: (_good(), _with(np.inf)), ValueError, "NaN or Inf"),
    ("list", lambda: (_good().tolist(), _good()), TypeError, "must be an array"),
    ("tensor-like", lambda: (_good(), _TensorLike(_good())), TypeError, "must be an array"),
    ("other-batch", lambda: (_good((1, 2, 3, 32)),) * 2, ValueError, "batch"),
    ("other-heads", lambda: (_good((2, 3, 3, 32)),) * 2, ValueError, "kv heads"),
    ("zero-tokens", lambda: (_good((2, 2, 0, 32)),) * 2, ValueError, "at least one token"),
    ("fp16-overflow-keys", lambda: (_with(7e4), _good()), ValueError, "window_dtype"),
    ("fp16-overflow-values", lambda: (_good(), _with(-1e5)), ValueError, "window_dtype"),
    # rounds to 65504 in float16, yet beyond its range: refused as before the one-read check
    ("fp16-just-beyond", lambda: (_with(65510.0), _good()), ValueError, "window_dtype"),
    # several problems: NaN/Inf of either block is named first, then ranges (as check by check)
    ("nan-and-overflow", lambda: (_with(7e4), _with(np.nan)), ValueError, "values contain NaN"),
]


@pytest.mark.parametrize(
    "make, error, match", [c[1:] for c in BAD_APPENDS], ids=[c[0] for c in BAD_APPENDS]
)
def test_bad_append_raises_and_leaves_the_cache_unchanged(make, error, match):
    """Each bad append raises the documented error and changes nothing observable.

    The cache holds 20 tokens (16 compressed, 4 in the window); length, bytes,
    memory parts, every field, the decoded cache and an attention output are
    compared bitwise before and after.
    """
    rng = np.random.default_rng(41)
    cache = _filled_cache(rng)
    q = rng.standard_normal((2, 4, 3, 32)).astype(np.float32)
    before = _snapshot(cache, q)
    keys, values = make()
    with pytest.raises(error, match=match):
        cache.append(keys, values)
    assert _snapshot(cache, q) == before


def test_fp16_overflow_is_accepted_with_a_float32_window():
    """The error above names the fix: window_dtype="float32" holds 7e4 in the window exactly."""
    cache = KVCache(32, "none", 0, "none", 0, window=8, window_dtype="float32")
    keys = _with(7e4)
    cache.append(keys, _good())
    np.testing.assert_array_equal(cache.decoded()[0], keys)


def _failing(codec, monkeypatch):
    """Make ``codec.encode`` raise after doing its work (a flush that fails late)."""
    encode = codec.encode

    def fail(x):
        encode(x)
        raise ValueError("injected failure")

    monkeypatch.setattr(codec, "encode", fail)


def test_failed_flush_leaves_the_cache_unchanged(monkeypatch):
    """A flush that fails (here: an injected failure of the value codec) is atomic.

    Keys encode first and succeed, values fail: nothing may change.  (No real
    input fails at flush any more: tokens a codec could not store are refused
    at append, see ``test_token_beyond_storage_is_refused_at_append``.)
    """
    rng = np.random.default_rng(43)
    cache = KVCache(32, "turboquant-mse", 3, "turboquant-mse", 3, window=4, window_dtype="float32")
    k, v = _kv(rng, 2, 2, 30, 32)
    cache.append(k[:, :, :10], v[:, :, :10])
    q = rng.standard_normal((2, 2, 2, 32)).astype(np.float32)
    before = _snapshot(cache, q)
    _failing(cache.value_codec, monkeypatch)
    with pytest.raises(ValueError, match="injected failure"):
        cache.append(k[:, :, 10:30], v[:, :, 10:30])
    assert _snapshot(cache, q) == before


def test_failed_flush_leaves_the_channel_split_unchosen(monkeypatch):
    """Atomic appends include the codecs' data-dependent state.

    TurboQuant's channel split (keys at 2.5 bits) chooses its outlier channels
    from its first 32 tokens.  If that first flush fails on the values,
    the cache must be as if the append never happened: a later identical
    history must give the same codes as a fresh cache.
    """
    rng = np.random.default_rng(47)
    k, v = _kv(rng, 1, 2, 80, 64)
    bad_k = k[:, :, :40].copy()
    bad_k[..., :16] *= 50.0  # a channel profile unlike the later tokens'
    kwargs = dict(window=4, window_dtype="float32")
    failed = KVCache(64, "turboquant-mse", 2.5, "turboquant-mse", 4, **kwargs)
    with monkeypatch.context() as m:
        _failing(failed.value_codec, m)
        with pytest.raises(ValueError, match="injected failure"):
            failed.append(bad_k, v[:, :, :40])  # 36 tokens leave the window: one group
    assert len(failed) == 0 and failed.key_codec.channels is None
    fresh = KVCache(64, "turboquant-mse", 2.5, "turboquant-mse", 4, **kwargs)
    for cache in (failed, fresh):
        cache.append(k[:, :, 40:], v[:, :, 40:])
    assert _fields_bytes(failed) == _fields_bytes(fresh)


# -- tokens at the edges of the storage range: refused at append, or always compressed -----------
#: (role, method, bits, window_dtype, coordinate value of the planted token, options, the fix).
#: Each planted token fits the window but not what the codec stores when it leaves it.
BEYOND_STORAGE = [
    ("value", "turboquant-mse", 3, "float32", 2e4, None, {"norm_dtype": "float32"}),  # norm 1.1e5
    ("key", "qjl", 2, "float16", 2e4, None, {"norm_dtype": "float32"}),  # fp16 window
    ("key", "polarquant-qjl", (4, 2, 2, 2), "float16", 6e3, None, {"radius_dtype": "float32"}),
    ("key", "turboquant-mse", 2.5, "float32", 2e4, None, {"norm_dtype": "float32"}),
    ("value", "fp8", 8, "float16", 1e3, None, {"scaling": "token"}),
    ("value", "kivi", 1, "float16", 4e4, None, None),
    ("key", "hadamard-rtn", 2, "float32", 1e5, None, None),
    ("value", "none", 0, "float32", 1e5, {"dtype": "float16"}, {"dtype": "float32"}),
]


@pytest.mark.parametrize(
    "role, method, bits, window_dtype, value, options, fix",
    BEYOND_STORAGE,
    ids=[f"{c[1]}-{c[0]}s" for c in BEYOND_STORAGE],
)
def test_token_beyond_storage_is_refused_at_append(
    role, method, bits, window_dtype, value, options, fix
):
    """Issue 10, defect 2 (large side): a token the window holds but its codec could not store.

    Before the fix the token was accepted into the window and the error came
    when it left it; that flush then failed at every later append (the cache
    was stuck).  Now the append that brings the token is refused, atomically,
    naming the token, its stream and the option that stores it; the cache keeps
    working; and with that option the same history is accepted.
    """
    rng = np.random.default_rng(59)
    k, v = _kv(rng, 1, 2, 40, 32)
    planted = k if role == "key" else v
    planted[0, 1, 12] = value  # every coordinate: norm sqrt(32) * value
    spec = {f"{role}_method": method, f"{role}_bits": bits, f"{role}_options": options}
    other = "value" if role == "key" else "key"
    spec.update({f"{other}_method": "turboquant-mse", f"{other}_bits": 3})
    cache = KVCache(32, **spec, window=4, window_dtype=window_dtype)
    cache.append(k[:, :, :10], v[:, :, :10])
    q = rng.standard_normal((1, 2, 1, 32)).astype(np.float32)
    before = _snapshot(cache, q)
    with pytest.raises(ValueError, match=r"token 12 \(batch 0, kv head 1\)") as err:
        cache.append(k[:, :, 10:14], v[:, :, 10:14])
    if fix:
        assert f"{role}_options={fix!r}" in str(err.value)
    assert _snapshot(cache, q) == before
    for t in range(14, 40):  # the cache is not stuck: the tokens after it are appended
        cache.append(k[:, :, t : t + 1], v[:, :, t : t + 1])
    if fix:
        spec[f"{role}_options"] = fix
        fixed = KVCache(32, **spec, window=4, window_dtype=window_dtype)
        for t in range(40):
            fixed.append(k[:, :, t : t + 1], v[:, :, t : t + 1])
        assert len(fixed) == 40 and fixed.compressed_tokens >= 32  # groups of 1 or 32


@pytest.mark.parametrize(
    "spec",
    [
        dict(key_method="none", value_method="none", key_bits=None, value_bits=None),
        dict(key_options={"norm_dtype": "float32"}, value_options={"norm_dtype": "float32"}),
    ],
    ids=["none", "turboquant-mse"],
)
def test_float64_beyond_float32_is_refused_by_a_float32_window(spec):
    """A float64 value beyond float32's range (3.4e38) cannot be held by a float32 window.

    Before the fix it became ``inf`` there: with full-precision methods
    attention returned NaN silently, with a codec the flush failed later on an
    "x contains NaN or Inf" the caller never passed.  Now the append is refused,
    naming the range, and the cache is unchanged and keeps working.
    """
    rng = np.random.default_rng(71)
    k, v = _kv(rng, 1, 2, 12, 32, dtype=np.float64)
    cache = KVCache(32, window=2, window_dtype="float32", **spec)
    cache.append(k[:, :, :6], v[:, :, :6])
    q = rng.standard_normal((1, 2, 1, 32)).astype(np.float32)
    before = _snapshot(cache, q)
    big = k[:, :, 6:8].copy()
    big[0, 1, 1, 5] = -1e39
    with pytest.raises(ValueError, match=r"keys: values up to 1e\+39 exceed the float32 range"):
        cache.append(big, v[:, :, 6:8])
    assert _snapshot(cache, q) == before
    cache.append(k[:, :, 6:], v[:, :, 6:])
    assert len(cache) == 12 and np.all(np.isfinite(cache.attention(q)))


def test_large_coordinate_of_a_storable_token_is_accepted():
    """The append's one-read bound (every norm <= peak * sqrt(d)) never refuses by itself.

    A token with one coordinate of 2e4 and the rest N(0, 1) has a norm near
    2e4, below float16 norms' limit (65504 less a 2**-10 margin), though the
    bound 2e4 * sqrt(32) = 1.1e5 is above it: the norms are then computed and
    the token is accepted and its norm stored to float16 rounding (relative
    error <= 2**-11); 2e4 in every coordinate (norm 1.1e5) is refused, as ``test_token_beyond_storage_is_refused_at_append`` shows.
    """
    rng = np.random.default_rng(73)
    k, v = _kv(rng, 1, 2, 20, 32)
    v[0, 1, 3, 7] = 2e4
    cache = KVCache(32, "turboquant-mse", 3, "turboquant-mse", 3, window=4, window_dtype="float32")
    cache.append(k, v)
    assert cache.compressed_tokens == 16
    stored = float(cache.value_fields()["norms"][1, 3])  # stream (batch 0, head 1), token 3
    true = float(np.linalg.norm(v[0, 1, 3].astype(np.float64)))
    assert abs(stored - true) <= 2.0**-11 * true  # float16 rounding, nothing else


@pytest.mark.parametrize("pair", PAIRS, ids=[f"{_case_id(k)}/{_case_id(v)}" for k, v in PAIRS])
@pytest.mark.parametrize("norm", [1e-5, 1e-30])
def test_tiny_tokens_never_block_the_cache(pair, norm):
    """Issue 10, defect 2: a key or value of norm below float16's smallest normal (6.1e-5).

    Before the fix it was accepted into the window, and when it had to be
    compressed every later append raised the same error (float16 norms
    refused it), forever.  Now every method compresses it: 40 one-token
    appends into a window of 4 all succeed and attention stays finite.  With
    a float32 window, 1e-30 also reaches the codecs (float16 flushes it to 0).
    """
    (km, kb, ko), (vm, vb, vo) = pair
    rng = np.random.default_rng(61)
    k, v = _kv(rng, 1, 2, 40, 64)
    for a in (k, v):
        a[0, 1, 3] *= norm / np.linalg.norm(a[0, 1, 3])
    cache = _cache(pair[0], pair[1], 64, window=4, window_dtype="float32")
    for t in range(40):
        cache.append(k[:, :, t : t + 1], v[:, :, t : t + 1])
    assert len(cache) == 40 and cache.compressed_tokens >= 32  # groups of 1 or 32
    q = rng.standard_normal((1, 4, 1, 64)).astype(np.float32)
    assert np.all(np.isfinite(cache.attention(q)))


def test_tiny_token_is_stored_with_a_subnormal_norm():
    """What the cache stores for a tiny TurboQuant_mse token: its codes and a float16 subnormal norm.

    TurboQuant's codes depend on ``x / ||x||`` only, so the tiny token has the
    codes of the same token scaled by 2**20 (an exact scaling); its norm is
    float16 of the float32 norm, a subnormal (absolute error <= 2**-25), and
    every other token's bytes are those of the quantizer itself.
    """
    rng = np.random.default_rng(67)
    x = rng.standard_normal((1, 1, 8, 64)).astype(np.float32)
    x[0, 0, 5] *= np.float32(2.0**-20)  # norm ~8e-6
    cache = KVCache(64, "turboquant-mse", 4, "none", 0, window=0, window_dtype="float32")
    cache.append(x, x)
    f = cache.key_fields()
    tq = cache.key_codec.quantizer
    ref = tq.encode(np.delete(x[0, 0], 5, axis=0))  # the ordinary tokens, by the quantizer
    np.testing.assert_array_equal(np.delete(f["codes"][0], 5, axis=0), ref.fields["codes"])
    np.testing.assert_array_equal(np.delete(f["norms"][0], 5, axis=0), ref.fields["norms"])
    scaled = tq.encode(x[0, 0, 5] * np.float32(2.0**20))
    np.testing.assert_array_equal(f["codes"][0, 5], scaled.fields["codes"])
    norm = np.linalg.norm(x[0, 0, 5].astype(np.float64))
    assert f["norms"][0, 5] == np.float16(np.float32(norm)) and 0 < f["norms"][0, 5] < 6.1e-5
    assert abs(float(f["norms"][0, 5]) - norm) <= 2.0**-25


def test_tiny_polar_radii_of_an_ordinary_key_are_stored():
    """Issue 10, defect 2 (derived scalars): a unit key whose rotated form is an axis.

    All but one of its PolarQuant radii are float32 round-off (~1e-8): the
    quantizer alone refuses them ("radii as small as ..."), and before the fix
    the cache got stuck on this key although its norm is 1.  The cache stores
    such radii as float16 subnormals: the key decodes as the quantizer with
    float32 radii decodes it, within 2**-25 per radius.
    """
    d = 64  # a float32 window: float16 would round the key, and its round-off radii are ~1e-4
    cache = KVCache(d, "polarquant", (4, 2, 2, 2), "none", 0, window=0, window_dtype="float32")
    pq_ = cache.key_codec.quantizer
    axis = np.zeros((1, d), np.float32)
    axis[0, 7] = 1.0
    key = pq_.rotation.inverse(axis).astype(np.float32)
    with pytest.raises(ValueError, match="radii as small as"):
        pq_.encode(key)
    cache.append(key[None, None], key[None, None])
    wide = polarquant.PolarQuant(d, 4, (4, 2, 2, 2), radius_dtype="float32")
    expected = wide.decode(wide.encode(key))
    np.testing.assert_allclose(cache.decoded()[0][0, 0], expected, rtol=0, atol=1e-7)


BAD_QUERIES = [
    ("heads-not-multiple", (2, 3, 1, 32), ValueError, "multiple"),
    ("nq-above-tokens", (2, 4, 21, 32), ValueError, "21 queries"),
    ("head-dim", (2, 4, 1, 16), ValueError, "head_dim"),
    ("batch", (1, 4, 1, 32), ValueError, "batch"),
    ("3-d", (4, 1, 32), ValueError, "q_heads"),
]


@pytest.mark.parametrize(
    "shape, error, match", [c[1:] for c in BAD_QUERIES], ids=[c[0] for c in BAD_QUERIES]
)
def test_bad_queries_raise(shape, error, match):
    """Queries are checked against the cache (2 kv heads, 20 tokens, head_dim 32), same for scores."""
    cache = _filled_cache(np.random.default_rng(53))
    q = np.ones(shape, np.float32)
    with pytest.raises(error, match=match):
        cache.attention(q)
    with pytest.raises(error, match=match):
        cache.scores(q)


def test_queries_of_wrong_type_or_not_finite_raise():
    cache = _filled_cache(np.random.default_rng(59))
    q = np.ones((2, 4, 1, 32), np.float32)
    with pytest.raises(TypeError, match="must be an array"):
        cache.attention(q.tolist())
    with pytest.raises(TypeError, match="floating"):
        cache.attention(q.astype(np.int64))
    q[0, 1, 0, 5] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        cache.attention(q)


def test_empty_cache_refuses_attention():
    cache = KVCache(32)
    q = np.ones((1, 1, 1, 32), np.float32)
    for call in (cache.attention, cache.scores):
        with pytest.raises(ValueError, match="empty"):
            call(q)
    with pytest.raises(ValueError, match="empty"):
        cache.decoded()
    assert len(cache) == 0 and cache.bits_per_coordinate == 0.0


@pytest.mark.parametrize("role", ["key", "value"])
def test_unknown_method_names_list_the_valid_ones(role):
    kwargs = {f"{role}_method": "turboquant"}
    with pytest.raises(ValueError, match="valid: ") as err:
        KVCache(64, **kwargs)
    valid = KEY_METHODS if role == "key" else VALUE_METHODS
    assert all(m in str(err.value) for m in valid)


@pytest.mark.parametrize("method", ["qjl", "turboquant-prod", "polarquant-qjl"])
def test_key_only_methods_are_refused_for_values_with_the_reason(method):
    """Unbiased inner-product estimators are key-only: the error says why and lists the valid values."""
    with pytest.raises(ValueError, match="valid: " + ", ".join(VALUE_METHODS)) as err:
        KVCache(64, "turboquant-mse", 4, method, 4)
    assert "unbiased" in str(err.value) and method in str(err.value)


@pytest.mark.parametrize("method", ["polarquant", "polarquant-qjl"])
@pytest.mark.parametrize("d, bits", [(72, (4, 2, 2, 2)), (80, (4, 2, 2, 2, 2))])
def test_polarquant_head_dim_restriction_is_explained(method, d, bits):
    """PolarQuant needs head_dim a multiple of 2**levels (algorithms.md Sec. 3): 80 = 16 * 5 works
    with 4 levels (tested above), 72 does not, nor 80 with 5 levels; the error says why."""
    with pytest.raises(ValueError, match=f"divisible by 2\\*\\*levels = {2 ** len(bits)}"):
        KVCache(d, method, bits, "none", 0, key_options={"levels": len(bits)})


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="window_dtype"):
        KVCache(64, window_dtype="bfloat16")
    with pytest.raises(ValueError, match="window"):
        KVCache(64, window=-1)
    with pytest.raises(TypeError, match="window"):
        KVCache(64, window=2.5)


# -- 5. accounting ------------------------------------------------------------------------------------
def test_turboquant_mse_bytes_follow_the_layout_formula():
    """TurboQuant_mse 4 bits, head_dim 128, window 0: 66 bytes per vector, two 8-byte seeds.

    Per key or value: 128 * 4 bits = 64 code bytes + a float16 norm = 66
    bytes; B*H = 6 streams, T = 37 tokens, keys and values:
    nbytes = 2 * 6 * 37 * 66 + 16.  fp16 would hold 2 * 6 * 37 * 128 * 2 bytes.
    """
    rng = np.random.default_rng(61)
    b, h, t, d = 2, 3, 37, 128
    cache = KVCache(d, "turboquant-mse", 4, "turboquant-mse", 4, window=0)
    k, v = _kv(rng, b, h, t, d)
    for s in range(0, t, 5):  # growing storage: spare capacity is not counted
        cache.append(k[:, :, s : s + 5], v[:, :, s : s + 5])
    assert cache.nbytes == 2 * b * h * t * 66 + 16
    assert cache.memory() == {
        "key_codes": b * h * t * 66,
        "value_codes": b * h * t * 66,
        "window": 0,
        "state": 16,
        "total": cache.nbytes,
    }
    coords = 2 * b * h * t * d
    assert cache.coordinates == coords
    assert cache.bits_per_coordinate == 8 * cache.nbytes / coords
    assert cache.fp16_ratio == 2 * coords / cache.nbytes
    assert cache.key_bits_per_coordinate == cache.value_bits_per_coordinate == 66 * 8 / 128


def test_window_tokens_cost_two_bytes_per_coordinate():
    """With a window of 16 (fp16) and per-token codecs: nbytes = codes + 2 * 2 * B*H*16*d + seeds."""
    rng = np.random.default_rng(67)
    b, h, t, d, w = 1, 2, 50, 128, 16
    cache = KVCache(d, "turboquant-mse", 4, "turboquant-mse", 4, window=w)
    cache.append(*_kv(rng, b, h, t, d))
    assert cache.window_tokens == w
    assert cache.memory()["window"] == 2 * b * h * w * d * 2
    assert cache.nbytes == 2 * b * h * (t - w) * 66 + 2 * b * h * w * d * 2 + 16
    f32 = KVCache(d, "turboquant-mse", 4, "turboquant-mse", 4, window=w, window_dtype="float32")
    f32.append(*_kv(rng, b, h, t, d))
    assert f32.memory()["window"] == 2 * b * h * w * d * 4


@pytest.mark.parametrize("window_dtype, ratio", [("float16", 1.0), ("float32", 0.5)])
def test_uncompressed_cache_ratio_is_exact(window_dtype, ratio):
    """Method "none" stores tokens at the window dtype with no state: exactly the fp16 cache (or twice it)."""
    cache = KVCache(80, "none", 0, "none", 0, window=8, window_dtype=window_dtype)
    cache.append(*_kv(np.random.default_rng(71), 2, 2, 30, 80))
    assert cache.compressed_tokens == 22
    assert cache.fp16_ratio == ratio
    assert cache.bits_per_coordinate == 16 / ratio


@pytest.mark.parametrize("pair", PAIRS, ids=[f"{_case_id(k)}/{_case_id(v)}" for k, v in PAIRS])
def test_nbytes_is_the_sum_of_its_parts(pair):
    """nbytes = field bytes + window bytes + codec state; per-coordinate bits match the fields.

    B*H = 4 streams, 100 tokens, window 8 (then 64 or 92 compressed tokens,
    a multiple of every codec's group), head_dim 96.
    """
    key, value = pair
    rng = np.random.default_rng(73)
    b, h, t, d = 2, 2, 100, 96
    cache = _cache(key, value, d, window=8)
    cache.append(*_kv(rng, b, h, t, d))
    n, streams = cache.compressed_tokens, b * h
    kbytes = sum(a.nbytes for a in cache.key_fields().values())
    vbytes = sum(a.nbytes for a in cache.value_fields().values())
    itemsize = 2  # float16 window
    win = 2 * streams * cache.window_tokens * d * itemsize
    state = cache.key_codec.state_nbytes(streams) + cache.value_codec.state_nbytes(streams)
    assert cache.memory() == {
        "key_codes": kbytes,
        "value_codes": vbytes,
        "window": win,
        "state": state,
        "total": kbytes + vbytes + win + state,
    }
    assert cache.nbytes == kbytes + vbytes + win + state
    assert cache.key_bits_per_coordinate == pytest.approx(8 * kbytes / (streams * n * d), rel=1e-12)
    assert cache.value_bits_per_coordinate == pytest.approx(
        8 * vbytes / (streams * n * d), rel=1e-12
    )
    assert cache.bits_per_coordinate == pytest.approx(
        8 * cache.nbytes / (2 * streams * t * d), rel=1e-12
    )
    assert cache.fp16_ratio == pytest.approx(16 / cache.bits_per_coordinate, rel=1e-12)


# -- 6. unbiasedness through the cache -----------------------------------------------------------------
def _scores_over_seeds(method, bits, seeds, d=64, rho=0.6, options=None):
    """Unscaled score of query ``q`` against key 0 of a 32-token cache (window 0), one cache per seed.

    ``q, k`` are correlated (``<q, k> = rho ||q|| ||k||``, ||q|| = 2, ||k|| = 1.5)
    so that a multiplicative bias is visible; 31 other Gaussian keys fill the
    aligned group of 32 (QJL's outlier groups).  The query is the last token,
    so key 0 is visible.
    """
    rng = np.random.default_rng(79)
    q, k = correlated_pair(rng, d, rho)
    q, k = 2.0 * q, 1.5 * k
    keys = np.concatenate([k[None], rng.standard_normal((31, d))]).astype(np.float32)[None, None]
    values = np.zeros_like(keys)
    query = q.astype(np.float32)[None, None, None]
    est = []
    for s in seeds:
        cache = KVCache(
            d,
            method,
            bits,
            "none",
            0,
            window=0,
            window_dtype="float32",
            seed=s,
            key_options=options,
        )
        cache.append(keys, values)
        assert cache.compressed_tokens == 32
        est.append(float(cache.scores(query, scale=1.0)[0, 0, 0, 0]))
    return np.array(est), float(query[0, 0, 0].astype(np.float64) @ keys[0, 0, 0])


@pytest.mark.parametrize(
    "method, bits, options",
    [("turboquant-prod", 2, None), ("qjl", 1, None), ("qjl", 1, {"outliers": 0})],
    ids=["turboquant-prod-2", "qjl-outlier-groups", "qjl-plain"],
)
def test_qjl_based_keys_are_unbiased_through_the_cache(method, bits, options):
    """Mean of the cache's score over 2000 seeds within a 4-sigma CI of the exact <q, k>.

    Field-notes defect 2 (QJL bits stored but unused) would leave
    TurboQuant_prod at 2 bits with its 1-bit MSE stage only, whose mean is
    (1 - D_mse(1)) <q, k> = 0.64 <q, k> (TurboQuant Sec. 3.2); a QJL constant
    off by c moves the mean by |1 - c| <q, k>.  The interval half-width is
    asserted below 5% of <q, k> so such biases cannot hide in it.  Norms are
    stored in float16 (relative error <= 2^-11 = 0.05%), far inside the interval.
    """
    est, truth = _scores_over_seeds(method, bits, range(2000), options=options)
    half = 4 * est.std(ddof=1) / math.sqrt(est.size)
    assert half < 0.05 * abs(truth)
    assert abs(est.mean() - truth) < half


@pytest.mark.parametrize("bits", [1, 2])
def test_turboquant_mse_keys_carry_the_predicted_multiplicative_bias(bits):
    """E[<q, k_hat>] = (1 - D_mse(b)) <q, k> for TurboQuant_mse keys (TurboQuant Sec. 3.2).

    For a Haar rotation and a Lloyd-Max codebook (centroid condition
    E[y c(y)] = E[c(y)^2]), E_Q[k_hat] = (1 - D_mse) k exactly, with D_mse
    the codebook's per-vector distortion at this d
    (``TurboQuantMSE(d, b).expected_mse``: 0.358 at b = 1, 0.115 at b = 2,
    d = 64).  The mean ratio over 1500 seeds must lie within a 4-sigma CI of
    1 - D_mse, and that CI must exclude 1 (the bias is real and seen).
    """
    est, truth = _scores_over_seeds("turboquant-mse", bits, range(1500))
    ratio = est / truth
    half = 4 * ratio.std(ddof=1) / math.sqrt(ratio.size)
    expected = 1 - polarquant.TurboQuantMSE(64, bits).expected_mse
    assert abs(ratio.mean() - expected) < half
    assert 1 - expected > 3 * half  # a debiased or unbiased estimator would fail the first check


# -- 7. backends -----------------------------------------------------------------------------------------
def _numba_reason():
    from polarquant.backends import available

    return available().get("numba")


BACKEND_CASES = [
    (("turboquant-mse", 3, None), ("turboquant-mse", 3, None)),
    (("turboquant-prod", 3, None), ("polarquant", (4, 2, 2, 2), None)),
    (("qjl", 2, None), ("kivi", 2, None)),
    (("polarquant-qjl", (4, 2, 2, 2), None), ("hadamard-rtn", 4, None)),
    (("turboquant-mse", 2.5, None), ("turboquant-mse", 3.5, None)),
]


@pytest.mark.skipif(_numba_reason() is not None, reason=f"numba backend: {_numba_reason()}")
@pytest.mark.parametrize(
    "pair", BACKEND_CASES, ids=[f"{_case_id(k)}/{_case_id(v)}" for k, v in BACKEND_CASES]
)
def test_numba_backend_gives_the_same_bytes_and_attention(pair):
    """Same seed, same tokens: identical field bytes; attention within 1e-5 (float32 reductions)."""
    key, value = pair
    rng = np.random.default_rng(83)
    k, v = _kv(rng, 2, 2, 70, 64)
    q = rng.standard_normal((2, 6, 4, 64)).astype(np.float32)
    caches = {}
    for backend in ("numpy", "numba"):
        cache = _cache(key, value, 64, window=6, seed=5, backend=backend)
        for s in range(0, 70, 23):
            cache.append(k[:, :, s : s + 23], v[:, :, s : s + 23])
        caches[backend] = cache
    assert _fields_bytes(caches["numba"]) == _fields_bytes(caches["numpy"])
    np.testing.assert_allclose(
        caches["numba"].attention(q), caches["numpy"].attention(q), rtol=0, atol=1e-5
    )
    assert caches["numba"].nbytes == caches["numpy"].nbytes


# -- issue 10: scale, options, the arrays the cache takes -------------------------------------------
@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf"), 0.0, -0.125])
def test_scale_must_be_finite_and_positive(scale):
    """Issue 10, defect 3: ``scale=nan`` or ``inf`` returned an all-NaN output; now a ValueError.

    Checked for the cache's attention and scores, and for :func:`exact_attention`.
    """
    cache = _filled_cache(np.random.default_rng(71))
    q = np.ones((2, 4, 1, 32), np.float32)
    for call in (cache.attention, cache.scores):
        with pytest.raises(ValueError, match="scale must be a finite positive number"):
            call(q, scale=scale)
    k, v = _kv(np.random.default_rng(73), 2, 2, 5, 32)
    with pytest.raises(ValueError, match="scale must be a finite positive number"):
        exact_attention(q, k, v, scale=scale)


def test_scale_of_the_wrong_type_is_a_type_error():
    cache = _filled_cache(np.random.default_rng(79))
    with pytest.raises(TypeError, match="scale must be a real number"):
        cache.attention(np.ones((2, 4, 1, 32), np.float32), scale="0.1")


@pytest.mark.parametrize(
    "method, bits", [("turboquant-mse", 4), ("turboquant-mse", 2.5), ("qjl", 2), ("none", 0)]
)
def test_unknown_options_name_the_argument_and_the_valid_ones(method, bits):
    """Issue 10 (11, part): an unknown option named a private class (``_TurboQuant.__init__()``)
    or, for ``"none"``, was silently ignored; now a ValueError names ``key_options``."""
    with pytest.raises(ValueError, match=r"key_options for method .* unknown option\(s\) 'bogus'"):
        KVCache(32, method, bits, key_options={"bogus": 1})
    with pytest.raises(TypeError, match="value_options must be a dict"):
        KVCache(32, value_method=method, value_bits=bits, value_options=["norm_dtype"])


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid options: codebook, norm_dtype, rotation"):
        KVCache(32, value_options={"norm": "float32"})


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_torch_cpu_tensors_in_and_out(dtype):
    """Issue 10, What to build 5: the cache takes torch CPU tensors and answers in kind.

    Keys, values and queries as torch tensors of ``dtype`` give the codes and
    the attention of the same data as NumPy float32 (bfloat16 and float16
    values are exact in float32), returned as a torch tensor of the queries'
    dtype.
    """
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(83)
    k, v = _kv(rng, 1, 2, 24, 32)
    q = rng.standard_normal((1, 4, 2, 32)).astype(np.float32)
    tdt = getattr(torch, dtype)
    tk, tv, tq = (torch.from_numpy(a).to(tdt) for a in (k, v, q))
    k32, v32, q32 = (t.float().numpy() for t in (tk, tv, tq))  # the values the tensors hold
    caches = [KVCache(32, "turboquant-mse", 3, "polarquant", (4, 2, 2, 2), window=8) for _ in "ab"]
    caches[0].append(tk, tv)
    caches[1].append(k32, v32)
    assert _fields_bytes(caches[0]) == _fields_bytes(caches[1])
    out = caches[0].attention(tq)
    assert isinstance(out, torch.Tensor) and out.dtype == tdt and out.shape == (1, 4, 2, 32)
    ref = caches[1].attention(q32)
    np.testing.assert_array_equal(out.float().numpy(), torch.from_numpy(ref).to(tdt).float())
    s = caches[0].scores(tq)
    assert isinstance(s, torch.Tensor) and s.dtype == tdt
    e = exact_attention(tq, tk, tv)
    assert isinstance(e, torch.Tensor) and e.dtype == tdt


def test_torch_tensors_that_need_grad_are_detached():
    torch = pytest.importorskip("torch")
    k = torch.randn(1, 1, 4, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
    cache = KVCache(32, window=2)
    cache.append(k, k)
    out = cache.attention(k[:, :, -1:])
    assert not out.requires_grad


def test_tensors_off_the_host_are_refused():
    """No implicit transfer: a tensor on another device (here torch's ``meta``) is a TypeError."""
    torch = pytest.importorskip("torch")
    k = torch.empty(1, 1, 4, 32, device="meta")
    with pytest.raises(TypeError, match=r"keys is a torch tensor on meta.*keys.cpu\(\)"):
        KVCache(32).append(k, k)
