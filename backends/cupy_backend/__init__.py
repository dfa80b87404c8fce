"""The CuPy backend: the reference's eleven operations as raw CUDA kernels.

Same names, signatures and results as :mod:`polarquant.backends.numpy_backend`
(the reference; read its table first): packed bytes identical to the
reference's away from decision boundaries, values and scores equal within
float tolerance.  Only CuPy arrays are accepted, constants included: NumPy
input is a ``TypeError``, because polarquant never moves data between host and
device implicitly (move it yourself with ``cupy.asarray``).

Each operation here is a thin typed entry point: validate the arguments as
the reference would, normalise dtype and layout (C-contiguous float32 or
float64: one kernel variant per dtype), allocate the output on the input's
device, launch, reshape.  The CUDA C is in ``kernels.cu`` (package data,
compiled once per process on first use); launch sizes and shared memory are
planned by :mod:`._launch`.

=======================  ==============================================  ================================
operation                kernels (``_f32`` / ``_f64``)                   differs from the reference
=======================  ==============================================  ================================
``scalar_encode``        ``scalar_encode``                               never (exact comparisons)
``scalar_values``        ``scalar_values``                               never (a gather)
``scalar_score``         ``scalar_score_lut`` (1, 2, 4, 8 bits, table    summation order (rtol ~1e-6)
                         fits, >= 1024 rows), else
                         ``scalar_score_gather``
``sign_encode``          ``sign_encode``                                 never
``sign_values``          ``sign_values``                                 never
``sign_score``           ``sign_score_lut``, else ``sign_score_gather``  summation order
``polar_encode``         ``polar_encode`` (a block per row)              ``atan2``/``hypot`` last bits:
                                                                         angles within ~1e-6 of a
                                                                         boundary may differ by one code
``polar_values``         ``polar_values``                                ``cos``/``sin`` of the centroids
                                                                         computed on the device (1 ulp)
``polar_score``          ``polar_score`` (never writes decoded rows)     as above, and summation order
``scalar_weighted_sum``  ``scalar_weighted_sum`` (a run of rows per      summation order, which varies
                         block, partial sums added with ``atomicAdd``    from run to run (atomics)
                         into a zeroed output)
``polar_weighted_sum``   ``polar_weighted_sum`` (the same; rows          as ``polar_values``, and
                         decoded as in ``polar_values``)                 summation order (atomics)
=======================  ==============================================  ================================

Validation follows the reference and the numba backend (same exception types
for the same bad input), with two stricter checks: a codebook with fewer than
``2**bits`` centroids raises ``IndexError`` up front, one with more than
``2**bits - 1`` boundaries ``ValueError`` (the weighted sums take codes
of one ``(rows, nbytes)`` batch only, as every backend does); and two
limits of the kernels: ``polar_encode`` needs exactly ``2**b - 1`` boundaries
per level (what every codebook has) and at most 16 levels.

GPU execution is unverified (``docs/performance.md``), the weighted sums'
included: the CUDA sources are compile-checked with nvcc for sm_80 and sm_90,
and the host side and the kernels' arithmetic are tested with the launch
mocked and the kernels emulated on the CPU (``tests/test_cuda.py``); the
``gpu`` tests there need a CUDA device.

Examples
--------
On a machine with a CUDA device (skipped by doctest elsewhere):

>>> import cupy as cp  # doctest: +SKIP
>>> from polarquant.backends import cupy_backend as cb
>>> y, bnd = cp.array([[-1.0, 0.0, 0.5, 2.0]]), cp.array([-0.5, 0.0, 1.0])  # doctest: +SKIP
>>> cb.scalar_encode(y, bnd, 2)  # doctest: +SKIP
array([[43]], dtype=uint8)
"""

from __future__ import annotations

import math

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
from . import _launch

NAME = "cupy"

#: Kept chunked like the reference until the GPU path is measured (``Quantizer._score_chunks``).
SCORES_FROM_CODES = False

__all__ = ["NAME", "SCORES_FROM_CODES", *OPERATIONS]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


