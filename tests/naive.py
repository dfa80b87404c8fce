"""Slow, obviously-correct per-vector oracles (STUMPY's tests/naive.py idea).

Loops over vectors and coordinates, written straight from the papers' text,
sharing no code with the library beyond the seeded constants (rotation matrix,
sketch, codebooks), which are themselves checked elsewhere.
"""

from __future__ import annotations

import math

import numpy as np


def polar_transform(x, levels):
    """Definition 1, one vector at a time, 1-based formulas transcribed literally."""
    d = len(x)
    radii = [float(v) for v in x]
    angles = []
    for level in range(1, levels + 1):
        psi, new = [], []
        for j in range(len(radii) // 2):
            a, b = radii[2 * j], radii[2 * j + 1]
            if level == 1:
                p = math.atan2(b, a)
                if p < 0:
                    p += 2 * math.pi
            else:
                p = math.atan2(b, a)
            psi.append(p)
            new.append(math.sqrt(a * a + b * b))
        angles.append(psi)
        radii = new
    assert len(radii) == d >> levels
    return radii, angles


def nearest(value, centroids):
    return int(np.argmin([abs(value - c) for c in centroids]))


def pack_bits(codes, bits):
    """Bit stream MSB first, padded to a byte: string manipulation, no arithmetic tricks."""
    stream = "".join(format(int(c), f"0{bits}b") for c in codes)
    stream += "0" * (-len(stream) % 8)
    return bytes(int(stream[i : i + 8], 2) for i in range(0, len(stream), 8))


def turboquant_mse_decode(x, q_matrix, centroids):
    """Algorithm 1 for one vector: normalise, rotate, nearest centroid per coordinate, rotate back."""
    norm = float(np.linalg.norm(x))
    u = x / norm if norm > 0 else x
    y = q_matrix @ u
    idx = [nearest(v, centroids) for v in y]
    y_hat = np.array([centroids[i] for i in idx])
    return idx, norm * (q_matrix.T @ y_hat)


def qjl_estimate(q, k, sketch):
    """The QJL estimator for one pair, summing over sketch rows one at a time."""
    m = sketch.shape[0]
    total = 0.0
    for row in sketch:
        total += float(row @ q) * (1.0 if float(row @ k) >= 0 else -1.0)
    return math.sqrt(math.pi / 2) / m * float(np.linalg.norm(k)) * total


# -- the backend operations, one row at a time (tests/test_backends.py checks every backend) ----
def unpack_bits(data, bits, n):
    """The first ``n`` codes of ``bits`` bits of a byte string, MSB first: ``pack_bits`` undone
    by string slicing (the layout of :mod:`polarquant.packing`)."""
    stream = "".join(format(int(byte), "08b") for byte in data)
    assert len(stream) >= n * bits
    return [int(stream[i * bits : (i + 1) * bits], 2) for i in range(n)]


def scalar_encode(y, centroids, bits):
    """TurboQuant (arXiv 2504.19874) Algorithm 1, line 3, for one rotated row:
    ``idx_j = argmin_k |y_j - c_k|``, one coordinate at a time, then packed."""
    return pack_bits([nearest(float(v), centroids) for v in y], bits)


def scalar_decode(data, centroids, bits, n):
    """Algorithm 1, line 7, for one packed row: ``y_hat_j = c_{idx_j}`` (rotated domain)."""
    return [float(centroids[i]) for i in unpack_bits(data, bits, n)]


def sign_encode(p):
    """QJL (arXiv 2406.03482) Definition 2.1 for one projected row ``p = S k``: ``sign(p_i)``
    one entry at a time, bit 1 for ``p_i >= 0`` (the library's convention at 0), packed."""
    return pack_bits([1 if float(v) >= 0 else 0 for v in p], 1)


def sign_decode(data, m):
    """The packed signs of one row as ``+1.0 / -1.0``."""
    return [1.0 if bit else -1.0 for bit in unpack_bits(data, 1, m)]


def inverse_polar_transform(radii, angles):
    """PolarQuant (arXiv 2502.02617) Definition 1 read backwards (the DeQuant step of
    Algorithm 1): from the top level down, radius ``r`` with its level-``l`` angle ``psi``
    becomes the pair ``(r cos psi, r sin psi)`` of level ``l - 1``; ``angles[l-1]`` lists the
    level-``l`` angles."""
    values = [float(r) for r in radii]
    for psi in reversed(angles):
        assert len(psi) == len(values)
        pairs = []
        for r, p in zip(values, psi, strict=True):
            pairs.append(r * math.cos(float(p)))
            pairs.append(r * math.sin(float(p)))
        values = pairs
    return values


def polar_encode(y, codebooks):
    """PolarQuant Algorithm 1 (Quant, Sec. 3.1) for one rotated row: the Definition 1
    transform, the nearest centroid of each angle in its level's codebook (Sec. 3.2), each
    level packed from a fresh byte, level 1 first; and the final radii as they are."""
    radii, angles = polar_transform(y, len(codebooks))
    data = b""
    for psi, cb in zip(angles, codebooks, strict=True):
        data += pack_bits([nearest(p, cb.centroids) for p in psi], cb.bits)
    return data, radii


def polar_decode(data, radii, codebooks, dim):
    """PolarQuant Algorithm 1 (DeQuant) for one row: each level's codes (``dim / 2**l`` of
    them, from the byte after the previous level's) to centroids, then the inverse transform."""
    angles, start = [], 0
    for level, cb in enumerate(codebooks, start=1):
        count = dim >> level
        nbytes = -(-count * cb.bits // 8)
        idx = unpack_bits(data[start : start + nbytes], cb.bits, count)
        angles.append([float(cb.centroids[i]) for i in idx])
        start += nbytes
    assert start == len(data)
    return inverse_polar_transform(radii, angles)


def dot(a, b):
    """``<a, b>`` summed one term at a time in Python floats (float64)."""
    total = 0.0
    for u, v in zip(a, b, strict=True):
        total += float(u) * float(v)
    return total


def weighted_sum(w, rows, n):
    """``sum_r w_r row_r`` of rows of ``n`` values, one row and one coordinate at a time."""
    out = [0.0] * n
    for wr, row in zip(w, rows, strict=True):
        for j, v in enumerate(row):
            out[j] += float(wr) * float(v)
    return out
