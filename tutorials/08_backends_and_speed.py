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
# # 8 · Backends and speed: one packed format, three kernel backends, measured
#
# > **Optional systems appendix.** Nothing later in the course depends on this notebook: skip it
# > in a course on the methods, assign it in one on systems.  It is about *speed* (kernels, byte
# > tables, the GPU path), not about what the quantizers compute.
#
# The earlier notebooks asked *how well* the quantizers compress.  This one asks *how fast* they
# run, and what "fast" even means for compressed vectors.  The answer hinges on one idea from
# QJL (arXiv 2406.03482, Sec. 3): a query is scored **directly against the packed bytes**, with a
# small table built once per query, so the keys are never decoded.
#
# **Learning goals.** After this notebook you can
#
# 1. tell the two axes apart (the *array namespace* of your data, the *kernel backend* that runs
#    the hot loops), select a backend three ways (`backend=`, `polarquant.use_backend`,
#    `POLARQUANT_BACKEND`), read `polarquant.available_backends()`, and say why an unavailable
#    backend is an error rather than a silent fallback;
# 2. explain "score from codes" and the byte-table trick, and check the sign identity
#    $\langle s, \mathrm{sign}(Sk)\rangle = 2\sum_{\text{bit}_i=1} s_i - \sum_i s_i$ (QJL Sec. 3) with
#    `polarquant.packing` and the backends' `sign_score` / `scalar_score`;
# 3. explain fused encoding (quantize and pack in one pass) and predict where two backends may
#    disagree on a code (only next to a decision boundary);
# 4. measure speed-ups honestly: warm-up, best of several runs, the exact float32 baseline in the
#    same run, bytes read; and assert only what holds on any machine;
# 5. describe the GPU path (CuPy raw CUDA kernels) and what is, and is not, verified about it.
#
# Notebook 0b scored queries from the codes with the NumPy reference; this notebook introduces
# the other backends.  `docs/backends.md` and `docs/performance.md` are the reference pages it
# puts into practice.

# %% [markdown]
# ## Setup
#
# The problem size follows `POLARQUANT_TUTORIAL_SCALE` (default 1.0; the test suite runs 0.1) and
# every generator is seeded.  The Numba backend is optional: if it is not installed, every Numba
# comparison below is skipped with a printed explanation, and the rest of the notebook still runs.

# %%
import os
import platform
import re
import time
import tracemalloc
from importlib import resources
from importlib.util import find_spec

import matplotlib.pyplot as plt
import numpy as np
import plotting

import polarquant as pq
from polarquant import datasets, packing
from polarquant.qjl import QJL_SCALE

SCALE = float(os.environ.get("POLARQUANT_TUTORIAL_SCALE", "1.0"))
N_CHECK = max(2_000, int(20_000 * SCALE))  # rows whose codes are compared between backends
N_KEYS = max(4_000, int(100_000 * SCALE))  # keys of the timing experiment (dim 128)
plotting.style()

HAVE_NUMBA = pq.available_backends()["numba"] is None
COMPARE = ["numpy", "numba"] if HAVE_NUMBA else ["numpy"]  # backends compared below
ref = pq.get_backend("numpy")  # the reference: polarquant.backends.numpy_backend
nb = pq.get_backend("numba") if HAVE_NUMBA else None  # polarquant.backends.numba_backend
print("polarquant", pq.__version__, "| scale", SCALE, "| backends compared:", COMPARE)
if HAVE_NUMBA:
    # The first call of each Numba kernel compiles it (about a second per kernel) or, from the
    # second process on, loads it from Numba's on-disk cache.  Pay that once, here.
    t0 = time.perf_counter()
    warm_x = np.ones((2, 64), dtype=np.float32)
    for warm_q in (
        pq.TurboQuantMSE(64, bits=4, backend="numba"),
        pq.QJL(64, proj_dim=256, backend="numba"),
        pq.PolarQuant(64, levels=4, bits=(4, 2, 2, 2), backend="numba"),
    ):
        warm_q.score(warm_x, warm_q.encode(warm_x))
    print(f"numba first calls (compile, or load from the cache): {time.perf_counter() - t0:.2f} s")
else:
    print(
        "numba is not installed, so the Numba comparisons are skipped:",
        pq.available_backends()["numba"],
    )

# %% [markdown]
# ## 1. Two axes, one explicit choice
#
# Two questions are easy to mix up:
#
# | axis | decided by | values |
# |---|---|---|
# | **array namespace**: which library holds the data | always the input | NumPy, CuPy, torch, any array-API library |
# | **kernel backend**: who runs the hot loops | you | `numpy` (reference), `numba` (CPU JIT), `cupy` (CUDA) |
#
# Every backend implements the same **eleven operations** (`polarquant.backends.numpy_backend`
# lists them): encode, values and score, for scalar codes (TurboQuant), sign bits (QJL) and polar
# codes (PolarQuant), and the weighted sums of scalar and polar codes that attention over
# compressed values needs (tutorial 7).  The quantizers call nothing else on their hot paths, and all backends
# write **one packed format** from the **same seeded constants**, so codes written by one backend
# decode on any other.
#
# The backend is resolved at each call, highest precedence first:
#
# 1. the `backend=` argument of a quantizer;
# 2. a `with polarquant.use_backend(name):` block (a context variable: thread- and task-local);
# 3. the environment variable `POLARQUANT_BACKEND`, read at each call;
# 4. the default, `numpy`.

