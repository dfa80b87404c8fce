"""Outlier channels: QJL's per-group split (QJL Sec. 4) and TurboQuant's channel split (Sec. 4.3)."""

import math

import numpy as np
import pytest

from polarquant import QJL, TurboQuantMSE
from polarquant.codebooks import coordinate_codebook
from polarquant.kv.outliers import ChannelSplitTurboQuant, QJLOutlierKeys
from polarquant.qjl import gaussian_sketch

HEAD_DIMS = (64, 80, 96, 128, 256)


def _tolerance(a, b):
    """Two float32 evaluations of ``a @ b`` (a few hundred terms) agree to 1e-5 of ``|a| @ |b|``."""
    return 1e-5 * (np.abs(a) @ np.abs(b)) + 1e-6


def _planted(rng, h, t, d, channels, factor=8.0):
    """Gaussian keys whose ``channels[h][g]`` are ``factor`` times larger in token group ``g``."""
    x = rng.standard_normal((h, t, d)).astype(np.float32)
    for s in range(h):
        for g, chans in enumerate(channels[s]):
            x[s, 32 * g : 32 * (g + 1), chans] *= factor
    return x


def _check_layout(codec, fields, h, t):
    layout = codec.field_layout()
    assert set(fields) == set(layout)
    for key, (shape, dtype, per) in layout.items():
        assert fields[key].shape == (h, t // per, *shape) and fields[key].dtype == dtype
    nbytes = sum(a.nbytes for a in fields.values())
    assert codec.bits_per_coordinate == pytest.approx(8 * nbytes / (h * t * codec.head_dim))


# -- QJL with outlier channels ----------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 4])
def test_no_outliers_is_plain_qjl(bits):
    """outliers=0: the same seed gives QJL's bytes and QJL's scores (same sketch, same norms)."""
    rng = np.random.default_rng(bits)
    d, h, t = 128, 2, 64
    x = rng.standard_normal((h, t, d)).astype(np.float32)
    q = rng.standard_normal((h, 3, d)).astype(np.float32)
    codec = QJLOutlierKeys(d, bits, seed=7, outliers=0)
    fields = codec.encode(x)
    scores = codec.score(codec.prepare(q), fields)
    ref = QJL(d, bits * d, seed=7)
    assert codec.bits_per_coordinate == ref.bits_per_coordinate
    for s in range(h):
        codes = ref.encode(x[s])
        np.testing.assert_array_equal(fields["signs"][s], codes.fields["signs"])
        np.testing.assert_array_equal(fields["norms"][s], codes.fields["norms"])
        expected = ref.score(q[s], codes)
        assert np.all(np.abs(scores[s] - expected) <= _tolerance(q[s], np.abs(ref.decode(codes)).T))


def test_outlier_selection_picks_the_planted_channels():
    """Per stream and per 32-token group, the 8 channels made 8x larger are the stored outliers."""
    rng = np.random.default_rng(0)
    d, h, groups = 128, 2, 3
    planted = [[np.sort(rng.choice(d, 8, replace=False)) for _ in range(groups)] for _ in range(h)]
    x = _planted(rng, h, 32 * groups, d, planted)
    fields = QJLOutlierKeys(128, 2).encode(x)
    assert fields["outlier_idx"].dtype == np.uint8 and fields["outlier_idx"].shape == (h, groups, 8)
    np.testing.assert_array_equal(fields["outlier_idx"], np.array(planted))


def test_outlier_sketch_is_the_first_rows_of_the_inlier_sketch():
    """As in the official code, the outlier sketch S_out is the first m_out rows of S (one projection)."""
    codec = QJLOutlierKeys(64, 3, seed=4, outlier_proj_dim=48)
    assert codec.sketch.matrix.shape == (192, 64)
    np.testing.assert_array_equal(codec.outlier_sketch.matrix, codec.sketch.matrix[:48])
    np.testing.assert_array_equal(codec.sketch.matrix, gaussian_sketch(192, 64, 4))


@pytest.mark.parametrize("query", ["split", "full"])
@pytest.mark.parametrize("d", HEAD_DIMS)
def test_qjl_outlier_score_equals_q_dot_decode(d, query):
    """score = q . decode for both query modes (decode keeps each part on its channels in split mode)."""
    rng = np.random.default_rng(d)
    h, t = 2, 64
    codec = QJLOutlierKeys(d, 2, seed=1, query=query)
    x = rng.standard_normal((h, t, d)).astype(np.float32)
    x[:, :, :3] *= 10
    fields = codec.encode(x)
    _check_layout(codec, fields, h, t)
    q = rng.standard_normal((h, 3, d)).astype(np.float32)
    x_hat = codec.decode(fields)
    s = codec.score(codec.prepare(q), fields)
    assert s.shape == (h, 3, t) and s.dtype == np.float32
    assert np.all(
        np.abs(s - q @ x_hat.transpose(0, 2, 1)) <= _tolerance(q, np.abs(x_hat).transpose(0, 2, 1))
    )


def test_qjl_outlier_unbiased_over_sketches_and_split_has_lower_variance():
    """Mean over 1500 sketch seeds within a 4.5-sigma interval of <q, k_t> for all 32 tokens, both modes.

    Each term is a QJL estimator, unbiased for any query (Lemma 3.2); the
    outlier choice depends on the data only, not on the sketch, so the sum is
    unbiased over seeds.  Keys are correlated with the query (true scores far
    from 0, so a multiplicative bias would show) and have two planted outlier
    channels 8x larger.  4.5 sigma over 64 checks: a false alarm has
    probability < 5e-4.  The split query (the official kernel) multiplies the
    outlier norm by the query's outlier energy only, the full query by all of
    it: with 4 of 32 channels its variance is several times lower (measured
    ~10x; we require 2x).
    """
    rng = np.random.default_rng(3)
    d, t, n = 32, 32, 1500
    q = rng.standard_normal((1, 1, d)).astype(np.float32)
    k = (0.5 * q + rng.standard_normal((1, t, d))).astype(np.float32)
    k[:, :, [3, 17]] *= 8
    truth = (q @ k.transpose(0, 2, 1))[0, 0].astype(np.float64)
    variances = {}
    for query in ("split", "full"):
        est = np.empty((n, t))
        for seed in range(n):
            codec = QJLOutlierKeys(d, 2, seed=seed, outliers=4, query=query, norm_dtype="float32")
            est[seed] = codec.score(codec.prepare(q), codec.encode(k))[0, 0]
        sem = est.std(axis=0, ddof=1) / math.sqrt(n)
        assert np.all(np.abs(est.mean(axis=0) - truth) < 4.5 * sem)
        assert np.median(4.5 * sem / np.abs(truth)) < 0.1  # tight enough to see a 10% bias
        variances[query] = est.var(axis=0, ddof=1).mean()
    assert variances["split"] < 0.5 * variances["full"]


@pytest.mark.parametrize(
    ("d", "bits", "expected"),
    [
        (
            128,
            2,
            418 / 128,
        ),  # 256 + 128 sign bits, 2 x 16 norm bits, 8 indices x 8 bits / 32 tokens
        (128, 3, 546 / 128),
        (128, 4, 674 / 128),
        (64, 2, 225 / 64),  # 128 + 64 + 32 + 4 x 8 / 32
        (64, 3, 289 / 64),
        (64, 4, 353 / 64),
    ],
)
def test_qjl_outlier_bits_per_coordinate(d, bits, expected):
    assert QJLOutlierKeys(d, bits).bits_per_coordinate == pytest.approx(expected, rel=1e-12)


def test_qjl_outlier_bad_input():
    with pytest.raises(ValueError, match="positive"):
        QJLOutlierKeys(128, 0)
    with pytest.raises(ValueError, match="outliers must be <= 127"):
        QJLOutlierKeys(128, 2, outliers=128)
    with pytest.raises(ValueError, match="outliers must be >= 0"):
        QJLOutlierKeys(128, 2, outliers=-1)
    with pytest.raises(ValueError, match="outlier_proj_dim"):
        QJLOutlierKeys(128, 2, outlier_proj_dim=0)
    with pytest.raises(ValueError, match="query"):
        QJLOutlierKeys(128, 2, query="half")
    with pytest.raises(ValueError, match="group_size"):
        QJLOutlierKeys(128, 2, group_size=0)
    with pytest.raises(ValueError, match="40 tokens, not a multiple of 32"):
        QJLOutlierKeys(128, 2).encode(np.zeros((1, 40, 128), np.float32))


# -- TurboQuant channel split ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bits", "variant", "expected"),
    [
        (2.5, "mse", 2.5),
        (3.5, "mse", 3.5),
        (2.5, "prod", 2.75),
        (3.5, "prod", 3.75),
        (3, "mse", 3.25),
    ],
)
def test_fractional_bits_count_every_stored_bit(bits, variant, expected):
    """32/128 channels: (3, 2) stores 3*32 + 2*96 code bits + two float16 norms = 320 bits = 2.5 per
    coordinate; (4, 3) 3.5.  prod adds sign bits and residual norms; an integer split (3, 3) 3.25."""
    codec = ChannelSplitTurboQuant(128, bits, variant=variant, calibration_tokens=8)
    assert codec.outlier_channels == 32 and codec.label == f"{bits:g}"
    assert codec.bits_per_coordinate == expected
    x = np.random.default_rng(0).standard_normal((2, 8, 128)).astype(np.float32)
    fields = codec.encode(x)
    assert 8 * sum(a.nbytes for a in fields.values()) / (2 * 8 * 128) == expected


