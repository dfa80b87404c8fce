"""transformers' QuantizedCache as a needle baseline (polarquant.kv.quantized_cache).

The grid rows, the missing-package errors and the byte count.  The byte count is
checked against the layout each backend documents: ``b``-bit codes (HQQ packs
3-bit codes ten to a 32-bit word, so a group of 64 takes 7 words), plus a scale
and a zero point per group of 64 coordinates in the tensors' dtype (float32:
2 x 32 / 64 = 1 bit per coordinate).  A tiny Llama configuration, no model.
"""

from __future__ import annotations

import numpy as np
import pytest

from polarquant.kv import needle, quantized_cache

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

#: stored bits per coordinate from the layout (module docstring), float32 scale and zero
LAYOUT_BITS = {("quanto", 2): 3.0, ("quanto", 4): 5.0, ("hqq", 3): 4.5, ("hqq", 4): 5.0}


def _config():
    from transformers import LlamaConfig

    return LlamaConfig(
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_size=256,
        head_dim=64,
    )


def _exact(tokens: int, seed: int = 0):
    from transformers import DynamicCache

    g = torch.Generator().manual_seed(seed)
    cache = DynamicCache(config=_config())
    for layer in range(2):
        cache.update(
            torch.randn(1, 2, tokens, 64, generator=g),
            torch.randn(1, 2, tokens, 64, generator=g),
            layer,
        )
    return cache


def test_grid_rounds_nominal_bits_down_to_what_each_backend_takes():
    rows = quantized_cache.grid()
    assert [(r["key_method"], r["key_bits"], r["nominal_bits"]) for r in rows] == [
        ("quanto", 2, 3.0),
        ("quanto", 4, 4.0),
        ("hqq", 3, 3.0),
        ("hqq", 4, 4.0),
    ]
    assert all(r["cache"] == "transformers" and r["value_bits"] == r["key_bits"] for r in rows)
    # 8 is the fp8 row's width; 1.5 is below quanto's smallest width
    assert quantized_cache.grid(["quanto"], (1.5, 8.0)) == []
    assert [r["key_bits"] for r in quantized_cache.grid(["hqq"], (2.5, 3.5))] == [2, 3]
    with pytest.raises(
        ValueError, match="unknown QuantizedCache backend 'bnb'; valid: quanto, hqq"
    ):
        quantized_cache.grid(["bnb"])


def test_missing_backend_package_is_named_with_its_install_command(monkeypatch):
    """hqq reported missing (``available`` patched: hiding the package from ``find_spec``
    would also stick in transformers' cached ``is_hqq_available``, for later tests)."""
    installed = quantized_cache.available
    monkeypatch.setattr(quantized_cache, "available", lambda b: b != "hqq" and installed(b))
    message = (
        r"needs hqq>=0\.2\.8, not installed: in a clone of polarquant, python -m pip install -e"
    )
    with pytest.raises(ImportError, match=message):
        quantized_cache.make_cache(_config(), quantized_cache.grid(["hqq"])[0])
    with pytest.raises(ImportError, match=message):  # asked for by name: refused
        needle.default_grid(["kivi", "hqq"])
    # the default grid leaves the row out and says so
    assert "hqq" in needle.skipped_backends()
    assert all(c["key_method"] != "hqq" for c in needle.default_grid())
    if installed("quanto"):  # another backend, installed, stays in the grid
        grid = needle.default_grid(["kivi", "quanto"])
        assert [c["key_method"] for c in grid] == ["kivi"] * 2 + ["quanto"] * 2


@pytest.mark.parametrize(("backend", "bits"), sorted(LAYOUT_BITS))
def test_memory_counts_codes_scales_zeros_and_the_residual_tokens(backend, bits):
    """Bits per coordinate of the quantized part equal the layout's (module docstring); the
    overall bytes add the residual buffer's float32 tokens; ``fp16_ratio`` is fp16 bytes of
    the same tokens over that total.  Filling stores every prompt token quantized (transformers'
    prompt pass keeps no full-precision window)."""
    if not quantized_cache.available(backend):
        pytest.skip(f"{backend} is not installed")
    config = {"key_method": backend, "key_bits": bits}
    cache = quantized_cache.make_cache(_config(), config)
    prompt = 300
    quantized_cache.fill(cache, _exact(prompt))
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        for layer in range(2):
            cache.update(
                torch.randn(1, 2, 1, 64, generator=g), torch.randn(1, 2, 1, 64, generator=g), layer
            )
    m = quantized_cache.memory(cache)
    assert m["bits_keys"] == pytest.approx(LAYOUT_BITS[backend, bits], abs=1e-12)
    assert m["bits_values"] == pytest.approx(LAYOUT_BITS[backend, bits], abs=1e-12)
    assert (m["tokens"], m["compressed_tokens"]) == (prompt + 3, prompt)
    coords = 2 * 2 * 2 * (prompt + 3) * 64  # layers x (K, V) x heads x tokens x head_dim
    quantized = 2 * 2 * 2 * prompt * 64 * LAYOUT_BITS[backend, bits] / 8
    residual = 2 * 2 * 2 * 3 * 64 * 4
    assert m["nbytes"] == quantized + residual
    assert m["fp16_ratio"] == pytest.approx(2 * coords / (quantized + residual))


def test_quanto_round_trip_is_within_half_a_step_of_each_token_group():
    """quanto's min-max quantization: every coordinate within half a step, (max - min) /
    (2**b - 1) / 2, of its group of 64 (one token of one head here), as round to nearest
    guarantees, plus float32 rounding."""
    if not quantized_cache.available("quanto"):
        pytest.skip("optimum-quanto is not installed")
    exact = _exact(64, seed=3)
    for bits in (2, 4):
        cache = quantized_cache.make_cache(_config(), {"key_method": "quanto", "key_bits": bits})
        quantized_cache.fill(cache, exact)
        layer = cache.layers[1]
        x = exact.layers[1].keys.numpy()
        got = layer._dequantize(layer._quantized_keys).numpy()
        half_step = (x.max(-1, keepdims=True) - x.min(-1, keepdims=True)) / (2**bits - 1) / 2
        assert np.all(np.abs(got - x) <= half_step * (1 + 1e-5) + 1e-6)


@pytest.mark.parametrize("backend", ["quanto", "hqq"])
def test_a_changed_coordinate_moves_only_its_own_group(backend):
    """What a group is (module docstring): changing one coordinate to a large value changes the
    scale of exactly one group, flat index ``f`` // 64 for quanto (a token of a head) and
    ``f mod N/64`` for HQQ (64 coordinates spaced N/64 apart); every other scale is unchanged."""
    if not quantized_cache.available(backend):
        pytest.skip(f"{backend} is not installed")
    exact = _exact(100, seed=5)
    keys = exact.layers[0].keys
    n = keys.numel()
    f = (1 * 100 + 37) * 64 + 7  # head 1, token 37, channel 7

    def scales(k):
        cache = quantized_cache.make_cache(_config(), {"key_method": backend, "key_bits": 4})
        cache.update(k, k, 0)
        q = cache.layers[0]._quantized_keys
        return (q[1]["scale"] if backend == "hqq" else q._scale).reshape(-1)

    moved = keys.clone()
    moved.view(-1)[f] = 50.0
    changed = torch.nonzero(scales(moved) != scales(keys)).reshape(-1).tolist()
    assert changed == [f // 64 if backend == "quanto" else f % (n // 64)]


def test_a_too_old_backend_is_named_with_the_version_found(monkeypatch):
    import importlib.metadata

    if not quantized_cache.available("hqq"):
        pytest.skip("hqq is not installed")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.1.0")
    with pytest.raises(ImportError, match=r"needs hqq>=0\.2\.8, found 0\.1\.0: in a clone"):
        quantized_cache.require("hqq")


def test_fill_refuses_a_cache_of_another_model():
    from transformers import LlamaConfig

    other = LlamaConfig(
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, hidden_size=256
    )
    backend = next((b for b in quantized_cache.BACKENDS if quantized_cache.available(b)), None)
    if backend is None:
        pytest.skip("neither optimum-quanto nor hqq is installed")
    cache = quantized_cache.make_cache(other, quantized_cache.grid([backend])[-1])
    with pytest.raises(ValueError, match="3 and 2 layers: not the same model"):
        quantized_cache.fill(cache, _exact(8))
