r"""Scalar codebooks: Lloyd-Max for a known law, k-means++ for samples.

Both PolarQuant and TurboQuant quantize numbers whose law is known after a
random rotation (:mod:`polarquant.distributions`), one number at a time, to the
nearest of :math:`K = 2^b` centroids.  This package builds those codebooks and
quantizes with them, one idea per module; every public name is importable from
``polarquant.codebooks`` itself.

* :mod:`polarquant.codebooks.codebook` -- :class:`Codebook`, the object every
  constructor below returns: ``2**bits`` sorted centroids, their decision
  thresholds, the support and the expected error.
* :mod:`polarquant.codebooks.moments` -- partial moments
  :math:`m_j(u, v) = \int_u^v x^j f(x)\,dx` of a law
  (:data:`~polarquant.codebooks.moments.Moments`), by Gauss-Legendre
  quadrature of a density (:func:`density_moments`).
* :mod:`polarquant.codebooks.lloyd_max_solver` -- the Lloyd-Max conditions
  (Max 1960; Lloyd 1982) and their solver, for any law given by its moments:
  :func:`lloyd_max`, :func:`expected_mse`, :func:`lloyd_max_density`.
* :mod:`polarquant.codebooks.baselines` -- :func:`uniform_codebook`,
  :func:`quantile_codebook`: teaching baselines (equal-width cells;
  equal-probability cells, the "Lloyd-Max" of some ports).
* :mod:`polarquant.codebooks.analytic` -- the codebooks the quantizers use,
  cached: :func:`angle_codebook` (PolarQuant, arXiv 2502.02617, Sec. 3-4,
  Lemma 2) and :func:`coordinate_codebook` (TurboQuant, arXiv 2504.19874,
  Sec. 3.1, Lemma 1, Algorithm 1).
* :mod:`polarquant.codebooks.kmeans` -- :func:`kmeans_codebook`, 1-D k-means++
  on samples (PolarQuant Sec. 4, the "online"/"offline" codebooks).
* :mod:`polarquant.codebooks.cells` -- :func:`quantize`, :func:`dequantize`
  and their array cores ``cell_index``, ``cell_value`` (the hot path).

Each module imports only modules listed before it, so there is no import cycle.

Symbols
-------
==============  =============================================================
``K``           number of centroids, ``2**bits``
``c``           centroids ``c_0 < ... < c_{K-1}`` (``Codebook.centroids``)
``t``           decision thresholds ``t_0 <= ... <= t_{K-2}`` (``boundaries``)
``(lo, hi)``    the support; cell ``k`` is ``[t_{k-1}, t_k)``
``m0, m1, m2``  partial moments of the law on an interval
``D``           expected squared error per scalar (``Codebook.mse``)
==============  =============================================================
"""

from .analytic import angle_codebook, coordinate_codebook
from .baselines import quantile_codebook, uniform_codebook
from .cells import cell_index as cell_index  # not in __all__: backends, kv.baselines use it
from .cells import cell_value as cell_value  # not in __all__: backends use it
from .cells import dequantize, quantize
from .codebook import Codebook
from .kmeans import kmeans_codebook
from .lloyd_max_solver import expected_mse, lloyd_max, lloyd_max_density
from .moments import Moments, density_moments

__all__ = [
    "Codebook",
    "Moments",
    "density_moments",
    "lloyd_max",
    "lloyd_max_density",
    "angle_codebook",
    "coordinate_codebook",
    "kmeans_codebook",
    "uniform_codebook",
    "quantile_codebook",
    "expected_mse",
    "quantize",
    "dequantize",
]
