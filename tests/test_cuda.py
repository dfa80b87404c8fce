"""The CuPy backend: CUDA sources, launch plans, and the kernels themselves.

Three layers, the first two run on any machine with a C++ compiler and nvcc:

1. **Sources**: ``kernels.cu`` compiles to PTX with nvcc for sm_80 and sm_90
   (and with NVRTC, CuPy's compiler, where its library is installed); every
   kernel the host code asks for exists, with the parameter count the host
   passes.
2. **Host side, kernels emulated on the CPU**: CuPy is replaced (through
   ``_launch.get_cupy``) by a small NumPy-backed fake whose kernels record
   each launch -- grid, block, dynamic shared memory, arguments checked
   against the kernel's C signature (exact NumPy scalar types) -- and then run
   it on the CPU.  The emulator is ``kernels.cu`` itself compiled as plain C++
   (its thread code is ``__host__ __device__``) plus one small driver per
   kernel generated from the kernel's signature here, which walks the grid the
   host planned: every grid-stride thread, every warp of the score kernels,
   the block-per-row loop of ``polar_encode``, with the shared memory the host
   asked for (too little is an error).  Outputs are allocated NaN/0xAB-filled,
   so a missed element shows.  This checks the Python entry points, the launch
   plans and the kernels' arithmetic against the NumPy reference -- all but
   the CUDA-only glue (``__syncthreads``, warp shuffles, the real scheduler).
   Out-of-bounds accesses, silent on a GPU, show under AddressSanitizer::

       PQ_EMULATOR_CXXFLAGS="-fsanitize=address,undefined -g" ASAN_OPTIONS=detect_leaks=0 \
       LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
       python -m pytest tests/test_cuda.py -k "not nvcc and not imports_without"

3. **GPU** (``@pytest.mark.gpu``, skipped unless CuPy sees a CUDA device):
   every operation against the reference on the same data, and the five
   quantizers with ``backend="cupy"``, codes moved between host and device
   in both directions.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from polarquant.backends import cupy_backend as cb
from polarquant.backends import numpy_backend as ref
from polarquant.backends.cupy_backend import _launch

from polarquant.packing import unpack_codes
from polarquant.polar import polar_transform

SOURCE = _launch.kernel_source()
CU_PATH = Path(cb.__file__).with_name(_launch.SOURCE)


# ================================================================ 1. sources
_KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\((.*?)\)\s*\{', re.S)


def _split_params(text: str) -> list[str]:
    """Split a C parameter list on top-level commas (macro calls keep theirs)."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            out.append(" ".join(cur.split()))
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    out.append(" ".join(cur.split()))
    return [p for p in out if p]


@dataclass(frozen=True)
class Param:
    ctype: str  # e.g. "const float*", "long long"
    name: str
    levels: bool  # a PQ_LEVEL_PARAMS(type, name) group of MAX_LEVELS pointers


def _parse_param(p: str) -> Param:
    m = re.fullmatch(r"PQ_LEVEL_PARAMS\((.*),\s*(\w+)\)", p)
    if m:
        return Param(m.group(1).strip(), m.group(2), True)
    m = re.fullmatch(r"(.*?)\s*(\w+)", p)
    return Param(m.group(1).strip(), m.group(2), False)


def kernel_signatures(src: str = SOURCE) -> dict[str, list[Param]]:
    return {
        name: [_parse_param(p) for p in _split_params(params)]
        for name, params in _KERNEL_RE.findall(src)
    }


SIGNATURES = kernel_signatures()


def _expanded(params: list[Param]) -> list[str]:
    """C types of the kernel's parameters, level groups expanded."""
    out = []
    for p in params:
        out += [p.ctype] * (_launch.MAX_LEVELS if p.levels else 1)
    return out


def test_every_requested_kernel_is_defined():
    """The host asks only for kernels the source defines, and the source has no orphans."""
    assert sorted(SIGNATURES) == sorted(_launch.KERNELS)
    for name in _launch.KERNELS:
        assert re.search(rf'extern "C" __global__ void {name}\(', SOURCE), name


def _nvcc() -> str | None:
    for cand in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).exists():
            return cand
    return None


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvcc_compiles_every_kernel(arch, tmp_path):
    """``nvcc -std=c++17 -arch=ARCH -ptx``: every kernel is emitted, with the parameters expected."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc is not installed (needed to compile-check the CUDA sources)")
    ptx = tmp_path / f"kernels_{arch}.ptx"
    res = subprocess.run(
        [nvcc, "-std=c++17", f"-arch={arch}", "-ptx", "-o", str(ptx), str(CU_PATH)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    text = ptx.read_text()
    for name, params in SIGNATURES.items():
        m = re.search(rf"\.entry {name}\((.*?)\)", text, re.S)
        assert m, f"{name} missing from the PTX"
        ptx_params = re.findall(r"\.param \.(\w+)", m.group(1))
        want = ["u32" if t == "int" else "u64" for t in _expanded(params)]
        assert ptx_params == want, name


def _nvrtc_library():
    """libnvrtc from the nvidia-cuda-nvrtc wheel or the system, if any."""
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
    """CuPy compiles with NVRTC (no host headers): the source must compile there too."""
    lib = _nvrtc_library()
    if lib is None:
        pytest.skip("libnvrtc not found (pip install nvidia-cuda-nvrtc to run this check)")
    prog = ctypes.c_void_p()
    src = SOURCE.encode()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"kernels.cu", 0, None, None) == 0
    opts = [b"-std=c++17", b"-arch=compute_80"]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    assert rc == 0, log.value.decode(errors="replace")


# ================================================================ 2. the CPU emulator
HARNESS_HEAD = r"""
#include "kernels.cu"
#include <vector>

