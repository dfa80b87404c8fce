# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---


# %% [markdown]
# # 0b · Quick start: compress real vectors, count the bytes, score from the codes
#
# Notebook 0a said *why* a KV cache is worth compressing and what the three papers promise.  This
# one puts the library to work on real data, before any theory: every box opened here is opened
# properly later (0c builds TurboQuant from scratch, 1-5 derive it).
#
# | short name | paper |
# |---|---|
# | **PolarQuant** | Han, Kacham, Karbasi, Mirrokni, Zandieh, *PolarQuant: Quantizing KV Caches with Polar Transformation*, arXiv 2502.02617 (AISTATS 2026) |
# | **QJL** | Zandieh, Daliri, Han, *QJL: 1-Bit Quantized JL Transform for KV Cache Quantization with Zero Overhead*, arXiv 2406.03482 (AAAI 2025) |
# | **TurboQuant** | Zandieh, Daliri, Hadian, Mirrokni, *TurboQuant: Online Vector Quantization with Near-optimal Distortion Rate*, arXiv 2504.19874 (ICLR 2026) |
#
# (*Which PolarQuant?* Han et al., the recursive polar transform; not the homonymous Wu et al.
# paper, arXiv 2502.00527, on RoPE pairs.)
#
# **Learning goals.** After this notebook you can
#
# 1. compress real vectors (LLM keys, sentence embeddings) with a quantizer: `encode`, `decode`,
#    `score`;
# 2. read the memory bill honestly: `codes.nbytes`, `codes.bits_per_coordinate`,
#    `codes.fp16_ratio`, and predict them from the layout formula;
# 3. measure the error that matters: the per-vector error $D_{\mathrm{mse}}$, inner products,
#    which key a query attends to most;
# 4. compare the five quantizers in one table, and save codes to a file.
#
# Choosing a compute backend (NumPy, Numba, CUDA) is the subject of the optional notebook 8: the
# NumPy reference used here needs nothing else.

# %% [markdown]
# ## Setup
#
# Every notebook reads its problem size from `POLARQUANT_TUTORIAL_SCALE` (default 1.0; the test
# suite runs them at 0.1) and seeds every random generator, so the numbers below are reproducible.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import plotting

import polarquant as pq
from polarquant import datasets, metrics

SCALE = float(os.environ.get("POLARQUANT_TUTORIAL_SCALE", "1.0"))
plotting.style()
print("polarquant", pq.__version__, "| scale", SCALE)

# %% [markdown]
# ## 1. Real data shipped with the library
#
# `polarquant.datasets` ships two small real samples (licences in `polarquant/data/README.md`):
#
# * post-RoPE **keys, values and queries** of SmolLM2-135M-Instruct: 3 layers, 3 KV heads,
#   192 positions, head dimension $d = 64$; 9 query heads (grouped-query attention: query head
#   $h$ reads KV head $h // 3$) for the last 32 positions;
# * 256 **sentence embeddings** of all-MiniLM-L6-v2 ($d = 384$, unit norm).
#
# They are stored in float16; we compute in float32.

# %%
kv = datasets.load_smollm2_kv()
keys_all = kv["keys"].astype(np.float32)  # (layer, kv_head, position, 64)
queries_all = kv["queries"].astype(np.float32)  # (layer, query_head, i, 64)
positions = kv["query_positions"]  # query i sits at position positions[i]
emb = datasets.load_minilm_embeddings()["embeddings"].astype(np.float32)  # (256, 384)

print("keys", keys_all.shape, "queries", queries_all.shape, "embeddings", emb.shape)
print(
    "model layers kept:",
    kv["layers"],
    "| mean key norm per layer:",
    np.linalg.norm(keys_all, axis=-1).mean(axis=(1, 2)).round(1),
)

# %% [markdown]
# We start with one attention head: the 192 keys of KV head 0 in the middle layer (model layer
# 15, index 1 of the sample), and the 3 query heads that read it (32 queries each, 96 in all).
# Attention is causal: query $i$ at position $p_i$ sees keys $0..p_i$.

