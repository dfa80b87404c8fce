"""Baseline KV codecs (KIVI, Hadamard + RTN, FP8): hard error bounds, scoring from codes, layouts."""

import math

import numpy as np
import pytest

from polarquant.kv import baselines
from polarquant.kv.baselines import FP8, HadamardRTN, KIVIKeys, KIVIValues, e4m3_values
from polarquant.packing import unpack_codes

HEAD_DIMS = (64, 80, 96, 128, 256)

CODECS = {
    "kivi-keys-2": lambda d: KIVIKeys(d, 2),
    "kivi-keys-4-gs16": lambda d: KIVIKeys(d, 4, group_size=16),
    "kivi-values-2": lambda d: KIVIValues(d, 2),
    "kivi-values-3": lambda d: KIVIValues(d, 3),
    "hadamard-rtn-4": lambda d: HadamardRTN(d, 4, seed=3),
    "hadamard-rtn-3": lambda d: HadamardRTN(d, 3, seed=1),
    "fp8": lambda d: FP8(d),
    "fp8-token": lambda d: FP8(d, scaling="token"),
}


def _keys(rng, h, t, d):
    """Gaussian tokens with a few large channels (the outlier channels of real key caches)."""
    x = rng.standard_normal((h, t, d)).astype(np.float32)
    x[:, :, : max(1, d // 16)] *= 10.0
    return x


def _float32_tolerance(a, b):
    """Tolerance of two float32 evaluations of ``a @ b``: 1e-5 of ``|a| @ |b|``.

    Each product sums at most a few hundred terms; float32 rounding moves each
    partial sum by at most 6e-8 of the magnitudes involved, so the two paths
    (from codes, via decode) differ by far less than 1e-5 of ``|a| @ |b|``.
    """
    return 1e-5 * (np.abs(a) @ np.abs(b)) + 1e-6


@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("name", sorted(CODECS))
def test_scores_and_sums_from_codes_equal_the_decoded_products(name, d):
    """score = q . decode, weighted_sum = p @ decode; layout = fields; bits = 8 bytes / (T d).

    Every head dim of real models works, including 80 and 96 (Hadamard padding
    to 128, KIVI's ragged last value group at 80).
    """
    rng = np.random.default_rng(d)
    codec = CODECS[name](d)
    h, t, nq = 2, 64, 3
    x = _keys(rng, h, t, d)
    fields = codec.encode(x)
    layout = codec.field_layout()
    assert set(fields) == set(layout)
    for key, (shape, dtype, per) in layout.items():
        assert fields[key].shape == (h, t // per, *shape) and fields[key].dtype == dtype
    nbytes = sum(a.nbytes for a in fields.values())
    assert codec.bits_per_coordinate == pytest.approx(8 * nbytes / (h * t * d), rel=1e-12)

    x_hat = codec.decode(fields)
    assert x_hat.shape == x.shape and x_hat.dtype == np.float32
    if hasattr(codec, "score"):
        q = rng.standard_normal((h, nq, d)).astype(np.float32)
        ref = q @ x_hat.transpose(0, 2, 1)
        s = codec.score(codec.prepare(q), fields)
        assert s.shape == (h, nq, t) and s.dtype == np.float32
        assert np.all(np.abs(s - ref) <= _float32_tolerance(q, x_hat.transpose(0, 2, 1)))
    if hasattr(codec, "weighted_sum"):
        p = rng.random((h, nq, t)).astype(np.float32)
        p /= p.sum(-1, keepdims=True)
        out = codec.weighted_sum(p, fields)
        assert out.shape == (h, nq, d) and out.dtype == np.float32
        assert np.all(np.abs(out - p @ x_hat) <= _float32_tolerance(p, x_hat))


@pytest.mark.parametrize("name", sorted(CODECS))
def test_chunked_paths_equal_one_chunk(name, monkeypatch):
    """Scoring and summing stream over tokens; tiny chunks (groups kept whole) give the same numbers."""
    rng = np.random.default_rng(5)
    codec = CODECS[name](128)
    x = _keys(rng, 2, 128, 128)
    fields = codec.encode(x)
    x_hat = codec.decode(fields)
    q = rng.standard_normal((2, 3, 128)).astype(np.float32)
    p = rng.random((2, 3, 128)).astype(np.float32)
    has_score, has_sum = hasattr(codec, "score"), hasattr(codec, "weighted_sum")
    s = codec.score(codec.prepare(q), fields) if has_score else None
    w = codec.weighted_sum(p, fields) if has_sum else None
    monkeypatch.setattr(baselines, "CHUNK_ELEMENTS", 3000)  # one token group per chunk
    assert len(baselines.spans(128, 2 * 160, align=16)) == 8
    if has_score:
        tol = 2 * _float32_tolerance(q, x_hat.transpose(0, 2, 1))
        assert np.all(np.abs(codec.score(codec.prepare(q), fields) - s) <= tol)
    if has_sum:
        assert np.all(np.abs(codec.weighted_sum(p, fields) - w) <= 2 * _float32_tolerance(p, x_hat))


# -- hard error bounds of uniform quantization ---------------------------------------------------------
def _slack(*magnitudes):
    """Float32 rounding of ``m + s * code`` and of the comparison: a few ulps of the magnitudes."""
    return 4 * np.finfo(np.float32).eps * sum(np.abs(m) for m in magnitudes)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("d", [64, 80, 128])
def test_kivi_error_is_at_most_half_a_step(bits, d):
    """|x - x_hat| <= s/2 for every coordinate (KIVI keys and values), a hard bound.

    Round-to-nearest on a uniform grid of step ``s`` errs by at most ``s/2``
    when every input lies in the grid's range; minima are rounded down and
    scales up to float16, so the range always covers the group.  Only float32
    rounding (a few ulps) is allowed on top.  More bits give a smaller error.
    """
    rng = np.random.default_rng(bits * 1000 + d)
    x = _keys(rng, 3, 64, d)

    keys = KIVIKeys(d, bits)
    f = keys.encode(x)
    s = np.repeat(
        f["scale"].astype(np.float32), 32, axis=1
    )  # (H, T, d): the scale of each coordinate
    m = np.repeat(f["min"].astype(np.float32), 32, axis=1)
    err = np.abs(x - keys.decode(f))
    assert np.all(err <= s / 2 + _slack(x, m, s * (2**bits - 1)))
    assert np.all(s >= 0)

    values = KIVIValues(d, bits)
    f = values.encode(x)
    groups = np.minimum(np.arange(d) // 32, values.n_groups - 1)
    s = f["scale"].astype(np.float32)[:, :, groups]
    m = f["min"].astype(np.float32)[:, :, groups]
    err_v = np.abs(x - values.decode(f))
    assert np.all(err_v <= s / 2 + _slack(x, m, s * (2**bits - 1)))
    if bits > 1:
        assert (
            err.mean()
            < np.abs(x - KIVIKeys(d, bits - 1).decode(KIVIKeys(d, bits - 1).encode(x))).mean()
        )


def test_kivi_constant_and_zero_groups_are_exact():
    """A constant channel (keys) or constant token group (values) has scale 0 and is stored exactly."""
    x = np.zeros((1, 32, 64), dtype=np.float32)
    x[:, :, 0] = 1.5
    x[:, :, 1] = np.linspace(-3, 5, 32)
    x_hat = KIVIKeys(64, 2).decode(KIVIKeys(64, 2).encode(x))
    assert np.all(x_hat[:, :, 0] == 1.5) and np.all(x_hat[:, :, 2:] == 0)
    x_hat = KIVIValues(64, 2).decode(KIVIValues(64, 2).encode(x))
    assert np.all(x_hat[:, :, 32:] == 0)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("d", [64, 96, 128])
def test_hadamard_rtn_error_is_at_most_half_a_step(bits, d):
    """In the rotated domain |y - y_hat| <= s/2 per coordinate; in the input space
    ||x - x_hat||^2 <= sum_j (s_j/2)^2 (the inverse rotation is orthogonal on the padded space
    and dropping the padding cannot increase a norm)."""
    rng = np.random.default_rng(7 * bits + d)
    codec = HadamardRTN(d, bits, seed=11)
    x = _keys(rng, 2, 40, d)
    f = codec.encode(x)
    y = codec.rotation.apply(x.reshape(-1, d)).reshape(2, 40, codec.out_dim)
    codes = unpack_codes(f["codes"], bits, codec.out_dim).astype(np.float32) - codec.qmax
    assert codes.min() >= -codec.qmax and codes.max() <= codec.qmax  # symmetric grid
    s = np.repeat(f["scales"].astype(np.float32), 32, axis=2)
    y_hat = codes * s
    assert np.all(np.abs(y - y_hat) <= s / 2 + _slack(y, y_hat))
    err2 = np.sum((x - codec.decode(f)) ** 2, axis=-1)
    assert np.all(err2 <= np.sum(s**2 / 4, axis=-1) * (1 + 1e-4) + 1e-10)


def test_hadamard_rtn_spreads_an_outlier_channel():
    """One huge channel ruins a per-token grid; after the rotation the error stays small.

    Without rotation the per-group absmax would be the spike and every other
    coordinate of its group would round to 0.  With it the energy is spread
    over 128 coordinates, so the relative error is close to that of Gaussian
    input at 4 bits (well under 1%).
    """
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 256, 128)).astype(np.float32)
    x[:, :, 5] = 100.0
    codec = HadamardRTN(128, 4)
    rel = np.sum((x - codec.decode(codec.encode(x))) ** 2, -1) / np.sum(x**2, -1)
    assert rel.mean() < 0.01


# -- FP8 e4m3 -------------------------------------------------------------------------------------------
def _naive_e4m3(v: float) -> int:
    """Slow oracle: the byte of the nearest finite e4m3 value, ties to the even byte."""
    table = e4m3_values()
    best = None
    for byte in range(256):
        c = float(table[byte])
        if math.isnan(c) or (math.copysign(1.0, c) != math.copysign(1.0, v) and c != 0):
            continue
        if c == 0 and (byte >= 128) != (math.copysign(1.0, v) < 0):
            continue  # zero keeps the sign of v
        key = (abs(v - c), byte % 2)
        if best is None or key < best[0]:
            best = (key, byte)
    return best[1]


def test_e4m3_known_values():
    """Spot values of the OCP e4m3fn table (sign, 4-bit exponent with bias 7, 3-bit mantissa)."""
    table = e4m3_values()
    assert table[0x38] == 1.0 and table[0x7E] == 448.0 and table[0x01] == 2.0**-9
    assert (
        table[0x08] == 2.0**-6 and table[0x07] == 0.875 * 2.0**-6
    )  # smallest normal, largest subnormal
    assert table[0xC0] == -2.0 and table[0x77] == 240.0
    assert np.isnan(table[0x7F]) and np.isnan(table[0xFF])  # no infinity in the FN variant
    assert np.all(np.diff(table[:127]) > 0)  # bytes 0x00..0x7E are the magnitudes in order
    got = FP8.to_e4m3(np.array([1.0, 448.0, 2.0**-9, -2.0, 0.0, -0.0, 240.0], np.float32))
    assert got.tolist() == [0x38, 0x7E, 0x01, 0xC0, 0x00, 0x80, 0x77]


def test_e4m3_every_value_round_trips_exactly():
    """All 254 non-NaN bytes (including -0.0) encode back to themselves."""
    table = e4m3_values()
    finite = np.array([b for b in range(256) if not np.isnan(table[b])])
    assert finite.size == 254
    np.testing.assert_array_equal(FP8.to_e4m3(table[finite]), finite)
    codec = FP8(2)
    x = table[finite].reshape(1, -1, 2)
    np.testing.assert_array_equal(codec.decode(codec.encode(x)), x)


def test_e4m3_rounding_matches_the_oracle_and_ties_go_to_even():
    """Nearest value with ties to even, against a brute-force oracle on random values and every midpoint."""
    table = e4m3_values()
    assert FP8.to_e4m3(np.float32(1.0625)) == 0x38  # tie between 1.0 (0x38) and 1.125: even
    assert FP8.to_e4m3(np.float32(1.1875)) == 0x3A  # tie between 1.125 and 1.25 (0x3A): even
    assert FP8.to_e4m3(np.float32(2.0**-10)) == 0x00  # half the smallest subnormal: to zero
    assert FP8.to_e4m3(np.float32(3 * 2.0**-10)) == 0x02
    assert FP8.to_e4m3(np.float32(-(2.0**-11))) == 0x80  # flushes to -0
    rng = np.random.default_rng(0)
    mags = table[:127].astype(np.float64)
    mids = (mags[:-1] + mags[1:]) / 2
    rand = np.exp(rng.uniform(np.log(2.0**-12), np.log(448.0), 600))
    v = np.concatenate([mids, rand, -mids[::7], -rand[:100]]).astype(np.float32)
    expected = [_naive_e4m3(float(a)) for a in v]
    np.testing.assert_array_equal(FP8.to_e4m3(v), expected)


def test_e4m3_matches_ml_dtypes_when_available():
    """Optional oracle (not a dependency): ml_dtypes' float8_e4m3fn table and casts, midpoints included."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    table = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    np.testing.assert_array_equal(e4m3_values(), table)
    rng = np.random.default_rng(1)
    v = (rng.standard_normal(4000) * rng.choice([1e-3, 1, 30], 4000)).astype(np.float32)
    mags = table[:127].astype(np.float64)
    mids = ((mags[:-1] + mags[1:]) / 2).astype(np.float32)
    v = np.concatenate([np.clip(v, -448, 448), mids, -mids])
    np.testing.assert_array_equal(FP8.to_e4m3(v), v.astype(ml_dtypes.float8_e4m3fn).view(np.uint8))


def test_fp8_range():
    """Without a scale, |x| > 448 is refused naming the limit; with per-token scales any range works.

    Relative error of a normal e4m3 number is at most half a mantissa step,
    2**-4; below the normal range the absolute error is at most 2**-10 (in
    units of the token scale).
    """
    x = np.ones((1, 1, 64), np.float32)
    x[0, 0, 3] = 448.5
    with pytest.raises(ValueError, match="448"):
        FP8(64).encode(x)
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((2, 16, 64)) * 3000).astype(np.float32)
    codec = FP8(64, scaling="token")
    f = codec.encode(x)
    s = f["scales"].astype(np.float32)[..., None]
    assert np.all(np.abs(x / s) <= 448 * (1 + 1e-6))
    err = np.abs(x - codec.decode(f))
    assert np.all(err <= 2.0**-4 * np.abs(x) + s * 2.0**-10 + _slack(x))


# -- layouts, configuration, validation -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("codec", "bits"),
    [
        (KIVIKeys(128, 2), 3.0),
        (KIVIKeys(128, 3), 4.0),
        (KIVIKeys(128, 4), 5.0),
        (KIVIKeys(64, 2), 3.0),
        (KIVIValues(128, 2), 3.0),
        (KIVIValues(64, 4), 5.0),
        (KIVIValues(80, 2), 3.2),
        (HadamardRTN(128, 2), 2.5),
        (HadamardRTN(128, 3), 3.5),
        (HadamardRTN(128, 4), 4.5),
        (HadamardRTN(64, 4), 4.5),
        (HadamardRTN(96, 4), 6.0),
        (FP8(128), 8.0),
        (FP8(128, scaling="token"), 8.125),
        (FP8(64, scaling="token"), 8.25),
    ],
    ids=repr,
)
def test_documented_bits_per_coordinate(codec, bits):
    """The numbers quoted in the docstrings: codes + float16 scales/minima, per group."""
    assert codec.bits_per_coordinate == pytest.approx(bits, rel=1e-12)
    # state outside the fields: only the Hadamard signs' seed
    assert codec.state_nbytes(8) == (8 if isinstance(codec, HadamardRTN) else 0)


@pytest.mark.parametrize("name", sorted(CODECS))
def test_config_round_trip(name):
    codec = CODECS[name](96)
    rebuilt = type(codec).from_config(codec.config())
    assert rebuilt.config() == codec.config()
    x = _keys(np.random.default_rng(0), 1, 32, 96)
    for k, v in codec.encode(x).items():
        np.testing.assert_array_equal(rebuilt.encode(x)[k], v)


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="bits must be in"):
        KIVIKeys(128, 0)
    with pytest.raises(ValueError, match="bits must be in"):
        KIVIValues(128, 9)
    with pytest.raises(TypeError, match="bits"):
        KIVIKeys(128, 2.5)
    with pytest.raises(ValueError, match=r"bits must be in \[2, 8\]"):
        HadamardRTN(128, 1)
    with pytest.raises(ValueError, match="bits must be 8"):
        FP8(128, 4)
    with pytest.raises(ValueError, match="scaling"):
        FP8(128, scaling="block")
    with pytest.raises(ValueError, match="does not divide the rotated dimension 128"):
        HadamardRTN(96, 4, group_size=24)
    with pytest.raises(ValueError, match="exceeds head_dim"):
        KIVIValues(64, 2, group_size=65)
    with pytest.raises(ValueError, match="group_size"):
        KIVIKeys(64, 2, group_size=0)
    with pytest.raises(ValueError, match="head_dim"):
        KIVIKeys(1, 2)
    with pytest.raises(ValueError, match="unknown backend"):
        FP8(64, backend="fortran")

    codec = KIVIKeys(64, 2)
    x = np.zeros((1, 33, 64), np.float32)
    with pytest.raises(ValueError, match="33 tokens, not a multiple of 32"):
        codec.encode(x)
    with pytest.raises(ValueError, match="shape"):
        codec.encode(np.zeros((1, 32, 63), np.float32))
    with pytest.raises(ValueError, match="shape"):
        codec.encode(np.zeros((32, 64), np.float32))
    with pytest.raises(TypeError, match="floating"):
        codec.encode(np.zeros((1, 32, 64), np.int32))
    with pytest.raises(TypeError, match="NumPy array"):
        codec.encode([[0.0] * 64])
    bad = np.zeros((1, 32, 64), np.float32)
    bad[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        codec.encode(bad)
    with pytest.raises(ValueError, match="float16 range"):
        codec.encode(np.full((1, 32, 64), 1e5, np.float32))
    f = KIVIValues(64, 2).encode(np.zeros((2, 4, 64), np.float32))
    with pytest.raises(ValueError, match=r"p must have shape \(2, nq, 4\)"):
        KIVIValues(64, 2).weighted_sum(np.zeros((2, 1, 5), np.float32), f)
    with pytest.raises(ValueError, match="q must have shape"):
        HadamardRTN(64, 4).prepare(np.zeros((2, 1, 32), np.float32))


@pytest.mark.parametrize("name", sorted(CODECS))
def test_zero_tokens(name):
    """An empty block encodes to empty fields, and empty fields score and sum to empty/zero arrays."""
    codec = CODECS[name](64)
    fields = codec.encode(np.zeros((2, 0, 64), np.float32))
    assert codec.decode(fields).shape == (2, 0, 64)
    if hasattr(codec, "score"):
        assert codec.score(codec.prepare(np.ones((2, 3, 64), np.float32)), fields).shape == (
            2,
            3,
            0,
        )
    if hasattr(codec, "weighted_sum"):
        out = codec.weighted_sum(np.ones((2, 3, 0), np.float32), fields)
        assert out.shape == (2, 3, 64) and not out.any()
