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
