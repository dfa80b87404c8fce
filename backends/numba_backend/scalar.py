r"""Scalar codebooks (TurboQuant Alg. 1, lines 3 and 7) as Numba kernels.

Mirrors :func:`polarquant.backends.numpy_backend.scalar_encode`,
:func:`~polarquant.backends.numpy_backend.scalar_values`,
:func:`~polarquant.backends.numpy_backend.scalar_score` and
:func:`~polarquant.backends.numpy_backend.scalar_weighted_sum`: same
signatures, same checks in the same order (:mod:`polarquant.backends._checks`),
same result dtypes.  ``tests/test_backends.py`` holds them to the reference:
packed bytes identical (also on decision boundaries), values equal, scores and
weighted sums within the float tolerances, on the quantizers' codes too.

==============================  =========================  ==========  ===================================
kernel                          reference operation        fastmath    differs from the reference
==============================  =========================  ==========  ===================================
``scalar_encode_kernel``        ``scalar_encode``          none        never (exact comparisons)
``scalar_values_kernel``        ``scalar_values``,         none        never (a gather)
                                ``sign_values``
``byte_tables`` +               ``scalar_score`` (1, 2,    score set   summation order (rtol ~1e-6)
``scalar_score_kernel``         4, 8 bits),
                                ``sign_score``
``code_tables`` +               ``scalar_score`` (3, 5,    score set   summation order
``scalar_score_gather_kernel``  6, 7 bits)
``scalar_weighted_sum_kernel``  ``scalar_weighted_sum``    score set   summation order
==============================  =========================  ==========  ===================================

Each operation is a thin typed entry point: the checks, the layout (C-contiguous
read-only float32 or float64 rows: one compiled kernel per dtype), the plan's
tables (thresholds padded with ``+inf``, centroids, the weighted sum's byte
table: built once per plan and dtype, :func:`._common._table`), the output, the
kernel, the reshape.  The centroids and thresholds are rounded to the dtype the
reference casts them to (the compute dtype of the data: float32 unless the data
is float64) before they reach the kernels, so the comparisons and gathers see
the reference's numbers.

**Departures from a literal transcription of the reference (scalar).**

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
* The weighted sum inlines its row decoder **once**: four rows are decoded
  through one call site (:func:`_scalar_rows`) rather than five (four unrolled
  plus the tail).  That cut the cold compile of ``scalar_weighted_sum_kernel``
  from 11-27 to 4-11 CPU-seconds per signature (ranges over runs on a loaded
  2-core machine), with run times unchanged (interleaved A/B on 1M x 128 rows,
  medians of 15 to 21 runs: 0.96-1.03x) and the same bits out.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._checks import (
    check_codes,
    check_query_width,
    check_rows,
    check_values_dtype,
    check_weight_width,
    compute_dtype,
    per_stream,
    product_dtypes,
    score_shape,
    work_dtype,
)
from ._common import (
    CHUNKS,
    GEMM_QUERIES,
    SCORE_FASTMATH,
    TABLE_BYTES,
    _accumulate1,
    _accumulate4,
    _chunk,
    _decoded_product,
    _kernel,
    _numpy,
    _pack,
    _padded_boundaries,
    _partial_sums,
    _rows,
    _scratch,
    _search,
    _table,
    _unpack,
)

__all__ = ["scalar_encode", "scalar_values", "scalar_score", "scalar_weighted_sum"]


# -- entry points ---------------------------------------------------------------------------------
def scalar_encode(plan, y):
    """Codes of the rows ``y (..., n)`` against the plan's codebook, packed ``(..., nbytes)``."""
    check_rows(_numpy(y, "x"), plan.n)
    work = work_dtype(y.dtype)
    bounds = _padded_boundaries(plan, compute_dtype(y.dtype), work)
    y2 = _rows(y, plan.n, work)
    out = np.empty((y2.shape[0], plan.nbytes), dtype=np.uint8)
    code = _scratch(y2.shape[0], plan.n, np.int32)
    scalar_encode_kernel(y2, bounds, (1 << plan.bits) - 1, plan.bits, out, code)
    return out.reshape(*y.shape[:-1], plan.nbytes)


def scalar_values(plan, packed, dtype):
    """``c[idx]`` of packed codes ``(..., nbytes)`` -> ``(..., n)`` of ``dtype``."""
    return code_values(plan, plan.n, packed, dtype)


def scalar_score(plan, q, packed):
    """``q (..., n) @ c[idx].T`` -> ``(..., rows)``; stacked streams as the reference."""
    check_codes(_numpy(packed, "packed codes"), plan.nbytes)
    stack = per_stream(scalar_score, plan, q, packed, "queries")
    if stack is not None:
        return stack
    return code_score(plan, plan.n, q, packed, decoded=True)


