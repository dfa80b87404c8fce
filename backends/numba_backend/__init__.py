"""The Numba CPU-JIT backend: the reference's thirteen operations as parallel kernels.

Same names, signatures and results as :mod:`polarquant.backends.numpy_backend`
(the reference; read its table first): each operation takes the quantizer's
plan first (:mod:`polarquant.plan`), returns packed bytes identical to the
reference's away from decision boundaries, values and scores equal within
float tolerance, and runs the same argument checks in the same order
(:mod:`polarquant.backends._checks`), so the same bad input raises the same
exception with the same message.  Only NumPy arrays are accepted
(``TypeError`` otherwise: this backend never converts or moves data).

The kernels are filed by algorithm, each file next to the entry points that
call them and opening with the reference operations it mirrors:

=======================  ================  ==================================================  ==============================
operation                file              kernels                                             differs from the reference
=======================  ================  ==================================================  ==============================
``scalar_encode``        :mod:`.scalar`    ``scalar_encode_kernel``                            never (exact comparisons)
``scalar_values``        :mod:`.scalar`    ``scalar_values_kernel``                            never (a gather)
``scalar_score``         :mod:`.scalar`    ``byte_tables`` + ``scalar_score_kernel``           summation order (rtol ~1e-6)
                                           (1, 2, 4, 8 bits), else ``code_tables`` +
                                           ``scalar_score_gather_kernel``
``scalar_weighted_sum``  :mod:`.scalar`    ``scalar_weighted_sum_kernel``: one ``(nw, n)``     summation order
                                           partial sum per chunk of rows, added up by the
                                           entry point; 1, 2, 4, 8-bit rows decoded from a
                                           byte table
``sign_encode``          :mod:`.sign`      ``sign_encode_kernel``                              never
``sign_values``          :mod:`.sign`      ``scalar_values_kernel``, codebook ``(-1, +1)``     never
``sign_score``           :mod:`.sign`      ``byte_tables`` + ``scalar_score_kernel``           summation order
``polar_encode``         :mod:`.polar`     ``polar_encode_kernel``                             ``atan2`` last bits: codes of
                                                                                               angles within ~1e-6 of a
                                                                                               boundary may differ by one
``polar_values``         :mod:`.polar`     ``polar_values_kernel``                             never (same products)
``polar_score``          :mod:`.polar`     ``level1_tables`` + ``level2_tables`` +             summation order
                                           ``polar_score_folded_kernel(bits)`` (levels 1
                                           and 2 in the query's table, from
                                           ``polar.fold_rows`` rows on; levels 4 and 3
                                           through a table of products), else
                                           ``level1_tables`` + ``polar_score_kernel``
``polar_weighted_sum``   :mod:`.polar`     ``polar_weighted_sum_kernel``: partial sums as      summation order
                                           above, rows rebuilt as in ``polar_values``
``fastscan_sums``        :mod:`.fastscan`  ``sums_kernel(variant)``: byte shuffles in vector    never (integers)
                                           registers (:mod:`._simd`), ``uint16`` groups
``fastscan_topk``        :mod:`.fastscan`  ``topk_kernel(variant)``: sums, keys and their      which of equal keys
                                           comparison in registers, a heap per query and       is kept
                                           chunk of blocks
=======================  ================  ==================================================  ==============================

:mod:`._common` holds what they share: the inlined helpers (chunks of rows,
the cell search, bit packing and unpacking, the weighted sums' accumulation),
the conventions every kernel follows (layout, parallelism, fastmath, write
flags) and the notes on compile time.  Tables derived from the plan (padded
thresholds, centroids in the data's dtype, ``cos``/``sin`` of the angle
centroids, byte tables) are built once per plan and dtype and kept with the
plan (``plan.derived``).

Threads: the kernels run on Numba's thread pool (``numba.set_num_threads``),
see :func:`configure_threads`, which ``polarquant.backends.get_backend``
calls once when it first loads this backend.

Examples
--------
>>> import numpy as np
>>> from polarquant import TurboQuantMSE
>>> from polarquant.backends import numba_backend as nb
>>> plan = TurboQuantMSE(4, bits=2).plan
>>> plan.boundaries
array([-0.44693141,  0.        ,  0.44693141])
>>> codes = nb.scalar_encode(plan, np.array([[-0.9, 0.0, 0.1, 0.9]], dtype=np.float32))
>>> codes, f"{codes[0, 0]:08b}"  # codes 0, 2 (0.0 is on a boundary: upper cell), 2, 3
(array([[43]], dtype=uint8), '00101011')
>>> nb.scalar_values(plan, codes, np.float32)  # the centroids, rounded to float32
array([[-0.6744169 ,  0.21944588,  0.21944588,  0.6744169 ]], dtype=float32)
"""

