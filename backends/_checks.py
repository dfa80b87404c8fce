"""Argument checks of the backend operations, written once and called by every backend.

Every backend (the reference included) runs the same check functions, in the
same order, before it computes anything, so that the same bad input raises the
same exception with the same message on numpy, numba and cupy by construction
(``tests/test_backend_errors.py`` feeds one battery to every available
backend).  What a plan holds (bit widths, codebooks, layouts) was checked when
the plan was built (:mod:`polarquant.plan`); what is checked here is the data:
its array type, dtype and shape against the plan.  The checks are
namespace-generic (``shape``, ``ndim``, ``dtype`` only) and name the caller's
arguments (``x`` for the rows being encoded, ``queries``, ``weights``, ``packed
codes``, ``radii``), not a backend's variables.
"""

from __future__ import annotations

import numpy as np

from polarquant._array import check_int, namespace

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def check_array_type(a, name: str, array_type: type, backend: str, hint: str):
    """``a`` itself if it is an ``array_type``, else ``TypeError`` (backends never convert)."""
    if not isinstance(a, array_type):
        kind = f"{type(a).__module__}.{type(a).__qualname__}"
        raise TypeError(f"the {backend} backend runs on {hint}, but {name} is a {kind}")
    return a


def _kind(a) -> str:
    """``"f"`` real floating, ``"i"`` integer or bool, ``"c"`` complex, ``"?"`` anything else."""
    xp = namespace(a)
    if xp.isdtype(a.dtype, "real floating"):
        return "f"
    if xp.isdtype(a.dtype, ("integral", "bool")):
        return "i"
    if xp.isdtype(a.dtype, "complex floating"):
        return "c"
    return "?"


def check_real(a, name: str):
    """``a`` must hold real numbers (floats, integers or booleans): ``TypeError`` otherwise."""
    if _kind(a) not in "fi":
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    return a


def check_rows(x, width: int, name: str = "x"):
    """``x (..., width)`` of real numbers: the rows an encode operation codes."""
    check_real(x, name)
    if x.ndim == 0:
        raise ValueError(f"{name} must have shape (..., {width}), got a 0-d array")
    if x.shape[-1] != width:
        raise ValueError(
            f"{name} has last dimension {x.shape[-1]}, but the plan codes rows of {width} values"
        )
    return x


def check_codes(packed, nbytes: int, name: str = "packed codes"):
    """Packed codes ``uint8 (..., nbytes)``, ``nbytes`` the plan's bytes per row."""
    if str(packed.dtype).rpartition(".")[2] != "uint8":
        raise TypeError(f"{name} must be uint8, got {packed.dtype}")
    if packed.ndim == 0:
        raise ValueError(f"{name} must have shape (..., {nbytes}), got a 0-d array")
    if packed.shape[-1] != nbytes:
        raise ValueError(
            f"{name} have {packed.shape[-1]} bytes per row, but the plan's rows take {nbytes}"
        )
    return packed


def check_radii(radii, count: int, codes, name: str = "radii"):
    """Final polar radii ``(..., count)`` of real floats, one row per row of ``codes``."""
    if _kind(radii) != "f":
        raise TypeError(f"{name} must be real floats, got dtype {radii.dtype}")
    if (
        radii.ndim == 0
        or radii.shape[-1] != count
        or tuple(radii.shape[:-1]) != tuple(codes.shape[:-1])
    ):
        raise ValueError(
            f"{name} of shape {tuple(radii.shape)} do not match angle codes of shape "
            f"{tuple(codes.shape)}: expected {tuple(codes.shape[:-1]) + (count,)}"
        )
    return radii


def check_query_width(q, n: int, name: str = "queries"):
    """``q (..., n)`` of real numbers: one value per coded coordinate of a row."""
    check_real(q, name)
    if q.ndim == 0:
        raise ValueError(f"{name} must have shape (..., {n}), got a 0-d array")
    if q.shape[-1] != n:
        raise ValueError(
            f"{name} has last dimension {q.shape[-1]}, but the codes hold {n} values per row "
            f"(matmul mismatch: {tuple(q.shape)} @ ({n}, rows))"
        )
    return q


