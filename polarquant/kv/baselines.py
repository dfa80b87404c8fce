r"""Baseline KV-cache codecs in the token-codec API: KIVI, Hadamard + round-to-nearest, FP8.

The methods of this library are compared with the simple quantizers users ask
about (field-notes, "What users ask for"), each written against the same
contract (:mod:`polarquant.kv.codec`) so that one cache and one benchmark run
them all, and each scored and summed **from its codes**:

:class:`KIVIKeys` / :class:`KIVIValues` (method ``"kivi"``)
    Asymmetric min-max uniform quantization in the style of KIVI (Liu et al.,
    "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache", ICML 2024,
    arXiv 2402.02750, Sec. 3-4): keys per *channel* over aligned groups of
    ``group_size`` tokens (outlier channels get their own range), values per
    *token* over groups of ``group_size`` channels.  One float16 scale and one
    float16 minimum per group.
:class:`HadamardRTN` (method ``"hadamard-rtn"``)
    A seeded randomized Hadamard rotation (:class:`polarquant.rotation.RandomizedHadamard`)
    followed by symmetric round-to-nearest in groups of 32 rotated coordinates
    with one float16 scale per group, in the style of QuaRot (Ashkboos et al.,
    "QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs", NeurIPS 2024,
    arXiv 2404.00456, Sec. 4: Hadamard-rotated KV cache with group-wise RTN)
    and of llama.cpp's ``q4_0`` blocks of 32.
:class:`FP8` (method ``"fp8"``)
    Emulated float8 e4m3, OCP "FN" variant (Micikevicius et al., "FP8 Formats
    for Deep Learning", arXiv 2209.05433, Table 1): one byte per coordinate,
    round to nearest representable, ties to even.

Conventions shared by every codec here
--------------------------------------
* Inputs are NumPy arrays, computed in float32 (float16/float64 are cast).
* Scales and minima are float16, rounded **outward** (minima down, scales up)
  so that every input lies inside the representable range of its group: the
  round-to-nearest error is then at most half a step, ``|x - x_hat| <= scale/2``
  for every coordinate, a hard bound the tests check.  Values beyond the
  float16 range (65504) are refused with an error instead of becoming ``inf``.
* ``bits_per_coordinate`` is computed from the stored layout
  (``field_layout``): codes, scales, minima, counting per-group fields
  once per group, ``8 * field bytes / (tokens * head_dim)``.
* ``backend`` is validated and accepted for a uniform constructor, but these
  baselines have only this NumPy reference path (``host_only``: other arrays,
  CuPy's included, are refused with the reason).

Symbols: ``H`` streams (batch x kv heads), ``T`` tokens, ``d`` head_dim, ``b``
bits, ``L = 2**b - 1`` the largest code, ``G`` groups, ``gs`` group size,
``D`` the rotated (padded) dimension, ``s`` scale, ``m`` minimum.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from array_api_compat import is_array_api_obj

from .._array import check_bits, check_int, namespace
from .._seeding import check_seed
from ..codebooks import cell_index
from ..packing import pack_codes, packed_nbytes, unpack_codes
from ..quantizer import CHUNK_ELEMENTS
from ..rotation import make_rotation
from .codec import FP16_MAX, LIMIT_MARGIN, SEED_NBYTES, KeyCodec, Limits, TokenCodec, ValueCodec

__all__ = ["KIVIKeys", "KIVIValues", "HadamardRTN", "FP8", "E4M3_MAX", "e4m3_values"]


# -- shared plumbing ------------------------------------------------------------------------------
def fp16_outward(values, what: str, rounding: str) -> np.ndarray:
    """``values`` stored as float16, rounded ``"down"`` or ``"up"`` (never towards the data).

    Raises ``ValueError`` if a value is beyond the float16 range (65504), where
    the stored number would be ``inf``.
    """
    v = np.asarray(values, dtype=np.float32)
    if v.size:
        big = float(np.max(np.abs(v)))
        if not big <= FP16_MAX:
            raise ValueError(
                f"{what} up to {big:.4g} exceed the float16 range (max {FP16_MAX:g}); "
                "rescale the input"
            )
    h = v.astype(np.float16)
    back = h.astype(np.float32)
    if rounding == "up":
        return np.where(back < v, np.nextafter(h, np.float16(np.inf)), h)
    return np.where(back > v, np.nextafter(h, np.float16(-np.inf)), h)


def _kivi_limits(levels: int) -> Limits:
    """KIVI's minima are at least ``-max|x|`` and its scales ``(max - min) / levels`` at most
    ``2 max|x| / levels``: both fit float16 when ``max|x| <= 65504 min(1, levels / 2)``
    (with the margin for the outward rounding of the minimum), whatever the group."""
    top = LIMIT_MARGIN * FP16_MAX * min(1.0, levels / 2)
    return Limits(max_abs=top, storage="float16 minima and scales")


def spans(n: int, per_item: int, align: int = 1) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges over ``n`` items, ``align``-aligned, about ``CHUNK_ELEMENTS`` each.

    ``per_item`` is the number of temporary elements one item costs; scoring
    and summing stream over tokens so temporaries stay a fixed size.
    """
    step = max(align, (CHUNK_ELEMENTS // max(per_item, 1)) // align * align)
    return [(a, min(a + step, n)) for a in range(0, n, step)]


class BaseCodec(TokenCodec):
    """Validation, layout-derived bits, configuration: what the codecs of this package share.

    Subclasses set ``method`` and implement ``field_layout`` (name ->
    ``(shape per item, dtype, tokens per item)``; ``tokens per item`` is 1 for
    per-token fields and the group size for per-group fields) and
    :meth:`options` (the JSON-able method options).
    """

    def __init__(self, head_dim: int, bits, seed: int = 0, backend: str | None = None):
        super().__init__(check_int(head_dim, "head_dim", low=2))
        self.bits = bits
        self.seed = check_seed(seed)
        from ..backends import check_backend_name

        self.backend = None if backend is None else check_backend_name(backend)

    # -- layout and configuration --------------------------------------------------------------
    def field_layout(self) -> dict[str, tuple[tuple, str, int]]:
        raise NotImplementedError

    def options(self) -> dict:
        return {}

    def state_nbytes(self, heads: int) -> int:
        """0: KIVI and FP8 are deterministic; seeded codecs override this (8 bytes per seed)."""
        return 0

    @property
    def bits_per_coordinate(self) -> float:
        """``8 * stored bytes / (tokens * head_dim)`` predicted by ``field_layout``."""
        total = 0.0
        for shape, dtype, per in self.field_layout().values():
            total += math.prod(shape) * np.dtype(dtype).itemsize / per
        return 8.0 * total / self.head_dim

    def config(self) -> dict:
        return {
            "method": self.method,
            "dim": self.head_dim,
            "bits": self.bits,
            "seed": self.seed,
            **self.options(),
        }

    @classmethod
    def from_config(cls, config: dict):
        c = {k: v for k, v in config.items() if k != "method"}
        return cls(c.pop("dim"), c.pop("bits"), **c)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "method")
        return f"{type(self).__name__}({args})"

    # -- input validation ----------------------------------------------------------------------
    def check_tokens(self, x):
        """Validate ``x (H, T, d)``: floating, finite, ``T`` a multiple of :attr:`group`; float32."""
        x = self._float_array(x, "x")
        if x.ndim != 3 or x.shape[2] != self.head_dim:
            raise ValueError(
                f"x must have shape (streams, tokens, {self.head_dim}), got {tuple(x.shape)}"
            )
        if x.shape[1] % self.group:
            raise ValueError(
                f"{self.method} compresses tokens in aligned groups of {self.group}; "
                f"got {x.shape[1]} tokens, not a multiple of {self.group}"
            )
        xp = namespace(x)
        if not bool(xp.all(xp.isfinite(x))):
            raise ValueError("x contains NaN or Inf values; the codecs need finite input")
        return xp.astype(x, xp.float32, copy=False)

    def check_queries(self, q):
        q = self._float_array(q, "q")
        if q.ndim != 3 or q.shape[2] != self.head_dim:
            raise ValueError(
                f"q must have shape (streams, nq, {self.head_dim}), got {tuple(q.shape)}"
            )
        return namespace(q).astype(q, namespace(q).float32, copy=False)

    def check_weights(self, p, fields: dict):
        h, t = stream_tokens(fields, self.field_layout())
        p = self._float_array(p, "p")
        if p.ndim != 3 or p.shape[0] != h or p.shape[2] != t:
            raise ValueError(
                f"p must have shape ({h}, nq, {t}) for these fields, got {tuple(p.shape)}"
            )
        return namespace(p).astype(p, namespace(p).float32, copy=False)

    def _float_array(self, a, name: str):
        """``a`` if it is a floating array this codec computes on (any namespace, or NumPy
        only for the :attr:`~polarquant.kv.codec.TokenCodec.host_only` baselines)."""
        if self.host_only and not isinstance(a, np.ndarray):
            raise TypeError(
                f"{name} must be a NumPy array: the {self.method!r} baseline has only a NumPy "
                f"path, got {type(a).__module__}.{type(a).__qualname__}"
            )
        if not is_array_api_obj(a):
            raise TypeError(f"{name} must be an array, got {type(a).__name__}")
        if not namespace(a).isdtype(a.dtype, "real floating"):
            raise TypeError(f"{name} must be a floating array, got dtype {a.dtype}")
        return a


def stream_tokens(fields: dict, layout: dict) -> tuple[int, int]:
    """``(H, T)`` of a fields dict: from its first per-token field."""
    for name, (_, _, per) in layout.items():
        if per == 1:
            a = fields[name]
            return a.shape[0], a.shape[1]
    name, (_, _, per) = next(iter(layout.items()))
    return fields[name].shape[0], fields[name].shape[1] * per


def _check_group_size(group_size, what: str) -> int:
    return check_int(group_size, what, low=1)


# -- KIVI ------------------------------------------------------------------------------------------
class KIVIKeys(BaseCodec, KeyCodec):
    r"""KIVI-style keys: per-channel asymmetric min-max quantization over groups of tokens.

    KIVI (Liu et al., ICML 2024, arXiv 2402.02750) Sec. 3.2-4: key caches have
    a few channels of large magnitude, so keys are quantized *per channel*
    (each channel of a group of ``gs`` tokens gets its own range) and values
    per token.  For stream ``h``, token group ``g`` and channel ``c``:

    .. math::

        m_{gc} = \mathrm{fp16}_\downarrow(\min_{t \in g} k_{tc}),\quad
        s_{gc} = \mathrm{fp16}_\uparrow\Big(\frac{\max_{t \in g} k_{tc} - m_{gc}}{2^b - 1}\Big),\quad
        \mathrm{code}_{tc} = \mathrm{rint}\Big(\frac{k_{tc} - m_{gc}}{s_{gc}}\Big),

    decoded as ``k_hat = m + s * code``; ``|k - k_hat| <= s/2`` exactly (the
    outward rounding keeps every key inside ``[m, m + (2^b - 1) s]``).  Ties of
    ``rint`` go to the even code.

    Scoring from the codes, per group (no key is decoded):

    .. math::

        \langle q, \hat k_t\rangle = \sum_c (q_c s_{gc})\,\mathrm{code}_{tc} + \sum_c q_c m_{gc}.

    Parameters
    ----------
    head_dim : int
    bits : int
        Code width ``b``, 1..8 (KIVI uses 2 and 4).
    seed : int
        Recorded in the configuration only (KIVI is deterministic).
    backend : str, optional
        Validated; this baseline has only the NumPy path.
    group_size : int
        Tokens per group ``gs`` (KIVI: 32; the cache compresses in aligned
        groups, ``group = group_size``).

    Notes
    -----
    Stored layout (``H`` streams, ``T`` tokens, ``G = T / gs``):

    * ``codes``: ``uint8 (H, T, ceil(d b / 8))``, each token's ``d`` codes packed
      (:func:`polarquant.packing.pack_codes`);
    * ``scale``: ``float16 (H, G, d)``; ``min``: ``float16 (H, G, d)``.

    Bits per coordinate ``b + 32 / gs`` (when ``8`` divides ``d b``): 3.0 at 2
    bits and 5.0 at 4 bits with ``gs = 32``.  KIVI keeps the most recent tokens
    in full precision (its residual ``R``); that window belongs to the cache.
    KIVI uses plain min-max ranges (no clipping search), as here.

    Examples
    --------
    >>> import numpy as np
    >>> codec = KIVIKeys(128, 2)
    >>> x = np.random.default_rng(0).standard_normal((2, 64, 128)).astype(np.float32)
    >>> fields = codec.encode(x)
    >>> sorted(fields), fields["codes"].shape, fields["scale"].shape, codec.bits_per_coordinate
    (['codes', 'min', 'scale'], (2, 64, 32), (2, 2, 128), 3.0)
    """

    method = "kivi"
    host_only = True

    def __init__(self, head_dim, bits, *, seed=0, backend=None, group_size: int = 32):
        super().__init__(head_dim, check_bits(bits), seed, backend)
        self.group_size = _check_group_size(group_size, "group_size")
        self.group = self.group_size
        self.levels = (1 << self.bits) - 1

    def options(self) -> dict:
        return {"group_size": self.group_size}

    def storable_limits(self) -> Limits:
        return _kivi_limits(self.levels)

    def field_layout(self) -> dict:
        d, gs = self.head_dim, self.group_size
        return {
            "codes": ((packed_nbytes(d, self.bits),), "uint8", 1),
            "scale": ((d,), "float16", gs),
            "min": ((d,), "float16", gs),
        }

    def encode(self, x) -> dict:
        x = self.check_tokens(x)
        h, t, d = x.shape
        xg = x.reshape(h, t // self.group_size, self.group_size, d)
        m16 = fp16_outward(xg.min(axis=2), "key group minima", "down")
        m = m16.astype(np.float32)
        s16 = fp16_outward((xg.max(axis=2) - m) / self.levels, "key group scales", "up")
        s = s16.astype(np.float32)
        safe = np.where(s > 0, s, np.float32(1))
        codes = np.clip(np.rint((xg - m[:, :, None]) / safe[:, :, None]), 0, self.levels)
        return {
            "codes": pack_codes(codes.astype(np.uint8).reshape(h, t, d), self.bits),
            "scale": s16,
            "min": m16,
        }

    def _codes(self, fields, a: int, b: int) -> np.ndarray:
        """Integer codes of tokens ``a:b`` as float32 ``(H, b - a, d)``."""
        return unpack_codes(fields["codes"][:, a:b], self.bits, self.head_dim).astype(np.float32)

    def decode(self, fields: dict):
        h, t = stream_tokens(fields, self.field_layout())
        gs, d = self.group_size, self.head_dim
        c = self._codes(fields, 0, t).reshape(h, t // gs, gs, d)
        s = fields["scale"].astype(np.float32)[:, :, None]
        m = fields["min"].astype(np.float32)[:, :, None]
        return (m + s * c).reshape(h, t, d)

    def prepare(self, q):
        return self.check_queries(q)

    def score(self, state, fields: dict):
        q = state
        h, t = stream_tokens(fields, self.field_layout())
        nq, d, gs = q.shape[1], self.head_dim, self.group_size
        out = np.empty((h, nq, t), dtype=np.float32)
        per_group = h * (gs * d + nq * d + nq * gs)
        for g0, g1 in spans(t // gs, per_group):
            c = self._codes(fields, g0 * gs, g1 * gs).reshape(h, g1 - g0, gs, d)
            s = fields["scale"][:, g0:g1].astype(np.float32)  # (H, Gc, d)
            m = fields["min"][:, g0:g1].astype(np.float32)
            qs = q[:, None, :, :] * s[:, :, None, :]  # (H, Gc, nq, d): q_c s_gc
            main = qs @ c.transpose(0, 1, 3, 2)  # (H, Gc, nq, gs): sum_c q_c s_gc code_tc
            bias = m @ q.transpose(0, 2, 1)  # (H, Gc, nq): sum_c q_c m_gc
            sc = main + bias[..., None]
            out[:, :, g0 * gs : g1 * gs] = sc.transpose(0, 2, 1, 3).reshape(h, nq, -1)
        return out


class KIVIValues(BaseCodec, ValueCodec):
    r"""KIVI-style values: per-token asymmetric min-max quantization over groups of channels.

    KIVI (arXiv 2402.02750) Sec. 3.2-4: value errors are mixed by the attention
    weights token by token, so values are quantized *per token*: the ``d``
    channels of each token are cut into groups of ``gs`` channels, each with
    its float16 minimum ``m`` (rounded down) and scale ``s`` (rounded up), codes
    ``rint((v - m)/s)`` in ``[0, 2^b - 1]``; ``|v - v_hat| <= s/2`` exactly.

    **Ragged last group**: when ``gs`` does not divide ``head_dim`` the last
    group holds the ``d mod gs`` remaining channels (head_dim 80 with
    ``gs = 32``: groups of 32, 32 and 16), with its own scale and minimum.
    ``group_size`` larger than ``head_dim`` is refused.

    Weighted sums from the codes, per channel group (no value is decoded):

    .. math::

        \sum_t p_t \hat v_{tc} = \sum_t (p_t s_{tg})\,\mathrm{code}_{tc} + \sum_t p_t m_{tg}.

    Parameters
    ----------
    head_dim : int
    bits : int
        Code width ``b``, 1..8 (KIVI uses 2 and 4).
    seed : int
        Recorded in the configuration only.
    backend : str, optional
        Validated; this baseline has only the NumPy path.
    group_size : int
        Channels per group (KIVI: 32).  Tokens are compressed one by one (``group = 1``).

    Notes
    -----
    Stored layout, ``G = ceil(d / gs)``: ``codes`` ``uint8 (H, T, ceil(d b / 8))``;
    ``scale`` and ``min`` ``float16 (H, T, G)``.  Bits per coordinate
    ``(8 ceil(d b / 8) + 32 G) / d``: 3.0 at 2 bits and 5.0 at 4 bits for
    ``d = 128, gs = 32``; 3.2 and 5.2 at ``d = 80``.
    """

    method = "kivi"
    host_only = True

    def __init__(self, head_dim, bits, *, seed=0, backend=None, group_size: int = 32):
        super().__init__(head_dim, check_bits(bits), seed, backend)
        self.group_size = _check_group_size(group_size, "group_size")
        if self.group_size > self.head_dim:
            raise ValueError(
                f"group_size={self.group_size} (channels per group) exceeds head_dim={self.head_dim}"
            )
        self.n_groups = -(-self.head_dim // self.group_size)
        self.levels = (1 << self.bits) - 1

    def options(self) -> dict:
        return {"group_size": self.group_size}

    def storable_limits(self) -> Limits:
        return _kivi_limits(self.levels)

    def field_layout(self) -> dict:
        return {
            "codes": ((packed_nbytes(self.head_dim, self.bits),), "uint8", 1),
            "scale": ((self.n_groups,), "float16", 1),
            "min": ((self.n_groups,), "float16", 1),
        }

    def _groups(self):
        """Channel slices of the groups (the last one ragged when ``gs`` does not divide ``d``)."""
        gs, d = self.group_size, self.head_dim
        return [slice(g * gs, min(d, (g + 1) * gs)) for g in range(self.n_groups)]

    def encode(self, x) -> dict:
        x = self.check_tokens(x)
        h, t, d = x.shape
        width = self.n_groups * self.group_size
        # pad the ragged last group with copies of its last channel: min and max are unchanged
        xp = np.pad(x, ((0, 0), (0, 0), (0, width - d)), mode="edge") if width > d else x
        xg = xp.reshape(h, t, self.n_groups, self.group_size)
        m16 = fp16_outward(xg.min(axis=3), "value group minima", "down")
        m = m16.astype(np.float32)
        s16 = fp16_outward((xg.max(axis=3) - m) / self.levels, "value group scales", "up")
        s = s16.astype(np.float32)
        safe = np.where(s > 0, s, np.float32(1))
        codes = np.clip(np.rint((xg - m[..., None]) / safe[..., None]), 0, self.levels)
        codes = codes.astype(np.uint8).reshape(h, t, width)[:, :, :d]
        return {"codes": pack_codes(codes, self.bits), "scale": s16, "min": m16}

    def decode(self, fields: dict):
        c = unpack_codes(fields["codes"], self.bits, self.head_dim).astype(np.float32)
        s = fields["scale"].astype(np.float32)
        m = fields["min"].astype(np.float32)
        out = np.empty_like(c)
        for g, cols in enumerate(self._groups()):
            out[:, :, cols] = m[:, :, g, None] + s[:, :, g, None] * c[:, :, cols]
        return out

    def weighted_sum(self, p, fields: dict):
        p = self.check_weights(p, fields)
        h, nq, t = p.shape
        d = self.head_dim
        out = np.zeros((h, nq, d), dtype=np.float32)
        for a, b in spans(t, h * (d + 2 * nq)):
            c = unpack_codes(fields["codes"][:, a:b], self.bits, d).astype(np.float32)
            s = fields["scale"][:, a:b].astype(np.float32)  # (H, Tc, G)
            m = fields["min"][:, a:b].astype(np.float32)
            w = p[:, :, a:b]
            for g, cols in enumerate(self._groups()):
                out[:, :, cols] += (w * s[:, None, :, g]) @ c[:, :, cols]
                out[:, :, cols] += w @ m[:, :, g, None]
        return out


# -- Hadamard + round-to-nearest ---------------------------------------------------------------------
class HadamardRTN(BaseCodec, KeyCodec, ValueCodec):
    r"""Randomized Hadamard rotation + symmetric group-wise round-to-nearest (keys and values).

    In the style of QuaRot (Ashkboos et al., NeurIPS 2024, arXiv 2404.00456,
    Sec. 4: keys and values rotated by Hadamard transforms so that a plain
    group-wise round-to-nearest grid suffices; the exact grid below is this
    library's documented choice, not QuaRot's) and of llama.cpp's 32-element
    blocks.  Per token:

    1. ``y = H D [x; 0] / sqrt(D)``: the seeded randomized Hadamard of
       :class:`polarquant.rotation.RandomizedHadamard` (zero-padded to the next
       power of two ``D``; head_dim 80 and 96 become ``D = 128``).  The rotation
       spreads outlier channels over all coordinates, which is what makes a
       plain uniform grid work.
    2. Groups of ``gs`` (default 32) rotated coordinates; each group stores
       one float16 scale and codes in ``[-qmax, qmax]``, ``qmax = 2^(b-1) - 1``:

       .. math::

           s = \mathrm{fp16}_\uparrow\Big(\frac{\max_{j \in g} |y_j|}{q_{max}}\Big),\qquad
           \mathrm{code}_j = \mathrm{rint}(y_j / s),\qquad \hat y_j = s\,\mathrm{code}_j,

       stored as unsigned ``code + qmax`` in ``b`` bits.  ``rint`` rounds ties to
       even.  ``|y_j - y_hat_j| <= s/2`` exactly (the scale is rounded up, so
       nothing is clipped).  The grid is symmetric: of the ``2^b`` code values
       the top one (``2^b - 1``) is never used.  This is the absmax rule
       (QuaRot's symmetric RTN); llama.cpp's ``q4_0`` instead divides the
       signed value of largest magnitude by ``-8`` to use all 16 levels.

    Scoring from codes: rotate each query once, ``qr = H D [q; 0]``, then the
    group-scaled integer dot ``<q, x_hat> = sum_g s_g sum_{j in g} qr_j code_j``
    (the inverse rotation is orthogonal on the padded space, and a query has
    zero padding).  Weighted sums accumulate ``sum_t p_t s_tg code_tj`` in the
    rotated domain and rotate back once per query row.

    Parameters
    ----------
    head_dim : int
    bits : int
        Code width ``b``, 2..8 (1 bit leaves no non-zero symmetric level).
    seed : int
        Seed of the Hadamard signs ``D``.
    backend : str, optional
        Validated; this baseline has only the NumPy path.
    group_size : int
        Rotated coordinates per scale (default 32); must divide ``D``.

    Notes
    -----
    Stored layout: ``codes`` ``uint8 (H, T, ceil(D b / 8))``, ``scales``
    ``float16 (H, T, D / gs)``.  Bits per coordinate ``(D b + 16 D / gs) / d``:
    4.5 at 4 bits and 2.5 at 2 bits for ``d = 128``; with padding ``d = 96``
    pays for 128 coordinates (6.0 at 4 bits).
    """

    method = "hadamard-rtn"
    host_only = True

    def __init__(self, head_dim, bits, *, seed=0, backend=None, group_size: int = 32):
        super().__init__(head_dim, check_bits(bits, low=2), seed, backend)
        self.rotation = make_rotation("hadamard", self.head_dim, self.seed)
        self.out_dim = self.rotation.out_dim
        self.group_size = _check_group_size(group_size, "group_size")
        if self.out_dim % self.group_size:
            raise ValueError(
                f"group_size={self.group_size} does not divide the rotated dimension "
                f"{self.out_dim} (head_dim {self.head_dim} zero-padded to a power of two)"
            )
        self.n_groups = self.out_dim // self.group_size
        self.qmax = (1 << (self.bits - 1)) - 1

    def options(self) -> dict:
        return {"group_size": self.group_size}

    def storable_limits(self) -> Limits:
        """``scale = max |y| / qmax`` with ``|y_i| <= ||x||`` (an orthonormal rotation)."""
        return Limits(max_norm=LIMIT_MARGIN * FP16_MAX * self.qmax, storage="float16 scales")

    def state_nbytes(self, heads: int) -> int:
        return SEED_NBYTES

    def field_layout(self) -> dict:
        return {
            "codes": ((packed_nbytes(self.out_dim, self.bits),), "uint8", 1),
            "scales": ((self.n_groups,), "float16", 1),
        }

    def _rotate(self, x):
        h, n, _ = x.shape
        return self.rotation.apply(x.reshape(h * n, self.head_dim)).reshape(h, n, self.out_dim)

    def encode(self, x) -> dict:
        x = self.check_tokens(x)
        h, t, _ = x.shape
        y = self._rotate(x).reshape(h, t, self.n_groups, self.group_size)
        s16 = fp16_outward(np.max(np.abs(y), axis=3) / self.qmax, "group scales", "up")
        s = s16.astype(np.float32)
        safe = np.where(s > 0, s, np.float32(1))
        codes = np.clip(np.rint(y / safe[..., None]), -self.qmax, self.qmax) + self.qmax
        codes = codes.astype(np.uint8).reshape(h, t, self.out_dim)
        return {"codes": pack_codes(codes, self.bits), "scales": s16}

    def _ints(self, fields, a: int, b: int) -> np.ndarray:
        """Signed integer codes of tokens ``a:b``: float32 ``(H, b - a, G, gs)``."""
        c = unpack_codes(fields["codes"][:, a:b], self.bits, self.out_dim).astype(np.float32)
        return (c - self.qmax).reshape(c.shape[0], b - a, self.n_groups, self.group_size)

    def decode(self, fields: dict):
        h, t = stream_tokens(fields, self.field_layout())
        y = self._ints(fields, 0, t) * fields["scales"].astype(np.float32)[..., None]
        x = self.rotation.inverse(y.reshape(h * t, self.out_dim))
        return x.reshape(h, t, self.head_dim)

    def prepare(self, q):
        q = self.check_queries(q)
        h, nq, _ = q.shape
        qr = self._rotate(q).reshape(h, nq, self.n_groups, self.group_size)
        return qr.transpose(0, 2, 1, 3)  # (H, G, nq, gs)

    def score(self, state, fields: dict):
        qr = state
        h, ng, nq, gs = qr.shape
        t = stream_tokens(fields, self.field_layout())[1]
        out = np.empty((h, nq, t), dtype=np.float32)
        for a, b in spans(t, h * (self.out_dim + ng * nq)):
            ints = self._ints(fields, a, b).transpose(0, 2, 3, 1)  # (H, G, gs, Tc)
            dots = qr @ ints  # (H, G, nq, Tc): integer dot per group
            s = fields["scales"][:, a:b].astype(np.float32).transpose(0, 2, 1)  # (H, G, Tc)
            out[:, :, a:b] = np.sum(dots * s[:, :, None, :], axis=1)
        return out

    def weighted_sum(self, p, fields: dict):
        p = self.check_weights(p, fields)
        h, nq, t = p.shape
        acc = np.zeros((h, self.n_groups, nq, self.group_size), dtype=np.float32)
        for a, b in spans(t, h * (self.out_dim + self.n_groups * nq)):
            ints = self._ints(fields, a, b).transpose(0, 2, 1, 3)  # (H, G, Tc, gs)
            s = fields["scales"][:, a:b].astype(np.float32).transpose(0, 2, 1)  # (H, G, Tc)
            acc += (p[:, None, :, a:b] * s[:, :, None, :]) @ ints
        y = acc.transpose(0, 2, 1, 3).reshape(h * nq, self.out_dim)
        return self.rotation.inverse(y).reshape(h, nq, self.head_dim)


# -- FP8 (e4m3) -------------------------------------------------------------------------------------
#: Largest finite float8 e4m3 ("FN": no infinity) value: 1.75 * 2**8.
E4M3_MAX = 448.0


def e4m3_values() -> np.ndarray:
    """The 256 float8 e4m3 (OCP FN) values by byte, float32; bytes 0x7F and 0xFF are NaN.

    Byte ``s eeee mmm``: exponent bias 7; ``e = 0`` is subnormal,
    ``(m / 8) 2**-6`` (smallest ``2**-9``); otherwise ``(1 + m/8) 2**(e - 7)``;
    ``e = 15, m = 7`` is NaN (there is no infinity), so the largest value is
    ``e = 15, m = 6``: 448.
    """
    b = np.arange(256)
    e, m = (b >> 3) & 15, b & 7
    mag = np.where(e == 0, m / 8 * 2.0**-6, (1 + m / 8) * 2.0 ** (e - 7))
    v = np.where(b >= 128, -mag, mag)
    v[(e == 15) & (m == 7)] = np.nan
    return v.astype(np.float32)


_E4M3 = e4m3_values()
_E4M3.setflags(write=False)
#: Non-negative finite magnitudes, bytes 0x00..0x7E in increasing order, and their midpoints.
_E4M3_MAGNITUDES = _E4M3[:127]
_E4M3_BOUNDARIES = ((_E4M3_MAGNITUDES[:-1].astype(np.float64) + _E4M3_MAGNITUDES[1:]) / 2).astype(
    np.float32
)  # exact: 5 significant bits

FP8_SCALINGS = ("none", "token")


class FP8(BaseCodec, KeyCodec, ValueCodec):
    r"""Emulated float8 e4m3 cache (OCP "FN" variant): one byte per coordinate.

    The format (Micikevicius et al., arXiv 2209.05433, Table 1; OCP 8-bit
    floating point specification): 1 sign, 4 exponent (bias 7), 3 mantissa
    bits; subnormals down to ``2**-9``; no infinity; the largest finite value
    is 448 and ``S.1111.111`` is NaN.  See :func:`e4m3_values`.

    Encoding is **round to nearest representable, ties to even** (the IEEE
    default, what hardware casts do): the magnitude is located among the 127
    sorted non-negative values with the midpoint boundaries
    (``polarquant.codebooks.cell_index``, which sends a tie to the upper
    value), and a tie is moved down when the upper neighbour has an odd
    mantissa.  Magnitudes below ``2**-10`` flush to (signed) zero; the sign
    bit of ``-0.0`` and of negative values rounding to zero is kept.

    Range handling (``scaling``):

    * ``"none"`` (default): **no scale is stored**; values beyond 448 in
      magnitude are refused with a ``ValueError`` naming the limit (never
      saturated or turned into NaN silently).  Key and value activations of
      current LLMs are almost always well inside this range; tiny values lose
      relative precision (subnormals below ``2**-6``).
    * ``"token"``: one float16 scale per token, ``s = fp16_up(max_c |x_c| / 448)``,
      and ``x / s`` is stored; any finite range whose scale fits float16.

    Score and weighted sums use the 256-entry value table: the bytes of a
    chunk of tokens are gathered through the table and multiplied, chunk by
    chunk, so the whole cache is never decoded.

    Parameters
    ----------
    head_dim : int
    bits : int
        Must be 8.
    seed : int
        Recorded in the configuration only.
    backend : str, optional
        Validated; this baseline has only the NumPy path.
    scaling : {"none", "token"}

    Notes
    -----
    Stored layout: ``codes`` ``uint8 (H, T, d)``; with ``scaling="token"`` also
    ``scales`` ``float16 (H, T)``.  Bits per coordinate: 8, or ``8 + 16/d``
    (8.125 at ``d = 128``, 8.25 at 64).  Relative rounding error of a normal
    value is at most ``2**-4`` (half of the 3-bit mantissa step).
    """

    method = "fp8"
    host_only = True

    def __init__(self, head_dim, bits=8, *, seed=0, backend=None, scaling: str = "none"):
        if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or bits != 8:
            raise ValueError(
                f"fp8 stores 8 bits per coordinate (e4m3); bits must be 8, got {bits!r}"
            )
        super().__init__(head_dim, 8, seed, backend)
        if scaling not in FP8_SCALINGS:
            raise ValueError(f"scaling must be one of {FP8_SCALINGS}, got {scaling!r}")
        self.scaling = scaling

    def options(self) -> dict:
        return {"scaling": self.scaling}

    def storable_limits(self) -> Limits:
        """448 without a scale (compared exactly); with ``scaling="token"`` the scale's range."""
        if self.scaling == "none":
            return Limits(
                max_abs=E4M3_MAX, storage="e4m3 without a scale", fix={"scaling": "token"}
            )
        return Limits(max_abs=LIMIT_MARGIN * FP16_MAX * E4M3_MAX, storage="float16 token scales")

    def field_layout(self) -> dict:
        layout = {"codes": ((self.head_dim,), "uint8", 1)}
        if self.scaling == "token":
            layout["scales"] = ((), "float16", 1)
        return layout

    @staticmethod
    def to_e4m3(x) -> np.ndarray:
        """Bytes of the nearest e4m3 values to ``x`` (ties to even); ``|x| <= 448`` required."""
        x = np.asarray(x, dtype=np.float32)
        a = np.abs(x)
        if a.size and not float(np.max(a)) <= E4M3_MAX:
            raise ValueError(
                f"values up to {float(np.max(a)):.4g} exceed the float8 e4m3 range "
                f"(max {E4M3_MAX:g}, no infinity); build the codec with scaling='token'"
            )
        idx = cell_index(a, _E4M3_BOUNDARIES).astype(np.int64)  # ties go to the upper value
        tie = (idx > 0) & (a == _E4M3_BOUNDARIES[np.maximum(idx - 1, 0)])
        idx = np.where(tie & (idx % 2 == 1), idx - 1, idx)  # ...unless its mantissa is odd
        return (idx | (np.signbit(x).astype(np.int64) << 7)).astype(np.uint8)

    def encode(self, x) -> dict:
        x = self.check_tokens(x)
        if self.scaling == "none":
            return {"codes": self.to_e4m3(x)}
        s16 = fp16_outward(np.max(np.abs(x), axis=2) / E4M3_MAX, "token scales", "up")
        s = s16.astype(np.float32)
        y = x / np.where(s > 0, s, np.float32(1))[..., None]
        return {"codes": self.to_e4m3(np.clip(y, -E4M3_MAX, E4M3_MAX)), "scales": s16}

    def _scales(self, fields, a: int, b: int):
        return fields["scales"][:, a:b].astype(np.float32) if self.scaling == "token" else None

    def decode(self, fields: dict):
        v = _E4M3[fields["codes"]]
        s = self._scales(fields, 0, fields["codes"].shape[1])
        return v if s is None else v * s[..., None]

    def prepare(self, q):
        return self.check_queries(q)

    def score(self, state, fields: dict):
        q = state
        h, nq, d = q.shape
        t = fields["codes"].shape[1]
        out = np.empty((h, nq, t), dtype=np.float32)
        for a, b in spans(t, h * (d + nq)):
            v = _E4M3[fields["codes"][:, a:b]]  # table gather for this chunk only
            sc = q @ v.transpose(0, 2, 1)
            s = self._scales(fields, a, b)
            out[:, :, a:b] = sc if s is None else sc * s[:, None, :]
        return out

    def weighted_sum(self, p, fields: dict):
        p = self.check_weights(p, fields)
        h, nq, t = p.shape
        out = np.zeros((h, nq, self.head_dim), dtype=np.float32)
        for a, b in spans(t, h * (self.head_dim + nq)):
            w = p[:, :, a:b]
            s = self._scales(fields, a, b)
            if s is not None:
                w = w * s[:, None, :]
            out += w @ _E4M3[fields["codes"][:, a:b]]
        return out
