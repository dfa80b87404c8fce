"""Index files: a versioned ``.npz`` archive (format ``polarquant-index``), never a pickle.

Layout (version ``FORMAT_VERSION`` = 1), written by :func:`save` through
:func:`polarquant._archive.write` (members stored uncompressed, the file renamed into place):

* ``__meta__.npy``: UTF-8 JSON with ``format``, ``format_version``, ``library_version``,
  ``metric``, ``refine`` (``null``, ``"float16"`` or ``"float32"``), ``next_id``, ``n``
  (live vectors), ``dtype`` (the dtype the vectors were encoded from), the quantizer's
  ``config``, and every member's dtype and shape;
* one member per field of the quantizer's codes (``codes``, ``norms``, ``signs``...), each
  ``(n, ...)`` in the layout of :meth:`polarquant.Quantizer.field_layout`, the same bytes as
  :func:`polarquant.save` writes for ``n`` vectors;
* ``ids``: int64 ``(n,)``, unique and non-negative; ``sq_norms``: float32 ``(n,)`` (metric
  ``l2``); ``refine``: ``(n, dim)`` (when the index keeps a refinement copy).

Removed vectors are not written.  :func:`load` checks, before allocating anything, the
metadata (strict JSON, every key), the configuration (rebuilt into the quantizer), and each
member's header and size against the layout the configuration and ``n`` imply; then reads
the members (zip CRC checked) or, with ``mmap=True``, maps the codes and the refinement copy
read-only from the file (their CRC is then not checked; ids and squared norms are always read,
and the refinement copy is read once, a block of rows at a time, to check it is finite).  Stored norms must be finite and non-negative, ids unique,
non-negative and below ``next_id``.  Every damaged or crafted file raises ``ValueError``
naming the file.
"""

from __future__ import annotations

import zipfile

import numpy as np

from .. import _archive
from .._archive import Refused, is_int
from .._array import to_host
from .._version import __version__
from ..compressed import CompressedVectors
from ..io import rebuild_quantizer
from ..quantizer import DECODE_DTYPES
from .index import METRICS, REFINE_DTYPES, VectorIndex, _merged, _Segment

__all__ = ["save", "load", "FORMAT", "FORMAT_VERSION"]

#: The ``format`` name written in every index file's ``__meta__``.
FORMAT = "polarquant-index"
#: The version of the index file layout written and read (1).
FORMAT_VERSION = 1
#: Largest metadata member accepted (fitted codebooks make it at most a few hundred KB).
MAX_METADATA_BYTES = 1 << 24
#: Rows of the refinement copy checked at a time on load (bounded memory for a memory map).
CHECK_ROWS = 1 << 14
_META_KEYS = (
    "format",
    "format_version",
    "metric",
    "refine",
    "next_id",
    "n",
    "dtype",
    "config",
    "members",
)


def save(path, index: VectorIndex) -> None:
    """Write ``index`` to ``path`` (``.npz`` appended if missing); an existing file is replaced
    only once the new one is complete."""
    if not isinstance(index, VectorIndex):
        raise TypeError(f"expected a VectorIndex, got {type(index).__name__}")
    q = index.quantizer
    layout = q.field_layout()
    host = lambda a: np.ascontiguousarray(to_host(a))  # noqa: E731
    if index._segments:  # the live vectors as one segment (no copy when there is one already)
        seg = _merged(*index._segments)
        arrays = {name: host(seg.codes.fields[name]) for name in layout}
        arrays["ids"] = host(seg.ids)
        optional = (("sq_norms", seg.sq_norms), ("refine", seg.refine))
        arrays.update({name: host(a) for name, a in optional if a is not None})
        dtype = seg.codes.dtype
    else:
        arrays = {name: np.zeros((0, *shape), dt) for name, (shape, dt) in layout.items()}
        arrays["ids"] = np.zeros(0, np.int64)
        if index.metric == "l2":
            arrays["sq_norms"] = np.zeros(0, np.float32)
        if index.refine is not None:
            arrays["refine"] = np.zeros((0, index.dim), index.refine)
        dtype = "float32"
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "metric": index.metric,
        "refine": index.refine,
        "next_id": int(index._next_id),
        "n": int(arrays["ids"].shape[0]),
        "dtype": dtype,
        "config": q.config(),
        "members": {k: {"dtype": a.dtype.name, "shape": list(a.shape)} for k, a in arrays.items()},
    }
    _archive.write(path, meta, arrays)


