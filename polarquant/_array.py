"""Array-API plumbing shared by every module of polarquant.

Every public function of polarquant accepts NumPy arrays or arrays of any
namespace that follows the Python array API standard (CuPy, torch,
``array_api_strict``...), through :mod:`array_api_compat`.  This module holds
the few pieces of glue that all of them need:

* ``namespace(*arrays)``: the input's namespace (``xp``);
* ``as_vectors``: validation of a batch of vectors shaped ``(..., dim)`` with a
  clear error for every kind of bad input (not an array, wrong dimension,
  non-float dtype, NaN or Inf).  Only arrays are accepted (and NumPy scalars,
  which carry a dtype): a Python list, tuple or number is refused with a
  ``TypeError`` rather than guessed into float64;
* ``compute_dtype``: the floating dtype arithmetic is carried out in (float16
  input is computed in float32 and cast back, since half precision is not part
  of the standard and too coarse for rotations);
* ``host_to_like``: moving a constant built on the host (a rotation, a sketch,
  a codebook; always generated with NumPy from a seed so that every backend sees
  the same numbers) to the namespace, device and dtype of an input.

Data is never moved between host and device implicitly: only these seeded
constants travel, towards the input's device.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Any

import numpy as np
from array_api_compat import array_namespace, is_array_api_obj, is_numpy_namespace
from array_api_compat import device as array_device

__all__ = [
    "namespace",
    "as_vectors",
    "check_finite",
    "quiet_overflow",
    "compute_dtype",
    "host_to_like",
    "to_host",
    "zeros_on",
    "contiguous",
    "empty_on",
    "ConstantCache",
    "detached",
    "compact",
    "check_int",
    "check_bits",
]


def namespace(*arrays: Any):
    """Return the array-API namespace shared by ``arrays``."""
    return array_namespace(*arrays)


def _as_array(x: Any, name: str):
    """``x`` itself if it is an array; a NumPy scalar as a 0-d array; anything else is refused.

    Python lists, tuples and numbers have no dtype of their own (NumPy would
    make them float64, or int64, silently): the caller must say which dtype
    they mean, e.g. ``np.asarray(x, dtype=np.float32)``.
    """
    if is_array_api_obj(x):
        return x
    if isinstance(x, np.generic):
        return np.asarray(x)
    hint = (
        "; convert it explicitly, e.g. np.asarray(x, dtype=np.float32) (a Python "
        f"{type(x).__name__} has no dtype of its own)"
        if isinstance(x, (list, tuple, numbers.Number))
        else ""
    )
    raise TypeError(
        f"{name} must be an array (NumPy or any array-API namespace), got {type(x).__name__}{hint}"
    )


def detached(x):
    """``x`` without autograd history (torch tensors that require grad); other arrays as they are.

    Codes are not differentiable: encoding a tensor that requires grad would
    otherwise keep its autograd graph alive in the stored norms (and torch warns
    when such a tensor is converted to a Python scalar).
    """
    if getattr(x, "requires_grad", False) and hasattr(x, "detach"):
        return x.detach()
    return x


def _root_buffer(a):
    """The array owning the memory of a NumPy or CuPy view (``a`` itself if it owns it)."""
    root = a
    while isinstance(getattr(root, "base", None), type(a)):
        root = root.base
    return root


def compact(a):
    """``a`` if it holds exactly its own bytes, else a compact copy.

    A view (e.g. the codes sliced out of a padded buffer) keeps the whole
    buffer alive, so ``a.nbytes`` would under-count the memory it holds; such
    a view is copied.  NumPy and CuPy views are recognised by their ``base``,
    torch views by the size of their storage; arrays of other namespaces are
    returned as they are.
    """
    nbytes = getattr(a, "nbytes", None)
    if not isinstance(nbytes, int):
        return a
    if isinstance(a, np.ndarray) or type(a).__module__.startswith("cupy"):
        root = _root_buffer(a)
        if root is a or (root.nbytes == nbytes and a.flags.c_contiguous):
            return a
        return a.copy()
    storage = getattr(a, "untyped_storage", None)
    if storage is not None:  # torch
        if storage().nbytes() == nbytes and a.is_contiguous():
            return a
        b = a.contiguous()  # a copy when a is not contiguous, else a itself
        return a.clone() if b is a else b
    return a


def _is_real_floating(xp, dtype) -> bool:
    try:
        return xp.isdtype(dtype, "real floating")
    except (AttributeError, TypeError):  # pragma: no cover - very old namespaces
        return dtype in (xp.float32, xp.float64)


def quiet_overflow(xp):
    """Silence NumPy's overflow/invalid warnings where the caller handles the outcome."""
    return (
        np.errstate(over="ignore", under="ignore", invalid="ignore")
        if is_numpy_namespace(xp)
        else contextlib.nullcontext()
    )


