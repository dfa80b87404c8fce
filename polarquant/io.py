"""Saving and loading compressed vectors: a versioned ``.npz`` file, never a pickle.

File layout (format ``polarquant-codes``, version :data:`FORMAT_VERSION`): a NumPy
``.npz`` archive (a zip file, members stored uncompressed by :func:`polarquant.save`; deflated
members, as written by ``numpy.savez_compressed``, are read too) holding

* ``__meta__.npy``: a ``uint8`` array of UTF-8 JSON with ``format``,
  ``format_version``, ``library_version``, ``method``, the quantizer's full
  ``config`` (dim, seed, bit widths, rotation, fitted codebooks...),
  ``batch_shape``, ``dim``, ``dtype`` and, for every field, its dtype and shape;
* one ``.npy`` member per field (``codes``, ``signs``, ``norms``, ``radii``,
  ``angles``), exactly the bytes held in memory.

Versions: 2 (written now) stores PolarQuant's angle codes of
all levels as one field ``angles`` (:class:`polarquant.plan.PolarPlan`);
version 1 stored one field ``angles_<l>`` per level.  Both are read: the
levels of a version-1 file are checked one by one against the layout the
configuration implies and joined into ``angles`` (byte for byte the same
codes).

Loading never unpickles and never trusts a declared size.  :func:`polarquant.load` reads the
zip archive itself and, in this order: parses the metadata (at most
:data:`MAX_METADATA_BYTES`, strict JSON) and checks every key; rebuilds the
quantizer from the configuration; derives from it and from ``batch_shape`` the
dtype and shape every field must have; checks the metadata's field list against
that layout; then, member by member, checks the ``.npy`` header (dtype, shape,
C order) and the member's size against the expected bytes, and against what the
archive can hold (a stored member is no larger than the file, a deflated one at
most 1032 times its compressed size, deflate's limit), **before** allocating
anything; reads the bytes, with the zip CRC checked; refuses stored norms and
radii that are negative or not finite; and finally runs the quantizer's
:meth:`~polarquant.Quantizer.check_codes`.

Every damaged, truncated or crafted file raises ``ValueError`` naming the file
and what is wrong; a missing file raises ``FileNotFoundError`` (and other
operating-system errors on opening, such as a directory or a permission
denied, are raised as they are).  Data is loaded into NumPy arrays that own
their bytes; move them to a device explicitly (``xp.asarray``) if needed.
"""

from __future__ import annotations

import zipfile

import numpy as np

from . import _archive
from ._archive import Refused as _Refused
from ._archive import check_scalars as _check_scalars
from ._archive import is_int as _is_int
from ._archive import is_shape as _is_shape
from ._array import to_host
from ._version import __version__
from .compressed import CompressedVectors
from .quantizer import DECODE_DTYPES

__all__ = ["save", "load", "FORMAT", "FORMAT_VERSION", "READABLE_VERSIONS", "MAX_METADATA_BYTES"]

FORMAT = "polarquant-codes"
FORMAT_VERSION = 2
#: Every version :func:`load` reads (see the module docstring).
READABLE_VERSIONS = (1, 2)

#: Largest metadata member accepted (16 MiB).  Real metadata is a few hundred bytes;
#: fitted codebooks add at most 511 numbers per level (about 13 KB per level in JSON).
MAX_METADATA_BYTES = 1 << 24

_META_KEYS = (
    "format",
    "format_version",
    "method",
    "config",
    "batch_shape",
    "dim",
    "dtype",
    "fields",
)


def save(path, codes: CompressedVectors) -> None:
    """Write ``codes`` to ``path``, a ``.npz`` file (see the module docstring for the layout).

    ``.npz`` is appended to a path without it, as NumPy does.  The codes are
    checked first against the layout their configuration implies, so a file
    that :func:`load` would refuse is never written.  The file is written under
    a temporary name beside ``path`` and renamed over it at the end: a failed
    call leaves any existing file untouched.  ``path`` may also be a binary file
    object open for writing.

    Raises
    ------
    TypeError
        ``codes`` is not a :class:`~polarquant.CompressedVectors`.
    ValueError
        Codes whose fields disagree with their configuration, or stored norms
        or radii that are negative or not finite.
    """
    from .quantizer import from_config

    if not isinstance(codes, CompressedVectors):
        raise TypeError(f"expected CompressedVectors, got {type(codes).__name__}")
    from_config(codes.config).check_codes(codes)
    # np.asarray, not np.ascontiguousarray: the latter turns a 0-d field (the norm of a
    # single vector) into shape (1,)
    host = {name: np.asarray(to_host(a), order="C") for name, a in codes.fields.items()}
    for name, a in host.items():
        try:
            _check_scalars(name, a)
        except _Refused as exc:
            raise ValueError(f"cannot save these codes: {exc}") from None
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "method": codes.method,
        "config": dict(codes.config),
        "batch_shape": [int(n) for n in codes.batch_shape],
        "dim": int(codes.dim),
        "dtype": codes.dtype,
        "fields": {
            name: {"dtype": a.dtype.name, "shape": list(a.shape)} for name, a in host.items()
        },
    }
    _archive.write(path, meta, host)


def load(path) -> CompressedVectors:
    """Read codes written by :func:`save`; never unpickles, never trusts a declared size.

    ``path`` is a file name or a binary file object open for reading.  Fields
    come back as NumPy arrays that own their bytes.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Naming the file: not a zip archive, or a damaged or truncated one (the
        CRC is checked); not a polarquant file; an unsupported format version;
        malformed or oversized metadata; an invalid configuration; fields whose
        dtype, shape or size differ from the metadata or from the layout the
        configuration implies (checked before any allocation); or stored
        norms/radii that are negative or not finite.
    """
    return _archive.read_guarded(path, _load, "polarquant codes file")


