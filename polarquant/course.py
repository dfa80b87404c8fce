"""The course's editions: a student handout, a teacher's edition, executed notebooks for the site.

The tutorials of ``tutorials/`` (a clone of the repository; they are not part of the wheel) are
committed without outputs, with every written-out solution in cells tagged ``solution``
(``tutorials/README.md``, "For teachers").  This module turns them into what a course hands out::

    python -m polarquant.course editions --out course           # course/student, course/teacher
    python -m polarquant.course editions --out course --execute # the teacher's edition run
    python -m polarquant.course execute                          # outputs for the docs site

* ``editions`` writes ``OUT/student/`` (every ``solution`` cell removed, markdown and code, and no
  outputs) and ``OUT/teacher/`` (everything, solutions expanded), each with ``plotting.py`` and
  ``requirements-real-model.txt`` so that the folder runs on its own.  With ``--execute`` the
  teacher's notebooks are executed (at ``--scale``, default 1.0: the sizes students see).
* ``execute`` runs every notebook with a fresh kernel of this interpreter at ``--scale`` (default
  0.1, a few seconds each) and writes the executed copies to ``docs/_generated/executed/`` (or
  ``--out``).  ``docs/conf.py`` renders those copies, so the site shows every output and figure;
  each copy records the SHA-256 of the notebook it came from, and a copy whose notebook changed
  since is not used (the docs build then executes that notebook itself).  ``--real-model`` lets
  notebook 07b load SmolLM2 at the reduced scale (where the ``hf`` extra and the model are
  installed; about 40 s more).

Needs nbformat (and nbclient with ipykernel to execute): ``python -m pip install -e
".[tutorials]"`` installs them.  :func:`main` is the command line (``main(argv) -> int``, exit
status 2 with one line on stderr for a user error).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

__all__ = [
    "SOLUTION_TAG",
    "METADATA_KEY",
    "find_tutorials",
    "tutorial_notebooks",
    "is_solution",
    "student_edition",
    "teacher_edition",
    "site_edition",
    "source_digest",
    "execute_notebook",
    "write_editions",
    "write_executed",
    "main",
]

#: The tag of every solution cell (markdown and code); the handout removes them.
SOLUTION_TAG = "solution"
#: Notebook metadata written into executed copies: the source's digest and the scale.
METADATA_KEY = "polarquant_course"
#: Files next to the notebooks that an edition needs to run on its own.
SUPPORT_FILES = ("plotting.py", "requirements-real-model.txt")
#: The numbered notebooks of the course (not README or helper files).
NOTEBOOK_GLOB = "[0-9][0-9]*_*.ipynb"


class UsageError(ValueError):
    """A user error of the command line (one line on stderr, exit status 2)."""


def find_tutorials(path: str | os.PathLike | None = None) -> Path:
    """The ``tutorials/`` folder: ``path``, else ``./tutorials``, else the clone's, next to the
    package (an editable install)."""
    candidates = (
        [Path(path)]
        if path is not None
        else [Path.cwd() / "tutorials", Path(__file__).resolve().parents[1] / "tutorials"]
    )
    for folder in candidates:
        if any(folder.glob(NOTEBOOK_GLOB)):
            return folder
    where = ", ".join(str(c) for c in candidates)
    raise UsageError(f"no tutorial notebooks found in {where}: run from a clone of polarquant")


def tutorial_notebooks(tutorials: str | os.PathLike | None = None) -> list[Path]:
    """The course's notebooks (``NN*_*.ipynb``), in course order."""
    return sorted(find_tutorials(tutorials).glob(NOTEBOOK_GLOB))


def _nbformat():
    try:
        import nbformat
    except ImportError as exc:  # pragma: no cover - nbformat comes with jupyter and the test extra
        raise UsageError(
            'needs nbformat, not installed: python -m pip install -e ".[tutorials]"'
        ) from exc
    return nbformat


def is_solution(cell) -> bool:
    """Is ``cell`` part of a written-out solution (tagged ``solution``)?"""
    return SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def _clear_outputs(nb) -> None:
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None


