r"""The Numba kernels behind :mod:`polarquant.backends.numba_backend`.

Each kernel computes, for every row of a C-contiguous batch, what the NumPy
reference (:mod:`polarquant.backends.numpy_backend`) computes with whole-array
operations, in one pass over the row and without batch-sized temporaries:

================================  =========================  ==========  =================================
kernel                            reference operation        fastmath    checked by (tests/test_backends)
================================  =========================  ==========  =================================
``scalar_encode_kernel``          ``scalar_encode``          none        ``test_op_bytes_identical``,
                                                                         ``test_op_decisions_on_boundaries``
``scalar_values_kernel``          ``scalar_values``,         none        ``test_op_values_and_scores``
                                  ``sign_values``
``byte_tables`` +                 ``scalar_score`` (1, 2,    score set   ``test_op_values_and_scores``
``scalar_score_kernel``           4, 8 bits),
                                  ``sign_score``
``code_tables`` +                 ``scalar_score`` (3, 5,    score set   ``test_op_values_and_scores``
``scalar_score_gather_kernel``    6, 7 bits)
``sign_encode_kernel``            ``sign_encode``            none        ``test_op_bytes_identical``
``polar_encode_kernel``           ``polar_encode``           none        ``test_op_bytes_identical``,
                                                                         ``test_codes_rarely_differ``
``polar_values_kernel``           ``polar_values``           none        ``test_op_values_and_scores``
``level1_tables`` +               ``polar_score``            score set   ``test_op_values_and_scores``,
``polar_score_kernel``,                                                  ``test_numba_polar_score_paths_agree``
or + ``level2_tables`` +
``polar_score_folded_kernel(b)``
``scalar_weighted_sum_kernel``    ``scalar_weighted_sum``    score set   ``test_op_weighted_sums``
``polar_weighted_sum_kernel``     ``polar_weighted_sum``     score set   ``test_op_weighted_sums``
================================  =========================  ==========  =================================

Every kernel is also run by ``test_quantizer_codes_identical`` (through the
five quantizers), ``test_tiny_ops`` / ``test_tiny_weighted_sums`` (also as plain
Python, with ``NUMBA_DISABLE_JIT=1``) and ``test_cross_backend_decode_and_score``.
"score set" is ``SCORE_FASTMATH`` below.

A sign bit is a 1-bit code whose codebook is ``(-1, +1)``: the entry points run
``sign_values`` and ``sign_score`` on the scalar kernels with that codebook.
``sign_encode`` has its own kernel because its decision ``p >= 0`` differs from
the codebook rule on NaN (the rule below sends NaN to the top cell, ``>= 0`` to
bit 0, as the reference does).

Conventions shared by every kernel
----------------------------------
* **Packed layout** (:mod:`polarquant.packing`): the ``b``-bit codes of a row are
  one bit stream, most significant bit first, padded with zero bits to a whole
  byte.  :func:`_pack` writes whole bytes for ``b`` in 1, 2, 4, 8 and otherwise
  keeps a bit accumulator and emits a byte whenever eight bits are pending;
  :func:`_unpack` reads whole bytes for ``b`` in 1, 2, 4, 8
  and the 16-bit window holding each code otherwise (3, 5, 6, 7 bits, where a
  code may straddle two bytes).
* **Cell index** (:func:`_search`): the number of boundaries ``<= x``, i.e.
  ``searchsorted(boundaries, x, side="right")``: ties go to the upper cell, NaN
  counts as larger than every boundary (as in NumPy).  The boundaries of a
  ``b``-bit level are padded with ``+inf`` to ``2**b - 1``; up to 4 bits every
  threshold is compared with every coordinate of the row and the passes counted,
  wider codes take ``b`` halving steps without branches, run over all the
  coordinates of a row at once (both vectorise); the result is capped at the true
  number of boundaries, which only matters for ``+inf``/NaN.
* **One pass per row**: a row's codes and angles live in a small scratch row
  (a few hundred bytes, in L1) between the search and the packing; nothing of
  the size of the batch is allocated besides the outputs.
* **Parallelism**: ``prange`` over ``nchunks`` contiguous chunks of rows (or over
  rows, for the kernels that need no scratch); a chunk writes only its own
  output rows (for the weighted sums, its own ``(nw, n)`` partial sum) and its
  own scratch, so there are no races.  The decode, score and weighted-sum
  kernels allocate their scratch once per chunk.  The encode kernels get theirs
  from the entry point, as ``(nchunks, size)`` arrays indexed ``[ch, j]``: with a
  buffer allocated inside the parallel loop (or a row view ``y[row]``) LLVM does
  not vectorise the search over a row, which then runs 3 to 7 times slower
  (measured).  Loop indices are Numba's 64-bit integers; codes in scratch are
  ``int32``.
* **fastmath**: a code is decided by comparisons, and in PolarQuant by the
  ``atan2``/``hypot`` that feed them.  The encode kernels use no fastmath flag at
  all, so they compare exactly the values they compute.  ``polar_values_kernel``
  and ``scalar_values_kernel`` use none either: their outputs equal the
  reference's bit for bit (TurboQuantProd and PolarQuantQJL sketch the residual
  ``x - decode(x)``, so identical decodes keep the residual's sign bits
  identical).  Only the score and weighted-sum kernels and the score table
  builders, whose float output is compared with a tolerance, enable
  ``SCORE_FASTMATH`` (no ``nnan``/``ninf``: NaN and Inf in a query or a weight
  still propagate).
* **Dtypes**: kernels are generic; the entry points pass float32 or float64
  arrays (one compilation per dtype) and sums run in the data's dtype, as in
  the reference's matrix products.

Departures from a literal transcription of the reference
--------------------------------------------------------
* Scores never decode a row to memory.  For 1, 2, 4 and 8 bits a per-query
  table ``T[j, v]`` (byte position ``j``, byte value ``v``) holds the sum over
  the codes packed in byte ``j`` of the query coordinate times the centroid;
  a row's score is the sum of its ``nbytes`` table entries (QJL Sec. 3,
  algorithms.md Sec. 2: "a 256-entry lookup table built once per query").
  Other widths use ``T[j, k] = q_j c_k`` and one lookup per code.
* Weighted sums (``w @ values``, the dual of a score) do decode rows, four at a
  time, into scratch that stays in L1, and add them, weighted, to one ``(nw, n)``
  accumulator per chunk of rows; the entry point adds the chunks' sums.  A
  1, 2, 4 or 8-bit row is decoded by copying, per packed byte, the values of its
  codes from a 256-entry table as 64-bit words (one 8-byte copy per byte of
  4-bit float32 codes, half the cost of storing the two floats); 3, 5, 6 and
  7-bit rows read each run of ``bits`` bytes (8 whole codes) as one integer.  A
  score-like table does not pay here: the outputs are ``n`` coordinates per
  weight row, not one number per row.
* PolarQuant scores fold the level-1 rotation into the query: with
  ``T1[j, k] = q_{2j} cos c_k + q_{2j+1} sin c_k`` the score of a row is
  ``sum_j r_j T1[j, k_j]`` over its level-1 radii ``r_j``, which are rebuilt
  from the radii and the codes of levels ``L..2`` (the tree minus its last
  level); the ``dim`` coordinates themselves are never formed.  With enough
  rows levels 1 and 2 are folded too (one lookup per level-2 node), and for
  ``L >= 4`` the level-2 radii come from the level-4 radii through one table
  of products for levels 4 and 3; that kernel is compiled once per
  combination of bit widths (:func:`polar_score_folded_kernel`), so that
  every code is read with constant shifts.
* float16 radii (the quantizers' storage) reach the polar kernels as their
  ``uint16`` bits and are decoded exactly in the kernels' pass over the rows
  (:func:`_load_radii`), instead of a whole-array cast before it.
* For float32 data the polar transform uses a polynomial ``atan2`` (the SLEEF
  ``atan2f`` reduction and minimax polynomial, at most ~3 ulp from the exact
  angle, as NumPy's own SIMD ``arctan2`` is) and ``hypot`` as
  ``sqrt(a**2 + b**2)`` in float64 rounded to float32 (exactly glibc's
  ``hypotf``, so the radii are the reference's).  Both vectorise; the libm
  ``atan2f`` call does not and would make encoding several times slower.  An
  angle within a few ulp of a boundary may therefore get the neighbouring code
  (as it may between two NumPy builds).  Float64 data uses libm ``atan2`` and
  ``hypot``.

Compile time
------------
Numba compiles a kernel once per combination of argument types (float32 or
float64; the number of PolarQuant levels, which is the length of the tuple of
level streams; float16 radii as ``uint16`` or float32/float64 radii) and keeps
it in its on-disk cache (``cache=True``: ``__pycache__`` next to this file, or
``NUMBA_CACHE_DIR``); ``polarquant warmup`` compiles the paper configurations
ahead of time.  A cold compilation costs about 1 to 5 CPU-seconds per kernel
(docs/backends.md), most of it in Numba's typing and lowering and in LLVM,
both proportional to the code the kernel holds once its helpers are inlined.
Hence:

* The helpers are inlined by Numba (``inline="always"``), which the hot loops
  need: compiled as separate functions instead (Numba's default), measured on
  1M x 128 rows, ``polar_values`` ran 2.3x, the folded PolarQuant score 2.0x,
  ``polar_encode`` 1.4x and the weighted sums 1.3-1.6x slower.
* The weighted sums inline their row decoder **once**: four rows are decoded
  through one call site (:func:`_scalar_rows`, or :func:`_rebuild` in a loop
  over the block) rather than five (four unrolled plus the tail).  That cut
  the cold compile of ``polar_weighted_sum_kernel`` from 31-62 to 5-13, and of
  ``scalar_weighted_sum_kernel`` from 11-27 to 4-11 CPU-seconds per signature
  (ranges over runs on a loaded 2-core machine; 4-6x less in each run), with
  run times unchanged (interleaved A/B on 1M x 128 rows, medians of 15 to 21
  runs: 0.96-1.03x, within the noise of the shared machine) and the same bits
  out.
* Other call sites stay repeated where merging them slows a hot loop: one
  call site for both stages of ``polar_encode_kernel`` (level 1, then levels
  2..L) measured 1.7x slower, and choosing buffers at run time, so that
  :func:`_rebuild` calls :func:`_load_radii` and :func:`_expand` once and the
  folded score calls :func:`_rebuild` once, 1.06-1.13x slower for the folded
  score.
"""

