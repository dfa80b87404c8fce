/*
 * Sign bits (QJL Def. 2.1; TurboQuant Alg. 2, line 6): one bit per sketch coordinate.
 *
 * Mirrors polarquant.backends.numpy_backend.sign_encode, .sign_values and .sign_score; held
 * to them by tests/test_cuda.py (emulated on the CPU, and on a device under the gpu mark) and
 * tests/test_backends.py.  Host side: sign.py.
 *
 *   kernel (x = f32 | f64)        reference operation     what one CUDA thread does
 *   ----------------------------  ----------------------  ------------------------------------------
 *   sign_encode_x                 sign_encode             one output byte of 8 sign bits
 *   sign_values_x                 sign_values             one output value +-1
 *   sign_score_lut_x              sign_score              as scalar_score_lut with codebook {-1, +1}
 *   sign_score_gather_x           sign_score              +-s_i per bit (tables too large for shared)
 *
 * Sign bits are packed by one thread per output byte (8 comparisons), which yields the
 * canonical MSB-first byte directly; a __ballot_sync version would need __brev and a byte split.
 */
#include "common.cuh"

template <typename T>
PQ_HD void sign_encode_range(const T* p, long long rows, int m, unsigned char* out, long long start,
                             long long step) {
    const int nbytes = packed_nbytes(m, 1);
    const long long total = rows * nbytes;
    for (long long t = start; t < total; t += step) {
        const long long row = t / nbytes;
        const int j = static_cast<int>(t - row * nbytes);
        const T* prow = p + row * m;
        out[t] = pack_byte(j, m, 1, [=](int i) { return prow[i] >= T(0) ? 1u : 0u; });
    }
}

template <typename T>
PQ_HD void sign_values_range(const unsigned char* packed, long long rows, int m, T* out,
                             long long start, long long step) {
    const int nbytes = packed_nbytes(m, 1);
    const long long total = rows * m;
    for (long long t = start; t < total; t += step) {
        const long long row = t / m;
        const int i = static_cast<int>(t - row * m);
        out[t] = read_code(packed + row * nbytes, i, 1) ? T(1) : T(-1);
    }
}

/* One entry of the byte table of a query s: bit 1 -> +s_i, bit 0 -> -s_i. */
template <typename T>
PQ_HD T sign_lut_entry(const T* s, int m, int v, int j) {
    T acc = T(0);
    for (int k = 0; k < 8; ++k) {
        const int i = 8 * j + k;
        if (i < m) acc += ((v >> (7 - k)) & 1) ? s[i] : -s[i];
    }
    return acc;
}

/* Fill table[v * stride + j] (256 byte values, stride >= nbytes; columns j >= nbytes are 0). */
template <typename T>
PQ_HD void sign_lut_build(T* table, const T* s, int m, int stride, int tid, int nthreads) {
    const int nbytes = packed_nbytes(m, 1);
    for (int e = tid; e < 256 * stride; e += nthreads) {
        const int v = e / stride, j = e - (e / stride) * stride;
        table[e] = j < nbytes ? sign_lut_entry(s, m, v, j) : T(0);
    }
}

template <typename T>
PQ_HD T sign_gather_row_partial(const unsigned char* prow, const T* s, int m, int sub, int group) {
    T acc = T(0);
    for (int i = sub; i < m; i += group) acc += read_code(prow, i, 1) ? s[i] : -s[i];
    return acc;
}

/* ================================================================ CUDA kernels */
#if defined(__CUDACC__)

template <typename T>
__device__ void sign_encode_kernel(const T* p, long long rows, int m, unsigned char* out) {
    sign_encode_range(p, rows, m, out, pq_thread_id(), pq_thread_count());
}

template <typename T>
__device__ void sign_values_kernel(const unsigned char* packed, long long rows, int m, T* out) {
    sign_values_range(packed, rows, m, out, pq_thread_id(), pq_thread_count());
}

template <typename T>
__device__ void sign_score_lut_kernel(const T* s, long long nq, const unsigned char* packed,
                                      long long rows, int m, int stride, int group, T* out) {
    T* table = reinterpret_cast<T*>(pq_smem);
    const int nbytes = packed_nbytes(m, 1);
    for (long long qi = blockIdx.y; qi < nq; qi += gridDim.y) {
        __syncthreads();  // nobody still reads the previous query's table
        sign_lut_build(table, s + qi * m, m, stride, threadIdx.x, blockDim.x);
        __syncthreads();
        score_row_groups(rows, group, out + qi * rows, [=](long long row, int sub) {
            return lut_row_partial(packed + row * nbytes, nbytes, table, stride, sub, group);
        });
    }
}

template <typename T>
__device__ void sign_score_gather_kernel(const T* s, long long nq, const unsigned char* packed,
                                         long long rows, int m, int group, T* out) {
    const int nbytes = packed_nbytes(m, 1);
    for (long long qi = blockIdx.y; qi < nq; qi += gridDim.y) {
        const T* srow = s + qi * m;
        score_row_groups(rows, group, out + qi * rows, [=](long long row, int sub) {
            return sign_gather_row_partial(packed + row * nbytes, srow, m, sub, group);
        });
    }
}

/* ---------------------------------------------------------------- extern "C" entry points */
extern "C" __global__ void sign_encode_f32(const float* p, long long rows, int m, unsigned char* out) {
    sign_encode_kernel(p, rows, m, out);
}
extern "C" __global__ void sign_encode_f64(const double* p, long long rows, int m,
                                           unsigned char* out) {
    sign_encode_kernel(p, rows, m, out);
}

extern "C" __global__ void sign_values_f32(const unsigned char* packed, long long rows, int m,
                                           float* out) {
    sign_values_kernel(packed, rows, m, out);
}
extern "C" __global__ void sign_values_f64(const unsigned char* packed, long long rows, int m,
                                           double* out) {
    sign_values_kernel(packed, rows, m, out);
}

extern "C" __global__ void sign_score_lut_f32(const float* s, long long nq, const unsigned char* packed,
                                              long long rows, int m, int stride, int group,
                                              float* out) {
    sign_score_lut_kernel(s, nq, packed, rows, m, stride, group, out);
}
extern "C" __global__ void sign_score_lut_f64(const double* s, long long nq,
                                              const unsigned char* packed, long long rows, int m,
                                              int stride, int group, double* out) {
    sign_score_lut_kernel(s, nq, packed, rows, m, stride, group, out);
}

extern "C" __global__ void sign_score_gather_f32(const float* s, long long nq,
                                                 const unsigned char* packed, long long rows, int m,
                                                 int group, float* out) {
    sign_score_gather_kernel(s, nq, packed, rows, m, group, out);
}
extern "C" __global__ void sign_score_gather_f64(const double* s, long long nq,
                                                 const unsigned char* packed, long long rows, int m,
                                                 int group, double* out) {
    sign_score_gather_kernel(s, nq, packed, rows, m, group, out);
}

#endif /* __CUDACC__ */
