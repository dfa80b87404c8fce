"""The Numba CPU-JIT backend: the reference's eleven operations as parallel kernels.

Same names, signatures and results as :mod:`polarquant.backends.numpy_backend`
(the reference; read its table first): packed bytes identical to the
reference's away from decision boundaries, values and scores equal within
float tolerance, the same exception types for the same bad input.  Only NumPy
arrays are accepted (``TypeError`` otherwise: this backend never converts or
moves data).

Each operation here is a thin typed entry point: validate the arguments as the
reference would, normalise dtype and layout (C-contiguous float32 or float64,
one compiled signature per dtype), allocate the output, call the kernel of
:mod:`.kernels`, reshape.  Constants that arrive as lists (the per-level
boundaries and centroids of PolarQuant) become padded 2-D arrays plus counts.
The per-level packed angle codes travel to the decoding kernels as a tuple of
``(rows, nbytes_l)`` arrays, indexed by level at run time (a Numba kernel cannot
take a Python list; a tuple of arrays of one type can, at one compiled kernel
per number of levels; copying the levels into one buffer instead cost a third
of the score's time); the encode kernel writes one ``(rows, sum of nbytes)``
buffer with byte offsets, split per level afterwards.  float16 radii travel to
the polar kernels as their ``uint16`` bits (decoded exactly inside them).  Packed
codes always reach the kernels as read-only views and codebooks as fresh copies:
Numba compiles a kernel once per argument type, write flag included, so the
caller's flags (a loaded or memory-mapped file, a shared constant) would
otherwise cost another compilation of seconds.

=======================  ===============================================  ==============================
operation                kernels                                          differs from the reference
=======================  ===============================================  ==============================
``scalar_encode``        ``scalar_encode_kernel``                         never (exact comparisons)
``scalar_values``        ``scalar_values_kernel``                         never (a gather)
``scalar_score``         ``byte_tables`` + ``scalar_score_kernel``        summation order (rtol ~1e-6)
                         (1, 2, 4, 8 bits), else ``code_tables`` +
                         ``scalar_score_gather_kernel``
``sign_encode``          ``sign_encode_kernel``                           never
``sign_values``          ``scalar_values_kernel``, codebook ``(-1, +1)``  never
``sign_score``           ``byte_tables`` + ``scalar_score_kernel``        summation order
``polar_encode``         ``polar_encode_kernel``                          ``atan2`` last bits: codes of
                                                                          angles within ~1e-6 of a
                                                                          boundary may differ by one
``polar_values``         ``polar_values_kernel``                          never (same products)
``polar_score``          ``level1_tables`` + ``level2_tables`` +          summation order
                         ``polar_score_folded_kernel(bits)`` (levels 1
                         and 2 in the query's table, up to
                         ``FOLD_ENTRIES`` entries per node; levels 4
                         and 3 through ``_upper_table``), else
                         ``level1_tables`` + ``polar_score_kernel``
``scalar_weighted_sum``  ``scalar_weighted_sum_kernel``: one              summation order
                         ``(nw, n)`` partial sum per chunk of rows,
                         added up here; 1, 2, 4, 8-bit rows decoded
                         from a byte table (``_value_table``)
``polar_weighted_sum``   ``polar_weighted_sum_kernel``: partial sums      summation order
                         as above, rows rebuilt as in ``polar_values``
=======================  ===============================================  ==============================

Two checks are stricter than the reference's: a codebook with too few
centroids for ``bits`` raises ``IndexError`` (the reference raises it only
when a code actually points past the end), and one with too many boundaries
raises ``ValueError`` (the reference raises it only when a code overflows).
The widths of queries and weights, and the weighted sums' codes of one
``(rows, nbytes)`` batch, are checked by the same functions
(:mod:`polarquant.backends._checks`) on every backend, reference included.
Error messages name the caller's arguments (``x``, ``queries``, ``weights``,
``packed codes``), not this module's variables.

Examples
--------
>>> import numpy as np
>>> from polarquant.backends import numba_backend as nb
>>> codes = nb.scalar_encode(np.array([[-1.0, 0.0, 0.5, 2.0]]), np.array([-0.5, 0.0, 1.0]), 2)
>>> codes, f"{codes[0, 0]:08b}"  # codes 0, 2 (0.0 is on a boundary: upper cell), 2, 3
(array([[43]], dtype=uint8), '00101011')
>>> nb.scalar_values(codes, np.array([-1.0, -0.2, 0.2, 1.0]), 2, 4)
array([[-1. ,  0.2,  0.2,  1. ]])
"""

