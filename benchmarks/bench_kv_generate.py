"""Generation with SmolLM2-135M: PolarquantCache against transformers' DynamicCache (not a test).

Usage::

    python benchmarks/bench_kv_generate.py                       # 4k and 8k tokens of context
    python benchmarks/bench_kv_generate.py --lengths 2048 --steps 16
    python benchmarks/bench_kv_generate.py --json out.json
    python benchmarks/bench_kv_generate.py --device cuda --backend cupy --random-weights

Needs the ``hf`` extra and the model (``docs/kv-eval.md``, "Reproduce"); with
``--random-weights``, only the ``hf`` extra: a seeded random model of SmolLM2's
architecture (:data:`SMOLLM2_ARCH`) fed seeded random token ids, for machines
without the model files (a GPU machine with no network).  Speed and memory do
not depend on the weights or the tokens (same shapes, same work), but the
generated tokens are meaningless there.  ``--device cuda`` runs the model on
the GPU; with ``--backend cupy`` the compressed cache stays there too (codes
in GPU memory, the cupy backend's kernels, tensors shared through DLPack), and
each timing ends with ``torch.cuda.synchronize()``.  For each
context length, a needle prompt of that many tokens (:mod:`polarquant.kv.needle`,
magic number at half depth) is run through the model twice per repeat, in
alternating order: with the model's own ``DynamicCache`` (``sdpa`` attention,
float32 keys and values) and with :class:`polarquant.kv.hf.PolarquantCache`
(``--key-method``/``--bits`` keys and values, 128-token window, exact prefill,
attention from the codes on ``--backend``).  Measured, in the same process:

* **prefill**: one forward pass over the prompt (seconds);
* **decode**: ``--steps`` greedy one-token steps after it, each timed; tokens
  per second = steps / their total time; the median step too;
* **memory**: the bytes the compressed cache holds after the steps (codes,
  norms, window, state; ``PolarquantCache.nbytes``) against an fp16 cache of
  the same tokens (2 bytes per coordinate), and what the DynamicCache holds
  (float32 here).

Each cache's best repeat is reported (the least disturbed by other processes:
the highest decode rate, the shortest prefill), and the ratios are taken
between those bests; the repeats alternate the order of the two caches.  Numba's kernels are
compiled (or loaded from its cache) by a short warm-up generation first.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from _common import machine, write_json

#: SmolLM2-135M-Instruct's architecture (its config as transformers loads it), for
#: ``--random-weights``.
SMOLLM2_ARCH = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    rope_parameters={"rope_theta": 100000.0, "rope_type": "default"},
)


def _random_model(device: str):
    """A seeded random Llama of :data:`SMOLLM2_ARCH` in float32, eval mode, on ``device``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import polarquant.kv.hf  # noqa: F401  (registers attn_implementation="polarquant")

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SMOLLM2_ARCH)).eval().to(device)


