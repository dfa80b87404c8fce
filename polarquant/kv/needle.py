r"""Needle in a haystack: pass-key retrieval at long contexts through a compressed KV cache.

``polarquant kv-eval --task needle`` runs it on SmolLM2-135M-Instruct (context
window 8,192 tokens).  The papers test their caches this way at 4k to 100k
tokens (QJL Sec. 5, PolarQuant Sec. 5, TurboQuant Sec. 4.3, all on
Llama-3.1-8B-Instruct); this module is the small-model, CPU version of it.

The prompt
----------
A short instruction, then a *haystack* of filler text, the **needle** — a
sentence giving a seven-digit number, the *pass key* — at a chosen *depth*
of the haystack (0 = before the first filler sentence, 1 = after the last),
then the question::

    A magic number is hidden in the text below. Find it and remember it; you
    will be asked for it at the end.

    <filler ...> Remember this: the magic number is 4821937. <filler ...>

    What is the magic number? The magic number is

(Phrased as a "magic number": with "pass key" phrasing, SmolLM2-135M at full
precision often answered with a definition of a key instead of the number.)

The filler is the project's own essay, ``polarquant/data/demo_text.txt``
(original prose, shipped with the package, see ``polarquant/data/README.md``),
its sentences repeated in order as often as the length needs.  Each piece
(instruction, sentences, needle, question) is tokenized on its own and the
token ids are concatenated, so the prompt has an exact, known length and the
needle an exact position: the prompt is ``length - ANSWER_TOKENS`` tokens or
fewer (whole sentences), leaving room for the answer inside the model's
window.  Pass keys are drawn from a seeded generator, seven digits, the first
non-zero (SmolLM2's tokenizer writes one token per digit).

The answer
----------
The prompt except its last token is encoded once with the model's exact
attention (a ``DynamicCache``); that is shared by every configuration,
because prefill attention is exact in the papers' setting (QJL Sec. 4, and
:class:`~polarquant.kv.hf.PolarquantCache`'s default ``prefill="exact"``), so
the hidden states are the same.  Each configuration's
:class:`~polarquant.kv.hf.PolarquantCache` then stores those keys and values
(:meth:`~polarquant.kv.hf.PolarquantCache.extend_from`: everything but the
newest ``window`` tokens compressed), and ``model.generate(prompt,
cache=cache)`` feeds the prompt's last token and generates greedily: **every
answer token**, the first included, comes from attention that reads the
compressed cache (stricter than a plain exact prefill, whose last prompt
position gives the first answer token without the cache).  The full-precision
row generates from the ``DynamicCache`` itself.

An answer is correct when the first number in the generated text is the pass
key (:func:`is_correct`).  Accuracies are rates over several pass keys per
cell with a Wilson 95% interval (:func:`wilson`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from math import sqrt

import numpy as np

__all__ = [
    "LENGTHS",
    "DEPTHS",
    "ANSWER_TOKENS",
    "Prompt",
    "passkeys",
    "filler_sentences",
    "build_prompt",
    "is_correct",
    "wilson",
]

#: Context lengths of the grid, in tokens (SmolLM2-135M's window is 8,192).
LENGTHS = (1024, 2048, 4096, 8192)
#: Tokens leave the window in blocks of 32, as in generation (``PolarquantCache``'s default).
FLUSH = 32
#: SmolLM2-135M-Instruct's context window, in tokens.
MAX_LENGTH = 8192
#: Depths of the needle in the haystack (fraction of the filler before it).
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Tokens kept free after the prompt for the answer (a space, seven digits, margin).
ANSWER_TOKENS = 12

INSTRUCTION = (
    "A magic number is hidden in the text below. Find it and remember it; "
    "you will be asked for it at the end.\n\n"
)
NEEDLE = " Remember this: the magic number is {key}."
QUESTION = "\n\nWhat is the magic number? The magic number is"


@dataclass(frozen=True)
class Prompt:
    """A needle prompt: ``ids`` (int64 token ids), the pass ``key``, the requested
    ``depth``, the needle's first token index ``needle_at``, and the filler tokens
    before the needle and in all."""

    ids: np.ndarray
    key: str
    depth: float
    needle_at: int
    filler_before: int
    filler_tokens: int

    @property
    def actual_depth(self) -> float:
        """Fraction of the filler placed before the needle (the depth whole sentences allow)."""
        return self.filler_before / self.filler_tokens


def passkeys(count: int, seed=0) -> list[str]:
    """``count`` distinct seven-digit pass keys (first digit non-zero), from ``seed`` (an
    integer or a sequence of them, as ``numpy.random.default_rng`` takes)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    rng = np.random.default_rng(seed)
    keys: list[str] = []
    while len(keys) < count:
        k = str(int(rng.integers(1_000_000, 10_000_000)))
        if k not in keys:
            keys.append(k)
    return keys


