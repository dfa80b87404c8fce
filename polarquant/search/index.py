"""A compressed vector index: top-k nearest neighbours searched from the codes.

TurboQuant's nearest-neighbour experiment (Zandieh et al., ICLR 2026, arXiv 2504.19874,
Sec. 4.4) stores a corpus as codes of a data-oblivious quantizer, so "indexing" is encoding
(no training, unlike Product Quantization's k-means), and ranks it by the inner products
estimated from the codes.  :class:`VectorIndex` does that over any quantizer of the library:

* ``add`` encodes vectors in blocks (bounded memory) into segments; ``search`` scores each
  block of codes with the quantizer's own :meth:`~polarquant.Quantizer.score` (so the
  backend's kernels, whatever it is) and keeps only the running top-k
  (:mod:`polarquant.search.topk`): no ``n_queries x n_vectors`` matrix is ever held.
* Metrics: ``"ip"`` (inner product, larger first), ``"cosine"`` (vectors and queries
  normalised before encoding and scoring), ``"l2"`` (squared Euclidean distance, smaller
  first: ``||q||^2 + ||x||^2 - 2 <q, x>`` with ``<q, x>`` estimated from the codes and
  ``||x||^2`` stored exactly in float32, 4 bytes per vector).
* Optional exact re-ranking (``refine="float16"`` or ``"float32"``): a second copy of the
  vectors is kept (in memory, or memory-mapped from the index file), the best ``rerank``
  candidates found from the codes are scored exactly and the top k of those returned, as
  FAISS's ``IndexRefineFlat`` and RaBitQ's re-ranking do.
* ``remove`` marks vectors as deleted (a byte per vector of the segment, counted by
  ``nbytes``); marked vectors are dropped when their segment is merged with a newer one, and
  ``save`` writes only the live ones.  Files: :mod:`polarquant.search.storage` (no pickle; ``load(mmap=True)`` maps the
  codes and the refinement copy, so an index larger than RAM can be searched).

Every call validates its input completely before it changes anything: a refused ``add`` or
``remove`` leaves the index exactly as it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from array_api_compat import is_array_api_obj, is_cupy_array, is_torch_array

from .._array import as_vectors, check_finite, check_int, namespace, quiet_overflow, to_host
from ..compressed import CompressedVectors, array_nbytes
from ..kv.attention import check_float_array, same_place
from ..quantizer import _STORAGE_RANGE, Quantizer, safe_norms
from . import scanner
from .topk import TopK, best_order

__all__ = [
    "VectorIndex",
    "METRICS",
    "REFINE_DTYPES",
    "UnknownIdsError",
    "query_rows",
    "search_sizes",
    "best_exact",
    "metric_scores",
    "as_ids",
    "MAX_ID",
]

#: Supported metrics: inner product, cosine similarity, squared Euclidean distance.
METRICS = ("ip", "cosine", "l2")
#: Dtypes of the optional exact re-ranking copy.
REFINE_DTYPES = ("float16", "float32")

#: Scores computed per block: queries x rows (4M floats, 16 MB in float32).
BLOCK_ELEMENTS = 1 << 22
#: Rows scored per call at most, however few the queries: after the first block, the running
#: k-th best filters the others with one comparison per score instead of a partial sort of
#: everything (one query over 1M vectors: 30 ms -> 25 ms, ``benchmarks/bench_search.py``).
ROW_BLOCK = 1 << 18
#: Vectors encoded per block in ``add`` (bounded temporaries whatever the input's size: 8 MB
#: per float32 copy at d = 128).
ADD_ROWS = 1 << 14
#: The largest id (``int64``'s largest less one, so that the next automatic id still fits).
MAX_ID = np.iinfo(np.int64).max - 1
#: Candidates re-ranked exactly per result when a refinement copy is held (``rerank=None``).
DEFAULT_RERANK_FACTOR = 4


class UnknownIdsError(KeyError):
    """Ids that are not in the index (a ``KeyError`` whose message prints without quotes)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass
class _Segment:
    """Vectors added together: codes ``(n,)``, ids, and what the metric and refinement need."""

    codes: CompressedVectors
    ids: np.ndarray  # int64 (n,)
    sq_norms: np.ndarray | None  # float32 (n,), metric "l2" only
    refine: object | None  # (n, dim) float16/float32, when refine is on
    alive: np.ndarray | None = None  # bool (n,), once something was removed
    mapped: bool = False  # read from a file by a memory map: never merged
    view: object | None = None  # the fast-scan view (scanner.ScanView), built by a search

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])

    def live(self) -> int:
        return self.n if self.alive is None else int(np.count_nonzero(self.alive))

    def nbytes(self) -> int:
        parts = [self.codes.nbytes, self.ids.nbytes]
        parts += [
            array_nbytes(a) for a in (self.sq_norms, self.refine, self.alive) if a is not None
        ]
        if self.view is not None:
            parts.append(self.view.nbytes())
        return sum(parts)


def _merged(*segments: _Segment) -> _Segment:
    """The live vectors of ``segments``, in order, as one segment (one copy of each array)."""
    if len(segments) == 1 and segments[0].alive is None:
        return segments[0]
    keeps = [slice(None) if g.alive is None else np.flatnonzero(g.alive) for g in segments]

    def join(arrays):
        if arrays[0] is None:
            return None
        parts = [_take_rows(arr, keep) for arr, keep in zip(arrays, keeps, strict=True)]
        return parts[0] if len(parts) == 1 else namespace(parts[0]).concat(parts, axis=0)

    first = segments[0].codes
    fields = {name: join([g.codes.fields[name] for g in segments]) for name in first.fields}
    ids = join([g.ids for g in segments])
    codes = CompressedVectors(
        first.method, first.config, fields, (int(ids.shape[0]),), first.dim, first.dtype
    )
    sq_norms = join([g.sq_norms for g in segments])
    return _Segment(codes, ids, sq_norms, join([g.refine for g in segments]))


def _take_rows(arr, rows):
    """``arr[rows]`` for a slice (all rows) or host indices, in ``arr``'s namespace."""
    if isinstance(rows, slice):
        return arr
    xp = namespace(arr)
    return xp.take(arr, xp.asarray(rows), axis=0)


