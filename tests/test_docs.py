"""The documentation site builds without a single warning, and its key pages exist.

The build is the one documented in ``docs/conf.py`` and ``docs/installation.md``:
``python -m sphinx -W --keep-going -n -b html docs <out>`` (warnings are errors,
every cross-reference must resolve, nothing is fetched from the network).  It
renders every ``tutorials/*.ipynb`` **executed**, from the copies the tutorial
tests executed (the session fixture ``tutorial_runs`` of ``conftest.py``: the
notebooks run once per session, whichever test asks first), so a new notebook
must appear in the output with its figures; it autodocs every module, so a
docstring that breaks reStructuredText or cites a missing object fails here.
The site must be self-contained: MathJax served from ``_static``, no script or
style sheet from another host; solutions are collapsed; a print style sheet is
linked.

Needs the ``docs`` extra (sphinx, myst-nb, pydata-sphinx-theme); skipped, with
the install command, where it is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
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
NOT_API = {"__init__", "__main__", "cli", "demo", "course"}


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
def test_site_builds_without_warnings(tmp_path, tutorial_runs):
    notebooks = sorted((ROOT / "tutorials").glob("[0-9][0-9]*_*.ipynb"))
    for nb in notebooks:  # executed once per session, shared with tests/test_tutorials.py
        tutorial_runs.run(nb)
    out = tmp_path / "html"
    cmd = [
        sys.executable, "-m", "sphinx",
        "-W", "--keep-going", "-n", "-q",
        "-b", "html",
        "-d", str(tmp_path / "doctrees"),
        str(DOCS), str(out),
    ]  # fmt: skip
    env = {**os.environ, "POLARQUANT_DOCS_EXECUTED": str(tutorial_runs.folder)}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
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

    # ... executed: every notebook page shows its figures, and nothing was executed again
    assert not (out / ".jupyter_cache").exists() and not (tmp_path / ".jupyter_cache").exists()
    for nb in notebooks:
        html = (out / "_generated" / "tutorials" / f"{nb.stem}.html").read_text(encoding="utf-8")
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        # solutions collapsed: each solution markdown in a <details>, each solution code cell hidden
        solutions_md = sum(
            c["cell_type"] == "markdown" and "solution" in c["metadata"].get("tags", [])
            for c in cells
        )
        solutions_code = sum(
            c["cell_type"] == "code" and "solution" in c["metadata"].get("tags", []) for c in cells
        )
        assert html.count('<details class="solution">') == solutions_md, nb.name
        hidden = re.findall(
            r'class="cell tag_solution[^"]*"[^>]*>\s*<details class="[^"]*\bhide\b', html
        )
        assert len(hidden) == solutions_code, f"{nb.name}: solution code not collapsed"
        assert len(re.findall(r'<img[^>]+src="[^"]+\.png"', html)) >= 1, f"{nb.name}: no figure"
        assert "cell_output" in html, f"{nb.name}: no output rendered"

    # offline: MathJax from the site itself, nothing loaded from another host
    assert (out / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert (out / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir()
    theory = (out / "theory" / "turboquant.html").read_text(encoding="utf-8")
    assert re.search(r'<script[^>]+src="[./]*_static/mathjax/tex-chtml\.js', theory)
    link = re.search(r'<link[^>]+href="[./]*_static/print\.css[^>]*>', theory)
    assert link and 'media="print"' in link.group(0), "no print style sheet"
    for page in out.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        remote = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(?:https?:)?//[^"]+"', text)
        assert not remote, f"{page.relative_to(out)} loads {remote[:2]} from another host"
