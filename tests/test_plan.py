"""Plans (:mod:`polarquant.plan`): what every backend operation takes first, checked once.

* **Attributes are the documented formulas**: ``nbytes = ceil(n b / 8)`` (the
  layout of :mod:`polarquant.packing`, checked against
  :func:`~polarquant.packing.packed_nbytes` and against the bytes an encoder
  actually writes), a :class:`~polarquant.plan.PolarPlan`'s ``counts = D / 2**l``,
  byte ``offsets`` (each level starting on a byte), ``radii = D / 2**L``.
* **Bad input is refused at construction with a message naming it**: what a
  backend used to check per call (too few centroids, too many boundaries, bits
  out of range, levels, ``dim`` not a multiple of ``2**L``) can no longer reach
  a kernel: a :class:`~polarquant.codebooks.Codebook` refuses malformed tables,
  and a plan refuses anything that is not one, zero levels, and rows of more
  bits than the kernels' 32-bit bit counters hold.
* **Frozen, with a cache**: assignment raises; ``constant()`` casts a codebook
  once per namespace, device and dtype and then returns the same object;
  ``derived`` builds once per key; ``trig_tables`` is exactly ``cos``/``sin``
  of the centroids cast to the dtype (what the reference computes on decoded
  angles of that dtype).
* **Every quantizer's ``.plan`` matches its ``field_layout``**, byte for byte.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import polarquant as pq
from polarquant._array import namespace, to_host
from polarquant.codebooks import Codebook, angle_codebook, coordinate_codebook
from polarquant.packing import packed_nbytes
from polarquant.plan import MAX_ROW_BITS, PolarPlan, ResidualPlan, ScalarPlan, SignPlan


def _polar(dim: int, bits) -> PolarPlan:
    return PolarPlan(dim, tuple(angle_codebook(lv, b) for lv, b in enumerate(bits, start=1)))


# -- attributes: the documented formulas ----------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 7, 13, 77, 128, 256])
def test_scalar_plan_attributes(n):
    """``bits`` is the codebook's width, ``nbytes = ceil(n b / 8)`` for every width 1..8 (the
    packed layout: ``n b`` bits MSB first, the last byte zero-padded), and the tables are the
    codebook's own read-only float64 arrays (no copy, no cast on the host)."""
    for bits in range(1, 9):
        cb = coordinate_codebook(max(n, 2), bits)
        plan = ScalarPlan(n, cb)
        assert (plan.n, plan.bits) == (n, bits)
        assert plan.nbytes == math.ceil(n * bits / 8) == packed_nbytes(n, bits)
        assert plan.codebook is cb
        assert plan.centroids is cb.centroids and plan.boundaries is cb.boundaries
        assert plan.centroids.dtype == np.float64 and not plan.centroids.flags.writeable
        assert plan.centroids.shape == (1 << bits,) and plan.boundaries.shape == ((1 << bits) - 1,)


@pytest.mark.parametrize("m", [0, 1, 7, 8, 9, 64, 255])
def test_sign_plan_attributes(m):
    """One bit per sign: ``nbytes = ceil(m / 8)``; the sign codebook is ``(-1, +1)`` (bit 0
    decodes to -1, bit 1 to +1: QJL Def. 2.1 with ``sign(0) = +1``)."""
    plan = SignPlan(m)
    assert (plan.m, plan.bits, plan.nbytes) == (m, 1, math.ceil(m / 8))
    np.testing.assert_array_equal(plan.centroids, [-1.0, 1.0])


