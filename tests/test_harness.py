"""scratchlm's lm-eval model class against lm-eval's own HFLM on the run's Hugging Face export: the same
accuracy and log-likelihoods, on local tasks (tests/assets/lm_eval_tasks, no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")  # HFLM's import

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tests" / "assets" / "lm_eval_tasks"


def _evaluate(model, tasks: list[str]) -> dict:
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS), include_defaults=False)
    return lm_eval.simple_evaluate(
        model=model, tasks=tasks, task_manager=manager, log_samples=True, bootstrap_iters=0
    )


def _scores(result: dict, task: str) -> list[float]:
    out = []
    for sample in result["samples"][task]:
        for resp in sample["resps"]:
            first = resp[0]
            out.append(first[0] if isinstance(first, (tuple, list)) else first)
    return out


@pytest.mark.parametrize("batch_size", [1, 5])
def test_same_numbers_as_hflm_on_the_hf_export(trained_run, tmp_path, monkeypatch, one_thread, batch_size):
    from lm_eval.models.huggingface import HFLM

    from scratchlm.checkpoint import load
    from scratchlm.formats import write_export
    from scratchlm.harness import ScratchLM

    monkeypatch.chdir(REPO)  # the task YAMLs name their data from the repository root, as lm-eval reads it
    write_export(trained_run, "hf", tmp_path / "hf")
    restored = load(trained_run, "best")
    ours = ScratchLM(restored.model, restored.tokenizer, batch_size=batch_size)
    # add_bos_token: every context starts with <|bos|>, as ours. logits_cache off: its shared one-token
    # lookup scores a request whose tokens coincide with another task's longer continuation at the wrong
    # positions (wp_lastword's sentences are wp_next's right answers).
    hf = HFLM(
        pretrained=str(tmp_path / "hf"),
        device="cpu",
        batch_size=batch_size,
        add_bos_token=True,
        logits_cache=False,
    )
    tasks = ["wp_next", "wp_lastword", "wp_complete"]
    a, b = _evaluate(ours, tasks), _evaluate(hf, tasks)
    for task in ["wp_next", "wp_lastword"]:
        x, y = _scores(a, task), _scores(b, task)
        assert len(x) == len(y) > 0
        assert max(abs(p - q) for p, q in zip(x, y, strict=True)) < 1e-4, task
        assert a["results"][task]["acc,none"] == b["results"][task]["acc,none"]
    assert a["results"]["wp_next"]["acc_norm,none"] == b["results"]["wp_next"]["acc_norm,none"]
    assert _scores(a, "wp_complete") == _scores(b, "wp_complete")  # greedy generations, same text
    # Long sentences are cut from the left to the 64-token context, as HFLM cuts them, and counted.
    assert ours.truncated["loglikelihood"] > 0


def test_rolling_log_likelihood_matches_hflm(trained_run, tmp_path, monkeypatch, one_thread):
    """Whole paragraphs in windows of the context, after <|bos|>: HFLM's rolling windows without a
    <|bos|> from the tokenizer (its prefix token is <|bos|>)."""
    from lm_eval.models.huggingface import HFLM

    from scratchlm.checkpoint import load
    from scratchlm.formats import write_export
    from scratchlm.harness import ScratchLM

    monkeypatch.chdir(REPO)
    write_export(trained_run, "hf", tmp_path / "hf")
    restored = load(trained_run, "best")
    ours = ScratchLM(restored.model, restored.tokenizer, batch_size=4)
    hf = HFLM(pretrained=str(tmp_path / "hf"), device="cpu", batch_size=4, logits_cache=False)
    a, b = _evaluate(ours, ["wp_pages"]), _evaluate(hf, ["wp_pages"])
    x, y = _scores(a, "wp_pages"), _scores(b, "wp_pages")
    assert max(abs(p - q) for p, q in zip(x, y, strict=True)) < 1e-3  # sums over ~100 tokens
    assert a["results"]["wp_pages"]["bits_per_byte,none"] == pytest.approx(
        b["results"]["wp_pages"]["bits_per_byte,none"], rel=1e-5
    )


def test_eval_command_runs_a_local_task_into_eval_json_and_report(trained_run, monkeypatch, one_thread):
    import json

    from scratchlm.cli import main

    monkeypatch.chdir(REPO)
    tasks = "tests/assets/lm_eval_tasks"
    argv = ["eval", str(trained_run), "--tasks", "wp_next", "--include-path", tasks, "--limit", "4"]
    assert main(argv + ["--prompts", "[]"]) == 0
    bench = json.loads((trained_run / "eval.json").read_text())["benchmarks"]
    assert set(bench["tasks"]["wp_next"]) >= {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
    assert "| wp_next | acc |" in (trained_run / "report.md").read_text()


@pytest.mark.slow  # lm-eval indexes its ~15,000 bundled tasks: about a minute here
def test_unknown_task_is_one_line(trained_run, monkeypatch, capsys):
    from scratchlm.cli import main

    monkeypatch.chdir(REPO)
    argv = ["eval", str(trained_run), "--tasks", "no_such_task", "--include-path", str(TASKS)]
    # Not in the include path: lm-eval's own ~15,000 tasks are indexed, then the name is refused.
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_task" in err[0]
