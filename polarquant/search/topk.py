"""Top-k selection while scoring: the k best of each block of scores, merged into a running best.

A search over ``n`` vectors for ``nq`` queries never holds the ``nq x n`` score matrix: scores
arrive in blocks of rows (``nq x b``), each block is cut to its ``k`` best per query with a
partial sort (``argpartition``, linear time), and merged with the ``k`` best so far
(at most ``nq x 2k``, sorted and cut again); once ``k`` are held, a block is first
filtered by the running k-th best (one comparison per score), so that the partial sort
is needed only while many scores still pass.  The arrays may be NumPy or CuPy
(both have ``argpartition`` and ``take_along_axis``); larger is better, so a distance is
negated before it comes here (:mod:`polarquant.search.index`).

The result is the exact top-k of all the scores (a partial sort keeps every element that
belongs to the k best); among equal scores the smaller position wins, so the same scores
give the same ids on every backend (:meth:`TopK.finish`).
"""

from __future__ import annotations

from array_api_compat import array_namespace

__all__ = ["TopK", "best_order"]


class TopK:
    """The running ``k`` best scores and their positions for each of ``nq`` queries."""

    def __init__(self, k: int):
        self.k = k
        self.scores = None  # (nq, <= k)
        self.positions = None  # (nq, <= k) int64 positions over all rows scanned

    def push(self, scores, start: int) -> None:
        """Merge a block of scores ``(nq, b)`` for the rows ``start ... start + b - 1``.

        Blocks must come in increasing position order (a scan does).  Once ``k`` scores
        are held, only the block's scores *above* each query's current k-th best can enter
        (an equal one comes later, so it loses the tie): they are found by one comparison
        per score and merged alone; the partial sort of the whole block is needed only while
        many scores pass (the first blocks).
        """
        xp = array_namespace(scores)
        if self.scores is not None and self.scores.shape[1] == self.k:
            passed = scores > self.scores[:, -1:]  # held best first: column k-1 is the k-th
            rows, cols = xp.nonzero(passed)
            if rows.shape[0] == 0:
                return
            if rows.shape[0] <= 4 * self.k * scores.shape[0]:
                new_scores, new_positions = _ragged(xp, scores, rows, cols, start)
                self._merge(xp, new_scores, new_positions)
                return
        self._merge(xp, *_block_best(xp, scores, start, self.k))

    def _merge(self, xp, scores, positions) -> None:
        if self.scores is not None:
            scores = xp.concat([self.scores, scores], axis=1)
            positions = xp.concat([self.positions, positions], axis=1)
        self.scores, self.positions = _sorted_best(xp, scores, positions, self.k)

    def finish(self):
        """``(scores, positions)``, each ``(nq, k)``, best first; ties in position order."""
        return _sorted_best(array_namespace(self.scores), self.scores, self.positions, self.k)


def _block_best(xp, scores, start: int, k: int):
    """The ``k`` largest scores of each row of a block (any order) and their positions;
    where the k-th largest value is tied, the tied rows of smaller position are kept."""
    nq, b = scores.shape
    if b <= k:
        return scores, xp.broadcast_to(xp.arange(start, start + b, dtype=xp.int64), (nq, b))
    # the array API has no partial sort; NumPy and CuPy (the namespaces the index takes) do
    kth = -xp.partition(-scores, k - 1, axis=1)[:, k - 1 : k]  # the k-th largest, (nq, 1)
    greater = scores > kth
    tied = scores == kth
    need = k - xp.sum(greater, axis=1, keepdims=True, dtype=xp.int64)
    keep = greater | (tied & (xp.cumsum(tied, axis=1, dtype=xp.int64) <= need))
    rows, cols = xp.nonzero(keep)  # row-major: exactly k per row, in position order
    cols = xp.reshape(cols, (nq, k))
    return xp.take_along_axis(scores, cols, axis=1), xp.astype(cols, xp.int64) + start


def _ragged(xp, scores, rows, cols, start: int):
    """The entries ``(rows[i], cols[i])`` of ``scores`` (row-major order) as ``(nq, m)``
    arrays, ``m`` the most entries of a row; missing entries are ``-inf`` at the largest
    position, so that they sort after every real score."""
    nq = scores.shape[0]
    counts = xp.bincount(rows, minlength=nq)  # NumPy and CuPy, as partition in _block_best
    width = int(xp.max(counts))
    first = xp.cumsum(counts) - counts  # where each row's entries start in rows/cols
    slot = xp.arange(rows.shape[0], dtype=xp.int64) - first[rows]
    out_scores = xp.full((nq, width), -xp.inf, dtype=scores.dtype)
    out_positions = xp.full((nq, width), xp.iinfo(xp.int64).max, dtype=xp.int64)
    out_scores[rows, slot] = scores[rows, cols]
    out_positions[rows, slot] = xp.astype(cols, xp.int64) + start
    return out_scores, out_positions


def best_order(xp, scores, positions, k: int):
    """The columns of the ``k`` best of each row, sorted: by score, larger first, then by
    position (the one order of every search: index, fast scan, shards, re-ranking)."""
    by_position = xp.argsort(positions, axis=1)
    ranked = xp.argsort(-xp.take_along_axis(scores, by_position, axis=1), axis=1, stable=True)
    return xp.take_along_axis(by_position, ranked[:, :k], axis=1)


def _sorted_best(xp, scores, positions, k: int):
    """The ``k`` best of each row, sorted: by score, larger first, then by position."""
    order = best_order(xp, scores, positions, k)
    return xp.take_along_axis(scores, order, axis=1), xp.take_along_axis(positions, order, axis=1)
