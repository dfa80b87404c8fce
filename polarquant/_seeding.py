"""Seeded random streams: one seed, independent streams per purpose.

Every random object of polarquant (rotation, QJL sketch, Hadamard signs,
k-means++ initialisation) is generated on the host with NumPy's PCG64 from
``SeedSequence(seed, spawn_key=(stream,))``.  PCG64 and ``standard_normal``
give the same numbers on every platform, so the same ``seed`` yields the same
constants on every backend and machine; the stream number keeps, for example,
the rotation and the sketch of one quantizer independent of each other.
"""

from __future__ import annotations

import numpy as np

from ._array import check_int

#: Stream numbers.  Changing one changes every stored code: they are part of
#: the file format (see ``polarquant.io.FORMAT_VERSION``).
STREAMS = {
    "rotation": 1,
    "qjl-sketch": 2,
    "residual-sketch": 3,
    "hadamard-signs": 4,
    "kmeans": 5,
}


def check_seed(seed) -> int:
    """Validate a seed: a non-negative integer."""
    return check_int(seed, "seed", low=0)


def generator(seed: int, stream: str) -> np.random.Generator:
    """The NumPy generator for ``stream`` (a key of :data:`STREAMS`) under ``seed``."""
    seed = check_seed(seed)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(STREAMS[stream],)))
