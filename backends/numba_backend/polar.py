r"""The recursive polar transform (PolarQuant Sec. 3.1, Alg. 1) as Numba kernels.

Mirrors :func:`polarquant.backends.numpy_backend.polar_encode`,
:func:`~polarquant.backends.numpy_backend.polar_values`,
:func:`~polarquant.backends.numpy_backend.polar_score` and
:func:`~polarquant.backends.numpy_backend.polar_weighted_sum`: same
signatures, same checks in the same order (:mod:`polarquant.backends._checks`),
same result dtypes.  ``tests/test_backends.py`` holds them to the reference:
angle codes identical away from decision boundaries (and rarely different
next to them), radii and values equal, scores and weighted sums within the
float tolerances, every score path (``test_numba_polar_score_paths_agree``),
float16 radii decoded bit for bit (``test_numba_float16_radii_decoded_exactly``).

================================  =======================  ==========  =================================
kernel                            reference operation      fastmath    differs from the reference
================================  =======================  ==========  =================================
``polar_encode_kernel``           ``polar_encode``         none        ``atan2`` last bits: codes of
                                                                       angles within ~1e-6 of a
                                                                       boundary may differ by one
``polar_values_kernel``           ``polar_values``         none        never (same products)
``level1_tables`` +               ``polar_score``          score set   summation order
``polar_score_kernel``, or
+ ``level2_tables`` +
``polar_score_folded_kernel(b)``
``polar_weighted_sum_kernel``     ``polar_weighted_sum``   score set   summation order
================================  =======================  ==========  =================================

The angle codes of a row are one byte array, level ``l`` at bytes
``offsets[l-1]:offsets[l]`` (:class:`polarquant.plan.PolarPlan`): the kernels
take the ``(rows, plan.nbytes)`` codes and the plan's ``offsets`` (int64), the
encode kernel writes each level's codes straight to its place.  float16 radii
(the quantizers' storage) travel to the kernels as their ``uint16`` bits,
decoded exactly inside them (:func:`_load_radii`); other radii as the working
dtype.  The per-level thresholds (padded with ``+inf``), the ``cos``/``sin``
tables of the centroids (:meth:`polarquant.plan.PolarPlan.trig_tables`, in the
dtype the reference decodes in) and the table of level-4/3 products are built
once per plan and dtype (:func:`._common._table`).

**Departures from a literal transcription of the reference (polar).**

* PolarQuant scores fold the level-1 rotation into the query: with
  ``T1[j, k] = q_{2j} cos c_k + q_{2j+1} sin c_k`` the score of a row is
  ``sum_j r_j T1[j, k_j]`` over its level-1 radii ``r_j``, which are rebuilt
  from the radii and the codes of levels ``L..2`` (the tree minus its last
  level); the ``dim`` coordinates themselves are never formed.  With enough
  rows levels 1 and 2 are folded too (one lookup per level-2 node), and for
  ``L >= 4`` the level-2 radii come from the level-4 radii through one table
  of products for levels 4 and 3; that kernel is compiled once per
  combination of bit widths (``polar_score_folded_kernel``), so that
  every code is read with constant shifts.
* float16 radii are decoded in the kernels' pass over the rows
  (:func:`_load_radii`), instead of a whole-array cast before it.
* For float32 data the polar transform uses a polynomial ``atan2`` (the SLEEF
  ``atan2f`` reduction and minimax polynomial, at most ~3 ulp from the exact
  angle, as NumPy's own SIMD ``arctan2`` is) and ``hypot`` as
  ``sqrt(a**2 + b**2)`` in float64 rounded to float32 (exactly glibc's
  ``hypotf``, so the radii are the reference's).  Both vectorise; the libm
  ``atan2f`` call does not and would make encoding several times slower.  An
  angle within a few ulp of a boundary may therefore get the neighbouring code
  (as it may between two NumPy builds).  Float64 data uses libm ``atan2`` and
  ``hypot``.  float16 rows are transformed in float32 (the reference computes
  in float16), and decoded float16 values are computed in float32 and
  rounded once (the reference rounds after every level).

Compile time
------------
One compiled kernel per dtype and radius storage (``uint16`` bits or the
working dtype), whatever the number of levels (one code array, offsets at run
time); the folded score once more per combination of level-1/2 (and 3/4) bit
widths.  Call sites are merged where that does not slow a hot loop:

* The weighted sum inlines its row rebuild **once** (:func:`_rebuild` in a loop
  over a block of four rows, not four unrolled calls plus the tail).  That cut
  its cold compile from 31-62 to 5-13 CPU-seconds per signature (ranges over
  runs on a loaded 2-core machine; 4-6x less in each run), with run times
  unchanged (interleaved A/B on 1M x 128 rows, medians of 15 to 21 runs:
  0.96-1.03x, within the noise of the shared machine) and the same bits out.
* Other call sites stay repeated where merging them slows a hot loop: one
  call site for both stages of ``polar_encode_kernel`` (level 1, then levels
  2..L) measured 1.7x slower, and choosing buffers at run time, so that
  :func:`_rebuild` calls :func:`_load_radii` and :func:`_expand` once and the
  folded score calls :func:`_rebuild` once, 1.06-1.13x slower for the folded
  score.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange, types
from numba.extending import overload

from .._checks import (
    check_codes,
    check_query_width,
    check_radii,
    check_rows,
    check_values_dtype,
    check_weight_width,
    compute_dtype,
    product_dtypes,
    score_shape,
    transform_dtype,
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
    _code_at,
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

__all__ = ["polar_encode", "polar_values", "polar_score", "polar_weighted_sum", "fold_rows"]

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


# -- entry points ---------------------------------------------------------------------------------
def polar_encode(plan, y):
    """Polar transform of the rows ``y (..., D)``: (angle codes ``(..., nbytes)``, radii ``(..., D/2**L)``)."""
    check_rows(_numpy(y, "x"), plan.dim)
    out_dtype = transform_dtype(y.dtype)
    work = work_dtype(out_dtype)
    bounds = _padded_boundaries(plan, compute_dtype(out_dtype), work)
    counts, bits, offsets = _layout(plan)
    y2 = _rows(y, plan.dim, work)
    rows = y2.shape[0]
    codes = np.empty((rows, plan.nbytes), dtype=np.uint8)
    radii = np.empty((rows, plan.radii), dtype=work)
    psi, ra, rb = (_scratch(rows, plan.dim // 2, work) for _ in range(3))
    code = _scratch(rows, plan.dim // 2, np.int32)
    polar_encode_kernel(y2, bounds, counts, bits, offsets, codes, radii, psi, ra, rb, code)
    batch = y.shape[:-1]
    return (
        codes.reshape(*batch, plan.nbytes),
        radii.reshape(*batch, plan.radii).astype(out_dtype, copy=False),
    )


def polar_values(plan, codes, radii, dtype):
    """Inverse polar transform of the decoded angles and the radii -> ``(..., D)`` of ``dtype``."""
    check_codes(_numpy(codes, "angle codes"), plan.nbytes, "angle codes")
    check_radii(_numpy(radii, "radii"), plan.radii, codes)
    dtype = np.dtype(check_values_dtype(dtype))
    work = work_dtype(dtype)
    codes2 = _rows(codes, plan.nbytes, np.uint8)
    cos_t, sin_t = _trig(plan, dtype, work)
    _, bits, offsets = _layout(plan)
    out = np.empty((codes2.shape[0], plan.dim), dtype=work)
    polar_values_kernel(codes2, offsets, _radii_rows(radii, dtype, work), cos_t, sin_t, bits, out)
    return out.reshape(*codes.shape[:-1], plan.dim).astype(dtype, copy=False)


def polar_score(plan, q, codes, radii):
    """``q (..., D) @ polar_values(...).T`` -> ``(..., rows)``."""
    check_codes(_numpy(codes, "angle codes"), plan.nbytes, "angle codes")
    check_radii(_numpy(radii, "radii"), plan.radii, codes)
    check_query_width(_numpy(q, "queries"), plan.dim)
    shape = score_shape(q, codes)
    # dtype: what the reference decodes the rows in
    dtype, out_dtype, work = product_dtypes(q.dtype, radii.dtype)
    dim = plan.dim
    cos_t, sin_t = _trig(plan, dtype, work)
    _, bits, offsets = _layout(plan)
    q2 = _rows(q, dim, work)
    r2 = _radii_rows(radii, dtype, work)
    codes2 = _rows(codes, plan.nbytes, np.uint8)
    out = np.empty((q2.shape[0], codes2.shape[0]), dtype=work)
    if q2.shape[0] >= GEMM_QUERIES:  # many queries: decode blocks of rows once, multiply (BLAS)
        _decoded_product(
            q2,
            codes2.shape[0],
            dim,
            lambda a, b, values: polar_values_kernel(
                codes2[a:b], offsets, r2[a:b], cos_t, sin_t, bits, values
            ),
            out,
        )
        return out.reshape(shape).astype(out_dtype, copy=False)
    ncodes = 1 << plan.bits[0]
    least = fold_rows(plan)
    fold = least is not None and codes2.shape[0] >= least
    width = _folded_entries(plan) if fold else dim // 2 * ncodes
    if fold:  # one compiled kernel per bit widths; levels 4-3 by table when it is small
        upper = _upper_table(plan, dtype, work)
        kernel = polar_score_folded_kernel(*plan.bits[:2], *(plan.bits[2:4] if upper.size else ()))
    block = max(1, TABLE_BYTES // max(width * q2.itemsize, 1))
    for start in range(0, q2.shape[0], block):  # level 1 (and 2) folded into a block of queries
        qb = q2[start : start + block]
        tables = np.empty((qb.shape[0], dim // 2 * ncodes), dtype=work)
        level1_tables(qb, cos_t[0, :ncodes], sin_t[0, :ncodes], tables)
        if fold:
            folded = np.empty((qb.shape[0], width), dtype=work)
            ncodes2 = 1 << plan.bits[1]
            level2_tables(tables, ncodes, cos_t[1, :ncodes2], sin_t[1, :ncodes2], folded)
            kernel(
                folded, upper, codes2, offsets, r2, cos_t, sin_t, bits, out[start : start + block]
            )
        else:
            polar_score_kernel(
                tables, codes2, offsets, r2, cos_t, sin_t, bits, out[start : start + block]
            )
    return out.reshape(shape).astype(out_dtype, copy=False)


def polar_weighted_sum(plan, w, codes, radii):
    """``w (..., rows) @ polar_values(...)`` -> ``(..., D)``: the dual of ``polar_score``."""
    check_codes(_numpy(codes, "angle codes"), plan.nbytes, "angle codes")
    check_radii(_numpy(radii, "radii"), plan.radii, codes)
    check_weight_width(_numpy(w, "weights"), codes)
    rows = codes.shape[0]
    dtype, out_dtype, work = product_dtypes(w.dtype, radii.dtype)
    cos_t, sin_t = _trig(plan, dtype, work)
    _, bits, offsets = _layout(plan)
    w2 = _rows(w, rows, work)
    partial = _partial_sums(rows, w2.shape[0], plan.dim, work)
    if partial.size:
        codes2 = _rows(codes, plan.nbytes, np.uint8)
        r2 = _radii_rows(radii, dtype, work)
        polar_weighted_sum_kernel(w2, codes2, offsets, r2, cos_t, sin_t, bits, partial)
    out = partial.sum(axis=0)
    return out.reshape(*w.shape[:-1], plan.dim).astype(out_dtype, copy=False)


# -- the entry points' layout and tables ----------------------------------------------------------
def _layout(plan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The plan's per-level numbers as int64 arrays: thresholds per level, bits, byte offsets."""
    return (
        _table(plan, "counts", build=lambda: np.array([(1 << b) - 1 for b in plan.bits], np.int64)),
        _table(plan, "bits", build=lambda: np.array(plan.bits, dtype=np.int64)),
        _table(plan, "offsets", build=lambda: np.array(plan.offsets, dtype=np.int64)),
    )


