"""A CuPy stand-in and a CPU emulator of the CUDA kernels, for testing the cupy backend without a GPU.

Not a test file: ``tests/test_cuda.py`` (and the error battery of
``tests/test_backend_errors.py``) use it.  Two pieces:

1. **The fake CuPy** (:func:`make_fake_cupy`, installed by
   :func:`install_fake_cupy` in place of ``_launch.get_cupy``): NumPy arrays
   that claim to live on a CUDA device (:class:`FakeArray`, ``.device.id``),
   ``empty`` (NaN/0xAB-filled, so that an element a kernel misses shows),
   ``zeros``, ``asarray``, ``ascontiguousarray`` on the current
   ``cuda.Device``, and a ``RawModule`` whose kernels (:class:`FakeKernel`)
   record each launch -- grid, block, dynamic shared memory, device, the
   arguments checked against the kernel's C signature (exact NumPy scalar
   types, pointer dtypes, every array on the launch's device) -- and then, if
   an emulator is given, run it.  Since a :class:`FakeArray` is a NumPy array
   to ``array_api_compat``, :func:`install_fake_cupy` also makes the plans'
   constants (``plan.constant``) of a fake array fake arrays on its device,
   as the real CuPy namespace does.
2. **The emulator** (:func:`build_emulator`): the kernel source CuPy compiles
   (``_launch.kernel_source()``) compiled as plain C++ -- its thread code is
   ``__host__ __device__`` -- plus one small driver per kernel, generated
   from the kernel's signature (:func:`harness_source`), which walks the grid
   the host planned: every grid-stride thread, every warp of the score
   kernels, the block-per-row loop of ``polar_encode``, the blocks and
   weight tiles of the weighted sums, with the shared memory the host asked
   for (too little is an error, as are a bad group size, a byte table
   narrower than the codes, and a polar layout other than the plan's).  It
   checks the kernels' arithmetic against the NumPy reference -- all but the
   CUDA-only glue (``__syncthreads``, warp shuffles, the real scheduler).

Out-of-bounds accesses, silent on a GPU, show under AddressSanitizer::

    PQ_EMULATOR_CXXFLAGS="-fsanitize=address,undefined -g" ASAN_OPTIONS=detect_leaks=0 \\
    LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \\
    python -m pytest tests/test_cuda.py -k "not nvcc and not imports_without"
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
from polarquant.backends import cupy_backend
from polarquant.backends.cupy_backend import _launch

import polarquant._array as _array

#: The module source CuPy compiles (the files of ``_launch.SOURCES``, concatenated).
SOURCE = _launch.kernel_source()
#: The folder of the CUDA files (package data).
SOURCE_DIR = Path(cupy_backend.__file__).parent


# ================================================================ kernel signatures
_KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\((.*?)\)\s*\{', re.S)


@dataclass(frozen=True)
class Param:
    ctype: str  # e.g. "const float*", "long long"
    name: str

    @property
    def pointer(self) -> bool:
        return self.ctype.endswith("*")


def kernel_signatures(src: str = SOURCE) -> dict[str, list[Param]]:
    """Every ``extern "C" __global__`` kernel of ``src`` with its parameters, in order."""
    out = {}
    for name, params in _KERNEL_RE.findall(src):
        parsed = []
        for p in params.split(","):
            m = re.fullmatch(r"(.*?)\s*(\w+)", " ".join(p.split()))
            parsed.append(Param(m.group(1).replace(" *", "*"), m.group(2)))
        out[name] = parsed
    return out


SIGNATURES = kernel_signatures()


# ================================================================ the emulator
HARNESS_HEAD = r"""
#include "polarquant_kernels.cu"
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

enum { OK = 0, BAD_SHARED = 1, BAD_GROUP = 2, BAD_BITS = 3, BAD_STRIDE = 4, BAD_LAYOUT = 5,
       BAD_WIDTH = 6, BAD_LAUNCH = 7 };

bool launch_ok(int gx, int gy, int bx) {
    return gx >= 1 && gy >= 1 && gy <= 65535 && bx >= 1 && bx <= 1024;
}

