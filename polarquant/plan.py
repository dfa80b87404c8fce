r"""Plans: what a quantizer hands a backend's kernels, built and validated once.

A quantizer's seeded constants (its rotation, sketch and codebooks) are made
once, on the host, in float64; what the kernels then need of them is a handful
of numbers and small tables: the bit width, how many codes a row holds and in
how many bytes, the decision thresholds and centroids, and for PolarQuant the
per-level layout of the angle codes.  A **plan** holds exactly that, checked
once when it is built (so no backend has to check a codebook again), and is
what every backend operation takes first (:mod:`polarquant.backends`):

====================  ==========================================  ==========================================
plan                  quantizers                                  kernels (paper step)
====================  ==========================================  ==========================================
:class:`ScalarPlan`   ``TurboQuantMSE``; the MSE stage of         nearest-centroid codes of rotated
                      ``TurboQuantProd``                          coordinates (TurboQuant Alg. 1, lines 3, 7)
:class:`SignPlan`     ``QJL``; the residual of                    packed signs of a sketch ``S x`` (QJL
                      ``TurboQuantProd`` and ``PolarQuantQJL``    Def. 2.1; TurboQuant Alg. 2, line 6)
:class:`PolarPlan`    ``PolarQuant``                              polar transform and angle codes per level
                                                                  (PolarQuant Sec. 3.1, Alg. 1)
====================  ==========================================  ==========================================

A quantizer exposes its plan as ``quantizer.plan`` (``TurboQuantProd``: a
:class:`ResidualPlan` of its two stages).  Plans are frozen: the numbers never
change after the checks; the only state is a cache of the tables derived from
them (``constant``: the codebook cast to the data's namespace, device and
dtype; ``derived``: a backend's own layout of them), built at first use and
kept, so that a codebook is converted once per dtype and device, not once per
call.

Codes of one row are laid out as :mod:`polarquant.packing` says (MSB first,
``ceil(n b / 8)`` bytes).  A :class:`PolarPlan` stores the angle codes of all
levels of a row in **one** byte array: level ``l`` occupies bytes
``offsets[l - 1]:offsets[l]`` (each level starts on a byte), so a row of the
paper's configuration (``d = 128``, bits ``(4, 2, 2, 2)``) is
``32 + 8 + 4 + 2 = 46`` bytes.

Examples
--------
>>> from polarquant import PolarQuant, TurboQuantMSE
>>> plan = TurboQuantMSE(128, bits=4).plan
>>> plan.n, plan.bits, plan.nbytes, plan.centroids.shape, plan.boundaries.shape
(128, 4, 64, (16,), (15,))
>>> polar = PolarQuant(128, levels=4, bits=(4, 2, 2, 2)).plan
>>> polar.counts, polar.offsets, polar.nbytes, polar.radii
((64, 32, 16, 8), (0, 32, 40, 44, 46), 46, 8)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._array import ConstantCache, check_bits, check_int
from .codebooks import Codebook
from .packing import packed_nbytes
from .polar import angle_counts, check_levels

__all__ = ["ScalarPlan", "SignPlan", "PolarPlan", "ResidualPlan", "MAX_ROW_BITS"]

#: Most code bits in one row: kernels count a row's bits in 32-bit integers.
MAX_ROW_BITS = 2**31 - 8


def _check_row_bits(count: int, bits: int, name: str) -> None:
    if count * bits > MAX_ROW_BITS:
        raise ValueError(
            f"{name}={count} codes of {bits} bits per row exceed the kernels' limit of "
            f"2**31 bits per row"
        )


def _codebook(book: Any, what: str) -> Codebook:
    """``book`` itself if it is a :class:`Codebook` (checked when made: sorted, finite, sizes)."""
    if not isinstance(book, Codebook):
        raise TypeError(
            f"{what} must be a polarquant.codebooks.Codebook, got {type(book).__name__}"
        )
    return book


class _Cached:
    """The cache every plan carries (not in its ``repr``; plans compare by identity)."""

    _constants: ConstantCache
    _derived: dict

    def _init_cache(self) -> None:
        object.__setattr__(self, "_constants", ConstantCache())
        object.__setattr__(self, "_derived", {})

    def _books(self) -> tuple:
        """The plan's codebooks, one per level (a scalar plan has one)."""
        raise NotImplementedError

    def boundary_table(self, dtype) -> np.ndarray:
        """Every level's thresholds rounded to ``dtype``, host ``(levels, 2**max(bits) - 1)``.

        Rounded as the reference compares them (its constant cast to the data's
        compute dtype), padded with ``+inf`` (never ``<=`` a finite value): the
        table a kernel's binary search of ``bits`` steps reads.  Read-only, kept.
        """
        dtype = np.dtype(dtype)

        def build():
            books = self._books()
            table = np.full((len(books), (1 << max(b.bits for b in books)) - 1), np.inf, dtype)
            for level, book in enumerate(books):
                table[level, : book.boundaries.shape[0]] = book.boundaries.astype(dtype)
            table.flags.writeable = False
            return table

        return self.derived(("boundary_table", dtype.str), build)

    def derived(self, key: Any, build: Callable[[], Any]) -> Any:
        """``build()``, computed at the first call with this ``key`` and kept with the plan.

        For the tables a backend derives from the plan's numbers (padded
        threshold tables, per-byte lookup tables, device copies): built once
        per plan instead of once per call.  ``key`` should name the backend
        and everything the table depends on besides the plan (a dtype).
        """
        if key not in self._derived:
            self._derived[key] = build()
        return self._derived[key]