def filler_sentences() -> tuple[str, ...]:
    """The essay's sentences (title and paragraph breaks dropped), in order."""
    from .evaluation import TEXT_PATH

    text = TEXT_PATH.read_text(encoding="ascii")
    body = " ".join(line.strip() for line in text.splitlines()[1:] if line.strip())
    return tuple(s for s in re.split(r"(?<=[.!?])\s+", body) if s)


@lru_cache(maxsize=4)
def _pieces(tokenizer) -> tuple:
    """Token ids of the instruction, the question and each filler sentence (with its space)."""

    def ids(text):
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    return ids(INSTRUCTION), ids(QUESTION), tuple(ids(" " + s) for s in filler_sentences())


def build_prompt(tokenizer, length: int, depth: float, key: str) -> Prompt:
    """The needle prompt of ``length`` tokens (at most ``length - ANSWER_TOKENS``) with the
    needle at ``depth`` of the filler (see the module docstring)."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    if not (isinstance(key, str) and key.isdigit()):
        raise ValueError(f"key must be a string of digits, got {key!r}")
    intro, question, sentences = _pieces(tokenizer)
    needle = list(tokenizer(NEEDLE.format(key=key), add_special_tokens=False)["input_ids"])
    budget = length - ANSWER_TOKENS - len(intro) - len(question) - len(needle)
    if budget < 1:
        raise ValueError(f"length {length} leaves no room for filler text")
    filler: list[list[int]] = []
    used = 0
    i = 0
    while used + len(sentences[i % len(sentences)]) <= budget:
        filler.append(sentences[i % len(sentences)])
        used += len(filler[-1])
        i += 1
    if not filler:
        raise ValueError(f"length {length} leaves no room for one filler sentence")
    # the sentence boundary whose share of the filler is closest to the depth
    bounds = np.concatenate([[0], np.cumsum([len(s) for s in filler])])
    cut = int(np.argmin(np.abs(bounds - depth * used)))
    ids = intro + [t for s in filler[:cut] for t in s]
    needle_at = len(ids)
    ids += needle + [t for s in filler[cut:] for t in s] + question
    return Prompt(
        np.asarray(ids, dtype=np.int64), key, float(depth), needle_at, int(bounds[cut]), used
    )


def is_correct(answer: str, key: str) -> bool:
    """Whether the first number in ``answer`` is ``key`` (digits only; ``"4821937."`` counts)."""
    m = re.search(r"\d+", answer)
    return m is not None and m.group(0) == key


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial rate (95% by default): ``(low, high)``.

    Unlike the normal approximation it stays inside [0, 1] and is not empty at
    0 or ``n`` successes, which matters for cells of a few needles.

    >>> [round(v, 3) for v in wilson(3, 3)]
    [0.439, 1.0]
    """
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


# -- the grid ------------------------------------------------------------------------------------
#: Nominal bits of the needle grid: every key method at 3 and 4, fp8 at 8 (see :func:`default_grid`).
GRID_BITS = (3.0, 4.0, 8.0)
#: The label of the row answered from the model's own uncompressed ``DynamicCache``.
FULL = "full precision"


def default_grid(methods=None, bits=GRID_BITS, head_dim: int = 64) -> list[dict]:
    """The needle grid: :func:`polarquant.kv.evaluation.default_grid` at ``bits`` (``none``,
    every key method at nominal 3 and 4 bits, KIVI, Hadamard + RTN, fp8), then transformers'
    ``QuantizedCache`` (:func:`polarquant.kv.quantized_cache.grid`; methods ``quanto`` and
    ``hqq``).

    Without ``methods``, the ``QuantizedCache`` rows of a backend whose package is not
    installed are left out (:func:`skipped_backends` names them); asked for by name, a
    missing package raises ``ImportError`` with its install command.
    """
    from . import quantized_cache
    from .evaluation import default_grid as grid

    if methods is None:
        backends = [b for b in quantized_cache.BACKENDS if quantized_cache.available(b)]
        ours = None
    else:
        methods = tuple(methods)
        backends = [m for m in methods if m in quantized_cache.BACKENDS]
        ours = tuple(m for m in methods if m not in quantized_cache.BACKENDS)
        for b in backends:
            quantized_cache.require(b)
    rows = grid(ours, bits, head_dim=head_dim) if ours is None or ours else []
    return rows + quantized_cache.grid(backends, bits)