def check_finite(x, name: str = "x") -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or Inf values.

    Fast path: a NaN or an Inf anywhere makes the sum NaN or infinite, so a
    finite sum proves every value finite without a boolean temporary of the
    input's size; only when the sum is not finite (bad values, or an overflow
    of the sum itself) are the values checked one by one.
    """
    xp = namespace(x)
    with quiet_overflow(xp):
        if math.prod(x.shape) == 0 or bool(xp.isfinite(xp.sum(x))):
            return
    finite = xp.isfinite(x)
    if not bool(xp.all(finite)):
        bad = int(xp.sum(xp.astype(xp.logical_not(finite), xp.int64)))
        raise ValueError(
            f"{name} contains {bad} NaN or Inf value(s); polarquant needs finite input"
        )


def as_vectors(x: Any, dim: int | None = None, name: str = "x", *, finite: bool = True):
    """Validate a batch of vectors ``(..., dim)`` and return ``(xp, x)``.

    Raises
    ------
    TypeError
        If ``x`` is not an array or its dtype is not real floating.
    ValueError
        If ``x`` is 0-d, its last axis is not ``dim``, or it holds NaN/Inf.
    """
    x = _as_array(x, name)
    xp = namespace(x)
    if not _is_real_floating(xp, x.dtype):
        raise TypeError(
            f"{name} must have a real floating dtype (float16, float32 or float64), got {x.dtype}"
        )
    if x.ndim == 0:
        raise ValueError(f"{name} must have shape (..., dim), got a 0-d array")
    if dim is not None and x.shape[-1] != dim:
        raise ValueError(
            f"{name} has last dimension {x.shape[-1]} but this quantizer was built for dim={dim}; "
            f"expected shape (..., {dim}), got {tuple(x.shape)}"
        )
    if finite:
        check_finite(x, name)
    return xp, x


def compute_dtype(xp, dtype):
    """The dtype arithmetic runs in: float64 stays, everything else is float32."""
    if dtype == xp.float64:
        return xp.float64
    return xp.float32


def host_to_like(host: np.ndarray, like, dtype=None):
    """Move a host (NumPy) constant to the namespace and device of ``like``.

    ``dtype`` defaults to the compute dtype of ``like``.  Integer constants keep
    their dtype when ``dtype`` is given explicitly.
    """
    xp = namespace(like)
    if dtype is None:
        dtype = compute_dtype(xp, like.dtype)
    return xp.asarray(np.ascontiguousarray(host), dtype=dtype, device=array_device(like))


class ConstantCache:
    """Seeded host constants, moved once per (namespace, device, dtype) and kept.

    Rotations, sketches and codebooks are generated on the host (NumPy, float64)
    so that every backend sees the same numbers; each quantizer converts them to
    the namespace/device/dtype of the data it meets, once.
    """

    def __init__(self) -> None:
        self._store: dict = {}

    def get(self, name: str, host: np.ndarray, like, dtype=None):
        xp = namespace(like)
        dtype = compute_dtype(xp, like.dtype) if dtype is None else dtype
        key = (name, xp.__name__, str(array_device(like)), str(dtype))
        if key not in self._store:
            self._store[key] = host_to_like(host, like, dtype)
        return self._store[key]


def zeros_on(like, shape, dtype=None):
    """Zeros of ``shape`` in ``like``'s namespace and on its device (float32 by default)."""
    xp = namespace(like)
    return xp.zeros(shape, dtype=xp.float32 if dtype is None else dtype, device=array_device(like))


def empty_on(like, shape, dtype=None):
    """An uninitialised array of ``shape`` in ``like``'s namespace and on its device (float32)."""
    xp = namespace(like)
    return xp.empty(shape, dtype=xp.float32 if dtype is None else dtype, device=array_device(like))


def contiguous(a):
    """``a`` C-contiguous when it is a NumPy array (the host kernels read rows in order);
    arrays of other namespaces as they are (the device backends copy what they need)."""
    return np.ascontiguousarray(a) if isinstance(a, np.ndarray) else a


def to_host(x) -> np.ndarray:
    """Copy an array of any namespace to a NumPy array (explicit transfer)."""
    if isinstance(x, np.ndarray):
        return x
    for attr in ("get",):  # CuPy
        if hasattr(x, attr) and type(x).__module__.startswith("cupy"):
            return np.asarray(x.get())
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def check_int(value: Any, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """Validate an integer parameter, echoing the bad value in the error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def check_bits(bits: Any, name: str = "bits", *, low: int = 1, high: int = 8) -> int:
    """Validate a bit width (1..8 unless stated otherwise)."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(
            f"{name} must be an integer number of bits in [{low}, {high}], got {bits!r}"
        )
    if not low <= int(bits) <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {bits}")
    return int(bits)
