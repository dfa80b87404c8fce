"""Backend arguments and errors (issue 10): same bad input, same error, named as the caller knows it.

* The same bad input raises the same exception type **and message** on the
  numpy reference, the numba backend and the cupy backend (the latter with
  CuPy replaced by the NumPy-backed fake of ``tests/cuda_emulator.py``: only the
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
import os
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from polarquant.backends import BACKENDS, available, current_backend, get_backend
from polarquant.backends import numpy_backend as ref

import polarquant as pq
from polarquant.codebooks import angle_codebook, coordinate_codebook
from polarquant.fastscan import FastScanPlan
from polarquant.plan import PolarPlan, ScalarPlan, SignPlan

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
#: The plans of the battery: 8 two-bit codes (2 bytes) per row; 8 signs (1 byte); a 2-level polar
#: tree of dim 8, 4 two-bit angles at level 1 (1 byte) and 2 three-bit angles at level 2 (1 byte),
#: 2 radii: every op's arguments are checked against these sizes.
SCALAR = ScalarPlan(8, coordinate_codebook(8, 2))
SIGN = SignPlan(8)
POLAR = PolarPlan(8, (angle_codebook(1, 2), angle_codebook(2, 3)))
FAST = FastScanPlan(4, 8)  # 8 four-bit codes: 4 bytes (8 nibbles) per vector
assert (SCALAR.nbytes, SIGN.nbytes, POLAR.nbytes, POLAR.radii) == (2, 1, 2, 2)


def _battery():
    """``(what, named, op, args)``: one bad input per case (two in the ``order`` cases, where the
    first check in the common order must win), host NumPy arrays; ``named`` is the argument the
    message must name, as the caller knows it.  Dtypes given as such are passed through."""
    f32, u8 = np.float32, np.uint8

    def z(shape, dtype=f32):
        return np.zeros(shape, dtype)

    codes, signs, radii = z((5, 2), u8), z((5, 1), u8), np.ones((5, 2), f32)
    tq, blk, bias, scale = z((2, 8, 16), u8), z((1, 4, 32), u8), z(2), z(5)
    q, w = z((3, 8)), z((3, 5))
    return [
        # the rows an encoder codes: x (..., n) of real numbers
        ("scalar_encode complex x", "x", "scalar_encode", (SCALAR, z((5, 8), np.complex64))),
        ("scalar_encode string x", "x", "scalar_encode", (SCALAR, np.full((2, 8), "a"))),
        ("scalar_encode 0-d x", "x", "scalar_encode", (SCALAR, np.array(1.0, f32))),
        ("scalar_encode x width", "x", "scalar_encode", (SCALAR, z((5, 7)))),
        ("scalar_encode 1-D x width", "x", "scalar_encode", (SCALAR, z(9))),
        ("scalar_encode batched x width", "x", "scalar_encode", (SCALAR, z((2, 3, 16)))),
        ("sign_encode complex x", "x", "sign_encode", (SIGN, z((5, 8), np.complex128))),
        ("sign_encode 0-d x", "x", "sign_encode", (SIGN, np.array(0.5))),
        ("sign_encode x width", "x", "sign_encode", (SIGN, z((5, 9)))),
        ("polar_encode complex x", "x", "polar_encode", (POLAR, z((5, 8), np.complex64))),
        ("polar_encode 0-d x", "x", "polar_encode", (POLAR, np.array(2.0, f32))),
        ("polar_encode x width", "x", "polar_encode", (POLAR, z((5, 16)))),
        ("polar_encode datetime x", "x", "polar_encode", (POLAR, z((5, 8), "M8[s]"))),
        # packed codes: uint8 (..., nbytes)
        ("scalar_values int64 codes", "codes", "scalar_values", (SCALAR, z((5, 2), np.int64), f32)),
        ("scalar_values int8 codes", "codes", "scalar_values", (SCALAR, z((5, 2), np.int8), f32)),
        ("scalar_values float codes", "codes", "scalar_values", (SCALAR, z((5, 2)), f32)),
        ("scalar_values 0-d codes", "codes", "scalar_values", (SCALAR, np.array(3, u8), f32)),
        ("scalar_values codes width", "codes", "scalar_values", (SCALAR, z((5, 3), u8), f32)),
        ("sign_values codes width", "codes", "sign_values", (SIGN, z((5, 2), u8), f32)),
        ("sign_values int16 codes", "codes", "sign_values", (SIGN, z((5, 1), np.int16), f32)),
        (
            "polar_values int8 codes",
            "codes",
            "polar_values",
            (POLAR, z((5, 2), np.int8), radii, f32),
        ),
        ("polar_values codes width", "codes", "polar_values", (POLAR, z((5, 1), u8), radii, f32)),
        ("polar_values 0-d codes", "codes", "polar_values", (POLAR, np.array(1, u8), radii, f32)),
        # the dtype asked of a decode: a real float
        ("scalar_values int dtype", "dtype", "scalar_values", (SCALAR, codes, np.int32)),
        ("scalar_values complex dtype", "dtype", "scalar_values", (SCALAR, codes, np.complex64)),
        ("sign_values bool dtype", "dtype", "sign_values", (SIGN, signs, bool)),
        ("sign_values uint8 dtype", "dtype", "sign_values", (SIGN, signs, np.dtype(u8))),
        ("polar_values int dtype", "dtype", "polar_values", (POLAR, codes, radii, np.int64)),
        ("polar_values object dtype", "dtype", "polar_values", (POLAR, codes, radii, object)),
        # radii: real floats (..., D / 2**L), one row per row of codes
        (
            "polar_values int radii",
            "radii",
            "polar_values",
            (POLAR, codes, z((5, 2), np.int32), f32),
        ),
        (
            "polar_values complex radii",
            "radii",
            "polar_values",
            (POLAR, codes, z((5, 2), np.complex64), f32),
        ),
        ("polar_values radii width", "radii", "polar_values", (POLAR, codes, z((5, 3)), f32)),
        ("polar_values radii rows", "radii", "polar_values", (POLAR, codes, z((4, 2)), f32)),
        (
            "polar_values 0-d radii",
            "radii",
            "polar_values",
            (POLAR, codes, np.array(1.0, f32), f32),
        ),
        ("polar_values 1-D radii", "radii", "polar_values", (POLAR, codes, z(2), f32)),
        ("polar_values batched radii", "radii", "polar_values", (POLAR, codes, z((1, 5, 2)), f32)),
        ("polar_score radii width", "radii", "polar_score", (POLAR, q, codes, z((5, 1)))),
        (
            "polar_weighted_sum radii rows",
            "radii",
            "polar_weighted_sum",
            (POLAR, w, codes, z((6, 2))),
        ),
        ("polar_weighted_sum int radii", "radii", "polar_weighted_sum", (POLAR, w, codes, codes)),
        # queries (..., n) of real numbers, against codes (rows, nbytes) or one row (nbytes,)
        ("scalar_score queries width", "queries", "scalar_score", (SCALAR, z((3, 7)), codes)),
        (
            "scalar_score complex queries",
            "queries",
            "scalar_score",
            (SCALAR, q.astype(complex), codes),
        ),
        (
            "scalar_score 0-d queries",
            "queries",
            "scalar_score",
            (SCALAR, np.array(1.0, f32), codes),
        ),
        ("scalar_score 1-D queries width", "queries", "scalar_score", (SCALAR, z(9), codes)),
        ("sign_score queries width", "queries", "sign_score", (SIGN, z((3, 9)), signs)),
        (
            "sign_score complex queries",
            "queries",
            "sign_score",
            (SIGN, z((3, 8), np.complex64), signs),
        ),
        ("polar_score queries width", "queries", "polar_score", (POLAR, z((3, 5)), codes, radii)),
        ("polar_score 0-d queries", "queries", "polar_score", (POLAR, np.array(0.0), codes, radii)),
        # scores of stacked batches of codes: (rows, nbytes) or (nbytes,) only
        ("scalar_score stacked codes", "codes", "scalar_score", (SCALAR, q, z((2, 5, 2), u8))),
        ("sign_score stacked codes", "codes", "sign_score", (SIGN, q, z((2, 5, 1), u8))),
        (
            "polar_score stacked codes",
            "codes",
            "polar_score",
            (POLAR, q, z((2, 5, 2), u8), np.ones((2, 5, 2), f32)),
        ),
        ("scalar_score int64 codes", "codes", "scalar_score", (SCALAR, q, z((5, 2), np.int64))),
        ("sign_score codes width", "codes", "sign_score", (SIGN, q, z((5, 2), u8))),
        # weights (..., rows) of real numbers, against codes (rows, nbytes) only
        (
            "scalar_weighted_sum weights rows",
            "weights",
            "scalar_weighted_sum",
            (SCALAR, z((3, 4)), codes),
        ),
        (
            "scalar_weighted_sum 0-d weights",
            "weights",
            "scalar_weighted_sum",
            (SCALAR, np.array(1.0), codes),
        ),
        (
            "scalar_weighted_sum complex weights",
            "weights",
            "scalar_weighted_sum",
            (SCALAR, z((3, 5), np.complex64), codes),
        ),
        (
            "scalar_weighted_sum 1-D weights rows",
            "weights",
            "scalar_weighted_sum",
            (SCALAR, z(6), codes),
        ),
        (
            "scalar_weighted_sum 1-D codes",
            "codes",
            "scalar_weighted_sum",
            (SCALAR, z((3, 2)), z(2, u8)),
        ),
        (
            "scalar_weighted_sum stacked codes",
            "codes",
            "scalar_weighted_sum",
            (SCALAR, w, z((2, 5, 2), u8)),
        ),
        (
            "scalar_weighted_sum codes width",
            "codes",
            "scalar_weighted_sum",
            (SCALAR, w, z((5, 1), u8)),
        ),
        (
            "scalar_weighted_sum int32 codes",
            "codes",
            "scalar_weighted_sum",
            (SCALAR, w, z((5, 2), np.int32)),
        ),
        (
            "polar_weighted_sum weights rows",
            "weights",
            "polar_weighted_sum",
            (POLAR, z((3, 6)), codes, radii),
        ),
        (
            "polar_weighted_sum 0-d weights",
            "weights",
            "polar_weighted_sum",
            (POLAR, np.array(1.0, f32), codes, radii),
        ),
        (
            "polar_weighted_sum 1-D codes",
            "codes",
            "polar_weighted_sum",
            (POLAR, z((3, 1)), z(2, u8), z(2)),
        ),
        (
            "polar_weighted_sum stacked codes",
            "codes",
            "polar_weighted_sum",
            (POLAR, w, z((2, 5, 2), u8), np.ones((2, 5, 2), f32)),
        ),
        # two bad arguments: the common order (codes, radii, then queries/weights/dtype) decides
        (
            "order: codes before queries",
            "codes",
            "scalar_score",
            (SCALAR, z((3, 7)), z((5, 2), np.int64)),
        ),
        (
            "order: codes before weights",
            "codes",
            "scalar_weighted_sum",
            (SCALAR, z((3, 4)), z((5, 3), u8)),
        ),
        ("order: codes before dtype", "codes", "sign_values", (SIGN, z((5, 4), u8), np.int32)),
        (
            "order: codes before radii",
            "codes",
            "polar_values",
            (POLAR, z((5, 3), u8), z((5, 3)), f32),
        ),
        (
            "order: radii before queries",
            "radii",
            "polar_score",
            (POLAR, z((3, 5)), codes, z((5, 3))),
        ),
        ("order: radii before dtype", "radii", "polar_values", (POLAR, codes, z((5, 3)), np.int8)),
        (
            "order: radii before weights",
            "radii",
            "polar_weighted_sum",
            (POLAR, z((3, 2)), codes, z((5, 3))),
        ),
        (
            "order: dtype before width",
            "queries",
            "sign_score",
            (SIGN, z((3, 9), np.complex64), signs),
        ),
        # fast scan: byte tables (nq, 8, 16) uint8, blocks (nblocks, 4, 32) uint8 holding n rows
        ("fastscan_sums float tables", "tables", "fastscan_sums", (FAST, z((2, 8, 16)), blk, 5)),
        (
            "fastscan_sums tables width",
            "tables",
            "fastscan_sums",
            (FAST, z((2, 6, 16), u8), blk, 5),
        ),
        ("fastscan_sums 2-D blocks", "blocks", "fastscan_sums", (FAST, tq, z((4, 32), u8), 5)),
        ("fastscan_sums blocks width", "blocks", "fastscan_sums", (FAST, tq, z((1, 3, 32), u8), 5)),
        ("fastscan_sums n past blocks", "blocks", "fastscan_sums", (FAST, tq, blk, 40)),
        ("fastscan_topk c = 0", "c", "fastscan_topk", (FAST, tq, blk, 5, 0, bias, scale)),
        ("fastscan_topk c float", "c", "fastscan_topk", (FAST, tq, blk, 5, 1.5, bias, scale)),
        ("fastscan_topk bias shape", "bias", "fastscan_topk", (FAST, tq, blk, 5, 2, z(3), scale)),
        (
            "fastscan_topk NaN bias",
            "bias",
            "fastscan_topk",
            (FAST, tq, blk, 5, 2, np.full(2, np.nan, f32), scale),
        ),
        (
            "fastscan_topk float64 scale",
            "scale",
            "fastscan_topk",
            (FAST, tq, blk, 5, 2, bias, z(5, np.float64)),
        ),
        ("fastscan_topk scale length", "scale", "fastscan_topk", (FAST, tq, blk, 5, 2, bias, z(4))),
        (
            "fastscan_topk shift without weight",
            "shift",
            "fastscan_topk",
            (FAST, tq, blk, 5, 2, bias, scale, z(5)),
        ),
        (
            "fastscan_topk weight shape",
            "weight",
            "fastscan_topk",
            (FAST, tq, blk, 5, 2, bias, scale, z(5), z(3)),
        ),
        (
            "order: tables before blocks",
            "tables",
            "fastscan_topk",
            (FAST, z((2, 8, 15), u8), z((4, 32), u8), 5, 2, bias, scale),
        ),
    ]


#: How each kind of argument is named at the start of a message (the caller's names).
NAMES = {
    "x": ("x ",),
    "codes": ("packed codes ", "angle codes ", "scores need codes", "weighted sums need codes"),
    "dtype": ("decoded values ",),
    "radii": ("radii ",),
    "queries": ("queries ",),
    "weights": ("weights ",),
    "tables": ("byte tables ",),
    "blocks": ("fast-scan blocks ", "n="),
    "c": ("c ",),
    "bias": ("bias ",),
    "scale": ("scale ",),
    "shift": ("shift ",),
    "weight": ("weight ",),
}


def _outcome(call):
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the test compares whatever is raised
        return type(exc), str(exc)
    return None, None


def _cupy_backend(monkeypatch):
    """The cupy backend with CuPy replaced by the fake of ``tests/cuda_emulator.py``: only the
    argument checks run, no kernel is launched (no CUDA needed)."""
    from polarquant.backends import cupy_backend

    from tests.cuda_emulator import dev, install_fake_cupy

    return cupy_backend, dev, install_fake_cupy(monkeypatch)


def _param(name: str):
    why = available()[name]
    marks = () if why is None else (pytest.mark.skip(reason=f"{name}: {why}"),)
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("backend", [*(_param(n) for n in BACKENDS), "cupy-mock"])
def test_same_bad_input_same_error_on_every_backend(backend, monkeypatch):
    """Every case of the battery raises, on this backend, the reference's exception type **and
    message**: the checks of ``backends/_checks.py`` are the same functions called in the same
    order on every backend, so nothing but a backend skipping or reordering one can make them
    differ.  Arrays move to the backend's kind (``cupy.asarray`` on a GPU; the NumPy-backed fake
    of ``tests/cuda_emulator.py`` for ``cupy-mock``, where only the checks run and no kernel may
    launch).  Every message names the argument as the caller knows it (``x``, ``queries``,
    ``weights``, packed or angle codes, ``radii``, decoded values), never a backend's variable."""
    fake = None
    if backend == "cupy-mock":
        mod, _, fake = _cupy_backend(monkeypatch)
        put = fake.asarray  # as cupy.asarray: keeps 0-d arrays 0-d (``dev`` makes them 1-D)
    elif backend == "cupy":
        import cupy

        mod, put = get_backend("cupy"), cupy.asarray
    else:
        mod, put = get_backend(backend), np.asarray

    def moved(args):
        return tuple(put(a) if isinstance(a, np.ndarray) else a for a in args)

    for what, named, op, args in _battery():
        kind, msg = _outcome(lambda op=op, args=args: getattr(ref, op)(*args))
        assert kind is not None, f"{what}: the reference raised nothing"
        assert msg.startswith(NAMES[named]), f"{what}: {msg!r} does not name the {named}"
        try:
            dev_args = moved(args)
        except (TypeError, ValueError):  # strings, datetimes: no CuPy array holds them
            assert backend == "cupy", what
            continue
        got = _outcome(lambda op=op, dev_args=dev_args: getattr(mod, op)(*dev_args))
        assert got == (kind, msg), f"{what}: {backend} raised {got}, numpy {(kind, msg)}"
    if fake is not None:
        assert fake.launches == []


