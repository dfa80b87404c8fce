"""Plotting helpers for the polarquant tutorials (matplotlib only; never imported by the library).

Every helper draws on an ``Axes`` it is given (or creates one figure) and
returns it, so a notebook cell reads as: compute with :mod:`polarquant`, then
plot theory next to samples.  Nothing here computes a quantizer, a codebook or
a density: those always come from the library.

:func:`show` ends a figure.  With an interactive backend (JupyterLab's inline
backend) it hands the figure to ``plt.show()``.  Under a non-interactive backend
(``MPLBACKEND=Agg``, headless, as in the test suite) ``plt.show()`` would show
nothing, so inside a Jupyter kernel it displays the figure as a PNG output
itself before closing it: an executed notebook contains its figures either way.
When ``POLARQUANT_TUTORIAL_FIGDIR`` names a folder, every figure is also saved
there as a PNG (the tests use that to make sure every figure really renders,
LaTeX labels included).
"""

from __future__ import annotations

import io
import itertools
import os
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

__all__ = [
    "style",
    "show",
    "hist_vs_density",
    "codebook_on_density",
    "loglog_with_slope",
    "distortion_vs_bits",
    "scatter_estimates",
    "tradeoff",
    "grouped_bars",
]

_counter = itertools.count(1)

#: One colour per method, used by every notebook so that plots can be compared.
COLORS = {
    "theory": "black",
    "TurboQuantMSE": "tab:blue",
    "TurboQuantMSE debiased": "tab:cyan",
    "TurboQuantProd": "tab:orange",
    "PolarQuant": "tab:green",
    "PolarQuantQJL": "tab:olive",
    "QJL": "tab:red",
    "rotated min-max": "tab:brown",
    "uniform": "tab:gray",
    "quantile": "tab:purple",
    "lloyd-max": "tab:blue",
}


def style() -> None:
    """A compact, readable default style for the notebooks."""
    plt.rcParams.update(
        {
            "figure.figsize": (7.0, 3.6),
            "figure.dpi": 100,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "legend.fontsize": 8,
            "legend.frameon": False,
            "axes.titlesize": 10,
            "axes.labelsize": 9,
        }
    )


def _interactive() -> bool:
    backend = matplotlib.get_backend().lower()
    return backend not in {"agg", "pdf", "ps", "svg", "cairo", "template"}