from __future__ import annotations

import math
import warnings

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

__all__ = [
    "CHUNKS",
    "SCORE_FASTMATH",
    "scalar_encode_kernel",
    "scalar_values_kernel",
    "byte_tables",
    "scalar_score_kernel",
    "code_tables",
    "scalar_score_gather_kernel",
    "sign_encode_kernel",
    "polar_encode_kernel",
    "polar_values_kernel",
    "level1_tables",
    "polar_score_kernel",
    "level2_tables",
    "polar_score_folded_kernel",
    "scalar_weighted_sum_kernel",
    "polar_weighted_sum_kernel",
]

#: Parallel chunks of rows per kernel call (at most; never more than the rows): each
#: is a contiguous run of rows with its own scratch, and ``prange`` shares the chunks
#: out between the threads.
CHUNKS = 64

#: Fast-math flags of the score kernels: reassociate sums (so that they vectorise
#: and keep several partial sums), contract ``a * b + c`` to FMA, reciprocal and
#: approximate-function freedoms, no signed zeros.  Never ``nnan``/``ninf``.
SCORE_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


def _kernel(**options):
    """``njit(cache=True, **options)``, without cache where no cache directory is writable.

    Numba keeps compiled kernels next to this file (``__pycache__``) or, on a
    read-only install, in the user's cache directory; if neither can be used it
    refuses ``cache=True`` with a ``RuntimeError`` at decoration time.  We then
    compile in memory (each process pays the compile time) and say so.
    """

    def wrap(fn):
        try:
            return njit(cache=True, **options)(fn)
        except RuntimeError as exc:  # pragma: no cover - depends on the file system
            warnings.warn(
                f"numba cannot cache {fn.__name__} ({exc}); compiling it in every process",
                stacklevel=2,
            )
            return njit(cache=False, **options)(fn)

    return wrap


