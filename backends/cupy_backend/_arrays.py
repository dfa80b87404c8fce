"""Host side of the CuPy backend's entry points: which arrays, on which device, in which dtype.

What :mod:`.scalar`, :mod:`.sign` and :mod:`.polar` share before a launch:

* :func:`check_cupy`: every array argument must be a CuPy array (the first
  check of every operation, through :func:`.._checks.check_array_type`: this
  backend never moves data between host and device);
* :func:`device_of`: the one device all the arrays of a call live on (the
  last check of every operation, after the shared checks of
  :mod:`polarquant.backends._checks`);
* :func:`as_rows`: an argument as the C-contiguous ``(rows, width)`` array of
  one dtype that the kernels index;
* ``product_dtypes`` (from :mod:`polarquant.backends._checks`, shared with the
  numba backend): the dtypes of ``a @ values`` as the reference computes it,
  and the one dtype a fused kernel computes it in;
* :func:`device_table`: a table derived from the plan, copied to one device
  once and kept with the plan (``plan.derived``).

Importing this module imports no CuPy: the module ``cp`` is passed in by the
caller (:func:`._launch.get_cupy`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .._checks import check_array_type, product_dtypes, work_dtype  # noqa: F401 (re-exported)

#: How the ``TypeError`` for a non-CuPy argument says what to do.
CUPY_HINT = (
    "CuPy arrays (polarquant never moves data between host and device implicitly: "
    "move it first with cupy.asarray)"
)

#: The kernel variant of each dtype the kernels compute in.
SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def check_cupy(cp, *arrays: tuple) -> None:
    """Each ``(array, name)`` of ``arrays`` must be a ``cp.ndarray`` (``TypeError`` otherwise)."""
    for a, name in arrays:
        check_array_type(a, name, cp.ndarray, "cupy", CUPY_HINT)


def device_of(*arrays) -> int:
    """The id of the one CUDA device all ``arrays`` live on (``ValueError`` if they are spread)."""
    ids = {int(a.device.id) for a in arrays}
    if len(ids) != 1:
        raise ValueError(
            f"the arrays of one operation must be on one device, got devices {sorted(ids)}"
        )
    return ids.pop()


def as_rows(cp, a, width: int, dtype):
    """``a (..., width)`` as a C-contiguous ``(rows, width)`` array of ``dtype`` (a view when possible)."""
    rows = math.prod(a.shape[:-1])  # not reshape(-1, width): ambiguous for width = 0
    return cp.ascontiguousarray(a.reshape(rows, width).astype(dtype, copy=False))


def kernel_name(operation: str, work) -> str:
    """``operation`` in the variant of dtype ``work``: ``scalar_encode_f32``."""
    return f"{operation}_{SUFFIX[np.dtype(work)]}"


def device_table(plan, key: tuple, device_id: int, build: Callable[[], object]):
    """``build()`` (a CuPy array, or a tuple of them), made once per plan, ``key`` and device.

    Call it inside ``cp.cuda.Device(device_id)``, so that what ``build``
    allocates lands on that device.
    """
    return plan.derived(("cupy", *key, int(device_id)), build)
