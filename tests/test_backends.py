"""Backend equivalence: every kernel backend against the NumPy reference, and against the oracle.

One body per property, parametrized over the backends that
:func:`polarquant.backends.available` reports usable here (``numpy``,
``numba``, and ``cupy`` on a GPU machine); the others are skipped with the
reason, never failed and never run as something else.  Every operation takes
a plan first (:mod:`polarquant.plan`), built here from the real codebooks
(``coordinate_codebook(d, bits)``, ``angle_codebook(level, b)``) or taken from a
quantizer (``quantizer.plan``).  Inputs are built on the host with seeded NumPy
generators and moved to the backend's array module (NumPy for
``numpy``/``numba``, CuPy for ``cupy``); results come back to the host to be
compared with the reference run on the same host data.

What "the same" means, per kind of output:

* **codes** (packed bytes): identical for every decision made farther than
  ``MARGIN = 1e-4`` times its natural scale from a boundary (the row's RMS for
  rotated coordinates and sketch projections, one radian for polar angles);
  byte for byte on the rows where all decisions are.  Closer to a boundary a
  code is decided by the last bits of a float (an ``atan2``, or a rotation
  computed by another BLAS or on a GPU), whose legitimate differences are
  ~1e-6 of that scale at most, so two correct backends may disagree there.
  Scalar inputs are nudged out of the margin instead; exact ties, +-0, +-inf
  and NaN are decided by definition and compared everywhere
  (``test_op_decisions_on_boundaries``); ``test_codes_rarely_differ`` checks
  that disagreements on plain random input are rare and only between
  neighbouring codes.  PolarQuant's angle codes are one byte array per row,
  level ``l`` at ``plan.level_slice(l)``: compared level by level.
* **values and scores**: within ``RTOL`` (float32 ``1e-5``, float64 ``1e-12``)
  of the reference, relative to the row's norm (values) or to
  ``||q|| ||row||`` (scores, the Cauchy-Schwarz scale of an inner product).
  Rounding in a float32 sum of ``n <= 256`` terms is ``~ sqrt(n) 6e-8 ~ 1e-6``
  of that scale, so 1e-5 fails on any real bug and never on summation order.
* **weighted sums** ``w @ values``: within ``RTOL`` relative to
  ``sum_r |w_r| ||row_r||``, the triangle-inequality bound of every coordinate
  of the sum.  Over ``R`` rows the rounding is ``~ sqrt(R) 6e-8`` of the
  largest term at worst-case-free random signs, below 3e-6 of that scale for
  the ``R <= 1001`` rows used here; a wrong code (a centroid off by one cell)
  moves a coordinate by ``|w_r|`` times a cell width, ~1e-2 of the scale.
  With one-hot weights a weighted sum is the decoded row itself: equal to the
  backend's own ``*_values`` bit for bit.
* **the oracle** (``tests/naive.py``: the papers' formulas as loops over rows
  and coordinates in Python floats, sharing no code with the library): every
  operation of every backend reproduces it directly, not only through the
  reference (``test_ops_match_the_oracle``, ``test_quantizers_match_the_oracle``),
  with the same thresholds: the oracle is float64, so a float32 backend differs
  from it by its own rounding only.
* **shapes and dtypes**: leading dimensions are batch dimensions, a single 1-D
  row is a row, zero rows (and zero codes per row) are valid input
  (``test_batch_shapes_and_empty_inputs``); float16 and integer input, float16
  radii and float16 decodes give the reference's result dtypes
  (``test_result_dtypes_follow_the_reference``).
* **errors**: the same exception type and message for the same bad input:
  ``tests/test_backend_errors.py`` feeds one battery to every backend; here the
  quantizers' own refusals are compared.

``test_kernels_run_as_python`` reruns the ``TINY`` tests of this file in a
subprocess with ``NUMBA_DISABLE_JIT=1``, so that the kernel bodies themselves
run as Python (coverage, debugging) and stay correct there.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from polarquant.backends import BACKENDS, available, get_backend
from polarquant.backends import numpy_backend as ref

import polarquant as pq
from polarquant.codebooks import Codebook, angle_codebook, coordinate_codebook
from polarquant.compressed import CompressedVectors
from polarquant.packing import unpack_codes
from polarquant.plan import PolarPlan, ResidualPlan, ScalarPlan, SignPlan
from polarquant.polar import polar_transform
from polarquant.qjl import QJL_SCALE
from tests import naive

#: Chooses its backends explicitly (or uses none): CI's Numba pass leaves it out (conftest.py).
pytestmark = pytest.mark.backend_independent

DIMS = (64, 80, 96, 128, 256)
#: Distance to a decision boundary, relative to the decided quantity's scale, under which
#: a code may legitimately differ between backends (100x the largest rounding difference).
MARGIN = 1e-4
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
#: Bits per level of the PolarQuant configurations tested (levels = their length); valid for
#: every dim in DIMS.
POLAR_CONFIGS = [(4, 2, 2, 2), (3,), (5, 7), (8, 1, 6), (3, 2, 1), (2, 4)]
#: The tests small enough to run with the kernel bodies as Python (``test_kernels_run_as_python``).
TINY = ("test_tiny_ops", "test_tiny_weighted_sums", "test_ops_match_the_oracle")


# -- the backends under test -------------------------------------------------------------------
@dataclass
class Env:
    """A backend: its operations and the array module its inputs live in."""

    name: str
    ops: object
    xp: object

    def put(self, a):
        """Host array -> the backend's array module (the same array for NumPy)."""
        return a if self.xp is np else self.xp.asarray(a)

    def host(self, a):
        return a if isinstance(a, np.ndarray) else self.xp.asnumpy(a)

    def put_codes(self, codes: CompressedVectors) -> CompressedVectors:
        """Compressed vectors with their fields in this backend's array module."""
        host = codes.to_numpy()
        fields = {k: self.put(v) for k, v in host.fields.items()}
        return CompressedVectors(
            host.method, host.config, fields, host.batch_shape, host.dim, host.dtype
        )


def _param(name: str):
    why = available()[name]
    marks = () if why is None else (pytest.mark.skip(reason=f"{name}: {why}"),)
    return pytest.param(name, marks=marks, id=name)


PARAMS = [_param(name) for name in BACKENDS]
PAIRS = [
    pytest.param(a, b, marks=p.marks + q.marks, id=f"{a}->{b}")
    for a, p in zip(BACKENDS, PARAMS, strict=True)
    for b, q in zip(BACKENDS, PARAMS, strict=True)
]


def _env(name: str) -> Env:
    xp = np if name in ("numpy", "numba") else importlib.import_module("cupy")
    return Env(name, get_backend(name), xp)


@pytest.fixture(params=PARAMS)
def env(request) -> Env:
    return _env(request.param)


# -- plans ---------------------------------------------------------------------------------------
def _scalar_plan(d: int, bits: int) -> ScalarPlan:
    """The plan of TurboQuant's ``bits``-bit codes of ``d`` rotated coordinates (Lemma 1)."""
    return ScalarPlan(d, coordinate_codebook(d, bits))


def _polar_plan(d: int, bits) -> PolarPlan:
    """The plan of PolarQuant with ``len(bits)`` levels, Lloyd-Max angle codebooks (Lemma 2)."""
    return PolarPlan(d, tuple(angle_codebook(lv, b) for lv, b in enumerate(bits, start=1)))


def _work(dtype) -> np.dtype:
    """The dtype the reference compares in (float64 stays, everything else is float32)."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


# -- helpers ----------------------------------------------------------------------------------
def _near(values, boundaries, scale=1.0) -> np.ndarray:
    """``|v - b| <= MARGIN * scale`` for some boundary ``b``, elementwise.

    ``scale`` is the natural size of the decided quantity: the RMS of the row for
    rotated coordinates and projections, 1 (radian) for angles.
    """
    b = np.asarray(boundaries, dtype=np.float64).reshape(-1)
    v = np.asarray(values, dtype=np.float64)
    if b.size == 0:
        return np.zeros(v.shape, dtype=bool)
    return np.any(np.abs(v[..., None] - b) <= MARGIN * np.asarray(scale)[..., None], axis=-1)


def _rms(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return np.sqrt(np.mean(v**2, axis=-1, keepdims=True))


def _nudge(y, boundaries):
    """Move every coordinate within the margin of a boundary to 3 margins above it."""
    b = np.asarray(boundaries, dtype=np.float64)
    scale = _rms(y)
    y = y.copy()
    for _ in range(3):  # a move can land near the next boundary up: repeat
        near = _near(y, b, scale)
        if not near.any():
            break
        rows, cols = np.nonzero(near)
        k = np.argmin(np.abs(y[rows, cols][:, None].astype(np.float64) - b), axis=1)
        y[rows, cols] = (b[k] + 3 * MARGIN * scale[rows, 0]).astype(y.dtype)
    assert not _near(y, b, scale).any()
    return y


def _codes(packed, bits: int, n: int) -> np.ndarray:
    return unpack_codes(np.asarray(packed), bits, n).astype(np.int64)


def _unit_rows(rng, n: int, d: int, dtype=np.float32) -> np.ndarray:
    """Rotated-unit-vector-like data: ``N(0, 1/d)`` coordinates."""
    return (rng.standard_normal((n, d)) / np.sqrt(d)).astype(dtype)


def _polar_far(plan: PolarPlan, y) -> list:
    """Per level, ``(rows, D >> l)``: the angle (as the reference computes it, in the dtype it
    computes in) is far from the level's boundaries (cast to that dtype, as the reference does)."""
    y = np.asarray(y)
    _, angles = polar_transform(y, plan.levels)
    work = _work(y.dtype)
    return [
        ~_near(psi, cb.boundaries.astype(work))
        for psi, cb in zip(angles, plan.codebooks, strict=True)
    ]


