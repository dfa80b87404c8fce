"""The CuPy backend: CUDA sources, launch plans, and the kernels themselves.

Three layers, the first two run on any machine with a C++ compiler and nvcc:

1. **Sources**: ``common.cuh``, ``scalar.cu``, ``sign.cu`` and ``polar.cu``,
   as the one module CuPy compiles, compile to PTX with nvcc for sm_80 and
   sm_90 (and with NVRTC, CuPy's compiler, where its library is installed),
   and each ``.cu`` file compiles on its own; every kernel the host code asks
   for exists, with the parameters the host passes, in the file of its
   algorithm, whose header names the reference operations it mirrors.
2. **Host side, kernels emulated on the CPU**: CuPy is replaced by the fake
   of ``tests/cuda_emulator.py``, whose kernels record each launch (grid,
   block, shared memory, device, arguments checked against the kernel's C
   signature) and run it on the kernels compiled as plain C++.  Every
   operation against the NumPy reference on the same plan and data: packed
   bytes identical (away from decision boundaries for the polar transform),
   decoded values identical, scores and weighted sums within float
   tolerance; launch plans; the same errors as the reference.
3. **GPU** (``@pytest.mark.gpu``, skipped unless CuPy sees a CUDA device):
   every operation against the reference on the same data, and the five
   quantizers with ``backend="cupy"``, codes moved between host and device
   in both directions.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from polarquant.backends import OPERATIONS
from polarquant.backends import cupy_backend as cb
from polarquant.backends import numpy_backend as ref
from polarquant.backends.cupy_backend import _launch

import polarquant as pq
from polarquant import fastscan
from polarquant.codebooks import Codebook, angle_codebook
from polarquant.packing import pack_codes, unpack_codes
from polarquant.plan import PolarPlan, ScalarPlan, SignPlan
from polarquant.polar import polar_transform
from tests.cuda_emulator import (
    SIGNATURES,
    SOURCE,
    SOURCE_DIR,
    FakeArray,
    build_emulator,
    cxx,
    dev,
    host,
    install_fake_cupy,
)

#: Chooses its backends explicitly (or uses none): CI's Numba pass leaves it out (conftest.py).
pytestmark = pytest.mark.backend_independent


# ================================================================ fixtures
@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """The kernels compiled for the CPU (``tests/cuda_emulator.py``)."""
    if cxx() is None:
        pytest.skip("no C++ compiler to build the CPU emulator of the kernels")
    return build_emulator(tmp_path_factory.mktemp("cuda_emulator"))


@pytest.fixture
def fake_cupy(monkeypatch, emulator):
    """CuPy replaced by the fake, kernels run by the emulator."""
    yield install_fake_cupy(monkeypatch, emulator)
    _launch.clear_caches()


@pytest.fixture
def recorder(monkeypatch):
    """CuPy replaced by the fake, launches only recorded (no compiler needed)."""
    yield install_fake_cupy(monkeypatch, None)
    _launch.clear_caches()


# ================================================================ 1. sources
def test_every_requested_kernel_is_defined():
    """The host asks only for kernels the source defines, and the source has no orphans."""
    assert sorted(SIGNATURES) == sorted(_launch.KERNELS)
    for name in _launch.KERNELS:
        assert re.search(rf'extern "C" __global__ void {name}\(', SOURCE), name


@pytest.mark.parametrize("algorithm", ["scalar", "sign", "polar", "fastscan"])
def test_kernels_are_filed_by_algorithm_beside_their_reference(algorithm):
    """``<algorithm>.cu`` defines exactly the ``<algorithm>_*`` kernels; its header names the
    reference operations it mirrors and the tests that hold it; ``<algorithm>.py`` launches them."""
    text = _launch.read_source(f"{algorithm}.cu")
    defined = set(re.findall(r'extern "C" __global__ void (\w+)\(', text))
    assert defined == {k for k in _launch.KERNELS if k.startswith(f"{algorithm}_")}
    header = text[: text.index("*/")]
    ops = [op for op in OPERATIONS if op.startswith(f"{algorithm}_")]
    assert f"polarquant.backends.numpy_backend.{ops[0]}" in header
    for op in ops:
        assert op in header and hasattr(ref, op), op
    assert "tests/test_cuda.py" in header and "tests/test_backends.py" in header
    assert f"{algorithm}.py" in header
    assert text.count('#include "common.cuh"') == 1
    module = __import__(f"polarquant.backends.cupy_backend.{algorithm}", fromlist=["x"])
    assert sorted(module.__all__) == sorted(ops)
    assert all(getattr(cb, op) is getattr(module, op) for op in ops)


def test_module_source_is_the_files_in_order():
    """One source string: the header once, then the four algorithms; no include left."""
    assert _launch.SOURCES == ("common.cuh", "scalar.cu", "sign.cu", "polar.cu", "fastscan.cu")
    positions = [SOURCE.index(f"======== {name} ========") for name in _launch.SOURCES]
    assert positions == sorted(positions)
    assert '#include "common.cuh"\n' not in SOURCE
    assert SOURCE.count("#define PQ_COMMON_CUH") == 1


def _nvcc() -> str | None:
    import shutil

    for cand in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).exists():
            return cand
    return None


def _ptx(nvcc, source: Path, out: Path, arch: str, *extra) -> str:
    res = subprocess.run(
        [nvcc, "-std=c++17", f"-arch={arch}", "-ptx", *extra, "-o", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return out.read_text()


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvcc_compiles_every_kernel(arch, tmp_path):
    """``nvcc -std=c++17 -arch=ARCH -ptx`` of the module source: every kernel is emitted, with
    the parameters expected (pointers and 64-bit integers ``u64``, ``int`` ``u32``)."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc is not installed (needed to compile-check the CUDA sources)")
    src = tmp_path / "polarquant_kernels.cu"
    src.write_text(SOURCE)
    text = _ptx(nvcc, src, tmp_path / f"kernels_{arch}.ptx", arch)
    for name, params in SIGNATURES.items():
        m = re.search(rf"\.entry {name}\((.*?)\)", text, re.S)
        assert m, f"{name} missing from the PTX"
        ptx_params = re.findall(r"\.param \.(\w+)", m.group(1))
        assert ptx_params == ["u32" if p.ctype == "int" else "u64" for p in params], name


