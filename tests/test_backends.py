"""Backend equivalence: every kernel backend against the NumPy reference.

One body per property, parametrized over the backends that
:func:`polarquant.backends.available` reports usable here (``numpy``,
``numba``, and ``cupy`` on a GPU machine); the others are skipped with the
reason, never failed and never run as something else.  Inputs are built on the
host with seeded NumPy generators and moved to the backend's array module
(NumPy for ``numpy``/``numba``, CuPy for ``cupy``); results come back to the
host to be compared with the reference run on the same host data.

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
  neighbouring codes.
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
* **errors**: the same exception type for the same bad input.

``test_kernels_run_as_python`` reruns the ``TINY`` tests of this file in a
subprocess with ``NUMBA_DISABLE_JIT=1``, so that the kernel bodies themselves
run as Python (coverage, debugging) and stay correct there.
"""

from __future__ import annotations

import importlib
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
from polarquant.codebooks import angle_codebook, coordinate_codebook
from polarquant.compressed import CompressedVectors
from polarquant.packing import unpack_codes
from polarquant.polar import polar_transform

DIMS = (64, 80, 96, 128, 256)
#: Distance to a decision boundary, relative to the decided quantity's scale, under which
#: a code may legitimately differ between backends (100x the largest rounding difference).
MARGIN = 1e-4
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
#: (levels, bits per level) of the PolarQuant configurations tested; valid for every dim in DIMS.
POLAR_CONFIGS = [
    (4, (4, 2, 2, 2)),
    (1, (3,)),
    (2, (5, 7)),
    (3, (8, 1, 6)),
    (3, (3, 2, 1)),
    (2, (2, 4)),
]
#: The tests small enough to run with the kernel bodies as Python (``test_kernels_run_as_python``).
TINY = ("test_tiny_ops", "test_tiny_weighted_sums")


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


def _polar_consts(levels: int, bits, dtype):
    books = [angle_codebook(level, b) for level, b in enumerate(bits, start=1)]
    bnd = [np.asarray(cb.boundaries, dtype=dtype) for cb in books]
    cents = [np.asarray(cb.centroids, dtype=dtype) for cb in books]
    return bnd, cents


def _polar_far(y, levels: int, bnd) -> list:
    """Per level, ``(rows, dim >> l)``: the angle (as the reference computes it) is far from the
    level's boundaries."""
    _, angles = polar_transform(np.asarray(y), levels)
    return [~_near(psi, b) for psi, b in zip(angles, bnd, strict=True)]


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
        cb = coordinate_codebook(d, bits)
        y = _nudge(_unit_rows(rng, 200, d), cb.boundaries)
        bnd = np.asarray(cb.boundaries, dtype=np.float32)
        got = env.host(env.ops.scalar_encode(env.put(y), env.put(bnd), bits))
        np.testing.assert_array_equal(got, ref.scalar_encode(y, bnd, bits), err_msg=f"{bits=}")

    p = rng.standard_normal((200, d)).astype(np.float32)
    p[0, :3] = [0.0, -0.0, 0.0]
    got = env.host(env.ops.sign_encode(env.put(p)))
    np.testing.assert_array_equal(got, ref.sign_encode(p))
    assert got[0, 0] >> 5 == 0b111  # +0, -0, +0: three one bits

    for levels, bits in POLAR_CONFIGS:
        y = _unit_rows(rng, 300, d)
        bnd, _ = _polar_consts(levels, bits, np.float32)
        packed, radii = env.ops.polar_encode(env.put(y), levels, [env.put(b) for b in bnd], bits)
        want, want_r = ref.polar_encode(y, levels, bnd, bits)
        far = _polar_far(y, levels, bnd)
        for level, (g, w, f, nb) in enumerate(zip(packed, want, far, bits, strict=True), start=1):
            _assert_codes(env.host(g), w, nb, d >> level, f, f"{levels=} {level=}")
        np.testing.assert_allclose(env.host(radii), want_r, rtol=1e-6)