@pytest.mark.parametrize("variant", ["mse", "prod"])
def test_sub_quantizers_use_codebooks_of_their_own_dimension(variant):
    """The released code's bug: d = 128 centroids on 32- and 96-dim sub-vectors.  Here each
    sub-quantizer's codebook is the Lloyd-Max codebook of its own sub-dimension (Lemma 1)."""
    codec = ChannelSplitTurboQuant(128, 3.5, variant=variant)
    extra = 0 if variant == "mse" else 1  # prod spends one bit on the QJL residual
    out, reg = codec.outlier_quantizer, codec.regular_quantizer
    assert (out.dim, reg.dim) == (32, 96)
    assert out.codebook == coordinate_codebook(32, 4 - extra)
    assert reg.codebook == coordinate_codebook(96, 3 - extra)
    assert out.codebook != coordinate_codebook(128, 4 - extra)
    assert out.seed != reg.seed  # independent quantizers


def test_split_mse_lies_between_the_2_and_3_bit_quantizers():
    """(3, 2) at 32/128 on Gaussian data: D between TurboQuantMSE at 3 bits and at 2 bits, and within
    5% of the prediction share_O * D(32, 3) + share_R * D(96, 2) from the two codebooks.

    2048 vectors: the per-vector distortion's relative spread (~30% at d = 32)
    averages to under 1%, so 5% is a comfortable but informative margin.
    """
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 512, 128)).astype(np.float32)
    codec = ChannelSplitTurboQuant(128, 2.5, seed=2)
    d_split = np.sum((x - codec.decode(codec.encode(x))) ** 2) / np.sum(x**2)

    def mse(bits):
        tq = TurboQuantMSE(128, bits, seed=2)
        return np.sum((x - tq.decode(tq.encode(x))) ** 2) / np.sum(x**2)

    assert mse(3) < d_split < mse(2)
    x_out = np.take_along_axis(x, codec.channels.astype(np.intp)[:, None, :], axis=2)
    share = np.sum(x_out**2) / np.sum(x**2)
    predicted = (
        share * codec.outlier_quantizer.expected_mse
        + (1 - share) * codec.regular_quantizer.expected_mse
    )
    assert d_split == pytest.approx(predicted, rel=0.05)


