"""Vector search over compressed vectors (TurboQuant, arXiv 2504.19874, Sec. 4.4).

* :mod:`.index`: :class:`VectorIndex`, top-k search from the codes of any quantizer;
* :mod:`.topk`: the block-wise top-k selection it scans with;
* :mod:`.storage`: its file format (``polarquant-index``, memory-mappable);
* :mod:`.distributed`: :class:`~polarquant.search.distributed.DaskVectorIndex`, the same index sharded over a Dask cluster
  (``dask`` extra; importing polarquant imports no dask);
* :mod:`.evaluation`: the paper's Sec. 4.4 experiment behind ``polarquant search-eval``.
"""

from .distributed import DaskVectorIndex
from .index import METRICS, REFINE_DTYPES, UnknownIdsError, VectorIndex

__all__ = ["VectorIndex", "DaskVectorIndex", "UnknownIdsError", "METRICS", "REFINE_DTYPES"]
