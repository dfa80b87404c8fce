"""The vector index (:mod:`polarquant.search`): exact top-k of the scores from the codes, every
metric, every quantizer, every backend, files, removal, bad input and bounded memory.

The reference for each search is brute force over the quantizer's own ``score``: the index
must return exactly its top k (ties by order of addition), however the corpus is split into
segments and blocks; with a refinement copy and every vector re-ranked, exactly the top k
of the true scores.
"""

from __future__ import annotations

import tracemalloc
import zipfile

import numpy as np
import pytest
from polarquant.backends import available

import polarquant as pq
from polarquant.search import index as index_module
from polarquant.search.topk import TopK

DIM = 32
QUANTIZERS = {
    "turboquant-mse": lambda backend=None: pq.TurboQuantMSE(DIM, 3, seed=4, backend=backend),
    "turboquant-prod": lambda backend=None: pq.TurboQuantProd(DIM, 3, seed=4, backend=backend),
    "qjl": lambda backend=None: pq.QJL(DIM, 64, seed=4, backend=backend),
    "polarquant": lambda backend=None: pq.PolarQuant(
        DIM, levels=3, bits=(4, 2, 2), seed=4, backend=backend
    ),
    "polarquant-qjl": lambda backend=None: pq.PolarQuantQJL(
        DIM, levels=3, bits=(4, 2, 2), seed=4, backend=backend
    ),
}


def _corpus(rng, n, d=DIM, scale=1.0):
    return (scale * rng.standard_normal((n, d))).astype(np.float32)


def _brute_force(quantizer, metric, corpus, queries, k):
    """Top k of the scores the quantizer estimates for the whole corpus, ties by position."""
    x, q = corpus.astype(np.float64), queries.astype(np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    s = quantizer.score(q.astype(np.float32), quantizer.encode(x.astype(np.float32)))
    s = s.astype(np.float64)
    if metric == "l2":
        s = (q**2).sum(1)[:, None] + (x.astype(np.float32).astype(np.float64) ** 2).sum(1) - 2 * s
        order = np.lexsort((np.broadcast_to(np.arange(len(x)), s.shape), s), axis=1)
    else:
        order = np.lexsort((np.broadcast_to(np.arange(len(x)), s.shape), -s), axis=1)
    top = order[:, :k]
    return np.take_along_axis(s, top, axis=1), top


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 64 scores and segments of 50 vectors: every search crosses many of both."""
    monkeypatch.setattr(index_module, "BLOCK_ELEMENTS", 64)
    monkeypatch.setattr(index_module, "ADD_ROWS", 50)


def test_topk_is_the_exact_top_k_with_ties_by_position():
    """Pushing blocks of any size gives the k best of all scores, equal scores ordered by
    position (small integers make ties common, also with the running k-th best that later
    blocks are filtered by; -inf marks removed vectors)."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        nq, n = int(rng.integers(1, 5)), int(rng.integers(1, 300))
        k, b = int(rng.integers(1, n + 1)), int(rng.integers(1, 64))
        s = rng.integers(0, 20, (nq, n)).astype(np.float32)
        s[rng.random((nq, n)) < 0.1] = -np.inf
        top = TopK(k)
        for a in range(0, n, b):
            top.push(s[:, a : a + b], a)
        scores, positions = top.finish()
        for i in range(nq):
            want = np.lexsort((np.arange(n), -s[i]))[:k]
            np.testing.assert_array_equal(positions[i], want)
            np.testing.assert_array_equal(scores[i], s[i, want])


@pytest.mark.parametrize("metric", pq.search.METRICS)
@pytest.mark.parametrize("method", QUANTIZERS)
def test_search_is_the_top_k_of_the_scores_from_the_codes(method, metric, small_blocks):
    """Across segments and blocks, the index returns brute force's top k over the
    quantizer's own estimates: the same ids, the same scores (float32 rounding)."""
    rng = np.random.default_rng(1)
    corpus, queries = _corpus(rng, 230), _corpus(rng, 7)
    quantizer = QUANTIZERS[method]()
    index = pq.VectorIndex(quantizer, metric)
    index.add(corpus[:120])
    index.add(corpus[120:])
    scores, ids = index.search(queries, 9)
    want_scores, want_ids = _brute_force(quantizer, metric, corpus, queries, 9)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-4)
    # ids may differ only between scores equal up to rounding
    np.testing.assert_allclose(
        np.take_along_axis(_all_scores(quantizer, metric, corpus, queries), ids, axis=1),
        want_scores,
        rtol=1e-4,
        atol=1e-4,
    )
    assert ids.dtype == np.int64 and scores.dtype == np.float32


