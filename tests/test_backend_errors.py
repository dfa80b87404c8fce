"""Backend arguments and errors (issue 10): same bad input, same error, named as the caller knows it.

* The same bad input raises the same exception type **and message** on the
  numpy reference, the numba backend and the cupy backend (the latter with
  CuPy replaced by the NumPy-backed fake of ``tests/test_cuda.py``: only the
  argument checks run, no kernel is launched); the messages name the caller's
  arguments (``x``, ``queries``, ``weights``), never the backends' internal
  variables (``y``, ``p``, ``q``, ``s``, ``w``).
* ``Quantizer.weighted_sum`` over zero encoded vectors returns zeros (it
  crashed in a reshape on every backend), and weights of another array
  namespace than the codes are a ``TypeError`` saying so.
* ``use_backend`` is a context variable: it does not reach the workers of a
  thread pool; ``contextvars.copy_context().run`` and ``backend=`` do.
"""

from __future__ import annotations

import contextvars
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from polarquant.backends import available, current_backend
from polarquant.backends import numpy_backend as ref

import polarquant as pq

HAS_NUMBA = available()["numba"] is None
needs_numba = pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")

DIM = 64


def _quantizers(backend):
    return [
        pq.TurboQuantMSE(DIM, 3, backend=backend),
        pq.TurboQuantProd(DIM, 3, backend=backend),
        pq.QJL(DIM, 96, backend=backend),
        pq.PolarQuant(DIM, 4, (4, 2, 2, 2), backend=backend),
        pq.PolarQuantQJL(DIM, backend=backend),
    ]


def _backends():
    return ["numpy"] + (["numba"] if HAS_NUMBA else [])


# -- weighted sums over nothing ------------------------------------------------------------------
@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("lead", [(3,), (), (2, 4)])
def test_weighted_sum_over_zero_vectors_is_zero(backend, lead):
    """Issue 10, defect 5: zero encoded vectors crashed ("cannot reshape array of size 0 into
    shape (0)") on both backends; the empty sum is zero, of shape ``lead + (dim,)``."""
    for q in _quantizers(backend):
        codes = q.encode(np.zeros((0, DIM), np.float32))
        out = q.weighted_sum(np.zeros(lead + (0,), np.float32), codes)
        assert out.shape == lead + (DIM,) and out.dtype == np.float32
        assert not np.any(out), type(q).__name__


def test_weighted_sum_refuses_weights_of_another_namespace():
    """torch weights with NumPy codes crashed deep (AttributeError / "Cannot interpret
    'torch.float32' as a data type"); now the same TypeError as ``score`` gives."""
    torch = pytest.importorskip("torch")
    for q in _quantizers("numpy"):
        codes = q.encode(np.ones((5, DIM), np.float32))
        with pytest.raises(TypeError, match="weights and codes live in different array"):
            q.weighted_sum(torch.ones(2, 5), codes)


# -- the same bad input, the same error, on every backend ------------------------------------------
def _bad_calls(mod, arr):
    """(what, call) pairs of one bad argument each; ``arr`` makes the backend's arrays."""
    f32 = np.float32
    cents, bounds = arr(np.linspace(-1, 1, 4, dtype=f32)), arr(np.array([-0.5, 0, 0.5], f32))
    packed = arr(np.zeros((5, 2), np.uint8))  # 5 rows of 8 two-bit codes
    signs = arr(np.zeros((5, 1), np.uint8))  # 5 rows of 8 sign bits
    polar = [arr(np.zeros((5, 1), np.uint8))]  # dim 4, one level: two 2-bit angles per row
    radii = arr(np.ones((5, 2), f32))
    return [
        (
            "scalar_score queries",
            lambda: mod.scalar_score(arr(np.ones((3, 7), f32)), packed, cents, 2, 8),
        ),
        ("sign_score queries", lambda: mod.sign_score(arr(np.ones((3, 9), f32)), signs, 8)),
        (
            "polar_score queries",
            lambda: mod.polar_score(arr(np.ones((3, 5), f32)), polar, radii, [cents], [2], 4),
        ),
        (
            "scalar_weighted_sum weights",
            lambda: mod.scalar_weighted_sum(arr(np.ones((3, 4), f32)), packed, cents, 2, 8),
        ),
        (
            "polar_weighted_sum weights",
            lambda: mod.polar_weighted_sum(
                arr(np.ones((3, 6), f32)), polar, radii, [cents], [2], 4
            ),
        ),
        (
            "scalar_weighted_sum 1-D codes",
            lambda: mod.scalar_weighted_sum(
                arr(np.ones((3, 2), f32)), arr(np.zeros(2, np.uint8)), cents, 2, 8
            ),
        ),
        (
            "scalar_values codes",
            lambda: mod.scalar_values(arr(np.zeros((5, 3), np.uint8)), cents, 2, 8),
        ),
        ("scalar_encode bits", lambda: mod.scalar_encode(arr(np.ones((2, 8), f32)), bounds, 9)),
    ]


