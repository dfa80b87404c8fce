"""The report of a Sec. 4.4 run: Markdown tables, their caption, the docs page, the figures.

TurboQuant (arXiv 2504.19874), **Sec. 4.4** reports recall@1@k against ``k`` (Fig. 5) and
indexing times (Table 2: 37 s for PQ, 597 s for RaBitQ, 0.0007 s for TurboQuant at ``d = 200``,
4 bits).  From the report :func:`~polarquant.search.evaluation.run.evaluate` returns:

* :func:`format_tables`: one Markdown table per bit width, then the references, with bytes per
  vector, setup, indexing and search times and recall@1@k, and what could not run;
* ``caption``: one paragraph with the data, sizes, machine, threads and versions, and a
  warning when the machine was shared with other work;
* :func:`markdown_page`: the file ``--output`` writes, included by ``docs/search-eval.md`` after
  :data:`TABLE_MARKER`;
* :func:`plot_recall`: the counterpart of Fig. 5, one figure per bit width (matplotlib, imported
  when drawing).
"""

from __future__ import annotations

from pathlib import Path

from .methods import METHODS, REFERENCE_BITS

__all__ = ["TABLE_MARKER", "format_tables", "markdown_page", "plot_recall"]


def _group_title(bits: int) -> str:
    if bits == 32 or bits in REFERENCE_BITS.values():
        return "references"
    return f"{bits} bits per coordinate"


def _groups(report: dict) -> list[tuple[str, list[dict]]]:
    rows = report["results"]
    out = []
    for b in report["meta"]["bits"]:
        group = [r for r in rows if r["bits"] == b]
        if group:
            out.append((_group_title(b), group))
    refs = [r for r in rows if r["bits"] not in report["meta"]["bits"]]
    if refs:
        out.append(("references", refs))
    return out


def _recall_at(row: dict, k: int) -> float:
    """recall@1@k of one result row, keyed by ``k`` (a fresh report) or ``str(k)`` (one read back
    from its JSON file)."""
    return row["recall"][k] if k in row["recall"] else row["recall"][str(k)]


def _fmt_seconds(s: float) -> str:
    if s == 0:
        return "-"
    return f"{s:.3f}" if s < 1 else f"{s:.2f}" if s < 100 else f"{s:.0f}"


def format_tables(report: dict) -> str:
    """The results as Markdown: one table per bit width, then the references and what was
    skipped."""
    ks = report["meta"]["ks"]
    head = (
        "| method | setting | code B/vec | held B/vec | fixed KB | setup s | index s | search s "
        "| x exact | " + " | ".join(f"1@{k}" for k in ks) + " |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
        + " | ".join("---:" for _ in ks)
        + " |\n"
    )
    parts = []
    for title, rows in _groups(report):
        lines = []
        for r in rows:
            recall = " | ".join(f"{_recall_at(r, k):.3f}" for k in ks)
            label = r["label"] + ("*" if r.get("notes") else "")
            lines.append(
                f"| {label} | {r['setting']} | {r['code_bytes']:g} | {r['held_bytes']:g} "
                f"| {r['fixed_bytes'] / 1000:.1f} | {_fmt_seconds(r['setup_s'])} "
                f"| {_fmt_seconds(r['index_s'])} | {_fmt_seconds(r['search_s'])} "
                f"| {r['search_ratio']:.2f} | {recall} |\n"
            )
        parts.append(f"**{title}**\n\n" + head + "".join(lines))
    notes = [
        f"{r['label']} ({r['bits']} bits): {'; '.join(r['notes'])}"
        for r in report["results"]
        if r.get("notes")
    ]
    if notes:
        parts.append("\\* " + " ".join(f"{n}." for n in notes) + "\n")
    by_reason: dict[str, list[str]] = {}  # one line per reason (faiss missing: every baseline)
    for skip in report["skipped"]:
        by_reason.setdefault(skip["reason"], []).append(f"{skip['method']} at {skip['bits']} bits")
    for reason, which in by_reason.items():
        parts.append(f"Not run: {', '.join(which)} ({reason}).\n")
    return "\n".join(parts)


def _under_load(meta: dict) -> str | None:
    """A warning when other work ran beside this run: a 1-minute load average, at its start or
    end, at least one busy core above this run's own threads."""
    threads = meta["threads"]["threads"]
    cores = meta["machine"].get("cores") or 1
    loads = [meta.get("load_average_start"), meta["machine"].get("load_average")]
    loads = [v[0] for v in loads if v]
    if loads and max(loads) >= threads + 1:
        shown = " and ".join(f"{v:.2f}" for v in loads)
        return (
            f"the machine was shared with other work (1-minute load average {shown} at the start "
            f"and end of the run, on {cores} cores, for this run's {threads} thread(s)): the "
            "timings were measured under load"
        )
    return None


