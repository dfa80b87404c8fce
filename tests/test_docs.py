"""The documentation site builds without a single warning, and its key pages exist.

The build is the one documented in ``docs/conf.py`` and ``docs/installation.md``:
``python -m sphinx -W --keep-going -n -b html docs <out>`` (warnings are errors,
every cross-reference must resolve, nothing is fetched from the network).  It
renders every committed ``tutorials/*.ipynb`` without executing it, so a new
notebook must appear in the output, and it autodocs every module, so a
docstring that breaks reStructuredText or cites a missing object fails here.

Needs the ``docs`` extra (sphinx, myst-nb, pydata-sphinx-theme); skipped, with
the install command, where it is missing.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

#: Chooses its backends explicitly (or uses none): CI's Numba pass leaves it out (conftest.py).
pytestmark = pytest.mark.backend_independent

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

DOCS_PACKAGES = ("sphinx", "myst_nb", "pydata_sphinx_theme")
MISSING = [name for name in DOCS_PACKAGES if importlib.util.find_spec(name) is None]

# Modules of polarquant/ that are tools rather than library API (documented in the guides).
NOT_API = {"__init__", "__main__", "cli", "demo"}


def test_every_public_module_has_an_api_page():
    """A new module of ``polarquant/`` needs its page in ``docs/api/`` (cheap, not slow)."""
    modules = {p.stem for p in (ROOT / "polarquant").glob("*.py") if not p.stem.startswith("_")}
    pages = {p.stem for p in (DOCS / "api").glob("*.md")}
    missing = sorted(modules - NOT_API - pages)
    assert not missing, f"add docs/api/<module>.md (and its toctree entry) for: {missing}"


@pytest.mark.slow
@pytest.mark.skipif(
    bool(MISSING),
    reason=f"docs extra not installed ({', '.join(MISSING)} missing): "
    'python -m pip install -e ".[docs]"',
)
def test_site_builds_without_warnings(tmp_path):
    out = tmp_path / "html"
    cmd = [
        sys.executable, "-m", "sphinx",
        "-W", "--keep-going", "-n", "-q",
        "-b", "html",
        "-d", str(tmp_path / "doctrees"),
        str(DOCS), str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"sphinx failed (exit {proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-10000:]}"
    )

    pages = [
        "index.html",
        "installation.html",
        "theory/index.html",
        "theory/polarquant.html",
        "theory/qjl.html",
        "theory/turboquant.html",
        "theory/composition.html",
        "theory/memory.html",
        "theory/errata.html",
        "theory/validation.html",
        "tutorials.html",
        "api/index.html",
        "api/polarquant.html",
        "api/backends.html",
        "backends.html",
        "kv-cache.html",
        "kv-eval.html",
        "api/kv.html",
        "performance.html",
        "prior-art.html",
        "changelog.html",
    ]
    missing = [p for p in pages if not (out / p).is_file()]
    assert not missing, f"pages missing from the build: {missing}"

    # The API page really holds the generated reference, not an empty shell.
    api = (out / "api" / "polarquant.html").read_text(encoding="utf-8")
    for name in ("PolarQuant", "QJL", "TurboQuantMSE", "TurboQuantProd", "PolarQuantQJL"):
        assert f'id="polarquant.{name}"' in api, f"polarquant.{name} is not documented"
    assert 'id="polarquant.Quantizer.encode"' in api
    # The changelog is included from ../CHANGELOG.md.
    assert "Keep a Changelog" in (out / "changelog.html").read_text(encoding="utf-8")

    # Every committed notebook is rendered and listed on the tutorials page.
    tutorials = (out / "tutorials.html").read_text(encoding="utf-8")
    for nb in sorted((ROOT / "tutorials").glob("*.ipynb")):
        page = out / "_generated" / "tutorials" / f"{nb.stem}.html"
        assert page.is_file(), f"tutorial {nb.name} was not rendered"
        assert f"_generated/tutorials/{nb.stem}.html" in tutorials, f"{nb.name} not in the toctree"