def skipped_backends() -> list[str]:
    """The ``QuantizedCache`` backends the default grid leaves out (package not installed)."""
    from . import quantized_cache

    return [b for b in quantized_cache.BACKENDS if not quantized_cache.available(b)]


def _generate(model, prompt: Prompt, cache, tokenizer) -> str:
    import torch

    from .hf import cache_kwargs

    ids = torch.as_tensor(prompt.ids)[None]
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            **cache_kwargs(cache),
            max_new_tokens=ANSWER_TOKENS - 2,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def run(
    configs=None,
    lengths=LENGTHS,
    depths=DEPTHS,
    needles: int = 3,
    window: int = 128,
    seed: int = 0,
    key_seed: int = 0,
    backend: str | None = None,
    progress=None,
    model=None,
    tokenizer=None,
) -> dict:
    """The needle grid (module docstring) and a JSON-able report.

    ``configs`` (default :func:`default_grid`) are run on every prompt, then the
    full-precision row; ``needles`` pass keys per (length, depth) cell, distinct
    within a length (drawn from ``(key_seed, length)``, so a length gets the same
    keys whichever other lengths run with it); ``seed`` seeds the rotations and
    sketches.  ``progress(str)`` gets a line per prompt with the time left.
    """
    import time

    import torch
    from transformers import DynamicCache

    from . import quantized_cache
    from .evaluation import (
        _label,
        _meta_common,
        cache_memory,
        eta_text,
        grid_cache,
        load_smollm2,
    )
    from .hf import ATTN_IMPLEMENTATION, cache_kwargs

    say = progress or (lambda s: None)
    if model is None:
        model, tokenizer = load_smollm2()
    configs = default_grid(head_dim=model.config.head_dim) if configs is None else list(configs)
    lengths, depths = tuple(int(n) for n in lengths), tuple(float(d) for d in depths)
    limit = model.config.max_position_embeddings
    if max(lengths) > limit:
        raise ValueError(f"length {max(lengths)} exceeds the model's window of {limit} tokens")
    rows = [{**c, "label": _label(c), "answers": [], "memory": {}} for c in configs]
    full = {"label": FULL, "key_method": FULL, "answers": [], "memory": {}}
    impl = model.config._attn_implementation
    total = needles * len(depths) * sum(lengths)
    done, t0 = 0, time.perf_counter()
    try:
        for length in lengths:
            keys = iter(passkeys(needles * len(depths), (key_seed, length)))  # same in any split
            for depth in depths:
                for _ in range(needles):
                    prompt = build_prompt(tokenizer, length, depth, next(keys))
                    cell = {"length": length, "depth": depth, "key": prompt.key}
                    model.set_attn_implementation("sdpa")
                    exact = DynamicCache(config=model.config)
                    with torch.no_grad():  # the shared exact prefill: all but the last token
                        model(
                            input_ids=torch.as_tensor(prompt.ids[:-1])[None],
                            **cache_kwargs(exact),
                            use_cache=True,
                        )
                    for c, row in zip(configs, rows, strict=True):
                        if c.get("cache") == "transformers":  # its own attention, dequantized
                            model.set_attn_implementation("sdpa")
                            cache = quantized_cache.make_cache(model.config, c)
                            quantized_cache.fill(cache, exact)
                            measure = quantized_cache.memory
                        else:
                            model.set_attn_implementation(ATTN_IMPLEMENTATION)
                            cache = grid_cache(
                                model, c, window=window, seed=seed, backend=backend, flush=FLUSH
                            )
                            cache.extend_from(exact)
                            measure = cache_memory
                        answer = _generate(model, prompt, cache, tokenizer)
                        row["answers"].append({**cell, "answer": answer})
                        if length not in row["memory"]:
                            row["memory"][length] = measure(cache)
                    model.set_attn_implementation("sdpa")
                    answer = _generate(model, prompt, exact, tokenizer)
                    full["answers"].append({**cell, "answer": answer})
                    done += length
                    right = sum(is_correct(a["answer"], a["key"]) for a in full["answers"])
                    say(
                        f"{length} tokens, depth {depth:g}, key {prompt.key}: full precision "
                        f"{answer.strip()[:12]!r} ({right}/{len(full['answers'])} right so far); "
                        + eta_text(done, total, time.perf_counter() - t0)
                    )
    finally:
        model.set_attn_implementation(impl)
    results = [_score(row) for row in rows + [full]]
    meta = {
        **_meta_common(model, window, backend, seed),
        "task": "needle",
        "lengths": list(lengths),
        "depths": list(depths),
        "needles_per_cell": needles,
        "key_seed": key_seed,
        "seconds": time.perf_counter() - t0,
    }
    return {"meta": meta, "results": results}


