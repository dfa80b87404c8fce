"""``polarquant.warmup``: the kernels of the paper configurations compiled ahead of time.

The warm-ups here use small configurations whose kernels ``tests/test_backends.py``
compiles anyway (float32, four levels, float16 radii, the folded score of (4, 2, 2, 2)),
so that they add little to the suite's compile time; :func:`paper_configs` is checked
against the demo's configurations without being run.
"""

from __future__ import annotations

import importlib
import re

import pytest
from polarquant.backends import get_backend

import polarquant as pq
from polarquant.demo import demo_quantizers
from polarquant.warmup import paper_configs, warmup

#: Chooses its backends explicitly (or uses none): CI's Numba pass leaves it out (conftest.py).
pytestmark = pytest.mark.backend_independent

event = pytest.importorskip("numba.core.event")

LINE = re.compile(r"^\[(\d+)/(\d+)\] (encode|decode|score|weighted_sum) (.+) \.\.\. \d+\.\d s$")


def _configs():
    return [pq.TurboQuantMSE(16, 2), pq.PolarQuant(16, 4, (4, 2, 2, 2))]


def test_warmup_compiles_every_step_once():
    """One progress line per step, ``[i/n] op label ... seconds``, and the same labels returned
    with their times; the steps reach the kernels the public calls use (the folded
    PolarQuant score included, which needs thousands of rows); a second warm-up compiles
    nothing (no Numba compile event at all: the property, rather than a time threshold
    that a loaded machine could break)."""
    lines = []
    first = warmup("numba", configs=_configs(), echo=lines.append)
    assert len(lines) == len(first) == 8
    for i, (line, (label, seconds)) in enumerate(zip(lines, first, strict=True), start=1):
        match = LINE.match(line)
        assert match, line
        assert (int(match[1]), int(match[2])) == (i, 8)
        assert line.startswith(f"[{i}/8] {label} ... ") and seconds >= 0
    ops = ["encode", "decode", "score", "weighted_sum"]
    assert [label.split()[0] for label, _ in first] == ops * 2
    assert [label.split(" ", 1)[1] for label, _ in first] == ["TurboQuantMSE b=2"] * 4 + [
        "PolarQuant L=4 b=(4, 2, 2, 2)"
    ] * 4

    polar = importlib.import_module("polarquant.backends.numba_backend.polar")
    scalar = importlib.import_module("polarquant.backends.numba_backend.scalar")
    assert polar.polar_score_folded_kernel(4, 2, 2, 2).signatures  # the folded score ran
    assert polar.polar_weighted_sum_kernel.signatures
    assert scalar.scalar_weighted_sum_kernel.signatures

    with event.install_recorder("numba:compile") as compiles:
        second = warmup("numba", configs=_configs(), echo=None)
    assert [label for label, _ in second] == [label for label, _ in first]
    assert compiles.buffer == []


def test_default_configs_cover_the_demo():
    """The default warm-up holds every configuration ``polarquant demo`` runs (method and
    bits, levels, sketch size relative to the dimension)."""

    def key(q):
        config = q.config()
        bits = config.get("bits")
        proj = config.get("proj_dim")
        return (
            type(q).__name__,
            tuple(bits) if isinstance(bits, list) else bits,
            config.get("levels"),
            None if proj is None else proj / q.dim,
        )

    warmed = {key(q) for _, group in paper_configs() for q in group}
    demo = {key(q) for _, _, q, _ in demo_quantizers(128)}
    assert demo <= warmed, demo - warmed


def test_warmup_refuses_bad_arguments(monkeypatch):
    """An unknown backend is a ValueError naming the valid ones; quantizers of the wrong kind a
    TypeError; a backend that cannot run raises the registry's own error (same type and
    message, the install command included); the numpy backend compiles nothing."""
    with pytest.raises(ValueError, match="unknown backend 'numbaa'.*numpy, numba, cupy"):
        warmup("numbaa")
    with pytest.raises(TypeError, match="configs must be polarquant quantizers"):
        warmup("numba", configs=["PolarQuant"])

    import polarquant.backends as backends

    real = backends._why_unavailable
    missing = f"the numba package is not installed ({backends.INSTALL_HINTS['numba']})"
    monkeypatch.setattr(
        backends, "_why_unavailable", lambda name: missing if name == "numba" else real(name)
    )
    with pytest.raises(Exception) as registry:
        get_backend("numba")
    with pytest.raises(registry.type) as got:
        warmup("numba", echo=None)
    assert str(got.value) == str(registry.value) and '-e ".[numba]"' in str(got.value)
    monkeypatch.undo()

    lines = []
    assert warmup("numpy", echo=lines.append) == []
    assert lines == ["the numpy backend compiles nothing: nothing to warm up"]
