"""The fast-scan reference (:mod:`polarquant.fastscan`): the block layout round-trips bit for bit
at 1, 2, 3 and 4 bits, the nibble tables sum to the scores from the codes, the integer sums are
exact, and the approximate scores stay within the stated bound of the scores from the codes (on
random data and on the shipped MiniLM embeddings, d = 384, past the ``uint16`` limit of 128
bytes per group)."""

from __future__ import annotations

import numpy as np
import pytest

import polarquant as pq
from polarquant import fastscan
from polarquant.packing import pack_codes, unpack_codes

#: Chooses its backends explicitly (or uses none): CI's Numba pass leaves it out (conftest.py).
pytestmark = pytest.mark.backend_independent

BITS = (1, 2, 3, 4)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("n", [1, 31, 32, 33, 100])
@pytest.mark.parametrize("d", [7, 8, 50, 128])
def test_blocks_round_trip_bit_for_bit(bits, n, d):
    """``from_blocks(to_blocks(p))`` is ``p``; at 1, 2, 4 bits ``blocks[b, j, v] = p[32 b + v,
    j]`` (3-bit codes: the same with the codes widened to 4 bits); the bytes past the packed
    row and the padding rows of the last block are zero; the view's bytes are even."""
    rng = np.random.default_rng(n * 1000 + d + bits)
    codes = rng.integers(0, 1 << bits, (n, d))
    packed = pack_codes(codes, bits)
    plan = fastscan.FastScanPlan(bits, d)
    blocks = fastscan.to_blocks(plan, packed)
    assert blocks.shape == (-(-n // 32), plan.nbytes, 32) and blocks.dtype == np.uint8
    assert plan.nbytes % 2 == 0 and plan.nibbles == 2 * plan.nbytes
    np.testing.assert_array_equal(fastscan.from_blocks(plan, blocks, n), packed)
    view = pack_codes(codes, 4) if bits == 3 else packed
    for i in range(n):
        np.testing.assert_array_equal(blocks[i // 32, : view.shape[1], i % 32], view[i])
    rows = blocks.transpose(0, 2, 1).reshape(-1, plan.nbytes)
    assert not rows[n:].any() and not rows[:, view.shape[1] :].any()


def test_view_bytes_per_vector():
    """The bytes of the view per vector: the canonical bytes at 1, 2, 4 bits (rounded up to
    even); 3-bit codes widened to 4 bits, ``4/3`` the canonical bytes."""
    assert fastscan.FastScanPlan(4, 128).nbytes == 64
    assert fastscan.FastScanPlan(2, 128).nbytes == 32
    assert fastscan.FastScanPlan(1, 256).nbytes == 32
    assert fastscan.FastScanPlan(3, 128).nbytes == 64  # packed: 48
    assert fastscan.FastScanPlan(3, 128).packed_nbytes == 48
    assert fastscan.FastScanPlan(4, 50).nbytes == 26  # 25 bytes, one pad byte
    assert fastscan.FastScanPlan(4, 1536).groups == tuple((a, a + 128) for a in range(0, 768, 128))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("d", [7, 64, 300])
def test_nibble_tables_sum_to_the_scores_from_the_codes(bits, d):
    """``sum_g T[q, g, h_g(i)]`` over a vector's nibbles equals ``sum_j y_j mu[c_j]`` (float64,
    to rounding): the tables hold the codebook exactly, whatever the number of codes per
    nibble, and pad coordinates add nothing."""
    rng = np.random.default_rng(d + 10 * bits)
    codes = rng.integers(0, 1 << bits, (70, d))
    centroids = np.sort(rng.standard_normal(1 << bits))
    y = rng.standard_normal((3, d))
    plan = fastscan.FastScanPlan(bits, d)
    tables = fastscan.nibble_tables(plan, y, centroids)
    blocks = fastscan.to_blocks(plan, pack_codes(codes, bits))
    rows = blocks.transpose(0, 2, 1).reshape(-1, plan.nbytes)[:70]
    nibbles = np.stack([rows >> 4, rows & 15], axis=2).reshape(70, -1)
    got = np.array([[t[np.arange(plan.nibbles), h].sum() for h in nibbles] for t in tables])
    np.testing.assert_allclose(got, y @ centroids[codes].T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("d", [7, 64, 300])
def test_sums_are_the_exact_integer_sums(bits, d):
    """``scan_sums`` equals the per-vector sum of the byte-table entries of its nibbles (a naive
    loop over the canonical codes); ``n`` cuts the padding rows."""
    rng = np.random.default_rng(d + bits)
    plan = fastscan.FastScanPlan(bits, d)
    codes = rng.integers(0, 1 << bits, (70, d))
    tq = rng.integers(0, 256, (3, plan.nibbles, 16)).astype(np.uint8)
    got = fastscan.scan_sums(plan, tq, fastscan.to_blocks(plan, pack_codes(codes, bits)), n=70)
    view = pack_codes(codes, 4) if bits == 3 else pack_codes(codes, bits)
    nibbles = np.zeros((70, plan.nibbles), np.intp)
    nibbles[:, : 2 * view.shape[1]] = np.stack([view >> 4, view & 15], axis=2).reshape(70, -1)
    want = np.array(
        [[tq[q, np.arange(plan.nibbles), nibbles[i]].sum() for i in range(70)] for q in range(3)]
    )
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.uint32


def _exact_sums(quantizer, queries, codes, field):
    """``sum_j y_j mu[c_j]`` in float64: the score from the codes before norm and constant."""
    plan = quantizer.plan
    count = plan.n if hasattr(plan, "n") else plan.m
    y = np.asarray(quantizer.prepare_queries(queries), dtype=np.float64)
    c = unpack_codes(codes.fields[field], plan.bits, count)
    return y @ plan.centroids[c].T, y, fastscan.FastScanPlan(plan.bits, count)


@pytest.mark.parametrize(
    "data, method",
    [
        ("gaussian-128", "mse4"),
        ("minilm-384", "mse4"),
        ("minilm-384", "mse3"),
        ("minilm-384", "mse2"),
        ("minilm-384", "qjl"),
    ],
)
def test_approximate_scores_within_the_bound(data, method):
    """``delta S + offset`` differs from the exact sum of the float table entries by at most
    ``G delta / 2`` over ``G`` nibbles (each entry rounded by at most ``delta / 2``), and by
    about the rounding noise ``delta sqrt(G / 12)`` in RMS (the entries' rounding errors are
    nearly uniform and independent: within a factor of two of it here); the norm-scaled
    approximate scores rank the true top-1 (from the codes) within the first ten candidates."""
    rng = np.random.default_rng(5)
    if data == "minilm-384":
        x = pq.datasets.load_minilm_embeddings()["embeddings"].astype(np.float32)
        queries, x = x[:16], x[16:]
    else:
        x = rng.standard_normal((2000, 128)).astype(np.float32)
        queries = rng.standard_normal((16, 128)).astype(np.float32)
    d = x.shape[1]
    if method == "qjl":
        quantizer, field = pq.QJL(d, 256, seed=2, backend="numpy"), "signs"
    else:
        quantizer, field = pq.TurboQuantMSE(d, int(method[-1]), seed=2, backend="numpy"), "codes"
    codes = quantizer.encode(x)
    exact, y, plan = _exact_sums(quantizer, queries, codes, field)
    tables = fastscan.nibble_tables(plan, y, quantizer.plan.centroids)
    tq, delta, offset = fastscan.quantize_tables(tables)
    blocks = fastscan.to_blocks(plan, codes.fields[field])
    sums = fastscan.scan_sums(plan, tq, blocks, n=len(x))
    approx = fastscan.approximate_scores(sums, delta, offset)
    err = np.abs(approx - exact)
    assert np.all(err <= fastscan.error_bound(delta, plan.nibbles)[:, None] * (1 + 1e-9))
    used = -(-plan.count // plan.per_nibble)  # nibbles holding codes (the rest are exact zeros)
    rms = np.sqrt((err**2).mean(axis=1))
    noise = delta * np.sqrt(used / 12)
    assert np.all((rms > noise / 2) & (rms < 2 * noise)), (rms, noise)
    norms = codes.fields["norms"].astype(np.float64)
    best = np.argmax(exact * norms, axis=1)
    candidates = np.argsort(-(approx * norms), axis=1)[:, :10]
    assert all(best[i] in candidates[i] for i in range(len(queries)))


def test_keys_and_candidates():
    """``scan_keys`` is ``scale (S + bias) + weight shift`` in float32; ``top_candidates``
    orders by key, equal keys by position, and never returns a key of -inf or NaN (position
    -1 instead)."""
    sums = np.array([[3, 1, 3, 0, 2]], np.uint32)
    scale = np.array([1, 2, 1, 1, 1], np.float32)
    keys = fastscan.scan_keys(sums, np.array([0.5]), scale)
    np.testing.assert_array_equal(keys, [[3.5, 3.0, 3.5, 0.5, 2.5]])
    shift = np.array([0, 0, -np.inf, 0, np.nan], np.float32)
    keys = fastscan.scan_keys(sums, np.array([0.5]), scale, shift, np.array([1.0]))
    top, pos = fastscan.top_candidates(keys, 4)
    np.testing.assert_array_equal(pos, [[0, 1, 3, -1]])
    np.testing.assert_array_equal(top, [[3.5, 3.0, 0.5, -np.inf]])
    top, pos = fastscan.top_candidates(np.array([[1.0, 2.0, 2.0, 1.0]], np.float32), 3)
    np.testing.assert_array_equal(pos, [[1, 2, 0]])


def test_bad_input_is_refused():
    plan = fastscan.FastScanPlan(4, 8)
    with pytest.raises(ValueError, match="fast scan takes codes of"):
        fastscan.FastScanPlan(5, 8)
    with pytest.raises(ValueError, match="count"):
        fastscan.FastScanPlan(4, 0)
    with pytest.raises(ValueError, match=r"packed codes must be uint8 \(n, 4\)"):
        fastscan.to_blocks(plan, np.zeros((3, 4), np.int32))
    with pytest.raises(ValueError, match="do not fill"):
        fastscan.from_blocks(plan, np.zeros((1, 4, 32), np.uint8), 33)
    with pytest.raises(ValueError, match="NaN or Inf"):
        fastscan.quantize_tables(np.full((1, 2, 16), np.nan))
    with pytest.raises(ValueError, match=r"byte tables must be uint8 \(nq, 8, 16\)"):
        fastscan.scan_sums(plan, np.zeros((1, 5, 16), np.uint8), np.zeros((1, 4, 32), np.uint8))
    with pytest.raises(ValueError, match="fast-scan blocks must be uint8"):
        fastscan.scan_sums(plan, np.zeros((1, 8, 16), np.uint8), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="do not fill"):
        fastscan.scan_sums(
            plan, np.zeros((1, 8, 16), np.uint8), np.zeros((1, 4, 32), np.uint8), n=40
        )
    with pytest.raises(ValueError, match=r"queries must be \(nq, 8\)"):
        fastscan.nibble_tables(plan, np.zeros((1, 7)), np.zeros(16))
    with pytest.raises(ValueError, match="expected 16 centroids"):
        fastscan.nibble_tables(plan, np.zeros((1, 8)), np.zeros(8))
    tq, delta, offset = fastscan.quantize_tables(np.zeros((1, 3, 16)))
    assert delta[0] == 1.0 and not tq.any() and offset[0] == 0.0