from __future__ import annotations

import os

import numba

from polarquant._array import check_int

from .fastscan import fastscan_sums, fastscan_topk
from .polar import fold_rows, polar_encode, polar_score, polar_values, polar_weighted_sum
from .scalar import scalar_encode, scalar_score, scalar_values, scalar_weighted_sum
from .sign import sign_encode, sign_score, sign_values

NAME = "numba"

#: The score operations read packed codes through per-query tables and never decode a
#: row to memory: quantizers hand them all the rows at once (``Quantizer._score_chunks``).
SCORES_FROM_CODES = True

#: The spin-wait of idle OpenMP worker threads that :func:`configure_threads` sets by default
#: (libgomp's ``GOMP_SPINCOUNT``): see there.
GOMP_SPINCOUNT = "10000"

__all__ = [  # polarquant.backends.OPERATIONS, spelled out for static tools (tested)
    "NAME",
    "SCORES_FROM_CODES",
    "GOMP_SPINCOUNT",
    "configure_threads",
    "fold_rows",
    "scalar_encode",
    "scalar_values",
    "scalar_score",
    "scalar_weighted_sum",
    "sign_encode",
    "sign_values",
    "sign_score",
    "polar_encode",
    "polar_values",
    "polar_score",
    "polar_weighted_sum",
    "fastscan_sums",
    "fastscan_topk",
]


#: The value this module last wrote to ``GOMP_SPINCOUNT`` (None: it never did): a later call
#: may change its own setting, never one the environment brought.
_spin_count_set: str | None = None


def configure_threads(threads: int | None = None, *, spin_count: int | str | None = GOMP_SPINCOUNT):
    """Set how the kernels use threads: the spin-wait of idle workers, and how many run.

    Parameters
    ----------
    threads : int, optional
        Threads of Numba's pool the kernels run on (``numba.set_num_threads``),
        from 1 to ``numba.config.NUMBA_NUM_THREADS`` (the pool's size, fixed when
        it starts: set the ``NUMBA_NUM_THREADS`` environment variable before to
        change it).  Default: leave the current number (all the pool's threads
        unless set otherwise).
    spin_count : int, str or None
        libgomp's ``GOMP_SPINCOUNT``, the spin-wait of idle OpenMP worker
        threads before they sleep (behind Numba's default ``"omp"`` threading
        layer); set in the process environment **unless the environment already
        sets it** (a user's setting wins; a value set by an earlier call of this
        function is replaced).  ``None`` leaves it alone.  libgomp
        reads it once, when the first parallel kernel loads it (importing numba
        does not): call this before the first kernel runs, or it has no effect.
        With libgomp's default (300,000 spins) Numba's idle workers compete with
        the BLAS threads of the rotation or sketch that follows in an encode; the
        default here, :data:`GOMP_SPINCOUNT` = 10,000, measured 1.1x to 1.8x
        faster encodes with unchanged scores (docs/performance.md).

    Raises
    ------
    TypeError
        ``threads`` is not an integer, or an unknown keyword is given.
    ValueError
        ``threads`` is below 1 or above ``numba.config.NUMBA_NUM_THREADS``, or
        ``spin_count`` is negative.

    Notes
    -----
    ``polarquant.backends.get_backend("numba")`` calls ``configure_threads()``
    (the defaults) once, when it first loads this backend; importing this
    module sets nothing.
    """
    if spin_count is not None:
        if isinstance(spin_count, str):
            if not spin_count.strip().isdigit():
                raise ValueError(f"spin_count must be a non-negative integer, got {spin_count!r}")
            spin_count = int(spin_count)
        else:
            spin_count = check_int(spin_count, "spin_count", low=0)
    if threads is not None:
        threads = check_int(threads, "threads", low=1)
        most = numba.config.NUMBA_NUM_THREADS
        if threads > most:
            raise ValueError(
                f"threads={threads} exceeds the {most} threads of Numba's pool "
                "(numba.config.NUMBA_NUM_THREADS; set the NUMBA_NUM_THREADS environment "
                "variable before numba is imported to start a larger one)"
            )
    if spin_count is not None:
        global _spin_count_set
        current = os.environ.get("GOMP_SPINCOUNT")
        if current is None or current == _spin_count_set:  # unset, or set by an earlier call
            os.environ["GOMP_SPINCOUNT"] = _spin_count_set = str(spin_count)
    if threads is not None:
        numba.set_num_threads(threads)  # after the environment: this starts the pool