# -- argument normalisation ------------------------------------------------------------------------
def _device(a, name: str, cp):
    """``a`` itself if it is a CuPy array, else ``TypeError`` (no implicit transfer)."""
    if not isinstance(a, cp.ndarray):
        kind = f"{type(a).__module__}.{type(a).__qualname__}"
        raise TypeError(
            f"the cupy backend needs CuPy arrays, but {name} is a {kind}; polarquant never moves "
            f"data between host and device implicitly: move it first with cupy.asarray({name})"
        )
    return a


def _device_id(arrays) -> int:
    """The one CUDA device all ``arrays`` live on (``ValueError`` if they are spread)."""
    ids = {int(a.device.id) for a in arrays}
    if len(ids) != 1:
        raise ValueError(
            f"the arrays of one operation must be on one device, got devices {sorted(ids)}"
        )
    return ids.pop()


def _work_dtype(*dtypes) -> np.dtype:
    return work_dtype("cupy", *dtypes)


def _rows(cp, a, n: int, dtype):
    """``a (..., n)`` as a C-contiguous ``(rows, n)`` array of ``dtype`` (a view when possible)."""
    rows = math.prod(a.shape[:-1])  # not reshape(-1, n): ambiguous for n = 0
    return cp.ascontiguousarray(a.reshape(rows, n).astype(dtype, copy=False))


def _check_row_bits(n: int, bits: int, name: str = "n") -> None:
    """Per-row bit counts are 32-bit ints in the kernels."""
    if n * bits + 7 > _launch.INT32_MAX:
        raise ValueError(
            f"{name}={n} codes of {bits} bits per row exceed the kernels' 2**31-bit rows"
        )


