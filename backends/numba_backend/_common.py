r"""What the Numba kernels of every algorithm share: compilation, chunks of rows, cells, bit packing.

The kernels of :mod:`.scalar`, :mod:`.sign` and :mod:`.polar` compute, for
every row of a C-contiguous batch, what the NumPy reference
(:mod:`polarquant.backends.numpy_backend`) computes with whole-array
operations, in one pass over the row and without batch-sized temporaries.
This module holds the pieces they have in common: the ``@njit`` helpers that
the kernels inline (:func:`_chunk`, :func:`_search`, :func:`_pack`,
:func:`_unpack`, :func:`_code_at`, :func:`_accumulate4`, :func:`_accumulate1`),
and the host-side plumbing of the entry points (array checks, row layout,
scratch, read-only views, the plan's tables).

Conventions shared by every kernel
----------------------------------
* **Packed layout** (:mod:`polarquant.packing`): the ``b``-bit codes of a row are
  one bit stream, most significant bit first, padded with zero bits to a whole
  byte.  :func:`_pack` writes whole bytes for ``b`` in 1, 2, 4, 8 and otherwise
  keeps a bit accumulator and emits a byte whenever eight bits are pending;
  :func:`_unpack` reads whole bytes for ``b`` in 1, 2, 4, 8
  and the 16-bit window holding each code otherwise (3, 5, 6, 7 bits, where a
  code may straddle two bytes).  A stream may start anywhere in a row
  (``start``): PolarQuant's levels follow each other in one row of bytes
  (:class:`polarquant.plan.PolarPlan`).
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
  all, so they compare exactly the values they compute.  The values kernels use
  none either: their outputs equal the reference's bit for bit (TurboQuantProd
  and PolarQuantQJL sketch the residual ``x - decode(x)``, so identical decodes
  keep the residual's sign bits identical).  Only the score and weighted-sum
  kernels and the score table builders, whose float output is compared with a
  tolerance, enable :data:`SCORE_FASTMATH` (no ``nnan``/``ninf``: NaN and Inf in
  a query or a weight still propagate).
* **Dtypes**: kernels are generic; the entry points pass float32 or float64
  arrays (one compilation per dtype) and sums run in the data's dtype, as in
  the reference's matrix products.
* **One compiled kernel per dtype, not per caller**: Numba compiles a kernel
  once per combination of argument types, and an array's type includes its
  write flag.  So every argument always arrives with the same flag: the data
  (rows, queries, weights, packed codes, radii) as read-only C-contiguous views
  (:func:`_rows`; a loaded or memory-mapped file is then no second
  compilation), the plan's tables read-only (:func:`_table`), the outputs,
  scratch and per-call tables writable.

Compile time
------------
Numba keeps what it compiled in its on-disk cache (``cache=True``:
``__pycache__`` next to these files, or ``NUMBA_CACHE_DIR``); ``polarquant
warmup`` compiles the paper configurations ahead of time, and
``benchmarks/bench_compile.py`` measures the cold cost of each kernel.  Most
of it is Numba's typing and lowering and LLVM, both proportional to the code a
kernel holds once its helpers are inlined.  Hence:

* The helpers are inlined by Numba (``inline="always"``), which the hot loops
  need: compiled as separate functions instead (Numba's default), measured on
  1M x 128 rows, ``polar_values`` ran 2.3x, the folded PolarQuant score 2.0x,
  ``polar_encode`` 1.4x and the weighted sums 1.3-1.6x slower.  Even the two
  helpers outside the inner loops, :func:`_chunk` (once per chunk of rows) and
  :func:`_accumulate1` (its last rows), are inlined: as plain calls they saved
  no measurable compile time and ``polar_values`` ran up to 5 % slower.
* A helper is inlined at as few call sites as the hot loops allow (the
  weighted sums decode four rows through one call site; see :mod:`.scalar`
  and :mod:`.polar` for what was measured where).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from numba import njit

from .._checks import check_array_type

__all__ = ["CHUNKS", "GEMM_QUERIES", "GEMM_BLOCK_BYTES", "SCORE_FASTMATH", "TABLE_BYTES"]

#: Parallel chunks of rows per kernel call (at most; never more than the rows): each
#: is a contiguous run of rows with its own scratch, and ``prange`` shares the chunks
#: out between the threads.
CHUNKS = 64

#: Fast-math flags of the score kernels: reassociate sums (so that they vectorise
#: and keep several partial sums), contract ``a * b + c`` to FMA, reciprocal and
#: approximate-function freedoms, no signed zeros.  Never ``nnan``/``ninf``.
SCORE_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

#: Bytes of per-query score tables built at once (keeps them in the L2 cache).
TABLE_BYTES = 1 << 20

#: From this many queries on, a score decodes a block of rows (the values kernel) and
#: multiplies it with all the queries (BLAS) instead of building a lookup table per query: a
#: table lookup costs about as much per query and row as a row's decode, which the product
#: shares between the queries (``benchmarks/bench_search.py``; the NumPy reference always
#: decodes and multiplies).
GEMM_QUERIES = 32
#: Bytes of decoded values per block on that path (a few large blocks: BLAS threads keep
#: spinning after each product and slow the next decode down, so switches are kept few).
GEMM_BLOCK_BYTES = 1 << 25


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


# -- the entry points' plumbing (host side) ---------------------------------------------------
#: What the array-type check says this backend runs on (``_checks.check_array_type``).
_RUNS_ON = (
    "NumPy arrays (use the 'numpy' backend for other array namespaces, or 'cupy' for CuPy arrays)"
)


def _numpy(a, name: str):
    """``a`` itself if it is a NumPy array, else ``TypeError`` (this backend never converts)."""
    return check_array_type(a, name, np.ndarray, "numba", _RUNS_ON)


def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a``: one write flag per kernel argument (module docstring)."""
    v = a.view()
    v.flags.writeable = False
    return v