def _assert_codes(got, want, bits: int, n: int, far, what: str) -> None:
    """Codes equal wherever ``far``; bytes equal on the rows where every code is far."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == np.uint8, (what, got.shape, want.shape)
    np.testing.assert_array_equal(
        _codes(got, bits, n)[far], _codes(want, bits, n)[far], err_msg=what
    )
    rows = far.all(axis=1)
    np.testing.assert_array_equal(got[rows], want[rows], err_msg=what)
    assert far.mean() > 0.75, (what, far.mean())  # the test is not vacuous


def _assert_polar_codes(got, want, plan: PolarPlan, far, what: str) -> None:
    """Angle codes ``(rows, plan.nbytes)``: level ``l`` (bytes ``plan.level_slice(l)``) equal
    code by code wherever its angle is far; whole rows byte for byte where every angle is."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape == (len(far[0]), plan.nbytes), (what, got.shape, want.shape)
    for level, (b, n, f) in enumerate(zip(plan.bits, plan.counts, far, strict=True), start=1):
        s = plan.level_slice(level)
        _assert_codes(got[:, s], want[:, s], b, n, f, f"{what} {level=}")
    rows = np.all([f.all(axis=1) for f in far], axis=0)
    np.testing.assert_array_equal(got[rows], want[rows], err_msg=what)


def _assert_values(got, want, what: str) -> None:
    """Rows within ``RTOL`` of the reference, relative to the reference row's norm."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape)
    scale = np.linalg.norm(want.astype(np.float64), axis=-1, keepdims=True) + 1e-30
    err = np.abs(got.astype(np.float64) - want) / scale
    assert err.max(initial=0.0) <= RTOL[want.dtype], (what, err.max())


def _assert_scores(got, want, q, rows, what: str) -> None:
    """Scores within ``RTOL * ||q|| * ||row||`` of the reference (Cauchy-Schwarz scale)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape)
    qn = np.linalg.norm(np.asarray(q, dtype=np.float64), axis=-1)[:, None]
    rn = np.linalg.norm(np.asarray(rows, dtype=np.float64), axis=-1)[None, :]
    err = np.abs(got.astype(np.float64) - want) / (qn * rn + 1e-30)
    assert err.max(initial=0.0) <= RTOL[want.dtype], (what, err.max())


