"""The polar transform on the GPU (PolarQuant Sec. 3.1, Alg. 1): the entry points of ``polar.cu``.

Mirrors :func:`polarquant.backends.numpy_backend.polar_encode`,
``polar_values``, ``polar_score`` and ``polar_weighted_sum``: same
signatures, same checks in the same order, same result dtypes.  The angle
codes of a row are one byte array (:class:`polarquant.plan.PolarPlan`: level
``l`` at bytes ``offsets[l-1]:offsets[l]``), and so is the kernels' view of
them: one ``(rows, nbytes)`` pointer plus the plan's offsets.

Held to the reference by ``tests/test_backends.py`` (on a GPU) and
``tests/test_cuda.py`` (the kernels emulated on the CPU, every launch checked).

What the kernels need of the plan, derived once per dtype and device and kept
with the plan (``plan.derived``, :func:`._arrays.device_table`):

* ``offsets``: the plan's ``L + 1`` byte offsets, ``int32``;
* ``boundaries``: every level's thresholds, one ``(L, 2**max(bits) - 1)``
  table (row ``l - 1`` for level ``l``, its first ``2**b_l - 1`` entries),
  :meth:`~polarquant.plan.PolarPlan.boundary_table`: rounded to the data's
  compute dtype, as the reference compares them;
* ``trig``: ``cos`` and ``sin`` of every level's centroids,
  :meth:`~polarquant.plan.PolarPlan.trig_tables` (computed on the host in the
  decode dtype, what the reference's ``cos(psi)`` gives).

The kernels take the bit widths 4 bits per level in one 64-bit argument,
hence their one limit of their own: at most :data:`._launch.MAX_LEVELS`
levels (a ``ValueError`` naming it).
"""

from __future__ import annotations

import numpy as np

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
from . import _launch
from ._arrays import as_rows, check_cupy, device_of, device_table, kernel_name

__all__ = ["polar_encode", "polar_values", "polar_score", "polar_weighted_sum"]


# -- what the kernels take of the plan -----------------------------------------------------------
def check_kernel_levels(plan) -> None:
    """The kernels' own limit: at most ``MAX_LEVELS`` levels (``ValueError`` otherwise)."""
    if plan.levels > _launch.MAX_LEVELS:
        raise ValueError(
            f"the cupy kernels take at most {_launch.MAX_LEVELS} polar levels (their bit widths "
            f"travel 4 bits per level in one 64-bit argument), but this plan has {plan.levels}"
        )


def _offsets(cp, plan, dev):
    """The plan's byte offsets on device ``dev``, ``int32 (L + 1,)``."""
    return device_table(
        plan, ("offsets",), dev, lambda: cp.asarray(np.asarray(plan.offsets, dtype=np.int32))
    )


def _boundaries(cp, plan, compute, work, dev):
    """The plan's thresholds rounded to ``compute`` (as the reference compares), as ``work``."""
    build = lambda: cp.asarray(plan.boundary_table(compute), dtype=work)  # noqa: E731
    return device_table(plan, ("boundaries", compute.str, work.str), dev, build)


def _trig(cp, plan, dtype, work, dev):
    """``(cos, sin)`` tables ``(L, 2**max(bits))`` computed in ``dtype``, held in ``work``, on ``dev``.

    ``plan.trig_tables(dtype)``: the reference's ``cos(psi)`` on decoded angles of
    ``dtype`` (the decode dtype), so that a float16 decode rounds as it does.
    """
    build = lambda: tuple(cp.asarray(t, dtype=work) for t in plan.trig_tables(dtype))  # noqa: E731
    return device_table(plan, ("trig", np.dtype(dtype).str, work.str), dev, build)


def _radii_rows(cp, radii, count, dtype, work):
    """The radii as ``(rows, count)`` of ``work``, rounded to ``dtype`` first where they are wider
    (the reference decodes ``astype(radii, dtype)``)."""
    if np.result_type(radii.dtype, dtype) != dtype:
        radii = radii.astype(dtype)
    return as_rows(cp, radii, count, work)


def _decoder_args(cp, plan, codes2, dtype, work, dev) -> tuple:
    """``levels, bits_word, offsets, codes, cos_t, sin_t, width``: how every decoding kernel
    reads a row of codes (angles decoded in ``dtype``, computed in ``work``)."""
    cos_t, sin_t = _trig(cp, plan, dtype, work, dev)
    return (
        np.int32(plan.levels),
        _launch.level_bits_word(plan.bits),
        _offsets(cp, plan, dev),
        codes2,
        cos_t,
        sin_t,
        np.int32(cos_t.shape[1]),
    )