# %%
status = pq.available_backends()  # name -> None (usable) or the reason it is not
for name, why in status.items():
    print(f"{name:6} {'available' if why is None else 'unavailable: ' + why}")

fast = COMPARE[-1]  # numba where installed, else numpy
os.environ["POLARQUANT_BACKEND"] = "numpy"
print("environment only     ->", pq.current_backend())
with pq.use_backend(fast):
    print("inside use_backend   ->", pq.current_backend())
    print("explicit argument    ->", pq.current_backend("numpy"))
    assert pq.current_backend() == fast and pq.current_backend("numpy") == "numpy"
del os.environ["POLARQUANT_BACKEND"]
print("nothing set (default)->", pq.current_backend())
assert pq.current_backend() == "numpy"

# %% [markdown]
# **Nothing falls back silently.**  A misspelt name is a `ValueError` listing the valid ones (a
# misspelt environment variable too); a known backend that cannot run here is a
# `BackendUnavailableError` that names what is missing and how to install it.  Why so strict?  A
# silent fallback would turn "I benchmarked the GPU kernels" into "I benchmarked the NumPy
# reference" without a trace, a 10x to 100x difference; and the backends may disagree on a code
# next to a decision boundary (Section 3), so you want to know which one wrote your codes.

# %%
os.environ["POLARQUANT_BACKEND"] = "numbaa"
try:
    pq.current_backend()
except ValueError as err:
    print("ValueError:", err)
finally:
    del os.environ["POLARQUANT_BACKEND"]

for name, why in status.items():
    if why is not None:  # e.g. cupy on a machine without a GPU
        try:
            pq.TurboQuantMSE(64, bits=4, seed=0, backend=name).encode(np.ones((1, 64)))
        except pq.backends.BackendUnavailableError as err:
            print("BackendUnavailableError:", err)
        else:
            raise AssertionError(f"{name} is unavailable, yet it ran")

# %% [markdown]
# **Data never moves implicitly.**  The namespace axis follows the input: the NumPy reference is
# written against the array API and runs on any namespace, while the Numba backend only accepts
# NumPy arrays (and `cupy` only CuPy arrays).  With `array_api_strict` (a deliberately minimal
# array-API library, if installed) we see both: the reference returns `array_api_strict` arrays,
# Numba refuses with a `TypeError` instead of converting behind your back.  (`array_api_strict` has
# no float16, hence `norm_dtype="float32"`.)

# %%
if find_spec("array_api_strict") is None:
    print("array_api_strict is not installed: skipping this demonstration")
else:
    import array_api_strict as xp

    x_strict = xp.asarray(np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32))
    for name in COMPARE:
        quantizer = pq.TurboQuantMSE(64, bits=4, seed=0, norm_dtype="float32", backend=name)
        try:
            c = quantizer.encode(x_strict)
            print(f"{name:6} -> codes of type {type(c.fields['codes']).__module__}")
        except TypeError as err:
            print(f"{name:6} -> TypeError: {err}")

# %% [markdown]
# ## 2. Scoring from codes: a table per query, a lookup per byte
#
# Attention and vector search need $\langle q, k\rangle$ for one query and many stored keys.
# The exact product reads $4d$ bytes per float32 key and does $d$ multiply-adds.  A quantizer that
# **scores from codes** reads only the key's packed bytes and never rebuilds $\hat k$.
#
# ### 2.1 QJL: sign bits and the identity behind the table
#
# QJL (Sec. 3, Definition 3.1) stores $\mathrm{sign}(Sk) \in \{\pm1\}^m$ as bits
# $\beta_i = [\,(Sk)_i \ge 0\,]$ and estimates
# $\widehat{\langle q,k\rangle} = \frac{\sqrt{\pi/2}}{m}\,\|k\|\,\langle s, \mathrm{sign}(Sk)\rangle$ with
# $s = Sq$ (the query is projected, never quantized).  Because $\mathrm{sign}_i = 2\beta_i - 1$,
#
# $$\langle s, \mathrm{sign}(Sk)\rangle \;=\; \sum_i s_i (2\beta_i - 1)
#   \;=\; 2\sum_{i:\,\beta_i = 1} s_i \;-\; \sum_i s_i .$$
#
# The second sum depends on the query only: one number per query.  The first is a sum of query
# coordinates **selected by the bits**, and eight bits fill one byte.  So for byte position $j$
# and each of the 256 possible byte values $v$, precompute
#
# $$T[j, v] = \sum_{t=0}^{7} s_{8j+t}\,\bigl(2\,\mathrm{bit}_t(v) - 1\bigr),\qquad
#   \langle s, \mathrm{sign}(Sk)\rangle = \sum_{j=0}^{m/8-1} T\bigl[j,\ \mathrm{byte}_j(k)\bigr]:$$
#
# $m/8$ table lookups per key instead of $m$ multiply-adds.  The table holds $256 \cdot m/8$
# numbers (32 KiB of float32 at $m = 256$: it stays in cache) and costs $256\,m$ multiply-adds to
# build; it saves $7m/8$ operations per key, so it pays for itself after about 300 keys, and is
# built once per query for the whole cache.
#
# We check the identity on real keys (SmolLM2, one attention head, $d = 64$) with the library's
# packing functions and each backend's `sign_score`.  Tolerance: every result is a float32 sum of
# $m = 256$ terms of size about $|s_i|$; the rounding of such a sum is of order
# $\sqrt{m}\cdot 6\cdot10^{-8} \approx 10^{-6}$ of $\sum_i |s_i|$, so we allow $10^{-5}$ of it (a
# real bug, one wrong bit, is off by $2|s_i|$, about $10^{-2}$ of that scale).

