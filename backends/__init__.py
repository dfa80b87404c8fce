"""Compute backends: which kernels run polarquant's hot paths.

Installed as ``polarquant.backends`` (the folder sits at the top of the
repository).  Two independent axes:

* the **array namespace** is always the input's (NumPy, CuPy, torch...);
* the **kernel backend** chooses who runs the hot operations: ``"numpy"``
  (the array-API reference in :mod:`polarquant`), ``"numba"`` (CPU JIT) or
  ``"cupy"`` (raw CUDA kernels).

The backend is chosen by precedence: an explicit ``backend=`` argument >
``with polarquant.use_backend(name):`` > the ``POLARQUANT_BACKEND``
environment variable > ``"numpy"``.  The environment variable is read lazily,
at each resolution.  The context manager stores the choice in a
:class:`contextvars.ContextVar`, which decides who sees it: the code run in
the ``with`` block (and asyncio tasks created there, which copy the context),
and nothing else.  Threads never see each other's choices, and a new thread
starts from an empty context (CPython's default builds): the workers of a
``concurrent.futures.ThreadPoolExecutor`` resolve to the environment
variable or ``"numpy"``, even when ``submit`` is called inside the block.  To
carry the choice into a worker, pass ``backend=`` to the quantizer (or
cache), or run each task in a copy of the caller's context,
``pool.submit(contextvars.copy_context().run, fn, *args)`` (one copy per
task: a context cannot be entered by two threads at once).  An unknown name raises
``ValueError`` listing the valid ones; a known but unavailable backend raises
:class:`BackendUnavailableError` naming what is missing and how to install it.
Nothing falls back silently, and importing polarquant imports neither numba
nor cupy.

Each backend is a module satisfying the :class:`Backend` protocol: the same
operation names and signatures (see :mod:`polarquant.backends.numpy_backend`
for the list and the reference), each taking the quantizer's plan first
(:mod:`polarquant.plan`), plus ``NAME``, ``SCORES_FROM_CODES`` and
``configure_threads``.  ``numpy_backend`` (array-API reference, any
namespace), ``numba_backend`` (Numba CPU JIT, NumPy arrays only) and
``cupy_backend`` (raw CUDA kernels via CuPy, CuPy arrays only) are loaded by
the functions of ``LOADERS``, one static import each, the first time a
backend is asked for.  A backend never moves data between host and device:
NumPy input on the ``cupy`` backend is a ``TypeError``.

Threads: the Numba kernels run on Numba's thread pool, the rest (rotations,
sketches) on the BLAS threads.  ``get_backend("numba")`` calls
``numba_backend.configure_threads()`` once, when it first loads the backend,
which applies the measured default for OpenMP's idle workers
(``GOMP_SPINCOUNT``; see that function) unless the environment sets it; call
``configure_threads(threads=..., spin_count=...)`` yourself, before the first
kernel runs, to choose otherwise.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable
from contextvars import ContextVar
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "BACKENDS",
    "Backend",
    "LOADERS",
    "OPERATIONS",
    "BackendUnavailableError",
    "UnknownBackendError",
    "available",
    "check_backend_name",
    "current_backend",
    "get_backend",
    "use_backend",
]

BACKENDS = ("numpy", "numba", "cupy")

#: The operations every backend module provides, with the reference's signatures
#: (see :mod:`polarquant.backends.numpy_backend`).
OPERATIONS = (
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
)
ENV_VAR = "POLARQUANT_BACKEND"

_context: ContextVar[str | None] = ContextVar("polarquant_backend", default=None)


class BackendUnavailableError(RuntimeError):
    """A known backend cannot run here (missing package, device or kernels)."""


class UnknownBackendError(ValueError):
    """A backend name (argument, ``use_backend`` or ``POLARQUANT_BACKEND``) that is not known."""


def check_backend_name(name: str) -> str:
    """Return ``name`` if it is a known backend, else raise :class:`UnknownBackendError`.

    The error (a ``ValueError``) lists the valid names.
    """
    if not isinstance(name, str) or name.strip().lower() not in BACKENDS:
        raise UnknownBackendError(
            f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}"
        )
    return name.strip().lower()


#: How to install each optional backend's package (the distribution is installed from a clone).
INSTALL_HINTS = {
    "numba": 'python -m pip install numba; in a clone of polarquant: python -m pip install -e ".[numba]"',
    "cupy": (
        "python -m pip install cupy-cuda12x or cupy-cuda13x, matching your CUDA major version; "
        'in a clone of polarquant: python -m pip install -e ".[cuda12]" or -e ".[cuda13]"'
    ),
}


def _why_unavailable(name: str) -> str | None:
    """None if ``name`` can run here, else the reason (with the install command)."""
    if name == "numpy":
        return None
    if name == "numba":
        if importlib.util.find_spec("numba") is None:
            return f"the numba package is not installed ({INSTALL_HINTS['numba']})"
        return None
    if name == "cupy":
        if importlib.util.find_spec("cupy") is None:
            return f"the cupy package is not installed ({INSTALL_HINTS['cupy']})"
        try:
            import cupy  # only here, when the cupy backend is asked about
        except Exception as exc:  # e.g. a wheel built for another CUDA major version
            return f"cupy is installed but cannot be imported: {exc}"
        try:
            ok = cupy.is_available()
        except Exception as exc:  # pragma: no cover - driver trouble
            return f"cupy cannot query CUDA devices: {exc}"
        if not ok:
            return "cupy is installed, but no CUDA device (or driver) is available here"
        return None
    raise AssertionError(name)  # pragma: no cover


def available() -> dict[str, str | None]:
    """Every backend name mapped to ``None`` if usable here, else the reason it is not.

    Checks whether numba is installed without importing it (an install that fails to
    import is reported by :func:`get_backend`, as a ``BackendUnavailableError``, when
    the backend is first used); for ``cupy`` it imports cupy (only when called) to ask for
    a CUDA device.
    """
    return {name: _why_unavailable(name) for name in BACKENDS}


def current_backend(explicit: str | None = None) -> str:
    """Resolve the backend name: explicit > context manager > environment variable > numpy."""
    if explicit is not None:
        return check_backend_name(explicit)
    ctx = _context.get()
    if ctx is not None:
        return ctx
    return _default_backend()


def _default_backend() -> str:
    """The backend when neither an argument nor a context chooses one: ``POLARQUANT_BACKEND``,
    else ``"numpy"`` (the test suite replaces it to prove that a test never falls back here)."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        try:
            return check_backend_name(env)
        except ValueError as exc:
            raise UnknownBackendError(f"{ENV_VAR}={env!r}: {exc}") from None
    return "numpy"


