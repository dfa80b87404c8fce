r"""Outlier channels and fractional bits: QJL's per-group split and TurboQuant's channel split.

Key caches of LLMs have a few channels of much larger magnitude than the
rest.  Both papers give those channels separate treatment:

:class:`QJLOutlierKeys` (method ``"qjl"``) -- QJL (Zandieh, Daliri, Han,
    arXiv 2406.03482) Sec. 4 and its official code: in every aligned group of
    ``group_size`` tokens the ``outliers`` channels of largest L2 norm over the
    group are split off; the inlier part and the outlier part are each sketched
    (sign bits + own norm) and the two QJL estimators are added.
:class:`ChannelSplitTurboQuant` (methods ``"turboquant-mse"``/``"turboquant-prod"``)
    -- TurboQuant (Zandieh, Daliri, Hadian, Mirrokni, arXiv 2504.19874)
    Sec. 4.3: the channels are split once into an outlier set and the rest, and
    two independent TurboQuant quantizers, each with the codebook of its *own*
    sub-dimension, spend ``k + 1`` and ``k`` bits: the paper's "2.5-bit" and
    "3.5-bit" caches.

The bit-counting rule (one rule, every codec of :mod:`polarquant.kv`)
-----------------------------------------------------------------------
``bits_per_coordinate`` counts **every stored bit** of the fields, divided by
the number of coordinates: codes, sign bits, every float16 norm (sub-vector
norms, residual norms, inlier and outlier norms), per-group metadata such as
outlier channel indices (per group, so divided by the group size).  What is
not in the fields (seeds, a channel choice made once per stream) is counted by
``state_nbytes`` instead, and a cache adds both.

Under this rule TurboQuant's worked example (Sec. 4.3: 32 outlier channels at 3
bits and 96 at 2 bits, head_dim 128) stores ``3*32 + 2*96 = 288`` code bits
plus two float16 sub-vector norms (32 bits): ``320 / 128 = 2.5`` bits per
coordinate, exactly the paper's label, and ``(4*32 + 3*96 + 32) / 128 = 3.5``
for its "3.5 bits".  (The codes alone are 2.25 and 3.25: the paper's labels
only hold when the norms are counted; algorithms.md Sec. 4.)  The *nominal*
label of a split is the ``bits`` argument (``2.5``, ``3.5``); the measured
number at other head dims, outlier counts, or for the ``prod`` variant (which
also stores residual norms and sign bits) is whatever the layout gives, e.g.
2.75 for ``variant="prod"`` at (3, 2) with 32/128.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from array_api_compat import device as array_device

from .._array import check_int, empty_on, namespace, zeros_on
from ..packing import unpack_signs
from ..qjl import QJL_SCALE, SignSketch
from ..quantizer import check_norm_dtype, safe_norms
from ..turboquant import TurboQuantMSE, TurboQuantProd
from .attention import scalar_like, transposed
from .baselines import BaseCodec, spans, stream_tokens
from .codec import SEED_NBYTES, KeyCodec, Limits, ValueCodec, norm_limit, store_norms
from .methods import _any_array, encode_storable

__all__ = ["QJLOutlierKeys", "ChannelSplitTurboQuant", "QUERY_MODES", "VARIANTS"]

#: How :class:`QJLOutlierKeys` pairs the query with each sketch.
QUERY_MODES = ("split", "full")


def _index_dtype(head_dim: int) -> str:
    """Channel indices: one byte each up to head_dim 256, two beyond (e.g. MLA's 576)."""
    return "uint8" if head_dim <= 256 else "uint16"


# -- QJL with per-group outlier channels -----------------------------------------------------------
class QJLOutlierKeys(BaseCodec, KeyCodec):
    r"""QJL keys with per-group outlier channels (QJL Sec. 4; the official CUDA configuration).

    For each stream and each aligned group of ``gs`` tokens (default 32):

    1. the ``o`` channels with the largest L2 norm over the group's tokens are
       the group's outliers ``O`` (ties to the lower channel index; stored
       sorted, one ``uint8`` index each per group);
    2. each key splits as ``k = k_in + k_out`` (``k_out`` = ``k`` on ``O``, zero
       elsewhere);
    3. the inlier part is sketched with the ``m = bits * head_dim`` rows of the
       seeded Gaussian sketch ``S`` (:class:`polarquant.qjl.SignSketch`):
       ``sign(S k_in)`` and ``||k_in||``; the outlier part with the first
       ``m_out`` rows ``S_out`` of the same sketch: ``sign(S_out k_out)`` and
       ``||k_out||`` (both norms float16).  Using the first rows of one sketch is
       what the official code does (``outlier_sketch_dim``), and it lets one
       projection of the query serve both sketches.

    The estimate is the sum of the two QJL estimators (QJL Def. 3.1):

    .. math::

        \widehat{\langle q, k\rangle} =
            \frac{\sqrt{\pi/2}}{m}\,\|k_{in}\|\,\langle S q_a, \mathrm{sign}(S k_{in})\rangle
          + \frac{\sqrt{\pi/2}}{m_{out}}\,\|k_{out}\|\,\langle S_{out} q_b, \mathrm{sign}(S_{out} k_{out})\rangle .

    Lemma 3.2 makes each term unbiased for *any* query vector:
    ``E[term 1] = <q_a, k_in>``, ``E[term 2] = <q_b, k_out>``.  Because ``k_in``
    vanishes on ``O`` and ``k_out`` off ``O``, ``<q, k_in> = <q_in, k_in>`` and
    ``<q, k_out> = <q_out, k_out>``, so two choices are unbiased for ``<q, k>``:

    * ``query="split"`` (default, the official score kernel): ``q_a = q_in``,
      ``q_b = q_out`` (the query masked with the group's outlier indices, which
      is why the indices are stored).  ``S q`` is projected once per query;
      ``S q_out`` is a sum of ``o`` columns of ``S`` per group and
      ``S q_in = S q - S q_out``.  Variance
      ``((pi/2) ||q_in||^2 ||k_in||^2 - <q,k_in>^2)/m +
      ((pi/2) ||q_out||^2 ||k_out||^2 - <q,k_out>^2)/m_out`` (plus a covariance
      through the shared rows): the large outlier norm multiplies only the
      query's own outlier energy.
    * ``query="full"``: ``q_a = q_b = q``, the full query projected once
      and reused by both sketches; also unbiased, but each term's variance
      carries the full ``||q||^2``: its leading term
      ``(pi/2) ||q||^2 (||k_in||^2/m + ||k_out||^2/m_out)`` is at least plain
      QJL's ``(pi/2) ||q||^2 ||k||^2/(m + m_out)`` with the same sign bits in
      one sketch.  Kept for comparison (measured ~10x the split variance with
      planted outliers, tests/test_kv_outliers.py).

    With ``outliers=0`` nothing is split and the codec stores exactly
    :class:`polarquant.QJL`'s fields (same seed, same sketch, same bytes).

    Parameters
    ----------
    head_dim : int
    bits : float
        Sign bits per coordinate of the inlier sketch: ``m = round(bits * head_dim)``
        (QJL's official configuration: ``m = 256`` at head_dim 128, i.e. 2; 512
        in the first layers, i.e. 4).  The stored cost is larger; see
        ``bits_per_coordinate``.
    seed : int
        Seed of the sketch ``S`` (the stream of :class:`polarquant.QJL`).
    backend : str, optional
        Kernel backend of the sign sketch encoding.
    group_size : int
        Tokens per group ``gs`` sharing one outlier choice (official: 32).
    outliers : int, optional
        Outlier channels per group ``o``, ``0 <= o < head_dim``.  Default
        ``head_dim // 16`` (8 at head_dim 128, the official count; 4 at 64, 16 at 256).
    outlier_proj_dim : int, optional
        Rows ``m_out`` of the outlier sketch.  Default ``head_dim`` (128 at head_dim
        128: the official ``dim_outlier=128`` of its initial layers and the
        ``m/2`` of its pure-PyTorch path with ``m = 256``; its general layers
        use 256).
    query : {"split", "full"}
        See above.
    norm_dtype : {"float16", "float32"}
        Storage of the two norms.

    Notes
    -----
    Stored layout (``G = T / gs``); with ``o = 0`` only the first two:

    * ``signs`` ``uint8 (H, T, ceil(m/8))``, ``norms`` ``float16 (H, T)`` (``||k_in||``);
    * ``outlier_signs`` ``uint8 (H, T, ceil(m_out/8))``, ``outlier_norms`` ``float16 (H, T)``;
    * ``outlier_idx`` ``uint8 (H, G, o)`` (``uint16`` beyond head_dim 256).

    Bits per coordinate ``(8 ceil(m/8) + 8 ceil(m_out/8) + 32 + 8 o / gs) / d``:
    at head_dim 128 with ``o = 8``, ``m_out = 128``: 3.27 (bits 2), 4.27 (3),
    5.27 (4).  Departure from the official code: the inlier norm, which the
    official kernel computes at score time as ``sqrt(||k||^2 - ||k_out||^2)``
    from two stored float16 norms, is computed here at encode time directly as
    ``||k_in||`` (the same number in exact arithmetic, without the cancellation
    when the outliers carry most of the energy) and stored instead of ``||k||``.

    Examples
    --------
    >>> import numpy as np
    >>> codec = QJLOutlierKeys(128, 2)
    >>> k = np.random.default_rng(0).standard_normal((1, 32, 128)).astype(np.float32)
    >>> f = codec.encode(k)
    >>> f["signs"].shape, f["outlier_signs"].shape, f["outlier_idx"].shape
    ((1, 32, 32), (1, 32, 16), (1, 1, 8))
    >>> round(codec.bits_per_coordinate, 4)
    3.2656
    """

    method = "qjl"

    def __init__(
        self,
        head_dim,
        bits,
        *,
        seed=0,
        backend=None,
        group_size: int = 32,
        outliers: int | None = None,
        outlier_proj_dim: int | None = None,
        query: str = "split",
        norm_dtype: str = "float16",
    ):
        if isinstance(bits, bool) or not isinstance(bits, numbers.Real) or not bits > 0:
            raise ValueError(
                f"bits (sign bits per coordinate) must be a positive number, got {bits!r}"
            )
        super().__init__(head_dim, bits, seed, backend)
        d = self.head_dim
        self.proj_dim = round(float(bits) * d)
        if self.proj_dim < 1:
            raise ValueError(f"bits={bits} gives no sign bit at head_dim {d}")
        self.group_size = check_int(group_size, "group_size", low=1)
        self.group = self.group_size
        self.outliers = check_int(
            d // 16 if outliers is None else outliers, "outliers", low=0, high=d - 1
        )
        self.outlier_proj_dim = check_int(
            d if outlier_proj_dim is None else outlier_proj_dim, "outlier_proj_dim", low=1
        )
        if query not in QUERY_MODES:
            raise ValueError(f"query must be one of {QUERY_MODES}, got {query!r}")
        self.query = query
        self.norm_dtype = check_norm_dtype(norm_dtype)
        self.sketch = SignSketch(self.proj_dim, d, self.seed, "qjl-sketch", self.backend)
        self.outlier_sketch = SignSketch(
            self.outlier_proj_dim, d, self.seed, "qjl-sketch", self.backend
        )
        # one projection serves both sketches: the outlier sketch is the first m_out rows of S
        rows = max(self.proj_dim, self.outlier_proj_dim)
        self._projector = SignSketch(rows, d, self.seed, "qjl-sketch", self.backend)

    def options(self) -> dict:
        return {
            "group_size": self.group_size,
            "outliers": self.outliers,
            "outlier_proj_dim": self.outlier_proj_dim,
            "query": self.query,
            "norm_dtype": self.norm_dtype,
        }

    def state_nbytes(self, heads: int) -> int:
        return SEED_NBYTES

    def storable_limits(self) -> Limits:
        """Inlier and outlier norms are at most the token's norm; tiny ones are kept (subnormal)."""
        return Limits(
            max_norm=norm_limit(self.norm_dtype),
            storage=f"{self.norm_dtype} norms",
            fix={"norm_dtype": "float32"},
        )

    def field_layout(self) -> dict:
        layout = {
            "signs": ((self.sketch.nbytes,), "uint8", 1),
            "norms": ((), self.norm_dtype, 1),
        }
        if self.outliers:
            layout["outlier_signs"] = ((self.outlier_sketch.nbytes,), "uint8", 1)
            layout["outlier_norms"] = ((), self.norm_dtype, 1)
            layout["outlier_idx"] = (
                (self.outliers,),
                _index_dtype(self.head_dim),
                self.group_size,
            )
        return layout

    # -- encoding ------------------------------------------------------------------------------
    def outlier_mask(self, idx):
        """Boolean ``(H, G, d)`` mask of the outlier channels ``idx (H, G, o)``."""
        xp = namespace(idx)
        channels = xp.arange(self.head_dim, dtype=xp.int64, device=array_device(idx))
        return xp.any(xp.astype(idx, xp.int64)[..., None] == channels, axis=-2)

    def encode(self, x) -> dict:
        x = self.check_tokens(x)
        xp = namespace(x)
        h, t, d = x.shape
        rows = xp.reshape(x, (h * t, d))
        if not self.outliers:
            norms, _ = safe_norms(rows)
            return {
                "signs": xp.reshape(self.sketch.encode(rows), (h, t, self.sketch.nbytes)),
                "norms": xp.reshape(store_norms(norms, self.norm_dtype, "norms"), (h, t)),
            }
        xg = xp.reshape(x, (h, t // self.group_size, self.group_size, d))
        channel_norms = xp.sqrt(xp.sum(xg * xg, axis=2))  # (H, G, d): L2 over the group
        idx = xp.argsort(-channel_norms, axis=2, stable=True)[:, :, : self.outliers]
        idx = xp.sort(idx, axis=2)
        mask = self.outlier_mask(idx)[:, :, None, :]
        zero = scalar_like(0.0, xg)
        k_out = xp.reshape(xp.where(mask, xg, zero), (h * t, d))
        k_in = xp.reshape(xp.where(mask, zero, xg), (h * t, d))
        n_in, _ = safe_norms(k_in)
        n_out, _ = safe_norms(k_out)
        return {
            "signs": xp.reshape(self.sketch.encode(k_in), (h, t, self.sketch.nbytes)),
            "norms": xp.reshape(store_norms(n_in, self.norm_dtype, "inlier norms"), (h, t)),
            "outlier_signs": xp.reshape(
                self.outlier_sketch.encode(k_out), (h, t, self.outlier_sketch.nbytes)
            ),
            "outlier_norms": xp.reshape(
                store_norms(n_out, self.norm_dtype, "outlier norms"), (h, t)
            ),
            "outlier_idx": xp.astype(idx, getattr(xp, _index_dtype(d))),
        }

    def decode(self, fields: dict):
        """The unbiased reconstruction; in ``split`` mode each part is kept on its own channels.

        ``q . decode(fields) = score`` for either query mode: ``full`` sums the
        two reconstructions ``sqrt(pi/2)/m ||k_part|| S^T sign(S k_part)``;
        ``split`` keeps the inlier one on the inlier channels and the outlier
        one on the outlier channels of each group (still unbiased, and closer).
        """
        h, t = stream_tokens(fields, self.field_layout())
        d = self.head_dim
        xp = namespace(fields["norms"])
        norms = xp.astype(xp.reshape(fields["norms"], (-1,)), xp.float32)
        signs = xp.reshape(fields["signs"], (h * t, self.sketch.nbytes))
        k = self.sketch.reconstruct(signs, norms)
        if not self.outliers:
            return xp.reshape(k, (h, t, d))
        n_out = xp.astype(xp.reshape(fields["outlier_norms"], (-1,)), xp.float32)
        k_out = self.outlier_sketch.reconstruct(
            xp.reshape(fields["outlier_signs"], (h * t, self.outlier_sketch.nbytes)), n_out
        )
        if self.query == "full":
            return xp.reshape(k + k_out, (h, t, d))
        gs = self.group_size
        mask = self.outlier_mask(fields["outlier_idx"])[:, :, None, :]
        k = xp.reshape(k, (h, t // gs, gs, d))
        k_out = xp.reshape(k_out, (h, t // gs, gs, d))
        return xp.reshape(xp.where(mask, k_out, k), (h, t, d))

    # -- scoring ---------------------------------------------------------------------------------
    def prepare(self, q):
        """``(q, S q)``: the queries and their projection on all ``max(m, m_out)`` rows, once."""
        q = self.check_queries(q)
        xp = namespace(q)
        h, nq, d = q.shape
        sq = xp.reshape(self._projector.project(xp.reshape(q, (h * nq, d))), (h, nq, -1))
        return q, sq

    def _sign_dots(self, sq, signs, m: int, norms, scale_rows: int):
        """``sqrt(pi/2)/m_rows * norms * <sq, sign>`` with the signs unpacked for a chunk only."""
        pm = unpack_signs(signs, m)  # (..., n, m) float32 +-1 of this chunk
        return (QJL_SCALE / scale_rows) * (sq @ transposed(pm)) * norms

    def score(self, state, fields: dict):
        q, sq = state
        xp = namespace(q)
        h, nq, d = q.shape
        t = stream_tokens(fields, self.field_layout())[1]
        m, mo, gs = self.proj_dim, self.outlier_proj_dim, self.group_size
        out = empty_on(q, (h, nq, t))
        f32 = xp.float32
        if not self.outliers or self.query == "full":
            for a, b in spans(t, h * (m + mo + 2 * nq)):
                n_in = xp.astype(fields["norms"][:, None, a:b], f32)
                s = self._sign_dots(sq[..., :m], fields["signs"][:, a:b, ...], m, n_in, m)
                if self.outliers:
                    n_out = xp.astype(fields["outlier_norms"][:, None, a:b], f32)
                    s = s + self._sign_dots(
                        sq[..., :mo], fields["outlier_signs"][:, a:b, ...], mo, n_out, mo
                    )
                out[:, :, a:b] = s
            return out
        columns = self._projector._const("ST", q)  # S^T (d, rows), q's namespace and device
        rows = sq.shape[-1]
        per_group = h * (gs * (m + mo) + self.outliers * rows + nq * (2 * rows + 2 * gs))
        for g0, g1 in spans(t // gs, per_group):
            a, b, ng = g0 * gs, g1 * gs, g1 - g0
            idx = xp.astype(fields["outlier_idx"][:, g0:g1, ...], xp.int64)  # (H, Gc, o)
            q_sel = xp.take_along_axis(q[:, None, :, :], idx[:, :, None, :], axis=3)  # (H,Gc,nq,o)
            picked = xp.take(columns, xp.reshape(idx, (-1,)), axis=0)
            sq_out = q_sel @ xp.reshape(picked, idx.shape + (rows,))  # (H, Gc, nq, rows): S q_out
            sq_in = sq[:, None, :, :m] - sq_out[..., :m]  # S q_in = S q - S q_out
            n_in = xp.reshape(xp.astype(fields["norms"][:, a:b], f32), (h, ng, 1, gs))
            n_out = xp.reshape(xp.astype(fields["outlier_norms"][:, a:b], f32), (h, ng, 1, gs))
            signs = xp.reshape(fields["signs"][:, a:b, ...], (h, ng, gs, -1))
            o_signs = xp.reshape(fields["outlier_signs"][:, a:b, ...], (h, ng, gs, -1))
            s = self._sign_dots(sq_in, signs, m, n_in, m)
            s = s + self._sign_dots(sq_out[..., :mo], o_signs, mo, n_out, mo)  # (H, Gc, nq, gs)
            out[:, :, a:b] = xp.reshape(xp.permute_dims(s, (0, 2, 1, 3)), (h, nq, b - a))
        return out


# -- TurboQuant's channel split (Sec. 4.3) -----------------------------------------------------------
VARIANTS = {"mse": TurboQuantMSE, "prod": TurboQuantProd}


def split_bits(bits) -> tuple[int, int]:
    """``(outlier bits, regular bits)`` of a nominal width: ``k + 0.5 -> (k+1, k)``, ``b -> (b, b)``."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Real) or (2 * bits) % 1:
        raise ValueError(
            f"bits must be an integer or a half-integer (k + 0.5: k+1 bits on the outlier "
            f"channels, k on the rest), got {bits!r}"
        )
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in [1, 8], got {bits}")
    return math.ceil(bits), math.floor(bits)


class ChannelSplitTurboQuant(BaseCodec, KeyCodec, ValueCodec):
    r"""TurboQuant with an outlier/regular channel split: fractional bits (TurboQuant Sec. 4.3).

    Channels are split into an outlier set ``O`` of ``n_out`` channels and the
    ``d - n_out`` regular ones; two **independent** TurboQuant quantizers
    (:class:`~polarquant.TurboQuantMSE` or :class:`~polarquant.TurboQuantProd`,
    ``variant``) compress the two sub-vectors of every token, each with its own
    rotation (seeds ``2 seed`` and ``2 seed + 1``), its own stored norm, and the
    Lloyd-Max codebook of **its own sub-dimension** (Lemma 1 at ``n_out`` and at
    ``d - n_out``; the released TurboQuant code applied centroids scaled for
    d = 128 to its 32- and 96-dim sub-vectors, a bug not reproduced here).

    Bits: ``bits = k + 0.5`` spends ``k + 1`` bits on the outliers and ``k`` on
    the rest (``2.5 -> (3, 2)``, ``3.5 -> (4, 3)``); an integer ``b`` gives
    ``(b, b)``, a split with equal widths whose only effect is a separate norm
    and rotation per sub-vector.  See the module docstring for the counting
    rule: with ``n_out = 32`` of 128, ``(3, 2)`` stores exactly 2.5 bits per
    coordinate and ``(4, 3)`` 3.5, sub-vector norms included.

    Channel choice: **once**, per stream, from the first ``calibration_tokens``
    tokens (default 32; tokens are compressed in aligned groups of that size, so
    these are always the same tokens, whether they arrived as one prefill or
    one by one): the ``n_out`` channels of largest RMS over them (ties to the
    lower index), sorted.  It is kept for every later block (so
    nothing already stored is ever re-quantized), stored as codec state
    (``channels``, ``(H, n_out)``) and counted by :meth:`state_nbytes`.
    One codec instance therefore serves one cache layer; a later block with a
    different number of streams is refused.

    Scores and weighted sums from the codes, per stream (each stream has its
    own channels): the query is split the same way and each sub-quantizer
    scores its part from its codes (``_prepare_queries``/``_score_rows``: the
    sub-query rotated once); ``<q, x_hat> = <q_O, x_hat_O> + <q_R, x_hat_R>``.
    Weighted sums use each sub-quantizer's ``_weighted_sum_rows`` (rotated
    domain accumulation for the mse variant) and are scattered back to their
    channels.

    Parameters
    ----------
    head_dim : int
    bits : float
        Nominal bits: an integer 1..8 or ``k + 0.5`` with ``1 <= k <= 7``.
    seed : int
        Root seed: the sub-quantizers use ``2 seed`` and ``2 seed + 1``.
    backend : str, optional
        Kernel backend of the sub-quantizers.
    variant : {"mse", "prod"}
        Algorithm 1 or Algorithm 2 in both parts (``method`` is
        ``"turboquant-mse"`` or ``"turboquant-prod"``).
    outlier_channels : int, optional
        ``n_out``, default ``head_dim // 4`` (32 at 128: the paper's split);
        ``2 <= n_out <= head_dim - 2``.
    calibration_tokens : int
        Tokens the channel choice is made from, also the codec's ``group``
        (default 32).
    rotation, codebook, norm_dtype
        Passed to both sub-quantizers (defaults: Haar, exact Beta codebook, float16).

    Notes
    -----
    Stored layout: the fields of the outlier quantizer prefixed ``outlier_`` and
    of the regular one prefixed ``regular_``, each ``(H, T, ...)``; for the mse
    variant ``outlier_codes`` ``uint8 (H, T, ceil(n_out b_O / 8))``,
    ``outlier_norms`` ``float16 (H, T)``, ``regular_codes``
    ``uint8 (H, T, ceil((d - n_out) b_R / 8))``, ``regular_norms`` ``float16 (H, T)``.
    State: the seed (8 bytes) and ``H * n_out`` channel indices (uint8 each).
    """

    def __init__(
        self,
        head_dim,
        bits,
        *,
        seed=0,
        backend=None,
        variant: str = "mse",
        outlier_channels: int | None = None,
        calibration_tokens: int = 32,
        rotation: str = "haar",
        codebook: str = "exact",
        norm_dtype: str = "float16",
    ):
        hi, lo = split_bits(bits)
        self.group = check_int(calibration_tokens, "calibration_tokens", low=1)
        super().__init__(head_dim, bits, seed, backend)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        self.variant = variant
        self.method = f"turboquant-{variant}"
        d = self.head_dim
        if d < 4:
            raise ValueError(
                f"a channel split needs head_dim >= 4 (two sub-vectors of >= 2), got {d}"
            )
        self.outlier_channels = check_int(
            d // 4 if outlier_channels is None else outlier_channels,
            "outlier_channels",
            low=2,
            high=d - 2,
        )
        self.split = (hi, lo)
        cls = VARIANTS[variant]
        common = {"rotation": rotation, "codebook": codebook, "norm_dtype": norm_dtype}
        self.outlier_quantizer = cls(
            self.outlier_channels, hi, 2 * self.seed, backend=self.backend, **common
        )
        self.regular_quantizer = cls(
            d - self.outlier_channels, lo, 2 * self.seed + 1, backend=self.backend, **common
        )
        self.rotation, self.codebook, self.norm_dtype = rotation, codebook, norm_dtype
        self.channels = None  # (H, n_out), chosen by the first encode
        self.regular_channels = None

    def options(self) -> dict:
        return {
            "variant": self.variant,
            "outlier_channels": self.outlier_channels,
            "calibration_tokens": self.group,
            "rotation": self.rotation,
            "codebook": self.codebook,
            "norm_dtype": self.norm_dtype,
        }

    @property
    def label(self) -> str:
        """The nominal label (``"2.5"``, ``"3.5"``, ``"3"``)."""
        return f"{self.bits:g}"

    def _parts(self):
        return (("outlier_", self.outlier_quantizer), ("regular_", self.regular_quantizer))

    def field_layout(self) -> dict:
        return {
            prefix + name: (shape, dtype, 1)
            for prefix, quant in self._parts()
            for name, (shape, dtype) in quant.field_layout().items()
        }

    def state_nbytes(self, heads: int) -> int:
        itemsize = np.dtype(_index_dtype(self.head_dim)).itemsize
        return SEED_NBYTES + heads * self.outlier_channels * itemsize

    def storable_limits(self) -> Limits:
        """Each part's norm is at most the token's; a part of tiny norm is kept (subnormal)."""
        return Limits(
            max_norm=norm_limit(self.norm_dtype),
            storage=f"{self.norm_dtype} norms",
            fix={"norm_dtype": "float32"},
        )

    # -- channel choice ------------------------------------------------------------------------
    def choose_channels(self, x) -> None:
        """Fix the outlier channels of every stream from the block ``x (H, T, d)`` (largest RMS)."""
        xp = namespace(x)
        x = xp.astype(x, xp.float32, copy=False)
        rms = xp.sqrt(xp.mean(x * x, axis=1))  # (H, d)
        order = xp.argsort(-rms, axis=1, stable=True)
        self.channels = xp.astype(
            xp.sort(order[:, : self.outlier_channels], axis=1),
            getattr(xp, _index_dtype(self.head_dim)),
        )
        self.regular_channels = xp.sort(order[:, self.outlier_channels :], axis=1)

    def _check_streams(self, h: int) -> None:
        if self.channels is None:
            raise ValueError("no channels chosen yet: encode a first block of tokens")
        if self.channels.shape[0] != h:
            raise ValueError(
                f"this codec chose its channels for {self.channels.shape[0]} streams; got {h} "
                "(use one codec per cache layer)"
            )

    def _split(self, a):
        """The outlier and regular sub-vectors of ``a (H, n, d)``, per stream."""
        xp = namespace(a)
        ch = xp.astype(self.channels, xp.int64)[:, None, :]
        return (
            xp.take_along_axis(a, ch, axis=2),
            xp.take_along_axis(a, self.regular_channels[:, None, :], axis=2),
        )

    def _merge(self, parts, shape):
        """The sub-vectors ``parts`` (outlier, regular) put back on their channels: ``shape``.

        The two channel lists of a stream are a permutation of ``0..d-1``; the
        inverse permutation gathers each channel from the concatenated parts.
        """
        xp = namespace(parts[0])
        order = xp.concat([xp.astype(self.channels, xp.int64), self.regular_channels], axis=1)
        inverse = xp.argsort(order, axis=1)[:, None, :]
        both = xp.astype(xp.concat(parts, axis=2), xp.float32, copy=False)
        return xp.reshape(xp.take_along_axis(both, inverse, axis=2), shape)

    def _stream_fields(self, fields, prefix: str, quant, h: int) -> dict:
        return {name: fields[prefix + name][h, ...] for name in quant.field_layout()}

    # -- the codec ---------------------------------------------------------------------------------
    def encode(self, x) -> dict:
        x = self.check_tokens(x)
        xp = namespace(x)
        if x.shape[1] == 0:  # nothing to store, and nothing to choose channels from
            return {
                name: zeros_on(x, (x.shape[0], 0, *shape), getattr(xp, dtype))
                for name, (shape, dtype, _) in self.field_layout().items()
            }
        if self.channels is None:
            self.choose_channels(x[:, : self.group, ...])
        self._check_streams(x.shape[0])
        fields = {}
        for (prefix, quant), part in zip(self._parts(), self._split(x), strict=True):
            fields.update({prefix + k: v for k, v in encode_storable(quant, part).items()})
        return fields

    def decode(self, fields: dict):
        h, t = stream_tokens(fields, self.field_layout())
        xp = namespace(*fields.values())
        if t == 0:
            return zeros_on(next(iter(fields.values())), (h, 0, self.head_dim))
        self._check_streams(h)
        parts = []
        for prefix, quant in self._parts():
            flat = {
                name: xp.reshape(fields[prefix + name], (h * t,) + tuple(shape))
                for name, (shape, _) in quant.field_layout().items()
            }
            rows = [
                quant._decode_rows({k: v[a:b, ...] for k, v in flat.items()}, xp.float32)
                for a, b in quant._chunks(h * t)
            ]
            parts.append(xp.reshape(xp.concat(rows, axis=0), (h, t, quant.dim)))
        return self._merge(parts, (h, t, self.head_dim))

    def prepare(self, q):
        """Per stream, each sub-query transformed by its quantizer (rotated once).

        Before the first block is encoded no channel is chosen yet: the
        validated queries are returned and split when :meth:`score` runs.
        """
        q = self.check_queries(q)
        if self.channels is None:
            return q
        self._check_streams(q.shape[0])
        q_out, q_reg = self._split(q)
        return [
            (
                self.outlier_quantizer._prepare_queries(q_out[h, ...]),
                self.regular_quantizer._prepare_queries(q_reg[h, ...]),
            )
            for h in range(q.shape[0])
        ]

    def score(self, state, fields: dict):
        h, t = stream_tokens(fields, self.field_layout())
        if not isinstance(state, list):  # the queries, prepared before any channel was chosen
            if t == 0:
                return zeros_on(state, (h, state.shape[1], 0))
            self._check_streams(h)
            state = self.prepare(state)
        self._check_streams(h)
        first = _any_array(state[0][0])
        out = zeros_on(first, (h, first.shape[0], t))
        for s in range(h):
            for (prefix, quant), st in zip(self._parts(), state[s], strict=True):
                f = self._stream_fields(fields, prefix, quant, s)
                for a, b in quant._chunks(t):
                    out[s, :, a:b] += quant._score_rows(st, {k: v[a:b, ...] for k, v in f.items()})
        return out

    def weighted_sum(self, p, fields: dict):
        p = self.check_weights(p, fields)
        h, nq, t = p.shape
        if t == 0:
            return zeros_on(p, (h, nq, self.head_dim))
        self._check_streams(h)
        sums = []
        for prefix, quant in self._parts():
            acc = zeros_on(p, (h, nq, quant.dim))
            for s in range(h):
                f = self._stream_fields(fields, prefix, quant, s)
                for a, b in quant._chunks(t):
                    acc[s, ...] += quant._weighted_sum_rows(
                        p[s, :, a:b], {k: v[a:b, ...] for k, v in f.items()}
                    )
            sums.append(acc)
        return self._merge(sums, (h, nq, self.head_dim))