# %%
kv = datasets.load_smollm2_kv()
assert kv["layers"][1] == 15  # index 1 of the sample is model layer 15
keys = kv["keys"][1, 0].astype(np.float32)  # model layer 15, KV head 0: (192, 64)
queries = kv["queries"][1, 0:3].reshape(-1, 64).astype(np.float32)  # its 3 query heads: (96, 64)
n, d = keys.shape
m = 256

qjl = pq.QJL(d, proj_dim=m, seed=0)
qjl_codes = qjl.encode(keys)
signs = qjl_codes.fields["signs"]  # (192, 32) uint8: 8 sign bits per byte
s = qjl.prepare_queries(queries)  # (96, 256): S q, what score hands the backend
bits = packing.unpack_codes(signs, 1, m).astype(np.float32)  # (192, 256) of 0/1
pm = packing.unpack_signs(signs, m)  # (192, 256) of -1/+1

lhs = s @ pm.T  # <s, sign(Sk)>
rhs = 2 * (s @ bits.T) - s.sum(axis=1, keepdims=True)  # 2 sum_{bit=1} s_i - sum_i s_i
scale = np.abs(s).sum(axis=1, keepdims=True)  # sum_i |s_i|, per query
by_backend = {name: pq.get_backend(name).sign_score(qjl.plan, s, signs) for name in COMPARE}

print(f"signs {signs.shape} {signs.dtype}, projected queries {s.shape}")
print(f"identity: max |lhs - rhs| / sum|s| = {np.max(np.abs(lhs - rhs) / scale):.1e}")
for name, got in by_backend.items():
    print(f"{name:6} sign_score: max |. - lhs| / sum|s| = {np.max(np.abs(got - lhs) / scale):.1e}")
    assert np.max(np.abs(got - lhs) / scale) < 1e-5
assert np.max(np.abs(lhs - rhs) / scale) < 1e-5

# the quantizer's score is exactly this, times sqrt(pi/2)/m and the stored norm
norms = qjl_codes.fields["norms"].astype(np.float32)
expected = QJL_SCALE / m * by_backend["numpy"] * norms[None, :]
assert np.allclose(qjl.score(queries, qjl_codes), expected, rtol=1e-5, atol=1e-6)

# %% [markdown]
# Now the table itself.  We let the library tell us which signs each of the 256 byte values
# holds (`unpack_signs` of the bytes $0..255$), build $T$ with one matrix product, and score every
# key by summing $m/8 = 32$ table entries: what `numba_backend.sign_score` does, whose
# result we compared above.

# %%
nbytes = m // 8
byte_values = np.arange(256, dtype=np.uint8)[:, None]  # every possible byte, as a 1-byte row
signs_of_byte = packing.unpack_signs(byte_values, 8)  # (256, 8): the 8 signs byte v holds
T = s.reshape(-1, nbytes, 8) @ signs_of_byte.T  # (96, 32, 256): T[i, j, v]
from_table = T[:, np.arange(nbytes)[None, :], signs].sum(axis=-1)  # (96, 192): 32 lookups per key
print(f"table per query: {nbytes} x 256 = {T[0].size} floats ({T[0].nbytes // 1024} KiB)")
print(
    f"scores from the table: max |. - lhs| / sum|s| = {np.max(np.abs(from_table - lhs) / scale):.1e}"
)
assert np.max(np.abs(from_table - lhs) / scale) < 1e-5


# %% [markdown]
# The score of one key is the sum of the table entries under its bytes: in the picture, one white
# dot per row, 32 reads of a 32 KiB table that the query built once.

# %%
fig, ax = plt.subplots(figsize=(8, 3.4))
im = ax.imshow(T[0], aspect="auto", cmap="RdBu_r", interpolation="nearest")
ax.plot(signs[0], np.arange(nbytes), "o", ms=4, mfc="white", mec="black", label="bytes of key 0")
ax.set_xlabel("byte value $v$")
ax.set_ylabel("byte position $j$")
ax.set_title(
    rf"QJL byte table $T[j, v]$ of query 0 ($m = {m}$); "
    rf"$\langle s, \mathrm{{sign}}(Sk_0)\rangle$ = sum under the dots = {from_table[0, 0]:.2f}"
)
fig.colorbar(im, ax=ax, label=r"$T[j, v]$")
ax.legend(loc="upper right")
plotting.show(fig)

# %% [markdown]
# ### 2.2 TurboQuant: two 4-bit codes per byte
#
# TurboQuant's MSE quantizer (Algorithm 1, Sec. 3.1) scores from codes as
# $\langle q, \hat x\rangle = \|x\|\sum_j (Qq)_j\, c[\mathrm{idx}_j]$: rotate the query once, then
# gather centroids.  The table trick is the same with a codebook of 16 centroids instead of
# $\pm1$: byte $j$ holds the codes of coordinates $2j$ (high nibble) and $2j+1$ (low nibble), so
#
# $$T[j, v] = (Qq)_{2j}\; c[v \gg 4] + (Qq)_{2j+1}\; c[v \mathbin{\&} 15],\qquad
#   \sum_j (Qq)_j\, c[\mathrm{idx}_j] = \sum_{j < d/2} T[j, \mathrm{byte}_j].$$
#
# In general $8/b$ codes share a byte for $b \in \{1, 2, 4, 8\}$ and a key costs $bd/8$ lookups.
# Codes of 3, 5, 6 or 7 bits straddle bytes; the Numba backend then uses a per-code table
# $T[j, k] = (Qq)_j\,c_k$ and one lookup per code (Exercise 3).  The check: the backends'
# `scalar_score` against the reference, relative to the Cauchy-Schwarz scale
# $\|Qq\|\,\|c[\mathrm{idx}]\|$ of each inner product (same $10^{-5}$ tolerance and reason as above).

