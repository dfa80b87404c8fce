"""Bit packing: b-bit codes and sign bits stored densely in ``uint8``.

One layout, used by every quantizer and every backend (the "canonical packed
format"):

* the codes of one vector, ``c_0, c_1, ..., c_{n-1}``, each ``b`` bits wide
  (1 <= b <= 8), are written one after the other as a bit stream, **most
  significant bit first** (NumPy's ``packbits(bitorder="big")`` order: the
  first bit of the stream is the most significant bit of byte 0);
* each vector's stream is padded with zero bits to a whole number of bytes,
  so a batch ``(..., n)`` of codes packs to ``(..., ceil(n * b / 8))`` bytes
  and vectors never share a byte;
* sign bits are 1-bit codes with ``bit = 1`` for ``value >= 0`` (so
  ``sign(0) = +1``: ``np.sign(0) == 0`` would lose the bit).

For b = 1, 2, 4, 8 codes never straddle a byte; for b = 3, 5, 6, 7 they may,
which is why the layout is defined on the bit stream rather than per byte.

Packing uses only array-API operations (shifts and sums on 64-bit integers:
eight ``b``-bit codes are exactly ``b`` bytes), so it runs unchanged on NumPy,
CuPy, torch or ``array_api_strict`` arrays.
"""

from __future__ import annotations

import functools

from ._array import check_bits, check_int, namespace