@pytest.mark.parametrize("algorithm", ["scalar", "sign", "polar", "fastscan"])
def test_nvcc_compiles_each_file_on_its_own(algorithm, tmp_path):
    """Each ``.cu`` file includes what it uses (``common.cuh``) and compiles alone."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc is not installed (needed to compile-check the CUDA sources)")
    text = _ptx(
        nvcc, SOURCE_DIR / f"{algorithm}.cu", tmp_path / "k.ptx", "sm_80", "-I", str(SOURCE_DIR)
    )
    assert set(re.findall(r"\.entry (\w+)\(", text)) == {
        k for k in _launch.KERNELS if k.startswith(f"{algorithm}_")
    }


def _nvrtc_library():
    """libnvrtc from the nvidia-cuda-nvrtc wheel or the system, if any."""
    import ctypes
    import ctypes.util
    import glob
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    cands = []
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            cands += sorted(glob.glob(f"{root}/cuda_nvrtc/lib/libnvrtc.so*"))
            cands += sorted(glob.glob(f"{root}/cu*/lib/libnvrtc.so*"))
    found = ctypes.util.find_library("nvrtc")
    if found:
        cands.append(found)
    for c in cands:
        if "builtins" in c or ".alt." in c:
            continue
        try:
            for b in sorted(glob.glob(str(Path(c).parent / "libnvrtc-builtins.so*"))):
                if ".alt." not in b:  # nvrtc opens its builtins by name: load them first
                    ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
            return ctypes.CDLL(c)
        except OSError:
            continue
    return None


def test_nvrtc_compiles_the_source():
    """CuPy compiles with NVRTC (no host headers, no include path): the source must compile there."""
    import ctypes

    lib = _nvrtc_library()
    if lib is None:
        pytest.skip("libnvrtc not found (pip install nvidia-cuda-nvrtc to run this check)")
    prog = ctypes.c_void_p()
    src = SOURCE.encode()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"polarquant.cu", 0, None, None) == 0
    opts = [b"-std=c++17", b"-arch=compute_80"]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    assert rc == 0, log.value.decode(errors="replace")


# ================================================================ 2. emulated kernels
def _book(rng, bits) -> Codebook:
    """Random increasing centroids over about [-2.5, 2.5] and their midpoints as thresholds."""
    c = np.cumsum(rng.uniform(0.5, 1.5, 1 << bits))
    c = (c - c.mean()) * (5.0 / (c[-1] - c[0] + 1.0))
    return Codebook(c, (c[1:] + c[:-1]) / 2, (c[0] - 1.0, c[-1] + 1.0), 0.0, "random test book")


def _away_from(x, boundaries, gap):
    """Move values within ``gap`` of a boundary away from it (codes then do not depend on rounding)."""
    x = np.array(x)
    for b in np.asarray(boundaries):
        near = np.abs(x - b) < gap
        x[near] = b + np.where(x[near] >= b, gap, -gap)
    return x


def _tol(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)


def _suffix(dtype) -> str:
    return "f32" if dtype == np.float32 else "f64"


FLOATS = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("shape", [(7, 37), (3, 2, 128), (1, 1), (5, 0), (0, 16)])
def test_scalar_encode_and_values(fake_cupy, rng, dtype, bits, shape):
    """Packed bytes and decoded values identical to the reference's (inputs 1e-4 from boundaries)."""
    plan = ScalarPlan(shape[-1], _book(rng, bits))
    y = _away_from(rng.standard_normal(shape) * 1.2, plan.boundaries.astype(dtype), 1e-4)
    y = y.astype(dtype)
    got = cb.scalar_encode(plan, dev(y))
    want = ref.scalar_encode(plan, y)
    assert isinstance(got, FakeArray) and got.dtype == np.uint8 and got.shape == want.shape
    np.testing.assert_array_equal(host(got), want)
    vals = cb.scalar_values(plan, dev(want), dtype)
    assert vals.dtype == dtype and vals.shape == shape
    np.testing.assert_array_equal(host(vals), ref.scalar_values(plan, want, dtype))


def test_scalar_encode_ties_go_up_and_nan_last(fake_cupy):
    """Exactly on a boundary -> the upper cell (side="right"); NaN -> the last cell, as NumPy."""
    book = Codebook(np.array([-1.5, -0.5, 0.5, 1.5]), np.array([-1.0, 0.0, 1.0]), (-2, 2), 0.0)
    plan = ScalarPlan(8, book)
    y = np.array([[-1.0, 0.0, 1.0, -2.0, np.nan, 0.5, -0.0, np.inf]])
    got = host(cb.scalar_encode(plan, dev(y)))
    np.testing.assert_array_equal(got, ref.scalar_encode(plan, y))
    np.testing.assert_array_equal(unpack_codes(got, 2, 8), [[1, 2, 3, 0, 3, 2, 2, 3]])


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("path", ["lut", "gather"])
def test_scalar_score(fake_cupy, monkeypatch, rng, dtype, bits, path):
    """Both score kernels against ``q @ c[idx].T`` (the byte table only for 1, 2, 4, 8 bits)."""
    monkeypatch.setattr(_launch, "LUT_MIN_ROWS", 0 if path == "lut" else 10**9)
    monkeypatch.setattr(_launch, "LUT_MAX_SHARED_BYTES", 200 * 1024)  # the 8-bit float64 table too
    n, rows, nq = 45, 70, 3
    plan = ScalarPlan(n, _book(rng, bits))
    packed = pack_codes(rng.integers(0, 1 << bits, (rows, n)).astype(np.uint8), bits)
    q = rng.standard_normal((nq, n)).astype(dtype)
    got = cb.scalar_score(plan, dev(q), dev(packed))
    assert got.shape == (nq, rows) and got.dtype == dtype
    np.testing.assert_allclose(host(got), ref.scalar_score(plan, q, packed), **_tol(dtype))
    lut = path == "lut" and 8 % bits == 0
    used = {launch.kernel for launch in fake_cupy.launches}
    assert used == {f"scalar_score_{'lut' if lut else 'gather'}_{_suffix(dtype)}"}


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("m", [1, 8, 13, 64, 256, 300])
def test_sign_encode_values(fake_cupy, rng, dtype, m):
    plan = SignPlan(m)
    p = rng.standard_normal((9, m)).astype(dtype)
    p[0, : min(m, 3)] = [0.0, -0.0, -1e-30][: min(m, 3)]
    got = cb.sign_encode(plan, dev(p))
    want = ref.sign_encode(plan, p)
    assert got.shape == want.shape and got.dtype == np.uint8
    np.testing.assert_array_equal(host(got), want)
    vals = cb.sign_values(plan, dev(want), dtype)
    assert vals.dtype == dtype
    np.testing.assert_array_equal(host(vals), ref.sign_values(plan, want, dtype))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("m", [5, 64, 256, 300])
@pytest.mark.parametrize("path", ["lut", "gather"])
def test_sign_score(fake_cupy, monkeypatch, rng, dtype, m, path):
    monkeypatch.setattr(_launch, "LUT_MIN_ROWS", 0 if path == "lut" else 10**9)
    monkeypatch.setattr(_launch, "LUT_MAX_SHARED_BYTES", 200 * 1024)
    plan = SignPlan(m)
    packed = ref.sign_encode(plan, rng.standard_normal((50, m)))
    s = rng.standard_normal((4, m)).astype(dtype)
    got = cb.sign_score(plan, dev(s), dev(packed))
    assert got.shape == (4, 50) and got.dtype == dtype
    np.testing.assert_allclose(host(got), ref.sign_score(plan, s, packed), **_tol(dtype))
    assert fake_cupy.launches[-1].kernel.startswith(f"sign_score_{path}_")


POLAR_CASES = [  # (dim, bits per level)
    (16, (4, 2, 2, 2)),
    (128, (4, 2, 2, 2)),
    (96, (3, 3, 2, 2, 1)),
    (8, (8, 7, 5)),
    (64, (6,)),
    (32, (1, 1, 1, 1, 1)),
]


def _polar_plan(dim, bits) -> PolarPlan:
    return PolarPlan(dim, [angle_codebook(level, b) for level, b in enumerate(bits, start=1)])


def _near_boundary(plan, y, dtype, gap):
    """Per level, True where the reference angle lies within ``gap`` of a boundary."""
    _, angles = polar_transform(np.asarray(y, dtype=np.float64), plan.levels)
    return [
        np.min(np.abs(psi[..., None] - book.boundaries.astype(dtype).astype(np.float64)), axis=-1)
        < gap
        for psi, book in zip(angles, plan.codebooks, strict=True)
    ]