def per_stream(op, plan, a, packed, name: str):
    """``op`` on a *stack* of batches, one per stream, or ``None`` when ``packed`` is not one.

    The score and weighted-sum operations take ``packed (rows, nbytes)`` with
    ``a (..., width)``; a stack ``packed (S, rows, nbytes)`` with ``a (S, k,
    width)`` (one batch of codes and its own queries or weights per stream: the
    KV cache's batch x kv heads) gives ``op(plan, a[s], packed[s])`` stacked,
    ``(S, k, ...)``: one call for all the streams, each still a 2-D operation.
    """
    if packed.ndim != 3:
        return None
    if a.ndim != 3 or a.shape[0] != packed.shape[0] or packed.shape[0] == 0:
        what = "scores" if name == "queries" else "weighted sums"
        raise ValueError(
            f"{what} need codes shaped (rows, nbytes), or stacked (streams, rows, nbytes) with "
            f"{name} shaped (streams, k, ...): the same number of streams, at least one; got "
            f"{name} {tuple(a.shape)} and codes {tuple(packed.shape)}"
        )
    outs = [op(plan, a[i, ...], packed[i, ...]) for i in range(packed.shape[0])]
    return namespace(outs[0]).stack(outs)


def score_shape(q, codes) -> tuple:
    """Shape of ``q @ values.T``: ``q.shape[:-1] + (rows,)``, or ``q.shape[:-1]`` for one 1-D row."""
    if codes.ndim == 1:
        return tuple(q.shape[:-1])
    if codes.ndim != 2:
        raise ValueError(
            f"scores need codes shaped (rows, nbytes) or (streams, rows, nbytes), got "
            f"{codes.ndim} dimensions"
        )
    return tuple(q.shape[:-1]) + (codes.shape[0],)


def check_weight_width(w, codes, name: str = "weights"):
    """``w (..., rows)``: one weight per row of a ``(rows, nbytes)`` batch of codes.

    Stricter than ``w @ values``: codes of other shapes are a ``ValueError``
    (for one 1-D row ``@`` would contract ``w`` with the row's coordinates
    instead, and stacks of batches would broadcast).
    """
    if codes.ndim != 2:
        raise ValueError(
            f"weighted sums need codes shaped (rows, nbytes) or (streams, rows, nbytes), got "
            f"{codes.ndim} dimensions"
        )
    rows = codes.shape[0]
    check_real(w, name)
    if w.ndim == 0:
        raise ValueError(f"{name} must have shape (..., {rows}), got a 0-d array")
    if w.shape[-1] != rows:
        raise ValueError(
            f"{name} has last dimension {w.shape[-1]}, but there are {rows} rows of codes "
            f"(matmul mismatch: {tuple(w.shape)} @ ({rows}, n))"
        )
    return w


def check_values_dtype(dtype):
    """The dtype asked of a ``*_values`` operation: a real float (``TypeError`` otherwise)."""
    if dtype is None:
        raise TypeError("decoded values need a dtype (a real float dtype), got None")
    try:
        dt = np.dtype(dtype)
        kind, name = dt.kind, dt.name
    except TypeError:  # a dtype of another namespace (torch.float32): its own name
        name = str(dtype)
        kind = "f" if "float" in name else "?"
    if kind != "f":
        raise TypeError(f"decoded values must be real floats, got dtype {name}")
    return dtype


def check_no_thread_options(backend: str, threads, options: dict) -> None:
    """``configure_threads`` of a backend whose kernels take no thread settings: ``threads`` is
    checked as on every backend (an integer >= 1, or None) and ignored; any other option is a
    ``TypeError``."""
    if options:
        raise TypeError(f"the {backend} backend takes no thread options, got {sorted(options)}")
    if threads is not None:
        check_int(threads, "threads", low=1)


