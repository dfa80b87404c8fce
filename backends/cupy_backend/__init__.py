"""The CuPy backend: the reference's thirteen operations as raw CUDA kernels.

Same names, signatures and results as :mod:`polarquant.backends.numpy_backend`
(the reference; read its table first): every operation takes the quantizer's
plan first (:mod:`polarquant.plan`), then CuPy arrays; packed bytes identical
to the reference's away from decision boundaries, values and scores equal
within float tolerance.  Only CuPy arrays are accepted: NumPy input is a
``TypeError``, because polarquant never moves data between host and device
implicitly (move it yourself with ``cupy.asarray``).

One algorithm per pair of files, the Python entry points beside the CUDA they
launch; ``common.cuh`` holds what the kernels share, :mod:`._launch` compiles
the five sources as one module (once per process, on first use) and plans
launch sizes and shared memory, :mod:`._arrays` the host-side plumbing
(array types, device, dtypes, device copies of the plan's tables):

=======================  ==========================  =================================  ================================
operation                entry point / kernels       kernels (``_f32`` / ``_f64``)      differs from the reference
=======================  ==========================  =================================  ================================
``scalar_encode``        ``scalar.py / scalar.cu``   ``scalar_encode``                  never (exact comparisons)
``scalar_values``        ``scalar.py / scalar.cu``   ``scalar_values``                  never (a gather)
``scalar_score``         ``scalar.py / scalar.cu``   ``scalar_score_lut`` (1, 2, 4, 8   summation order (rtol ~1e-6)
                                                     bits, table fits, >= 1024 rows),
                                                     else ``scalar_score_gather``
``scalar_weighted_sum``  ``scalar.py / scalar.cu``   ``scalar_weighted_sum`` (a run of  summation order, which varies
                                                     rows per block, partial sums       from run to run (atomics)
                                                     added with ``atomicAdd``)
``sign_encode``          ``sign.py / sign.cu``       ``sign_encode``                    never
``sign_values``          ``sign.py / sign.cu``       ``sign_values``                    never
``sign_score``           ``sign.py / sign.cu``       ``sign_score_lut``, else           summation order
                                                     ``sign_score_gather``
``polar_encode``         ``polar.py / polar.cu``     ``polar_encode`` (a block per      ``atan2``/``hypot`` last bits:
                                                     row)                               angles within ~1e-6 of a
                                                                                        boundary may differ by one code
``polar_values``         ``polar.py / polar.cu``     ``polar_values``                   never (the plan's cos/sin
                                                                                        tables, the same products)
``polar_score``          ``polar.py / polar.cu``     ``polar_score`` (never writes      summation order
                                                     decoded rows)
``polar_weighted_sum``   ``polar.py / polar.cu``     ``polar_weighted_sum`` (as         summation order (atomics)
                                                     ``scalar_weighted_sum``, rows
                                                     decoded as in ``polar_values``)
``fastscan_sums``        ``fastscan.py /             ``fastscan_sums`` (a query's       never (integers)
                         fastscan.cu``               tables in shared memory)
``fastscan_topk``        ``fastscan.py /             ``fastscan_keys``, then CuPy's     never (stable sort: equal
                         fastscan.cu``               stable ``argsort``                 keys by position)
=======================  ==========================  =================================  ================================

Tests: ``tests/test_cuda.py`` (every kernel against the reference, on the CPU
emulator of ``tests/cuda_emulator.py`` and, under the ``gpu`` mark, on a
device) and ``tests/test_backends.py`` (one body over every backend).

Arguments are checked as the reference checks them: first that every array
is a CuPy array, then the same functions of :mod:`polarquant.backends._checks`
in the same order (so the same bad input raises the same exception, with the
same message, as on every backend), then that all arrays are on one device.
Codebooks, bit widths and layouts are not checked here: the plan checked them
when it was built.  The kernels' own limits are checked after that: at most
16 polar levels, and the shared memory ``polar_encode`` needs for one row.

GPU execution is unverified (``docs/performance.md``), the weighted sums'
included: the CUDA sources are compile-checked with nvcc for sm_80 and sm_90,
and the host side and the kernels' arithmetic are tested with the launch
mocked and the kernels emulated on the CPU (``tests/test_cuda.py``); the
``gpu`` tests there need a CUDA device.

Examples
--------
On a machine with a CUDA device (skipped by doctest elsewhere); the codes are
0, 1, 2, 3, two bits each, first code highest, as on the reference:

>>> import cupy as cp  # doctest: +SKIP
>>> from polarquant import TurboQuantMSE
>>> from polarquant.backends import cupy_backend as cb
>>> plan = TurboQuantMSE(4, bits=2).plan
>>> cb.scalar_encode(plan, cp.array([[-0.9, -0.1, 0.1, 0.9]]))  # doctest: +SKIP
array([[27]], dtype=uint8)
"""

from __future__ import annotations

from .._checks import check_no_thread_options
from .fastscan import fastscan_sums, fastscan_topk
from .polar import polar_encode, polar_score, polar_values, polar_weighted_sum
from .scalar import scalar_encode, scalar_score, scalar_values, scalar_weighted_sum
from .sign import sign_encode, sign_score, sign_values

NAME = "cupy"

#: Kept chunked like the reference until the GPU path is measured (``Quantizer._score_chunks``).
SCORES_FROM_CODES = False

__all__ = [  # polarquant.backends.OPERATIONS, spelled out for static tools (tested)
    "NAME",
    "SCORES_FROM_CODES",
    "configure_threads",
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


def configure_threads(threads: int | None = None, **options) -> None:
    """Nothing to set: the kernels run on the device, with the launch sizes :mod:`._launch`
    derives from it (host threads play no part).  ``threads`` is checked as on every backend
    (an integer >= 1) and ignored; unknown options are a ``TypeError``, as on every backend."""
    check_no_thread_options(NAME, threads, options)
