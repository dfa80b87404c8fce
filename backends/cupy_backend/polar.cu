/*
 * The recursive polar transform (PolarQuant Sec. 3.1, Alg. 1) and its angle codes.
 *
 * Mirrors polarquant.backends.numpy_backend.polar_encode, .polar_values, .polar_score and
 * .polar_weighted_sum; held to them by tests/test_cuda.py (emulated on the CPU, and on a
 * device under the gpu mark) and tests/test_backends.py.  Host side: polar.py.
 *
 *   kernel (x = f32 | f64)        reference operation     what one CUDA thread does
 *   ----------------------------  ----------------------  ------------------------------------------
 *   polar_encode_x                polar_encode            a thread block per row: the level loop of
 *                                                         polar.polar_transform in shared memory,
 *                                                         then one thread per output byte
 *   polar_values_x                polar_values            one level-1 pair (2 outputs): radius times
 *                                                         the cos/sin path from level L down to 1
 *   polar_score_x                 polar_score             a group of lanes sums <q, pair> of one row,
 *                                                         never writing the decoded row
 *   polar_weighted_sum_x          polar_weighted_sum      one level-1 pair (2 coordinates) of the
 *                                                         block's run of rows, for PQ_WS_TILE weight
 *                                                         rows at once, decoded as polar_values, then
 *                                                         atomicAdd into the zeroed output
 *
 * One layout for the codes (polarquant.plan.PolarPlan): the angle codes of all levels of a
 * row are one byte array, `codes` of shape (rows, nbytes); level l (1-based) occupies bytes
 * offsets[l - 1] .. offsets[l] - 1 of its row, with offsets[levels] = nbytes.  The kernels
 * take that one pointer and the plan's offsets (a small int array of levels + 1 entries),
 * the bit widths packed 4 bits per level in one 64-bit word (hence at most PQ_MAX_LEVELS
 * levels), and the plan's per-level tables as one (levels, width) array each, level l in
 * row l - 1:
 *
 *   bnd          (levels, width)  the 2**b_l - 1 sorted boundaries of level l (polar_encode)
 *   cos_t, sin_t (levels, width)  cos and sin of the 2**b_l centroids of level l, computed
 *                                 on the host in the data dtype (PolarPlan.trig_tables): the
 *                                 reference's xp.cos(psi) of the decoded angles, bit for bit
 *
 * Departure from the reference: atan2 and hypot of the device may differ from NumPy's in the
 * last bit, so an angle within ~1e-6 of a boundary may take the neighbouring code.
 */
#include "common.cuh"

#define PQ_MAX_LEVELS 16

/* ---------------------------------------------------------------- math in the data dtype */
PQ_HD float pq_atan2(float y, float x) { return atan2f(y, x); }
PQ_HD double pq_atan2(double y, double x) { return atan2(y, x); }
PQ_HD float pq_hypot(float a, float b) { return hypotf(a, b); }
PQ_HD double pq_hypot(double a, double b) { return hypot(a, b); }

/* Level-1 angle of polar.polar_transform: atan2 mapped to [0, 2 pi), with the
 * ">= 2 pi -> 0" guard (a tiny negative angle plus 2 pi can round up to 2 pi).
 * 2 pi is rounded to T first, as NumPy does with the Python float 2 * math.pi. */
template <typename T>
PQ_HD T level1_angle(T a, T b) {
    const T two_pi = static_cast<T>(6.283185307179586476925286766559);
    T psi = pq_atan2(b, a);
    if (psi < T(0)) psi += two_pi;
    if (psi >= two_pi) psi = T(0);
    return psi;
}

/* Level l (1-based) keeps its bit width in bits [4 (l - 1), 4 l) of one 64-bit word. */
PQ_HD int level_bits(unsigned long long bits_word, int level) {
    return static_cast<int>((bits_word >> (4 * (level - 1))) & 15ull);
}

