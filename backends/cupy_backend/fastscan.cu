/*
 * Fast scan (Andre et al., VLDB 2015; FAISS's IndexPQFastScan): byte tables over the block layout
 * of polarquant.fastscan (32 vectors side by side, byte j of vector v at blocks[b][j][v]).
 *
 * Mirrors polarquant.backends.numpy_backend.fastscan_sums and .fastscan_topk (whose keys are
 * polarquant.fastscan.scan_keys); held to them by tests/test_cuda.py (emulated on the CPU, and on
 * a device under the gpu mark) and tests/test_backends.py.  Host side: fastscan.py.
 *
 *   kernel            reference operation   what one CUDA thread does
 *   ----------------  --------------------  -------------------------------------------------
 *   fastscan_sums     fastscan_sums         one vector's integer sum sum_g tq[g][h_g] for one
 *                                           query: the query's byte tables (nibbles x 16
 *                                           bytes) staged in shared memory, the block's bytes
 *                                           read by the 32 lanes of a warp side by side (one
 *                                           32-byte transaction per byte of the vectors)
 *   fastscan_keys     fastscan_topk         the same sum, then the key scale (S + bias) +
 *                                           weight shift in float32, in the reference's order
 *                                           (-inf unless finite: no candidate); the host keeps
 *                                           the c largest with CuPy's stable argsort
 *
 * The sums are exact in 32-bit integers whatever the dimension (the CPU kernels' uint16 groups
 * are a register-width matter that does not arise here).
 */
#include "common.cuh"

/* The integer sum of vector i: byte j of the vector at blocks[((i / 32) * nbytes + j) * 32 + i % 32]
 * holds nibbles 2j (high) and 2j + 1 (low); table[g * 16 + h] is nibble g's entry h. */
PQ_HD unsigned int fastscan_sum(const unsigned char* blocks, int nbytes, long long i,
                                const unsigned char* table) {
    const unsigned char* col = blocks + (i >> 5) * 32LL * nbytes + (i & 31);
    unsigned int acc = 0;
    for (int j = 0; j < nbytes; ++j) {
        const unsigned int byte = col[32LL * j];
        acc += table[32 * j + (byte >> 4)] + table[32 * j + 16 + (byte & 15)];
    }
    return acc;
}

/* -inf without a header (NVRTC has none): an overflow, exact in IEEE arithmetic. */
PQ_HD float fastscan_neg_inf() {
    const float big = 3.0e38f;
    return -(big * big);
}

/* The ranking key of polarquant.fastscan.scan_keys, one float32 rounding per operation. */
PQ_HD float fastscan_key(unsigned int sum, float bias, float scale, float weight, float shift,
                         int has_shift) {
    float key = scale * (static_cast<float>(sum) + bias);
    if (has_shift) key = key + weight * shift;
    return key - key == 0.0f ? key : fastscan_neg_inf();  // NaN or +-inf: no candidate
}

/* Every vector i = start, start + step, ... < n of query qi (tables of that query in `table`). */
PQ_HD void fastscan_sums_range(const unsigned char* blocks, long long n, int nbytes,
                               const unsigned char* table, unsigned int* out, long long start,
                               long long step) {
    for (long long i = start; i < n; i += step) out[i] = fastscan_sum(blocks, nbytes, i, table);
}

PQ_HD void fastscan_keys_range(const unsigned char* blocks, long long n, int nbytes,
                               const unsigned char* table, float bias, const float* scale,
                               float weight, const float* shift, int has_shift, float* out,
                               long long start, long long step) {
    for (long long i = start; i < n; i += step)
        out[i] = fastscan_key(fastscan_sum(blocks, nbytes, i, table), bias, scale[i], weight,
                              has_shift ? shift[i] : 0.0f, has_shift);
}

/* ================================================================ CUDA kernels */
#if defined(__CUDACC__)

/* Query qi's tables into shared memory (2 nbytes x 16 bytes), between two barriers. */
__device__ __forceinline__ const unsigned char* fastscan_stage(const unsigned char* tq,
                                                               long long qi, int nbytes) {
    unsigned char* table = pq_smem;
    __syncthreads();  // nobody still reads the previous query's tables
    stage(table, tq + qi * 32LL * nbytes, 32 * nbytes, threadIdx.x, blockDim.x);
    __syncthreads();
    return table;
}

extern "C" __global__ void fastscan_sums(const unsigned char* tq, long long nq,
                                         const unsigned char* blocks, long long n, int nbytes,
                                         unsigned int* out) {
    for (long long qi = blockIdx.y; qi < nq; qi += gridDim.y) {
        const unsigned char* table = fastscan_stage(tq, qi, nbytes);
        fastscan_sums_range(blocks, n, nbytes, table, out + qi * n, pq_thread_id(),
                            pq_thread_count());
    }
}

extern "C" __global__ void fastscan_keys(const unsigned char* tq, long long nq,
                                         const unsigned char* blocks, long long n, int nbytes,
                                         const float* bias, const float* scale,
                                         const float* weight, const float* shift, int has_shift,
                                         float* out) {
    for (long long qi = blockIdx.y; qi < nq; qi += gridDim.y) {
        const unsigned char* table = fastscan_stage(tq, qi, nbytes);
        fastscan_keys_range(blocks, n, nbytes, table, bias[qi], scale, weight[qi], shift,
                            has_shift, out + qi * n, pq_thread_id(), pq_thread_count());
    }
}

#endif /* __CUDACC__ */