namespace {

struct NoSync {
    void operator()() const {}
};

/* Emulated dynamic shared memory of one block (8-byte aligned). */
struct SharedBuf {
    std::vector<double> storage;
    explicit SharedBuf(long long bytes) : storage(static_cast<size_t>(bytes / 8 + 2)) {}
    unsigned char* bytes() { return reinterpret_cast<unsigned char*>(storage.data()); }
    template <typename T> T* as() { return reinterpret_cast<T*>(storage.data()); }
};

enum { OK = 0, BAD_SHARED = 1, BAD_GROUP = 2, BAD_BITS = 3, BAD_STRIDE = 4, BAD_LEVELS = 5,
       BAD_POINTERS = 6, BAD_LAUNCH = 7 };

bool launch_ok(int gx, int gy, int bx) {
    return gx >= 1 && gy >= 1 && gy <= 65535 && bx >= 1 && bx <= 1024;
}

bool group_ok(int group, int bx) {
    return group >= 1 && group <= 32 && (group & (group - 1)) == 0 && bx % 32 == 0;
}

/* The warp loop of score_row_groups: warp w of the grid takes rows base + lane / group
 * for base = w * per_warp, + nwarps * per_warp, ...; the group's lanes are summed. */
template <typename T, typename Partial>
void emu_row_groups(long long threads_x, long long rows, int group, T* out, Partial partial) {
    const long long nwarps = threads_x / 32;
    const int per_warp = 32 / group;
    for (long long w = 0; w < nwarps; ++w)
        for (long long base = w * per_warp; base < rows; base += nwarps * per_warp)
            for (int g = 0; g < per_warp; ++g) {
                const long long row = base + g;
                if (row >= rows) continue;
                T acc = T(0);
                for (int sub = 0; sub < group; ++sub) acc += partial(row, sub);
                out[row] = acc;
            }
}

#define EMU_CHECK(cond, code) \
    if (!(cond)) return code
#define EMU_GRID_STRIDE(call)                                        \
    do {                                                             \
        const long long G = static_cast<long long>(gx) * bx;         \
        for (long long g = 0; g < G; ++g) call;                      \
    } while (0)

template <typename T>
int emu_scalar_encode(int gx, int gy, int bx, long long smem, const T* y, long long rows, int n,
                      const T* bnd, int nbnd, int bits, unsigned char* out) {
    EMU_CHECK(launch_ok(gx, gy, bx), BAD_LAUNCH);
    EMU_CHECK(smem >= static_cast<long long>(nbnd) * sizeof(T), BAD_SHARED);
    SharedBuf sh(smem);
    T* s = sh.as<T>();
    stage(s, bnd, nbnd, 0, 1);
    EMU_GRID_STRIDE(scalar_encode_range(y, rows, n, s, nbnd, bits, out, g, G));
    return OK;
}

template <typename T>
int emu_scalar_values(int gx, int gy, int bx, long long smem, const unsigned char* packed,
                      long long rows, int n, int bits, const T* cents, T* out) {
    EMU_CHECK(launch_ok(gx, gy, bx), BAD_LAUNCH);
    EMU_CHECK(smem >= (1LL << bits) * static_cast<long long>(sizeof(T)), BAD_SHARED);
    SharedBuf sh(smem);
    T* s = sh.as<T>();
    stage(s, cents, 1 << bits, 0, 1);
    EMU_GRID_STRIDE(scalar_values_range(packed, rows, n, bits, s, out, g, G));
    return OK;
}

template <typename T>
int emu_scalar_score_lut(int gx, int gy, int bx, long long smem, const T* q, long long nq,
                         const unsigned char* packed, long long rows, int n, int bits,
                         const T* cents, int stride, int group, T* out) {
    EMU_CHECK(launch_ok(gx, gy, bx), BAD_LAUNCH);
    EMU_CHECK(group_ok(group, bx), BAD_GROUP);
    EMU_CHECK(8 % bits == 0, BAD_BITS);
    const int nbytes = packed_nbytes(n, bits);
    EMU_CHECK(stride >= nbytes, BAD_STRIDE);
    EMU_CHECK(smem >= 256LL * stride * static_cast<long long>(sizeof(T)), BAD_SHARED);
    SharedBuf sh(smem);
    T* table = sh.as<T>();
    for (int by = 0; by < gy; ++by)
        for (long long qi = by; qi < nq; qi += gy) {
            scalar_lut_build(table, q + qi * n, n, bits, cents, stride, 0, 1);
            emu_row_groups(static_cast<long long>(gx) * bx, rows, group, out + qi * rows,
                           [&](long long row, int sub) {
                               return lut_row_partial(packed + row * nbytes, nbytes, table, stride,
                                                      sub, group);
                           });
        }
    return OK;
}

template <typename T>
int emu_scalar_score_gather(int gx, int gy, int bx, long long smem, const T* q, long long nq,
                            const unsigned char* packed, long long rows, int n, int bits,
                            const T* cents, int group, T* out) {
    EMU_CHECK(launch_ok(gx, gy, bx), BAD_LAUNCH);
    EMU_CHECK(group_ok(group, bx), BAD_GROUP);
    EMU_CHECK(smem >= (1LL << bits) * static_cast<long long>(sizeof(T)), BAD_SHARED);
    SharedBuf sh(smem);
    T* s = sh.as<T>();
    stage(s, cents, 1 << bits, 0, 1);
    const int nbytes = packed_nbytes(n, bits);
    for (int by = 0; by < gy; ++by)
        for (long long qi = by; qi < nq; qi += gy)
            emu_row_groups(static_cast<long long>(gx) * bx, rows, group, out + qi * rows,
                           [&](long long row, int sub) {
                               return gather_row_partial(packed + row * nbytes, q + qi * n, n, bits,
                                                         s, sub, group);
                           });
    return OK;
}

template <typename T>
int emu_sign_encode(int gx, int gy, int bx, long long smem, const T* p, long long rows, int m,
                    unsigned char* out) {
    EMU_CHECK(launch_ok(gx, gy, bx), BAD_LAUNCH);
    (void)smem;
    EMU_GRID_STRIDE(sign_encode_range(p, rows, m, out, g, G));
    return OK;
}

template <typename T>
int emu_sign_values(int gx, int gy, int bx, long long smem, const unsigned char* packed,
                    long long rows, int m, T* out) {
    EMU_CHECK(launch_ok(gx, gy, bx), BAD_LAUNCH);
    (void)smem;
    EMU_GRID_STRIDE(sign_values_range(packed, rows, m, out, g, G));
    return OK;
}

template <typename T>
int emu_sign_score_lut(int gx, int gy, int bx, long long smem, const T* s, long long nq,
                       const unsigned char* packed, long long rows, int m, int stride, int group,
                       T* out) {
    EMU_CHECK(launch_ok(gx, gy, bx), BAD_LAUNCH);
    EMU_CHECK(group_ok(group, bx), BAD_GROUP);
    const int nbytes = packed_nbytes(m, 1);
    EMU_CHECK(stride >= nbytes, BAD_STRIDE);
    EMU_CHECK(smem >= 256LL * stride * static_cast<long long>(sizeof(T)), BAD_SHARED);
    SharedBuf sh(smem);
    T* table = sh.as<T>();
    for (int by = 0; by < gy; ++by)
        for (long long qi = by; qi < nq; qi += gy) {
            sign_lut_build(table, s + qi * m, m, stride, 0, 1);
            emu_row_groups(static_cast<long long>(gx) * bx, rows, group, out + qi * rows,
                           [&](long long row, int sub) {
                               return lut_row_partial(packed + row * nbytes, nbytes, table, stride,
                                                      sub, group);
                           });
        }
    return OK;
}

template <typename T>
int emu_sign_score_gather(int gx, int gy, int bx, long long smem, const T* s, long long nq,
                          const unsigned char* packed, long long rows, int m, int group, T* out) {
    EMU_CHECK(launch_ok(gx, gy, bx), BAD_LAUNCH);
    EMU_CHECK(group_ok(group, bx), BAD_GROUP);
    (void)smem;
    const int nbytes = packed_nbytes(m, 1);
    for (int by = 0; by < gy; ++by)
        for (long long qi = by; qi < nq; qi += gy)
            emu_row_groups(static_cast<long long>(gx) * bx, rows, group, out + qi * rows,
                           [&](long long row, int sub) {
                               return sign_gather_row_partial(packed + row * nbytes, s + qi * m, m,
                                                              sub, group);
                           });
    return OK;
}

template <typename P>
bool levels_ok(int levels, const P* ptrs) {
    if (levels < 1 || levels > PQ_MAX_LEVELS) return false;
    for (int l = 0; l < PQ_MAX_LEVELS; ++l)
        if ((l < levels) != (ptrs[l] != nullptr)) return false;  // used levels set, the rest NULL
    return true;
}

template <typename T>
int emu_polar_encode(int gx, int gy, int bx, long long smem, const T* y, long long rows, int dim,
                     int levels, unsigned long long bits_word, const T* const* bnd,
                     unsigned char* const* out, T* radii) {
    EMU_CHECK(launch_ok(gx, gy, bx), BAD_LAUNCH);
    EMU_CHECK(levels_ok(levels, bnd) && levels_ok(levels, out), BAD_POINTERS);
    EMU_CHECK(smem >= polar_encode_shared_bytes(dim, levels, bits_word, sizeof(T)), BAD_SHARED);
    SharedBuf shared(smem);
    const PolarEncodeShared<T> sh = polar_encode_shared<T>(shared.bytes(), dim, levels, bits_word);
    PolarEncodeLevels<T> lv;
    polar_encode_levels_init(lv, sh.bnd, out, levels, bits_word);
    polar_encode_stage_bnd(lv, bnd, 0, 1);
    const int nr = dim >> levels;
    for (int b = 0; b < gx; ++b)
        for (long long row = b; row < rows; row += gx)
            polar_encode_row(y + row * dim, dim, lv, sh.bufA, sh.bufB, sh.codes, radii + row * nr,
                             row, 0, 1, NoSync());
    return OK;
}

template <typename T>
int emu_polar_values(int gx, int gy, int bx, long long smem, const T* radii, long long rows,
                     int dim, int levels, unsigned long long bits_word,
                     const unsigned char* const* packed, const T* const* cents, T* out) {
    EMU_CHECK(launch_ok(gx, gy, bx), BAD_LAUNCH);
    EMU_CHECK(levels_ok(levels, packed) && levels_ok(levels, cents), BAD_POINTERS);
    EMU_CHECK(smem >= polar_trig_total(bits_word, levels) * static_cast<long long>(sizeof(T)),
              BAD_SHARED);
    SharedBuf sh(smem);
    PolarCodes<T> pc;
    polar_codes_init(pc, packed, dim, levels, bits_word, sh.as<T>());
    polar_trig_build(pc, cents, 0, 1);
    EMU_GRID_STRIDE(polar_values_range(pc, radii, rows, dim, out, g, G));
    return OK;
}

template <typename T>
int emu_polar_score(int gx, int gy, int bx, long long smem, const T* q, long long nq,
                    const T* radii, long long rows, int dim, int levels,
                    unsigned long long bits_word, const unsigned char* const* packed,
                    const T* const* cents, int group, T* out) {
    EMU_CHECK(launch_ok(gx, gy, bx), BAD_LAUNCH);
    EMU_CHECK(group_ok(group, bx), BAD_GROUP);
    EMU_CHECK(levels_ok(levels, packed) && levels_ok(levels, cents), BAD_POINTERS);
    EMU_CHECK(smem >= polar_trig_total(bits_word, levels) * static_cast<long long>(sizeof(T)),
              BAD_SHARED);
    SharedBuf sh(smem);
    PolarCodes<T> pc;
    polar_codes_init(pc, packed, dim, levels, bits_word, sh.as<T>());
    polar_trig_build(pc, cents, 0, 1);
    for (int by = 0; by < gy; ++by)
        for (long long qi = by; qi < nq; qi += gy)
            emu_row_groups(static_cast<long long>(gx) * bx, rows, group, out + qi * rows,
                           [&](long long row, int sub) {
                               return polar_row_partial(pc, q + qi * dim, radii, row, dim, sub,
                                                        group);
                           });
    return OK;
}

/* The weighted-sum kernels: block (bx, by) takes its run of rows and the weight-row tiles
 * by * PQ_WS_TILE, + gy * PQ_WS_TILE, ...; its threads run one after the other (their
 * atomicAdds become plain additions). */
template <typename T>
int emu_scalar_weighted_sum(int gx, int gy, int bx, long long smem, const T* w, long long nw,
                            const unsigned char* packed, long long rows, int n, int bits,
                            const T* cents, T* out) {
    EMU_CHECK(launch_ok(gx, gy, bx), BAD_LAUNCH);
    EMU_CHECK(smem >= (1LL << bits) * static_cast<long long>(sizeof(T)), BAD_SHARED);
    SharedBuf sh(smem);
    T* s = sh.as<T>();
    stage(s, cents, 1 << bits, 0, 1);
    for (int by = 0; by < gy; ++by)
        for (int b = 0; b < gx; ++b) {
            long long start, stop;
            block_rows(rows, b, gx, start, stop);
            for (long long i0 = static_cast<long long>(by) * PQ_WS_TILE; i0 < nw;
                 i0 += static_cast<long long>(gy) * PQ_WS_TILE)
                for (int t = 0; t < bx; ++t)
                    scalar_weighted_sum_block(w, nw, packed, rows, n, bits, s, out, i0, start, stop,
                                              t, bx);
        }
    return OK;
}

template <typename T>
int emu_polar_weighted_sum(int gx, int gy, int bx, long long smem, const T* w, long long nw,
                           const T* radii, long long rows, int dim, int levels,
                           unsigned long long bits_word, const unsigned char* const* packed,
                           const T* const* cents, T* out) {
    EMU_CHECK(launch_ok(gx, gy, bx), BAD_LAUNCH);
    EMU_CHECK(levels_ok(levels, packed) && levels_ok(levels, cents), BAD_POINTERS);
    EMU_CHECK(smem >= polar_trig_total(bits_word, levels) * static_cast<long long>(sizeof(T)),
              BAD_SHARED);
    SharedBuf sh(smem);
    PolarCodes<T> pc;
    polar_codes_init(pc, packed, dim, levels, bits_word, sh.as<T>());
    polar_trig_build(pc, cents, 0, 1);
    for (int by = 0; by < gy; ++by)
        for (int b = 0; b < gx; ++b) {
            long long start, stop;
            block_rows(rows, b, gx, start, stop);
            for (long long i0 = static_cast<long long>(by) * PQ_WS_TILE; i0 < nw;
                 i0 += static_cast<long long>(gy) * PQ_WS_TILE)
                for (int t = 0; t < bx; ++t)
                    polar_weighted_sum_block(pc, w, nw, radii, rows, dim, out, i0, start, stop, t,
                                             bx);
        }
    return OK;
}

}  // namespace
"""


def harness_source() -> str:
    """The emulator: HARNESS_HEAD plus ``emu_<kernel>`` with each kernel's own parameter list."""
    parts = [HARNESS_HEAD]
    for name, params in SIGNATURES.items():
        op = re.sub(r"_f(32|64)$", "", name)
        decl = ", ".join(
            f"PQ_LEVEL_PARAMS({p.ctype}, {p.name})" if p.levels else f"{p.ctype} {p.name}"
            for p in params
        )
        body, call = [], []
        for p in params:
            if p.levels:
                body.append(
                    f"    {p.ctype} const {p.name}_levels[PQ_MAX_LEVELS] = "
                    f"PQ_LEVEL_ARRAY({p.name});"
                )
                call.append(f"{p.name}_levels")
            else:
                call.append(p.name)
        parts.append(
            f'extern "C" int emu_{name}(int gx, int gy, int bx, long long smem, {decl}) {{\n'
            + "\n".join(body)
            + f"\n    return emu_{op}(gx, gy, bx, smem, {', '.join(call)});\n}}\n"
        )
    return "\n".join(parts)


