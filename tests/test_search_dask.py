"""The Dask index (:mod:`polarquant.search.distributed`) on a two-process ``LocalCluster``.

The reference for every search is one :class:`polarquant.VectorIndex` given the same rows, ids
and quantizer: the Dask index must return the same ids in the same order (ties by order of
addition) and the same scores.  Scores estimated from the codes may differ in the last bits,
and only there: a shard multiplies its rows in blocks that start at its own first row, and BLAS
(the NumPy reference, Numba from 8 queries on) may round a product of another shape
differently.  Two orders of summing ``d`` products differ by at most ``2 gamma_d sum |q_i x_i|``
(``gamma_d = d eps / (1 - d eps)``, Higham, *Accuracy and Stability of Numerical Algorithms*,
Sec. 3.1), which :func:`rounding` turns into units in the last place; where each score is computed alone (Numba's table
kernels, fewer than 8 queries; exact re-ranking, row by row) they agree bit for bit.

Every quantizer is built with an explicit ``backend=`` (the module is ``backend_independent``):
the workers, in other processes, never see the test process's backend guard, so the backend
must travel explicitly.  Every generator is seeded.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from polarquant.backends import available

import polarquant as pq
from polarquant.search import distributed as dist

pytestmark = pytest.mark.backend_independent

DIM = 32
N = 600
#: Uneven row blocks, one of a single row and one of seven (both smaller than k = 10).
CHUNKS = (150, 1, 7, 200, 242)
K = 10
METHODS = {
    "turboquant-mse": lambda b: pq.TurboQuantMSE(DIM, 3, seed=4, backend=b),
    "turboquant-prod": lambda b: pq.TurboQuantProd(DIM, 3, seed=4, backend=b),
    "qjl": lambda b: pq.QJL(DIM, 64, seed=4, backend=b),
    "polarquant": lambda b: pq.PolarQuant(DIM, levels=3, bits=(4, 2, 2), seed=4, backend=b),
    "polarquant-qjl": lambda b: pq.PolarQuantQJL(DIM, levels=3, bits=(4, 2, 2), seed=4, backend=b),
}
BACKENDS = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(available()[name] is not None, reason=str(available()[name])),
    )
    for name in ("numpy", "numba")
]


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    pytest.importorskip("dask.array")
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


@pytest.fixture
def data():
    rng = np.random.default_rng(20260328)
    corpus = rng.standard_normal((N, DIM)).astype(np.float32)
    queries = rng.standard_normal((12, DIM)).astype(np.float32)
    return corpus, queries


def darray(x, chunks=CHUNKS):
    import dask.array as da

    return da.from_array(x, chunks=(chunks, x.shape[1]))


def both(quantizer, metric, corpus, client, *, refine=None, chunks=CHUNKS, ids=None):
    """The Dask index and the single-machine index of the same rows (and ids)."""
    import dask.array as da

    index = dist.DaskVectorIndex(quantizer, metric, refine=refine, client=client)
    index.add(darray(corpus, chunks), ids=None if ids is None else da.from_array(ids, (chunks,)))
    local = pq.VectorIndex(quantizer, metric, refine=refine)
    local.add(corpus, ids=ids)
    return index, local


def rounding(scores, terms: int = DIM):
    """The score difference two orders of float32 sums may make (module docstring), per query:
    ``2 gamma_d sum_i |q_i x_i|`` is about ``2 d`` units in the last place of the sum when
    ``sum_i |q_i x_i|`` has the size of the score, as for the best scores (``terms = d``
    products, ``m = 2 d`` for QJL's sketch).  The differences seen are a few units."""
    return 2 * terms * np.spacing(np.abs(scores).max(axis=-1, keepdims=True))


def assert_same(got, want, *, atol=None):
    np.testing.assert_array_equal(got[1], want[1])
    assert got[0].dtype == np.float32 and got[1].dtype == np.int64
    if atol is None:
        np.testing.assert_array_equal(got[0], want[0])
    else:
        assert np.all(np.abs(got[0] - want[0]) <= atol), np.abs(got[0] - want[0]).max()


# -- the same results as one index ---------------------------------------------------------------
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_same_results_as_one_index(client, data, backend, metric):
    corpus, queries = data
    index, local = both(METHODS["turboquant-mse"](backend), metric, corpus, client)
    assert len(index.shards) == len(CHUNKS) and len(index) == N
    got, want = index.search(queries, K), local.search(queries, K)
    assert_same(got, want, atol=rounding(want[0]))
    # fewer than 8 queries: Numba scores each pair alone, bit for bit
    few = index.search(queries[:5], K), local.search(queries[:5], K)
    assert_same(*few, atol=rounding(few[1][0]) if backend == "numpy" else None)


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"turboquant-mse"}))
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_quantizer(client, data, backend, method):
    corpus, queries = data
    index, local = both(METHODS[method](backend), "cosine", corpus, client)
    got, want = index.search(queries, K), local.search(queries, K)
    # QJL's sketch (m = 64 = 2 d rows, also TurboQuantProd's residual) sums twice the products
    assert_same(got, want, atol=rounding(want[0], 2 * DIM))


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_reranking_is_the_single_index_reranking(client, data, backend, metric):
    """Global candidates, then exact scores where they live: bit for bit the single index's."""
    corpus, queries = data
    index, local = both(METHODS["qjl"](backend), metric, corpus, client, refine="float16")
    assert_same(index.search(queries, K), local.search(queries, K))
    assert_same(index.search(queries, 3, rerank=17), local.search(queries, 3, rerank=17))
    assert_same(index.search(queries, K, rerank=N), local.search(queries, K, rerank=N))