def _all_scores(quantizer, metric, corpus, queries):
    s, order = _brute_force(quantizer, metric, corpus, queries, len(corpus))
    out = np.empty_like(s)
    np.put_along_axis(out, order, s, axis=1)
    return out


@pytest.mark.parametrize("metric", pq.search.METRICS)
def test_reranking_everything_is_exact_search(metric, small_blocks):
    """With a float32 refinement copy and every vector re-ranked, the result is the exact
    top k of the true inner products, cosines or distances."""
    rng = np.random.default_rng(2)
    corpus, queries = _corpus(rng, 200), _corpus(rng, 5)
    index = pq.VectorIndex(QUANTIZERS["turboquant-mse"](), metric, refine="float32")
    index.add(corpus)
    scores, ids = index.search(queries, 6, rerank=len(corpus))
    x, q = corpus.astype(np.float64), queries.astype(np.float64)
    if metric == "cosine":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = ((q[:, None, :] - x[None]) ** 2).sum(2) if metric == "l2" else q @ x.T
    order = np.argsort(exact if metric == "l2" else -exact, axis=1)[:, :6]
    np.testing.assert_array_equal(ids, order)
    np.testing.assert_allclose(scores, np.take_along_axis(exact, order, axis=1), rtol=1e-5)


def test_reranking_a_few_candidates_finds_near_duplicates():
    """Each query is a slightly perturbed corpus vector: 4-bit codes put it among the first
    candidates, and the exact re-ranking then puts it first (recall@1 = 1)."""
    rng = np.random.default_rng(3)
    corpus = _corpus(rng, 2000, 64)
    queries = corpus[:100] + 0.05 * _corpus(rng, 100, 64)
    index = pq.VectorIndex(pq.TurboQuantMSE(64, 4, seed=1), "l2", refine="float16")
    index.add(corpus)
    _, ids = index.search(queries, 1, rerank=10)
    np.testing.assert_array_equal(ids[:, 0], np.arange(100))