/* ---------------------------------------------------------------- encoding */
/* Encoding plan of one block: where each level's boundaries sit (in shared memory)
 * and where its codes go in a row. */
template <typename T>
struct PolarEncodeLevels {
    const T* bnd[PQ_MAX_LEVELS];
    int bits[PQ_MAX_LEVELS];
    int nbnd[PQ_MAX_LEVELS];
    int offset[PQ_MAX_LEVELS];
    int nbytes;
    int levels;
};

PQ_HD int polar_encode_bnd_total(unsigned long long bits_word, int levels) {
    int total = 0;
    for (int l = 1; l <= levels; ++l) total += (1 << level_bits(bits_word, l)) - 1;
    return total;
}

/* Dynamic shared memory of polar_encode, in this order: the work buffers bufB
 * (dim / 2 values) and bufA (dim / 4), the boundaries of every level, the codes of
 * every level (dim - dim / 2**L bytes). */
PQ_HD long long polar_encode_shared_bytes(int dim, int levels, unsigned long long bits_word,
                                          int itemsize) {
    const int values = (dim >> 1) + (dim >> 2) + polar_encode_bnd_total(bits_word, levels);
    return static_cast<long long>(values) * itemsize + (dim - (dim >> levels));
}

template <typename T>
struct PolarEncodeShared {
    T* bufB;
    T* bufA;
    T* bnd;
    unsigned char* codes;
};

template <typename T>
PQ_HD PolarEncodeShared<T> polar_encode_shared(unsigned char* base, int dim, int levels,
                                               unsigned long long bits_word) {
    PolarEncodeShared<T> sh;
    sh.bufB = reinterpret_cast<T*>(base);
    sh.bufA = sh.bufB + (dim >> 1);
    sh.bnd = sh.bufA + (dim >> 2);
    sh.codes = reinterpret_cast<unsigned char*>(sh.bnd + polar_encode_bnd_total(bits_word, levels));
    return sh;
}

/* Fill the encoding plan (boundaries laid out from s_bnd, byte offsets from the plan's
 * `offsets`) -- one thread. */
template <typename T>
PQ_HD void polar_encode_levels_init(PolarEncodeLevels<T>& lv, T* s_bnd, const int* offsets,
                                    int levels, unsigned long long bits_word) {
    lv.levels = levels;
    lv.nbytes = offsets[levels];
    int off = 0;
    for (int l = 1; l <= levels; ++l) {
        lv.bits[l - 1] = level_bits(bits_word, l);
        lv.nbnd[l - 1] = (1 << lv.bits[l - 1]) - 1;
        lv.bnd[l - 1] = s_bnd + off;
        lv.offset[l - 1] = offsets[l - 1];
        off += lv.nbnd[l - 1];
    }
}

/* Copy every level's boundaries (row l - 1 of the (levels, width) table `bnd`) into the
 * plan's shared slots -- all threads. */
template <typename T>
PQ_HD void polar_encode_stage_bnd(const PolarEncodeLevels<T>& lv, const T* bnd, int width, int tid,
                                  int nthreads) {
    for (int l = 0; l < lv.levels; ++l)
        stage(const_cast<T*>(lv.bnd[l]), bnd + static_cast<long long>(l) * width, lv.nbnd[l], tid,
              nthreads);
}

/* One row of polar_encode by the threads tid, tid + nthreads, ... of a block, with a
 * barrier between phases.  Level 1 reads the input row (global memory), each level
 * writes its radii to the other work buffer (bufB: dim / 2 values, bufA: dim / 4),
 * its codes to `codes` (shared); then the final radii and one byte per thread of each
 * level into the row's bytes `orow`.  Same arithmetic as polar.polar_transform: atan2
 * of (second, first) of each pair, hypot for the radius. */