def code_values(plan, n: int, packed, dtype):
    """``plan.centroids[idx]`` of ``n`` packed ``plan.bits``-bit codes per row, ``(..., n)``:
    :func:`scalar_values`, and :func:`.sign.sign_values` with a sign plan (1-bit codes of the
    codebook ``(-1, +1)``, exact in every dtype)."""
    check_codes(_numpy(packed, "packed codes"), plan.nbytes)
    dtype = np.dtype(check_values_dtype(dtype))
    work = work_dtype(dtype)
    packed2 = _rows(packed, plan.nbytes, np.uint8)
    out = np.empty((packed2.shape[0], n), dtype=work)
    scalar_values_kernel(packed2, _centroids(plan, dtype, work), plan.bits, out)
    return out.reshape(*packed.shape[:-1], n).astype(dtype, copy=False)


def code_score(plan, n: int, q, packed, decoded: bool = False):
    """``q (..., n) @ plan.centroids[idx].T`` -> ``(..., rows)``: :func:`scalar_score`, and
    :func:`.sign.sign_score` with a sign plan (``decoded=False``: signs keep byte tables)."""
    check_codes(_numpy(packed, "packed codes"), plan.nbytes)
    check_query_width(_numpy(q, "queries"), n)
    shape = score_shape(q, packed)
    cdtype, out_dtype, work = product_dtypes(q.dtype)
    q2 = _rows(q, n, work)
    packed2 = _rows(packed, plan.nbytes, np.uint8)
    out = np.empty((q2.shape[0], packed2.shape[0]), dtype=work)
    values = _value_table(plan, cdtype, work) if decoded else None
    _table_score(q2, packed2, _centroids(plan, cdtype, work), plan.bits, n, out, values)
    return out.reshape(shape).astype(out_dtype, copy=False)


def scalar_weighted_sum(plan, w, packed):
    """``w (..., rows) @ c[idx]`` -> ``(..., n)``: the dual of ``scalar_score`` (attention values);
    stacked streams as the reference."""
    check_codes(_numpy(packed, "packed codes"), plan.nbytes)
    stack = per_stream(scalar_weighted_sum, plan, w, packed, "weights")
    if stack is not None:
        return stack
    check_weight_width(_numpy(w, "weights"), packed)
    rows = packed.shape[0]
    cdtype, out_dtype, work = product_dtypes(w.dtype)
    w2 = _rows(w, rows, work)
    partial = _partial_sums(rows, w2.shape[0], plan.n, work)
    if partial.size:
        scalar_weighted_sum_kernel(
            w2,
            _rows(packed, plan.nbytes, np.uint8),
            _centroids(plan, cdtype, work),
            _value_table(plan, cdtype, work),
            plan.bits,
            partial,
        )
    out = partial.sum(axis=0)
    return out.reshape(*w.shape[:-1], plan.n).astype(out_dtype, copy=False)


# -- the entry points' tables ---------------------------------------------------------------------
def _centroids(plan, dtype, work) -> np.ndarray:
    """The ``2**bits`` centroids rounded to ``dtype`` (the reference's), held in ``work``."""
    return _table(
        plan, "centroids", dtype, work, build=lambda: plan.centroids.astype(dtype).astype(work)
    )


def _value_table(plan, dtype, work) -> np.ndarray:
    """``table[per v + t]``: the centroid of code ``t`` of byte value ``v``, for 1, 2, 4, 8 bits.

    ``per = 8 // bits`` codes per byte, code ``t`` sitting ``8 - bits (t + 1)``
    bits up (:mod:`polarquant.packing`); ``256 per`` values, the decode table of
    :func:`scalar_weighted_sum_kernel`.  Other widths get an empty table
    (their codes straddle bytes).
    """
    bits = plan.bits

    def build():
        cents = _centroids(plan, dtype, work)
        if 8 % bits:
            return np.zeros(0, dtype=work)
        per = 8 // bits
        shifts = 8 - bits * (np.arange(per) + 1)
        codes = (np.arange(256)[:, None] >> shifts) & ((1 << bits) - 1)
        return cents[codes].reshape(-1)

    return _table(plan, "value table", dtype, work, build=build)


