"""The tutorials run top to bottom, and every committed ``.ipynb`` matches its ``.py`` source.

Each notebook of ``tutorials/`` is executed with a fresh ``python3`` kernel (nbclient) at
``POLARQUANT_TUTORIAL_SCALE=0.1``, from a temporary working directory, so nothing is written into
the repository; its figures are rendered to PNG files in that directory (``MPLBACKEND=Agg`` plus
``POLARQUANT_TUTORIAL_FIGDIR``), so a broken plot or a LaTeX label that does not parse fails the
test.  The notebooks' own ``assert`` statements (the papers' numbers, with their tolerances
explained in the notebooks) are the real checks; a failing cell fails the test with its traceback.

Every executed notebook must also *contain* its figures (one PNG output per rendered figure):
headless, under ``Agg``, ``plotting.show`` displays them itself.

The student handout (``tutorials/README.md``, "For teachers") removes every cell tagged
``solution``; the handout tests check that no written-out solution is left untagged, and build the
handout with the README's own command (with nbconvert installed; otherwise by the same stripping
rule) to make sure no solution survives.

The execution tests are skipped, with the reason, when nbclient, nbformat or ipykernel is not
installed; the sync tests need jupytext and nbformat.  Install them with
``pip install jupytext nbclient nbformat ipykernel matplotlib``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

#: Chooses its backends explicitly (or uses none): CI's Numba pass leaves it out (conftest.py).
pytestmark = pytest.mark.backend_independent

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
#: The numbered notebooks: 00a, 00b, 00c, 01 ... 09 (and 10 and up).
SOURCES = sorted(TUTORIALS.glob("[0-9][0-9]*_*.py"))
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]*_*.ipynb"))

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


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(notebook, tutorial_runs):
    """Executed once per session by ``polarquant.course.execute_notebook`` (conftest.py), the
    executed copy reused by the documentation build (tests/test_docs.py)."""
    before = sorted(p.name for p in TUTORIALS.iterdir())
    nb, figures, elapsed = tutorial_runs.run(notebook)
    assert elapsed < NOTEBOOK_TIMEOUT_S, f"{notebook.name} took {elapsed:.0f} s"
    assert figures, f"{notebook.name} rendered no figure"
    # headless (Agg) the notebook must still contain every figure it rendered, as a PNG output
    displayed = sum(
        "image/png" in output.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert displayed == len(figures), (
        f"{notebook.name}: {len(figures)} figures rendered but {displayed} in the executed notebook"
    )
    assert sorted(p.name for p in TUTORIALS.iterdir()) == before, (
        "the notebook wrote into tutorials/"
    )


# -- the student handout ------------------------------------------------------------------------
#: The tag of the cells the handout removes (tutorials/README.md, "For teachers").
SOLUTION_TAG = "solution"
#: How a written-out solution starts: "**Solution.**", "**Solution** (expand the hidden cell)."...
SOLUTION_MARKER = re.compile(r"^\W*solutions?\b", re.IGNORECASE)
#: What ends a solution: the next exercise, or a heading.
EXERCISE_OR_HEADING = re.compile(r"^(\W*exercise\b|#)", re.IGNORECASE)


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_every_solution_cell_is_tagged(notebook):
    """From a "**Solution" cell to the next exercise or heading, every cell (the written-out
    solution, its code, any explanation after the code) carries the ``solution`` tag."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    inside, untagged, seen = False, [], 0
    for index, cell in enumerate(cells):
        source = "".join(cell["source"]).strip()
        if SOLUTION_MARKER.match(source):
            inside, seen = True, seen + 1
        elif cell["cell_type"] == "markdown" and EXERCISE_OR_HEADING.match(source):
            inside = False
        if inside and SOLUTION_TAG not in _tags(cell):
            untagged.append(f"cell {index}: {source[:60]!r}")
    assert seen, f"{notebook.name} has no solution"
    assert not untagged, f"{notebook.name}: solution cells without the tag: {untagged}"


def _editions_command(out_dir: Path) -> list[str]:
    """The README's command for both editions, run with this interpreter into ``out_dir``."""
    readme = (TUTORIALS / "README.md").read_text(encoding="utf-8")
    found = re.search(r"^\s*(python -m polarquant\.course editions[^\n]*)$", readme, re.MULTILINE)
    assert found, "tutorials/README.md no longer shows the editions command"
    words = shlex.split(found.group(1))
    assert words[:3] == ["python", "-m", "polarquant.course"] and "--out" in words
    words[words.index("--out") + 1] = str(out_dir)
    return [sys.executable, *words[1:]]


