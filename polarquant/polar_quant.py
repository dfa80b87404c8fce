r"""PolarQuant: random rotation, recursive polar transform, angle codebooks.

Paper: Han, Kacham, Karbasi, Mirrokni, Zandieh, *PolarQuant: Quantizing KV
Caches with Polar Transformation*, AISTATS 2026, arXiv 2502.02617 (not the
homonymous Wu et al. 2025 paper on RoPE pairs).

Algorithm (Sec. 3-4):

1. precondition with a random rotation, ``y = Q x`` (the paper's
   "PolarQuant-R"; its tables' "PolarQuant" is without rotation);
2. recursive polar transform of ``y`` to ``L`` levels (Definition 1,
   :mod:`polarquant.polar`): ``d/2**L`` radii and ``d (1 - 2**-L)`` angles;
3. quantize the level-``l`` angles with a ``b_l``-bit codebook for their law
   (Lemma 2, :func:`polarquant.distributions.angle_density`): level 1 is
   uniform on ``[0, 2 pi)``, level ``l >= 2`` has density proportional to
   ``sin^(2**(l-1) - 1)(2 psi)`` on ``[0, pi/2]``.  All angles are independent
   of each other and of the radii for a rotated input, so one codebook per
   level is optimal coordinate-wise;
4. store the radii in float16 (one per ``2**L`` coordinates).

Codebooks: ``"lloyd-max"`` (default) solves the Lloyd-Max conditions for each
level's exact law: the analytic "offline" codebook.  :meth:`PolarQuant.fit`
instead fits them with 1-D k-means++ on the angles of sample data, the paper's
online/offline procedure (Sec. 4); fitted centroids are part of the
configuration and are saved with the codes.

Paper configuration: ``L = 4``, ``bits = (4, 2, 2, 2)``: per 16 coordinates
``8*4 + 4*2 + 2*2 + 1*2 = 46`` angle bits + one 16-bit radius = 62 bits, i.e.
3.875 bits per coordinate; relative MSE about 0.032 at ``d = 128``.

Expected error (our derivation from Lemma 2, checked by the tests): the
reconstruction keeps every radius, so ``||y_hat|| = ||y||`` per block and the
error is ``2 ||y||^2 (1 - cos angle(y, y_hat))``.  Walking the tree from the
top, the normalised inner product of a block with its reconstruction is
``cos(psi - psi_hat)`` times that of its (statistically identical, independent)
children, so with ``delta_l`` the level-``l`` angle error

.. math::

    \frac{E\|x - \hat x\|^2}{\|x\|^2} = 2 \Big(1 - \prod_{l=1}^{L} E[\cos \delta_l]\Big),

before the float16 rounding of the radii (relative error ~1e-7):
:meth:`PolarQuant.expected_mse`, 0.0318 for ``(4, 2, 2, 2)``.

Layout per vector: ``angles``, the packed angle codes of every level in one
byte array, level ``l`` taking ``ceil(d b_l / 2**l / 8)`` bytes (each level
starts on a byte: :class:`polarquant.plan.PolarPlan`), and ``radii``
``d / 2**L`` float16.  (Files of format version 1 stored each level as its own
field ``angles_l``; :func:`polarquant.load` still reads them.)

Scoring from codes: the query is rotated once; each key is expanded through its
own polar tree in the rotated domain (O(d) per key: cos/sin of the centroid
angles times its radii) and never rotated back.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from ._array import as_vectors, check_bits, namespace, to_host
from .codebooks import Codebook, angle_codebook, kmeans_codebook
from .distributions import angle_density, angle_support
from .plan import PolarPlan
from .polar import angle_counts, check_levels, polar_transform
from .quantizer import Quantizer, check_norm_dtype, store_scalars
from .rotation import make_rotation

__all__ = ["PolarQuant", "check_level_bits", "expected_cos_error"]


def check_level_bits(bits, levels: int) -> tuple[int, ...]:
    """``bits`` as one width per level (an int applies to every level)."""
    if isinstance(bits, numbers.Integral) and not isinstance(bits, bool):
        bits = (bits,) * levels
    if not isinstance(bits, Sequence) or isinstance(bits, str):
        raise TypeError(f"bits must be an int or a sequence of {levels} ints, got {bits!r}")
    if len(bits) != levels:
        raise ValueError(f"bits must give one width per level ({levels}), got {list(bits)}")
    return tuple(check_bits(b, f"bits[{i}]") for i, b in enumerate(bits))


def expected_cos_error(level: int, codebook: Codebook, nodes: int = 64) -> float:
    """``E[cos(psi - c(psi))]`` for the level's angle law (Lemma 2) and a codebook.

    Gauss-Legendre quadrature on each decision cell of the codebook.
    """
    lo, hi = angle_support(level)
    edges = np.concatenate([[lo], np.clip(codebook.boundaries, lo, hi), [hi]])
    t, w = np.polynomial.legendre.leggauss(nodes)
    a, b = edges[:-1, None], edges[1:, None]
    psi = (b - a) / 2 * t[None, :] + (a + b) / 2
    f = angle_density(psi, level) * np.cos(psi - codebook.centroids[:, None])
    return float(np.sum((b - a)[:, 0] / 2 * (f @ w)))


class PolarQuant(Quantizer):
    r"""PolarQuant quantizer (Han et al., Sec. 3-4).

    Parameters
    ----------
    dim : int
        Vector dimension ``d``, a multiple of ``2**levels``.
    levels : int
        Number of polar levels ``L`` (paper: 4).
    bits : int or sequence of int
        Bits of the angle codes per level, level 1 first (paper: ``(4, 2, 2, 2)``).
    seed : int
        Seed of the rotation.
    rotation : {"haar", "hadamard"}
        Preconditioning (see :mod:`polarquant.rotation`); with ``"hadamard"`` a
        non-power-of-two ``d`` is zero-padded.
    radius_dtype : {"float16", "float32"}
        Storage of the final radii.
    codebooks : list of dict, optional
        Fitted codebooks (as written by :meth:`fit` into :meth:`config`); default:
        analytic Lloyd-Max per level.
    backend : str, optional
        Kernel backend.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((2000, 128))
    >>> pq = PolarQuant(128, levels=4, bits=(4, 2, 2, 2), seed=0)
    >>> codes = pq.encode(x)
    >>> codes.bits_per_coordinate
    3.875
    >>> x_hat = pq.decode(codes)
    >>> rel = np.mean(np.sum((x - x_hat) ** 2, 1) / np.sum(x ** 2, 1))
    >>> bool(0.025 < rel < 0.04)
    True
    """

    method = "polarquant"

    def __init__(
        self,
        dim: int,
        levels: int = 4,
        bits=(4, 2, 2, 2),
        seed: int = 0,
        *,
        rotation: str = "haar",
        radius_dtype: str = "float16",
        codebooks: list | None = None,
        backend: str | None = None,
    ):
        super().__init__(dim, seed, backend)
        self.rotation = make_rotation(rotation, self.dim, self.seed)
        self.out_dim = self.rotation.out_dim
        self.levels = check_levels(self.out_dim, levels)
        self.bits = check_level_bits(bits, self.levels)
        self.radius_dtype = check_norm_dtype(radius_dtype)
        self.counts = angle_counts(self.out_dim, self.levels)
        if codebooks is None:
            self._set_codebooks(
                [
                    angle_codebook(level, b)
                    for level, b in zip(range(1, self.levels + 1), self.bits, strict=True)
                ],
                fitted=False,
            )
        else:
            self._set_fitted(codebooks)

    def _set_codebooks(self, books, fitted: bool) -> None:
        self.codebooks = books
        self.polar_plan = PolarPlan(self.out_dim, tuple(books))  # tables cast from old codebooks go
        self.fitted = fitted

    @property
    def plan(self) -> PolarPlan:
        """What the backend's polar operations take: levels, bits, codebooks, byte layout."""
        return self.polar_plan

    def _set_fitted(self, codebooks) -> None:
        if len(codebooks) != self.levels:
            raise ValueError(f"expected {self.levels} codebooks, got {len(codebooks)}")
        books = [cb if isinstance(cb, Codebook) else Codebook.from_dict(cb) for cb in codebooks]
        for level, (cb, b) in enumerate(zip(books, self.bits, strict=True), start=1):
            if cb.bits != b:
                raise ValueError(f"codebook of level {level} has {cb.bits} bits, expected {b}")
        self._set_codebooks(books, fitted=True)

    def config(self) -> dict:
        return {
            "method": self.method,
            "dim": self.dim,
            "levels": self.levels,
            "bits": list(self.bits),
            "seed": self.seed,
            "rotation": self.rotation.kind,
            "radius_dtype": self.radius_dtype,
            "codebooks": [cb.to_dict() for cb in self.codebooks] if self.fitted else None,
        }

    def field_layout(self) -> dict:
        return {
            "angles": ((self.polar_plan.nbytes,), "uint8"),
            "radii": ((self.polar_plan.radii,), self.radius_dtype),
        }

    @property
    def expected_mse(self) -> float:
        """Expected relative MSE ``2 (1 - prod_l E[cos delta_l])`` for rotated input (module doc).

        Exact for a Haar rotation (and an unpadded Hadamard one, up to its
        departure from Haar).  With a zero-padded Hadamard rotation the error is
        spread over ``D`` coordinates of which the inverse keeps a ``dim``-
        dimensional part: we scale by ``dim / D``, an approximation checked to a
        few percent at 3 bits and more with light padding (isotropy of the error
        fails at 1 bit, and with heavy padding: ``dim`` just above a power of
        two leaves more of the error in the kept part, e.g. 1.6x at dim = 513,
        as :attr:`polarquant.TurboQuantMSE.expected_mse` says).
        """
        cos = [expected_cos_error(level, cb) for level, cb in enumerate(self.codebooks, start=1)]
        return self.dim / self.out_dim * 2.0 * (1.0 - float(np.prod(cos)))

    # -- fitting (the paper's k-means++ codebooks) --------------------------------------------
    def fit(self, x, *, seed: int | None = None, max_iter: int = 300) -> PolarQuant:
        """Fit each level's codebook by 1-D k-means++ on the angles of ``x`` (Sec. 4).

        Replaces the analytic codebooks in place and returns ``self``; codes
        written before no longer match this configuration and are refused.
        ``max_iter`` bounds the Lloyd steps after the k-means++ seeding (300, as
        scikit-learn's ``KMeans``): on the uniform level-1 law Lloyd converges
        slowly, but the error is flat near the optimum.
        """
        xp, x = as_vectors(x, self.dim, "x")
        _, angles = polar_transform(self.rotation.apply(self._compute_rows(xp, x)), self.levels)
        seed = self.seed if seed is None else seed
        books = []
        for level, (psi, b) in enumerate(zip(angles, self.bits, strict=True), start=1):
            books.append(
                kmeans_codebook(
                    to_host(xp.reshape(psi, (-1,))),
                    b,
                    seed=seed,
                    support=angle_support(level),
                    max_iter=max_iter,
                )
            )
        self._set_fitted(books)
        return self

    # -- the four row-wise steps --------------------------------------------------------------
    def _encode_rows(self, x) -> dict:
        codes, radii = self._ops().polar_encode(self.polar_plan, self.rotation.apply(x))
        radii = store_scalars(radii, self.radius_dtype, "radii", "radius_dtype")
        return {"angles": codes, "radii": radii}

    @staticmethod
    def _radii(fields, dtype):
        """The stored radii for an operation computing in ``dtype``.

        As stored when they promote to ``dtype`` anyway (float16 radii with float32
        or float64 work: the cast is exact, and a backend may fuse it into its pass
        over the codes, as the Numba kernels do); else cast to ``dtype``.
        """
        radii = fields["radii"]
        xp = namespace(radii)
        if xp.result_type(radii.dtype, dtype) == dtype:
            return radii
        return xp.astype(radii, dtype)

    def rotated_values(self, fields, dtype):
        """The reconstruction in the rotated domain, ``(n, D)``: the inverse polar transform."""
        radii = self._radii(fields, dtype)
        return self._ops().polar_values(self.polar_plan, fields["angles"], radii, dtype)

    def _decode_rows(self, fields, dtype):
        return self.rotation.inverse(self.rotated_values(fields, dtype))

    def _prepare_vectors(self, x):
        return self.rotation.apply(x)

    def _prepare_queries(self, q):
        return self.rotation.apply(q)

    def _weighted_sum_rows(self, w, fields):
        # sum_i w_i Q^T y_hat_i = Q^T sum_i w_i y_hat_i: accumulate in the rotated domain, rotate once
        radii = self._radii(fields, w.dtype)
        sums = self._ops().polar_weighted_sum(self.polar_plan, w, fields["angles"], radii)
        return self.rotation.inverse(sums)

    def _score_rows(self, qr, fields):
        radii = self._radii(fields, qr.dtype)
        return self._ops().polar_score(self.polar_plan, qr, fields["angles"], radii)