def student_edition(nb):
    """A copy of ``nb`` without any solution cell (markdown or code) and without outputs."""
    nb = _nbformat().from_dict(json.loads(json.dumps(nb)))
    nb.cells = [c for c in nb.cells if not is_solution(c)]
    _clear_outputs(nb)
    return nb


def teacher_edition(nb):
    """A copy of ``nb`` with every solution shown (the collapsed solution sources expanded)."""
    nb = _nbformat().from_dict(json.loads(json.dumps(nb)))
    for cell in nb.cells:
        if is_solution(cell):
            cell.metadata.get("jupyter", {}).pop("source_hidden", None)
            if not cell.metadata.get("jupyter", True):
                del cell.metadata["jupyter"]
    return nb


def site_edition(nb):
    """A copy of ``nb`` for the documentation site: each solution collapsed behind a toggle.

    Solution code cells get myst-nb's ``hide-cell`` tag (source and output behind "Show code
    cell content"); solution markdown cells are wrapped in ``<details class="solution">``.
    """
    nb = _nbformat().from_dict(json.loads(json.dumps(nb)))
    for cell in nb.cells:
        if not is_solution(cell):
            continue
        if cell.cell_type == "code":
            tags = cell.metadata.setdefault("tags", [])
            if "hide-cell" not in tags:
                tags.append("hide-cell")
        elif cell.cell_type == "markdown" and not cell.source.lstrip().startswith("<details"):
            cell.source = (
                '<details class="solution">\n<summary>Solution (click to show)</summary>\n\n'
                f"{cell.source.strip()}\n\n</details>"
            )
    return nb


def source_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a committed notebook's bytes (recorded in its executed copy)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def execute_notebook(
    path: str | os.PathLike,
    *,
    scale: float = 0.1,
    workdir: str | os.PathLike | None = None,
    figdir: str | os.PathLike | None = None,
    timeout: int = 300,
    env: dict[str, str | None] | None = None,
):
    """Execute one tutorial with a fresh kernel of this interpreter; return ``(nb, seconds)``.

    The kernel runs in ``workdir`` (a temporary folder by default, so nothing is written next to
    the notebook) with ``POLARQUANT_TUTORIAL_SCALE=scale``, ``MPLBACKEND=Agg`` (figures become
    PNG outputs, see ``tutorials/plotting.py``), ``tutorials/`` on ``PYTHONPATH`` (for
    ``import plotting``), one BLAS thread unless set, and ``POLARQUANT_TUTORIAL_FIGDIR=figdir``
    when given.  ``env`` adds variables (a value ``None`` removes one).  A failing cell raises
    nbclient's ``CellExecutionError`` with the traceback.
    """
    nbformat = _nbformat()
    try:
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import KernelManager
        from nbclient import NotebookClient
    except ImportError as exc:
        raise UsageError(
            "executing notebooks needs nbclient and ipykernel, not installed: "
            'python -m pip install -e ".[tutorials]"'
        ) from exc

    path = Path(path).resolve()
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="polarquant-course-") as tmp:
        tmp = Path(tmp)
        # a kernelspec that runs *this* interpreter (the installed python3 spec may not)
        spec = tmp / "kernels" / "python3"
        spec.mkdir(parents=True)
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        kernel = {"argv": argv, "display_name": "Python 3", "language": "python"}
        (spec / "kernel.json").write_text(json.dumps(kernel), encoding="utf-8")
        kenv = dict(os.environ)
        kenv.update(
            POLARQUANT_TUTORIAL_SCALE=str(scale),
            MPLBACKEND="Agg",
            MPLCONFIGDIR=str(tmp / "mpl"),
            IPYTHONDIR=str(tmp / "ipython"),
            PYTHONDONTWRITEBYTECODE="1",  # no __pycache__ next to plotting.py
            PYTHONPATH=os.pathsep.join(filter(None, [str(path.parent), kenv.get("PYTHONPATH")])),
        )
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            kenv.setdefault(var, "1")
        if figdir is not None:
            kenv["POLARQUANT_TUTORIAL_FIGDIR"] = str(figdir)
        for name, value in (env or {}).items():
            if value is None:
                kenv.pop(name, None)
            else:
                kenv[name] = value
        km = KernelManager(
            kernel_name="python3",
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp / "kernels")]),
        )
        run_in = Path(workdir) if workdir is not None else tmp / "work"
        run_in.mkdir(parents=True, exist_ok=True)
        client = NotebookClient(
            nb, km=km, timeout=timeout, resources={"metadata": {"path": str(run_in)}}
        )
        start = time.perf_counter()
        client.execute(env=kenv)
        seconds = time.perf_counter() - start
    return nb, seconds


