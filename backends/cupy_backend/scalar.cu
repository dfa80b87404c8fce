/*
 * Scalar codebooks (TurboQuant Alg. 1, lines 3 and 7): one b-bit codebook for every coordinate.
 *
 * Mirrors polarquant.backends.numpy_backend.scalar_encode, .scalar_values, .scalar_score and
 * .scalar_weighted_sum; held to them by tests/test_cuda.py (emulated on the CPU, and on a
 * device under the gpu mark) and tests/test_backends.py.  Host side: scalar.py.
 *
 *   kernel (x = f32 | f64)        reference operation     what one CUDA thread does
 *   ----------------------------  ----------------------  ------------------------------------------
 *   scalar_encode_x               scalar_encode           one output byte: binary search of the
 *                                                         (1 to 8) codes it holds, the 2**b - 1
 *                                                         boundaries in shared memory
 *   scalar_values_x               scalar_values           one output value: c[code]
 *   scalar_score_lut_x            scalar_score            per query, a table T[v][j] (byte value v at
 *                                 (bits 1, 2, 4, 8)       byte position j) in shared memory; a group
 *                                                         of lanes sums one row's table lookups
 *   scalar_score_gather_x         scalar_score            a group of lanes sums q_i c[code_i] of one
 *                                 (any bits)              row (centroids in shared memory)
 *   scalar_weighted_sum_x         scalar_weighted_sum     one coordinate j of the block's run of rows,
 *                                                         for PQ_WS_TILE weight rows at once:
 *                                                         sum_r w[i, r] c[code_rj] in registers, then
 *                                                         one atomicAdd per (i, j) into the zeroed output
 *
 * A codebook of b bits has exactly 2**b centroids and 2**b - 1 sorted boundaries (the plan,
 * polarquant.plan.ScalarPlan, guarantees it), so the kernels take the bit width only.
 */
#include "common.cuh"

/* scalar_encode: flat byte indices t = start, start + step, ... of the (rows, nbytes) output. */
template <typename T>
PQ_HD void scalar_encode_range(const T* y, long long rows, int n, int bits, const T* bnd,
                               unsigned char* out, long long start, long long step) {
    const int nbytes = packed_nbytes(n, bits);
    const int nbnd = (1 << bits) - 1;
    const long long total = rows * nbytes;
    for (long long t = start; t < total; t += step) {
        const long long row = t / nbytes;
        const int j = static_cast<int>(t - row * nbytes);
        const T* yrow = y + row * n;
        out[t] = pack_byte(j, n, bits, [=](int i) {
            return static_cast<unsigned int>(cell_index(yrow[i], bnd, nbnd));
        });
    }
}

/* scalar_values: flat indices of the (rows, n) output; cents may be in shared memory. */
template <typename T>
PQ_HD void scalar_values_range(const unsigned char* packed, long long rows, int n, int bits,
                               const T* cents, T* out, long long start, long long step) {
    const int nbytes = packed_nbytes(n, bits);
    const long long total = rows * n;
    for (long long t = start; t < total; t += step) {
        const long long row = t / n;
        const int i = static_cast<int>(t - row * n);
        out[t] = cents[read_code(packed + row * nbytes, i, bits)];
    }
}

/* One entry of the byte table of a query q: sum over the 8 / bits codes that byte
 * value v holds at byte position j (codes past n, the padding, add nothing). */
template <typename T>
PQ_HD T scalar_lut_entry(const T* q, int n, int bits, const T* cents, int v, int j) {
    const int per = 8 / bits;
    const unsigned int mask = (1u << bits) - 1u;
    T acc = T(0);
    for (int k = 0; k < per; ++k) {
        const int i = j * per + k;
        if (i < n) acc += q[i] * cents[(static_cast<unsigned int>(v) >> (8 - bits * (k + 1))) & mask];
    }
    return acc;
}

/* Fill table[v * stride + j] (256 byte values, stride >= nbytes; columns j >= nbytes are 0). */
template <typename T>
PQ_HD void scalar_lut_build(T* table, const T* q, int n, int bits, const T* cents, int stride,
                            int tid, int nthreads) {
    const int nbytes = packed_nbytes(n, bits);
    for (int e = tid; e < 256 * stride; e += nthreads) {
        const int v = e / stride, j = e - (e / stride) * stride;
        table[e] = j < nbytes ? scalar_lut_entry(q, n, bits, cents, v, j) : T(0);
    }
}