def _in_jupyter_kernel() -> bool:
    """True inside a Jupyter kernel (where a displayed PNG becomes a cell output)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def show(fig=None) -> None:
    """End a figure: display it, save it to ``POLARQUANT_TUTORIAL_FIGDIR`` if set, close it.

    Under an interactive backend ``plt.show()`` displays it; under a non-interactive one
    (``Agg``) it is rendered to PNG and displayed with :func:`IPython.display.display` when
    running in a Jupyter kernel (a plain script just closes it).
    """
    fig = plt.gcf() if fig is None else fig
    fig.tight_layout()
    target = os.environ.get("POLARQUANT_TUTORIAL_FIGDIR")
    if target:
        path = Path(target)
        path.mkdir(parents=True, exist_ok=True)
        fig.savefig(path / f"figure_{os.getpid()}_{next(_counter):03d}.png", dpi=60)
    if _interactive():
        plt.show()
        return
    if _in_jupyter_kernel():
        from IPython.display import Image, display

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", bbox_inches="tight")
        display(Image(data=buffer.getvalue(), format="png"))
    plt.close(fig)


def hist_vs_density(
    ax,
    samples,
    grid,
    densities: dict,
    *,
    bins=60,
    label="samples",
    title=None,
    xlabel=None,
    ylabel="density",
):
    """Histogram of ``samples`` (as a density) with theoretical curves ``{label: values on grid}``.

    ``xlabel`` names the sampled quantity; ``ylabel`` defaults to "density" (what both the
    normalised histogram and the curves show).
    """
    samples = np.asarray(samples).ravel()
    lo, hi = float(np.min(grid)), float(np.max(grid))
    ax.hist(samples, bins=bins, range=(lo, hi), density=True, alpha=0.45, label=label)
    styles = itertools.cycle(["-", "--", ":", "-."])
    for (name, values), ls in zip(densities.items(), styles, strict=False):
        ax.plot(grid, values, ls, lw=1.6, label=name)
    if title:
        ax.set_title(title)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.legend()
    return ax


def codebook_on_density(ax, grid, density, codebook, *, label="density", color="tab:blue"):
    """A density with the cells (dotted boundaries) and centroids (ticks) of a codebook."""
    ax.plot(grid, density, color=color, lw=1.5, label=label)
    top = float(np.max(density))
    for t in codebook.boundaries:
        ax.axvline(t, color="gray", ls=":", lw=1)
    ax.plot(
        codebook.centroids,
        np.zeros_like(codebook.centroids) + 0.03 * top,
        "v",
        color="tab:red",
        ms=7,
        label=f"centroids ({codebook.bits} bits)",
    )
    ax.set_ylim(bottom=0, top=1.3 * top)
    ax.legend(loc="upper right")
    return ax


def loglog_with_slope(
    ax, x, measured, theory, *, label="measured", theory_label="theory", err=None
):
    """Measured points (with optional error bars) against a theoretical curve, log-log."""
    ax.loglog(x, theory, "-", color=COLORS["theory"], lw=1.2, label=theory_label)
    if err is None:
        ax.loglog(x, measured, "o", label=label)
    else:
        ax.errorbar(x, measured, yerr=err, fmt="o", capsize=3, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.legend()
    return ax


def distortion_vs_bits(
    ax,
    bits,
    measured: dict,
    *,
    lower=None,
    upper=None,
    reference=None,
    ylabel="distortion",
    lower_label="lower bound",
    upper_label="upper bound",
):
    """The paper-style figure: measured distortion per bit width against the bounds (log y).

    ``measured``: ``{label: values}`` (one value per bit width); ``lower``/``upper``:
    bound values per bit width; ``reference``: ``{label: values}`` of published numbers.
    """
    bits = np.asarray(bits)
    fine = np.linspace(bits.min(), bits.max(), 200)
    if lower is not None:
        ax.semilogy(bits, lower, "--", color="tab:green", lw=1.2, label=lower_label)
    if upper is not None:
        ax.semilogy(bits, upper, "--", color="tab:red", lw=1.2, label=upper_label)
    markers = itertools.cycle(["o", "s", "^", "D"])
    for (name, values), mk in zip(measured.items(), markers, strict=False):
        ax.semilogy(bits, values, mk + "-", color=COLORS.get(name), ms=6, lw=1, label=name)
    for name, values in (reference or {}).items():
        ax.semilogy(bits, values, "x", color="black", ms=9, mew=2, label=name)
    ax.set_xticks(bits)
    ax.set_xlim(fine[0] - 0.2, fine[-1] + 0.2)
    ax.set_xlabel("bits per coordinate $b$")
    ax.set_ylabel(ylabel)
    ax.legend()
    return ax


def scatter_estimates(
    ax,
    truth,
    estimate,
    *,
    label=None,
    max_points=4000,
    seed=0,
    slope=None,
    xlabel=r"true $\langle q, x\rangle$",
    ylabel="estimate",
):
    """Estimated against true inner products, with the identity line (and a fitted slope).

    ``xlabel``/``ylabel``: use the notebook's own notation for the pair (``<q, k>``, ``<y, x>``...).
    """
    truth = np.asarray(truth).ravel()
    estimate = np.asarray(estimate).ravel()
    if truth.size > max_points:
        keep = np.random.default_rng(seed).choice(truth.size, max_points, replace=False)
        truth, estimate = truth[keep], estimate[keep]
    ax.scatter(truth, estimate, s=4, alpha=0.35, label=label)
    lim = float(np.max(np.abs(np.concatenate([truth, estimate]))))
    ax.plot([-lim, lim], [-lim, lim], "k-", lw=1, label="estimate = truth")
    if slope is not None:
        ax.plot([-lim, lim], [-slope * lim, slope * lim], "r--", lw=1, label=f"slope {slope:.3f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    return ax


def tradeoff(ax, rows, *, x="bits", y="d_mse", logy=True, annotate=True):
    """Pareto-style plot: one point per configuration, grouped (and coloured) by method.

    ``rows``: dicts with keys ``method``, ``setting`` and the two plotted quantities.
    """
    methods = list(dict.fromkeys(r["method"] for r in rows))
    markers = itertools.cycle(["o", "s", "^", "D", "v", "P", "X", "*"])
    for method, mk in zip(methods, markers, strict=False):
        pts = sorted((r[x], r[y], r["setting"]) for r in rows if r["method"] == method)
        xs, ys, names = zip(*pts, strict=True)
        ax.plot(xs, ys, mk + "-", color=COLORS.get(method), label=method, ms=6, lw=1)
        if annotate:
            for xi, yi, name in zip(xs, ys, names, strict=True):
                ax.annotate(name, (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("bits per coordinate (measured from nbytes)")
    ax.legend()
    return ax


def grouped_bars(
    ax, groups, series: dict, *, logy=True, ref=None, ref_label=None, ylabel=None, fmt="{:.1f}x"
):
    """Grouped bar chart: one group per entry of ``groups``, one bar per ``{label: values}``.

    Each bar is annotated with its value (``fmt``); ``ref`` draws a horizontal
    reference line (e.g. 1 for "as fast as the baseline").
    """
    groups = list(groups)
    x = np.arange(len(groups))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        values = np.asarray(values, dtype=float)
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(
                fmt.format(v),
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 2),
                textcoords="offset points",
            )
    if ref is not None:
        ax.axhline(ref, color=COLORS["theory"], lw=1, ls="--", label=ref_label)
    top = max([float(np.max(v)) for v in series.values()] + [ref or 0.0])
    if logy:
        ax.set_yscale("log")
        ax.set_ylim(top=top * 12)  # room for the labels and the legend above the bars
    else:
        ax.set_ylim(top=top * 1.4)
    ax.set_xticks(x)
    ax.set_xticklabels(groups, fontsize=8)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.legend(loc="upper center", ncol=2)
    return ax


# -- KV cache (notebook 7a) ---------------------------------------------------------------------
#: Colours of the KV-cache method names (``polarquant.kv.KEY_METHODS``), appended to :data:`COLORS`.
COLORS.update(
    {
        "turboquant-mse": "tab:blue",
        "turboquant-prod": "tab:orange",
        "qjl": "tab:red",
        "polarquant": "tab:green",
        "polarquant-qjl": "tab:olive",
        "kivi": "tab:purple",
        "hadamard-rtn": "tab:brown",
        "fp8": "tab:gray",
        "none": "black",
    }
)
__all__ += ["bits_vs_tokens"]


def bits_vs_tokens(ax, tokens, measured: dict, predicted: dict, *, window=None, fp16=16.0):
    """Stored bits per coordinate of a cache against the number of tokens it holds (log x).

    ``measured``: ``{label: values}`` (one value per entry of ``tokens``, from the
    cache's ``bits_per_coordinate``), drawn as markers; ``predicted``: ``{label:
    values}`` on the same ``tokens`` (the accounting formula), drawn as lines of
    the same colour.  ``window`` marks the full-precision window with a dotted
    vertical line; ``fp16`` the uncompressed cache with a dashed horizontal one.
    """
    tokens = np.asarray(tokens)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = itertools.cycle(["o", "s", "^", "D", "v"])
    for i, ((name, values), mk) in enumerate(zip(measured.items(), markers, strict=False)):
        color = COLORS.get(name.split(" ")[0], cycle[i % len(cycle)])
        ax.plot(tokens, values, mk, color=color, ms=4, label=f"{name} (measured)")
        if name in predicted:
            ax.plot(tokens, predicted[name], "-", color=color, lw=1)
    ax.axhline(fp16, color=COLORS["theory"], ls="--", lw=1, label="fp16 cache")
    if window:
        ax.axvline(window, color="gray", ls=":", lw=1, label=f"window = {window}")
    ax.set_xscale("log")
    ax.set_xlabel("tokens held")
    ax.set_ylabel("bits per coordinate (keys + values)")
    ax.legend()
    return ax


# -- the baselines of polarquant.kv.baselines, as named in notebook 6 --------------------------------
COLORS.update(
    {
        "KIVIValues 1 group": "tab:gray",
        "KIVIValues g=32": "tab:pink",
        "KIVIKeys g=32": "tab:purple",
        "HadamardRTN g=32": "tab:brown",
    }
)
