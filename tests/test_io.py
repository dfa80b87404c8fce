"""Files, compressed vectors and input defects (issue 10, brief C).

* a file holding one vector (0-d norms) loads back;
* ``CompressedVectors`` takes integer arrays and boolean masks as NumPy does;
* :func:`polarquant.load` turns every damaged, truncated or crafted file into a
  ``ValueError`` naming the file (``FileNotFoundError`` for a missing one), checks
  declared shapes against the configuration and the file size before allocating,
  and never unpickles;
* ``from_config`` names what is missing or wrong;
* ``nbytes`` is the memory really held by the fields, on every backend;
* bfloat16 codes decode after a round trip through a file, ``check_codes`` checks the
  recorded dtype and dim, gradients never reach the codes, lists are refused.
"""

from __future__ import annotations

import importlib.util
import io
import json
import pickle
import struct
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

import polarquant as pq
from polarquant.compressed import CompressedVectors

METHODS = [
    lambda d, **kw: pq.TurboQuantMSE(d, 3, seed=1, **kw),
    lambda d, **kw: pq.TurboQuantProd(d, 3, seed=1, **kw),
    lambda d, **kw: pq.QJL(d, 2 * d, seed=1, **kw),
    lambda d, **kw: pq.PolarQuant(d, levels=2, bits=(4, 3), seed=1, **kw),
    lambda d, **kw: pq.PolarQuantQJL(d, levels=2, bits=(4, 3), seed=1, **kw),
]
IDS = ["turboquant-mse", "turboquant-prod", "qjl", "polarquant", "polarquant-qjl"]

BACKENDS = [
    "numpy",
    pytest.param(
        "numba",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("numba") is None, reason="numba not installed"
        ),
    ),
]


def _members(path) -> tuple[dict, dict]:
    """(metadata, arrays) of a file we wrote ourselves (trusted, so np.load is fine here)."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    return json.loads(arrays.pop("__meta__").tobytes()), arrays


def _npy(
    array: np.ndarray | None = None, *, header: dict | None = None, data: bytes = b""
) -> bytes:
    """A ``.npy`` member: an array as NumPy writes it, or a hand-made header plus raw data."""
    buf = io.BytesIO()
    if header is None:
        np.lib.format.write_array(buf, np.asarray(array), allow_pickle=False)
        return buf.getvalue()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def _zip(path, members: dict, compression=zipfile.ZIP_STORED) -> None:
    """Write ``{name: bytes}`` as a zip archive (the names get ``.npy``)."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, blob in members.items():
            zf.writestr(f"{name}.npy", blob)


def _meta_blob(meta) -> bytes:
    text = meta if isinstance(meta, (bytes, str)) else json.dumps(meta)
    text = text.encode() if isinstance(text, str) else text
    return _npy(np.frombuffer(text, dtype=np.uint8))


def _rewrite(path, out, meta=None, arrays=None, **members) -> None:
    """Copy the file at ``path`` to ``out`` with ``meta``/``arrays``/raw members replaced."""
    m, a = _members(path)
    meta = m if meta is None else meta
    arrays = a if arrays is None else arrays
    blobs = {"__meta__": _meta_blob(meta), **{k: _npy(v) for k, v in arrays.items()}}
    _zip(out, {**blobs, **members})


@pytest.fixture
def small_file(tmp_path):
    """A small TurboQuantMSE file (< 2 KB): 3 vectors of dim 16 at 2 bits."""
    q = pq.TurboQuantMSE(16, 2, seed=3)
    x = np.random.default_rng(7).standard_normal((3, 16)).astype(np.float32)
    path = tmp_path / "small.npz"
    q.save(path, q.encode(x))
    return q, path


# -- defect 1: one saved vector loads back ------------------------------------------------