/* Partial sum q_i c[code_i] of one row by lane `sub` of a group of `group` lanes. */
template <typename T>
PQ_HD T gather_row_partial(const unsigned char* prow, const T* q, int n, int bits, const T* cents,
                           int sub, int group) {
    T acc = T(0);
    for (int i = sub; i < n; i += group) acc += q[i] * cents[read_code(prow, i, bits)];
    return acc;
}

/* Weight rows i0 .. i0 + PQ_WS_TILE - 1 (those < nw) of scalar_weighted_sum over rows
 * [start, stop), by thread tid of nthreads: out[i, j] += sum_r w[i, r] c[code_rj]. */
template <typename T>
PQ_HD void scalar_weighted_sum_block(const T* w, long long nw, const unsigned char* packed,
                                     long long rows, int n, int bits, const T* cents, T* out,
                                     long long i0, long long start, long long stop, int tid,
                                     int nthreads) {
    if (n == 0) return;
    const int nbytes = packed_nbytes(n, bits);
    const int tile = nw - i0 < PQ_WS_TILE ? static_cast<int>(nw - i0) : PQ_WS_TILE;
    const WsLanes l = ws_lanes(n, tid, nthreads);
    if (l.lane >= l.lanes) return;
    for (int j = l.col; j < n; j += l.cols) {
        T acc[PQ_WS_TILE];
        PQ_UNROLL for (int k = 0; k < PQ_WS_TILE; ++k) acc[k] = T(0);
        for (long long row = start + l.lane; row < stop; row += l.lanes) {
            const T v = cents[read_code(packed + row * nbytes, j, bits)];
            PQ_UNROLL for (int k = 0; k < PQ_WS_TILE; ++k) {
                if (k < tile) acc[k] += w[(i0 + k) * rows + row] * v;
            }
        }
        PQ_UNROLL for (int k = 0; k < PQ_WS_TILE; ++k) {
            if (k < tile) pq_atomic_add(out + (i0 + k) * n + j, acc[k]);
        }
    }
}

/* ================================================================ CUDA kernels */
#if defined(__CUDACC__)

template <typename T>
__device__ void scalar_encode_kernel(const T* y, long long rows, int n, int bits, const T* bnd,
                                     unsigned char* out) {
    T* s_bnd = reinterpret_cast<T*>(pq_smem);
    stage(s_bnd, bnd, (1 << bits) - 1, threadIdx.x, blockDim.x);
    __syncthreads();
    scalar_encode_range(y, rows, n, bits, s_bnd, out, pq_thread_id(), pq_thread_count());
}

template <typename T>
__device__ void scalar_values_kernel(const unsigned char* packed, long long rows, int n, int bits,
                                     const T* cents, T* out) {
    T* s_c = reinterpret_cast<T*>(pq_smem);
    stage(s_c, cents, 1 << bits, threadIdx.x, blockDim.x);
    __syncthreads();
    scalar_values_range(packed, rows, n, bits, s_c, out, pq_thread_id(), pq_thread_count());
}

/* Queries over blockIdx.y; per query the block builds its table, then scans its rows. */
template <typename T>
__device__ void scalar_score_lut_kernel(const T* q, long long nq, const unsigned char* packed,
                                        long long rows, int n, int bits, const T* cents, int stride,
                                        int group, T* out) {
    T* table = reinterpret_cast<T*>(pq_smem);
    const int nbytes = packed_nbytes(n, bits);
    for (long long qi = blockIdx.y; qi < nq; qi += gridDim.y) {
        __syncthreads();  // nobody still reads the previous query's table
        scalar_lut_build(table, q + qi * n, n, bits, cents, stride, threadIdx.x, blockDim.x);
        __syncthreads();
        score_row_groups(rows, group, out + qi * rows, [=](long long row, int sub) {
            return lut_row_partial(packed + row * nbytes, nbytes, table, stride, sub, group);
        });
    }
}

