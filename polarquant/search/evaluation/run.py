"""The run of the Sec. 4.4 experiment: threads, the machine, timings, :func:`evaluate`, :func:`main`.

TurboQuant (arXiv 2504.19874), **Sec. 4.4** times indexing (Table 2) and measures recall@1@k
(Fig. 5).  :func:`evaluate` runs every configuration of
:func:`~polarquant.search.evaluation.methods.configurations` on one database and query set and
measures, per method: bytes per vector of the codes (norms and per-vector factors included),
bytes per vector held by the index (polarquant's :attr:`VectorIndex.nbytes
<polarquant.search.index.VectorIndex.nbytes>` counts its int64 ids too; FAISS's ids are
implicit), the fixed bytes besides the codes (FAISS: the serialized index minus the codes, i.e.
codebooks, ranges and rotation; polarquant rebuilds rotations and codebooks from the seed), the
setup time (polarquant: building the quantizer, data-independent), the indexing time (FAISS:
``train`` + ``add``; polarquant: ``VectorIndex.add``, i.e. encoding), the search time of all
queries and its ratio to **exact float32 brute force**
(:func:`~polarquant.search.evaluation.truth.exact_search`) timed in the same run with the same
threads (``thread_settings``: BLAS, FAISS's OpenMP, Numba), and recall@1@k.  Numba kernels
are compiled (or loaded from the cache) on a few vectors before timing.  The report records the
machine (``machine``) and the versions beside the results.

:func:`main` is ``polarquant search-eval``: load, split, evaluate, print the tables and with
``--output`` write the JSON report, the Markdown page and the figures.

Departure from the paper: one CPU, not a GPU.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

# FAISS (or None) comes from _methods._faiss(), looked up at each call: one place decides for the
# configurations and the run alike (the tests make FAISS absent there).
from . import methods as _methods
from .data import DATASETS, UsageError, load_dataset, split
from .methods import DEFAULT_BITS, FAISS_INSTALL, Config, Skip, configurations, faiss_features
from .report import caption, format_tables, markdown_page, plot_recall
from .truth import K_MAX, KS, exact_search, exact_top1, recall_at_1_at_k

__all__ = ["evaluate", "main"]


# -- threads and the machine -----------------------------------------------------------------------
@contextlib.contextmanager
def thread_settings(threads: int, backend: str | None):
    """Run the block with ``threads`` BLAS, FAISS (OpenMP) and Numba threads; yields what was set."""
    from threadpoolctl import threadpool_info, threadpool_limits

    done = contextlib.ExitStack()
    info = {"threads": threads}
    with done:
        done.enter_context(threadpool_limits(limits=threads, user_api="blas"))
        blas = [  # one line per BLAS loaded (NumPy's, SciPy's, FAISS's may differ)
            f"{p.get('internal_api')} {p.get('version')} {p.get('architecture')} "
            f"in {Path(p.get('filepath', '?')).parent.name}: {p.get('num_threads')} thread(s)"
            for p in threadpool_info()
            if p.get("user_api") == "blas"
        ]
        info["blas"] = "; ".join(blas) or "unknown"
        faiss = _methods._faiss()
        if faiss is not None:
            old = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(threads)
            done.callback(faiss.omp_set_num_threads, old)
            info["faiss_threads"] = threads
        if backend == "numba":
            import numba

            old = numba.get_num_threads()
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            done.callback(numba.set_num_threads, old)
            info["numba_threads"] = numba.get_num_threads()
        yield info


def machine() -> dict:
    """CPU model (``/proc/cpuinfo``), cores, load average, and a few environment variables that
    change BLAS speed."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    out = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}
    with contextlib.suppress(OSError, AttributeError):
        out["load_average"] = [round(v, 2) for v in os.getloadavg()]
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS") if k in os.environ}
    if env:
        out["environment"] = env
    return out


def _versions() -> dict:
    from ... import __version__

    out = {"polarquant": __version__, "python": platform.python_version(), "numpy": np.__version__}
    faiss = _methods._faiss()
    if faiss is not None:
        out["faiss"] = faiss.__version__
    if importlib.util.find_spec("numba") is not None:
        import numba

        out["numba"] = numba.__version__
    return out


# -- the run ---------------------------------------------------------------------------------------
def _duration(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.0f} s"


def _timed(fn, repeats: int):
    """``(result of the first call, best seconds over repeats)``."""
    best, result = math.inf, None
    for r in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        if r == 0:
            result = out
    return result, best