# -- helpers, inlined into the kernels --------------------------------------------------------
@_kernel(inline="always")
def _chunk(rows, nchunks, ch):
    """Rows ``[start, stop)`` of chunk ``ch`` when ``rows`` are split into ``nchunks`` runs."""
    per = (rows + nchunks - 1) // nchunks
    return ch * per, min(rows, (ch + 1) * per)


@_kernel(inline="always")
def _search(x, row, count, boundaries, level, bits, code, ch):
    """``code[ch, j]`` = number of ``boundaries[level]`` that are ``<= x[row, j]``, ``j < count``.

    ``boundaries[level]`` holds the level's sorted thresholds padded with ``+inf``
    to at least ``2**bits - 1`` entries.  Up to 4 bits the ``2**bits - 1``
    thresholds are compared with every coordinate and the passes counted (loops
    over ``j`` that vectorise); wider codes take ``bits`` halving steps, all
    coordinates at once: after the step of size ``s`` each code is right to
    within ``s``.  Both give ``searchsorted(..., side="right")``.
    ``not (x < b)`` rather than ``b <= x``: the same on numbers, and NaN goes past
    every boundary, as in ``np.searchsorted``.  Written as one expression so that
    LLVM selects instead of branching.
    """
    for j in range(count):
        code[ch, j] = 0
    if bits <= 4:  # count the thresholds passed: 2**bits - 1 SIMD passes beat `bits` gathers
        for k in range((1 << bits) - 1):
            b = boundaries[level, k]
            for j in range(count):
                code[ch, j] += 0 if x[row, j] < b else 1
        return
    step = 1 << (bits - 1)
    while step > 0:
        for j in range(count):
            c = code[ch, j]
            code[ch, j] = c + (step if not (x[row, j] < boundaries[level, c + step - 1]) else 0)
        step >>= 1


@_kernel(inline="always")
def _pack(code, ch, count, cap, bits, out, row, start):
    """Write ``min(code[ch, j], cap)``, ``j < count``, as a ``bits``-wide stream at ``out[row, start:]``."""
    if 8 % bits == 0:  # whole codes per byte (1, 2, 4, 8 bits): each byte on its own
        per = 8 // bits
        full = count // per
        for k in range(full):
            byte = 0
            for t in range(per):
                byte = (byte << bits) | min(code[ch, per * k + t], cap)
            out[row, start + k] = byte
        rest = count - per * full
        if rest > 0:  # the last byte, padded with zero bits
            byte = 0
            for t in range(rest):
                byte = (byte << bits) | min(code[ch, per * full + t], cap)
            out[row, start + full] = byte << (bits * (per - rest))
        return
    pos = start
    acc = 0  # pending bits, the oldest the most significant
    nacc = 0  # how many are pending
    for j in range(count):
        acc = (acc << bits) | min(code[ch, j], cap)
        nacc += bits
        if nacc >= 8:
            nacc -= 8
            out[row, pos] = (acc >> nacc) & 0xFF
            pos += 1
            acc &= (1 << nacc) - 1
    if nacc > 0:  # the last byte, padded with zero bits
        out[row, pos] = (acc << (8 - nacc)) & 0xFF


@_kernel(inline="always")
def _unpack(packed, row, start, stop, count, bits, code):
    """``code[j]``, ``j < count``, from the ``bits``-wide stream in ``packed[row, start:stop]``.

    For 1, 2 and 4 bits whole bytes are unpacked, padding included, so ``code``
    needs ``count + 7`` entries.
    """
    if bits == 8:
        for j in range(count):
            code[j] = packed[row, start + j]
    elif bits == 4:
        for k in range(stop - start):
            byte = np.int32(packed[row, start + k])
            code[2 * k] = byte >> 4
            code[2 * k + 1] = byte & 15
    elif bits == 2:
        for k in range(stop - start):
            byte = np.int32(packed[row, start + k])
            code[4 * k] = byte >> 6
            code[4 * k + 1] = (byte >> 4) & 3
            code[4 * k + 2] = (byte >> 2) & 3
            code[4 * k + 3] = byte & 3
    elif bits == 1:
        for k in range(stop - start):
            byte = np.int32(packed[row, start + k])
            for t in range(8):
                code[8 * k + t] = (byte >> (7 - t)) & 1
    else:  # 3, 5, 6, 7 bits: the 16-bit window of the code's first byte and the next one
        mask = (1 << bits) - 1
        for j in range(count):
            bitpos = j * bits
            k = start + (bitpos >> 3)
            # past the end the code lies in byte k alone: reading byte k again is harmless
            window = (np.int32(packed[row, k]) << 8) | np.int32(packed[row, min(k + 1, stop - 1)])
            code[j] = (window >> (16 - (bitpos & 7) - bits)) & mask


def _atan2f(y, x):
    """``atan2(y, x)`` in float32 without branches (SLEEF ``atan2f``: reduction to ``[0, 1]``,
    odd minimax polynomial of degree 17, quadrant fix-up); at most ~3 ulp from the exact angle."""
    ax = abs(x)
    ay = abs(y)
    lo = min(ax, ay)
    hi = max(ax, ay)
    z = lo / hi if hi != 0 else np.float32(0.0)  # NaN stays NaN (and codes to the top cell)
    s = z * z
    u = np.float32(0.00282363896258175373077393)
    u = u * s + np.float32(-0.0159569028764963150024414)
    u = u * s + np.float32(0.0425049886107444763183594)
    u = u * s + np.float32(-0.0748900920152664184570312)
    u = u * s + np.float32(0.106347933411598205566406)
    u = u * s + np.float32(-0.142027363181114196777344)
    u = u * s + np.float32(0.199926957488059997558594)
    u = u * s + np.float32(-0.333331018686294555664062)
    t = u * s * z + z  # atan(z), z in [0, 1]
    t = np.float32(1.57079637050628662109375) - t if ay > ax else t  # atan(1/z) = pi/2 - atan(z)
    t = np.float32(3.1415927410125732421875) - t if x < 0 else t
    return -t if y < 0 else t


def _hypotf(a, b):
    """``hypot`` of two float32 as glibc's ``hypotf`` computes it: in float64, then rounded."""
    a64 = np.float64(a)
    b64 = np.float64(b)
    return np.float32(math.sqrt(a64 * a64 + b64 * b64))


