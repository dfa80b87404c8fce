"""Saving and loading compressed vectors: a versioned ``.npz`` file, never a pickle.

File layout (format ``polarquant-codes``, version :data:`FORMAT_VERSION`): a NumPy
``.npz`` archive holding

* ``__meta__``: a ``uint8`` array of UTF-8 JSON with ``format``,
  ``format_version``, ``library_version``, ``method``, the quantizer's full
  ``config`` (dim, seed, bit widths, rotation, fitted codebooks...),
  ``batch_shape``, ``dim``, ``dtype`` and, for every field, its dtype and shape;
* one array per field (``codes``, ``signs``, ``norms``, ``radii``, ``angles_<l>``),
  exactly the bytes held in memory.

Loading uses ``numpy.load(..., allow_pickle=False)``, checks the format name and
version, every field's dtype and shape against the metadata **and** against the
layout the configuration implies, and refuses anything else with a
``ValueError`` that says what differs.  Data is loaded into NumPy arrays; move
them to a device explicitly (``xp.asarray``) if needed.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from ._array import to_host
from ._version import __version__
from .compressed import CompressedVectors

__all__ = ["save", "load", "FORMAT", "FORMAT_VERSION"]

FORMAT = "polarquant-codes"
FORMAT_VERSION = 1


def save(path: str | os.PathLike, codes: CompressedVectors) -> None:
    """Write ``codes`` to ``path`` (a ``.npz`` file; the suffix is added by NumPy if missing)."""
    if not isinstance(codes, CompressedVectors):
        raise TypeError(f"expected CompressedVectors, got {type(codes).__name__}")
    host = {name: np.ascontiguousarray(to_host(a)) for name, a in codes.fields.items()}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "method": codes.method,
        "config": dict(codes.config),
        "batch_shape": list(codes.batch_shape),
        "dim": codes.dim,
        "dtype": codes.dtype,
        "fields": {
            name: {"dtype": a.dtype.name, "shape": list(a.shape)} for name, a in host.items()
        },
    }
    blob = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    np.savez(path, __meta__=blob, **host)


#: Float dtypes a file may declare for decoding.
DECODE_DTYPES = ("float16", "float32", "float64", "bfloat16")
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


def _bad(path, why: str) -> ValueError:
    return ValueError(f"{os.fspath(path)!r}: {why}")


def _read_meta(path, archive) -> dict:
    if "__meta__" not in archive.files:
        raise _bad(path, "no polarquant metadata (__meta__); not a polarquant codes file")
    try:
        meta = json.loads(archive["__meta__"].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise _bad(path, f"unreadable metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise _bad(path, "metadata is not a JSON object")
    if meta.get("format") != FORMAT:
        raise _bad(path, f"not a {FORMAT} file (format={meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise _bad(
            path,
            f"format version {meta.get('format_version')!r}; this polarquant ({__version__}) "
            f"reads version {FORMAT_VERSION}",
        )
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise _bad(path, f"metadata lacks {missing}")
    if not isinstance(meta["config"], dict) or meta["config"].get("method") != meta["method"]:
        raise _bad(path, "metadata method and configuration disagree")
    if meta["dtype"] not in DECODE_DTYPES:
        raise _bad(path, f"decode dtype {meta['dtype']!r} is not one of {DECODE_DTYPES}")
    if not isinstance(meta["fields"], dict) or not isinstance(meta["batch_shape"], list):
        raise _bad(path, "malformed field or batch-shape metadata")
    return meta


def load(path: str | os.PathLike) -> CompressedVectors:
    """Read codes written by :func:`save`; never unpickles.

    Raises
    ------
    ValueError
        Not a polarquant file, an unsupported format version, malformed
        metadata, fields whose dtype or shape differ from the metadata or from
        the layout the configuration implies, or stored norms/radii that are
        negative or not finite.
    """
    from .quantizer import from_config

    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise _bad(path, f"not a polarquant codes file ({exc})") from None
    with archive:
        meta = _read_meta(path, archive)
        fields = {}
        for name, spec in meta["fields"].items():
            if name not in archive.files:
                raise _bad(path, f"lacks the field {name!r}")
            try:
                a = archive[name]
            except ValueError as exc:  # e.g. an object array: never unpickled
                raise _bad(path, f"field {name!r} is unreadable ({exc})") from None
            if a.dtype.name != spec.get("dtype") or list(a.shape) != list(spec.get("shape", [])):
                raise _bad(
                    path,
                    f"field {name!r} is {a.dtype.name}{list(a.shape)}, metadata says "
                    f"{spec.get('dtype')}{spec.get('shape')}",
                )
            if a.dtype.kind == "f" and not (np.all(np.isfinite(a)) and np.all(a >= 0)):
                raise _bad(path, f"field {name!r} holds negative or non-finite values")
            fields[name] = a
    try:
        quantizer = from_config(meta["config"])
    except (TypeError, ValueError) as exc:
        raise _bad(path, f"invalid configuration ({exc})") from None
    codes = CompressedVectors(
        meta["method"],
        meta["config"],
        fields,
        tuple(meta["batch_shape"]),
        int(meta["dim"]),
        meta["dtype"],
    )
    try:
        quantizer.check_codes(codes)  # the layout implied by the configuration
    except ValueError as exc:
        raise _bad(path, str(exc)) from None
    return codes
