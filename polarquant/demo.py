"""``polarquant demo``: every method at several bit widths on real data, next to the papers' bounds.

Two shipped samples (:mod:`polarquant.datasets`):

* **SmolLM2 keys** (head_dim 64): D_mse, inner products of real queries with
  real keys, and the attention each query pays to the keys it may see (causal
  mask, grouped-query heads, ``1/sqrt(d)`` scale), scored **from the codes**;
* **MiniLM embeddings** (dim 384): D_mse and the inner products of all pairs
  between two halves of the sample (a vector-search workload).

What each column means is :data:`LEGEND`, printed under the table.  The
``theory`` column is the value the papers predict for that configuration:
TurboQuantMSE the Lloyd-Max ``D_mse`` of its codebook, within Theorem 1's
bounds ``[4^-b, 2.72 * 4^-b]`` (printed in the legend); PolarQuant the closed
form ``2 (1 - prod E cos delta_l)``, the paper's ~0.032 for (4,2,2,2); the
unbiased methods (TurboQuantProd, QJL, the composition) the expected
``d D_prod`` for isotropic directions, which equals their decode error:
``||r||^2 ((pi/2) d/m - 1/m)`` for a residual ``r`` sketched with ``m`` bits,
i.e. ``(pi/2 - 1/d) D_mse(b-1)`` for TurboQuantProd.  The slope comes with its
standard error over seeds and heads: for one sketch, the errors of similar
keys are correlated, so QJL's slope on the SmolLM2 keys scatters widely
between seeds.  Every number is the mean over three seeds (rotations,
sketches).

Rows are printed as they are computed; the exact inner products and
attention of each workload are computed once and shared by every quantizer
and seed, and the command runs NumPy's BLAS on one thread
(:func:`one_blas_thread`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np

from . import datasets, metrics
from .composition import PolarQuantQJL
from .polar_quant import PolarQuant
from .qjl import QJL
from .turboquant import TurboQuantMSE, TurboQuantProd

__all__ = [
    "HEADER",
    "LEGEND",
    "Row",
    "demo_quantizers",
    "evaluate",
    "exact_products",
    "format_row",
    "format_table",
    "one_blas_thread",
    "run_demo",
]


@dataclass
class Row:
    dataset: str
    method: str
    setting: str
    bits_per_coordinate: float
    fp16_ratio: float
    d_mse: float
    theory: str
    d_prod: float
    slope: float
    slope_se: float = 0.0
    attn_kl: float = float("nan")
    top1: float = float("nan")
    extra: dict = field(default_factory=dict)


def demo_quantizers(dim: int, seed: int = 0):
    """The configurations the demo compares at ``dim`` (name, setting, quantizer, theory text)."""
    out = []
    for b in (1, 2, 3, 4):
        q = TurboQuantMSE(dim, b, seed=seed)
        out.append(("TurboQuantMSE", f"b={b}", q, f"{q.expected_mse:.4f}"))
    for b in (2, 3, 4):
        q = TurboQuantProd(dim, b, seed=seed)
        out.append(("TurboQuantProd", f"b={b}", q, f"{q.expected_mse:.3f}"))
    for m in (dim, 2 * dim):
        q = QJL(dim, m, seed=seed)
        out.append(("QJL", f"m={m}", q, f"{q.expected_mse:.3f}"))
    for bits in ((4, 2, 2, 2), (3, 3, 3, 3), (4, 3, 3, 3)):
        q = PolarQuant(dim, 4, bits, seed=seed)
        out.append(("PolarQuant", "L=4 " + ",".join(map(str, bits)), q, f"{q.expected_mse:.4f}"))
    q = PolarQuantQJL(dim, 4, (4, 2, 2, 2), seed=seed)
    out.append(("PolarQuantQJL", "L=4 4,2,2,2 m=d", q, f"{q.expected_mse:.3f}"))
    return out


def exact_products(keys, queries, mask=None) -> dict:
    """The exact side of :func:`evaluate`: computed once per workload, shared by every quantizer.

    ``true = queries @ keys.T``, the scale ``||q||^2 ||x||^2`` of ``D_prod``
    and, with a ``mask``, the exact attention logits (``1/sqrt(d)`` scale,
    masked entries ``-inf``) and each query's most-attended key.
    """
    true = queries @ keys.T
    out = {
        "true": true,
        "scale": np.sum(queries**2, 1)[:, None] * np.sum(keys**2, 1)[None, :],
        "mask": mask,
    }
    if mask is not None:
        out["inv"] = 1 / np.sqrt(keys.shape[1])
        out["logits"] = np.where(mask, true * out["inv"], -np.inf)
        out["top"] = np.argmax(out["logits"], 1)
    return out


def evaluate(quantizer, keys, queries, *, mask=None, exact=None):
    """Distortion, inner-product and (optionally) attention metrics of one quantizer.

    ``keys (n, d)`` are encoded; ``queries (nq, d)`` are scored against them from
    the codes.  ``mask (nq, n)`` (True = visible) turns the scores into attention.
    ``exact``: :func:`exact_products` of the same ``keys, queries, mask``, when
    several quantizers are evaluated on one workload (``mask`` is then taken
    from it).
    """
    if exact is None:
        exact = exact_products(keys, queries, mask)
    mask = exact["mask"]
    codes = quantizer.encode(keys)
    x_hat = quantizer.decode(codes)
    est = quantizer.score(queries, codes)
    res = {
        "bits_per_coordinate": codes.bits_per_coordinate,
        "fp16_ratio": codes.fp16_ratio,
        "d_mse": metrics.d_mse(keys, x_hat),
        "d_prod": keys.shape[1] * metrics.prod_distortion(est, exact["true"], exact["scale"]),
        "slope": metrics.bias_slope(est, exact["true"]),
    }
    if mask is not None:
        e = np.where(mask, est * exact["inv"], -np.inf)
        res["attn_kl"] = float(np.mean(metrics.attention_kl(exact["logits"], e)))
        res["top1"] = float(np.mean(exact["top"] == np.argmax(e, 1)))
    return res


def _smollm2_workload():
    """Per (layer, kv head): keys (T, 64) and the queries of its 3 query heads with their mask."""
    data = datasets.load_smollm2_kv()
    keys = data["keys"].astype(np.float64)
    queries = data["queries"].astype(np.float64)
    pos = data["query_positions"]
    n_layers, kv_heads, t, _ = keys.shape
    group = queries.shape[1] // kv_heads
    work = []
    for layer in range(n_layers):
        for h in range(kv_heads):
            q = queries[layer, h * group : (h + 1) * group].reshape(-1, keys.shape[-1])
            p = np.tile(pos, group)
            mask = np.arange(t)[None, :] <= p[:, None]
            work.append((keys[layer, h], q, mask))
    return work


def _mean(parts: list[dict]) -> dict:
    """Means over evaluations, and the standard error of the slope (its spread is the story)."""
    out = {key: float(np.mean([p[key] for p in parts])) for key in parts[0]}
    slopes = [p["slope"] for p in parts]
    out["slope_se"] = (
        float(np.std(slopes, ddof=1) / np.sqrt(len(slopes))) if len(slopes) > 1 else 0.0
    )
    return out


def run_demo(seed: int = 0, n_seeds: int = 3, on_row=None) -> list[Row]:
    """Evaluate every configuration on both shipped samples; returns the table rows.

    Every metric is averaged over ``n_seeds`` seeds (rotations and sketches):
    with a single sketch the errors of similar keys are correlated, so one
    seed's slope scatters around its expectation (QJL at m = 64: 0.87 to 1.19
    over seeds 0-3 on the SmolLM2 keys).  ``on_row(row)`` is called with each
    row as soon as it is computed (the command prints it then).
    """
    rows: list[Row] = []
    seeds = range(seed, seed + n_seeds)
    emb = datasets.load_minilm_embeddings()["embeddings"].astype(np.float64)
    half = emb.shape[0] // 2
    samples = [
        ("SmolLM2 keys d=64", _smollm2_workload()),
        ("MiniLM d=384", [(emb[:half], emb[half:], None)]),
    ]
    for dataset, work in samples:
        exact = [exact_products(k, qs, m) for k, qs, m in work]
        configs = [demo_quantizers(work[0][0].shape[1], s) for s in seeds]
        for variants in zip(*configs, strict=True):
            name, setting, _, theory = variants[0]
            parts = [
                evaluate(q, k, qs, exact=ex)
                for _, _, q, _ in variants
                for (k, qs, _), ex in zip(work, exact, strict=True)
            ]
            rows.append(Row(dataset, name, setting, theory=theory, **_mean(parts)))
            if on_row is not None:
                on_row(rows[-1])
    return rows


#: Column headers and widths of the table (99 characters: fits a 100-column terminal).
HEADER = (
    f"{'method':<15}{'setting':<16}{'bits':>6}{'x fp16':>8}{'D_mse':>8}{'theory':>8}"
    f"{'d*D_prod':>10}{'slope':>13}{'attn KL':>9}{'top1':>6}"
)


def _bounds() -> str:
    lo_hi = (metrics.turboquant_mse_bounds(b) for b in (1, 2, 3, 4))
    return ", ".join(f"b={b} [{lo:.3g}, {hi:.3g}]" for b, (lo, hi) in enumerate(lo_hi, 1))


#: What every printed column means (printed under the table; lines under 100 characters).
LEGEND = f"""\
bits      stored bits per coordinate (codes, norms, radii, sign bits), measured from nbytes
x fp16    compression against fp16: bytes of an fp16 copy / bytes held
D_mse     mean per-vector relative squared error of decode: ||x - x_hat||^2 / ||x||^2
theory    what the papers predict for that row. TurboQuantMSE: the Lloyd-Max D_mse of its
          codebook, inside Theorem 1's bounds [4^-b, 2.72 * 4^-b]:
          {_bounds()}.
          PolarQuant: the closed form 2 (1 - prod_l E cos delta_l) (paper: ~0.032 at 4,2,2,2).
          TurboQuantProd, QJL, PolarQuantQJL (unbiased): the expected d*D_prod for isotropic
          vectors, which equals their D_mse
