# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 6 · PolarQuant vs TurboQuant vs the blog's composition vs simple baselines, at equal bits
#
# The previous notebooks checked each method against its own theory.  Here they compete, on real
# data, with every stored byte counted, against simple baselines that any engineer would try first.
#
# **Learning goals.**
#
# 1. Compare methods at **equal bits per coordinate**, measured from the bytes actually held
#    (codes, norms, radii, sign bits, minima and scales, seeds), never from a nominal bit width;
# 2. read three kinds of error: reconstruction ($D_{\mathrm{mse}}$), inner products
#    ($d\cdot D_{\mathrm{prod}}$ and the bias slope), and what a model sees (attention KL, top-1);
# 3. form a judgement on when the QJL residual (TurboQuant$_{\mathrm{prod}}$, the blog's PolarQuant+QJL)
#    pays for its bit, and when a simple baseline (KIVI's min-max, a Hadamard rotation with
#    round-to-nearest) is good enough.
#
# | method | paper | bytes per vector (fp16 side information) |
# |---|---|---|
# | `TurboQuantMSE`, $b$ bits | TurboQuant Alg. 1 | $\lceil bd/8\rceil + 2$ |
# | `TurboQuantProd`, $b$ bits | TurboQuant Alg. 2 | $\lceil (b-1)d/8\rceil + \lceil d/8\rceil + 4$ |
# | `PolarQuant`, $L = 4$, bits $b_\ell$ | PolarQuant Sec. 3-4 | $\sum_\ell \lceil b_\ell d/2^\ell/8\rceil + 2d/16$ |
# | `PolarQuantQJL`, residual $m$ | the blog's composition | PolarQuant + $\lceil m/8\rceil + 2$ |
# | `QJL`, $m$ bits | QJL Sec. 3 | $\lceil m/8\rceil + 2$ |
# | `KIVIValues`, $b$ bits, groups of $g$ channels | KIVI (per token) | $\lceil bd/8\rceil + 4\lceil d/g\rceil$ |
# | `KIVIKeys`, $b$ bits, groups of $g$ tokens | KIVI (per channel) | $\lceil bd/8\rceil + 4d/g$ |
# | `HadamardRTN`, $b$ bits, groups of $g$ | QuaRot-style rotation + round-to-nearest | $\lceil bD/8\rceil + 2D/g$ |
#
# $D$ is $d$ rounded up to a power of two.  Every seeded method also keeps its seed (its rotation
# or sketch is rebuilt from it): 8 bytes per head, `polarquant.kv.codec.SEED_NBYTES`, charged here
# to every method that has one, all but KIVI (0.005 bits per coordinate on a head of 192 keys of
# 64 coordinates).
#
# **About the baselines.** They come from `polarquant.kv.baselines`, written for the compressed
# KV cache of `polarquant.kv` (notebook 7a runs them inside `KVCache`, 7b inside a real model):
#
# * `KIVIValues(d, b, group_size=g)`: asymmetric min-max quantization **per token**, in groups of
#   $g$ channels, each with an fp16 minimum and scale (KIVI's layout for values, Liu et al.,
#   arXiv 2402.02750).  With one group per vector ($g = d$) it is the textbook min-max quantizer;
# * `KIVIKeys(d, b, group_size=g)`: KIVI's layout for keys, min-max **per channel** over groups of
#   $g$ tokens (an fp16 minimum and scale per channel, shared by the $g$ tokens of the group);
# * `HadamardRTN(d, b)`: a seeded randomized Hadamard rotation ($d$ zero-padded to a power of two
#   $D$), then symmetric round-to-nearest with one fp16 scale per 32 rotated coordinates (QuaRot,
#   arXiv 2404.00456; llama.cpp's `q4_0` blocks of 32).  It is the rotated baseline: the rotation
#   spreads outlier channels over all coordinates, as in every method of this library.
#
# You do not need their interface to follow the comparison: the helper `run_baseline` below
# compresses a set of vectors with a baseline, reconstructs them, estimates inner products with
# the queries (from the codes where the baseline can, else from the reconstruction) and counts
# every byte it holds, exactly as `encode(...).nbytes` does for the library's quantizers.
# `KIVIKeys` compresses whole groups of 32 tokens, as a cache does once a group is complete (the
# newest tokens wait in full precision; notebook 7a).

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
import plotting