@pytest.mark.parametrize(
    "dim, bits",
    [
        (128, (4, 2, 2, 2)),
        (16, (3,)),
        (96, (5, 7)),
        (64, (8, 1, 6)),
        (24, (3, 2, 1)),
        (32, (1,) * 5),
    ],
)
def test_polar_plan_attributes(dim, bits):
    """Level ``l`` holds ``D / 2**l`` angles of ``b_l`` bits in ``ceil(D b_l / 2**l / 8)`` bytes;
    ``offsets`` are the running sums (``L + 1`` entries from 0), ``nbytes`` the last of them,
    ``radii = D / 2**L``; ``level_slice(l)`` is ``offsets[l-1]:offsets[l]`` and refuses levels
    outside ``1..L``."""
    plan = _polar(dim, bits)
    levels = len(bits)
    counts = tuple(dim // 2**lv for lv in range(1, levels + 1))
    sizes = [math.ceil(c * b / 8) for c, b in zip(counts, bits, strict=True)]
    assert (plan.dim, plan.levels, plan.bits, plan.counts) == (dim, levels, bits, counts)
    assert plan.offsets == tuple(int(v) for v in np.concatenate([[0], np.cumsum(sizes)]))
    assert plan.nbytes == plan.offsets[-1] == sum(sizes)
    assert plan.radii == dim // 2**levels
    assert [cb.bits for cb in plan.codebooks] == list(bits)
    for level in range(1, levels + 1):
        s = plan.level_slice(level)
        assert (s.start, s.stop) == (plan.offsets[level - 1], plan.offsets[level])
        assert s.stop - s.start == packed_nbytes(counts[level - 1], bits[level - 1])
    for bad in (0, levels + 1):
        with pytest.raises(ValueError, match="level must be"):
            plan.level_slice(bad)


def test_paper_configuration_layout():
    """The paper's ``d = 128``, bits ``(4, 2, 2, 2)``: ``64*4 + 32*2 + 16*2 + 8*2 = 368`` angle
    bits = 46 bytes per row, level by level 32, 8, 4, 2 bytes, and 8 radii (module example)."""
    plan = _polar(128, (4, 2, 2, 2))
    assert plan.counts == (64, 32, 16, 8)
    assert plan.offsets == (0, 32, 40, 44, 46) and plan.nbytes == 46 and plan.radii == 8


# -- refusals -----------------------------------------------------------------------------------
def test_plans_refuse_what_is_not_a_codebook():
    """Raw arrays, dicts or lists of centroids are a TypeError naming the argument: a backend
    never meets a table that a :class:`Codebook` did not check (sorted, sizes, bits)."""
    cb = coordinate_codebook(8, 2)
    for bad in (np.asarray(cb.centroids), cb.to_dict(), list(cb.centroids), None):
        with pytest.raises(TypeError, match="codebook must be a polarquant.codebooks.Codebook"):
            ScalarPlan(8, bad)
    with pytest.raises(TypeError, match="codebooks must be a sequence of Codebook"):
        PolarPlan(8, angle_codebook(1, 2))
    with pytest.raises(TypeError, match="codebooks must be a sequence of Codebook"):
        PolarPlan(8, iter([angle_codebook(1, 2)]))
    with pytest.raises(
        TypeError, match="codebook of level 2 must be a polarquant.codebooks.Codebook, got dict"
    ):
        PolarPlan(8, (angle_codebook(1, 2), angle_codebook(2, 2).to_dict()))


def test_codebook_refuses_what_backends_used_to_check():
    """The per-call checks the backends dropped: too few centroids (an out-of-range gather,
    once an IndexError in a kernel), too many or too few boundaries (a wrong code), a width
    outside 1..8 bits (256 centroids is the most a uint8 code addresses), unsorted tables."""
    c4, t3 = np.array([-1.5, -0.5, 0.5, 1.5]), np.array([-1.0, 0.0, 1.0])

    def make(c, t):
        return Codebook(c, t, support=(-2.0, 2.0), mse=0.0)

    assert make(c4, t3).bits == 2
    for c, t, kind, msg in (
        (c4[:3], t3[:2], ValueError, "centroids must hold 2\\*\\*bits values"),
        (c4[:1], t3[:0], ValueError, "centroids must hold 2\\*\\*bits values"),
        (np.linspace(-1, 1, 512), np.linspace(-1, 1, 511), ValueError, "bits in \\[1, 8\\]"),
        (c4, np.array([-1.0, -0.5, 0.0, 1.0]), ValueError, "4 centroids need 3 boundaries, got 4"),
        (c4, t3[:2], ValueError, "4 centroids need 3 boundaries, got 2"),
        (c4[::-1], t3, ValueError, "strictly increasing"),
        (c4, t3 + 0.75, ValueError, "between centroids"),
    ):
        with pytest.raises(kind, match=msg):
            make(c, t)


def test_plans_refuse_bad_sizes():
    """Counts are non-negative integers (``check_int``'s messages echo the value); a polar tree
    needs at least one level and ``dim`` a multiple of ``2**L`` (each level halves the row)."""
    cb = coordinate_codebook(8, 2)
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        ScalarPlan(-1, cb)
    with pytest.raises(TypeError, match="n must be an integer, got 2.5"):
        ScalarPlan(2.5, cb)
    with pytest.raises(TypeError, match="n must be an integer, got True"):
        ScalarPlan(True, cb)
    with pytest.raises(ValueError, match="m must be >= 0, got -3"):
        SignPlan(-3)
    with pytest.raises(TypeError, match="m must be an integer"):
        SignPlan("8")
    books = tuple(angle_codebook(lv, 2) for lv in (1, 2, 3))
    with pytest.raises(ValueError, match="dim=12 is not divisible by 2\\*\\*levels = 8"):
        PolarPlan(12, books)
    with pytest.raises(ValueError, match="dim=20 is not divisible by 2\\*\\*levels = 8"):
        PolarPlan(20, books)
    with pytest.raises(ValueError, match="needs at least one level"):
        PolarPlan(16, ())
    with pytest.raises(ValueError, match="dim must be >= 0"):
        PolarPlan(-8, books)
    assert np.int64(16) == PolarPlan(np.int64(16), books).dim  # NumPy integers are integers
    assert type(PolarPlan(np.int64(16), books).dim) is int


def test_plans_refuse_rows_over_2_31_bits():
    """The kernels count a row's bits in 32-bit integers: a row of ``n`` codes of ``b`` bits is
    refused when ``n b > MAX_ROW_BITS = 2**31 - 8`` (``+ 7`` padding bits stay below 2**31),
    exactly at that edge, with a message saying so; a polar tree by its ``dim`` (one bit per
    coordinate) and by the angle bits of a row.  Nothing of the row's size is allocated to check this."""
    assert MAX_ROW_BITS == 2**31 - 8
    cb8 = coordinate_codebook(128, 8)
    edge = MAX_ROW_BITS // 8
    assert ScalarPlan(edge, cb8).nbytes == MAX_ROW_BITS // 8
    with pytest.raises(ValueError, match="exceed the kernels' limit of 2\\*\\*31 bits per row"):
        ScalarPlan(edge + 1, cb8)
    with pytest.raises(ValueError, match=f"n={2**31} codes of 1 bits"):
        ScalarPlan(2**31, coordinate_codebook(128, 1))
    assert SignPlan(MAX_ROW_BITS).nbytes == 2**28 - 1
    with pytest.raises(ValueError, match=f"m={MAX_ROW_BITS + 1} codes of 1 bits per row exceed"):
        SignPlan(MAX_ROW_BITS + 1)
    with pytest.raises(ValueError, match=f"dim={2**31} codes of 1 bits per row exceed"):
        PolarPlan(2**31, (angle_codebook(1, 2),))
    # a polar row holds sum_l (dim / 2**l) b_l angle bits: 4 dim at one 8-bit level
    assert PolarPlan(2**28, (angle_codebook(1, 8),)).nbytes == 2**27
    with pytest.raises(ValueError, match=f"gives {2**31} code bits per row, over the kernels"):
        PolarPlan(2**29, (angle_codebook(1, 8),))


# -- frozen, cached -----------------------------------------------------------------------------
def test_plans_are_frozen():
    """The numbers a plan was checked with cannot change afterwards: every field, computed ones
    included, refuses assignment (``FrozenInstanceError``, an ``AttributeError``)."""
    cb = coordinate_codebook(16, 3)
    polar = _polar(16, (3, 2))
    sign = SignPlan(16)
    for plan, fields in (
        (ScalarPlan(16, cb), ("n", "codebook", "bits", "nbytes")),
        (sign, ("m", "nbytes")),
        (polar, ("dim", "codebooks", "levels", "bits", "counts", "offsets", "nbytes", "radii")),
        (ResidualPlan(polar, sign), ("first", "residual")),
    ):
        for name in fields:
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(plan, name, getattr(plan, name))
    assert not ScalarPlan(16, cb).centroids.flags.writeable


def test_constant_is_cached_and_cast(xp):
    """``constant(name, like, dtype)``: the codebook's table in ``like``'s namespace, in
    ``dtype`` (default: ``like``'s compute dtype: float64 stays, anything else is float32),
    equal to the float64 table rounded once to that dtype; the second call returns the very
    same object (cast once per namespace, device and dtype); another dtype is another object."""
    cb = coordinate_codebook(16, 3)
    plan = ScalarPlan(16, cb)
    f32 = xp.asarray(np.zeros(2, np.float32))
    f64 = xp.asarray(np.zeros(2, np.float64))
    f16 = xp.asarray(np.zeros(2, np.float16)) if xp is np else f32  # no float16 in the standard
    for name in ("centroids", "boundaries"):
        host = getattr(cb, name)
        a = plan.constant(name, f32)
        assert a is plan.constant(name, f32) and a is plan.constant(name, f16)
        assert namespace(a) is namespace(f32) and a.dtype == xp.float32
        np.testing.assert_array_equal(to_host(a), host.astype(np.float32))
        b = plan.constant(name, f32, xp.float64)
        assert b is not a and b is plan.constant(name, f64) and b.dtype == xp.float64
        np.testing.assert_array_equal(to_host(b), host)
    with pytest.raises(ValueError, match="'boundaries' and 'centroids', not 'radii'"):
        plan.constant("radii", f32)

    sign = SignPlan(8)
    s = sign.constant("centroids", f64)
    assert s is sign.constant("centroids", f64) and s.dtype == xp.float64
    np.testing.assert_array_equal(to_host(s), [-1.0, 1.0])
    with pytest.raises(ValueError, match="a sign plan has 'centroids', not 'boundaries'"):
        sign.constant("boundaries", f64)

    polar = _polar(16, (3, 2))
    per_level = polar.constant("centroids", f32)
    assert len(per_level) == 2
    again = polar.constant("centroids", f32)
    for level, (a, b, book) in enumerate(zip(per_level, again, polar.codebooks, strict=True), 1):
        assert a is b and a.dtype == xp.float32, level
        np.testing.assert_array_equal(to_host(a), book.centroids.astype(np.float32))
    with pytest.raises(ValueError, match="a polar plan has 'boundaries' and 'centroids'"):
        polar.constant("radii", f32)


def test_trig_tables_are_cos_sin_of_centroids_in_dtype():
    """``trig_tables(dtype)``: ``(L, 2**max(bits))`` tables of ``cos``/``sin`` of each level's
    centroids **cast to dtype first** and computed in dtype (so a table lookup reproduces the
    reference's ``cos(psi)`` on decoded float32 angles bit for bit), zero beyond a level's
    ``2**b_l`` entries, read-only, and built once per dtype (the same objects on the next call)."""
    plan = _polar(64, (4, 2, 5))
    for dtype in (np.float32, np.float64):
        cos_t, sin_t = plan.trig_tables(dtype)
        assert cos_t.shape == sin_t.shape == (3, 32)
        assert cos_t.dtype == sin_t.dtype == dtype
        assert not cos_t.flags.writeable and not sin_t.flags.writeable
        for level, cb in enumerate(plan.codebooks):
            c = cb.centroids.astype(dtype)
            k = c.shape[0]
            np.testing.assert_array_equal(cos_t[level, :k], np.cos(c))
            np.testing.assert_array_equal(sin_t[level, :k], np.sin(c))
            assert not cos_t[level, k:].any() and not sin_t[level, k:].any()
        again = plan.trig_tables(np.dtype(dtype))
        assert again[0] is cos_t and again[1] is sin_t
    assert plan.trig_tables(np.float32)[0] is not plan.trig_tables(np.float64)[0]


def test_derived_computes_once_per_key_and_plan():
    """``derived(key, build)`` runs ``build`` at the first call with ``key`` and returns its
    result, untouched, afterwards; another key or another plan (even an equal-looking one:
    plans compare by identity) builds its own."""
    calls = []

    def build(tag):
        def make():
            calls.append(tag)
            return object()

        return make

    cb = coordinate_codebook(16, 2)
    a, b = ScalarPlan(16, cb), ScalarPlan(16, cb)
    first = a.derived(("numba", "f4"), build("a1"))
    assert a.derived(("numba", "f4"), build("a2")) is first
    other = a.derived(("numba", "f8"), build("a3"))
    assert other is not first
    assert b.derived(("numba", "f4"), build("b1")) is not first
    assert calls == ["a1", "a3", "b1"]
    assert a != b and a == a  # identity equality: a cache never leaks between plans


# -- the quantizers' plans -------------------------------------------------------------------------
def _bytes(q, name):
    (nbytes,), dtype = q.field_layout()[name]
    assert dtype == "uint8", name
    return nbytes


@pytest.mark.parametrize("dim", [32, 48, 100])
def test_quantizer_plans_match_their_field_layout(dim):
    """Each quantizer's ``.plan`` is what its encoder hands the backend: the plan's bytes per
    row are the field layout's and the bytes ``encode`` writes; its sizes are the rotated
    dimension (Hadamard pads a non-power of two), the sketch size, the polar tree's; its
    codebooks are the quantizer's.  ``TurboQuantProd`` and ``PolarQuantQJL`` expose a
    :class:`ResidualPlan` (no first stage at 1 bit: plain QJL); ``fit`` gives PolarQuant a new
    plan with the fitted codebooks."""
    x = np.random.default_rng(dim).standard_normal((3, dim)).astype(np.float32)
    for rotation in ("haar", "hadamard"):
        mse = pq.TurboQuantMSE(dim, 3, rotation=rotation)
        assert isinstance(mse.plan, ScalarPlan)
        assert mse.plan.n == mse.out_dim and mse.plan.codebook == mse.codebook
        assert mse.plan.nbytes == _bytes(mse, "codes") == packed_nbytes(mse.out_dim, 3)
        assert mse.encode(x).fields["codes"].shape == (3, mse.plan.nbytes)
        for bits in (1, 4):
            prod = pq.TurboQuantProd(dim, bits, rotation=rotation)
            plan = prod.plan
            assert isinstance(plan, ResidualPlan) and isinstance(plan.residual, SignPlan)
            assert plan.residual.m == dim and plan.residual.nbytes == _bytes(prod, "signs")
            if bits == 1:
                assert plan.first is None and "codes" not in prod.field_layout()
            else:
                assert plan.first.bits == bits - 1 and plan.first.n == prod.out_dim
                assert plan.first.nbytes == _bytes(prod, "codes")
            fields = prod.encode(x).fields
            assert fields["signs"].shape == (3, plan.residual.nbytes)
    qjl = pq.QJL(dim, 2 * dim + 3)
    assert isinstance(qjl.plan, SignPlan) and qjl.plan.m == 2 * dim + 3
    assert qjl.plan.nbytes == _bytes(qjl, "signs") == math.ceil((2 * dim + 3) / 8)
    if dim % 16 == 0:
        polar = pq.PolarQuant(dim, 4, (4, 2, 2, 2))
        plan = polar.plan
        assert isinstance(plan, PolarPlan) and plan.dim == polar.out_dim
        assert list(plan.codebooks) == list(polar.codebooks)
        assert plan.nbytes == _bytes(polar, "angles")
        assert polar.field_layout()["radii"] == ((plan.radii,), "float16")
        fields = polar.encode(x).fields
        assert fields["angles"].shape == (3, plan.nbytes)
        assert fields["radii"].shape == (3, dim // 16)
        pqjl = pq.PolarQuantQJL(dim, 4, (4, 2, 2, 2), proj_dim=40)
        assert pqjl.plan.first is pqjl.polar_plan and pqjl.plan.first.nbytes == _bytes(
            pqjl, "angles"
        )
        assert pqjl.plan.residual.m == 40 and pqjl.plan.residual.nbytes == _bytes(pqjl, "signs")
        fitted = pq.PolarQuant(dim, 2, (3, 2)).fit(
            np.random.default_rng(1).standard_normal((400, dim)), seed=2
        )
        assert fitted.plan.codebooks == tuple(fitted.codebooks)
        assert fitted.plan.codebooks != pq.PolarQuant(dim, 2, (3, 2)).plan.codebooks
