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

import json
import math
import numbers
import os
import secrets
import struct
import zipfile
import zlib

import numpy as np
from numpy.lib import format as npy_format

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

#: Deflate expands its input at most 1032 times (RFC 1951: a 258-byte match per
#: 2 bits at best): a member declaring more than that is damaged or crafted.
_DEFLATE_MAX_RATIO = 1032

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

#: What damaged bytes can raise from the zip, zlib, ``.npy`` header and JSON readers.
_DAMAGE = (
    zipfile.BadZipFile,
    zlib.error,
    OSError,
    EOFError,
    NotImplementedError,
    RuntimeError,  # e.g. zipfile: "File is encrypted" from a flipped flag bit
    KeyError,
    IndexError,
    struct.error,
    UnicodeDecodeError,
    RecursionError,
    OverflowError,
    TypeError,
    ValueError,
    SyntaxError,
)


class _Refused(Exception):
    """A file refused by our own checks; :func:`load` adds the file name."""


def _name(path) -> str:
    if hasattr(path, "read"):
        return str(getattr(path, "name", None) or f"<{type(path).__name__}>")
    return os.fsdecode(os.fspath(path))


def _check_scalars(name: str, a: np.ndarray) -> None:
    """Stored norms and radii are finite and non-negative (what encode writes)."""
    if a.dtype.kind == "f" and not (np.all(np.isfinite(a)) and np.all(a >= 0)):
        raise _Refused(f"field {name!r} holds negative or non-finite values")


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
    text = json.dumps(meta, sort_keys=True, allow_nan=False).encode("utf-8")
    blob = np.frombuffer(text, dtype=np.uint8)
    if hasattr(path, "write"):
        np.savez(path, __meta__=blob, **host)
        return
    target = os.fsdecode(os.fspath(path))
    if not target.endswith(".npz"):
        target += ".npz"
    target = os.path.realpath(target)  # a link is followed: its target gets the new contents
    tmp = f"{target}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as fh:
            np.savez(fh, __meta__=blob, **host)
        if os.path.exists(target):  # the replaced file keeps its permissions
            os.chmod(tmp, os.stat(target).st_mode & 0o7777)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    name = _name(path)
    if hasattr(path, "read"):
        if not (hasattr(path, "seekable") and path.seekable()):
            raise ValueError(f"{name!r}: load needs a seekable binary file (a zip archive)")
        return _load_guarded(path, name)
    with open(path, "rb") as fh:  # FileNotFoundError, IsADirectoryError... as they are
        return _load_guarded(fh, name)


def _load_guarded(fh, name: str) -> CompressedVectors:
    try:
        return _load(fh)
    except _Refused as exc:
        raise ValueError(f"{name!r}: {exc}") from None
    except _DAMAGE as exc:
        raise ValueError(
            f"{name!r}: damaged or not a polarquant codes file ({type(exc).__name__}: {exc})"
        ) from None


def _load(fh) -> CompressedVectors:
    fh.seek(0, os.SEEK_END)
    archive_size = fh.tell()
    fh.seek(0)
    with zipfile.ZipFile(fh) as zf:
        members = _members(zf, archive_size)
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
            fields[field] = _read_member(zf, members[field], field, np.dtype(dt), shape)
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


def _members(zf: zipfile.ZipFile, archive_size: int) -> dict:
    """``{name: ZipInfo}`` of the ``<name>.npy`` members; refuses odd or oversized members."""
    members = {}
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            raise _Refused(f"holds a member {info.filename!r} that is not a .npy array")
        key = info.filename[: -len(".npy")]
        if key in members:
            raise _Refused(f"holds the member {info.filename!r} twice")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _Refused(
                f"member {info.filename!r} uses compression method {info.compress_type}; "
                "only stored and deflated members are read"
            )
        limit = info.compress_size * (
            1 if info.compress_type == zipfile.ZIP_STORED else _DEFLATE_MAX_RATIO
        )
        if info.compress_size > archive_size or info.file_size > limit:
            raise _Refused(
                f"member {info.filename!r} declares {info.file_size} bytes, more than a "
                f"{archive_size}-byte file can hold"
            )
        members[key] = info
    return members