@dataclass(frozen=True, eq=False)
class ScalarPlan(_Cached):
    """One scalar codebook applied to every coordinate of a row (TurboQuant Alg. 1, lines 3, 7).

    Parameters
    ----------
    n : int
        Codes per row (the rotated dimension ``D``).
    codebook : Codebook
        ``2**bits`` centroids and ``2**bits - 1`` thresholds (ties go to the upper cell).

    Notes
    -----
    Derived once: ``bits``, the code width ``b`` (1..8), and ``nbytes``, the bytes of one
    packed row, ``ceil(n b / 8)``; ``boundaries`` and ``centroids`` are the codebook's
    (read-only float64, host).
    """

    n: int
    codebook: Codebook = field(repr=False)
    bits: int = field(init=False)
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        n = check_int(self.n, "n", low=0)
        bits = check_bits(_codebook(self.codebook, "codebook").bits)
        _check_row_bits(n, bits, "n")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "nbytes", packed_nbytes(n, bits))
        self._init_cache()

    def _books(self) -> tuple:
        return (self.codebook,)

    @property
    def boundaries(self) -> np.ndarray:
        return self.codebook.boundaries

    @property
    def centroids(self) -> np.ndarray:
        return self.codebook.centroids

    def constant(self, name: str, like, dtype=None):
        """``"boundaries"`` or ``"centroids"`` in the namespace and device of ``like``.

        ``dtype`` defaults to the compute dtype of ``like`` (float64 stays,
        everything else is float32); cast once per namespace, device and dtype.
        """
        if name not in ("boundaries", "centroids"):
            raise ValueError(f"a scalar plan has 'boundaries' and 'centroids', not {name!r}")
        return self._constants.get(name, getattr(self.codebook, name), like, dtype)


#: The codebook of one sign bit: bit 0 decodes to -1, bit 1 to +1.
_SIGNS = np.array([-1.0, 1.0])


@dataclass(frozen=True, eq=False)
class SignPlan(_Cached):
    """``m`` packed sign bits per row, bit 1 for ``p >= 0`` (QJL Def. 2.1).

    Parameters
    ----------
    m : int
        Signs per row (the sketch size).

    Notes
    -----
    ``nbytes``, the bytes of one packed row, is ``ceil(m / 8)``; ``bits`` is 1 and
    ``centroids`` the sign codebook ``(-1, +1)``.
    """

    m: int
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        m = check_int(self.m, "m", low=0)
        _check_row_bits(m, 1, "m")
        object.__setattr__(self, "m", m)
        object.__setattr__(self, "nbytes", packed_nbytes(m, 1))
        self._init_cache()

    @property
    def bits(self) -> int:
        """Signs are one-bit codes (with the two-entry codebook ``centroids``)."""
        return 1

    @property
    def centroids(self) -> np.ndarray:
        """The sign codebook ``(-1, +1)``."""
        return _SIGNS

    def constant(self, name: str, like, dtype=None):
        """``"centroids"`` (``(-1, +1)``) in the namespace, device and dtype of ``like``."""
        if name != "centroids":
            raise ValueError(f"a sign plan has 'centroids', not {name!r}")
        return self._constants.get(name, _SIGNS, like, dtype)