@pytest.mark.parametrize("backend", BACKENDS)
def test_blocks_smaller_than_k(client, backend):
    rng = np.random.default_rng(7)
    corpus = rng.standard_normal((9, DIM)).astype(np.float32)
    chunks = (3, 2, 4)
    for refine in (None, "float32"):
        index, local = both(
            METHODS["turboquant-mse"](backend), "l2", corpus, client, refine=refine, chunks=chunks
        )
        for k in (4, 9):
            want = local.search(corpus[:3], k)
            assert_same(
                index.search(corpus[:3], k), want, atol=None if refine else rounding(want[0])
            )
        with pytest.raises(ValueError, match="k=10 is larger than the index, which holds 9"):
            index.search(corpus[:3], 10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_given_ids_and_several_adds(client, data, backend):
    """Ids given as a Dask array (chunked differently: rechunked) or a NumPy array; a second
    ``add`` continues after the largest id; ties stay in the order of addition."""
    import dask.array as da

    corpus, queries = data
    quantizer = METHODS["turboquant-mse"](backend)
    ids = np.random.default_rng(3).permutation(10 * N)[:N].astype(np.int64)
    index = dist.DaskVectorIndex(quantizer, "ip", client=client)
    index.add(darray(corpus[:400], (150, 1, 7, 242)), ids=da.from_array(ids[:400], chunks=100))
    index.add(darray(corpus[400:], (200,)), ids=ids[400:])
    index.add(darray(corpus[:50], (50,)))  # duplicates of the first rows: exact ties
    local = pq.VectorIndex(quantizer, "ip")
    local.add(corpus[:400], ids=ids[:400])
    local.add(corpus[400:], ids=ids[400:])
    local.add(corpus[:50])
    np.testing.assert_array_equal(index.ids(), local.ids())
    assert len(index) == len(local) == N + 50 and index.nbytes == local.nbytes
    got, want = index.search(queries, K), local.search(queries, K)
    assert_same(got, want, atol=rounding(want[0]))
    if backend == "numba":  # few queries: bit for bit, so the duplicates tie exactly
        got = index.search(corpus[:4], 50)
        assert_same(got, local.search(corpus[:4], 50))
        first_dup = int(ids.max()) + 1
        for i in range(4):  # ties in the order of addition: the original first
            row = got[1][i].tolist()
            assert row.index(ids[i]) + 1 == row.index(first_dup + i)
            assert got[0][i, row.index(ids[i])] == got[0][i, row.index(first_dup + i)]


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_remove_as_one_index(client, data, backend, metric, tmp_path):
    """``remove`` leaves the results of one index from which the same ids were removed (the
    removed vectors held, marked, positions unchanged), drops a shard left with nothing live
    (the one-row block), keeps a search that started before it on the old shards, refuses
    unknown ids without removing anything, and saves only the live vectors."""
    corpus, queries = data
    index, local = both(
        METHODS["turboquant-mse"](backend), metric, corpus, client, refine="float16"
    )
    gone = np.concatenate([np.arange(0, N, 7), [150]])  # 150: the whole one-row shard
    old = list(index.shards)
    with pytest.raises(pq.search.UnknownIdsError, match=r"\[600, 601\]"):
        index.remove([3, 600, 601])
    assert len(index) == N and index.shards == old
    index.remove(gone)
    local.remove(gone)
    assert len(index) == len(local) == N - gone.size and len(index.shards) == len(CHUNKS) - 1
    np.testing.assert_array_equal(index.ids(), local.ids())
    for k, rerank in ((K, None), (K, 40), (N - gone.size, None)):
        got, want = (
            index.search(queries[:5], k, rerank=rerank),
            local.search(queries[:5], k, rerank=rerank),
        )
        assert_same(got, want, atol=rounding(want[0]))
        assert not np.isin(got[1], gone).any()
    before = client.gather(old[0]).search(queries[:1], 1)[1]  # the old shard is unchanged
    assert before[0, 0] in np.arange(150) and len(client.gather(old[0])) == 150
    index.save(tmp_path / "idx")
    again = dist.DaskVectorIndex.load(tmp_path / "idx", client=client, backend=backend)
    assert len(again) == len(local)
    assert_same(again.search(queries[:5], K), local.search(queries[:5], K), atol=rounding(want[0]))


def test_float64_and_batched_queries(client, data):
    corpus, queries = data
    index, local = both(METHODS["turboquant-mse"]("numpy"), "l2", corpus, client)
    batched = queries.astype(np.float64).reshape(3, 4, DIM)
    got, want = index.search(batched, K), local.search(batched, K)
    assert got[0].shape == got[1].shape == (3, 4, K)
    assert_same(got, want, atol=rounding(want[0]))
    empty = index.search(np.zeros((0, DIM), np.float32), K)
    assert empty[0].shape == empty[1].shape == (0, K)


def test_merge_keeps_the_best_with_ties_by_position():
    """One merge: the ``c`` largest values, equal values by position, ids along."""
    a = (np.array([[3.0, 1.0, 1.0]]), np.array([[4, 7, 9]]), np.array([[40, 70, 90]]))
    b = (np.array([[2.0, 1.0]]), np.array([[5, 8]]), np.array([[50, 80]]))
    values, positions, ids = dist._merge(a, b, 4)
    np.testing.assert_array_equal(values, [[3.0, 2.0, 1.0, 1.0]])
    np.testing.assert_array_equal(positions, [[4, 5, 7, 8]])
    np.testing.assert_array_equal(ids, [[40, 50, 70, 80]])


# -- files ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mmap", [False, True])
def test_files_round_trip(client, data, tmp_path, mmap):
    corpus, queries = data
    index, _ = both(METHODS["qjl"]("numpy"), "l2", corpus, client, refine="float32")
    index.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / dist.MANIFEST).read_text())
    assert [s["n"] for s in manifest["shards"]] == list(CHUNKS)
    first = pq.VectorIndex.load(tmp_path / "idx" / "shard-00000.npz", backend="numpy")
    np.testing.assert_array_equal(first.ids(), np.arange(CHUNKS[0]))
    again = dist.DaskVectorIndex.load(tmp_path / "idx", client=client, mmap=mmap, backend="numpy")
    assert len(again) == N and again.metric == "l2" and again.refine == "float32"
    assert_same(again.search(queries, K), index.search(queries, K))
    assert_same(again.search(queries, K, rerank=30), index.search(queries, K, rerank=30))


