"""NumPy reference vs Numba kernels: encode, score from codes, encode memory (not a test).

Usage::

    python benchmarks/bench_backends.py              # dim 128, one million float32 vectors
    python benchmarks/bench_backends.py --n 100000   # quicker
    python benchmarks/bench_backends.py --json out.json

Three tables, all on the same ``n x dim`` float32 keys (standard normal, seeded):

1. **Encode** (TurboQuantMSE 4-bit, PolarQuant (4, 2, 2, 2), QJL m = 256):
   vectors per second with ``backend="numpy"`` and ``backend="numba"``, and the
   speed-up.  Two rows per method: the whole ``quantizer.encode`` (norms,
   rotation or sketch ``x @ S.T`` by BLAS, the backend's encode operation,
   float16 norms; the same NumPy code on both backends except the operation)
   and the backend operation alone on the rotated/projected rows (what the
   kernel replaces).  The NumPy reference is timed on ``min(n, --ref-n)`` rows
   and scaled linearly (it is linear in ``n``; timing it on a million rows takes
   minutes).
2. **Score from codes**, one query against the ``n`` compressed keys, against
   the exact float32 ``keys @ q`` on the uncompressed keys measured in the same
   run: milliseconds, the ratio (below 1: faster than exact) and the bytes
   each reads (compressed ``nbytes`` against ``4 n dim``).
3. **Encode memory**: peak of the allocations ``tracemalloc`` sees during
   ``encode`` (NumPy's arrays; Numba's few kernel scratch buffers are not
   traced) divided by the input's bytes.

Timings are the best of ``--repeat`` runs after a warm-up call (Numba's first
call compiles, or loads the compiled kernels from its cache: never timed).
The machine (CPU model, cores, NumPy, Numba, BLAS) is printed with the tables
and stored in the JSON.
"""

from __future__ import annotations

import argparse
import json
import tracemalloc

import numpy as np
from _common import best_of, write_json
from _common import machine as common_machine

import polarquant as pq


def machine() -> dict:
    import numba
    from polarquant.backends import get_backend

    # load the backend before anything starts Numba's threads: loading it calls
    # numba_backend.configure_threads(), whose libgomp spin count is read when the threads start
    get_backend("numba")
    return {
        **common_machine(),
        "numba": numba.__version__,
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": numba.config.THREADING_LAYER,
    }


def methods(d: int) -> dict:
    """name -> factory(backend)."""
    return {
        "TurboQuantMSE b=4": lambda be: pq.TurboQuantMSE(d, 4, backend=be),
        "PolarQuant 4,2,2,2": lambda be: pq.PolarQuant(d, 4, (4, 2, 2, 2), backend=be),
        "QJL m=256": lambda be: pq.QJL(d, 256, backend=be),
    }


def op_call(q, x, backend: str):
    """The backend's encode operation alone, on what the quantizer hands it (``prepare_vectors``)."""
    from polarquant.backends import get_backend

    ops = get_backend(backend)
    rows = q.prepare_vectors(x)
    encode = {
        pq.TurboQuantMSE: ops.scalar_encode,
        pq.PolarQuant: ops.polar_encode,
        pq.QJL: ops.sign_encode,
    }[type(q)]
    return lambda n=None: encode(q.plan, rows[:n])


def encode_rows(args, keys) -> list:
    rows = []
    ref_n = min(args.n, args.ref_n)
    for name, make in methods(args.dim).items():
        qn, qb = make("numpy"), make("numba")
        qb.encode(keys[:100])  # compile or load the kernels; build the constants
        qn.encode(keys[:100])
        t_numba = best_of(lambda q=qb: q.encode(keys), args.repeat)
        t_numpy = best_of(lambda q=qn: q.encode(keys[:ref_n]), 1) * args.n / ref_n
        op_b, op_n = op_call(qb, keys, "numba"), op_call(qn, keys, "numpy")
        op_b(100)
        t_op_numba = best_of(op_b, args.repeat)
        t_op_numpy = best_of(lambda f=op_n: f(ref_n), 1) * args.n / ref_n
        for what, tn, tb in (
            ("quantizer.encode", t_numpy, t_numba),
            ("backend op only", t_op_numpy, t_op_numba),
        ):
            rows.append(
                {
                    "method": name,
                    "what": what,
                    "numpy_s": tn,
                    "numba_s": tb,
                    "numpy_Mvec_s": args.n / tn / 1e6,
                    "numba_Mvec_s": args.n / tb / 1e6,
                    "speedup": tn / tb,
                }
            )
    return rows


