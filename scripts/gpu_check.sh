#!/usr/bin/env bash
# The one prepared check for a machine with a CUDA GPU (H100/H200, CUDA 13, cupy-cuda13x).
#
# The GPU machine reaches nothing outside it, and its image lacks array-api-compat (a
# dependency of polarquant). So, first, here (where pip works):
#     bash scripts/gpu_wheels.sh        # the missing wheels into .whl/ (git-ignored)
# then run this script there with the device tool, carrying them:
#     run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=580)
# Without them the script stops after the install phase, saying so (exit status 3).
#
# Run from the repository root; results go under $OUT (default ./gpu_out):
#   $OUT/env.txt           python, cupy, nvidia-smi, install log
#   $OUT/gpu_tests.txt     pytest -m gpu on tests/test_cuda.py, tests/test_backends.py and
#                          tests/test_kv_namespace.py (the KV cache on CuPy arrays)
#   $OUT/gpu_tests.xml     the same as JUnit XML
#   $OUT/gpu_bench.json    score-from-codes vs fp16 cuBLAS, bandwidth, encode throughput
#   $OUT/gpu_bench.txt     the same as a table
#   $OUT/kv_step.json      one decode step of KVCache.attention over 32k tokens (Llama-3.1-8B
#   $OUT/kv_step.txt       layer shape, cupy backend) against exact float32 attention
#   $OUT/kv_generate.json  generation with the KV cache on the GPU (cupy backend) against
#   $OUT/kv_generate.txt   DynamicCache, a random SmolLM2-shaped model (needs torch+CUDA)
# Every phase has its own time limit (install 30+45 s, tests 200 s, kernel benchmark
# 90 s, KV decode step 60 s, KV generation 110 s): the whole script stays under 9 minutes
# even when every phase runs out.
# The exit status is the tests' (the benchmark never fails the script).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
# The image's python3 holds PyTorch and CuPy; a plain `python` may be another one or none.
PY="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PYTHONUNBUFFERED=1
START=$(date +%s)
phase() { echo "== $1 ($(( $(date +%s) - START )) s)"; }

phase "environment"
{
    date -u
    "$PY" --version
    "$PY" -c "import cupy, sys; print('cupy', cupy.__version__, 'CUDA runtime', cupy.cuda.runtime.runtimeGetVersion(), 'available', cupy.is_available())" 2>&1
    nvidia-smi 2>&1 || echo "nvidia-smi failed"
} | tee "$OUT/env.txt"

phase "install (offline; cupy-cuda13x, numpy, scipy, torch are the image's)"
# 1. The carried wheels (scripts/gpu_wheels.sh) into a side folder on PYTHONPATH.
# 2. polarquant itself: an editable install without index, dependencies or build isolation
#    (setuptools is the image's); as a last resort a symlink tree that maps backends/ to
#    polarquant.backends as pyproject.toml does.
if compgen -G ".whl/*.whl" > /dev/null; then
    SITE="$(mktemp -d)"
    timeout 30 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$SITE" .whl/*.whl >> "$OUT/env.txt" 2>&1 \
        && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" \
        && echo "carried wheels: $(ls .whl | tr '\n' ' ')" >> "$OUT/env.txt"
fi
timeout 45 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . \
    >> "$OUT/env.txt" 2>&1 || echo "pip install -e . failed" >> "$OUT/env.txt"