__all__ = ["packed_nbytes", "pack_codes", "unpack_codes", "pack_signs", "unpack_signs"]


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes taken by ``n`` codes of ``bits`` bits each: ``ceil(n * bits / 8)``."""
    n = check_int(n, "n", low=0)
    bits = check_bits(bits)
    return -(-n * bits // 8)


def _dev(x):
    from array_api_compat import device

    return device(x)


def _groups(xp, a, n: int, per_group: int, like, codes_per_group: int = 8):
    """Zero-pad the last axis of ``a`` to whole groups and reshape it to ``(..., g, per_group)``.

    A group holds ``codes_per_group`` of the ``n`` codes (as ``per_group`` codes or bytes).
    """
    *batch, _ = a.shape
    groups = -(-n // codes_per_group)
    pad = groups * per_group - a.shape[-1]
    if pad:
        a = xp.concat([a, xp.zeros((*batch, pad), dtype=a.dtype, device=_dev(like))], axis=-1)
    return xp.reshape(a, (*batch, groups, per_group)), groups


def pack_codes(codes, bits: int):
    """Pack integer codes ``(..., n)`` of ``bits`` bits into ``uint8 (..., nbytes)``.

    For ``b`` in 1, 2, 4 each byte holds ``8/b`` whole codes (shift and add in
    uint8).  Otherwise eight codes of ``b`` bits fill exactly ``b`` bytes: each
    group of eight is gathered into one 64-bit integer (code ``i`` shifted left
    by ``b (7 - i)``) and split into its ``b`` bytes, most significant first.
    The tail of the last group is zero, which is the padding of the layout;
    the bytes beyond ``ceil(n b / 8)`` are dropped, and the result owns exactly
    its bytes (never a view of a larger buffer).

    Parameters
    ----------
    codes : array of an integer dtype, shape ``(..., n)``
        Values in ``[0, 2**bits)``.
    bits : int
        Code width, 1..8.

    Returns
    -------
    uint8 array of shape ``(..., ceil(n * bits / 8))`` in the namespace of ``codes``.

    Examples
    --------
    >>> import numpy as np
    >>> pack_codes(np.array([1, 2, 3, 0], dtype=np.uint8), 2)   # 01 10 11 00
    array([108], dtype=uint8)
    """
    bits = check_bits(bits)
    xp = namespace(codes)
    if not xp.isdtype(codes.dtype, "integral"):
        raise TypeError(f"codes must have an integer dtype, got {codes.dtype}")
    if codes.ndim == 0:
        raise ValueError("codes must have shape (..., n), got a 0-d array")
    top, info = (1 << bits) - 1, xp.iinfo(codes.dtype)
    outside = [codes < 0] if info.min < 0 else []  # (what the dtype holds needs no test)
    outside += [codes > top] if top < info.max else []
    if codes.shape[-1] > 0 and outside and bool(xp.any(functools.reduce(xp.logical_or, outside))):
        raise ValueError(f"codes must lie in [0, {top}] for bits={bits}")
    *batch, n = codes.shape
    if bits == 8:
        return xp.astype(codes, xp.uint8)
    dev = _dev(codes)
    if 8 % bits == 0:  # 1, 2, 4 bits: whole codes per byte, uint8 arithmetic is enough
        per = 8 // bits
        grouped, g = _groups(xp, xp.astype(codes, xp.uint8), n, per, codes, per)
        shifts = xp.asarray([8 - bits * (i + 1) for i in range(per)], dtype=xp.uint8, device=dev)
        # the shifted codes occupy disjoint bits: their sum is at most 255
        return xp.astype(xp.sum(grouped << shifts, axis=-1, dtype=xp.int64), xp.uint8)
    groups, g = _groups(xp, xp.astype(codes, xp.int64), n, 8, codes)
    value = xp.sum(
        groups << xp.asarray([bits * (7 - i) for i in range(8)], dtype=xp.int64, device=dev),
        axis=-1,
    )
    out = (
        value[..., None]
        >> xp.asarray([8 * (bits - 1 - j) for j in range(bits)], dtype=xp.int64, device=dev)
    ) & 255
    out = xp.reshape(xp.astype(out, xp.uint8), (*batch, g * bits))
    nbytes = -(-n * bits // 8)
    if nbytes == g * bits:
        return out
    # a copy, not a view: the view would keep the padded buffer alive (and ``nbytes`` lie)
    return xp.asarray(out[..., :nbytes], copy=True)


def unpack_codes(packed, bits: int, n: int):
    """Inverse of :func:`pack_codes`: ``uint8 (..., nbytes)`` -> ``uint8 (..., n)``."""
    bits = check_bits(bits)
    n = check_int(n, "n", low=0)
    xp = namespace(packed)
    if packed.dtype != xp.uint8:
        raise TypeError(f"packed codes must be uint8, got {packed.dtype}")
    *batch, nbytes = packed.shape
    if nbytes != -(-n * bits // 8):
        raise ValueError(
            f"packed array has {nbytes} bytes per vector, but {n} codes of {bits} bits "
            f"need {-(-n * bits // 8)}"
        )
    if bits == 8:
        return xp.asarray(packed, copy=True)
    dev = _dev(packed)
    if 8 % bits == 0:
        per = 8 // bits
        shifts = xp.asarray([8 - bits * (i + 1) for i in range(per)], dtype=xp.uint8, device=dev)
        codes = (packed[..., None] >> shifts) & xp.asarray(
            (1 << bits) - 1, dtype=xp.uint8, device=dev
        )
        return xp.reshape(codes, (*batch, nbytes * per))[..., :n]
    groups, g = _groups(xp, xp.astype(packed, xp.int64), n, bits, packed)
    value = xp.sum(
        groups << xp.asarray([8 * (bits - 1 - j) for j in range(bits)], dtype=xp.int64, device=dev),
        axis=-1,
    )
    codes = (
        value[..., None]
        >> xp.asarray([bits * (7 - i) for i in range(8)], dtype=xp.int64, device=dev)
    ) & ((1 << bits) - 1)
    return xp.reshape(xp.astype(codes, xp.uint8), (*batch, g * 8))[..., :n]


def pack_signs(x):
    """Pack the sign bits ``x >= 0`` of a real array ``(..., m)`` into ``uint8``.

    This is the one definition of the QJL sign bit (QJL Sec. 3, Def. 3.1):
    ``bit = 1`` for ``x >= 0``.
    """
    xp = namespace(x)
    return pack_codes(xp.astype(x >= 0, xp.uint8), 1)


def unpack_signs(packed, m: int, dtype=None):
    """Unpack sign bits to ``+1/-1`` values ``(..., m)`` of ``dtype`` (default float32)."""
    xp = namespace(packed)
    bits = unpack_codes(packed, 1, m)
    dtype = xp.float32 if dtype is None else dtype
    return xp.astype(bits, dtype) * 2 - 1
