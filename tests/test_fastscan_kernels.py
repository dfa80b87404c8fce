"""The Numba fast-scan kernels (issue 13): bit for bit against the NumPy reference on every
instruction-set variant this machine can run, a variant choice that cannot reach an instruction
the compilation target lacks (``NUMBA_CPU_NAME=generic`` included), and a vector index whose fast
scan returns the plain scan's results on real data."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from polarquant.backends import available
from polarquant.backends import numpy_backend as ref

import polarquant as pq
from polarquant import fastscan
from polarquant.packing import pack_codes

pytestmark = [
    pytest.mark.backend_independent,
    pytest.mark.skipif(available()["numba"] is not None, reason="numba is not installed"),
]

if available()["numba"] is None:
    from polarquant.backends import numba_backend as nb
    from polarquant.backends.numba_backend import _simd
    from polarquant.backends.numba_backend import fastscan as nbfs

    RUNNABLE = [name for name, why in _simd.available().items() if why is None]
else:  # pragma: no cover - the module is skipped
    RUNNABLE = []

#: (bits, codes per vector): the issue's dimensions at 4 bits (d = 1536: 6 groups of 128
#: bytes, past the uint16 limit), and 2-bit, sign and widened 3-bit codes.
CASES = [(4, 50), (4, 64), (4, 128), (4, 300), (4, 384), (4, 1536), (2, 128), (1, 256), (3, 100)]


def _case(bits, count, n, nq, seed=0):
    rng = np.random.default_rng(seed + 31 * count + bits)
    plan = fastscan.FastScanPlan(bits, count)
    packed = pack_codes(rng.integers(0, 1 << bits, (n, count)), bits)
    tq = rng.integers(0, 256, (nq, plan.nibbles, 16)).astype(np.uint8)
    tq[0] = 255  # the largest sums: every group at its uint16 limit
    return plan, tq, fastscan.to_blocks(plan, packed), rng


@pytest.mark.parametrize("variant", RUNNABLE)
@pytest.mark.parametrize(("bits", "count"), CASES)
def test_sums_bit_for_bit(variant, bits, count):
    """Each variant's uint32 sums equal the reference's exactly, for 6 queries (a group of four
    sharing each load of the codes, then two alone) and a last block only partly filled; a
    table of 255s reaches the largest sum of each 128-byte group (65,280 < 2**16)."""
    plan, tq, blocks, _ = _case(bits, count, 100, 6)
    out = np.zeros((6, 100), np.uint32)
    nbfs.sums_kernel(variant)(nbfs.register_tables(tq), blocks, 100, nbfs._groups(plan), out)
    np.testing.assert_array_equal(out, ref.fastscan_sums(plan, tq, blocks, 100))


@pytest.mark.parametrize("variant", RUNNABLE)
@pytest.mark.parametrize(("bits", "count"), [(4, 128), (1, 256), (3, 100)])
def test_top_keys_bit_for_bit(variant, bits, count, monkeypatch):
    """``fastscan_topk`` on each variant: the same float32 keys as the reference, largest first,
    each at a position whose reference key it is (among equal keys either may be kept); with
    the per-vector term and removed vectors (``-inf``), which are never candidates."""
    monkeypatch.setenv(_simd.VARIANT_ENV, variant)
    n = 3000
    plan, tq, blocks, rng = _case(bits, count, n, 5)
    scale = rng.uniform(0.5, 2.0, n).astype(np.float32)
    shift = (rng.standard_normal(n) * 10).astype(np.float32)
    shift[::5] = -np.inf
    bias = rng.standard_normal(5) * 100
    weight = np.array([1.0, 0.5, 2.0, 1.0, 0.25])
    for extra in ((), (shift, weight)):
        keys = fastscan.scan_keys(
            fastscan.scan_sums(plan, tq, blocks, n), bias, scale, *[np.asarray(e) for e in extra]
        )
        for c in (1, 64, n):
            want_keys, want_pos = ref.fastscan_topk(plan, tq, blocks, n, c, bias, scale, *extra)
            got_keys, got_pos = nb.fastscan_topk(plan, tq, blocks, n, c, bias, scale, *extra)
            np.testing.assert_array_equal(got_keys, want_keys)
            live = got_pos >= 0
            np.testing.assert_array_equal(live, want_pos >= 0)
            rows = np.nonzero(live)[0]
            np.testing.assert_array_equal(keys[rows, got_pos[live]], got_keys[live])
            for q in range(5):
                chosen = got_pos[q][live[q]]
                assert len(np.unique(chosen)) == len(chosen)


# -- choosing the variant ------------------------------------------------------------------------
def test_the_chosen_variant_is_runnable_and_forcing_is_checked(monkeypatch):
    """The default is the first runnable variant of the preference; ``POLARQUANT_FASTSCAN``
    forces a runnable one, and a misspelt or unrunnable one is a ``ValueError`` (not an abort
    inside LLVM)."""
    _simd._chosen.cache_clear()
    assert _simd.variant() == next(v for v in _simd.PREFERENCE if v in RUNNABLE)
    monkeypatch.setenv(_simd.VARIANT_ENV, "scalar")
    assert _simd.variant() == "scalar"
    monkeypatch.setenv(_simd.VARIANT_ENV, "sse9")
    with pytest.raises(ValueError, match="not a fast-scan variant"):
        _simd.variant()
    monkeypatch.setattr(_simd, "target_features", lambda: frozenset({"sse2"}))
    _simd._chosen.cache_clear()
    for forced in ("avx2", "avx512bw"):
        monkeypatch.setenv(_simd.VARIANT_ENV, forced)
        with pytest.raises(ValueError, match=r"lacks the CPU features \+avx"):
            _simd.variant()
    _simd._chosen.cache_clear()


@pytest.mark.parametrize(
    "features",
    [
        set(),
        {"sse2", "ssse3"},
        {"ssse3", "avx2"},
        {"avx512bw"},  # without avx512f: not enough for the 512-bit shuffle
        {"ssse3", "avx2", "avx512f", "avx512bw"},
    ],
)
@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_no_target_can_reach_an_instruction_it_lacks(features, arch, monkeypatch):
    """For any feature set and architecture, every variant called runnable has its features
    there (the x86 shuffles need their AVX features and an x86 target; the 16-byte form SSSE3
    or AArch64; scalar nothing), and the choice is one of them."""
    monkeypatch.setattr(_simd, "target_features", lambda: frozenset(features))
    monkeypatch.setattr(_simd, "_arch", lambda: arch)
    monkeypatch.delenv(_simd.VARIANT_ENV, raising=False)
    _simd._chosen.cache_clear()
    try:
        can = _simd.available()
        chosen = _simd.variant()
    finally:
        _simd._chosen.cache_clear()
    assert can[chosen] is None and can["scalar"] is None
    x86 = arch == "x86_64"
    assert (can["avx2"] is None) == (x86 and "avx2" in features)
    assert (can["avx512bw"] is None) == (x86 and {"avx512f", "avx512bw"} <= features)
    assert (can["shuffle16"] is None) == (not x86 or "ssse3" in features)


def test_generic_cpu_target_runs_the_scalar_variant():
    """Under ``NUMBA_CPU_NAME=generic`` (no CPU features) the scalar variant is chosen and the
    kernels run and agree with the reference; forcing AVX2 there is a ValueError, not a crash
    inside LLVM (a separate process: Numba reads the target once)."""
    code = textwrap.dedent(
        """
        import numpy as np
        from polarquant import fastscan
        from polarquant.backends import numpy_backend as ref, numba_backend as nb
        from polarquant.backends.numba_backend import _simd
        from polarquant.packing import pack_codes
        rng = np.random.default_rng(0)
        plan = fastscan.FastScanPlan(4, 64)
        blocks = fastscan.to_blocks(plan, pack_codes(rng.integers(0, 16, (70, 64)), 4))
        tq = rng.integers(0, 256, (2, plan.nibbles, 16)).astype(np.uint8)
        assert np.array_equal(nb.fastscan_sums(plan, tq, blocks, 70),
                              ref.fastscan_sums(plan, tq, blocks, 70))
        print(_simd.variant())
        """
    )
    env = {**os.environ, "NUMBA_CPU_NAME": "generic"}
    env.pop(_simd.VARIANT_ENV, None)
    env.pop("NUMBA_CPU_FEATURES", None)
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["scalar"]
    env[_simd.VARIANT_ENV] = "avx2"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 1 and "ValueError" in run.stderr and "+avx2" in run.stderr


# -- the index ------------------------------------------------------------------------------------
def _corpora():
    """The shipped MiniLM embeddings (d = 384) and, if installed (the ``search-eval`` extra),
    30,032 GloVe 6B 50d vectors (unit, distinct: ``polarquant search-eval``'s loader)."""
    minilm = pq.datasets.load_minilm_embeddings()["embeddings"].astype(np.float32)
    out = [("minilm-384", minilm[:32], minilm[32:])]
    from polarquant.search.evaluation.data import load_dataset

    try:
        glove, _ = load_dataset("glove")
    except ImportError:  # DatasetNotInstalled: the optional data package is missing
        return out
    glove = glove[np.random.default_rng(7).permutation(len(glove))[:30_032]]
    out.append(("glove-50", glove[:32], glove[32:]))
    return out


@pytest.mark.parametrize(
    "method",
    ["mse-4", "mse-3", "mse-2", "qjl-256"],
)
def test_fast_scan_search_equals_the_plain_scan_on_real_data(method):
    """On real embeddings, with vectors of unequal norms, three metrics and removals, the fast
    scan's certified results are the plain scan's: the same ids (ties aside: none here) and
    scores equal to float32 rounding (the exact values are summed in another order)."""
    for name, queries, base in _corpora():
        d = base.shape[1]
        rng = np.random.default_rng(d)
        base = base * rng.uniform(0.25, 4.0, (len(base), 1)).astype(np.float32)
        if method.startswith("qjl"):
            quantizer = pq.QJL(d, 256, seed=3, backend="numba")
        else:
            quantizer = pq.TurboQuantMSE(d, int(method[-1]), seed=3, backend="numba")
        for metric in ("ip", "cosine", "l2"):
            fast = pq.VectorIndex(quantizer, metric, fast_scan=True)
            plain = pq.VectorIndex(quantizer, metric, fast_scan=False)
            for index in (fast, plain):
                index.add(base[: len(base) // 2])
                index.add(base[len(base) // 2 :])  # two segments
                index.remove(np.arange(0, len(base), 9))
            for k in (1, 10):
                got_scores, got_ids = fast.search(queries, k)
                want_scores, want_ids = plain.search(queries, k)
                np.testing.assert_array_equal(got_ids, want_ids, err_msg=f"{name} {metric} {k}")
                np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_fast_scan_view_is_counted_and_follows_removals(metric):
    """The block layout a search builds is held, so ``nbytes`` counts it; a removal marks its
    vectors in the view's keys (no rebuild: the same blocks), and the next search no longer
    returns them, with the plain scan's results."""
    x = pq.datasets.load_minilm_embeddings()["embeddings"].astype(np.float32)
    index = pq.VectorIndex(
        pq.TurboQuantMSE(384, 4, seed=1, backend="numba"), metric, fast_scan=True
    )
    plain = pq.VectorIndex(index.quantizer, metric, fast_scan=False)
    index.add(x)
    plain.add(x)
    before = index.nbytes
    _, ids = index.search(x[:3], 1)
    assert ids[:, 0].tolist() == [0, 1, 2]
    view = index._segments[0].view
    auto = pq.VectorIndex(index.quantizer, metric)  # "auto": too few vectors to pay
    auto.add(x)
    auto.search(x[:3], 1)
    assert auto._segments[0].view is None
    with pytest.raises(ValueError, match="fast_scan must be 'auto', True or False"):
        pq.VectorIndex(index.quantizer, metric, fast_scan="yes")
    assert view is not None and index.nbytes == before + view.nbytes()
    assert view.nbytes() >= fastscan.FastScanPlan(4, 384).nbytes * len(x)
    blocks = view.blocks
    index.remove([1, 2])
    plain.remove([1, 2])
    assert index._segments[0].view is view and view.blocks is blocks
    got, want = index.search(x[:4], 5), plain.search(x[:4], 5)
    assert not np.isin(got[1], [1, 2]).any()
    np.testing.assert_array_equal(got[1], want[1])


def test_a_key_that_is_not_finite_is_no_candidate():
    """An infinite scale gives a key of +inf (or NaN with a zero weight): no backend keeps it
    (the reference's rule), so the kernels and the reference return the same candidates."""
    plan, tq, blocks, rng = _case(4, 16, 40, 2)
    scale = np.ones(40, np.float32)
    scale[5] = np.inf
    bias = np.zeros(2)
    for extra in ((), (np.zeros(40, np.float32), np.ones(2))):
        want = ref.fastscan_topk(plan, tq, blocks, 40, 3, bias, scale, *extra)
        got = nb.fastscan_topk(plan, tq, blocks, 40, 3, bias, scale, *extra)
        assert 5 not in want[1] and 5 not in got[1]
        np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("variant", RUNNABLE)
def test_keys_that_overflow_to_inf_are_no_candidates(variant, monkeypatch):
    """Finite scales whose keys overflow float32 (3e38 x 1.5) are +inf: no candidate on any
    variant, as in the reference.  Before, a group of queries sharing one SIMD mask let another
    query's lanes in without the finiteness check (positions 0, 1, 2 at +inf)."""
    monkeypatch.setenv(_simd.VARIANT_ENV, variant)
    plan = fastscan.FastScanPlan(4, 16)
    blocks = fastscan.to_blocks(plan, np.zeros((32, 8), np.uint8))
    tq = np.zeros((2, 16, 16), np.uint8)
    bias = np.array([2.0, 0.5], np.float32)
    scale = np.full(32, 3e38, np.float32)
    with np.errstate(over="ignore"):  # the reference computes the overflowing keys
        want = ref.fastscan_topk(plan, tq, blocks, 32, 3, bias, scale)
    got = nb.fastscan_topk(plan, tq, blocks, 32, 3, bias, scale)
    assert want[1][0].tolist() == [-1, -1, -1]
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("variant", RUNNABLE)
def test_strided_arguments_give_the_reference_results(variant, monkeypatch):
    """The kernels read raw memory at flat offsets: Fortran-ordered blocks and strided scales
    (valid arrays of the right shapes) are copied to C order first.  Before, they were read as
    if contiguous: other sums, other top keys, silently."""
    monkeypatch.setenv(_simd.VARIANT_ENV, variant)
    plan, tq, blocks, rng = _case(4, 16, 64, 3)
    fortran = np.asfortranarray(blocks)
    assert not fortran.flags.c_contiguous
    np.testing.assert_array_equal(
        nb.fastscan_sums(plan, tq, fortran, 64), ref.fastscan_sums(plan, tq, blocks, 64)
    )
    scale = rng.uniform(0.5, 2.0, 128).astype(np.float32)[::2]
    bias = np.zeros(tq.shape[0])
    got = nb.fastscan_topk(plan, tq, fortran, 64, 5, bias, scale)
    want = ref.fastscan_topk(plan, tq, blocks, 64, 5, bias, np.ascontiguousarray(scale))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def _count_scans(monkeypatch):
    """How many times the numba backend's fastscan_topk runs (one per segment and round)."""
    calls = []
    real = nb.fastscan_topk

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(nb, "fastscan_topk", counted)
    return calls


def _both(quantizer, metric, base):
    fast = pq.VectorIndex(quantizer, metric, fast_scan=True)
    plain = pq.VectorIndex(quantizer, metric, fast_scan=False)
    fast.add(base)
    plain.add(base)
    return fast, plain


def test_keys_beyond_float32_go_to_the_plain_scan():
    """Regression (review): under "l2" a tiny query's key weight 1/(2 delta) times a huge norm
    overflowed float32 to -inf, the vectors went missing and a wrong answer was certified.
    Such queries (and norms) are now answered by the plain scan: the same results."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 50)).astype(np.float32)
    x[:3] *= 1e18
    q = rng.standard_normal((2, 50)).astype(np.float32)
    quantizer = pq.TurboQuantMSE(50, 4, seed=1, backend="numba", norm_dtype="float32")
    fast, plain = _both(quantizer, "l2", x)
    for queries in (q, q * np.float32(1e-36), q.astype(np.float64) * 1e-300):
        got, want = fast.search(queries, 300), plain.search(queries, 300)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5)


def test_an_outlier_norm_is_a_candidate_not_a_rescan(monkeypatch):
    """Regression (review): one vector of a 1000x larger norm widened every query's bound until
    the whole corpus was gathered (15 GB at 100,000 vectors).  Ranking by each vector's upper
    bound makes it a candidate instead: one scan per query block, the plain scan's results."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20_000, 64)).astype(np.float32)
    x[123] *= 1000
    fast, plain = _both(pq.TurboQuantMSE(64, 4, seed=2, backend="numba"), "ip", x)
    queries = rng.standard_normal((16, 64)).astype(np.float32)
    calls = _count_scans(monkeypatch)
    got, want = fast.search(queries, 10), plain.search(queries, 10)
    assert len(calls) == 1
    np.testing.assert_array_equal(got[1], want[1])


def test_exact_ties_beyond_the_candidates_fall_back_in_bounded_rounds(monkeypatch):
    """Eight distinct vectors repeated 2,500 times: every key ties with thousands, no certificate
    holds, and after ``ROUNDS`` scans the plain scan answers (memory bounded), with its ids
    (ties by order of addition)."""
    from polarquant.search import scanner

    rng = np.random.default_rng(2)
    x = np.tile(rng.standard_normal((8, 32)).astype(np.float32), (2500, 1))
    fast, plain = _both(pq.TurboQuantMSE(32, 4, seed=3, backend="numba"), "ip", x)
    queries = rng.standard_normal((4, 32)).astype(np.float32)
    calls = _count_scans(monkeypatch)
    got, want = fast.search(queries, 10), plain.search(queries, 10)
    assert len(calls) <= scanner.ROUNDS
    np.testing.assert_array_equal(got[1], want[1])
