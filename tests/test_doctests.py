"""The Examples sections of the docstrings run and print what they claim."""

import doctest
import importlib
import pkgutil

import pytest

import polarquant

#: Every module of the package, subpackages included (``polarquant.codebooks.*``,
#: ``polarquant.backends.numba_backend.*``...): a doctest is run where it is defined.
#: (``polarquant.backends`` is walked on its own: its folder sits at the top of the repository.)
MODULES = sorted(
    {
        m.name
        for path, prefix in [
            (polarquant.__path__, "polarquant."),
            (polarquant.backends.__path__, "polarquant.backends."),
        ]
        for m in pkgutil.walk_packages(path, prefix)
        if m.name not in ("polarquant.__main__",)
    }
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if "numba_backend" in name:
        pytest.importorskip("numba")
    if name == "polarquant.search.distributed":  # the dask extra
        pytest.importorskip("dask")
        pytest.importorskip("distributed")
    if name in ("polarquant.kv.hf", "polarquant.kv.evaluation"):
        pytest.importorskip("torch")
        pytest.importorskip("transformers")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.failed == 0