def _packed(cp, packed, bits: int, n: int, name: str = "packed codes"):
    """Check packed codes as :func:`polarquant.packing.unpack_codes` does; return ``(rows, nbytes)``."""
    packed = _device(packed, name, cp)
    if packed.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8, got {packed.dtype}")
    if packed.ndim == 0:
        raise ValueError(f"{name} must have shape (..., nbytes), got a 0-d array")
    _check_row_bits(n, bits)
    need = -(-n * bits // 8)
    if packed.shape[-1] != need:
        raise ValueError(
            f"packed array has {packed.shape[-1]} bytes per vector, but {n} codes of {bits} bits "
            f"need {need}"
        )
    return _rows(cp, packed, need, np.uint8)


def _codebook(cp, values, bits: int, dtype, name: str = "centroids"):
    """A 1-D codebook with at least ``2**bits`` entries, as ``dtype`` (the first ``2**bits``)."""
    values = _device(values, name, cp)
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {values.shape}")
    if values.shape[0] < 1 << bits:
        raise IndexError(
            f"{bits}-bit codes index {1 << bits} {name}, but only {values.shape[0]} were given"
        )
    return cp.ascontiguousarray(values[: 1 << bits].astype(dtype, copy=False))


def _boundaries(cp, values, bits: int, name: str = "boundaries"):
    """1-D sorted thresholds, at most ``2**bits - 1`` of them (checked, not converted)."""
    values = _device(values, name, cp)
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D (sorted thresholds), got shape {values.shape}")
    if values.shape[0] > (1 << bits) - 1:
        raise ValueError(
            f"{values.shape[0]} boundaries give codes up to {values.shape[0]}, more than "
            f"{bits} bits hold"
        )
    return values


def _queries(cp, q, n: int, name: str = "queries"):
    q = _device(q, name, cp)
    check_query_width(q, n, name)
    return q


def _elementwise(name: str, work: int, args: tuple, shared: int, dev: int) -> None:
    """Launch a one-thread-per-item grid-stride kernel (nothing to do for no items)."""
    if work == 0:
        return
    lim = _launch.device_limits(dev)
    grid = (_launch.elementwise_grid(work, lim),)
    _launch.launch(name, grid, (_launch.THREADS,), args, shared, dev)


def _scores(
    name: str,
    rows: int,
    nq: int,
    elements: int,
    args_before_group: tuple,
    out,
    shared: int,
    dev: int,
) -> None:
    """Launch a score kernel: ``group`` lanes per row over ``elements`` items per row."""
    if rows == 0 or nq == 0 or elements == 0:
        return
    lim = _launch.device_limits(dev)
    group = _launch.group_size(elements)
    grid = _launch.score_grid(rows, nq, group, shared, lim)
    args = (*args_before_group, np.int32(group), out)
    _launch.launch(name, grid, (_launch.THREADS,), args, shared, dev)


def _scores_lut_or_gather(
    kind: str,
    lut_bits: int,
    head: tuple,
    rows: int,
    nq: int,
    nbytes: int,
    n: int,
    gather_shared: int,
    out,
    work,
    dev: int,
) -> None:
    """Score with the per-query byte tables when they fit (1, 2, 4, 8 bits), else by gathering.

    ``kind`` is ``"scalar"`` or ``"sign"``; ``lut_bits`` the code width seen by
    :func:`_launch.use_lut` (1 for sign bits).
    """
    lim = _launch.device_limits(dev) if rows and nq and n else None
    if lim is not None and _launch.use_lut(lut_bits, nbytes, rows, work.itemsize, lim):
        stride = _launch.lut_stride(nbytes)
        _scores(
            f"{kind}_score_lut_{_SUFFIX[work]}",
            rows,
            nq,
            nbytes,
            (*head, np.int32(stride)),
            out,
            _launch.lut_shared_bytes(nbytes, work.itemsize),
            dev,
        )
    else:
        _scores(f"{kind}_score_gather_{_SUFFIX[work]}", rows, nq, n, head, out, gather_shared, dev)


# -- scalar codebooks ---------------------------------------------------------------------------
def scalar_encode(y, boundaries, bits: int):
    """Codes of ``y (n, D)`` against one scalar codebook, packed ``(n, ceil(D b / 8))``."""
    cp = _launch.get_cupy()
    bits = check_bits(bits)
    y = _device(y, "x", cp)
    if y.ndim == 0:
        raise ValueError("x must have shape (..., n), got a 0-d array")
    bnd = _boundaries(cp, boundaries, bits)
    dev = _device_id((y, bnd))
    *batch, n = y.shape
    _check_row_bits(n, bits)
    work = _work_dtype(y.dtype, bnd.dtype)
    nbytes = -(-n * bits // 8)
    with cp.cuda.Device(dev):
        y2 = _rows(cp, y, n, work)
        bnd = cp.ascontiguousarray(bnd.astype(work, copy=False))
        rows = y2.shape[0]
        out = cp.empty((rows, nbytes), dtype=np.uint8)
        args = (y2, np.int64(rows), np.int32(n), bnd, np.int32(bnd.shape[0]), np.int32(bits), out)
        _elementwise(
            f"scalar_encode_{_SUFFIX[work]}", rows * nbytes, args, bnd.shape[0] * work.itemsize, dev
        )
    return out.reshape(*batch, nbytes)


def scalar_values(packed, centroids, bits: int, n: int):
    """``c[idx]`` of packed codes ``(rows, .)`` -> ``(rows, n)`` in the centroids' dtype."""
    cp = _launch.get_cupy()
    bits = check_bits(bits)
    n = check_int(n, "n", low=0)
    packed2 = _packed(cp, packed, bits, n)
    centroids = _device(centroids, "centroids", cp)
    dtype = centroids.dtype
    work = _work_dtype(dtype)
    dev = _device_id((packed2, centroids))
    with cp.cuda.Device(dev):
        cents = _codebook(cp, centroids, bits, work)
        rows = packed2.shape[0]
        out = cp.empty((rows, n), dtype=work)
        args = (packed2, np.int64(rows), np.int32(n), np.int32(bits), cents, out)
        _elementwise(
            f"scalar_values_{_SUFFIX[work]}", rows * n, args, (1 << bits) * work.itemsize, dev
        )
    return out.reshape(*packed.shape[:-1], n).astype(dtype, copy=False)


def scalar_score(q, packed, centroids, bits: int, n: int):
    """``q (nq, n) @ c[idx].T`` -> ``(nq, rows)``."""
    cp = _launch.get_cupy()
    bits = check_bits(bits)
    n = check_int(n, "n", low=0)
    packed2 = _packed(cp, packed, bits, n)
    q = _queries(cp, q, n)
    centroids = _device(centroids, "centroids", cp)
    out_dtype = np.result_type(q.dtype, centroids.dtype)
    work = _work_dtype(out_dtype)
    shape = score_shape(q, packed.ndim, packed2.shape[0])
    dev = _device_id((packed2, q, centroids))
    with cp.cuda.Device(dev):
        q2 = _rows(cp, q, n, work)
        cents = _codebook(cp, centroids, bits, work)
        rows, nq, nbytes = packed2.shape[0], q2.shape[0], packed2.shape[1]
        out = (cp.zeros if n == 0 else cp.empty)((nq, rows), dtype=work)
        head = (q2, np.int64(nq), packed2, np.int64(rows), np.int32(n), np.int32(bits), cents)
        _scores_lut_or_gather(
            "scalar", bits, head, rows, nq, nbytes, n, (1 << bits) * work.itemsize, out, work, dev
        )
    return out.reshape(shape).astype(out_dtype, copy=False)


# -- sign bits -----------------------------------------------------------------------------------
def sign_encode(p):
    """Packed sign bits (1 for ``p >= 0``) of ``p (rows, m)``."""
    cp = _launch.get_cupy()
    p = _device(p, "x", cp)
    if p.ndim == 0:
        raise ValueError("x must have shape (..., n), got a 0-d array")
    *batch, m = p.shape
    _check_row_bits(m, 1, "m")
    work = _work_dtype(p.dtype)
    dev = _device_id((p,))
    nbytes = -(-m // 8)
    with cp.cuda.Device(dev):
        p2 = _rows(cp, p, m, work)
        rows = p2.shape[0]
        out = cp.empty((rows, nbytes), dtype=np.uint8)
        _elementwise(
            f"sign_encode_{_SUFFIX[work]}",
            rows * nbytes,
            (p2, np.int64(rows), np.int32(m), out),
            0,
            dev,
        )
    return out.reshape(*batch, nbytes)


def sign_values(packed, m: int, dtype):
    """The packed signs as ``+1/-1`` of ``dtype``, ``(rows, m)``."""
    cp = _launch.get_cupy()
    m = check_int(m, "m", low=0)
    packed2 = _packed(cp, packed, 1, m)
    dtype = np.dtype(np.float32 if dtype is None else dtype)
    work = dtype if dtype in _FLOATS else np.dtype(np.float64)
    dev = _device_id((packed2,))
    with cp.cuda.Device(dev):
        rows = packed2.shape[0]
        out = cp.empty((rows, m), dtype=work)
        _elementwise(
            f"sign_values_{_SUFFIX[work]}",
            rows * m,
            (packed2, np.int64(rows), np.int32(m), out),
            0,
            dev,
        )
    return out.reshape(*packed.shape[:-1], m).astype(dtype, copy=False)


def sign_score(s, packed, m: int):
    """``s (nq, m) @ sign.T`` -> ``(nq, rows)``."""
    cp = _launch.get_cupy()
    m = check_int(m, "m", low=0)
    packed2 = _packed(cp, packed, 1, m)
    s = _queries(cp, s, m)
    work = _work_dtype(s.dtype)
    shape = score_shape(s, packed.ndim, packed2.shape[0])
    dev = _device_id((packed2, s))
    with cp.cuda.Device(dev):
        s2 = _rows(cp, s, m, work)
        rows, nq, nbytes = packed2.shape[0], s2.shape[0], packed2.shape[1]
        out = (cp.zeros if m == 0 else cp.empty)((nq, rows), dtype=work)
        head = (s2, np.int64(nq), packed2, np.int64(rows), np.int32(m))
        _scores_lut_or_gather("sign", 1, head, rows, nq, nbytes, m, 0, out, work, dev)
    return out.reshape(shape).astype(s.dtype, copy=False)


# -- the polar transform -------------------------------------------------------------------------
def _level_bits(bits, levels: int) -> list[int]:
    bits = [check_bits(b) for b in bits]
    if len(bits) != levels:
        raise ValueError(f"expected {levels} bit widths (one per level), got {len(bits)}")
    return bits


def _check_levels_supported(levels: int) -> None:
    if levels > _launch.MAX_LEVELS:
        raise ValueError(
            f"the cupy kernels take at most {_launch.MAX_LEVELS} polar levels, got {levels}"
        )


def _level_pointers(arrays) -> tuple:
    """One kernel argument per level; the levels past the last get a NULL pointer.

    NULL travels as ``numpy.uint64(0)``: CuPy passes a NumPy scalar's bytes,
    and eight zero bytes are a null pointer.
    """
    return (*arrays, *([_launch.NULL] * (_launch.MAX_LEVELS - len(arrays))))


def _polar_codes(cp, packed, radii, centroids, bits, dim: int):
    """Validate the inputs of ``polar_values``/``polar_score`` as the reference would.

    Returns ``(parts (rows, nbytes_l) per level, radii, bits, batch, dtypes)``.
    """
    packed, centroids, bits = check_polar_levels(packed, centroids, bits)
    levels = len(packed)
    if levels == 0:
        raise ValueError("the polar transform needs at least one level")
    _check_levels_supported(levels)
    dim = check_int(dim, "dim", low=0)
    _check_row_bits(dim, 1, "dim")
    radii = _device(radii, "radii", cp)
    bits = [check_bits(b) for b in bits]
    counts = [dim >> level for level in range(1, levels + 1)]
    parts = [
        _packed(cp, p, b, n, f"angle codes of level {level}")
        for level, (p, n, b) in enumerate(zip(packed, counts, bits, strict=True), start=1)
    ]
    batch = tuple(radii.shape[:-1])
    if (
        radii.ndim == 0
        or dim % (1 << levels)
        or radii.shape[-1] != (dim >> levels)
        or any(tuple(p.shape[:-1]) != batch for p in packed)
    ):
        raise ValueError(
            f"radii of shape {radii.shape} and angle codes of shapes "
            f"{[tuple(p.shape) for p in packed]} do not match dim={dim} with {levels} levels"
        )
    for level, c in enumerate(centroids, start=1):
        _device(c, f"centroids of level {level}", cp)
    dtypes = [radii.dtype, *(c.dtype for c in centroids)]
    return parts, radii, bits, batch, dtypes


def polar_encode(y, levels: int, boundaries, bits):
    """Polar transform of ``y (n, D)``; returns (packed angle codes per level, radii)."""
    cp = _launch.get_cupy()
    y = _device(y, "x", cp)
    dim = y.shape[-1]  # a 0-d y raises IndexError here, as in the reference
    batch = tuple(y.shape[:-1])
    levels = check_levels(dim, levels)
    _check_levels_supported(levels)
    _check_row_bits(dim, 1, "dim")
    boundaries = [_device(b, f"boundaries of level {i}", cp) for i, b in enumerate(boundaries, 1)]
    if len(boundaries) != levels:
        raise ValueError(
            f"expected {levels} boundary arrays (one per level), got {len(boundaries)}"
        )
    bits = _level_bits(bits, levels)
    for level, (b, w) in enumerate(zip(boundaries, bits, strict=True), start=1):
        _boundaries(cp, b, w, f"boundaries of level {level}")
        if b.shape[0] != (1 << w) - 1:
            raise ValueError(
                f"the cupy polar_encode kernel needs the full codebook: {(1 << w) - 1} boundaries "
                f"for the {w}-bit level {level}, got {b.shape[0]}"
            )
    work = _work_dtype(y.dtype, *(b.dtype for b in boundaries))
    dev = _device_id((y, *boundaries))
    counts = [dim >> level for level in range(1, levels + 1)]
    nbytes = [-(-n * b // 8) for n, b in zip(counts, bits, strict=True)]
    shared = _launch.polar_encode_shared_bytes(dim, bits, work.itemsize)
    with cp.cuda.Device(dev):
        _launch.check_shared(shared, dev, f"polar_encode of dim={dim}")
        y2 = _rows(cp, y, dim, work)
        bnd = [cp.ascontiguousarray(b.astype(work, copy=False)) for b in boundaries]
        rows = y2.shape[0]
        packed = [cp.empty((rows, nb), dtype=np.uint8) for nb in nbytes]
        radii = cp.empty((rows, dim >> levels), dtype=work)
        if rows and dim:
            lim = _launch.device_limits(dev)
            args = (
                y2,
                np.int64(rows),
                np.int32(dim),
                np.int32(levels),
                _launch.level_bits_word(bits),
                *_level_pointers(bnd),
                *_level_pointers(packed),
                radii,
            )
            _launch.launch(
                f"polar_encode_{_SUFFIX[work]}",
                (_launch.rows_grid(rows, lim),),
                (_launch.polar_encode_threads(dim),),
                args,
                shared,
                dev,
            )
    out_dtype = y.dtype if y.dtype.kind == "f" else work
    packed = [p.reshape(*batch, nb) for p, nb in zip(packed, nbytes, strict=True)]
    return packed, radii.reshape(*batch, dim >> levels).astype(out_dtype, copy=False)


def polar_values(packed, radii, centroids, bits, dim: int):
    """Inverse polar transform of the decoded angles and the radii -> ``(rows, dim)``."""
    cp = _launch.get_cupy()
    parts, radii, bits, batch, dtypes = _polar_codes(cp, packed, radii, centroids, bits, dim)
    levels = len(bits)
    out_dtype = np.result_type(*dtypes)
    work = _work_dtype(out_dtype)
    dev = _device_id((radii, *parts, *centroids))
    shared = _launch.polar_trig_shared_bytes(bits, work.itemsize)
    with cp.cuda.Device(dev):
        r2 = _rows(cp, radii, radii.shape[-1], work)
        cents = [
            _codebook(cp, c, b, work, f"centroids of level {level}")
            for level, (c, b) in enumerate(zip(centroids, bits, strict=True), start=1)
        ]
        rows = r2.shape[0]
        out = cp.empty((rows, dim), dtype=work)
        args = (
            r2,
            np.int64(rows),
            np.int32(dim),
            np.int32(levels),
            _launch.level_bits_word(bits),
            *_level_pointers(parts),
            *_level_pointers(cents),
            out,
        )
        _elementwise(f"polar_values_{_SUFFIX[work]}", rows * (dim // 2), args, shared, dev)
    return out.reshape(*batch, dim).astype(out_dtype, copy=False)


def polar_score(q, packed, radii, centroids, bits, dim: int):
    """``q (nq, dim) @ polar_values(...).T`` -> ``(nq, rows)``."""
    cp = _launch.get_cupy()
    parts, radii, bits, batch, dtypes = _polar_codes(cp, packed, radii, centroids, bits, dim)
    levels = len(bits)
    q = _queries(cp, q, dim)
    out_dtype = np.result_type(q.dtype, *dtypes)
    work = _work_dtype(out_dtype)
    dev = _device_id((q, radii, *parts, *centroids))
    shared = _launch.polar_trig_shared_bytes(bits, work.itemsize)
    with cp.cuda.Device(dev):
        q2 = _rows(cp, q, dim, work)
        r2 = _rows(cp, radii, radii.shape[-1], work)
        shape = score_shape(q, len(batch) + 1, r2.shape[0])
        cents = [
            _codebook(cp, c, b, work, f"centroids of level {level}")
            for level, (c, b) in enumerate(zip(centroids, bits, strict=True), start=1)
        ]
        rows, nq = r2.shape[0], q2.shape[0]
        out = (cp.zeros if dim == 0 else cp.empty)((nq, rows), dtype=work)
        head = (
            q2,
            np.int64(nq),
            r2,
            np.int64(rows),
            np.int32(dim),
            np.int32(levels),
            _launch.level_bits_word(bits),
            *_level_pointers(parts),
            *_level_pointers(cents),
        )
        _scores(f"polar_score_{_SUFFIX[work]}", rows, nq, dim // 2, head, out, shared, dev)
    return out.reshape(shape).astype(out_dtype, copy=False)


# -- weighted sums of decoded rows (attention values) ----------------------------------------------
def _weights(cp, w, rows: int, codes_ndim: int, name: str = "weights"):
    """``w (..., rows)`` of this backend's arrays; see ``_checks.check_weight_width``."""
    return check_weight_width(_device(w, name, cp), rows, codes_ndim, name)


def _weighted_sums(name: str, rows: int, nw: int, cols: int, args: tuple, out, shared, dev):
    """Launch a weighted-sum kernel into the zeroed ``out`` (nothing to add for empty problems)."""
    if rows == 0 or nw == 0 or cols == 0:
        return
    grid = _launch.weighted_sum_grid(rows, nw, _launch.device_limits(dev))
    _launch.launch(name, grid, (_launch.THREADS,), (*args, out), shared, dev)


def scalar_weighted_sum(w, packed, centroids, bits: int, n: int):
    """``w (nw, rows) @ c[idx]`` -> ``(nw, n)``: the dual of ``scalar_score`` (attention values)."""
    cp = _launch.get_cupy()
    bits = check_bits(bits)
    n = check_int(n, "n", low=0)
    packed2 = _packed(cp, packed, bits, n)
    rows = packed2.shape[0]
    w = _weights(cp, w, rows, packed.ndim)
    centroids = _device(centroids, "centroids", cp)
    out_dtype = np.result_type(w.dtype, centroids.dtype)
    work = _work_dtype(out_dtype)
    dev = _device_id((packed2, w, centroids))
    with cp.cuda.Device(dev):
        w2 = _rows(cp, w, rows, work)
        cents = _codebook(cp, centroids, bits, work)
        nw = w2.shape[0]
        out = cp.zeros((nw, n), dtype=work)
        args = (w2, np.int64(nw), packed2, np.int64(rows), np.int32(n), np.int32(bits), cents)
        shared = (1 << bits) * work.itemsize
        _weighted_sums(f"scalar_weighted_sum_{_SUFFIX[work]}", rows, nw, n, args, out, shared, dev)
    return out.reshape(*w.shape[:-1], n).astype(out_dtype, copy=False)


def polar_weighted_sum(w, packed, radii, centroids, bits, dim: int):
    """``w (nw, rows) @ polar_values(...)`` -> ``(nw, dim)``: the dual of ``polar_score``."""
    cp = _launch.get_cupy()
    parts, radii, bits, batch, dtypes = _polar_codes(cp, packed, radii, centroids, bits, dim)
    levels = len(bits)
    rows = math.prod(batch)
    w = _weights(cp, w, rows, len(batch) + 1)
    out_dtype = np.result_type(w.dtype, *dtypes)
    work = _work_dtype(out_dtype)
    dev = _device_id((w, radii, *parts, *centroids))
    shared = _launch.polar_trig_shared_bytes(bits, work.itemsize)
    with cp.cuda.Device(dev):
        w2 = _rows(cp, w, rows, work)
        r2 = _rows(cp, radii, radii.shape[-1], work)
        cents = [
            _codebook(cp, c, b, work, f"centroids of level {level}")
            for level, (c, b) in enumerate(zip(centroids, bits, strict=True), start=1)
        ]
        nw = w2.shape[0]
        out = cp.zeros((nw, dim), dtype=work)
        args = (
            w2,
            np.int64(nw),
            r2,
            np.int64(rows),
            np.int32(dim),
            np.int32(levels),
            _launch.level_bits_word(bits),
            *_level_pointers(parts),
            *_level_pointers(cents),
        )
        name = f"polar_weighted_sum_{_SUFFIX[work]}"
        _weighted_sums(name, rows, nw, dim // 2, args, out, shared, dev)
    return out.reshape(*w.shape[:-1], dim).astype(out_dtype, copy=False)