bool group_ok(int group, int bx) {
    return group >= 1 && group <= 32 && (group & (group - 1)) == 0 && bx % 32 == 0;
}

bool bits_ok(int bits) { return bits >= 1 && bits <= 8; }

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

/* ---------------------------------------------------------------- scalar.cu */
template <typename T>
int emu_scalar_encode(int gx, int gy, int bx, long long smem, const T* y, long long rows, int n,
                      int bits, const T* bnd, unsigned char* out) {
    EMU_CHECK(launch_ok(gx, gy, bx), BAD_LAUNCH);
    EMU_CHECK(bits_ok(bits), BAD_BITS);
    const int nbnd = (1 << bits) - 1;
    EMU_CHECK(smem >= static_cast<long long>(nbnd) * sizeof(T), BAD_SHARED);
    SharedBuf sh(smem);
    T* s = sh.as<T>();
    stage(s, bnd, nbnd, 0, 1);
    EMU_GRID_STRIDE(scalar_encode_range(y, rows, n, bits, s, out, g, G));
    return OK;
}

template <typename T>
int emu_scalar_values(int gx, int gy, int bx, long long smem, const unsigned char* packed,
                      long long rows, int n, int bits, const T* cents, T* out) {
    EMU_CHECK(launch_ok(gx, gy, bx), BAD_LAUNCH);
    EMU_CHECK(bits_ok(bits), BAD_BITS);
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
    EMU_CHECK(bits_ok(bits) && 8 % bits == 0, BAD_BITS);
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
    EMU_CHECK(bits_ok(bits), BAD_BITS);
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

/* The weighted-sum kernels: block (bx, by) takes its run of rows and the weight-row tiles
 * by * PQ_WS_TILE, + gy * PQ_WS_TILE, ...; its threads run one after the other (their
 * atomicAdds become plain additions). */
template <typename T>
int emu_scalar_weighted_sum(int gx, int gy, int bx, long long smem, const T* w, long long nw,
                            const unsigned char* packed, long long rows, int n, int bits,
                            const T* cents, T* out) {
    EMU_CHECK(launch_ok(gx, gy, bx), BAD_LAUNCH);
    EMU_CHECK(bits_ok(bits), BAD_BITS);
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

/* ---------------------------------------------------------------- sign.cu */
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

/* ---------------------------------------------------------------- polar.cu */
/* The plan's layout (polarquant.plan.PolarPlan): 1 to PQ_MAX_LEVELS levels of 1 to 8 bits,
 * nothing in the bit word past the last level, offsets[0] = 0 and level l taking exactly
 * packed_nbytes(dim >> l, b_l) bytes (the kernels write those bytes and no others). */
bool layout_ok(int dim, int levels, unsigned long long bits_word, const int* offsets) {
    if (levels < 1 || levels > PQ_MAX_LEVELS || offsets == nullptr || offsets[0] != 0) return false;
    if (levels < PQ_MAX_LEVELS && (bits_word >> (4 * levels)) != 0) return false;
    for (int l = 1; l <= levels; ++l) {
        const int b = level_bits(bits_word, l);
        if (!bits_ok(b) || offsets[l] - offsets[l - 1] != packed_nbytes(dim >> l, b)) return false;
    }
    return true;
}

/* A (levels, width) table holds every level's 2**b_l - shorter entries. */
bool width_ok(int width, int levels, unsigned long long bits_word, int shorter) {
    for (int l = 1; l <= levels; ++l)
        if ((1 << level_bits(bits_word, l)) - shorter > width) return false;
    return true;
}

template <typename T>
int emu_polar_encode(int gx, int gy, int bx, long long smem, const T* y, long long rows, int dim,
                     int levels, unsigned long long bits_word, const T* bnd, int width,
                     const int* offsets, unsigned char* codes, T* radii) {
    EMU_CHECK(launch_ok(gx, gy, bx), BAD_LAUNCH);
    EMU_CHECK(layout_ok(dim, levels, bits_word, offsets), BAD_LAYOUT);
    EMU_CHECK(width_ok(width, levels, bits_word, 1), BAD_WIDTH);
    EMU_CHECK(smem >= polar_encode_shared_bytes(dim, levels, bits_word, sizeof(T)), BAD_SHARED);
    SharedBuf shared(smem);
    const PolarEncodeShared<T> sh = polar_encode_shared<T>(shared.bytes(), dim, levels, bits_word);
    PolarEncodeLevels<T> lv;
    polar_encode_levels_init(lv, sh.bnd, offsets, levels, bits_word);
    polar_encode_stage_bnd(lv, bnd, width, 0, 1);
    const int nr = dim >> levels;
    for (int b = 0; b < gx; ++b)
        for (long long row = b; row < rows; row += gx)
            polar_encode_row(y + row * dim, dim, lv, sh.bufA, sh.bufB, sh.codes, radii + row * nr,
                             codes + row * lv.nbytes, 0, 1, NoSync());
    return OK;
}

/* The decoding kernels' common start: checks, then the plan and its shared tables. */
template <typename T>
int emu_polar_codes(PolarCodes<T>& pc, SharedBuf& sh, long long smem, int dim, int levels,
                    unsigned long long bits_word, const int* offsets, const unsigned char* codes,
                    const T* cos_t, const T* sin_t, int width) {
    EMU_CHECK(layout_ok(dim, levels, bits_word, offsets), BAD_LAYOUT);
    EMU_CHECK(width_ok(width, levels, bits_word, 0), BAD_WIDTH);
    EMU_CHECK(smem >= polar_trig_total(bits_word, levels) * static_cast<long long>(sizeof(T)),
              BAD_SHARED);
    polar_codes_init(pc, codes, offsets, levels, bits_word, sh.as<T>());
    polar_trig_stage(pc, cos_t, sin_t, width, 0, 1);
    return OK;
}

template <typename T>
int emu_polar_values(int gx, int gy, int bx, long long smem, const T* radii, long long rows,
                     int dim, int levels, unsigned long long bits_word, const int* offsets,
                     const unsigned char* codes, const T* cos_t, const T* sin_t, int width,
                     T* out) {
    EMU_CHECK(launch_ok(gx, gy, bx), BAD_LAUNCH);
    SharedBuf sh(smem);
    PolarCodes<T> pc;
    const int rc = emu_polar_codes(pc, sh, smem, dim, levels, bits_word, offsets, codes, cos_t,
                                   sin_t, width);
    if (rc != OK) return rc;
    EMU_GRID_STRIDE(polar_values_range(pc, radii, rows, dim, out, g, G));
    return OK;
}

template <typename T>
int emu_polar_score(int gx, int gy, int bx, long long smem, const T* q, long long nq,
                    const T* radii, long long rows, int dim, int levels,
                    unsigned long long bits_word, const int* offsets, const unsigned char* codes,
                    const T* cos_t, const T* sin_t, int width, int group, T* out) {
    EMU_CHECK(launch_ok(gx, gy, bx), BAD_LAUNCH);
    EMU_CHECK(group_ok(group, bx), BAD_GROUP);
    SharedBuf sh(smem);
    PolarCodes<T> pc;
    const int rc = emu_polar_codes(pc, sh, smem, dim, levels, bits_word, offsets, codes, cos_t,
                                   sin_t, width);
    if (rc != OK) return rc;
    for (int by = 0; by < gy; ++by)
        for (long long qi = by; qi < nq; qi += gy)
            emu_row_groups(static_cast<long long>(gx) * bx, rows, group, out + qi * rows,
                           [&](long long row, int sub) {
                               return polar_row_partial(pc, q + qi * dim, radii, row, dim, sub,
                                                        group);
                           });
    return OK;
}

template <typename T>
int emu_polar_weighted_sum(int gx, int gy, int bx, long long smem, const T* w, long long nw,
                           const T* radii, long long rows, int dim, int levels,
                           unsigned long long bits_word, const int* offsets,
                           const unsigned char* codes, const T* cos_t, const T* sin_t, int width,
                           T* out) {
    EMU_CHECK(launch_ok(gx, gy, bx), BAD_LAUNCH);
    SharedBuf sh(smem);
    PolarCodes<T> pc;
    const int rc = emu_polar_codes(pc, sh, smem, dim, levels, bits_word, offsets, codes, cos_t,
                                   sin_t, width);
    if (rc != OK) return rc;
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

/* ---------------------------------------------------------------- fastscan.cu */
/* Query tables staged per (y block, query), then every grid-stride thread of the x blocks. */
template <typename Range>
int emu_fastscan(int gx, int gy, int bx, long long smem, const unsigned char* tq, long long nq,
                 int nbytes, Range range) {
    EMU_CHECK(launch_ok(gx, gy, bx), BAD_LAUNCH);
    EMU_CHECK(smem >= 32LL * nbytes, BAD_SHARED);
    SharedBuf sh(smem);
    unsigned char* table = sh.bytes();
    for (int by = 0; by < gy; ++by)
        for (long long qi = by; qi < nq; qi += gy) {
            stage(table, tq + qi * 32LL * nbytes, 32 * nbytes, 0, 1);
            EMU_GRID_STRIDE(range(qi, table, g, G));
        }
    return OK;
}

int emu_fastscan_sums_impl(int gx, int gy, int bx, long long smem, const unsigned char* tq,
                           long long nq, const unsigned char* blocks, long long n, int nbytes,
                           unsigned int* out) {
    return emu_fastscan(gx, gy, bx, smem, tq, nq, nbytes,
                        [&](long long qi, const unsigned char* table, long long g, long long G) {
                            fastscan_sums_range(blocks, n, nbytes, table, out + qi * n, g, G);
                        });
}

int emu_fastscan_keys_impl(int gx, int gy, int bx, long long smem, const unsigned char* tq,
                           long long nq, const unsigned char* blocks, long long n, int nbytes,
                           const float* bias, const float* scale, const float* weight,
                           const float* shift, int has_shift, float* out) {
    return emu_fastscan(gx, gy, bx, smem, tq, nq, nbytes,
                        [&](long long qi, const unsigned char* table, long long g, long long G) {
                            fastscan_keys_range(blocks, n, nbytes, table, bias[qi], scale,
                                                weight[qi], shift, has_shift, out + qi * n, g, G);
                        });
}

}  // namespace
"""

#: What a driver's return code means (the enum of HARNESS_HEAD).
EMULATOR_ERRORS = {
    1: "too little shared memory",
    2: "bad lane group",
    3: "bad bit width",
    4: "byte table narrower than the codes",
    5: "polar layout other than the plan's",
    6: "level table too narrow",
    7: "bad grid or block",
}


def harness_source() -> str:
    """The emulator: HARNESS_HEAD plus ``emu_<kernel>`` with each kernel's own parameter list."""
    parts = [HARNESS_HEAD]
    for name, params in SIGNATURES.items():
        op = re.sub(r"_f(32|64)$", "", name)
        if op == name:  # one variant only: the template driver has its own name
            op = f"{name}_impl"
        decl = ", ".join(f"{p.ctype} {p.name}" for p in params)
        call = ", ".join(p.name for p in params)
        parts.append(
            f'extern "C" int emu_{name}(int gx, int gy, int bx, long long smem, {decl}) {{\n'
            f"    return emu_{op}(gx, gy, bx, smem, {call});\n}}\n"
        )
    return "\n".join(parts)


def cxx() -> str | None:
    """A C++ compiler, if any."""
    return shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def build_emulator(directory: Path) -> ctypes.CDLL:
    """Compile the kernels for the CPU into ``directory`` as a library of ``emu_<kernel>`` drivers.

    ``PQ_EMULATOR_CXXFLAGS`` adds compiler flags (e.g. ``-fsanitize=address,undefined``).
    """
    compiler = cxx()
    if compiler is None:
        raise RuntimeError("no C++ compiler to build the CPU emulator of the kernels")
    directory = Path(directory)
    (directory / "polarquant_kernels.cu").write_text(SOURCE)
    (directory / "harness.cpp").write_text(harness_source())
    lib = directory / "libpq_emu.so"
    res = subprocess.run(
        [
            compiler,
            "-std=c++17",
            "-O1",
            "-shared",
            "-fPIC",
            "-ffp-contract=off",
            "-Wall",
            f"-I{directory}",
            *os.environ.get("PQ_EMULATOR_CXXFLAGS", "").split(),
            "-o",
            str(lib),
            str(directory / "harness.cpp"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    if res.returncode != 0:
        raise RuntimeError(f"the CPU emulator did not compile:\n{res.stderr}")
    return ctypes.CDLL(str(lib))


# ================================================================ the fake CuPy
FAKE_STATE: dict = {"device_stack": []}

#: The device the fake reports (an H100 SXM: 132 SMs), by ``cudaDeviceAttr``.
FAKE_LIMITS = {16: 132, 39: 2048, 81: 233472, 97: 232448}


def _current_device() -> int:
    stack = FAKE_STATE["device_stack"]
    return stack[-1] if stack else 0


class FakeArray(np.ndarray):
    """A NumPy array that claims to live on a CUDA device (``.device.id``)."""

    def __array_finalize__(self, obj):
        self._device_id = getattr(obj, "_device_id", 0)

    @property
    def device(self):
        return FakeDevice(self._device_id)


def _fake(a, device_id: int | None = None) -> FakeArray:
    out = a.view(FakeArray)
    out._device_id = _current_device() if device_id is None else int(device_id)
    return out


class FakeDevice:
    """``cupy.cuda.Device``: a context manager that makes its device the current one."""

    def __init__(self, device_id=0):
        self.id = int(device_id)

    def __enter__(self):
        FAKE_STATE["device_stack"].append(self.id)
        return self

    def __exit__(self, *exc):
        FAKE_STATE["device_stack"].pop()


@dataclass
class Launch:
    kernel: str
    grid: tuple
    block: tuple
    args: tuple
    shared_mem: int
    device: int | None


_SCALAR_TYPES = {"int": np.int32, "long long": np.int64, "unsigned long long": np.uint64}
_CTYPES = {
    "int": ctypes.c_int32,
    "long long": ctypes.c_int64,
    "unsigned long long": ctypes.c_uint64,
}
_POINTER_DTYPES = {
    "float": np.float32,
    "double": np.float64,
    "unsigned char": np.uint8,
    "int": np.int32,
    "unsigned int": np.uint32,
}


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
        device = stack[-1] if stack else None
        self.fake.launches.append(Launch(self.name, grid, block, args, shared_mem, device))
        assert isinstance(grid, tuple) and isinstance(block, tuple) and isinstance(args, tuple)
        assert all(type(g) is int and g >= 1 for g in grid), grid
        assert all(type(b) is int and b >= 1 for b in block), block
        assert len(grid) <= 2 and len(block) == 1
        assert block[0] <= 1024 and block[0] % 32 == 0
        assert shared_mem <= self._max_dynamic, "launch above the opted-in shared memory"
        ctypes_args = self._check_args(args, 0 if device is None else device)
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
            assert rc == 0, f"{self.name}: the emulator refused the launch: {EMULATOR_ERRORS[rc]}"

    def _check_args(self, args, device: int) -> list:
        params = SIGNATURES[self.name]
        assert len(args) == len(params), (self.name, len(args), len(params))
        out = []
        for a, p in zip(args, params, strict=True):
            if p.pointer:
                assert isinstance(a, FakeArray), (self.name, p, type(a))
                assert a.flags.c_contiguous, (self.name, p)
                base = p.ctype.replace("const", "").replace("*", "").strip()
                assert a.dtype == _POINTER_DTYPES[base], (self.name, p, a.dtype)
                assert a._device_id == device, (self.name, p, a._device_id, device)
                out.append(ctypes.c_void_p(a.ctypes.data))
            else:
                assert type(a) is _SCALAR_TYPES[p.ctype], (self.name, p, type(a))
                out.append(_CTYPES[p.ctype](int(a)))
        return out


class FakeRawModule:
    def __init__(self, fake, code=None, options=()):
        assert code == SOURCE and options == _launch.COMPILE_OPTIONS
        self.fake = fake
        fake.modules_built += 1

    def get_function(self, name):
        k = FakeKernel(self.fake, name)
        self.fake.kernels[name] = k
        return k


def _fill_empty(shape, dtype):
    dtype = np.dtype(dtype)
    fill = np.nan if dtype.kind == "f" else 0xAB
    return _fake(np.full(shape, fill, dtype=dtype))


def _ascontiguousarray(a):
    return _fake(np.ascontiguousarray(a), getattr(a, "_device_id", None))


def make_fake_cupy(emulator=None):
    """A NumPy-backed stand-in for the parts of CuPy the backend uses.

    Its kernels record their launches in ``fake.launches`` and run them on
    ``emulator`` (:func:`build_emulator`) if one is given.
    """
    fake = types.SimpleNamespace()
    fake.ndarray = FakeArray
    fake.launches, fake.kernels, fake.modules_built, fake.emulator = [], {}, 0, emulator
    fake.asarray = lambda a, dtype=None: _fake(np.array(a, dtype=dtype))
    fake.empty = _fill_empty
    fake.zeros = lambda shape, dtype: _fake(np.zeros(shape, dtype=dtype))
    fake.ascontiguousarray = _ascontiguousarray
    fake.argsort = lambda a, axis=-1: _fake(np.argsort(a, axis=axis, kind="stable"))  # as CuPy's
    fake.take_along_axis = lambda a, i, axis: _fake(np.take_along_axis(a, i, axis=axis))
    fake.where = lambda cond, a, b: _fake(np.where(cond, a, b))
    fake.RawModule = lambda code=None, options=(): FakeRawModule(fake, code, options)
    runtime = types.SimpleNamespace(
        deviceGetAttribute=lambda attr, dev: FAKE_LIMITS[attr], getDevice=_current_device
    )
    fake.cuda = types.SimpleNamespace(runtime=runtime, Device=FakeDevice)
    return fake


def install_fake_cupy(monkeypatch, emulator=None):
    """Replace CuPy by a fresh fake (until ``monkeypatch`` undoes it); returns the fake.

    Also makes ``plan.constant(name, like, dtype)`` of a :class:`FakeArray`
    a :class:`FakeArray` on ``like``'s device, cached per device: what
    ``array_api_compat``'s CuPy namespace gives for CuPy arrays (to it a
    FakeArray is a NumPy array, which would get host constants).
    """
    fake = make_fake_cupy(emulator)
    monkeypatch.setattr(_launch, "get_cupy", lambda: fake)
    real_host_to_like, real_device = _array.host_to_like, _array.array_device

    def host_to_like(host, like, dtype=None):
        if not isinstance(like, FakeArray):
            return real_host_to_like(host, like, dtype)
        if dtype is None:
            dtype = np.float64 if like.dtype == np.float64 else np.float32
        return _fake(np.array(host, dtype=dtype), like._device_id)

    def array_device(x):
        return f"fake cuda:{x._device_id}" if isinstance(x, FakeArray) else real_device(x)

    monkeypatch.setattr(_array, "host_to_like", host_to_like)
    monkeypatch.setattr(_array, "array_device", array_device)
    _launch.clear_caches()
    return fake


def dev(a, device_id: int = 0) -> FakeArray:
    """A host array as a fake device array (on device ``device_id``; 0-d arrays stay 0-d)."""
    a = np.asarray(a)
    return _fake(a if a.flags.c_contiguous else a.copy(order="C"), device_id)


def host(a) -> np.ndarray:
    """A fake device array as a plain NumPy array."""
    return np.asarray(a).view(np.ndarray)