def _polar_pair(a, b):
    """``(atan2(b, a), hypot(a, b))``: the angle and radius of one pair.

    float32 uses :func:`_atan2f` and :func:`_hypotf` (they vectorise; module
    docstring), float64 the C library.  The choice is made on the argument type
    when Numba compiles (the ``overload`` below), so the loops have no branch;
    run as Python (``NUMBA_DISABLE_JIT=1``) it is made here, on the value's type.
    """
    if isinstance(a, np.float32):
        return _atan2f(b, a), _hypotf(a, b)
    return math.atan2(b, a), math.hypot(a, b)


# compiled copies for the typed overload; LLVM inlines them (Numba-level inlining of
# these conditional expressions trips a Numba SSA check, so it is not requested)
_atan2f_jit = _kernel()(_atan2f)
_hypotf_jit = _kernel()(_hypotf)


if not numba.config.DISABLE_JIT:

    @overload(_polar_pair)
    def _polar_pair_typed(a, b):
        if a == types.float32 and b == types.float32:
            return lambda a, b: (_atan2f_jit(b, a), _hypotf_jit(a, b))
        return lambda a, b: (math.atan2(b, a), math.hypot(a, b))


# -- scalar codebooks (TurboQuant) --------------------------------------------------------------
@_kernel(parallel=True)
def scalar_encode_kernel(y, boundaries, count, bits, out, code):
    """Codes of ``y (rows, n)`` against ``boundaries[0]`` (``count`` thresholds padded with
    ``+inf``), packed into ``out (rows, nbytes)``.  Search then packing, row by row, the
    codes in the scratch argument ``code (nchunks, n)``; no fastmath."""
    rows, n = y.shape
    nchunks = min(rows, code.shape[0])
    for ch in prange(nchunks):
        start, stop = _chunk(rows, nchunks, ch)
        for row in range(start, stop):
            _search(y, row, n, boundaries, 0, bits, code, ch)
            _pack(code, ch, n, count, bits, out, row, 0)


@_kernel(parallel=True)
def scalar_values_kernel(packed, centroids, bits, out):
    """``out[row, j] = centroids[code_j]``: a gather, so exactly the reference's values."""
    rows, n = out.shape
    nbytes = packed.shape[1]
    nchunks = min(rows, CHUNKS)
    for ch in prange(nchunks):
        code = np.empty(8 * nbytes, dtype=np.int32)
        start, stop = _chunk(rows, nchunks, ch)
        for row in range(start, stop):
            _unpack(packed, row, 0, nbytes, n, bits, code)
            for j in range(n):
                out[row, j] = centroids[code[j]]


@_kernel(parallel=True, fastmath=SCORE_FASTMATH)
def byte_tables(q, centroids, bits, tables):
    """Per-query byte tables for ``bits`` in 1, 2, 4, 8: ``tables (nq, nbytes * 256)``.

    ``tables[i, 256 j + v] = sum_t q[i, per j + t] * centroids[sub-code t of v]``
    with ``per = 8 // bits`` codes per byte (sub-code ``t`` sits ``8 - bits (t+1)``
    bits up); codes past ``n = q.shape[1]`` (the padding of the last byte)
    contribute nothing.
    """
    nq, n = q.shape
    nbytes = tables.shape[1] // 256
    per = 8 // bits
    mask = (1 << bits) - 1
    for task in prange(nq * nbytes):
        i = task // nbytes
        j = task % nbytes
        for v in range(256):
            s = tables.dtype.type(0)
            for t in range(per):
                c = j * per + t
                if c < n:
                    s += q[i, c] * centroids[(v >> (8 - bits * (t + 1))) & mask]
            tables[i, 256 * j + v] = s


@_kernel(parallel=True, fastmath=SCORE_FASTMATH)
def scalar_score_kernel(tables, packed, out):
    """``out[i, row] = sum_j tables[i, 256 j + packed[row, j]]``: the score from packed bytes.

    Each byte of the compressed batch is read from memory once; the row stays
    in L1 across the queries.
    """
    nq = tables.shape[0]
    rows, nbytes = packed.shape
    for row in prange(rows):
        p = packed[row]
        for i in range(nq):
            t = tables[i]
            s = tables.dtype.type(0)
            for j in range(nbytes):
                s += t[256 * j + int(p[j])]  # int(): uint8 + 256 j overflows in Python mode
            out[i, row] = s


@_kernel(parallel=True, fastmath=SCORE_FASTMATH)
def code_tables(q, centroids, tables):
    """Per-query code tables for any width: ``tables[i, K j + k] = q[i, j] * centroids[k]``."""
    nq, n = q.shape
    ncodes = centroids.shape[0]
    for task in prange(nq * n):
        i = task // n
        j = task % n
        for k in range(ncodes):
            tables[i, ncodes * j + k] = q[i, j] * centroids[k]


@_kernel(parallel=True, fastmath=SCORE_FASTMATH)
def scalar_score_gather_kernel(tables, packed, bits, out):
    """``out[i, row] = sum_j tables[i, K j + code_j]`` (``K = 2**bits``): one lookup per code.

    For the widths whose codes straddle bytes (3, 5, 6, 7 bits); a row's codes
    are unpacked into scratch once and shared by the queries.
    """
    nq = tables.shape[0]
    rows, nbytes = packed.shape
    ncodes = 1 << bits
    n = tables.shape[1] // ncodes
    nchunks = min(rows, CHUNKS)
    for ch in prange(nchunks):
        code = np.empty(max(n, 1), dtype=np.int32)
        start, stop = _chunk(rows, nchunks, ch)
        for row in range(start, stop):
            _unpack(packed, row, 0, nbytes, n, bits, code)
            for i in range(nq):
                s = tables.dtype.type(0)
                for j in range(n):
                    s += tables[i, ncodes * j + code[j]]
                out[i, row] = s


