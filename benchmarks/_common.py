"""What every benchmark script shares: best-of timing and the description of the machine."""

from __future__ import annotations

import json
import os
import platform
import time

import numpy as np


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def unit_rows(rng, n: int, d: int) -> np.ndarray:
    """``n`` standard-normal float32 vectors of dimension ``d``, normalised (the synthetic corpus
    and queries of the search benchmarks)."""
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT", "unset"),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [
            {k: p.get(k) for k in ("internal_api", "version", "num_threads")}
            for p in threadpool_info()
        ]
    except ImportError:  # NumPy's build information instead
        try:
            deps = np.show_config(mode="dicts")["Build Dependencies"]
            info["blas"] = {
                k: deps[k].get("name") + " " + str(deps[k].get("version"))
                for k in ("blas", "lapack")
                if k in deps
            }
        except Exception:  # pragma: no cover - older NumPy
            info["blas"] = "unknown (install threadpoolctl)"
    return info


def write_json(path: str, results: dict) -> None:
    """Write ``results`` to ``path`` (folders created), if a path was given."""
    if not path:
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