template <typename T, typename Sync>
PQ_HD void polar_encode_row(const T* yrow, int dim, const PolarEncodeLevels<T>& lv, T* bufA, T* bufB,
                            unsigned char* codes, T* radii_row, unsigned char* orow, int tid,
                            int nthreads, Sync sync) {
    const T* src = yrow;
    T* dst = bufB;
    int code_off = 0;
    for (int l = 1; l <= lv.levels; ++l) {
        const int cnt = dim >> l;
        const T* bnd = lv.bnd[l - 1];
        const int nbnd = lv.nbnd[l - 1];
        for (int t = tid; t < cnt; t += nthreads) {
            const T a = src[2 * t], b = src[2 * t + 1];
            const T psi = l == 1 ? level1_angle(a, b) : pq_atan2(b, a);
            codes[code_off + t] = static_cast<unsigned char>(cell_index(psi, bnd, nbnd));
            dst[t] = pq_hypot(a, b);
        }
        sync();
        src = dst;
        dst = (dst == bufB) ? bufA : bufB;
        code_off += cnt;
    }
    const int nr = dim >> lv.levels;
    for (int t = tid; t < nr; t += nthreads) radii_row[t] = src[t];
    code_off = 0;
    for (int l = 1; l <= lv.levels; ++l) {
        const int cnt = dim >> l, bits = lv.bits[l - 1];
        const int nbytes = packed_nbytes(cnt, bits);
        unsigned char* out = orow + lv.offset[l - 1];
        const unsigned char* c = codes + code_off;
        for (int j = tid; j < nbytes; j += nthreads)
            out[j] = pack_byte(j, cnt, bits, [=](int i) { return static_cast<unsigned int>(c[i]); });
        code_off += cnt;
    }
    sync();  // the next row reuses the buffers
}

/* ---------------------------------------------------------------- decoding */
/* Decoding plan: where each level's codes sit in a row, and the cos / sin of its
 * centroids (in shared memory). */
template <typename T>
struct PolarCodes {
    const unsigned char* codes;
    const T* cos_t[PQ_MAX_LEVELS];
    const T* sin_t[PQ_MAX_LEVELS];
    int bits[PQ_MAX_LEVELS];
    int offset[PQ_MAX_LEVELS];
    int nbytes;
    int levels;
};

/* Size of the cos / sin tables of every level (2 * sum 2**b_l values). */
PQ_HD int polar_trig_total(unsigned long long bits_word, int levels) {
    int total = 0;
    for (int l = 1; l <= levels; ++l) total += 2 << level_bits(bits_word, l);
    return total;
}

/* Fill the decoding plan (tables laid out in `tables`) -- one thread. */
template <typename T>
PQ_HD void polar_codes_init(PolarCodes<T>& pc, const unsigned char* codes, const int* offsets,
                            int levels, unsigned long long bits_word, T* tables) {
    pc.codes = codes;
    pc.levels = levels;
    pc.nbytes = offsets[levels];
    int off = 0;
    for (int l = 1; l <= levels; ++l) {
        const int b = level_bits(bits_word, l);
        pc.bits[l - 1] = b;
        pc.offset[l - 1] = offsets[l - 1];
        pc.cos_t[l - 1] = tables + off;
        pc.sin_t[l - 1] = tables + off + (1 << b);
        off += 2 << b;
    }
}

/* Copy cos / sin of each level's centroids (row l - 1 of the (levels, width) tables) into
 * the plan's shared slots -- all threads of the block. */
template <typename T>
PQ_HD void polar_trig_stage(const PolarCodes<T>& pc, const T* cos_t, const T* sin_t, int width,
                            int tid, int nthreads) {
    for (int l = 0; l < pc.levels; ++l) {
        const long long row = static_cast<long long>(l) * width;
        stage(const_cast<T*>(pc.cos_t[l]), cos_t + row, 1 << pc.bits[l], tid, nthreads);
        stage(const_cast<T*>(pc.sin_t[l]), sin_t + row, 1 << pc.bits[l], tid, nthreads);
    }
}