d*D_prod  inner-product error: mean of (estimate - <q,x>)^2 / (||q||^2 ||x||^2), times d
slope     bias: least-squares slope of estimated on exact inner products (1 = unbiased)
          +- its standard error over seeds and heads
attn KL   mean KL(exact || estimated) attention of the SmolLM2 queries, in nats (causal mask)
top1      fraction of queries whose most-attended key is unchanged
setting   b: bits per coordinate; m: sketch rows (1 sign bit each); L=4 a,b,c,d: polar levels
          and angle bits per level (PolarQuantQJL adds an m=d sketch of the residual)"""


def format_row(r: Row) -> str:
    """One line of the table (see :data:`HEADER`)."""
    kl = "" if np.isnan(r.attn_kl) else f"{r.attn_kl:9.4f}"
    top = "" if np.isnan(r.top1) else f"{r.top1:6.2f}"
    slope = f"{r.slope:.3f}+-{r.slope_se:.3f}"
    return (
        f"{r.method:<15}{r.setting:<16}{r.bits_per_coordinate:>6.3f}{r.fp16_ratio:>8.2f}"
        f"{r.d_mse:>8.4f}{r.theory:>8}{r.d_prod:>10.3f}{slope:>13}{kl:>9}{top:>6}"
    ).rstrip()


def _section(dataset: str) -> list[str]:
    return ["", f"== {dataset} ==", HEADER, "-" * len(HEADER)]


def format_table(rows: list[Row]) -> str:
    """The rows as text, one section per data set (without the legend)."""
    lines = []
    for i, r in enumerate(rows):
        if i == 0 or r.dataset != rows[i - 1].dataset:
            lines += _section(r.dataset)
        lines.append(format_row(r))
    return "\n".join(lines)


def one_blas_thread():
    """A context in which NumPy's BLAS runs on one thread (``threadpoolctl``; a no-op without it).

    The demo's products are at most 384 x 384: a second BLAS thread gains
    nothing there, and on a busy machine OpenBLAS's idle threads spin while
    waiting and starve the thread doing the work (measured on 2 busy cores:
    22 s with two BLAS threads, 3 s with one; with the numba backend, whose own
    threads compete too, 35 s against 9 s).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a dependency; tolerated when missing
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def main(seed: int = 0, echo=None) -> list[Row]:
    """``polarquant demo``: print the table row by row as it is computed, then the legend.

    ``echo(line)`` prints one line (default: ``print`` with a flush, so a
    terminal or a pipe sees each row when it is ready).  The backend is
    resolved first: a bad ``POLARQUANT_BACKEND`` or an unavailable backend
    raises before anything is printed.
    """
    from .backends import current_backend, get_backend

    if echo is None:

        def echo(line):
            print(line, flush=True)

    get_backend()  # raises UnknownBackendError / BackendUnavailableError, naming the problem
    t0 = time.perf_counter()
    echo(
        f"polarquant demo (backend {current_backend()}): real SmolLM2-135M keys/queries and "
        "MiniLM embeddings"
    )
    echo(
        "(see polarquant/data/README.md); every number is the mean over seeds "
        f"{seed}..{seed + 2} (rotations, sketches)"
    )
    current = None

    def show(row: Row):
        nonlocal current
        if row.dataset != current:
            current = row.dataset
            for line in _section(row.dataset):
                echo(line)
        echo(format_row(row))

    with one_blas_thread():
        rows = run_demo(seed, on_row=show)
    echo("")
    echo(LEGEND)
    echo(f"\nfinished in {time.perf_counter() - t0:.1f} s")
    return rows