def _run(model, ids, cache, steps: int) -> dict:
    import torch

    from polarquant.kv.hf import cache_kwargs

    def now():
        if ids.device.type == "cuda":
            torch.cuda.synchronize(ids.device)
        return time.perf_counter()

    with torch.no_grad():
        t0 = now()
        out = model(input_ids=ids, **cache_kwargs(cache), use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        prefill = now() - t0
        times = []
        for _ in range(steps):
            t0 = now()
            out = model(input_ids=nxt, **cache_kwargs(cache), use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
            times.append(now() - t0)
    return {
        "prefill_s": prefill,
        "decode_tokens_per_s": steps / sum(times),
        "decode_median_ms": 1e3 * float(np.median(times)),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="4096,8192")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--key-method", default="turboquant-mse")
    ap.add_argument("--bits", type=float, default=4)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="where the model runs: cpu or cuda")
    ap.add_argument("--random-weights", action="store_true", help="no model files needed")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)

    import torch
    from transformers import DynamicCache

    from polarquant.kv import needle
    from polarquant.kv.hf import PolarquantCache

    torch.set_num_threads(args.torch_threads)
    if args.random_weights:
        model = _random_model(args.device)
        rng = np.random.default_rng(0)

        def prompt(length):
            ids = rng.integers(0, SMOLLM2_ARCH["vocab_size"], length)
            return torch.as_tensor(ids)[None].to(args.device)

    else:
        from polarquant.kv.evaluation import load_smollm2

        model, tok = load_smollm2()
        model = model.to(args.device)

        def prompt(length):
            ids = needle.build_prompt(tok, length, 0.5, "4821937").ids
            return torch.as_tensor(ids)[None].to(args.device)

    bits = int(args.bits) if args.bits % 1 == 0 else args.bits
    kw = dict(
        key_method=args.key_method,
        key_bits=bits,
        value_method="turboquant-mse",
        value_bits=bits,
        window=args.window,
        backend=args.backend,
    )

    def compressed():
        return PolarquantCache(model.config, **kw)

    def dynamic():
        return DynamicCache(config=model.config)

    # warm-up: compile or load the kernels, outside every timing
    model.set_attn_implementation("polarquant")
    _run(model, prompt(512), compressed(), 4)

    rows = []
    for length in (int(n) for n in args.lengths.split(",")):
        ids = prompt(length)
        best = {}
        for rep in range(args.repeats):
            order = ("dynamic", "polarquant") if rep % 2 == 0 else ("polarquant", "dynamic")
            for name in order:
                model.set_attn_implementation("sdpa" if name == "dynamic" else "polarquant")
                cache = dynamic() if name == "dynamic" else compressed()
                r = _run(model, ids, cache, args.steps)
                if name == "polarquant":
                    r["nbytes"] = cache.nbytes
                    r["fp16_ratio"] = cache.fp16_ratio
                    r["bits_per_coordinate"] = cache.bits_per_coordinate
                else:
                    r["nbytes"] = int(
                        sum(lay.keys.nbytes + lay.values.nbytes for lay in cache.layers)
                    )
                print(f"  {length} tokens, {name}: {r}", flush=True)
                b = best.get(name)
                if b is None or r["decode_tokens_per_s"] > b["decode_tokens_per_s"]:
                    best[name] = {**r, "prefill_s": min(r["prefill_s"], (b or r)["prefill_s"])}
        d, p = best["dynamic"], best["polarquant"]
        rows.append(
            {
                "tokens": int(ids.shape[1]) + args.steps,
                "prompt_tokens": int(ids.shape[1]),
                "dynamic": d,
                "polarquant": p,
                "decode_speed_ratio": p["decode_tokens_per_s"] / d["decode_tokens_per_s"],
                "prefill_time_ratio": p["prefill_s"] / d["prefill_s"],
            }
        )
    model.set_attn_implementation("sdpa")

    info = machine()
    info.update(
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        device=args.device,
        weights="random (SmolLM2 architecture)" if args.random_weights else "SmolLM2-135M",
    )
    if args.backend == "numba":
        import numba

        info.update(
            numba=numba.__version__,
            numba_threads=numba.get_num_threads(),
            NUMBA_NUM_THREADS=os.environ.get("NUMBA_NUM_THREADS", "unset"),
        )
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
        if args.backend == "cupy":
            import cupy

            info["cupy"] = cupy.__version__
    print(f"machine: {info}")
    print(f"PolarquantCache: {kw}, exact prefill; baseline DynamicCache (sdpa, float32)")
    print(
        f"{'tokens':>7s} {'dyn tok/s':>9s} {'pq tok/s':>9s} {'speed':>6s} "
        f"{'dyn prefill':>11s} {'pq prefill':>10s} {'time':>5s} {'fp16/pq bytes':>13s}"
    )
    for r in rows:
        d, p = r["dynamic"], r["polarquant"]
        print(
            f"{r['tokens']:7d} {d['decode_tokens_per_s']:9.2f} {p['decode_tokens_per_s']:9.2f} "
            f"{r['decode_speed_ratio']:6.2f} {d['prefill_s']:10.1f}s {p['prefill_s']:9.1f}s "
            f"{r['prefill_time_ratio']:5.2f} {p['fp16_ratio']:13.2f}"
        )
    results = {"args": vars(args), "machine": info, "rows": rows}
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