def evaluate(
    database,
    queries,
    *,
    bits=DEFAULT_BITS,
    methods=None,
    backend: str | None = None,
    seed: int = 0,
    threads: int = 1,
    repeats: int = 1,
    dataset: dict | None = None,
    progress=None,
) -> dict:
    """Run every configuration on ``database`` / ``queries`` (unit vectors) and return a
    JSON-able report: ``meta`` (data, sizes, machine, threads, versions, FAISS's features,
    ground-truth and exact-search timings), ``results`` (one dict per configuration:
    ``method, bits, label, setting, family, code_bytes, held_bytes, fixed_bytes, setup_s,
    index_s, search_s, search_ratio, recall`` (``{k: recall@1@k}``), ``notes``) and
    ``skipped`` (configurations that could not run, with the reason).

    ``backend`` is the polarquant kernel backend (``None``: the selected default, resolved
    and recorded); timings take the best of ``repeats`` searches.
    """
    from ...backends import check_backend_name, current_backend
    from ...kv.evaluation import eta_text

    say = progress or (lambda s: None)
    database = np.ascontiguousarray(database, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n, dim = database.shape
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise UsageError(f"queries must be (n, {dim}), got {queries.shape}")
    if n < K_MAX:
        raise UsageError(f"recall@1@{K_MAX} needs at least {K_MAX} database vectors, got {n}")
    backend = current_backend() if backend is None else check_backend_name(backend)
    bits = tuple(int(b) for b in bits)
    configs, skipped = configurations(dim, bits, methods, seed=seed, backend=backend)
    skipped = [{**c, "reason": why} for c, why in skipped]

    load_start = machine().get("load_average")
    with thread_settings(threads, backend) as threads_info:
        t0 = time.perf_counter()
        truth, ties = exact_top1(database, queries)
        gt_s = time.perf_counter() - t0
        exact_ids, exact_s = _timed(lambda: exact_search(database, queries, K_MAX), repeats)
        exact_recall = recall_at_1_at_k(exact_ids, truth)
        say(
            f"ground truth (float64) in {_duration(gt_s)}; exact float32 search of "
            f"{len(queries)} queries in {_duration(exact_s)} (the timing reference), "
            f"recall@1@1 {exact_recall[1]:.4f}"
        )
        results = [
            {
                "method": "exact-float32",
                "bits": 32,
                "label": "exact float32",
                "setting": "BLAS matmul + argpartition",
                "family": "reference",
                "code_bytes": 4.0 * dim,
                "held_bytes": 4.0 * dim,
                "fixed_bytes": 0,
                "setup_s": 0.0,
                "index_s": 0.0,
                "search_s": exact_s,
                "search_ratio": 1.0,
                "recall": exact_recall,
                "notes": [],
            }
        ]
        t_runs = time.perf_counter()
        for i, c in enumerate(configs):
            try:
                row = _run_config(c, database, queries, truth, exact_s, repeats, dim)
            except Skip as why:
                skipped.append({"method": c.method, "bits": c.bits, "reason": str(why)})
                say(f"[{i + 1}/{len(configs)}] {c.label} {c.bits} bits: skipped, {why}")
                continue
            results.append(row)
            say(
                f"[{i + 1}/{len(configs)}] {c.label} ({c.setting}), {c.bits} bits: "
                f"recall@1@1 {row['recall'][1]:.3f}, @1@4 {row['recall'][4]:.3f}; "
                f"{row['code_bytes']:g} B/vector, index {_duration(row['index_s'])}, search "
                f"{_duration(row['search_s'])} ({row['search_ratio']:.2f}x exact); "
                + eta_text(i + 1, len(configs), time.perf_counter() - t_runs)
            )
    meta = {
        "experiment": "TurboQuant (arXiv 2504.19874) Sec. 4.4: recall@1@k of inner-product search",
        "dataset": dataset or {"name": "arrays", "dim": dim},
        "n_database": int(n),
        "n_queries": int(len(queries)),
        "dim": int(dim),
        "ks": list(KS),
        "bits": list(bits),
        "seed": seed,
        "backend": backend,
        "repeats": repeats,
        "ground_truth": {
            "precision": "float64",
            "seconds": gt_s,
            "queries_with_tied_top1": int(np.count_nonzero(ties > 1)),
        },
        "exact_search_s": exact_s,
        "threads": threads_info,
        "load_average_start": load_start,
        "machine": machine(),
        "versions": _versions(),
        "faiss": faiss_features(),
    }
    return {"meta": meta, "results": results, "skipped": skipped}


def _run_config(c: Config, database, queries, truth, exact_s, repeats, dim) -> dict:
    runner = c.make()
    warm = runner.warm_up(database, queries)
    t0 = time.perf_counter()
    runner.build(database)
    index_s = time.perf_counter() - t0
    found, search_s = _timed(lambda: runner.search(queries, K_MAX), repeats)
    return {
        "method": c.method,
        "bits": c.bits,
        "label": c.label,
        "setting": c.setting,
        "family": c.family,
        **runner.sizes(),
        "setup_s": runner.setup_s,
        "warmup_s": warm,
        "index_s": index_s,
        "search_s": search_s,
        "search_ratio": search_s / exact_s if exact_s > 0 else math.nan,
        "recall": recall_at_1_at_k(found, truth),
        "notes": list(getattr(runner, "notes", [])),
    }


# -- the command -----------------------------------------------------------------------------------
def _output_dir(path: str | None) -> Path | None:
    """The folder ``--output`` writes to, created now (refused now rather than after a run)."""
    if path is None:
        return None
    target = Path(path).expanduser().resolve()
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"--output {path}: is a file, not a folder")
    if not target.exists():
        if not target.parent.is_dir():
            raise FileNotFoundError(f"--output {path}: the folder {target.parent} does not exist")
        target.mkdir()
    if not os.access(target, os.W_OK):
        raise PermissionError(f"--output {path}: the folder is not writable")
    return target


