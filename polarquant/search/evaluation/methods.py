"""The methods of the Sec. 4.4 experiment: the configurations and their polarquant / FAISS adapters.

TurboQuant (arXiv 2504.19874), **Sec. 4.4** compares TurboQuant with Product Quantization
(LUT256: 8-bit codebooks over 4 coordinates at 2 bits, over 2 at 4 bits, trained on the database
itself) and RaBitQ, at 2 and 4 bits per coordinate.  Here (:func:`configurations`), at each bit
width ``b``:

==========================  ======================================================================
``turboquant-mse``          :class:`~polarquant.TurboQuantMSE` ``(d, b)``
``turboquant-prod``         :class:`~polarquant.TurboQuantProd` ``(d, b)`` (``b - 1`` bits + 1-bit QJL)
``qjl``                     :class:`~polarquant.QJL` with ``proj_dim = b d`` (``b`` sign bits per coordinate)
``polarquant``              :class:`~polarquant.PolarQuant` with the most levels ``L <= 4`` that divide
                            ``d`` (``d = 50``: 1, ``d = 300``: 2, ``d = 384``: 4), ``b`` bits per angle
``faiss-pq``                ``IndexPQ``, 8-bit sub-quantizers over ``8 / b`` coordinates (the paper's LUT256)
``faiss-pq-fastscan``       ``IndexPQFastScan``, 4-bit sub-quantizers over ``4 / b`` coordinates
``faiss-sq4``               ``IndexScalarQuantizer`` ``QT_4bit`` (per-dimension trained ranges; 4 bits only)
``faiss-rabitq``            random rotation + ``IndexRaBitQ``, ``nb_bits = b`` (1 sign bit + ``b - 1``)
``faiss-rabitq-fastscan``   random rotation + ``IndexRaBitQFastScan``, ``nb_bits = b``
``faiss-rabitq-b-1``        random rotation + ``IndexRaBitQ``, ``nb_bits = b - 1``: its per-vector
                            factors make ``nb_bits = b`` larger than the others at small ``d``
``faiss-tq-mse``            random rotation + FAISS's TurboQuant scalar quantizer ``QT_<b>bit_tqmse``
``faiss-tq-prod``           random rotation + FAISS's full TurboQuant ``QT_<b>bit_tq``
==========================  ======================================================================

and once, as references (:data:`REFERENCE_BITS`): ``faiss-sq8`` (``QT_8bit``); exact float32
search is the run's own reference.  polarquant's methods run through
:class:`~polarquant.search.index.VectorIndex` (``metric="ip"``, searched with ``k = 64``).
FAISS's RaBitQ and TurboQuant scalar quantizers do not rotate: the rotation is a
``RandomRotationMatrix`` pre-transform (without it FAISS's ``QT_2bit_tqmse`` has 4.8x the
distortion on anisotropic data).  Product quantizers whose sub-vectors do not divide ``d`` get
zero-padded vectors (inner products unchanged): GloVe at 2 bits is padded to 52.

Each configuration's ``make()`` gives a runner (``warm_up``, ``build``, ``search``, ``sizes``,
``setup_s``) that the run times.  FAISS is imported lazily, in one place (``_faiss``, which the
run also asks): without it the FAISS configurations are skipped with the install command.

Departure from the paper: PQ and RaBitQ are FAISS's implementations.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from .data import UsageError
from .truth import K_MAX

__all__ = [
    "POLARQUANT_METHODS",
    "FAISS_METHODS",
    "METHODS",
    "REFERENCE_BITS",
    "polar_levels",
    "configurations",
]

#: Bit widths of the paper's experiment.
DEFAULT_BITS = (2, 4)

POLARQUANT_METHODS = ("turboquant-mse", "turboquant-prod", "qjl", "polarquant")
FAISS_METHODS = (
    "faiss-pq",
    "faiss-pq-fastscan",
    "faiss-sq4",
    "faiss-rabitq",
    "faiss-rabitq-fastscan",
    "faiss-rabitq-b-1",
    "faiss-tq-mse",
    "faiss-tq-prod",
    "faiss-sq8",
)
#: Every method name ``--methods`` takes, in table order.
METHODS = POLARQUANT_METHODS + FAISS_METHODS
#: Methods run once at a fixed bit width, as references (their table is "reference").
REFERENCE_BITS = {"faiss-sq8": 8}

FAISS_INSTALL = (
    'python -m pip install "faiss-cpu>=1.8" (in a clone of polarquant: '
    'python -m pip install -e ".[search-eval]")'
)


# -- the configurations ----------------------------------------------------------------------------
class Skip(Exception):
    """A configuration that cannot run here (the reason is reported, never silently dropped)."""


@dataclass
class Config:
    """One method at one bit width; ``make()`` gives its runner (``build(database)``, then
    ``search(queries, k)`` -> ids, ``sizes()``, ``setup_s``)."""

    method: str
    bits: int  # nominal bits per coordinate; the table it belongs to
    label: str
    setting: str  # what the method was given
    family: str  # "polarquant" or "faiss"
    make: object = field(repr=False, default=None)  # callable() -> a runner (build, search)


def polar_levels(dim: int) -> int:
    """PolarQuant levels used for ``dim``: the most ``L <= 4`` (the paper's ``L``) with
    ``dim % 2**L == 0``; 0 when ``dim`` is odd (PolarQuant then cannot run)."""
    levels = 0
    while levels < 4 and dim % 2 ** (levels + 1) == 0:
        levels += 1
    return levels


def _pad(dim: int, group: int) -> int:
    return -(-dim // group) * group


def configurations(dim: int, bits=DEFAULT_BITS, methods=None, *, seed: int = 0, backend=None):
    """The configurations of one run, in table order: each method at each of ``bits``, then
    the references (:data:`REFERENCE_BITS`).  ``methods`` (default all of :data:`METHODS`)
    selects; configurations that cannot run (a bit width a quantizer does not take, FAISS
    missing a feature) are returned as ``(config, reason)`` pairs in the second list."""
    methods = METHODS if methods is None else tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UsageError(f"unknown method(s) {unknown}; valid: {', '.join(METHODS)}")
    runs, skipped = [], []
    grid = [(m, b) for b in bits for m in METHODS if m in methods and m not in REFERENCE_BITS]
    grid += [(m, b) for m, b in REFERENCE_BITS.items() if m in methods]
    for method, b in grid:
        try:
            config = (_polarquant_config if method in POLARQUANT_METHODS else _faiss_config)(
                method, dim, int(b), seed, backend
            )
        except Skip as why:
            skipped.append(({"method": method, "bits": int(b)}, str(why)))
            continue
        runs.append(config)
    return runs, skipped


def _polarquant_config(method: str, dim: int, b: int, seed: int, backend) -> Config:
    import polarquant as pq

    common = {"seed": seed, "backend": backend}
    if method == "turboquant-mse":
        label, setting = "TurboQuantMSE", f"bits={b}"
        make = partial(pq.TurboQuantMSE, dim, b, **common)
    elif method == "turboquant-prod":
        if b < 2:
            raise Skip("TurboQuantProd needs bits >= 2 (b - 1 bits of codes + 1-bit QJL)")
        label, setting = "TurboQuantProd", f"bits={b} ({b - 1} + 1-bit QJL)"
        make = partial(pq.TurboQuantProd, dim, b, **common)
    elif method == "qjl":
        label, setting = "QJL", f"proj_dim={b * dim} ({b} sign bits/coord)"
        make = partial(pq.QJL, dim, proj_dim=b * dim, **common)
    else:
        levels = polar_levels(dim)
        if levels == 0:
            raise Skip(f"PolarQuant needs an even dimension (d={dim})")
        label, setting = "PolarQuant", f"levels={levels}, bits={(b,) * levels}"
        make = partial(pq.PolarQuant, dim, levels=levels, bits=(b,) * levels, **common)
    return Config(method, b, label, setting, "polarquant", partial(_PolarquantRunner, make))


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


_TQ_MSE_BITS = (1, 2, 3, 4, 8)
_TQ_PROD_BITS = (2, 3, 4, 5)


def _faiss_config(method: str, dim: int, b: int, seed: int, backend) -> Config:
    faiss = _faiss()
    if faiss is None:
        raise Skip(f"faiss is not installed: {FAISS_INSTALL}")
    IP = faiss.METRIC_INNER_PRODUCT
    SQ = faiss.ScalarQuantizer
    index_dim, min_train, qb = dim, 1, None

    def rotated(make_inner):  # FAISS's RaBitQ and TurboQuant SQ expect rotated input
        def make():
            rr = faiss.RandomRotationMatrix(dim, dim)
            rr.init(seed)
            return faiss.IndexPreTransform(rr, make_inner())  # keeps references to both

        return make

    if method in ("faiss-pq", "faiss-pq-fastscan"):
        code_bits = 8 if method == "faiss-pq" else 4
        if code_bits % b:
            raise Skip(f"{code_bits}-bit sub-quantizers cannot give {b} bits per coordinate")
        group = code_bits // b
        index_dim = _pad(dim, group)  # zero padding: inner products unchanged
        m = index_dim // group
        pad_note = f", zero-padded to d={index_dim}" if index_dim != dim else ""
        setting = f"M={m} x {code_bits} bits ({group} coord/sub-quantizer{pad_note})"
        min_train = 1 << code_bits  # k-means needs a vector per centroid
        if method == "faiss-pq":
            label, make = "FAISS PQ (LUT256)", partial(faiss.IndexPQ, index_dim, m, 8, IP)
        else:
            label, make = "FAISS PQ fast-scan", partial(faiss.IndexPQFastScan, index_dim, m, 4, IP)
    elif method in ("faiss-sq4", "faiss-sq8"):
        want = 4 if method == "faiss-sq4" else 8
        if b != want:
            raise Skip(f"IndexScalarQuantizer QT_{want}bit is a {want}-bit method")
        label, setting = f"FAISS SQ{want}", f"QT_{want}bit, trained ranges"
        make = partial(faiss.IndexScalarQuantizer, dim, getattr(SQ, f"QT_{want}bit"), IP)
    elif method.startswith("faiss-rabitq"):
        fast = method == "faiss-rabitq-fastscan"
        name = "IndexRaBitQFastScan" if fast else "IndexRaBitQ"
        if not hasattr(faiss, name):
            raise Skip(f"this faiss ({faiss.__version__}) has no {name}")
        nb = b - 1 if method == "faiss-rabitq-b-1" else b
        if not 1 <= nb <= 9:
            raise Skip(f"RaBitQ takes 1 to 9 bits per coordinate, not {nb}")
        qb = 8  # queries quantized to 8 bits: the recall of float queries on GloVe
        if fast:
            label, inner = (
                "FAISS RaBitQ fast-scan",
                partial(faiss.IndexRaBitQFastScan, dim, IP, 32, nb),
            )
        else:
            label, inner = "FAISS RaBitQ", partial(faiss.IndexRaBitQ, dim, IP, nb)
        if method == "faiss-rabitq-b-1":
            label += f" ({nb} bit{'s' if nb > 1 else ''})"
        setting, make = f"RR + nb_bits={nb}, qb={qb}", rotated(inner)
    else:
        kind = "tqmse" if method == "faiss-tq-mse" else "tq"
        allowed = _TQ_MSE_BITS if kind == "tqmse" else _TQ_PROD_BITS
        qt_name = f"QT_{b}bit_{kind}"
        if not hasattr(SQ, qt_name):
            if not any(hasattr(SQ, f"QT_{a}bit_{kind}") for a in allowed):
                raise Skip(f"this faiss ({faiss.__version__}) has no TurboQuant scalar quantizer")
            raise Skip(f"FAISS's {kind} quantizer takes bits {allowed}, not {b}")
        label = "FAISS TurboQuant mse" if kind == "tqmse" else "FAISS TurboQuant prod"
        setting = f"RR + {qt_name}"
        make = rotated(partial(faiss.IndexScalarQuantizer, dim, getattr(SQ, qt_name), IP))
    runner = partial(_FaissRunner, make, index_dim, min_train, seed, qb)
    return Config(method, b, label, setting, "faiss", runner)


# -- runners: build, then search ------------------------------------------------------------------
class _PolarquantRunner:
    """A :class:`~polarquant.search.index.VectorIndex` over one quantizer."""

    def __init__(self, make_quantizer):
        t0 = time.perf_counter()
        self.quantizer = make_quantizer()
        self.setup_s = time.perf_counter() - t0

    def warm_up(self, database, queries) -> float:
        """Compile or load the backend's kernels on a few vectors (not part of any timing)."""
        from .. import VectorIndex

        t0 = time.perf_counter()
        tiny = VectorIndex(self.quantizer, metric="ip")
        tiny.add(database[: min(256, len(database))])
        tiny.search(queries[:4], k=min(K_MAX, len(tiny)))
        return time.perf_counter() - t0

    def build(self, database) -> None:
        from .. import VectorIndex

        self.index = VectorIndex(self.quantizer, metric="ip")
        self.index.add(database)

    def search(self, queries, k: int) -> np.ndarray:
        return self.index.search(queries, k)[1]

    def sizes(self) -> dict:
        n = len(self.index)
        with tempfile.TemporaryDirectory() as tmp:  # what a saved index holds besides the codes
            path = Path(tmp) / "index.npz"
            self.index.save(path)
            file_bytes = path.stat().st_size
        code = self.quantizer.nbytes_per_vector()
        return {
            "code_bytes": float(code),
            "held_bytes": self.index.nbytes / n,
            "fixed_bytes": 0,
            "file_bytes": int(file_bytes),
        }


class _FaissRunner:
    """A FAISS index built by ``make``: trained and filled from the database (the paper trains
    PQ on the database it searches), searched with ``index.search``."""

    def __init__(self, make, dim: int, min_train: int, seed: int, qb: int | None = None):
        t0 = time.perf_counter()
        self.index = make()
        self.setup_s = time.perf_counter() - t0
        self.dim = dim  # may exceed the data's: zero padding
        self.min_train = min_train
        self.notes: list[str] = []
        faiss = _faiss()
        inner = faiss.downcast_index(self.index)
        if isinstance(inner, faiss.IndexPreTransform):
            inner = faiss.downcast_index(inner.index)
        self.inner = inner
        if qb is not None:
            inner.qb = qb
        pq = getattr(inner, "pq", None)
        if pq is not None:
            pq.cp.seed = seed
            self._pq = pq

    def _padded(self, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape[1] == self.dim:
            return x
        return np.ascontiguousarray(np.pad(x, ((0, 0), (0, self.dim - x.shape[1]))))

    def warm_up(self, database, queries) -> float:
        return 0.0

    def build(self, database) -> None:
        x = self._padded(database)
        n = x.shape[0]
        if n < self.min_train:
            raise Skip(f"needs at least {self.min_train} training vectors, got {n}")
        pq = getattr(self, "_pq", None)
        if pq is not None:
            k = 1 << pq.nbits
            recommended = k * pq.cp.min_points_per_centroid
            if n < recommended:
                self.notes.append(
                    f"k-means trained on {n} vectors (FAISS recommends >= {recommended} for "
                    f"{k} centroids)"
                )
            pq.cp.min_points_per_centroid = 1  # the note above replaces FAISS's stderr warning
        self.index.train(x)
        self.index.add(x)

    def search(self, queries, k: int) -> np.ndarray:
        return self.index.search(self._padded(queries), k)[1]

    def sizes(self) -> dict:
        faiss = _faiss()
        n = self.index.ntotal
        code = self.inner.sa_code_size()
        serialized = int(faiss.serialize_index(self.index).size)
        return {
            "code_bytes": float(code),
            "held_bytes": float(code),
            "fixed_bytes": max(0, serialized - n * code),
            "file_bytes": serialized,
        }


# -- which baselines this FAISS has (recorded in the report) ---------------------------------------
def faiss_features() -> dict | None:
    """Which of the baselines this FAISS has (``None`` without FAISS)."""
    faiss = _faiss()
    if faiss is None:
        return None
    sq = faiss.ScalarQuantizer
    return {
        "version": faiss.__version__,
        "IndexRaBitQ": hasattr(faiss, "IndexRaBitQ"),
        "IndexRaBitQFastScan": hasattr(faiss, "IndexRaBitQFastScan"),
        "turboquant_mse_sq": [b for b in _TQ_MSE_BITS if hasattr(sq, f"QT_{b}bit_tqmse")],
        "turboquant_prod_sq": [b for b in _TQ_PROD_BITS if hasattr(sq, f"QT_{b}bit_tq")],
    }
