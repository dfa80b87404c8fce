"""The NumPy/array-API reference backend: the operations the quantizers dispatch.

Each name here is a hot operation that accelerated backends (``numba``,
``cupy``) must provide with the same signature and the same results; the
reference implementations live in the core modules named alongside.

=====================  ======================================
operation              reference
=====================  ======================================
``pack_codes``         :func:`polarquant.packing.pack_codes`
``unpack_codes``       :func:`polarquant.packing.unpack_codes`
``pack_signs``         :func:`polarquant.packing.pack_signs`
``unpack_signs``       :func:`polarquant.packing.unpack_signs`
``quantize``           :func:`polarquant.codebooks.quantize`
``dequantize``         :func:`polarquant.codebooks.dequantize`
``polar_transform``    :func:`polarquant.polar.polar_transform`
``inverse_polar``      :func:`polarquant.polar.inverse_polar_transform`
=====================  ======================================
"""

from polarquant.codebooks import dequantize, quantize
from polarquant.packing import pack_codes, pack_signs, unpack_codes, unpack_signs
from polarquant.polar import inverse_polar_transform as inverse_polar
from polarquant.polar import polar_transform

NAME = "numpy"

__all__ = [
    "NAME",
    "pack_codes",
    "unpack_codes",
    "pack_signs",
    "unpack_signs",
    "quantize",
    "dequantize",
    "polar_transform",
    "inverse_polar",
]
