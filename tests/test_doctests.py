"""The Examples sections of the docstrings run and print what they claim."""

import doctest
import importlib
import pkgutil

import pytest

import polarquant

MODULES = sorted(
    m.name
    for path, prefix in [
        (polarquant.__path__, "polarquant."),
        (polarquant.backends.__path__, "polarquant.backends."),
        (polarquant.kv.__path__, "polarquant.kv."),
    ]
    for m in pkgutil.iter_modules(path, prefix)
    if m.name not in ("polarquant.__main__",)
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if name.endswith("numba_backend"):
        pytest.importorskip("numba")
    if name in ("polarquant.kv.hf", "polarquant.kv.evaluation"):
        pytest.importorskip("torch")
        pytest.importorskip("transformers")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.failed == 0
