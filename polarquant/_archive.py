"""The ``.npz`` archives polarquant writes and reads: checked, never unpickled, written atomically.

Shared by the two file formats, compressed vectors (:mod:`polarquant.io`) and vector indexes
(:mod:`polarquant.search.storage`).  An archive is a zip file of ``.npy`` members, one of them
``__meta__``: UTF-8 JSON in a 1-d ``uint8`` array.  Readers here never trust a declared size:
a member's size is checked against what the archive can hold before anything is allocated,
its ``.npy`` header against the dtype and shape the caller expects, and the zip CRC is checked
while reading.  Every failure raises :class:`Refused` (our own checks) or one of
:data:`DAMAGE` (what damaged bytes make the zip, zlib, ``.npy`` and JSON readers raise);
:func:`read_guarded` turns both into a ``ValueError`` that names the file.
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

#: Deflate expands its input at most 1032 times (RFC 1951: a 258-byte match per
#: 2 bits at best): a member declaring more than that is damaged or crafted.
DEFLATE_MAX_RATIO = 1032

#: What damaged bytes can raise from the zip, zlib, ``.npy`` header and JSON readers.
DAMAGE = (
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

#: Size of a zip local file header before its name and extra field (APPNOTE 4.3.7).
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")


class Refused(Exception):
    """A file refused by our own checks; :func:`read_guarded` adds the file name."""


def file_name(path) -> str:
    if hasattr(path, "read"):
        return str(getattr(path, "name", None) or f"<{type(path).__name__}>")
    return os.fsdecode(os.fspath(path))


def is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_shape(v) -> bool:
    return isinstance(v, list) and len(v) <= 32 and all(is_int(n) and n >= 0 for n in v)


def check_format(meta, fmt: str, versions: tuple) -> None:
    """``meta`` is a JSON object of format ``fmt`` in one of the readable ``versions``."""
    from ._version import __version__

    if not isinstance(meta, dict):
        raise Refused("metadata is not a JSON object")
    if meta.get("format") != fmt:
        raise Refused(f"not a {fmt} file (format={meta.get('format')!r})")
    if not is_int(meta.get("format_version")) or meta["format_version"] not in versions:
        raise Refused(
            f"format version {meta.get('format_version')!r}; this polarquant ({__version__}) "
            f"reads versions {', '.join(map(str, versions))}"
        )


def check_scalars(name: str, a: np.ndarray) -> None:
    """Stored norms and radii are finite and non-negative (what encode writes)."""
    if a.dtype.kind == "f" and not (np.all(np.isfinite(a)) and np.all(a >= 0)):
        raise Refused(f"field {name!r} holds negative or non-finite values")


def write(path, meta: dict, arrays: dict[str, np.ndarray]) -> str | None:
    """Write ``meta`` (JSON) and ``arrays`` (uncompressed members) as a ``.npz`` archive.

    ``.npz`` is appended to a path without it, as NumPy does.  A path is written under a
    temporary name beside it and renamed over it at the end, so a failed call leaves any
    existing file untouched; a link is followed (its target gets the new contents) and a
    replaced file keeps its permissions.  ``path`` may also be a binary file object open for
    writing.  Returns the path written (``None`` for a file object).
    """
    text = json.dumps(meta, sort_keys=True, allow_nan=False).encode("utf-8")
    members = {"__meta__": np.frombuffer(text, dtype=np.uint8), **arrays}
    if hasattr(path, "write"):
        np.savez(path, **members)
        return None
    target = os.fsdecode(os.fspath(path))
    if not target.endswith(".npz"):
        target += ".npz"
    target = os.path.realpath(target)
    tmp = f"{target}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as fh:
            np.savez(fh, **members)
        if os.path.exists(target):
            os.chmod(tmp, os.stat(target).st_mode & 0o7777)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def read_guarded(path, reader, what: str):
    """``reader(fh, name)`` on ``path`` (a file name or a seekable binary file object).

    :class:`Refused` and :data:`DAMAGE` become a ``ValueError`` naming the file; a missing
    file raises ``FileNotFoundError`` (and other errors of opening it as they are).
    ``what`` names the expected kind of file in the message for damaged bytes.
    """
    name = file_name(path)

    def guarded(fh):
        try:
            return reader(fh, name)
        except Refused as exc:
            raise ValueError(f"{name!r}: {exc}") from None
        except DAMAGE as exc:
            raise ValueError(
                f"{name!r}: damaged or not a {what} ({type(exc).__name__}: {exc})"
            ) from None

    if hasattr(path, "read"):
        if not (hasattr(path, "seekable") and path.seekable()):
            raise ValueError(f"{name!r}: load needs a seekable binary file (a zip archive)")
        return guarded(path)
    with open(path, "rb") as fh:
        return guarded(fh)


def members(zf: zipfile.ZipFile, archive_size: int) -> dict:
    """``{name: ZipInfo}`` of the ``<name>.npy`` members; refuses odd or oversized members."""
    out = {}
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            raise Refused(f"holds a member {info.filename!r} that is not a .npy array")
        key = info.filename[: -len(".npy")]
        if key in out:
            raise Refused(f"holds the member {info.filename!r} twice")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise Refused(
                f"member {info.filename!r} uses compression method {info.compress_type}; "
                "only stored and deflated members are read"
            )
        limit = info.compress_size * (
            1 if info.compress_type == zipfile.ZIP_STORED else DEFLATE_MAX_RATIO
        )
        if info.compress_size > archive_size or info.file_size > limit:
            raise Refused(
                f"member {info.filename!r} declares {info.file_size} bytes, more than a "
                f"{archive_size}-byte file can hold"
            )
        out[key] = info
    return out


def archive_size(fh) -> int:
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    fh.seek(0)
    return size


def read_header(fp, member: str):
    """``(shape, fortran_order, dtype)`` of a ``.npy`` stream, read without its data."""
    version = npy_format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran, dtype = npy_format.read_array_header_2_0(fp)
    else:
        raise Refused(f"member {member!r} is a .npy file of unsupported version {version}")
    if dtype.hasobject:
        raise Refused(
            f"member {member!r} holds Python objects (dtype {dtype}); polarquant never unpickles"
        )
    return shape, fortran, dtype


def _check_size(fp, info: zipfile.ZipInfo, dtype: np.dtype, shape: tuple) -> int:
    nbytes = math.prod(shape) * dtype.itemsize
    if info.file_size != fp.tell() + nbytes:
        raise Refused(
            f"member {info.filename!r} holds {info.file_size} bytes; its header "
            f"({dtype}{list(shape)}) needs {fp.tell() + nbytes}"
        )
    return nbytes


def read_data(fp, info: zipfile.ZipInfo, dtype: np.dtype, shape: tuple) -> np.ndarray:
    """The array of ``shape`` and ``dtype`` after the header; its size was checked first."""
    nbytes = _check_size(fp, info, dtype, shape)
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
        raise Refused(f"member {info.filename!r} is longer than its header says")
    a = np.frombuffer(buf, dtype=dtype).reshape(shape)  # writable: buf is a bytearray
    if not dtype.isnative:
        a = a.astype(dtype.newbyteorder("="))
    return a


def _check_header(fp, info, field: str, dtype: np.dtype, shape: tuple) -> np.dtype:
    got_shape, fortran, got_dtype = read_header(fp, info.filename)
    if got_dtype.newbyteorder("=") != dtype or tuple(got_shape) != shape or fortran:
        order = ", Fortran order" if fortran else ""
        raise Refused(
            f"field {field!r} is stored as {got_dtype.name}{list(got_shape)}{order}; "
            f"expected {dtype.name}{list(shape)}"
        )
    return got_dtype


def read_member(zf, info, field: str, dtype: np.dtype, shape: tuple) -> np.ndarray:
    """Member ``info`` as an array that owns its bytes, checked to be ``dtype`` ``shape``."""
    with zf.open(info) as fp:
        got_dtype = _check_header(fp, info, field, dtype, shape)
        return read_data(fp, info, got_dtype, shape)


def map_member(fh, zf, info, field: str, dtype: np.dtype, shape: tuple) -> np.ndarray:
    """Member ``info`` as a read-only memory map of the file (header and size checked as
    :func:`read_member` does; the CRC is not, since that would read the whole member).

    Only stored (uncompressed) members in native byte order can be mapped.
    """
    if info.compress_type != zipfile.ZIP_STORED:
        raise Refused(
            f"member {info.filename!r} is compressed and cannot be memory-mapped; "
            "load it without mmap"
        )
    with zf.open(info) as fp:
        got_dtype = _check_header(fp, info, field, dtype, shape)
        _check_size(fp, info, got_dtype, shape)
        header_len = fp.tell()
    if not got_dtype.isnative:
        raise Refused(f"member {info.filename!r} is not in native byte order; load it without mmap")
    fh.seek(info.header_offset)
    head = fh.read(_LOCAL_HEADER.size)
    fields = _LOCAL_HEADER.unpack(head)
    if fields[0] != b"PK\x03\x04":
        raise Refused(f"member {info.filename!r} has no local zip header where the index says")
    start = info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1] + header_len
    if math.prod(shape) == 0:
        return np.zeros(shape, dtype)
    path = getattr(fh, "name", None)
    if not isinstance(path, str | bytes | os.PathLike):
        raise Refused("a memory map needs a file on disk, not a file object")
    return np.memmap(path, dtype=dtype, mode="r", offset=start, shape=shape)


def read_json(zf, info, max_bytes: int) -> object:
    """The JSON held by member ``info`` (1-d ``uint8``), at most ``max_bytes``, strict JSON."""
    if info.file_size > max_bytes:
        raise Refused(f"metadata of {info.file_size} bytes, more than the {max_bytes} accepted")
    with zf.open(info) as fp:
        shape, fortran, dtype = read_header(fp, info.filename)
        if dtype != np.uint8 or len(shape) != 1 or fortran:
            raise Refused(f"metadata stored as {dtype}{list(shape)}, not 1-d uint8")
        text = read_data(fp, info, dtype, shape).tobytes()
    try:
        return json.loads(text.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Refused(f"unreadable metadata ({type(exc).__name__}: {exc})") from None


def _no_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")
