r"""Fast scan: a block layout of 4-bit codes and byte lookup tables, the reference arithmetic.

Scoring TurboQuant codes is a sum of table lookups (TurboQuant Alg. 1, dequantization, and the
inner product taken in the rotated domain): for a query rotated once, :math:`y = Q q`, and a
vector stored as codes :math:`c_j` and norm :math:`\|x\|`,

.. math::

    \langle q, \tilde x \rangle = \|x\| \sum_{j<d} T_{j, c_j}, \qquad T_{j,c} = y_j\,\mu_c ,

with :math:`\mu` the Lloyd-Max centroids.  *Fast scan* (André, Kermarrec, Le Scouarnec, "Cache
locality is not enough: high-performance nearest neighbor search with product quantization fast
scan", VLDB 2015; FAISS's ``IndexPQFastScan``) turns every lookup into a byte that a vector
register can look up 16 or 32 at a time.  This module is the **reference** of that arithmetic,
in plain NumPy, which the accelerated kernels must reproduce bit for bit:

* **Layout** (:func:`to_blocks`): vectors in blocks of :data:`BLOCK` = 32, and within a block
  the ``j``-th byte of every vector side by side: ``blocks[b, j, v] = packed[32 b + v, j]``, a
  transpose of the canonical packed bytes (:mod:`polarquant.packing`; the last block padded
  with zero bytes).  At 4 bits byte ``j`` holds the codes of dimensions ``2j`` (high nibble) and
  ``2j + 1`` (low nibble), so 32 consecutive bytes of a block are one pair of dimensions of 32
  vectors: one 32-byte register, two 16-entry shuffles.  :func:`from_blocks` inverts it
  exactly; files keep the canonical layout.
* **Byte tables** (:func:`quantize_tables`): per query, :math:`m_j = \min_c T_{j,c}`, one step
  :math:`\delta = \max_j (\max_c T_{j,c} - m_j) / 255` and
  :math:`T^q_{j,c} = \mathrm{round}((T_{j,c} - m_j)/\delta) \in \{0, \dots, 255\}`.
* **Sums** (:func:`scan_sums`): :math:`S = \sum_j T^q_{j,c_j}`, an exact integer; the score is
  approximated by :math:`\delta S + \sum_j m_j` (:func:`approximate_scores`), with

  .. math::

      \Big| \delta S + \sum_j m_j - \sum_j T_{j,c_j} \Big| \le \frac{d\,\delta}{2}

  (:func:`error_bound`: each entry is rounded by at most :math:`\delta/2`), times
  :math:`\|x\|` for the stored vector.  A top-k search scans these approximate scores, keeps
  more candidates than ``k`` and re-ranks them exactly from the codes.
* **Overflow**: a kernel summing in ``uint16`` is exact while :math:`255\,d < 2^{16}`, i.e.
  :math:`d \le 257`; it sums groups of at most :data:`GROUP_DIMS` dimensions in ``uint16`` and
  adds the groups in ``uint32``, which is this reference's ``uint32`` sum.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BLOCK",
    "GROUP_DIMS",
    "to_blocks",
    "from_blocks",
    "code_tables",
    "quantize_tables",
    "scan_sums",
    "approximate_scores",
    "error_bound",
]

#: Vectors per block of the fast-scan layout (one 32-byte register of a dimension pair).
BLOCK = 32
#: Dimensions summed per ``uint16`` group in a kernel (``256 * 255 < 2**16``).
GROUP_DIMS = 256
#: Code width the layout and tables here are for.
BITS = 4


def _check_packed(packed) -> np.ndarray:
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise ValueError(
            f"packed codes must be a 2-D uint8 array (n, nbytes), got {packed.dtype} {packed.shape}"
        )
    return packed


def to_blocks(packed) -> np.ndarray:
    """Canonical packed codes ``(n, nbytes)`` -> the fast-scan layout ``(ceil(n/32), nbytes, 32)``.

    ``blocks[b, j, v] = packed[32 b + v, j]``; rows past ``n`` in the last block are zero bytes.
    """
    packed = _check_packed(packed)
    n, nbytes = packed.shape
    nblocks = -(-n // BLOCK)
    padded = np.zeros((nblocks * BLOCK, nbytes), dtype=np.uint8)
    padded[:n] = packed
    return np.ascontiguousarray(padded.reshape(nblocks, BLOCK, nbytes).transpose(0, 2, 1))


def from_blocks(blocks, n: int) -> np.ndarray:
    """The fast-scan layout back to the canonical packed codes of the first ``n`` rows."""
    blocks = np.asarray(blocks)
    if blocks.dtype != np.uint8 or blocks.ndim != 3 or blocks.shape[2] != BLOCK:
        raise ValueError(
            f"fast-scan blocks must be uint8 (nblocks, nbytes, {BLOCK}), got {blocks.dtype} "
            f"{blocks.shape}"
        )
    if not 0 <= n <= blocks.shape[0] * BLOCK:
        raise ValueError(f"n={n} rows do not fit {blocks.shape[0]} blocks of {BLOCK}")
    rows = blocks.transpose(0, 2, 1).reshape(-1, blocks.shape[1])
    return np.ascontiguousarray(rows[:n])


def code_tables(queries, centroids) -> np.ndarray:
    """Float tables ``T[q, j, c] = queries[q, j] * centroids[c]`` ``(nq, d, 16)`` in float64:
    the score of a rotated query with a vector's codes is ``sum_j T[q, j, c_j]`` (times its
    norm)."""
    queries = np.asarray(queries, dtype=np.float64)
    centroids = np.asarray(centroids, dtype=np.float64)
    if queries.ndim != 2 or centroids.shape != (1 << BITS,):
        raise ValueError(
            f"expected queries (nq, d) and {1 << BITS} centroids, got {queries.shape} and "
            f"{centroids.shape}"
        )
    return queries[:, :, None] * centroids[None, None, :]


def quantize_tables(tables):
    """Byte tables of float tables ``(nq, d, 16)``: ``(tq uint8, delta (nq,), offset (nq,))``.

    ``tq[q, j, c] = round((T[q, j, c] - m[q, j]) / delta[q])`` with ``m`` the minimum over
    ``c`` and ``delta[q]`` the largest range over ``j`` divided by 255; ``offset[q] = sum_j
    m[q, j]``.  A query of zeros gets ``delta = 1`` and all-zero bytes.
    """
    tables = np.asarray(tables, dtype=np.float64)
    if tables.ndim != 3 or tables.shape[2] != 1 << BITS:
        raise ValueError(f"tables must be (nq, d, {1 << BITS}), got {tables.shape}")
    if not np.all(np.isfinite(tables)):
        raise ValueError("tables hold NaN or Inf")
    low = tables.min(axis=2)
    delta = (tables.max(axis=2) - low).max(axis=1, initial=0.0) / 255.0
    delta = np.where(delta > 0, delta, 1.0)
    tq = np.rint((tables - low[:, :, None]) / delta[:, None, None])
    return np.clip(tq, 0, 255).astype(np.uint8), delta, low.sum(axis=1)


def scan_sums(tq, blocks, n: int | None = None) -> np.ndarray:
    """``S[q, i] = sum_j tq[q, j, c_j(i)]`` for every vector of the blocks: uint32 ``(nq, n)``.

    ``tq`` ``(nq, d, 16)`` uint8 (dimension ``d`` may be one less than ``2 nbytes``: the pad
    nibble of an odd ``d`` looks up a zero entry); ``n`` rows (default: every row of the
    blocks).
    """
    tq = np.asarray(tq)
    blocks = np.asarray(blocks)
    if tq.dtype != np.uint8 or tq.ndim != 3 or tq.shape[2] != 1 << BITS:
        raise ValueError(f"byte tables must be uint8 (nq, d, 16), got {tq.dtype} {tq.shape}")
    if blocks.dtype != np.uint8 or blocks.ndim != 3 or blocks.shape[2] != BLOCK:
        raise ValueError(
            f"fast-scan blocks must be uint8 (nblocks, nbytes, {BLOCK}), got {blocks.dtype} "
            f"{blocks.shape}"
        )
    if n is not None and not 0 <= n <= blocks.shape[0] * BLOCK:
        raise ValueError(f"n={n} rows do not fit {blocks.shape[0]} blocks of {BLOCK}")
    nbytes = blocks.shape[1]
    d = tq.shape[1]
    if not 2 * nbytes - 1 <= d <= 2 * nbytes:
        raise ValueError(f"tables for d={d} dimensions do not match {nbytes} bytes of 4-bit codes")
    if d < 2 * nbytes:  # the pad nibble of an odd d: a zero entry
        tq = np.concatenate([tq, np.zeros((tq.shape[0], 1, 1 << BITS), np.uint8)], axis=1)
    rows = blocks.transpose(0, 2, 1).reshape(-1, nbytes)  # (32 nblocks, nbytes)
    n = rows.shape[0] if n is None else n
    rows = rows[:n]
    high = (rows >> 4).astype(np.intp)
    low = (rows & 0x0F).astype(np.intp)
    out = np.zeros((tq.shape[0], n), dtype=np.uint32)
    for j in range(nbytes):
        out += tq[:, 2 * j, high[:, j]]
        out += tq[:, 2 * j + 1, low[:, j]]
    return out


def approximate_scores(sums, delta, offset) -> np.ndarray:
    """``delta S + offset`` per query: the approximate ``sum_j T[q, j, c_j]`` (float64)."""
    return (
        np.asarray(delta)[:, None] * np.asarray(sums, dtype=np.float64)
        + np.asarray(offset)[:, None]
    )


def error_bound(delta, d: int) -> np.ndarray:
    """Largest ``|approximate - exact|`` of :func:`approximate_scores` before the norm:
    ``d delta / 2`` (each of the ``d`` entries is rounded by at most ``delta / 2``)."""
    return d * np.asarray(delta) / 2.0
