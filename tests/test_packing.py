"""The canonical packed layout: MSB-first bit stream per vector, padded to a byte."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polarquant.packing import pack_codes, pack_signs, packed_nbytes, unpack_codes, unpack_signs
from tests.naive import pack_bits

#: Chooses its backends explicitly (or uses none): CI's Numba pass leaves it out (conftest.py).
pytestmark = pytest.mark.backend_independent


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_matches_naive_bitstream(bits, rng, xp):
    """Every width matches a string-built bit stream and numpy.packbits(bitorder='big')."""
    codes = rng.integers(0, 2**bits, size=(4, 3, 37)).astype(np.uint8)
    packed = np.asarray(pack_codes(xp.asarray(codes), bits))
    assert packed.shape == (4, 3, packed_nbytes(37, bits))
    for i in range(4):
        for j in range(3):
            assert packed[i, j].tobytes() == pack_bits(codes[i, j], bits)
    planes = ((codes[..., None] >> np.arange(bits - 1, -1, -1)) & 1).reshape(4, 3, -1)
    np.testing.assert_array_equal(packed, np.packbits(planes, axis=-1, bitorder="big"))
    np.testing.assert_array_equal(np.asarray(unpack_codes(xp.asarray(packed), bits, 37)), codes)


def test_documented_example():
    assert pack_codes(np.array([1, 2, 3, 0], dtype=np.uint8), 2).tolist() == [0b01101100]


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(1, 8),
    n=st.integers(0, 70),
    batch=st.lists(st.integers(1, 3), max_size=2),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_property(bits, n, batch, seed):
    codes = np.random.default_rng(seed).integers(0, 2**bits, size=(*batch, n)).astype(np.uint8)
    packed = pack_codes(codes, bits)
    assert packed.shape == (*batch, -(-n * bits // 8))
    np.testing.assert_array_equal(unpack_codes(packed, bits, n), codes)


def test_sign_bits_define_zero_as_positive(xp):
    """bit = 1 for x >= 0: sign(0) must be +1 (np.sign(0) == 0 would lose the bit)."""
    x = xp.asarray([[0.0, -0.0, -1e-30, 2.0, -3.0, 0.5, -0.5, 1.0, -2.0]])
    packed = pack_signs(x)
    assert np.asarray(packed).tolist() == [[0b11010101, 0b00000000]]
    pm = np.asarray(unpack_signs(packed, 9))
    np.testing.assert_array_equal(pm, [[1, 1, -1, 1, -1, 1, -1, 1, -1]])


@pytest.mark.parametrize(
    ("call", "err", "match"),
    [
        (lambda: pack_codes(np.array([4], np.uint8), 2), ValueError, r"\[0, 3\]"),
        (lambda: pack_codes(np.array([-1]), 2), ValueError, "lie in"),
        (lambda: pack_codes(np.array([-1], np.int8), 8), ValueError, r"\[0, 255\]"),
        (lambda: pack_codes(np.array([256], np.int16), 8), ValueError, r"\[0, 255\]"),
        (lambda: pack_codes(np.array([1.0]), 2), TypeError, "integer dtype"),
        (lambda: pack_codes(np.array([1], np.uint8), 0), ValueError, "bits"),
        (lambda: pack_codes(np.array([1], np.uint8), 9), ValueError, "bits"),
        (lambda: pack_codes(np.array([1], np.uint8), 2.0), TypeError, "bits"),
        (lambda: unpack_codes(np.zeros(3, np.uint8), 3, 9), ValueError, "bytes per vector"),
        (lambda: unpack_codes(np.zeros(4, np.int8), 3, 9), TypeError, "uint8"),
    ],
)
def test_bad_input(call, err, match):
    with pytest.raises(err, match=match):
        call()
