"""Needle prompts, answer scoring and rates (polarquant.kv.needle), without a model.

A character-level stand-in tokenizer (one token per character) makes lengths and
positions exact and checkable; the real tokenizer is exercised by the SmolLM2
test in ``tests/test_kv_hf.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from polarquant.kv import needle


class CharTokenizer:
    """One token per character (its code point); hashable, like a real tokenizer."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


TOK = CharTokenizer()


@pytest.mark.parametrize("length", [400, 1000, 5000])
@pytest.mark.parametrize("depth", needle.DEPTHS)
def test_prompt_fits_its_length_and_holds_the_needle_at_its_depth(length, depth):
    p = needle.build_prompt(TOK, length, depth, "4821937")
    text = TOK.decode(p.ids)
    assert p.ids.dtype == np.int64 and p.ids.size <= length - needle.ANSWER_TOKENS
    assert text.startswith(needle.INSTRUCTION) and text.endswith(needle.QUESTION)
    assert text.count("4821937") == 1
    assert text[p.needle_at :].startswith(needle.NEEDLE.format(key="4821937"))
    # whole filler sentences: the depth achieved is within one sentence of the one asked for
    longest = max(len(s) + 1 for s in needle.filler_sentences())
    assert abs(p.actual_depth - depth) * p.filler_tokens <= longest / 2 + 1
    if depth == 0.0:
        assert p.needle_at == len(needle.INSTRUCTION)
    if depth == 1.0:
        assert text[p.needle_at :] == needle.NEEDLE.format(key="4821937") + needle.QUESTION
    # the filler is as long as the budget allows: the next sentence would not have fitted
    assert p.ids.size > length - needle.ANSWER_TOKENS - longest


def test_filler_repeats_the_essay_in_order_for_long_prompts():
    p = needle.build_prompt(TOK, 60_000, 0.5, "1234567")
    first = needle.filler_sentences()[0]
    assert TOK.decode(p.ids).count(first) >= 2


def test_bad_prompt_arguments_are_refused():
    with pytest.raises(ValueError, match="depth"):
        needle.build_prompt(TOK, 1000, 1.5, "1234567")
    with pytest.raises(ValueError, match="digits"):
        needle.build_prompt(TOK, 1000, 0.5, "12a4")
    with pytest.raises(ValueError, match="no room"):
        needle.build_prompt(TOK, 100, 0.5, "1234567")
    with pytest.raises(ValueError, match="one filler sentence"):
        needle.build_prompt(TOK, 240, 0.5, "1234567")


def test_passkeys_are_seeded_distinct_seven_digit_numbers():
    a = needle.passkeys(60, seed=0)
    assert a == needle.passkeys(60, seed=0) and a != needle.passkeys(60, seed=1)
    assert len(set(a)) == 60
    assert all(len(k) == 7 and k.isdigit() and k[0] != "0" for k in a)


@pytest.mark.parametrize(
    "answer, right",
    [
        (" 4821937.", True),
        ("4821937", True),
        (" 4821937. The magic", True),
        (" 482193.", False),  # a digit lost
        (" 48219370", False),  # a digit added
        (" a key that opens a door", False),
        (" 1, then 4821937", False),  # the first number counts
    ],
)
def test_an_answer_is_right_when_its_first_number_is_the_key(answer, right):
    assert needle.is_correct(answer, "4821937") is right


def test_wilson_interval_matches_known_values_and_stays_in_range():
    """Known values of the Wilson score interval (z = 1.96): 5/10 -> (0.2366, 0.7634),
    0/3 -> (0, 0.5615); it is never empty at 0 or n successes, never outside [0, 1]."""
    np.testing.assert_allclose(needle.wilson(5, 10), (0.2366, 0.7634), atol=1e-4)
    np.testing.assert_allclose(needle.wilson(0, 3), (0.0, 0.5615), atol=1e-4)
    lo, hi = needle.wilson(3, 3)
    assert hi == 1.0 and 0.4 < lo < 0.5
    for k in range(0, 16):
        lo, hi = needle.wilson(k, 15)
        assert 0.0 <= lo <= k / 15 <= hi <= 1.0