@runtime_checkable
class Backend(Protocol):
    """What every backend module provides (the reference: :mod:`.numpy_backend`).

    The operations of :data:`OPERATIONS` take a plan
    (:mod:`polarquant.plan`) first, then arrays of the backend's kind:

    * ``scalar_encode(plan, y)``, ``scalar_values(plan, packed, dtype)``,
      ``scalar_score(plan, q, packed)``, ``scalar_weighted_sum(plan, w, packed)``
      with a :class:`~polarquant.plan.ScalarPlan`;
    * ``sign_encode(plan, p)``, ``sign_values(plan, packed, dtype)``,
      ``sign_score(plan, s, packed)`` with a :class:`~polarquant.plan.SignPlan`;
    * ``polar_encode(plan, y) -> (codes, radii)``, ``polar_values(plan, codes,
      radii, dtype)``, ``polar_score(plan, q, codes, radii)``,
      ``polar_weighted_sum(plan, w, codes, radii)`` with a
      :class:`~polarquant.plan.PolarPlan`;
    * ``fastscan_sums(plan, tq, blocks, n)``, ``fastscan_topk(plan, tq, blocks, n,
      c, bias, scale, shift=None, weight=None)`` with a
      :class:`~polarquant.fastscan.FastScanPlan` (byte tables and the block layout
      of :mod:`polarquant.fastscan`).

    ``SCORES_FROM_CODES`` says whether the scores read codes without decoding
    rows to memory (the quantizers then hand them every row at once instead
    of chunks), and ``configure_threads(threads=None, **options)`` sets how
    the backend's kernels use threads (a no-op where they run elsewhere).
    """

    NAME: str
    SCORES_FROM_CODES: bool

    def configure_threads(self, threads: int | None = None, **options: Any) -> None: ...

    def scalar_encode(self, plan, y): ...
    def scalar_values(self, plan, packed, dtype): ...
    def scalar_score(self, plan, q, packed): ...
    def scalar_weighted_sum(self, plan, w, packed): ...
    def sign_encode(self, plan, p): ...
    def sign_values(self, plan, packed, dtype): ...
    def sign_score(self, plan, s, packed): ...
    def polar_encode(self, plan, y): ...
    def polar_values(self, plan, codes, radii, dtype): ...
    def polar_score(self, plan, q, codes, radii): ...
    def polar_weighted_sum(self, plan, w, codes, radii): ...
    def fastscan_sums(self, plan, tq, blocks, n): ...
    def fastscan_topk(self, plan, tq, blocks, n, c, bias, scale, shift=None, weight=None): ...


def _load_numpy() -> ModuleType:
    from . import numpy_backend

    return numpy_backend


def _load_numba() -> ModuleType:
    from . import numba_backend  # imports numba (and compiles nothing yet)

    numba_backend.configure_threads()  # the documented default: see the module docstring
    return numba_backend


def _load_cupy() -> ModuleType:
    from . import cupy_backend  # imports no CuPy until a kernel is launched

    return cupy_backend


#: How each backend is loaded: one static import per backend, run once (see ``get_backend``).
LOADERS: dict[str, Callable[[], ModuleType]] = {
    "numpy": _load_numpy,
    "numba": _load_numba,
    "cupy": _load_cupy,
}
_loaded: dict[str, ModuleType] = {}


def get_backend(name: str | None = None) -> Backend:
    """The kernel module of the resolved backend; raises if it cannot run here.

    Loaded once per process by its function in ``LOADERS``.
    """
    name = current_backend(name)
    why = _why_unavailable(name)
    if why is not None:
        raise BackendUnavailableError(f"backend {name!r} is unavailable: {why}")
    module = _loaded.get(name)
    if module is None:
        try:
            module = LOADERS[name]()
        except ImportError as exc:  # installed (``available`` found it) but broken
            raise BackendUnavailableError(
                f"backend {name!r} is unavailable: {name} is installed but cannot be imported "
                f"({exc}); {INSTALL_HINTS.get(name, 'reinstall it')}"
            ) from exc
        _loaded[name] = module
    return module


@contextlib.contextmanager
def use_backend(name: str):
    """Run the enclosed block with backend ``name`` (checked on entry).

    The choice is a context variable: it reaches what the block calls in this
    thread (and asyncio tasks it creates), not other threads, nor the
    workers of a thread pool; pass ``backend=`` or submit
    ``contextvars.copy_context().run`` there (see the module docstring).
    """
    name = check_backend_name(name)
    why = _why_unavailable(name)
    if why is not None:
        raise BackendUnavailableError(f"backend {name!r} is unavailable: {why}")
    token = _context.set(name)
    try:
        yield name
    finally:
        _context.reset(token)