def _trig(plan, dtype, work) -> tuple[np.ndarray, np.ndarray]:
    """``cos``/``sin`` of the centroids computed in ``dtype`` (``plan.trig_tables``), held in ``work``.

    ``(L, 2**max_bits)`` each, computed as the reference's ``cos(psi)`` on
    angles of ``dtype``, then cast to the working dtype.
    """
    cos_t, sin_t = plan.trig_tables(dtype)
    if np.dtype(dtype) == work:
        return cos_t, sin_t
    return (
        _table(plan, "cos", dtype, work, build=lambda: cos_t.astype(work)),
        _table(plan, "sin", dtype, work, build=lambda: sin_t.astype(work)),
    )


def _radii_rows(radii, dtype, work) -> np.ndarray:
    """The radii as read-only C-contiguous ``(rows, k)`` for the polar kernels.

    Rounded to ``dtype`` first where they are wider (the reference decodes
    ``astype(radii, dtype)``).  float16 radii (the quantizers' storage) stay
    float16 and travel as their ``uint16`` bits, decoded exactly inside the
    kernels (:func:`_load_radii`): a separate cast of a million rows' radii
    cost a fifth of a score.  Others are cast to the working dtype.
    """
    if np.result_type(radii.dtype, dtype) != dtype:
        radii = radii.astype(dtype)
    if radii.dtype == np.float16:
        return _rows(radii, radii.shape[-1], np.float16).view(np.uint16)
    return _rows(radii, radii.shape[-1], work)