def merge_reports(reports) -> dict:
    """One report from runs of one grid split between processes, either by **lengths** (the
    same configurations over disjoint lengths, e.g. two processes side by side) or by
    **configurations** (disjoint configurations over the same prompts, e.g. rows added to a
    finished grid).  Split by configurations, the runs' full-precision answers must be the same
    (a check that the prompts, the model and its arithmetic are), and one full-precision row is
    kept.  Answers are scored again; seconds and runs add up."""
    reports = list(reports)
    if not reports:
        raise ValueError("no reports to merge")
    first = reports[0]
    same = ("depths", "needles_per_cell", "window", "seed", "key_seed", "backend")
    for rep in reports[1:]:
        if any(rep["meta"].get(k) != first["meta"].get(k) for k in same):
            raise ValueError(f"the reports differ in one of {same}")
    labels = [[r["label"] for r in rep["results"]] for rep in reports]
    if all(lab == labels[0] for lab in labels):
        rows, split = _merge_lengths(reports), "lengths"
    elif all(rep["meta"]["lengths"] == first["meta"]["lengths"] for rep in reports):
        rows, split = _merge_configurations(reports), "configurations"
    else:
        raise ValueError(
            "merge runs of the same configurations over disjoint lengths, or runs of disjoint "
            "configurations over the same lengths"
        )
    # a report of several runs from before the "split" key was split by lengths
    splits = [
        s
        for rep in reports
        for s in rep["meta"]
        .get("split", "lengths" if rep["meta"].get("runs", 1) > 1 else "")
        .split(" and ")
        if s
    ]
    splits = [s for s in ("lengths", "configurations") if s in splits + [split]]
    meta = {
        **first["meta"],
        "lengths": sorted({n for rep in reports for n in rep["meta"]["lengths"]}),
        "seconds": sum(rep["meta"]["seconds"] for rep in reports),
        "runs": sum(rep["meta"].get("runs", 1) for rep in reports),
        "split": " and ".join(splits),
    }
    return {"meta": meta, "results": rows}


def _merge_lengths(reports) -> list[dict]:
    seen: set = set()
    for rep in reports:
        overlap = seen & set(rep["meta"]["lengths"])
        if overlap:
            raise ValueError(
                f"the reports both hold lengths {sorted(overlap)}: merge disjoint runs"
            )
        seen |= set(rep["meta"]["lengths"])
    rows = []
    for i in range(len(reports[0]["results"])):
        parts = [rep["results"][i] for rep in reports]
        keep = {k: v for k, v in parts[0].items() if k not in _SCORED}
        keep["answers"] = [a for p in parts for a in p["answers"]]
        keep["memory"] = {k: v for p in parts for k, v in p["memory"].items()}
        rows.append(_score(keep))
    return rows


def _merge_configurations(reports) -> list[dict]:
    def answers(row):
        return [(a["length"], a["depth"], a["key"], a["answer"]) for a in row["answers"]]

    fulls = [r for rep in reports for r in rep["results"] if r["key_method"] == FULL]
    if len(fulls) != len(reports):
        raise ValueError("every report must hold one full-precision row")
    if any(answers(f) != answers(fulls[0]) for f in fulls[1:]):
        raise ValueError(
            "the full-precision answers differ between the reports: not the same prompts, "
            "model or arithmetic (torch threads, versions)"
        )
    rows = [r for rep in reports for r in rep["results"] if r["key_method"] != FULL]
    labels = [r["label"] for r in rows]
    twice = sorted({lab for lab in labels if labels.count(lab) > 1})
    if twice:
        raise ValueError(f"{twice} appear more than once: merge disjoint configurations")
    return [_score(r) for r in rows] + [fulls[0]]