# %%
layer, head = 1, 0
assert kv["layers"][layer] == 15  # index 1 of the sample is model layer 15
keys = keys_all[layer, head]  # (192, 64)
queries = queries_all[layer, 3 * head : 3 * head + 3].reshape(-1, 64)  # (96, 64)
mask = np.arange(keys.shape[0])[None, :] <= np.tile(positions, 3)[:, None]  # (96, 192) visible
n, d = keys.shape
print(f"{n} keys and {queries.shape[0]} queries of dimension {d}")

# %% [markdown]
# ## 2. Compress, and count every byte
#
# TurboQuant's MSE quantizer (Algorithm 1 of the TurboQuant paper) stores, per vector, the norm
# $\|x\|$ and one $b$-bit code per coordinate of the randomly rotated unit vector
# $y = Q x / \|x\|$:
#
# $$\text{bytes per vector} = \left\lceil \frac{b\,d}{8} \right\rceil + 2 \quad(\text{an fp16 norm}),\qquad
#   \text{bits per coordinate} = \frac{8\,\text{bytes}}{d}.$$
#
# The library packs the codes densely (no byte per code) and counts everything it holds; the
# formula of every quantizer is in `docs/theory/memory.md`.

# %%
tq = pq.TurboQuantMSE(dim=d, bits=4, seed=0)
codes = tq.encode(keys)
print(codes)
for name, field in codes.fields.items():
    print(f"  field {name!r:10} shape {field.shape}  dtype {field.dtype}  {field.nbytes} bytes")
print("nbytes              ", codes.nbytes)
print("bits per coordinate ", codes.bits_per_coordinate)
print("compression vs fp16 ", round(codes.fp16_ratio, 3))

# %% [markdown]
# The layout formula predicts those numbers exactly: $\lceil 4 \cdot 64 / 8\rceil + 2 = 34$ bytes
# per key, $8 \cdot 34 / 64 = 4.25$ bits per coordinate, and $128 / 34 = 3.76\times$ smaller than
# fp16 (the cache it replaces; comparing with fp32 would flatter the method by 2x).