def _level_codes(plan, codes, level):
    return unpack_codes(
        codes[..., plan.level_slice(level)], plan.bits[level - 1], plan.counts[level - 1]
    )


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("dim", "bits"), POLAR_CASES)
def test_polar_encode_values_score(fake_cupy, rng, dtype, dim, bits):
    """Codes equal the reference's except for angles within 1e-5 of a boundary; radii close;
    decoded values identical (the plan's cos/sin tables, the same products); scores close."""
    plan = _polar_plan(dim, bits)
    y = rng.standard_normal((11, dim)).astype(dtype)
    y[0] = 0.0  # a zero row: angles 0, radii 0
    y[1, :2] = [1.0, -1e-30]  # atan2 = -1e-30: plus 2 pi rounds to 2 pi, which maps to 0
    codes, radii = cb.polar_encode(plan, dev(y))
    want_codes, want_radii = ref.polar_encode(plan, y)
    assert codes.shape == want_codes.shape == (11, plan.nbytes) and codes.dtype == np.uint8
    assert radii.dtype == dtype and radii.shape == want_radii.shape
    np.testing.assert_allclose(host(radii), want_radii, **_tol(dtype))
    near = _near_boundary(plan, y, dtype, 1e-5 if dtype == np.float32 else 1e-12)
    for level, close in enumerate(near, start=1):
        diff = _level_codes(plan, host(codes), level) != _level_codes(plan, want_codes, level)
        assert not np.any(diff & ~close), f"level {level}: codes differ away from boundaries"
    vals = cb.polar_values(plan, dev(want_codes), dev(want_radii), dtype)
    assert vals.shape == (11, dim) and vals.dtype == dtype
    np.testing.assert_array_equal(host(vals), ref.polar_values(plan, want_codes, want_radii, dtype))
    q = rng.standard_normal((3, dim)).astype(dtype)
    got = cb.polar_score(plan, dev(q), dev(want_codes), dev(want_radii))
    assert got.shape == (3, 11) and got.dtype == dtype
    np.testing.assert_allclose(
        host(got),
        ref.polar_score(plan, q, want_codes, want_radii),
        rtol=1e-4 if dtype == np.float32 else 1e-10,
        atol=1e-4 if dtype == np.float32 else 1e-10,
    )


def _assert_weighted(got, want, w, values, rtol):
    """Within ``rtol * sum_r |w_r| ||row_r||`` (the bound of every coordinate of ``w @ values``)."""
    got = host(got)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape)
    scale = np.abs(np.asarray(w, np.float64)) @ np.linalg.norm(
        np.asarray(values, np.float64), axis=-1
    )
    err = np.abs(got.astype(np.float64) - want) / (scale[..., None] + 1e-30)
    assert err.max(initial=0.0) <= rtol, err.max(initial=0.0)


