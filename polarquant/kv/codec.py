r"""The contract between the KV cache and a compression method: a *token codec*.

A :class:`~polarquant.kv.KVCache` holds one attention layer's keys and values,
shaped ``(batch, kv_heads, tokens, head_dim)``.  It merges batch and heads into
one axis of ``H = batch * kv_heads`` "streams" and hands tokens that leave its
full-precision window to two codecs, one for keys and one for values.  A codec
compresses a block of tokens **once** (tokens are never re-quantized) into a
dict of arrays, the *fields*; the cache appends each field along axis 1 and
later passes the whole accumulated fields back for scoring or summing.

Array conventions (arrays of one namespace and device: NumPy, CuPy, or any
array-API library; a codec with :attr:`TokenCodec.host_only` takes NumPy only):

* ``x``: ``(H, T, d)`` float32, finite, ``T`` a multiple of :attr:`TokenCodec.group`;
* every field is shaped ``(H, items, ...)``: ``items = T`` for per-token fields
  or ``T // group`` for per-group fields (e.g. outlier channel indices shared by
  a group of 32 tokens); fields are appended along axis 1;
* ``q``: ``(H, nq, d)`` float32, the queries of each stream (with grouped-query
  attention the ``G`` query heads sharing a kv head are stacked into ``nq``);
* ``p``: ``(H, nq, T)`` float32 attention weights over the compressed tokens.

A codec's own state (rotation, sketch, codebooks, channel choice) is built from
its configuration and seed; :meth:`TokenCodec.state_nbytes` counts the bytes a
cache must keep to rebuild it (8 bytes per seed; fitted tables at their size;
channel choices made from data at their size), so that ``KVCache.nbytes`` is
the memory actually held.
"""

from __future__ import annotations

import abc
import math
from typing import NamedTuple

import numpy as np

from .._array import namespace
from ..compressed import array_nbytes
from ..quantizer import _STORAGE_RANGE, store_scalars

__all__ = [
    "TokenCodec",
    "KeyCodec",
    "ValueCodec",
    "field_nbytes",
    "norm_limit",
    "Limits",
    "store_norms",
    "SEED_NBYTES",
    "FP16_MAX",
]

#: Bytes charged for a seeded rotation or sketch (the seed, a 64-bit integer).
SEED_NBYTES = 8

#: Largest finite float16.
FP16_MAX = _STORAGE_RANGE["float16"][0]

#: Token limits are checked on the cache's own float32 norm of a token; a codec computes its
#: norms and radii in another order (a rotation first, a polar tree), equal within float32
#: rounding, a few ulps: the limits keep a relative margin of 2**-10 (0.1%) below the storage
#: range so that a token the cache accepted is never refused by the codec.
LIMIT_MARGIN = 1.0 - 2.0**-10


class Limits(NamedTuple):
    """What a codec stores from any token, whatever block it is compressed in.

    ``max_abs``: the largest coordinate magnitude; ``max_norm``: the largest
    token norm (``inf``: no limit); ``storage``: what sets them, for error
    messages (``"float16 norms"``); ``fix``: the method options that widen
    them (e.g. ``{"norm_dtype": "float32"}``), empty when none does.
    """

    max_abs: float = math.inf
    max_norm: float = math.inf
    storage: str = ""
    fix: dict | None = None


def norm_limit(dtype: str) -> float:
    """Largest token norm whose norms or radii, stored as ``dtype``, stay finite (with the margin)."""
    return LIMIT_MARGIN * _STORAGE_RANGE[dtype][0]


def store_norms(values, dtype: str, what: str) -> np.ndarray:
    """Non-negative scalars (norms) as ``dtype``; below float16's normal range they stay subnormal.

    ``polarquant.quantizer.store_scalars`` with ``keep_subnormal``: a value
    beyond the range is refused (it would be ``inf``), a tiny one is kept (see
    :func:`polarquant.kv.methods.encode_storable` for why a cache must).
    """
    xp = namespace(values)
    return store_scalars(xp.astype(values, xp.float32), dtype, what, keep_subnormal=True)


def field_nbytes(fields: dict) -> int:
    """Bytes held by a dict of arrays."""
    return int(sum(array_nbytes(a) for a in fields.values()))


class TokenCodec(abc.ABC):
    """Compresses blocks of tokens of one layer, once; see the module docstring."""

    #: Tokens are compressed in aligned groups of this many (1 means token by token).
    group: int = 1

    #: Short name used in tables (e.g. ``"turboquant-mse"``, ``"kivi"``).
    method: str = ""

    #: True when the codec computes with NumPy only (the baselines): it takes NumPy
    #: arrays, and a cache on another namespace (CuPy on a GPU) refuses it.  Otherwise
    #: it computes in the namespace, and on the device, of its input.
    host_only: bool = False

    def __init__(self, head_dim: int):
        self.head_dim = head_dim

    @abc.abstractmethod
    def encode(self, x) -> dict:
        """Compress ``x (H, T, d)``; return fields shaped ``(H, items, ...)``."""

    @abc.abstractmethod
    def decode(self, fields: dict):
        """Reconstruct ``(H, T, d)`` float32 from all fields (tests and the decode-then-attend baseline)."""

    @abc.abstractmethod
    def config(self) -> dict:
        """JSON-able description: method, bits, seed, options."""

    def state_nbytes(self, heads: int) -> int:
        """Bytes of state outside the fields (seeds, fitted tables, channel choices) for ``heads`` streams."""
        return SEED_NBYTES

    def storable_limits(self) -> Limits:
        """The :class:`~polarquant.kv.codec.Limits` of the tokens :meth:`encode` always stores.

        A token within them is compressed whatever block it leaves the window
        in; the cache refuses a token beyond them **at append**, before it
        enters the window, naming the options that widen them.  Default: no
        limit.
        """
        return Limits()

    @property
    @abc.abstractmethod
    def bits_per_coordinate(self) -> float:
        """Stored bits per coordinate of the fields (codes, norms, per-group metadata), excluding state."""


class KeyCodec(TokenCodec):
    """A codec whose tokens can be scored against queries from the codes."""

    @abc.abstractmethod
    def prepare(self, q):
        """Transform queries ``(H, nq, d)`` once (rotate, project); returns an opaque state."""

    @abc.abstractmethod
    def score(self, state, fields: dict):
        """Estimated ``<q, k>`` for every query and compressed token: ``(H, nq, T)`` float32."""


class ValueCodec(TokenCodec):
    """A codec whose tokens can be summed with attention weights from the codes."""

    @abc.abstractmethod
    def weighted_sum(self, p, fields: dict):
        """``sum_t p[h, i, t] v_hat[h, t]``: ``(H, nq, d)`` float32."""