# -- sign bits (QJL) -----------------------------------------------------------------------------
@_kernel(parallel=True)
def sign_encode_kernel(p, out):
    """Packed sign bits of ``p (rows, m)``: bit 1 for ``p >= 0`` (0 and -0 give 1, NaN 0).

    Eight comparisons per output byte; no fastmath (the comparison is the code).
    """
    rows, m = p.shape
    full = m // 8
    for row in prange(rows):
        for k in range(full):
            byte = 0
            for t in range(8):
                byte = (byte << 1) | (1 if p[row, 8 * k + t] >= 0 else 0)
            out[row, k] = byte
        if m % 8:
            byte = 0
            for t in range(8):
                c = 8 * full + t
                byte = (byte << 1) | (1 if c < m and p[row, c] >= 0 else 0)
            out[row, full] = byte


# -- the recursive polar transform (PolarQuant) -----------------------------------------------
@_kernel(parallel=True)
def polar_encode_kernel(y, boundaries, counts, bits, offsets, codes, radii, psi, ra, rb, code):
    """Polar transform, angle codes and radii of ``y (rows, dim)``, row by row.

    Level 1 pairs ``(y[2j], y[2j+1])``: ``psi = atan2(y[2j+1], y[2j])`` mapped to
    ``[0, 2 pi)`` exactly as :func:`polarquant.polar.polar_transform` does (add
    ``2 pi``, in the data's dtype, to negative angles, then send a sum that
    rounded up to ``2 pi`` to 0) and radius ``hypot(y[2j], y[2j+1])``; level
    ``l >= 2`` pairs the radii of level ``l - 1`` (angles in ``[0, pi/2]``), which
    alternate between the scratch rows ``ra[ch]`` and ``rb[ch]``.  Each level's
    angles (scratch ``psi[ch]``) are coded against ``boundaries[l-1]``
    (``counts[l-1]`` thresholds padded with ``+inf``) and packed at
    ``codes[row, offsets[l-1]:]``, ``bits[l-1]`` wide; the last level's radii go
    to ``radii[row]``.  The scratch ``psi``, ``ra``, ``rb`` and ``code`` are
    ``(nchunks, dim // 2)`` arguments, not local buffers: only then do the loops
    vectorise (measured: 3x slower with local buffers).  No fastmath.
    """
    rows, dim = y.shape
    levels = bits.shape[0]
    half = dim // 2
    two_pi = y.dtype.type(2.0 * math.pi)
    zero = y.dtype.type(0.0)
    nchunks = min(rows, psi.shape[0])
    for ch in prange(nchunks):
        start, stop = _chunk(rows, nchunks, ch)
        for row in range(start, stop):
            for j in range(half):
                t, r = _polar_pair(y[row, 2 * j], y[row, 2 * j + 1])
                ra[ch, j] = r
                t = t + two_pi if t < zero else t
                psi[ch, j] = zero if t >= two_pi else t  # a tiny negative angle + 2 pi rounded up
            _search(psi, ch, half, boundaries, 0, bits[0], code, ch)
            _pack(code, ch, half, counts[0], bits[0], codes, row, offsets[0])
            count = half
            for level in range(1, levels):
                count //= 2
                if level % 2 == 1:  # paper levels 2, 4, ...: radii from ra to rb
                    _pair_level(ra, rb, psi, ch, count)
                else:
                    _pair_level(rb, ra, psi, ch, count)
                _search(psi, ch, count, boundaries, level, bits[level], code, ch)
                _pack(code, ch, count, counts[level], bits[level], codes, row, offsets[level])
            for j in range(count):
                radii[row, j] = ra[ch, j] if levels % 2 == 1 else rb[ch, j]


#: ``2**112``: a float16's magnitude bits shifted into a float32's place, times this, is its value.
_HALF_SCALE = 5.192296858534828e33


@_kernel(inline="always")
def _load_radii(radii, row, dst, count):
    """Row ``row`` of the stored radii into ``dst[:count]`` (the working dtype).

    ``radii`` holds float32/float64 radii, or the ``uint16`` bits of float16
    radii (2-byte items; the test is a constant when Numba compiles).  Those are
    decoded exactly, as NumPy's cast: the sign moves to bit 31 and the other 15
    bits 13 up, which is the float32 of the value times ``2**-112`` for zeros,
    subnormals and normal numbers alike (multiplied back, exactly, by
    :data:`_HALF_SCALE`); exponent 31 (Inf, NaN) becomes float32's 255, mantissa
    kept.  Numba has no float16 arithmetic; decoding here, in the pass over the
    rows, spares the score a whole-array cast before it.
    """
    if radii.itemsize != 2:
        for j in range(count):
            dst[j] = radii[row, j]
        return
    for j in range(count):
        h = np.uint32(radii[row, j])
        special = (h & np.uint32(0x7C00)) == np.uint32(0x7C00)
        mag = (np.uint32(0x3FC00) | (h & np.uint32(0x3FF))) if special else (h & np.uint32(0x7FFF))
        bits = np.uint32(((h & np.uint32(0x8000)) << np.uint32(16)) | (mag << np.uint32(13)))
        dst[j] = bits.view(np.float32) * (np.float32(1.0) if special else np.float32(_HALF_SCALE))


@_kernel(inline="always")
def _pair_level(src, dst, psi, ch, count):
    """One level ``l >= 2`` of the transform: ``psi_j, dst_j = atan2, hypot(src_2j, src_2j+1)``.

    The radii are ``>= 0``, so the angles lie in ``[0, pi/2]``.
    """
    for j in range(count):
        t, r = _polar_pair(src[ch, 2 * j], src[ch, 2 * j + 1])
        psi[ch, j] = t
        dst[ch, j] = r


@_kernel(inline="always")
def _expand(src, dst, code, count, cos_t, sin_t, level):
    """One level of the inverse transform: ``r_j -> (r_j cos c[k_j], r_j sin c[k_j])``."""
    for j in range(count):
        r = src[j]
        k = code[j]
        dst[2 * j] = r * cos_t[level, k]
        dst[2 * j + 1] = r * sin_t[level, k]


