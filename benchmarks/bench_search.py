"""Vector search speed: ``VectorIndex`` against exact float32 brute force and FAISS (not a test).

Usage::

    python benchmarks/bench_search.py                    # 1M x 128, 4-bit TurboQuantMSE
    python benchmarks/bench_search.py --n 200000         # quicker
    python benchmarks/bench_search.py --json out.json

The speed targets of the vector-index issue, measured in one run on one machine, on
``--n`` standard-normal vectors of dimension ``--dim``, normalised (synthetic: no real set of
a million vectors with d >= 128 installs offline; recall on real data is
``polarquant search-eval``'s job), with ``--queries`` other normalised vectors:

* **one query, top-10**: ``index.search(q, 10)`` on the numpy and numba backends against
  exact float32 ``keys @ q`` plus ``argpartition`` (the baseline of the ratio);
* **a batch of queries, top-10**: the same against exact brute force (BLAS products of blocks
  of 256 queries with blocks of keys, the running top 10 merged block by block; and FAISS's
  exact ``IndexFlatIP`` when FAISS is installed);
* **build**: ``index.add`` (encoding, no training) against FAISS ``IndexPQ`` at the same
  bytes per vector (``M = 64`` sub-quantizers of 8 bits for 64 code bytes; polarquant's
  66 are the 64 code bytes and a 2-byte norm), trained on ``--train`` vectors, then added;
* **peak memory of add**: ``tracemalloc``'s peak over the input's size (target: under 2).

Times are best of ``--repeat`` after a warm-up call (Numba's compilation is never timed).
FAISS (``pip install faiss-cpu``, in the ``search-eval`` extra) is optional: without it the
build comparison is reported as missing.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
from _common import best_of, machine, unit_rows, write_json

import polarquant as pq
from polarquant.search.topk import TopK

#: Scores per block of the exact brute force (as the index: 4M floats, 16 MB).
BLOCK = 1 << 22


def exact_top_k(keys: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact float32 brute force: ids of the k largest inner products, best first.

    Blocks of at most 256 queries times ``BLOCK / 256`` keys: one BLAS product per block
    (the keys are read once per block of queries, not once per query) and the running top k
    merged block by block (:class:`polarquant.search.topk.TopK`, the index's own selection).
    One query is ``keys @ q`` and one ``argpartition``.
    """
    if queries.shape[0] == 1:
        s = keys @ queries[0]
        top = np.argpartition(-s, k - 1)[:k]
        return top[np.argsort(-s[top])][None, :]
    out = np.empty((queries.shape[0], k), np.int64)
    qb = 256
    rb = max(k, BLOCK // qb)
    for a in range(0, queries.shape[0], qb):
        top = TopK(k)
        for r in range(0, keys.shape[0], rb):
            top.push(queries[a : a + qb] @ keys[r : r + rb].T, r)
        out[a : a + qb] = top.finish()[1]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--train", type=int, default=100_000, help="FAISS PQ training vectors")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    keys = unit_rows(rng, args.n, args.dim)
    queries = unit_rows(rng, args.queries, args.dim)
    k = 10
    results = {"machine": machine(), "args": vars(args), "rows": []}

    def row(what, seconds, baseline, **extra):
        entry = {"what": what, "ms": 1e3 * seconds, "ratio": seconds / baseline, **extra}
        results["rows"].append(entry)
        print(f"{what:<46} {1e3 * seconds:10.1f} ms   {seconds / baseline:6.2f}x", flush=True)

    one = queries[:1]
    exact_one = best_of(lambda: exact_top_k(keys, one, k), args.repeat)
    exact_batch = best_of(lambda: exact_top_k(keys, queries, k), max(1, args.repeat // 2))
    row("exact float32, 1 query (keys @ q + argpartition)", exact_one, exact_one)
    row(f"exact float32, {args.queries} queries (BLAS)", exact_batch, exact_batch)
    try:
        import faiss
    except ImportError:
        faiss = None
        print("FAISS not installed: no FAISS rows (pip install faiss-cpu)")
    if faiss is not None:
        flat = faiss.IndexFlatIP(args.dim)
        flat.add(keys)
        row(
            "FAISS IndexFlatIP, 1 query",
            best_of(lambda: flat.search(one, k), args.repeat),
            exact_one,
        )
        row(
            f"FAISS IndexFlatIP, {args.queries} queries",
            best_of(lambda: flat.search(queries, k), max(1, args.repeat // 2)),
            exact_batch,
        )
        del flat

    build = {}
    for backend in ("numpy", "numba"):
        if pq.available_backends()[backend] is not None:
            continue
        quantizer = pq.TurboQuantMSE(args.dim, args.bits, seed=1, backend=backend)
        index = pq.VectorIndex(quantizer, "ip")
        index.add(keys[:1000])  # warm-up: compile
        index = pq.VectorIndex(quantizer, "ip")
        t0 = time.perf_counter()
        index.add(keys)
        build[backend] = time.perf_counter() - t0
        index.search(queries[:2], k)
        index.search(queries[:64], k)
        t1 = best_of(lambda index=index: index.search(one, k), args.repeat)
        tb = best_of(lambda index=index: index.search(queries, k), max(1, args.repeat // 2))
        name = f"TurboQuantMSE {args.bits}-bit, {backend}"
        row(f"{name}, 1 query", t1, exact_one)
        row(f"{name}, {args.queries} queries", tb, exact_batch)
        bytes_per_vector = index.nbytes / len(index)
        results.setdefault("bytes_per_vector", bytes_per_vector)

    quantizer = pq.TurboQuantMSE(args.dim, args.bits, seed=1, backend="numpy")
    index = pq.VectorIndex(quantizer, "ip")
    tracemalloc.start()
    try:
        index.add(keys)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    results["add_peak_over_input"] = peak / keys.nbytes
    print(f"peak memory of add (numpy backend): {peak / keys.nbytes:.2f}x the input")

    if faiss is not None:
        pqi = faiss.IndexPQ(args.dim, args.dim // 2, 8, faiss.METRIC_INNER_PRODUCT)
        t0 = time.perf_counter()
        pqi.train(keys[: args.train])
        pqi.add(keys)
        faiss_build = time.perf_counter() - t0
        results["faiss"] = {"version": faiss.__version__, "threads": faiss.omp_get_max_threads()}
        row(
            f"FAISS IndexPQ {args.dim // 2}x8 build (train {args.train} + add)",
            faiss_build,
            faiss_build,
        )
        for backend, seconds in build.items():
            row(f"polarquant add, {backend} (vs FAISS PQ build)", seconds, faiss_build)
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