def score_rows(args, keys, q1) -> tuple[float, list]:
    base = best_of(lambda: keys @ q1, args.repeat * 3)
    rows = []
    ref_n = min(args.n, args.ref_n)
    for name, make in methods(args.dim).items():
        qb, qn = make("numba"), make("numpy")
        codes = qb.encode(keys)
        qb.score(q1, codes[:100])  # warm up
        t = best_of(lambda q=qb, c=codes: q.score(q1, c), args.repeat * 3)
        t_numpy = best_of(lambda q=qn, c=codes[:ref_n]: q.score(q1, c), 1) * args.n / ref_n
        rows.append(
            {
                "method": name,
                "numba_ms": t * 1e3,
                "numpy_ms": t_numpy * 1e3,
                "vs_exact": t / base,
                "bytes_read": codes.nbytes,
                "exact_bytes_read": keys.nbytes,
                "fewer_bytes": keys.nbytes / codes.nbytes,
            }
        )
    return base, rows


def memory_rows(args, keys) -> list:
    rows = []
    for name, make in methods(args.dim).items():
        for backend in ("numpy", "numba"):
            q = make(backend)
            q.encode(keys[:100])  # constants and compiled kernels outside the measurement
            tracemalloc.start()
            q.encode(keys)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            rows.append(
                {
                    "method": name,
                    "backend": backend,
                    "peak_MB": peak / 1e6,
                    "peak_vs_input": peak / keys.nbytes,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="number of vectors")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument(
        "--ref-n",
        type=int,
        default=200_000,
        help="rows the slow NumPy reference is timed on (scaled linearly to --n)",
    )
    parser.add_argument("--json", default="benchmarks/results/bench_backends.json")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()

    why = pq.available_backends()["numba"]
    if why is not None:
        raise SystemExit(f"the numba backend is unavailable: {why}")
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    q1 = rng.standard_normal(args.dim).astype(np.float32)

    info = machine()
    print(
        f"polarquant {pq.__version__}: NumPy reference vs Numba, dim {args.dim}, "
        f"{args.n} float32 vectors, best of {args.repeat}"
    )
    print("machine:", json.dumps(info))

    enc = encode_rows(args, keys)
    print(f"\nencode (NumPy reference timed on {min(args.n, args.ref_n)} rows, scaled)")
    head = f"{'method':<22}{'what':<19}{'numpy Mvec/s':>13}{'numba Mvec/s':>13}{'speed-up':>10}"
    print(head + "\n" + "-" * len(head))
    for r in enc:
        print(
            f"{r['method']:<22}{r['what']:<19}{r['numpy_Mvec_s']:>13.3f}"
            f"{r['numba_Mvec_s']:>13.3f}{r['speedup']:>9.1f}x"
        )

    base, score = score_rows(args, keys, q1)
    print(
        f"\nscore from codes, 1 query vs exact float32 keys @ q ({base * 1e3:.2f} ms, "
        f"{keys.nbytes / 1e6:.0f} MB)"
    )
    head = (
        f"{'method':<22}{'numba ms':>10}{'x exact':>9}{'numpy ms':>10}"
        f"{'MB read':>9}{'fewer bytes':>13}"
    )
    print(head + "\n" + "-" * len(head))
    for r in score:
        print(
            f"{r['method']:<22}{r['numba_ms']:>10.2f}{r['vs_exact']:>9.2f}{r['numpy_ms']:>10.1f}"
            f"{r['bytes_read'] / 1e6:>9.1f}{r['fewer_bytes']:>12.1f}x"
        )

    mem = [] if args.skip_memory else memory_rows(args, keys)
    if mem:
        print(f"\nencode peak traced memory vs input ({keys.nbytes / 1e6:.0f} MB)")
        head = f"{'method':<22}{'backend':<9}{'peak MB':>9}{'x input':>9}"
        print(head + "\n" + "-" * len(head))
        for r in mem:
            print(
                f"{r['method']:<22}{r['backend']:<9}{r['peak_MB']:>9.1f}{r['peak_vs_input']:>9.2f}"
            )

    write_json(
        args.json,
        {
            "machine": info,
            "n": args.n,
            "dim": args.dim,
            "repeat": args.repeat,
            "exact_ms": base * 1e3,
            "encode": enc,
            "score": score,
            "memory": mem,
        },
    )
    if args.json:
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