def _assert_weighted(got, want, w, rows, what: str) -> None:
    """Weighted sums within ``RTOL * sum_r |w_r| ||row_r||`` of the reference (triangle inequality)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape)
    rn = np.linalg.norm(np.asarray(rows, dtype=np.float64), axis=-1)
    scale = np.abs(np.asarray(w, dtype=np.float64)) @ rn
    err = np.abs(got.astype(np.float64) - want) / (scale[..., None] + 1e-30)
    assert err.max(initial=0.0) <= RTOL[want.dtype], (what, err.max(initial=0.0))


# -- 1. packed bytes identical to the reference (operations) ---------------------------------------
@pytest.mark.parametrize("d", DIMS)
def test_op_bytes_identical(env, d):
    """All three encoders, every width 1..8, every dim: the reference's bytes, away from boundaries.

    Scalar codes: data nudged 3 margins past any boundary it is within a margin
    of (so the bytes must match exactly).  Signs: random, plus exact ``+0``
    and ``-0``, which are no rounding question (bit 1 by definition).  Polar
    codes: compared code by code wherever the angle (as the reference computes
    it) is away from the boundaries, byte by byte on the rows where all are.
    """
    rng = np.random.default_rng(d)
    for bits in range(1, 9):
        plan = _scalar_plan(d, bits)
        y = _nudge(_unit_rows(rng, 200, d), plan.boundaries)
        got = env.host(env.ops.scalar_encode(plan, env.put(y)))
        np.testing.assert_array_equal(got, ref.scalar_encode(plan, y), err_msg=f"{bits=}")

    p = rng.standard_normal((200, d)).astype(np.float32)
    p[0, :3] = [0.0, -0.0, 0.0]
    signs = SignPlan(d)
    got = env.host(env.ops.sign_encode(signs, env.put(p)))
    np.testing.assert_array_equal(got, ref.sign_encode(signs, p))
    assert got[0, 0] >> 5 == 0b111  # +0, -0, +0: three one bits

    for bits in POLAR_CONFIGS:
        y = _unit_rows(rng, 300, d)
        plan = _polar_plan(d, bits)
        codes, radii = env.ops.polar_encode(plan, env.put(y))
        want, want_r = ref.polar_encode(plan, y)
        _assert_polar_codes(env.host(codes), want, plan, _polar_far(plan, y), f"{bits}")
        assert env.host(radii).dtype == want_r.dtype
        np.testing.assert_allclose(env.host(radii), want_r, rtol=1e-6)


def test_op_decisions_on_boundaries(env):
    """Inputs exactly on a decision boundary are no rounding question: same codes as the reference.

    Values equal to a boundary (as the data's dtype holds it: the plan's
    thresholds cast to float32 or float64) go to the upper cell
    (``searchsorted(side="right")``), ``-inf`` to the first cell, ``+inf`` and
    NaN to the last; the sign bit of ``+0`` and ``-0`` is 1 and of NaN 0; a pair
    ``(1, -1e-30)`` has the level-1 angle ``-1e-30 + 2 pi``, which rounds to
    ``2 pi`` and is sent to 0 (the reference's guard); a NaN pair gives NaN
    angles at every level above it.
    """
    d = 32
    for dtype in (np.float32, np.float64):
        for bits in (2, 3, 8):
            plan = _scalar_plan(d, bits)
            bnd = plan.boundaries.astype(dtype)
            special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan], dtype=dtype)
            y = np.concatenate([bnd, special, np.nextafter(bnd, dtype(np.inf))])
            y = np.resize(y, (-(-y.size // d), d))
            got = env.host(env.ops.scalar_encode(plan, env.put(y)))
            want = ref.scalar_encode(plan, y)
            np.testing.assert_array_equal(got, want, err_msg=f"{bits=} {dtype}")
            on = _codes(want, bits, d).reshape(-1)[: bnd.size]
            np.testing.assert_array_equal(on, np.arange(1, 1 << bits))  # ties: the upper cell
    p = np.array([[0.0, -0.0, np.nan, 1e-45, -1e-45, np.inf, -np.inf, 0.0, 1.0]], dtype=np.float32)
    signs = SignPlan(9)
    want = ref.sign_encode(signs, p)
    np.testing.assert_array_equal(env.host(env.ops.sign_encode(signs, env.put(p))), want)
    np.testing.assert_array_equal(_codes(want, 1, 9), [[1, 1, 0, 1, 0, 1, 0, 1, 1]])
    plan = _polar_plan(16, (4, 3))
    y = np.ones((2, 16), dtype=np.float32)
    y[0, :2] = [1.0, -1e-30]
    y[1, 4:6] = [np.nan, 1.0]
    codes, _ = env.ops.polar_encode(plan, env.put(y))
    want, _ = ref.polar_encode(plan, y)
    assert want[0, 0] >> 4 == 0  # the guard: angle 0, code 0 (not the last cell)
    np.testing.assert_array_equal(env.host(codes), want)


def test_op_bytes_identical_float64(env):
    """The float64 kernels (libm ``atan2``/``hypot`` for polar) give the reference's bytes too."""
    rng = np.random.default_rng(64)
    d = 96
    plan = _scalar_plan(d, 3)
    y = _nudge(_unit_rows(rng, 200, d, np.float64), plan.boundaries)
    np.testing.assert_array_equal(
        env.host(env.ops.scalar_encode(plan, env.put(y))), ref.scalar_encode(plan, y)
    )
    signs = SignPlan(d)
    np.testing.assert_array_equal(
        env.host(env.ops.sign_encode(signs, env.put(y))), ref.sign_encode(signs, y)
    )
    plan = _polar_plan(d, (4, 2, 2, 2))
    codes, radii = env.ops.polar_encode(plan, env.put(y))
    want, want_r = ref.polar_encode(plan, y)
    _assert_polar_codes(env.host(codes), want, plan, _polar_far(plan, y), "float64")
    assert env.host(radii).dtype == np.float64
    np.testing.assert_allclose(env.host(radii), want_r, rtol=1e-14)


# -- 1. packed bytes identical to the reference (quantizers) ---------------------------------------
def _quantizers(d: int):
    """(id, factory(backend)) for every quantizer configuration compared with the reference."""
    out = [
        (f"mse{b}", lambda be, b=b: pq.TurboQuantMSE(d, b, seed=3, backend=be)) for b in range(1, 9)
    ]
    out += [
        (
            "mse4-hadamard",
            lambda be: pq.TurboQuantMSE(d, 4, seed=3, rotation="hadamard", backend=be),
        ),
        ("prod1", lambda be: pq.TurboQuantProd(d, 1, seed=3, backend=be)),
        ("prod4", lambda be: pq.TurboQuantProd(d, 4, seed=3, backend=be)),
        (
            "prod3-hadamard",
            lambda be: pq.TurboQuantProd(d, 3, seed=3, rotation="hadamard", backend=be),
        ),
        ("qjl", lambda be: pq.QJL(d, 2 * d, seed=3, backend=be)),
        ("polarqjl", lambda be: pq.PolarQuantQJL(d, 4, (4, 2, 2, 2), seed=3, backend=be)),
    ]
    for bits in POLAR_CONFIGS:
        out.append(
            (
                f"polar{len(bits)}",
                lambda be, b=bits: pq.PolarQuant(d, len(b), b, seed=3, backend=be),
            )
        )
    out.append(
        (
            "polar-hadamard",
            lambda be: pq.PolarQuant(d, 4, (4, 2, 2, 2), seed=3, rotation="hadamard", backend=be),
        )
    )
    return out


def _far_masks(q, x) -> dict:
    """For each field of ``q.encode(x)``: where its content is decided away from every boundary.

    Packed scalar and sign fields map to ``(bits, n, far)`` with ``far (rows, n)``
    per code; ``angles`` to ``(plan, far per level)``; float fields to
    ``far (rows,)`` per row.  The decisions, redone with the reference
    operations on the rows the quantizer hands its backend
    (``q.prepare_vectors``) and its plan: rotated coordinates against the scalar
    codebook (TurboQuant), sketch projections against 0 (QJL and the residual
    sketches: a sign bit also depends on every first-stage code of its row,
    through the residual), polar angles against each level's boundaries.  Norms
    and radii depend on no code.
    """
    from polarquant.quantizer import safe_norms

    out = {}
    rows = x.shape[0]
    everywhere = np.ones(rows, dtype=bool)
    plan = q.plan
    first = plan.first if isinstance(plan, ResidualPlan) else plan
    residual, row_far = None, everywhere
    if isinstance(q, (pq.TurboQuantMSE, pq.TurboQuantProd)):
        out["norms"] = everywhere
        _, safe = safe_norms(x)
        u = x / safe[:, None]
        if first is not None:
            y = q.prepare_vectors(x)  # Q x / ||x||: the scalar stage's input
            far = ~_near(y, first.boundaries, _rms(y))
            out["codes"] = (first.bits, first.n, far)
            row_far = far.all(axis=1)
            values = ref.scalar_values(first, ref.scalar_encode(first, y), u.dtype)
            residual = u - q.rotation.inverse(values)
        else:
            residual = u
    if isinstance(q, pq.PolarQuant):
        y = q.prepare_vectors(x)  # Q x
        fars = _polar_far(first, y)
        out["angles"] = (first, fars)
        out["radii"] = everywhere
        row_far = np.all([f.all(axis=1) for f in fars], axis=0)
        with pq.use_backend("numpy"):
            fields = pq.PolarQuant._encode_rows(q, x)
            residual = x - pq.PolarQuant._decode_rows(q, fields, x.dtype)
    if isinstance(q, pq.QJL):
        out["norms"] = everywhere
        residual = x
    if hasattr(q, "sketch"):
        p = q.sketch.project(residual)
        out["signs"] = (1, p.shape[1], ~_near(p, [0.0], _rms(p)) & row_far[:, None])
        if "residual_norms" in q.field_layout():
            out["residual_norms"] = row_far
    return out


@pytest.mark.parametrize("d", DIMS)
def test_quantizer_codes_identical(env, d):
    """Every quantizer (TurboQuantMSE 1..8 bits, TurboQuantProd, QJL, PolarQuant, PolarQuantQJL,
    Haar and Hadamard rotations) stores the reference's fields: every code decided away from a
    boundary, every row whose codes all are, byte for byte; norms and radii to float16 precision."""
    rng = np.random.default_rng(1000 + d)
    x = rng.standard_normal((120, d)).astype(np.float32)
    for name, make in _quantizers(d):
        want = make("numpy").encode(x)
        got = make(env.name).encode(env.put(x)).to_numpy()
        masks = _far_masks(make("numpy"), x)
        assert set(got.fields) == set(want.fields) == set(masks), name
        for k, w in want.fields.items():
            g = got.fields[k]
            assert g.dtype == w.dtype and g.shape == w.shape, (name, k)
            if k == "angles":
                plan, fars = masks[k]
                _assert_polar_codes(g, w, plan, fars, f"{name} {k}")
            elif w.dtype == np.uint8:
                bits, n, far = masks[k]
                _assert_codes(g, w, bits, n, far, f"{name} {k}")
            else:  # float16 storage of the same float32 numbers
                np.testing.assert_allclose(
                    g[masks[k]], w[masks[k]], rtol=2**-10, err_msg=f"{name} {k}"
                )


def test_quantizer_plan_and_prepared_rows_reproduce_encode_and_score(env):
    """What the quantizers document (``prepare_vectors``, ``prepare_queries``): the backend's
    encode operation on ``(quantizer.plan, quantizer.prepare_vectors(x))`` is exactly the field
    ``encode`` stores (the same kernel on the same rows), and its score operation on the prepared
    queries, times the stored norms (and ``sqrt(pi/2)/m`` for QJL), is ``score`` within RTOL of
    ``||q|| ||x_hat||`` (the same products, possibly chunked otherwise).  For TurboQuantProd,
    the first stage's operation on the prepared rows gives its stored field."""
    rng = np.random.default_rng(17)
    d = 64
    x = rng.standard_normal((40, d)).astype(np.float32)
    q = rng.standard_normal((3, d)).astype(np.float32)
    ops, put, host = env.ops, env.put, env.host
    for quant in (
        pq.TurboQuantMSE(d, 3, seed=1, backend=env.name, norm_dtype="float32"),
        pq.QJL(d, 96, seed=1, backend=env.name, norm_dtype="float32"),
        pq.PolarQuant(d, 4, (4, 2, 2, 2), seed=1, backend=env.name, radius_dtype="float32"),
    ):
        name = type(quant).__name__
        codes = quant.encode(put(x))
        prepared = quant.prepare_vectors(put(x))
        qr = quant.prepare_queries(put(q))
        f = {k: host(v) for k, v in codes.to_numpy().fields.items()}
        plan = quant.plan
        if isinstance(quant, pq.TurboQuantMSE):
            stored = f["codes"]
            again = host(ops.scalar_encode(plan, prepared))
            raw = host(ops.scalar_score(plan, qr, codes.fields["codes"])) * f["norms"][None, :]
        elif isinstance(quant, pq.QJL):
            stored = f["signs"]
            again = host(ops.sign_encode(plan, prepared))
            raw = host(ops.sign_score(plan, qr, codes.fields["signs"]))
            raw = raw * (QJL_SCALE / plan.m) * f["norms"][None, :]
        else:
            stored = f["angles"]
            again, radii = ops.polar_encode(plan, prepared)
            again = host(again)
            np.testing.assert_array_equal(host(radii), f["radii"])
            raw = host(ops.polar_score(plan, qr, codes.fields["angles"], codes.fields["radii"]))
        np.testing.assert_array_equal(again, stored, err_msg=name)
        want = host(quant.score(put(q), codes))
        _assert_scores(raw.astype(want.dtype), want, q, host(quant.decode(codes)), name)
    # two stages: the first stage's input (rotated unit vectors; at 1 bit their sketch)
    for bits in (3, 1):
        prod = pq.TurboQuantProd(d, bits, seed=1, backend=env.name)
        codes = prod.encode(put(x)).to_numpy().fields
        prepared = prod.prepare_vectors(put(x))
        if bits > 1:
            again = host(ops.scalar_encode(prod.plan.first, prepared))
            np.testing.assert_array_equal(again, codes["codes"], err_msg=f"prod {bits=}")
        else:
            again = host(ops.sign_encode(prod.plan.residual, prepared))
            np.testing.assert_array_equal(again, codes["signs"], err_msg=f"prod {bits=}")


# -- 2. disagreements are rare and between neighbours ------------------------------------------
def test_codes_rarely_differ(env):
    """Over plain random float32 input (no nudging), at least 1e6 codes per encoder: codes that
    differ from the reference are rarer than 1 in 100,000 and differ by one cell (circularly for
    the level-1 angle, whose cells wrap around at 2 pi).

    Expected rates: 0 for scalar and sign codes (exact comparisons of the same
    floats on the host); for polar codes the angle of a pair may differ by a few
    ulp between ``atan2`` implementations, so a code flips only when an angle is
    within ~1e-6 rad of a boundary: ~1e-7 of the codes for (4, 2, 2, 2)
    (measured on 9.6e6 codes), two orders of magnitude below the threshold.
    """
    rng = np.random.default_rng(7)
    d = 128
    plan = _scalar_plan(d, 4)
    y = _unit_rows(rng, 8192, d)  # 1,048,576 codes
    got = _codes(env.host(env.ops.scalar_encode(plan, env.put(y))), 4, d)
    want = _codes(ref.scalar_encode(plan, y), 4, d)
    diff = np.abs(got - want)
    assert diff.size >= 1_000_000 and np.count_nonzero(diff) <= 10 and diff.max() <= 1

    p = rng.standard_normal((4096, 256)).astype(np.float32)  # 1,048,576 bits
    signs = SignPlan(256)
    got = _codes(env.host(env.ops.sign_encode(signs, env.put(p))), 1, 256)
    assert np.count_nonzero(got != _codes(ref.sign_encode(signs, p), 1, 256)) <= 10

    plan = _polar_plan(d, (4, 2, 2, 2))
    y = _unit_rows(rng, 8800, d)  # 120 angles per row: 1,056,000 codes
    codes, _ = env.ops.polar_encode(plan, env.put(y))
    codes = env.host(codes)
    want, _ = ref.polar_encode(plan, y)
    total = differ = 0
    for level, (b, n) in enumerate(zip(plan.bits, plan.counts, strict=True), start=1):
        s = plan.level_slice(level)
        diff = np.abs(_codes(codes[:, s], b, n) - _codes(want[:, s], b, n))
        if level == 1:
            diff = np.minimum(diff, (1 << b) - diff)
        total += diff.size
        differ += np.count_nonzero(diff)
        assert diff.max() <= 1, (level, diff.max())
    assert total >= 1_000_000 and differ <= total // 100_000, (differ, total)


# -- 3. values and scores of the same codes -------------------------------------------------
def test_op_values_and_scores(env):
    """Decoding (values) and scoring (one and several queries) the reference's codes, every
    width 1..8, sign bits, PolarQuant configurations: within RTOL of the reference."""
    rng = np.random.default_rng(11)
    for d in (77, 128, 256):  # 77: the last byte is part padding for 1, 2, 4 bits
        y = _unit_rows(rng, 300, d)
        q1, q3 = (
            rng.standard_normal((1, d)).astype(np.float32),
            rng.standard_normal((3, d)).astype(np.float32),
        )
        for bits in range(1, 9):
            plan = _scalar_plan(d, bits)
            packed = ref.scalar_encode(plan, y)
            want = ref.scalar_values(plan, packed, np.float32)
            got = env.host(env.ops.scalar_values(plan, env.put(packed), np.float32))
            _assert_values(got, want, f"scalar_values {d=} {bits=}")
            for q in (q1, q3):
                got = env.host(env.ops.scalar_score(plan, env.put(q), env.put(packed)))
                _assert_scores(got, ref.scalar_score(plan, q, packed), q, want, f"{bits=}")

        signs = SignPlan(d)
        packed = ref.sign_encode(signs, y)
        want = ref.sign_values(signs, packed, np.float32)
        got = env.host(env.ops.sign_values(signs, env.put(packed), np.float32))
        _assert_values(got, want, "sign_values")
        for s in (q1, q3):
            got = env.host(env.ops.sign_score(signs, env.put(s), env.put(packed)))
            _assert_scores(got, ref.sign_score(signs, s, packed), s, want, "sign_score")

        for bits in POLAR_CONFIGS if d % 8 == 0 else []:
            plan = _polar_plan(d, bits)
            codes, radii = ref.polar_encode(plan, y)
            want = ref.polar_values(plan, codes, radii, np.float32)
            dev = (env.put(codes), env.put(radii))
            got = env.host(env.ops.polar_values(plan, *dev, np.float32))
            _assert_values(got, want, f"polar_values {bits}")
            for q in (q1, q3):
                got = env.host(env.ops.polar_score(plan, env.put(q), *dev))
                want_s = ref.polar_score(plan, q, codes, radii)
                _assert_scores(got, want_s, q, want, f"polar_score {bits}")


def test_op_values_and_scores_float64(env):
    """The float64 kernels: values and scores within 1e-12 of the reference.  PolarQuant with
    three levels, (4, 2, 5): the number of levels ``test_tiny_ops`` compiles in float64 too (one
    Numba kernel per dtype and number of levels; float32 covers every number of levels).  Codes
    decoded to float32 from float64 queries' data, and float16 radii, are what the quantizers
    hand over too: values in the asked dtype, scores in the queries'."""
    rng = np.random.default_rng(12)
    d = 96
    y = _unit_rows(rng, 100, d, np.float64)
    q = rng.standard_normal((2, d))
    for bits in (3, 4):
        plan = _scalar_plan(d, bits)
        packed = ref.scalar_encode(plan, y)
        for dtype in (np.float32, np.float64):  # float64 last: the scores' scale
            want = ref.scalar_values(plan, packed, dtype)
            got = env.host(env.ops.scalar_values(plan, env.put(packed), dtype))
            _assert_values(got, want, f"values {dtype}")
        got = env.host(env.ops.scalar_score(plan, env.put(q), env.put(packed)))
        _assert_scores(got, ref.scalar_score(plan, q, packed), q, want, "score")
    signs = SignPlan(d)
    packed = ref.sign_encode(signs, y)
    want = ref.sign_values(signs, packed, np.float64)
    _assert_values(
        env.host(env.ops.sign_values(signs, env.put(packed), np.float64)), want, "sign_values"
    )
    _assert_scores(
        env.host(env.ops.sign_score(signs, env.put(q), env.put(packed))),
        ref.sign_score(signs, q, packed),
        q,
        want,
        "sign_score",
    )
    plan = _polar_plan(d, (4, 2, 5))
    codes, radii = ref.polar_encode(plan, y)
    for r in (radii, radii.astype(np.float16)):
        dev = (env.put(codes), env.put(r))
        want = ref.polar_values(plan, codes, r, np.float64)
        _assert_values(env.host(env.ops.polar_values(plan, *dev, np.float64)), want, "polar_values")
        got = env.host(env.ops.polar_score(plan, env.put(q), *dev))
        _assert_scores(got, ref.polar_score(plan, q, codes, r), q, want, f"polar_score {r.dtype}")


def _one_hot(rows: int, picks) -> np.ndarray:
    """Weights ``(len(picks), rows)`` selecting one row each: ``w @ values`` is those rows."""
    w = np.zeros((len(picks), rows))
    w[np.arange(len(picks)), picks] = 1.0
    return w


def _check_weighted_sums(env, rng, d: int, rows_list, bits_list, polar_configs, dtype) -> None:
    """The body of the weighted-sum tests: both operations, every ``rows`` and ``bits``, one and
    three weight rows (and 1-D weights), against the reference; one-hot weights against the
    backend's own decode, exactly."""
    for rows in rows_list:
        y = _unit_rows(rng, rows, d, dtype)
        shapes = [(rows,), (1, rows), (3, rows)]
        weights = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
        picks = sorted({0, rows // 2, rows - 1}) if rows else []
        for bits in bits_list:
            plan = _scalar_plan(d, bits)
            packed = ref.scalar_encode(plan, y)
            vals = ref.scalar_values(plan, packed, dtype)
            dev = env.put(packed)
            for w in weights:
                got = env.host(env.ops.scalar_weighted_sum(plan, env.put(w), dev))
                want = ref.scalar_weighted_sum(plan, w, packed)
                _assert_weighted(got, want, w, vals, f"scalar {d=} {rows=} {bits=} {w.shape}")
            if picks:
                hot = env.put(_one_hot(rows, picks).astype(dtype))
                got = env.host(env.ops.scalar_weighted_sum(plan, hot, dev))
                own = env.host(env.ops.scalar_values(plan, dev, dtype))
                np.testing.assert_array_equal(got, own[picks], err_msg=f"one-hot {d=} {bits=}")
        for bits in polar_configs:
            plan = _polar_plan(d, bits)
            codes, radii = ref.polar_encode(plan, y)
            vals = ref.polar_values(plan, codes, radii, dtype)
            dev = (env.put(codes), env.put(radii))
            for w in weights:
                got = env.host(env.ops.polar_weighted_sum(plan, env.put(w), *dev))
                want = ref.polar_weighted_sum(plan, w, codes, radii)
                _assert_weighted(got, want, w, vals, f"polar {d=} {rows=} {bits} {w.shape}")
            if picks:
                hot = env.put(_one_hot(rows, picks).astype(dtype))
                got = env.host(env.ops.polar_weighted_sum(plan, hot, *dev))
                own = env.host(env.ops.polar_values(plan, *dev, dtype))
                np.testing.assert_array_equal(got, own[picks], err_msg=f"one-hot polar {d=} {bits}")


#: PolarQuant configurations of the float64 weighted sums: levels 1 and 3, the tuple lengths the
#: float64 ``test_tiny_*`` tests compile anyway (a Numba kernel is compiled once per dtype and
#: number of levels; the code run is the same for every number of levels, which float32 covers).
FLOAT64_POLAR_CONFIGS = [(3,), (8, 1, 6)]


@pytest.mark.parametrize(
    "d, dtype",
    [*((d, np.float32) for d in (*DIMS, 77)), (96, np.float64), (77, np.float64)],
    ids=[*(f"{d}-float32" for d in (*DIMS, 77)), "96-float64", "77-float64"],
)
def test_op_weighted_sums(env, d, dtype):
    """``w @ values`` from the codes (``scalar_weighted_sum``, ``polar_weighted_sum``): every width
    1..8, every PolarQuant configuration, 0, 1, 7 and 1001 rows (several rows per parallel chunk,
    chunks not a multiple of four rows), one and three weight rows: within RTOL of the reference.
    d = 77 (scalar codes only; PolarQuant needs a multiple of 2**levels): the last byte of a row
    is part padding for 1, 2, 4 bits and 3, 5, 6, 7-bit rows end mid-group.  float64 (whose
    1, 2, 4, 8-bit rows copy 8, 4, 2, 1 words per byte, where float32 copies 4, 2, 1 and looks
    8-bit codes up one by one) runs every width at one dimension of each kind and the
    ``FLOAT64_POLAR_CONFIGS``."""
    rng = np.random.default_rng(300 + d)
    if d % 8:
        configs = []
    else:
        configs = POLAR_CONFIGS if dtype == np.float32 else FLOAT64_POLAR_CONFIGS
    _check_weighted_sums(env, rng, d, (0, 1, 7, 1001), range(1, 9), configs, dtype)


def test_op_stacked_streams_equal_one_call_per_stream(env):
    """Codes stacked per stream, ``(S, rows, nbytes)`` with ``(S, k, n)`` queries or weights (the
    KV cache's heads): the same numbers as one call per stream, on every backend; a stack
    whose stream counts differ, or an empty one, is a ValueError naming the shapes."""
    rng = np.random.default_rng(31)
    d, streams, rows = 64, 3, 257
    for bits in (2, 3, 4):
        plan = _scalar_plan(d, bits)
        y = rng.standard_normal((streams, rows, d)).astype(np.float32)
        packed = env.put(ref.scalar_encode(plan, y))
        q = env.put(rng.standard_normal((streams, 5, d)).astype(np.float32))
        w = env.put(rng.random((streams, 2, rows)).astype(np.float32))
        got_s = env.host(env.ops.scalar_score(plan, q, packed))
        got_w = env.host(env.ops.scalar_weighted_sum(plan, w, packed))
        assert got_s.shape == (streams, 5, rows) and got_w.shape == (streams, 2, d)
        for i in range(streams):
            np.testing.assert_array_equal(
                got_s[i], env.host(env.ops.scalar_score(plan, q[i], packed[i]))
            )
            np.testing.assert_array_equal(
                got_w[i], env.host(env.ops.scalar_weighted_sum(plan, w[i], packed[i]))
            )
    with pytest.raises(ValueError, match=r"same number of streams.*\(2, 5, 64\)"):
        env.ops.scalar_score(plan, q[:2], packed)
    with pytest.raises(ValueError, match="at least one"):
        env.ops.scalar_weighted_sum(plan, w[:0], packed[:0])


# -- 4. codes written by any backend decode on any other --------------------------------------
@pytest.mark.parametrize(("writer", "reader"), PAIRS)
def test_cross_backend_decode_and_score(writer, reader):
    """Encode with one backend, decode and score with another (every ordered pair): the reader
    agrees with the writer decoding its own codes, within RTOL."""
    a, b = _env(writer), _env(reader)
    rng = np.random.default_rng(5)
    d = 96
    x = rng.standard_normal((150, d)).astype(np.float32)
    q = rng.standard_normal((2, d)).astype(np.float32)
    methods = {"mse4", "mse4-hadamard", "prod1", "prod4", "qjl", "polarqjl", "polar4", "polar2"}
    for name, make in (m for m in _quantizers(d) if m[0] in methods):
        codes = make(writer).encode(a.put(x))
        want = a.host(make(writer).decode(codes))
        want_s = a.host(make(writer).score(a.put(q), codes))
        moved = b.put_codes(codes)
        got = b.host(make(reader).decode(moved))
        _assert_values(got, want, f"{name} decode")
        got_s = b.host(make(reader).score(b.put(q), moved))
        scale = np.linalg.norm(q, axis=1)[:, None] * np.linalg.norm(want, axis=1)[None, :]
        assert np.max(np.abs(got_s - want_s) / scale) <= RTOL[np.dtype(np.float32)], name


# -- 5. the same exception for the same bad input ----------------------------------------------
def test_quantizers_refuse_bad_input_alike(env):
    """The quantizers on this backend refuse what they refuse on the reference, with the same
    exception type and message: a wrong width, NaN, integer input to ``encode``, a wrong query
    width to ``score``.  (The backend operations' own battery, one identical message per bad
    input on every backend, is ``tests/test_backend_errors.py``.)"""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 32)).astype(np.float32)
    nan = x.copy()
    nan[1, 2] = np.nan
    for make in (
        lambda be: pq.TurboQuantMSE(32, 3, backend=be),
        lambda be: pq.TurboQuantProd(32, 3, backend=be),
        lambda be: pq.QJL(32, 64, backend=be),
        lambda be: pq.PolarQuant(32, backend=be),
        lambda be: pq.PolarQuantQJL(32, backend=be),
    ):
        for bad, kind in (
            (x[:, :31], ValueError),
            (nan, ValueError),
            (x.astype(np.int32), TypeError),
        ):
            with pytest.raises(kind) as want:
                make("numpy").encode(bad)
            with pytest.raises(kind) as got:
                make(env.name).encode(env.put(bad))
            assert str(got.value) == str(want.value)
        codes = make(env.name).encode(env.put(x))
        with pytest.raises(ValueError) as got:
            make(env.name).score(env.put(x[:, :31]), codes)
        with pytest.raises(ValueError) as want:
            make("numpy").score(x[:, :31], make("numpy").encode(x))
        assert str(got.value) == str(want.value)


# -- 6. every backend against the slow oracle (tests/naive.py) ---------------------------------
def _packed_rows(rows) -> np.ndarray:
    """The oracle's byte strings, one per row, as a ``uint8 (rows, nbytes)`` array."""
    return np.array([np.frombuffer(r, dtype=np.uint8) for r in rows], dtype=np.uint8)


def _assert_oracle(got, want, scale, dtype, what: str) -> None:
    """``|got - want| <= RTOL[dtype] * scale`` elementwise; ``got`` of ``dtype``, ``want``'s shape.

    The oracle computes in Python floats (float64) from the same inputs, so a
    float32 backend differs from it by its own float32 rounding only: the
    centroids' cast (``6e-8`` relative), a few ulp per ``cos``/``sin``/``hypot``
    level, ``sqrt(n) 6e-8`` in sums: below ``1e-6`` of the scale, under RTOL.
    """
    got = np.asarray(got)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape and got.dtype == dtype, (what, got.shape, want.shape, got.dtype)
    err = np.abs(got.astype(np.float64) - want) / (np.asarray(scale) + 1e-30)
    assert err.max(initial=0.0) <= RTOL[np.dtype(dtype)], (what, err.max(initial=0.0))


def _check_decoded_against_oracle(env, kind: str, plan, codes, more, rows, q, w, dtype) -> None:
    """``{kind}_values``, ``{kind}_score`` and (but for signs) ``{kind}_weighted_sum`` of the
    oracle's codes against the oracle's decoded ``rows`` and its loops (``naive.dot``,
    ``naive.weighted_sum``): values relative to each row's norm, scores to ``||q|| ||row||``,
    weighted sums to ``sum_r |w_r| ||row_r||`` (the scales of ``_assert_values`` and co.)."""
    ops, put, host = env.ops, env.put, env.host
    dev = (put(codes), *(put(m) for m in more))
    n = len(rows[0])
    rows = np.asarray(rows, dtype=np.float64)
    rn = np.linalg.norm(rows, axis=-1)
    got = host(getattr(ops, f"{kind}_values")(plan, *dev, dtype))
    _assert_oracle(got, rows, rn[:, None], dtype, f"{kind}_values")
    want = [[naive.dot(qi, r) for r in rows] for qi in q]
    qn = np.linalg.norm(q.astype(np.float64), axis=-1)
    got = host(getattr(ops, f"{kind}_score")(plan, put(q), *dev))
    _assert_oracle(got, want, qn[:, None] * rn[None, :], dtype, f"{kind}_score")
    if kind != "sign":
        want = [naive.weighted_sum(wi, rows, n) for wi in w]
        got = host(getattr(ops, f"{kind}_weighted_sum")(plan, put(w), *dev))
        scale = np.abs(w.astype(np.float64)) @ rn
        _assert_oracle(got, want, scale[:, None], dtype, f"{kind}_weighted_sum")


def test_ops_match_the_oracle(env):
    """Every operation of this backend against ``tests/naive.py`` directly (the papers' formulas
    as loops over rows and coordinates), float32 and float64, dims 16 and 24:

    * scalar codes (TurboQuant Alg. 1, line 3: nearest centroid; widths 1, 2, 3,
      5, 8) of rows nudged 3 margins off every boundary, and sign bits (QJL Def.
      2.1, ``+0``/``-0`` included, ``m`` not a multiple of 8): the oracle's
      bytes exactly, packed MSB first by string manipulation;
    * polar codes (PolarQuant Def. 1 and Alg. 1, levels 1 to 3): the oracle's
      bytes level by level wherever its angle is ``MARGIN`` rad off every
      boundary (a float32 ``atan2`` is ~1e-7 rad off the oracle's float64 one),
      and the final radii to float rounding (``hypot`` per level: ``< 1e-6``
      relative in float32 over 3 levels, ``1e-14`` in float64);
    * decoding, scores and weighted sums of the oracle's own codes (so a
      backend also reads the oracle's layout, level offsets included) within
      RTOL of the oracle's loops, at the scales of the reference comparisons.

    Small enough to run with ``NUMBA_DISABLE_JIT=1`` (``TINY``)."""
    rng = np.random.default_rng(2025)
    for dtype in (np.float32, np.float64):
        dt = np.dtype(dtype)
        for d in (16, 24):
            y = _unit_rows(rng, 5, d, dtype)
            q = rng.standard_normal((2, d)).astype(dtype)
            w = rng.standard_normal((2, 5)).astype(dtype)
            for bits in (1, 2, 3, 5, 8):
                plan = _scalar_plan(d, bits)
                yb = _nudge(y, plan.boundaries)
                c = plan.centroids
                want = _packed_rows([naive.scalar_encode(row, c, bits) for row in yb])
                got = env.host(env.ops.scalar_encode(plan, env.put(yb)))
                np.testing.assert_array_equal(got, want, err_msg=f"scalar {d=} {bits=} {dt}")
                rows = [naive.scalar_decode(bytes(r), c, bits, d) for r in want]
                _check_decoded_against_oracle(env, "scalar", plan, want, (), rows, q, w, dt)

            m = d + 3
            p = rng.standard_normal((5, m)).astype(dtype)
            p[0, :2] = [0.0, -0.0]
            signs = SignPlan(m)
            want = _packed_rows([naive.sign_encode(row) for row in p])
            got = env.host(env.ops.sign_encode(signs, env.put(p)))
            np.testing.assert_array_equal(got, want, err_msg=f"signs {m=} {dt}")
            rows = [naive.sign_decode(bytes(r), m) for r in want]
            s = rng.standard_normal((2, m)).astype(dtype)
            _check_decoded_against_oracle(env, "sign", signs, want, (), rows, s, None, dt)

            for bits in ((3,), (4, 2), (3, 2, 1)):
                plan = _polar_plan(d, bits)
                enc = [naive.polar_encode(row, plan.codebooks) for row in y]
                want, want_r = _packed_rows([e[0] for e in enc]), np.array([e[1] for e in enc])
                angles = [naive.polar_transform(row, plan.levels)[1] for row in y]
                far = [
                    ~_near(np.array([a[lv] for a in angles]), cb.boundaries)
                    for lv, cb in enumerate(plan.codebooks)
                ]
                got, got_r = env.ops.polar_encode(plan, env.put(y))
                _assert_polar_codes(env.host(got), want, plan, far, f"polar {d=} {bits} {dt}")
                got_r = env.host(got_r)
                assert got_r.dtype == dt
                np.testing.assert_allclose(
                    got_r, want_r, rtol=1e-6 if dtype == np.float32 else 1e-14
                )
                rows = [
                    naive.polar_decode(bytes(r), rr, plan.codebooks, d)
                    for r, rr in zip(want, want_r, strict=True)
                ]
                more = (want_r.astype(dtype),)
                _check_decoded_against_oracle(env, "polar", plan, want, more, rows, q, w, dt)


def test_quantizers_match_the_oracle(env):
    """The quantizers on this backend against the per-vector oracles, end to end (float64 data,
    float32 norms and radii, whose storage moves a reconstruction by ``6e-8`` of its norm: 1e-6
    of ``||x||`` is the threshold):

    * TurboQuantMSE (Alg. 1): every code the oracle decides ``MARGIN`` off a
      boundary (``idx = argmin |Q u - c|``), and the reconstruction
      ``||x|| Q^T c[idx]`` of every row whose codes all are;
    * QJL (the estimator ``sqrt(pi/2)/m ||k|| sum_i <S_i, q> sign(<S_i, k>)``
      summed one sketch row at a time), for keys none of whose projections is
      near 0, within 1e-6 of ``sqrt(pi/2)/m ||k|| sum_i |<S_i, q>|`` (the
      triangle-inequality scale of the sum);
    * PolarQuant (Alg. 1 on ``Q x``): angle codes where far, radii, and the
      reconstruction ``Q^T`` of the oracle's inverse transform."""
    rng = np.random.default_rng(606)
    d, n = 32, 6
    x = rng.standard_normal((n, d)) * 2.5
    xn = np.linalg.norm(x, axis=1)
    put, host = env.put, env.host
    for bits in (1, 3):
        tq = pq.TurboQuantMSE(d, bits, seed=4, norm_dtype="float32", backend=env.name)
        codes = tq.encode(put(x))
        idx = _codes(host(codes.fields["codes"]), bits, d)
        x_hat = host(tq.decode(codes))
        matrix = tq.rotation.matrix
        all_far = 0
        for i in range(n):
            ref_idx, ref_hat = naive.turboquant_mse_decode(x[i], matrix, tq.codebook.centroids)
            y = matrix @ (x[i] / xn[i])
            far = ~_near(y, tq.codebook.boundaries, _rms(y))
            np.testing.assert_array_equal(idx[i][far], np.array(ref_idx)[far], err_msg=f"{bits=}")
            if far.all():
                all_far += 1
                np.testing.assert_allclose(x_hat[i], ref_hat, rtol=0, atol=1e-6 * xn[i])
        assert all_far >= n - 1, all_far  # not vacuous

    m = 48
    qjl = pq.QJL(d, m, seed=9, norm_dtype="float32", backend=env.name)
    qs = rng.standard_normal((3, d))
    scores = host(qjl.score(put(qs), qjl.encode(put(x))))
    sketch = qjl.sketch.matrix
    checked = 0
    for j in range(n):
        p = sketch @ x[j]
        if _near(p, [0.0], _rms(p)).any():
            continue
        checked += 1
        for i in range(3):
            want = naive.qjl_estimate(qs[i], x[j], sketch)
            scale = QJL_SCALE / m * xn[j] * np.sum(np.abs(sketch @ qs[i]))
            assert abs(scores[i, j] - want) <= 1e-6 * scale, (i, j, scores[i, j], want)
    assert checked >= n - 1, checked

    polar = pq.PolarQuant(d, 3, (3, 2, 2), seed=8, radius_dtype="float32", backend=env.name)
    codes = polar.encode(put(x))
    f = codes.to_numpy().fields
    x_hat = host(polar.decode(codes))
    matrix, plan = polar.rotation.matrix, polar.plan
    ys = x @ matrix.T  # the rows Q x_i, as the oracle takes them
    enc = [naive.polar_encode(y, polar.codebooks) for y in ys]
    angles = [naive.polar_transform(y, plan.levels)[1] for y in ys]
    far = [
        ~_near(np.array([a[lv] for a in angles]), cb.boundaries)
        for lv, cb in enumerate(plan.codebooks)
    ]
    _assert_polar_codes(f["angles"], _packed_rows([e[0] for e in enc]), plan, far, "PolarQuant")
    np.testing.assert_allclose(f["radii"], np.array([e[1] for e in enc]), rtol=1e-6)
    row_far = np.all([fl.all(axis=1) for fl in far], axis=0)
    assert row_far.sum() >= n - 2, row_far  # not vacuous
    for i in np.flatnonzero(row_far):
        data, radii = enc[i]
        want = matrix.T @ np.array(naive.polar_decode(data, radii, polar.codebooks, d))
        np.testing.assert_allclose(x_hat[i], want, rtol=0, atol=1e-6 * xn[i])


# -- 7. shapes: batches, one row, nothing ----------------------------------------------------------
def _parts(out) -> tuple:
    """An encode's output as a tuple: ``(codes,)`` or ``(codes, radii)``."""
    return out if isinstance(out, tuple) else (out,)


def _same_kind(got, want, what: str) -> np.ndarray:
    got = np.asarray(got)
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape)
    return got