import polarquant as pq
from polarquant import datasets, metrics
from polarquant.kv.baselines import HadamardRTN, KIVIKeys, KIVIValues
from polarquant.kv.codec import SEED_NBYTES, KeyCodec, field_nbytes

SCALE = float(os.environ.get("POLARQUANT_TUTORIAL_SCALE", "1.0"))
N_SEEDS = max(1, round(5 * SCALE))  # rotations/sketches averaged over
plotting.style()
print("scale", SCALE, "| seeds averaged:", N_SEEDS)

# %% [markdown]
# ## 1. The contenders, and the bookkeeping


# %%
def contenders(dim, seed):
    """(method, setting, quantizer) for every library configuration compared."""
    out = [("TurboQuantMSE", f"b={b}", pq.TurboQuantMSE(dim, b, seed=seed)) for b in (1, 2, 3, 4)]
    out += [("TurboQuantProd", f"b={b}", pq.TurboQuantProd(dim, b, seed=seed)) for b in (2, 3, 4)]
    out += [
        ("PolarQuant", ",".join(map(str, bits)), pq.PolarQuant(dim, 4, bits, seed=seed))
        for bits in ((2, 2, 2, 2), (3, 2, 2, 2), (4, 2, 2, 2), (4, 3, 3, 3), (5, 3, 3, 3))
    ]
    out += [
        (
            "PolarQuantQJL",
            f"4,2,2,2 m={m}",
            pq.PolarQuantQJL(dim, 4, (4, 2, 2, 2), seed=seed, proj_dim=m),
        )
        for m in (dim // 2, dim)
    ]
    out += [("QJL", f"m={m}", pq.QJL(dim, m, seed=seed)) for m in (2 * dim, 3 * dim, 4 * dim)]
    return out


def baselines(dim, bits, seed):
    """(method, setting, codec) for the baselines of `polarquant.kv.baselines` with `bits`-bit codes."""
    setting = f"b={bits}"
    return [
        ("KIVIValues 1 group", setting, KIVIValues(dim, bits, group_size=dim)),  # whole vector
        ("KIVIValues g=32", setting, KIVIValues(dim, bits, group_size=32)),  # 32 channels
        ("KIVIKeys g=32", setting, KIVIKeys(dim, bits, group_size=32)),  # per channel
        ("HadamardRTN g=32", setting, HadamardRTN(dim, bits, seed=seed)),  # rotate, then RTN
    ]


def run_baseline(codec, x, queries):
    """Compress the rows of x (n, d) as one stream of n tokens with a baseline codec.

    Returns (x_hat, estimated inner products of `queries` with the rows, bytes held).  The
    baselines follow the token-codec interface of `polarquant.kv.codec` (what `KVCache` calls):
    arrays shaped (streams, tokens, d); `encode` returns a dict of arrays, the *fields*, whose
    bytes (`field_nbytes`) plus `state_nbytes` (the seed, if any) are what a cache holds; a key
    codec scores queries from the codes, `score(prepare(q), fields)`; a value codec (such as
    `KIVIValues`) only sums with attention weights, so here it is decoded and the dot products
    taken.
    """
    fields = codec.encode(x[None])  # token-codec arrays are (streams, tokens, d)
    x_hat = codec.decode(fields)[0]
    if isinstance(codec, KeyCodec):  # scored from the codes
        est = codec.score(codec.prepare(queries[None]), fields)[0]
    else:  # a value codec sums with attention weights, it does not score: decode, then dot
        est = queries @ x_hat.T
    return x_hat, est, field_nbytes(fields) + codec.state_nbytes(1)


# Every library configuration holds exactly the bytes of its layout formula:
d = 64
x_check = np.random.default_rng(0).standard_normal((32, d)).astype(np.float32)
for _name, _setting, q in contenders(d, 0):
    c = q.encode(x_check)
    assert c.nbytes == 32 * q.nbytes_per_vector()
assert pq.TurboQuantMSE(d, 4).nbytes_per_vector() == 4 * d // 8 + 2
assert pq.TurboQuantProd(d, 4).nbytes_per_vector() == 3 * d // 8 + d // 8 + 4
assert pq.PolarQuant(d).nbytes_per_vector() == 16 + 4 + 2 + 1 + 8  # (4,2,2,2) at d = 64: 3.875 bits
assert pq.PolarQuantQJL(d).nbytes_per_vector() == 31 + d // 8 + 2
# ...and so does every baseline: its fields (printed) and its state
for name, _setting, codec in baselines(d, 3, 0):
    fields = codec.encode(x_check[None])
    shapes = {k: f"{v.dtype}{list(v.shape)}" for k, v in fields.items()}
    print(f"{name:19} {codec.bits_per_coordinate:.3f} bits", shapes, "state", codec.state_nbytes(1))
    assert field_nbytes(fields) == 32 * d * codec.bits_per_coordinate / 8
assert KIVIValues(d, 3, group_size=d).bits_per_coordinate == 3 + 2 * 16 / d  # min, scale per token
assert KIVIValues(d, 3, group_size=32).bits_per_coordinate == 3 + 2 * 16 / 32  # ... per 32 channels
assert KIVIKeys(d, 3, group_size=32).bits_per_coordinate == 3 + 2 * 16 / 32  # per channel/32 tokens
assert HadamardRTN(d, 3).bits_per_coordinate == 3 + 16 / 32  # one fp16 scale per 32 coordinates
assert HadamardRTN(384, 3).bits_per_coordinate == (3 * 512 + 16 * 512 / 32) / 384  # padded to 512
assert KIVIKeys(d, 3).state_nbytes(1) == 0 and HadamardRTN(d, 3).state_nbytes(1) == SEED_NBYTES

# %% [markdown]
# ## 2. Workload A: attention over real keys (SmolLM2, $d = 64$)
#
# For each of the 9 (layer, KV head) pairs of the sample, the 192 keys are compressed and the 96
# real queries of the 3 query heads that read them are scored against the codes (`KIVIValues`,
# which has no score-from-codes path, is decoded).  Attention uses the model's scale
# $1/\sqrt{64}$ and the causal mask.  Metrics, averaged over heads and over `N_SEEDS` seeds (one
# run for the deterministic KIVI):
#
# * `d_mse`: mean per-vector $\|x - \hat x\|^2/\|x\|^2$;
# * `d_prod`: $d\cdot$ mean of $(\langle q,x\rangle - \widehat{\langle q,x\rangle})^2 / (\|q\|^2\|x\|^2)$;
# * `slope`: least-squares slope of estimated on true inner products (1 = unbiased);
# * `kl`: mean KL divergence between exact and estimated attention (nats); `top1`: fraction of
#   queries whose most-attended key is unchanged.

# %%
kv = datasets.load_smollm2_kv()
keys_all = kv["keys"].astype(np.float32)
queries_all = kv["queries"].astype(np.float32)
positions = np.tile(kv["query_positions"], 3)
mask = np.arange(keys_all.shape[2])[None, :] <= positions[:, None]
heads = [
    (keys_all[lay, h], queries_all[lay, 3 * h : 3 * h + 3].reshape(-1, d))
    for lay in range(keys_all.shape[0])
    for h in range(keys_all.shape[1])
]


def measure(keys, queries, x_hat, est, nbytes):
    true = queries @ keys.T
    norms = np.sum(queries**2, 1)[:, None] * np.sum(keys**2, 1)[None, :]
    t = np.where(mask, true / np.sqrt(d), -np.inf)
    e = np.where(mask, est / np.sqrt(d), -np.inf)
    return {
        "bits": 8 * nbytes / keys.size,
        "d_mse": metrics.d_mse(keys, x_hat),
        "d_prod": d * metrics.prod_distortion(est, true, norms),
        "slope": metrics.bias_slope(est, true),
        "kl": float(np.mean(metrics.attention_kl(t, e))),
        "top1": float(np.mean(np.argmax(t, 1) == np.argmax(e, 1))),
    }


results = {}  # (method, setting) -> list of per-(seed, head) measurements
for seed in range(N_SEEDS):
    for name, setting, q in contenders(d, seed):
        for keys, queries in heads:
            c = q.encode(keys)
            x_hat, est = q.decode(c), q.score(queries, c)
            nbytes = c.nbytes + SEED_NBYTES  # the codes, and the seed of the rotation/sketch
            results.setdefault((name, setting), []).append(
                measure(keys, queries, x_hat, est, nbytes)
            )
            if name == "TurboQuantMSE":  # the same codes, rescaled by 1/(1 - D_mse) (notebook 5)
                alpha = 1 - q.expected_mse
                results.setdefault(("TurboQuantMSE debiased", setting), []).append(
                    measure(keys, queries, x_hat / alpha, est / alpha, nbytes)
                )
    for b in (2, 3, 4):
        for name, setting, codec in baselines(d, b, seed):
            if seed > 0 and codec.state_nbytes(1) == 0:  # no seed, same result: KIVI runs once
                continue
            for keys, queries in heads:
                results.setdefault((name, setting), []).append(
                    measure(keys, queries, *run_baseline(codec, keys, queries))
                )

rows = [
    {"method": m, "setting": s, **{k: float(np.mean([p[k] for p in parts])) for k in parts[0]}}
    for (m, s), parts in results.items()
]
rows.sort(key=lambda r: (r["bits"], r["method"]))
table = {(r["method"], r["setting"]): r for r in rows}
print(
    f"{'method':24}{'setting':15}{'bits':>6}{'D_mse':>9}{'d*D_prod':>10}{'slope':>7}{'attn KL':>9}{'top1':>6}"
)
for r in rows:
    print(
        f"{r['method']:24}{r['setting']:15}{r['bits']:>6.3f}{r['d_mse']:>9.4f}{r['d_prod']:>10.4f}"
        f"{r['slope']:>7.3f}{r['kl']:>9.4f}{r['top1']:>6.2f}"
    )

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
plot_rows = [
    r for r in rows if r["method"] != "QJL"
]  # QJL alone is far off the charts (D_mse > 0.2)
plotting.tradeoff(axes[0], [r for r in plot_rows if "debiased" not in r["method"]], y="d_mse")
axes[0].set_ylabel(r"$D_{\mathrm{mse}}$ (SmolLM2 keys)")
# theory next to the measurements: the errors predicted from the codebooks alone (notebooks 3-5)
predicted = [q for name, _, q in contenders(d, 0) if name in ("TurboQuantMSE", "PolarQuant")]
axes[0].plot(
    [q.bits_per_coordinate for q in predicted],
    [q.expected_mse for q in predicted],
    "k+",
    ms=10,
    mew=1.5,
    label="prediction (expected_mse)",
)
axes[0].legend(fontsize=7)
plotting.tradeoff(axes[1], plot_rows, y="kl", annotate=False)
axes[1].set_ylabel("attention KL divergence (nats)")
axes[1].legend(fontsize=7)
for ax in axes:
    ax.set_xlim(1, 5.3)
plotting.show(fig)

# %% [markdown]
# ### What the numbers say
#
# * **Among the data-oblivious methods, TurboQuantMSE has the lowest error at each of its budgets**
#   (2.25, 3.25, 4.25 bits, plus 0.005 for the seed), for reconstruction and for attention, and
#   sits on the black crosses that the theory predicts (the data are real keys, the error is the
#   one computed for random vectors); at 3.25 bits it matches PolarQuant's error at 3.875 bits.
#   PolarQuant pays a full bit per coordinate for its fp16 radii (one per 16 coordinates) and its
#   level-1 angles (notebook 3).
# * **The QJL bit does not pay for attention.**  TurboQuantProd and the blog's PolarQuant+QJL are
#   unbiased (slope $\approx 1$), but at equal bits their attention is clearly worse than the biased
#   MSE quantizer's: the softmax amplifies variance, and a uniform shrink of the logits by
#   $1 - D_{\mathrm{mse}}$ is only a mild change of temperature.  Rescaling the MSE estimate
#   ("debiased") fixes the slope but does not improve attention either.
# * **Outlier channels decide the baselines.**  A per-token min-max (`KIVIValues`, one group per
#   vector or groups of 32 channels) spends its range on the few large channels of the keys.
#   Spreading them with a rotation (`HadamardRTN`) fixes that at 3-4 bits: at 4.5 bits it matches
#   TurboQuantMSE at 4.25 (a quarter of a bit more, for its uniform grid and its two scales per
#   vector); at 2.5 bits its symmetric grid uses only 3 of the 4 levels and it is the worst
#   baseline.  Giving each channel its own range (`KIVIKeys`, over groups of 32 tokens) is better
#   still: at equal stored bits it has about 4x less error than per-token groups, and its attention
#   at 4.0 bits beats TurboQuantMSE at 4.25 (at 3.0 bits it about matches TurboQuantMSE at 3.25).
#   Those ranges are data-dependent calibration, renewed every 32 tokens, and they absorb the
#   keys' per-channel offset: notebook 7a takes this apart in the KV cache of `polarquant.kv` and
#   finds the same.
#
# The assertions below pin down the robust orderings with margins of at least 1.5x, except two
# close calls, given margins of 1.1x and 1.2x: KIVI is deterministic, and TurboQuantMSE's KL and
# $D_{\mathrm{mse}}$ at 4 bits vary by less than 7% from one rotation seed to the next (measured).

# %%
T = table
for b in (2, 3, 4):  # the MSE quantizer beats the product quantizer at attention, with fewer bits
    assert T["TurboQuantMSE", f"b={b}"]["bits"] < T["TurboQuantProd", f"b={b}"]["bits"]
    assert T["TurboQuantMSE", f"b={b}"]["kl"] * 2 < T["TurboQuantProd", f"b={b}"]["kl"]
    assert abs(T["TurboQuantProd", f"b={b}"]["slope"] - 1) < 0.05

# TurboQuant beats min-max at fewer bits (3.26 vs 3.5), and Hadamard + RTN (2.26 vs 2.51)
assert T["TurboQuantMSE", "b=3"]["d_mse"] * 1.5 < T["KIVIValues 1 group", "b=3"]["d_mse"]
assert T["TurboQuantMSE", "b=2"]["d_mse"] * 1.5 < T["HadamardRTN g=32", "b=2"]["d_mse"]
# the rotation helps min-max, up to TurboQuant's error (with 0.25 more bits)
assert T["HadamardRTN g=32", "b=4"]["d_mse"] * 1.5 < T["KIVIValues 1 group", "b=4"]["d_mse"]
assert T["HadamardRTN g=32", "b=4"]["d_mse"] < 1.2 * T["TurboQuantMSE", "b=4"]["d_mse"]
for b in (2, 3, 4):  # per-channel ranges beat per-token ranges at equal bits (about 4x measured)
    assert T["KIVIKeys g=32", f"b={b}"]["bits"] == T["KIVIValues g=32", f"b={b}"]["bits"] == b + 1
    assert 2 * T["KIVIKeys g=32", f"b={b}"]["d_mse"] < T["KIVIValues g=32", f"b={b}"]["d_mse"]
    assert 2 * T["KIVIKeys g=32", f"b={b}"]["kl"] < T["KIVIValues g=32", f"b={b}"]["kl"]
# per-channel KIVI at 4.0 bits attends better than TurboQuantMSE at 4.26 (measured 0.025 vs 0.030)
assert T["KIVIKeys g=32", "b=3"]["bits"] < T["TurboQuantMSE", "b=4"]["bits"]
assert 1.1 * T["KIVIKeys g=32", "b=3"]["kl"] < T["TurboQuantMSE", "b=4"]["kl"]
seed_bits = 8 * SEED_NBYTES / (keys_all.shape[2] * d)  # the 8-byte seed over 192 keys of 64
assert abs(T["PolarQuant", "4,2,2,2"]["bits"] - (3.875 + seed_bits)) < 1e-9
assert (
    T["PolarQuant", "4,2,2,2"]["d_mse"] > 0.8 * T["TurboQuantMSE", "b=3"]["d_mse"]
)  # more bits, no gain
assert (
    T["PolarQuantQJL", f"4,2,2,2 m={d}"]["kl"] > 1.5 * T["PolarQuant", "4,2,2,2"]["kl"]
)  # the residual hurts attention

# %% [markdown]
# ## 3. Workload B: vector search (MiniLM embeddings, $d = 384$)
#
# Half of the 256 sentence embeddings are the database, the other half the queries; recall@10 is
# the fraction of each query's exact 10 nearest neighbours (by inner product) found among the 10
# best estimated scores.  On such small samples recall is coarse (1280 neighbours in all), so we
# also report $D_{\mathrm{mse}}$.  The baselines treat the 128 database vectors as one stream of
# 128 tokens (`KIVIKeys`: 4 groups of 32 vectors, one range per dimension and group).

# %%
emb = datasets.load_minilm_embeddings()["embeddings"].astype(np.float32)
base, search = emb[:128], emb[128:]
exact = search @ base.T
dim = emb.shape[1]
search_rows = []
for seed in range(N_SEEDS):
    for name, setting, q in contenders(dim, seed):
        if name == "QJL" and setting != f"m={2 * dim}":
            continue
        c = q.encode(base)
        search_rows.append(
            {
                "method": name,
                "setting": setting,
                "bits": 8 * (c.nbytes + SEED_NBYTES) / base.size,
                "d_mse": metrics.d_mse(base, q.decode(c)),
                "recall": metrics.topk_overlap(exact, q.score(search, c), 10),
            }
        )
    for b in (2, 3, 4):
        for name, setting, codec in baselines(dim, b, seed):
            if seed > 0 and codec.state_nbytes(1) == 0:
                continue
            x_hat, est, nbytes = run_baseline(codec, base, search)
            search_rows.append(
                {
                    "method": name,
                    "setting": setting,
                    "bits": 8 * nbytes / base.size,
                    "d_mse": metrics.d_mse(base, x_hat),
                    "recall": metrics.topk_overlap(exact, est, 10),
                }
            )
merged = {}
for r in search_rows:
    merged.setdefault((r["method"], r["setting"]), []).append(r)
search_table = {
    key: {
        "method": key[0],
        "setting": key[1],
        **{k: float(np.mean([p[k] for p in parts])) for k in ("bits", "d_mse", "recall")},
    }
    for key, parts in merged.items()
}
print(f"{'method':20}{'setting':15}{'bits':>6}{'D_mse':>9}{'recall@10':>10}")
for r in sorted(search_table.values(), key=lambda r: r["bits"]):
    print(
        f"{r['method']:20}{r['setting']:15}{r['bits']:>6.3f}{r['d_mse']:>9.4f}{r['recall']:>10.3f}"
    )

fig, ax = plt.subplots(figsize=(7, 4))
plotting.tradeoff(
    ax,
    [r for r in search_table.values() if r["method"] != "QJL"],
    y="recall",
    logy=False,
    annotate=False,
)
ax.set_ylabel("recall@10 (MiniLM)")
ax.legend(fontsize=7)
plotting.show(fig)

# %% [markdown]
# These embeddings have no outlier channels: per-dimension ranges (`KIVIKeys`) gain little over
# per-vector groups of 32 dimensions (asserted: less than 1.5x, against 4x on the keys), and all
# methods at 4 bits find about 96% of the neighbours.  At 2-3 bits the Lloyd-Max codes keep their
# advantage in $D_{\mathrm{mse}}$ over the per-vector min-max (asserted, 1.5x margin); recall
# differences of a percent are within the noise of 1280 neighbours.
#
# `HadamardRTN` shows why bits are measured, not read off a label: a Hadamard matrix needs a power
# of two, so the 384 coordinates are zero-padded to 512, and its "4-bit" codes hold
# $(4\cdot 512 + 16\cdot 512/32)/384 = 6$ bits per coordinate (asserted), its 2-bit codes 3.33.

# %%
S = search_table
assert S["TurboQuantMSE", "b=3"]["d_mse"] * 1.5 < S["KIVIValues 1 group", "b=3"]["d_mse"]
assert S["TurboQuantMSE", "b=2"]["d_mse"] * 1.5 < S["KIVIValues 1 group", "b=2"]["d_mse"]
assert S["TurboQuantMSE", "b=4"]["recall"] > 0.9
assert S["KIVIValues g=32", "b=3"]["d_mse"] < 1.5 * S["KIVIKeys g=32", "b=3"]["d_mse"]
assert abs(S["HadamardRTN g=32", "b=4"]["bits"] - (4 * 512 + 16 * 512 / 32) / 384) < 0.01

# %% [markdown]
# ## 4. Verdict
#
# On these samples, with bytes counted honestly and fp16 as the reference:
#
# 1. outlier channels are the first thing to handle: a rotation spreads them (every method of
#    this library, and `HadamardRTN`), per-channel ranges isolate them (`KIVIKeys`); a per-token
#    min-max does neither and is the worst use of bits on keys;
# 2. with the rotation, Lloyd-Max scalar codes (TurboQuantMSE) give the lowest error per stored bit
#    of the data-oblivious methods, ahead of the uniform grid of `HadamardRTN` (clearly so at 2-3
#    bits), of PolarQuant's recursive angles, and far ahead of anything spending bits on QJL signs;
#    on the embeddings they beat every baseline at equal bits;
# 3. on real keys, KIVI's data-dependent per-channel ranges, renewed every 32 tokens, attend
#    better per stored bit than any data-oblivious method here; notebook 7a explains why (a
#    per-channel offset of the keys) and measures it inside the compressed KV cache of
#    `polarquant.kv`, with fp8 as one more baseline;
# 4. unbiasedness (TurboQuantProd, PolarQuantQJL, QJL) is a property of inner products, not of
#    attention; measure the downstream quantity before paying for it.
#
# These are small samples from one small model; the notebook is a template to rerun on your own
# keys (replace `keys_all` and `queries_all`) before drawing conclusions for a deployment.
#
# ## Exercises
#
# **Exercise 1.** PolarQuant's paper compresses the **values** too.  Quantize both keys and values
# of layer 15, head 0 with `TurboQuantMSE(64, 4)` and with `PolarQuant(64)`, compute the attention
# output $\mathrm{softmax}(qK^\top/8)\,V$ with the compressed keys (scored from codes) and decoded
# values, and report the relative error of the outputs.  Which part, keys or values, dominates?

# %% [markdown] tags=["solution"]
# **Solution.**

# %% jupyter={"source_hidden": true} tags=["solution"]
keys, queries = heads[3]  # layer 15, KV head 0
values = kv["values"][1, 0].astype(np.float32)
exact_out = metrics.softmax(np.where(mask, queries @ keys.T / 8, -np.inf)) @ values
for q in (pq.TurboQuantMSE(64, 4, seed=0), pq.PolarQuant(64, seed=0)):
    ck, cv = q.encode(keys), q.encode(values)
    p_hat = metrics.softmax(np.where(mask, q.score(queries, ck) / 8, -np.inf))
    p = metrics.softmax(np.where(mask, queries @ keys.T / 8, -np.inf))
    errors = {}
    for label, out in (
        ("keys only", p_hat @ values),
        ("values only", p @ q.decode(cv)),
        ("both", p_hat @ q.decode(cv)),
    ):
        errors[label] = np.mean(
            np.linalg.norm(out - exact_out, axis=1) / np.linalg.norm(exact_out, axis=1)
        )
    print(type(q).__name__, {k: round(float(v), 4) for k, v in errors.items()})
# Keys dominate: a key error is amplified by the softmax (exponentials of the logits), a value
# error is only averaged by the attention weights.

# %% [markdown]
# **Exercise 2.** What is the cheapest configuration in the Workload A table whose attention KL is
# below 0.05 nats?  And below 0.15?

# %% [markdown] tags=["solution"]
# **Solution.**

# %% jupyter={"source_hidden": true} tags=["solution"]
for target in (0.05, 0.15):
    ok = [r for r in rows if r["kl"] < target]
    best = min(ok, key=lambda r: r["bits"])
    print(
        f"KL < {target}: {best['method']} {best['setting']} at {best['bits']:.3f} bits/coord (KL {best['kl']:.4f})"
    )
# Per-channel KIVI is the cheapest for both targets on these keys (4.0 and 3.0 bits); the cheapest
# data-oblivious configurations are TurboQuantMSE b=4 (4.26 bits) and b=3 (3.26 bits).

# %% [markdown]
# **Exercise 3.** Each baseline pays fp16 side information per group: `KIVIValues` a minimum and a
# scale per group of $g$ channels of each token, `KIVIKeys` a minimum and a scale per channel for
# each group of $g$ tokens (both $32/g$ bits per coordinate), `HadamardRTN` one scale per group of
# $g$ rotated coordinates ($16/g$: its grid is symmetric around zero, so it needs no minimum).
# For $g$ = 16, 32 and 64 at 3 bits, compress all the SmolLM2 keys (the 9 heads as 9 streams of
# 192 tokens), and compute the bits per coordinate from the fields and state, and
# $D_{\mathrm{mse}}$.  Which layout and which group size are the best use of bits?

# %% [markdown] tags=["solution"]
# **Solution.**

# %% jupyter={"source_hidden": true} tags=["solution"]
streams = keys_all.reshape(-1, keys_all.shape[2], d)  # (9, 192, 64)
for group in (16, 32, 64):
    for codec in (
        KIVIValues(d, 3, group_size=group),
        KIVIKeys(d, 3, group_size=group),
        HadamardRTN(d, 3, seed=0, group_size=group),
    ):
        fields = codec.encode(streams)
        nbytes = field_nbytes(fields) + codec.state_nbytes(len(streams))
        x_hat = codec.decode(fields)
        print(
            f"g={group:2d} {type(codec).__name__:11}: {8 * nbytes / streams.size:.3f} bits/coord, "
            f"D_mse {metrics.d_mse(streams.reshape(-1, d), x_hat.reshape(-1, d)):.4f}"
        )
# Per-channel ranges (KIVIKeys) are the best use of bits on these keys at every group size: 3.5
# bits with groups of 64 tokens (D_mse ~0.014) beat per-token groups of 16 at 5 bits (~0.022) and
# TurboQuantMSE b=3 at 3.26 bits (~0.033); the price is data-dependent ranges and, in a cache, up
# to 63 tokens held in full precision until their group is complete.  Smaller groups help the
# per-token layout most (fewer channels share a range with an outlier), at 32/g bits of fp16 per
# coordinate (2 bits at g = 16).  After the rotation the range is nearly the same across the
# vector, so HadamardRTN's groups buy less (~0.059 -> ~0.038 from 3.25 to 4 bits), and at 3.25
# bits (g = 64) it stays well behind TurboQuantMSE b=3 at the same bits (~0.033): uniform levels,
# of which its symmetric grid uses 7 of 8.