/* Pair p (coordinates 2p, 2p + 1) of one row: the radius of its block times, level by
 * level from L down to 2, cos or sin of the angle on its path (sin for a second
 * child), then cos / sin of its level-1 angle: the loop of
 * polar.inverse_polar_transform, multiplied in the same order. */
template <typename T>
PQ_HD void polar_pair(const PolarCodes<T>& pc, long long row, const T* rrow, int p, T& x0, T& x1) {
    const int levels = pc.levels;
    const unsigned char* crow = pc.codes + row * pc.nbytes;
    T r = rrow[p >> (levels - 1)];
    for (int l = levels; l >= 2; --l) {
        const unsigned int c = read_code(crow + pc.offset[l - 1], p >> (l - 1), pc.bits[l - 1]);
        r *= ((p >> (l - 2)) & 1) ? pc.sin_t[l - 1][c] : pc.cos_t[l - 1][c];
    }
    const unsigned int c = read_code(crow + pc.offset[0], p, pc.bits[0]);
    x0 = r * pc.cos_t[0][c];
    x1 = r * pc.sin_t[0][c];
}

template <typename T>
PQ_HD void polar_values_range(const PolarCodes<T>& pc, const T* radii, long long rows, int dim, T* out,
                              long long start, long long step) {
    const int half = dim >> 1, nr = dim >> pc.levels;
    const long long total = rows * half;
    for (long long t = start; t < total; t += step) {
        const long long row = t / half;
        const int p = static_cast<int>(t - row * half);
        T x0, x1;
        polar_pair(pc, row, radii + row * nr, p, x0, x1);
        out[row * dim + 2 * p] = x0;
        out[row * dim + 2 * p + 1] = x1;
    }
}

template <typename T>
PQ_HD T polar_row_partial(const PolarCodes<T>& pc, const T* q, const T* radii, long long row, int dim,
                          int sub, int group) {
    const int half = dim >> 1;
    const T* rrow = radii + row * (dim >> pc.levels);
    T acc = T(0);
    for (int p = sub; p < half; p += group) {
        T x0, x1;
        polar_pair(pc, row, rrow, p, x0, x1);
        acc += q[2 * p] * x0 + q[2 * p + 1] * x1;
    }
    return acc;
}

/* Weight rows i0 .. i0 + PQ_WS_TILE - 1 (those < nw) over rows [start, stop), by thread tid
 * of nthreads: a thread takes level-1 pair p (coordinates 2p, 2p + 1), decoded by
 * polar_pair as in polar_values. */
template <typename T>
PQ_HD void polar_weighted_sum_block(const PolarCodes<T>& pc, const T* w, long long nw,
                                    const T* radii, long long rows, int dim, T* out, long long i0,
                                    long long start, long long stop, int tid, int nthreads) {
    const int half = dim >> 1, nr = dim >> pc.levels;
    if (half == 0) return;
    const int tile = nw - i0 < PQ_WS_TILE ? static_cast<int>(nw - i0) : PQ_WS_TILE;
    const WsLanes l = ws_lanes(half, tid, nthreads);
    if (l.lane >= l.lanes) return;
    for (int p = l.col; p < half; p += l.cols) {
        T acc0[PQ_WS_TILE], acc1[PQ_WS_TILE];
        PQ_UNROLL for (int k = 0; k < PQ_WS_TILE; ++k) acc0[k] = acc1[k] = T(0);
        for (long long row = start + l.lane; row < stop; row += l.lanes) {
            T x0, x1;
            polar_pair(pc, row, radii + row * nr, p, x0, x1);
            PQ_UNROLL for (int k = 0; k < PQ_WS_TILE; ++k) {
                if (k < tile) {
                    const T wk = w[(i0 + k) * rows + row];
                    acc0[k] += wk * x0;
                    acc1[k] += wk * x1;
                }
            }
        }
        PQ_UNROLL for (int k = 0; k < PQ_WS_TILE; ++k) {
            if (k < tile) {
                pq_atomic_add(out + (i0 + k) * dim + 2 * p, acc0[k]);
                pq_atomic_add(out + (i0 + k) * dim + 2 * p + 1, acc1[k]);
            }
        }
    }
}