def _read_header(fp, member: str):
    """``(shape, fortran_order, dtype)`` of a ``.npy`` stream, read without its data."""
    version = npy_format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran, dtype = npy_format.read_array_header_2_0(fp)
    else:
        raise _Refused(f"member {member!r} is a .npy file of unsupported version {version}")
    if dtype.hasobject:
        raise _Refused(
            f"member {member!r} holds Python objects (dtype {dtype}); polarquant never unpickles"
        )
    return shape, fortran, dtype


def _read_data(fp, info: zipfile.ZipInfo, dtype: np.dtype, shape: tuple) -> np.ndarray:
    """The array of ``shape`` and ``dtype`` after the header; its size was checked first."""
    nbytes = math.prod(shape) * dtype.itemsize
    if info.file_size != fp.tell() + nbytes:
        raise _Refused(
            f"member {info.filename!r} holds {info.file_size} bytes; its header "
            f"({dtype}{list(shape)}) needs {fp.tell() + nbytes}"
        )
    buf = bytearray(nbytes)  # bounded: file_size was checked against the archive's size
    view = memoryview(buf)
    got = 0
    while got < nbytes:
        chunk = fp.read(min(nbytes - got, 1 << 24))
        if not chunk:
            raise EOFError(f"member {info.filename!r} ends after {got} of {nbytes} bytes")
        view[got : got + len(chunk)] = chunk
        got += len(chunk)
    if fp.read(1):  # also makes zipfile check the CRC at the end of the member
        raise _Refused(f"member {info.filename!r} is longer than its header says")
    a = np.frombuffer(buf, dtype=dtype).reshape(shape)  # writable: buf is a bytearray
    if not dtype.isnative:
        a = a.astype(dtype.newbyteorder("="))
    return a


def _read_member(zf, info, field: str, dtype: np.dtype, shape: tuple) -> np.ndarray:
    with zf.open(info) as fp:
        got_shape, fortran, got_dtype = _read_header(fp, info.filename)
        if got_dtype.newbyteorder("=") != dtype or tuple(got_shape) != shape or fortran:
            order = ", Fortran order" if fortran else ""
            raise _Refused(
                f"field {field!r} is stored as {got_dtype.name}{list(got_shape)}{order}; "
                f"expected {dtype.name}{list(shape)}"
            )
        return _read_data(fp, info, got_dtype, shape)


def _read_meta(zf, info) -> dict:
    if info.file_size > MAX_METADATA_BYTES:
        raise _Refused(
            f"metadata of {info.file_size} bytes, more than the {MAX_METADATA_BYTES} accepted"
        )
    with zf.open(info) as fp:
        shape, fortran, dtype = _read_header(fp, info.filename)
        if dtype != np.uint8 or len(shape) != 1 or fortran:
            raise _Refused(f"metadata stored as {dtype}{list(shape)}, not 1-d uint8")
        text = _read_data(fp, info, dtype, shape).tobytes()
    try:
        meta = json.loads(text.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _Refused(f"unreadable metadata ({type(exc).__name__}: {exc})") from None
    _check_meta(meta)
    return meta


def _no_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_shape(v) -> bool:
    return isinstance(v, list) and len(v) <= 32 and all(_is_int(n) and n >= 0 for n in v)


def _check_meta(meta) -> None:
    """Every metadata key present and of the right type (the values are checked later)."""
    if not isinstance(meta, dict):
        raise _Refused("metadata is not a JSON object")
    if meta.get("format") != FORMAT:
        raise _Refused(f"not a {FORMAT} file (format={meta.get('format')!r})")
    if not _is_int(meta.get("format_version")) or meta["format_version"] not in READABLE_VERSIONS:
        raise _Refused(
            f"format version {meta.get('format_version')!r}; this polarquant ({__version__}) "
            f"reads versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
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
    from .quantizer import from_config

    try:
        quantizer = from_config(meta["config"])
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
    if meta["dim"] != quantizer.dim:
        raise _Refused(f"metadata says dim={meta['dim']}, the configuration dim={quantizer.dim}")
    return quantizer


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
