r"""Ground truth and the metric of the Sec. 4.4 experiment: exact search and recall@1@k.

TurboQuant (arXiv 2504.19874), **Sec. 4.4**, Fig. 5: the quality of a method is its
**recall@1@k**

.. math::

    \mathrm{recall@1@}k = \frac{1}{n_q} \sum_{j=1}^{n_q}
        \mathbf{1}\big[\, \arg\max_i \langle q_j, x_i \rangle \in \mathrm{top}_k(q_j) \,\big],

the fraction of queries whose true nearest neighbour (largest exact inner product) is among the
``k`` results returned from the codes, for ``k`` in :data:`KS` (:func:`recall_at_1_at_k`).

* **Ground truth** (:func:`exact_top1`): the exact nearest neighbour of each query in float64,
  block by block of queries (``BLOCK_ELEMENTS`` scores at a time, no ``n_queries x n_database``
  matrix), ties counted.
* **The timing reference** (:func:`exact_search`): exact float32 brute force (BLAS matmul +
  ``argpartition``), whose search time every method's is divided by.
"""

from __future__ import annotations

import numpy as np

__all__ = ["KS", "K_MAX", "exact_top1", "exact_search", "recall_at_1_at_k"]

#: The ``k`` of recall@1@k (the paper's Fig. 5); every method is searched with ``K_MAX``.
KS = (1, 2, 4, 8, 16, 32, 64)
K_MAX = KS[-1]

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