def test_op_decisions_on_boundaries(env):
    """Inputs exactly on a decision boundary are no rounding question: same codes as the reference.

    Values equal to a boundary go to the upper cell (``searchsorted(side="right")``),
    ``-inf`` to the first cell, ``+inf`` and NaN to the last; the sign bit of
    ``+0`` and ``-0`` is 1 and of NaN 0; a pair ``(1, -1e-30)`` has the level-1
    angle ``-1e-30 + 2 pi``, which rounds to ``2 pi`` and is sent to 0 (the
    reference's guard); a NaN pair gives NaN angles at every level above it.
    """
    d = 32
    for bits in (2, 3, 8):
        bnd = np.asarray(coordinate_codebook(d, bits).boundaries, dtype=np.float32)
        special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan], dtype=np.float32)
        y = np.concatenate([bnd, special, np.nextafter(bnd, np.float32(np.inf))])
        y = np.resize(y, (-(-y.size // d), d))
        got = env.host(env.ops.scalar_encode(env.put(y), env.put(bnd), bits))
        np.testing.assert_array_equal(got, ref.scalar_encode(y, bnd, bits), err_msg=f"{bits=}")
    p = np.array([[0.0, -0.0, np.nan, 1e-45, -1e-45, np.inf, -np.inf, 0.0, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(env.host(env.ops.sign_encode(env.put(p))), ref.sign_encode(p))
    bnd, _ = _polar_consts(2, (4, 3), np.float32)
    y = np.ones((2, 16), dtype=np.float32)
    y[0, :2] = [1.0, -1e-30]
    y[1, 4:6] = [np.nan, 1.0]
    packed, _ = env.ops.polar_encode(env.put(y), 2, [env.put(b) for b in bnd], (4, 3))
    want, _ = ref.polar_encode(y, 2, bnd, (4, 3))
    assert want[0][0, 0] >> 4 == 0  # the guard: angle 0, code 0 (not the last cell)
    for g, w in zip(packed, want, strict=True):
        np.testing.assert_array_equal(env.host(g), w)


def test_op_bytes_identical_float64(env):
    """The float64 kernels (libm ``atan2``/``hypot`` for polar) give the reference's bytes too."""
    rng = np.random.default_rng(64)
    d = 96
    cb = coordinate_codebook(d, 3)
    y = _nudge(_unit_rows(rng, 200, d, np.float64), cb.boundaries)
    np.testing.assert_array_equal(
        env.host(env.ops.scalar_encode(env.put(y), env.put(cb.boundaries), 3)),
        ref.scalar_encode(y, cb.boundaries, 3),
    )
    np.testing.assert_array_equal(env.host(env.ops.sign_encode(env.put(y))), ref.sign_encode(y))
    bnd, _ = _polar_consts(4, (4, 2, 2, 2), np.float64)
    packed, radii = env.ops.polar_encode(env.put(y), 4, [env.put(b) for b in bnd], (4, 2, 2, 2))
    want, want_r = ref.polar_encode(y, 4, bnd, (4, 2, 2, 2))
    far = _polar_far(y, 4, bnd)
    for level, (g, w, f, b) in enumerate(zip(packed, want, far, (4, 2, 2, 2), strict=True), 1):
        _assert_codes(env.host(g), w, b, d >> level, f, f"{level=}")
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
    for levels, bits in POLAR_CONFIGS:
        out.append(
            (
                f"polar{levels}",
                lambda be, L=levels, b=bits: pq.PolarQuant(d, L, b, seed=3, backend=be),
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

    Packed fields map to ``(bits, n, far)`` with ``far (rows, n)`` per code; float
    fields to ``far (rows,)`` per row.  The decisions, redone with the reference:
    rotated coordinates against the scalar codebook (TurboQuant), sketch
    projections against 0 (QJL and the residual sketches: a sign bit also
    depends on every first-stage code of its row, through the residual), polar
    angles against each level's boundaries.  Norms and radii depend on no code.
    """
    from polarquant.quantizer import safe_norms

    out = {}
    rows = x.shape[0]
    everywhere = np.ones(rows, dtype=bool)
    with pq.use_backend("numpy"):
        norms, safe = safe_norms(x)
        u = x / safe[:, None]
        residual, row_far = None, everywhere
        if isinstance(q, (pq.TurboQuantMSE, pq.TurboQuantProd)):
            out["norms"] = everywhere
            if q.stage is not None:
                y = q.stage.rotation.apply(u)
                far = ~_near(y, q.stage.codebook.boundaries, _rms(y))
                out["codes"] = (q.stage.bits, y.shape[1], far)
                row_far = far.all(axis=1)
                residual = u - q.stage.decode(q.stage.encode(u), u.dtype)
            else:
                residual = u
        if isinstance(q, pq.PolarQuant):
            y = q.rotation.apply(x)
            fars = _polar_far(y, q.levels, [cb.boundaries for cb in q.codebooks])
            for level, (b, f) in enumerate(zip(q.bits, fars, strict=True), start=1):
                out[f"angles_{level}"] = (b, f.shape[1], f)
            out["radii"] = everywhere
            row_far = np.all([f.all(axis=1) for f in fars], axis=0)
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
            if w.dtype == np.uint8:
                bits, n, far = masks[k]
                _assert_codes(g, w, bits, n, far, f"{name} {k}")
            else:  # float16 storage of the same float32 numbers
                np.testing.assert_allclose(
                    g[masks[k]], w[masks[k]], rtol=2**-10, err_msg=f"{name} {k}"
                )


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
    cb = coordinate_codebook(d, 4)
    y = _unit_rows(rng, 8192, d)  # 1,048,576 codes
    bnd = np.asarray(cb.boundaries, dtype=np.float32)
    got = _codes(env.host(env.ops.scalar_encode(env.put(y), env.put(bnd), 4)), 4, d)
    want = _codes(ref.scalar_encode(y, bnd, 4), 4, d)
    diff = np.abs(got - want)
    assert diff.size >= 1_000_000 and np.count_nonzero(diff) <= 10 and diff.max() <= 1

    p = rng.standard_normal((4096, 256)).astype(np.float32)  # 1,048,576 bits
    got = _codes(env.host(env.ops.sign_encode(env.put(p))), 1, 256)
    assert np.count_nonzero(got != _codes(ref.sign_encode(p), 1, 256)) <= 10

    bits = (4, 2, 2, 2)
    bnd, _ = _polar_consts(4, bits, np.float32)
    y = _unit_rows(rng, 8800, d)  # 120 angles per row: 1,056,000 codes
    packed, _ = env.ops.polar_encode(env.put(y), 4, [env.put(b) for b in bnd], bits)
    want, _ = ref.polar_encode(y, 4, bnd, bits)
    total = differ = 0
    for level, (g, w, b) in enumerate(zip(packed, want, bits, strict=True), start=1):
        diff = np.abs(_codes(env.host(g), b, d >> level) - _codes(w, b, d >> level))
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
            cb = coordinate_codebook(d, bits)
            cents = np.asarray(cb.centroids, dtype=np.float32)
            packed = ref.scalar_encode(y, np.asarray(cb.boundaries, dtype=np.float32), bits)
            want = ref.scalar_values(packed, cents, bits, d)
            got = env.host(env.ops.scalar_values(env.put(packed), env.put(cents), bits, d))
            _assert_values(got, want, f"scalar_values {d=} {bits=}")
            for q in (q1, q3):
                got = env.host(
                    env.ops.scalar_score(env.put(q), env.put(packed), env.put(cents), bits, d)
                )
                _assert_scores(
                    got, ref.scalar_score(q, packed, cents, bits, d), q, want, f"{bits=}"
                )

        signs = ref.sign_encode(y)
        want = ref.sign_values(signs, d, np.float32)
        got = env.host(env.ops.sign_values(env.put(signs), d, np.float32))
        _assert_values(got, want, "sign_values")
        for s in (q1, q3):
            got = env.host(env.ops.sign_score(env.put(s), env.put(signs), d))
            _assert_scores(got, ref.sign_score(s, signs, d), s, want, "sign_score")

        for levels, bits in POLAR_CONFIGS if d % 8 == 0 else []:
            bnd, cents = _polar_consts(levels, bits, np.float32)
            packed, radii = ref.polar_encode(y, levels, bnd, bits)
            want = ref.polar_values(packed, radii, cents, bits, d)
            dev = ([env.put(p) for p in packed], env.put(radii), [env.put(c) for c in cents])
            got = env.host(env.ops.polar_values(*dev, bits, d))
            _assert_values(got, want, f"polar_values {levels=}")
            for q in (q1, q3):
                got = env.host(env.ops.polar_score(env.put(q), *dev, bits, d))
                want_s = ref.polar_score(q, packed, radii, cents, bits, d)
                _assert_scores(got, want_s, q, want, f"polar_score {levels=}")


def test_op_values_and_scores_float64(env):
    """The float64 kernels: values and scores within 1e-12 of the reference.  PolarQuant with
    three levels, (4, 2, 5): the number of levels ``test_tiny_ops`` compiles in float64 too (one
    Numba kernel per dtype and number of levels; float32 covers every number of levels)."""
    rng = np.random.default_rng(12)
    d = 96
    y = _unit_rows(rng, 100, d, np.float64)
    q = rng.standard_normal((2, d))
    for bits in (3, 4):
        cb = coordinate_codebook(d, bits)
        packed = ref.scalar_encode(y, cb.boundaries, bits)
        want = ref.scalar_values(packed, cb.centroids, bits, d)
        _assert_values(
            env.host(env.ops.scalar_values(env.put(packed), env.put(cb.centroids), bits, d)),
            want,
            "values",
        )
        got = env.host(
            env.ops.scalar_score(env.put(q), env.put(packed), env.put(cb.centroids), bits, d)
        )
        _assert_scores(got, ref.scalar_score(q, packed, cb.centroids, bits, d), q, want, "score")
    signs = ref.sign_encode(y)
    want = ref.sign_values(signs, d, np.float64)
    _assert_values(
        env.host(env.ops.sign_values(env.put(signs), d, np.float64)), want, "sign_values"
    )
    _assert_scores(
        env.host(env.ops.sign_score(env.put(q), env.put(signs), d)),
        ref.sign_score(q, signs, d),
        q,
        want,
        "sign_score",
    )
    levels, bits = 3, (4, 2, 5)
    bnd, cents = _polar_consts(levels, bits, np.float64)
    packed, radii = ref.polar_encode(y, levels, bnd, bits)
    dev = ([env.put(p) for p in packed], env.put(radii), [env.put(c) for c in cents])
    want = ref.polar_values(packed, radii, cents, bits, d)
    _assert_values(env.host(env.ops.polar_values(*dev, bits, d)), want, "polar_values")
    got = env.host(env.ops.polar_score(env.put(q), *dev, bits, d))
    _assert_scores(got, ref.polar_score(q, packed, radii, cents, bits, d), q, want, "polar_score")


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
            cb = coordinate_codebook(d, bits)
            cents = np.asarray(cb.centroids, dtype=dtype)
            packed = ref.scalar_encode(y, np.asarray(cb.boundaries, dtype=dtype), bits)
            vals = ref.scalar_values(packed, cents, bits, d)
            dev = (env.put(packed), env.put(cents))
            for w in weights:
                got = env.host(env.ops.scalar_weighted_sum(env.put(w), *dev, bits, d))
                want = ref.scalar_weighted_sum(w, packed, cents, bits, d)
                _assert_weighted(got, want, w, vals, f"scalar {d=} {rows=} {bits=} {w.shape}")
            if picks:
                got = env.host(
                    env.ops.scalar_weighted_sum(
                        env.put(_one_hot(rows, picks).astype(dtype)), *dev, bits, d
                    )
                )
                own = env.host(env.ops.scalar_values(*dev, bits, d))
                np.testing.assert_array_equal(got, own[picks], err_msg=f"one-hot {d=} {bits=}")
        for levels, bits in polar_configs:
            bnd, cents = _polar_consts(levels, bits, dtype)
            packed, radii = ref.polar_encode(y, levels, bnd, bits)
            vals = ref.polar_values(packed, radii, cents, bits, d)
            dev = ([env.put(p) for p in packed], env.put(radii), [env.put(c) for c in cents])
            for w in weights:
                got = env.host(env.ops.polar_weighted_sum(env.put(w), *dev, bits, d))
                want = ref.polar_weighted_sum(w, packed, radii, cents, bits, d)
                _assert_weighted(got, want, w, vals, f"polar {d=} {rows=} {levels=} {w.shape}")
            if picks:
                got = env.host(
                    env.ops.polar_weighted_sum(
                        env.put(_one_hot(rows, picks).astype(dtype)), *dev, bits, d
                    )
                )
                own = env.host(env.ops.polar_values(*dev, bits, d))
                np.testing.assert_array_equal(
                    got, own[picks], err_msg=f"one-hot polar {d=} {levels=}"
                )


#: PolarQuant configurations of the float64 weighted sums: levels 1 and 3, the tuple lengths the
#: float64 ``test_tiny_*`` tests compile anyway (a Numba kernel is compiled once per dtype and
#: number of levels; the code run is the same for every number of levels, which float32 covers).
FLOAT64_POLAR_CONFIGS = [(1, (3,)), (3, (8, 1, 6))]


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


# -- 5. the same exception type for the same bad input -------------------------------------------
def _bad_op_calls(env: Env):
    """(description, call) for bad inputs the reference rejects."""
    z, put = np.zeros, env.put
    u8 = np.uint8
    two = [put(z((2, 1), u8)), put(z((2, 1), u8))]
    cents2 = [put(z(2)), put(z(2))]
    ops = env.ops
    return [
        (
            "packed codes not uint8",
            lambda: ops.scalar_values(put(z((2, 8), np.int64)), put(z(16)), 4, 16),
        ),
        ("wrong bytes per row", lambda: ops.scalar_values(put(z((2, 7), u8)), put(z(16)), 4, 16)),
        (
            "query width",
            lambda: ops.scalar_score(put(z((1, 15))), put(z((2, 8), u8)), put(z(16)), 4, 16),
        ),
        ("bits 9", lambda: ops.scalar_encode(put(z((2, 16))), put(z(3)), 9)),
        ("bits 0", lambda: ops.scalar_encode(put(z((2, 16))), put(z(3)), 0)),
        ("bits 2.5", lambda: ops.scalar_encode(put(z((2, 16))), put(z(3)), 2.5)),
        ("0-d input", lambda: ops.scalar_encode(put(z(())), put(z(3)), 2)),
        ("sign bytes per row", lambda: ops.sign_values(put(z((2, 3), u8)), 16, np.float32)),
        ("sign query width", lambda: ops.sign_score(put(z((1, 15))), put(z((2, 2), u8)), 16)),
        ("negative m", lambda: ops.sign_values(put(z((2, 2), u8)), -1, np.float32)),
        (
            "dim not a multiple of 2**L",
            lambda: ops.polar_encode(put(z((2, 12))), 3, [put(z(1))] * 3, (1, 1, 1)),
        ),
        (
            "boundaries per level",
            lambda: ops.polar_encode(put(z((2, 16))), 3, [put(z(1))] * 2, (1, 1, 1)),
        ),
        (
            "bits per level",
            lambda: ops.polar_encode(put(z((2, 16))), 2, [put(z(1))] * 2, (1, 1, 1)),
        ),
        ("levels 0", lambda: ops.polar_encode(put(z((2, 16))), 0, [], ())),
        ("radii shape", lambda: ops.polar_values(two, put(z((2, 3))), cents2, (1, 1), 16)),
        (
            "angle codes not uint8",
            lambda: ops.polar_values(
                [put(z((2, 1), np.int8)), two[1]], put(z((2, 4))), cents2, (1, 1), 16
            ),
        ),
        (
            "codebooks per level",
            lambda: ops.polar_values(two, put(z((2, 4))), cents2[:1], (1, 1), 16),
        ),
        (
            "polar query width",
            lambda: ops.polar_score(put(z((1, 15))), two, put(z((2, 4))), cents2, (1, 1), 16),
        ),
        (
            "weights per row",
            lambda: ops.scalar_weighted_sum(put(z((1, 3))), put(z((2, 8), u8)), put(z(16)), 4, 16),
        ),
        (
            "0-d weights",
            lambda: ops.scalar_weighted_sum(put(z(())), put(z((2, 8), u8)), put(z(16)), 4, 16),
        ),
        (
            "weighted codes not uint8",
            lambda: ops.scalar_weighted_sum(
                put(z((1, 2))), put(z((2, 8), np.int64)), put(z(16)), 4, 16
            ),
        ),
        (
            "weighted bytes per row",
            lambda: ops.scalar_weighted_sum(put(z((1, 2))), put(z((2, 7), u8)), put(z(16)), 4, 16),
        ),
        (
            "polar weights per row",
            lambda: ops.polar_weighted_sum(put(z((1, 3))), two, put(z((2, 4))), cents2, (1, 1), 16),
        ),
        (
            "polar weighted radii shape",
            lambda: ops.polar_weighted_sum(put(z((1, 2))), two, put(z((2, 3))), cents2, (1, 1), 16),
        ),
    ]


def test_same_exceptions(env):
    """Each bad input raises, on this backend, exactly the exception type the reference raises."""
    numpy_env = _env("numpy")
    for (what, call), (_, ref_call) in zip(
        _bad_op_calls(env), _bad_op_calls(numpy_env), strict=True
    ):
        with pytest.raises(Exception) as want:
            ref_call()
        with pytest.raises(Exception) as got:
            call()
        assert got.type is want.type, (what, got.value, want.value)

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
            for be in ("numpy", env.name):
                with pytest.raises(kind):
                    make(be).encode(env.put(bad) if be == env.name else bad)
        codes = make(env.name).encode(env.put(x))
        with pytest.raises(ValueError):
            make(env.name).score(env.put(x[:, :31]), codes)


@pytest.mark.parametrize("name", [_param("numba")])
@pytest.mark.parametrize(
    "factor, upper", [(0, 12), (10**9, 0), (10**9, 12)], ids=["tree", "folded", "folded-upper"]
)
def test_numba_polar_score_paths_agree(name, factor, upper, monkeypatch):
    """Every numba polar score path equals the reference: the level-1 table with the tree
    rebuilt down to level 2; levels 1-2 folded into the table (which the backend picks only
    for thousands of rows; ``FOLD_ROW_FACTOR`` forces either here), with the level-2 radii
    rebuilt level by level or, for ``L >= 4``, through the table of level-4/3 products
    (``UPPER_BITS``).  The folded kernel is compiled per combination of bit widths, so the
    configurations add a 5-level tree and 2- and 3-bit codes at levels 1 to 3 (codes that
    straddle bytes).  Radii are float16 (decoded inside the kernels) for every other
    configuration and float32 for the rest, so that each path runs both with kernels of several
    levels and bit widths (each combination of levels, widths and radii dtype is one more
    compiled kernel; the float16 decoding itself is checked bit for bit by
    ``test_numba_float16_radii_decoded_exactly``).  Level streams that differ in layout and
    write flag (a read-only one, a Fortran-ordered one) must not matter."""
    monkeypatch.setattr(get_backend(name), "FOLD_ROW_FACTOR", factor)
    monkeypatch.setattr(get_backend(name), "UPPER_BITS", upper)
    ops = get_backend(name)
    rng = np.random.default_rng(21)
    for d in (64, 96):
        y = rng.standard_normal((150, d)).astype(np.float32)
        q = rng.standard_normal((5, d)).astype(np.float32)
        configs = [*POLAR_CONFIGS, (5, (4, 2, 2, 2, 2)), (4, (2, 3, 3, 4))]
        for i, (levels, bits) in enumerate(configs):
            bnd, cents = _polar_consts(levels, bits, np.float32)
            packed, radii = ref.polar_encode(y, levels, bnd, bits)
            if i % 2 == 0:  # the paper's (4, 2, 2, 2) among them, as the quantizers store it
                radii = radii.astype(np.float16)
            what = f"{bits} radii {radii.dtype}"
            want = ref.polar_values(packed, radii, cents, bits, d)
            mixed = list(packed)
            mixed[0] = mixed[0].copy()
            mixed[0].flags.writeable = False
            if levels > 1:
                mixed[1] = np.asfortranarray(mixed[1])
            got = ops.polar_score(q, mixed, radii, cents, bits, d)
            _assert_scores(got, ref.polar_score(q, packed, radii, cents, bits, d), q, want, what)
            _assert_values(ops.polar_values(mixed, radii, cents, bits, d), want, what)


@pytest.mark.parametrize("name", [_param("numba")])
def test_numba_float16_radii_decoded_exactly(name):
    """float16 radii reach the Numba kernels as their bits and are decoded there
    (``kernels._load_radii``): all 65,536 float16 bit patterns (signed zeros, subnormals,
    normal numbers, Inf, NaN) must give NumPy's own float16 cast, which is exact.  A 1-level
    tree of dim 2 with every angle code on the centroid 0 reconstructs ``(r cos 0, r sin 0)``,
    so the first coordinate is the decoded radius itself, in float32 and in float64."""
    ops = get_backend(name)
    radii = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)[:, None]
    codes = [np.zeros((radii.shape[0], 1), dtype=np.uint8)]
    for dtype in (np.float32, np.float64):
        cents = [np.array([0.0, 1.0], dtype=dtype)]
        with np.errstate(invalid="ignore"):  # Inf * sin 0 is NaN, in both
            got = ops.polar_values(codes, radii, cents, [1], 2)
            want = ref.polar_values(codes, radii, cents, [1], 2)
        assert got.dtype == want.dtype == dtype
        np.testing.assert_array_equal(got[:, 0], radii[:, 0].astype(dtype))
        np.testing.assert_array_equal(got, want)
        assert np.array_equal(np.signbit(got[:, 0]), np.signbit(radii[:, 0]))


@pytest.mark.parametrize("name", [_param("numba")])
def test_numba_one_kernel_whatever_the_write_flags(name):
    """Read-only codes and codebooks (a loaded or memory-mapped file, a shared constant) reach
    the scalar kernels as the writable ones do: no second compiled kernel (each Numba
    signature is a cold compile of seconds), and the same results."""
    ops = get_backend(name)
    kernels = ops.kernels
    rng = np.random.default_rng(31)
    d, bits = 24, 4
    cb = coordinate_codebook(d, bits)
    packed = ref.scalar_encode(_unit_rows(rng, 9, d), np.asarray(cb.boundaries, np.float32), bits)
    cents = np.asarray(cb.centroids, dtype=np.float32)
    q = rng.standard_normal((2, d)).astype(np.float32)
    w = rng.standard_normal((2, 9)).astype(np.float32)

    def run(p, c):
        return (
            ops.scalar_values(p, c, bits, d),
            ops.scalar_score(q, p, c, bits, d),
            ops.scalar_weighted_sum(w, p, c, bits, d),
        )

    want = run(packed, cents)
    dispatchers = (
        kernels.scalar_values_kernel,
        kernels.byte_tables,
        kernels.scalar_score_kernel,
        kernels.scalar_weighted_sum_kernel,
    )
    before = [len(k.signatures) for k in dispatchers]
    frozen = [packed.copy(), cents.copy()]
    for a in frozen:
        a.flags.writeable = False
    for got, expected in zip(run(*frozen), want, strict=True):
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
    """The numba backend runs on NumPy arrays only: anything else is a TypeError that says so."""
    import array_api_strict as xs

    ops = get_backend(name)
    y = np.zeros((2, 16), dtype=np.float32)
    bnd = np.zeros(3, dtype=np.float32)
    others = [xs.asarray(y), [[0.0] * 16] * 2]
    try:
        import torch

        others.append(torch.zeros((2, 16)))
    except ImportError:  # pragma: no cover - torch is optional
        pass
    for other in others:
        with pytest.raises(TypeError, match="numba backend runs on NumPy arrays"):
            ops.scalar_encode(other, bnd, 2)
        with pytest.raises(TypeError, match="numba backend runs on NumPy arrays"):
            ops.sign_encode(other)
    with pytest.raises(TypeError, match="numba backend runs on NumPy arrays"):
        ops.scalar_encode(y, xs.asarray(bnd), 2)
    packed, cents = np.zeros((2, 4), dtype=np.uint8), np.zeros(4, dtype=np.float32)
    with pytest.raises(TypeError, match="numba backend runs on NumPy arrays"):
        ops.scalar_weighted_sum([1.0, 2.0], packed, cents, 2, 16)
    with pytest.raises(TypeError, match="numba backend runs on NumPy arrays"):
        ops.scalar_weighted_sum(xs.asarray(np.ones((1, 2))), packed, cents, 2, 16)
    with pytest.raises(TypeError, match="numba backend runs on NumPy arrays"):
        pq.TurboQuantMSE(16, 2, backend=name, norm_dtype="float32").encode(xs.asarray(y))


# -- 6. the kernel bodies as plain Python ----------------------------------------------------
def test_tiny_ops(env):
    """All nine operations on tiny inputs (few rows, dims 16 and 24): bytes identical and values
    and scores within RTOL.  Cheap enough to run with ``NUMBA_DISABLE_JIT=1``, where the Numba
    kernels execute line by line as Python."""
    rng = np.random.default_rng(99)
    for d in (16, 24, 13):
        y = _unit_rows(rng, 3, d)
        q = rng.standard_normal((2, d)).astype(np.float32)
        for bits in range(1, 9):
            cb = coordinate_codebook(d, bits)
            bnd = np.asarray(cb.boundaries, dtype=np.float32)
            cents = np.asarray(cb.centroids, dtype=np.float32)
            yb = _nudge(y, bnd)
            packed = ref.scalar_encode(yb, bnd, bits)
            np.testing.assert_array_equal(
                env.host(env.ops.scalar_encode(env.put(yb), env.put(bnd), bits)), packed
            )
            want = ref.scalar_values(packed, cents, bits, d)
            _assert_values(
                env.host(env.ops.scalar_values(env.put(packed), env.put(cents), bits, d)),
                want,
                "values",
            )
            got = env.host(
                env.ops.scalar_score(env.put(q), env.put(packed), env.put(cents), bits, d)
            )
            _assert_scores(
                got, ref.scalar_score(q, packed, cents, bits, d), q, want, f"score {bits=}"
            )
        signs = ref.sign_encode(q)
        np.testing.assert_array_equal(env.host(env.ops.sign_encode(env.put(q))), signs)
        want = ref.sign_values(signs, d, np.float64)
        _assert_values(
            env.host(env.ops.sign_values(env.put(signs), d, np.float64)), want, "sign_values"
        )
        got = env.host(env.ops.sign_score(env.put(y), env.put(signs), d))
        _assert_scores(got, ref.sign_score(y, signs, d), y, want, "sign_score")
        for dtype in (np.float32, np.float64) if d % 8 == 0 else ():
            for levels, bits in ((1, (3,)), (3, (4, 2, 5))):
                yd = y.astype(dtype)
                bnd, cents = _polar_consts(levels, bits, dtype)
                packed, radii = ref.polar_encode(yd, levels, bnd, bits)
                got, got_r = env.ops.polar_encode(
                    env.put(yd), levels, [env.put(b) for b in bnd], bits
                )
                far = _polar_far(yd, levels, bnd)
                for level, (g, w, f, b) in enumerate(zip(got, packed, far, bits, strict=True), 1):
                    _assert_codes(env.host(g), w, b, d >> level, f, f"tiny {levels=} {level=}")
                np.testing.assert_allclose(env.host(got_r), radii, rtol=1e-6)
                dev = ([env.put(p) for p in packed], env.put(radii), [env.put(c) for c in cents])
                want = ref.polar_values(packed, radii, cents, bits, d)
                _assert_values(env.host(env.ops.polar_values(*dev, bits, d)), want, "polar_values")
                qd = q.astype(dtype)
                got = env.host(env.ops.polar_score(env.put(qd), *dev, bits, d))
                _assert_scores(
                    got, ref.polar_score(qd, packed, radii, cents, bits, d), qd, want, "polar_score"
                )


def test_tiny_weighted_sums(env):
    """Both weighted sums on tiny inputs (dims 16, 24 and 13; 0, 1 and 203 rows: with 64 chunks,
    four-row blocks and leftover rows), float32 and float64: within RTOL, one-hot exact.  Cheap
    enough to run with ``NUMBA_DISABLE_JIT=1``."""
    rng = np.random.default_rng(98)
    for d in (16, 24, 13):
        for dtype in (np.float32, np.float64):
            configs = [(1, (3,)), (3, (4, 2, 5))] if d % 8 == 0 else []
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
    out = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"{len(TINY)} passed" in out.stdout, out.stdout[-3000:]


# -- 7. the three ways of choosing a backend ------------------------------------------------------
def test_backend_selection_paths(env, monkeypatch):
    """``POLARQUANT_BACKEND``, ``use_backend`` and ``backend=`` select the same kernels: identical codes."""
    rng = np.random.default_rng(21)
    x = env.put(rng.standard_normal((64, 64)).astype(np.float32))
    for make in (
        lambda **kw: pq.TurboQuantMSE(64, 4, **kw),
        lambda **kw: pq.QJL(64, 128, **kw),
        lambda **kw: pq.PolarQuant(64, **kw),
    ):
        explicit = make(backend=env.name).encode(x).to_numpy()
        with pq.use_backend(env.name):
            assert get_backend().NAME == env.name
            ctx = make().encode(x).to_numpy()
        monkeypatch.setenv("POLARQUANT_BACKEND", env.name)
        assert get_backend().NAME == env.name
        from_env = make().encode(x).to_numpy()
        monkeypatch.delenv("POLARQUANT_BACKEND")
        for k, v in explicit.fields.items():
            np.testing.assert_array_equal(ctx.fields[k], v)
            np.testing.assert_array_equal(from_env.fields[k], v)


def test_every_backend_module_provides_every_operation():
    """The registry's OPERATIONS list is the contract: each backend module defines all of them,
    and says whether its scores decode rows (``SCORES_FROM_CODES``, read by the quantizers)."""
    import importlib

    from polarquant.backends import OPERATIONS

    for name in ("numpy_backend", "numba_backend", "cupy_backend"):
        if name == "numba_backend":
            pytest.importorskip("numba")
        module = importlib.import_module(f"polarquant.backends.{name}")
        missing = [op for op in OPERATIONS if not callable(getattr(module, op, None))]
        assert not missing, (name, missing)
        assert set(module.__all__) == {"NAME", "SCORES_FROM_CODES", *OPERATIONS}
        assert isinstance(module.SCORES_FROM_CODES, bool)