def compute_dtype(dtype) -> np.dtype:
    """The dtype the reference casts a plan's constants to for data of ``dtype``.

    float64 stays, everything else is float32 (:func:`polarquant._array.compute_dtype`).
    """
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def transform_dtype(dtype) -> np.dtype:
    """The dtype of the reference's polar radii for rows of ``dtype``: what ``hypot`` computes in.

    The rows' own float dtype; for integers and booleans NumPy's choice
    (float16 up to 8 bits, float32 for 16 bits, float64 above).
    """
    zero = np.zeros((), dtype=dtype)
    return np.hypot(zero, zero).dtype


def product_dtypes(left, *more) -> tuple[np.dtype, np.dtype, np.dtype]:
    """``(values, result, work)`` dtypes of ``a @ values`` for ``a`` of dtype ``left``.

    The reference decodes the rows in the compute dtype of the data (``more``
    are the dtypes of the other data the rows are decoded from: the radii) and
    then multiplies, giving ``result_type(left, values)``; a fused kernel
    computes in ``work``, the kernel dtype of that result (:func:`work_dtype`).
    """
    values = compute_dtype(np.result_type(left, *more))
    result = np.result_type(left, values)
    return values, result, work_dtype(result)


def work_dtype(*dtypes) -> np.dtype:
    """The kernels' dtype for data of ``dtypes``: their promotion, float16 -> float32, ints -> float64."""
    dt = np.result_type(*dtypes)
    if dt in _FLOATS:
        return dt
    if dt == np.float16:
        return np.dtype(np.float32)
    return np.dtype(np.float64)  # integers and booleans (check_real refused the rest)


def check_fastscan(plan, tq, blocks, n, c=None, bias=None, scale=None, shift=None, weight=None):
    """The arguments of ``fastscan_sums`` (``plan, tq, blocks, n``: returns ``n``) and of
    ``fastscan_topk`` (returns ``n, c, bias, scale, shift, weight``, with ``c`` at most ``n``
    and ``bias``, ``weight`` as float32 vectors of one entry per query).

    ``plan`` is a :class:`polarquant.fastscan.FastScanPlan`; ``tq`` its uint8 byte tables
    ``(nq, nibbles, 16)``; ``blocks`` its layout ``(nblocks, nbytes, 32)`` holding ``n`` rows
    (its last block partly); ``scale`` and ``shift`` float32 ``(n,)`` (per-vector arrays are
    never converted: a search hands the same ones to every call); ``shift`` and ``weight``
    both or neither; ``bias`` and ``weight`` finite.
    """
    from polarquant.fastscan import check_blocks, check_tables

    check_tables(plan, tq)
    n = check_blocks(plan, blocks, n)
    if c is None:
        return n
    c = min(check_int(c, "c", low=1), n)
    nq = tq.shape[0]
    if (shift is None) != (weight is None):
        raise ValueError("shift and weight go together: give both or neither")
    per_query = []
    for name, a in (("bias", bias), ("weight", weight)):
        if a is None:
            per_query.append(None)
            continue
        check_real(a, name)
        if tuple(a.shape) != (nq,):
            raise ValueError(f"{name} must have one entry per query, shape ({nq},), got {a.shape}")
        xp = namespace(a)
        a = xp.astype(a, xp.float32)
        if not bool(xp.all(xp.isfinite(a))):
            raise ValueError(f"{name} holds NaN or Inf")
        per_query.append(a)
    for name, a in (("scale", scale), ("shift", shift)):
        if a is None and name == "shift":
            continue
        if getattr(a, "dtype", None) != np.float32 or tuple(a.shape) != (n,):
            raise ValueError(
                f"{name} must be float32 of shape ({n},), got "
                f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}"
            )
    return n, c, per_query[0], scale, shift, per_query[1]