def test_channels_are_chosen_once_from_the_first_block():
    """Largest-RMS channels of the first block, per stream; later blocks never change them, so
    stored tokens are never re-quantized; the choice is counted in state_nbytes."""
    rng = np.random.default_rng(4)
    d, h = 64, 3
    planted = [np.sort(rng.choice(d, 16, replace=False)) for _ in range(h)]
    first = _planted(rng, h, 32, d, [[p] for p in planted], factor=5.0)
    codec = ChannelSplitTurboQuant(d, 2.5, seed=1)
    f1 = codec.encode(first)
    np.testing.assert_array_equal(codec.channels, np.array(planted))
    assert codec.channels.dtype == np.uint8
    before = codec.decode(f1)
    second = _planted(rng, h, 32, d, [[np.arange(16)] for _ in range(h)], factor=20.0)
    f2 = codec.encode(second)
    np.testing.assert_array_equal(codec.channels, np.array(planted))
    both = {k: np.concatenate([f1[k], f2[k]], axis=1) for k in f1}
    np.testing.assert_array_equal(codec.decode(both)[:, :32], before)
    assert codec.state_nbytes(h) == 8 + h * 16
    with pytest.raises(ValueError, match="chose its channels for 3 streams; got 2"):
        codec.encode(first[:2])


