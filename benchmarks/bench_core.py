"""Throughput of the NumPy reference: encode, decode and score per method (not a test).

Usage::

    python benchmarks/bench_core.py            # dim 128, 100k vectors (the issue's size)
    python benchmarks/bench_core.py --n 20000  # quicker

For each method it times encode, decode and score-from-codes (one query, and a
batch of 32 queries) on ``n`` float32 vectors and reports vectors (or
coordinates) per second and the ratio against the baseline measured in the
same run: an exact float32 ``keys @ q`` on the uncompressed keys (``keys @ Q.T``
for the query batch).  A ratio above 1 means slower than the exact product.
The machine (CPU, cores, NumPy and BLAS) is printed with the table, and the
results are written as JSON next to it (``--json``).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from _common import best_of, machine, write_json

import polarquant as pq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default="benchmarks/results/bench_core.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    d = args.dim
    keys = rng.standard_normal((args.n, d)).astype(np.float32)
    q1 = rng.standard_normal(d).astype(np.float32)
    q32 = rng.standard_normal((32, d)).astype(np.float32)
    base1 = best_of(lambda: keys @ q1, args.repeat * 3)
    base32 = best_of(lambda: keys @ q32.T, args.repeat * 3)
    methods = {
        "TurboQuantMSE b=4": pq.TurboQuantMSE(d, 4),
        "TurboQuantProd b=4": pq.TurboQuantProd(d, 4),
        "QJL m=256": pq.QJL(d, 256),
        "PolarQuant 4,2,2,2": pq.PolarQuant(d, 4, (4, 2, 2, 2)),
        "PolarQuantQJL": pq.PolarQuantQJL(d),
        "TurboQuantMSE b=4 hadamard": pq.TurboQuantMSE(d, 4, rotation="hadamard"),
    }
    rows = []
    for name, quantizer in methods.items():
        codes = quantizer.encode(keys[:10])  # build and cache constants outside the timing
        t_enc = best_of(lambda q=quantizer: q.encode(keys), args.repeat)
        codes = quantizer.encode(keys)
        t_dec = best_of(lambda q=quantizer, c=codes: q.decode(c), args.repeat)
        t_s1 = best_of(lambda q=quantizer, c=codes: q.score(q1, c), args.repeat)
        t_s32 = best_of(lambda q=quantizer, c=codes: q.score(q32, c), args.repeat)
        rows.append(
            {
                "method": name,
                "bits_per_coordinate": codes.bits_per_coordinate,
                "bytes_read_vs_fp32": keys.nbytes / codes.nbytes,
                "encode_Mcoord_s": args.n * d / t_enc / 1e6,
                "decode_Mcoord_s": args.n * d / t_dec / 1e6,
                "score1_ms": t_s1 * 1e3,
                "score1_vs_exact": t_s1 / base1,
                "score32_ms": t_s32 * 1e3,
                "score32_vs_exact": t_s32 / base32,
            }
        )
    info = machine()
    print(f"polarquant {pq.__version__} NumPy reference, dim {d}, {args.n} float32 vectors")
    print("machine:", json.dumps(info))
    print(
        f"baseline exact float32 keys @ q: {base1 * 1e3:.2f} ms (1 query), "
        f"{base32 * 1e3:.2f} ms (32 queries)"
    )
    head = (
        f"{'method':<28}{'bits':>6}{'enc Mc/s':>10}{'dec Mc/s':>10}{'score1 ms':>11}"
        f"{'x exact':>9}{'score32 ms':>12}{'x exact':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['method']:<28}{r['bits_per_coordinate']:>6.3f}{r['encode_Mcoord_s']:>10.1f}"
            f"{r['decode_Mcoord_s']:>10.1f}{r['score1_ms']:>11.2f}{r['score1_vs_exact']:>9.1f}"
            f"{r['score32_ms']:>12.2f}{r['score32_vs_exact']:>9.1f}"
        )
    write_json(
        args.json,
        {
            "machine": info,
            "n": args.n,
            "dim": d,
            "baseline_ms": {"score1": base1 * 1e3, "score32": base32 * 1e3},
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