from __future__ import annotations

import math
import os

import numpy as np

from polarquant._array import check_bits, check_int
from polarquant.polar import check_levels

from .. import OPERATIONS
from .._checks import (
    check_polar_levels,
    check_query_width,
    check_weight_width,
    score_shape,
    work_dtype,
)
from . import kernels

NAME = "numba"

#: Spin-wait of idle OpenMP worker threads before they sleep (libgomp, behind Numba's default
#: "omp" threading layer), set here unless the environment already sets it.  libgomp reads it
#: once, when the first parallel kernel loads it (importing numba does not).  With libgomp's
#: default (300,000 spins) Numba's idle workers compete with the BLAS threads of the rotation or
#: sketch that follows in an encode; 10,000 measured 1.1x to 1.8x faster encodes with unchanged
#: scores (docs/performance.md).
GOMP_SPINCOUNT = "10000"
os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)

__all__ = ["NAME", "SCORES_FROM_CODES", *OPERATIONS]

#: The score operations read packed codes through per-query tables and never decode a
#: row to memory: quantizers hand them all the rows at once (``Quantizer._score_chunks``).
SCORES_FROM_CODES = True
#: Bytes of per-query score tables built at once (keeps them in the L2 cache).
TABLE_BYTES = 1 << 20
#: Largest table per level-2 node (``4**bits[0] * 2**bits[1]`` entries) for which
#: ``polar_score`` folds levels 1 and 2 into the query (1024 for the paper's (4, 2, ...)),
#: when there are enough rows to pay for the table (see ``polar_score``).
FOLD_ENTRIES = 4096
#: ... and when ``FOLD_ROW_FACTOR * rows`` reaches the folded table's entries per query
#: (``dim / 4 * 4**bits[0] * 2**bits[1]``): measured at head_dim 64 and 128 with 1 to 32
#: queries, folding is slower below about a quarter as many rows as entries, faster above.
FOLD_ROW_FACTOR = 4
#: Largest ``b4 + 2 b3`` for which ``polar_score`` rebuilds the level-2 radii of a row
#: from its level-4 radii through one table of products (:func:`_upper_table`).
UPPER_BITS = 12

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


# -- argument normalisation ------------------------------------------------------------------------
def _numpy(a, name: str) -> np.ndarray:
    """``a`` itself if it is a NumPy array, else ``TypeError`` (no implicit conversion)."""
    if not isinstance(a, np.ndarray):
        kind = f"{type(a).__module__}.{type(a).__qualname__}"
        raise TypeError(
            f"the numba backend runs on NumPy arrays, but {name} is a {kind}; use the 'numpy' "
            "backend for other array namespaces (or 'cupy' for CuPy arrays)"
        )
    return a


def _work_dtype(*dtypes) -> np.dtype:
    return work_dtype("numba", *dtypes)


def _rows(a, n: int, dtype) -> np.ndarray:
    """``a (..., n)`` as a C-contiguous ``(rows, n)`` array of ``dtype`` (a view when possible)."""
    rows = math.prod(a.shape[:-1])  # not reshape(-1, n): ambiguous for n = 0
    return np.ascontiguousarray(a.reshape(rows, n), dtype=dtype)


