/*
 * polarquant CUDA kernels: what the scalar, sign and polar kernels share.
 *
 * The module CuPy compiles (cupy.RawModule, NVRTC, -std=c++17) is this header followed by
 * scalar.cu, sign.cu and polar.cu, concatenated in that order by _launch.kernel_source()
 * (one source string: CuPy's kernel cache is keyed by it, so an edit anywhere recompiles).
 * Each .cu file also includes this header, so that nvcc compiles it on its own.
 *
 * Canonical layout of polarquant/packing.py, which every kernel reads or writes: per row an
 * MSB-first bit stream of b-bit codes, padded with zero bits to a whole byte; sign bit 1 for
 * value >= 0; cell index = number of boundaries <= x (searchsorted side="right": ties go to
 * the upper cell, NaN to the last).
 *
 * Layout of every file: what a thread computes is in PQ_HD (__host__ __device__) functions
 * whose loops take (start, step) or (tid, nthreads) and a barrier; the __global__ kernels at
 * the end of each file (under __CUDACC__) only stage shared memory and pass their thread
 * coordinates.  Compiled as plain C++ (no __CUDACC__: tests/cuda_emulator.py) the same
 * functions run on the CPU, which is how the kernels are checked against the reference on a
 * machine without a GPU.
 *
 * Float kernels come as two extern "C" variants (_f32, _f64) of one C++ template, rather than
 * templates fetched with name_expressions: the names stay unmangled, so nvcc -ptx shows them
 * and the tests can check that every name the host code asks for exists.
 *
 * Launch contract (planned by _launch.py): every loop is grid-stride, so any grid is correct
 * and the host caps it by the device.  Score kernels need blockDim.x a multiple of 32 and
 * `group` a power of two <= 32 (lanes per row); they take queries on gridDim.y (looping past
 * 65535).  Weighted-sum kernels split the rows into one contiguous run per block (gridDim.x),
 * take weight rows PQ_WS_TILE at a time on gridDim.y (looping past 65535) and add each
 * block's partial sums to the output with atomicAdd (double atomicAdd needs sm_60 or later):
 * the output must be zeroed, and the order of the additions, hence the last bits of the sums,
 * varies from run to run.  Dynamic shared memory sizes are the host's job (formulas mirrored
 * in _launch.py and checked by the CPU emulation).
 *
 * Index widths: per-row sizes (codes, bytes, dimensions) are int (the plan keeps a row under
 * 2**31 bits: polarquant.plan.MAX_ROW_BITS); row counts, flat element indices and strides are
 * long long, so rows * n may exceed 2**31.
 */
#ifndef PQ_COMMON_CUH
#define PQ_COMMON_CUH

#if defined(__CUDACC__)
#define PQ_HD __host__ __device__ __forceinline__
#define PQ_UNROLL _Pragma("unroll")
#else
#include <cmath>
#define PQ_HD inline
#define PQ_UNROLL
#endif

/* ---------------------------------------------------------------- codes and bytes */
PQ_HD int packed_nbytes(int n, int bits) { return (n * bits + 7) >> 3; }

/* searchsorted(bnd, x, side="right"): the number of boundaries <= x (NaN -> nbnd, as NumPy). */
template <typename T>
PQ_HD int cell_index(T x, const T* bnd, int nbnd) {
    int lo = 0, hi = nbnd;
    while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (x < bnd[mid]) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}

/* Code i (bits wide) of one packed row: a 16-bit window covers any code, even one
 * that straddles two bytes (the second byte exists whenever the code reaches it). */
PQ_HD unsigned int read_code(const unsigned char* row, int i, int bits) {
    const int bit = i * bits;
    const int byte = bit >> 3, off = bit & 7;
    unsigned int w = static_cast<unsigned int>(row[byte]) << 8;
    if (off + bits > 8) w |= row[byte + 1];
    return (w >> (16 - off - bits)) & ((1u << bits) - 1u);
}

/* Byte j of the packed stream of n codes; code_at(i) gives code i.  Codes
 * floor(8j / b) .. floor((8j + 7) / b) overlap the byte; code i occupies stream
 * bits [i b, (i + 1) b), i.e. it is shifted left by 8 (j + 1) - (i + 1) b
 * (right when negative); bits of neighbouring bytes are masked off. */