BACKENDS = [
    pytest.param(
        name, id=name, marks=() if why is None else pytest.mark.skip(reason=f"{name}: {why}")
    )
    for name, why in available().items()
    if name != "cupy"  # CuPy searches need a GPU: tests/test_cuda.py (gpu marker)
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", QUANTIZERS)
def test_backends_find_the_same_neighbours(method, backend):
    """Every backend's result is a top k of the reference backend's scores: each returned
    vector scores (by NumPy) within float rounding of NumPy's own k-th best."""
    rng = np.random.default_rng(4)
    corpus, queries = _corpus(rng, 500), _corpus(rng, 20)
    ref = pq.VectorIndex(QUANTIZERS[method]("numpy"), "ip")
    other = pq.VectorIndex(QUANTIZERS[method](backend), "ip")
    ref.add(corpus)
    other.add(corpus)
    want, _ = ref.search(queries, 10)
    got, ids = other.search(queries, 10)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    ref_scores = _all_scores(QUANTIZERS[method]("numpy"), "ip", corpus, queries)
    picked = np.take_along_axis(ref_scores, ids, axis=1)
    assert np.all(picked >= want[:, -1:] - 1e-4 * (1 + np.abs(want[:, -1:])))


def test_removed_vectors_are_never_returned_and_ids_stay_stable():
    rng = np.random.default_rng(5)
    corpus = _corpus(rng, 300)
    index = pq.VectorIndex(QUANTIZERS["turboquant-mse"](), "cosine")
    index.add(corpus[:100], ids=np.arange(1000, 1100))
    index.add(corpus[100:])  # auto ids continue after the largest: 1100, 1101, ...
    assert index.ids()[100] == 1100 and len(index) == 300
    _, first = index.search(corpus[:5], 1)
    np.testing.assert_array_equal(first[:, 0], np.arange(1000, 1005))
    index.remove(np.array([1000, 1001, 1150]))
    assert len(index) == 297
    _, ids = index.search(corpus[:5], 297)
    assert not np.isin([1000, 1001, 1150], ids).any()
    np.testing.assert_array_equal(ids[2:, 0], np.arange(1002, 1005))
    index.add(corpus[:1], ids=np.array([1000]))  # a removed id may be used again
    assert index.search(corpus[:1], 1)[1][0, 0] == 1000


def _state(index):
    scores, ids = index.search(np.ones((2, DIM), np.float32), min(3, len(index)))
    return len(index), index.nbytes, index.ids().tolist(), ids.tolist(), scores.tolist()


def test_refused_calls_change_nothing():
    """Every bad add, remove or search raises a clear error and leaves the index as it was."""
    rng = np.random.default_rng(6)
    index = pq.VectorIndex(pq.TurboQuantMSE(DIM, 3, seed=4), "cosine", refine="float16")
    index.add(_corpus(rng, 40))
    before = _state(index)
    bad_vectors = _corpus(rng, 3)
    bad_vectors[1, 2] = np.nan
    zero = _corpus(rng, 3)
    zero[2] = 0
    cases = [
        (TypeError, "must be an array", lambda: index.add([[0.0] * DIM])),
        (TypeError, "real floating", lambda: index.add(np.ones((2, DIM), np.int32))),
        (ValueError, "last dimension 31", lambda: index.add(np.ones((2, 31), np.float32))),
        (ValueError, r"shape \(n, 32\)", lambda: index.add(np.ones((2, 2, DIM), np.float32))),
        (ValueError, "NaN or Inf", lambda: index.add(bad_vectors)),
        (ValueError, "zero vector", lambda: index.add(zero)),
        (TypeError, "ids must be integers", lambda: index.add(_corpus(rng, 2), ids=np.ones(2))),
        (ValueError, r"shape \(2,\)", lambda: index.add(_corpus(rng, 2), ids=np.arange(3))),
        (ValueError, "non-negative", lambda: index.add(_corpus(rng, 2), ids=np.array([-1, 5]))),
        (ValueError, "repeated", lambda: index.add(_corpus(rng, 2), ids=np.array([50, 50]))),
        (ValueError, "already in the index", lambda: index.add(_corpus(rng, 2), ids=np.arange(2))),
        (KeyError, r"\[77\]", lambda: index.remove(np.array([3, 77]))),
        (TypeError, "integers", lambda: index.remove(np.array([1.0]))),
        (ValueError, "larger than the index", lambda: index.search(bad_vectors[:1], 41)),
        (ValueError, ">= 1", lambda: index.search(_corpus(rng, 1), 0)),
        (TypeError, "integer", lambda: index.search(_corpus(rng, 1), 2.5)),
        (ValueError, "NaN or Inf", lambda: index.search(bad_vectors, 2)),
        (ValueError, "zero vector", lambda: index.search(zero, 2)),
        (ValueError, r"rerank must be >= 5", lambda: index.search(_corpus(rng, 1), 5, rerank=4)),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()
        assert _state(index) == before, message
    plain = pq.VectorIndex(pq.TurboQuantMSE(DIM, 3, seed=4, norm_dtype="float32"))
    plain.add(_corpus(rng, 5))
    refined = pq.VectorIndex(plain.quantizer, "l2", refine="float16")
    refined.add(_corpus(rng, 5))
    before = _state(refined)
    with pytest.raises(ValueError, match="float16 range of the refinement copy"):
        refined.add(np.full((2, DIM), 1e5, np.float32))
    assert _state(refined) == before
    with pytest.raises(ValueError, match="rerank needs a refinement copy"):
        plain.search(_corpus(rng, 1), 2, rerank=3)
    with pytest.raises(TypeError, match="polarquant quantizer"):
        pq.VectorIndex("turboquant", "ip")
    with pytest.raises(ValueError, match="metric must be one of"):
        pq.VectorIndex(pq.TurboQuantMSE(DIM, 3), "dot")
    with pytest.raises(ValueError, match="refine must be"):
        pq.VectorIndex(pq.TurboQuantMSE(DIM, 3), refine="int8")


def test_torch_tensors_are_read_as_numpy_and_other_namespaces_are_refused():
    """torch CPU tensors (float32, bfloat16) are read as NumPy arrays, as the quantizers and
    the KV cache read them, so they mix with NumPy arrays in one index and search like them.
    Before, an add of NumPy vectors after torch ones failed while merging *after* it had
    kept them (ids then repeated), and a torch search crashed in the top-k selection.
    Namespaces the index cannot compute on (the top-k needs a partial sort, which the array
    API lacks) are refused with a ``TypeError`` before anything changes."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    corpus, queries = _corpus(rng, 60), _corpus(rng, 4)
    numpy_index = pq.VectorIndex(pq.TurboQuantMSE(DIM, 3, seed=4), "l2")
    numpy_index.add(corpus)
    index = pq.VectorIndex(pq.TurboQuantMSE(DIM, 3, seed=4), "l2")
    index.add(torch.from_numpy(corpus[:30]))
    index.add(corpus[30:])
    assert index.ids().tolist() == list(range(60))
    for q in (torch.from_numpy(queries), queries):
        got, want = index.search(q, 5), numpy_index.search(queries, 5)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
    index.add(torch.from_numpy(corpus[:2]).to(torch.bfloat16))  # bfloat16: exact in float32
    assert len(index) == 62
    xps = pytest.importorskip("array_api_strict")
    before = _state(index)
    for call in (
        lambda: index.add(xps.asarray(corpus[:3])),
        lambda: index.search(xps.asarray(queries), 3),
    ):
        with pytest.raises(TypeError, match="holds NumPy arrays .host. or CuPy arrays"):
            call()
        assert _state(index) == before


def test_a_failed_merge_keeps_nothing(monkeypatch):
    """``add`` keeps the new vectors only once their segment is merged with the held ones:
    a failure there (here injected) leaves the index and its next ids as they were."""
    rng = np.random.default_rng(13)
    index = pq.VectorIndex(pq.TurboQuantMSE(DIM, 3, seed=4))
    index.add(_corpus(rng, 40))
    before = _state(index)
    merged = index_module._merged

    def fail(*segments):
        if len(segments) > 1:
            raise RuntimeError("injected failure")
        return merged(*segments)

    monkeypatch.setattr(index_module, "_merged", fail)
    with pytest.raises(RuntimeError, match="injected"):
        index.add(_corpus(rng, 40))  # as large as the held segment: the two are merged
    assert _state(index) == before
    monkeypatch.undo()
    index.add(_corpus(rng, 40))
    assert index.ids().tolist() == list(range(80))


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_queries_whose_scores_overflow_float32_are_refused(metric):
    """Scores are float32: an inner product above 3.4e38 is infinite and ties with the removed
    vectors' ``-inf`` (before: removed ids returned, live ones missing, NaN distances).  A
    query whose squared norm passes float32's range (norm above 1.8e19) is refused, and so
    is a search whose top scores overflowed (``ip``: vectors of norm 1e20, allowed there,
    against a query of norm 1e19); moderate queries still search."""
    rng = np.random.default_rng(14)
    index = pq.VectorIndex(pq.TurboQuantMSE(DIM, 4, seed=1, norm_dtype="float32"), metric)
    units = _corpus(rng, 20)
    units /= np.linalg.norm(units, axis=1, keepdims=True)
    index.add(units * np.float32(1e20 if metric == "ip" else 1e18))
    index.remove([0, 1, 2])
    before = _state(index)
    with pytest.raises(ValueError, match=r"norms up to 5.657e\+37 cannot be scored"):
        index.search(np.full((1, DIM), 1e37, np.float32), len(index))
    if metric == "ip":
        with pytest.raises(ValueError, match="overflow float32"):
            index.search(units[3:4] * np.float32(1e19), 3)
    assert _state(index) == before
    scores, ids = index.search(units[3:4] * np.float32(1 if metric == "ip" else 1e18), len(index))
    assert np.all(np.isfinite(scores)) and not set(ids[0].tolist()) & {0, 1, 2}
    assert ids[0, 0] == 3


@pytest.mark.parametrize("metric", pq.search.METRICS)
def test_nbytes_counts_everything_held(metric):
    """Codes (the quantizer's bytes per vector) + 8-byte ids + 4-byte squared norms (l2)
    + the refinement copy + one byte per vector of deletion marks once something is removed."""
    rng = np.random.default_rng(7)
    q = pq.TurboQuantMSE(DIM, 4, seed=1)
    index = pq.VectorIndex(q, metric, refine="float16")
    index.add(_corpus(rng, 100))
    per_vector = q.nbytes_per_vector() + 8 + (4 if metric == "l2" else 0) + 2 * DIM
    assert index.nbytes == 100 * per_vector
    index.remove(np.array([3]))
    assert index.nbytes == 100 * per_vector + 100


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
@pytest.mark.parametrize("metric", pq.search.METRICS)
def test_files_round_trip(metric, mmap, tmp_path, small_blocks):
    """A saved and loaded index (read, or memory-mapped) searches exactly like the original:
    removed vectors are not written, the next automatic id is kept, adding works after."""
    rng = np.random.default_rng(8)
    corpus, queries = _corpus(rng, 150), _corpus(rng, 4)
    index = pq.VectorIndex(QUANTIZERS["polarquant"](), metric, refine="float16")
    index.add(corpus)
    index.remove(np.arange(10, 20))
    path = tmp_path / "corpus.npz"
    index.save(path)
    loaded = pq.VectorIndex.load(path, mmap=mmap)
    assert len(loaded) == 140 and loaded.metric == metric and loaded.refine == "float16"
    for rerank in (None, 40):
        want = index.search(queries, 5, rerank=rerank)
        got = loaded.search(queries, 5, rerank=rerank)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
    if mmap:
        assert isinstance(loaded._segments[0].codes.fields["angles"], np.memmap)
    loaded.add(corpus[:2])
    assert loaded.ids()[-2:].tolist() == [150, 151]
    empty = pq.VectorIndex(pq.QJL(DIM, 64), metric)
    empty.save(tmp_path / "empty")
    assert len(pq.VectorIndex.load(tmp_path / "empty.npz", mmap=mmap)) == 0


def test_damaged_files_are_refused_naming_the_file(tmp_path):
    """Flipped bytes, truncation, crafted metadata and codes files all raise ValueError with
    the file's name (or FileNotFoundError); a memory map of a compressed member is refused."""
    rng = np.random.default_rng(9)
    index = pq.VectorIndex(pq.TurboQuantMSE(DIM, 3, seed=4), "l2")
    index.add(_corpus(rng, 20))
    path = tmp_path / "index.npz"
    index.save(path)
    data = path.read_bytes()
    bad = tmp_path / "bad.npz"
    for at in range(0, len(data), max(1, len(data) // 150)):
        for blob in (data[:at], data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1 :]):
            bad.write_bytes(blob)
            for mmap in (False, True):
                try:
                    pq.VectorIndex.load(bad, mmap=mmap)
                except ValueError as exc:
                    assert "bad.npz" in str(exc)
    codes = tmp_path / "codes.npz"
    pq.save(codes, pq.TurboQuantMSE(DIM, 3).encode(_corpus(rng, 3)))
    with pytest.raises(ValueError, match="codes.npz.*not a polarquant-index file"):
        pq.VectorIndex.load(codes)
    with pytest.raises(FileNotFoundError):
        pq.VectorIndex.load(tmp_path / "missing.npz")
    # crafted: duplicate ids, ids beyond next_id, negative squared norms, squared norms that
    # disagree with the codes' norms (distances would be wrong), compressed members
    for i, (member, change, why) in enumerate(
        (
            ("ids", lambda a: np.zeros_like(a), "not unique"),
            ("ids", lambda a: a + 100, "next_id"),
            ("sq_norms", lambda a: -a, "negative"),
            (
                "sq_norms",
                lambda a: a * np.float32(1.01),
                "disagrees with the codes' norms at row 0",
            ),
        )
    ):
        crafted = tmp_path / f"crafted_{i}.npz"
        _rewrite(path, crafted, {member: change})
        with pytest.raises(ValueError, match=f"crafted_{i}.npz.*{why}"):
            pq.VectorIndex.load(crafted)
    deflated = tmp_path / "deflated.npz"
    _rewrite(path, deflated, {}, compression=zipfile.ZIP_DEFLATED)
    assert len(pq.VectorIndex.load(deflated)) == 20
    with pytest.raises(ValueError, match="deflated.npz.*cannot be memory-mapped"):
        pq.VectorIndex.load(deflated, mmap=True)


@pytest.mark.parametrize("quantizer", ["polarquant", "polarquant-qjl"])
def test_crafted_sq_norms_of_polar_codes_are_refused(tmp_path, quantizer):
    """PolarQuant codes hold no ``norms`` field: the norm is that of the top-level radii
    (the polar transform keeps norms, Sec. 3), and an ``l2`` file whose squared norms
    disagree with it is refused as for the other quantizers (the distances would be wrong:
    a tampered row was ranked first for another row's query)."""
    make = {"polarquant": pq.PolarQuant, "polarquant-qjl": pq.PolarQuantQJL}[quantizer]
    index = pq.VectorIndex(make(DIM, seed=4), "l2")
    index.add(_corpus(np.random.default_rng(10), 20))
    path = tmp_path / "index.npz"
    index.save(path)
    assert len(pq.VectorIndex.load(path)) == 20  # the untouched file's radii agree
    crafted = tmp_path / "crafted.npz"
    _rewrite(path, crafted, {"sq_norms": lambda a: np.where(np.arange(a.size) == 7, 1e6, a)})
    with pytest.raises(ValueError, match="crafted.npz.*disagrees with the codes' norms at row 7"):
        pq.VectorIndex.load(crafted)


def _rewrite(src, dst, changes, compression=zipfile.ZIP_STORED):
    import io

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            blob = zin.read(info)
            name = info.filename[: -len(".npy")]
            if name in changes:
                a = np.load(io.BytesIO(blob))
                buf = io.BytesIO()
                np.save(buf, changes[name](a))
                blob = buf.getvalue()
            zout.writestr(info.filename, blob)


def test_add_and_search_memory_stay_bounded(monkeypatch):
    """``add`` holds at most about the input again (encoded a block at a time; the codes
    themselves are 8x smaller); ``search`` never holds the n_queries x n score matrix."""
    rng = np.random.default_rng(10)
    corpus = _corpus(rng, 200_000, 64)
    index = pq.VectorIndex(pq.TurboQuantMSE(64, 4, seed=1, backend="numpy"), "ip")
    tracemalloc.start()
    try:
        index.add(corpus)
        _, peak_add = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        held, _ = tracemalloc.get_traced_memory()
        monkeypatch.setattr(index_module, "BLOCK_ELEMENTS", 1 << 16)
        queries = _corpus(rng, 100, 64)
        index.search(queries, 10)
        _, peak_search = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_add < 2 * corpus.nbytes, (peak_add, corpus.nbytes)
    assert peak_search - held < 100 * 200_000 * 4 / 8, (peak_search, held)


def test_many_small_adds_search_like_one_add():
    """Vectors added one small batch at a time (with removals between) give the same results
    as one add, in O(log n) segments: merged while the newest is at least half the previous,
    so sizes at least halve from one segment to the next."""
    rng = np.random.default_rng(11)
    corpus, queries = _corpus(rng, 3000), _corpus(rng, 8)
    one = pq.VectorIndex(QUANTIZERS["turboquant-mse"](), "l2", refine="float16")
    many = pq.VectorIndex(QUANTIZERS["turboquant-mse"](), "l2", refine="float16")
    one.add(corpus)
    for start in range(0, 3000, 7):
        many.add(corpus[start : start + 7])
        if start % 700 == 0:
            many.remove(np.arange(start, start + 3))
            one.remove(np.arange(start, start + 3))
    sizes = [s.n for s in many._segments]
    assert len(sizes) <= 2 * np.log2(3000) and all(
        b < a for a, b in zip(sizes, sizes[1:], strict=False)
    )
    for rerank in (None, 30):
        want, got = one.search(queries, 10, rerank=rerank), many.search(queries, 10, rerank=rerank)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])


def test_review_regressions_ids_empty_inputs_and_ranges(tmp_path):
    """Ids up to ``MAX_ID`` (one less than int64's largest, so that the next automatic id
    fits), a clear error when automatic ids would pass it; empty id lists are no-ops; a float16
    refinement copy refuses vectors too small for float16, ``l2`` refuses squared norms beyond
    float32; nothing changes on any refusal."""
    from polarquant.search.index import MAX_ID

    rng = np.random.default_rng(12)
    index = pq.VectorIndex(pq.TurboQuantMSE(DIM, 3, seed=4), "ip")
    index.add(_corpus(rng, 2), ids=np.array([0, MAX_ID]))
    before = _state(index)
    with pytest.raises(ValueError, match="automatic ids would pass"):
        index.add(_corpus(rng, 1))
    with pytest.raises(ValueError, match="no larger than"):
        index.add(_corpus(rng, 1), ids=np.array([MAX_ID + 1], dtype=np.uint64))
    index.remove([])
    index.add(np.zeros((0, DIM), np.float32), ids=[])
    assert _state(index) == before
    index.save(tmp_path / "max-id")
    assert pq.VectorIndex.load(tmp_path / "max-id.npz").ids().tolist() == [0, MAX_ID]
    small = pq.VectorIndex(pq.TurboQuantMSE(DIM, 3, norm_dtype="float32"), "ip", refine="float16")
    with pytest.raises(ValueError, match="lose their precision in the float16 refinement"):
        small.add(1e-6 * _corpus(rng, 3))
    huge = pq.VectorIndex(pq.TurboQuantMSE(DIM, 3, norm_dtype="float32"), "l2")
    with pytest.raises(ValueError, match="beyond float32's range"):
        huge.add(np.full((2, DIM), 1e19, np.float32))
    assert len(small) == len(huge) == 0
    empty = pq.VectorIndex(pq.TurboQuantMSE(DIM, 3))
    values, positions = empty.scan(np.ones((2, DIM), np.float32), 5)
    assert values.shape == positions.shape == (2, 0)


def test_reranked_ties_come_in_order_of_addition():
    """Equal exact values after re-ranking (the same vector added three times) are returned in
    the order of addition, as every other tie of a search."""
    rng = np.random.default_rng(13)
    x = _corpus(rng, 50)
    index = pq.VectorIndex(pq.TurboQuantMSE(DIM, 2, seed=4), "l2", refine="float32")
    index.add(x)
    index.add(np.repeat(x[:1], 3, axis=0), ids=np.array([70, 60, 80]))
    _, ids = index.search(x[:1], 4, rerank=50)
    assert ids[0].tolist() == [0, 70, 60, 80]


def test_memory_mapped_load_checks_the_refinement_copy_in_bounded_memory(tmp_path):
    """``load(mmap=True)`` checks the refinement copy a block of rows at a time: its peak
    allocation stays far below the copy's size."""
    rng = np.random.default_rng(14)
    index = pq.VectorIndex(pq.TurboQuantMSE(64, 2, seed=1), "ip", refine="float32")
    index.add(_corpus(rng, 60_000, 64))
    index.save(tmp_path / "big")
    tracemalloc.start()
    try:
        loaded = pq.VectorIndex.load(tmp_path / "big.npz", mmap=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    refine_bytes = 60_000 * 64 * 4
    assert peak < refine_bytes / 4, (peak, refine_bytes)
    assert len(loaded) == 60_000
