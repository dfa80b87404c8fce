"""The README's main job: `polarquant demo` on the shipped real data, and `polarquant info`."""

import subprocess
import sys

import numpy as np
import pytest

from polarquant import datasets
from polarquant.cli import main
from polarquant.demo import run_demo


def test_shipped_data_is_real_and_loads_without_pickle():
    kv = datasets.load_smollm2_kv()
    assert kv["keys"].shape == (3, 3, 192, 64) and kv["keys"].dtype == np.float16
    assert kv["queries"].shape == (3, 9, 32, 64)
    assert np.isfinite(kv["keys"]).all() and np.isfinite(kv["values"]).all()
    emb = datasets.load_minilm_embeddings()
    assert emb["embeddings"].shape == (256, 384)
    np.testing.assert_allclose(
        np.linalg.norm(emb["embeddings"].astype(np.float64), axis=1), 1.0, atol=1e-3
    )


def test_demo_numbers_agree_with_theory_on_real_data():
    """After the random rotation, real data behaves like the theory says (data-obliviousness).

    TurboQuantMSE's measured D_mse on real keys and embeddings is within 5% of
    the codebook's expected value (1728 and 128 vectors x 3 seeds: standard
    error < 2%); PolarQuant within 5% of its closed form; the unbiased methods
    have slopes near 1 while TurboQuantMSE at 1 bit shrinks by ~2/pi.
    """
    rows = run_demo()
    for r in rows:
        assert np.isfinite(r.d_mse) and r.bits_per_coordinate > 0
        if r.method in ("TurboQuantMSE", "PolarQuant"):
            expected = float(r.theory.split()[0])
            assert r.d_mse == pytest.approx(expected, rel=0.05), (r.dataset, r.setting)
        if r.method in ("TurboQuantProd", "PolarQuantQJL") or (
            r.method == "QJL" and "MiniLM" in r.dataset
        ):
            assert r.slope == pytest.approx(1.0, abs=0.05), (r.dataset, r.method, r.setting)
    b1 = [r for r in rows if r.method == "TurboQuantMSE" and r.setting == "b=1"]
    assert all(abs(r.slope - 2 / np.pi) < 0.05 for r in b1)
    kv = [r for r in rows if r.dataset.startswith("SmolLM2")]
    # attention fidelity improves with bits
    kl = [r.attn_kl for r in kv if r.method == "TurboQuantMSE"]
    assert kl == sorted(kl, reverse=True)


def test_readme_demo_command_runs():
    out = subprocess.run(
        [sys.executable, "-m", "polarquant", "demo"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    for name in (
        "TurboQuantMSE",
        "TurboQuantProd",
        "QJL",
        "PolarQuant",
        "PolarQuantQJL",
        "SmolLM2",
        "MiniLM",
    ):
        assert name in out.stdout
    assert "3.875" in out.stdout and out.stderr == ""


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "numpy  available" in text and "numba" in text and "cupy" in text
