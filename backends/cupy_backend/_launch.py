"""Host side of the CuPy backend: the compiled module, the device's limits, launch sizes, launches.

Nothing here computes on data.  It answers three questions for the entry
points (:mod:`.scalar`, :mod:`.sign`, :mod:`.polar`):

* **which code**: the CUDA sources (package data, read with
  :mod:`importlib.resources`) are :data:`SOURCES`: ``common.cuh`` (what the
  kernels share), then ``scalar.cu``, ``sign.cu``, ``polar.cu`` and ``fastscan.cu``, one
  file per algorithm.  :func:`kernel_source` concatenates them into one source
  string (each ``.cu`` file's ``#include "common.cuh"``, there for nvcc and
  editors, becomes a comment: the header is already above it), which is
  compiled once per process on first use with ``cupy.RawModule(code=...,
  options=("-std=c++17",))``.  One string rather than ``#include`` with an
  include path, because CuPy keys its kernel cache (``~/.cupy/kernel_cache``)
  by the source text: an edited header then recompiles.  Kernels are fetched
  by name with ``get_function`` and cached;
* **how many threads**: grid-stride loops everywhere, so the grid is capped
  by the device rather than by the problem: ``blocks = min(ceil(work /
  threads), 32 * SM count)`` for one-thread-per-element kernels, a block per
  row (same cap) for ``polar_encode``, and for the score kernels as many
  blocks as stay resident (threads and shared memory per SM), shared between
  the queries on ``gridDim.y``; the weighted-sum kernels likewise, with at
  least ``WS_MIN_ROWS`` rows per block and weight rows ``WS_TILE`` at a time
  on ``gridDim.y``;
* **how much shared memory**: per kernel, from the sizes the kernel lays out
  (the formulas mirror the ``.cu`` files); above the 48 KiB default a kernel is
  opted in (``max_dynamic_shared_size_bytes``) up to the device's limit.

``get_cupy`` is the only place that imports CuPy: importing this module needs
no CuPy, and the tests replace ``get_cupy`` with a NumPy-backed fake to check
every launch on a machine without a GPU (``tests/cuda_emulator.py``).
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass

import numpy as np

from .. import INSTALL_HINTS

#: Threads per block of the one-thread-per-element and score kernels.
THREADS = 256
#: Grid cap of the grid-stride kernels, in blocks per multiprocessor.
BLOCKS_PER_SM = 32
#: Most polar levels the kernels take: the bit widths travel 4 bits per level in one
#: 64-bit kernel argument (``PQ_MAX_LEVELS`` in ``polar.cu``).
MAX_LEVELS = 16
#: Dynamic shared memory a kernel may use without opting in.
DEFAULT_SHARED_BYTES = 48 * 1024
#: Static ``__shared__`` bytes of the polar kernels (at most 400 B, see ``ptxas -v``) plus margin.
STATIC_SHARED_BYTES = 1024
#: Largest byte table (256 entries per byte position, per query) the score kernels
#: build in shared memory; larger tables, and bit widths 3, 5, 6, 7, use the gather
#: kernels.  64 KiB keeps three table blocks resident per H100 SM (228 KiB).
LUT_MAX_SHARED_BYTES = 64 * 1024
#: Fewest rows for which the byte table pays for itself (each block builds
#: ``256 * stride`` entries per query: about the work of 256 rows).
LUT_MIN_ROWS = 1024
#: ``gridDim.y`` limit (queries beyond it loop inside the kernel).
MAX_GRID_Y = 65535
#: Weight rows one thread of a weighted-sum kernel accumulates at once (``PQ_WS_TILE``).
WS_TILE = 8
#: Fewest rows per block of a weighted-sum kernel: a block ends with one ``atomicAdd``
#: per output element it touches, worth it over 64 rows (as many loads per element).
WS_MIN_ROWS = 64

#: The CUDA sources, in the order they are compiled (one unit): shared helpers, then one file
#: per algorithm.
SOURCES = ("common.cuh", "scalar.cu", "sign.cu", "polar.cu", "fastscan.cu")
COMPILE_OPTIONS = ("-std=c++17",)

_OPERATIONS = (
    "scalar_encode",
    "scalar_values",
    "scalar_score_lut",
    "scalar_score_gather",
    "sign_encode",
    "sign_values",
    "sign_score_lut",
    "sign_score_gather",
    "polar_encode",
    "polar_values",
    "polar_score",
    "scalar_weighted_sum",
    "polar_weighted_sum",
)
#: Every kernel the host code may request (checked against the source by the tests).
KERNELS = tuple(f"{op}_{suffix}" for op in _OPERATIONS for suffix in ("f32", "f64")) + (
    "fastscan_sums",  # integers and float32 keys: one variant each
    "fastscan_keys",
)

# CUDA device attributes (cudaDeviceAttr values of driver_types.h).
_ATTRIBUTES = {
    "sm_count": 16,  # cudaDevAttrMultiProcessorCount
    "max_threads_per_sm": 39,  # cudaDevAttrMaxThreadsPerMultiProcessor
    "shared_per_sm": 81,  # cudaDevAttrMaxSharedMemoryPerMultiprocessor
    "shared_per_block_optin": 97,  # cudaDevAttrMaxSharedMemoryPerBlockOptin
}


def get_cupy():
    """The ``cupy`` module, imported on first use (the tests replace this function)."""
    try:
        import cupy
    except ImportError as exc:
        raise ImportError(
            f"the cupy backend needs the cupy package ({INSTALL_HINTS['cupy']})"
        ) from exc
    return cupy


def read_source(name: str) -> str:
    """The text of one file of :data:`SOURCES` (package data)."""
    return importlib.resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


_INCLUDE_COMMON = '#include "common.cuh"'


def kernel_source() -> str:
    """The CUDA C source of every kernel: the files of :data:`SOURCES`, concatenated.

    A ``.cu`` file's ``#include "common.cuh"`` becomes a comment (the header
    is the first file), so the result compiles with no include path.
    """
    parts = []
    for name in SOURCES:
        text = read_source(name)
        if name != SOURCES[0]:
            text = text.replace(_INCLUDE_COMMON, f"/* {_INCLUDE_COMMON}: {SOURCES[0]} is above */")
        parts.append(f"/* ======== {name} ======== */\n{text}")
    return "\n".join(parts)


# Caches keyed by id(cupy module): one entry per process with the real CuPy.
_modules: dict = {}  # -> RawModule (one per process)
_kernels: dict = {}  # (.., kernel name) -> kernel
_limits: dict = {}  # (.., device id) -> DeviceLimits
_opted_in: dict = {}  # (.., kernel name, device id) -> shared bytes allowed


def module():
    """The compiled ``RawModule`` (built lazily; CuPy compiles at the first ``get_function``)."""
    cp = get_cupy()
    mod = _modules.get(id(cp))
    if mod is None:
        mod = cp.RawModule(code=kernel_source(), options=COMPILE_OPTIONS)
        _modules[id(cp)] = mod
    return mod


def kernel(name: str):
    """Kernel ``name`` of the module (one of :data:`KERNELS`)."""
    if name not in KERNELS:
        raise KeyError(f"unknown kernel {name!r}")
    cp = get_cupy()
    k = _kernels.get((id(cp), name))
    if k is None:
        k = module().get_function(name)
        _kernels[(id(cp), name)] = k
    return k


@dataclass(frozen=True)
class DeviceLimits:
    """What the launch sizes depend on."""

    sm_count: int
    max_threads_per_sm: int
    shared_per_sm: int
    shared_per_block_optin: int


def device_limits(device_id: int) -> DeviceLimits:
    """The limits of CUDA device ``device_id`` (read once per device)."""
    cp = get_cupy()
    key = (id(cp), int(device_id))
    lim = _limits.get(key)
    if lim is None:
        rt = cp.cuda.runtime
        lim = DeviceLimits(
            **{k: int(rt.deviceGetAttribute(a, int(device_id))) for k, a in _ATTRIBUTES.items()}
        )
        _limits[key] = lim
    return lim


def clear_caches() -> None:
    """Forget compiled kernels and device limits (tests swap the CuPy module)."""
    _modules.clear()
    _kernels.clear()
    _limits.clear()
    _opted_in.clear()


# -- launch sizes (pure functions of the problem and the device) --------------------------------
def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    """Smallest power of two >= ``n`` (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def elementwise_grid(work: int, lim: DeviceLimits, threads: int = THREADS) -> int:
    """Blocks of a grid-stride kernel over ``work`` items: ``min(ceil(work / threads), 32 * SMs)``."""
    return max(1, min(ceil_div(work, threads), BLOCKS_PER_SM * lim.sm_count))


def rows_grid(rows: int, lim: DeviceLimits) -> int:
    """Blocks of a block-per-row kernel (grid-stride over rows)."""
    return max(1, min(rows, BLOCKS_PER_SM * lim.sm_count))


def group_size(elements: int) -> int:
    """Lanes that share one row in the score kernels: a power of two, at most a warp."""
    return min(32, next_pow2(elements))


def lut_stride(nbytes: int) -> int:
    """Columns of the byte table: ``nbytes`` rounded up to the group (bank-conflict free)."""
    g = group_size(nbytes)
    return ceil_div(nbytes, g) * g


def lut_shared_bytes(nbytes: int, itemsize: int) -> int:
    return 256 * lut_stride(nbytes) * itemsize


def use_lut(bits: int, nbytes: int, rows: int, itemsize: int, lim: DeviceLimits) -> bool:
    """Byte tables for 1, 2, 4, 8-bit codes when they fit and there are rows enough."""
    if 8 % bits or rows < LUT_MIN_ROWS or nbytes == 0:
        return False
    budget = min(LUT_MAX_SHARED_BYTES, lim.shared_per_block_optin - STATIC_SHARED_BYTES)
    return lut_shared_bytes(nbytes, itemsize) <= budget


def score_grid(
    rows: int, nq: int, group: int, shared: int, lim: DeviceLimits, threads: int = THREADS
) -> tuple[int, int]:
    """``(gridDim.x, gridDim.y)`` of a score kernel.

    Queries go on ``y`` (at most 65535; the kernel loops over the rest).  On
    ``x``: enough blocks for the rows (``threads / group`` rows per block and
    step), but no more than the resident blocks (limited by threads and shared
    memory per SM) divided among the ``y`` blocks, so that a block's per-query
    setup (its byte table) is amortised over many rows.
    """
    gy = max(1, min(nq, MAX_GRID_Y))
    per_sm = max(1, lim.max_threads_per_sm // threads)
    if shared:
        per_sm = max(1, min(per_sm, lim.shared_per_sm // (shared + STATIC_SHARED_BYTES)))
    resident = per_sm * lim.sm_count
    rows_per_block = threads // group
    gx = max(1, min(ceil_div(rows, rows_per_block), max(1, ceil_div(resident, gy))))
    return gx, gy


def weighted_sum_grid(
    rows: int, nw: int, lim: DeviceLimits, threads: int = THREADS
) -> tuple[int, int]:
    """``(gridDim.x, gridDim.y)`` of a weighted-sum kernel.

    Weight rows go on ``y``, ``WS_TILE`` per block (at most 65535 blocks; the
    kernel loops over the rest).  On ``x``: a contiguous run of at least
    ``WS_MIN_ROWS`` rows per block, and no more blocks than stay resident,
    divided among the ``y`` blocks.
    """
    gy = max(1, min(ceil_div(nw, WS_TILE), MAX_GRID_Y))
    resident = max(1, lim.max_threads_per_sm // threads) * lim.sm_count
    gx = max(1, min(ceil_div(rows, WS_MIN_ROWS), ceil_div(resident, gy)))
    return gx, gy


def polar_encode_threads(dim: int) -> int:
    """Threads of a ``polar_encode`` block: one per level-1 pair, 32 to 256."""
    return max(32, min(256, next_pow2(dim // 2)))


def level_bits_word(bits) -> np.uint64:
    """The per-level bit widths packed 4 bits each (level l in bits ``[4(l-1), 4l)``)."""
    word = 0
    for level, b in enumerate(bits):
        word |= int(b) << (4 * level)
    return np.uint64(word)


def polar_encode_shared_bytes(dim: int, bits, itemsize: int) -> int:
    """Work buffers (3 dim / 4), every level's boundaries, every level's codes (bytes)."""
    levels = len(bits)
    values = (dim >> 1) + (dim >> 2) + sum((1 << int(b)) - 1 for b in bits)
    return values * itemsize + dim - (dim >> levels)


def polar_trig_shared_bytes(bits, itemsize: int) -> int:
    """cos and sin of every level's centroids."""
    return sum(2 << int(b) for b in bits) * itemsize


# -- launching ------------------------------------------------------------------------------------
def check_shared(shared: int, device_id: int, what: str) -> None:
    """``ValueError`` if a launch would need more shared memory than the device has."""
    lim = device_limits(device_id)
    if shared + STATIC_SHARED_BYTES > lim.shared_per_block_optin:
        raise ValueError(
            f"{what} needs {shared} bytes of shared memory per block, more than this device "
            f"allows ({lim.shared_per_block_optin}); use a smaller dimension or the numpy backend"
        )


def launch(name: str, grid, block, args: tuple, shared_mem: int, device_id: int) -> None:
    """Run kernel ``name``; opt it in to more than 48 KiB of shared memory when needed."""
    k = kernel(name)
    if shared_mem > DEFAULT_SHARED_BYTES:
        key = (id(get_cupy()), name, int(device_id))
        if _opted_in.get(key, 0) < shared_mem:
            k.max_dynamic_shared_size_bytes = int(shared_mem)
            _opted_in[key] = int(shared_mem)
    k(tuple(grid), tuple(block), tuple(args), shared_mem=int(shared_mem))


def elementwise(name: str, work: int, args: tuple, shared: int, device_id: int) -> None:
    """Launch a one-thread-per-item grid-stride kernel over ``work`` items (none: no launch)."""
    if work == 0:
        return
    grid = (elementwise_grid(work, device_limits(device_id)),)
    launch(name, grid, (THREADS,), args, shared, device_id)


def scores(
    name: str, rows: int, nq: int, elements: int, head: tuple, out, shared: int, device_id: int
) -> None:
    """Launch a score kernel: ``group`` lanes per row over ``elements`` items per row.

    The kernel's arguments are ``head``, then ``group``, then ``out`` (``nq, rows``).
    """
    if rows == 0 or nq == 0 or elements == 0:
        return
    lim = device_limits(device_id)
    group = group_size(elements)
    grid = score_grid(rows, nq, group, shared, lim)
    launch(name, grid, (THREADS,), (*head, np.int32(group), out), shared, device_id)


def scores_lut_or_gather(
    kind: str,
    suffix: str,
    lut_bits: int,
    head: tuple,
    shape: tuple[int, int, int, int],
    gather_shared: int,
    out,
    itemsize: int,
    device_id: int,
) -> None:
    """Score with the per-query byte tables when they fit (1, 2, 4, 8 bits), else by gathering.

    ``kind`` is ``"scalar"`` or ``"sign"``, ``suffix`` the dtype's (``"f32"``);
    ``lut_bits`` the code width seen by :func:`use_lut` (1 for sign bits);
    ``shape`` is ``(rows, nq, nbytes, n)``.
    """
    rows, nq, nbytes, n = shape
    if rows and nq and n:
        lim = device_limits(device_id)
        if use_lut(lut_bits, nbytes, rows, itemsize, lim):
            stride = np.int32(lut_stride(nbytes))
            shared = lut_shared_bytes(nbytes, itemsize)
            name = f"{kind}_score_lut_{suffix}"
            scores(name, rows, nq, nbytes, (*head, stride), out, shared, device_id)
            return
    scores(f"{kind}_score_gather_{suffix}", rows, nq, n, head, out, gather_shared, device_id)


def weighted_sums(
    name: str, rows: int, nw: int, cols: int, args: tuple, out, shared: int, device_id: int
) -> None:
    """Launch a weighted-sum kernel adding into the zeroed ``out`` (empty problems: no launch)."""
    if rows == 0 or nw == 0 or cols == 0:
        return
    grid = weighted_sum_grid(rows, nw, device_limits(device_id))
    launch(name, grid, (THREADS,), (*args, out), shared, device_id)
