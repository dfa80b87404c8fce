"""Numba backend: cold compile cost and warm run time of each operation (not a test).

Usage::

    python benchmarks/bench_compile.py compile                  # CPU-s to compile, per kernel
    python benchmarks/bench_compile.py run --rows 100000        # warm run times, medians
    python benchmarks/bench_compile.py compile run --json out.json

    # before/after a change: one interpreter per version, run interleaved
    python benchmarks/bench_compile.py compile run \\
        --python before=/tmp/venv_before/bin/python --python after=python

The code before the plans change is measured through its own interface (old
signatures, its private constants): the only place that touches it, so that the
before/after tables of ``docs/performance.md`` can be reproduced.

The operations are the paper configurations, called on the backend directly
(what a quantizer hands it: rotated or sketched float32 rows, packed codes,
float16 radii):

* TurboQuantMSE, 4 bits, ``d = 128``: ``scalar_encode``, ``scalar_values``,
  ``scalar_score``, ``scalar_weighted_sum``;
* QJL, ``m = 256``: ``sign_encode``, ``sign_values``, ``sign_score``;
* PolarQuant, ``d = 128``, ``L = 4``, bits ``(4, 2, 2, 2)``, float16 radii:
  ``polar_encode``, ``polar_values``, ``polar_score`` on many rows (levels 1
  and 2 folded into the query's table) and on few rows (unfolded),
  ``polar_weighted_sum``.

**compile**: each operation runs in a fresh process with an empty
``NUMBA_CACHE_DIR`` (after one trivial compilation, so that LLVM's start-up is
not charged to the first kernel).  A listener on Numba's ``numba:compile``
events records the process CPU time (all threads) of every top-level
compilation: one line per kernel signature, helpers compiled on the way
included in their kernel.  ``op`` is the CPU time of the first call minus that
of a second, warm one (the whole cost of a cold first call: compilations plus
the entry point's tables).  The data of each operation is made by the NumPy
reference, so a decode compiles no encode kernel.

**run**: warm run times (the kernels compiled or loaded from the cache before
timing), ``--repeat`` calls per operation and round, the median over all the
rounds; with several ``--python``, the rounds of the interpreters alternate
(one process per round and interpreter), so that a loaded machine slows them
alike.

The script speaks both backend interfaces: the plan-first one
(``scalar_encode(plan, y)``) and the earlier one with codebooks and bit widths
as arguments (``scalar_encode(y, boundaries, bits)``), so that the same script
measures a checkout from before the change.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DIM = 128
SIGNS = 256
POLAR_BITS = (4, 2, 2, 2)
OPERATIONS = (
    "scalar_encode",
    "scalar_values",
    "scalar_score",
    "scalar_weighted_sum",
    "sign_encode",
    "sign_values",
    "sign_score",
    "polar_encode",
    "polar_values",
    "polar_score_folded",
    "polar_score_unfolded",
    "polar_weighted_sum",
)
#: Compile only: what PolarQuant with 2 and 3 levels adds once the 4-level kernels are compiled.
MORE_LEVELS = "polar_values_score_ws_L2_L3"


# -- the operations, through either interface (run in the child processes) ------------------------
def _plan_first(ref) -> bool:
    import inspect

    return next(iter(inspect.signature(ref.scalar_encode).parameters)) == "plan"


def _fold_rows(ops, plan) -> int:
    """Rows from which ``polar_score`` folds levels 1 and 2 (8192 for the paper's widths)."""
    if plan is None:  # the tree before plans (measured as "before"): fold_rows(dim, bits)
        return ops.fold_rows(DIM, POLAR_BITS)
    return ops.fold_rows(plan)


def cases(rows: int, queries: int, ops, ref) -> dict:
    """``op name -> call()`` on seeded data of ``rows`` rows (folded score: at least its threshold)."""
    import polarquant as pq

    rng = np.random.default_rng(0)
    tq = pq.TurboQuantMSE(DIM, 4)
    qjl = pq.QJL(DIM, SIGNS)
    polar = pq.PolarQuant(DIM, 4, POLAR_BITS)
    fold = _fold_rows(ops, getattr(polar, "plan", None))
    few = min(rows, fold - 1)
    many = max(rows, fold)
    y = (rng.standard_normal((max(rows, many), DIM)) / np.sqrt(DIM)).astype(np.float32)
    p = rng.standard_normal((rows, SIGNS)).astype(np.float32)
    q = rng.standard_normal((queries, DIM)).astype(np.float32)
    s = rng.standard_normal((queries, SIGNS)).astype(np.float32)
    w = rng.standard_normal((queries, rows)).astype(np.float32)
    f32 = np.float32
    if _plan_first(ref):
        sp, gp, pp = tq.plan, qjl.plan, polar.plan
        packed = ref.scalar_encode(sp, y[:rows])
        signs = ref.sign_encode(gp, p)
        codes, radii = ref.polar_encode(pp, y[:many])
        radii = radii.astype(np.float16)
        return {
            "scalar_encode": lambda: ops.scalar_encode(sp, y[:rows]),
            "scalar_values": lambda: ops.scalar_values(sp, packed, f32),
            "scalar_score": lambda: ops.scalar_score(sp, q, packed),
            "scalar_weighted_sum": lambda: ops.scalar_weighted_sum(sp, w, packed),
            "sign_encode": lambda: ops.sign_encode(gp, p),
            "sign_values": lambda: ops.sign_values(gp, signs, f32),
            "sign_score": lambda: ops.sign_score(gp, s, signs),
            "polar_encode": lambda: ops.polar_encode(pp, y[:rows]),
            "polar_values": lambda: ops.polar_values(pp, codes[:rows], radii[:rows], f32),
            "polar_score_folded": lambda: ops.polar_score(pp, q, codes, radii),
            "polar_score_unfolded": lambda: ops.polar_score(pp, q, codes[:few], radii[:few]),
            "polar_weighted_sum": lambda: ops.polar_weighted_sum(pp, w, codes[:rows], radii[:rows]),
            MORE_LEVELS: lambda: _more_levels(ops, ref, y[:rows], q, w),
        }
    # the interface before plans: codebooks (cast by the quantizer) and widths as arguments
    book = tq.stage.codebook
    bnd, cents = book.boundaries.astype(f32), book.centroids.astype(f32)
    pbnd = [cb.boundaries.astype(f32) for cb in polar.codebooks]
    pcents = [cb.centroids.astype(f32) for cb in polar.codebooks]
    packed = ref.scalar_encode(y[:rows], bnd, 4)
    signs = ref.sign_encode(p)
    levels, radii = ref.polar_encode(y[:many], 4, pbnd, POLAR_BITS)
    radii = radii.astype(np.float16)

    def cut(n):
        return [a[:n] for a in levels]

    return {
        "scalar_encode": lambda: ops.scalar_encode(y[:rows], bnd, 4),
        "scalar_values": lambda: ops.scalar_values(packed, cents, 4, DIM),
        "scalar_score": lambda: ops.scalar_score(q, packed, cents, 4, DIM),
        "scalar_weighted_sum": lambda: ops.scalar_weighted_sum(w, packed, cents, 4, DIM),
        "sign_encode": lambda: ops.sign_encode(p),
        "sign_values": lambda: ops.sign_values(signs, SIGNS, f32),
        "sign_score": lambda: ops.sign_score(s, signs, SIGNS),
        "polar_encode": lambda: ops.polar_encode(y[:rows], 4, pbnd, POLAR_BITS),
        "polar_values": lambda: ops.polar_values(cut(rows), radii[:rows], pcents, POLAR_BITS, DIM),
        "polar_score_folded": lambda: ops.polar_score(q, levels, radii, pcents, POLAR_BITS, DIM),
        "polar_score_unfolded": lambda: ops.polar_score(
            q, cut(few), radii[:few], pcents, POLAR_BITS, DIM
        ),
        "polar_weighted_sum": lambda: ops.polar_weighted_sum(
            w, cut(rows), radii[:rows], pcents, POLAR_BITS, DIM
        ),
        MORE_LEVELS: lambda: _more_levels(ops, ref, y[:rows], q, w),
    }


def _more_levels(ops, ref, y, q, w) -> None:
    """``polar_values``, ``polar_score`` (unfolded) and ``polar_weighted_sum`` with 2 and 3 levels."""
    import polarquant as pq

    for levels in (2, 3):
        polar = pq.PolarQuant(DIM, levels, POLAR_BITS[:levels])
        if _plan_first(ref):
            plan = polar.plan
            codes, radii = ref.polar_encode(plan, y)
            radii = radii.astype(np.float16)
            ops.polar_values(plan, codes, radii, np.float32)
            ops.polar_score(plan, q, codes, radii)
            ops.polar_weighted_sum(plan, w, codes, radii)
            continue
        bits = POLAR_BITS[:levels]
        bnd = [cb.boundaries.astype(np.float32) for cb in polar.codebooks]
        cents = [cb.centroids.astype(np.float32) for cb in polar.codebooks]
        codes, radii = ref.polar_encode(y, levels, bnd, bits)
        radii = radii.astype(np.float16)
        ops.polar_values(codes, radii, cents, bits, DIM)
        ops.polar_score(q, codes, radii, cents, bits, DIM)
        ops.polar_weighted_sum(w, codes, radii, cents, bits, DIM)


def _backends():
    from polarquant.backends import get_backend

    return get_backend("numba"), get_backend("numpy")


def child_compile(op: str) -> dict:
    """First (cold) and second call of ``op`` in this process; CPU-seconds per compiled kernel."""
    import numba
    from numba.core import event

    numba.njit(lambda x: x + 1)(1)  # LLVM's start-up, not charged to the first kernel
    ops, ref = _backends()
    calls = cases(64, 2, ops, ref)
    call = calls[op]
    if op == MORE_LEVELS:  # what 2 and 3 levels add to the paper's 4 (not timed)
        for first in ("polar_values", "polar_score_unfolded", "polar_weighted_sum"):
            calls[first]()
    kernels = []
    depth = [0]

    class Listener(event.Listener):
        def on_start(self, ev):
            depth[0] += 1
            if depth[0] == 1:
                self.start = time.process_time()

        def on_end(self, ev):
            depth[0] -= 1
            if depth[0] == 0:
                data = ev.data or {}
                disp = data.get("dispatcher")
                name = getattr(getattr(disp, "py_func", None), "__name__", str(disp))
                args = ", ".join(str(a) for a in data.get("args", ()))
                kernels.append(
                    {"kernel": name, "args": args, "cpu_s": time.process_time() - self.start}
                )

    listener = Listener()
    event.register("numba:compile", listener)
    t0 = time.process_time()
    call()
    first = time.process_time() - t0
    event.unregister("numba:compile", listener)
    t0 = time.process_time()
    call()
    warm = time.process_time() - t0
    return {"op": op, "op_cpu_s": first - warm, "kernels": kernels}


def child_run(rows: int, queries: int, repeat: int, names: list[str]) -> dict:
    """Warm run times of the operations ``names``: ``repeat`` calls each, all kept (seconds)."""
    ops, ref = _backends()
    times = {}
    calls = cases(rows, queries, ops, ref)
    for op in names:
        call = calls[op]
        call()  # compile or load from the cache, build the plan's tables
        samples = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            call()
            samples.append(time.perf_counter() - t0)
        times[op] = samples
    return times


# -- the driver -----------------------------------------------------------------------------------
def _child(python: str, args: list[str], cache_dir: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run(
        [python, os.path.abspath(__file__), "--child", *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=HERE,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_compile(pythons: dict, ops: list[str]) -> dict:
    """``label -> op -> child_compile result``, each in a fresh process and cache directory."""
    results = {label: {} for label in pythons}
    for op in ops:
        for label, python in pythons.items():  # interleaved
            cache = tempfile.mkdtemp(prefix="numba-cache-")
            try:
                results[label][op] = _child(python, ["compile", op], cache)
            finally:
                shutil.rmtree(cache, ignore_errors=True)
            r = results[label][op]
            print(f"  {label:>8} {op:<22} {r['op_cpu_s']:6.1f} CPU-s", file=sys.stderr)
    return results


def measure_run(
    pythons: dict, names: list[str], rows: int, queries: int, repeat: int, rounds: int
) -> dict:
    """``label -> op -> median seconds`` over ``rounds`` alternating processes."""
    caches = {label: tempfile.mkdtemp(prefix="numba-cache-") for label in pythons}
    samples = {label: {} for label in pythons}
    try:
        for i in range(rounds):
            for label, python in pythons.items():
                args = ["run", str(rows), str(queries), str(repeat), ",".join(names)]
                for op, ts in _child(python, args, caches[label]).items():
                    samples[label].setdefault(op, []).extend(ts)
            print(f"  round {i + 1}/{rounds} done", file=sys.stderr)
    finally:
        for cache in caches.values():
            shutil.rmtree(cache, ignore_errors=True)
    return {
        label: {op: statistics.median(ts) for op, ts in d.items()} for label, d in samples.items()
    }


def print_compile(results: dict) -> None:
    labels = list(results)
    print("\nCold compile, CPU-seconds (fresh process and NUMBA_CACHE_DIR per operation)")
    print(f"{'operation':<22}" + "".join(f"{label:>12}" for label in labels))
    for op in next(iter(results.values())):
        print(f"{op:<22}" + "".join(f"{results[label][op]['op_cpu_s']:12.1f}" for label in labels))
    for label in labels:
        print(f"\n[{label}] per kernel signature (CPU-s)")
        for op, r in results[label].items():
            for k in r["kernels"]:
                print(f"  {op:<22} {k['kernel']:<32} {k['cpu_s']:6.1f}  ({k['args']})")


def print_run(results: dict, rows: int, queries: int) -> None:
    labels = list(results)
    print(f"\nWarm run time, ms (median; {rows} rows, {queries} queries/weight rows, d={DIM})")
    head = f"{'operation':<22}" + "".join(f"{label:>12}" for label in labels)
    if len(labels) == 2:
        head += f"{labels[1] + '/' + labels[0]:>16}"
    print(head)
    for op in next(iter(results.values())):
        line = f"{op:<22}" + "".join(f"{results[label][op] * 1e3:12.2f}" for label in labels)
        if len(labels) == 2:
            line += f"{results[labels[1]][op] / results[labels[0]][op]:16.3f}"
        print(line)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *rest = sys.argv[2:]
        if kind == "compile":
            result = child_compile(rest[0])
        else:
            result = child_run(*(int(a) for a in rest[:3]), rest[3].split(","))
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="+", choices=("compile", "run"))
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="an interpreter to measure (repeatable); default: this one",
    )
    parser.add_argument(
        "--ops", nargs="*", default=list(OPERATIONS), choices=(*OPERATIONS, MORE_LEVELS)
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=4, help="queries (and weight rows)")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per round")
    parser.add_argument("--rounds", type=int, default=5, help="processes per interpreter")
    parser.add_argument("--json", default="", help="write the results here")
    args = parser.parse_args()
    pythons = dict(p.split("=", 1) for p in args.python) or {"this": sys.executable}
    out = {"pythons": pythons}
    sys.path.insert(0, HERE)
    from _common import machine

    out["machine"] = machine()
    if "compile" in args.what:
        more = [MORE_LEVELS] if args.ops == list(OPERATIONS) else []
        out["compile"] = measure_compile(pythons, args.ops + more)
        print_compile(out["compile"])
    if "run" in args.what:
        out["run"] = measure_run(
            pythons, args.ops, args.rows, args.queries, args.repeat, args.rounds
        )
        out["run_config"] = {"rows": args.rows, "queries": args.queries, "dim": DIM}
        print_run(out["run"], args.rows, args.queries)
    if args.json:
        from _common import write_json

        write_json(args.json, out)


if __name__ == "__main__":
    main()