def test_editions_student_has_no_solutions_teacher_has_them_all(tmp_path):
    """Build both editions as tutorials/README.md says.  The student's: no solution survives
    (no tagged cell, no "Solution" text, no solution source), every exercise does, no outputs,
    and ``plotting.py`` beside the notebooks.  The teacher's: every cell of the committed notebook
    in order, solutions included and not collapsed."""
    missing = _missing("nbformat")
    if missing:
        pytest.skip("needs nbformat (pip install nbformat)")
    import nbformat

    out = tmp_path / "course"
    proc = subprocess.run(
        _editions_command(out), cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    student, teacher = out / "student", out / "teacher"
    for edition in (student, teacher):
        assert sorted(p.name for p in edition.glob("*.ipynb")) == [p.name for p in NOTEBOOKS]
        assert (edition / "plotting.py").read_bytes() == (TUTORIALS / "plotting.py").read_bytes()
    for notebook in NOTEBOOKS:
        committed = nbformat.read(notebook, as_version=4)
        handout = nbformat.read(student / notebook.name, as_version=4)
        teachers = nbformat.read(teacher / notebook.name, as_version=4)
        solutions = {c.source.strip() for c in committed.cells if SOLUTION_TAG in _tags(c)}
        exercises = [c.source for c in committed.cells if "**Exercise" in c.source]
        assert solutions and exercises, notebook.name
        text = "\n".join(c.source for c in handout.cells)
        for cell in handout.cells:
            source = cell.source.strip()
            assert not SOLUTION_MARKER.match(source), f"{notebook.name}: {source[:60]!r}"
            assert SOLUTION_TAG not in _tags(cell), f"{notebook.name}: a solution cell survived"
            assert source not in solutions, f"{notebook.name}: {source[:60]!r}"
            assert cell.cell_type != "code" or not cell.outputs
        for solution in solutions:  # not even a long line of a solution
            lines = [ln for ln in solution.splitlines() if len(ln.strip()) > 40]
            assert not any(ln in text for ln in lines if ln not in _all_unsolved(committed)), (
                f"{notebook.name}: solution text survived"
            )
        assert [c.source for c in handout.cells if "**Exercise" in c.source] == exercises
        assert len(handout.cells) == len(committed.cells) - sum(
            SOLUTION_TAG in _tags(c) for c in committed.cells
        )
        # the teacher's edition: every cell, solutions expanded
        assert [c.source for c in teachers.cells] == [c.source for c in committed.cells]
        for cell in teachers.cells:
            if SOLUTION_TAG in _tags(cell):
                assert not cell.metadata.get("jupyter", {}).get("source_hidden"), notebook.name


def _all_unsolved(nb) -> str:
    """The text of every cell that is not a solution (a line shared with one is not a leak)."""
    return "\n".join(c.source for c in nb.cells if SOLUTION_TAG not in _tags(c))


def _handout_command(out_dir: Path) -> list[str]:
    """The README's handout command, run with this interpreter's nbconvert into ``out_dir``."""
    readme = (TUTORIALS / "README.md").read_text(encoding="utf-8")
    found = re.search(r"^\s*(jupyter nbconvert .*?)\n\s*```", readme, re.MULTILINE | re.DOTALL)
    assert found, "tutorials/README.md no longer shows the handout command"
    words = shlex.split(found.group(1).replace("\\\n", " "))
    assert words[:2] == ["jupyter", "nbconvert"]
    command = [sys.executable, "-m", "nbconvert"]
    words = words[2:]
    while words:
        word = words.pop(0)
        if word == "--output-dir":
            words.pop(0)
            command += [word, str(out_dir)]
        elif "*" in word:  # the notebooks' glob, expanded as the shell would
            command += sorted(str(p) for p in ROOT.glob(word))
        else:
            command.append(word)
    return command


def test_student_handout_has_no_solutions(tmp_path):
    """Build the handout as tutorials/README.md says: no solution survives, every exercise does."""
    missing = _missing("nbformat")
    if missing:
        pytest.skip("needs nbformat (pip install nbformat)")
    import nbformat

    handout = tmp_path / "handout"
    if importlib.util.find_spec("nbconvert") is not None:
        command = _handout_command(handout)
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=300)
    else:  # the same rule as nbconvert's TagRemovePreprocessor: drop the tagged cells
        handout.mkdir()
        for notebook in NOTEBOOKS:
            nb = nbformat.read(notebook, as_version=4)
            nb.cells = [c for c in nb.cells if SOLUTION_TAG not in _tags(c)]
            nbformat.write(nb, handout / notebook.name)

    assert sorted(p.name for p in handout.glob("*.ipynb")) == [p.name for p in NOTEBOOKS]
    for notebook in NOTEBOOKS:
        teacher = nbformat.read(notebook, as_version=4)
        student = nbformat.read(handout / notebook.name, as_version=4)
        solutions = {c.source.strip() for c in teacher.cells if SOLUTION_TAG in _tags(c)}
        exercises = [c.source for c in teacher.cells if "**Exercise" in c.source]
        assert solutions and exercises, notebook.name
        for cell in student.cells:
            source = cell.source.strip()
            assert not SOLUTION_MARKER.match(source), f"{notebook.name}: {source[:60]!r}"
            assert SOLUTION_TAG not in _tags(cell), f"{notebook.name}: a solution cell survived"
            assert source not in solutions, f"{notebook.name}: {source[:60]!r}"
        assert [c.source for c in student.cells if "**Exercise" in c.source] == exercises