def _outcome(call):
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the test compares whatever is raised
        return type(exc), str(exc)
    return None, None


def _cupy_backend(monkeypatch):
    """The cupy backend with CuPy replaced by the fake of tests/test_cuda.py (no launches)."""
    test_cuda = pytest.importorskip("tests.test_cuda")
    from polarquant.backends import cupy_backend
    from polarquant.backends.cupy_backend import _launch

    fake = test_cuda.make_fake_cupy(None)
    monkeypatch.setattr(_launch, "get_cupy", lambda: fake)
    return cupy_backend, test_cuda.dev, fake


def test_same_bad_input_same_error_on_every_backend(monkeypatch):
    """One message per bad input, on numpy, numba and (mocked) cupy, naming public arguments."""
    mods = {"numpy": (ref, np.asarray)}
    if HAS_NUMBA:
        from polarquant.backends import numba_backend

        mods["numba"] = (numba_backend, np.asarray)
    cupy_backend, dev, fake = _cupy_backend(monkeypatch)
    mods["cupy"] = (cupy_backend, dev)
    outcomes = {
        name: [_outcome(c) for _, c in _bad_calls(m, arr)] for name, (m, arr) in mods.items()
    }
    whats = [w for w, _ in _bad_calls(ref, np.asarray)]
    for i, what in enumerate(whats):
        seen = {name: outcomes[name][i] for name in mods}
        kind, msg = seen["numpy"]
        assert kind is not None, f"{what}: the reference raised nothing"
        for name, got in seen.items():
            assert got == (kind, msg), f"{what}: {name} raised {got}, numpy {kind, msg}"
        public = what.split()[-1]
        if public in ("queries", "weights"):
            assert msg.startswith(public + " "), f"{what}: {msg!r} does not name {public!r}"
    assert fake.launches == []


@needs_numba
@pytest.mark.parametrize("index", range(5))
def test_numba_names_the_callers_argument(index):
    """Issue 10 (11, part): encoding a torch tensor on numba said "but y is ..." or "but p is ..."
    (internal variables); it names ``x``, the argument of ``encode``."""
    torch = pytest.importorskip("torch")
    q = _quantizers("numba")[index]
    with pytest.raises(
        TypeError, match=r"the numba backend runs on NumPy arrays, but x is a torch"
    ):
        q.encode(torch.ones(2, DIM))


def test_cupy_names_the_callers_argument(monkeypatch):
    """NumPy input on the (mocked) cupy backend names ``x``/``queries``/``weights`` too."""
    cb, dev, fake = _cupy_backend(monkeypatch)
    f = np.ones((2, 8), np.float32)
    u, c = dev(np.zeros((2, 2), np.uint8)), dev(np.linspace(-1, 1, 4).astype(np.float32))
    calls = {
        "x": [
            lambda: cb.scalar_encode(f, dev(np.zeros(3, np.float32)), 2),
            lambda: cb.sign_encode(f),
        ],
        "queries": [
            lambda: cb.scalar_score(f, u, c, 2, 8),
            lambda: cb.sign_score(f, dev(np.zeros((2, 1), np.uint8)), 8),
        ],
        "weights": [lambda: cb.scalar_weighted_sum(np.ones((1, 2), np.float32), u, c, 2, 8)],
    }
    for name, fns in calls.items():
        for fn in fns:
            with pytest.raises(TypeError, match=rf"needs CuPy arrays, but {name} is a numpy"):
                fn()
    assert fake.launches == []


# -- use_backend and threads ----------------------------------------------------------------------
@needs_numba
def test_use_backend_does_not_reach_thread_pool_workers(monkeypatch):
    """The documented rule (backends module docstring, docs/backends.md): a ContextVar.

    A worker of a thread pool starts from an empty context: inside
    ``use_backend("numba")`` it still resolves to the environment's choice
    (``numpy`` here); run in ``contextvars.copy_context().run`` it sees
    ``numba``; an explicit ``backend=`` needs no context at all.
    """
    monkeypatch.delenv("POLARQUANT_BACKEND", raising=False)
    x = np.random.default_rng(0).standard_normal((4, DIM)).astype(np.float32)
    with ThreadPoolExecutor(max_workers=2) as pool, pq.use_backend("numba"):
        assert current_backend() == "numba"
        assert pool.submit(current_backend).result() == "numpy"
        assert pool.submit(contextvars.copy_context().run, current_backend).result() == "numba"
        tq = pq.TurboQuantMSE(DIM, 3, backend="numba")
        codes = pool.submit(tq.encode, x).result()
    ref_codes = pq.TurboQuantMSE(DIM, 3, backend="numba").encode(x)
    np.testing.assert_array_equal(codes.fields["codes"], ref_codes.fields["codes"])


def test_docs_state_the_thread_rule():
    """The backend guide shows the two ways into workers (the rule is behaviour, not a promise)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "backends.md").read_text()
    assert "copy_context().run" in text and re.search(r"ThreadPoolExecutor", text)
