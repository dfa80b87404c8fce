"""The distribution as a user gets it: sdist and wheel built, the wheel used from outside the tree.

An editable install reads the source tree, so it hides a subpackage or a data file left out of
the wheel (a ``polarquant.kv`` missing from the package list once made ``import polarquant`` fail
on every regular install). These tests build the sdist, build the wheel *from the sdist* (what
``python -m build`` and PyPI do), install the wheel into a new virtual environment in a temporary
folder and run the library there, with the current directory outside the source tree.

The new environment sees no polarquant but the wheel's: it is created without the system
site-packages, and gets the dependencies (NumPy, SciPy, array-api-compat, ...) through a ``.pth``
line naming the directories where they are installed here. A ``.pth`` line only adds a path; it
does not run the ``.pth`` files found there, so the editable install's import hook stays inactive
and a module missing from the wheel fails to import. This keeps the test offline; the wheel's
declared dependencies are checked separately against ``pyproject.toml``.
"""

from __future__ import annotations

import email
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

import polarquant

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.skipif(
        not (ROOT / "pyproject.toml").is_file(), reason="needs the source tree (pyproject.toml)"
    ),
    # The new environment never sees POLARQUANT_BACKEND: CI's Numba pass leaves it out.
    pytest.mark.backend_independent,
]

#: What the source tree holds besides Python modules that the wheel must carry.
DATA_SUFFIXES = (".npz", ".txt", ".md", ".cu", ".cuh", ".typed")


def _source_files() -> set[str]:
    """Every installable file of the source tree, under the name it gets in the wheel."""
    out = set()
    for top, prefix in (("polarquant", "polarquant"), ("backends", "polarquant/backends")):
        for path in (ROOT / top).rglob("*"):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            if path.suffix == ".py" or path.name.endswith(DATA_SUFFIXES):
                out.add(f"{prefix}/{path.relative_to(ROOT / top).as_posix()}")
    return out


def _copy_tracked_tree(dest: Path) -> None:
    """Copy the source tree without build products, caches or virtual environments."""
    ignore = shutil.ignore_patterns(
        ".git", "__pycache__", "build", "dist", "*.egg-info", "_build", "_generated",
        ".venv", ".numba_cache", ".pytest_cache", ".hypothesis", "*.pyc", "results",
    )  # fmt: skip
    shutil.copytree(ROOT, dest, ignore=ignore)


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """The sdist, and the wheel built from it, made with ``python -m build`` (no isolation)."""
    pytest.importorskip("build", reason='the test extra (python -m pip install -e ".[test]")')
    work = tmp_path_factory.mktemp("dist")
    src = work / "src"
    _copy_tracked_tree(src)
    out = work / "out"
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,) = out.glob("polarquant_lab-*.tar.gz")
    (wheel,) = out.glob("polarquant_lab-*.whl")
    return {"sdist": sdist, "wheel": wheel}


def test_wheel_holds_every_module_and_data_file_and_no_top_level_backends(dists):
    names = set(zipfile.ZipFile(dists["wheel"]).namelist())
    missing = _source_files() - names
    assert not missing, f"left out of the wheel: {sorted(missing)}"
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"polarquant"}, f"top-level names installed by the wheel: {sorted(tops)}"


