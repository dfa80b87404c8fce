"""The fast-scan reference (:mod:`polarquant.fastscan`): the block layout round-trips bit for bit,
the integer sums are exact, and the approximate scores stay within the stated bound of the
scores from the codes (on random data and on the shipped MiniLM embeddings, d = 384, past the
``uint16`` limit of 257 dimensions)."""

from __future__ import annotations

import numpy as np
import pytest

import polarquant as pq
from polarquant import fastscan
from polarquant.packing import pack_codes, unpack_codes

#: Chooses its backends explicitly (or uses none): CI's Numba pass leaves it out (conftest.py).
pytestmark = pytest.mark.backend_independent


@pytest.mark.parametrize("n", [1, 31, 32, 33, 100])
@pytest.mark.parametrize("d", [7, 8, 50, 128])
def test_blocks_round_trip_bit_for_bit(n, d):
    """``from_blocks(to_blocks(p))`` is ``p``; ``blocks[b, j, v] = p[32 b + v, j]``; the padding
    rows of the last block are zero bytes."""
    rng = np.random.default_rng(n * 1000 + d)
    packed = pack_codes(rng.integers(0, 16, (n, d)), 4)
    blocks = fastscan.to_blocks(packed)
    assert blocks.shape == (-(-n // 32), -(-d // 2), 32) and blocks.dtype == np.uint8
    np.testing.assert_array_equal(fastscan.from_blocks(blocks, n), packed)
    for i in range(n):
        np.testing.assert_array_equal(blocks[i // 32, :, i % 32], packed[i])
    assert not blocks.transpose(0, 2, 1).reshape(-1, blocks.shape[1])[n:].any()


@pytest.mark.parametrize("d", [7, 64, 300])
def test_sums_are_the_exact_integer_sums(d):
    """``scan_sums`` equals the per-vector sum of the byte-table entries of its codes (a naive
    loop), including an odd ``d`` whose pad nibble must add nothing."""
    rng = np.random.default_rng(d)
    codes = rng.integers(0, 16, (70, d))
    tq = rng.integers(0, 256, (3, d, 16)).astype(np.uint8)
    got = fastscan.scan_sums(tq, fastscan.to_blocks(pack_codes(codes, 4)), n=70)
    want = np.array([[tq[q, np.arange(d), codes[i]].sum() for i in range(70)] for q in range(3)])
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.uint32


def _exact_sums(quantizer, queries, codes):
    """``sum_j T[q, j, c_j]`` in float64: the score from the codes before the norm."""
    plan = quantizer.plan
    y = np.asarray(quantizer.prepare_queries(queries), dtype=np.float64)
    c = unpack_codes(codes.fields["codes"], plan.bits, plan.n)
    return y @ plan.centroids[c].T, y


@pytest.mark.parametrize("data", ["gaussian-128", "minilm-384"], ids=["gaussian-128", "minilm-384"])
def test_approximate_scores_within_the_bound(data):
    """``delta S + offset`` differs from the exact sum of the float table entries by at most
    ``d delta / 2`` (each entry rounded by at most ``delta / 2``), and by about the rounding
    noise ``delta sqrt(d / 12)`` in RMS (entries' rounding errors are nearly uniform and
    independent: within a factor of two of it here); the norm-scaled approximate scores rank
    the true top-1 (from the codes) within the first ten candidates."""
    rng = np.random.default_rng(5)
    if data == "minilm-384":
        x = pq.datasets.load_minilm_embeddings()["embeddings"].astype(np.float32)
        queries, x = x[:16], x[16:]
    else:
        x = rng.standard_normal((2000, 128)).astype(np.float32)
        queries = rng.standard_normal((16, 128)).astype(np.float32)
    quantizer = pq.TurboQuantMSE(x.shape[1], 4, seed=2, backend="numpy")
    codes = quantizer.encode(x)
    exact, y = _exact_sums(quantizer, queries, codes)
    tables = fastscan.code_tables(y, quantizer.plan.centroids)
    tq, delta, offset = fastscan.quantize_tables(tables)
    sums = fastscan.scan_sums(tq, fastscan.to_blocks(codes.fields["codes"]), n=len(x))
    approx = fastscan.approximate_scores(sums, delta, offset)
    err = np.abs(approx - exact)
    d = x.shape[1]
    assert np.all(err <= fastscan.error_bound(delta, d)[:, None] * (1 + 1e-9))
    rms = np.sqrt((err**2).mean(axis=1))
    noise = delta * np.sqrt(d / 12)
    assert np.all((rms > noise / 2) & (rms < 2 * noise)), (rms, noise)
    norms = codes.fields["norms"].astype(np.float64)
    best = np.argmax(exact * norms, axis=1)
    candidates = np.argsort(-(approx * norms), axis=1)[:, :10]
    assert all(best[i] in candidates[i] for i in range(len(queries)))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="2-D uint8"):
        fastscan.to_blocks(np.zeros((3, 4), np.int32))
    with pytest.raises(ValueError, match="do not fit"):
        fastscan.from_blocks(np.zeros((1, 4, 32), np.uint8), 33)
    with pytest.raises(ValueError, match="NaN or Inf"):
        fastscan.quantize_tables(np.full((1, 2, 16), np.nan))
    with pytest.raises(ValueError, match="do not match"):
        fastscan.scan_sums(np.zeros((1, 5, 16), np.uint8), np.zeros((1, 4, 32), np.uint8))
    with pytest.raises(ValueError, match="fast-scan blocks must be uint8"):
        fastscan.scan_sums(np.zeros((1, 8, 16), np.uint8), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="do not fit"):
        fastscan.scan_sums(np.zeros((1, 8, 16), np.uint8), np.zeros((1, 4, 32), np.uint8), n=40)
    tq, delta, offset = fastscan.quantize_tables(np.zeros((1, 3, 16)))
    assert delta[0] == 1.0 and not tq.any() and offset[0] == 0.0
