"""polarquant: training-free vector and KV-cache compression, faithful to the papers.

Implements, with one array-API reference and pluggable kernel backends:

* :class:`PolarQuant` -- Han et al., AISTATS 2026 (arXiv 2502.02617): random
  rotation, recursive polar transform, angle codebooks;
* :class:`QJL` -- Zandieh, Daliri, Han, AAAI 2025 (arXiv 2406.03482): 1-bit
  Johnson-Lindenstrauss sign sketches with an unbiased inner-product estimator;
* :class:`TurboQuantMSE`, :class:`TurboQuantProd` -- Zandieh et al., ICLR 2026
  (arXiv 2504.19874): random rotation + Lloyd-Max scalar codebooks (+ a QJL
  residual for unbiased inner products);
* :class:`PolarQuantQJL` -- the Google Research blog's composition (PolarQuant
  stage + 1-bit QJL residual).

Every quantizer has ``encode`` / ``decode`` / ``score`` / ``save`` / ``load``,
and ``plan`` (:mod:`polarquant.plan`): what it hands the kernel backends;
:class:`VectorIndex` searches a corpus of codes (:mod:`polarquant.search`);
see the README and ``docs/``.
"""

from . import datasets, kv, metrics, plan, search
from ._version import __version__
from .backends import available as available_backends
from .backends import current_backend, get_backend, use_backend
from .composition import PolarQuantQJL
from .compressed import CompressedVectors
from .io import load, save
from .kv import KVCache
from .polar_quant import PolarQuant
from .qjl import QJL
from .quantizer import Quantizer, from_config
from .search import VectorIndex
from .turboquant import TurboQuantMSE, TurboQuantProd

__all__ = [
    "__version__",
    "datasets",
    "metrics",
    "kv",
    "plan",
    "search",
    "KVCache",
    "VectorIndex",
    "PolarQuant",
    "PolarQuantQJL",
    "QJL",
    "TurboQuantMSE",
    "TurboQuantProd",
    "Quantizer",
    "CompressedVectors",
    "from_config",
    "load",
    "save",
    "use_backend",
    "get_backend",
    "current_backend",
    "available_backends",
]