def _rows(a, n: int, dtype) -> np.ndarray:
    """``a (..., n)`` as a read-only C-contiguous ``(rows, n)`` array of ``dtype`` (a view when possible)."""
    rows = math.prod(a.shape[:-1])  # not reshape(-1, n): ambiguous for n = 0
    return _readonly(np.ascontiguousarray(a.reshape(rows, n), dtype=dtype))


def _table(plan, what: str, *dtypes, build):
    """``build()`` made read-only, kept with ``plan`` per ``what`` and ``dtypes`` (``plan.derived``)."""

    def make():
        table = np.ascontiguousarray(build())
        table.flags.writeable = False
        return table

    key = ("numba", what, *(np.dtype(d).str for d in dtypes))
    return plan.derived(key, make)


def _padded_boundaries(plan, dtype, work) -> np.ndarray:
    """The plan's thresholds rounded to ``dtype``, ``(levels, 2**max_bits - 1)`` of ``work``.

    ``plan.boundary_table(dtype)``: rounded as the reference compares them (the
    plan's constant in the data's compute dtype), padded with ``+inf`` so that
    the kernels' search takes exactly ``bits`` halving steps (:func:`_search`).
    """
    return _table(plan, "boundaries", dtype, work, build=lambda: plan.boundary_table(dtype))


def _scratch(rows: int, size: int, dtype) -> np.ndarray:
    """One scratch row of ``size`` entries per parallel chunk of rows (module docstring)."""
    return np.empty((max(1, min(rows, CHUNKS)), max(size, 1)), dtype=dtype)


def _decoded_product(q2, rows: int, n: int, decode, out) -> None:
    """``out (nq, rows) = q2 @ values.T``, the values decoded a block of rows at a time into
    one buffer by ``decode(start, stop, buffer)`` (the reference's decode-then-multiply, in
    blocks of at most ``GEMM_BLOCK_BYTES``: nothing of the batch's size besides ``out``)."""
    step = max(1, GEMM_BLOCK_BYTES // max(n * q2.itemsize, 1))
    buffer = np.empty((min(rows, step), n), dtype=q2.dtype)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        values = buffer[: stop - start]
        decode(start, stop, values)
        out[:, start:stop] = q2 @ values.T  # (a strided out= would leave BLAS: 10x slower)


def _partial_sums(rows: int, nw: int, n: int, dtype) -> np.ndarray:
    """One ``(nw, n)`` accumulator per parallel chunk of rows (summed by the caller)."""
    return np.empty((min(rows, CHUNKS), nw, n), dtype=dtype)