if ! "$PY" -c "import polarquant.backends.cupy_backend" >> "$OUT/env.txt" 2>&1; then
    SHIM="$(mktemp -d)"
    mkdir -p "$SHIM/polarquant"
    for f in "$PWD"/polarquant/*; do ln -s "$f" "$SHIM/polarquant/"; done
    ln -s "$PWD/backends" "$SHIM/polarquant/backends"
    export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
    echo "using the symlink tree $SHIM" >> "$OUT/env.txt"
fi
if ! "$PY" -c "import polarquant, polarquant.backends as b; print('polarquant', polarquant.__version__, polarquant.__file__); print('backends', b.available())" >> "$OUT/env.txt" 2>&1; then
    tail -n 8 "$OUT/env.txt"
    echo "polarquant does not import here: a package is missing (above). Run" \
        "'bash scripts/gpu_wheels.sh' where pip works and carry .whl (see the header)."
    exit 3
fi
"$PY" -c "import pytest; print('pytest', pytest.__version__)" >> "$OUT/env.txt" 2>&1
tail -n 4 "$OUT/env.txt"

phase "GPU tests"
TESTS=()
for f in tests/test_cuda.py tests/test_backends.py tests/test_kv_namespace.py; do
    [ -f "$f" ] && TESTS+=("$f")
done
timeout 200 "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider \
    --junitxml="$OUT/gpu_tests.xml" "${TESTS[@]}" > "$OUT/gpu_tests.txt" 2>&1
TEST_RC=$?
tail -n 25 "$OUT/gpu_tests.txt"
echo "pytest exit status: $TEST_RC"

phase "benchmark"
timeout 90 "$PY" - "$OUT" <<'EOF' 2>&1 | tee "$OUT/gpu_bench.txt"
"""Score from codes vs fp16 cuBLAS, bandwidth and encode throughput (dim 128, 1M vectors)."""
import json
import os
import sys
import traceback

import numpy as np
import cupy as cp

import polarquant as pq
from polarquant.backends import cupy_backend as cb
from polarquant.backends.cupy_backend import _launch
from polarquant.codebooks import angle_codebook, coordinate_codebook
from polarquant.plan import PolarPlan, ScalarPlan, SignPlan

out_dir = sys.argv[1]
N, D = int(os.environ.get("PQ_BENCH_N", 1_000_000)), 128
dev = cp.cuda.Device()
rt = cp.cuda.runtime
props = rt.getDeviceProperties(dev.id)


def attr(code):
    return int(rt.deviceGetAttribute(code, dev.id))


# CUDA 13 dropped memoryClockRate from cudaDeviceProp: fall back to the attribute.
mem_clock_khz = int(props.get("memoryClockRate", 0) or attr(36))  # cudaDevAttrMemoryClockRate
bus_bits = int(props.get("memoryBusWidth", 0) or attr(37))  # cudaDevAttrGlobalMemoryBusWidth
peak = 2.0 * mem_clock_khz * 1e3 * bus_bits / 8  # double data rate, bytes/s
name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
report = {
    "device": name,
    "sm_count": attr(16),
    "memory_clock_khz": mem_clock_khz,
    "bus_width_bits": bus_bits,
    "peak_bandwidth_GBps": peak / 1e9,
    "n_vectors": N,
    "dim": D,
    "timing": "CUDA events, mean of 20 launches after 3 warm-up launches",
    "score": [],
    "encode": [],
    "errors": [],
}


def save():
    """Write what is measured so far (a timeout keeps the partial report)."""
    with open(f"{out_dir}/gpu_bench.json", "w") as fh:
        json.dump(report, fh, indent=2)


def timeit(fn, reps=20, warm=3):
    for _ in range(warm):
        fn()
    dev.synchronize()
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(reps):
        fn()
    stop.record()
    stop.synchronize()
    return cp.cuda.get_elapsed_time(start, stop) / reps / 1e3  # seconds


def score_row(label, fn, nbytes, baseline=None, note=""):
    try:
        t = timeit(fn)
        row = {"name": label, "time_us": t * 1e6, "bytes_read": int(nbytes),
               "GBps": nbytes / t / 1e9, "fraction_of_peak": nbytes / t / peak, "note": note}
        if baseline:
            row["speedup_vs_fp16_cublas"] = baseline / t
        report["score"].append(row)
        save()
        return t
    except Exception as exc:  # keep going: one failure must not lose the rest
        report["errors"].append(f"{label}: {exc!r}\n{traceback.format_exc()}")
        return None


def encode_row(label, fn, coords, note=""):
    try:
        t = timeit(fn, reps=5, warm=1)
        report["encode"].append({"name": label, "time_ms": t * 1e3,
                                 "coords_per_s": coords / t, "note": note})
        save()
    except Exception as exc:
        report["errors"].append(f"{label}: {exc!r}\n{traceback.format_exc()}")


rng = cp.random.default_rng(0)
x = rng.standard_normal((N, D), dtype=cp.float32)
x /= cp.linalg.norm(x, axis=1, keepdims=True)
q = rng.standard_normal((1, D), dtype=cp.float32)

# -- baseline: fp16 keys @ q with cuBLAS
keys16, q16 = x.astype(cp.float16), q[0].astype(cp.float16)
t_fp16 = score_row("fp16 keys @ q (cuBLAS)", lambda: keys16 @ q16, N * D * 2)

# -- score-from-codes kernels, one query
try:
    splan = ScalarPlan(D, coordinate_codebook(D, 4))  # what TurboQuantMSE(D, 4).plan holds
    codes = cb.scalar_encode(splan, x)
    score_row("TurboQuantMSE 4-bit codes (scalar_score, byte table)",
              lambda: cb.scalar_score(splan, q, codes), codes.nbytes, t_fp16)
    saved = _launch.LUT_MAX_SHARED_BYTES
    _launch.LUT_MAX_SHARED_BYTES = 0
    score_row("TurboQuantMSE 4-bit codes (scalar_score, gather)",
              lambda: cb.scalar_score(splan, q, codes), codes.nbytes, t_fp16)
    _launch.LUT_MAX_SHARED_BYTES = saved
    del codes
except Exception as exc:
    report["errors"].append(f"scalar: {exc!r}\n{traceback.format_exc()}")

try:
    m = 256
    gplan = SignPlan(m)
    s_proj = rng.standard_normal((N, m), dtype=cp.float32)
    signs = cb.sign_encode(gplan, s_proj)
    del s_proj
    sq = rng.standard_normal((1, m), dtype=cp.float32)
    score_row("QJL m=256 signs (sign_score, byte table)",
              lambda: cb.sign_score(gplan, sq, signs), signs.nbytes, t_fp16)
    saved = _launch.LUT_MAX_SHARED_BYTES
    _launch.LUT_MAX_SHARED_BYTES = 0
    score_row("QJL m=256 signs (sign_score, gather)",
              lambda: cb.sign_score(gplan, sq, signs), signs.nbytes, t_fp16)
    _launch.LUT_MAX_SHARED_BYTES = saved
    del signs
except Exception as exc:
    report["errors"].append(f"sign: {exc!r}\n{traceback.format_exc()}")

try:
    pbits = (4, 2, 2, 2)
    pplan = PolarPlan(D, tuple(angle_codebook(level, b) for level, b in enumerate(pbits, 1)))
    packed, radii = cb.polar_encode(pplan, x)  # all levels' angle codes in one array
    nbytes = packed.nbytes + radii.nbytes
    score_row("PolarQuant (4,2,2,2) (polar_score, float32 radii)",
              lambda: cb.polar_score(pplan, q, packed, radii), nbytes, t_fp16)
    encode_row("polar_encode kernel (4,2,2,2)", lambda: cb.polar_encode(pplan, x), N * D)
    del packed, radii
except Exception as exc:
    report["errors"].append(f"polar: {exc!r}\n{traceback.format_exc()}")

# -- encode kernels and end-to-end quantizers
try:
    plan4, plan_d = ScalarPlan(D, coordinate_codebook(D, 4)), SignPlan(D)
    encode_row("scalar_encode kernel 4-bit", lambda: cb.scalar_encode(plan4, x), N * D)
    encode_row("sign_encode kernel", lambda: cb.sign_encode(plan_d, x), N * D)
except Exception as exc:
    report["errors"].append(f"encode kernels: {exc!r}\n{traceback.format_exc()}")

queries = q
for label, make in [
    ("TurboQuantMSE(128, 4)", lambda: pq.TurboQuantMSE(D, 4, backend="cupy")),
    ("QJL(128, 256)", lambda: pq.QJL(D, 256, backend="cupy")),
    ("PolarQuant(128)", lambda: pq.PolarQuant(D, backend="cupy")),
]:
    try:
        quant = make()
        comp = quant.encode(x[:1000])  # build constants, compile
        encode_row(f"{label}.encode end to end (rotation, norms, codes)",
                   lambda: quant.encode(x), N * D, "includes the chunking of quantizer.py")
        comp = quant.encode(x)
        score_row(f"{label}.score end to end", lambda: quant.score(queries, comp),
                  comp.nbytes, t_fp16, "query rotation/projection, chunks, norms")
        del comp
    except Exception as exc:
        report["errors"].append(f"{label}: {exc!r}\n{traceback.format_exc()}")

# -- kernel attributes (registers, local memory) of what ran
attrs = {}
for (_, kname), k in list(_launch._kernels.items()):
    try:
        attrs[kname] = {a: getattr(k, a) for a in ("num_regs", "local_size_bytes",
                                                    "shared_size_bytes",
                                                    "max_dynamic_shared_size_bytes")}
    except Exception as exc:
        attrs[kname] = repr(exc)
report["kernels"] = attrs

save()

print(f"{name}: peak {peak / 1e9:.0f} GB/s ({mem_clock_khz} kHz x {bus_bits} bits x 2)")
print(f"{f'score, 1 query, {N} x {D}':62s} {'us':>9s} {'GB/s':>8s} {'%peak':>6s} {'vs fp16':>8s}")
for r in report["score"]:
    print(f"{r['name'][:62]:62s} {r['time_us']:9.1f} {r['GBps']:8.1f} "
          f"{100 * r['fraction_of_peak']:6.1f} {r.get('speedup_vs_fp16_cublas', 1.0):8.2f}")
print(f"{f'encode, {N} x {D}':62s} {'ms':>9s} {'Gcoord/s':>8s}")
for r in report["encode"]:
    print(f"{r['name'][:62]:62s} {r['time_ms']:9.2f} {r['coords_per_s'] / 1e9:8.2f}")
for e in report["errors"]:
    print("ERROR", e)
EOF

phase "KV cache decode step on the GPU (cupy backend) vs exact attention, 32k tokens"
timeout 60 "$PY" benchmarks/bench_kv.py --device cuda --tokens 32768 --repeat 5 \
    --json "$OUT/kv_step.json" > "$OUT/kv_step.txt" 2>&1
echo "exit status $?" >> "$OUT/kv_step.txt"
tail -n 9 "$OUT/kv_step.txt"

phase "KV cache generation on the GPU (cupy backend) vs DynamicCache"
if "$PY" -c "import torch, transformers, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        > /dev/null 2>&1; then
    timeout 110 "$PY" benchmarks/bench_kv_generate.py --device cuda --backend cupy \
        --random-weights --lengths 4096,8192 --steps 16 --repeats 1 \
        --json "$OUT/kv_generate.json" > "$OUT/kv_generate.txt" 2>&1
    echo "exit status $?" >> "$OUT/kv_generate.txt"
    tail -n 6 "$OUT/kv_generate.txt"
else
    echo "skipped: torch with CUDA and transformers are not installed here" | tee "$OUT/kv_generate.txt"
fi

phase "done"
exit $TEST_RC
