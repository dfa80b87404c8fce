"""Compile a backend's kernels ahead of time (``polarquant warmup``).

The ``numba`` backend compiles each kernel the first time it meets a new
combination of argument types (float32 or float64 data, float16 or float32
radii) and, for the PolarQuant score from codes, of level bit widths; a
compilation costs one to a few seconds of CPU (``docs/performance.md`` has the
measured costs, ``benchmarks/bench_compile.py`` measures them).  Numba keeps
what it compiled on disk (``__pycache__`` next to the kernels, or
``NUMBA_CACHE_DIR``), so a later process loads it in milliseconds instead.
:func:`warmup` pays the compilations once, up front, for the configurations of
the papers and of ``polarquant demo``: it runs small encode, decode, score and
weighted-sum calls through the public API (so it compiles exactly what those
calls compile, nothing chosen by hand) and reports each step's time.  Run it
once after installing, or in a container build, and first calls are fast from
then on.

Dimensions and bit widths of TurboQuant and QJL are run-time arguments of the
kernels: one small dimension (:data:`DIM`) compiles what every dimension uses.
The PolarQuant score compiles one kernel per combination of level bit widths,
used only from a few thousand rows on (it folds levels 1 and 2 into the
query); the score step therefore also scores that many rows
(``numba_backend.fold_rows``).  float16 input is computed in float32 and
needs nothing more; float64 data compiles its own kernels on first use (not
warmed).

Examples
--------
>>> from polarquant.warmup import warmup
>>> timings = warmup("numba")  # doctest: +SKIP
[1/24] encode TurboQuantMSE b=1-4 ... 2.3 s
...
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterable

import numpy as np

from .plan import PolarPlan

__all__ = ["DIM", "paper_configs", "warmup"]

#: The dimension of the warm-up vectors, a multiple of ``2**4`` (PolarQuant's four levels). The
#: kernels take the dimension at run time, so a small one compiles the same code, cheaply.
DIM = 64
#: Rows of each warm-up batch (a score also runs on ``fold_rows`` rows where that applies).
ROWS = 64


def paper_configs(dim: int = DIM) -> list[tuple[str, list]]:
    """The configurations warmed by default: ``(label, quantizers)`` groups.

    TurboQuantMSE and TurboQuantProd at 1 to 4 bits (TurboQuant, Table 1 and
    Fig. 1), QJL with ``m = d`` and ``2 d`` (as in ``polarquant demo``), PolarQuant
    with the paper's ``(4, 2, 2, 2)`` and the demo's ``(3, 3, 3, 3)`` and
    ``(4, 3, 3, 3)``, and the demo's PolarQuantQJL.  Their weighted sums are the
    KV cache's (``polarquant.kv`` sums values with the same operations).
    """
    from . import QJL, PolarQuant, PolarQuantQJL, TurboQuantMSE, TurboQuantProd

    return [
        ("TurboQuantMSE b=1-4", [TurboQuantMSE(dim, b) for b in range(1, 5)]),
        ("TurboQuantProd b=1-4", [TurboQuantProd(dim, b) for b in range(1, 5)]),
        ("QJL m=d,2d", [QJL(dim, dim), QJL(dim, 2 * dim)]),
        ("PolarQuant (4,2,2,2)", [PolarQuant(dim, 4, (4, 2, 2, 2))]),
        (
            "PolarQuant (3,3,3,3),(4,3,3,3)",
            [PolarQuant(dim, 4, bits) for bits in ((3, 3, 3, 3), (4, 3, 3, 3))],
        ),
        ("PolarQuantQJL (4,2,2,2)", [PolarQuantQJL(dim, 4, (4, 2, 2, 2))]),
    ]


def _label(q) -> str:
    """A short name for a quantizer given in ``configs``: its class and its widths."""
    config = q.config()
    parts = [type(q).__name__]
    if "levels" in config:
        parts.append(f"L={config['levels']}")
    if "bits" in config:
        bits = config["bits"]
        parts.append(f"b={tuple(bits) if isinstance(bits, list) else bits}")
    if "proj_dim" in config:
        parts.append(f"m={config['proj_dim']}")
    return " ".join(parts)


def _steps(groups, ops, xp) -> list[tuple[str, Callable[[], None]]]:
    """``(label, run)`` per operation and group: encode, decode, score, weighted_sum.

    The steps share the codes of the encode step; all data is seeded.
    """
    rng = np.random.default_rng(0)
    fold_rows = getattr(ops, "fold_rows", None)  # the numba backend's PolarQuant score
    steps = []
    for label, quantizers in groups:
        data = []
        for q in quantizers:
            x = rng.standard_normal((ROWS, q.dim)).astype(np.float32)
            w = rng.standard_normal((2, ROWS)).astype(np.float32)
            plan = getattr(q.plan, "first", q.plan)  # PolarQuantQJL: its PolarQuant stage
            many = None
            if fold_rows is not None and isinstance(plan, PolarPlan):  # the folded score
                many = fold_rows(plan)
            big = None if many is None else rng.standard_normal((many, q.dim)).astype(np.float32)
            data.append({"q": q, "x": xp.asarray(x), "w": xp.asarray(w), "big": big})

        def encode(data=data):
            for d in data:
                d["codes"] = d["q"].encode(d["x"])

        def decode(data=data):
            for d in data:
                d["q"].decode(d["codes"])

        def score(data=data):
            for d in data:
                d["q"].score(d["x"][:2], d["codes"])
                if d["big"] is not None:
                    big = xp.asarray(d["big"])
                    d["q"].score(big[:2], d["q"].encode(big))

        def weighted_sum(data=data):
            for d in data:
                d["q"].weighted_sum(d["w"], d["codes"])

        for op, run in (
            ("encode", encode),
            ("decode", decode),
            ("score", score),
            ("weighted_sum", weighted_sum),
        ):
            steps.append((f"{op} {label}", run))
    return steps


def warmup(
    backend: str = "numba",
    configs: Iterable | None = None,
    echo: Callable[[str], object] | None = print,
) -> list[tuple[str, float]]:
    """Compile (and cache on disk) the kernels that ``configs`` use on ``backend``.

    Parameters
    ----------
    backend : str
        ``"numba"`` (the default), ``"cupy"`` or ``"numpy"`` (which compiles
        nothing: returns ``[]``).
    configs : iterable of quantizers, optional
        The quantizers to warm, e.g. ``[pq.PolarQuant(128, 4, (4, 3, 3, 3))]``;
        each runs encode, decode, score and weighted_sum on small seeded
        float32 batches.  Quantizers built with their own ``backend=`` use that
        one.  Default: :func:`paper_configs`.
    echo : callable or None
        Called with one progress line per step,
        ``"[3/24] score PolarQuant (4,2,2,2) ... 2.1 s"``; ``None`` is silent.

    Returns
    -------
    list of (str, float)
        Each step's label and wall-clock seconds.  A step that compiles
        nothing new (the kernels are cached) takes milliseconds.

    Raises
    ------
    ValueError
        ``backend`` is not a known backend name.
    BackendUnavailableError
        The backend cannot run here (numba not installed...): the registry's
        own error, naming the install command.
    TypeError
        ``configs`` holds something other than polarquant quantizers.
    """
    from .backends import check_backend_name, get_backend, use_backend
    from .quantizer import Quantizer

    name = check_backend_name(backend)
    if configs is not None:
        configs = list(configs)
        bad = [type(q).__name__ for q in configs if not isinstance(q, Quantizer)]
        if bad:
            raise TypeError(
                f"configs must be polarquant quantizers (e.g. pq.PolarQuant(128)), got {bad}"
            )
    ops = get_backend(name)  # the registry's error when the backend cannot run here
    if configs is None:
        groups = paper_configs()
    else:
        groups = [(_label(q), [q]) for q in configs]
    if name == "numpy":
        if echo is not None:
            echo("the numpy backend compiles nothing: nothing to warm up")
        return []
    xp = np if name == "numba" else importlib.import_module("cupy")
    steps = _steps(groups, ops, xp)
    timings = []
    with use_backend(name):
        for i, (label, run) in enumerate(steps, start=1):
            start = time.perf_counter()
            run()
            seconds = time.perf_counter() - start
            timings.append((label, seconds))
            if echo is not None:
                echo(f"[{i}/{len(steps)}] {label} ... {seconds:.1f} s")
    return timings
