"""Package discovery for setuptools; everything else is declared in ``pyproject.toml``.

``backends/`` lives at the top of the repository but is installed as the subpackage
``polarquant.backends`` (never as a top-level module ``backends``). Both trees are discovered
automatically, so a new subpackage cannot be left out of the wheel;
``tests/test_packaging.py`` builds the sdist and the wheel and checks them.
"""

from setuptools import find_packages, setup

packages = find_packages(include=["polarquant", "polarquant.*"])
packages += ["polarquant.backends"] + [
    f"polarquant.backends.{name}" for name in find_packages("backends")
]

setup(packages=packages, package_dir={"polarquant.backends": "backends"})