def _table_score(q2, packed2, cents, bits: int, n: int, out, values=None) -> None:
    """``out (nq, rows) = q2 @ cents[codes].T``.

    From ``GEMM_QUERIES`` queries on: blocks of decoded rows and one product
    each (BLAS).  Below, with ``values`` (the plan's ``_value_table``; scalar
    codes of ``DECODED_SCORE_BITS``): rows decoded four at a time into L1
    scratch and dotted with every query (:func:`scalar_score_decoded_kernel`).
    Otherwise per-query tables, a block of queries at a time.  Shared with
    :mod:`.sign` (signs are 1-bit codes of the codebook ``(-1, +1)``).
    """
    nq = q2.shape[0]
    if nq >= GEMM_QUERIES:  # many queries: decode blocks of rows once, multiply (BLAS)
        _decoded_product(
            q2,
            packed2.shape[0],
            n,
            lambda a, b, values: scalar_values_kernel(packed2[a:b], cents, bits, values),
            out,
        )
        return
    if values is not None and bits in DECODED_SCORE_BITS and packed2.shape[0]:
        scalar_score_decoded_kernel(q2, packed2, cents, values.view(np.uint64), bits, out)
        return
    lut = 8 % bits == 0
    nbytes = packed2.shape[1]
    width = nbytes * 256 if lut else n * (1 << bits)
    block = max(1, TABLE_BYTES // max(width * q2.itemsize, 1))
    for start in range(0, nq, block):
        qb = q2[start : start + block]
        tables = np.empty((qb.shape[0], width), dtype=q2.dtype)
        if lut:
            byte_tables(qb, cents, bits, tables)
            scalar_score_kernel(tables, packed2, out[start : start + block])
        else:
            code_tables(qb, cents, tables)
            scalar_score_gather_kernel(tables, packed2, bits, out[start : start + block])


#: Code widths scored by decoding rows (:func:`scalar_score_decoded_kernel`) below
#: ``GEMM_QUERIES`` queries.  Measured on a 2-core AMD EPYC (4,000 rows of 64 coordinates,
#: one thread): 4 bits, 3 queries 84 us against 230 us with byte tables, 31 queries 0.51 ms
#: against 3.2 ms.  1- and 2-bit codes keep byte tables (four to eight codes per lookup).
DECODED_SCORE_BITS = (3, 4, 5, 6, 7, 8)


# -- kernels --------------------------------------------------------------------------------------
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
def scalar_score_decoded_kernel(q, packed, centroids, t64, bits, out):
    """``out[i, row] = sum_j q[i, j] c[code_j of row]``: rows decoded, dotted with the queries.

    Chunks of rows in parallel; four rows at a time decoded into L1 scratch by
    :func:`_scalar_rows` (``t64``: the entry point's ``_value_table`` as 64-bit
    words, empty for the widths that are unpacked), then one dot product per
    query and row, which vectorises.  The reference's decode-then-multiply,
    without the decoded batch in memory.
    """
    nq, n = q.shape
    rows, nbytes = packed.shape
    width = _scratch_width(nbytes, bits, n)
    nchunks = min(rows, CHUNKS)
    for ch in prange(nchunks):
        vec = np.empty((4, width), dtype=out.dtype)
        vec64 = vec.view(np.uint64)
        start, stop = _chunk(rows, nchunks, ch)
        row = start
        while row < stop:
            block = min(4, stop - row)
            _scalar_rows(packed, row, block, centroids, bits, n, t64, vec, vec64)
            for i in range(nq):
                for b in range(block):
                    s = out.dtype.type(0)
                    for j in range(n):
                        s += q[i, j] * vec[b, j]
                    out[i, row + b] = s
            row += block


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


@_kernel(inline="always")
def _scratch_width(nbytes, bits, n):
    """Entries per scratch row of :func:`_scalar_rows`: the codes a row's bytes hold (``n``
    when codes straddle bytes), rounded up to whole 64-bit words of float32."""
    width = max(8 * nbytes // bits if 8 % bits == 0 else n, 1)
    return width + width % 2


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
    last codes of the row one by one, as :func:`._common._unpack`).  The width is
    tested once per block of rows, so the kernel holds one copy of each decoder.
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


@_kernel(parallel=True, fastmath=SCORE_FASTMATH)
def scalar_weighted_sum_kernel(w, packed, centroids, table, bits, partial):
    """``partial[ch] = sum_r outer(w[:, r], c[code_r])`` over the rows ``r`` of chunk ``ch``.

    ``w (nw, rows)``, ``packed (rows, nbytes)``, ``table`` the entry point's
    ``_value_table`` (1, 2, 4, 8 bits; empty otherwise), ``partial (nchunks, nw,
    n)`` summed over the chunks by the entry point.  Rows are decoded four at a
    time into scratch (:func:`_scalar_rows`) and added to the chunk's accumulator
    (:func:`._common._accumulate4`): a row's codes are read once for all the
    weight rows.  Sums in the data dtype, in chunks of ``rows / nchunks`` rows
    (``SCORE_FASTMATH``: reassociated, FMA).
    """
    rows = w.shape[1]
    nchunks, _, n = partial.shape
    width = _scratch_width(packed.shape[1], bits, n)
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