def test_damaged_files_are_refused_naming_the_file(client, data, tmp_path):
    corpus, _ = data
    index, _ = both(METHODS["turboquant-mse"]("numpy"), "ip", corpus, client, chunks=(300, 300))
    index.save(tmp_path)
    path = tmp_path / dist.MANIFEST
    good = json.loads(path.read_text())
    with pytest.raises(FileNotFoundError):
        dist.DaskVectorIndex.load(tmp_path / "nothing", client=client, backend="numpy")
    for change, match in [
        ({"format": "other"}, "not a polarquant-dask-index manifest"),
        ({"format_version": 2}, "format version 2"),
        ({"metric": "hamming"}, "metric 'hamming'"),
        ({"shards": [{"file": "../x.npz", "n": 1, "id_min": 0, "id_max": 0}]}, "malformed shard"),
        ({"next_id": 10}, "ids up to 299 >= next_id"),
        ({"shards": [good["shards"][0], good["shards"][0]]}, "listed twice"),
        ({"shards": [{**good["shards"][0], "n": 0}]}, "is empty"),
    ]:
        path.write_text(json.dumps({**good, **change}))
        with pytest.raises(ValueError, match=match) as err:
            dist.DaskVectorIndex.load(tmp_path, client=client, backend="numpy")
        assert str(path) in str(err.value)
    a, b = good["shards"]
    swapped = {**good, "shards": [{**a, "file": b["file"]}, {**b, "file": a["file"]}]}
    path.write_text(json.dumps(swapped))
    with pytest.raises(
        ValueError,
        match=r"shard-00001.npz.*ids in \[300, 599\]; the manifest says 300 in \[0, 299\]",
    ):
        dist.DaskVectorIndex.load(tmp_path, client=client, backend="numpy")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON manifest"):
        dist.DaskVectorIndex.load(tmp_path, client=client, backend="numpy")
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match="not a JSON manifest"):
        dist.DaskVectorIndex.load(tmp_path, client=client, backend="numpy")
    # two shards whose ids overlap: refused, naming the manifest
    (tmp_path / "copy").mkdir()
    for shard in (a, b):
        (tmp_path / "copy" / shard["file"]).write_bytes((tmp_path / a["file"]).read_bytes())
    overlap = {**good, "shards": [a, {**a, "file": b["file"]}]}
    (tmp_path / "copy" / dist.MANIFEST).write_text(json.dumps(overlap))
    with pytest.raises(ValueError, match="index.json.*ids repeated"):
        dist.DaskVectorIndex.load(tmp_path / "copy", client=client, backend="numpy")


