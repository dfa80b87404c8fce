"""The Examples sections of the docstrings run and print what they claim."""

import doctest
import importlib
import pkgutil

import pytest

import polarquant

MODULES = sorted(
    m.name for m in pkgutil.iter_modules(polarquant.__path__, "polarquant.")
    if m.name not in ("polarquant.__main__",)
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.failed == 0
