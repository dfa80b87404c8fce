r"""The blog's TurboQuant: a PolarQuant stage followed by a 1-bit QJL residual.

The Google Research blog (March 2026) describes TurboQuant as "PolarQuant, then
QJL on the residual".  The TurboQuant paper's first stage is a rotation with
per-coordinate Lloyd-Max codes instead (:class:`~polarquant.TurboQuantProd`);
this module implements the blog's reading so that both can be measured
(algorithms.md, Sec. 5).

Construction (mirrors TurboQuant Algorithm 2 with PolarQuant as the first stage):
``x_p = PolarQuant.decode(PolarQuant.encode(x))``, residual ``r = x - x_p``,
stored as ``sign(S r)`` (``m`` bits, :mod:`polarquant.qjl`) and ``gamma = ||r||``;

.. math::

    \hat x = x_p + \frac{\sqrt{\pi/2}}{m} \gamma\, S^\top \mathrm{sign}(S r),
    \qquad
    \widehat{\langle q, x\rangle} = \langle q, x_p\rangle
        + \frac{\sqrt{\pi/2}}{m} \gamma \langle S q, \mathrm{sign}(S r)\rangle,

unbiased over ``S`` for every query (QJL Lemma 3.2 applied to ``r``).  Layout
per vector: the PolarQuant fields + ``signs`` ``ceil(m/8)`` bytes +
``residual_norms`` one float16.  With ``(4, 2, 2, 2)`` at ``d = 128`` and
``m = d``: 62 + 16 + 2 = 80 bytes, 5.0 bits per coordinate.
"""

from __future__ import annotations

import math

from ._array import check_int, namespace
from .plan import ResidualPlan
from .polar_quant import PolarQuant
from .qjl import QJL_SCALE, SignSketch
from .quantizer import safe_norms, store_scalars

__all__ = ["PolarQuantQJL"]


class PolarQuantQJL(PolarQuant):
    """PolarQuant + 1-bit QJL on the residual (the blog's composition).

    Parameters
    ----------
    dim, levels, bits, seed, rotation, radius_dtype, codebooks, backend
        The PolarQuant stage (see :class:`~polarquant.PolarQuant`).
    proj_dim : int, optional
        Residual sketch size ``m`` (default ``dim``, as TurboQuant's ``m = d``).
    """

    method = "polarquant-qjl"

    def __init__(
        self,
        dim: int,
        levels: int = 4,
        bits=(4, 2, 2, 2),
        seed: int = 0,
        *,
        proj_dim: int | None = None,
        rotation: str = "haar",
        radius_dtype: str = "float16",
        codebooks: list | None = None,
        backend: str | None = None,
    ):
        super().__init__(
            dim,
            levels,
            bits,
            seed,
            rotation=rotation,
            radius_dtype=radius_dtype,
            codebooks=codebooks,
            backend=backend,
        )
        self.proj_dim = self.dim if proj_dim is None else check_int(proj_dim, "proj_dim", low=1)
        self.sketch = SignSketch(self.proj_dim, self.dim, self.seed, "residual-sketch", backend)

    def config(self) -> dict:
        return {**super().config(), "proj_dim": self.proj_dim}

    def field_layout(self) -> dict:
        return {
            **super().field_layout(),
            "signs": ((self.sketch.nbytes,), "uint8"),
            "residual_norms": ((), self.radius_dtype),
        }

    @property
    def expected_mse(self) -> float:
        """Expected relative MSE of ``decode``: ``D_polar ((pi/2) d/m - 1/m)``.

        The QJL reconstruction ``r_hat`` of the residual is unbiased with
        ``E||r_hat - r||^2 = ||r||^2 ((pi/2) d/m - 1/m)`` (expand
        ``||S^T sign(S r)||^2``: ``m d`` on the diagonal, ``2/pi`` per off-diagonal
        pair), so decoding is *less* accurate than the PolarQuant stage alone at
        ``m = d``: the residual buys unbiased inner products, not a smaller MSE.
        """
        m = self.proj_dim
        return super().expected_mse * (math.pi / 2 * self.dim / m - 1 / m)

    def _encode_rows(self, x) -> dict:
        fields = super()._encode_rows(x)
        r = x - super()._decode_rows(fields, x.dtype)
        fields["signs"] = self.sketch.encode(r)
        fields["residual_norms"] = store_scalars(
            safe_norms(r)[0], self.radius_dtype, "residual norms", "radius_dtype"
        )
        return fields

    def _decode_rows(self, fields, dtype):
        xp = namespace(fields["signs"])
        gamma = xp.astype(fields["residual_norms"], dtype)
        return super()._decode_rows(fields, dtype) + self.sketch.reconstruct(fields["signs"], gamma)

    @property
    def plan(self) -> ResidualPlan:
        """The PolarQuant stage's :class:`~polarquant.plan.PolarPlan` and the residual's
        :class:`~polarquant.plan.SignPlan`."""
        return ResidualPlan(self.polar_plan, self.sketch.plan)

    def _prepare_queries(self, q):
        return super()._prepare_queries(q), self.sketch.project(q)

    def _score_rows(self, state, fields):
        qr, sq = state
        xp = namespace(sq)
        gamma = xp.astype(fields["residual_norms"], sq.dtype)
        qjl = (QJL_SCALE / self.sketch.m) * self.sketch.inner(sq, fields["signs"]) * gamma[None, :]
        return super()._score_rows(qr, fields) + qjl