# %%
tq = pq.TurboQuantMSE(d, bits=4, seed=0)
tq_codes = tq.encode(keys)
packed = tq_codes.fields["codes"]  # (192, 32): two 4-bit codes per byte
qr = tq.prepare_queries(queries)  # Q q, once per query
cents = np.asarray(tq.plan.centroids, dtype=np.float32)  # the plan's 16 Lloyd-Max centroids
values = ref.scalar_values(tq.plan, packed, np.float32)  # c[idx]: only to define the check's scale
cs_scale = np.linalg.norm(qr, axis=1)[:, None] * np.linalg.norm(values, axis=1)[None, :]

codes_of_byte = packing.unpack_codes(byte_values, 4, 2)  # (256, 2): the two codes byte v holds
T4 = qr.reshape(-1, d // 2, 2) @ cents[codes_of_byte].T  # (96, 32, 256)
from_table4 = T4[:, np.arange(d // 2)[None, :], packed].sum(axis=-1)
exact4 = qr @ values.T
print(f"table scores: max rel. difference {np.max(np.abs(from_table4 - exact4) / cs_scale):.1e}")
assert np.max(np.abs(from_table4 - exact4) / cs_scale) < 1e-5
for name in COMPARE:
    got = pq.get_backend(name).scalar_score(tq.plan, qr, packed)
    err = np.max(np.abs(got - exact4) / cs_scale)
    print(f"{name:6} scalar_score: max rel. difference {err:.1e}")
    assert err < 1e-5
norms4 = tq_codes.fields["norms"].astype(np.float32)
assert np.allclose(tq.score(queries, tq_codes), exact4 * norms4[None, :], rtol=1e-4, atol=1e-4)

# %% [markdown]
# ### 2.3 PolarQuant, and every method through the public API
#
# PolarQuant's codes are angles on a tree (notebook 3), so there is no per-byte table.  The Numba
# backend folds level 1 into the query instead: with $T_1[j, k] = q_{2j}\cos c_k + q_{2j+1}\sin c_k$
# the score is $\sum_j r_j\,T_1[j, k_j]$ over the level-1 radii $r_j$, which it rebuilds from the
# stored radii and the angle codes of levels $L..2$ (the tree minus its last level) without ever
# forming the $d$ coordinates.  With many keys it folds level 2 into the query's table as well
# (one lookup per level-2 node, indexed by the byte that holds the node's two 4-bit level-1 codes
# and by its level-2 code), and rebuilds the level-2 radii from the stored ones through one table
# of products for levels 4 and 3.  That rebuild still costs work per key, which Section 4 will
# show.
#
# For each quantizer we now encode once and score the same codes with every backend through the
# public API (`backend=`).  The scores agree within the same $10^{-5}$ of
# $\|q\|\,\|k\|$ (only the summation order differs).

# %%
methods = {
    "TurboQuantMSE 4-bit": lambda be, dim=d: pq.TurboQuantMSE(dim, bits=4, seed=0, backend=be),
    "QJL m=256": lambda be, dim=d: pq.QJL(dim, proj_dim=256, seed=0, backend=be),
    "PolarQuant (4,2,2,2)": lambda be, dim=d: pq.PolarQuant(
        dim, levels=4, bits=(4, 2, 2, 2), seed=0, backend=be
    ),
}
qk_scale = np.linalg.norm(queries, axis=1)[:, None] * np.linalg.norm(keys, axis=1)[None, :]
for method, make in methods.items():
    codes = make("numpy").encode(keys)  # written once, by the reference
    reference = make("numpy").score(queries, codes)
    for name in COMPARE[1:]:
        err = np.max(np.abs(make(name).score(queries, codes) - reference) / qk_scale)
        print(f"{method:22} max |{name} - numpy| / (|q| |k|) = {err:.1e}")
        assert err < 1e-5
if not COMPARE[1:]:
    print("numba not installed: only the reference scores the codes")

# %% [markdown]
# ## 3. Fused encode: quantize and pack in one pass
#
# The reference encodes in two whole-batch passes:
# `pack_codes(cell_index(y, boundaries), bits)`.  `cell_index` (a `searchsorted`) returns one
# 64-bit integer **per code**, 16 times the 4 bits it will finally occupy, and `pack_codes` then
# shifts and sums those into bytes.  The Numba kernel fuses both steps, row by row: a branch-free
# binary search of the row's coordinates ($b$ halving steps, vectorised), the codes in a small
# scratch row that stays in L1, then a bit accumulator that emits a byte whenever eight bits are
# pending.  It reads $y$ once and writes only the packed bytes.  (The CUDA kernel goes further:
# one thread per output byte searches its $8/b$ codes and writes the byte.)
#
# `tracemalloc` shows the difference: the peak of the NumPy allocations during one call of the
# backend's `scalar_encode`, relative to the packed output.  (Numba's own scratch inside a
# kernel is not traced, but the entry point allocates the encode kernels' scratch with NumPy:
# `min(rows, 64)` rows of int32 codes.)

# %%
d2 = 128
rng = np.random.default_rng(2504_19874)
x = rng.standard_normal((N_CHECK, d2)).astype(np.float32)
tq128 = pq.TurboQuantMSE(d2, bits=4, seed=0)
y = tq128.prepare_vectors(x)  # the rotated unit rows encode hands the backend
plan = tq128.plan  # 4 bits, 15 decision thresholds, 64 bytes per row

peak = {}
for name in COMPARE:
    ops = pq.get_backend(name)
    ops.scalar_encode(plan, y[:8])  # warm-up: Numba compiles (or loads from its cache) here
    tracemalloc.start()
    out = ops.scalar_encode(plan, y)
    peak[name] = tracemalloc.get_traced_memory()[1] / out.nbytes
    tracemalloc.stop()
    print(f"{name:6} scalar_encode: peak traced memory = {peak[name]:.2f} x the packed output")
assert peak["numpy"] > 8  # the int64 codes alone are 16x the packed 4-bit codes
if HAVE_NUMBA:
    assert peak["numba"] < 2  # the output plus at most 64 scratch rows

# %% [markdown]
# **Where can codes differ?**  A code is decided by comparisons: $\mathrm{idx} = \#\{t_k \le y\}$
# (ties go to the upper cell).  Two backends that compare the *same floats* against the *same
# thresholds* must agree exactly, so for TurboQuant's scalar codes and QJL's sign bits we expect
# **zero** mismatches.  A code can only differ when the compared number itself is computed
# differently: PolarQuant's angles come from `atan2`, and the Numba kernel uses a vectorisable
# float32 polynomial (at most ~3 ulp from the exact angle; NumPy's own SIMD `arctan2` is another
# such approximation).  An angle within about $10^{-6}$ rad of a boundary can then land in the
# neighbouring cell: a rate of about $10^{-7}$ of the codes, so on random data we expect none or a
# handful, each exactly one cell away (circularly for the level-1 angle in $[0, 2\pi)$).
#
# First the tie rule, on inputs placed exactly on the thresholds: every backend puts
# $y = t_k$ in cell $k + 1$.

# %%
bnd = plan.boundaries.astype(np.float32)
on_boundaries = np.zeros((1, d2), dtype=np.float32)
on_boundaries[0, :15] = bnd  # y = t_0, ..., t_14 exactly (and zeros after them)
for name in COMPARE:
    tie_codes = packing.unpack_codes(pq.get_backend(name).scalar_encode(plan, on_boundaries), 4, d2)
    print(f"{name:6} codes of y = t_k: {tie_codes[0, :15].tolist()}")
    assert np.array_equal(tie_codes[0, :15], np.arange(1, 16))

# %%
qjl128 = pq.QJL(d2, proj_dim=256, seed=0)
pol128 = pq.PolarQuant(d2, levels=4, bits=(4, 2, 2, 2), seed=0)
p = qjl128.prepare_vectors(x)  # S x, (N_CHECK, 256)
yp = pol128.prepare_vectors(x)  # PolarQuant rotates, then transforms (no normalisation)

if not HAVE_NUMBA:
    print("numba not installed: no second backend to compare the codes with")
else:
    scalar_diff = np.count_nonzero(
        packing.unpack_codes(nb.scalar_encode(plan, y), 4, d2)
        != packing.unpack_codes(ref.scalar_encode(plan, y), 4, d2)
    )
    sign_diff = np.count_nonzero(
        packing.unpack_codes(nb.sign_encode(qjl128.plan, p), 1, 256)
        != packing.unpack_codes(ref.sign_encode(qjl128.plan, p), 1, 256)
    )
    print(f"scalar codes: {scalar_diff} of {y.size} differ")
    print(f"sign bits:    {sign_diff} of {p.size} differ")
    assert scalar_diff == 0 and sign_diff == 0

    pplan = pol128.plan  # levels, bits, codebooks, and where each level's codes sit in a row
    mine, mine_radii = nb.polar_encode(pplan, yp)
    theirs, their_radii = ref.polar_encode(pplan, yp)
    polar_diff, polar_total = 0, 0
    for level, (bits_l, count) in enumerate(zip(pplan.bits, pplan.counts, strict=True), start=1):
        part = pplan.level_slice(level)  # this level's bytes of every row
        ca = packing.unpack_codes(mine[:, part], bits_l, count).astype(int)
        cb_ = packing.unpack_codes(theirs[:, part], bits_l, count).astype(int)
        step = np.abs(ca - cb_)
        if level == 1:  # the level-1 cells wrap around at 2 pi
            step = np.minimum(step, (1 << bits_l) - step)
        polar_diff += np.count_nonzero(step)
        polar_total += step.size
        assert step.max() <= 1, f"level {level}: a code moved by more than one cell"
    print(f"polar codes:  {polar_diff} of {polar_total} differ (by one cell at most)")
    # the test suite's bound is 1e-5 on a million codes; 1e-4 leaves room for small samples
    assert polar_diff <= max(2, 1e-4 * polar_total)
    assert np.allclose(mine_radii, their_radii, rtol=1e-6)  # hypot as glibc computes it

# %% [markdown]
# ## 4. Measured speed on this machine
#
# Rules for a number worth reporting (the same as `benchmarks/bench_backends.py`):
#
# * **warm up** first: Numba's first call compiles (or loads the compiled kernels from its disk
#   cache); that time is reported separately, never mixed into a measurement (the Setup already
#   paid it for these kernels, so the warm-up below is quick);
# * take the **best of several runs** (noise from other processes only ever adds time), each
#   long enough (20 ms) for the clock to be precise;
# * measure the **baseline in the same run**: the exact float32 `keys @ q` on the uncompressed
#   keys, the thing the compressed scores replace;
# * count the **bytes read**: scoring is memory-bound, and the codes' whole point is to read
#   fewer bytes;
# * assert only what holds on any machine (ratios with a wide margin, byte counts), never an
#   absolute time.
#
# We time, for each method, `encode` as a whole, the backend's encode operation alone (the
# kernel: on the already rotated or projected rows), and `score` of one query against all
# `N_KEYS` compressed keys: the decoding-time attention pattern, one new query against the whole
# cache.  The codes are written once and scored by both backends (one packed format).


# %%
def best_of(fn, repeat=3):
    """Seconds per call of ``fn``: the best of ``repeat`` runs of at least 20 ms each."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    number = max(1, int(0.02 / max(first, 1e-7)))
    times = [first] if number == 1 else []  # a slow first call is already a full run
    while len(times) < repeat:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return min(times)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


print(f"machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.machine()}")
print(f"python {platform.python_version()}, numpy {np.__version__}", end="")
if HAVE_NUMBA:
    import numba

    print(f", numba {numba.__version__} ({numba.get_num_threads()} threads)")
else:
    print(", numba not installed")
blas_env = {v: os.environ.get(v, "unset") for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
print("BLAS threads (exact keys @ q, rotations, sketches):", blas_env)

keys_big = rng.standard_normal((N_KEYS, d2)).astype(np.float32)
q1 = rng.standard_normal(d2).astype(np.float32)
t_exact = best_of(lambda: keys_big @ q1, repeat=5)
print(
    f"\n{N_KEYS} keys of dim {d2}: exact float32 keys @ q takes {t_exact * 1e3:.3f} ms, "
    f"reading {keys_big.nbytes / 1e6:.1f} MB"
)


# %%
def kernel_only(method, quantizer, x):
    """The backend's encode operation alone, on what the quantizer hands it (its plan and rows)."""
    rows = quantizer.prepare_vectors(x)
    if method.startswith("TurboQuant"):
        return lambda ops: ops.scalar_encode(quantizer.plan, rows)
    if method.startswith("QJL"):
        return lambda ops: ops.sign_encode(quantizer.plan, rows)
    return lambda ops: ops.polar_encode(quantizer.plan, rows)


timing = {}
for method, make in methods.items():
    quantizers = {name: make(name, dim=d2) for name in COMPARE}
    if HAVE_NUMBA:  # warm-up: compile, or load the kernels from Numba's cache
        t0 = time.perf_counter()
        warm = quantizers["numba"].encode(keys_big[:64])
        quantizers["numba"].score(q1, warm)
        print(f"{method:22} numba warm-up: {time.perf_counter() - t0:.3f} s")
    op = kernel_only(method, quantizers["numpy"], keys_big)
    codes = quantizers["numpy"].encode(keys_big)
    row = {"bytes": codes.nbytes}
    for name, quantizer in quantizers.items():
        ops = pq.get_backend(name)
        row[name] = {
            "encode": best_of(lambda q=quantizer: q.encode(keys_big)),
            "kernel": best_of(lambda o=ops, f=op: f(o)),
            "score": best_of(lambda q=quantizer, c=codes: q.score(q1, c)),
        }
    timing[method] = row

head = f"{'method':22}{'backend':>8}{'encode Mvec/s':>15}{'kernel Mvec/s':>15}{'score ms':>10}{'x exact':>9}"
print("\n" + head + "\n" + "-" * len(head))
for method, row in timing.items():
    for name in COMPARE:
        t = row[name]
        print(
            f"{method:22}{name:>8}{N_KEYS / t['encode'] / 1e6:>15.2f}{N_KEYS / t['kernel'] / 1e6:>15.2f}"
            f"{t['score'] * 1e3:>10.3f}{t['score'] / t_exact:>9.2f}"
        )
print(f"{'exact keys @ q':22}{'BLAS':>8}{'':>30}{t_exact * 1e3:>10.3f}{1:>9.2f}")
print("\nbytes read per key: float32", keys_big.nbytes // N_KEYS, "| ", end="")
print(", ".join(f"{k} {r['bytes'] // N_KEYS}" for k, r in timing.items()))

# %% [markdown]
# The facts that hold on any machine, with wide margins: the codes read at least 4x fewer bytes
# than float32 keys (7.8x, 15x and 8.3x here: exact, from the layout), and where Numba is
# installed, its score from codes beats the NumPy reference's score (which unpacks a chunk of
# codes into floats before one matrix product) and its encode kernel beats the reference's
# two-pass encode, each by an order of magnitude on the development machine, so a factor of 1 is
# a safe floor.  The comparisons with the exact product and the whole-`encode` speed-ups are shown,
# not asserted: they depend on the cache sizes, the BLAS and the load of the machine.

# %%
for method, row in timing.items():
    assert keys_big.nbytes / row["bytes"] >= 4, method
    if HAVE_NUMBA:
        assert row["numba"]["score"] < row["numpy"]["score"], method
        assert row["numba"]["kernel"] < row["numpy"]["kernel"], method

labels = [k.replace(" ", "\n", 1) for k in timing]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
if HAVE_NUMBA:
    speedups = {
        what: [row["numpy"][key] / row["numba"][key] for row in timing.values()]
        for what, key in (
            ("encode (whole call)", "encode"),
            ("encode (kernel only)", "kernel"),
            ("score from codes", "score"),
        )
    }
    plotting.grouped_bars(
        axes[0], labels, speedups, ref=1, ref_label="no speed-up", ylabel="numpy time / numba time"
    )
    axes[0].set_title("Numba over the NumPy reference (higher is better)")
else:
    axes[0].text(0.5, 0.5, "numba not installed", ha="center", va="center")
    axes[0].set_axis_off()
vs_exact = {name: [row[name]["score"] / t_exact for row in timing.values()] for name in COMPARE}
plotting.grouped_bars(
    axes[1],
    labels,
    vs_exact,
    ref=1,
    ref_label="exact float32 keys @ q",
    ylabel="score time / exact time",
    fmt="{:.2f}",
)
axes[1].set_title(f"one query vs {N_KEYS} keys (lower is better)")
plotting.show(fig)

# %% [markdown]
# How to read the two panels (the numbers vary from run to run and from machine to machine; the
# pattern should not):
#
# * **Scores.**  The reference is tens of times slower than the exact product: it is the readable
#   oracle, not the fast path.  Numba's byte tables bring TurboQuant and QJL close to the exact
#   product, or past it when the float32 keys no longer fit in the caches (at one million keys,
#   `docs/performance.md` measures QJL at about 0.7x of the exact time and TurboQuantMSE near 1x,
#   while reading 15x and 7.8x fewer bytes).  At the tutorial's small sizes the float32 keys may
#   still sit in cache, which flatters the exact product.  PolarQuant stays slower than exact
#   (about 1.7x at a million keys): each key still decodes its radii and rebuilds its 32 level-2
#   radii ($d = 128$) before its table lookups, and with few keys the backend does not fold level
#   2 at all (the folded table would cost more than it saves).
# * **Encode.**  The kernels gain an order of magnitude; the whole `encode` gains less,
#   because both backends share the NumPy/BLAS work around the kernel (norms, the rotation
#   $x Q^\top$ or the sketch $x S^\top$, the float16 norms).  Amdahl's law: for QJL the sketch is
#   most of the time, so the whole call gains the least.
# * **Threads.**  The Numba kernels run on all the threads printed above; the exact product and the
#   rotations run on the BLAS threads (the test suite pins BLAS to one thread).  Compare like with
#   like before quoting a ratio.

# %% [markdown]
# ## 5. The GPU path
#
# The `cupy` backend implements the same eleven operations as raw CUDA kernels
# (`backends/cupy_backend/scalar.cu`, `sign.cu` and `polar.cu`, one file per algorithm beside
# their shared `common.cuh`, shipped with the package and compiled at first use by CuPy's NVRTC,
# cached by CuPy):
#
# * **encode**: one thread per output byte searches its $8/b$ codes (boundaries staged in shared
#   memory) and writes the byte; sign bits likewise, 8 comparisons per byte; PolarQuant encodes
#   with one thread block per row, the level loop of the polar transform in shared memory;
# * **score**: the byte-table trick of Section 2, per query a table $T[v][j]$ in **shared memory**,
#   then a group of lanes (a power of two, at most a warp) sums one row's lookups; queries run on
#   the grid's second dimension;
# * every loop is **grid-stride**, so any grid size is correct and the host caps it by the device;
#   launch sizes and shared memory are planned by `cupy_backend/_launch.py`;
# * CuPy arrays only: NumPy input is a `TypeError` (move data yourself with `cupy.asarray`).
#
# **GPU execution is not verified yet in this release.**  The CUDA sources are compile-checked
# with nvcc (sm_80, sm_90), the host logic is tested with the launch mocked, and the kernel bodies
# are compiled as plain C++ and checked against the reference on the CPU.  No kernel has been run
# on a GPU; `scripts/gpu_check.sh` is the prepared check (GPU tests and benchmark) for a machine
# with one, and `docs/performance.md` will record its results.

# %%
print("cupy backend:", status["cupy"] or "available (run scripts/gpu_check.sh to check it)")
cu_files = sorted(
    f
    for f in resources.files("polarquant.backends.cupy_backend").iterdir()
    if f.name.endswith(".cu")
)
for cu in cu_files:  # one file per algorithm: scalar.cu, sign.cu, polar.cu
    kernels_cu = sorted(set(re.findall(r"__global__ void (\w+)_f(?:32|64)\(", cu.read_text())))
    print(
        f"{cu.name}: {len(kernels_cu)} CUDA kernels (float32 and float64):", ", ".join(kernels_cu)
    )
if not cu_files:
    print("the CUDA sources are not part of this installation")

# %% [markdown]
# ## Exercises
#
# **Exercise 1 (a byte table by hand).**  Take 16 two-bit codes, the 4 centroids of
# `pq.codebooks.coordinate_codebook(16, 2)` and a random query $q \in \mathbb R^{16}$.  Pack the
# codes with `polarquant.packing.pack_codes` (4 bytes; check the layout on
# `pack_codes([1, 2, 3, 0], 2) == [108]`: most significant bits first).  Build the table
# $T[j, v] = \sum_{t=0}^{3} q_{4j+t}\, c[\text{code } t \text{ of } v]$ with plain loops and
# shifts, score the key as $\sum_j T[j, \mathrm{byte}_j]$, and compare with
# `numpy_backend.scalar_score` and with $\sum_i q_i c[\mathrm{code}_i]$.

# %% [markdown] tags=["solution"]
# **Solution** (expand the hidden cell).

# %% jupyter={"source_hidden": true} tags=["solution"]
assert packing.pack_codes(np.array([1, 2, 3, 0], dtype=np.uint8), 2)[0] == 108  # 01 10 11 00
ex_rng = np.random.default_rng(8)
c2 = np.asarray(pq.codebooks.coordinate_codebook(16, 2).centroids, dtype=np.float64)
q16 = ex_rng.standard_normal(16)
code16 = ex_rng.integers(0, 4, size=16).astype(np.uint8)
key_bytes = packing.pack_codes(code16, 2)  # 4 bytes, 4 codes each

table = np.zeros((4, 256))
for j in range(4):
    for v in range(256):
        for t in range(4):  # code t of byte v sits 6 - 2t bits up
            table[j, v] += q16[4 * j + t] * c2[(v >> (6 - 2 * t)) & 3]
by_table = sum(table[j, key_bytes[j]] for j in range(4))
plan16 = pq.plan.ScalarPlan(16, pq.codebooks.coordinate_codebook(16, 2))  # 16 two-bit codes
by_reference = ref.scalar_score(plan16, q16[None, :], key_bytes[None, :])[0, 0]
direct = float(q16 @ c2[code16])
print(
    f"bytes {key_bytes.tolist()}: table {by_table:.12f}, reference {by_reference:.12f}, "
    f"direct {direct:.12f}"
)
assert abs(by_table - direct) < 1e-12 and abs(by_reference - direct) < 1e-12

# %% [markdown]
# **Exercise 2 (bytes read per key).**  Score-from-codes is memory-bound, so its cost is driven by
# the bytes read per key.  Predict from `nbytes_per_vector()` how many bytes each of these
# quantizers reads per key at $d = 128$, and the factor saved against float32 (512 bytes) and
# fp16 (256 bytes): `TurboQuantMSE(128, bits=2)`, `TurboQuantProd(128, bits=3)`,
# `QJL(128, proj_dim=512)`, `PolarQuantQJL(128, proj_dim=64)`.  Check against `codes.nbytes` of
# 1000 encoded keys.  Which one reads the fewest bytes, and is that the one you would pick?

# %% [markdown] tags=["solution"]
# **Solution.**

# %% jupyter={"source_hidden": true} tags=["solution"]
candidates = {
    "TurboQuantMSE b=2": pq.TurboQuantMSE(128, bits=2, seed=0),  # 32 + 2
    "TurboQuantProd b=3": pq.TurboQuantProd(128, bits=3, seed=0),  # 32 + 16 + 2 + 2
    "QJL m=512": pq.QJL(128, proj_dim=512, seed=0),  # 64 + 2
    "PolarQuantQJL m=64": pq.PolarQuantQJL(128, proj_dim=64, seed=0),  # 62 + 8 + 2
}
sample = keys_big[:1000]
for name, quantizer in candidates.items():
    per_key = quantizer.nbytes_per_vector()
    measured = quantizer.encode(sample).nbytes / len(sample)
    print(
        f"{name:20} {per_key:3d} bytes/key: {512 / per_key:5.1f}x fewer than float32, "
        f"{256 / per_key:4.1f}x fewer than fp16"
    )
    assert measured == per_key
# TurboQuantMSE at 2 bits reads the fewest bytes (34), but its D_mse is ~0.12 (notebook 5):
# bytes read set the speed of a score, not its accuracy; notebook 6 compares at equal bits.

# %% [markdown]
# **Exercise 3 (when the byte table does not apply).**  At 3 bits, codes straddle bytes
# ($8 \cdot 3 = 24$ bits: 8 codes in 3 bytes), so the Numba backend uses one lookup per **code**
# in a table $T[j, k] = (Qq)_j\,c_k$ instead of one per **byte**.  For `TurboQuantMSE(128, bits)`
# with $b = 3$ and $b = 4$, predict the bytes read and the number of lookups per key.  Then check
# that Numba's 3-bit scores agree with the reference, and time Numba's score at 3 and 4 bits on
# the same keys.  Is 3 bits faster because it reads fewer bytes?

# %% [markdown] tags=["solution"]
# **Solution.**

# %% jupyter={"source_hidden": true} tags=["solution"]
# Predictions: 4 bits: 64 + 2 bytes, 64 lookups (one per byte, two codes each);
#              3 bits: 48 + 2 bytes, 128 lookups (one per code) plus unpacking the straddling codes.
if not HAVE_NUMBA:
    print("numba not installed: nothing to compare")
else:
    for b in (3, 4):
        q_np = pq.TurboQuantMSE(d2, bits=b, seed=0, backend="numpy")
        q_nb = pq.TurboQuantMSE(d2, bits=b, seed=0, backend="numba")
        codes_b = q_np.encode(keys_big)
        q4, some = keys_big[:4], codes_b[:1000]  # 4 queries against 1000 keys
        diff = np.abs(q_nb.score(q4, some) - q_np.score(q4, some))
        cs_b = np.linalg.norm(q4, axis=1)[:, None] * np.linalg.norm(keys_big[:1000], axis=1)
        assert np.max(diff / cs_b) < 1e-5
        t = best_of(lambda q=q_nb, c=codes_b: q.score(q1, c))
        print(
            f"{b} bits: {q_np.nbytes_per_vector()} bytes/key, numba score {t * 1e3:.3f} ms "
            f"({t / t_exact:.2f}x exact)"
        )
# Typically 3 bits is *slower* than 4 despite reading 25% fewer bytes: twice the lookups, and
# codes that must be unpacked first.  On a memory-bound machine with a huge cache the balance can
# shift; that is why the byte tables are reserved for 1, 2, 4 and 8 bits.
