r"""Fast scan in a search: candidates from byte tables, results certified exact from the codes.

A search over codes of TurboQuantMSE (1 to 4 bits, TurboQuant Alg. 1) or QJL (QJL Def. 2.1)
ranks vectors by scores that are sums of table lookups (:mod:`polarquant.fastscan`).  Fast
scan computes those sums approximately with byte tables (the backend's ``fastscan_topk``),
keeps more candidates than asked and scores them **exactly from the codes** (from the float
tables, in float64).  The result is then *certified*.  A vector with scale :math:`s \ge 0` (its
norm) and integer sum :math:`S` has an exact value within :math:`U s\,G/2` of
:math:`U \big(s (S + \beta) + w t\big)` (:func:`polarquant.fastscan.error_bound`; :math:`U` the
key's unit, :math:`\lambda\delta`, or :math:`2\lambda\delta` for ``"l2"``, whose per-vector term
:math:`t = \|x\|^2` has the weight :math:`w = -1/U`), so the kernels rank by the **upper end**

.. math::

    \kappa = s\,(S + \beta + G/2) + w\,t \;\ge\; \mathrm{value} / U .

Every vector the scan left out has :math:`\kappa` at most the last candidate's,
:math:`\kappa_{\min}`, hence an exact value at most :math:`U \kappa_{\min}`; when the ``c``-th
best exact value among the candidates beats that (in every segment that left vectors out), the
top ``c`` is exactly the top ``c`` of the exact-from-codes values (ties aside).  Ranking by the
upper end puts vectors of large norm, whose values are least certain, among the candidates
instead of widening everyone's bound.  A query not certified is scanned again with
:data:`GROWTH` times more candidates, and after :data:`ROUNDS` scans handed to the plain scan
(exact ties beyond the candidates), as is a query whose keys would leave float32's range
(:data:`KEY_LIMIT`).  So the results never depend on the rounding of the tables, only the time
does, and memory stays bounded.

:class:`ScanView` is what a segment holds for it: the block layout of its codes (a second copy
of the code bytes, counted by :attr:`VectorIndex.nbytes
<polarquant.search.VectorIndex.nbytes>`), the per-vector scales in float32 and, for ``"l2"``
or after removals, the per-vector term of the keys (``||x||^2``; removed vectors get an
infinite one and are never candidates).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import fastscan

__all__ = [
    "ScanView",
    "GROWTH",
    "CANDIDATE_FACTOR",
    "ROUNDS",
    "KEY_LIMIT",
    "applies",
    "build_view",
    "mark_removed",
    "scan",
]

#: Candidates scanned per wanted result at first (at least ``MIN_CANDIDATES`` more): the
#: certificate's worst-case bound is wide, and a second scan costs as much as the first.
CANDIDATE_FACTOR = 4
#: Extra candidates at least.
MIN_CANDIDATES = 128
#: Growth of the candidates when a query's result is not certified.
GROWTH = 4
#: Fewest live vectors for which a search uses fast scan: below, the plain scan is as fast
#: (spaCy's 9,112 vectors, d = 300, k = 64: the plain scan took 1.1 to 2.4 times exact search,
#: fast scan 2.1 to 4.5 times, its per-query tables and candidates not paid back).
MIN_VECTORS = 1 << 16
#: Scans before a query is left to the plain scan (the first, then one with ``GROWTH`` times the
#: candidates): each rescan reads every code again, and only exact ties beyond the candidates
#: survive two (a plain scan then answers in bounded memory).
ROUNDS = 2
#: Largest key magnitude a search lets the kernels compute in float32 (``3.4e38`` overflows):
#: queries whose keys could pass it (tiny queries under ``"l2"``, huge norms) take the plain scan.
KEY_LIMIT = 1e37
#: Relative margin the certificate demands (float32 rounding of keys and scores).
SLACK = 1e-5


@dataclass
class ScanView:
    """A segment's codes for fast scan: block layout, scales, and the keys' per-vector term."""

    plan: fastscan.FastScanPlan
    blocks: np.ndarray  # uint8 (nblocks, nbytes, 32)
    scale: np.ndarray  # float32 (n,)
    shift: np.ndarray | None  # float32 (n,): ||x||^2 for "l2"; 0 / -inf after removals
    scale_max: float
    shift_max: float = 0.0  # largest finite |shift| (removed vectors' infinities aside)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.blocks, self.scale, self.shift) if a is not None)


def applies(quantizer) -> bool:
    """Whether searches over this quantizer's codes use fast scan: it scores by one codebook
    of 1 to 4 bits (``_table_form``) and its backend is ``numba`` (the NumPy reference of the
    arithmetic is slower than its own decode-and-multiply, and the CuPy path is unmeasured)."""
    form = quantizer._table_form()
    if form is None or form[0].bits not in fastscan.BITS:
        return False
    return quantizer._ops().NAME == "numba"


def build_view(quantizer, segment, metric: str) -> ScanView:
    """The :class:`ScanView` of a segment (its codes on the host, NumPy)."""
    plan, field, _ = quantizer._table_form()
    count = plan.n if hasattr(plan, "n") else plan.m
    fplan = fastscan.FastScanPlan(plan.bits, count)
    packed = np.asarray(segment.codes.fields[field]).reshape(segment.n, -1)
    scale = np.ascontiguousarray(segment.codes.fields["norms"], dtype=np.float32).reshape(-1)
    shift = None
    if metric == "l2":
        shift = np.array(segment.sq_norms, dtype=np.float32)
        if segment.alive is not None:
            shift[~segment.alive] = np.inf
    elif segment.alive is not None:
        shift = np.where(segment.alive, 0.0, -np.inf).astype(np.float32)
    scale_max = float(np.max(np.abs(scale), initial=0.0))
    shift_max = 0.0
    if shift is not None:
        finite = np.abs(shift[np.isfinite(shift)])
        shift_max = float(np.max(finite, initial=0.0))
    return ScanView(fplan, fastscan.to_blocks(fplan, packed), scale, shift, scale_max, shift_max)


def mark_removed(view: ScanView, rows: np.ndarray, metric: str) -> None:
    """Take removed vectors (``rows`` of the view's segment) out of the keys in place: their
    per-vector term becomes infinite (``-inf``; ``+inf`` for ``"l2"``, whose weight is
    negative), so they are never candidates.  No rebuild of the block layout."""
    if view.shift is None:
        view.shift = np.zeros(view.scale.shape[0], dtype=np.float32)
    view.shift[rows] = np.inf if metric == "l2" else -np.inf


def scan(index, rows, c: int):
    """The ``c`` best vectors of each prepared query ``rows`` by the exact-from-codes values of
    :meth:`VectorIndex.scan <polarquant.search.VectorIndex.scan>` (same contract: values
    larger-first, positions over all segments, ties by position), found by fast scan and
    certified (module docstring): ``(values, positions, done)``.  ``c`` is at most the live
    vectors.  Rows where ``done`` is False were not answered and need the plain scan: their
    keys would leave float32's range (a query or a norm too small or too large for byte
    tables), or :data:`ROUNDS` scans did not certify them (exact ties beyond the candidates)."""
    from .index import best_exact  # the plain scan's ordering (index.py imports this module)

    quantizer = index.quantizer
    plan, _, factor = quantizer._table_form()
    segments = index._segments
    views = [index._scan_view(s) for s in segments]
    starts = index._starts()
    fplan = views[0].plan
    y = np.asarray(quantizer.prepare_queries(rows), dtype=np.float64)
    tables = fastscan.nibble_tables(fplan, y, plan.centroids)
    tq, delta, offset = fastscan.quantize_tables(tables)
    l2 = index.metric == "l2"
    with np.errstate(divide="ignore", over="ignore"):
        unit = factor * delta * (2.0 if l2 else 1.0)  # value ~ unit * key
        # keys rank by the upper end of each vector's interval: half a step per nibble more
        bias = offset / delta + fplan.nibbles / 2.0
        weight = -1.0 / unit if l2 else np.ones_like(unit)
        scale_max = max(v.scale_max for v in views)
        shift_max = max(v.shift_max for v in views)
        key_max = scale_max * (255.0 * fplan.nibbles + np.abs(bias)) + np.abs(weight) * shift_max
    nq = int(rows.shape[0])
    out_values = np.empty((nq, c), dtype=np.dtype(str(rows.dtype)))
    out_positions = np.empty((nq, c), dtype=np.int64)
    done = np.zeros(nq, dtype=bool)
    lives = [seg.live() for seg in segments]  # once: a count over the deletion marks each
    live = sum(lives)
    pending = np.flatnonzero(np.isfinite(key_max) & (key_max < KEY_LIMIT) & (unit > 0))
    want = min(live, max(CANDIDATE_FACTOR * c, c + MIN_CANDIDATES))
    ops = quantizer._ops()
    for _ in range(ROUNDS):
        if not pending.size:
            break
        found, bound = [], np.full(pending.size, -np.inf)
        unsure = np.zeros(pending.size, dtype=bool)
        for view, seg, start, seg_live in zip(views, segments, starts, lives, strict=True):
            take = min(want, seg.n)
            keys, pos = ops.fastscan_topk(
                fplan,
                tq[pending],
                view.blocks,
                seg.n,
                take,
                bias[pending],
                view.scale,
                view.shift,
                None if view.shift is None else weight[pending],
            )
            full = pos[:, -1] >= 0
            left_out = take < seg_live  # some live vectors were not candidates
            bound = np.where(full & left_out, np.maximum(bound, unit[pending] * keys[:, -1]), bound)
            unsure |= ~full & left_out  # fewer candidates than asked, yet some left out
            found.append(np.where(pos >= 0, pos + start, -1))
        positions = np.concatenate(found, axis=1)
        values = _exact_values(index, views, tables, factor, pending, positions)
        values, order = best_exact(values, positions, c)  # equal values by position
        positions = np.take_along_axis(positions, order, axis=1)
        last = values[:, -1].astype(np.float64)
        certified = (last - bound > SLACK * (np.abs(last) + np.abs(bound))) | (bound == -np.inf)
        certified = (certified & ~unsure) | (want >= live)
        answered = pending[certified]
        out_values[answered], out_positions[answered] = values[certified], positions[certified]
        done[answered] = True
        pending = pending[~certified]
        want = min(live, want * GROWTH)
    return out_values, out_positions, done


def _exact_values(index, views, tables, factor, queries, positions):
    """Exact-from-codes values (as :meth:`VectorIndex.scan`'s) of each query's candidates
    ``positions`` ``(len(queries), r)`` (``-1``: none, value ``-inf``): ``factor * scale *
    sum_g T[q, g, h_g]`` from the float tables ``T`` (float64, :func:`~polarquant.fastscan.
    nibble_tables`) and the codes' nibbles in the block layout (``2 value - ||x||^2`` for
    ``"l2"``).  One flat gather per segment, for every query at once."""
    out = np.full(positions.shape, -np.inf, dtype=np.float64)
    starts = index._starts()
    flat = tables.reshape(-1)
    per_query = tables.shape[1] * tables.shape[2]
    high = (np.arange(0, tables.shape[1], 2) * fastscan.ENTRIES)[None, :]  # nibble 2j's table
    low = high + fastscan.ENTRIES
    valid = positions >= 0
    which = np.searchsorted(starts, positions, side="right") - 1
    for s in np.unique(which[valid]):
        rows, cols = np.nonzero(valid & (which == s))
        local = positions[rows, cols] - starts[s]
        view = views[s]
        codes = view.blocks[local // fastscan.BLOCK, :, local % fastscan.BLOCK]  # (m, nbytes)
        base = (queries[rows] * per_query)[:, None]
        sums = flat[(codes >> 4) + (high + base)].sum(axis=1)
        sums += flat[(codes & 15) + (low + base)].sum(axis=1)
        values = factor * view.scale[local].astype(np.float64) * sums
        if index.metric == "l2":
            values = 2 * values - index._segments[s].sq_norms[local]
        out[rows, cols] = values
    return out