#: float32 / float64 tolerances of the weighted sums, relative to ``sum_r |w_r| ||row_r||``:
#: rounding over a few hundred rows is ~1e-6 (float32) of that scale, a wrong code ~1e-2.
WS_RTOL = {np.float32: 1e-5, np.float64: 1e-12}


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize(("rows", "n", "nw"), [(300, 45, 3), (130, 128, 9), (1, 300, 1), (5, 1, 2)])
def test_scalar_weighted_sum(fake_cupy, rng, dtype, bits, rows, n, nw):
    """``w @ c[idx]`` against the reference: several blocks of rows (300 rows: 5 blocks), weight
    rows beyond one tile of 8 (9: two ``y`` blocks), ``n`` above the block's 256 threads (300:
    threads take two coordinates), a one-coordinate row (255 threads idle)."""
    plan = ScalarPlan(n, _book(rng, bits))
    packed = pack_codes(rng.integers(0, 1 << bits, (rows, n)).astype(np.uint8), bits)
    w = rng.standard_normal((nw, rows)).astype(dtype)
    got = cb.scalar_weighted_sum(plan, dev(w), dev(packed))
    # OpenBLAS's kernel for the one-column product (n = 1) has, once in a full CI run, raised the
    # "invalid" flag on finite inputs (a RuntimeWarning, an error under pytest) without a wrong
    # value; the values are checked below, finite included
    with np.errstate(invalid="ignore"):
        want = ref.scalar_weighted_sum(plan, w, packed)
    assert np.all(np.isfinite(want))
    _assert_weighted(got, want, w, ref.scalar_values(plan, packed, dtype), WS_RTOL[dtype])
    (launch,) = fake_cupy.launches
    assert launch.kernel == f"scalar_weighted_sum_{_suffix(dtype)}"
    assert launch.grid == (-(-rows // 64), -(-nw // 8))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("dim", "bits"), POLAR_CASES)
def test_polar_weighted_sum(fake_cupy, rng, dtype, dim, bits):
    """``w @ polar_values(...)`` against the reference, 1-D and 2-D weights, 200 rows (4 blocks)."""
    plan = _polar_plan(dim, bits)
    codes, radii = ref.polar_encode(plan, rng.standard_normal((200, dim)).astype(dtype))
    values = ref.polar_values(plan, codes, radii, dtype)
    for shape in [(200,), (10, 200)]:
        w = rng.standard_normal(shape).astype(dtype)
        got = cb.polar_weighted_sum(plan, dev(w), dev(codes), dev(radii))
        want = ref.polar_weighted_sum(plan, w, codes, radii)
        _assert_weighted(got, want, w, values, WS_RTOL[dtype])
    assert fake_cupy.launches[-1].grid == (4, 2)


def test_weighted_sum_one_hot_is_the_decode(fake_cupy, rng):
    """One-hot weights pick rows: the sums are the decoded rows, exactly (only zeros are added)."""
    plan = ScalarPlan(40, _book(rng, 3))
    packed = ref.scalar_encode(plan, rng.standard_normal((150, 40)).astype(np.float32))
    w = np.zeros((3, 150), np.float32)
    w[[0, 1, 2], [0, 77, 149]] = 1.0
    got = host(cb.scalar_weighted_sum(plan, dev(w), dev(packed)))
    np.testing.assert_array_equal(got, ref.scalar_values(plan, packed, np.float32)[[0, 77, 149]])


def test_batch_shapes_and_single_rows(fake_cupy, rng):
    """Leading batch axes pass through; a 1-D row scores to ``q.shape[:-1]`` (matmul rules)."""
    plan = ScalarPlan(20, _book(rng, 3))
    y = rng.standard_normal((2, 3, 20)).astype(np.float32)
    packed = cb.scalar_encode(plan, dev(y))
    assert packed.shape == (2, 3, 8)
    assert cb.scalar_values(plan, packed, np.float32).shape == (2, 3, 20)
    q = rng.standard_normal((4, 20)).astype(np.float32)
    one = host(packed)[0, 0]
    s = cb.scalar_score(plan, dev(q), dev(one))
    assert s.shape == (4,)
    np.testing.assert_allclose(host(s), ref.scalar_score(plan, q, one), rtol=1e-5, atol=1e-5)
    polar = _polar_plan(16, (4, 2))
    codes, radii = cb.polar_encode(polar, dev(rng.standard_normal((2, 3, 16))))
    assert codes.shape == (2, 3, polar.nbytes) and radii.shape == (2, 3, 4)
    assert cb.polar_values(polar, codes, radii, np.float64).shape == (2, 3, 16)
    s = cb.polar_score(polar, dev(q[:, :16]), codes[1, 2], radii[1, 2])
    assert s.shape == (4,)


def test_result_dtypes_follow_the_reference(fake_cupy, rng):
    """Integer queries score in float64 and float16 ones in float32, float16 values decode
    exactly as the reference's, float64 radii make float64 polar scores: ``q @ values.T``."""
    plan = ScalarPlan(10, _book(rng, 2))
    packed = ref.scalar_encode(plan, rng.standard_normal((6, 10)))
    for q in (rng.integers(-3, 3, (2, 10)), rng.standard_normal((2, 10)).astype(np.float16)):
        got, want = cb.scalar_score(plan, dev(q), dev(packed)), ref.scalar_score(plan, q, packed)
        assert got.dtype == want.dtype, (q.dtype, got.dtype, want.dtype)
        np.testing.assert_allclose(host(got), want, **_tol(np.float32))  # float16 in, float32 out
    half = cb.scalar_values(plan, dev(packed), np.float16)
    assert half.dtype == np.float16
    np.testing.assert_array_equal(host(half), ref.scalar_values(plan, packed, np.float16))
    y = rng.integers(-3, 3, (4, 10))
    np.testing.assert_array_equal(host(cb.scalar_encode(plan, dev(y))), ref.scalar_encode(plan, y))
    polar = _polar_plan(16, (4, 2))
    codes, radii = ref.polar_encode(polar, rng.standard_normal((5, 16)))
    q = rng.standard_normal((2, 16)).astype(np.float32)
    got = cb.polar_score(polar, dev(q), dev(codes), dev(radii))
    assert got.dtype == np.float64 == ref.polar_score(polar, q, codes, radii).dtype
    signs = SignPlan(12)
    bits = ref.sign_encode(signs, rng.standard_normal((3, 12)))
    s = rng.integers(-2, 3, (2, 12))
    assert cb.sign_score(signs, dev(s), dev(bits)).dtype == ref.sign_score(signs, s, bits).dtype
    _, r16 = cb.polar_encode(polar, dev(rng.standard_normal((3, 16)).astype(np.float16)))
    assert r16.dtype == ref.polar_encode(polar, np.ones((3, 16), np.float16))[1].dtype


# ---------------------------------------------------------------- launch plans
def test_module_is_compiled_once_and_kernels_cached(recorder, rng):
    plan = ScalarPlan(8, _book(rng, 2))
    for _ in range(3):
        cb.scalar_encode(plan, dev(rng.standard_normal((4, 8)).astype(np.float32)))
    assert recorder.modules_built == 1
    assert list(recorder.kernels) == ["scalar_encode_f32"]
    assert len(recorder.launches) == 3


@pytest.mark.parametrize(
    ("rows", "n", "bits", "blocks"),
    [
        (1, 1, 1, 1),  # one byte
        (3, 100, 3, 1),  # 3 * 38 = 114 bytes
        (1000, 128, 4, 250),  # 64000 bytes, not a multiple of 256 threads per block -> ceil
        (100_000, 128, 4, 32 * 132),  # capped at 32 blocks per SM
    ],
)
def test_elementwise_grid_sizes(recorder, rng, rows, n, bits, blocks):
    plan = ScalarPlan(n, _book(rng, bits))
    cb.scalar_encode(plan, dev(np.zeros((rows, n), np.float32)))
    (launch,) = recorder.launches
    assert launch.block == (256,)
    assert launch.grid == (blocks,) == (min(-(-rows * plan.nbytes // 256), 32 * 132),)
    assert launch.shared_mem == ((1 << bits) - 1) * 4
    assert launch.device == 0
    y_, rows_, n_, bits_, bnd, out = launch.args
    assert (type(rows_), type(n_), type(bits_)) == (np.int64, np.int32, np.int32)
    assert (int(rows_), int(n_), int(bits_)) == (rows, n, bits)
    np.testing.assert_array_equal(host(bnd), plan.boundaries.astype(np.float32))


def test_grid_caps_for_huge_problems():
    """Grid-stride kernels never ask for more than 32 blocks per SM, whatever the size."""
    lim = _launch.DeviceLimits(
        sm_count=132, max_threads_per_sm=2048, shared_per_sm=233472, shared_per_block_optin=232448
    )
    assert _launch.elementwise_grid(10**12, lim) == 32 * 132
    assert _launch.elementwise_grid(257, lim) == 2
    assert _launch.elementwise_grid(256, lim) == 1
    assert _launch.rows_grid(10**9, lim) == 32 * 132
    assert _launch.rows_grid(5, lim) == 5
    # score kernels: queries on y, resident blocks shared between them
    assert _launch.score_grid(10**9, 1, 32, 0, lim) == (8 * 132, 1)
    assert _launch.score_grid(10**9, 10**6, 32, 0, lim) == (1, 65535)
    assert _launch.score_grid(3, 1, 32, 0, lim) == (1, 1)
    assert _launch.score_grid(10**9, 1, 32, 64 * 1024, lim) == (3 * 132, 1)  # 3 tables per SM
    assert (
        _launch.group_size(1) == 1 and _launch.group_size(5) == 8 and _launch.group_size(64) == 32
    )
    assert _launch.lut_stride(16) == 16 and _launch.lut_stride(33) == 64
    assert _launch.polar_encode_threads(16) == 32 and _launch.polar_encode_threads(128) == 64
    assert _launch.polar_encode_threads(4096) == 256
    assert _launch.level_bits_word([4, 2, 2, 2]) == np.uint64(0x2224)
    # weighted sums: >= 64 rows per block, resident blocks (8 per SM) shared by the weight tiles
    assert _launch.weighted_sum_grid(1, 1, lim) == (1, 1)
    assert _launch.weighted_sum_grid(32768, 3, lim) == (512, 1)
    assert _launch.weighted_sum_grid(10**9, 8, lim) == (8 * 132, 1)
    assert _launch.weighted_sum_grid(10**9, 9, lim) == (4 * 132, 2)
    assert _launch.weighted_sum_grid(10**9, 10**7, lim) == (1, 65535)


def test_empty_problems_launch_nothing(recorder, rng):
    z = np.zeros
    book = _book(rng, 2)
    out = cb.scalar_encode(ScalarPlan(16, book), dev(z((0, 16), np.float32)))
    assert out.shape == (0, 4) and out.dtype == np.uint8
    out = cb.scalar_encode(ScalarPlan(0, book), dev(z((5, 0), np.float32)))
    assert out.shape == (5, 0)
    s = cb.scalar_score(ScalarPlan(0, book), dev(z((2, 0), np.float32)), dev(z((5, 0), np.uint8)))
    assert s.shape == (2, 5) and np.all(host(s) == 0)  # an empty sum is 0, not garbage
    s = cb.sign_score(SignPlan(8), dev(z((0, 8), np.float64)), dev(z((5, 1), np.uint8)))
    assert s.shape == (0, 5)
    v = cb.sign_values(SignPlan(16), dev(z((0, 2), np.uint8)), np.float32)
    assert v.shape == (0, 16)
    ws = cb.scalar_weighted_sum(
        ScalarPlan(16, book), dev(z((3, 0), np.float32)), dev(z((0, 4), np.uint8))
    )
    assert ws.shape == (3, 16) and np.all(host(ws) == 0)  # a sum over no rows is 0
    polar = PolarPlan(8, [angle_codebook(1, 1)])
    ws = cb.polar_weighted_sum(
        polar, dev(z((2, 0), np.float64)), dev(z((0, 1), np.uint8)), dev(z((0, 4), np.float64))
    )
    assert ws.shape == (2, 8) and ws.dtype == np.float64 and np.all(host(ws) == 0)
    codes, radii = cb.polar_encode(polar, dev(z((0, 8), np.float32)))
    assert codes.shape == (0, 1) and radii.shape == (0, 4)
    empty = PolarPlan(0, [angle_codebook(1, 2)])
    v = cb.polar_values(empty, dev(z((3, 0), np.uint8)), dev(z((3, 0), np.float32)), np.float32)
    assert v.shape == (3, 0)
    assert recorder.launches == []


def test_score_launch_plan_and_argument_types(recorder):
    """The 4-bit, d = 128 byte-table plan: 64 KiB table, opted in above 48 KiB, 3 blocks per SM."""
    rows, n, nq = 200_000, 128, 2
    plan = ScalarPlan(
        n, Codebook(np.linspace(-1, 1, 16), np.linspace(-1, 1, 16)[:-1] + 1 / 15, (-2, 2), 0.0)
    )
    packed = np.zeros((rows, 64), np.uint8)
    q = np.zeros((nq, n), np.float32)
    out = cb.scalar_score(plan, dev(q), dev(packed))
    assert out.shape == (nq, rows) and out.dtype == np.float32
    (launch,) = recorder.launches
    assert launch.kernel == "scalar_score_lut_f32"
    assert launch.shared_mem == 256 * 64 * 4
    assert recorder.kernels["scalar_score_lut_f32"].opt_ins == [65536]
    assert launch.block == (256,)
    assert launch.grid == (-(-3 * 132 // nq), nq)
    q_, nq_, p_, rows_, n_, bits_, c_, stride, group, o_ = launch.args
    assert (type(nq_), type(rows_), type(n_), type(bits_), type(stride), type(group)) == (
        np.int64,
        np.int64,
        np.int32,
        np.int32,
        np.int32,
        np.int32,
    )
    assert (int(nq_), int(rows_), int(n_), int(bits_), int(stride), int(group)) == (
        nq,
        rows,
        n,
        4,
        64,
        32,
    )
    np.testing.assert_array_equal(host(c_), plan.centroids.astype(np.float32))
    assert np.shares_memory(o_, out)  # the kernel writes the returned array
    # float64: the table (128 KiB) exceeds the budget -> the gather kernel, centroids in shared
    cb.scalar_score(plan, dev(q.astype(np.float64)), dev(packed))
    assert recorder.launches[-1].kernel == "scalar_score_gather_f64"
    assert recorder.launches[-1].shared_mem == 16 * 8
    # a second call with the same table size does not opt in again, nor cast the centroids again
    cb.scalar_score(plan, dev(q), dev(packed))
    assert recorder.kernels["scalar_score_lut_f32"].opt_ins == [65536]
    assert recorder.launches[-1].args[6] is c_


def test_polar_launch_plans(recorder):
    """One code array per row, the plan's offsets and tables, built once per dtype and device."""
    plan = _polar_plan(128, (4, 2, 2, 2))
    assert plan.offsets == (0, 32, 40, 44, 46)
    codes, radii = cb.polar_encode(plan, dev(np.zeros((10, 128), np.float32)))
    enc = recorder.launches[-1]
    assert enc.kernel == "polar_encode_f32"
    assert enc.grid == (10,) and enc.block == (64,)
    assert enc.shared_mem == (64 + 32 + 15 + 3 + 3 + 3) * 4 + (128 - 8)
    assert codes.shape == (10, 46) and radii.shape == (10, 8) and radii.dtype == np.float32
    y_, rows_, dim_, levels_, word, bnd, width, offsets, codes_, radii_ = enc.args
    assert (int(rows_), int(dim_), int(levels_), int(width)) == (10, 128, 4, 15)
    assert type(word) is np.uint64 and int(word) == 0x2224
    assert bnd.shape == (4, 15) and bnd.dtype == np.float32
    for level, book in enumerate(plan.codebooks):
        np.testing.assert_array_equal(
            host(bnd)[level, : book.boundaries.shape[0]], book.boundaries.astype(np.float32)
        )
    assert offsets.dtype == np.int32 and host(offsets).tolist() == list(plan.offsets)
    assert np.shares_memory(codes_, codes) and np.shares_memory(radii_, radii)
    cb.polar_values(plan, codes, radii, np.float32)
    v = recorder.launches[-1]
    assert v.kernel == "polar_values_f32" and v.grid == (-(-10 * 64 // 256),)
    assert v.shared_mem == 2 * (16 + 4 + 4 + 4) * 4
    r_, rows_, dim_, levels_, word, offsets_v, codes_v, cos_t, sin_t, width, out = v.args
    assert offsets_v is offsets and np.shares_memory(codes_v, codes)
    cos_h, sin_h = plan.trig_tables(np.float32)
    np.testing.assert_array_equal(host(cos_t), cos_h)
    np.testing.assert_array_equal(host(sin_t), sin_h)
    assert int(width) == 16
    cb.polar_score(plan, dev(np.zeros((3, 128), np.float32)), codes, radii)
    s = recorder.launches[-1]
    assert s.kernel == "polar_score_f32" and s.grid == (2, 3) and int(s.args[-2]) == 32
    assert s.args[9] is cos_t and s.args[10] is sin_t  # kept with the plan, not rebuilt


def test_weighted_sum_launch_plans(recorder, rng):
    """Arguments typed as the C signatures, the zeroed output written, shared memory sized."""
    rows, n, nw = 32768, 128, 3
    plan = ScalarPlan(n, _book(rng, 4))
    w = np.zeros((nw, rows), np.float32)
    out = cb.scalar_weighted_sum(plan, dev(w), dev(np.zeros((rows, 64), np.uint8)))
    assert out.shape == (nw, n) and out.dtype == np.float32
    (launch,) = recorder.launches
    assert launch.kernel == "scalar_weighted_sum_f32"
    assert launch.grid == (512, 1) and launch.block == (256,)
    assert launch.shared_mem == 16 * 4
    w_, nw_, p_, rows_, n_, bits_, c_, o_ = launch.args
    assert (type(nw_), type(rows_), type(n_), type(bits_)) == (
        np.int64,
        np.int64,
        np.int32,
        np.int32,
    )
    assert (int(nw_), int(rows_), int(n_), int(bits_)) == (nw, rows, n, 4)
    assert np.shares_memory(o_, out) and np.all(host(out) == 0)  # zeros: the kernel adds into it
    polar = _polar_plan(128, (4, 2, 2, 2))
    out = cb.polar_weighted_sum(
        polar,
        dev(np.zeros((20, 100), np.float64)),
        dev(np.zeros((100, polar.nbytes), np.uint8)),
        dev(np.zeros((100, 8), np.float64)),
    )
    launch = recorder.launches[-1]
    assert launch.kernel == "polar_weighted_sum_f64" and launch.grid == (2, 3)
    assert launch.shared_mem == 2 * (16 + 4 + 4 + 4) * 8
    assert type(launch.args[6]) is np.uint64 and int(launch.args[6]) == 0x2224
    assert host(launch.args[7]).tolist() == list(polar.offsets)
    assert np.shares_memory(launch.args[-1], out) and out.shape == (20, 128)


def test_arrays_on_another_device_run_there(recorder, rng):
    """Output, launch and the plan's constants follow the inputs' device (the fake checks every
    pointer argument is on the launch's device); inputs spread over devices are refused."""
    plan = ScalarPlan(8, _book(rng, 2))
    cb.scalar_encode(plan, dev(np.zeros((4, 8), np.float32)))
    out = cb.scalar_encode(plan, dev(np.zeros((4, 8), np.float32), device_id=1))
    assert recorder.launches[-1].device == 1 and out.device.id == 1
    assert recorder.launches[-2].args[4] is not recorder.launches[-1].args[4]  # one copy each
    polar = _polar_plan(16, (4, 2))
    codes, radii = cb.polar_encode(polar, dev(np.ones((2, 16), np.float32), device_id=1))
    assert codes.device.id == 1 and recorder.launches[-1].device == 1
    cb.polar_values(polar, codes, radii, np.float32)
    with pytest.raises(ValueError, match="one device"):
        cb.scalar_score(plan, dev(np.zeros((1, 8), np.float32)), out)
    with pytest.raises(ValueError, match="one device"):
        cb.polar_values(polar, codes, dev(host(radii)), np.float32)


# ---------------------------------------------------------------- errors
def _plans():
    book = Codebook(np.linspace(-1, 1, 4), np.array([-0.5, 0.0, 0.5]), (-2, 2), 0.0)
    return ScalarPlan(8, book), SignPlan(8), PolarPlan(4, [angle_codebook(1, 2)])


def _numpy_input_calls():
    scalar, sign, polar = _plans()
    f, u = np.zeros((2, 8), np.float32), np.zeros((2, 2), np.uint8)
    s1, pc, pr = (
        np.zeros((2, 1), np.uint8),
        np.zeros((2, 1), np.uint8),
        np.zeros((2, 2), np.float32),
    )
    w = np.zeros((1, 2), np.float32)
    return [
        ("x", lambda: cb.scalar_encode(scalar, f)),
        ("packed codes", lambda: cb.scalar_values(scalar, u, np.float32)),
        ("packed codes", lambda: cb.scalar_score(scalar, dev(f), u)),
        ("queries", lambda: cb.scalar_score(scalar, f, dev(u))),
        ("weights", lambda: cb.scalar_weighted_sum(scalar, w, dev(u))),
        ("x", lambda: cb.sign_encode(sign, f)),
        ("packed codes", lambda: cb.sign_values(sign, s1, np.float32)),
        ("queries", lambda: cb.sign_score(sign, f, dev(s1))),
        ("x", lambda: cb.polar_encode(polar, np.zeros((2, 4), np.float32))),
        ("angle codes", lambda: cb.polar_values(polar, pc, dev(pr), np.float32)),
        ("radii", lambda: cb.polar_values(polar, dev(pc), pr, np.float32)),
        ("queries", lambda: cb.polar_score(polar, np.zeros((1, 4), np.float32), dev(pc), dev(pr))),
        ("weights", lambda: cb.polar_weighted_sum(polar, w, dev(pc), dev(pr))),
    ]


@pytest.mark.parametrize(("name", "call"), _numpy_input_calls())
def test_numpy_input_is_a_type_error(recorder, name, call):
    with pytest.raises(TypeError, match="the cupy backend runs on CuPy arrays") as err:
        call()
    msg = str(err.value)
    assert "never moves data between host and device implicitly" in msg
    assert "cupy.asarray" in msg and f"but {name} is a numpy.ndarray" in msg
    assert recorder.launches == []


def _bad_calls(mod, arr):
    """(what, call) pairs of one bad argument each, for every operation; ``arr`` makes arrays."""
    scalar, sign, polar = _plans()
    f32 = np.float32
    packed, signs = arr(np.zeros((5, 2), np.uint8)), arr(np.zeros((5, 1), np.uint8))
    codes, radii = arr(np.zeros((5, 1), np.uint8)), arr(np.ones((5, 1), f32))
    return [
        (
            "scalar_encode complex",
            lambda: mod.scalar_encode(scalar, arr(np.ones((2, 8), np.complex64))),
        ),
        ("scalar_encode width", lambda: mod.scalar_encode(scalar, arr(np.ones((2, 7), f32)))),
        ("scalar_encode 0-d", lambda: mod.scalar_encode(scalar, arr(np.array(1.0, f32)))),
        (
            "scalar_values int16",
            lambda: mod.scalar_values(scalar, arr(np.zeros((5, 2), np.int16)), f32),
        ),
        (
            "scalar_values bytes",
            lambda: mod.scalar_values(scalar, arr(np.zeros((5, 3), np.uint8)), f32),
        ),
        ("scalar_values dtype", lambda: mod.scalar_values(scalar, packed, np.int32)),
        (
            "scalar_score queries",
            lambda: mod.scalar_score(scalar, arr(np.ones((3, 7), f32)), packed),
        ),
        (
            "scalar_score 3-d",
            lambda: mod.scalar_score(
                scalar, arr(np.ones((3, 8), f32)), arr(np.zeros((2, 5, 2), np.uint8))
            ),
        ),
        (
            "scalar_weighted_sum weights",
            lambda: mod.scalar_weighted_sum(scalar, arr(np.ones((3, 4), f32)), packed),
        ),
        (
            "scalar_weighted_sum 1-D codes",
            lambda: mod.scalar_weighted_sum(
                scalar, arr(np.ones((3, 2), f32)), arr(np.zeros(2, np.uint8))
            ),
        ),
        (
            "scalar_weighted_sum 0-d",
            lambda: mod.scalar_weighted_sum(scalar, arr(np.array(1.0, f32)), packed),
        ),
        (
            "scalar_weighted_sum complex",
            lambda: mod.scalar_weighted_sum(scalar, arr(np.ones((1, 5), np.complex64)), packed),
        ),
        ("sign_encode width", lambda: mod.sign_encode(sign, arr(np.ones((2, 9), f32)))),
        ("sign_values bytes", lambda: mod.sign_values(sign, arr(np.zeros((5, 2), np.uint8)), f32)),
        ("sign_score queries", lambda: mod.sign_score(sign, arr(np.ones((3, 9), f32)), signs)),
        ("polar_encode width", lambda: mod.polar_encode(polar, arr(np.ones((2, 6), f32)))),
        (
            "polar_values radii",
            lambda: mod.polar_values(polar, codes, arr(np.ones((5, 3), f32)), f32),
        ),
        (
            "polar_values int radii",
            lambda: mod.polar_values(polar, codes, arr(np.ones((5, 2), np.int32)), f32),
        ),
        (
            "polar_values codes",
            lambda: mod.polar_values(polar, arr(np.zeros((5, 2), np.uint8)), radii, f32),
        ),
        (
            "polar_score queries",
            lambda: mod.polar_score(
                polar, arr(np.ones((3, 5), f32)), codes, arr(np.ones((5, 2), f32))
            ),
        ),
        (
            "polar_weighted_sum weights",
            lambda: mod.polar_weighted_sum(
                polar, arr(np.ones((3, 6), f32)), codes, arr(np.ones((5, 2), f32))
            ),
        ),
    ]


def _outcome(call):
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the test compares whatever is raised
        return type(exc), str(exc)
    return None, None


def test_same_errors_as_the_reference(recorder):
    """The same bad input raises the same exception type with the same message as on the
    reference (the shared checks of ``_checks``, run in the same order), and launches nothing."""
    ours = [_outcome(c) for _, c in _bad_calls(cb, dev)]
    theirs = [_outcome(c) for _, c in _bad_calls(ref, np.asarray)]
    for (what, _), got, want in zip(_bad_calls(ref, np.asarray), ours, theirs, strict=True):
        assert want[0] is not None, f"{what}: the reference raised nothing"
        assert got == want, what
    assert recorder.launches == []


def test_kernel_limits_are_value_errors(recorder):
    """What the plan allows but the kernels cannot do: more than 16 levels (the bit widths
    travel in one 64-bit word), a polar_encode row larger than the device's shared memory."""
    deep = PolarPlan(1 << 17, [angle_codebook(min(level, 4), 1) for level in range(1, 18)])
    with pytest.raises(ValueError, match="at most 16 polar levels"):
        cb.polar_encode(deep, dev(np.zeros((1, 1 << 17), np.float32)))
    with pytest.raises(ValueError, match="at most 16 polar levels"):
        cb.polar_values(
            deep,
            dev(np.zeros((1, deep.nbytes), np.uint8)),
            dev(np.zeros((1, 1), np.float32)),
            np.float32,
        )
    wide = _polar_plan(1 << 16, (4, 2))
    with pytest.raises(ValueError, match="shared memory"):
        cb.polar_encode(wide, dev(np.zeros((1, 1 << 16), np.float64)))
    assert recorder.launches == []


def test_configure_threads_is_a_checked_no_op():
    """Nothing to configure on the device; the arguments are checked as on the reference."""
    assert cb.configure_threads() is None and cb.configure_threads(4) is None
    for kwargs in ({"threads": 0}, {"threads": 2.0}, {"spin_count": 10}):
        got = _outcome(lambda kw=kwargs: cb.configure_threads(**kw))
        want = _outcome(lambda kw=kwargs: ref.configure_threads(**kw))
        assert got[0] is want[0] is not None, kwargs
        assert got[1] == want[1].replace("numpy backend", "cupy backend"), kwargs


def test_module_imports_without_cupy():
    """Importing the backend imports no CuPy (only the registry's availability check does)."""
    code = (
        "import sys; from polarquant.backends import cupy_backend; "
        "print('cupy' in sys.modules, cupy_backend.NAME)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "cupy"]


def test_backend_module_follows_the_protocol():
    from polarquant.backends import Backend

    assert isinstance(cb, Backend)
    assert cb.NAME == "cupy" and cb.SCORES_FROM_CODES is False


# -- fast scan --------------------------------------------------------------------------------------
def _fastscan_case(rng, bits, count, n, nq):
    """A plan, byte tables, the block layout of random codes, scales and shifts (host arrays)."""
    plan = fastscan.FastScanPlan(bits, count)
    packed = pack_codes(rng.integers(0, 1 << bits, (n, count)), bits)
    tq = rng.integers(0, 256, (nq, plan.nibbles, 16)).astype(np.uint8)
    scale = rng.uniform(0.5, 2.0, n).astype(np.float32)
    shift = rng.standard_normal(n).astype(np.float32)
    shift[::7] = -np.inf  # removed vectors: never candidates
    return plan, tq, fastscan.to_blocks(plan, packed), scale, shift


@pytest.mark.parametrize(("bits", "count"), [(4, 128), (4, 7), (2, 50), (1, 256), (3, 300)])
@pytest.mark.parametrize("n", [1, 33, 1000])
def test_fastscan_sums_and_topk(fake_cupy, rng, bits, count, n):
    """The emulated kernels' integer sums equal the reference's bit for bit; the top ``c`` keys
    and positions too (CuPy's argsort is stable: equal keys by position, as the reference),
    with and without the per-vector term, removed vectors (``-inf``) never candidates."""
    plan, tq, blocks, scale, shift = _fastscan_case(rng, bits, count, n, 3)
    got = cb.fastscan_sums(plan, dev(tq), dev(blocks), n)
    assert isinstance(got, FakeArray) and got.dtype == np.uint32
    np.testing.assert_array_equal(host(got), ref.fastscan_sums(plan, tq, blocks, n))
    bias = rng.standard_normal(3).astype(np.float32) * 50
    weight = np.array([1.0, 0.5, -2.0], np.float32)
    for c in (1, 10, n + 5):
        for extra in ((), (shift, weight)):
            want = ref.fastscan_topk(plan, tq, blocks, n, c, bias, scale, *extra)
            keys, pos = cb.fastscan_topk(
                plan, dev(tq), dev(blocks), n, c, dev(bias), dev(scale), *map(dev, extra)
            )
            np.testing.assert_array_equal(host(keys), want[0])
            np.testing.assert_array_equal(host(pos), want[1])


@pytest.mark.parametrize("method", ["turboquant-mse", "qjl", "polarquant"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_vector_index_on_the_cupy_backend(fake_cupy, monkeypatch, rng, method, metric, tmp_path):
    """``VectorIndex`` with a quantizer on the cupy backend (kernels emulated, arrays on the
    fake device): the same neighbours as on the numpy backend, scores within float32 rounding,
    with removals and exact re-ranking; the kernels did run; the file loads back."""
    make = {
        "turboquant-mse": lambda b: pq.TurboQuantMSE(64, 4, seed=1, backend=b),
        "qjl": lambda b: pq.QJL(64, 128, seed=1, backend=b),
        "polarquant": lambda b: pq.PolarQuant(64, 4, (4, 2, 2, 2), seed=1, backend=b),
    }[method]
    import polarquant.backends as backends

    monkeypatch.setattr(backends, "_why_unavailable", lambda name: None)  # the fake device
    x = rng.standard_normal((1500, 64)).astype(np.float32)
    q = rng.standard_normal((5, 64)).astype(np.float32)
    for refine in (None, "float16"):
        want = pq.VectorIndex(make("numpy"), metric, refine=refine)
        got = pq.VectorIndex(make("cupy"), metric, refine=refine)
        want.add(x)
        got.add(dev(x))
        want.remove([3, 7])
        got.remove([3, 7])
        ws, wi = want.search(q, 10)
        gs, gi = got.search(dev(q), 10)
        np.testing.assert_array_equal(gi, wi)
        np.testing.assert_allclose(gs, ws, rtol=1e-5, atol=1e-5)
    assert any(launch.kernel.endswith("_f32") for launch in fake_cupy.launches)
    got.save(tmp_path / "index.npz")
    again = pq.VectorIndex.load(tmp_path / "index.npz", backend="numpy")
    np.testing.assert_array_equal(again.search(q, 10)[1], wi)


def test_fastscan_launch_plan(recorder, rng):
    """One launch per operation: queries on ``gridDim.y``, a query's tables (``32 nbytes``
    bytes) in shared memory, ``int`` for the byte count and ``has_shift``."""
    plan, tq, blocks, scale, _ = _fastscan_case(rng, 4, 128, 5000, 3)
    cb.fastscan_sums(plan, dev(tq), dev(blocks), 5000)
    cb.fastscan_topk(plan, dev(tq), dev(blocks), 5000, 10, dev(np.zeros(3, np.float32)), dev(scale))
    sums, keys = recorder.launches
    assert sums.kernel == "fastscan_sums" and keys.kernel == "fastscan_keys"
    for launch in (sums, keys):
        assert launch.grid[1] == 3 and launch.block == (_launch.THREADS,)
        assert launch.shared_mem == 32 * plan.nbytes


# ================================================================ 3. on a CUDA device
def _cuda_ready() -> bool:
    try:
        import cupy
    except Exception:
        return False
    try:
        return bool(cupy.is_available())
    except Exception:  # pragma: no cover - driver trouble
        return False


gpu = pytest.mark.skipif(not _cuda_ready(), reason="needs CuPy and a CUDA device")


@pytest.fixture
def cp():
    import cupy

    _launch.clear_caches()
    return cupy


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("path", ["lut", "gather"])
def test_gpu_scalar_ops(cp, monkeypatch, rng, dtype, bits, path):
    """Bytes identical to the reference (inputs kept 1e-4 from boundaries), scores close.

    The "lut" path lifts the table budget to 200 KiB, so tables above 48 KiB (opted in)
    run too; tables beyond the device's limit still take the gather kernel.
    """
    monkeypatch.setattr(_launch, "LUT_MIN_ROWS", 0 if path == "lut" else 10**9)
    monkeypatch.setattr(_launch, "LUT_MAX_SHARED_BYTES", 200 * 1024)
    n, rows = 131, 3000
    plan = ScalarPlan(n, _book(rng, bits))
    y = _away_from(rng.standard_normal((rows, n)), plan.boundaries.astype(dtype), 1e-4).astype(
        dtype
    )
    packed = cb.scalar_encode(plan, cp.asarray(y))
    want = ref.scalar_encode(plan, y)
    np.testing.assert_array_equal(cp.asnumpy(packed), want)
    np.testing.assert_array_equal(
        cp.asnumpy(cb.scalar_values(plan, packed, dtype)), ref.scalar_values(plan, want, dtype)
    )
    q = rng.standard_normal((5, n)).astype(dtype)
    np.testing.assert_allclose(
        cp.asnumpy(cb.scalar_score(plan, cp.asarray(q), packed)),
        ref.scalar_score(plan, q, want),
        rtol=1e-4 if dtype == np.float32 else 1e-10,
        atol=1e-4 if dtype == np.float32 else 1e-10,
    )


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("m", [13, 128, 256, 1000])
@pytest.mark.parametrize("path", ["lut", "gather"])
def test_gpu_sign_ops(cp, monkeypatch, rng, dtype, m, path):
    monkeypatch.setattr(_launch, "LUT_MIN_ROWS", 0 if path == "lut" else 10**9)
    monkeypatch.setattr(_launch, "LUT_MAX_SHARED_BYTES", 200 * 1024)
    plan = SignPlan(m)
    p = rng.standard_normal((2000, m)).astype(dtype)
    p[0, :2] = [0.0, -0.0]
    packed = cb.sign_encode(plan, cp.asarray(p))
    want = ref.sign_encode(plan, p)
    np.testing.assert_array_equal(cp.asnumpy(packed), want)
    np.testing.assert_array_equal(
        cp.asnumpy(cb.sign_values(plan, packed, dtype)), ref.sign_values(plan, want, dtype)
    )
    s = rng.standard_normal((3, m)).astype(dtype)
    np.testing.assert_allclose(
        cp.asnumpy(cb.sign_score(plan, cp.asarray(s), packed)),
        ref.sign_score(plan, s, want),
        rtol=1e-4 if dtype == np.float32 else 1e-10,
        atol=1e-3 if dtype == np.float32 else 1e-10,
    )


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("dim", "bits"), POLAR_CASES)
def test_gpu_polar_ops(cp, rng, dtype, dim, bits):
    plan = _polar_plan(dim, bits)
    y = rng.standard_normal((1500, dim)).astype(dtype)
    y[0] = 0.0
    codes, radii = cb.polar_encode(plan, cp.asarray(y))
    want_codes, want_radii = ref.polar_encode(plan, y)
    np.testing.assert_allclose(cp.asnumpy(radii), want_radii, **_tol(dtype))
    near = _near_boundary(plan, y, dtype, 1e-5 if dtype == np.float32 else 1e-12)
    for level, close in enumerate(near, start=1):
        diff = _level_codes(plan, cp.asnumpy(codes), level) != _level_codes(plan, want_codes, level)
        assert not np.any(diff & ~close), f"level {level}"
    dc, dr = cp.asarray(want_codes), cp.asarray(want_radii)
    np.testing.assert_array_equal(  # the plan's cos/sin tables and the reference's products
        cp.asnumpy(cb.polar_values(plan, dc, dr, dtype)),
        ref.polar_values(plan, want_codes, want_radii, dtype),
    )
    q = rng.standard_normal((4, dim)).astype(dtype)
    np.testing.assert_allclose(
        cp.asnumpy(cb.polar_score(plan, cp.asarray(q), dc, dr)),
        ref.polar_score(plan, q, want_codes, want_radii),
        rtol=1e-4 if dtype == np.float32 else 1e-10,
        atol=1e-3 if dtype == np.float32 else 1e-10,
    )


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_gpu_weighted_sums(cp, rng, dtype, bits):
    """Both weighted sums on the device against the reference (20,000 rows, 1 and 12 weight rows:
    many blocks adding with atomics, two weight tiles)."""
    rows, n = 20000, 128
    plan = ScalarPlan(n, _book(rng, bits))
    packed = ref.scalar_encode(plan, rng.standard_normal((rows, n)).astype(dtype))
    values = ref.scalar_values(plan, packed, dtype)
    for nw in (1, 12):
        w = rng.standard_normal((nw, rows)).astype(dtype)
        got = cb.scalar_weighted_sum(plan, cp.asarray(w), cp.asarray(packed))
        want = ref.scalar_weighted_sum(plan, w, packed)
        _assert_weighted(cp.asnumpy(got), want, w, values, WS_RTOL[dtype])
    polar = _polar_plan(n, (bits, 2, 2, 2))
    codes, radii = ref.polar_encode(polar, rng.standard_normal((rows, n)).astype(dtype))
    w = rng.standard_normal((12, rows)).astype(dtype)
    got = cb.polar_weighted_sum(polar, cp.asarray(w), cp.asarray(codes), cp.asarray(radii))
    want = ref.polar_weighted_sum(polar, w, codes, radii)
    values = ref.polar_values(polar, codes, radii, dtype)
    _assert_weighted(cp.asnumpy(got), want, w, values, WS_RTOL[dtype])


def _quantizers():
    import polarquant as pq

    return [
        ("turboquant-mse", lambda b: pq.TurboQuantMSE(128, 4, seed=3, backend=b)),
        ("turboquant-prod", lambda b: pq.TurboQuantProd(128, 3, seed=3, backend=b)),
        ("qjl", lambda b: pq.QJL(128, 256, seed=3, backend=b)),
        ("polarquant", lambda b: pq.PolarQuant(128, seed=3, backend=b)),
        ("polarquant-qjl", lambda b: pq.PolarQuantQJL(128, seed=3, backend=b)),
    ]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("which", range(5), ids=[n for n, _ in _quantizers()])
def test_gpu_quantizers_round_trip_between_host_and_device(cp, rng, which):
    """Codes made on the host decode and score on the device and vice versa.

    Rotations run in cuBLAS on the device and OpenBLAS on the host, so a
    coordinate within rounding of a boundary may take the neighbouring code
    (and, in the residual stages, change several sign bits of its row): at
    most 1 % of the bytes may differ.  Decoding and scoring the same codes
    agree to float32 tolerance.
    """
    import polarquant as pq
    from polarquant.compressed import CompressedVectors

    why = pq.available_backends()["cupy"]
    assert why is None, f"the registry does not enable the cupy backend here: {why}"
    _, make = _quantizers()[which]
    qh, qd = make("numpy"), make("cupy")
    x = rng.standard_normal((600, 128)).astype(np.float32)
    queries = rng.standard_normal((3, 128)).astype(np.float32)
    ch = qh.encode(x)
    cd = qd.encode(cp.asarray(x))
    for k, v in ch.fields.items():
        got = cp.asnumpy(cd.fields[k])
        if v.dtype == np.uint8:
            assert np.mean(got != v) <= 1e-2, k
        else:
            np.testing.assert_allclose(got, v, rtol=2e-3, atol=1e-3, err_msg=k)
    to_dev = CompressedVectors(
        ch.method,
        ch.config,
        {k: cp.asarray(v) for k, v in ch.fields.items()},
        ch.batch_shape,
        ch.dim,
        ch.dtype,
    )
    np.testing.assert_allclose(cp.asnumpy(qd.decode(to_dev)), qh.decode(ch), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        cp.asnumpy(qd.score(cp.asarray(queries), to_dev)),
        qh.score(queries, ch),
        rtol=1e-3,
        atol=1e-3,
    )
    to_host = cd.to_numpy()
    np.testing.assert_allclose(qh.decode(to_host), cp.asnumpy(qd.decode(cd)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        qh.score(queries, to_host),
        cp.asnumpy(qd.score(cp.asarray(queries), cd)),
        rtol=1e-3,
        atol=1e-3,
    )


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(("bits", "count"), [(4, 128), (2, 384), (1, 256), (3, 1536)])
def test_gpu_fastscan(cp, rng, bits, count):
    """On a device: sums bit for bit, and the top keys and positions, as the reference."""
    plan, tq, blocks, scale, shift = _fastscan_case(rng, bits, count, 20_000, 5)
    np.testing.assert_array_equal(
        cp.asnumpy(cb.fastscan_sums(plan, cp.asarray(tq), cp.asarray(blocks), 20_000)),
        ref.fastscan_sums(plan, tq, blocks, 20_000),
    )
    bias = rng.standard_normal(5).astype(np.float32)
    weight = np.ones(5, np.float32)
    want = ref.fastscan_topk(plan, tq, blocks, 20_000, 100, bias, scale, shift, weight)
    keys, pos = cb.fastscan_topk(
        plan,
        *map(cp.asarray, (tq, blocks)),
        20_000,
        100,
        *map(cp.asarray, (bias, scale, shift, weight)),
    )
    np.testing.assert_array_equal(cp.asnumpy(keys), want[0])
    np.testing.assert_array_equal(cp.asnumpy(pos), want[1])