def test_batch_shapes_and_empty_inputs(env):
    """Leading dimensions are batch dimensions, as on the reference: ``(..., n)`` rows in,
    ``(..., nbytes)`` codes out (and ``(..., D / 2**L)`` radii); a single 1-D row is one row;
    zero rows, zero queries, zero weight rows and zero codes per row (``n = 0``) are valid, and
    a weighted sum over zero rows is exactly zero.  Shapes and dtypes are the reference's;
    encodes and decodes work row by row, so a batch gives exactly the bytes and values of its
    rows flattened to ``(rows, n)`` (the same computation per row); scores and weighted sums of
    batched queries or weights are within RTOL of the flattened ones (a kernel may sum in
    another order for another number of rows)."""
    rng = np.random.default_rng(4)
    d = 24
    ops, put, host = env.ops, env.put, env.host
    x = _unit_rows(rng, 6, d).reshape(2, 3, d)
    q = rng.standard_normal((2, 2, d)).astype(np.float32)
    w = rng.standard_normal((2, 2, 6)).astype(np.float32)
    f32 = np.dtype(np.float32)
    for kind, plan in (
        ("scalar", _scalar_plan(d, 3)),
        ("sign", SignPlan(d)),
        ("polar", _polar_plan(d, (4, 2, 3))),
    ):
        enc, vals = getattr(ops, f"{kind}_encode"), getattr(ops, f"{kind}_values")
        score = getattr(ops, f"{kind}_score")
        r_enc, r_vals = getattr(ref, f"{kind}_encode"), getattr(ref, f"{kind}_values")
        r_score = getattr(ref, f"{kind}_score")
        flat = [host(a) for a in _parts(enc(plan, put(x.reshape(6, d))))]
        flat_vals = host(vals(plan, *(put(a) for a in flat), np.float32))
        for shape in ((2, 3, d), (d,), (0, d), (2, 0, d)):
            xs = x.reshape(6, d)[: math.prod(shape[:-1])].reshape(shape)
            got = _parts(enc(plan, put(xs)))
            for g, want, fl in zip(got, _parts(r_enc(plan, xs)), flat, strict=True):
                g = _same_kind(host(g), want, f"{kind}_encode {shape}")
                np.testing.assert_array_equal(
                    g.reshape(-1, fl.shape[-1]), fl[: len(xs.reshape(-1, d))]
                )
            decoded = _same_kind(
                host(vals(plan, *got, np.float32)),
                r_vals(plan, *_parts(r_enc(plan, xs)), f32),
                kind,
            )
            np.testing.assert_array_equal(decoded.reshape(-1, d), flat_vals[: decoded.size // d])
        dev = tuple(put(a) for a in flat)
        rows = flat_vals
        want = host(score(plan, put(q.reshape(4, d)), *dev)).reshape(2, 2, 6)
        got = _same_kind(host(score(plan, put(q), *dev)), r_score(plan, q, *flat), f"{kind}_score")
        _assert_scores(got.reshape(4, 6), want.reshape(4, 6), q.reshape(4, d), rows, kind)
        one = tuple(put(a[1]) for a in flat)  # one 1-D row (and its 1-D radii)
        got = _same_kind(
            host(score(plan, put(q), *one)), r_score(plan, q, *(a[1] for a in flat)), kind
        )
        _assert_scores(
            got.reshape(4, 1), want[..., 1:2].reshape(4, 1), q.reshape(4, d), rows[1:2], kind
        )
        for qs, codes in ((q[:0], flat), (q, [a[:0] for a in flat])):
            got = host(score(plan, put(qs), *(put(a) for a in codes)))
            _same_kind(got, r_score(plan, qs, *codes), f"{kind}_score empty")
        if kind == "sign":
            continue
        wsum = getattr(ops, f"{kind}_weighted_sum")
        r_wsum = getattr(ref, f"{kind}_weighted_sum")
        want = host(wsum(plan, put(w.reshape(4, 6)), *dev)).reshape(2, 2, d)
        got = _same_kind(host(wsum(plan, put(w), *dev)), r_wsum(plan, w, *flat), f"{kind} sum")
        _assert_weighted(got.reshape(4, d), want.reshape(4, d), w.reshape(4, 6), rows, kind)
        got = _same_kind(host(wsum(plan, put(w[0, 0]), *dev)), r_wsum(plan, w[0, 0], *flat), kind)
        _assert_weighted(got[None], want[0, :1], w[0, :1], rows, f"{kind} 1-D weights")
        got = host(wsum(plan, put(w[0, :, :0]), *(put(a[:0]) for a in flat)))
        assert got.shape == (2, d) and got.dtype == np.float32 and not got.any(), kind
        got = host(wsum(plan, put(w[0, :0]), *dev))
        _same_kind(got, r_wsum(plan, w[0, :0], *flat), f"{kind} no weight rows")

    empty = np.zeros((5, 0), np.float32)
    for kind, plan in (
        ("scalar", ScalarPlan(0, coordinate_codebook(8, 3))),
        ("sign", SignPlan(0)),
        ("polar", PolarPlan(0, (angle_codebook(1, 2),))),
    ):
        got = _parts(getattr(ops, f"{kind}_encode")(plan, put(empty)))
        want = _parts(getattr(ref, f"{kind}_encode")(plan, empty))
        for g, wnt in zip(got, want, strict=True):
            _same_kind(host(g), wnt, f"{kind} n=0")
        vals = host(getattr(ops, f"{kind}_values")(plan, *got, np.float32))
        _same_kind(vals, getattr(ref, f"{kind}_values")(plan, *want, f32), f"{kind} n=0 values")
        s = host(getattr(ops, f"{kind}_score")(plan, put(np.zeros((2, 0), np.float32)), *got))
        assert s.shape == (2, 5) and not s.any(), kind  # empty inner products are 0


def test_result_dtypes_follow_the_reference(env):
    """Every real dtype the checks accept gives the reference's result dtype, shape and results:
    float16, float32, float64 and integer rows, queries and weights, float16/32/64 decodes, and
    float16 radii.  Codes byte for byte without nudging (both compare the same numbers cast to
    the same working dtype: float32 for float16, float64 for integers); values, scores and
    weighted sums within the RTOL of their dtype, and for float16 results half an ulp of
    float16 (``2**-11``) of their scale, the rounding of the final cast alone."""
    rng = np.random.default_rng(8)
    d = 32
    ops, put, host = env.ops, env.put, env.host
    base = rng.standard_normal((7, d))
    inputs = {
        "float16": (base / np.sqrt(d)).astype(np.float16),
        "float32": (base / np.sqrt(d)).astype(np.float32),
        "float64": base / np.sqrt(d),
        "int32": np.rint(base * 2).astype(np.int32),
    }
    scalar, signs, polar = _scalar_plan(d, 3), SignPlan(d), _polar_plan(d, (4, 2, 2))

    def close(got, want, what, scale):
        got = _same_kind(host(got), want, what)
        tol = 2.0**-11 if want.dtype == np.float16 else RTOL[want.dtype]
        err = np.abs(got.astype(np.float64) - want) / (np.asarray(scale) + 1e-30)
        assert err.max(initial=0.0) <= tol, (what, err.max(initial=0.0))

    for name, a in inputs.items():
        for plan, enc in ((scalar, "scalar_encode"), (signs, "sign_encode")):
            want = getattr(ref, enc)(plan, a)
            _same_kind(host(getattr(ops, enc)(plan, put(a))), want, f"{enc} {name}")
            np.testing.assert_array_equal(host(getattr(ops, enc)(plan, put(a))), want)
    codes = ref.scalar_encode(scalar, inputs["float64"])
    sign_codes = ref.sign_encode(signs, inputs["float64"])
    angles, radii = ref.polar_encode(polar, inputs["float64"])
    cases = [
        ("scalar", scalar, (codes,)),
        ("sign", signs, (sign_codes,)),
        ("polar", polar, (angles, radii)),
        ("polar float16 radii", polar, (angles, radii.astype(np.float16))),
    ]
    for what, plan, parts in cases:
        kind = what.split()[0]
        dev = tuple(put(p) for p in parts)
        for dtype in (np.float16, np.float32, np.float64):
            want = getattr(ref, f"{kind}_values")(plan, *parts, dtype)
            got = getattr(ops, f"{kind}_values")(plan, *dev, dtype)
            norm = np.linalg.norm(want.astype(np.float64), axis=-1, keepdims=True)
            close(got, want, f"{what} values {np.dtype(dtype)}", norm)
        rows = getattr(ref, f"{kind}_values")(plan, *parts, np.float64)
        rn = np.linalg.norm(rows, axis=-1)
        for name, a in inputs.items():
            q = a[:2] if kind != "sign" else a[:2, : plan.m]
            want = getattr(ref, f"{kind}_score")(plan, q, *parts)
            got = getattr(ops, f"{kind}_score")(plan, put(q), *dev)
            qn = np.linalg.norm(q.astype(np.float64), axis=-1)
            close(got, want, f"{what} score {name}", qn[:, None] * rn[None, :])
            if kind == "sign":
                continue
            w = a[:2, :7]
            want = getattr(ref, f"{kind}_weighted_sum")(plan, w, *parts)
            got = getattr(ops, f"{kind}_weighted_sum")(plan, put(w), *dev)
            scale = np.abs(w.astype(np.float64)) @ rn
            close(got, want, f"{what} weighted sum {name}", scale[:, None])


# -- 8. the numba backend's own paths ------------------------------------------------------------
@pytest.mark.parametrize("name", [_param("numba")])
@pytest.mark.parametrize(
    "factor, upper", [(0, 12), (10**9, 0), (10**9, 12)], ids=["tree", "folded", "folded-upper"]
)
def test_numba_polar_score_paths_agree(name, factor, upper, monkeypatch):
    """Every numba polar score path equals the reference: the level-1 table with the tree
    rebuilt down to level 2; levels 1-2 folded into the table (which the backend picks only
    for thousands of rows; ``FOLD_ROW_FACTOR`` forces either here), with the level-2 radii
    rebuilt level by level or, for ``L >= 4``, through the table of level-4/3 products
    (``UPPER_BITS``; both settings live in ``numba_backend.polar``).  The folded kernel is
    compiled per combination of bit widths, so the configurations add a 5-level tree and 2- and
    3-bit codes at levels 1 to 3 (codes that straddle bytes).  Radii are float16 (decoded
    inside the kernels) for every other configuration and float32 for the rest, so that each
    path runs both with kernels of several levels and bit widths (each combination of levels,
    widths and radii dtype is one more compiled kernel; the float16 decoding itself is checked
    bit for bit by ``test_numba_float16_radii_decoded_exactly``).  Codes arrays that differ in
    layout and write flag (a read-only one, a Fortran-ordered one, a strided view into wider
    rows) must not matter."""
    ops = get_backend(name)
    polar = importlib.import_module("polarquant.backends.numba_backend.polar")
    monkeypatch.setattr(polar, "FOLD_ROW_FACTOR", factor)
    monkeypatch.setattr(polar, "UPPER_BITS", upper)
    rng = np.random.default_rng(21)
    for d in (64, 96):
        y = rng.standard_normal((150, d)).astype(np.float32)
        q = rng.standard_normal((5, d)).astype(np.float32)
        configs = [*POLAR_CONFIGS, (4, 2, 2, 2, 2), (2, 3, 3, 4)]
        for i, bits in enumerate(configs):
            plan = _polar_plan(d, bits)
            codes, radii = ref.polar_encode(plan, y)
            if i % 2 == 0:  # the paper's (4, 2, 2, 2) among them, as the quantizers store it
                radii = radii.astype(np.float16)
            what = f"{bits} radii {radii.dtype}"
            want = ref.polar_values(plan, codes, radii, np.float32)
            if i % 3 == 0:
                mixed = codes.copy()
                mixed.flags.writeable = False
            elif i % 3 == 1:
                mixed = np.asfortranarray(codes)
            else:
                wide = np.zeros((codes.shape[0], codes.shape[1] + 3), dtype=np.uint8)
                wide[:, 1:-2] = codes
                mixed = wide[:, 1:-2]
            got = ops.polar_score(plan, q, mixed, radii)
            _assert_scores(got, ref.polar_score(plan, q, codes, radii), q, want, what)
            _assert_values(ops.polar_values(plan, mixed, radii, np.float32), want, what)


@pytest.mark.parametrize("name", [_param("numba")])
@pytest.mark.parametrize(
    "gemm_queries, decoded_bits",
    [(1, (3, 4, 5, 6, 7, 8)), (10**9, (3, 4, 5, 6, 7, 8)), (10**9, ())],
    ids=["decode-multiply", "decoded-rows", "tables"],
)
def test_numba_score_paths_agree(name, gemm_queries, decoded_bits, monkeypatch):
    """Every way the numba backend scores, for every kind of code: per-query lookup tables,
    rows decoded four at a time and dotted with the queries (``DECODED_SCORE_BITS``, few
    queries), and blocks of decoded rows multiplied with all the queries (from
    ``GEMM_QUERIES`` queries on; blocks of ``GEMM_BLOCK_BYTES``, made tiny here so that a
    call spans many), each against the reference, with float32 and float64 queries."""
    ops = get_backend(name)
    scalar = importlib.import_module("polarquant.backends.numba_backend.scalar")
    polar = importlib.import_module("polarquant.backends.numba_backend.polar")
    common = importlib.import_module("polarquant.backends.numba_backend._common")
    monkeypatch.setattr(scalar, "GEMM_QUERIES", gemm_queries)
    monkeypatch.setattr(scalar, "DECODED_SCORE_BITS", decoded_bits)
    monkeypatch.setattr(polar, "GEMM_QUERIES", gemm_queries)
    monkeypatch.setattr(common, "GEMM_BLOCK_BYTES", 4096)
    rng = np.random.default_rng(22)
    d = 64
    y = rng.standard_normal((300, d)).astype(np.float32)
    for dtype in (np.float32, np.float64):
        q = rng.standard_normal((3, d)).astype(dtype)
        for bits in (1, 2, 3, 4, 5, 8):
            plan = _scalar_plan(d, bits)
            packed = ref.scalar_encode(plan, y)
            want = ref.scalar_values(plan, packed, dtype)
            got = ops.scalar_score(plan, q, packed)
            _assert_scores(got, ref.scalar_score(plan, q, packed), q, want, f"scalar {bits}")
        signs = SignPlan(d)
        packed = ref.sign_encode(signs, y)
        want = ref.sign_values(signs, packed, dtype)
        got = ops.sign_score(signs, q, packed)
        _assert_scores(got, ref.sign_score(signs, q, packed), q, want, "signs")
        plan = _polar_plan(d, (4, 2, 2, 2))
        codes, radii = ref.polar_encode(plan, y)
        radii = radii.astype(np.float16)
        want = ref.polar_values(plan, codes, radii, dtype)
        got = ops.polar_score(plan, q, codes, radii)
        _assert_scores(got, ref.polar_score(plan, q, codes, radii), q, want, "polar")


@pytest.mark.parametrize("name", [_param("numba")])
def test_numba_float16_radii_decoded_exactly(name):
    """float16 radii reach the Numba kernels as their bits and are decoded there
    (``numba_backend.polar._load_radii``): all 65,536 float16 bit patterns (signed zeros,
    subnormals, normal numbers, Inf, NaN) must give NumPy's own float16 cast, which is exact.
    A 1-level tree of dim 2 whose codebook has the centroid 0 at code 0, with every angle code
    0, reconstructs ``(r cos 0, r sin 0)``, so the first coordinate is the decoded radius
    itself, in float32 and in float64."""
    ops = get_backend(name)
    book = Codebook(np.array([0.0, 1.0]), np.array([0.5]), (0.0, 2 * math.pi), 0.0, "test")
    plan = PolarPlan(2, (book,))
    radii = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)[:, None]
    codes = np.zeros((radii.shape[0], plan.nbytes), dtype=np.uint8)
    for dtype in (np.float32, np.float64):
        with np.errstate(invalid="ignore"):  # Inf * sin 0 is NaN, in both
            got = ops.polar_values(plan, codes, radii, dtype)
            want = ref.polar_values(plan, codes, radii, dtype)
        assert got.dtype == want.dtype == dtype
        np.testing.assert_array_equal(got[:, 0], radii[:, 0].astype(dtype))
        np.testing.assert_array_equal(got, want)
        assert np.array_equal(np.signbit(got[:, 0]), np.signbit(radii[:, 0]))


@pytest.mark.parametrize("name", [_param("numba")])
def test_numba_one_kernel_whatever_the_write_flags(name):
    """Read-only codes (a loaded or memory-mapped file, a shared constant) reach the scalar
    kernels as writable ones do: no second compiled kernel (each Numba signature is a cold
    compile of seconds), and the same results.  (A plan's codebook arrays are read-only
    float64 always.)"""
    ops = get_backend(name)
    kernels = importlib.import_module("polarquant.backends.numba_backend.scalar")
    rng = np.random.default_rng(31)
    d, bits = 24, 4
    plan = _scalar_plan(d, bits)
    packed = ref.scalar_encode(plan, _unit_rows(rng, 9, d))
    q = rng.standard_normal((2, d)).astype(np.float32)
    w = rng.standard_normal((2, 9)).astype(np.float32)

    def run(p):
        return (
            ops.scalar_values(plan, p, np.float32),
            ops.scalar_score(plan, q, p),
            ops.scalar_weighted_sum(plan, w, p),
        )

    want = run(packed)
    dispatchers = (
        kernels.scalar_values_kernel,
        kernels.byte_tables,
        kernels.scalar_score_kernel,
        kernels.scalar_weighted_sum_kernel,
    )
    before = [len(k.signatures) for k in dispatchers]
    frozen = packed.copy()
    frozen.flags.writeable = False
    for got, expected in zip(run(frozen), want, strict=True):
        np.testing.assert_array_equal(got, expected)
    assert [len(k.signatures) for k in dispatchers] == before


@pytest.mark.parametrize("name", [_param("numba")])
def test_numba_backend_sets_gomp_spincount_unless_set(name):
    """Loading the numba backend sets ``GOMP_SPINCOUNT`` (libgomp's idle spin, see
    ``numba_backend.GOMP_SPINCOUNT``) only where the environment does not: a user's value wins.
    Run in fresh interpreters (libgomp reads it once per process)."""
    code = (
        "import os; from polarquant.backends import get_backend; get_backend('numba'); "
        "print(os.environ['GOMP_SPINCOUNT'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    for extra, want in (({}, get_backend(name).GOMP_SPINCOUNT), ({"GOMP_SPINCOUNT": "7"}, "7")):
        out = subprocess.run(
            [sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == want


@pytest.mark.parametrize("name", [_param("numba")])
def test_numba_refuses_other_namespaces(name):
    """The numba backend runs on NumPy arrays only: anything else (array-API-strict, lists,
    torch), as rows, codes or weights, is a TypeError that says so."""
    import array_api_strict as xs

    ops = get_backend(name)
    plan, signs = _scalar_plan(16, 2), SignPlan(16)
    y = np.zeros((2, 16), dtype=np.float32)
    others = [xs.asarray(y), [[0.0] * 16] * 2]
    try:
        import torch

        others.append(torch.zeros((2, 16)))
    except ImportError:  # pragma: no cover - torch is optional
        pass
    match = "numba backend runs on NumPy arrays"
    for other in others:
        with pytest.raises(TypeError, match=match):
            ops.scalar_encode(plan, other)
        with pytest.raises(TypeError, match=match):
            ops.sign_encode(signs, other)
    packed = np.zeros((2, 4), dtype=np.uint8)
    with pytest.raises(TypeError, match=match):
        ops.scalar_values(plan, xs.asarray(packed), np.float32)
    with pytest.raises(TypeError, match=match):
        ops.scalar_weighted_sum(plan, [1.0, 2.0], packed)
    with pytest.raises(TypeError, match=match):
        ops.scalar_weighted_sum(plan, xs.asarray(np.ones((1, 2))), packed)
    with pytest.raises(TypeError, match=match):
        pq.TurboQuantMSE(16, 2, backend=name, norm_dtype="float32").encode(xs.asarray(y))


# -- 9. the kernel bodies as plain Python ----------------------------------------------------
def test_tiny_ops(env):
    """All eleven operations but the weighted sums on tiny inputs (few rows, dims 16, 24 and 13):
    bytes identical and values and scores within RTOL.  Cheap enough to run with
    ``NUMBA_DISABLE_JIT=1``, where the Numba kernels execute line by line as Python."""
    rng = np.random.default_rng(99)
    put, host = env.put, env.host
    for d in (16, 24, 13):
        y = _unit_rows(rng, 3, d)
        q = rng.standard_normal((2, d)).astype(np.float32)
        for bits in range(1, 9):
            plan = _scalar_plan(d, bits)
            yb = _nudge(y, plan.boundaries)
            packed = ref.scalar_encode(plan, yb)
            np.testing.assert_array_equal(host(env.ops.scalar_encode(plan, put(yb))), packed)
            want = ref.scalar_values(plan, packed, np.float32)
            got = host(env.ops.scalar_values(plan, put(packed), np.float32))
            _assert_values(got, want, "values")
            got = host(env.ops.scalar_score(plan, put(q), put(packed)))
            _assert_scores(got, ref.scalar_score(plan, q, packed), q, want, f"score {bits=}")
        signs = SignPlan(d)
        packed = ref.sign_encode(signs, q)
        np.testing.assert_array_equal(host(env.ops.sign_encode(signs, put(q))), packed)
        want = ref.sign_values(signs, packed, np.float64)
        got = host(env.ops.sign_values(signs, put(packed), np.float64))
        _assert_values(got, want, "sign_values")
        got = host(env.ops.sign_score(signs, put(y), put(packed)))
        _assert_scores(got, ref.sign_score(signs, y, packed), y, want, "sign_score")
        for dtype in (np.float32, np.float64) if d % 8 == 0 else ():
            for bits in ((3,), (4, 2, 5)):
                plan = _polar_plan(d, bits)
                yd = y.astype(dtype)
                codes, radii = ref.polar_encode(plan, yd)
                got, got_r = env.ops.polar_encode(plan, put(yd))
                far = _polar_far(plan, yd)
                _assert_polar_codes(host(got), codes, plan, far, f"tiny {bits}")
                np.testing.assert_allclose(host(got_r), radii, rtol=1e-6)
                dev = (put(codes), put(radii))
                want = ref.polar_values(plan, codes, radii, dtype)
                got = host(env.ops.polar_values(plan, *dev, dtype))
                _assert_values(got, want, "polar_values")
                qd = q.astype(dtype)
                got = host(env.ops.polar_score(plan, put(qd), *dev))
                want_s = ref.polar_score(plan, qd, codes, radii)
                _assert_scores(got, want_s, qd, want, "polar_score")


def test_tiny_weighted_sums(env):
    """Both weighted sums on tiny inputs (dims 16, 24 and 13; 0, 1 and 203 rows: with 64 chunks,
    four-row blocks and leftover rows), float32 and float64: within RTOL, one-hot exact.  Cheap
    enough to run with ``NUMBA_DISABLE_JIT=1``."""
    rng = np.random.default_rng(98)
    for d in (16, 24, 13):
        for dtype in (np.float32, np.float64):
            configs = [(3,), (4, 2, 5)] if d % 8 == 0 else []
            _check_weighted_sums(env, rng, d, (0, 1, 203), range(1, 9), configs, dtype)


@pytest.mark.parametrize("name", [_param("numba")])
def test_kernels_run_as_python(name):
    """``NUMBA_DISABLE_JIT=1``: the ``TINY`` tests pass with the kernel bodies interpreted as Python."""
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        str(Path(__file__)),
        "-k",
        f"({' or '.join(TINY)}) and {name}",
    ]
    root = Path(__file__).resolve().parents[1]  # the repository: its pytest configuration
    out = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"{len(TINY)} passed" in out.stdout, out.stdout[-3000:]


def test_every_backend_module_provides_every_operation():
    """The registry's OPERATIONS list is the contract: each backend module defines and exports
    all of them (and ``NAME``, ``SCORES_FROM_CODES``, ``configure_threads``), with the
    reference's parameters (plan first, then the same names in the same order, so a quantizer
    calls every backend alike), satisfies the ``Backend`` protocol, and says whether its scores
    decode rows (``SCORES_FROM_CODES``, read by the quantizers)."""
    from polarquant.backends import OPERATIONS, Backend

    for name in ("numpy_backend", "numba_backend", "cupy_backend"):
        if name == "numba_backend":
            pytest.importorskip("numba")
        module = importlib.import_module(f"polarquant.backends.{name}")
        missing = [op for op in OPERATIONS if not callable(getattr(module, op, None))]
        assert not missing, (name, missing)
        public = {"NAME", "SCORES_FROM_CODES", "configure_threads", *OPERATIONS}
        assert public <= set(module.__all__), (name, public - set(module.__all__))
        assert all(hasattr(module, k) for k in module.__all__), name
        assert isinstance(module.SCORES_FROM_CODES, bool)
        assert isinstance(module, Backend), name
        for op in OPERATIONS:
            want = list(inspect.signature(getattr(ref, op)).parameters)
            assert want[0] == "plan", op
            assert list(inspect.signature(getattr(module, op)).parameters) == want, (name, op)