/* ================================================================ CUDA kernels */
#if defined(__CUDACC__)

/* A block per row (blockIdx.x, + gridDim.x, ...). */
template <typename T>
__device__ void polar_encode_kernel(const T* y, long long rows, int dim, int levels,
                                    unsigned long long bits_word, const T* bnd, int width,
                                    const int* offsets, unsigned char* codes, T* radii) {
    __shared__ PolarEncodeLevels<T> lv;
    const PolarEncodeShared<T> sh = polar_encode_shared<T>(pq_smem, dim, levels, bits_word);
    if (threadIdx.x == 0) polar_encode_levels_init(lv, sh.bnd, offsets, levels, bits_word);
    __syncthreads();
    polar_encode_stage_bnd(lv, bnd, width, threadIdx.x, blockDim.x);
    __syncthreads();
    const int nr = dim >> levels;
    for (long long row = blockIdx.x; row < rows; row += gridDim.x)
        polar_encode_row(y + row * dim, dim, lv, sh.bufA, sh.bufB, sh.codes, radii + row * nr,
                         codes + row * lv.nbytes, static_cast<int>(threadIdx.x),
                         static_cast<int>(blockDim.x), BlockSync());
}

template <typename T>
__device__ void polar_codes_setup(PolarCodes<T>& pc, const int* offsets, const unsigned char* codes,
                                  const T* cos_t, const T* sin_t, int width, int levels,
                                  unsigned long long bits_word) {
    if (threadIdx.x == 0)
        polar_codes_init(pc, codes, offsets, levels, bits_word, reinterpret_cast<T*>(pq_smem));
    __syncthreads();
    polar_trig_stage(pc, cos_t, sin_t, width, threadIdx.x, blockDim.x);
    __syncthreads();
}

template <typename T>
__device__ void polar_values_kernel(const T* radii, long long rows, int dim, int levels,
                                    unsigned long long bits_word, const int* offsets,
                                    const unsigned char* codes, const T* cos_t, const T* sin_t,
                                    int width, T* out) {
    __shared__ PolarCodes<T> pc;
    polar_codes_setup(pc, offsets, codes, cos_t, sin_t, width, levels, bits_word);
    polar_values_range(pc, radii, rows, dim, out, pq_thread_id(), pq_thread_count());
}

template <typename T>
__device__ void polar_score_kernel(const T* q, long long nq, const T* radii, long long rows, int dim,
                                   int levels, unsigned long long bits_word, const int* offsets,
                                   const unsigned char* codes, const T* cos_t, const T* sin_t,
                                   int width, int group, T* out) {
    __shared__ PolarCodes<T> pc;
    polar_codes_setup(pc, offsets, codes, cos_t, sin_t, width, levels, bits_word);
    for (long long qi = blockIdx.y; qi < nq; qi += gridDim.y) {
        const T* qrow = q + qi * dim;
        score_row_groups(rows, group, out + qi * rows, [&](long long row, int sub) {
            return polar_row_partial(pc, qrow, radii, row, dim, sub, group);
        });
    }
}

/* A run of rows per block (blockIdx.x), weight rows PQ_WS_TILE at a time (blockIdx.y). */
template <typename T>
__device__ void polar_weighted_sum_kernel(const T* w, long long nw, const T* radii, long long rows,
                                          int dim, int levels, unsigned long long bits_word,
                                          const int* offsets, const unsigned char* codes,
                                          const T* cos_t, const T* sin_t, int width, T* out) {
    __shared__ PolarCodes<T> pc;
    polar_codes_setup(pc, offsets, codes, cos_t, sin_t, width, levels, bits_word);
    long long start, stop;
    block_rows(rows, blockIdx.x, gridDim.x, start, stop);
    for (long long i0 = static_cast<long long>(blockIdx.y) * PQ_WS_TILE; i0 < nw;
         i0 += static_cast<long long>(gridDim.y) * PQ_WS_TILE)
        polar_weighted_sum_block(pc, w, nw, radii, rows, dim, out, i0, start, stop,
                                 static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x));
}