@dataclass(frozen=True, eq=False)
class PolarPlan(_Cached):
    """The recursive polar transform of a row and one angle codebook per level (PolarQuant Sec. 3.1).

    Level ``l`` (1-based) has ``counts[l-1] = dim / 2**l`` angles, coded with
    ``bits[l-1]`` bits against ``codebooks[l-1]``; the ``dim / 2**L`` final
    radii are stored as they are.  The angle codes of one row are one byte
    array, level ``l`` at bytes ``offsets[l-1]:offsets[l]``.

    Parameters
    ----------
    dim : int
        Row length ``D`` (the rotated dimension), a multiple of ``2**levels``.
    codebooks : sequence of Codebook
        One per level, level 1 first (its width is the level's bit width).

    Notes
    -----
    Derived once: ``levels`` (``L``); ``bits`` and ``counts``, the code width and the number
    of angles of each level; ``offsets``, the byte offset of each level's codes in a row and
    the row's total (``L + 1`` entries); ``nbytes = offsets[-1]``, the bytes of one row's
    angle codes; ``radii``, the final radii per row, ``D / 2**L``.
    """

    dim: int
    codebooks: tuple = field(repr=False)
    levels: int = field(init=False)
    bits: tuple = field(init=False)
    counts: tuple = field(init=False)
    offsets: tuple = field(init=False)
    nbytes: int = field(init=False)
    radii: int = field(init=False)

    def __post_init__(self) -> None:
        dim = check_int(self.dim, "dim", low=0)
        if isinstance(self.codebooks, Codebook) or not isinstance(self.codebooks, Sequence):
            raise TypeError("codebooks must be a sequence of Codebook, one per level")
        if not self.codebooks:
            raise ValueError("the polar transform needs at least one level (one codebook)")
        levels = check_levels(dim, len(self.codebooks))  # the transform's own check
        _check_row_bits(dim, 1, "dim")
        books = tuple(
            _codebook(b, f"codebook of level {level}")
            for level, b in enumerate(self.codebooks, start=1)
        )
        bits = tuple(check_bits(b.bits) for b in books)
        counts = tuple(angle_counts(dim, levels))
        angle_bits = sum(c * b for c, b in zip(counts, bits, strict=True))
        if angle_bits > MAX_ROW_BITS:
            raise ValueError(
                f"dim={dim} with angle bits {list(bits)} gives {angle_bits} code bits per row, "
                f"over the kernels' limit of 2**31 bits per row"
            )
        offsets = [0]
        for count, b in zip(counts, bits, strict=True):
            offsets.append(offsets[-1] + packed_nbytes(count, b))
        for name, value in (
            ("dim", dim),
            ("codebooks", books),
            ("levels", levels),
            ("bits", bits),
            ("counts", counts),
            ("offsets", tuple(offsets)),
            ("nbytes", offsets[-1]),
            ("radii", dim >> levels),
        ):
            object.__setattr__(self, name, value)
        self._init_cache()

    def _books(self) -> tuple:
        return self.codebooks

    def level_slice(self, level: int) -> slice:
        """The bytes of level ``level`` (1-based) in a row of angle codes."""
        level = check_int(level, "level", low=1, high=self.levels)
        return slice(self.offsets[level - 1], self.offsets[level])

    def constant(self, name: str, like, dtype=None) -> list:
        """Per-level ``"boundaries"`` or ``"centroids"`` in the namespace/device/dtype of ``like``."""
        if name not in ("boundaries", "centroids"):
            raise ValueError(f"a polar plan has 'boundaries' and 'centroids', not {name!r}")
        return [
            self._constants.get(f"{name}_{level}", getattr(cb, name), like, dtype)
            for level, cb in enumerate(self.codebooks, start=1)
        ]

    def trig_tables(self, dtype) -> tuple[np.ndarray, np.ndarray]:
        """``cos`` and ``sin`` of every level's centroids, host ``(L, 2**max(bits))``, zero-padded.

        Computed in ``dtype`` from the centroids cast to ``dtype``: what the
        reference's ``cos(psi)`` computes on decoded angles of that dtype
        (:func:`polarquant.polar.inverse_polar_transform`), so that a table
        lookup reproduces it exactly.
        """
        dtype = np.dtype(dtype)

        def build():
            width = 1 << max(self.bits)
            cos_t = np.zeros((self.levels, width), dtype=dtype)
            sin_t = np.zeros((self.levels, width), dtype=dtype)
            for level, cb in enumerate(self.codebooks):
                c = cb.centroids.astype(dtype)
                cos_t[level, : c.shape[0]] = np.cos(c)
                sin_t[level, : c.shape[0]] = np.sin(c)
            cos_t.flags.writeable = sin_t.flags.writeable = False
            return cos_t, sin_t

        return self.derived(("trig", dtype.str), build)


@dataclass(frozen=True, eq=False)
class ResidualPlan:
    """A first stage and the sign sketch of its residual (TurboQuant Alg. 2; the blog's PolarQuant + QJL).

    ``first`` is the :class:`ScalarPlan` of ``TurboQuantProd``'s MSE stage
    (``None`` at 1 bit, where the method is plain QJL) or the
    :class:`PolarPlan` of ``PolarQuantQJL``; ``residual`` the :class:`SignPlan`
    of the residual's sketch.
    """

    first: ScalarPlan | PolarPlan | None
    residual: SignPlan