def load(path, *, mmap: bool = False, backend: str | None = None) -> VectorIndex:
    """Read an index written by :func:`save` (see the module docstring for what is checked).

    ``mmap=True`` maps the codes and the refinement copy read-only from the file (a path, not
    a file object): searching reads them from the page cache, so an index larger than RAM can
    be searched; added vectors then live in memory beside them.  ``backend`` is the
    quantizer's kernel backend (as the quantizers' ``backend=``).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Naming the file: damaged, truncated or crafted content of any kind.
    """
    if mmap and hasattr(path, "read"):
        raise ValueError("load(mmap=True) needs a file name, not a file object")
    from ..backends import check_backend_name

    backend = None if backend is None else check_backend_name(backend)
    return _archive.read_guarded(
        path, lambda fh, name: _load(fh, mmap, backend), "polarquant index file"
    )


def _load(fh, mmap: bool, backend) -> VectorIndex:
    size = _archive.archive_size(fh)
    with zipfile.ZipFile(fh) as zf:
        members = _archive.members(zf, size)
        if "__meta__" not in members:
            raise Refused("no polarquant metadata (__meta__); not a polarquant index file")
        meta = _archive.read_json(zf, members["__meta__"], MAX_METADATA_BYTES)
        _check_meta(meta)
        quantizer = _quantizer(meta["config"], backend)
        n, dim = meta["n"], quantizer.dim
        expected = {
            name: ((n, *shape), dt) for name, (shape, dt) in quantizer.field_layout().items()
        }
        codes_fields = set(expected)
        expected["ids"] = ((n,), "int64")
        if meta["metric"] == "l2":
            expected["sq_norms"] = ((n,), "float32")
        if meta["refine"] is not None:
            expected["refine"] = ((n, dim), meta["refine"])
        _check_member_specs(meta["members"], expected)
        extra = sorted(set(members) - set(expected) - {"__meta__"})
        if extra:
            raise Refused(f"holds unexpected members {extra}")
        arrays = {}
        for name, (shape, dt) in expected.items():
            if name not in members:
                raise Refused(f"lacks the member {name!r}")
            mapped = mmap and name in codes_fields | {"refine"}
            if mapped:
                arrays[name] = _archive.map_member(fh, zf, members[name], name, np.dtype(dt), shape)
            else:
                arrays[name] = _archive.read_member(zf, members[name], name, np.dtype(dt), shape)
    for name in (*codes_fields, "sq_norms"):
        if name in arrays and arrays[name].dtype.kind == "f":
            _archive.check_scalars(name, arrays[name])
    if "sq_norms" in arrays:
        _check_sq_norms(arrays["sq_norms"], arrays, codes_fields)
    if "refine" in arrays:  # block by block: bounded memory, also for a memory map
        refine = arrays["refine"]
        for start in range(0, n, CHECK_ROWS):
            if not np.all(np.isfinite(refine[start : start + CHECK_ROWS])):
                raise Refused("member 'refine' holds non-finite values")
    ids = arrays["ids"]
    if n and (ids.min() < 0 or ids.max() >= meta["next_id"]):
        raise Refused(f"ids must lie in [0, next_id={meta['next_id']})")
    if np.unique(ids).shape[0] != n:
        raise Refused("ids are not unique")
    fields = {name: arrays[name] for name in codes_fields}
    codes = CompressedVectors(
        quantizer.method, quantizer.config(), fields, (n,), dim, meta["dtype"]
    )
    try:
        quantizer.check_codes(codes)
    except (TypeError, ValueError) as exc:
        raise Refused(str(exc)) from None
    index = VectorIndex(quantizer, meta["metric"], refine=meta["refine"])
    index._next_id = meta["next_id"]
    if n:
        index._segments.append(
            _Segment(codes, ids, arrays.get("sq_norms"), arrays.get("refine"), mapped=mmap)
        )
    return index