@pytest.mark.parametrize("make", METHODS, ids=IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_single_vector_saves_and_loads(make, backend, tmp_path, rng):
    """``encode(x[0])`` has 0-d norms; ``save`` used to write them as shape (1,)."""
    q = make(32, backend=backend)
    x = rng.standard_normal((4, 32)).astype(np.float32)
    codes = q.encode(x[0])
    assert codes.shape == ()
    path = tmp_path / "one.npz"
    q.save(path, codes)
    loaded = pq.load(path)
    assert loaded.shape == () and loaded.dim == 32
    for name, a in codes.fields.items():
        assert loaded.fields[name].shape == a.shape
        np.testing.assert_array_equal(loaded.fields[name], a)
    np.testing.assert_array_equal(q.decode(loaded), q.decode(codes))


# -- defect 4: integer arrays and boolean masks -------------------------------------------


def test_indexing_with_integer_arrays_and_masks(rng):
    """Every index selects the same vectors as NumPy indexing of each field's batch axes."""
    q = pq.TurboQuantProd(16, 3, seed=0)
    codes = q.encode(rng.standard_normal((4, 5, 16)))
    mask2 = rng.random((4, 5)) < 0.5
    cases = [
        np.array([0, 3]),
        [0, 3],
        np.array([True, False, True, True]),
        mask2,
        (slice(None), np.array([4, 0, 1])),
        (np.array([1, 2]), np.array([0, 4])),
        (Ellipsis, np.array([True, False, False, True, True])),
        (np.array([[0, 1], [2, 3]]),),
        (1, np.array([2])),
    ]
    for index in cases:
        sub = codes[index]
        key = index if isinstance(index, tuple) else (index,)
        key = tuple(  # NumPy's own indexing of the 2 batch axes, as the expected result
            slice(None) if k is Ellipsis else np.asarray(k) if isinstance(k, list) else k
            for k in key
        )
        for name, a in codes.fields.items():
            np.testing.assert_array_equal(sub.fields[name], a[key + (slice(None),) * (a.ndim - 2)])
        assert sub.shape == sub.fields["norms"].shape
        # the same vectors decoded; BLAS may round a smaller batch differently (float64 here)
        np.testing.assert_allclose(
            q.decode(sub), q.decode(codes)[key + (slice(None),)], rtol=1e-12, atol=1e-12
        )
    assert codes[mask2].shape == (int(mask2.sum()),)
    with pytest.raises(IndexError, match="too many"):
        codes[mask2, 0]
    with pytest.raises(IndexError, match="new axes"):
        codes[None]
    with pytest.raises(IndexError, match="new axes"):
        codes[True]


# -- defect 6: damaged and missing files ----------------------------------------------------


def _load_or_refuse(q, path, data: bytes | None = None) -> bool:
    """Either a clean ``ValueError`` naming the file, or codes that pass ``check_codes``.

    With ``data``, the file's bytes are given in memory (a named ``BytesIO``).
    """
    source = path
    if data is not None:
        source = io.BytesIO(data)
        source.name = str(path)
    try:
        codes = pq.load(source)
    except ValueError as exc:
        assert str(exc).startswith(repr(str(path))), exc
        return False
    q.check_codes(codes)
    assert np.all(np.isfinite(q.decode(codes)))
    return True


def _crc_covered(blob: bytes) -> set:
    """Offsets of the bytes of every zip member's data (what the member's CRC-32 covers)."""
    covered = set()
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        for info in zf.infolist():
            name_len, extra_len = struct.unpack_from("<HH", blob, info.header_offset + 26)
            start = info.header_offset + 30 + name_len + extra_len
            covered.update(range(start, start + info.compress_size))
    return covered


def test_every_flipped_byte_and_truncation_is_refused_cleanly(small_file, tmp_path):
    """Flip every byte (XOR 0xFF, then XOR 0x01), truncate at every length.

    Before the fix about 90% of such files escaped as ``BadZipFile``, ``OSError``,
    ``EOFError`` or ``NotImplementedError``.  A flipped byte of the zip bookkeeping
    that nothing checks (a time stamp, an attribute) leaves a file that still loads:
    accepted when the result passes ``check_codes`` and decodes to finite vectors.
    A flip inside a member's data (metadata, codes, norms) must always be refused:
    CRC-32 detects every error burst of up to 32 bits.  The variants are read from
    memory (file-system round trips dominate otherwise); a sample goes through real
    files.
    """
    q, path = small_file
    blob = path.read_bytes()
    assert len(blob) < 2048
    covered = _crc_covered(blob)
    assert len(covered) > len(blob) // 2
    bad = tmp_path / "bad.npz"
    for mask in (0xFF, 0x01):
        for i in range(len(blob)):
            flipped = blob[:i] + bytes([blob[i] ^ mask]) + blob[i + 1 :]
            loaded = _load_or_refuse(q, bad, flipped)
            assert not (loaded and i in covered), f"byte {i} ^ {mask:#x} of member data loaded"
            if i % 97 == 0:
                bad.write_bytes(flipped)
                _load_or_refuse(q, bad)
    for n in range(len(blob)):
        assert not _load_or_refuse(q, bad, blob[:n]), f"a file truncated to {n} bytes loaded"


def test_missing_file_and_non_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        pq.load(tmp_path / "nope.npz")
    with pytest.raises(IsADirectoryError):
        pq.load(tmp_path)
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.npz.*damaged or not a polarquant"):
        pq.load(tmp_path / "empty.npz")


def test_file_objects_and_compressed_members(small_file, tmp_path):
    """``load`` takes a binary file object; ``np.savez_compressed`` members are read too."""
    q, path = small_file
    want = pq.load(path)
    with open(path, "rb") as fh:
        got = pq.load(fh)
    np.testing.assert_array_equal(q.decode(got), q.decode(want))
    meta, arrays = _members(path)
    packed = tmp_path / "deflated.npz"
    _zip(
        packed,
        {"__meta__": _meta_blob(meta), **{k: _npy(v) for k, v in arrays.items()}},
        zipfile.ZIP_DEFLATED,
    )
    np.testing.assert_array_equal(q.decode(pq.load(packed)), q.decode(want))


def test_loading_never_unpickles(small_file, tmp_path, monkeypatch):
    """Object arrays (metadata or a field) are refused without calling pickle."""

    def boom(*args, **kwargs):
        raise AssertionError("pickle was called")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    obj = np.array([{"a": 1}], dtype=object)
    blob = io.BytesIO()
    np.lib.format.write_array(blob, obj, allow_pickle=True)
    evil = tmp_path / "evil.npz"
    _zip(evil, {"__meta__": blob.getvalue()})
    with pytest.raises(ValueError, match="never unpickles"):
        pq.load(evil)
    _, path = small_file
    _rewrite(path, evil, codes=blob.getvalue())
    with pytest.raises(ValueError, match="never unpickles"):
        pq.load(evil)


# -- defects 7 and 8: crafted metadata --------------------------------------------------------


def _tampered(meta, change):
    meta = json.loads(json.dumps(meta))
    change(meta)
    return meta


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda m: m["config"].pop("dim"), r"invalid configuration.*lacks.*'dim'"),
        (lambda m: m["config"].update(dim="abc"), r"invalid configuration.*dim must be an int"),
        (lambda m: m["config"].update(bits=[3]), r"invalid configuration.*bits"),
        (lambda m: m.update(config="turboquant-mse"), "method and configuration disagree"),
        (lambda m: m.update(batch_shape=[3.0]), "batch shape"),
        (lambda m: m.update(batch_shape=[-3]), "batch shape"),
        (lambda m: m.update(batch_shape="3"), "batch shape"),
        (lambda m: m["fields"].update(codes="uint8[3, 4]"), "field 'codes' is malformed"),
        (lambda m: m["fields"].update(codes={"dtype": "uint8"}), "field 'codes' is malformed"),
        (lambda m: m["fields"].pop("norms"), "metadata lists the fields"),
        (lambda m: m.update(fields=[]), "fields .* not a JSON object"),
        (lambda m: m.update(dim=17), "metadata says dim=17, the configuration dim=16"),
        (lambda m: m.update(dim="16"), "dim '16' is not an integer"),
        (lambda m: m.update(method=["turboquant-mse"]), "method .* not a string"),
        (lambda m: m.update(format_version=True), "format version True"),
        (lambda m: m.update(dtype="int8"), "decode dtype 'int8'"),
    ],
)
def test_crafted_metadata_is_refused_naming_the_file(small_file, tmp_path, change, match):
    """Before the fix: ``KeyError: 'dim'``, ``TypeError``s, or (dim) a wrong bits_per_coordinate."""
    _, path = small_file
    meta, _ = _members(path)
    bad = tmp_path / "crafted.npz"
    _rewrite(path, bad, meta=_tampered(meta, change))
    with pytest.raises(ValueError, match=match) as info:
        pq.load(bad)
    assert str(info.value).startswith(repr(str(bad)))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "unreadable metadata"),  # RecursionError inside json
        (b'{"format": NaN}', "unreadable metadata"),
        (b"\xff\xfe", "unreadable metadata"),
        (b'"just a string"', "not a JSON object"),
    ],
    ids=["nested-100k-deep", "nan", "not-utf8", "not-an-object"],
)
def test_unparsable_metadata(small_file, tmp_path, text, match):
    _, path = small_file
    bad = tmp_path / "crafted.npz"
    _rewrite(path, bad, meta=text)
    with pytest.raises(ValueError, match=match):
        pq.load(bad)


