/*
 * polarquant CUDA kernels, compiled at run time by CuPy (cupy.RawModule, NVRTC, -std=c++17).
 *
 * Each kernel mirrors one operation of the reference backend
 * (backends/numpy_backend.py) and must give the same packed bytes (canonical
 * layout of polarquant/packing.py: per row an MSB-first bit stream of b-bit
 * codes padded with zero bits to a whole byte; sign bit 1 for value >= 0;
 * cell index = number of boundaries <= x, i.e. searchsorted side="right")
 * and the same values within float tolerance.
 *
 *   kernel (x = f32 | f64)        reference operation     what one CUDA thread does
 *   ----------------------------  ----------------------  ------------------------------------------
 *   scalar_encode_x               scalar_encode           one output byte: binary search of the
 *                                                         (1 to 8) codes it holds, boundaries in
 *                                                         shared memory
 *   scalar_values_x               scalar_values           one output value: c[code]
 *   scalar_score_lut_x            scalar_score            per query, a table T[v][j] (byte value v at
 *                                 (bits 1, 2, 4, 8)       byte position j) in shared memory; a group
 *                                                         of lanes sums one row's table lookups
 *   scalar_score_gather_x         scalar_score            a group of lanes sums q_i c[code_i] of one
 *                                 (any bits)              row (centroids in shared memory)
 *   sign_encode_x                 sign_encode             one output byte of 8 sign bits
 *   sign_values_x                 sign_values             one output value +-1
 *   sign_score_lut_x              sign_score              as scalar_score_lut with codebook {-1, +1}
 *   sign_score_gather_x           sign_score              +-s_i per bit (tables too large for shared)
 *   polar_encode_x                polar_encode            a thread block per row: the level loop of
 *                                                         polar.polar_transform in shared memory,
 *                                                         then one thread per output byte
 *   polar_values_x                polar_values            one level-1 pair (2 outputs): radius times
 *                                                         the cos/sin path from level L down to 1
 *   polar_score_x                 polar_score             a group of lanes sums <q, pair> of one row,
 *                                                         never writing the decoded row
 *   scalar_weighted_sum_x         scalar_weighted_sum     one coordinate j of the block's run of rows,
 *                                                         for PQ_WS_TILE weight rows at once:
 *                                                         sum_r w[i, r] c[code_rj] in registers, then
 *                                                         one atomicAdd per (i, j) into the zeroed output
 *   polar_weighted_sum_x          polar_weighted_sum      the same for one level-1 pair (2 coordinates)
 *                                                         of the block's rows, decoded as polar_values
 *
 * Float kernels come as two extern "C" variants (_f32, _f64) of one C++
 * template, rather than templates fetched with name_expressions: the names
 * stay unmangled, so nvcc -ptx shows them and the tests can check that every
 * name the host code asks for exists.
 *
 * Layout of this file: everything a thread computes is in PQ_HD
 * (__host__ __device__) functions whose loops take (start, step) or
 * (tid, nthreads) and a barrier; the __global__ kernels at the end only stage
 * shared memory and pass their thread coordinates.  Compiled as plain C++
 * (no __CUDACC__: tests/test_cuda.py) the same functions run on the CPU,
 * which is how the kernels are checked against the reference on a machine
 * without a GPU.
 *
 * Launch contract (planned by _launch.py): every loop is grid-stride, so any
 * grid is correct and the host caps it by the device.  Score kernels need
 * blockDim.x a multiple of 32 and `group` a power of two <= 32 (lanes per row);
 * they take queries on gridDim.y (looping past 65535).  Dynamic shared memory
 * sizes are the host's job (formulas mirrored in _launch.py and checked by the
 * CPU emulation).  Polar kernels take one pointer per level (PQ_MAX_LEVELS of
 * them), NULL past the last level.  Sign bits are packed by one thread per
 * output byte (8 comparisons), which yields the canonical MSB-first byte
 * directly; a __ballot_sync version would need __brev and a byte split.
 *
 * Weighted-sum kernels split the rows into one contiguous run per block (gridDim.x; any
 * grid is correct), take weight rows PQ_WS_TILE at a time on gridDim.y (looping past
 * 65535) and add each block's partial sums to the output with atomicAdd (double atomicAdd
 * needs sm_60 or later): the output must be zeroed, and the order of the additions, hence
 * the last bits of the sums, varies from run to run.
 *
 * Index widths: per-row sizes (codes, bytes, dimensions) are int (the host
 * checks n * bits < 2**31); row counts, flat element indices and strides are
 * long long, so rows * n may exceed 2**31.
 */

