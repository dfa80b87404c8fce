"""Vector search beyond one machine: a :class:`~polarquant.VectorIndex` split over Dask workers.

TurboQuant's nearest-neighbour experiment (Zandieh et al., ICLR 2026, arXiv 2504.19874,
Sec. 4.4) rests on the quantizers being *data-oblivious*: "indexing" is encoding, with no
training, and the rotation (or sketch) is rebuilt from the seed.  A block of rows encoded on
any machine gives exactly the bytes encoding it locally gives, so a corpus held as a
``dask.array`` of row blocks can be indexed where it lives.  :class:`DaskVectorIndex` does that
on a ``distributed`` cluster and returns the results of one :class:`~polarquant.VectorIndex`.

Symbols: ``S`` shards, ``nq`` queries, ``k`` results, ``c`` candidates kept per shard and query
(``c = k``; with a refinement copy, ``c`` = the re-ranking candidates, ``4 k`` by default);
a *position* is the rank of a vector in the order of addition over all shards (a shard's
offset plus its position in the shard).

* ``add``: every block of rows becomes one shard, a :class:`~polarquant.VectorIndex` built by
  the task that depends on the block, on the worker that holds it; the quantizer travels as
  its JSON :meth:`~polarquant.Quantizer.config`, rebuilt once per worker process.  Shards stay
  in the workers' memory as Dask futures (persisted): codes, ids (8 bytes a vector), squared
  norms (``l2``, 4 bytes) and the refinement copy, if kept.  Ids are the global row numbers
  unless given.
* ``search``: the client checks and prepares the queries exactly as
  :meth:`~polarquant.VectorIndex.search` does, sends them once, and every shard keeps its
  ``c`` best per query as ``(values, positions, ids)``.  A binary tree of tasks merges pairs
  of those on the workers (``S - 1`` merges in ``ceil(log2 S)`` levels), so the client
  receives ``nq x c`` results whatever ``S``.  A merge keeps the ``c`` largest values, equal
  values by position: the rule of :mod:`~polarquant.search.topk`, so the merged list is the
  single index's.
* ``l2`` is reduced on the values the single index ranks, ``2 <q, x> - ||x||^2`` (larger
  first), turned into ``||q||^2 - value`` on the client at the end: reducing the distances
  would order two vectors whose distances round to the same float by position, where the
  single index orders them by value.
* ``refine=``: two rounds.  The global ``c`` best candidates from the codes (the tree above),
  then the exact score of each candidate, computed by the shard that holds its refinement
  copy, and the top ``k`` by the single index's stable sort.  (Each shard re-ranking its own
  candidates would re-rank more vectors, and return other results.)
* ``save`` / ``load``: a directory of ``polarquant-index`` files, one per shard, written by the
  worker that holds it (:meth:`~polarquant.VectorIndex.save`; each is loadable on its own),
  and a JSON manifest, :data:`MANIFEST` (format :data:`MANIFEST_FORMAT`).

Results.  The same ids in the same order as a :class:`~polarquant.VectorIndex` given the same
rows and ids in the same order, and the same scores up to the rounding of the products: a
shard scores its rows in blocks that start at its own first row, and BLAS (the NumPy
reference; Numba from 8 queries on) may round a product of another shape differently, by a
few units in the last place.  Numba's table kernels (fewer than 8 queries) compute each
score alone, and re-ranking scores each candidate alone: those agree bit for bit.  Two
vectors whose scores differ by less than that rounding may swap.

``remove``: the shards holding the ids are replaced by shards that share their codes and mark
the removed vectors (a search already running reads the old shards), as
:meth:`~polarquant.VectorIndex.remove` marks them.

Departures from :class:`~polarquant.VectorIndex`: blocks must be NumPy arrays and the backend a
CPU one (``"numpy"``, ``"numba"``), resolved on the client (``backend=``,
:func:`~polarquant.use_backend`, ``POLARQUANT_BACKEND``) and sent with every task.

Requires ``dask`` and ``distributed`` (the ``dask`` extra, :data:`INSTALL_HINT`): importing
this module, or polarquant, imports neither; the first :class:`DaskVectorIndex` does.  It
uses the client it is given, or the default one, and never starts a cluster.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.util
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._array import namespace, to_host
from .._version import __version__
from ..quantizer import Quantizer
from . import index as _index
from .index import METRICS, REFINE_DTYPES, VectorIndex
from .topk import best_order

__all__ = ["DaskVectorIndex", "INSTALL_HINT", "MANIFEST", "MANIFEST_FORMAT"]

#: How to install what this module needs.
INSTALL_HINT = (
    'python -m pip install "dask[array]" distributed '
    '(from a clone of polarquant: python -m pip install -e ".[dask]")'
)
#: The manifest :meth:`DaskVectorIndex.save` writes beside the shard files.
MANIFEST = "index.json"
#: Its ``format`` (version 1).
MANIFEST_FORMAT = "polarquant-dask-index"
_MANIFEST_VERSION = 1
#: Largest manifest read (a few hundred bytes per shard).
MAX_MANIFEST_BYTES = 1 << 26
_MANIFEST_KEYS = ("format", "format_version", "metric", "refine", "next_id", "config", "shards")
#: Backends whose shards live in host memory (a CuPy shard would need device blocks and queries).
CPU_BACKENDS = ("numpy", "numba")


def _dask():
    """``(dask.array, distributed)``, or an ``ImportError`` with the install command."""
    missing = [name for name in ("dask", "distributed") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"polarquant.search.distributed needs {' and '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed; install the dask extra: "
            f"{INSTALL_HINT}"
        )
    import dask.array
    import distributed

    return dask.array, distributed


def _client(client):
    """The given ``distributed.Client``, or the default one; never a new cluster."""
    _, distributed = _dask()
    if client is None:
        try:
            return distributed.default_client()
        except ValueError:
            raise ValueError(
                "no Dask client: connect one first, e.g. client = distributed.Client("
                "'tcp://scheduler:8786') (or distributed.Client(distributed.LocalCluster()) "
                "on one machine), and pass client= or leave it as the default client; "
                "polarquant never starts a cluster itself"
            ) from None
    if not isinstance(client, distributed.Client):
        raise TypeError(f"client must be a distributed.Client, got {type(client).__name__}")
    return client


@dataclass(frozen=True)
class _Shard:
    """One shard: the future of a :class:`~polarquant.VectorIndex` on a worker, and what the
    client knows of it."""

    future: object  # distributed.Future
    offset: int  # position of its first vector in the order of addition
    n: int  # live vectors
    nbytes: int
    id_min: int  # of the live vectors
    id_max: int
    held: int  # vectors held, removed ones included (positions count them)


class DaskVectorIndex:
    """A :class:`~polarquant.VectorIndex` split in shards over the workers of a Dask cluster.

    Parameters
    ----------
    quantizer : Quantizer
        Any quantizer of the library; its configuration is sent to the workers, and its
        backend (``backend=``, else the client's :func:`~polarquant.use_backend` or
        ``POLARQUANT_BACKEND``, else ``"numpy"``) runs there.
    metric : {"ip", "cosine", "l2"}
        As :class:`~polarquant.VectorIndex`.
    refine : {None, "float16", "float32"}
        As :class:`~polarquant.VectorIndex`: each shard keeps a copy of its rows for exact
        re-ranking.
    client : distributed.Client, optional
        The cluster to use; default: the default client (the last one created).

    Examples
    --------
    >>> import dask.array as da, numpy as np, polarquant as pq
    >>> from distributed import Client, LocalCluster
    >>> from polarquant.search.distributed import DaskVectorIndex
    >>> cluster = LocalCluster(n_workers=1, processes=False, dashboard_address=None)
    >>> client = Client(cluster)
    >>> x = np.random.default_rng(0).standard_normal((1000, 64)).astype(np.float32)
    >>> quantizer = pq.TurboQuantMSE(64, 4, seed=1, backend="numpy")
    >>> index = DaskVectorIndex(quantizer, metric="cosine", client=client)
    >>> index.add(da.from_array(x, chunks=(300, 64)))  # shards of 300, 300, 300, 100 rows
    >>> len(index), len(index.shards)
    (1000, 4)
    >>> scores, ids = index.search(x[:3], k=5)
    >>> local = pq.VectorIndex(quantizer, metric="cosine")
    >>> local.add(x)
    >>> bool(np.array_equal(ids, local.search(x[:3], k=5)[1]))
    True
    >>> client.close(); cluster.close()
    """

    def __init__(
        self,
        quantizer: Quantizer,
        metric: str = "ip",
        *,
        refine: str | None = None,
        client=None,
    ):
        VectorIndex(quantizer, metric, refine=refine)  # the same checks, the same errors
        from ..backends import current_backend

        backend = current_backend(quantizer.backend)
        if backend not in CPU_BACKENDS:
            raise ValueError(
                f"DaskVectorIndex runs on the CPU backends {CPU_BACKENDS}, got backend "
                f"{backend!r}; give the quantizer backend='numpy' or backend='numba'"
            )
        self.client = _client(client)
        self.quantizer = quantizer
        self.metric = metric
        self.refine = refine
        self.dim = quantizer.dim
        self.backend = backend
        self._config = json.dumps(quantizer.config(), sort_keys=True)
        self._shards: list[_Shard] = []
        self._next_id = 0

    # -- size --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return sum(s.n for s in self._shards)

    @property
    def nbytes(self) -> int:
        """Bytes held by the shards on the workers: the sum of their
        :attr:`~polarquant.VectorIndex.nbytes`, asked of the workers (a search may have added
        a shard's fast-scan view since it was built)."""
        client = self.client
        return int(
            sum(client.gather([client.submit(_shard_nbytes, s.future) for s in self._shards]))
        )

    @property
    def shards(self) -> list:
        """The futures of the shards (:class:`~polarquant.VectorIndex` objects on the
        workers), in the order of addition."""
        return [s.future for s in self._shards]

    def __repr__(self) -> str:
        return (
            f"DaskVectorIndex({self.quantizer!r}, metric={self.metric!r}, refine={self.refine!r}"
            f", n={len(self)}, shards={len(self._shards)}, nbytes={self.nbytes})"
        )

    def ids(self) -> np.ndarray:
        """The ids of the vectors held, in the order they were added (gathered: 8 bytes each)."""
        parts = self.client.gather(
            [self.client.submit(VectorIndex.ids, s.future) for s in self._shards]
        )
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    # -- add ---------------------------------------------------------------------------------
    def add(self, vectors, ids=None) -> None:
        """Encode the ``dask.array`` ``vectors`` ``(n, dim)``, one shard per block of rows.

        Each block is encoded by a task scheduled with the block (where it lives, when it is
        persisted).  ``ids``: a Dask (or NumPy) array of ``n`` unique non-negative integers,
        rechunked like the rows if needed; by default the next ``n`` integers after the
        largest id given so far (the global row numbers on the first call).  Blocks of
        increasing ids are checked for repeats at no cost; ids shuffled across blocks cost
        one intersection task per pair of blocks whose id ranges overlap.

        Raises
        ------
        TypeError
            ``vectors`` is not a Dask array of floats, or ``ids`` not integers.
        ValueError
            Wrong dimension or shape, blocks split along columns (rechunk them), unknown
            block sizes, and, naming the rows, whatever :meth:`~polarquant.VectorIndex.add`
            refuses in a block (NaN or Inf, zero vectors under ``"cosine"``, ...); ids negative,
            repeated or already in the index.  Nothing is added then.
        """
        da, _ = _dask()
        rows = self._check_vectors(da, vectors)
        n = int(vectors.shape[0])
        ids = self._check_ids(da, ids, n, vectors.chunks[0])
        if ids is None and self._next_id + n > _index.MAX_ID + 1:
            raise ValueError(
                f"the next {n} automatic ids would pass the largest id {_index.MAX_ID}; give ids="
            )
        starts = np.cumsum((0,) + rows[:-1], dtype=np.int64)
        blocks = vectors.to_delayed().ravel()
        id_blocks = ids.to_delayed().ravel() if ids is not None else [None] * len(blocks)
        from dask import delayed

        tasks = []
        for block, id_block, start, size in zip(blocks, id_blocks, starts, rows, strict=True):
            if size == 0:
                continue
            first = None if ids is not None else self._next_id + int(start)
            tasks.append(
                delayed(_build_shard)(
                    block,
                    id_block,
                    first,
                    self._config,
                    self.backend,
                    self.metric,
                    self.refine,
                    (int(start), int(start + size)),
                )
            )
        if not tasks:
            return
        futures = self.client.compute(tasks)
        infos = self.client.gather([self.client.submit(_shard_info, f) for f in futures])
        offset = sum(s.held for s in self._shards)
        new = []
        for future, (count, held, nbytes, id_min, id_max) in zip(futures, infos, strict=True):
            new.append(_Shard(future, offset, count, nbytes, id_min, id_max, held))
            offset += held
        self._check_repeats(new)
        self._shards.extend(new)
        self._next_id = max(self._next_id, max(s.id_max for s in new) + 1)

    def _check_vectors(self, da, vectors) -> tuple:
        """Client-side checks of ``vectors``; its row block sizes."""
        if not isinstance(vectors, da.Array):
            raise TypeError(
                "vectors must be a dask.array (for an in-memory array: "
                "dask.array.from_array(x, chunks=(rows_per_block, -1))), got "
                f"{type(vectors).__name__}"
            )
        if vectors.dtype.kind != "f":
            raise TypeError(
                "vectors must have a real floating dtype (float16, float32 or float64), got "
                f"{vectors.dtype}"
            )
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape (n, {self.dim}), got {tuple(vectors.shape)}")
        rows, cols = vectors.chunks
        if any(np.isnan(c) for c in rows):
            raise ValueError(
                "vectors has blocks of unknown size; call vectors.compute_chunk_sizes() first"
            )
        if len(cols) != 1:
            raise ValueError(
                f"vectors must be chunked along rows only (one block per row range, all "
                f"{self.dim} columns), got {len(cols)} column blocks of widths {cols}; rechunk "
                "with vectors.rechunk({1: -1})"
            )
        meta = getattr(vectors, "_meta", None)
        if meta is not None and type(meta) is not np.ndarray:
            raise TypeError(
                f"the blocks of vectors must be NumPy arrays, got {type(meta).__module__}."
                f"{type(meta).__name__} (DaskVectorIndex runs on the CPU backends {CPU_BACKENDS})"
            )
        return tuple(int(r) for r in rows)

    @staticmethod
    def _check_ids(da, ids, n: int, row_chunks):
        """Client-side checks of ``ids`` (None, or a Dask array chunked like the rows)."""
        if ids is None:
            return None
        if not isinstance(ids, da.Array):
            given = _index.as_ids(ids)
            if given.shape != (n,):
                raise ValueError(f"ids must have shape ({n},), one per vector, got {given.shape}")
            return da.from_array(given, chunks=(row_chunks,))
        if ids.dtype.kind not in "iu":
            raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
        if any(np.isnan(c) for c in ids.chunks[0]):
            raise ValueError("ids has blocks of unknown size; call ids.compute_chunk_sizes() first")
        if ids.shape != (n,):
            raise ValueError(f"ids must have shape ({n},), one per vector, got {ids.shape}")
        return ids if ids.chunks[0] == tuple(row_chunks) else ids.rechunk((row_chunks,))

    def _check_repeats(self, new: list[_Shard]) -> None:
        """Refuse ids held by two shards.  Only shards whose id ranges overlap are compared,
        on the workers, from their ids alone (8 bytes a vector move, never the codes)."""
        fresh = {id(s) for s in new}
        shards = sorted(self._shards + new, key=lambda s: s.id_min)
        pairs = []
        for i, a in enumerate(shards):
            for b in shards[i + 1 :]:
                if b.id_min > a.id_max:
                    break
                if id(a) in fresh or id(b) in fresh:
                    pairs.append((a, b))
        if not pairs:
            return
        client = self.client
        ids = {id(s): client.submit(VectorIndex.ids, s.future) for pair in pairs for s in pair}
        common = client.gather(
            [client.submit(np.intersect1d, ids[id(a)], ids[id(b)]) for a, b in pairs]
        )
        found = {"repeated within the call": [], "already in the index": []}
        for (a, b), both in zip(pairs, common, strict=True):
            fresh_pair = id(a) in fresh and id(b) in fresh
            found["repeated within the call" if fresh_pair else "already in the index"].append(both)
        for where, parts in found.items():  # VectorIndex's messages, in its order
            repeated = np.unique(np.concatenate(parts or [np.zeros(0, np.int64)]))
            if repeated.size:
                raise ValueError(f"ids {where}: {repeated[:10].tolist()}")

    # -- remove ------------------------------------------------------------------------------
    def remove(self, ids) -> None:
        """Remove the vectors with these ids (all must be in the index, else nothing is removed).

        As :meth:`~polarquant.VectorIndex.remove`: the vectors stay held, marked, until the
        shard is saved (only live vectors are written).  Each shard that holds some of the ids
        is replaced by a new one (a task on its worker) that shares its codes and copies only
        its deletion marks, so a search already running reads the old shard, unchanged; a
        shard left with no live vector is dropped.  Only shards whose id ranges meet the ids are
        asked (8 bytes an id move, never the codes).

        Raises
        ------
        TypeError
            ``ids`` are not integers.
        UnknownIdsError
            (a ``KeyError``) Some ids are not in the index (they are named); nothing is removed.
        """
        given = np.unique(_index.as_ids(ids).reshape(-1))
        if not given.size:
            return
        client = self.client
        touched = [
            i
            for i, s in enumerate(self._shards)
            if s.n and s.id_min <= given[-1] and s.id_max >= given[0]
        ]
        sent = client.scatter(given, broadcast=False, hash=False) if touched else None
        found = client.gather(
            [client.submit(_shard_found, self._shards[i].future, sent) for i in touched]
        )
        hit = np.concatenate(found) if found else np.zeros(0, np.int64)
        missing = np.setdiff1d(given, hit)
        if missing.size:
            raise _index.UnknownIdsError(f"ids not in the index: {missing[:10].tolist()}")
        replaced = {
            i: client.submit(_shard_without, self._shards[i].future, part, pure=False)
            for i, part in zip(touched, found, strict=True)
            if part.size
        }
        infos = dict(
            zip(
                replaced,
                client.gather([client.submit(_shard_info, f) for f in replaced.values()]),
                strict=True,
            )
        )
        shards, offset = [], 0
        for i, shard in enumerate(self._shards):
            if i in replaced:
                count, held, nbytes, id_min, id_max = infos[i]
                if count == 0:
                    continue  # nothing live: the shard goes
                shard = _Shard(replaced[i], offset, count, nbytes, id_min, id_max, held)
            else:
                shard = dataclasses.replace(shard, offset=offset)
            shards.append(shard)
            offset += shard.held
        self._shards = shards

    # -- search ------------------------------------------------------------------------------
    def search(self, queries, k: int, *, rerank: int | None = None):
        """The ``k`` nearest vectors of each query over all shards: ``(scores, ids)``.

        As :meth:`~polarquant.VectorIndex.search` (same shapes, dtypes, order, ties and errors, all
        raised on the client before any task is sent): the per-shard top ``k`` (or
        ``rerank`` candidates) are merged by a tree of tasks on the workers.

        Raises
        ------
        TypeError
            ``queries`` not a floating array; ``k`` or ``rerank`` not an integer.
        ValueError
            Wrong dimension, NaN or Inf, a zero query under ``"cosine"``, ``k`` outside
            ``1 ... len(index)``, ``rerank < k``, or ``rerank`` without a refinement copy.
        """
        rows, lead, k, candidates = self._prepare(queries, k, rerank)
        nq = int(rows.shape[0])
        if nq == 0:
            return np.empty(lead + (k,), np.float32), np.empty(lead + (k,), np.int64)
        # the query blocks of VectorIndex.search, and its row blocks, read here (not on workers)
        step = max(1, min(nq, _index.BLOCK_ELEMENTS // max(candidates, 1024)))
        client = self.client
        sent = client.scatter(rows, broadcast=True, hash=False)
        parts = [
            client.submit(
                _shard_best, s.future, sent, candidates, step, _index.BLOCK_ELEMENTS, s.offset
            )
            for s in self._shards
        ]
        values, positions, ids = _tree_reduce(client, parts, candidates).result()
        exact = self.refine is not None
        if exact:
            values, ids = self._rerank(sent, positions, ids, k)
        scores = _index.metric_scores(self.metric, rows, values, exact=exact)
        _index.check_scores(scores)
        return scores.reshape(lead + (k,)), ids.reshape(lead + (k,))

    def _prepare(self, queries, k, rerank):
        """The checks and the preparation of :meth:`~polarquant.VectorIndex.search`, on the client:
        ``(rows, lead shape, k, candidates)`` with ``rows`` NumPy ``(nq, dim)``."""
        _, rows, lead = _index.query_rows(
            _index.computable(queries, "queries"), self.dim, self.metric
        )
        k, candidates = _index.search_sizes(k, rerank, self.refine, len(self))
        return np.ascontiguousarray(to_host(rows)), lead, k, candidates

    def _rerank(self, sent, positions, ids, k: int):
        """Exact scores of the global candidates ``positions`` ``(nq, c)`` (best first), each
        computed by the shard holding it; the top ``k`` of them by a stable sort."""
        nq, c = positions.shape
        flat = positions.reshape(-1)
        offsets = np.array([s.offset for s in self._shards], dtype=np.int64)
        which = np.searchsorted(offsets, flat, side="right") - 1
        held = {}
        for s in np.unique(which):
            sel = np.flatnonzero(which == s)
            shard = self._shards[s]
            future = self.client.submit(
                _shard_exact,
                shard.future,
                sent,
                sel // c,
                flat[sel] - shard.offset,
                _index.BLOCK_ELEMENTS,
            )
            held[int(s)] = (sel, future)
        exact = np.empty(nq * c, dtype=np.float64)
        results = self.client.gather([f for _, f in held.values()])
        for (sel, _), values in zip(held.values(), results, strict=True):
            exact[sel] = values
        values, order = _index.best_exact(exact.reshape(nq, c), positions, k)
        return values, np.take_along_axis(ids, order, axis=1)

    # -- files -------------------------------------------------------------------------------
    def save(self, directory) -> None:
        """Write every shard, from its worker, to ``directory`` (``shard-00000.npz``...,
        :meth:`~polarquant.VectorIndex.save`) and then the manifest ``index.json``.

        The directory must be on a file system every worker and the client see at the same
        path (NFS, Lustre, GPFS...); it is created by the client, and the shard files are
        checked from the client once written.
        """
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        names = [f"shard-{i:05d}.npz" for i in range(len(self._shards))]
        written = [
            self.client.submit(_save_shard, s.future, str(path / name), pure=False)
            for s, name in zip(self._shards, names, strict=True)
        ]
        self.client.gather(written)
        unseen = [name for name in names if not (path / name).is_file()]
        if unseen:
            raise OSError(
                f"the workers wrote {unseen[:5]} but the client does not see them in {path}: "
                "the directory must be on a file system shared by the client and every worker"
            )
        manifest = {
            "format": MANIFEST_FORMAT,
            "format_version": _MANIFEST_VERSION,
            "library_version": __version__,
            "metric": self.metric,
            "refine": self.refine,
            "next_id": int(self._next_id),
            "config": json.loads(self._config),
            "shards": [
                {"file": name, "n": s.n, "id_min": s.id_min, "id_max": s.id_max}
                for s, name in zip(self._shards, names, strict=True)
            ],
        }
        tmp = path / f".{MANIFEST}.{secrets.token_hex(4)}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        os.replace(tmp, path / MANIFEST)

    @classmethod
    def load(
        cls, directory, *, client=None, mmap: bool = False, backend: str | None = None
    ) -> DaskVectorIndex:
        """Read an index written by :meth:`save`: each shard loaded by a worker
        (:meth:`~polarquant.VectorIndex.load`, ``mmap`` and ``backend`` as there).

        Raises
        ------
        FileNotFoundError
            No manifest in ``directory``.
        ValueError
            Naming the file: a damaged manifest, or a shard file that is damaged or does not
            match the manifest.
        """
        path = Path(directory)
        manifest_path = path / MANIFEST
        with open(manifest_path, "rb") as fh:  # FileNotFoundError as it is
            blob = fh.read(MAX_MANIFEST_BYTES + 1)
        if len(blob) > MAX_MANIFEST_BYTES:
            raise ValueError(
                f"{str(manifest_path)!r}: a manifest of more than {MAX_MANIFEST_BYTES} bytes"
            )
        try:
            manifest = json.loads(blob.decode("utf-8"))
        except ValueError as exc:  # UnicodeDecodeError included
            raise ValueError(f"{str(manifest_path)!r}: not a JSON manifest ({exc})") from None
        _check_manifest(manifest, str(manifest_path))
        from ..io import rebuild_quantizer

        try:
            quantizer = rebuild_quantizer(manifest["config"])
        except Exception as exc:
            raise ValueError(f"{str(manifest_path)!r}: {exc}") from None
        if backend is not None:
            from ..backends import check_backend_name

            backend = check_backend_name(backend)
        quantizer.backend = backend
        index = cls(quantizer, manifest["metric"], refine=manifest["refine"], client=client)
        files = [str(path / s["file"]) for s in manifest["shards"]]
        futures = [
            index.client.submit(_load_shard, f, mmap, index.backend, pure=False) for f in files
        ]
        infos = index.client.gather([index.client.submit(_shard_check, f) for f in futures])
        offset = 0
        for future, name, spec, info in zip(futures, files, manifest["shards"], infos, strict=True):
            count, held, nbytes, id_min, id_max, metric, refine, config = info
            if (metric, refine, config) != (index.metric, index.refine, json.loads(index._config)):
                raise ValueError(
                    f"{name!r}: shard holds metric={metric!r}, refine={refine!r} and config "
                    f"{config}; the manifest says metric={index.metric!r}, "
                    f"refine={index.refine!r} and config {json.loads(index._config)}"
                )
            if (count, id_min, id_max) != (spec["n"], spec["id_min"], spec["id_max"]):
                raise ValueError(
                    f"{name!r}: shard holds {count} vectors with ids in [{id_min}, {id_max}]; "
                    f"the manifest says {spec['n']} in [{spec['id_min']}, {spec['id_max']}]"
                )
            index._shards.append(_Shard(future, offset, count, nbytes, id_min, id_max, held))
            offset += held
        index._next_id = manifest["next_id"]
        shards, index._shards = index._shards, []
        try:  # shards whose id ranges overlap must not share ids
            index._check_repeats(shards)
        except ValueError as exc:
            raise ValueError(f"{str(manifest_path)!r}: {exc}") from None
        index._shards = shards
        return index


def _check_manifest(manifest, name: str) -> None:
    def refuse(why: str):
        raise ValueError(f"{name!r}: {why}")

    if not isinstance(manifest, dict):
        refuse("the manifest is not a JSON object")
    if manifest.get("format") != MANIFEST_FORMAT:
        refuse(f"not a {MANIFEST_FORMAT} manifest (format={manifest.get('format')!r})")
    if manifest.get("format_version") != _MANIFEST_VERSION:
        refuse(
            f"format version {manifest.get('format_version')!r}; this polarquant "
            f"({__version__}) reads version {_MANIFEST_VERSION}"
        )
    missing = [key for key in _MANIFEST_KEYS if key not in manifest]
    if missing:
        refuse(f"the manifest lacks {missing}")
    if manifest["metric"] not in METRICS:
        refuse(f"metric {manifest['metric']!r} is not one of {METRICS}")
    if manifest["refine"] is not None and manifest["refine"] not in REFINE_DTYPES:
        refuse(f"refine {manifest['refine']!r} is not null or one of {REFINE_DTYPES}")
    if not _is_count(manifest["next_id"]) or not isinstance(manifest["config"], dict):
        refuse("next_id must be a non-negative integer and config a JSON object")
    shards = manifest["shards"]
    if not isinstance(shards, list):
        refuse("shards must be a list")
    files = [spec.get("file") for spec in shards if isinstance(spec, dict)]
    if len(set(map(str, files))) != len(files):
        refuse("a shard file is listed twice")
    for spec in shards:
        ok = isinstance(spec, dict) and all(
            _is_count(spec.get(key)) for key in ("n", "id_min", "id_max")
        )
        file = spec.get("file") if isinstance(spec, dict) else None
        if (
            not ok
            or not isinstance(file, str)
            or Path(file).name != file
            or file in ("", ".", "..")
        ):
            refuse(
                f"malformed shard entry {spec!r} (a file name in the directory, n, id_min, id_max)"
            )
        if spec["n"] == 0 or spec["id_min"] > spec["id_max"]:
            refuse(f"shard {file!r} is empty or has id_min > id_max (empty shards are not written)")
        if spec["id_max"] >= manifest["next_id"]:
            refuse(f"shard {file!r} has ids up to {spec['id_max']} >= next_id")


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63


# -- the reduction (tasks on the workers) ------------------------------------------------------
def _tree_reduce(client, parts: list, c: int):
    """Merge the shards' ``(values, positions, ids)`` in pairs, level by level, on the workers;
    the future of the final ``c`` best."""
    while len(parts) > 1:
        pairs = [parts[i : i + 2] for i in range(0, len(parts), 2)]
        parts = [client.submit(_merge, *p, c) if len(p) == 2 else p[0] for p in pairs]
    return parts[0]


def _merge(a: tuple, b: tuple, c: int) -> tuple:
    """The ``c`` best of two results: larger values first, equal values by position (as
    :func:`polarquant.search.topk.TopK.finish`); ids follow their positions."""
    values = np.concatenate([a[0], b[0]], axis=1)
    positions = np.concatenate([a[1], b[1]], axis=1)
    ids = np.concatenate([a[2], b[2]], axis=1)
    order = best_order(namespace(values), values, positions, c)
    return tuple(np.take_along_axis(x, order, axis=1) for x in (values, positions, ids))


# -- one shard (tasks on the workers) ----------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _quantizer(config: str, backend: str) -> Quantizer:
    """The quantizer of a JSON configuration on ``backend``: built once per worker process."""
    from ..quantizer import from_config

    quantizer = from_config(json.loads(config))
    quantizer.backend = backend
    return quantizer


def _build_shard(block, ids, first, config, backend, metric, refine, rows) -> VectorIndex:
    """A :class:`~polarquant.VectorIndex` of one block, rows ``rows = (start, stop)`` of the call;
    ids ``first, first + 1, ...`` when ``ids`` is None.  A refused block names its rows."""
    shard = VectorIndex(_quantizer(config, backend), metric, refine=refine)
    if ids is None:
        ids = np.arange(first, first + (rows[1] - rows[0]), dtype=np.int64)
    try:
        shard.add(np.asarray(block), ids=ids)
    except (TypeError, ValueError) as exc:
        kind = TypeError if isinstance(exc, TypeError) else ValueError
        raise kind(f"rows {rows[0]}..{rows[1] - 1} of the added array: {exc}") from None
    return shard


def _shard_info(shard: VectorIndex) -> tuple:
    """``(live, held, nbytes, id_min, id_max)`` of a shard (ids of the live vectors; -1 if none)."""
    ids = shard.ids()
    held = sum(s.n for s in shard._segments)
    low, high = (int(ids.min()), int(ids.max())) if ids.size else (-1, -1)
    return len(shard), held, shard.nbytes, low, high


def _view_copy(view):
    """A fast-scan view sharing the block layout and scales, with its own per-vector term (the
    removal marks it; the old shard's view stays as it was)."""
    shift = None if view.shift is None else view.shift.copy()
    return dataclasses.replace(view, shift=shift)


def _shard_nbytes(shard: VectorIndex) -> int:
    return shard.nbytes


def _shard_found(shard: VectorIndex, ids: np.ndarray) -> np.ndarray:
    """Those of the sorted ``ids`` that the shard holds (live)."""
    return ids[shard._positions(ids) >= 0]


def _shard_without(shard: VectorIndex, ids: np.ndarray) -> VectorIndex:
    """A new shard: ``shard`` less the vectors ``ids`` (which it holds).  It shares the codes,
    ids, refinement copy and fast-scan block layout with ``shard`` and copies only the deletion
    marks (a byte per vector) and the layout's per-vector term, so that the old shard, which a
    running search may still read, is unchanged."""
    out = copy.copy(shard)
    out._segments = [
        dataclasses.replace(
            seg,
            alive=None if seg.alive is None else seg.alive.copy(),
            view=None if seg.view is None else _view_copy(seg.view),
        )
        for seg in shard._segments
    ]
    out._id_table = None
    out.remove(ids)
    return out


def _shard_check(shard: VectorIndex) -> tuple:
    info = _shard_info(shard)
    return (*info, shard.metric, shard.refine, shard.quantizer.config())


def _save_shard(shard: VectorIndex, path: str) -> None:
    shard.save(path)


def _load_shard(path: str, mmap: bool, backend: str) -> VectorIndex:
    return VectorIndex.load(path, mmap=mmap, backend=backend)


def _shard_best(shard: VectorIndex, rows, c: int, step: int, block_elements: int, offset: int):
    """The ``c`` best vectors of one shard for every query (fewer if it holds fewer):
    ``(values, positions over all shards, ids)``, best first."""
    parts = [
        _scan_values(shard, rows[a : a + step], c, block_elements)
        for a in range(0, rows.shape[0], step)
    ]
    values = np.concatenate([p[0] for p in parts], axis=0)
    positions = np.concatenate([p[1] for p in parts], axis=0)
    return values, positions + offset, shard._ids_at(positions)


def _scan_values(shard: VectorIndex, queries, c: int, block_elements: int):
    """:meth:`~polarquant.VectorIndex.scan` of one block of queries, with the row blocks of the
    client's ``BLOCK_ELEMENTS`` (a worker process may have another setting)."""
    return shard.scan(queries, c, block_elements=block_elements)


def _shard_exact(shard: VectorIndex, rows, query, local, block_elements: int):
    """:meth:`~polarquant.VectorIndex.exact_values` of the pairs (``rows[query[i]]``, the
    shard's vector at position ``local[i]``), a block of pairs at a time."""
    out = np.empty(local.shape[0], dtype=np.float64)
    step = max(1, block_elements // rows.shape[1])
    for a in range(0, local.shape[0], step):
        out[a : a + step] = shard.exact_values(rows, query[a : a + step], local[a : a + step])
    return out