/* ---------------------------------------------------------------- extern "C" entry points */
extern "C" __global__ void polar_encode_f32(const float* y, long long rows, int dim, int levels,
                                            unsigned long long bits_word, const float* bnd,
                                            int width, const int* offsets, unsigned char* codes,
                                            float* radii) {
    polar_encode_kernel(y, rows, dim, levels, bits_word, bnd, width, offsets, codes, radii);
}
extern "C" __global__ void polar_encode_f64(const double* y, long long rows, int dim, int levels,
                                            unsigned long long bits_word, const double* bnd,
                                            int width, const int* offsets, unsigned char* codes,
                                            double* radii) {
    polar_encode_kernel(y, rows, dim, levels, bits_word, bnd, width, offsets, codes, radii);
}

extern "C" __global__ void polar_values_f32(const float* radii, long long rows, int dim, int levels,
                                            unsigned long long bits_word, const int* offsets,
                                            const unsigned char* codes, const float* cos_t,
                                            const float* sin_t, int width, float* out) {
    polar_values_kernel(radii, rows, dim, levels, bits_word, offsets, codes, cos_t, sin_t, width,
                        out);
}
extern "C" __global__ void polar_values_f64(const double* radii, long long rows, int dim, int levels,
                                            unsigned long long bits_word, const int* offsets,
                                            const unsigned char* codes, const double* cos_t,
                                            const double* sin_t, int width, double* out) {
    polar_values_kernel(radii, rows, dim, levels, bits_word, offsets, codes, cos_t, sin_t, width,
                        out);
}

extern "C" __global__ void polar_score_f32(const float* q, long long nq, const float* radii,
                                           long long rows, int dim, int levels,
                                           unsigned long long bits_word, const int* offsets,
                                           const unsigned char* codes, const float* cos_t,
                                           const float* sin_t, int width, int group, float* out) {
    polar_score_kernel(q, nq, radii, rows, dim, levels, bits_word, offsets, codes, cos_t, sin_t,
                       width, group, out);
}
extern "C" __global__ void polar_score_f64(const double* q, long long nq, const double* radii,
                                           long long rows, int dim, int levels,
                                           unsigned long long bits_word, const int* offsets,
                                           const unsigned char* codes, const double* cos_t,
                                           const double* sin_t, int width, int group, double* out) {
    polar_score_kernel(q, nq, radii, rows, dim, levels, bits_word, offsets, codes, cos_t, sin_t,
                       width, group, out);
}

extern "C" __global__ void polar_weighted_sum_f32(const float* w, long long nw, const float* radii,
                                                  long long rows, int dim, int levels,
                                                  unsigned long long bits_word, const int* offsets,
                                                  const unsigned char* codes, const float* cos_t,
                                                  const float* sin_t, int width, float* out) {
    polar_weighted_sum_kernel(w, nw, radii, rows, dim, levels, bits_word, offsets, codes, cos_t,
                              sin_t, width, out);
}
extern "C" __global__ void polar_weighted_sum_f64(const double* w, long long nw,
                                                  const double* radii, long long rows, int dim,
                                                  int levels, unsigned long long bits_word,
                                                  const int* offsets, const unsigned char* codes,
                                                  const double* cos_t, const double* sin_t,
                                                  int width, double* out) {
    polar_weighted_sum_kernel(w, nw, radii, rows, dim, levels, bits_word, offsets, codes, cos_t,
                              sin_t, width, out);
}

#endif /* __CUDACC__ */
