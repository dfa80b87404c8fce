"""One decode step of attention over a long compressed KV cache (not a test).

Usage::

    python benchmarks/bench_kv.py                    # 32k tokens, Llama-3.1-8B layer shape
    python benchmarks/bench_kv.py --tokens 4096      # quicker
    python benchmarks/bench_kv.py --json out.json

One attention layer shaped like Llama-3.1-8B's (the papers' model): 8 kv heads,
32 query heads (grouped-query attention, G = 4), head_dim 128, batch 1,
``--tokens`` cached tokens (standard normal keys and values, seeded), of which
the newest 128 stay in the fp16 window.  For each key/value configuration, in
one run on one machine (the time of one decode step: the query of the newest
token against the whole cache):

* **exact**: float32 NumPy attention on the uncompressed keys and values
  (``polarquant.kv.exact_attention``: ``q K^T``, softmax, ``p V``), the baseline
  of every ratio;
* **from codes**: ``KVCache.attention`` (scores from the key codes with the
  query rotated or projected once per head, values summed from their codes in
  the rotated domain), on ``--backend`` (numba by default);
* **decode then attend**: ``KVCache.decoded()`` (every key and value decoded to
  float32) followed by the same exact attention, what implementations without
  a score-from-codes path do.

Reported: milliseconds (best of ``--repeat`` after a warm-up call, so Numba's
compilation is never timed), ratios against exact (below 1 is faster), the
bytes each path reads (the cache's ``nbytes`` against ``2 * 4 * H * T * d``
float32 bytes), and the machine.

``--device cuda`` runs all three on a GPU: CuPy arrays, exact attention with
CuPy's (cuBLAS) products, the cache on the ``cupy`` backend; every timed call
ends with a device synchronisation, so a time is the step's whole latency
(kernels, launches and the cache's reads back to the host).  The NumPy-only
baselines (``kivi``) are left out there.
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import best_of, machine, write_json
from polarquant.backends import get_backend

import polarquant as pq
from polarquant._array import to_host
from polarquant.kv import exact_attention

CONFIGS = {
    "turboquant-mse 4/4": dict(key_method="turboquant-mse", key_bits=4, value_bits=4),
    "turboquant-mse 3/3": dict(key_method="turboquant-mse", key_bits=3, value_bits=3),
    "turboquant-prod 4 / mse 4": dict(key_method="turboquant-prod", key_bits=4, value_bits=4),
    "qjl m=2d / mse 4": dict(key_method="qjl", key_bits=2, value_bits=4),
    "polarquant (4,2,2,2)": dict(
        key_method="polarquant",
        key_bits=(4, 2, 2, 2),
        value_method="polarquant",
        value_bits=(4, 2, 2, 2),
    ),
    "kivi 4/4": dict(key_method="kivi", key_bits=4, value_method="kivi", value_bits=4),
}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--q-heads", type=int, default=32)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--backend", default=None, help="numba on the CPU, cupy on a GPU")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    gpu = args.device == "cuda"
    if args.backend is None:
        args.backend = "cupy" if gpu else "numba"
    get_backend(args.backend)  # loaded first: the numba backend sets libgomp's spin count

    rng = np.random.default_rng(0)
    h, t, d = args.kv_heads, args.tokens, args.head_dim
    keys = rng.standard_normal((1, h, t, d), dtype=np.float32)
    values = rng.standard_normal((1, h, t, d), dtype=np.float32)
    q = rng.standard_normal((1, args.q_heads, 1, d), dtype=np.float32)
    configs = args.configs
    if gpu:
        import cupy as cp

        keys, values, q = cp.asarray(keys), cp.asarray(values), cp.asarray(q)
        configs = [c for c in configs if not c.startswith("kivi")]  # NumPy-only baseline

        def timed(fn, repeat):  # the whole step: its kernels have run when the clock stops
            def step():
                fn()
                cp.cuda.Device().synchronize()

            return best_of(step, repeat)

    else:
        timed = best_of

    exact_s = timed(lambda: exact_attention(q, keys, values), args.repeat)
    exact_bytes = keys.nbytes + values.nbytes
    rows = []
    for name in configs:
        cache = pq.KVCache(d, window=args.window, backend=args.backend, **CONFIGS[name])
        cache.append(keys, values)
        cache.attention(q)  # warm-up: compile or load the kernels
        codes_s = timed(lambda c=cache: c.attention(q), args.repeat)

        def decode_then_attend(c=cache):
            k, v = c.decoded()
            return exact_attention(q, k, v)

        decode_then_attend()
        decode_s = timed(decode_then_attend, max(2, args.repeat // 3))
        reference = to_host(decode_then_attend())
        err = float(
            np.linalg.norm(to_host(cache.attention(q)) - reference) / np.linalg.norm(reference)
        )
        rows.append(
            {
                "config": name,
                "bits_per_coordinate": cache.bits_per_coordinate,
                "nbytes": cache.nbytes,
                "bytes_ratio": exact_bytes / cache.nbytes,
                "from_codes_ms": 1e3 * codes_s,
                "decode_then_attend_ms": 1e3 * decode_s,
                "from_codes_vs_exact": codes_s / exact_s,
                "decode_vs_exact": decode_s / exact_s,
                "from_codes_vs_decode_rel_diff": err,
            }
        )

    info = machine()
    try:
        import numba

        info["numba"] = numba.__version__
        info["numba_threads"] = numba.get_num_threads()
    except ImportError:
        pass
    info["device"] = args.device
    if gpu:
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props["name"]
        info["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
        info["cupy"] = cp.__version__
    print(f"machine: {info}")
    print(
        f"one decode step: 1 query token, {args.q_heads} query heads / {h} kv heads, "
        f"head_dim {d}, {t} cached tokens (window {args.window}), backend {args.backend} "
        f"on the {args.device}"
    )
    print(f"exact float32 attention: {1e3 * exact_s:.2f} ms, reads {exact_bytes / 2**20:.1f} MiB")
    head = f"{'config':28s} {'bits':>5s} {'MiB':>7s} {'fewer B':>7s} {'codes ms':>9s} {'x exact':>7s} {'decode ms':>9s} {'x exact':>7s}"
    print(head)
    for r in rows:
        print(
            f"{r['config']:28s} {r['bits_per_coordinate']:5.2f} {r['nbytes'] / 2**20:7.1f} "
            f"{r['bytes_ratio']:7.2f} {r['from_codes_ms']:9.2f} {r['from_codes_vs_exact']:7.2f} "
            f"{r['decode_then_attend_ms']:9.2f} {r['decode_vs_exact']:7.2f}"
        )
    results = {"args": vars(args), "machine": info, "exact_ms": 1e3 * exact_s, "rows": rows}
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