def main(args) -> int:
    """``polarquant search-eval`` (``args`` from ``polarquant.cli``, validated there).

    Says what it runs, reports each configuration with the time left on stderr, prints the
    tables on stdout, and with ``--output DIR`` writes ``search-eval-<dataset>.json``,
    ``search-eval-<dataset>.md``
    (:func:`~polarquant.search.evaluation.report.markdown_page`) and the figures
    (:func:`~polarquant.search.evaluation.report.plot_recall`) there.  User errors (a missing
    package, sizes that do not fit) raise ``ImportError`` /
    :class:`~polarquant.search.evaluation.data.UsageError` / ``OSError``: the command prints
    them as one line.
    """

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    out = _output_dir(args.output)
    ds = DATASETS[args.dataset]
    methods = args.methods
    if (
        methods is not None
        and any(m.startswith("faiss") for m in methods)
        and _methods._faiss() is None
    ):
        raise ImportError(f"the FAISS baselines need faiss, not installed: {FAISS_INSTALL}")
    t0 = time.perf_counter()
    vectors, info = load_dataset(args.dataset)
    n_queries = args.n_queries
    n_database = args.n_database or ds.default_database or (len(vectors) - n_queries)
    if n_database < K_MAX:
        raise UsageError(
            f"the {ds.name} data set holds {len(vectors):,} distinct vectors: {n_queries:,} "
            f"queries leave {max(n_database, 0):,} for the database, fewer than the {K_MAX} that "
            f"recall@1@{K_MAX} needs (lower --n-queries)"
        )
    db_rows, q_rows = split(len(vectors), n_database, n_queries, args.seed)
    configs, _ = configurations(ds.dim, args.bits, methods, seed=args.seed, backend=args.backend)
    if not configs:
        raise UsageError("no configuration can run with these --methods and --bits")
    say(
        f"polarquant search-eval: {ds.name} (d={ds.dim}, {info['distinct']:,} distinct vectors, "
        f"loaded in {time.perf_counter() - t0:.1f} s): {n_database:,} database vectors, "
        f"{n_queries:,} queries; {len(configs)} configuration(s) after the exact reference, "
        f"{args.threads} thread(s)"
    )
    if _methods._faiss() is None and methods is None:
        say(f"faiss is not installed: the FAISS baselines are skipped ({FAISS_INSTALL})")
    report = evaluate(
        vectors[db_rows],
        vectors[q_rows],
        bits=args.bits,
        methods=methods,
        backend=args.backend,
        seed=args.seed,
        threads=args.threads,
        repeats=args.repeats,
        dataset=info,
        progress=say,
    )
    print(format_tables(report))
    print(caption(report))
    if out is not None:
        base = out / f"search-eval-{ds.name}"
        base.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
        base.with_suffix(".md").write_text(markdown_page(report))
        written = [base.with_suffix(".json"), base.with_suffix(".md")]
        if importlib.util.find_spec("matplotlib") is None:
            say("matplotlib is not installed: no figures (python -m pip install matplotlib)")
        else:
            written += plot_recall(report, out)
        say("wrote " + ", ".join(str(p) for p in written))
    return 0