def _upper_table(plan, dtype, work) -> np.ndarray:
    """Levels 4 and 3 as one table of products, ``(2**(b4 + 2 b3), 4)``, for ``L >= 4``.

    Row ``k = (c4 << 2 b3) | (a << b3) | b`` holds what a level-4 radius is
    multiplied by to give its four level-2 grandchildren (the inverse transform
    sends ``rho`` to ``(rho cos, rho sin)``, Sec. 3.1, twice):
    ``(cos c4 cos a, cos c4 sin a, sin c4 cos b, sin c4 sin b)``, ``a, b`` the
    level-3 codes of its two children.  Empty when ``L < 4`` or when
    ``b4 + 2 b3 > UPPER_BITS`` (the kernels then expand level by level).
    """
    bits = plan.bits
    if len(bits) < 4 or bits[3] + 2 * bits[2] > UPPER_BITS:
        return _table(plan, "no upper table", work, build=lambda: np.zeros((0, 4), dtype=work))

    def build():
        cos_t, sin_t = _trig(plan, dtype, work)
        b3, b4 = bits[2], bits[3]
        c4 = np.arange(1 << b4)[:, None, None]
        a = np.arange(1 << b3)[None, :, None]
        b = np.arange(1 << b3)[None, None, :]
        cos3, sin3, cos4, sin4 = cos_t[2], sin_t[2], cos_t[3], sin_t[3]
        parts = (cos4[c4] * cos3[a], cos4[c4] * sin3[a], sin4[c4] * cos3[b], sin4[c4] * sin3[b])
        table = np.stack(np.broadcast_arrays(*parts), axis=-1)
        return table.reshape(-1, 4).astype(work, copy=False)

    return _table(plan, "upper table", dtype, work, build=build)


