"""Attention fidelity (polarquant.kv.fidelity): the metrics, checked against loops and theory.

* an uncompressed float32 cache scores perfectly (errors 0, KL 0, top-k 1);
* every metric equals a per-row loop oracle on a small compressed cache;
* on the shipped SmolLM2-135M keys/values/queries, TurboQuant_mse errors fall
  with every added bit, and the mean squared score error matches the value
  derived from the codebook's distortion (TurboQuant Sec. 3) within a
  confidence interval;
* :func:`compare_layers` returns one row per layer with the cache's accounting;
* KL is never negative beyond float32 rounding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import polarquant
from polarquant.codebooks import coordinate_codebook
from polarquant.kv import KVCache
from polarquant.kv.attention import causal_mask
from polarquant.kv.fidelity import METRICS, attention_fidelity, compare_layers


@pytest.fixture(scope="module")
def smollm2():
    """The three SmolLM2 layers as ``(keys, values, queries)`` with a batch axis, float16 as shipped."""
    data = polarquant.datasets.load_smollm2_kv()
    return [
        (k[None], v[None], q[None])
        for k, v, q in zip(data["keys"], data["values"], data["queries"], strict=True)
    ]


def _random_layer(rng, b=2, h=2, g=3, t=40, nq=6, d=32):
    k = rng.standard_normal((b, h, t, d)).astype(np.float32)
    v = rng.standard_normal((b, h, t, d)).astype(np.float32)
    q = rng.standard_normal((b, g * h, nq, d)).astype(np.float32)
    return k, v, q


# -- an uncompressed cache is perfect ------------------------------------------------------------------
def test_uncompressed_float32_cache_is_perfect(smollm2):
    """Method "none" with a float32 window holds the inputs exactly: every metric is ideal.

    The cache and the reference compute the same float32 logits by different
    routines (matmul vs einsum): a few ulps, i.e. relative 1e-6 at most
    (observed 1.5e-7), so score_rel_error and output_rel_error < 1e-6 and
    |KL| < 1e-6 (a KL of float32 rounding, which may be either sign at 1e-9).
    The 8 largest weights are separated by far more than rounding: overlap 1.
    Part of the tokens are compressed (window 16 of 192): "none" is then a
    codec storing float32, exercising the compressed path too.
    """
    for keys, values, queries in smollm2:
        cache = KVCache(64, "none", 0, "none", 0, window=16, window_dtype="float32")
        cache.append(keys, values)
        assert cache.compressed_tokens == 176
        m = attention_fidelity(cache, keys, values, queries)
        assert set(m) == set(METRICS)
        assert m["score_rel_error"] < 1e-6 and m["output_rel_error"] < 1e-6
        assert m["score_rmse"] < 1e-6 * 30  # logits up to ~30 nats on this data
        assert abs(m["kl"]) < 1e-6
        assert m["top_k_overlap"] == 1.0


# -- the metrics against a loop oracle ------------------------------------------------------------------
def _oracle_metrics(s, s_hat, o, o_hat, top_k):
    """Per query row, in float64, from the exact and approximate logits and outputs.

    ``s, s_hat (B, Hq, nq, N)`` with -inf on masked entries; ``o, o_hat (B, Hq, nq, d)``.
    """
    sq_err, sq_ref, kls, overlaps, rels = [], [], [], [], []
    for idx in np.ndindex(*s.shape[:-1]):
        row, row_hat = s[idx].astype(np.float64), s_hat[idx].astype(np.float64)
        visible = [t for t in range(row.size) if np.isfinite(row[t])]
        for t in visible:
            sq_err.append((row_hat[t] - row[t]) ** 2)
            sq_ref.append(row[t] ** 2)
        top, top_hat = max(row[visible]), max(row_hat[visible])
        p = {t: math.exp(row[t] - top) for t in visible}
        p_hat = {t: math.exp(row_hat[t] - top_hat) for t in visible}
        z, z_hat = sum(p.values()), sum(p_hat.values())
        p = {t: w / z for t, w in p.items()}
        p_hat = {t: w / z_hat for t, w in p_hat.items()}
        kls.append(sum(p[t] * (math.log(p[t]) - math.log(p_hat[t])) for t in visible if p[t] > 0))
        k = min(top_k, len(visible))
        best = set(sorted(visible, key=lambda t: -p[t])[:k])
        best_hat = set(sorted(visible, key=lambda t: -p_hat[t])[:k])
        overlaps.append(len(best & best_hat) / k)
        rels.append(np.linalg.norm(o_hat[idx] - o[idx]) / np.linalg.norm(o[idx]))
    rmse = math.sqrt(sum(sq_err) / len(sq_err))
    return {
        "score_rmse": rmse,
        "score_rel_error": rmse / math.sqrt(sum(sq_ref) / len(sq_ref)),
        "kl": sum(kls) / len(kls),
        "top_k_overlap": sum(overlaps) / len(overlaps),
        "output_rel_error": sum(rels) / len(rels),
    }


def _loop_exact(q, k, v, scale):
    """Exact logits (-inf masked) and outputs, one query row at a time (float64)."""
    b_, hq_, nq, d = q.shape
    h, n = k.shape[1], k.shape[2]
    g = hq_ // h
    s = np.full((b_, hq_, nq, n), -np.inf)
    o = np.zeros((b_, hq_, nq, d))
    for b in range(b_):
        for hq in range(hq_):
            for i in range(nq):
                pos = n - nq + i
                kk = k[b, hq // g, : pos + 1].astype(np.float64)
                row = scale * (kk @ q[b, hq, i].astype(np.float64))
                s[b, hq, i, : pos + 1] = row
                w = np.exp(row - row.max())
                o[b, hq, i] = (w / w.sum()) @ v[b, hq // g, : pos + 1].astype(np.float64)
    return s, o


@pytest.mark.parametrize("method, bits", [("turboquant-mse", 2), ("kivi", 2), ("qjl", 1)])
def test_metrics_equal_the_loop_oracle(method, bits):
    """attention_fidelity == the definitions evaluated row by row in float64.

    The approximate side is the cache's own scores and attention output (what
    the metric is defined on); the exact side is recomputed by loops.  The
    float32 vs float64 difference is ~1e-7 relative on O(1) quantities; 1e-5
    relative (1e-6 absolute for KL of ~0.1) leaves a wide margin while any
    wrong mask, head mapping, normalisation or averaging changes a metric by
    far more.  top_k = 4 and 40 tokens with nq = 6: the oldest query sees 35
    keys.
    """
    rng = np.random.default_rng(101 + bits)
    keys, values, queries = _random_layer(rng)
    cache = KVCache(32, method, bits, "turboquant-mse", bits, window=4)
    cache.append(keys, values)
    scale = 1 / math.sqrt(32)
    m = attention_fidelity(cache, keys, values, queries, top_k=4)
    s, o = _loop_exact(queries, keys, values, scale)
    ref = _oracle_metrics(s, cache.scores(queries), o, cache.attention(queries), 4)
    for name in METRICS:
        assert m[name] == pytest.approx(ref[name], rel=1e-5, abs=1e-6), name
    assert m["kl"] > 0.01 and m["top_k_overlap"] < 1  # the compressed cache is visibly inexact


def test_scale_is_passed_to_both_sides():
    """A non-default scale enters the exact and the cached logits alike (score_rmse scales with it)."""
    rng = np.random.default_rng(103)
    keys, values, queries = _random_layer(rng)
    cache = KVCache(32, "turboquant-mse", 3, "turboquant-mse", 3, window=4)
    cache.append(keys, values)
    base = attention_fidelity(cache, keys, values, queries)
    half = attention_fidelity(cache, keys, values, queries, scale=0.5 / math.sqrt(32))
    assert half["score_rmse"] == pytest.approx(0.5 * base["score_rmse"], rel=1e-5)
    assert half["score_rel_error"] == pytest.approx(base["score_rel_error"], rel=1e-5)


def test_mismatched_cache_is_refused():
    rng = np.random.default_rng(107)
    keys, values, queries = _random_layer(rng)
    cache = KVCache(32, window=4)
    cache.append(keys[:, :, :-1], values[:, :, :-1])
    with pytest.raises(ValueError, match="39 tokens"):
        attention_fidelity(cache, keys, values, queries)


# -- SmolLM2: monotone in bits ----------------------------------------------------------------------
def test_turboquant_mse_errors_fall_with_every_bit(smollm2):
    """2 -> 3 -> 4 bits (keys and values, window 0): every error metric strictly falls, per layer.

    D_mse falls ~3.4x per bit (0.115, 0.033, 0.0091 at d = 64), so score
    errors fall ~1.8x and the KL ~3x: far more than the variation between
    seeds.  top_k_overlap rises.  bits_per_coordinate follows the layout
    exactly: 8b + 16 (fp16 norm) bits per 64 coordinates, plus two 8-byte seeds.
    """
    rows = {
        b: compare_layers(
            smollm2,
            key_method="turboquant-mse",
            key_bits=b,
            value_method="turboquant-mse",
            value_bits=b,
            window=0,
        )
        for b in (2, 3, 4)
    }
    n = 2 * 3 * 192 * 64  # coordinates per layer (keys and values)
    for b, layer_rows in rows.items():
        assert len(layer_rows) == 3
        for r in layer_rows:
            assert r["bits_per_coordinate"] == pytest.approx((b + 16 / 64) + 128 / n, rel=1e-12)
    for layer in range(3):
        seq = [rows[b][layer] for b in (2, 3, 4)]
        for name in ("score_rmse", "score_rel_error", "kl", "output_rel_error"):
            assert seq[0][name] > seq[1][name] > seq[2][name] > 0, (layer, name)
        assert seq[0]["top_k_overlap"] < seq[1]["top_k_overlap"] < seq[2]["top_k_overlap"] < 1


# -- SmolLM2: score error against theory --------------------------------------------------------------
def _sphere_moments(d, bits, n=200_000, seed=0):
    """Monte Carlo over y uniform on the unit sphere S^{d-1} of e = c(y) - y, c nearest centroid.

    Returns ``(D, V, se_D, se_V)``: D = E||e||^2 (the per-vector distortion),
    V = E<y, e>^2, and their standard errors.  Independent of the cache: the
    nearest centroid comes from the centroids only (midpoints computed here).
    """
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, d))
    y = z / np.linalg.norm(z, axis=1, keepdims=True)
    c = np.sort(np.asarray(coordinate_codebook(d, bits, exact=True).centroids, dtype=np.float64))
    mid = (c[1:] + c[:-1]) / 2
    e = c[np.searchsorted(mid, y)] - y
    sq = np.sum(e * e, axis=1)
    par = np.sum(y * e, axis=1) ** 2
    return sq.mean(), par.mean(), sq.std() / math.sqrt(n), par.std() / math.sqrt(n)


@pytest.mark.parametrize("bits", [2, 4])
def test_turboquant_mse_score_error_matches_theory(smollm2, bits):
    r"""Mean squared score error of TurboQuant_mse keys on SmolLM2 = the value derived from D_mse.

    Derivation.  Key ``k = |k| u``; the cache stores ``|k|`` (float32 here, to
    remove the 2^-11 norm rounding) and ``k_hat = |k| Q^T c(Q u)`` with ``Q``
    Haar.  For a query ``q = a u + q_perp`` (``a = <q, u>``) the score error is
    ``|k| <q, k_hat/|k| - u>``.  Since ``Q`` is Haar, the law of
    ``k_hat/|k| - u`` is invariant under every orthogonal map fixing ``u``
    (reflections included), so the cross term vanishes and the error spreads
    evenly over the ``d - 1`` directions orthogonal to ``u``:

    .. math::

        E\,\mathrm{err}^2 = |k|^2 \Big(a^2 V + |q_\perp|^2 \frac{D - V}{d - 1}\Big),
        \quad D = E\|c(y) - y\|^2,\ V = E\langle y, c(y) - y\rangle^2,

    ``y = Q u`` uniform on the sphere.  ``D`` is TurboQuant's D_mse (checked
    against ``TurboQuantMSE(64, b).expected_mse``); ``V`` lies in
    ``[D^2, D]`` (Jensen with E<y, e> = -D from the centroid condition; and
    Cauchy-Schwarz) and is of order ``D^2 + D/d``; both are evaluated by a
    200k-sample Monte Carlo on the sphere.  For ``q`` orthogonal to ``k`` this
    is ``D |q|^2 |k|^2 / (d - 1)`` up to O(D^2): the "D_mse / d" rule of thumb.

    The expectation is over ``Q``; one seed shares one ``Q`` across every
    head and layer, so the sum over all visible (query, key) pairs of the
    three layers is one draw per seed.  The mean over 10 seeds must lie within
    a 4-sigma interval (seed-to-seed spread plus the Monte Carlo error of the
    prediction), and that interval must be narrower than +-15% of the
    prediction so that a mis-scaled codebook (>= 1.45x worse, field-notes)
    cannot pass.  The per-pair error is read through attention_fidelity's
    score_rmse (score_rmse^2 * visible / scale^2).
    """
    d = 64
    D, V, se_d, se_v = _sphere_moments(d, bits)
    assert D == pytest.approx(polarquant.TurboQuantMSE(d, bits).expected_mse, rel=0.01)
    assert D**2 <= V <= D
    pred, d_pred_d, d_pred_v, visible_total = 0.0, 0.0, 0.0, 0
    for keys, _, queries in smollm2:
        k = np.repeat(keys[0].astype(np.float64), 3, axis=0)  # query head j reads kv head j // 3
        q = queries[0].astype(np.float64)
        dots = np.einsum("hqd,hnd->hqn", q, k)
        k2 = np.sum(k * k, axis=-1)[:, None, :]
        a2 = dots**2 / k2
        perp = np.sum(q * q, axis=-1)[:, :, None] - a2
        visible = np.broadcast_to(causal_mask(192, 32, 1)[None], dots.shape)
        pred += float(np.sum((k2 * (a2 * V + perp * (D - V) / (d - 1)))[visible]))
        d_pred_d += float(np.sum((k2 * perp / (d - 1))[visible]))
        d_pred_v += float(np.sum((k2 * (a2 - perp / (d - 1)))[visible]))
        visible_total += int(visible.sum())
    pred_se = math.hypot(d_pred_d * se_d, d_pred_v * se_v)
    scale = 1 / math.sqrt(d)
    per_seed = []
    for seed in range(10):
        total = 0.0
        for keys, values, queries in smollm2:
            cache = KVCache(
                d, "turboquant-mse", bits, "none", 0, window=0, seed=seed,
                key_options={"norm_dtype": "float32"},
            )  # fmt: skip
            cache.append(keys, values)
            rmse = attention_fidelity(cache, keys, values, queries)["score_rmse"]
            total += rmse**2 * (visible_total / 3) / scale**2
        per_seed.append(total)
    per_seed = np.array(per_seed)
    half = 4 * math.hypot(per_seed.std(ddof=1) / math.sqrt(per_seed.size), pred_se)
    assert half < 0.15 * pred
    assert abs(per_seed.mean() - pred) < half


# -- compare_layers and KL ---------------------------------------------------------------------------
def test_compare_layers_returns_one_row_per_layer_with_accounting(smollm2):
    """One row per layer, the metrics of attention_fidelity on a hand-built cache, plus its bytes."""
    kwargs = dict(key_method="qjl", key_bits=2, value_method="kivi", value_bits=2, window=16)
    rows = compare_layers(smollm2, top_k=4, **kwargs)
    assert len(rows) == len(smollm2)
    for row, (keys, values, queries) in zip(rows, smollm2, strict=True):
        assert set(row) == set(METRICS) | {"bits_per_coordinate", "fp16_ratio"}
        cache = KVCache(64, **kwargs)
        cache.append(keys, values)
        ref = attention_fidelity(cache, keys, values, queries, top_k=4)
        assert {k: row[k] for k in METRICS} == ref
        assert row["bits_per_coordinate"] == cache.bits_per_coordinate
        assert (
            row["fp16_ratio"] == cache.fp16_ratio == pytest.approx(16 / cache.bits_per_coordinate)
        )
    assert compare_layers([], key_method="none") == []


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(key_method="none", value_method="none", window_dtype="float32"),
        dict(key_method="none", value_method="none"),
        dict(key_method="fp8", key_bits=8, value_method="fp8", value_bits=8),
        dict(key_method="turboquant-mse", key_bits=1, value_method="turboquant-mse", value_bits=1),
        dict(key_method="turboquant-prod", key_bits=2, value_method="kivi", value_bits=2),
        dict(key_method="qjl", key_bits=1, value_method="hadamard-rtn", value_bits=2),
        dict(
            key_method="polarquant",
            key_bits=(3, 2, 1, 1),
            value_method="polarquant",
            value_bits=(3, 2, 1, 1),
        ),
    ],
    ids=["none-f32", "none-f16", "fp8", "tq-mse-1", "tq-prod-2", "qjl-1", "polar-low"],
)
def test_kl_is_never_negative(smollm2, kwargs):
    """KL(p || p_hat) >= 0 (Gibbs); computed in float32, rounding may reach -1e-9 when p_hat = p.

    So: KL >= -1e-6 for every configuration and layer, and strictly positive
    (> 1e-4) for every lossy one (the fp16 window of "none" is lossless on
    float16 data, so both "none" rows are ~0).
    """
    for row in compare_layers(smollm2, window=8, **kwargs):
        assert row["kl"] >= -1e-6
        if kwargs["key_method"] == "none":
            assert abs(row["kl"]) < 1e-6
        else:
            assert row["kl"] > 1e-4