def test_empty_index_round_trips(client, tmp_path):
    """An index with nothing added saves and loads (an empty list of shards)."""
    empty = dist.DaskVectorIndex(METHODS["turboquant-mse"]("numpy"), "ip", client=client)
    empty.save(tmp_path / "empty")
    again = dist.DaskVectorIndex.load(tmp_path / "empty", client=client, backend="numpy")
    assert len(again) == 0 and again.metric == "ip"


# -- errors --------------------------------------------------------------------------------------
def test_query_errors_are_the_single_index_errors(client, data):
    """Raised on the client, before any task: the same type and message as VectorIndex."""
    corpus, queries = data
    index, local = both(METHODS["turboquant-mse"]("numpy"), "cosine", corpus, client)
    bad_queries = [
        queries[:, :5],
        np.where(np.arange(DIM) == 3, np.nan, queries).astype(np.float32),
        queries.astype(np.int32),
        np.zeros((2, DIM), np.float32),
        [[0.0] * DIM],
    ]
    calls = [dict(queries=q, k=K) for q in bad_queries]
    calls += [dict(queries=queries, k=0), dict(queries=queries, k=N + 1)]
    calls += [dict(queries=queries, k=2.0), dict(queries=queries, k=K, rerank=20)]
    for call in calls:
        with pytest.raises((TypeError, ValueError)) as want:
            local.search(**call)
        with pytest.raises(want.type) as got:
            index.search(**call)
        assert str(got.value) == str(want.value)
    refined, local = both(METHODS["qjl"]("numpy"), "ip", corpus, client, refine="float16")
    with pytest.raises(ValueError) as want:
        local.search(queries, K, rerank=K - 1)
    with pytest.raises(ValueError, match="rerank must be >= 10") as got:
        refined.search(queries, K, rerank=K - 1)
    assert str(got.value) == str(want.value)