def test_scores_and_table_of_a_report():
    rows = []
    for method, found in (("turboquant-mse", [1, 1, 0, 1]), (needle.FULL, [1, 1, 1, 1])):
        answers = [
            {"length": L, "depth": d, "key": "1234567", "answer": " 1234567." if f else " no"}
            for (L, d), f in zip(
                [(1024, 0.0), (1024, 1.0), (2048, 0.0), (2048, 1.0)], found, strict=True
            )
        ]
        row = {"key_method": method, "answers": answers, "memory": {}}
        if method != needle.FULL:
            mem = {"bits_keys": 4.25, "bits_values": 4.25, "fp16_ratio": 3.6}
            row.update(
                value_method=method,
                key_bits=4,
                value_bits=4,
                nominal_bits=4.0,
                label="tq",
                memory={2048: mem},
            )
        rows.append(needle._score(row))
    assert rows[0]["correct"] == 3 and rows[0]["n"] == 4
    assert rows[0]["by_length"]["2048"]["correct"] == 1
    report = {"meta": {"lengths": [1024, 2048], "depths": [0.0, 1.0]}, "results": rows}
    table = needle.format_table(report).splitlines()
    assert len(table) == 4
    assert (
        "| 4.25 / 4.25 | 3.60 | 2/2 (100%, 34-100) | 1/2 (50%, 9-91) | 3/4 (75%, 30-95) |"
        in (table[2])
    )


def test_reports_of_two_runs_merge_into_one():
    def report(length, found, seconds):
        answers = [
            {"length": length, "depth": 0.5, "key": "1234567", "answer": " 1234567" if f else "x"}
            for f in found
        ]
        row = needle._score(
            {"key_method": needle.FULL, "label": needle.FULL, "answers": answers, "memory": {}}
        )
        meta = {
            "lengths": [length],
            "depths": [0.5],
            "needles_per_cell": len(found),
            "window": 128,
            "seed": 0,
            "key_seed": 0,
            "backend": None,
            "seconds": seconds,
        }
        return {"meta": meta, "results": [row]}

    merged = needle.merge_reports([report(8192, [1, 0], 10.0), report(1024, [1, 1], 5.0)])
    assert merged["meta"]["lengths"] == [1024, 8192] and merged["meta"]["seconds"] == 15.0
    row = merged["results"][0]
    assert (row["correct"], row["n"]) == (3, 4)
    assert row["by_length"]["8192"]["correct"] == 1
    with pytest.raises(ValueError, match=r"both hold lengths \[1024\]"):
        needle.merge_reports([report(1024, [1], 1.0), report(1024, [1], 1.0)])
    other = report(1024, [1], 1.0)
    other["meta"]["depths"] = [0.0]
    with pytest.raises(ValueError, match="differ"):
        needle.merge_reports([report(8192, [1], 1.0), other])


def test_rows_run_later_merge_by_configuration_when_full_precision_agrees():
    """Configurations added to a finished grid (same prompts): the rows join, one
    full-precision row is kept; different full-precision answers (other prompts, model or
    arithmetic) or a configuration in both reports are refused."""

    def report(labels, full_answer=" 1234567"):
        cell = {"length": 1024, "depth": 0.5, "key": "1234567"}
        rows = [
            needle._score(
                {
                    **{"key_method": lab, "value_method": lab, "key_bits": 4, "label": lab},
                    **{"answers": [{**cell, "answer": " 1"}], "memory": {}},
                }
            )
            for lab in labels
        ]
        full = {"key_method": needle.FULL, "label": needle.FULL, "memory": {}}
        rows.append(needle._score({**full, "answers": [{**cell, "answer": full_answer}]}))
        meta = {"lengths": [1024], "depths": [0.5], "needles_per_cell": 1, "window": 128}
        meta.update(seed=0, key_seed=0, backend=None, seconds=2.0, runs=2, split="lengths")
        meta["machine"] = "a test"
        return {"meta": meta, "results": rows}

    merged = needle.merge_reports([report(["a", "b"]), report(["hqq"])])
    assert [r["label"] for r in merged["results"]] == ["a", "b", "hqq", needle.FULL]
    assert merged["results"][-1]["correct"] == 1
    assert merged["meta"]["runs"] == 4 and merged["meta"]["seconds"] == 4.0
    assert merged["meta"]["split"] == "lengths and configurations"
    assert "4 processes (lengths and configurations split" in needle.markdown_page(merged)
    with pytest.raises(ValueError, match="full-precision answers differ"):
        needle.merge_reports([report(["a"]), report(["hqq"], full_answer=" 7654321")])
    with pytest.raises(ValueError, match=r"\['a'\] appear more than once"):
        needle.merge_reports([report(["a", "b"]), report(["a"])])
    older = report(["a"])  # a report written before the "split" key: split by lengths
    del older["meta"]["split"]
    assert needle.merge_reports([older, report(["hqq"])])["meta"]["split"] == (
        "lengths and configurations"
    )
    later = report(["hqq"])
    later["meta"]["lengths"] = [2048]
    with pytest.raises(ValueError, match="disjoint configurations over the same lengths"):
        needle.merge_reports([report(["a"]), later])