_SCORED = ("cells", "by_length", "correct", "n", "accuracy", "wilson95")


def _score(row: dict) -> dict:
    """``row`` with ``correct`` per answer, ``cells`` (per length and depth) and ``by_length``
    rates, and the overall rate with its Wilson interval."""
    for a in row["answers"]:
        a["correct"] = bool(is_correct(a["answer"], a["key"]))
    cells: dict = {}
    for a in row["answers"]:
        c = cells.setdefault((a["length"], a["depth"]), [0, 0])
        c[0] += a["correct"]
        c[1] += 1
    by_length: dict = {}
    for (length, _), (k, n) in cells.items():
        t = by_length.setdefault(length, [0, 0])
        t[0] += k
        t[1] += n
    k = sum(a["correct"] for a in row["answers"])
    n = len(row["answers"])
    return {
        **row,
        "cells": [
            {"length": L, "depth": d, "correct": k_, "n": n_} for (L, d), (k_, n_) in cells.items()
        ],
        "by_length": {
            str(L): {"correct": k_, "n": n_, "wilson95": wilson(k_, n_)}
            for L, (k_, n_) in by_length.items()
        },
        "memory": {str(L): m for L, m in row["memory"].items()},
        "correct": k,
        "n": n,
        "accuracy": k / n if n else float("nan"),
        "wilson95": wilson(k, n),
    }