def test_wheel_metadata_declares_the_distribution_its_dependencies_and_the_command(dists):
    """The wheel must pull what ``pyproject.toml`` declares when pip resolves it for a user."""
    wheel = zipfile.ZipFile(dists["wheel"])
    (meta_name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    meta = email.message_from_bytes(wheel.read(meta_name))
    assert meta["Name"] == "polarquant-lab" and meta["Version"] == polarquant.__version__
    tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11 reads pyproject.toml")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requires = meta.get_all("Requires-Dist")
    for dep in declared["dependencies"]:
        assert dep in requires, dep
    for extra in declared["optional-dependencies"]:
        assert extra in meta.get_all("Provides-Extra"), extra
    (entry_name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    assert "polarquant = polarquant.cli:main" in wheel.read(entry_name).decode()


def test_sdist_builds_the_same_wheel_contents(dists):
    """The sdist carries everything needed: the wheel above was built from it, not from the tree."""
    with tarfile.open(dists["sdist"]) as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    for needed in ("pyproject.toml", "setup.py", "README.md", "LICENSE", "backends/__init__.py"):
        assert needed in names, needed


def _site_packages_of(*modules: str) -> list[str]:
    """The directories from which this interpreter imports ``modules`` (their dependencies too)."""
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            paths.add(str(Path(spec.origin).resolve().parents[1]))
    return sorted(paths)


@pytest.fixture(scope="module")
def installed(dists, tmp_path_factory) -> dict:
    """A new virtual environment, outside the source tree, with the wheel installed in it."""
    home = tmp_path_factory.mktemp("venv")
    env_dir = home / "env"
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(env_dir)
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = _site_packages_of("numpy", "scipy", "array_api_compat")
    Path(purelib, "dependencies-of-the-test.pth").write_text("\n".join(deps) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "--disable-pip-version-check", "--quiet", str(dists["wheel"])],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = home / "elsewhere"
    run_dir.mkdir()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "POLARQUANT"))}
    return {"python": str(python), "bin": bindir, "cwd": run_dir, "env": environ}


def _run(installed, args, timeout=300):
    done = subprocess.run(
        args,
        cwd=installed["cwd"],
        env=installed["env"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_installed_wheel_imports_every_module_from_outside_the_tree(installed):
    script = textwrap.dedent(
        """
        import importlib, importlib.util, pkgutil, sys
        import polarquant
        assert "site-packages" in polarquant.__file__, polarquant.__file__
        assert polarquant.backends.__name__ == "polarquant.backends"
        assert "numba" not in sys.modules and "cupy" not in sys.modules
        assert importlib.util.find_spec("backends") is None
        names = [m.name for m in pkgutil.walk_packages(polarquant.__path__, "polarquant.")]
        for name in names:
            if name.endswith("__main__"):
                continue  # runs the command line
            optional = {"polarquant.kv.hf": ("torch", "transformers"),
                        "polarquant.backends.cupy_backend": ("cupy",)}
            needs = next((v for k, v in optional.items() if name.startswith(k)), ())
            try:
                importlib.import_module(name)
            except ImportError as exc:  # only a missing optional package, with its install hint
                absent = [m for m in needs if importlib.util.find_spec(m) is None]
                assert absent and "pip install" in str(exc), (name, exc)
        print(len(names))
        """
    )
    count = int(_run(installed, [installed["python"], "-c", script]).split()[-1])
    assert count >= 25  # every module of polarquant/ and backends/ (30 when this was written)


def test_installed_wheel_runs_a_kv_cache_and_save_load(installed):
    script = textwrap.dedent(
        """
        import numpy as np
        import polarquant as pq
        data = pq.datasets.load_smollm2_kv()
        keys, values = data["keys"][1][None], data["values"][1][None]
        cache = pq.KVCache(head_dim=64, window=16)
        cache.append(keys[:, :, :40], values[:, :, :40])
        out = cache.attention(data["queries"][1][None, :, -1:])
        assert out.shape == (1, 9, 1, 64) and np.isfinite(out).all()
        tq = pq.TurboQuantMSE(64, 3, seed=0)
        codes = tq.encode(keys[0, 0].astype(np.float32))
        tq.save("codes.npz", codes)
        back = pq.load("codes.npz")
        assert np.array_equal(tq.decode(back), tq.decode(codes))
        print("ok")
        """
    )
    assert _run(installed, [installed["python"], "-c", script]).strip() == "ok"


def test_installed_wheel_runs_the_demo_command(installed):
    """The README's main job, from the console script the wheel installs."""
    out = _run(installed, [str(installed["bin"] / "polarquant"), "demo"])
    for method in ("TurboQuantMSE", "TurboQuantProd", "QJL", "PolarQuant", "PolarQuantQJL"):
        assert method in out
    info = _run(installed, [str(installed["bin"] / "polarquant"), "info"])
    assert polarquant.__version__ in info