def _packed(packed, bits: int, n: int, name: str = "packed codes") -> np.ndarray:
    """Check packed codes as :func:`polarquant.packing.unpack_codes` does; return ``(rows, nbytes)``."""
    packed = _numpy(packed, name)
    if packed.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8, got {packed.dtype}")
    if packed.ndim == 0:
        raise ValueError(f"{name} must have shape (..., nbytes), got a 0-d array")
    need = -(-n * bits // 8)
    if packed.shape[-1] != need:
        raise ValueError(
            f"packed array has {packed.shape[-1]} bytes per vector, but {n} codes of {bits} bits "
            f"need {need}"
        )
    # read-only, as the polar level streams: one compiled kernel whether the caller's codes
    # are writable or not (loaded from a file, memory-mapped)
    return _readonly(_rows(packed, need, np.uint8))


def _codebook(values, bits: int, dtype=None, name: str = "centroids") -> np.ndarray:
    """A 1-D codebook with at least ``2**bits`` entries, as ``dtype`` (the first ``2**bits``)."""
    values = _numpy(values, name)
    dtype = values.dtype if dtype is None else dtype
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {values.shape}")
    if values.shape[0] < 1 << bits:
        raise IndexError(
            f"{bits}-bit codes index {1 << bits} {name}, but only {values.shape[0]} were given"
        )
    # always a fresh copy (at most 256 entries): a read-only codebook would compile the
    # kernels a second time
    return np.array(values[: 1 << bits], dtype=dtype)


def _boundaries(values, bits: int, dtype=None, name: str = "boundaries") -> np.ndarray:
    """1-D sorted thresholds, at most ``2**bits - 1`` of them, as ``dtype`` (default: their own)."""
    values = _numpy(values, name)
    dtype = _work_dtype(values.dtype) if dtype is None else dtype
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D (sorted thresholds), got shape {values.shape}")
    if values.shape[0] > (1 << bits) - 1:
        raise ValueError(
            f"{values.shape[0]} boundaries give codes up to {values.shape[0]}, more than "
            f"{bits} bits hold"
        )
    return np.ascontiguousarray(values, dtype=dtype)


def _queries(q, n: int, name: str = "queries") -> np.ndarray:
    q = _numpy(q, name)
    check_query_width(q, n, name)
    return q


def _scratch(rows: int, size: int, dtype) -> np.ndarray:
    """One scratch row of ``size`` entries per parallel chunk of rows (see :mod:`.kernels`)."""
    return np.empty((max(1, min(rows, kernels.CHUNKS)), max(size, 1)), dtype=dtype)


def _padded_boundaries(bounds, bits, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per-level thresholds as one ``(L, 2**max_bits - 1)`` array padded with ``+inf``, and their counts.

    The padding lets the kernels' search take exactly ``bits`` halving steps
    (:func:`.kernels._search`): ``+inf`` is never ``<=`` a finite value.
    """
    width = (1 << int(max(bits))) - 1
    padded = np.full((len(bounds), width), np.inf, dtype=dtype)
    for level, b in enumerate(bounds):
        padded[level, : b.shape[0]] = b
    return padded, np.array([b.shape[0] for b in bounds], dtype=np.int64)


def _table_score(q2, packed2, cents, bits: int, n: int, out) -> None:
    """``out (nq, rows) = q2 @ cents[codes].T`` from per-query tables, a block of queries at a time."""
    nq = q2.shape[0]
    lut = 8 % bits == 0
    nbytes = packed2.shape[1]
    width = nbytes * 256 if lut else n * (1 << bits)
    block = max(1, TABLE_BYTES // max(width * q2.itemsize, 1))
    for start in range(0, nq, block):
        qb = q2[start : start + block]
        tables = np.empty((qb.shape[0], width), dtype=q2.dtype)
        if lut:
            kernels.byte_tables(qb, cents, bits, tables)
            kernels.scalar_score_kernel(tables, packed2, out[start : start + block])
        else:
            kernels.code_tables(qb, cents, tables)
            kernels.scalar_score_gather_kernel(tables, packed2, bits, out[start : start + block])


# -- scalar codebooks ---------------------------------------------------------------------------
def scalar_encode(y, boundaries, bits: int):
    """Codes of ``y (n, D)`` against one scalar codebook, packed ``(n, ceil(D b / 8))``."""
    bits = check_bits(bits)
    y = _numpy(y, "x")
    if y.ndim == 0:
        raise ValueError("x must have shape (..., n), got a 0-d array")
    bnd = _boundaries(boundaries, bits)
    *batch, n = y.shape
    y2 = _rows(y, n, _work_dtype(y.dtype))
    out = np.empty((y2.shape[0], -(-n * bits // 8)), dtype=np.uint8)
    padded, counts = _padded_boundaries([bnd], [bits], bnd.dtype)
    code = _scratch(y2.shape[0], n, np.int32)
    kernels.scalar_encode_kernel(y2, padded, int(counts[0]), bits, out, code)
    return out.reshape(*batch, out.shape[1])


def scalar_values(packed, centroids, bits: int, n: int):
    """``c[idx]`` of packed codes ``(rows, .)`` -> ``(rows, n)`` in the centroids' dtype."""
    bits = check_bits(bits)
    n = check_int(n, "n", low=0)
    packed2 = _packed(packed, bits, n)
    centroids = _numpy(centroids, "centroids")
    dtype = centroids.dtype
    cents = _codebook(centroids, bits, _work_dtype(dtype))
    out = np.empty((packed2.shape[0], n), dtype=cents.dtype)
    kernels.scalar_values_kernel(packed2, cents, bits, out)
    return out.reshape(*packed.shape[:-1], n).astype(dtype, copy=False)


def scalar_score(q, packed, centroids, bits: int, n: int):
    """``q (nq, n) @ c[idx].T`` -> ``(nq, rows)``."""
    bits = check_bits(bits)
    n = check_int(n, "n", low=0)
    packed2 = _packed(packed, bits, n)
    q = _queries(q, n)
    centroids = _numpy(centroids, "centroids")
    out_dtype = np.result_type(q.dtype, centroids.dtype)
    work = _work_dtype(out_dtype)
    shape = score_shape(q, packed.ndim, packed2.shape[0])
    q2 = _rows(q, n, work)
    out = np.empty((q2.shape[0], packed2.shape[0]), dtype=work)
    _table_score(q2, packed2, _codebook(centroids, bits, work), bits, n, out)
    return out.reshape(shape).astype(out_dtype, copy=False)


# -- sign bits -----------------------------------------------------------------------------------
def sign_encode(p):
    """Packed sign bits (1 for ``p >= 0``) of ``p (rows, m)``."""
    p = _numpy(p, "x")
    if p.ndim == 0:
        raise ValueError("x must have shape (..., n), got a 0-d array")
    *batch, m = p.shape
    p2 = _rows(p, m, _work_dtype(p.dtype))
    out = np.empty((p2.shape[0], -(-m // 8)), dtype=np.uint8)
    kernels.sign_encode_kernel(p2, out)
    return out.reshape(*batch, out.shape[1])


def _pm_one(dtype) -> np.ndarray:
    """The sign codebook: bit 0 -> -1, bit 1 -> +1."""
    return np.array([-1.0, 1.0], dtype=dtype)


def sign_values(packed, m: int, dtype):
    """The packed signs as ``+1/-1`` of ``dtype``, ``(rows, m)``."""
    m = check_int(m, "m", low=0)
    packed2 = _packed(packed, 1, m)
    dtype = np.dtype(np.float32 if dtype is None else dtype)
    work = dtype if dtype in _FLOATS else np.dtype(np.float64)
    out = np.empty((packed2.shape[0], m), dtype=work)
    kernels.scalar_values_kernel(packed2, _pm_one(work), 1, out)
    return out.reshape(*packed.shape[:-1], m).astype(dtype, copy=False)


def sign_score(s, packed, m: int):
    """``s (nq, m) @ sign.T`` -> ``(nq, rows)``."""
    m = check_int(m, "m", low=0)
    packed2 = _packed(packed, 1, m)
    s = _queries(s, m)
    work = _work_dtype(s.dtype)
    shape = score_shape(s, packed.ndim, packed2.shape[0])
    s2 = _rows(s, m, work)
    out = np.empty((s2.shape[0], packed2.shape[0]), dtype=work)
    _table_score(s2, packed2, _pm_one(work), 1, m, out)
    return out.reshape(shape).astype(s.dtype, copy=False)


# -- the polar transform -------------------------------------------------------------------------
def _level_bits(bits, levels: int) -> np.ndarray:
    bits = [check_bits(b) for b in bits]
    if len(bits) != levels:
        raise ValueError(f"expected {levels} bit widths (one per level), got {len(bits)}")
    return np.array(bits, dtype=np.int64)


def _offsets(counts, bits) -> np.ndarray:
    """Byte offsets of each level's stream in the concatenated codes, plus the total."""
    sizes = [-(-n * int(b) // 8) for n, b in zip(counts, bits, strict=True)]
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _tables(centroids, bits, dtype):
    """Per-level ``cos``/``sin`` of the centroids, padded to ``(L, 2**max_bits)``.

    Computed by NumPy in the centroids' own dtype (what the reference's
    ``xp.cos(psi)`` computes), then cast to the working dtype.
    """
    size = 1 << int(max(bits))
    cos_t = np.zeros((len(bits), size), dtype=dtype)
    sin_t = np.zeros((len(bits), size), dtype=dtype)
    for level, (c, b) in enumerate(zip(centroids, bits, strict=True)):
        c = _codebook(c, int(b), name=f"centroids of level {level + 1}")
        cos_t[level, : 1 << int(b)] = np.cos(c)
        sin_t[level, : 1 << int(b)] = np.sin(c)
    return cos_t, sin_t


def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only view: the kernels index the tuple of level streams at run time, which
    Numba allows only when every array has the same type, read-only flag included."""
    v = a.view()
    v.flags.writeable = False
    return v


def _radii_rows(radii, work) -> np.ndarray:
    """The radii as C-contiguous ``(rows, k)`` for the polar kernels.

    float16 radii (the quantizers' storage) stay float16 and travel as their
    ``uint16`` bits, decoded exactly inside the kernels (:func:`.kernels._load_radii`):
    a separate cast of a million rows' radii cost a fifth of a score.  Others
    are cast to the working dtype.
    """
    if radii.dtype == np.float16:
        return _rows(radii, radii.shape[-1], np.float16).view(np.uint16)
    return _rows(radii, radii.shape[-1], work)


def _upper_table(cos_t, sin_t, bits, dtype) -> np.ndarray:
    """Levels 4 and 3 as one table of products, ``(2**(b4 + 2 b3), 4)``, for ``L >= 4``.

    Row ``k = (c4 << 2 b3) | (a << b3) | b`` holds what a level-4 radius is
    multiplied by to give its four level-2 grandchildren (the inverse transform
    sends ``rho`` to ``(rho cos, rho sin)``, Sec. 3.1, twice):
    ``(cos c4 cos a, cos c4 sin a, sin c4 cos b, sin c4 sin b)``, ``a, b`` the
    level-3 codes of its two children.  Empty when ``L < 4`` or when
    ``b4 + 2 b3 > UPPER_BITS`` (the kernels then expand level by level).
    """
    if len(bits) < 4 or int(bits[3]) + 2 * int(bits[2]) > UPPER_BITS:
        return np.zeros((0, 4), dtype=dtype)
    b3, b4 = int(bits[2]), int(bits[3])
    c4 = np.arange(1 << b4)[:, None, None]
    a = np.arange(1 << b3)[None, :, None]
    b = np.arange(1 << b3)[None, None, :]
    cos3, sin3, cos4, sin4 = cos_t[2], sin_t[2], cos_t[3], sin_t[3]
    parts = (cos4[c4] * cos3[a], cos4[c4] * sin3[a], sin4[c4] * cos3[b], sin4[c4] * sin3[b])
    table = np.stack(np.broadcast_arrays(*parts), axis=-1)
    return np.ascontiguousarray(table.reshape(-1, 4), dtype=dtype)


def _polar_codes(packed, radii, centroids, bits, dim: int):
    """Validate the inputs of ``polar_values``/``polar_score`` as the reference would.

    Returns ``(codes, radii (rows, dim >> L), bits, batch, dtypes)``, ``codes`` the tuple
    of the levels' C-contiguous ``(rows, nbytes_l)`` streams (no copy when they already are).
    """
    packed, centroids, bits = check_polar_levels(packed, centroids, bits)
    levels = len(packed)
    radii = _numpy(radii, "radii")
    bits = np.array([check_bits(b) for b in bits], dtype=np.int64)
    counts = [dim >> level for level in range(1, levels + 1)]
    parts = tuple(
        _readonly(np.ascontiguousarray(_packed(p, int(b), n, f"angle codes of level {level}")))
        for level, (p, n, b) in enumerate(zip(packed, counts, bits, strict=True), start=1)
    )
    batch = tuple(radii.shape[:-1])
    if (
        radii.ndim == 0
        or radii.shape[-1] != (dim >> levels)
        or any(tuple(p.shape[:-1]) != batch for p in packed)
    ):
        raise ValueError(
            f"radii of shape {radii.shape} and angle codes of shapes "
            f"{[tuple(p.shape) for p in packed]} do not match dim={dim} with {levels} levels"
        )
    for c in centroids:
        _numpy(c, "centroids")
    dtypes = [radii.dtype, *(c.dtype for c in centroids)]
    return parts, radii, bits, batch, dtypes


def polar_encode(y, levels: int, boundaries, bits):
    """Polar transform of ``y (n, D)``; returns (packed angle codes per level, radii)."""
    y = _numpy(y, "x")
    dim = y.shape[-1]  # a 0-d y raises IndexError here, as in the reference
    batch = y.shape[:-1]
    levels = check_levels(dim, levels)
    boundaries = [_numpy(b, f"boundaries of level {i}") for i, b in enumerate(boundaries, 1)]
    if len(boundaries) != levels:
        raise ValueError(
            f"expected {levels} boundary arrays (one per level), got {len(boundaries)}"
        )
    bits = _level_bits(bits, levels)
    work = _work_dtype(y.dtype)
    bwork = _work_dtype(*(b.dtype for b in boundaries))
    bnd = [_boundaries(b, int(w), bwork) for b, w in zip(boundaries, bits, strict=True)]
    padded, counts = _padded_boundaries(bnd, bits, bwork)
    angles = [dim >> level for level in range(1, levels + 1)]
    offsets = _offsets(angles, bits)
    y2 = _rows(y, dim, work)
    rows = y2.shape[0]
    codes = np.empty((rows, int(offsets[-1])), dtype=np.uint8)
    radii = np.empty((rows, dim >> levels), dtype=work)
    psi, ra, rb = (_scratch(rows, dim // 2, work) for _ in range(3))
    code = _scratch(rows, dim // 2, np.int32)
    kernels.polar_encode_kernel(y2, padded, counts, bits, offsets, codes, radii, psi, ra, rb, code)
    if levels == 1:  # the stream is the whole buffer: no copy needed
        packed = [codes.reshape(*batch, codes.shape[1])]
    else:
        packed = [
            np.ascontiguousarray(codes[:, offsets[level] : offsets[level + 1]]).reshape(
                *batch, int(offsets[level + 1] - offsets[level])
            )
            for level in range(levels)
        ]
    out_dtype = y.dtype if y.dtype.kind == "f" else work
    return packed, radii.reshape(*batch, dim >> levels).astype(out_dtype, copy=False)


def polar_values(packed, radii, centroids, bits, dim: int):
    """Inverse polar transform of the decoded angles and the radii -> ``(rows, dim)``."""
    codes, radii, bits, batch, dtypes = _polar_codes(packed, radii, centroids, bits, dim)
    out_dtype = np.result_type(*dtypes)
    work = _work_dtype(out_dtype)
    cos_t, sin_t = _tables(centroids, bits, work)
    r2 = _radii_rows(radii, work)
    out = np.empty((r2.shape[0], dim), dtype=work)
    kernels.polar_values_kernel(codes, r2, cos_t, sin_t, bits, out)
    return out.reshape(*batch, dim).astype(out_dtype, copy=False)


def _folded_entries(dim: int, bits) -> int:
    """Entries per query of the table that folds levels 1 and 2: ``dim / 4 * 4**b1 * 2**b2``."""
    return dim // 4 << (2 * int(bits[0]) + int(bits[1]))


def fold_rows(dim: int, bits) -> int | None:
    """The fewest rows from which :func:`polar_score` folds levels 1 and 2 into the query's table.

    ``None`` where it never does: one level, or more than ``FOLD_ENTRIES`` entries per
    level-2 node.  Else the rows ``r`` with ``FOLD_ROW_FACTOR * r`` at least the folded
    table's ``dim / 4 * 4**bits[0] * 2**bits[1]`` entries per query (``polarquant warmup``
    scores that many rows to compile the folded kernel).
    """
    if len(bits) < 2:
        return None
    if 1 << (2 * int(bits[0]) + int(bits[1])) > FOLD_ENTRIES or FOLD_ROW_FACTOR <= 0:
        return None
    return max(1, -(-_folded_entries(dim, bits) // FOLD_ROW_FACTOR))


def polar_score(q, packed, radii, centroids, bits, dim: int):
    """``q (nq, dim) @ polar_values(...).T`` -> ``(nq, rows)``."""
    codes, radii, bits, batch, dtypes = _polar_codes(packed, radii, centroids, bits, dim)
    q = _queries(q, dim)
    out_dtype = np.result_type(q.dtype, *dtypes)
    work = _work_dtype(out_dtype)
    shape = score_shape(q, len(batch) + 1, codes[0].shape[0])
    cos_t, sin_t = _tables(centroids, bits, work)
    q2 = _rows(q, dim, work)
    r2 = _radii_rows(radii, work)
    out = np.empty((q2.shape[0], r2.shape[0]), dtype=work)
    ncodes = 1 << int(bits[0])
    least = fold_rows(dim, bits)
    fold = least is not None and codes[0].shape[0] >= least
    width = _folded_entries(dim, bits) if fold else dim // 2 * ncodes
    if fold:  # one compiled kernel per bit widths; levels 4-3 by table when it is small
        upper = _upper_table(cos_t, sin_t, bits, work)
        kernel = kernels.polar_score_folded_kernel(*bits[:2], *(bits[2:4] if upper.size else ()))
    block = max(1, TABLE_BYTES // max(width * q2.itemsize, 1))
    for start in range(0, q2.shape[0], block):  # level 1 (and 2) folded into a block of queries
        qb = q2[start : start + block]
        tables = np.empty((qb.shape[0], dim // 2 * ncodes), dtype=work)
        kernels.level1_tables(qb, cos_t[0, :ncodes], sin_t[0, :ncodes], tables)
        if fold:
            folded = np.empty((qb.shape[0], width), dtype=work)
            ncodes2 = 1 << int(bits[1])
            kernels.level2_tables(tables, ncodes, cos_t[1, :ncodes2], sin_t[1, :ncodes2], folded)
            kernel(folded, upper, codes, r2, cos_t, sin_t, bits, out[start : start + block])
        else:
            kernels.polar_score_kernel(
                tables, codes, r2, cos_t, sin_t, bits, out[start : start + block]
            )
    return out.reshape(shape).astype(out_dtype, copy=False)


# -- weighted sums of decoded rows (attention values) ----------------------------------------------
def _weights(w, rows: int, codes_ndim: int, name: str = "weights") -> np.ndarray:
    """``w (..., rows)`` of this backend's arrays; see ``_checks.check_weight_width``."""
    return check_weight_width(_numpy(w, name), rows, codes_ndim, name)


def _value_table(cents, bits: int) -> np.ndarray:
    """``table[per v + t]``: the centroid of code ``t`` of byte value ``v``, for 1, 2, 4, 8 bits.

    ``per = 8 // bits`` codes per byte, code ``t`` sitting ``8 - bits (t + 1)``
    bits up (:mod:`polarquant.packing`); ``256 per`` values, the decode table of
    :func:`.kernels.scalar_weighted_sum_kernel`.  Other widths get an empty table
    (their codes straddle bytes).
    """
    if 8 % bits:
        return np.zeros(0, dtype=cents.dtype)
    per = 8 // bits
    shifts = 8 - bits * (np.arange(per) + 1)
    codes = (np.arange(256)[:, None] >> shifts) & ((1 << bits) - 1)
    return np.ascontiguousarray(cents[codes].reshape(-1))


def _partial_sums(rows: int, nw: int, n: int, dtype) -> np.ndarray:
    """One ``(nw, n)`` accumulator per parallel chunk of rows (summed by the caller)."""
    return np.empty((min(rows, kernels.CHUNKS), nw, n), dtype=dtype)


def scalar_weighted_sum(w, packed, centroids, bits: int, n: int):
    """``w (nw, rows) @ c[idx]`` -> ``(nw, n)``: the dual of ``scalar_score`` (attention values)."""
    bits = check_bits(bits)
    n = check_int(n, "n", low=0)
    packed2 = _packed(packed, bits, n)
    rows = packed2.shape[0]
    w = _weights(w, rows, packed.ndim)
    centroids = _numpy(centroids, "centroids")
    out_dtype = np.result_type(w.dtype, centroids.dtype)
    work = _work_dtype(out_dtype)
    cents = _codebook(centroids, bits, work)
    w2 = _rows(w, rows, work)
    partial = _partial_sums(rows, w2.shape[0], n, work)
    if partial.size:
        kernels.scalar_weighted_sum_kernel(
            w2, packed2, cents, _value_table(cents, bits), bits, partial
        )
    out = partial.sum(axis=0)
    return out.reshape(*w.shape[:-1], n).astype(out_dtype, copy=False)


def polar_weighted_sum(w, packed, radii, centroids, bits, dim: int):
    """``w (nw, rows) @ polar_values(...)`` -> ``(nw, dim)``: the dual of ``polar_score``."""
    codes, radii, bits, batch, dtypes = _polar_codes(packed, radii, centroids, bits, dim)
    rows = codes[0].shape[0]
    w = _weights(w, rows, len(batch) + 1)
    out_dtype = np.result_type(w.dtype, *dtypes)
    work = _work_dtype(out_dtype)
    cos_t, sin_t = _tables(centroids, bits, work)
    w2 = _rows(w, rows, work)
    r2 = _radii_rows(radii, work)
    partial = _partial_sums(rows, w2.shape[0], dim, work)
    if partial.size:
        kernels.polar_weighted_sum_kernel(w2, codes, r2, cos_t, sin_t, bits, partial)
    out = partial.sum(axis=0)
    return out.reshape(*w.shape[:-1], dim).astype(out_dtype, copy=False)
