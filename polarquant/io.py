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


def load(path: str | os.PathLike) -> CompressedVectors:
    """Read codes written by :func:`save`; never unpickles.

    Raises
    ------
    ValueError
        Not a polarquant file, an unsupported format version, or fields whose
        dtype or shape differ from the metadata or from the configuration.
    """
    from .quantizer import from_config

    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ValueError(f"{os.fspath(path)!r} is not a polarquant codes file: {exc}") from None
    with archive:
        if "__meta__" not in archive.files:
            raise ValueError(f"{os.fspath(path)!r} has no polarquant metadata (__meta__)")
        try:
            meta = json.loads(archive["__meta__"].tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{os.fspath(path)!r}: unreadable metadata ({exc})") from None
        if meta.get("format") != FORMAT:
            raise ValueError(
                f"{os.fspath(path)!r} is not a {FORMAT} file (format={meta.get('format')!r})"
            )
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{os.fspath(path)!r} has format version {meta.get('format_version')!r}; this "
                f"polarquant ({__version__}) reads version {FORMAT_VERSION}"
            )
        fields = {}
        for name, spec in meta["fields"].items():
            if name not in archive.files:
                raise ValueError(f"{os.fspath(path)!r} lacks the field {name!r}")
            a = archive[name]
            if a.dtype.name != spec["dtype"] or list(a.shape) != list(spec["shape"]):
                raise ValueError(
                    f"field {name!r} is {a.dtype.name}{list(a.shape)}, metadata says "
                    f"{spec['dtype']}{spec['shape']}"
                )
            fields[name] = a
    codes = CompressedVectors(
        meta["method"],
        meta["config"],
        fields,
        tuple(meta["batch_shape"]),
        int(meta["dim"]),
        meta["dtype"],
    )
    from_config(meta["config"]).check_codes(codes)  # layout implied by the configuration
    return codes