class VectorIndex:
    """Nearest-neighbour search over vectors compressed by ``quantizer``.

    Vectors and queries are NumPy arrays (codes in host memory) or CuPy arrays (GPU memory;
    the ``cupy`` backend), fixed by the first ``add``; torch tensors are read as those (a
    CPU tensor as a NumPy view, a CUDA one through DLPack).  Scores and ids come back as
    NumPy arrays.  Other array namespaces, and arrays of another namespace or device than
    the vectors held, are refused (``TypeError``).

    Parameters
    ----------
    quantizer : Quantizer
        Any quantizer of the library (its backend runs the scoring).
    metric : {"ip", "cosine", "l2"}
        Inner product and cosine similarity rank larger scores first; ``"l2"`` returns
        squared distances, smaller first (as FAISS's ``IndexFlatL2``).
    refine : {None, "float16", "float32"}
        Keep a copy of the vectors in this dtype for exact re-ranking (``search(rerank=)``).
    fast_scan : {"auto", True, False}
        Search with fast scan where it applies (:mod:`polarquant.search.scanner`:
        TurboQuantMSE at 1 to 4 bits and QJL on the ``numba`` backend, no memory-mapped
        segment; ``"auto"``, the default, also asks for at least
        :data:`~polarquant.search.scanner.MIN_VECTORS` live vectors, below which the plain
        scan is as fast): byte-table candidates, then exact values from the codes, certified to be
        the same results as the plain scan (ties aside).  The first search builds the block
        layout of the codes, a second copy of their bytes, which :attr:`nbytes` counts (a
        removal marks its vectors there, without a rebuild).
        The attribute can be changed at any time.

    Examples
    --------
    >>> import numpy as np, polarquant as pq
    >>> rng = np.random.default_rng(0)
    >>> corpus = rng.standard_normal((1000, 64)).astype(np.float32)
    >>> index = pq.VectorIndex(pq.TurboQuantMSE(64, 4, seed=1), metric="cosine")
    >>> index.add(corpus)
    >>> scores, ids = index.search(corpus[:3], k=5)
    >>> ids[:, 0].tolist()  # each vector finds itself first
    [0, 1, 2]
    """

    def __init__(
        self,
        quantizer: Quantizer,
        metric: str = "ip",
        *,
        refine: str | None = None,
        fast_scan: bool | str = "auto",
    ):
        if not isinstance(quantizer, Quantizer):
            raise TypeError(
                f"quantizer must be a polarquant quantizer (TurboQuantMSE, QJL...), got "
                f"{type(quantizer).__name__}"
            )
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if refine is not None and refine not in REFINE_DTYPES:
            raise ValueError(f"refine must be None or one of {REFINE_DTYPES}, got {refine!r}")
        self.quantizer = quantizer
        self.metric = metric
        self.refine = refine
        if fast_scan not in ("auto", True, False):
            raise ValueError(f"fast_scan must be 'auto', True or False, got {fast_scan!r}")
        self.fast_scan = fast_scan
        self.dim = quantizer.dim
        self._segments: list[_Segment] = []
        self._next_id = 0
        self._id_table = None  # (sorted ids, their positions), rebuilt after add/remove

    # -- size --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return sum(s.live() for s in self._segments)

    @property
    def nbytes(self) -> int:
        """Bytes held: codes (with their norms), ids, squared norms (``l2``), the refinement
        copy, the deletion marks and the fast-scan views once built; memory-mapped arrays
        count as well."""
        return sum(s.nbytes() for s in self._segments)

    def __repr__(self) -> str:
        return (
            f"VectorIndex({self.quantizer!r}, metric={self.metric!r}, refine={self.refine!r}, "
            f"n={len(self)}, nbytes={self.nbytes})"
        )

    def ids(self) -> np.ndarray:
        """The ids of the vectors held, in the order they were added (int64)."""
        parts = [s.ids if s.alive is None else s.ids[s.alive] for s in self._segments]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    # -- add ---------------------------------------------------------------------------------
    def add(self, vectors, ids=None) -> None:
        """Encode and add ``vectors`` ``(n, dim)`` (or one vector ``(dim,)``).

        ``ids``: non-negative integers ``(n,)``, unique and new to the index; by default
        the next ``n`` integers after the largest id given so far (0, 1, 2... as FAISS).
        Vectors are encoded ``ADD_ROWS`` at a time: the temporaries stay that size, and the
        index grows by the codes (plus the refinement copy, if kept).

        Raises
        ------
        TypeError
            ``vectors`` is not a floating array, or ``ids`` not integers.
        ValueError
            Wrong dimension or shape, NaN or Inf, a zero vector under ``"cosine"``, norms
            outside the quantizer's storage range, or ids that are negative, repeated or
            already in the index.  Nothing is added then.
        """
        xp, x = as_vectors(computable(vectors, "vectors"), self.dim, "vectors", finite=False)
        self._check_place(x, "vectors")
        if x.ndim == 1:
            x = xp.reshape(x, (1, self.dim))
        if x.ndim != 2:
            raise ValueError(f"vectors must have shape (n, {self.dim}), got {tuple(x.shape)}")
        n = int(x.shape[0])
        ids = self._new_ids(ids, n)
        segments = []
        for start in range(0, n, ADD_ROWS):  # everything is built before anything is kept
            chunk = x[start : min(start + ADD_ROWS, n), ...]
            segments.append(self._segment(xp, chunk, ids[start : start + ADD_ROWS]))
        if not n:
            return
        self._append(_merged(*segments))  # one segment per call: one copy of its codes
        self._next_id = max(self._next_id, int(ids.max()) + 1)
        self._id_table = None

    def _check_place(self, x, name: str) -> None:
        """``x`` must be of the namespace and device of the codes held (``TypeError``), so
        that nothing fails later when segments are merged or scored together."""
        if self._segments:
            held = next(iter(self._segments[0].codes.fields.values()))
            same_place(x, held, name, "the vectors this index holds")

    def _new_ids(self, ids, n: int) -> np.ndarray:
        if ids is None:
            if self._next_id + n > MAX_ID + 1:
                raise ValueError(
                    f"the next {n} automatic ids would pass the largest id {MAX_ID}; give ids="
                )
            return np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        given = as_ids(ids)
        if given.shape != (n,):
            raise ValueError(f"ids must have shape ({n},), one per vector, got {given.shape}")
        unique, counts = np.unique(given, return_counts=True)
        if np.any(counts > 1):
            raise ValueError(f"ids repeated within the call: {unique[counts > 1][:10].tolist()}")
        found = self._positions(given)
        if np.any(found >= 0):
            raise ValueError(f"ids already in the index: {given[found >= 0][:10].tolist()}")
        return given

    def _segment(self, xp, chunk, ids: np.ndarray) -> _Segment:
        work = xp.float64 if chunk.dtype == xp.float64 else xp.float32
        rows = xp.astype(chunk, work)
        check_finite(rows, "vectors")
        if self.metric == "cosine":
            rows = _normalised(xp, rows, "vectors")
        codes = self.quantizer.encode(rows)
        sq_norms = None
        if self.metric == "l2":
            norms, _ = safe_norms(rows)
            sq_norms = np.asarray(to_host(norms), dtype=np.float64) ** 2
            if sq_norms.size and not np.all(sq_norms <= _STORAGE_RANGE["float32"][0]):
                raise ValueError(
                    "vectors with squared norms beyond float32's range (norms above 1.8e19) "
                    "cannot be ranked by l2 distance; rescale them"
                )
            sq_norms = sq_norms.astype(np.float32)
        refine = None
        if self.refine is not None:
            if self.refine == "float16" and rows.shape[0]:
                largest = xp.max(xp.abs(rows), axis=1)
                big, tiny = _STORAGE_RANGE["float16"]
                if float(xp.max(largest)) > big:
                    raise ValueError(
                        f"vectors with values up to {float(xp.max(largest)):.4g} exceed the "
                        "float16 range of the refinement copy; use refine='float32'"
                    )
                if bool(xp.any((largest > 0) & (largest < tiny))):
                    raise ValueError(
                        f"vectors whose values all lie below {tiny:.2g} lose their precision in "
                        "the float16 refinement copy; use refine='float32' or rescale them"
                    )
            refine = xp.astype(rows, getattr(xp, self.refine))
        return _Segment(codes, ids, sq_norms, refine)

    def _append(self, segment: _Segment) -> None:
        """Keep ``segment``, merged with the newest ones while it is at least half their size.

        Segments then grow geometrically, as in a log-structured merge: a corpus added in many
        small calls lives in ``O(log n)`` segments (a search makes a few calls per segment, not
        one per ``add``), each vector is copied ``O(log n)`` times in all, and deleted vectors
        are dropped when their segment is merged.  Memory-mapped segments (a loaded index)
        are never merged into memory.
        """
        segments = [*self._segments, segment]  # kept only once every merge has worked
        while len(segments) >= 2:
            older, newer = segments[-2], segments[-1]
            if older.mapped or newer.mapped or 2 * newer.n < older.n:
                break
            segments[-2:] = [_merged(older, newer)]
        self._segments = segments

    # -- remove ------------------------------------------------------------------------------
    def remove(self, ids) -> None:
        """Remove the vectors with these ids (all must be in the index, else nothing is removed).

        Raises
        ------
        TypeError
            ``ids`` are not integers.
        UnknownIdsError
            (a ``KeyError``) Some ids are not in the index (they are named); nothing is removed then.
        """
        given = np.unique(as_ids(ids).reshape(-1))
        positions = self._positions(given)
        if np.any(positions < 0):
            raise UnknownIdsError(f"ids not in the index: {given[positions < 0][:10].tolist()}")
        starts = self._starts()
        which = np.searchsorted(starts, positions, side="right") - 1
        for s in np.unique(which):
            seg = self._segments[s]
            if seg.alive is None:
                seg.alive = np.ones(seg.n, dtype=bool)
            rows = positions[which == s] - starts[s]
            seg.alive[rows] = False
            if seg.view is not None:  # the removed vectors leave the fast-scan keys too
                scanner.mark_removed(seg.view, rows, self.metric)
        self._id_table = None

    def _starts(self) -> np.ndarray:
        return np.cumsum([0] + [s.n for s in self._segments[:-1]], dtype=np.int64)

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Positions (over all segments) of the live vectors with ``ids``; -1 where absent."""
        if self._id_table is None:
            all_ids = np.concatenate([s.ids for s in self._segments] or [np.zeros(0, np.int64)])
            alive = np.concatenate(
                [np.ones(s.n, bool) if s.alive is None else s.alive for s in self._segments]
                or [np.zeros(0, bool)]
            )
            live = np.flatnonzero(alive)
            order = np.argsort(all_ids[live], kind="stable")
            self._id_table = (all_ids[live][order], live[order])
        sorted_ids, where = self._id_table
        out = np.full(ids.shape, -1, dtype=np.int64)
        if not sorted_ids.shape[0]:
            return out
        at = np.searchsorted(sorted_ids, ids)
        found = (at < sorted_ids.shape[0]) & (
            sorted_ids[np.minimum(at, len(sorted_ids) - 1)] == ids
        )
        out[found] = where[at[found]]
        return out

    # -- search ------------------------------------------------------------------------------
    def search(self, queries, k: int, *, rerank: int | None = None):
        """The ``k`` nearest vectors of each query: ``(scores, ids)``, best first.

        ``queries`` ``(..., dim)``; both results have shape ``queries.shape[:-1] + (k,)``:
        float32 scores (inner products or cosines, larger first; squared distances for
        ``"l2"``, smaller first) and int64 ids, as NumPy arrays.  Scores are estimated
        from the codes; with a refinement copy, the best ``rerank`` candidates (default
        ``4 k``, at most the index's size) are scored exactly and the scores returned are
        the exact ones.  Equal scores are ordered by the order of addition (scores of
        identical codes computed in blocks of other shapes, e.g. after another ``add`` call or
        in a batch of another size, may differ by BLAS rounding in their last bits).

        Built from :func:`query_rows`, :func:`search_sizes`, :meth:`scan`,
        :meth:`exact_values` and :func:`metric_scores`, which a sharded index
        (:mod:`polarquant.search.distributed`) combines the same way.

        Raises
        ------
        TypeError
            ``queries`` not a floating array; ``k`` or ``rerank`` not an integer.
        ValueError
            Wrong dimension, NaN or Inf, a zero query under ``"cosine"``, ``k`` outside
            ``1 ... len(index)``, ``rerank < k``, or ``rerank`` without a refinement copy.
        """
        xp, rows, lead = query_rows(computable(queries, "queries"), self.dim, self.metric)
        self._check_place(rows, "queries")
        k, candidates = search_sizes(k, rerank, self.refine, len(self))
        nq = int(rows.shape[0])
        out_scores = np.empty((nq, k), np.float32)
        out_ids = np.empty((nq, k), np.int64)
        step = max(1, min(nq, BLOCK_ELEMENTS // max(candidates, 1024)))
        with quiet_overflow(xp):  # an overflowed score is refused below (check_scores)
            for a in range(0, nq, step):
                block = rows[a : a + step, ...]
                values, positions = self.scan(block, candidates)
                exact = self.refine is not None
                if exact:
                    values, positions = self._rerank(block, positions, k)
                out_scores[a : a + step] = metric_scores(self.metric, block, values, exact=exact)
                out_ids[a : a + step] = self._ids_at(to_host(positions))
        check_scores(out_scores)
        return out_scores.reshape(lead + (k,)), out_ids.reshape(lead + (k,))

    def scan(self, rows, c: int, *, block_elements: int | None = None):
        """The ``c`` best vectors for each of the prepared queries ``rows`` (:func:`query_rows`),
        from the codes: ``(values, positions)`` ``(nq, c)``, best first, ties by position.

        Fewer than ``c`` columns come back when fewer vectors are held (removed ones count,
        with the value ``-inf``).  Values are larger-first for every metric: the estimated inner product (``"ip"``,
        ``"cosine"``), or ``2 <q, x> - ||x||^2`` for ``"l2"`` (the squared distance less the
        query's own ``||q||^2``, which :func:`metric_scores` adds back).  Positions count the
        vectors held (removed ones included) in the order of addition.  With fast scan
        (``fast_scan``, :mod:`polarquant.search.scanner`) the candidates come from byte tables
        and their values are the exact ones from the codes, certified to be the same top ``c``
        (ties aside).  Otherwise blocks of codes are
        scored by the quantizer's :meth:`~polarquant.Quantizer.score` and only the running
        top ``c`` is kept (:class:`~polarquant.search.topk.TopK`), ``block_elements`` scores at
        a time (default :data:`BLOCK_ELEMENTS`).
        """
        xp = namespace(rows)
        c = check_int(c, "c", low=1)
        nq = int(rows.shape[0])
        if not self._segments:  # nothing held: no candidates
            return xp.zeros((nq, 0), dtype=rows.dtype), xp.zeros((nq, 0), dtype=xp.int64)
        live = len(self)
        if self._uses_fast_scan(live):
            return self._fast_scan(np.asarray(rows), c, live, block_elements)
        return self._plain_scan(rows, c, block_elements)

    def _plain_scan(self, rows, c: int, block_elements: int | None):
        """The plain scan of :meth:`scan`: scores block by block, the running top ``c``."""
        xp = namespace(rows)
        top = TopK(c)
        budget = BLOCK_ELEMENTS if block_elements is None else block_elements
        step = max(c, budget // max(int(rows.shape[0]), 1))
        step = max(c, min(step, ROW_BLOCK))
        start = 0
        for seg in self._segments:
            for a in range(0, seg.n, step):
                b = min(seg.n, a + step)
                values = self.quantizer.score(rows, seg.codes[a:b])
                if self.metric == "l2":  # -||q - x||^2 + ||q||^2: larger is nearer
                    values = 2 * values - xp.asarray(seg.sq_norms[a:b], dtype=values.dtype)
                if seg.alive is not None:
                    alive = xp.asarray(seg.alive[a:b])
                    values = xp.where(alive, values, xp.asarray(-math.inf, dtype=values.dtype))
                top.push(values, start + a)
            start += seg.n
        return top.finish()

    def _uses_fast_scan(self, live: int) -> bool:
        return (
            self.fast_scan
            and live >= (scanner.MIN_VECTORS if self.fast_scan == "auto" else 1)
            and not any(s.mapped for s in self._segments)
            and scanner.applies(self.quantizer)
        )

    def _fast_scan(self, rows, c: int, live: int, block_elements: int | None):
        """:func:`scanner.scan` of at most the live vectors (the queries it leaves to the plain
        scan go there); asked for more, the removed ones fill the columns up to the vectors
        held, value ``-inf``, in position order (as the plain scan ranks them)."""
        values, positions, done = scanner.scan(self, rows, min(c, live))
        if not done.all():
            rest = np.flatnonzero(~done)
            values[rest], positions[rest] = self._plain_scan(
                rows[rest], min(c, live), block_elements
            )
        width = min(c, sum(s.n for s in self._segments))
        if width > live:
            dead = np.concatenate(
                [
                    np.flatnonzero(~s.alive) + start
                    for s, start in zip(self._segments, self._starts(), strict=True)
                    if s.alive is not None
                ]
            )[: width - live]
            nq = values.shape[0]
            values = np.concatenate([values, np.full((nq, dead.size), -np.inf, values.dtype)], 1)
            positions = np.concatenate([positions, np.tile(dead, (nq, 1))], axis=1)
        return values, positions

    def _scan_view(self, segment: _Segment):
        """The segment's fast-scan view, built on first use (a removal marks its vectors there)."""
        if segment.view is None:
            segment.view = scanner.build_view(self.quantizer, segment, self.metric)
        return segment.view

    def exact_values(self, rows, query, positions):
        """Exact values of the pairs (``rows[query[i]]``, vector at ``positions[i]``) from the
        refinement copy, larger-first as :meth:`scan`'s but with the true vectors: inner
        products (``"ip"``, ``"cosine"``) or minus the squared distance (``"l2"``); ``(m,)``."""
        if self.refine is None:
            raise ValueError("exact values need a refinement copy: build the index with refine=")
        xp = namespace(rows)
        positions = np.asarray(to_host(positions)).reshape(-1)
        vectors = self._refine_rows(xp, positions, rows.dtype)
        q = xp.take(rows, xp.asarray(np.asarray(to_host(query)).reshape(-1)), axis=0)
        if self.metric == "l2":
            diff = vectors - q
            return -xp.sum(diff * diff, axis=1)
        return xp.sum(vectors * q, axis=1)

    def _rerank(self, rows, positions, k: int):
        """The ``k`` best of the candidates ``positions`` ``(nq, r)`` by their exact values."""
        xp = namespace(rows)
        nq, r = positions.shape
        query = np.repeat(np.arange(nq), r)
        exact = xp.reshape(self.exact_values(rows, query, positions), (nq, r))
        positions = xp.asarray(positions)
        values, order = best_exact(exact, positions, k)
        return values, xp.take_along_axis(positions, order, axis=1)

    def _refine_rows(self, xp, positions: np.ndarray, dtype):
        """Rows ``positions`` (over all segments) of the refinement copy, in ``xp`` and ``dtype``."""
        starts = self._starts()
        which = np.searchsorted(starts, positions, side="right") - 1
        picked, parts = [], []
        for s in np.unique(which):
            sel = np.flatnonzero(which == s)
            refine = self._segments[s].refine
            xr = namespace(refine)  # NumPy (a memory map, maybe) or the device's namespace
            parts.append(
                xp.asarray(xr.take(refine, xr.asarray(positions[sel] - starts[s]), axis=0))
            )
            picked.append(sel)
        rows = xp.astype(xp.concat(parts, axis=0), dtype)
        order = np.argsort(np.concatenate(picked), kind="stable")  # back to the asked order
        return xp.take(rows, xp.asarray(order), axis=0)

    def _ids_at(self, positions: np.ndarray) -> np.ndarray:
        starts = self._starts()
        which = np.searchsorted(starts, positions, side="right") - 1
        out = np.empty(positions.shape, np.int64)
        for s in np.unique(which):
            sel = which == s
            out[sel] = self._segments[s].ids[positions[sel] - starts[s]]
        return out

    # -- files -------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the index (live vectors only) to ``path`` (see :mod:`polarquant.search.storage`)."""
        from .storage import save

        save(path, self)

    @classmethod
    def load(cls, path, *, mmap: bool = False, backend: str | None = None) -> VectorIndex:
        """Read an index written by :meth:`save` (``mmap=True``: map codes and refinement copy
        from the file instead of reading them; ``backend``: the quantizer's backend)."""
        from .storage import load

        return load(path, mmap=mmap, backend=backend)


def as_ids(ids) -> np.ndarray:
    """``ids`` as int64 on the host: integers in ``0 ... MAX_ID`` (an empty list is no ids).

    Raises ``TypeError`` for non-integers and ``ValueError`` for ids out of that range (the
    automatic ids continue after the largest id, so the largest must leave room for one more).
    """
    given = np.asarray(to_host(ids))
    if given.size == 0:
        return np.zeros(given.shape, dtype=np.int64)
    if given.dtype.kind not in "iu":
        raise TypeError(f"ids must be integers, got dtype {given.dtype}")
    if given.min() < 0 or given.max() > MAX_ID:
        raise ValueError(f"ids must be non-negative integers no larger than {MAX_ID}")
    return given.astype(np.int64)


def query_rows(queries, dim: int, metric: str):
    """Queries checked and prepared for a search: ``(xp, rows, lead)``.

    ``rows`` ``(nq, dim)`` in float32 (float64 stays float64), normalised for ``"cosine"``;
    ``lead`` is ``queries.shape[:-1]``, the results' leading shape.  Raises as
    :meth:`VectorIndex.search` documents (not an array, not floating, wrong dimension,
    NaN/Inf, a zero query under ``"cosine"``).
    """
    xp, q = as_vectors(queries, dim, "queries")
    lead = tuple(q.shape[:-1])
    rows = xp.reshape(xp.astype(q, xp.float64 if q.dtype == xp.float64 else xp.float32), (-1, dim))
    if metric == "cosine":
        rows = _normalised(xp, rows, "queries")
    elif rows.shape[0]:
        largest = float(xp.max(safe_norms(rows)[0]))
        if not largest**2 <= _STORAGE_RANGE["float32"][0]:
            raise ValueError(
                f"queries with norms up to {largest:.4g} cannot be scored: their squared norms "
                "pass float32's range (norms above 1.8e19); rescale them"
            )
    return xp, rows, lead


def check_scores(scores: np.ndarray) -> None:
    """Refuse a search whose scores overflowed float32 (``ValueError``): an infinite score
    ties with the removed vectors' ``-inf`` and ranks nothing.  A query's inner products
    reach ``||q|| ||x||``, beyond 3.4e38 for a large query against large vectors."""
    if not np.all(np.isfinite(scores)):
        raise ValueError(
            "the scores of these queries overflow float32 (|<q, x>| above 3.4e38: large "
            "queries against large vectors); rescale the queries"
        )


def computable(x, name: str):
    """``x`` as an array the index computes on: NumPy arrays (and lists, refused later by
    :func:`~polarquant._array.as_vectors` with its reason) as they are, torch tensors read
    as the KV cache reads them (:func:`~polarquant.kv.attention.check_float_array`: a CPU
    tensor as a NumPy view, a CUDA one as a CuPy array through DLPack); any other array
    namespace is refused, naming the two the index takes (its top-k selection needs a
    partial sort, which the array API lacks)."""
    if not (is_torch_array(x) or (is_array_api_obj(x) and not isinstance(x, np.ndarray))):
        return x
    x = check_float_array(x, name)
    if not (isinstance(x, np.ndarray) or is_cupy_array(x)):
        raise TypeError(
            f"{name} is a {type(x).__module__}.{type(x).__qualname__}: a VectorIndex holds NumPy "
            "arrays (host) or CuPy arrays (GPU), and torch tensors are read as those; convert "
            f"{name} first"
        )
    return x


def search_sizes(k, rerank, refine, live: int) -> tuple[int, int]:
    """``(k, candidates)`` of a search over ``live`` vectors: ``k`` checked (an integer in
    ``1 ... live``), and the candidates scanned from the codes (``k``, or with a refinement
    copy ``rerank``, by default ``DEFAULT_RERANK_FACTOR * k``, at most ``live``)."""
    k = check_int(k, "k", low=1)
    if k > live:
        raise ValueError(f"k={k} is larger than the index, which holds {live} vectors")
    if rerank is not None:
        if refine is None:
            raise ValueError("rerank needs a refinement copy: build the index with refine=")
        rerank = check_int(rerank, "rerank", low=k)
    if refine is None:
        return k, k
    return k, min(live, rerank if rerank is not None else DEFAULT_RERANK_FACTOR * k)


def best_exact(exact, positions, k: int):
    """The ``k`` best candidates by their exact values ``(nq, r)``, equal values in position
    order (the order of addition, as everywhere in a search): ``(values, order)``, ``order``
    indexing the candidates, to take their positions or ids along."""
    xp = namespace(exact)
    order = best_order(xp, exact, positions, k)
    return xp.take_along_axis(exact, order, axis=1), order


def metric_scores(metric: str, rows, values, *, exact: bool = False) -> np.ndarray:
    """The scores :meth:`VectorIndex.search` returns, float32 on the host, for values of
    :meth:`VectorIndex.scan` (``"l2"``: squared distances ``||q||^2 - value``, clipped at 0,
    since estimated distances can dip below zero and true ones cannot) or, with ``exact``, of
    :meth:`VectorIndex.exact_values` (``"l2"``: ``-value``)."""
    if metric == "l2" and not exact:
        xp = namespace(rows)
        values = xp.sum(rows * rows, axis=1)[:, None] - values
    out = np.asarray(to_host(values), dtype=np.float32)
    if metric == "l2" and exact:
        np.negative(out, out=out)
    elif metric == "l2":
        np.maximum(out, 0, out=out)
    return out


def _normalised(xp, rows, name: str):
    """Rows divided by their norms (computed without overflow); zero rows are refused."""
    norms, _ = safe_norms(rows)
    zero = norms == 0
    if bool(xp.any(zero)):
        raise ValueError(
            f"{name} hold {int(xp.sum(xp.astype(zero, xp.int64)))} zero vector(s): their cosine "
            "similarity is undefined"
        )
    return rows / norms[:, None]