# -- the operations ---------------------------------------------------------------------------------
def polar_encode(plan, y):
    """Polar transform of the rows ``y (..., D)``: (angle codes ``(..., nbytes)``, radii ``(..., D/2**L)``)."""
    cp = _launch.get_cupy()
    check_cupy(cp, (y, "x"))
    check_rows(y, plan.dim)
    dev = device_of(y)
    check_kernel_levels(plan)
    radii_dtype = transform_dtype(y.dtype)  # polar_transform's: float16 stays, small ints too
    work = work_dtype(radii_dtype)
    dim, nbytes, nr = plan.dim, plan.nbytes, plan.radii
    shared = _launch.polar_encode_shared_bytes(dim, plan.bits, work.itemsize)
    with cp.cuda.Device(dev):
        _launch.check_shared(shared, dev, f"polar_encode of dim={dim}")
        y2 = as_rows(cp, y, dim, work)
        rows = y2.shape[0]
        codes = cp.empty((rows, nbytes), dtype=np.uint8)
        radii = cp.empty((rows, nr), dtype=work)
        if rows and dim:
            bnd = _boundaries(cp, plan, compute_dtype(radii_dtype), work, dev)
            args = (
                y2,
                np.int64(rows),
                np.int32(dim),
                np.int32(plan.levels),
                _launch.level_bits_word(plan.bits),
                bnd,
                np.int32(bnd.shape[1]),
                _offsets(cp, plan, dev),
                codes,
                radii,
            )
            grid = (_launch.rows_grid(rows, _launch.device_limits(dev)),)
            block = (_launch.polar_encode_threads(dim),)
            _launch.launch(kernel_name("polar_encode", work), grid, block, args, shared, dev)
    batch = y.shape[:-1]
    return codes.reshape(*batch, nbytes), radii.reshape(*batch, nr).astype(radii_dtype, copy=False)


def polar_values(plan, codes, radii, dtype):
    """Inverse polar transform of the decoded angles and the radii -> ``(..., D)`` of ``dtype``."""
    cp = _launch.get_cupy()
    check_cupy(cp, (codes, "angle codes"), (radii, "radii"))
    check_codes(codes, plan.nbytes, "angle codes")
    check_radii(radii, plan.radii, codes)
    check_values_dtype(dtype)
    dev = device_of(codes, radii)
    check_kernel_levels(plan)
    dtype = np.dtype(dtype)
    work = work_dtype(dtype)
    dim = plan.dim
    with cp.cuda.Device(dev):
        c2 = as_rows(cp, codes, plan.nbytes, np.uint8)
        r2 = _radii_rows(cp, radii, plan.radii, dtype, work)
        rows = r2.shape[0]
        out = cp.empty((rows, dim), dtype=work)
        if rows and dim:
            decoder = _decoder_args(cp, plan, c2, dtype, work, dev)
            args = (r2, np.int64(rows), np.int32(dim), *decoder, out)
            shared = _launch.polar_trig_shared_bytes(plan.bits, work.itemsize)
            name = kernel_name("polar_values", work)
            _launch.elementwise(name, rows * (dim // 2), args, shared, dev)
    return out.reshape(*codes.shape[:-1], dim).astype(dtype, copy=False)


def polar_score(plan, q, codes, radii):
    """``q (..., D) @ polar_values(...).T`` -> ``(..., rows)``, without writing the decoded rows."""
    cp = _launch.get_cupy()
    check_cupy(cp, (codes, "angle codes"), (radii, "radii"), (q, "queries"))
    check_codes(codes, plan.nbytes, "angle codes")
    check_radii(radii, plan.radii, codes)
    check_query_width(q, plan.dim)
    shape = score_shape(q, codes)
    dev = device_of(codes, radii, q)
    check_kernel_levels(plan)
    values, result, work = product_dtypes(q.dtype, radii.dtype)
    dim = plan.dim
    with cp.cuda.Device(dev):
        q2 = as_rows(cp, q, dim, work)
        c2 = as_rows(cp, codes, plan.nbytes, np.uint8)
        r2 = _radii_rows(cp, radii, plan.radii, values, work)
        rows, nq = r2.shape[0], q2.shape[0]
        out = (cp.zeros if dim == 0 else cp.empty)((nq, rows), dtype=work)
        if rows and nq and dim:
            head = (
                q2,
                np.int64(nq),
                r2,
                np.int64(rows),
                np.int32(dim),
                *_decoder_args(cp, plan, c2, values, work, dev),
            )
            shared = _launch.polar_trig_shared_bytes(plan.bits, work.itemsize)
            name = kernel_name("polar_score", work)
            _launch.scores(name, rows, nq, dim // 2, head, out, shared, dev)
    return out.reshape(shape).astype(result, copy=False)


def polar_weighted_sum(plan, w, codes, radii):
    """``w (..., rows) @ polar_values(...)`` -> ``(..., D)``: the dual of ``polar_score``."""
    cp = _launch.get_cupy()
    check_cupy(cp, (codes, "angle codes"), (radii, "radii"), (w, "weights"))
    check_codes(codes, plan.nbytes, "angle codes")
    check_radii(radii, plan.radii, codes)
    check_weight_width(w, codes)
    dev = device_of(codes, radii, w)
    check_kernel_levels(plan)
    values, result, work = product_dtypes(w.dtype, radii.dtype)
    dim, rows = plan.dim, codes.shape[0]
    with cp.cuda.Device(dev):
        w2 = as_rows(cp, w, rows, work)
        c2 = as_rows(cp, codes, plan.nbytes, np.uint8)
        r2 = _radii_rows(cp, radii, plan.radii, values, work)
        nw = w2.shape[0]
        out = cp.zeros((nw, dim), dtype=work)
        if rows and nw and dim:
            args = (
                w2,
                np.int64(nw),
                r2,
                np.int64(rows),
                np.int32(dim),
                *_decoder_args(cp, plan, c2, values, work, dev),
            )
            shared = _launch.polar_trig_shared_bytes(plan.bits, work.itemsize)
            name = kernel_name("polar_weighted_sum", work)
            _launch.weighted_sums(name, rows, nw, dim // 2, args, out, shared, dev)
    return out.reshape(*w.shape[:-1], dim).astype(result, copy=False)
