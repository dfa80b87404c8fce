"""Shared fixtures: seeded generators and the array namespaces every public function must accept."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(20260328)


@pytest.fixture(autouse=True)
def _backend_independent_guard(request, monkeypatch):
    """A test marked ``backend_independent`` must choose its backend explicitly (``backend=``,
    ``use_backend``, ``get_backend(name)``) or use none.  CI's second pass
    (``POLARQUANT_BACKEND=numba``) leaves such tests out, so one that fell back on the default
    backend would silently lose its Numba run: the fallback fails it here instead."""
    if request.node.get_closest_marker("backend_independent") is None:
        return
    from polarquant import backends

    def refuse():
        raise AssertionError(
            f"{request.node.nodeid} is marked backend_independent but used the default backend "
            "(POLARQUANT_BACKEND); give it backend= or drop the mark"
        )

    monkeypatch.setattr(backends, "_default_backend", refuse)


def _namespaces():
    out = [pytest.param("numpy", id="numpy")]
    try:
        import array_api_strict  # noqa: F401

        out.append(pytest.param("array_api_strict", id="array_api_strict"))
    except ImportError:  # pragma: no cover - test extra not installed
        out.append(
            pytest.param("array_api_strict", marks=pytest.mark.skip("array-api-strict missing"))
        )
    return out


@pytest.fixture(params=_namespaces())
def xp(request):
    """An array namespace: NumPy, or array_api_strict (the standard and nothing more)."""
    if request.param == "numpy":
        return np
    import array_api_strict

    return array_api_strict


def to_numpy(a) -> np.ndarray:
    return np.asarray(a)


def unit_rows(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def correlated_pair(rng, d, rho):
    """Unit vectors ``q, k`` with ``<q, k> = rho`` exactly (a clearly non-zero inner product)."""
    q = rng.standard_normal(d)
    q /= np.linalg.norm(q)
    z = rng.standard_normal(d)
    z -= (z @ q) * q
    z /= np.linalg.norm(z)
    return q, rho * q + np.sqrt(1 - rho**2) * z


def tiny_llama(hidden_size: int = 64, max_position_embeddings: int = 256):
    """``(torch, model)``: a seeded random 2-layer Llama (4 query heads, 2 kv heads, head_dim 16).

    Skips the calling test where torch or transformers >= 5 (the ``hf`` extra) is missing.
    """
    torch = pytest.importorskip("torch", reason="needs torch (the hf extra)")
    transformers = pytest.importorskip(
        "transformers", reason="needs transformers>=5 (the hf extra)"
    )
    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("needs transformers>=5")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=max_position_embeddings,
    )
    return torch, LlamaForCausalLM(config).eval()


class TutorialRuns:
    """Each tutorial executed at most once per test session (``polarquant.course``).

    ``tests/test_tutorials.py`` checks every executed notebook and ``tests/test_docs.py`` renders
    the same executed copies (``folder``) on the documentation site, so the notebooks run once
    whichever test asks first.  ``run(path)`` returns ``(executed nb, figure PNGs, seconds)`` and
    re-raises the notebook's error for every test that asks for it.
    """

    SCALE = 0.1  # the CI scale of every notebook

    def __init__(self, base):
        self.base = base
        self.folder = base / "executed"  # executed copies with their source digests
        self._done = {}

    def run(self, path):
        if path not in self._done:
            from polarquant.course import execute_notebook, write_executed

            figdir = self.base / "figures" / path.stem
            try:
                nb, seconds = execute_notebook(
                    path,
                    scale=self.SCALE,
                    workdir=self.base / "work" / path.stem,
                    figdir=figdir,
                    env={"POLARQUANT_BACKEND": None, "POLARQUANT_TUTORIAL_REAL_MODEL": None},
                )
            except Exception as exc:  # noqa: BLE001 - re-raised for every test that asks
                self._done[path] = exc
            else:
                write_executed(nb, path, self.folder, self.SCALE)
                self._done[path] = (nb, sorted(figdir.glob("*.png")), seconds)
        result = self._done[path]
        if isinstance(result, Exception):
            raise result
        return result


@pytest.fixture(scope="session")
def tutorial_runs(tmp_path_factory):
    """The session's :class:`TutorialRuns` (skips where nbclient, ipykernel or matplotlib lack)."""
    import importlib.util

    missing = [
        m
        for m in ("nbclient", "nbformat", "ipykernel", "matplotlib")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        pytest.skip(
            f"executing the tutorials needs {', '.join(missing)} "
            "(pip install nbclient nbformat ipykernel matplotlib)"
        )
    return TutorialRuns(tmp_path_factory.mktemp("tutorials"))