def _load(fh, name: str) -> CompressedVectors:
    size = _archive.archive_size(fh)
    with zipfile.ZipFile(fh) as zf:
        members = _archive.members(zf, size)
        if "__meta__" not in members:
            raise _Refused("no polarquant metadata (__meta__); not a polarquant codes file")
        meta = _read_meta(zf, members["__meta__"])
        quantizer = _quantizer(meta)
        batch = tuple(meta["batch_shape"])
        layout = quantizer.field_layout()
        if meta["format_version"] == 1:
            layout = _version1_layout(quantizer, layout)
        expected = {k: (batch + tuple(shape), dt) for k, (shape, dt) in layout.items()}
        _check_field_specs(meta["fields"], expected, batch, layout)
        fields = {}
        for field, (shape, dt) in expected.items():
            if field not in members:
                raise _Refused(f"lacks the field {field!r}")
            fields[field] = _archive.read_member(zf, members[field], field, np.dtype(dt), shape)
            _check_scalars(field, fields[field])
        extra = sorted(set(members) - set(expected) - {"__meta__"})
        if extra:
            raise _Refused(f"holds unexpected members {extra}")
    if meta["format_version"] == 1:
        fields = _join_version1_angles(quantizer, fields)
    codes = CompressedVectors(
        meta["method"], meta["config"], fields, batch, meta["dim"], meta["dtype"]
    )
    try:
        quantizer.check_codes(codes)  # the layout implied by the configuration, once more
    except (TypeError, ValueError) as exc:
        raise _Refused(str(exc)) from None
    return codes


def _version1_layout(quantizer, layout: dict) -> dict:
    """The fields a version-1 file holds: ``angles_<l>`` per level in place of ``angles``."""
    if "angles" not in layout:
        return layout
    plan = quantizer.polar_plan
    out = {}
    for name, spec in layout.items():
        if name != "angles":
            out[name] = spec
            continue
        for level in range(1, plan.levels + 1):
            part = plan.level_slice(level)
            out[f"angles_{level}"] = ((part.stop - part.start,), "uint8")
    return out


def _join_version1_angles(quantizer, fields: dict) -> dict:
    """A version-1 file's per-level angle fields as the one ``angles`` field, in layout order."""
    if "angles_1" not in fields:
        return fields
    levels = quantizer.polar_plan.levels
    parts = [fields.pop(f"angles_{level}") for level in range(1, levels + 1)]
    joined = np.concatenate(parts, axis=-1)
    return {name: joined if name == "angles" else fields[name] for name in quantizer.field_layout()}


def _read_meta(zf, info) -> dict:
    meta = _archive.read_json(zf, info, MAX_METADATA_BYTES)
    _check_meta(meta)
    return meta


def _check_meta(meta) -> None:
    """Every metadata key present and of the right type (the values are checked later)."""
    _archive.check_format(meta, FORMAT, READABLE_VERSIONS)
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise _Refused(f"metadata lacks {missing}")
    if not isinstance(meta["method"], str):
        raise _Refused(f"metadata method {meta['method']!r} is not a string")
    if not isinstance(meta["config"], dict) or meta["config"].get("method") != meta["method"]:
        raise _Refused("metadata method and configuration disagree")
    if meta["dtype"] not in DECODE_DTYPES:
        raise _Refused(f"decode dtype {meta['dtype']!r} is not one of {DECODE_DTYPES}")
    if not _is_int(meta["dim"]):
        raise _Refused(f"metadata dim {meta['dim']!r} is not an integer")
    if not _is_shape(meta["batch_shape"]):
        raise _Refused(
            f"metadata batch shape {meta['batch_shape']!r} is not a list of integers >= 0"
        )
    if not isinstance(meta["fields"], dict):
        raise _Refused(f"metadata fields {meta['fields']!r} are not a JSON object")


def _quantizer(meta: dict):
    """The quantizer of the configuration, whose ``dim`` must be the metadata's."""
    quantizer = rebuild_quantizer(meta["config"])
    if meta["dim"] != quantizer.dim:
        raise _Refused(f"metadata says dim={meta['dim']}, the configuration dim={quantizer.dim}")
    return quantizer


def rebuild_quantizer(config):
    """The quantizer a file's configuration describes; whatever is wrong with it is refused
    (:class:`polarquant._archive.Refused`), never raised from deep in a constructor."""
    from .quantizer import from_config

    try:
        return from_config(config)
    except (
        TypeError,
        ValueError,
        KeyError,
        IndexError,
        AttributeError,
        RuntimeError,
        ArithmeticError,
        RecursionError,
    ) as exc:
        raise _Refused(f"invalid configuration ({type(exc).__name__}: {exc})") from None


def _check_field_specs(specs: dict, expected: dict, batch: tuple, layout: dict) -> None:
    """The metadata's field list must be the layout the configuration implies."""
    if set(specs) != set(expected):
        raise _Refused(
            f"metadata lists the fields {sorted(specs)}, the configuration implies "
            f"{sorted(expected)}"
        )
    for field, (shape, dt) in expected.items():
        spec = specs[field]
        if not isinstance(spec, dict) or not _is_shape(spec.get("shape")):
            raise _Refused(f"metadata of field {field!r} is malformed: {spec!r}")
        if spec.get("dtype") != dt or tuple(spec["shape"]) != shape:
            raise _Refused(
                f"field {field!r} is declared {spec.get('dtype')}{spec['shape']}; batch shape "
                f"{batch} and the configuration imply {dt}{list(shape)} (per-vector shape "
                f"{tuple(layout[field][0])})"
            )