#if defined(__CUDACC__)
#define PQ_HD __host__ __device__ __forceinline__
#define PQ_UNROLL _Pragma("unroll")
#else
#include <cmath>
#define PQ_HD inline
#define PQ_UNROLL
#endif

#define PQ_MAX_LEVELS 16

/* Level pointers travel as PQ_MAX_LEVELS separate kernel arguments (unused ones NULL):
 * CuPy passes scalars and arrays, not structs. */
#define PQ_LEVEL_PARAMS(type, p)                                                               \
    type p##0, type p##1, type p##2, type p##3, type p##4, type p##5, type p##6, type p##7,     \
        type p##8, type p##9, type p##10, type p##11, type p##12, type p##13, type p##14,      \
        type p##15
#define PQ_LEVEL_ARRAY(p)                                                                      \
    {p##0, p##1, p##2, p##3, p##4, p##5, p##6, p##7, p##8, p##9, p##10, p##11, p##12, p##13,  \
     p##14, p##15}

/* ---------------------------------------------------------------- math in the data dtype */
PQ_HD float pq_atan2(float y, float x) { return atan2f(y, x); }
PQ_HD double pq_atan2(double y, double x) { return atan2(y, x); }
PQ_HD float pq_hypot(float a, float b) { return hypotf(a, b); }
PQ_HD double pq_hypot(double a, double b) { return hypot(a, b); }
PQ_HD float pq_cos(float a) { return cosf(a); }
PQ_HD double pq_cos(double a) { return cos(a); }
PQ_HD float pq_sin(float a) { return sinf(a); }
PQ_HD double pq_sin(double a) { return sin(a); }

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

template <typename T>
PQ_HD void stage(T* dst, const T* src, int count, int tid, int nthreads) {
    for (int i = tid; i < count; i += nthreads) dst[i] = src[i];
}

/* ---------------------------------------------------------------- scalar codebooks */
/* scalar_encode: flat byte indices t = start, start + step, ... of the (rows, nbytes) output. */
template <typename T>
PQ_HD void scalar_encode_range(const T* y, long long rows, int n, const T* bnd, int nbnd, int bits,
                               unsigned char* out, long long start, long long step) {
    const int nbytes = packed_nbytes(n, bits);
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

/* The same for sign bits: bit 1 -> +s_i, bit 0 -> -s_i. */
template <typename T>
PQ_HD T sign_lut_entry(const T* s, int m, int v, int j) {
    T acc = T(0);
    for (int k = 0; k < 8; ++k) {
        const int i = 8 * j + k;
        if (i < m) acc += ((v >> (7 - k)) & 1) ? s[i] : -s[i];
    }
    return acc;
}

/* Fill table[v * stride + j] (256 byte values, stride >= nbytes; columns j >= nbytes are 0).
 * Byte value major: the lanes of a group read consecutive j, hence distinct banks. */
template <typename T>
PQ_HD void scalar_lut_build(T* table, const T* q, int n, int bits, const T* cents, int stride,
                            int tid, int nthreads) {
    const int nbytes = packed_nbytes(n, bits);
    for (int e = tid; e < 256 * stride; e += nthreads) {
        const int v = e / stride, j = e - (e / stride) * stride;
        table[e] = j < nbytes ? scalar_lut_entry(q, n, bits, cents, v, j) : T(0);
    }
}

template <typename T>
PQ_HD void sign_lut_build(T* table, const T* s, int m, int stride, int tid, int nthreads) {
    const int nbytes = packed_nbytes(m, 1);
    for (int e = tid; e < 256 * stride; e += nthreads) {
        const int v = e / stride, j = e - (e / stride) * stride;
        table[e] = j < nbytes ? sign_lut_entry(s, m, v, j) : T(0);
    }
}

/* Partial sums of one row by lane `sub` of a group of `group` lanes. */
template <typename T>
PQ_HD T lut_row_partial(const unsigned char* prow, int nbytes, const T* table, int stride, int sub,
                        int group) {
    T acc = T(0);
    for (int j = sub; j < nbytes; j += group) acc += table[static_cast<int>(prow[j]) * stride + j];
    return acc;
}

template <typename T>
PQ_HD T gather_row_partial(const unsigned char* prow, const T* q, int n, int bits, const T* cents,
                           int sub, int group) {
    T acc = T(0);
    for (int i = sub; i < n; i += group) acc += q[i] * cents[read_code(prow, i, bits)];
    return acc;
}

template <typename T>
PQ_HD T sign_gather_row_partial(const unsigned char* prow, const T* s, int m, int sub, int group) {
    T acc = T(0);
    for (int i = sub; i < m; i += group) acc += read_code(prow, i, 1) ? s[i] : -s[i];
    return acc;
}

/* ---------------------------------------------------------------- sign bits */
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

/* ---------------------------------------------------------------- the polar transform */
/* Level l (1-based) keeps its bit width in bits [4 (l - 1), 4 l) of one 64-bit word. */
PQ_HD int level_bits(unsigned long long bits_word, int level) {
    return static_cast<int>((bits_word >> (4 * (level - 1))) & 15ull);
}

/* Encoding plan of one block: where each level's boundaries sit (in shared memory)
 * and where its packed codes go. */
template <typename T>
struct PolarEncodeLevels {
    const T* bnd[PQ_MAX_LEVELS];
    unsigned char* out[PQ_MAX_LEVELS];
    int bits[PQ_MAX_LEVELS];
    int nbnd[PQ_MAX_LEVELS];
    int levels;
};

/* Decoding plan: each level's packed codes and the cos / sin of its centroids. */
template <typename T>
struct PolarCodes {
    const unsigned char* packed[PQ_MAX_LEVELS];
    const T* cos_t[PQ_MAX_LEVELS];
    const T* sin_t[PQ_MAX_LEVELS];
    int bits[PQ_MAX_LEVELS];
    int nbytes[PQ_MAX_LEVELS];
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

/* Fill the encoding plan (boundaries laid out from s_bnd) -- one thread. */
template <typename T>
PQ_HD void polar_encode_levels_init(PolarEncodeLevels<T>& lv, T* s_bnd, unsigned char* const* out,
                                    int levels, unsigned long long bits_word) {
    lv.levels = levels;
    int off = 0;
    for (int l = 1; l <= levels; ++l) {
        lv.bits[l - 1] = level_bits(bits_word, l);
        lv.nbnd[l - 1] = (1 << lv.bits[l - 1]) - 1;
        lv.bnd[l - 1] = s_bnd + off;
        lv.out[l - 1] = out[l - 1];
        off += lv.nbnd[l - 1];
    }
}

/* Copy every level's boundaries into the plan's shared slots -- all threads. */
template <typename T>
PQ_HD void polar_encode_stage_bnd(const PolarEncodeLevels<T>& lv, const T* const* bnd, int tid,
                                  int nthreads) {
    for (int l = 0; l < lv.levels; ++l)
        stage(const_cast<T*>(lv.bnd[l]), bnd[l], lv.nbnd[l], tid, nthreads);
}

/* One row of polar_encode by the threads tid, tid + nthreads, ... of a block, with a
 * barrier between phases.  Level 1 reads the input row (global memory), each level
 * writes its radii to the other work buffer (bufB: dim / 2 values, bufA: dim / 4),
 * its codes to `codes`; then the final radii and one byte per thread of each level.
 * Same arithmetic as polar.polar_transform: atan2 of (second, first) of each pair,
 * hypot for the radius. */
template <typename T, typename Sync>
PQ_HD void polar_encode_row(const T* yrow, int dim, const PolarEncodeLevels<T>& lv, T* bufA, T* bufB,
                            unsigned char* codes, T* radii_row, long long row, int tid, int nthreads,
                            Sync sync) {
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
        unsigned char* orow = lv.out[l - 1] + row * nbytes;
        const unsigned char* c = codes + code_off;
        for (int j = tid; j < nbytes; j += nthreads)
            orow[j] = pack_byte(j, cnt, bits, [=](int i) { return static_cast<unsigned int>(c[i]); });
        code_off += cnt;
    }
    sync();  // the next row reuses the buffers
}

/* Pair p (coordinates 2p, 2p + 1) of one row: the radius of its block times, level by
 * level from L down to 2, cos or sin of the angle on its path (sin for a second
 * child), then cos / sin of its level-1 angle: the loop of
 * polar.inverse_polar_transform, multiplied in the same order. */
template <typename T>
PQ_HD void polar_pair(const PolarCodes<T>& pc, long long row, const T* rrow, int p, T& x0, T& x1) {
    const int levels = pc.levels;
    T r = rrow[p >> (levels - 1)];
    for (int l = levels; l >= 2; --l) {
        const unsigned int c = read_code(pc.packed[l - 1] + row * pc.nbytes[l - 1], p >> (l - 1),
                                         pc.bits[l - 1]);
        r *= ((p >> (l - 2)) & 1) ? pc.sin_t[l - 1][c] : pc.cos_t[l - 1][c];
    }
    const unsigned int c = read_code(pc.packed[0] + row * pc.nbytes[0], p, pc.bits[0]);
    x0 = r * pc.cos_t[0][c];
    x1 = r * pc.sin_t[0][c];
}

/* Size of the cos / sin tables of every level (2 * sum 2**b_l values). */
PQ_HD int polar_trig_total(unsigned long long bits_word, int levels) {
    int total = 0;
    for (int l = 1; l <= levels; ++l) total += 2 << level_bits(bits_word, l);
    return total;
}

/* Fill the decoding plan (tables laid out in `tables`) -- one thread. */
template <typename T>
PQ_HD void polar_codes_init(PolarCodes<T>& pc, const unsigned char* const* packed, int dim, int levels,
                            unsigned long long bits_word, T* tables) {
    pc.levels = levels;
    int off = 0;
    for (int l = 1; l <= levels; ++l) {
        const int b = level_bits(bits_word, l);
        pc.packed[l - 1] = packed[l - 1];
        pc.bits[l - 1] = b;
        pc.nbytes[l - 1] = packed_nbytes(dim >> l, b);
        pc.cos_t[l - 1] = tables + off;
        pc.sin_t[l - 1] = tables + off + (1 << b);
        off += 2 << b;
    }
}

/* cos / sin of each level's centroids, in the data dtype (what the reference's
 * xp.cos(psi) computes); all threads of the block. */
template <typename T>
PQ_HD void polar_trig_build(const PolarCodes<T>& pc, const T* const* cents, int tid, int nthreads) {
    for (int l = 0; l < pc.levels; ++l) {
        T* cos_t = const_cast<T*>(pc.cos_t[l]);
        T* sin_t = const_cast<T*>(pc.sin_t[l]);
        for (int i = tid; i < (1 << pc.bits[l]); i += nthreads) {
            cos_t[i] = pq_cos(cents[l][i]);
            sin_t[i] = pq_sin(cents[l][i]);
        }
    }
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

/* The same for polar_weighted_sum: a thread takes level-1 pair p (coordinates 2p, 2p + 1),
 * decoded by polar_pair as in polar_values. */
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
 * a warp reaches every shuffle. */
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

/* ---------------------------------------------------------------- kernel bodies */
template <typename T>
__device__ void scalar_encode_kernel(const T* y, long long rows, int n, const T* bnd, int nbnd,
                                     int bits, unsigned char* out) {
    T* s_bnd = reinterpret_cast<T*>(pq_smem);
    stage(s_bnd, bnd, nbnd, threadIdx.x, blockDim.x);
    __syncthreads();
    scalar_encode_range(y, rows, n, s_bnd, nbnd, bits, out, pq_thread_id(), pq_thread_count());
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

template <typename T>
__device__ void sign_score_lut_kernel(const T* s, long long nq, const unsigned char* packed,
                                      long long rows, int m, int stride, int group, T* out) {
    T* table = reinterpret_cast<T*>(pq_smem);
    const int nbytes = packed_nbytes(m, 1);
    for (long long qi = blockIdx.y; qi < nq; qi += gridDim.y) {
        __syncthreads();
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

template <typename T>
__device__ void sign_encode_kernel(const T* p, long long rows, int m, unsigned char* out) {
    sign_encode_range(p, rows, m, out, pq_thread_id(), pq_thread_count());
}

template <typename T>
__device__ void sign_values_kernel(const unsigned char* packed, long long rows, int m, T* out) {
    sign_values_range(packed, rows, m, out, pq_thread_id(), pq_thread_count());
}

/* A block per row (blockIdx.x, + gridDim.x, ...). */
template <typename T>
__device__ void polar_encode_kernel(const T* y, long long rows, int dim, int levels,
                                    unsigned long long bits_word, const T* const* bnd,
                                    unsigned char* const* out, T* radii) {
    __shared__ PolarEncodeLevels<T> lv;
    const PolarEncodeShared<T> sh = polar_encode_shared<T>(pq_smem, dim, levels, bits_word);
    if (threadIdx.x == 0) polar_encode_levels_init(lv, sh.bnd, out, levels, bits_word);
    __syncthreads();
    polar_encode_stage_bnd(lv, bnd, threadIdx.x, blockDim.x);
    __syncthreads();
    const int nr = dim >> levels;
    for (long long row = blockIdx.x; row < rows; row += gridDim.x)
        polar_encode_row(y + row * dim, dim, lv, sh.bufA, sh.bufB, sh.codes, radii + row * nr, row,
                         static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x), BlockSync());
}

template <typename T>
__device__ void polar_codes_setup(PolarCodes<T>& pc, const unsigned char* const* packed,
                                  const T* const* cents, int dim, int levels,
                                  unsigned long long bits_word) {
    if (threadIdx.x == 0)
        polar_codes_init(pc, packed, dim, levels, bits_word, reinterpret_cast<T*>(pq_smem));
    __syncthreads();
    polar_trig_build(pc, cents, threadIdx.x, blockDim.x);
    __syncthreads();
}

template <typename T>
__device__ void polar_values_kernel(const T* radii, long long rows, int dim, int levels,
                                    unsigned long long bits_word, const unsigned char* const* packed,
                                    const T* const* cents, T* out) {
    __shared__ PolarCodes<T> pc;
    polar_codes_setup(pc, packed, cents, dim, levels, bits_word);
    polar_values_range(pc, radii, rows, dim, out, pq_thread_id(), pq_thread_count());
}

template <typename T>
__device__ void polar_score_kernel(const T* q, long long nq, const T* radii, long long rows, int dim,
                                   int levels, unsigned long long bits_word,
                                   const unsigned char* const* packed, const T* const* cents,
                                   int group, T* out) {
    __shared__ PolarCodes<T> pc;
    polar_codes_setup(pc, packed, cents, dim, levels, bits_word);
    for (long long qi = blockIdx.y; qi < nq; qi += gridDim.y) {
        const T* qrow = q + qi * dim;
        score_row_groups(rows, group, out + qi * rows, [&](long long row, int sub) {
            return polar_row_partial(pc, qrow, radii, row, dim, sub, group);
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

template <typename T>
__device__ void polar_weighted_sum_kernel(const T* w, long long nw, const T* radii, long long rows,
                                          int dim, int levels, unsigned long long bits_word,
                                          const unsigned char* const* packed,
                                          const T* const* cents, T* out) {
    __shared__ PolarCodes<T> pc;
    polar_codes_setup(pc, packed, cents, dim, levels, bits_word);
    long long start, stop;
    block_rows(rows, blockIdx.x, gridDim.x, start, stop);
    for (long long i0 = static_cast<long long>(blockIdx.y) * PQ_WS_TILE; i0 < nw;
         i0 += static_cast<long long>(gridDim.y) * PQ_WS_TILE)
        polar_weighted_sum_block(pc, w, nw, radii, rows, dim, out, i0, start, stop,
                                 static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x));
}

/* ---------------------------------------------------------------- extern "C" entry points */
extern "C" __global__ void scalar_encode_f32(const float* y, long long rows, int n, const float* bnd,
                                             int nbnd, int bits, unsigned char* out) {
    scalar_encode_kernel(y, rows, n, bnd, nbnd, bits, out);
}
extern "C" __global__ void scalar_encode_f64(const double* y, long long rows, int n, const double* bnd,
                                             int nbnd, int bits, unsigned char* out) {
    scalar_encode_kernel(y, rows, n, bnd, nbnd, bits, out);
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

extern "C" __global__ void polar_encode_f32(const float* y, long long rows, int dim, int levels,
                                            unsigned long long bits_word,
                                            PQ_LEVEL_PARAMS(const float*, bnd),
                                            PQ_LEVEL_PARAMS(unsigned char*, out), float* radii) {
    const float* const b[PQ_MAX_LEVELS] = PQ_LEVEL_ARRAY(bnd);
    unsigned char* const o[PQ_MAX_LEVELS] = PQ_LEVEL_ARRAY(out);
    polar_encode_kernel(y, rows, dim, levels, bits_word, b, o, radii);
}
extern "C" __global__ void polar_encode_f64(const double* y, long long rows, int dim, int levels,
                                            unsigned long long bits_word,
                                            PQ_LEVEL_PARAMS(const double*, bnd),
                                            PQ_LEVEL_PARAMS(unsigned char*, out), double* radii) {
    const double* const b[PQ_MAX_LEVELS] = PQ_LEVEL_ARRAY(bnd);
    unsigned char* const o[PQ_MAX_LEVELS] = PQ_LEVEL_ARRAY(out);
    polar_encode_kernel(y, rows, dim, levels, bits_word, b, o, radii);
}

extern "C" __global__ void polar_values_f32(const float* radii, long long rows, int dim, int levels,
                                            unsigned long long bits_word,
                                            PQ_LEVEL_PARAMS(const unsigned char*, packed),
                                            PQ_LEVEL_PARAMS(const float*, cents), float* out) {
    const unsigned char* const p[PQ_MAX_LEVELS] = PQ_LEVEL_ARRAY(packed);
    const float* const c[PQ_MAX_LEVELS] = PQ_LEVEL_ARRAY(cents);
    polar_values_kernel(radii, rows, dim, levels, bits_word, p, c, out);
}
extern "C" __global__ void polar_values_f64(const double* radii, long long rows, int dim, int levels,
                                            unsigned long long bits_word,
                                            PQ_LEVEL_PARAMS(const unsigned char*, packed),
                                            PQ_LEVEL_PARAMS(const double*, cents), double* out) {
    const unsigned char* const p[PQ_MAX_LEVELS] = PQ_LEVEL_ARRAY(packed);
    const double* const c[PQ_MAX_LEVELS] = PQ_LEVEL_ARRAY(cents);
    polar_values_kernel(radii, rows, dim, levels, bits_word, p, c, out);
}

extern "C" __global__ void polar_score_f32(const float* q, long long nq, const float* radii,
                                           long long rows, int dim, int levels,
                                           unsigned long long bits_word,
                                           PQ_LEVEL_PARAMS(const unsigned char*, packed),
                                           PQ_LEVEL_PARAMS(const float*, cents), int group,
                                           float* out) {
    const unsigned char* const p[PQ_MAX_LEVELS] = PQ_LEVEL_ARRAY(packed);
    const float* const c[PQ_MAX_LEVELS] = PQ_LEVEL_ARRAY(cents);
    polar_score_kernel(q, nq, radii, rows, dim, levels, bits_word, p, c, group, out);
}
extern "C" __global__ void polar_score_f64(const double* q, long long nq, const double* radii,
                                           long long rows, int dim, int levels,
                                           unsigned long long bits_word,
                                           PQ_LEVEL_PARAMS(const unsigned char*, packed),
                                           PQ_LEVEL_PARAMS(const double*, cents), int group,
                                           double* out) {
    const unsigned char* const p[PQ_MAX_LEVELS] = PQ_LEVEL_ARRAY(packed);
    const double* const c[PQ_MAX_LEVELS] = PQ_LEVEL_ARRAY(cents);
    polar_score_kernel(q, nq, radii, rows, dim, levels, bits_word, p, c, group, out);
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

extern "C" __global__ void polar_weighted_sum_f32(const float* w, long long nw, const float* radii,
                                                  long long rows, int dim, int levels,
                                                  unsigned long long bits_word,
                                                  PQ_LEVEL_PARAMS(const unsigned char*, packed),
                                                  PQ_LEVEL_PARAMS(const float*, cents),
                                                  float* out) {
    const unsigned char* const p[PQ_MAX_LEVELS] = PQ_LEVEL_ARRAY(packed);
    const float* const c[PQ_MAX_LEVELS] = PQ_LEVEL_ARRAY(cents);
    polar_weighted_sum_kernel(w, nw, radii, rows, dim, levels, bits_word, p, c, out);
}
extern "C" __global__ void polar_weighted_sum_f64(const double* w, long long nw,
                                                  const double* radii, long long rows, int dim,
                                                  int levels, unsigned long long bits_word,
                                                  PQ_LEVEL_PARAMS(const unsigned char*, packed),
                                                  PQ_LEVEL_PARAMS(const double*, cents),
                                                  double* out) {
    const unsigned char* const p[PQ_MAX_LEVELS] = PQ_LEVEL_ARRAY(packed);
    const double* const c[PQ_MAX_LEVELS] = PQ_LEVEL_ARRAY(cents);
    polar_weighted_sum_kernel(w, nw, radii, rows, dim, levels, bits_word, p, c, out);
}

#endif /* __CUDACC__ */