def test_battery_covers_every_operation():
    """The battery feeds bad input to each operation of the protocol."""
    from polarquant.backends import OPERATIONS

    assert {op for _, _, op, _ in _battery()} == set(OPERATIONS)


@needs_numba
@pytest.mark.parametrize("index", range(5))
def test_numba_names_the_callers_argument(index):
    """Issue 10 (11, part): encoding a torch tensor on numba said "but y is ..." or "but p is ..."
    (internal variables); it names ``x``, the argument of ``encode``."""
    torch = pytest.importorskip("torch")
    q = _quantizers("numba")[index]
    with pytest.raises(
        TypeError, match=r"the numba backend runs on NumPy arrays .*, but x is a torch"
    ):
        q.encode(torch.ones(2, DIM))


def test_cupy_names_the_callers_argument(monkeypatch):
    """NumPy input on the (mocked) cupy backend names ``x``/``queries``/``weights``/the codes."""
    cb, dev, fake = _cupy_backend(monkeypatch)
    f = np.ones((2, 8), np.float32)
    u, s = dev(np.zeros((2, 2), np.uint8)), dev(np.zeros((2, 1), np.uint8))
    calls = {
        "x": [
            lambda: cb.scalar_encode(SCALAR, f),
            lambda: cb.sign_encode(SIGN, f),
            lambda: cb.polar_encode(POLAR, f),
        ],
        "queries": [
            lambda: cb.scalar_score(SCALAR, f, u),
            lambda: cb.sign_score(SIGN, f, s),
            lambda: cb.polar_score(POLAR, f, u, dev(np.ones((2, 2), np.float32))),
        ],
        "weights": [
            lambda: cb.scalar_weighted_sum(SCALAR, np.ones((1, 2), np.float32), u),
            lambda: cb.polar_weighted_sum(
                POLAR, np.ones((1, 2), np.float32), u, dev(np.ones((2, 2), np.float32))
            ),
        ],
        "packed codes": [lambda: cb.scalar_values(SCALAR, np.zeros((2, 2), np.uint8), np.float32)],
    }
    for name, fns in calls.items():
        for fn in fns:
            with pytest.raises(
                TypeError, match=rf"the cupy backend runs on CuPy arrays .*, but {name} is a numpy"
            ):
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


def test_a_numba_that_fails_to_import_is_unavailable_with_the_reason(tmp_path):
    """A numba package that is installed but cannot be imported (e.g. built for another NumPy)
    is found by ``available()`` (which never imports numba); using it must raise
    ``BackendUnavailableError`` with numba's own message and the install command, not a bare
    ``ImportError`` from deep inside a quantizer.  In a subprocess: the broken package shadows
    the real one there only."""
    import subprocess
    import sys

    (tmp_path / "numba").mkdir()
    (tmp_path / "numba" / "__init__.py").write_text(
        'raise ImportError("Numba needs NumPy 2.2 or less")\n'
    )
    code = (
        "import numpy as np, polarquant as pq\n"
        "from polarquant.backends import BackendUnavailableError, available\n"
        "assert available()['numba'] is None\n"
        "try:\n"
        "    pq.TurboQuantMSE(16, 3, backend='numba').encode(np.ones((2, 16), np.float32))\n"
        "except BackendUnavailableError as exc:\n"
        "    print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert "backend 'numba' is unavailable: numba is installed but cannot be imported" in out
    assert "Numba needs NumPy 2.2 or less" in out and "pip install" in out