# -- output --------------------------------------------------------------------------------------
def _rate(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{k}/{n} ({100 * k / n:.0f}%, {100 * lo:.0f}-{100 * hi:.0f})" if n else "-"


def format_table(report: dict) -> str:
    """Markdown: one row per configuration, stored bits, memory at the longest length,
    accuracy per length and overall (correct/asked, %, Wilson 95% interval)."""
    from .evaluation import setting

    lengths = [str(n) for n in report["meta"]["lengths"]]
    longest = lengths[-1]
    head = (
        "| keys / values | setting | stored bits K / V | x smaller than fp16 at "
        f"{longest} | " + " | ".join(f"{n} tokens" for n in lengths) + " | all |"
    )
    lines = [
        head,
        "| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in lengths) + " | ---: |",
    ]
    for r in report["results"]:
        mem = r["memory"].get(longest)
        if r["key_method"] == FULL:
            label, config, bits, ratio = f"**{FULL}** (DynamicCache, float32)", "", "32 / 32", "0.5"
        else:
            label = (
                f"transformers QuantizedCache ({r['key_method']})"
                if r.get("cache") == "transformers"
                else f"{r['key_method']} / {r['value_method']}"
            )
            config = r.get("setting") or setting(r.get("key_config"), r["key_bits"])
            bits = f"{mem['bits_keys']:.2f} / {mem['bits_values']:.2f}" if mem else ""
            ratio = f"{mem['fp16_ratio']:.2f}" if mem else ""
        per = [_rate(r["by_length"][n]["correct"], r["by_length"][n]["n"]) for n in lengths]
        lines.append(
            f"| {label} | {config} | {bits} | {ratio} | "
            + " | ".join(per)
            + f" | {_rate(r['correct'], r['n'])} |"
        )
    return "\n".join(lines) + "\n"


def heatmaps(report: dict, path) -> None:
    """One accuracy heatmap (depth x length) per configuration, in one figure at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths, depths = report["meta"]["lengths"], report["meta"]["depths"]
    rows = report["results"]
    cols = 4
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(
        nrows, cols, figsize=(3.1 * cols, 2.5 * nrows), squeeze=False, constrained_layout=True
    )
    for ax in axes.flat[len(rows) :]:
        ax.axis("off")
    image = None
    for ax, r in zip(axes.flat, rows, strict=False):  # spare axes are off
        grid = np.full((len(depths), len(lengths)), np.nan)
        text = [["" for _ in lengths] for _ in depths]
        for c in r["cells"]:
            i, j = depths.index(c["depth"]), lengths.index(c["length"])
            grid[i, j] = c["correct"] / c["n"]
            text[i][j] = f"{c['correct']}/{c['n']}"
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        for i in range(len(depths)):
            for j in range(len(lengths)):
                ax.text(j, i, text[i][j], ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(lengths)), [f"{n / 1024:g}k" for n in lengths], fontsize=8)
        ax.set_yticks(range(len(depths)), [f"{int(100 * d)}%" for d in depths], fontsize=8)
        title = FULL if r["key_method"] == FULL else _short_label(r)
        ax.set_title(f"{title}\n{_rate(r['correct'], r['n'])}", fontsize=8)
    fig.supxlabel("context length (tokens)")
    fig.supylabel("needle depth")
    fig.colorbar(image, ax=axes, shrink=0.6, label="fraction of needles found")
    fig.suptitle(
        "Needles found per cell (values: the key method's, or TurboQuant_mse under the "
        "inner-product estimators)",
        fontsize=9,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short_label(r: dict) -> str:
    """``"turboquant-mse @4, K 4.25 b"``: the key method, its nominal and stored key bits."""
    mem = next(iter(r["memory"].values()), None)
    bits = f", K {mem['bits_keys']:.2f} b" if mem else ""
    if r.get("cache") == "transformers":
        return f"QuantizedCache {r['key_method']} int{r['key_bits']}{bits}"
    return f"{r['key_method']} @{r['nominal_bits']:g}{bits}"


def markdown_page(report: dict) -> str:
    """The include file of ``docs/kv-needle.md``: the table and how it was made."""
    m = report["meta"]
    from .evaluation import TABLE_MARKER, _duration

    caption = (
        f"\n{m['needles_per_cell']} pass keys per (length, depth) cell, depths "
        f"{', '.join(f'{d:g}' for d in m['depths'])}; window {m['window']}, seed {m['seed']}, "
        f"backend {m['backend'] or 'default'}; each cell: found/asked (%, Wilson 95% interval). "
        + (
            f"Run: {_duration(m['seconds'])} on {m['machine']}.\n"
            if m.get("runs", 1) == 1
            else f"Run as {m['runs']} processes ({m.get('split', 'lengths')} split between them, "
            f"merged with `polarquant.kv.needle.merge_reports`): {_duration(m['seconds'])} of process "
            f"time on {m['machine']}.\n"
        )
    )
    return (
        "---\norphan: true\n---\n\n"
        "<!-- generated by `polarquant kv-eval --task needle --markdown`; do not edit -->\n"
        f"{TABLE_MARKER}\n\n{format_table(report)}{caption}"
    )


def main(args) -> int:
    """``polarquant kv-eval --task needle`` (``args`` from :mod:`polarquant.cli`)."""
    import json

    from . import quantized_cache
    from .evaluation import UsageError, _load_for_cli, _output_path, _plural
    from .evaluation import _say as say

    paths = {o: _output_path(getattr(args, o), f"--{o}") for o in ("json", "markdown", "figure")}
    bits = GRID_BITS if args.bits is None else args.bits
    configs = default_grid(args.methods, bits, head_dim=64)
    lengths = args.lengths or LENGTHS
    depths = args.depths or DEPTHS
    needles = args.needles or 3
    if max(lengths) > MAX_LENGTH:
        raise UsageError(f"--lengths: SmolLM2-135M reads at most {MAX_LENGTH} tokens")
    if not configs:
        raise UsageError("no configuration matches --methods and --bits")
    if args.methods is None and quantized_cache.grid(skipped_backends(), bits):
        say(
            f"transformers' QuantizedCache rows left out ({', '.join(skipped_backends())} "
            f"not installed): {quantized_cache.INSTALL}"
        )
    say(
        f"polarquant kv-eval --task needle: {_plural(len(configs))} + full precision, "
        f"{len(lengths)} lengths x {len(depths)} depths x {needles} pass keys = "
        f"{len(lengths) * len(depths) * needles} prompts; loading SmolLM2-135M-Instruct"
    )
    model, tok, seconds = _load_for_cli(args.torch_threads)
    say(f"model loaded in {seconds:.0f} s")
    report = run(
        configs,
        lengths,
        depths,
        needles,
        args.window,
        0 if args.seed is None else args.seed,
        0,
        args.backend,
        say,
        model,
        tok,
    )
    print(format_table(report), end="")
    if paths["json"] is not None:
        paths["json"].write_text(json.dumps(report, indent=1) + "\n")
    if paths["markdown"] is not None:
        paths["markdown"].write_text(markdown_page(report))
    if paths["figure"] is not None:
        heatmaps(report, paths["figure"])
    return 0