template <typename CodeAt>
PQ_HD unsigned char pack_byte(int j, int n, int bits, CodeAt code_at) {
    const int first = (8 * j) / bits;
    int last = (8 * j + 7) / bits;
    if (last > n - 1) last = n - 1;
    unsigned int byte = 0;
    for (int i = first; i <= last; ++i) {
        const unsigned int c = code_at(i);
        const int shift = 8 * (j + 1) - (i + 1) * bits;
        byte |= shift >= 0 ? (c << shift) : (c >> (-shift));
    }
    return static_cast<unsigned char>(byte & 0xFFu);
}

/* Copy count values to (shared) memory by the threads tid, tid + nthreads, ... */
template <typename T>
PQ_HD void stage(T* dst, const T* src, int count, int tid, int nthreads) {
    for (int i = tid; i < count; i += nthreads) dst[i] = src[i];
}

/* ---------------------------------------------------------------- byte tables (scores) */
/* Partial sum of one row's table lookups by lane `sub` of a group of `group` lanes:
 * table[v * stride + j] is what byte value v at byte position j adds to the score
 * (scalar.cu and sign.cu build it; byte value major, so the lanes of a group read
 * consecutive j, hence distinct banks). */
template <typename T>
PQ_HD T lut_row_partial(const unsigned char* prow, int nbytes, const T* table, int stride, int sub,
                        int group) {
    T acc = T(0);
    for (int j = sub; j < nbytes; j += group) acc += table[static_cast<int>(prow[j]) * stride + j];
    return acc;
}

/* ---------------------------------------------------------------- weighted sums */
/* Weight rows a thread accumulates at once: each code it decodes serves that many. */
#define PQ_WS_TILE 8

/* *out += v: atomicAdd on the device (the blocks add their partial sums), a plain
 * addition in the CPU emulation (which runs the threads one after the other). */
template <typename T>
PQ_HD void pq_atomic_add(T* out, T v) {
#if defined(__CUDA_ARCH__)
    atomicAdd(out, v);
#else
    *out += v;
#endif
}

/* Rows [start, stop) of block `block` of `nblocks`: contiguous runs of ceil(rows / nblocks). */
PQ_HD void block_rows(long long rows, long long block, long long nblocks, long long& start,
                      long long& stop) {
    const long long per = (rows + nblocks - 1) / nblocks;
    start = block * per < rows ? block * per : rows;
    stop = start + per < rows ? start + per : rows;
}

/* Threads of a block over (columns, rows): thread tid takes column tid % cols (and every
 * cols-th one after it) of rows start + lane, + lanes, ...; cols = min(ncols, nthreads),
 * lanes = nthreads / cols; threads with lane >= lanes have nothing to do. */
struct WsLanes {
    int cols, lanes, col, lane;
};

PQ_HD WsLanes ws_lanes(int ncols, int tid, int nthreads) {
    WsLanes l;
    l.cols = ncols < nthreads ? ncols : nthreads;
    l.lanes = nthreads / l.cols;
    l.col = tid % l.cols;
    l.lane = tid / l.cols;
    return l;
}

/* ================================================================ CUDA only */
#if defined(__CUDACC__)

extern __shared__ __align__(16) unsigned char pq_smem[];

__device__ __forceinline__ long long pq_thread_id() {
    return static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ long long pq_thread_count() {
    return static_cast<long long>(gridDim.x) * blockDim.x;
}

/* Rows in groups of `group` lanes (a power of two <= 32; blockDim.x a multiple of 32):
 * lane `sub` of a group sums partial(row, sub), the group adds its lanes with xor
 * shuffles, lane 0 writes.  The loop bound depends on the warp only, so every lane of
 * a warp reaches every shuffle.  (The emulator's emu_row_groups walks the same rows.) */
template <typename T, typename Partial>
__device__ __forceinline__ void score_row_groups(long long rows, int group, T* out, Partial partial) {
    const int lane = threadIdx.x & 31;
    const int sub = lane & (group - 1);
    const int per_warp = 32 / group;
    const long long warp = pq_thread_id() >> 5;
    const long long nwarps = pq_thread_count() >> 5;
    for (long long base = warp * per_warp; base < rows; base += nwarps * per_warp) {
        const long long row = base + lane / group;
        T acc = row < rows ? partial(row, sub) : T(0);
        for (int off = group >> 1; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
        if (sub == 0 && row < rows) out[row] = acc;
    }
}

struct BlockSync {
    __device__ __forceinline__ void operator()() const { __syncthreads(); }
};

#endif /* __CUDACC__ */

#endif /* PQ_COMMON_CUH */