def caption(report: dict) -> str:
    """One paragraph: data, sizes, machine, threads and versions of the run."""
    m = report["meta"]
    ds = m["dataset"]
    threads = m["threads"]
    load = _under_load(m)
    faiss = m.get("faiss")
    faiss_text = (
        "FAISS not installed"
        if not faiss
        else f"FAISS {faiss['version']} (RaBitQ: {'yes' if faiss['IndexRaBitQ'] else 'no'}, "
        f"TurboQuant scalar quantizer: {'bits ' + str(faiss['turboquant_mse_sq']) if faiss['turboquant_mse_sq'] else 'no'})"
    )
    return (
        f"{ds.get('title', ds['name'])}: {m['n_database']:,} database vectors and "
        f"{m['n_queries']:,} queries, disjoint (seed {m['seed']}), unit-normalised, d={m['dim']}; "
        f"ground truth exact in float64 ({m['ground_truth']['queries_with_tied_top1']} queries "
        f"with a tied nearest neighbour). polarquant backend {m['backend']}; {threads['threads']} "
        f"thread(s) for BLAS ({threads['blas']})"
        + ("; FAISS (OpenMP)" if "faiss_threads" in threads else "")
        + ("; Numba" if "numba_threads" in threads else "")
        + f"; best of {m['repeats']} search(es). Machine: {m['machine']['cpu']}, "
        f"{m['machine']['cores']} cores. "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f"; {faiss_text}."
        + (f" Note: {load}." if load else "")
        + " Columns: code B/vec = bytes per vector of the codes (norms and per-vector factors "
        "included); held B/vec = bytes per vector the index holds (polarquant's VectorIndex also "
        "stores 8-byte ids); fixed KB = FAISS's serialized index minus its codes (codebooks, "
        "ranges, rotation; polarquant rebuilds its rotation and codebooks from the seed); setup = "
        "building polarquant's data-independent quantizer (rotations are cached per dimension and "
        "seed across rows; QJL sketches are drawn at first use, in the untimed warm-up); index = "
        "train + add (FAISS) or encoding "
        "(polarquant); x exact = search time / exact float32 search time of the same run; "
        "1@k = recall@1@k."
    )


#: The line after which a docs page includes the generated file.
TABLE_MARKER = "<!-- search-eval table -->"


def markdown_page(report: dict) -> str:
    """The Markdown file ``--output`` writes: ``orphan`` front matter, :data:`TABLE_MARKER`,
    the tables and their caption.  A page includes it with::

        ```{include} _static/search/search-eval-glove.md
        :start-after: <!-- search-eval table -->
        ```
    """
    return (
        "---\norphan: true\n---\n\n"
        "<!-- generated by `polarquant search-eval --output`; do not edit -->\n"
        f"{TABLE_MARKER}\n\n{format_tables(report)}\n{caption(report)}\n"
    )


def _colour(tab20, i: int):
    """Ten distinct hues (tab20's dark half), then their light twins: FAISS's TurboQuant
    quantizers (methods 10 and 11) get the light hue of polarquant's (methods 0 and 1)."""
    return tab20(2 * i) if i < 10 else tab20(2 * (i - 10) + 1)


def plot_recall(report: dict, folder) -> list:
    """One PNG per bit width, ``recall-<dataset>-<b>bit.png`` in ``folder``: recall@1@k against
    k for every method (polarquant solid, FAISS dashed, the references dotted).  Needs
    matplotlib (drawn with its Agg canvas, no pyplot state)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colours = colormaps["tab20"]
    m = report["meta"]
    name = m["dataset"]["name"]
    refs = [r for r in report["results"] if r["bits"] not in m["bits"]]
    paths = []
    for b in m["bits"]:
        rows = [r for r in report["results"] if r["bits"] == b]
        if not rows:
            continue
        fig = Figure(figsize=(7.0, 4.6), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for r in rows + refs:
            ks = m["ks"]
            ys = [_recall_at(r, k) for k in ks]
            if r in refs:  # exact float32, SQ8: dotted, grey
                grey = "0.2" if r["method"] == "exact-float32" else "0.55"
                style = {"linestyle": ":", "color": grey, "marker": ""}
                label = f"{r['label']}, {r['bits']} bits ({r['code_bytes']:g} B)"
            else:  # one colour per method in every figure
                polar = r["family"] == "polarquant"
                style = {
                    "linestyle": "-" if polar else "--",
                    "marker": "o" if polar else "s",
                    "color": _colour(colours, METHODS.index(r["method"])),
                }
                label = f"{r['label']} ({r['code_bytes']:g} B)"
            ax.plot(ks, ys, markersize=3.5, linewidth=1.4, label=label, **style)
        ax.set_xscale("log", base=2)
        ax.set_xticks(m["ks"], [str(k) for k in m["ks"]])
        ax.set_xlabel("k (results returned per query)")
        ax.set_ylabel("recall@1@k")
        ax.set_ylim(top=1.005)
        ax.grid(True, alpha=0.3)
        ax.set_title(
            f"{name}, d={m['dim']}: {m['n_database']:,} vectors, {m['n_queries']:,} queries, "
            f"{b} bits/coordinate",
            fontsize=10,
        )
        ax.legend(fontsize=7, loc="lower right", ncol=2)
        path = Path(folder) / f"recall-{name}-{b}bit.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths
