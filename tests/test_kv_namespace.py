"""The KV cache computes in the namespace, and on the device, of the tokens it holds.

Issue 14, What to build 2: the cache and the token codecs are written against
the array API, so that on a GPU they run on CuPy arrays (the cupy backend's
kernels, a CUDA torch tensor shared through DLPack) with the same code as on
the host.  Three layers:

1. **On any machine**, ``array_api_strict`` arrays (which refuse every NumPy
   idiom the standard does not have: implicit conversions, partial indexing,
   ``np.`` functions) hold a cache and must give what the NumPy cache gives:
   the same bytes, the same memory, attention and scores to float32 rounding.
   A call that slipped back to NumPy would raise there.
2. **Refusals**, before anything is stored: arrays of another namespace than
   the cache's, a backend that cannot compute on the arrays (Numba on device
   arrays, cupy on host arrays), a NumPy-only baseline on device arrays.
3. **On a GPU** (``@pytest.mark.gpu``, skipped without CuPy and a CUDA
   device): the same cache on CuPy arrays with the cupy backend against the
   NumPy one, and a CUDA model's ``PolarquantCache`` against the host path.
"""

from __future__ import annotations

import numpy as np
import pytest

from polarquant import KVCache

#: Every test chooses its backend explicitly (CI's Numba pass leaves the file out).
pytestmark = pytest.mark.backend_independent


@pytest.fixture
def xps():
    """``array_api_strict`` (the test extra), skipped where absent: in a fixture, so that the
    GPU tests below never depend on it."""
    return pytest.importorskip("array_api_strict")


#: Key/value configurations with no NumPy-only part: every quantizer codec, both
#: outlier codecs (QJL's per-group split, TurboQuant's channel split), the split and
#: full QJL queries, and "none".  ``array_api_strict`` has no float16, so norms,
#: radii and the window are float32 here.
F32 = {"norm_dtype": "float32"}
CONFIGS = {
    "turboquant-mse": dict(key_method="turboquant-mse", key_bits=3, value_bits=4),
    "turboquant-prod": dict(key_method="turboquant-prod", key_bits=3, value_bits=2),
    "turboquant-prod-1bit": dict(key_method="turboquant-prod", key_bits=1),
    "qjl-outliers": dict(key_method="qjl", key_bits=2),
    "qjl-full-query": dict(key_method="qjl", key_bits=2, key_options={**F32, "query": "full"}),
    "qjl-plain": dict(key_method="qjl", key_bits=2, key_options={**F32, "outliers": 0}),
    "polarquant": dict(
        key_method="polarquant",
        key_bits=3,
        value_method="polarquant",
        value_bits=3,
        key_options={"radius_dtype": "float32"},
        value_options={"radius_dtype": "float32"},
    ),
    "polarquant-qjl": dict(
        key_method="polarquant-qjl", key_bits=3, key_options={"radius_dtype": "float32"}
    ),
    "channel-split": dict(
        key_method="turboquant-prod", key_bits=3.5, value_method="turboquant-mse", value_bits=2.5
    ),
    "none": dict(key_method="none", value_method="none", key_bits=None, value_bits=None),
}


def _options(config: dict) -> dict:
    """``config`` with float32 norms wherever a method stores float16 ones by default."""
    out = dict(config)
    for role in ("key", "value"):
        method = out.get(f"{role}_method", "turboquant-mse")
        if method != "none" and f"{role}_options" not in out:
            out[f"{role}_options"] = dict(F32)
    return out


def _host(a) -> np.ndarray:
    return np.from_dlpack(a)


def _tokens(rng, tokens, heads=2, dim=32):
    k, v = rng.standard_normal((2, 1, heads, tokens, dim)).astype(np.float32)
    k[..., 3] *= 6.0  # an outlier channel, so the outlier codecs have something to choose
    return k, v


def _pair(config, **kw):
    opts = dict(_options(config), window=8, window_dtype="float32", backend="numpy", seed=3)
    opts.update(kw)
    return KVCache(32, **opts), KVCache(32, **opts)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_strict_namespace_cache_equals_the_numpy_cache(name, xps):
    """Same bytes, same memory, the same attention to float32 rounding, in the array's namespace.

    Both caches run the same float32 operations on the same values; only the
    attention's products differ in how they are batched (NumPy: one BLAS call
    per stream; other namespaces: a stacked ``matmul``), so outputs agree to a
    few float32 ulps of their magnitude (~1): ``atol = rtol = 1e-5``.  Codes
    are compared byte for byte: everything before them is elementwise or the
    same 2-D product.
    """
    rng = np.random.default_rng(11)
    ref, strict = _pair(CONFIGS[name])
    k, v = _tokens(rng, 70)
    for a, b in ((0, 64), (64, 69), (69, 70)):  # a prefill, a chunk, a decode step
        ref.append(k[:, :, a:b], v[:, :, a:b])
        strict.append(xps.asarray(k[:, :, a:b]), xps.asarray(v[:, :, a:b]))
    assert len(strict) == len(ref) == 70 and strict.compressed_tokens == ref.compressed_tokens > 0
    assert strict.memory() == ref.memory()
    for mine, theirs in (
        (strict.key_fields(), ref.key_fields()),
        (strict.value_fields(), ref.value_fields()),
    ):
        assert mine.keys() == theirs.keys()
        for field in mine:
            np.testing.assert_array_equal(_host(mine[field]), theirs[field], err_msg=field)
    q = rng.standard_normal((1, 4, 3, 32)).astype(np.float32)
    out = strict.attention(xps.asarray(q))
    assert isinstance(out, type(xps.asarray(0.0))) and out.dtype == xps.float32
    tol = {"rtol": 1e-5, "atol": 1e-5}
    np.testing.assert_allclose(_host(out), ref.attention(q), **tol)
    np.testing.assert_allclose(_host(strict.scores(xps.asarray(q))), ref.scores(q), **tol)
    for mine, theirs in zip(strict.decoded(), ref.decoded(), strict=True):
        np.testing.assert_allclose(_host(mine), theirs, **tol)
    nk, nv = _tokens(rng, 3)  # a chunk's own tokens, attended exactly with the held ones
    new = strict.attention(xps.asarray(q), new=(xps.asarray(nk), xps.asarray(nv)))
    np.testing.assert_allclose(_host(new), ref.attention(q, new=(nk, nv)), **tol)


@pytest.mark.parametrize("name", ["qjl-outliers", "channel-split", "polarquant"])
def test_strict_namespace_stepwise_attention_equals_the_numpy_one(name, xps):
    """Teacher-forced attention (one block, every position's own view) in the strict namespace:
    equal to the NumPy cache's to float32 rounding, as above."""
    rng = np.random.default_rng(12)
    ref, strict = _pair(CONFIGS[name])
    k, v = _tokens(rng, 72)
    q = rng.standard_normal((1, 4, 72, 32)).astype(np.float32)
    ref.append(k, v)
    strict.append(xps.asarray(k), xps.asarray(v))
    want = ref.stepwise_attention(q, k, v)
    got = strict.stepwise_attention(xps.asarray(q), xps.asarray(k), xps.asarray(v))
    np.testing.assert_allclose(_host(got), want, rtol=1e-5, atol=1e-5)


# -- refusals, before anything is stored ----------------------------------------------------------
def _state(cache):
    return len(cache), cache.batch, cache.memory()


def test_arrays_of_another_namespace_than_the_cache_are_refused(xps):
    """A cache holds its tokens in one namespace and device: the others are a TypeError naming
    both, and the cache is unchanged (no implicit conversion either way)."""
    rng = np.random.default_rng(13)
    cache = KVCache(
        32, window=8, window_dtype="float32", backend="numpy", key_options=F32, value_options=F32
    )
    k, v = _tokens(rng, 20)
    cache.append(k, v)
    before = _state(cache)
    with pytest.raises(TypeError, match=r"keys is a array_api_strict .* numpy"):
        cache.append(xps.asarray(k), xps.asarray(v))
    with pytest.raises(TypeError, match=r"values is a array_api_strict .* are numpy"):
        cache.append(k, xps.asarray(v))
    q = rng.standard_normal((1, 4, 1, 32)).astype(np.float32)
    with pytest.raises(TypeError, match="queries is a array_api_strict"):
        cache.attention(xps.asarray(q))
    assert _state(cache) == before
    cache.append(k[:, :, :1], v[:, :, :1])  # what the cache accepted still works
    assert len(cache) == 21


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"backend": "numba"}, "the numba backend computes on NumPy arrays"),
        ({"key_method": "kivi", "key_bits": 4}, "key method 'kivi' is a baseline"),
        ({"value_method": "fp8", "value_bits": 8}, "value method 'fp8' is a baseline"),
        ({"key_method": "hadamard-rtn"}, "key method 'hadamard-rtn' is a baseline"),
    ],
)
def test_device_arrays_a_host_only_part_cannot_compute_on_are_refused_at_the_first_append(
    kw, match, xps
):
    """The Numba kernels and the NumPy-only baselines compute on NumPy arrays: a cache of
    other arrays is refused at its first append (not at the first flush, a window later,
    when the tokens would already be held), and stays empty."""
    if kw.get("backend") == "numba":
        pytest.importorskip("numba")
    opts = {"backend": "numpy", "window_dtype": "float32", **kw}
    cache = KVCache(32, **opts)
    k, v = _tokens(np.random.default_rng(14), 4)
    with pytest.raises(TypeError, match=match):
        cache.append(xps.asarray(k), xps.asarray(v))
    assert _state(cache) == (0, None, KVCache(32, **opts).memory())


def test_the_cupy_backend_needs_cupy_arrays():
    """The cupy backend computes on CuPy arrays: host arrays are refused at the first append
    (with CuPy installed: a TypeError naming the conversion; without: the install command)."""
    cache = KVCache(32, backend="cupy")
    k, v = _tokens(np.random.default_rng(15), 4)
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install -e \".\[cuda12\]\""):
            cache.append(k, v)
    else:
        with pytest.raises(TypeError, match="the cupy backend computes on CuPy arrays"):
            cache.append(k, v)
    assert len(cache) == 0 and cache.batch is None


def test_a_namespace_without_float16_asks_for_a_float32_window(xps):
    """``array_api_strict`` has no float16: the default float16 window is refused with the
    option that fixes it, and nothing is stored."""
    cache = KVCache(32, backend="numpy", key_options=F32, value_options=F32)
    k, v = _tokens(np.random.default_rng(16), 4)
    with pytest.raises(TypeError, match="no float16: build the cache with window_dtype='float32'"):
        cache.append(xps.asarray(k), xps.asarray(v))
    assert len(cache) == 0 and cache.batch is None


#: The ways an array_api_strict array's values reach the host: a Python scalar of a
#: 0-d array, or a NumPy copy.  On a GPU each of them waits for all queued work.
HOST_READS = (
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "__array__",
    "__buffer__",  # NumPy's np.asarray on Python 3.12 and later
    "__dlpack__",
)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_decode_step_reads_from_the_device_twice(name, xps, monkeypatch):
    """A decode step that compresses nothing reads values back to the host twice: one
    read in ``append`` (all its checks), one in ``attention`` (the queries' check).

    On a GPU every read of a value (the bool of a reduction, a float, a copy to
    the host) synchronises with the device: the host waits until all queued work
    is done, once per read per layer and step.  Before this test a step read up
    to 9 times (finite keys, finite values, the float16 range of each, each
    codec's norm limit through two reductions), up to 270 synchronisations per
    token on SmolLM2's 30 layers.  ``array_api_strict`` arrays reach the host
    only through ``HOST_READS``, so counting their calls counts the reads.  The
    steps stay between compressions (``flush=32``, as ``PolarquantCache``), which
    also run the quantizers' checks of their input.
    """
    opts = dict(_options(CONFIGS[name]), window=8, window_dtype="float32", flush=32)
    cache = KVCache(32, **opts, backend="numpy")
    rng = np.random.default_rng(17)
    k, v = _tokens(rng, 60)
    q = xps.asarray(rng.standard_normal((1, 4, 1, 32)).astype(np.float32))
    cache.append(xps.asarray(k[:, :, :40]), xps.asarray(v[:, :, :40]))  # 32 compressed, 8 held
    reads = []
    array = type(q)
    for method in HOST_READS:
        real = getattr(array, method)

        def counted(self, *args, _real=real, _method=method, **kwargs):
            reads.append(_method)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(array, method, counted)
    for t in range(40, 60):  # 20 steps: the window grows to 28 tokens, nothing leaves it
        cache.append(xps.asarray(k[:, :, t : t + 1]), xps.asarray(v[:, :, t : t + 1]))
        cache.attention(q)
    monkeypatch.undo()
    assert cache.compressed_tokens == 32 and len(cache) == 60
    assert len(reads) == 2 * 20, sorted(set(reads))


# -- on a CUDA device ----------------------------------------------------------------------------
def _cuda_ready() -> bool:
    try:
        import cupy

        return bool(cupy.is_available())
    except Exception:
        return False


gpu = pytest.mark.skipif(not _cuda_ready(), reason="needs CuPy and a CUDA device")

#: The GPU runs the default storage (float16 window, norms and radii).
GPU_CONFIGS = {
    "turboquant-mse": dict(key_method="turboquant-mse", key_bits=4, value_bits=4),
    "qjl-outliers": dict(key_method="qjl", key_bits=2),
    "polarquant": dict(
        key_method="polarquant", key_bits=3, value_method="polarquant", value_bits=3
    ),
    "channel-split": dict(key_method="turboquant-mse", key_bits=2.5, value_bits=3.5),
    "none": dict(key_method="none", value_method="none", key_bits=None, value_bits=None),
}


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("name", list(GPU_CONFIGS))
def test_gpu_cache_on_cupy_arrays_matches_the_host_cache(name):
    """CuPy arrays with the cupy backend against NumPy arrays with the NumPy reference.

    The rotation or sketch is a different GEMM on the device (cuBLAS), so a
    coordinate within a few float32 ulps of a decision boundary may take the
    neighbouring code: at most 1% of the code bytes may differ.  Attention is a
    convex combination of values of norm ~sqrt(32); one flipped code moves it
    by at most a codebook step times its weight, so the outputs agree to 2e-3.
    """
    import cupy as cp

    rng = np.random.default_rng(21)
    config = dict(GPU_CONFIGS[name], window=16, seed=5)
    ref = KVCache(32, backend="numpy", **config)
    dev = KVCache(32, backend="cupy", **config)
    k, v = _tokens(rng, 300)
    for a, b in ((0, 256), (256, 299), (299, 300)):
        ref.append(k[:, :, a:b], v[:, :, a:b])
        dev.append(cp.asarray(k[:, :, a:b]), cp.asarray(v[:, :, a:b]))
    assert dev.memory() == ref.memory()
    for mine, theirs in (
        (dev.key_fields(), ref.key_fields()),
        (dev.value_fields(), ref.value_fields()),
    ):
        for field, a in mine.items():
            assert isinstance(a, cp.ndarray)
            assert np.mean(cp.asnumpy(a) != theirs[field]) <= 0.01, field
    q = rng.standard_normal((1, 4, 2, 32)).astype(np.float32)
    out = dev.attention(cp.asarray(q))
    assert isinstance(out, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(out), ref.attention(q), atol=2e-3, rtol=2e-3)


@pytest.mark.gpu
@gpu
def test_gpu_model_cache_stays_on_the_device_and_decodes_like_the_host_path():
    """A CUDA model with ``backend="cupy"``: every layer's codes and window are CuPy arrays on
    the model's device, and greedy decoding gives the tokens of the same cache on the host
    path (``backend="numpy"``: the tensors copied to the host and back) for 16 steps."""
    import cupy as cp

    from tests.conftest import tiny_llama

    torch, model = tiny_llama()
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA build of torch")
    import polarquant.kv.hf as pqhf

    model = model.to("cuda")
    ids = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(3)).to("cuda")
    model.set_attn_implementation("polarquant")
    tokens = {}
    for backend in ("cupy", "numpy"):
        cache = pqhf.PolarquantCache(
            model.config, key_bits=4, value_bits=4, window=8, backend=backend
        )
        with torch.no_grad():
            out = model.generate(
                ids, **pqhf.cache_kwargs(cache), max_new_tokens=16, do_sample=False
            )
        tokens[backend] = out[0, 40:].tolist()
        held = cache.layers[0].kv
        assert isinstance(
            held.key_fields()["codes"], cp.ndarray if backend == "cupy" else np.ndarray
        )
    assert tokens["cupy"] == tokens["numpy"]