def test_oversized_metadata_is_refused_before_reading(small_file, tmp_path, monkeypatch):
    """The metadata limit (16 MiB) is checked on the declared size; lowered here to keep it fast."""
    _, path = small_file
    monkeypatch.setattr(pq.io, "MAX_METADATA_BYTES", 64)
    with pytest.raises(ValueError, match="more than the 64 accepted"):
        pq.load(path)


def test_public_from_config_names_what_is_wrong():
    with pytest.raises(ValueError, match=r"lacks the required key\(s\) \['dim'\]"):
        pq.from_config({"method": "turboquant-mse", "bits": 3})
    with pytest.raises(ValueError, match=r"lacks the required key\(s\) \['dim', 'proj_dim'\]"):
        pq.from_config({"method": "qjl"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['levels'\]"):
        pq.from_config({"method": "qjl", "dim": 8, "proj_dim": 8, "levels": 2})
    with pytest.raises(ValueError, match="unknown method"):
        pq.from_config({"dim": 8})
    with pytest.raises(ValueError, match="not 'qjl'"):
        pq.QJL.from_config({"method": "polarquant", "dim": 8, "proj_dim": 8})
    with pytest.raises(TypeError, match="config must be a dict"):
        pq.from_config("qjl")
    with pytest.raises(TypeError, match="dim must be an integer, got 'abc'"):
        pq.from_config({"method": "qjl", "dim": "abc", "proj_dim": 8})
    for make in METHODS:  # every config still round-trips
        q = make(32)
        assert pq.from_config(q.config()).config() == q.config()


def test_check_codes_compares_dim_dtype_and_batch_shape():
    """``check_codes`` used to ignore ``codes.dim`` and ``codes.dtype`` (int8 decoded silently)."""
    import dataclasses

    q = pq.TurboQuantMSE(16, 3)
    codes = q.encode(np.ones((2, 16), np.float32))
    for change, match in [
        ({"dtype": "int8"}, "dtype 'int8'"),
        ({"dtype": "complex64"}, "dtype 'complex64'"),
        ({"dim": 17}, "dim=17"),
        ({"batch_shape": (2.0,)}, "batch shape"),
    ]:
        with pytest.raises(ValueError, match=match):
            q.decode(dataclasses.replace(codes, **change))
    assert q.decode(codes).shape == (2, 16)


# -- defect 10: declared sizes are checked before allocating ---------------------------------


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_huge_declared_shapes_are_refused_before_allocation(small_file, tmp_path):
    """A ``.npy`` header declaring 2**40 vectors (55 TB) used to raise ``MemoryError``.

    With metadata to match (so that the shape agrees with the configuration), only
    the size check can refuse it; the peak allocation must stay that of a small file.
    """
    _, path = small_file
    meta, arrays = _members(path)
    n = 1 << 40
    meta["batch_shape"] = [n]
    meta["fields"] = {k: {**v, "shape": [n, *v["shape"][1:]]} for k, v in meta["fields"].items()}
    members = {}
    for k, a in arrays.items():
        header = {"descr": a.dtype.str, "fortran_order": False, "shape": (n, *a.shape[1:])}
        members[k] = _npy(header=header, data=a.tobytes())
    bad = tmp_path / "huge.npz"
    _rewrite(path, bad, meta=meta, **members)

    def refuse():
        with pytest.raises(ValueError, match="holds .* bytes; its header"):
            pq.load(bad)

    assert _peak_bytes(refuse) < 1 << 20
    # a header that disagrees with the configuration is refused on its shape alone
    header = {"descr": "|u1", "fortran_order": False, "shape": (3, 1 << 45)}
    _rewrite(path, bad, codes=_npy(header=header))
    with pytest.raises(ValueError, match=r"field 'codes' is stored as uint8\[3, 35184372088832\]"):
        pq.load(bad)


def _patch_central_size(blob: bytes, member: str, size: int) -> bytes:
    """Set the uncompressed size that the zip's central directory declares for ``member``."""
    at = blob.index(b"PK\x01\x02")
    while True:
        (name_len,) = struct.unpack_from("<H", blob, at + 28)
        if blob[at + 46 : at + 46 + name_len] == member.encode():
            return blob[: at + 24] + struct.pack("<I", size) + blob[at + 28 :]
        at = blob.index(b"PK\x01\x02", at + 4)


def test_zip_sizes_beyond_the_file_are_refused(small_file, tmp_path):
    _, path = small_file
    bad = tmp_path / "big.npz"
    bad.write_bytes(_patch_central_size(path.read_bytes(), "codes.npy", 2**31))
    with pytest.raises(ValueError, match="declares 2147483648 bytes"):
        pq.load(bad)


@pytest.mark.parametrize(
    ("member", "match"),
    [
        (_npy(header={"descr": "|u1", "fortran_order": False, "shape": (3, 4)}), "needs"),
        (_npy(np.zeros((3, 4), np.uint8)) + b"\0", "needs"),  # trailing bytes
        (_npy(np.zeros((3, 4), np.int8)), r"stored as int8\[3, 4\]; expected uint8\[3, 4\]"),
        (_npy(np.zeros((4, 3), np.uint8).T), "Fortran order"),
        (b"\x93NUMPY\x03\x00" + b"\0" * 64, "unsupported version"),
        (b"\x93NUMPY\x01\x00\x10\x00{'descr': '<u1'}", "damaged"),
    ],
    ids=["short", "trailing-bytes", "int8", "fortran", "version-3", "bad-header"],
)
def test_crafted_npy_headers(small_file, tmp_path, member, match):
    _, path = small_file
    bad = tmp_path / "crafted.npz"
    _rewrite(path, bad, codes=member)
    with pytest.raises(ValueError, match=match):
        pq.load(bad)


def test_unexpected_duplicate_and_foreign_members(small_file, tmp_path):
    _, path = small_file
    meta, arrays = _members(path)
    bad = tmp_path / "extra.npz"
    _rewrite(path, bad, extra=_npy(np.zeros(3, np.uint8)))
    with pytest.raises(ValueError, match=r"unexpected members \['extra'\]"):
        pq.load(bad)
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("__meta__.npy", _meta_blob(meta))
        zf.writestr("readme.txt", b"hello")
    with pytest.raises(ValueError, match="not a .npy array"):
        pq.load(bad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate name
        with zipfile.ZipFile(bad, "w") as zf:
            zf.writestr("__meta__.npy", _meta_blob(meta))
            zf.writestr("__meta__.npy", _meta_blob(meta))
    with pytest.raises(ValueError, match="twice"):
        pq.load(bad)


def test_save_is_atomic_and_refuses_codes_load_would_refuse(small_file, rng):
    """A failed save leaves the existing file as it was; ``.npz`` is appended as NumPy does."""
    import dataclasses

    q, path = small_file
    before = path.read_bytes()
    codes = q.encode(rng.standard_normal((2, 16)))
    bad_norms = dataclasses.replace(
        codes, fields={**codes.fields, "norms": np.full(2, np.nan, np.float16)}
    )
    with pytest.raises(ValueError, match="negative or non-finite"):
        pq.save(path, bad_norms)
    with pytest.raises(ValueError, match="per-vector shape"):
        pq.save(
            path, dataclasses.replace(codes, fields={**codes.fields, "codes": np.zeros((2, 1))})
        )
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["small.npz"]  # no temporary left
    pq.save(path.parent / "plain", codes)
    assert pq.load(path.parent / "plain.npz").shape == (2,)


# -- defect 9: nbytes is the memory held -------------------------------------------------------


def _held(a) -> int:
    """Bytes of the buffer an array keeps alive (the owner at the end of the ``base`` chain)."""
    if isinstance(a, np.ndarray):
        while isinstance(a.base, np.ndarray):
            a = a.base
        return a.nbytes
    return a.untyped_storage().nbytes()  # torch


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits", range(1, 9))
def test_nbytes_is_the_memory_held(backend, bits, rng):
    """``nbytes`` = the bytes the fields keep alive = n * the layout formula.

    The dims make every code count a non-multiple of 8 (3-, 5-, 6- and 7-bit codes
    then straddle the padding, which used to stay alive in a larger buffer:
    +18.5% for ``PolarQuant(64, levels=6, bits=3)``).
    """
    quantizers = [
        pq.TurboQuantMSE(37, bits, rotation="hadamard", backend=backend),  # D = 64
        pq.TurboQuantMSE(13, bits, backend=backend),
        pq.QJL(13, 21, backend=backend),
        pq.PolarQuant(64, levels=6, bits=bits, backend=backend),
        pq.PolarQuant(24, levels=3, bits=bits, backend=backend),
    ]
    if bits > 1:
        quantizers.append(pq.TurboQuantProd(13, bits, backend=backend))
        quantizers.append(pq.PolarQuantQJL(24, levels=3, bits=bits, proj_dim=11, backend=backend))
    for q in quantizers:
        for n in (1, 5):
            codes = q.encode(rng.standard_normal((n, q.dim)).astype(np.float32))
            held = sum(_held(a) for a in codes.fields.values())
            assert codes.nbytes == held == n * q.nbytes_per_vector(), (q, n)


def test_nbytes_of_torch_codes(rng):
    torch = pytest.importorskip("torch")
    with pq.use_backend("numpy"):
        for bits in (3, 5, 6, 7):
            q = pq.PolarQuant(64, levels=6, bits=bits)
            codes = q.encode(torch.from_numpy(rng.standard_normal((5, 64)).astype(np.float32)))
            held = sum(_held(a) for a in codes.fields.values())
            assert codes.nbytes == held == 5 * q.nbytes_per_vector()


# -- defect 11: bfloat16, dtypes, gradients, lists --------------------------------------------


def test_bfloat16_codes_decode_after_a_file_round_trip(tmp_path, rng):
    """NumPy has no bfloat16: codes loaded from a file decode to float32 (documented)."""
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(rng.standard_normal((3, 32)).astype(np.float32)).to(torch.bfloat16)
    with pq.use_backend("numpy"):
        q = pq.TurboQuantMSE(32, 4)
        codes = q.encode(x)
        assert codes.dtype == "bfloat16"
        q.save(tmp_path / "bf.npz", codes)
        loaded = q.load(tmp_path / "bf.npz")
        assert loaded.dtype == "bfloat16"
        x_hat = q.decode(loaded)
        assert x_hat.dtype == np.float32
        np.testing.assert_allclose(x_hat, q.decode(codes).float().numpy(), rtol=1e-2, atol=1e-2)


def test_tensors_that_require_grad_are_encoded_without_their_graph(rng):
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(rng.standard_normal((3, 32)).astype(np.float32)).requires_grad_()
    with pq.use_backend("numpy"):
        for make in METHODS:
            q = make(32)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # torch warned on float() of such a tensor
                codes = q.encode(x)
            assert not any(a.requires_grad for a in codes.fields.values())
            ref = q.encode(x.detach())
            for name, a in codes.fields.items():
                assert torch.equal(a, ref.fields[name])


def test_python_lists_are_refused_naming_the_argument():
    q = pq.TurboQuantMSE(4, 2)
    codes = q.encode(np.ones((1, 4), np.float32))
    for bad in ([[1.0, 2.0, 3.0, 4.0]], (1.0, 2.0, 3.0, 4.0), 1.0):
        with pytest.raises(TypeError, match=r"x must be an array .* convert it explicitly"):
            q.encode(bad)
        with pytest.raises(TypeError, match="queries must be an array"):
            q.score(bad, codes)
    # a NumPy scalar has a dtype: accepted as an array (and refused for its shape)
    with pytest.raises(ValueError, match="0-d"):
        q.encode(np.float32(1.0))


def test_compressed_vectors_fields_are_the_loaded_arrays(small_file):
    """Loaded fields are writable NumPy arrays that own exactly their bytes."""
    _, path = small_file
    codes = pq.load(path)
    assert isinstance(codes, CompressedVectors)
    for a in codes.fields.values():
        assert isinstance(a, np.ndarray) and a.flags.writeable and a.flags.c_contiguous
        assert _held(a) == a.nbytes


# -- review fixes: empty index lists, file objects, save over an existing file, config keys --------
def test_an_empty_index_list_selects_nothing(rng):
    """``codes[[]]`` like ``x[[]]`` in NumPy (``np.asarray([])`` alone would be float64)."""
    q = pq.TurboQuantMSE(16, 2, seed=0)
    codes = q.encode(rng.standard_normal((5, 16)).astype(np.float32))
    empty = codes[[]]
    assert empty.batch_shape == (0,) and q.decode(empty).shape == (0, 16)


def test_unseekable_file_objects_are_refused_clearly(small_file):
    """A zip archive is read from its end: a pipe cannot be loaded, and the error says so."""
    _, path = small_file

    class Pipe(io.RawIOBase):
        def __init__(self, data):
            self._inner = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, b):
            return self._inner.readinto(b)

    with pytest.raises(ValueError, match="needs a seekable binary file"):
        pq.load(Pipe(path.read_bytes()))


def test_save_over_a_file_keeps_its_permissions_and_follows_links(small_file, tmp_path):
    """The atomic replace writes a new file: it takes the old one's mode, and a link's target."""
    q, path = small_file
    codes = pq.load(path)
    path.chmod(0o600)
    q.save(path, codes)
    assert path.stat().st_mode & 0o777 == 0o600
    link = tmp_path / "link.npz"
    link.symlink_to(path)
    q.save(link, codes)
    assert link.is_symlink() and np.array_equal(q.decode(pq.load(link)), q.decode(codes))


def test_backend_is_not_a_configuration_key():
    """``backend`` is chosen at run time (argument, context, environment), never stored."""
    config = pq.TurboQuantMSE(16, 2, seed=0).config()
    assert "backend" not in config
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['backend'\]"):
        pq.from_config({**config, "backend": "numba"})


V1 = Path(__file__).with_name("data") / "format_v1"


@pytest.mark.parametrize("name", ["polarquant", "polarquant_qjl", "turboquant_mse"])
def test_format_version_1_files_still_load(name, tmp_path):
    """Files written by polarquant before the angle layout changed (format version 1) still load.

    ``tests/data/format_v1`` was written by the previous release (one field ``angles_<l>``
    per PolarQuant level): loading joins the levels into the one ``angles`` field, and the
    decoded vectors equal what that release decoded (stored beside the file) to float32
    rounding: the codes are the same bytes and the arithmetic is the same, so anything
    wider than a few ulps would be a level joined in the wrong place.  Encoding the same
    vectors (``vectors.npy``) today gives the same bytes (the NumPy reference's arithmetic
    did not change).  Saving again writes the current version, which loads back byte for
    byte.
    """
    codes = pq.load(V1 / f"{name}.npz")
    with zipfile.ZipFile(V1 / f"{name}.npz") as zf:
        meta = json.loads(np.load(zf.open("__meta__.npy")).tobytes())
    assert meta["format_version"] == 1
    quantizer = pq.from_config(codes.config)
    assert set(codes.fields) == set(quantizer.field_layout())
    if "angles" in codes.fields:
        with np.load(V1 / f"{name}.npz") as old:
            levels = sorted(
                (k for k in old.files if k.startswith("angles_")), key=lambda k: int(k[7:])
            )
            assert levels and "angles" not in old.files
            joined = np.concatenate([old[k] for k in levels], axis=-1)
        np.testing.assert_array_equal(codes.fields["angles"], joined)
    want = np.load(V1 / f"{name}_decoded.npy")
    np.testing.assert_allclose(quantizer.decode(codes), want, rtol=0, atol=1e-6)
    # the vectors that release encoded: the reference writes the same bytes today
    fresh = quantizer.encode(np.load(V1 / "vectors.npy"))
    for field, value in codes.fields.items():
        np.testing.assert_array_equal(fresh.fields[field], value, err_msg=field)
    pq.save(tmp_path / "again.npz", codes)
    with zipfile.ZipFile(tmp_path / "again.npz") as zf:
        assert json.loads(np.load(zf.open("__meta__.npy")).tobytes())["format_version"] == 2
    again = pq.load(tmp_path / "again.npz")
    for field, value in codes.fields.items():
        np.testing.assert_array_equal(again.fields[field], value)


def test_angle_layouts_of_the_two_versions_are_not_mixed(tmp_path):
    """A file is read with the layout of the version it declares, and only that one.

    Version 1 means one ``angles_<l>`` per level; version 2 one ``angles``.  A version-2
    file holding per-level fields, a version-1 file holding ``angles`` (or both kinds), and
    a version-1 file whose levels have the wrong widths are refused as damaged, naming the
    file (``ValueError``), never joined into codes of another shape.
    """
    v1 = V1 / "polarquant.npz"
    meta, arrays = _members(v1)
    joined = np.concatenate([arrays[f"angles_{level}"] for level in (1, 2, 3)], axis=-1)
    as_v2 = {"angles": joined, "radii": arrays["radii"]}
    specs2 = {
        "angles": {"dtype": "uint8", "shape": list(joined.shape)},
        "radii": meta["fields"]["radii"],
    }
    cases = {
        "v2 with per-level fields": ({**meta, "format_version": 2}, arrays),
        "v1 with one angles field": ({**meta, "fields": specs2}, as_v2),
        "v1 with both kinds": ({**meta}, {**arrays, "angles": joined}),
        "v1 with a level too narrow": (meta, {**arrays, "angles_2": arrays["angles_2"][..., :-1]}),
    }
    for what, (m, a) in cases.items():
        out = tmp_path / f"{what.replace(' ', '_')}.npz"
        _rewrite(v1, out, meta=m, arrays=a)
        with pytest.raises(ValueError, match=out.name):
            pq.load(out)
    # and the same content, declared as what it is, loads
    good = tmp_path / "v2.npz"
    _rewrite(v1, good, meta={**meta, "format_version": 2, "fields": specs2}, arrays=as_v2)
    np.testing.assert_array_equal(pq.load(good).fields["angles"], joined)