# %%
per_vector = -(-4 * d // 8) + 2
assert tq.nbytes_per_vector() == per_vector == 34
assert codes.nbytes == n * per_vector  # nothing hidden: codes + norms, nothing else
assert codes.bits_per_coordinate == 4.25
assert abs(codes.fp16_ratio - 2 * d / per_vector) < 1e-12

# %% [markdown]
# ## 3. Measure the error
#
# TurboQuant's distortion is **per vector** (Eq. (1) of the paper, for unit $x$):
#
# $$D_{\mathrm{mse}} = \mathbb{E}\,\frac{\|x - \hat x\|^2}{\|x\|^2}.$$
#
# Because of the random rotation, its expected value is known before seeing any data:
# `tq.expected_mse` is $d$ times the per-coordinate error of the Lloyd-Max codebook
# (notebooks 1, 4 and 5 explain why).  We compare it with the measurement on the real keys.

# %%
x_hat = tq.decode(codes)
measured = metrics.d_mse(keys, x_hat)
print(f"D_mse measured on 192 real keys: {measured:.5f}   predicted: {tq.expected_mse:.5f}")

# %% [markdown]
# One head gives 192 noisy per-vector errors; all 9 heads of the sample (1728 keys) pin the
# average down.  The tolerance, 10%, covers the scatter of a single rotation (the errors of
# similar keys are correlated, so they do not average out as fast as independent draws would;
# over seeds 0-3 the measurement ranges over about ±4% of the prediction).

# %%
all_keys = keys_all.reshape(-1, d)
d_mse_all = metrics.d_mse(all_keys, tq.decode(tq.encode(all_keys)))
print(f"D_mse on all {all_keys.shape[0]} keys: {d_mse_all:.5f}  (predicted {tq.expected_mse:.5f})")
assert abs(d_mse_all / tq.expected_mse - 1) < 0.10

# %% [markdown]
# ### Scoring from the codes
#
# Attention needs $\langle q, k\rangle$ for every query and key.  `score` computes it **from the
# codes**: the query is rotated once, $Qq$, then $\langle q, \hat x\rangle = \|x\| \sum_j (Qq)_j\,
# c[\mathrm{idx}_j]$; the keys are never decoded.  It equals decoding and then taking the dot
# product (up to float32 rounding).

# %%
true_scores = queries @ keys.T
est_scores = tq.score(queries, codes)
assert est_scores.shape == (queries.shape[0], n)
assert np.allclose(est_scores, queries @ x_hat.T, rtol=1e-4, atol=1e-3)

fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
plotting.scatter_estimates(
    axes[0],
    true_scores,
    est_scores,
    label="TurboQuantMSE, 4 bits",
    xlabel=r"true $\langle q, k\rangle$",
    ylabel=r"estimate $\langle q, \hat k\rangle$",
)
axes[0].set_title("inner products of real queries and keys")
# attention of one query: exact vs from codes (scale 1/sqrt(d), causal mask)
i = 40
p_true = metrics.softmax(np.where(mask[i], true_scores[i] / np.sqrt(d), -np.inf))
p_est = metrics.softmax(np.where(mask[i], est_scores[i] / np.sqrt(d), -np.inf))
axes[1].plot(p_true, label="exact attention", lw=2)
axes[1].plot(p_est, "--", label="attention from 4-bit codes")
axes[1].set_xlabel("key position")
axes[1].set_ylabel("attention weight")
axes[1].set_title(f"query {i} (position {np.tile(positions, 3)[i]})")
axes[1].legend()
plotting.show(fig)

# %% [markdown]
# The cloud hugs the diagonal, slightly flattened: TurboQuantMSE shrinks inner products by the
# factor $1 - D_{\mathrm{mse}}$ (notebook 5 derives it), and the attention of the right panel
# barely moves.  Section 4 counts, over all queries, how often the most-attended key changes.

# %% [markdown]
# ## 4. The quantizers at a glance
#
# Every quantizer has the same interface, so one loop compares them on the 9 (layer, KV head)
# pairs of the sample, with three plain numbers each:
#
# * **bits/coord**: measured from `nbytes` (codes, norms, radii, sign bits: everything held), and
#   the ratio to fp16;
# * **vector error** $D_{\mathrm{mse}}$: the per-vector squared error of `decode`, relative to
#   $\|k\|^2$;
# * **top-1 agreement**: how often a query's most-attended key (largest score, causal mask) is the
#   same when scored from the codes as when scored exactly.


# %%
def heads():
    """(keys, queries) of every (layer, KV head) of the SmolLM2 sample."""
    for lay in range(keys_all.shape[0]):
        for h in range(keys_all.shape[1]):
            yield keys_all[lay, h], queries_all[lay, 3 * h : 3 * h + 3].reshape(-1, d)


candidates = {
    "TurboQuantMSE 2 bits": pq.TurboQuantMSE(d, bits=2, seed=0),
    "TurboQuantMSE 4 bits": pq.TurboQuantMSE(d, bits=4, seed=0),
    "TurboQuantProd 4 bits": pq.TurboQuantProd(d, bits=4, seed=0),
    "PolarQuant (4,2,2,2)": pq.PolarQuant(d, levels=4, bits=(4, 2, 2, 2), seed=0),
    "QJL m=128": pq.QJL(d, proj_dim=128, seed=0),
}
print(f"{'method':24}{'bits/coord':>11}{'x fp16':>8}{'vector error':>14}{'top-1':>7}")
table = {}
for name, quantizer in candidates.items():
    bits, err, top1 = [], [], []
    for k, qs in heads():
        c = quantizer.encode(k)
        bits.append(c.bits_per_coordinate)
        err.append(metrics.d_mse(k, quantizer.decode(c)))
        exact = np.where(mask, qs @ k.T, -np.inf)
        from_codes = np.where(mask, quantizer.score(qs, c), -np.inf)
        top1.append(np.mean(exact.argmax(1) == from_codes.argmax(1)))
    table[name] = dict(bits=np.mean(bits), d_mse=np.mean(err), top1=np.mean(top1))
    row = table[name]
    print(
        f"{name:24}{row['bits']:>11.3f}{16 / row['bits']:>8.2f}{row['d_mse']:>14.4f}{row['top1']:>7.2f}"
    )

# %% [markdown]
# How to read it (notebooks 5 and 6 derive every number):
#
# * the **bits** are exact layout arithmetic: PolarQuant's paper configuration costs 3.875 bits,
#   QJL with $m$ sign bits and an fp16 norm $(m + 16)/d$;
# * **TurboQuantMSE** is built to minimise the vector error; two more bits divide it by about 12
#   (the papers' $4^{-b}$ law predicts 16);
# * **QJL** reconstructs vectors badly (error near 1: signs alone do not rebuild a vector), yet
#   its scores are *unbiased* estimates of inner products; **TurboQuantProd** spends one of its
#   bits on such a sketch of the residual.  Unbiased is not the same as accurate: here both agree
#   with the exact top-1 key less often than TurboQuantMSE at similar bits (notebooks 2, 5 and 6
#   explain why, and the blog's PolarQuant + QJL composition is compared there too).
#
# Checks that hold whatever the seed: the byte counts, and more bits giving a smaller error (the
# factor 5 leaves room for the scatter of one rotation) and a better top-1 agreement.

# %%
assert table["PolarQuant (4,2,2,2)"]["bits"] == 3.875
assert table["QJL m=128"]["bits"] == (128 + 16) / d
assert table["TurboQuantMSE 4 bits"]["bits"] == 4.25
assert table["TurboQuantMSE 4 bits"]["d_mse"] < table["TurboQuantMSE 2 bits"]["d_mse"] / 5
assert table["TurboQuantMSE 4 bits"]["top1"] > table["TurboQuantMSE 2 bits"]["top1"]

# %% [markdown]
# ## 5. Vector search on sentence embeddings
#
# The same calls serve a vector database: compress the base vectors once, then score each query
# against the codes and keep the top $k$.  `metrics.topk_overlap` is the fraction of the exact
# top-$k$ neighbours found (recall@$k$); notebook 9 builds a real index.

# %%
base, search_queries = emb[:128], emb[128:]
exact = search_queries @ base.T
recall = {}
for bits in (1, 2, 3, 4):
    q = pq.TurboQuantMSE(emb.shape[1], bits=bits, seed=0)
    c = q.encode(base)
    recall[bits] = metrics.topk_overlap(exact, q.score(search_queries, c), 10)
    print(
        f"{bits} bits ({c.bits_per_coordinate:.3f} bits/coord, {c.nbytes} bytes): recall@10 = {recall[bits]:.3f}"
    )

# %% [markdown]
# More bits, better recall.  We assert that recall increases with the bit width and exceeds
# 0.9 at 4 bits (measured 0.96; the margin allows for a different rotation seed).

# %%
assert all(recall[b] < recall[b + 1] for b in (1, 2, 3))
assert recall[4] > 0.9

# %% [markdown]
# ## 6. Save and load
#
# `save` writes the codes and the quantizer's configuration (method, dimension, seed, bits) to a
# versioned `.npz` file, no pickle; the rotation is rebuilt from the seed, so a quantizer with
# another seed refuses the file (exercise 3 shows why).  `docs/api/io.md` has the details.

# %%
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "keys.npz"
    tq.save(path, codes)
    print(f"file {path.stat().st_size} bytes for {codes.nbytes} bytes of codes")
    assert np.array_equal(tq.decode(tq.load(path)), x_hat)
    try:
        pq.TurboQuantMSE(dim=d, bits=4, seed=1).load(path)
    except ValueError as err:
        print("seed 1 refuses it:", err)
    else:
        raise AssertionError("codes written with seed 0 must not load with seed 1")

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** Predict, from the layout formula of `TurboQuantProd` in `docs/theory/memory.md`
# ($\lceil (b-1)D/8\rceil + \lceil d/8\rceil + 4$ bytes: a $(b-1)$-bit MSE stage, $d$ QJL sign bits,
# two fp16 norms), the bytes per vector and bits per coordinate of `TurboQuantProd(64, bits=3)`,
# then check with `codes.nbytes`.  Here $d$ is the input dimension and $D$ the *rotated* dimension,
# the number of coordinates the MSE stage quantizes: $D = d$ for the default Haar rotation, the
# next power of two for `rotation="hadamard"` (which zero-pads); so $D = d = 64$ here.

# %% [markdown] tags=["solution"]
# **Solution** (expand the hidden cell).

# %% jupyter={"source_hidden": true} tags=["solution"]
prod = pq.TurboQuantProd(64, bits=3, seed=0)
predicted = -(-(3 - 1) * 64 // 8) + -(-64 // 8) + 4  # 16 + 8 + 4 = 28 bytes
prod_codes = prod.encode(keys)
print(predicted, prod_codes.nbytes // n, prod_codes.bits_per_coordinate)  # 28 28 3.5
assert prod_codes.nbytes == n * predicted and prod_codes.bits_per_coordinate == 3.5

# %% [markdown]
# **Exercise 2.** Compress the 256 MiniLM embeddings with `PolarQuant(384)` (paper
# configuration, 3.875 bits) and with `TurboQuantMSE(384, bits=3)` and `bits=4`.  Which gives the
# lowest $D_{\mathrm{mse}}$ per stored bit?  Compare each with its prediction (`expected_mse`).

# %% [markdown] tags=["solution"]
# **Solution.**

# %% jupyter={"source_hidden": true} tags=["solution"]
for q in (
    pq.PolarQuant(384, seed=0),
    pq.TurboQuantMSE(384, bits=3, seed=0),
    pq.TurboQuantMSE(384, bits=4, seed=0),
):
    c = q.encode(emb)
    err = metrics.d_mse(emb, q.decode(c))
    print(
        f"{type(q).__name__:14} {c.bits_per_coordinate:.3f} bits/coord  D_mse {err:.4f}  predicted {q.expected_mse:.4f}"
    )
# PolarQuant (3.875 bits, ~0.032) sits between TurboQuant at 3 bits (~0.034, 3.04 bits) and
# 4 bits (~0.0093, 4.04 bits): per bit, TurboQuant's scalar codes are the better deal here
# (notebook 6 makes the comparison at equal bits).

# %% [markdown]
# **Exercise 3.** Why is it *right* that a file written by `TurboQuantMSE(d, 4, seed=0)` is
# refused by `TurboQuantMSE(d, 4, seed=1)`, although both have the same memory layout?  What
# would `decode` return if it were accepted?

# %% [markdown] tags=["solution"]
# **Solution.**

# %% jupyter={"source_hidden": true} tags=["solution"]
# The codes are indices of the coordinates of Q_0 x; seed 1 would rotate them back with Q_1^T,
# a different rotation: the result is a random vector with the right norm, unrelated to x.
# We can see it without the check by handing the fields of seed 0 to the codes of seed 1:
wrong = pq.TurboQuantMSE(d, 4, seed=1)
fake = wrong.encode(keys)  # correct layout and config for seed 1 ...
fake = type(fake)(
    fake.method, fake.config, dict(codes.fields), fake.batch_shape, fake.dim, fake.dtype
)
garbage = wrong.decode(fake)  # ... but the bytes of seed 0
print(
    "D_mse with the wrong rotation:", round(metrics.d_mse(keys, garbage), 3)
)  # ~2: orthogonal-ish noise
assert metrics.d_mse(keys, garbage) > 1
