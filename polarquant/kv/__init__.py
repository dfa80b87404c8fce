"""Compressed key/value caches: append-only, attention scored from the codes.

* :class:`KVCache` (:mod:`.cache`) -- one attention layer's cache;
* :mod:`.methods` -- the method names and what ``bits`` means for each;
* :mod:`.codec` -- the contract every method implements (encode once, score,
  weighted sum); :mod:`.outliers` (QJL's per-group outliers, TurboQuant's
  channel split) and :mod:`.baselines` (KIVI, Hadamard + RTN, fp8);
* :mod:`.attention` -- exact reference attention, masks, grouped-query layout;
* :mod:`.fidelity` -- how far a compressed cache's attention is from exact;
* ``polarquant.kv.hf`` -- a Hugging Face transformers cache (optional ``hf`` extra,
  imported only when used).
"""

from .attention import exact_attention
from .cache import KVCache
from .methods import KEY_METHODS, VALUE_METHODS, make_codec

__all__ = ["KVCache", "exact_attention", "make_codec", "KEY_METHODS", "VALUE_METHODS"]