template <typename T>
__device__ void scalar_score_gather_kernel(const T* q, long long nq, const unsigned char* packed,
                                           long long rows, int n, int bits, const T* cents, int group,
                                           T* out) {
    T* s_c = reinterpret_cast<T*>(pq_smem);
    stage(s_c, cents, 1 << bits, threadIdx.x, blockDim.x);
    __syncthreads();
    const int nbytes = packed_nbytes(n, bits);
    for (long long qi = blockIdx.y; qi < nq; qi += gridDim.y) {
        const T* qrow = q + qi * n;
        score_row_groups(rows, group, out + qi * rows, [=](long long row, int sub) {
            return gather_row_partial(packed + row * nbytes, qrow, n, bits, s_c, sub, group);
        });
    }
}

/* A run of rows per block (blockIdx.x), weight rows PQ_WS_TILE at a time (blockIdx.y). */
template <typename T>
__device__ void scalar_weighted_sum_kernel(const T* w, long long nw, const unsigned char* packed,
                                           long long rows, int n, int bits, const T* cents,
                                           T* out) {
    T* s_c = reinterpret_cast<T*>(pq_smem);
    stage(s_c, cents, 1 << bits, threadIdx.x, blockDim.x);
    __syncthreads();
    long long start, stop;
    block_rows(rows, blockIdx.x, gridDim.x, start, stop);
    for (long long i0 = static_cast<long long>(blockIdx.y) * PQ_WS_TILE; i0 < nw;
         i0 += static_cast<long long>(gridDim.y) * PQ_WS_TILE)
        scalar_weighted_sum_block(w, nw, packed, rows, n, bits, s_c, out, i0, start, stop,
                                  static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x));
}

/* ---------------------------------------------------------------- extern "C" entry points */
extern "C" __global__ void scalar_encode_f32(const float* y, long long rows, int n, int bits,
                                             const float* bnd, unsigned char* out) {
    scalar_encode_kernel(y, rows, n, bits, bnd, out);
}
extern "C" __global__ void scalar_encode_f64(const double* y, long long rows, int n, int bits,
                                             const double* bnd, unsigned char* out) {
    scalar_encode_kernel(y, rows, n, bits, bnd, out);
}

extern "C" __global__ void scalar_values_f32(const unsigned char* packed, long long rows, int n,
                                             int bits, const float* cents, float* out) {
    scalar_values_kernel(packed, rows, n, bits, cents, out);
}
extern "C" __global__ void scalar_values_f64(const unsigned char* packed, long long rows, int n,
                                             int bits, const double* cents, double* out) {
    scalar_values_kernel(packed, rows, n, bits, cents, out);
}

extern "C" __global__ void scalar_score_lut_f32(const float* q, long long nq,
                                                const unsigned char* packed, long long rows, int n,
                                                int bits, const float* cents, int stride, int group,
                                                float* out) {
    scalar_score_lut_kernel(q, nq, packed, rows, n, bits, cents, stride, group, out);
}
extern "C" __global__ void scalar_score_lut_f64(const double* q, long long nq,
                                                const unsigned char* packed, long long rows, int n,
                                                int bits, const double* cents, int stride, int group,
                                                double* out) {
    scalar_score_lut_kernel(q, nq, packed, rows, n, bits, cents, stride, group, out);
}

extern "C" __global__ void scalar_score_gather_f32(const float* q, long long nq,
                                                   const unsigned char* packed, long long rows, int n,
                                                   int bits, const float* cents, int group,
                                                   float* out) {
    scalar_score_gather_kernel(q, nq, packed, rows, n, bits, cents, group, out);
}
extern "C" __global__ void scalar_score_gather_f64(const double* q, long long nq,
                                                   const unsigned char* packed, long long rows, int n,
                                                   int bits, const double* cents, int group,
                                                   double* out) {
    scalar_score_gather_kernel(q, nq, packed, rows, n, bits, cents, group, out);
}

extern "C" __global__ void scalar_weighted_sum_f32(const float* w, long long nw,
                                                   const unsigned char* packed, long long rows,
                                                   int n, int bits, const float* cents, float* out) {
    scalar_weighted_sum_kernel(w, nw, packed, rows, n, bits, cents, out);
}
extern "C" __global__ void scalar_weighted_sum_f64(const double* w, long long nw,
                                                   const unsigned char* packed, long long rows,
                                                   int n, int bits, const double* cents,
                                                   double* out) {
    scalar_weighted_sum_kernel(w, nw, packed, rows, n, bits, cents, out);
}

#endif /* __CUDACC__ */