def test_add_errors_change_nothing(client, data):
    import dask.array as da

    corpus, _ = data
    index = dist.DaskVectorIndex(METHODS["turboquant-mse"]("numpy"), "cosine", client=client)
    index.add(darray(corpus[:100], (60, 40)))
    with pytest.raises(ValueError, match=r"chunked along rows only.*rechunk\(\{1: -1\}\)"):
        index.add(da.from_array(corpus, chunks=(100, 16)))
    with pytest.raises(TypeError, match="must be a dask.array"):
        index.add(corpus)
    with pytest.raises(ValueError, match=r"shape \(n, 32\)"):
        index.add(darray(corpus[:, :16]))
    with pytest.raises(TypeError, match="real floating dtype"):
        index.add(darray(corpus.astype(np.int32)))
    unknown = da.from_array(corpus, chunks=(100, DIM))
    unknown = unknown[unknown[:, 0] > 0]
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        index.add(unknown)
    rows = da.arange(N, chunks=100)
    with pytest.raises(ValueError, match=r"ids has blocks of unknown size.*compute_chunk_sizes"):
        index.add(darray(corpus), ids=rows[rows >= 0])
    broken = corpus.copy()
    broken[301, 5] = np.nan
    with pytest.raises(
        ValueError, match=r"rows 300\.\.449 of the added array: vectors contains 1 NaN"
    ):
        index.add(darray(broken, (300, 150, 150)))
    zero = corpus.copy()
    zero[7] = 0
    with pytest.raises(ValueError, match=r"rows 0\.\.299 .*zero vector"):
        index.add(darray(zero, (300, 300)))
    repeated = 1000 + np.arange(N) % 400  # in the first and the last block
    with pytest.raises(ValueError, match=r"ids repeated within the call: \[1000, 1001, "):
        index.add(darray(corpus, (200, 200, 200)), ids=repeated)
    with pytest.raises(ValueError, match=r"ids already in the index: \[99\]"):
        index.add(darray(corpus[:2], (2,)), ids=np.array([99, 1000]))
    with pytest.raises(ValueError, match=r"ids must have shape \(600,\)"):
        index.add(darray(corpus), ids=np.arange(5))
    with pytest.raises(TypeError, match="ids must be integers"):
        index.add(darray(corpus), ids=np.arange(N, dtype=np.float64))
    assert len(index) == 100 and len(index.shards) == 2
    np.testing.assert_array_equal(index.ids(), np.arange(100))


def test_no_client_and_no_gpu(client, monkeypatch):
    import distributed

    quantizer = METHODS["turboquant-mse"]("numpy")
    with pytest.raises(TypeError, match="must be a distributed.Client"):
        dist.DaskVectorIndex(quantizer, client="tcp://127.0.0.1:8786")

    def none():
        raise ValueError("No clients found")

    monkeypatch.setattr(distributed, "default_client", none)
    with pytest.raises(ValueError, match="no Dask client.*never starts a cluster"):
        dist.DaskVectorIndex(quantizer)
    with pytest.raises(ValueError, match="CPU backends"):
        dist.DaskVectorIndex(pq.TurboQuantMSE(DIM, 3, backend="cupy"), client=client)
    with pytest.raises(ValueError, match="metric must be one of"):
        dist.DaskVectorIndex(quantizer, "hamming", client=client)


@pytest.mark.parametrize("how", ["find_spec", "sys.modules"])
def test_missing_dask_names_the_install_command(monkeypatch, how):
    if how == "find_spec":
        real = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util,
            "find_spec",
            lambda name, *a: None if name.split(".")[0] == "distributed" else real(name, *a),
        )
    else:
        monkeypatch.setitem(sys.modules, "dask", None)
        monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match="polarquant.search.distributed needs") as err:
        dist.DaskVectorIndex(METHODS["turboquant-mse"]("numpy"))
    assert 'python -m pip install "dask[array]" distributed' in str(err.value)
    assert 'python -m pip install -e ".[dask]"' in str(err.value)


def test_import_does_not_import_dask():
    code = (
        "import sys, polarquant, polarquant.search.distributed; "
        "print(sorted(m for m in ('dask', 'distributed') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
