"""The small real data samples shipped with polarquant (see ``polarquant/data/README.md``).

* :func:`load_smollm2_kv` -- post-RoPE keys, values and queries captured from
  SmolLM2-135M-Instruct (Apache-2.0) on an original English text: head_dim 64,
  3 KV heads, 9 query heads (grouped-query attention), 3 layers.
* :func:`load_minilm_embeddings` -- 384-dim all-MiniLM-L6-v2 (Apache-2.0)
  sentence embeddings of Python standard-library docstring sentences (PSF-2.0).

Files are read with ``numpy.load(..., allow_pickle=False)``.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

__all__ = ["load_smollm2_kv", "load_minilm_embeddings", "data_path"]


def data_path(name: str):
    """Path of a shipped data file."""
    return resources.files("polarquant.data").joinpath(name)


def _load(name: str) -> dict:
    with resources.as_file(data_path(name)) as path, np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def load_smollm2_kv() -> dict:
    """Keys/values ``(layers, 3, T, 64)``, queries ``(layers, 9, Tq, 64)`` (float16) and metadata."""
    return _load("smollm2_kv.npz")


def load_minilm_embeddings() -> dict:
    """``embeddings`` ``(256, 384)`` float16, with ``sentences`` and ``sources``."""
    return _load("minilm_embeddings.npz")
