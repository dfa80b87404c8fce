"""The tutorials run top to bottom, and every committed ``.ipynb`` matches its ``.py`` source.

Each notebook of ``tutorials/`` is executed with a fresh ``python3`` kernel (nbclient) at
``POLARQUANT_TUTORIAL_SCALE=0.1``, from a temporary working directory, so nothing is written into
the repository; its figures are rendered to PNG files in that directory (``MPLBACKEND=Agg`` plus
``POLARQUANT_TUTORIAL_FIGDIR``), so a broken plot or a LaTeX label that does not parse fails the
test.  The notebooks' own ``assert`` statements (the papers' numbers, with their tolerances
explained in the notebooks) are the real checks; a failing cell fails the test with its traceback.

The execution tests are skipped, with the reason, when nbclient, nbformat or ipykernel is not
installed; the sync tests need jupytext and nbformat.  Install them with
``pip install jupytext nbclient nbformat ipykernel matplotlib``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest

#: Chooses its backends explicitly (or uses none): CI's Numba pass leaves it out (conftest.py).
pytestmark = pytest.mark.backend_independent

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
SOURCES = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))

#: Wall-clock budget of one notebook at the CI scale (about 2-6 s each on 2 cores; generous
#: for slow CI machines).  nbclient enforces it per cell; the total is checked after the run.
NOTEBOOK_TIMEOUT_S = 300
CI_SCALE = "0.1"


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _ids(paths):
    return [p.stem for p in paths]


def test_every_source_has_a_notebook():
    assert SOURCES, "no tutorials found"
    assert [p.stem for p in SOURCES] == [p.stem for p in NOTEBOOKS]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_committed_without_outputs(notebook):
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{notebook.name}: a code cell has outputs"
            assert cell.get("execution_count") is None, (
                f"{notebook.name}: a code cell has an execution count"
            )
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert nb["metadata"].get("jupytext", {}).get("formats") == "ipynb,py:percent", "not paired"


@pytest.mark.parametrize("source", SOURCES, ids=_ids(SOURCES))
def test_notebook_in_sync_with_source(source):
    missing = _missing("jupytext", "nbformat")
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (pip install jupytext nbformat)")
    import jupytext
    import nbformat

    from_source = jupytext.read(source)
    committed = nbformat.read(source.with_suffix(".ipynb"), as_version=4)

    def cells(nb):
        return [(c.cell_type, c.source.strip(), c.metadata.get("tags", [])) for c in nb.cells]

    assert cells(from_source) == cells(committed), (
        f"{source.with_suffix('.ipynb').name} is out of sync with {source.name}: run "
        f"`jupytext --sync tutorials/{source.name}` (or `jupytext --to ipynb`)"
    )


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """Environment of the notebook kernel: CI scale, Agg, a python3 kernel of this interpreter."""
    missing = _missing("nbclient", "nbformat", "ipykernel", "matplotlib")
    if missing:
        pytest.skip(
            f"executing the tutorials needs {', '.join(missing)} "
            "(pip install nbclient nbformat ipykernel matplotlib)"
        )
    # A kernelspec that runs *this* interpreter, first on JUPYTER_PATH (the installed
    # python3 spec may point at another `python` on PATH).
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (polarquant tests)",
                "language": "python",
            }
        )
    )
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv(
        "JUPYTER_PATH", str(tmp_path / "jupyter") + os.pathsep + os.environ.get("JUPYTER_PATH", "")
    )
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    monkeypatch.setenv("POLARQUANT_TUTORIAL_SCALE", CI_SCALE)
    monkeypatch.setenv("POLARQUANT_TUTORIAL_FIGDIR", str(work / "figures"))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")  # no __pycache__ next to plotting.py
    # `import plotting` from the kernel, whose working directory is the temporary one
    monkeypatch.setenv("PYTHONPATH", str(TUTORIALS) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.delenv("POLARQUANT_BACKEND", raising=False)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        if var not in os.environ:  # keep CPU use modest on shared CI machines
            monkeypatch.setenv(var, "1")
    return work


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(notebook, kernel_env):
    import nbformat
    from nbclient import NotebookClient

    before = sorted(p.name for p in TUTORIALS.iterdir())
    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(
        nb,
        timeout=NOTEBOOK_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(kernel_env)}},
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    assert elapsed < NOTEBOOK_TIMEOUT_S, f"{notebook.name} took {elapsed:.0f} s"
    figures = list((kernel_env / "figures").glob("*.png"))
    assert figures, f"{notebook.name} rendered no figure"
    assert sorted(p.name for p in TUTORIALS.iterdir()) == before, (
        "the notebook wrote into tutorials/"
    )