def write_executed(nb, source: str | os.PathLike, out_dir: str | os.PathLike, scale: float) -> Path:
    """Write an executed notebook to ``out_dir``, recording its source's digest and the scale."""
    nbformat = _nbformat()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    nb.metadata[METADATA_KEY] = {"source_sha256": source_digest(source), "scale": scale}
    target = out / Path(source).name
    nbformat.write(nb, target)
    return target


def _copy_support(tutorials: Path, out: Path) -> None:
    for name in SUPPORT_FILES:
        if (tutorials / name).is_file():
            shutil.copy2(tutorials / name, out / name)


def write_editions(
    out_dir: str | os.PathLike,
    tutorials: str | os.PathLike | None = None,
    *,
    execute: bool = False,
    scale: float = 1.0,
    progress=None,
) -> dict[str, list[Path]]:
    """Write ``out_dir/student`` and ``out_dir/teacher``; return the notebooks written."""
    nbformat = _nbformat()
    folder = find_tutorials(tutorials)
    out = Path(out_dir)
    written: dict[str, list[Path]] = {"student": [], "teacher": []}
    for edition in written:
        (out / edition).mkdir(parents=True, exist_ok=True)
        _copy_support(folder, out / edition)
    for source in tutorial_notebooks(folder):
        nb = nbformat.read(source, as_version=4)
        student = out / "student" / source.name
        nbformat.write(student_edition(nb), student)
        written["student"].append(student)
        if execute:
            nb, seconds = execute_notebook(source, scale=scale)
            if progress:
                progress(f"{source.name}: executed in {seconds:.0f} s")
        teacher = out / "teacher" / source.name
        nbformat.write(teacher_edition(nb), teacher)
        written["teacher"].append(teacher)
    return written


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="polarquant course",
        description="Build the course's editions from tutorials/ (see tutorials/README.md).",
    )
    p.add_argument("--tutorials", help="the tutorials folder (default: ./tutorials)")
    sub = p.add_subparsers(dest="command", required=True)
    ed = sub.add_parser("editions", help="the student handout and the teacher's edition")
    ed.add_argument("--out", default="course", help="output folder (default: course)")
    ed.add_argument("--execute", action="store_true", help="execute the teacher's edition")
    ed.add_argument("--scale", type=float, default=1.0, help="problem size with --execute")
    ex = sub.add_parser("execute", help="executed notebooks for the documentation site")
    ex.add_argument("--out", default=None, help="default: docs/_generated/executed")
    ex.add_argument("--scale", type=float, default=0.1, help="problem size (default 0.1)")
    ex.add_argument(
        "--real-model", action="store_true", help="let 07b load SmolLM2 at the reduced scale"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """``polarquant course``: ``editions`` or ``execute`` (module docstring); exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.scale <= 0:
            raise UsageError(f"--scale must be positive, got {args.scale}")
        if args.command == "editions":
            written = write_editions(
                args.out, args.tutorials, execute=args.execute, scale=args.scale, progress=print
            )
            for edition, paths in written.items():
                print(f"{edition}: {len(paths)} notebooks in {Path(args.out) / edition}")
            return 0
        folder = find_tutorials(args.tutorials)
        out = Path(args.out) if args.out else folder.parent / "docs" / "_generated" / "executed"
        extra = {"POLARQUANT_TUTORIAL_REAL_MODEL": "1" if args.real_model else None}
        for source in tutorial_notebooks(folder):
            nb, seconds = execute_notebook(source, scale=args.scale, env=extra)
            write_executed(nb, source, out, args.scale)
            print(f"{source.name}: {seconds:.1f} s")
        print(f"executed notebooks in {out}")
        return 0
    except UsageError as exc:
        print(f"polarquant course: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
