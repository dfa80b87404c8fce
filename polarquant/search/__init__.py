"""Vector search over compressed vectors (TurboQuant, arXiv 2504.19874, Sec. 4.4).

* :mod:`.index`: :class:`VectorIndex`, top-k search from the codes of any quantizer;
* :mod:`.topk`: the block-wise top-k selection it scans with;
* :mod:`.storage`: its file format (``polarquant-index``, memory-mappable).
"""

from .index import METRICS, REFINE_DTYPES, VectorIndex

__all__ = ["VectorIndex", "METRICS", "REFINE_DTYPES"]
