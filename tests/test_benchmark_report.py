"""Benchmark results beside published figures and chance (report.md), across runs (the comparison table),
and kept by a later plain `scratchlm eval`. The formatting tests use made-up results under standard task
names; anything that runs lm-eval uses the local tasks in tests/assets/lm_eval_tasks (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scratchlm.benchmark_references import REFERENCES, SOURCES
from scratchlm.benchmarks import merge_benchmarks, report_lines
from scratchlm.evaluation import comparison_table

REPO = Path(__file__).resolve().parents[1]
TASKS = "tests/assets/lm_eval_tasks"


def _section(tasks: dict, num_fewshot=None, step=100, chance=None, at="2026-01-02T03:04:05+00:00") -> dict:
    call = {
        "tasks": list(tasks),
        "step": step,
        "checkpoint": "best",
        "at": at,
        "num_fewshot": num_fewshot,
        "limit": None,
        "apply_chat_template": False,
        "questions": {},
        "truncated": {},
        "lm_eval_version": "0.4.13",
    }
    return {"tasks": tasks, "chance": chance or {}, "calls": [call]}


HELLASWAG = {"acc": 0.2601, "acc_stderr": 0.0044, "acc_norm": 0.2633, "acc_norm_stderr": 0.0044}


def test_every_reference_names_a_known_source():
    assert REFERENCES and all(r.source in SOURCES for r in REFERENCES)
    assert all(0 < r.value for r in REFERENCES)


def test_report_shows_value_stderr_chance_and_the_published_figure_with_its_source():
    text = "\n".join(report_lines(_section({"hellaswag": HELLASWAG}), ran={"hellaswag"}))
    row = next(line for line in text.splitlines() if line.startswith("| hellaswag | acc_norm |"))
    # The user's value ± stderr, chance for a 4-ending question, GPT-2's 0-shot lm-eval figures.
    assert "0.2633 ± 0.0044" in row and "| 0.25 |" in row
    assert "GPT-2 124M 0.3114 [1]" in row and "GPT-2 1.5B 0.5089 [1]" in row
    assert "[1] lm-evaluation-harness figures quoted in karpathy/llm.c" in text
    # The 10-shot leaderboard figure is not a 0-shot result's peer.
    assert "0.3153" not in text
    assert "- hellaswag: this eval, step 100 (checkpoint best)" in text


def test_a_few_shot_result_is_shown_beside_figures_with_the_same_shots():
    text = "\n".join(report_lines(_section({"hellaswag": HELLASWAG}, num_fewshot=10)))
    assert "GPT-2 124M 0.3153 [1]" in text and "Open LLM Leaderboard" in text and "0.3114" not in text
    assert "10-shot" in text


def test_unknown_tasks_get_no_reference_and_chance_only_when_counted():
    bench = _section(
        {"wp_next": {"acc": 0.5, "acc_stderr": 0.1}, "wp_pages": {"bits_per_byte": 1.9}},
        chance={"wp_next": 0.25},
    )
    lines = report_lines(bench)
    assert "| wp_next | acc | 0.5000 ± 0.1000 | 0.25 |  |" in lines
    assert "| wp_pages | bits_per_byte | 1.9000 |  |  |" in lines
    assert not any(line.startswith("[1]") for line in lines)


def test_a_later_run_replaces_the_tasks_it_ran_and_keeps_the_others():
    first = _section({"hellaswag": HELLASWAG, "piqa": {"acc": 0.55}}, step=100)
    second = _section({"piqa": {"acc": 0.58}}, step=200, at="2026-02-01T00:00:00+00:00")
    merged = merge_benchmarks(first, second)
    assert merged["tasks"]["piqa"] == {"acc": 0.58} and merged["tasks"]["hellaswag"] == HELLASWAG
    assert [(c["tasks"], c["step"]) for c in merged["calls"]] == [(["hellaswag"], 100), (["piqa"], 200)]
    text = "\n".join(report_lines(merged, ran={"piqa"}))
    assert "- hellaswag: an earlier eval (2026-01-02T03:04:05+00:00), step 100" in text
    assert "- piqa: this eval, step 200" in text


def _result(run: str, bench: dict | None) -> dict:
    out = {
        "run": run, "step": 10, "parameters": 1000, "tokens_seen": None, "loss": 2.0, "perplexity": 7.39,
        "bits_per_byte": 1.2, "tokens": 50, "tokenizer": {"hash": "h1"},
    }  # fmt: skip
    if bench:
        out["benchmarks"] = bench
    return out


def test_comparison_table_has_a_column_per_task_and_metric_blank_where_missing():
    a = _result("runs/a", _section({"hellaswag": HELLASWAG}))
    b = _result("runs/b", _section({"wp_next": {"acc": 0.75, "acc_stderr": 0.1}}))
    c = _result("runs/c", None)
    lines = comparison_table([a, b, c]).splitlines()
    head = lines[0]
    for column in ("hellaswag acc", "hellaswag acc_norm", "wp_next acc"):
        assert column in head
    assert "stderr" not in head
    assert lines[2].split()[-2:] == ["0.2601", "0.2633"]  # run a: its hellaswag, blank wp_next
    assert lines[3].split()[-1] == "0.7500" and "0.26" not in lines[3]
    assert lines[4].split()[-1] == "50"  # run c: no benchmark columns filled


@pytest.mark.usefixtures("one_thread")
def test_plain_eval_keeps_the_earlier_benchmarks_and_says_so(trained_run, monkeypatch):
    from scratchlm.cli import main

    monkeypatch.chdir(REPO)
    base = ["eval", str(trained_run), "--prompts", "[]"]
    assert main(base + ["--tasks", "wp_next", "--include-path", TASKS, "--limit", "4"]) == 0
    bench = json.loads((trained_run / "eval.json").read_text())["benchmarks"]
    assert bench["chance"] == {"wp_next": pytest.approx(0.25)}  # 4 endings per question, counted
    assert bench["calls"][0]["step"] == 60 and bench["calls"][0]["limit"] == 4

    assert main(base) == 0  # no --tasks: the earlier results stay, marked as earlier
    kept = json.loads((trained_run / "eval.json").read_text())["benchmarks"]
    assert kept == bench
    report = (trained_run / "report.md").read_text()
    assert "| wp_next | acc |" in report and "| 0.25 |" in report
    assert (
        f"- wp_next (4 questions): an earlier eval ({bench['calls'][0]['at']}), step 60 (checkpoint best)"
        in report
    )
    assert "at most 4 questions per task" in report