@pytest.mark.parametrize("variant", ["mse", "prod"])
@pytest.mark.parametrize("d", HEAD_DIMS)
def test_split_scores_and_sums_from_codes(d, variant):
    """Per stream: score = q . decode and weighted_sum = p @ decode; layout = fields; any head_dim."""
    rng = np.random.default_rng(d + 1)
    h, t, nq = 2, 24, 3
    codec = ChannelSplitTurboQuant(d, 3.5, variant=variant, seed=5, calibration_tokens=t)
    x = rng.standard_normal((h, t, d)).astype(np.float32)
    x[:, :, 1::7] *= 6
    q = rng.standard_normal((h, nq, d)).astype(np.float32)
    state = codec.prepare(q)  # before any channel is chosen: resolved at scoring time
    fields = codec.encode(x)
    _check_layout(codec, fields, h, t)
    x_hat = codec.decode(fields)
    ref = q @ x_hat.transpose(0, 2, 1)
    tol = _tolerance(q, np.abs(x_hat).transpose(0, 2, 1))
    assert np.all(np.abs(codec.score(state, fields) - ref) <= tol)
    assert np.all(np.abs(codec.score(codec.prepare(q), fields) - ref) <= tol)
    p = rng.random((h, nq, t)).astype(np.float32)
    out = codec.weighted_sum(p, fields)
    assert out.shape == (h, nq, d) and out.dtype == np.float32
    assert np.all(np.abs(out - p @ x_hat) <= _tolerance(p, np.abs(x_hat)))


def test_prod_split_is_unbiased_over_seeds():
    """variant="prod": the sum of two unbiased TurboQuant_prod estimates (Theorem 2) is unbiased;
    800 seeds, 8 tokens, 4.5-sigma interval (false alarm < 1e-4)."""
    rng = np.random.default_rng(0)
    d, n = 16, 800
    x = rng.standard_normal((1, 8, d)).astype(np.float32)
    x[:, :, [2, 9]] *= 5
    q = (0.8 * x[:, :1] + 0.6 * rng.standard_normal((1, 1, d))).astype(np.float32)
    truth = (q @ x.transpose(0, 2, 1))[0, 0].astype(np.float64)
    est = np.empty((n, 8))
    for seed in range(n):
        codec = ChannelSplitTurboQuant(
            d,
            2.5,
            variant="prod",
            seed=seed,
            outlier_channels=4,
            norm_dtype="float32",
            calibration_tokens=8,
        )
        est[seed] = codec.score(codec.prepare(q), codec.encode(x))[0, 0]
    sem = est.std(axis=0, ddof=1) / math.sqrt(n)
    assert np.all(np.abs(est.mean(axis=0) - truth) < 4.5 * sem)


def test_channel_split_bad_input():
    with pytest.raises(ValueError, match="half-integer"):
        ChannelSplitTurboQuant(128, 2.25)
    with pytest.raises(ValueError, match=r"bits must be in \[1, 8\]"):
        ChannelSplitTurboQuant(128, 8.5)
    with pytest.raises(ValueError, match=r"bits must be in \[1, 8\]"):
        ChannelSplitTurboQuant(128, 0.5)
    with pytest.raises(ValueError, match="outlier_channels must be >= 2"):
        ChannelSplitTurboQuant(128, 2.5, outlier_channels=1)
    with pytest.raises(ValueError, match="outlier_channels must be <= 126"):
        ChannelSplitTurboQuant(128, 2.5, outlier_channels=127)
    with pytest.raises(ValueError, match="variant"):
        ChannelSplitTurboQuant(128, 2.5, variant="fast")
    with pytest.raises(ValueError, match="no channels chosen yet"):
        ChannelSplitTurboQuant(64, 2.5).decode(
            {
                "outlier_codes": np.zeros((1, 1, 6), np.uint8),
                "outlier_norms": np.zeros((1, 1), np.float16),
            }
        )
    with pytest.raises(TypeError, match="floating"):
        ChannelSplitTurboQuant(64, 2.5).encode(np.zeros((1, 4, 64), np.int64))


@pytest.mark.parametrize(
    "codec",
    [QJLOutlierKeys(64, 2), QJLOutlierKeys(64, 2, outliers=0), ChannelSplitTurboQuant(64, 2.5)],
    ids=repr,
)
def test_zero_tokens(codec):
    """An empty block stores nothing (and chooses no channels); empty fields give empty scores."""
    fields = codec.encode(np.zeros((2, 0, 64), np.float32))
    assert codec.decode(fields).shape == (2, 0, 64)
    assert codec.score(codec.prepare(np.ones((2, 3, 64), np.float32)), fields).shape == (2, 3, 0)
    if hasattr(codec, "weighted_sum"):
        assert not codec.weighted_sum(np.ones((2, 3, 0), np.float32), fields).any()
        assert codec.channels is None