#: How far ``sqrt(sq_norms)`` may lie from the codes' stored norms: float16 norms are rounded
#: to 2**-11 relative (2**-24 absolute below 2**-14), the float32 squares far closer.
SQ_NORM_RTOL, SQ_NORM_ATOL = 2.0**-10, 2.0**-23


def _check_sq_norms(sq_norms: np.ndarray, arrays: dict, codes_fields: set) -> None:
    """The exact squared norms of metric ``"l2"`` agree with the norms the codes store (both
    written by ``add`` from the same vectors): a crafted file whose distances would be wrong is
    refused, naming the first row that disagrees.  The codes store a vector's norm as
    ``norms`` (TurboQuant, QJL) or through PolarQuant's top-level radii (``radii``: the
    polar transform keeps norms, so ``||x||^2`` is the sum of their squares; PolarQuant
    Sec. 3)."""
    if "norms" in codes_fields:

        def norms_of(a, b):
            return np.asarray(arrays["norms"][a:b], dtype=np.float64)

    else:  # PolarQuant and PolarQuantQJL: every quantizer stores norms or radii

        def norms_of(a, b):
            radii = np.asarray(arrays["radii"][a:b], dtype=np.float64)
            return np.sqrt(np.sum(radii * radii, axis=1))

    for start in range(0, sq_norms.shape[0], CHECK_ROWS):
        stop = start + CHECK_ROWS
        norm = norms_of(start, stop)
        root = np.sqrt(sq_norms[start:stop].astype(np.float64))
        bad = np.flatnonzero(np.abs(root - norm) > SQ_NORM_RTOL * norm + SQ_NORM_ATOL)
        if bad.size:
            row = start + int(bad[0])
            raise Refused(
                f"member 'sq_norms' disagrees with the codes' norms at row {row} "
                f"(sqrt {root[bad[0]]:.6g} against {norm[bad[0]]:.6g})"
            )


def _check_meta(meta) -> None:
    _archive.check_format(meta, FORMAT, (FORMAT_VERSION,))
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise Refused(f"metadata lacks {missing}")
    if meta["metric"] not in METRICS:
        raise Refused(f"metric {meta['metric']!r} is not one of {METRICS}")
    if meta["refine"] is not None and meta["refine"] not in REFINE_DTYPES:
        raise Refused(f"refine {meta['refine']!r} is not null or one of {REFINE_DTYPES}")
    for key in ("n", "next_id"):
        if not is_int(meta[key]) or not 0 <= meta[key] < 2**63:
            raise Refused(f"metadata {key} {meta[key]!r} is not an integer in [0, 2**63)")
    if meta["dtype"] not in DECODE_DTYPES:
        raise Refused(f"encoded dtype {meta['dtype']!r} is not one of {DECODE_DTYPES}")
    if not isinstance(meta["config"], dict) or not isinstance(meta["members"], dict):
        raise Refused("metadata config and members must be JSON objects")


def _quantizer(config: dict, backend):
    quantizer = rebuild_quantizer(config)
    quantizer.backend = backend
    return quantizer


def _check_member_specs(specs: dict, expected: dict) -> None:
    if set(specs) != set(expected):
        raise Refused(
            f"metadata lists the members {sorted(specs)}; the configuration, metric and "
            f"refinement imply {sorted(expected)}"
        )
    for name, (shape, dt) in expected.items():
        spec = specs[name]
        if not isinstance(spec, dict) or not _archive.is_shape(spec.get("shape")):
            raise Refused(f"metadata of member {name!r} is malformed: {spec!r}")
        if spec.get("dtype") != dt or tuple(spec["shape"]) != shape:
            raise Refused(
                f"member {name!r} is declared {spec.get('dtype')}{spec['shape']}; expected "
                f"{dt}{list(shape)}"
            )