def _folded_entries(plan) -> int:
    """Entries per query of the table that folds levels 1 and 2: ``dim / 4 * 4**b1 * 2**b2``."""
    return plan.dim // 4 << (2 * plan.bits[0] + plan.bits[1])


def fold_rows(plan) -> int | None:
    """The fewest rows from which :func:`polar_score` folds levels 1 and 2 into the query's table.

    ``None`` where it never does: one level, or more than ``FOLD_ENTRIES`` entries per
    level-2 node.  Else the rows ``r`` with ``FOLD_ROW_FACTOR * r`` at least the folded
    table's ``dim / 4 * 4**bits[0] * 2**bits[1]`` entries per query (``polarquant warmup``
    scores that many rows to compile the folded kernel).
    """
    bits = plan.bits
    if len(bits) < 2:
        return None
    if 1 << (2 * bits[0] + bits[1]) > FOLD_ENTRIES or FOLD_ROW_FACTOR <= 0:
        return None
    return max(1, -(-_folded_entries(plan) // FOLD_ROW_FACTOR))


# -- the forward transform ------------------------------------------------------------------------
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


@_kernel(inline="always")
def _pair_level(src, dst, psi, ch, count):
    """One level ``l >= 2`` of the transform: ``psi_j, dst_j = atan2, hypot(src_2j, src_2j+1)``.

    The radii are ``>= 0``, so the angles lie in ``[0, pi/2]``.
    """
    for j in range(count):
        t, r = _polar_pair(src[ch, 2 * j], src[ch, 2 * j + 1])
        psi[ch, j] = t
        dst[ch, j] = r


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
    (``counts[l-1]`` thresholds padded with ``+inf``) and packed straight into
    the row's codes at ``codes[row, offsets[l-1]:]``, ``bits[l-1]`` wide; the
    last level's radii go to ``radii[row]``.  The scratch ``psi``, ``ra``, ``rb``
    and ``code`` are ``(nchunks, dim // 2)`` arguments, not local buffers: only
    then do the loops vectorise (measured: 3x slower with local buffers).  No
    fastmath.
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


# -- the inverse transform ------------------------------------------------------------------------
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
def _expand(src, dst, code, count, cos_t, sin_t, level):
    """One level of the inverse transform: ``r_j -> (r_j cos c[k_j], r_j sin c[k_j])``."""
    for j in range(count):
        r = src[j]
        k = code[j]
        dst[2 * j] = r * cos_t[level, k]
        dst[2 * j + 1] = r * sin_t[level, k]


@_kernel(inline="always")
def _rebuild(codes, offsets, row, radii, cos_t, sin_t, bits, down_to, ra, rb, code):
    """Inverse polar transform of one row from level ``L`` down to level ``down_to``, into ``ra``.

    ``down_to = 1`` gives the coordinates; ``down_to = 2`` the radii of level 1
    (``down_to = L + 1``: the stored radii alone).  Level ``l``'s codes are the
    bytes ``offsets[l-1]:offsets[l]`` of the row, read through a view of just
    those bytes (``codes[row:row+1, lo:hi]``, as the reference's
    ``codes[..., plan.level_slice(l)]``): indexing ``codes[row, lo + k]``
    instead measured 1.4x slower for ``polar_values`` (the unpacking loops no
    longer vectorise as well), a view of the level's columns of every row
    (``codes[:, lo:hi]``) 3-5 % slower.  The buffers alternate; the start is
    chosen so that the last level lands in ``ra``.  The radii are read by
    :func:`_load_radii`.
    """
    levels = bits.shape[0]
    count = radii.shape[1]
    first = (levels - down_to + 1) % 2  # an odd number of levels: start in rb
    if first == 1:
        _load_radii(radii, row, rb, count)
    else:
        _load_radii(radii, row, ra, count)
    for level in range(levels - 1, down_to - 2, -1):
        lo, hi = offsets[level], offsets[level + 1]
        _unpack(codes[row : row + 1, lo:hi], 0, 0, hi - lo, count, bits[level], code)
        if (levels - 1 - level + first) % 2 == 1:
            _expand(rb, ra, code, count, cos_t, sin_t, level)
        else:
            _expand(ra, rb, code, count, cos_t, sin_t, level)
        count *= 2


@_kernel(parallel=True)
def polar_values_kernel(codes, offsets, radii, cos_t, sin_t, bits, out):
    """The reconstruction ``out (rows, dim)`` from the angle codes and the radii.

    ``codes (rows, nbytes)`` holds every level's packed codes, level ``l`` at
    bytes ``offsets[l-1]:offsets[l]``; ``cos_t``/``sin_t (L, 2**max_bits)``
    are the cosines and sines of each level's centroids (computed by NumPy in the
    dtype the reference decodes in).  Products only and no fastmath: the values
    equal the reference's bit for bit.
    """
    rows, dim = out.shape
    nchunks = min(rows, CHUNKS)
    for ch in prange(nchunks):
        ra = np.empty(dim, dtype=out.dtype)
        rb = np.empty(dim, dtype=out.dtype)
        code = np.empty(dim // 2 + 8, dtype=np.int32)
        start, stop = _chunk(rows, nchunks, ch)
        for row in range(start, stop):
            _rebuild(codes, offsets, row, radii, cos_t, sin_t, bits, 1, ra, rb, code)
            for j in range(dim):
                out[row, j] = ra[j]


# -- scores from the codes ------------------------------------------------------------------------
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
def polar_score_kernel(tables, codes, offsets, radii, cos_t, sin_t, bits, out):
    """``out[i, row] = sum_j r_j tables[i, K j + k_j]``: the score from the codes.

    ``r_j`` are the row's level-1 radii, rebuilt (levels ``L..2``) in scratch and
    shared by the queries, ``k_j`` its level-1 codes and ``tables`` the queries
    with level 1 folded in (:func:`level1_tables`, ``K = 2**bits[0]``).
    """
    nq = tables.shape[0]
    rows = codes.shape[0]
    levels = bits.shape[0]
    half = radii.shape[1] << (levels - 1)
    ncodes = tables.shape[1] // max(half, 1)
    nchunks = min(rows, CHUNKS)
    for ch in prange(nchunks):
        level1 = codes[:, offsets[0] : offsets[1]]  # a view of level 1's codes, as in _rebuild
        ra = np.empty(max(half, 1), dtype=out.dtype)
        rb = np.empty(max(half, 1), dtype=out.dtype)
        code = np.empty(half + 8, dtype=np.int32)
        start, stop = _chunk(rows, nchunks, ch)
        for row in range(start, stop):
            _rebuild(codes, offsets, row, radii, cos_t, sin_t, bits, 2, ra, rb, code)
            _unpack(level1, row, 0, level1.shape[1], half, bits[0], code)
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


_FOLDED_KERNELS: dict = {}


def polar_score_folded_kernel(b1: int, b2: int, b3: int = 0, b4: int = 0):
    """The folded score kernel compiled for level bit widths ``b1, b2`` (and ``b3, b4``).

    ``kernel(folded, upper, codes, offsets, radii, cos_t, sin_t, bits, out)`` computes
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
    its byte with constant shifts and masks (:func:`._common._code_at`), which
    measured 2 to 3 times faster than the same loop with the widths read at run
    time.
    """
    key = (int(b1), int(b2), int(b3), int(b4))
    if key not in _FOLDED_KERNELS:
        _FOLDED_KERNELS[key] = _make_folded_kernel(*key)
    return _FOLDED_KERNELS[key]


def _make_folded_kernel(B1, B2, B3, B4):
    """Compile ``polar_score_folded_kernel`` for one combination of widths."""

    @_kernel(parallel=True, fastmath=SCORE_FASTMATH)
    def kernel(folded, upper, codes, offsets, radii, cos_t, sin_t, bits, out):
        nq = folded.shape[0]
        rows = codes.shape[0]
        levels = bits.shape[0]
        nodes = radii.shape[1] << (levels - 2)
        n4 = radii.shape[1] << max(levels - 4, 0)
        per = folded.shape[1] // max(nodes, 1)
        nchunks = min(rows, CHUNKS)
        for ch in prange(nchunks):
            # views of the levels' codes, as in _rebuild
            level1 = codes[:, offsets[0] : offsets[1]]
            level2 = codes[:, offsets[1] : offsets[2]]
            ra = np.empty(max(nodes, 1), dtype=out.dtype)
            rb = np.empty(max(nodes, 1), dtype=out.dtype)
            code = np.empty(nodes + 8, dtype=np.int32)
            idx = np.empty(max(nodes, 1), dtype=np.int64)
            start, stop = _chunk(rows, nchunks, ch)
            for row in range(start, stop):
                if B4 == 0:  # levels L..3 one by one: the level-2 radii in ra
                    _rebuild(codes, offsets, row, radii, cos_t, sin_t, bits, 3, ra, rb, code)
                else:  # the level-4 radii in rb, then levels 4 and 3 from the table
                    _rebuild(codes, offsets, row, radii, cos_t, sin_t, bits, 5, rb, ra, code)
                    level3 = codes[:, offsets[2] : offsets[3]]
                    level4 = codes[:, offsets[3] : offsets[4]]
                    for m in range(n4):
                        k = (
                            (_code_at(level4, row, m, B4) << (2 * B3))
                            | (_code_at(level3, row, 2 * m, B3) << B3)
                            | _code_at(level3, row, 2 * m + 1, B3)
                        )
                        r = rb[m]
                        for t in range(4):
                            ra[4 * m + t] = r * upper[k, t]
                for n in range(nodes):
                    if B1 == 4:
                        pair = np.int64(level1[row, n])
                    else:
                        pair = (_code_at(level1, row, 2 * n, B1) << B1) | _code_at(
                            level1, row, 2 * n + 1, B1
                        )
                    idx[n] = per * n + (pair << B2) + _code_at(level2, row, n, B2)
                for i in range(nq):
                    s = out.dtype.type(0)
                    for n in range(nodes):
                        s += ra[n] * folded[i, idx[n]]
                    out[i, row] = s

    return kernel


# -- weighted sums of decoded rows (attention values) ---------------------------------------------
@_kernel(parallel=True, fastmath=SCORE_FASTMATH)
def polar_weighted_sum_kernel(w, codes, offsets, radii, cos_t, sin_t, bits, partial):
    """``partial[ch] = sum_r outer(w[:, r], y_hat_r)`` over the rows ``r`` of chunk ``ch``.

    ``y_hat_r`` is the reconstruction of :func:`polar_values_kernel` (same
    :func:`_rebuild`, so the same products), rebuilt four rows at a time into
    scratch and added to the chunk's ``(nw, dim)`` accumulator as in
    :func:`.scalar.scalar_weighted_sum_kernel`.
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
                _rebuild(codes, offsets, row + b, radii, cos_t, sin_t, bits, 1, vec[b], rb, code)
            if block == 4:
                _accumulate4(acc, w, row, vec[0], vec[1], vec[2], vec[3], dim)
            else:
                for b in range(block):
                    _accumulate1(acc, w, row + b, vec[b], dim)
            row += block
