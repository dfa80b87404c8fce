"""Fast scan (issue 13): top-k from 4-bit codes and sign bits against BLAS and FAISS (not a test).

Usage::

    python benchmarks/bench_fastscan.py                   # 1M x 128, 3 rounds
    python benchmarks/bench_fastscan.py --n 200000 --rounds 1
    python benchmarks/bench_fastscan.py --json out.json

What the issue's targets name, in one run on one machine, over ``--n`` standard-normal vectors
of dimension ``--dim`` normalised (synthetic: no real set of a million vectors with d >= 128
installs offline; equality with the plain scan on real data is tested in
``tests/test_fastscan_kernels.py``), with normalised queries:

* **one query, top-10**: ``VectorIndex.search`` of TurboQuantMSE 4-bit codes on the numba
  backend with fast scan (byte-table candidates, exact values from the codes, certified),
  against exact float32 ``keys @ q`` + ``argpartition`` (the baseline of the ratios), FAISS
  ``IndexPQFastScan`` with 128 one-dimensional 4-bit sub-quantizers trained on the data (the
  same 64 code bytes per vector), and the index's plain scan (``fast_scan=False``);
* **a batch of 32 queries, top-10**, per query: the same, with the BLAS matrix product and a
  selection per query as the exact baseline;
* **QJL, m = 256 sign bits, one query top-10**: fast scan against exact ``keys @ q``;
* **the kernel alone** (``fastscan_topk``, one query, 1,000 candidates) on every instruction-set
  variant this machine runs, as the prototype measured it;
* **compile time**: the first search of a fresh process with an empty Numba cache (every
  fast-scan kernel it needs compiled) and of a second process on that cache.

Each timing is the best of ``--repeat`` calls after a warm-up; the whole set is measured
``--rounds`` times after a first round that is dropped (the first searches over freshly
built arrays run up to 2x slower while the kernel maps their pages), and the ratios reported
as median and range over the rounds.  Each timing starts after a pause of ``SETTLE_S``: BLAS
threads spin for a while after a product and slowed whatever ran next by up to 2x.  Threads: Numba's
pool, FAISS's OpenMP and BLAS use every core unless ``--threads`` sets how many (reported).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from _common import best_of as _best_of
from _common import machine, unit_rows, write_json

import polarquant as pq
from polarquant import fastscan

K = 10
BATCH = 32


#: Pause before each timing: BLAS worker threads keep spinning for a while after a product and
#: would take the cores from whatever is timed next.
SETTLE_S = 0.3


def best_of(fn, repeat: int) -> float:
    time.sleep(SETTLE_S)
    return _best_of(fn, repeat)


def exact_one(keys, q):
    s = keys @ q
    top = np.argpartition(-s, K - 1)[:K]
    return top[np.argsort(-s[top])]


def exact_batch(keys, queries):
    s = queries @ keys.T
    top = np.argpartition(-s, K - 1, axis=1)[:, :K]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, 1), axis=1), 1)


def _compile_times(n: int, dim: int) -> dict:
    """Seconds of the first fast-scan search in a fresh process with an empty Numba cache, then
    in a second process reading that cache (index building excluded)."""
    code = (
        "import time, numpy as np, polarquant as pq\n"
        f"x = np.random.default_rng(0).standard_normal(({n}, {dim}), dtype=np.float32)\n"
        f"index = pq.VectorIndex(pq.TurboQuantMSE({dim}, 4, seed=1, backend='numba'), "
        "fast_scan=True)\n"
        "index.add(x)\n"
        "t = time.perf_counter(); index.search(x[:1], 10); a = time.perf_counter() - t\n"
        "t = time.perf_counter(); index.search(x[:32], 10); b = time.perf_counter() - t\n"
        "print(a, b)\n"
    )
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for which in ("cold", "warm"):
            run = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
            )
            one, batch = map(float, run.stdout.split())
            out[which] = {"first search, 1 query": one, "first search, 32 queries": batch}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train", type=int, default=100_000, help="FAISS training vectors")
    ap.add_argument(
        "--threads", type=int, default=0, help="threads of Numba, FAISS and BLAS (default: all)"
    )
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    from polarquant.backends.numba_backend import _simd

    limiter = None
    if args.threads:
        import numba
        from threadpoolctl import threadpool_limits

        numba.set_num_threads(args.threads)
        limiter = threadpool_limits(args.threads)
    from polarquant.backends.numba_backend import fastscan as nbfs

    rng = np.random.default_rng(0)
    keys = unit_rows(rng, args.n, args.dim)
    queries = unit_rows(rng, BATCH, args.dim)
    one, batch = queries[:1], queries
    results = {
        "machine": machine(),
        "args": vars(args),
        "variant": _simd.variant(),
        "runnable": [v for v, why in _simd.available().items() if why is None],
    }
    print(f"fast-scan variant {results['variant']}; runnable {results['runnable']}")

    # fast_scan=True: also below MIN_VECTORS, so that a quick --n still measures it
    index = pq.VectorIndex(
        pq.TurboQuantMSE(args.dim, 4, seed=1, backend="numba"), "ip", fast_scan=True
    )
    index.add(keys)
    plain = pq.VectorIndex(index.quantizer, "ip", fast_scan=False)
    plain.add(keys)
    qjl = pq.VectorIndex(pq.QJL(args.dim, 256, seed=1, backend="numba"), "ip", fast_scan=True)
    qjl.add(keys)
    faiss = None
    try:
        import faiss
    except ImportError:
        print("FAISS not installed: no FAISS rows (pip install faiss-cpu)")
    if faiss is not None:
        fs = faiss.IndexPQFastScan(args.dim, args.dim, 4, faiss.METRIC_INNER_PRODUCT)
        fs.train(keys[: args.train])
        fs.add(keys)
        if args.threads:
            faiss.omp_set_num_threads(args.threads)
        results["faiss"] = {"version": faiss.__version__, "threads": faiss.omp_get_max_threads()}
    # results equal the plain scan's (exact from the codes)
    for a, b in ((index.search(batch, K)[1], plain.search(batch, K)[1]),):
        results["same_ids_as_plain_scan"] = float(np.mean(a == b))
    print(f"fast scan ids equal to the plain scan's: {results['same_ids_as_plain_scan']:.4f}")

    fplan = fastscan.FastScanPlan(4, args.dim)
    view = index._segments[0].view
    tq = fastscan.quantize_tables(
        fastscan.nibble_tables(
            fplan, index.quantizer.prepare_queries(one), index.quantizer.plan.centroids
        )
    )[0]
    bias = np.zeros(1)

    def kernel_alone():  # the variant is POLARQUANT_FASTSCAN's, set below
        return nbfs.fastscan_topk(fplan, tq, view.blocks, args.n, 1000, bias, view.scale)

    timings = {}
    for r in range(args.rounds + 1):  # round 0 warms up (page faults, huge pages) and is dropped
        t = {}
        t["exact float32, 1 query (keys @ q + argpartition)"] = best_of(
            lambda: exact_one(keys, one[0]), args.repeat
        )
        t["exact float32, 32 queries (BLAS + argpartition), per query"] = (
            best_of(lambda: exact_batch(keys, batch), max(1, args.repeat // 3)) / BATCH
        )
        for name, idx in (("fast scan", index), ("plain scan", plain)):
            idx.search(one, K)
            t[f"TurboQuantMSE 4-bit {name}, 1 query"] = best_of(
                lambda idx=idx: idx.search(one, K), args.repeat
            )
            t[f"TurboQuantMSE 4-bit {name}, 32 queries, per query"] = (
                best_of(lambda idx=idx: idx.search(batch, K), max(1, args.repeat // 3)) / BATCH
            )
        qjl.search(one, K)
        t["QJL m=256 fast scan, 1 query"] = best_of(lambda: qjl.search(one, K), args.repeat)
        if faiss is not None:
            t["FAISS IndexPQFastScan 128x4, 1 query"] = best_of(
                lambda: fs.search(one, K), args.repeat
            )
            t["FAISS IndexPQFastScan 128x4, 32 queries, per query"] = (
                best_of(lambda: fs.search(batch, K), max(1, args.repeat // 3)) / BATCH
            )
        for variant in results["runnable"]:
            if variant == "scalar" and args.n > 200_000:
                continue  # tens of ms: not the point
            os.environ[_simd.VARIANT_ENV] = variant
            _simd._chosen.cache_clear()
            kernel_alone()  # compiled outside the timing
            t[f"kernel fastscan_topk ({variant}), 1 query"] = best_of(kernel_alone, args.repeat)
        os.environ.pop(_simd.VARIANT_ENV, None)
        _simd._chosen.cache_clear()
        if r == 0:
            print("warm-up round done", flush=True)
            continue
        for what, s in t.items():
            timings.setdefault(what, []).append(s)
        print(f"round {r}/{args.rounds} done", flush=True)

    def ratio(what, base):
        return [a / b for a, b in zip(timings[what], timings[base], strict=True)]

    exact1 = "exact float32, 1 query (keys @ q + argpartition)"
    exact32 = "exact float32, 32 queries (BLAS + argpartition), per query"
    rows = []
    for what, seconds in timings.items():
        base = exact32 if "32 queries" in what else exact1
        rs = ratio(what, base)
        rows.append(
            {
                "what": what,
                "ms": 1e3 * statistics.median(seconds),
                "ms_range": [1e3 * min(seconds), 1e3 * max(seconds)],
                "vs_exact": statistics.median(rs),
                "vs_exact_range": [min(rs), max(rs)],
            }
        )
        print(
            f"{what:<62} {1e3 * statistics.median(seconds):8.2f} ms "
            f"[{1e3 * min(seconds):.2f}-{1e3 * max(seconds):.2f}]  "
            f"{statistics.median(rs):6.3f}x exact [{min(rs):.3f}-{max(rs):.3f}]"
        )
    results["rows"] = rows
    if faiss is not None:
        for ours, theirs in (
            ("TurboQuantMSE 4-bit fast scan, 1 query", "FAISS IndexPQFastScan 128x4, 1 query"),
            (
                "TurboQuantMSE 4-bit fast scan, 32 queries, per query",
                "FAISS IndexPQFastScan 128x4, 32 queries, per query",
            ),
        ):
            rs = ratio(ours, theirs)
            results.setdefault("vs_faiss", {})[ours] = [statistics.median(rs), min(rs), max(rs)]
            print(
                f"{ours}: {statistics.median(rs):.3f}x FAISS fast scan [{min(rs):.3f}-{max(rs):.3f}]"
            )
    t0 = time.perf_counter()
    results["compile"] = _compile_times(20_000, args.dim)
    print(
        f"compile (fresh cache, then a second process): {results['compile']} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    if limiter is not None:
        limiter.unregister()
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