def _cxx() -> str | None:
    return shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """``kernels.cu`` compiled for the CPU as a shared library of ``emu_<kernel>`` drivers."""
    cxx = _cxx()
    if cxx is None:
        pytest.skip("no C++ compiler to build the CPU emulator of the kernels")
    d = tmp_path_factory.mktemp("cuda_emulator")
    (d / "harness.cpp").write_text(harness_source())
    lib = d / "libpq_emu.so"
    res = subprocess.run(
        [
            cxx,
            "-std=c++17",
            "-O1",
            "-shared",
            "-fPIC",
            "-ffp-contract=off",
            "-Wall",
            f"-I{CU_PATH.parent}",
            # e.g. "-fsanitize=address,undefined" (run with LD_PRELOAD=libasan.so)
            *os.environ.get("PQ_EMULATOR_CXXFLAGS", "").split(),
            "-o",
            str(lib),
            str(d / "harness.cpp"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr
    return ctypes.CDLL(str(lib))


# ---------------------------------------------------------------- the fake CuPy
class FakeArray(np.ndarray):
    """A NumPy array that claims to live on a CUDA device (``.device.id``)."""

    def __array_finalize__(self, obj):
        self._device_id = getattr(obj, "_device_id", 0)

    @property
    def device(self):
        return FakeDevice(self._device_id)


class FakeDevice:
    def __init__(self, device_id=0):
        self.id = int(device_id)

    def __enter__(self):
        FAKE_STATE["device_stack"].append(self.id)
        return self

    def __exit__(self, *exc):
        FAKE_STATE["device_stack"].pop()


FAKE_STATE: dict = {"device_stack": []}

#: The device the fake reports (an H100 SXM: 132 SMs).
FAKE_LIMITS = {16: 132, 39: 2048, 81: 233472, 97: 232448}


@dataclass
class Launch:
    kernel: str
    grid: tuple
    block: tuple
    args: tuple
    shared_mem: int
    device: int | None


_CTYPE_OF = {"int": np.int32, "long long": np.int64, "unsigned long long": np.uint64}


class FakeKernel:
    """Records each launch, checks it against the kernel's C signature, then emulates it."""

    def __init__(self, fake, name):
        self.fake, self.name = fake, name
        self._max_dynamic = 48 * 1024
        self.opt_ins = []

    @property
    def max_dynamic_shared_size_bytes(self):
        return self._max_dynamic

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value):
        assert isinstance(value, int) and value <= FAKE_LIMITS[97]
        self._max_dynamic = value
        self.opt_ins.append(value)

    def __call__(self, grid, block, args, shared_mem=0):
        stack = FAKE_STATE["device_stack"]
        self.fake.launches.append(
            Launch(self.name, grid, block, args, shared_mem, stack[-1] if stack else None)
        )
        assert isinstance(grid, tuple) and isinstance(block, tuple) and isinstance(args, tuple)
        assert all(type(g) is int and g >= 1 for g in grid), grid
        assert all(type(b) is int and b >= 1 for b in block), block
        assert len(grid) <= 2 and len(block) == 1
        assert block[0] <= 1024 and block[0] % 32 == 0
        assert shared_mem <= self._max_dynamic, "launch above the opted-in shared memory"
        ctypes_args = self._check_args(args)
        if self.fake.emulator is not None:
            gx, gy = (*grid, 1)[:2]
            fn = getattr(self.fake.emulator, f"emu_{self.name}")
            rc = fn(
                ctypes.c_int(gx),
                ctypes.c_int(gy),
                ctypes.c_int(block[0]),
                ctypes.c_longlong(shared_mem),
                *ctypes_args,
            )
            assert rc == 0, f"{self.name}: emulator refused the launch (code {rc})"

    def _check_args(self, args):
        types_ = _expanded(SIGNATURES[self.name])
        assert len(args) == len(types_), (self.name, len(args), len(types_))
        out = []
        for a, t in zip(args, types_, strict=True):
            if "*" in t:
                if type(a) is np.uint64 and int(a) == 0:  # _launch.NULL
                    out.append(ctypes.c_void_p(None))
                    continue
                assert isinstance(a, FakeArray), (self.name, t, type(a))
                assert a.flags.c_contiguous
                base = t.replace("const", "").replace("*", "").strip()
                want = {"float": np.float32, "double": np.float64, "unsigned char": np.uint8}[base]
                assert a.dtype == want, (self.name, t, a.dtype)
                out.append(ctypes.c_void_p(a.ctypes.data))
            else:
                assert type(a) is _CTYPE_OF[t], (self.name, t, type(a))
                out.append(
                    {
                        "int": ctypes.c_int32,
                        "long long": ctypes.c_int64,
                        "unsigned long long": ctypes.c_uint64,
                    }[t](int(a))
                )
        return out


class FakeRawModule:
    def __init__(self, fake, code=None, options=()):
        assert code == SOURCE and options == ("-std=c++17",)
        self.fake = fake
        fake.modules_built += 1

    def get_function(self, name):
        k = FakeKernel(self.fake, name)
        self.fake.kernels[name] = k
        return k


def _fill_empty(shape, dtype):
    dtype = np.dtype(dtype)
    fill = np.nan if dtype.kind == "f" else 0xAB
    return np.full(shape, fill, dtype=dtype).view(FakeArray)


def make_fake_cupy(emulator=None):
    fake = types.SimpleNamespace()
    fake.ndarray = FakeArray
    fake.launches, fake.kernels, fake.modules_built, fake.emulator = [], {}, 0, emulator
    fake.asarray = lambda a, dtype=None: np.array(a, dtype=dtype).view(FakeArray)
    fake.empty = _fill_empty
    fake.zeros = lambda shape, dtype: np.zeros(shape, dtype=dtype).view(FakeArray)
    fake.ascontiguousarray = lambda a: np.ascontiguousarray(a).view(FakeArray)
    fake.RawModule = lambda code=None, options=(): FakeRawModule(fake, code, options)
    runtime = types.SimpleNamespace(
        deviceGetAttribute=lambda attr, dev: FAKE_LIMITS[attr], getDevice=lambda: 0
    )
    fake.cuda = types.SimpleNamespace(runtime=runtime, Device=FakeDevice)
    return fake


@pytest.fixture
def fake_cupy(monkeypatch, emulator):
    """CuPy replaced by the fake, kernels run by the emulator."""
    fake = make_fake_cupy(emulator)
    monkeypatch.setattr(_launch, "get_cupy", lambda: fake)
    _launch.clear_caches()
    yield fake
    _launch.clear_caches()


@pytest.fixture
def recorder(monkeypatch):
    """CuPy replaced by the fake, launches only recorded (no compiler needed)."""
    fake = make_fake_cupy(None)
    monkeypatch.setattr(_launch, "get_cupy", lambda: fake)
    _launch.clear_caches()
    yield fake
    _launch.clear_caches()


def dev(a):
    """A host array as a fake device array."""
    return np.ascontiguousarray(a).view(FakeArray)


def host(a):
    return np.asarray(a).view(np.ndarray)


# ---------------------------------------------------------------- data
def _codebook(rng, bits, dtype):
    """Random increasing centroids over about [-2.5, 2.5] and their midpoints."""
    c = np.cumsum(rng.uniform(0.5, 1.5, 1 << bits))
    c = (c - c.mean()) * (5.0 / (c[-1] - c[0] + 1.0))
    return c.astype(dtype), ((c[1:] + c[:-1]) / 2).astype(dtype)


def _away_from(x, boundaries, gap):
    """Move values within ``gap`` of a boundary away from it (codes then do not depend on rounding)."""
    x = np.array(x)
    for b in np.asarray(boundaries):
        near = np.abs(x - b) < gap
        x[near] = b + np.where(x[near] >= b, gap, -gap)
    return x


def _tol(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)


FLOATS = [np.float32, np.float64]


# ---------------------------------------------------------------- emulated kernels vs the reference
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("shape", [(7, 37), (3, 2, 128), (1, 1), (5, 0), (0, 16)])
def test_scalar_encode_and_values(fake_cupy, rng, dtype, bits, shape):
    cents, bnd = _codebook(rng, bits, dtype)
    y = _away_from(rng.standard_normal(shape) * 1.2, bnd, 1e-4).astype(dtype)
    got = cb.scalar_encode(dev(y), dev(bnd), bits)
    want = ref.scalar_encode(y, bnd, bits)
    assert isinstance(got, FakeArray) and got.dtype == np.uint8 and got.shape == want.shape
    np.testing.assert_array_equal(host(got), want)
    n = shape[-1]
    vals = cb.scalar_values(dev(want), dev(cents), bits, n)
    assert vals.dtype == dtype and vals.shape == shape
    np.testing.assert_array_equal(host(vals), ref.scalar_values(want, cents, bits, n))


def test_scalar_encode_ties_go_up_and_nan_last(fake_cupy):
    """Exactly on a boundary -> the upper cell (side="right"); NaN -> the last cell, as NumPy."""
    bnd = np.array([-1.0, 0.0, 1.0])
    y = np.array([[-1.0, 0.0, 1.0, -2.0, np.nan, 0.5, -0.0, np.inf]])
    got = host(cb.scalar_encode(dev(y), dev(bnd), 2))
    np.testing.assert_array_equal(got, ref.scalar_encode(y, bnd, 2))
    np.testing.assert_array_equal(unpack_codes(got, 2, 8), [[1, 2, 3, 0, 3, 2, 2, 3]])


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("path", ["lut", "gather"])
def test_scalar_score(fake_cupy, monkeypatch, rng, dtype, bits, path):
    """Both score kernels against ``q @ c[idx].T`` (the byte table only for 1, 2, 4, 8 bits)."""
    monkeypatch.setattr(_launch, "LUT_MIN_ROWS", 0 if path == "lut" else 10**9)
    monkeypatch.setattr(_launch, "LUT_MAX_SHARED_BYTES", 200 * 1024)  # the 8-bit float64 table too
    n, rows, nq = 45, 70, 3
    cents, _ = _codebook(rng, bits, dtype)
    codes = rng.integers(0, 1 << bits, (rows, n)).astype(np.uint8)
    from polarquant.packing import pack_codes

    packed = pack_codes(codes, bits)
    q = rng.standard_normal((nq, n)).astype(dtype)
    got = cb.scalar_score(dev(q), dev(packed), dev(cents), bits, n)
    assert got.shape == (nq, rows) and got.dtype == dtype
    np.testing.assert_allclose(
        host(got), ref.scalar_score(q, packed, cents, bits, n), **_tol(dtype)
    )
    used = {launch.kernel for launch in fake_cupy.launches}
    lut = path == "lut" and 8 % bits == 0
    assert used == {
        f"scalar_score_{'lut' if lut else 'gather'}_{'f32' if dtype == np.float32 else 'f64'}"
    }


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("m", [1, 8, 13, 64, 256, 300])
def test_sign_encode_values(fake_cupy, rng, dtype, m):
    p = rng.standard_normal((9, m)).astype(dtype)
    p[0, : min(m, 3)] = [0.0, -0.0, -1e-30][: min(m, 3)]
    got = cb.sign_encode(dev(p))
    want = ref.sign_encode(p)
    assert got.shape == want.shape and got.dtype == np.uint8
    np.testing.assert_array_equal(host(got), want)
    vals = cb.sign_values(dev(want), m, dtype)
    assert vals.dtype == dtype
    np.testing.assert_array_equal(host(vals), ref.sign_values(want, m, dtype))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("m", [5, 64, 256, 300])
@pytest.mark.parametrize("path", ["lut", "gather"])
def test_sign_score(fake_cupy, monkeypatch, rng, dtype, m, path):
    monkeypatch.setattr(_launch, "LUT_MIN_ROWS", 0 if path == "lut" else 10**9)
    monkeypatch.setattr(_launch, "LUT_MAX_SHARED_BYTES", 200 * 1024)
    packed = ref.sign_encode(rng.standard_normal((50, m)))
    s = rng.standard_normal((4, m)).astype(dtype)
    got = cb.sign_score(dev(s), dev(packed), m)
    assert got.shape == (4, 50) and got.dtype == dtype
    np.testing.assert_allclose(host(got), ref.sign_score(s, packed, m), **_tol(dtype))
    kernel = fake_cupy.launches[-1].kernel
    assert kernel.startswith(f"sign_score_{path}_")


POLAR_CASES = [  # (dim, levels, bits)
    (16, 4, (4, 2, 2, 2)),
    (128, 4, (4, 2, 2, 2)),
    (96, 5, (3, 3, 2, 2, 1)),
    (8, 3, (8, 7, 5)),
    (64, 1, (6,)),
    (32, 5, (1, 1, 1, 1, 1)),
]


def _polar_books(dim, levels, bits, dtype):
    from polarquant.codebooks import angle_codebook

    books = [angle_codebook(level, b) for level, b in zip(range(1, levels + 1), bits, strict=True)]
    return (
        [cb_.boundaries.astype(dtype) for cb_ in books],
        [cb_.centroids.astype(dtype) for cb_ in books],
    )


def _near_boundary(y, levels, bnds, gap):
    """Per level, True where the reference angle lies within ``gap`` of a boundary."""
    _, angles = polar_transform(np.asarray(y, dtype=np.float64), levels)
    return [
        np.min(np.abs(psi[..., None] - np.asarray(b, np.float64)), axis=-1) < gap
        if len(b)
        else np.zeros(psi.shape, bool)
        for psi, b in zip(angles, bnds, strict=True)
    ]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("dim", "levels", "bits"), POLAR_CASES)
def test_polar_encode_values_score(fake_cupy, rng, dtype, dim, levels, bits):
    """Codes equal the reference's except for angles within 1e-5 of a boundary; radii, values, scores close."""
    bnds, cents = _polar_books(dim, levels, bits, dtype)
    y = rng.standard_normal((11, dim)).astype(dtype)
    y[0] = 0.0  # a zero row: angles 0, radii 0
    y[1, :2] = [1.0, -1e-30]  # atan2 = -1e-30: plus 2 pi rounds to 2 pi, which maps to 0
    packed, radii = cb.polar_encode(dev(y), levels, [dev(b) for b in bnds], bits)
    want_packed, want_radii = ref.polar_encode(y, levels, bnds, bits)
    assert radii.dtype == dtype and radii.shape == want_radii.shape
    np.testing.assert_allclose(host(radii), want_radii, **_tol(dtype))
    near = _near_boundary(y, levels, bnds, 1e-5 if dtype == np.float32 else 1e-12)
    for level, (p, w, b, close) in enumerate(zip(packed, want_packed, bits, near, strict=True), 1):
        assert p.shape == w.shape and p.dtype == np.uint8
        n = dim >> level
        diff = unpack_codes(host(p), b, n) != unpack_codes(w, b, n)
        assert not np.any(diff & ~close), f"level {level}: codes differ away from boundaries"
    vals = cb.polar_values(
        [dev(p) for p in want_packed], dev(want_radii), [dev(c) for c in cents], bits, dim
    )
    assert vals.shape == (11, dim) and vals.dtype == dtype
    np.testing.assert_allclose(
        host(vals), ref.polar_values(want_packed, want_radii, cents, bits, dim), **_tol(dtype)
    )
    q = rng.standard_normal((3, dim)).astype(dtype)
    got = cb.polar_score(
        dev(q), [dev(p) for p in want_packed], dev(want_radii), [dev(c) for c in cents], bits, dim
    )
    assert got.shape == (3, 11) and got.dtype == dtype
    np.testing.assert_allclose(
        host(got),
        ref.polar_score(q, want_packed, want_radii, cents, bits, dim),
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
    cents, _ = _codebook(rng, bits, dtype)
    codes = rng.integers(0, 1 << bits, (rows, n)).astype(np.uint8)
    from polarquant.packing import pack_codes

    packed = pack_codes(codes, bits)
    w = rng.standard_normal((nw, rows)).astype(dtype)
    got = cb.scalar_weighted_sum(dev(w), dev(packed), dev(cents), bits, n)
    want = ref.scalar_weighted_sum(w, packed, cents, bits, n)
    _assert_weighted(got, want, w, ref.scalar_values(packed, cents, bits, n), WS_RTOL[dtype])
    (launch,) = fake_cupy.launches
    assert launch.kernel == f"scalar_weighted_sum_{'f32' if dtype == np.float32 else 'f64'}"
    assert launch.grid == (-(-rows // 64), -(-nw // 8))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("dim", "levels", "bits"), POLAR_CASES)
def test_polar_weighted_sum(fake_cupy, rng, dtype, dim, levels, bits):
    """``w @ polar_values(...)`` against the reference, 1-D and 2-D weights, 200 rows (4 blocks)."""
    bnds, cents = _polar_books(dim, levels, bits, dtype)
    y = rng.standard_normal((200, dim)).astype(dtype)
    packed, radii = ref.polar_encode(y, levels, bnds, bits)
    values = ref.polar_values(packed, radii, cents, bits, dim)
    args = ([dev(p) for p in packed], dev(radii), [dev(c) for c in cents], bits, dim)
    for shape in [(200,), (10, 200)]:
        w = rng.standard_normal(shape).astype(dtype)
        got = cb.polar_weighted_sum(dev(w), *args)
        want = ref.polar_weighted_sum(w, packed, radii, cents, bits, dim)
        _assert_weighted(got, want, w, values, WS_RTOL[dtype])
    assert fake_cupy.launches[-1].grid == (4, 2)


def test_weighted_sum_one_hot_is_the_decode(fake_cupy, rng):
    """One-hot weights pick rows: the sums are the decoded rows, exactly (only zeros are added)."""
    cents, bnd = _codebook(rng, 3, np.float32)
    packed = ref.scalar_encode(rng.standard_normal((150, 40)).astype(np.float32), bnd, 3)
    w = np.zeros((3, 150), np.float32)
    w[[0, 1, 2], [0, 77, 149]] = 1.0
    got = host(cb.scalar_weighted_sum(dev(w), dev(packed), dev(cents), 3, 40))
    np.testing.assert_array_equal(got, ref.scalar_values(packed, cents, 3, 40)[[0, 77, 149]])


def test_batch_shapes_and_single_rows(fake_cupy, rng):
    """Leading batch axes pass through; a 1-D row scores to ``q.shape[:-1]`` (matmul rules)."""
    cents, bnd = _codebook(rng, 3, np.float32)
    y = rng.standard_normal((2, 3, 20)).astype(np.float32)
    packed = cb.scalar_encode(dev(y), dev(bnd), 3)
    assert packed.shape == (2, 3, 8)
    assert cb.scalar_values(packed, dev(cents), 3, 20).shape == (2, 3, 20)
    q = rng.standard_normal((4, 20)).astype(np.float32)
    one = host(packed)[0, 0]
    s = cb.scalar_score(dev(q), dev(one), dev(cents), 3, 20)
    assert s.shape == (4,)
    np.testing.assert_allclose(
        host(s), ref.scalar_score(q, one, cents, 3, 20), rtol=1e-5, atol=1e-5
    )


def test_mixed_and_integer_dtypes_follow_numpy_promotion(fake_cupy, rng):
    """float32 queries with float64 centroids score in float64, as ``q @ values.T`` does."""
    cents, _ = _codebook(rng, 2, np.float64)
    packed = ref.scalar_encode(rng.standard_normal((6, 10)), (cents[1:] + cents[:-1]) / 2, 2)
    q = rng.standard_normal((2, 10)).astype(np.float32)
    got = cb.scalar_score(dev(q), dev(packed), dev(cents), 2, 10)
    assert got.dtype == np.float64
    np.testing.assert_allclose(host(got), ref.scalar_score(q, packed, cents, 2, 10), rtol=1e-6)
    y = rng.integers(-3, 3, (4, 9))
    np.testing.assert_array_equal(
        host(cb.scalar_encode(dev(y), dev(cents[1:]), 2)), ref.scalar_encode(y, cents[1:], 2)
    )


# ---------------------------------------------------------------- launch plans
def test_module_is_compiled_once_and_kernels_cached(recorder, rng):
    cents, bnd = _codebook(rng, 2, np.float32)
    for _ in range(3):
        cb.scalar_encode(dev(rng.standard_normal((4, 8)).astype(np.float32)), dev(bnd), 2)
    assert recorder.modules_built == 1
    assert list(recorder.kernels) == ["scalar_encode_f32"]
    assert len(recorder.launches) == 3


@pytest.mark.parametrize(
    ("rows", "n", "bits", "blocks"),
    [
        (1, 1, 1, 1),  # one byte
        (3, 100, 3, 2),  # 3 * 38 = 114 bytes... -> 1 block; see below
        (1000, 128, 4, 250),  # 64000 bytes, not a multiple of 256 threads per block -> ceil
        (100_000, 128, 4, 32 * 132),  # capped at 32 blocks per SM
    ],
)
def test_elementwise_grid_sizes(recorder, rows, n, bits, blocks):
    y = np.zeros((rows, n), np.float32)
    cb.scalar_encode(dev(y), dev(np.zeros((1 << bits) - 1, np.float32)), bits)
    (launch,) = recorder.launches
    work = rows * (-(-n * bits // 8))
    assert launch.block == (256,)
    assert launch.grid == (min(-(-work // 256), 32 * 132),)
    if rows != 3:
        assert launch.grid == (blocks,)
    assert launch.shared_mem == ((1 << bits) - 1) * 4
    assert launch.device == 0


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


def test_empty_problems_launch_nothing(recorder):
    z = np.zeros
    out = cb.scalar_encode(dev(z((0, 16), np.float32)), dev(z(3, np.float32)), 2)
    assert out.shape == (0, 4) and out.dtype == np.uint8
    out = cb.scalar_encode(dev(z((5, 0), np.float32)), dev(z(3, np.float32)), 2)
    assert out.shape == (5, 0)
    s = cb.scalar_score(
        dev(z((2, 0), np.float32)), dev(z((5, 0), np.uint8)), dev(z(4, np.float32)), 2, 0
    )
    assert s.shape == (2, 5) and np.all(host(s) == 0)  # an empty sum is 0, not garbage
    s = cb.sign_score(dev(z((0, 8), np.float64)), dev(z((5, 1), np.uint8)), 8)
    assert s.shape == (0, 5)
    v = cb.sign_values(dev(z((0, 2), np.uint8)), 16, np.float32)
    assert v.shape == (0, 16)
    ws = cb.scalar_weighted_sum(
        dev(z((3, 0), np.float32)), dev(z((0, 4), np.uint8)), dev(z(4, np.float32)), 2, 16
    )
    assert ws.shape == (3, 16) and np.all(host(ws) == 0)  # a sum over no rows is 0
    ws = cb.polar_weighted_sum(
        dev(z((2, 0), np.float64)),
        [dev(z((0, 1), np.uint8))],
        dev(z((0, 4), np.float64)),
        [dev(z(2, np.float64))],
        [1],
        8,
    )
    assert ws.shape == (2, 8) and ws.dtype == np.float64 and np.all(host(ws) == 0)
    assert recorder.launches == []


def test_score_launch_plan_and_argument_types(recorder, rng):
    """The 4-bit, d = 128 byte-table plan: 64 KiB table, opted in above 48 KiB, 3 blocks per SM."""
    rows, n, nq = 200_000, 128, 2
    packed = np.zeros((rows, 64), np.uint8)
    cents = np.linspace(-1, 1, 16).astype(np.float32)
    q = np.zeros((nq, n), np.float32)
    out = cb.scalar_score(dev(q), dev(packed), dev(cents), 4, n)
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
    assert np.shares_memory(o_, out)  # the kernel writes the returned array
    # float64: the table (128 KiB) exceeds the budget -> the gather kernel, centroids in shared
    cb.scalar_score(dev(q.astype(np.float64)), dev(packed), dev(cents.astype(np.float64)), 4, n)
    assert recorder.launches[-1].kernel == "scalar_score_gather_f64"
    assert recorder.launches[-1].shared_mem == 16 * 8
    # a second call with the same table size does not opt in again
    cb.scalar_score(dev(q), dev(packed), dev(cents), 4, n)
    assert recorder.kernels["scalar_score_lut_f32"].opt_ins == [65536]


def test_polar_launch_plans(recorder, rng):
    dim, levels, bits = 128, 4, (4, 2, 2, 2)
    y = np.zeros((10, dim), np.float32)
    bnds = [np.zeros((1 << b) - 1, np.float32) for b in bits]
    packed, radii = cb.polar_encode(dev(y), levels, [dev(b) for b in bnds], bits)
    enc = recorder.launches[-1]
    assert enc.kernel == "polar_encode_f32"
    assert enc.grid == (10,) and enc.block == (64,)
    assert enc.shared_mem == (64 + 32 + 15 + 3 + 3 + 3) * 4 + (128 - 8)
    assert [tuple(p.shape) for p in packed] == [(10, 32), (10, 8), (10, 4), (10, 2)]
    assert radii.shape == (10, 8) and radii.dtype == np.float32
    args = enc.args
    assert type(args[4]) is np.uint64 and int(args[4]) == 0x2224
    assert all(a is _launch.NULL for a in args[5 + levels : 5 + 16])  # unused slots are NULL
    assert all(np.shares_memory(a, p) for a, p in zip(args[21 : 21 + levels], packed, strict=True))
    assert all(a is _launch.NULL for a in args[21 + levels : 37])
    assert np.shares_memory(args[37], radii)
    cents = [dev(np.zeros(1 << b, np.float32)) for b in bits]
    cb.polar_values(packed, radii, cents, bits, dim)
    v = recorder.launches[-1]
    assert v.kernel == "polar_values_f32" and v.grid == (-(-10 * 64 // 256),)
    assert v.shared_mem == 2 * (16 + 4 + 4 + 4) * 4
    cb.polar_score(dev(np.zeros((3, dim), np.float32)), packed, radii, cents, bits, dim)
    s = recorder.launches[-1]
    assert (
        s.kernel == "polar_score_f32" and s.grid == (2, 3) and int(s.args[-2]) == 32
    )  # 8 rows per block


def test_weighted_sum_launch_plans(recorder):
    """Arguments typed as the C signatures, the zeroed output written, shared memory sized."""
    rows, n, nw = 32768, 128, 3
    packed = np.zeros((rows, 64), np.uint8)
    cents = np.zeros(16, np.float32)
    w = np.zeros((nw, rows), np.float32)
    out = cb.scalar_weighted_sum(dev(w), dev(packed), dev(cents), 4, n)
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
    bits = (4, 2, 2, 2)
    packed = [dev(np.zeros((100, (128 >> lv) * b // 8), np.uint8)) for lv, b in enumerate(bits, 1)]
    cents = [dev(np.zeros(1 << b, np.float64)) for b in bits]
    w = dev(np.zeros((20, 100), np.float64))
    out = cb.polar_weighted_sum(w, packed, dev(np.zeros((100, 8), np.float64)), cents, bits, 128)
    launch = recorder.launches[-1]
    assert launch.kernel == "polar_weighted_sum_f64" and launch.grid == (2, 3)
    assert launch.shared_mem == 2 * (16 + 4 + 4 + 4) * 8
    assert type(launch.args[6]) is np.uint64 and int(launch.args[6]) == 0x2224
    assert all(a is _launch.NULL for a in launch.args[7 + 4 : 7 + 16])
    assert np.shares_memory(launch.args[-1], out) and out.shape == (20, 128)


def test_arrays_on_another_device_run_there(recorder, rng):
    """Output and launch follow the inputs' device; inputs spread over devices are refused."""
    y = dev(np.zeros((4, 8), np.float32))
    y._device_id = 1
    b = dev(np.zeros(3, np.float32))
    b._device_id = 1
    cb.scalar_encode(y, b, 2)
    assert recorder.launches[-1].device == 1
    with pytest.raises(ValueError, match="one device"):
        cb.scalar_encode(y, dev(np.zeros(3, np.float32)), 2)


# ---------------------------------------------------------------- errors
def _numpy_input_calls():
    f, u = np.zeros((2, 8), np.float32), np.zeros((2, 2), np.uint8)
    c, b = np.zeros(4, np.float32), np.zeros(3, np.float32)
    return [
        ("x", lambda: cb.scalar_encode(f, dev(b), 2)),
        ("boundaries", lambda: cb.scalar_encode(dev(f), b, 2)),
        ("packed codes", lambda: cb.scalar_values(u, dev(c), 2, 8)),
        ("centroids", lambda: cb.scalar_values(dev(u), c, 2, 8)),
        ("queries", lambda: cb.scalar_score(f, dev(u), dev(c), 2, 8)),
        ("x", lambda: cb.sign_encode(f)),
        ("packed codes", lambda: cb.sign_values(np.zeros((2, 1), np.uint8), 8, np.float32)),
        ("queries", lambda: cb.sign_score(f, dev(np.zeros((2, 1), np.uint8)), 8)),
        ("x", lambda: cb.polar_encode(f, 1, [dev(b)], [2])),
        (
            "radii",
            lambda: cb.polar_values(
                [dev(np.zeros((2, 1), np.uint8))], np.zeros((2, 4), np.float32), [dev(c)], [2], 8
            ),
        ),
        (
            "weights",
            lambda: cb.scalar_weighted_sum(np.zeros((1, 2), np.float32), dev(u), dev(c), 2, 8),
        ),
        (
            "weights",
            lambda: cb.polar_weighted_sum(
                np.zeros((1, 2), np.float32),
                [dev(np.zeros((2, 1), np.uint8))],
                dev(np.zeros((2, 4), np.float32)),
                [dev(c)],
                [2],
                8,
            ),
        ),
    ]


@pytest.mark.parametrize(("name", "call"), _numpy_input_calls())
def test_numpy_input_is_a_type_error(recorder, name, call):
    with pytest.raises(TypeError, match="the cupy backend needs CuPy arrays") as err:
        call()
    msg = str(err.value)
    assert "never moves data between host and device implicitly" in msg
    assert "cupy.asarray" in msg and name in msg
    assert recorder.launches == []


def test_bad_dtypes_and_shapes(recorder):
    f = dev(np.zeros((2, 8), np.float32))
    b = dev(np.zeros(3, np.float32))
    c = dev(np.zeros(4, np.float32))
    u = dev(np.zeros((2, 2), np.uint8))
    with pytest.raises(TypeError, match="real floats"):
        cb.scalar_encode(dev(np.zeros((2, 8), np.complex64)), b, 2)
    with pytest.raises(TypeError, match="uint8"):
        cb.scalar_values(dev(np.zeros((2, 2), np.int16)), c, 2, 8)
    with pytest.raises(ValueError, match="bytes per vector"):
        cb.scalar_values(u, c, 2, 9)
    with pytest.raises(ValueError, match="0-d"):
        cb.scalar_encode(np.array(1.0, np.float32).view(FakeArray), b, 2)
    with pytest.raises(ValueError, match="boundaries"):
        cb.scalar_encode(f, dev(np.zeros(4, np.float32)), 2)
    with pytest.raises(ValueError, match="1-D"):
        cb.scalar_encode(f, dev(np.zeros((1, 3), np.float32)), 2)
    with pytest.raises(IndexError, match="centroids"):
        cb.scalar_values(u, dev(np.zeros(3, np.float32)), 2, 8)
    with pytest.raises(ValueError, match="last dimension"):
        cb.scalar_score(dev(np.zeros((2, 7), np.float32)), u, c, 2, 8)
    with pytest.raises(ValueError, match="bits"):
        cb.scalar_encode(f, b, 9)
    with pytest.raises(TypeError, match="bits"):
        cb.scalar_encode(f, b, 2.0)
    with pytest.raises(ValueError, match="divisible"):
        cb.polar_encode(dev(np.zeros((2, 12), np.float32)), 3, [b, b, b], [2, 2, 2])
    with pytest.raises(ValueError, match="full codebook"):
        cb.polar_encode(f, 1, [dev(np.zeros(2, np.float32))], [2])
    with pytest.raises(ValueError, match="at most 16"):
        cb.polar_encode(dev(np.zeros((1, 1 << 17), np.float32)), 17, [b] * 17, [2] * 17)
    with pytest.raises(ValueError, match="do not match"):
        cb.polar_values(
            [dev(np.zeros((2, 1), np.uint8))], dev(np.zeros((2, 3), np.float32)), [c], [2], 8
        )
    with pytest.raises(ValueError, match="matmul mismatch"):
        cb.scalar_weighted_sum(dev(np.zeros((1, 3), np.float32)), u, c, 2, 8)
    with pytest.raises(ValueError, match="0-d"):
        cb.scalar_weighted_sum(np.array(1.0, np.float32).view(FakeArray), u, c, 2, 8)
    with pytest.raises(ValueError, match=r"codes shaped \(rows, nbytes\)"):
        cb.scalar_weighted_sum(dev(np.zeros(8, np.float32)), dev(np.zeros(2, np.uint8)), c, 2, 8)
    with pytest.raises(TypeError, match="real floats"):
        cb.scalar_weighted_sum(dev(np.zeros((1, 2), np.complex64)), u, c, 2, 8)
    assert recorder.launches == []


def test_module_imports_without_cupy():
    """Importing the backend imports no CuPy (only the registry's availability check does)."""
    code = (
        "import sys; from polarquant.backends import cupy_backend; "
        "print('cupy' in sys.modules, cupy_backend.NAME)"
    )
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "cupy"]


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
    cents, bnd = _codebook(rng, bits, dtype)
    y = _away_from(rng.standard_normal((rows, n)), bnd, 1e-4).astype(dtype)
    packed = cb.scalar_encode(cp.asarray(y), cp.asarray(bnd), bits)
    want = ref.scalar_encode(y, bnd, bits)
    np.testing.assert_array_equal(cp.asnumpy(packed), want)
    np.testing.assert_array_equal(
        cp.asnumpy(cb.scalar_values(packed, cp.asarray(cents), bits, n)),
        ref.scalar_values(want, cents, bits, n),
    )
    q = rng.standard_normal((5, n)).astype(dtype)
    got = cb.scalar_score(cp.asarray(q), packed, cp.asarray(cents), bits, n)
    np.testing.assert_allclose(
        cp.asnumpy(got),
        ref.scalar_score(q, want, cents, bits, n),
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
    p = rng.standard_normal((2000, m)).astype(dtype)
    p[0, :2] = [0.0, -0.0]
    packed = cb.sign_encode(cp.asarray(p))
    want = ref.sign_encode(p)
    np.testing.assert_array_equal(cp.asnumpy(packed), want)
    np.testing.assert_array_equal(
        cp.asnumpy(cb.sign_values(packed, m, dtype)), ref.sign_values(want, m, dtype)
    )
    s = rng.standard_normal((3, m)).astype(dtype)
    np.testing.assert_allclose(
        cp.asnumpy(cb.sign_score(cp.asarray(s), packed, m)),
        ref.sign_score(s, want, m),
        rtol=1e-4 if dtype == np.float32 else 1e-10,
        atol=1e-3 if dtype == np.float32 else 1e-10,
    )


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("dim", "levels", "bits"), POLAR_CASES)
def test_gpu_polar_ops(cp, rng, dtype, dim, levels, bits):
    bnds, cents = _polar_books(dim, levels, bits, dtype)
    y = rng.standard_normal((1500, dim)).astype(dtype)
    y[0] = 0.0
    packed, radii = cb.polar_encode(cp.asarray(y), levels, [cp.asarray(b) for b in bnds], bits)
    want_packed, want_radii = ref.polar_encode(y, levels, bnds, bits)
    np.testing.assert_allclose(cp.asnumpy(radii), want_radii, **_tol(dtype))
    near = _near_boundary(y, levels, bnds, 1e-5 if dtype == np.float32 else 1e-12)
    for level, (p, w, b, close) in enumerate(zip(packed, want_packed, bits, near, strict=True), 1):
        n = dim >> level
        diff = unpack_codes(cp.asnumpy(p), b, n) != unpack_codes(w, b, n)
        assert not np.any(diff & ~close), f"level {level}"
    dp = [cp.asarray(p) for p in want_packed]
    dc = [cp.asarray(c) for c in cents]
    vals = cb.polar_values(dp, cp.asarray(want_radii), dc, bits, dim)
    np.testing.assert_allclose(
        cp.asnumpy(vals), ref.polar_values(want_packed, want_radii, cents, bits, dim), **_tol(dtype)
    )
    q = rng.standard_normal((4, dim)).astype(dtype)
    got = cb.polar_score(cp.asarray(q), dp, cp.asarray(want_radii), dc, bits, dim)
    np.testing.assert_allclose(
        cp.asnumpy(got),
        ref.polar_score(q, want_packed, want_radii, cents, bits, dim),
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
    cents, bnd = _codebook(rng, bits, dtype)
    packed = ref.scalar_encode(rng.standard_normal((rows, n)).astype(dtype), bnd, bits)
    values = ref.scalar_values(packed, cents, bits, n)
    for nw in (1, 12):
        w = rng.standard_normal((nw, rows)).astype(dtype)
        got = cb.scalar_weighted_sum(cp.asarray(w), cp.asarray(packed), cp.asarray(cents), bits, n)
        want = ref.scalar_weighted_sum(w, packed, cents, bits, n)
        _assert_weighted(cp.asnumpy(got), want, w, values, WS_RTOL[dtype])
    lv, pb = 4, (bits, 2, 2, 2)
    bnds, pcents = _polar_books(n, lv, pb, dtype)
    pk, radii = ref.polar_encode(rng.standard_normal((rows, n)).astype(dtype), lv, bnds, pb)
    w = rng.standard_normal((12, rows)).astype(dtype)
    got = cb.polar_weighted_sum(
        cp.asarray(w),
        [cp.asarray(p) for p in pk],
        cp.asarray(radii),
        [cp.asarray(c) for c in pcents],
        pb,
        n,
    )
    want = ref.polar_weighted_sum(w, pk, radii, pcents, pb, n)
    # cos/sin of the centroids come from the device (1 ulp): float64 within 1e-10 of the scale
    rtol = WS_RTOL[dtype] if dtype == np.float32 else 1e-10
    _assert_weighted(cp.asnumpy(got), want, w, ref.polar_values(pk, radii, pcents, pb, n), rtol)


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
