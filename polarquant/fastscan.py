r"""Fast scan: a block layout of 1- to 4-bit codes and byte lookup tables, the reference arithmetic.

Scoring TurboQuant or QJL codes is a sum of table lookups.  For a query transformed once
(rotated, :math:`y = Q q`, TurboQuant Alg. 1; or projected, :math:`y = S q`, QJL Def. 2.1) and a
vector stored as codes :math:`c_j` with a per-vector scale :math:`s` (its norm),

.. math::

    \mathrm{score} = \lambda\, s \sum_{j<D} y_j\,\mu_{c_j},

with :math:`\mu` the codebook (Lloyd-Max centroids, or :math:`\pm 1` for signs) and
:math:`\lambda` a constant (1, or QJL's :math:`\sqrt{\pi/2}/m`, QJL Lemma 3.2).  *Fast scan*
(André, Kermarrec, Le Scouarnec, "Cache locality is not enough: high-performance nearest
neighbor search with product quantization fast scan", VLDB 2015; FAISS's ``IndexPQFastScan``)
turns the lookups into bytes that one vector register looks up 16 or 32 at a time.  This module
is the **reference** of that arithmetic in plain NumPy; the backends' kernels
(``fastscan_sums``, ``fastscan_topk``) reproduce it bit for bit.

* **Nibbles** (:class:`FastScanPlan`): every 4 bits of a row index one 16-entry table.  The
  canonical packed bytes (:mod:`polarquant.packing`: one bit stream, first code in the high
  bits) already have this form at 1, 2 and 4 bits: nibble ``g`` (the high half of byte ``g //
  2`` when ``g`` is even) holds ``k = 4 / b`` consecutive codes, those of coordinates
  ``k g ... k g + k - 1``, and its table entry ``h`` is the sum of their ``k`` terms
  (:func:`nibble_tables`): one coordinate per table at 4 bits, two at 2 bits (TurboQuant at 2
  bits), four signs at 1 bit (QJL, TurboQuant's residual).  **3-bit** codes, whose 8 codes of
  a 3-byte group straddle bytes, are widened to 4 bits in the view (entries 8-15 unused): the
  view holds ``4 / 3`` the canonical bytes (``D / 2`` bytes per vector instead of ``3 D / 8``),
  for one table lookup per coordinate.
* **Layout** (:func:`to_blocks`): vectors in blocks of :data:`BLOCK` = 32, and within a block
  the ``j``-th byte of every vector side by side: ``blocks[b, j, v] = view[32 b + v, j]``, with
  the view's bytes per vector rounded up to an even number (zero bytes; their tables are
  zeros) and the last block padded with zero rows.  32 consecutive bytes of a block are one
  byte of 32 vectors: one 32-byte register, two 16-entry shuffles.  :func:`from_blocks`
  inverts it exactly; files keep the canonical layout.
* **Byte tables** (:func:`quantize_tables`): per query, :math:`m_g = \min_h T_{g,h}`, one step
  :math:`\delta = \max_g (\max_h T_{g,h} - m_g) / 255` and
  :math:`T^q_{g,h} = \mathrm{round}((T_{g,h} - m_g)/\delta) \in \{0, \dots, 255\}`.
* **Sums** (:func:`scan_sums`): :math:`S = \sum_g T^q_{g,h_g}`, an exact integer; the sum
  :math:`\sum_g T_{g,h_g}` is approximated by :math:`\delta S + \sum_g m_g`
  (:func:`approximate_scores`), with

  .. math::

      \Big| \delta S + \sum_g m_g - \sum_g T_{g,h_g} \Big| \le \frac{G\,\delta}{2}

  over :math:`G` nibbles (:func:`error_bound`: each entry is rounded by at most
  :math:`\delta/2`), times :math:`\lambda s` for the stored vector.
* **Keys and candidates** (:func:`scan_keys`, :func:`top_candidates`): a search ranks the
  vectors by :math:`\kappa = s\,(S + \beta) + w\,t` with :math:`\beta = \sum_g m_g / \delta`,
  which orders them as the approximate scores :math:`\lambda \delta \kappa` do (an optional
  per-vector term :math:`t`, e.g. :math:`-\|x\|^2` for distances, with a per-query weight
  :math:`w`); it keeps more candidates than it returns and re-ranks them exactly from the
  codes (:mod:`polarquant.search.scanner`).
* **Overflow**: a kernel summing in ``uint16`` is exact while :math:`2 \cdot 255 \cdot` (bytes)
  :math:`< 2^{16}`: it sums groups of :data:`GROUP_BYTES` = 128 bytes (256 nibbles) in
  ``uint16`` and adds the groups in ``uint32``, which is this reference's ``uint32`` sum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._array import check_int
from .packing import pack_codes, packed_nbytes, unpack_codes

__all__ = [
    "BLOCK",
    "GROUP_BYTES",
    "BITS",
    "FastScanPlan",
    "to_blocks",
    "from_blocks",
    "nibble_tables",
    "quantize_tables",
    "scan_sums",
    "scan_keys",
    "top_candidates",
    "approximate_scores",
    "error_bound",
]

#: Vectors per block of the fast-scan layout (one 32-byte register of a byte of 32 vectors).
BLOCK = 32
#: Bytes (two nibbles each) summed per ``uint16`` group in a kernel (``2 * 255 * 128 < 2**16``).
GROUP_BYTES = 128
#: Code widths with a fast-scan view (1, 2, 4 bits as stored; 3 bits widened to 4).
BITS = (1, 2, 3, 4)
#: Entries of a nibble's table.
ENTRIES = 16


@dataclass(frozen=True)
class FastScanPlan:
    """The fast-scan view of rows of ``count`` codes of ``bits`` bits (checked once).

    Parameters
    ----------
    bits : int
        Code width: 1 (signs), 2, 3 or 4.
    count : int
        Codes per row (the plan's ``n`` or ``m``), at least 1.

    Attributes
    ----------
    view_bits : int
        Bits per code in the view: ``bits``, or 4 for 3-bit codes.
    per_nibble : int
        Codes per nibble, ``4 / view_bits``.
    nbytes : int
        Bytes per vector in the view (canonical bytes at 1, 2, 4 bits, rounded up to even).
    nibbles : int
        Tables per query, ``2 nbytes``.
    packed_nbytes : int
        Bytes of one canonical packed row.
    """

    bits: int
    count: int
    view_bits: int = field(init=False)
    per_nibble: int = field(init=False)
    nbytes: int = field(init=False)
    nibbles: int = field(init=False)
    packed_nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        bits = check_int(self.bits, "bits", low=1, high=8)
        if bits not in BITS:
            raise ValueError(f"fast scan takes codes of {BITS} bits, got {bits}-bit codes")
        count = check_int(self.count, "count", low=1)
        view_bits = 4 if bits == 3 else bits
        nbytes = packed_nbytes(count, view_bits)
        nbytes += nbytes % 2
        for name, value in (
            ("bits", bits),
            ("count", count),
            ("view_bits", view_bits),
            ("per_nibble", 4 // view_bits),
            ("nbytes", nbytes),
            ("nibbles", 2 * nbytes),
            ("packed_nbytes", packed_nbytes(count, bits)),
        ):
            object.__setattr__(self, name, value)

    @property
    def groups(self) -> tuple[tuple[int, int], ...]:
        """Byte ranges ``[start, stop)`` summed in ``uint16`` (:data:`GROUP_BYTES` at most)."""
        return tuple(
            (a, min(self.nbytes, a + GROUP_BYTES)) for a in range(0, self.nbytes, GROUP_BYTES)
        )


def _check_packed(plan: FastScanPlan, packed) -> np.ndarray:
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != plan.packed_nbytes:
        raise ValueError(
            f"packed codes must be uint8 (n, {plan.packed_nbytes}) for {plan.count} codes of "
            f"{plan.bits} bits, got {packed.dtype} {packed.shape}"
        )
    return packed


def check_blocks(plan: FastScanPlan, blocks, n: int | None = None) -> int:
    """Raise ``ValueError`` unless ``blocks`` is the plan's layout holding ``n`` rows; return
    ``n`` (default: every row of the blocks)."""
    _check_uint8(blocks, "fast-scan blocks", "nblocks", (plan.nbytes, BLOCK))
    rows = blocks.shape[0] * BLOCK
    n = rows if n is None else check_int(n, "n", low=0)
    if not rows - BLOCK < n <= rows and not (n == 0 == rows):
        raise ValueError(f"n={n} rows do not fill {blocks.shape[0]} blocks of {BLOCK}")
    return n


def to_blocks(plan: FastScanPlan, packed) -> np.ndarray:
    """Canonical packed codes ``(n, packed_nbytes)`` -> the layout ``(ceil(n/32), nbytes, 32)``.

    ``blocks[b, j, v] = view[32 b + v, j]`` where ``view`` is the packed rows (3-bit codes
    repacked at 4 bits) with zero bytes up to ``plan.nbytes``; rows past ``n`` are zero.
    """
    packed = _check_packed(plan, packed)
    n = packed.shape[0]
    nblocks = -(-n // BLOCK)
    view = np.zeros((nblocks * BLOCK, plan.nbytes), dtype=np.uint8)
    if plan.bits == 3:
        widened = pack_codes(unpack_codes(packed, 3, plan.count), 4)
        view[:n, : widened.shape[1]] = widened
    else:
        view[:n, : plan.packed_nbytes] = packed
    return np.ascontiguousarray(view.reshape(nblocks, BLOCK, plan.nbytes).transpose(0, 2, 1))


def from_blocks(plan: FastScanPlan, blocks, n: int) -> np.ndarray:
    """The layout back to the canonical packed codes of the first ``n`` rows (bit exact)."""
    n = check_blocks(plan, blocks, n)
    rows = np.asarray(blocks).transpose(0, 2, 1).reshape(-1, plan.nbytes)[:n]
    if plan.bits == 3:
        widened = np.ascontiguousarray(rows[:, : packed_nbytes(plan.count, 4)])
        codes = unpack_codes(widened, 4, plan.count)
        return pack_codes(codes, 3)
    return np.ascontiguousarray(rows[:, : plan.packed_nbytes])


def nibble_tables(plan: FastScanPlan, queries, centroids) -> np.ndarray:
    """Float tables ``T[q, g, h]`` ``(nq, nibbles, 16)`` in float64.

    ``T[q, g, h] = sum_t queries[q, k g + t] centroids[code_t(h)]`` over the ``k =
    per_nibble`` codes of nibble value ``h`` (code ``t`` in bits ``view_bits (k - 1 - t)``),
    so that ``sum_g T[q, g, h_g(i)] = sum_j queries[q, j] centroids[c_j(i)]``; coordinates past
    ``count`` (the pad) and the unused entries of widened 3-bit codes add nothing (zeros, and
    the row's first entry).
    """
    queries = np.asarray(queries, dtype=np.float64)
    centroids = np.asarray(centroids, dtype=np.float64)
    if queries.ndim != 2 or queries.shape[1] != plan.count:
        raise ValueError(f"queries must be (nq, {plan.count}), got {queries.shape}")
    if centroids.shape != (1 << plan.bits,):
        raise ValueError(f"expected {1 << plan.bits} centroids, got shape {centroids.shape}")
    k, vb = plan.per_nibble, plan.view_bits
    y = np.zeros((queries.shape[0], plan.nibbles * k))
    y[:, : plan.count] = queries
    y = y.reshape(queries.shape[0], plan.nibbles, k)
    h = np.arange(ENTRIES)
    if plan.bits == 3:  # widened codes: entries 8..15 repeat entry 0 (never looked up)
        h = np.where(h < 8, h, 0)
    tables = np.zeros((queries.shape[0], plan.nibbles, ENTRIES))
    for t in range(k):
        code = (h >> (vb * (k - 1 - t))) & ((1 << vb) - 1)
        tables += y[:, :, t, None] * centroids[code][None, None, :]
    return tables


def quantize_tables(tables):
    """Byte tables of float tables ``(nq, G, 16)``: ``(tq uint8, delta (nq,), offset (nq,))``.

    ``tq[q, g, h] = round((T[q, g, h] - m[q, g]) / delta[q])`` with ``m`` the minimum over
    ``h`` and ``delta[q]`` the largest range over ``g`` divided by 255; ``offset[q] = sum_g
    m[q, g]``.  A query of zeros gets ``delta = 1`` and all-zero bytes.
    """
    tables = np.asarray(tables, dtype=np.float64)
    if tables.ndim != 3 or tables.shape[2] != ENTRIES:
        raise ValueError(f"tables must be (nq, G, {ENTRIES}), got {tables.shape}")
    if not np.all(np.isfinite(tables)):
        raise ValueError("tables hold NaN or Inf")
    low = tables.min(axis=2)
    delta = (tables.max(axis=2) - low).max(axis=1, initial=0.0) / 255.0
    delta = np.where(delta > 0, delta, 1.0)
    tq = np.rint((tables - low[:, :, None]) / delta[:, None, None])
    return np.clip(tq, 0, 255).astype(np.uint8), delta, low.sum(axis=1)


def check_tables(plan: FastScanPlan, tq) -> None:
    """Raise ``ValueError`` unless ``tq`` is uint8 ``(nq, nibbles, 16)`` for the plan."""
    _check_uint8(tq, "byte tables", "nq", (plan.nibbles, ENTRIES))


def _check_uint8(a, what: str, first: str, tail: tuple) -> None:
    """``a`` must be a 3-D uint8 array ``(first, *tail)``: ``ValueError`` naming ``what``."""
    if getattr(a, "dtype", None) != np.uint8 or getattr(a, "ndim", 0) != 3 or a.shape[1:] != tail:
        raise ValueError(
            f"{what} must be uint8 ({first}, {', '.join(map(str, tail))}), got "
            f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}"
        )


def scan_sums(plan: FastScanPlan, tq, blocks, n: int | None = None) -> np.ndarray:
    """``S[q, i] = sum_g tq[q, g, h_g(i)]`` for the first ``n`` vectors: uint32 ``(nq, n)``."""
    tq = np.asarray(tq)
    check_tables(plan, tq)
    n = check_blocks(plan, blocks, n)
    rows = np.asarray(blocks).transpose(0, 2, 1).reshape(-1, plan.nbytes)[:n]
    high = (rows >> 4).astype(np.intp)
    low = (rows & 0x0F).astype(np.intp)
    out = np.zeros((tq.shape[0], n), dtype=np.uint32)
    for j in range(plan.nbytes):
        out += tq[:, 2 * j, high[:, j]]
        out += tq[:, 2 * j + 1, low[:, j]]
    return out


def scan_keys(sums, bias, scale, shift=None, weight=None) -> np.ndarray:
    """Ranking keys ``scale * (S + bias) + weight * shift``, float32 ``(nq, n)``.

    Each operation is one float32 rounding in this order (the kernels compute the same):
    ``S`` and ``bias`` to float32, their sum, times ``scale``; then ``weight * shift`` added.
    """
    sums = np.asarray(sums)
    f = np.float32
    keys = np.asarray(scale, f)[None, :] * (sums.astype(f) + np.asarray(bias, f)[:, None])
    if shift is not None:
        keys = keys + np.asarray(weight, f)[:, None] * np.asarray(shift, f)[None, :]
    return keys.astype(f, copy=False)


def top_candidates(keys, c: int):
    """The ``c`` largest keys of each row and their positions, largest first (equal keys by
    position): ``(keys (nq, c), positions int64 (nq, c))``, ``c`` at most the row length.

    A key that is not finite (``-inf`` for a removed vector; ``+inf`` or NaN from a bad scale)
    is never a candidate: where fewer than ``c`` keys are finite the rest come back as key
    ``-inf``, position ``-1``.
    """
    keys = np.asarray(keys)
    keys = np.where(np.isfinite(keys), keys, -np.inf).astype(keys.dtype)  # never candidates
    nq, n = keys.shape
    c = min(check_int(c, "c", low=1), n)
    out_keys = np.empty((nq, c), dtype=keys.dtype)
    positions = np.empty((nq, c), dtype=np.int64)
    if c == 0:
        return out_keys, positions
    kth = -np.partition(-keys, c - 1, axis=1)[:, c - 1]
    for q in range(nq):
        above = np.flatnonzero(keys[q] > kth[q])
        tied = np.flatnonzero(keys[q] == kth[q])[: c - above.size]
        chosen = np.concatenate([above, tied])
        chosen = chosen[np.lexsort((chosen, -keys[q, chosen]))]
        out_keys[q], positions[q] = keys[q, chosen], chosen
    positions[out_keys == -np.inf] = -1
    return out_keys, positions


def approximate_scores(sums, delta, offset) -> np.ndarray:
    """``delta S + offset`` per query: the approximate ``sum_g T[q, g, h_g]`` (float64)."""
    return (
        np.asarray(delta)[:, None] * np.asarray(sums, dtype=np.float64)
        + np.asarray(offset)[:, None]
    )


def error_bound(delta, nibbles: int) -> np.ndarray:
    """Largest ``|approximate - exact|`` of :func:`approximate_scores` before the scale:
    ``G delta / 2`` over ``G`` nibbles (each entry is rounded by at most ``delta / 2``)."""
    return nibbles * np.asarray(delta) / 2.0