@_kernel(inline="always")
def _rebuild(codes, row, radii, cos_t, sin_t, bits, down_to, ra, rb, code):
    """Inverse polar transform of one row from level ``L`` down to level ``down_to``, into ``ra``.

    ``down_to = 1`` gives the coordinates; ``down_to = 2`` the radii of level 1
    (``down_to = L + 1``: the stored radii alone).  The buffers alternate; the
    start is chosen so that the last level lands in ``ra``.  The radii are read
    by :func:`_load_radii`.
    """
    levels = bits.shape[0]
    count = radii.shape[1]
    first = (levels - down_to + 1) % 2  # an odd number of levels: start in rb
    if first == 1:
        _load_radii(radii, row, rb, count)
    else:
        _load_radii(radii, row, ra, count)
    for level in range(levels - 1, down_to - 2, -1):
        stream = codes[level]
        _unpack(stream, row, 0, stream.shape[1], count, bits[level], code)
        if (levels - 1 - level + first) % 2 == 1:
            _expand(rb, ra, code, count, cos_t, sin_t, level)
        else:
            _expand(ra, rb, code, count, cos_t, sin_t, level)
        count *= 2


@_kernel(parallel=True)
def polar_values_kernel(codes, radii, cos_t, sin_t, bits, out):
    """The reconstruction ``out (rows, dim)`` from the angle codes and the radii.

    ``codes`` is a tuple of the levels' packed streams, ``(rows, nbytes_l)`` each
    (indexed at run time: one compiled kernel per number of levels); ``cos_t``/``sin_t (L, 2**max_bits)``
    are the cosines and sines of each level's centroids (computed by NumPy in the
    centroids' dtype, as the reference does).  Products only and no fastmath: the
    values equal the reference's bit for bit.
    """
    rows, dim = out.shape
    nchunks = min(rows, CHUNKS)
    for ch in prange(nchunks):
        ra = np.empty(dim, dtype=out.dtype)
        rb = np.empty(dim, dtype=out.dtype)
        code = np.empty(dim // 2 + 8, dtype=np.int32)
        start, stop = _chunk(rows, nchunks, ch)
        for row in range(start, stop):
            _rebuild(codes, row, radii, cos_t, sin_t, bits, 1, ra, rb, code)
            for j in range(dim):
                out[row, j] = ra[j]


@_kernel(fastmath=SCORE_FASTMATH)
def level1_tables(q, cos1, sin1, tables):
    """``tables[i, K j + k] = q[i, 2j] cos c_k + q[i, 2j+1] sin c_k``: level 1 folded into the query."""
    nq, dim = q.shape
    ncodes = cos1.shape[0]
    half = dim // 2
    for task in range(nq * half):
        i = task // half
        j = task % half
        for k in range(ncodes):
            tables[i, ncodes * j + k] = q[i, 2 * j] * cos1[k] + q[i, 2 * j + 1] * sin1[k]


@_kernel(parallel=True, fastmath=SCORE_FASTMATH)
def polar_score_kernel(tables, codes, radii, cos_t, sin_t, bits, out):
    """``out[i, row] = sum_j r_j tables[i, K j + k_j]``: the score from the codes.

    ``r_j`` are the row's level-1 radii, rebuilt (levels ``L..2``) in scratch and
    shared by the queries, ``k_j`` its level-1 codes and ``tables`` the queries
    with level 1 folded in (:func:`level1_tables`, ``K = 2**bits[0]``).
    """
    nq = tables.shape[0]
    rows = codes[0].shape[0]
    levels = bits.shape[0]
    half = radii.shape[1] << (levels - 1)
    ncodes = tables.shape[1] // max(half, 1)
    nchunks = min(rows, CHUNKS)
    for ch in prange(nchunks):
        ra = np.empty(max(half, 1), dtype=out.dtype)
        rb = np.empty(max(half, 1), dtype=out.dtype)
        code = np.empty(half + 8, dtype=np.int32)
        start, stop = _chunk(rows, nchunks, ch)
        for row in range(start, stop):
            _rebuild(codes, row, radii, cos_t, sin_t, bits, 2, ra, rb, code)
            _unpack(codes[0], row, 0, codes[0].shape[1], half, bits[0], code)
            for i in range(nq):
                s = out.dtype.type(0)
                for j in range(half):
                    s += ra[j] * tables[i, ncodes * j + code[j]]
                out[i, row] = s


@_kernel()
def level2_tables(tables, ncodes, cos2, sin2, folded):
    """Levels 1 and 2 folded into the query: one entry per level-2 node and codes under it.

    ``folded[i, M n + (K a + b) K2 + c] = cos c_c T[i, K 2n + a] + sin c_c T[i, K (2n+1) + b]``
    where ``T`` are the level-1 tables (:func:`level1_tables`, ``K = ncodes``
    codes), ``K2`` the level-2 codes and ``M = K K K2``: node ``n``'s share of the
    score divided by its level-2 radius, for the level-1 codes ``a, b`` of its two
    children and its own code ``c`` (the inverse transform sends a radius
    ``rho`` to ``(rho cos, rho sin)``, Sec. 3.1).
    """
    nq = tables.shape[0]
    ncodes2 = cos2.shape[0]
    per = ncodes * ncodes * ncodes2
    nodes = folded.shape[1] // per
    for task in range(nq * nodes):
        i = task // nodes
        n = task % nodes
        for a in range(ncodes):
            ta = tables[i, ncodes * (2 * n) + a]
            for b in range(ncodes):
                tb = tables[i, ncodes * (2 * n + 1) + b]
                base = per * n + (ncodes * a + b) * ncodes2
                for c in range(ncodes2):
                    folded[i, base + c] = cos2[c] * ta + sin2[c] * tb


@_kernel(inline="always")
def _code_at(stream, row, j, bits):
    """Code ``j`` of row ``row`` of a ``bits``-wide packed stream (:mod:`polarquant.packing`).

    For 1, 2, 4 and 8 bits the code lies in byte ``j // (8 / bits)``, ``bits (t + 1)``
    bits from its top for ``t = j % (8 / bits)`` (shifts: ``8 / bits`` is a power of
    two); other widths read the 16-bit window of the code's first byte and the next
    one, as :func:`_unpack`.  One code without a scratch row: for kernels that visit
    each code once, in an order of their own.
    """
    mask = (np.int64(1) << bits) - 1
    if 8 % bits == 0:
        lg = (bits >> 1) - (bits >> 3)  # log2(bits) for 1, 2, 4, 8
        per_lg = 3 - lg
        t = j & ((np.int64(1) << per_lg) - 1)
        return (np.int64(stream[row, j >> per_lg]) >> (8 - bits * (t + 1))) & mask
    bitpos = j * bits
    k = bitpos >> 3
    last = stream.shape[1] - 1
    window = (np.int64(stream[row, k]) << 8) | np.int64(stream[row, min(k + 1, last)])
    return (window >> (16 - (bitpos & 7) - bits)) & mask


_FOLDED_KERNELS: dict = {}


def polar_score_folded_kernel(b1: int, b2: int, b3: int = 0, b4: int = 0):
    """The folded score kernel compiled for level bit widths ``b1, b2`` (and ``b3, b4``).

    ``kernel(folded, upper, codes, radii, cos_t, sin_t, bits, out)`` computes
    ``out[i, row] = sum_n rho_n folded[i, M n + idx_n]``: the score with levels 1
    and 2 in the query's table (:func:`level2_tables`), ``idx_n = (K a_n + b_n)
    K2 + c_n`` over the level-1 codes ``a_n, b_n`` of node ``n``'s children and
    its level-2 code ``c_n``.  With 4-bit level-1 codes the two children's codes
    are exactly one byte (``K a + b`` is the byte's value,
    :mod:`polarquant.packing`).  ``rho_n`` are the row's level-2 radii: with
    ``b3, b4`` given (``L >= 4``), the level-4 radii ``R_m`` are rebuilt (the
    stored radii when ``L = 4``) and each gives its four grandchildren at once,
    ``rho_{4m+t} = R_m upper[k_m, t]``, ``k_m = (c4_m << 2 b3) | (c3_2m << b3) |
    c3_2m+1``, from the table of products ``upper`` (the entry point's
    ``_upper_table``: ``cos c4 cos c3a``, ``cos c4 sin c3a``, ``sin c4 cos c3b``,
    ``sin c4 sin c3b``); else (``b3 = b4 = 0``) levels ``L..3`` are expanded one
    by one (:func:`_rebuild`).

    The bit widths are compile-time constants of each compiled kernel (one per
    combination, cached on disk like the others): every code is then read from
    its byte with constant shifts and masks (:func:`_code_at`), which measured 2
    to 3 times faster than the same loop with the widths read at run time.
    """
    key = (int(b1), int(b2), int(b3), int(b4))
    if key not in _FOLDED_KERNELS:
        _FOLDED_KERNELS[key] = _make_folded_kernel(*key)
    return _FOLDED_KERNELS[key]


def _make_folded_kernel(B1, B2, B3, B4):
    """Compile :func:`polar_score_folded_kernel` for one combination of widths."""

    @_kernel(parallel=True, fastmath=SCORE_FASTMATH)
    def kernel(folded, upper, codes, radii, cos_t, sin_t, bits, out):
        nq = folded.shape[0]
        rows = codes[0].shape[0]
        levels = bits.shape[0]
        nodes = radii.shape[1] << (levels - 2)
        n4 = radii.shape[1] << max(levels - 4, 0)
        per = folded.shape[1] // max(nodes, 1)
        nchunks = min(rows, CHUNKS)
        for ch in prange(nchunks):
            ra = np.empty(max(nodes, 1), dtype=out.dtype)
            rb = np.empty(max(nodes, 1), dtype=out.dtype)
            code = np.empty(nodes + 8, dtype=np.int32)
            idx = np.empty(max(nodes, 1), dtype=np.int64)
            start, stop = _chunk(rows, nchunks, ch)
            for row in range(start, stop):
                if B4 == 0:  # levels L..3 one by one: the level-2 radii in ra
                    _rebuild(codes, row, radii, cos_t, sin_t, bits, 3, ra, rb, code)
                else:  # the level-4 radii in rb, then levels 4 and 3 from the table
                    _rebuild(codes, row, radii, cos_t, sin_t, bits, 5, rb, ra, code)
                    for m in range(n4):
                        k = (
                            (_code_at(codes[3], row, m, B4) << (2 * B3))
                            | (_code_at(codes[2], row, 2 * m, B3) << B3)
                            | _code_at(codes[2], row, 2 * m + 1, B3)
                        )
                        r = rb[m]
                        for t in range(4):
                            ra[4 * m + t] = r * upper[k, t]
                for n in range(nodes):
                    if B1 == 4:
                        pair = np.int64(codes[0][row, n])
                    else:
                        pair = (_code_at(codes[0], row, 2 * n, B1) << B1) | _code_at(
                            codes[0], row, 2 * n + 1, B1
                        )
                    idx[n] = per * n + (pair << B2) + _code_at(codes[1], row, n, B2)
                for i in range(nq):
                    s = out.dtype.type(0)
                    for n in range(nodes):
                        s += ra[n] * folded[i, idx[n]]
                    out[i, row] = s

    return kernel


# -- weighted sums of decoded rows (attention values) ------------------------------------------
@_kernel(inline="always")
def _scalar_rows(packed, row, count, centroids, bits, n, t64, v, v64):
    """Rows ``row .. row + count - 1``: ``v[b, j] = centroids[code_j of row + b]``, ``j < n``.

    ``v (4, width)`` is scratch (entries past ``n`` too) and ``v64`` the same memory
    seen as 64-bit words.  For 1, 2, 4 and 8 bits ``t64`` is the entry point's byte
    table (``_value_table``) seen as 64-bit words: ``words = t64.shape[0] // 256``
    words hold the values of the codes of one byte, and a row is decoded by copying
    ``words`` words per byte, bits unchanged.  ``words`` is 0 for float32 8-bit codes
    (one value of 4 bytes per byte: a plain lookup) and for 3, 5, 6, 7 bits (no
    table: each run of ``bits`` bytes holds 8 whole codes, read as one integer; the
    last codes of the row one by one, as :func:`_unpack`).  The width is tested
    once per block of rows, so the kernel holds one copy of each decoder.
    """
    nbytes = packed.shape[1]
    words = t64.shape[0] // 256
    if words == 1:
        for b in range(count):
            for k in range(nbytes):
                v64[b, k] = t64[packed[row + b, k]]
    elif words == 2:
        for b in range(count):
            for k in range(nbytes):
                i = 2 * np.intp(packed[row + b, k])
                v64[b, 2 * k] = t64[i]
                v64[b, 2 * k + 1] = t64[i + 1]
    elif words > 2:
        for b in range(count):
            for k in range(nbytes):
                i = words * np.intp(packed[row + b, k])
                for t in range(words):
                    v64[b, words * k + t] = t64[i + t]
    elif bits == 8:
        for b in range(count):
            for k in range(nbytes):
                v[b, k] = centroids[packed[row + b, k]]
    else:
        mask = (1 << bits) - 1
        full = n // 8
        for b in range(count):
            r = row + b
            for g in range(full):  # codes 8g .. 8g + 7 fill bytes g bits .. (g + 1) bits - 1
                word = np.int64(0)
                for t in range(bits):
                    word = (word << 8) | np.int64(packed[r, g * bits + t])
                for t in range(8):
                    v[b, 8 * g + t] = centroids[(word >> (bits * (7 - t))) & mask]
            for j in range(8 * full, n):
                bitpos = j * bits
                k = bitpos >> 3
                window = (np.int32(packed[r, k]) << 8) | np.int32(packed[r, min(k + 1, nbytes - 1)])
                v[b, j] = centroids[(window >> (16 - (bitpos & 7) - bits)) & mask]


@_kernel(inline="always")
def _accumulate4(acc, w, row, v0, v1, v2, v3, n):
    """``acc[i, j] += sum_b w[i, row + b] * vb[j]`` over four decoded rows ``v0..v3``, ``j < n``.

    Two weight rows per pass over ``j``: each decoded value loaded from L1 feeds
    two accumulators (the loop vectorises over ``j``; measured 10-20 % faster than
    one weight row per pass from 3 weight rows up).
    """
    nw = acc.shape[0]
    i = 0
    while i + 2 <= nw:
        a0 = acc[i]
        a1 = acc[i + 1]
        w00, w01, w02, w03 = w[i, row], w[i, row + 1], w[i, row + 2], w[i, row + 3]
        w10, w11, w12, w13 = w[i + 1, row], w[i + 1, row + 1], w[i + 1, row + 2], w[i + 1, row + 3]
        for j in range(n):
            x0, x1, x2, x3 = v0[j], v1[j], v2[j], v3[j]
            a0[j] += (w00 * x0 + w01 * x1) + (w02 * x2 + w03 * x3)
            a1[j] += (w10 * x0 + w11 * x1) + (w12 * x2 + w13 * x3)
        i += 2
    if i < nw:
        a = acc[i]
        w0, w1, w2, w3 = w[i, row], w[i, row + 1], w[i, row + 2], w[i, row + 3]
        for j in range(n):
            a[j] += (w0 * v0[j] + w1 * v1[j]) + (w2 * v2[j] + w3 * v3[j])


@_kernel(inline="always")
def _accumulate1(acc, w, row, v0, n):
    """``acc[i, j] += w[i, row] * v0[j]``, ``j < n``: one decoded row (the last rows of a chunk)."""
    for i in range(acc.shape[0]):
        a = acc[i]
        wi = w[i, row]
        for j in range(n):
            a[j] += wi * v0[j]


@_kernel(parallel=True, fastmath=SCORE_FASTMATH)
def scalar_weighted_sum_kernel(w, packed, centroids, table, bits, partial):
    """``partial[ch] = sum_r outer(w[:, r], c[code_r])`` over the rows ``r`` of chunk ``ch``.

    ``w (nw, rows)``, ``packed (rows, nbytes)``, ``table`` the entry point's
    ``_value_table`` (1, 2, 4, 8 bits; empty otherwise), ``partial (nchunks, nw,
    n)`` summed over the chunks by the entry point.  Rows are decoded four at a
    time into scratch (:func:`_scalar_rows`) and added to the chunk's accumulator
    (:func:`_accumulate4`): a row's codes are read once for all the weight rows.
    Sums in the data dtype, in chunks of ``rows / nchunks`` rows (``SCORE_FASTMATH``:
    reassociated, FMA).
    """
    rows = w.shape[1]
    nchunks, _, n = partial.shape
    nbytes = packed.shape[1]
    width = max(8 * nbytes // bits if 8 % bits == 0 else n, 1)
    width += width % 2  # whole 64-bit words for float32
    for ch in prange(nchunks):
        acc = partial[ch]
        acc[:, :] = 0
        t64 = table.view(np.uint64)
        vec = np.empty((4, width), dtype=partial.dtype)
        vec64 = vec.view(np.uint64)
        start, stop = _chunk(rows, nchunks, ch)
        row = start
        while row < stop:
            block = min(4, stop - row)
            _scalar_rows(packed, row, block, centroids, bits, n, t64, vec, vec64)
            if block == 4:
                _accumulate4(acc, w, row, vec[0], vec[1], vec[2], vec[3], n)
            else:
                for b in range(block):
                    _accumulate1(acc, w, row + b, vec[b], n)
            row += block


@_kernel(parallel=True, fastmath=SCORE_FASTMATH)
def polar_weighted_sum_kernel(w, codes, radii, cos_t, sin_t, bits, partial):
    """``partial[ch] = sum_r outer(w[:, r], y_hat_r)`` over the rows ``r`` of chunk ``ch``.

    ``y_hat_r`` is the reconstruction of :func:`polar_values_kernel` (same
    :func:`_rebuild`, so the same products), rebuilt four rows at a time into
    scratch and added to the chunk's ``(nw, dim)`` accumulator as in
    :func:`scalar_weighted_sum_kernel`.
    """
    rows = w.shape[1]
    nchunks, _, dim = partial.shape
    for ch in prange(nchunks):
        acc = partial[ch]
        acc[:, :] = 0
        vec = np.empty((4, max(dim, 1)), dtype=partial.dtype)
        rb = np.empty(max(dim, 1), dtype=partial.dtype)
        code = np.empty(dim // 2 + 8, dtype=np.int32)
        start, stop = _chunk(rows, nchunks, ch)
        row = start
        while row < stop:
            block = min(4, stop - row)
            for b in range(block):
                _rebuild(codes, row + b, radii, cos_t, sin_t, bits, 1, vec[b], rb, code)
            if block == 4:
                _accumulate4(acc, w, row, vec[0], vec[1], vec[2], vec[3], dim)
            else:
                for b in range(block):
                    _accumulate1(acc, w, row + b, vec[b], dim)
            row += block
