"""lm-evaluation-harness tasks on a run's model (harness.ScratchLM): `scratchlm eval RUN --tasks ...`.

lm-eval indexes its ~15,000 bundled task configs in about a minute here, so tasks that all come from
--include-path are looked up there alone. A task lm-eval does not know, a dataset that cannot be
downloaded (no network) or a missing local data file is one UserError line, never a traceback.

eval.json's `benchmarks` section accumulates: `tasks` holds each task's latest metrics, `chance` the
accuracy of guessing for multiple-choice tasks, and `calls` which `--tasks` evaluation produced them (step,
checkpoint, few-shot count, limit, time). A later `--tasks` run replaces the tasks it ran and keeps the
others; a plain `scratchlm eval` keeps them all (merge_benchmarks).
"""

from __future__ import annotations

import logging
import statistics
from datetime import UTC, datetime

from .benchmark_references import CHANCE, CHANCE_METRICS, SOURCES, references_for
from .common import UserError
from .config import EvalConfig


def task_names(tasks: list[str] | str) -> list[str]:
    items = [tasks] if isinstance(tasks, str) else list(tasks)
    return [t.strip() for item in items for t in item.split(",") if t.strip()]


def _manager(names: list[str], include_path: str | None):
    from lm_eval.tasks import TaskManager

    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(n in local.all_tasks for n in names):
            return local
    manager = TaskManager(include_path=include_path)
    missing = [n for n in names if n not in manager.all_tasks]
    if missing:
        raise UserError(
            f"--tasks: lm-eval has no task {', '.join(missing)} (its names: `lm-eval ls tasks`; your own "
            "task YAMLs: --include-path DIR)"
        )
    return manager


def run_benchmarks(lm, cfg: EvalConfig) -> dict:
    """A `benchmarks` section for the tasks of cfg: {task: {metric: value, metric_stderr: value}}, their
    chance levels, and one call recording the settings, the checkpoint's step and the truncation counts."""
    try:
        import lm_eval
    except ImportError:
        raise UserError("--tasks needs lm-evaluation-harness: pip install 'scratchlm[eval]'") from None
    from .harness import ScratchLM

    names = task_names(cfg.tasks)
    manager = _manager(names, cfg.include_path)
    model = ScratchLM(lm.model, lm.tokenizer, batch_size=cfg.batch_size, chat=cfg.apply_chat_template)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    try:
        out = lm_eval.simple_evaluate(
            model=model,
            tasks=names,
            num_fewshot=cfg.num_fewshot,
            limit=cfg.limit,
            task_manager=manager,
            apply_chat_template=cfg.apply_chat_template,
            log_samples=False,
        )
    except (ConnectionError, OSError) as e:
        raise UserError(
            f"--tasks {','.join(names)}: {e} (lm-eval's tasks download their data from the Hugging Face Hub "
            "on first use, which needs a network; local data_files are read from the current folder)"
        ) from None
    tasks = {}
    for task, metrics in out["results"].items():
        tasks[task] = {
            k.replace(",none", ""): v for k, v in metrics.items() if k not in ("alias", "name") and v != "N/A"
        }
    call = {
        "tasks": list(tasks),
        "step": lm.step,
        "checkpoint": cfg.checkpoint,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "num_fewshot": cfg.num_fewshot,
        "limit": cfg.limit,
        "apply_chat_template": cfg.apply_chat_template,
        "questions": {t: n.get("effective") for t, n in out.get("n-samples", {}).items()},
        "truncated": dict(model.truncated),
        "lm_eval_version": getattr(lm_eval, "__version__", None),
    }
    chance = _chance(out.get("configs", {}), model.requests_per_doc)
    return {"tasks": tasks, "chance": chance, "calls": [call]}


def _chance(configs: dict, requests_per_doc) -> dict[str, float]:
    """{task: mean over its questions of 1 / number of choices} for the multiple-choice tasks that ran: the
    expected accuracy of guessing (ARC's few 3- and 5-choice questions included)."""
    per_task: dict[str, list[float]] = {}
    for (task, _), n in requests_per_doc.items():
        per_task.setdefault(task, []).append(1 / n)
    return {
        task: statistics.fmean(shares)
        for task, shares in per_task.items()
        if configs.get(task, {}).get("output_type") == "multiple_choice"
    }


def _calls(section: dict) -> list[dict]:
    """The section's calls; a section written before calls were recorded is one call of unknown step."""
    if "calls" in section:
        return [dict(c) for c in section["calls"]]
    keys = ("num_fewshot", "limit", "apply_chat_template", "truncated", "lm_eval_version")
    return [{"tasks": list(section.get("tasks", {})), "step": None, **{k: section.get(k) for k in keys}}]


def merge_benchmarks(earlier: dict | None, new: dict) -> dict:
    """`new`'s tasks replace the same tasks of `earlier`; the other tasks of `earlier` stay, with the
    calls that produced them."""
    if not earlier:
        return new
    ran = set(new["tasks"])
    tasks = {t: m for t, m in earlier.get("tasks", {}).items() if t not in ran}
    chance = {t: c for t, c in earlier.get("chance", {}).items() if t not in ran}
    calls = []
    for call in _calls(earlier):
        call["tasks"] = [t for t in call["tasks"] if t not in ran]
        if call["tasks"]:
            calls.append(call)
    return {
        "tasks": {**tasks, **new["tasks"]},
        "chance": {**chance, **new["chance"]},
        "calls": calls + new["calls"],
    }


def metric_items(metrics: dict):
    """(metric, value, stderr or None) for a task's reported metrics (not their stderrs nor sample_len)."""
    for k, v in metrics.items():
        if k.endswith("_stderr") or k == "sample_len" or not isinstance(v, (int, float)):
            continue
        err = metrics.get(f"{k}_stderr")
        yield k, v, err if isinstance(err, (int, float)) else None


def report_lines(bench: dict, ran: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """report.md's benchmark section: each metric ± its stderr, the chance level, the published figures
    measured with the same few-shot count (sources as numbered notes), then which eval produced which
    tasks. `ran`: the tasks this eval ran (the others come from an earlier one)."""
    calls = _calls(bench)
    shots = {t: c.get("num_fewshot") for c in calls for t in c["tasks"]}
    chance = {**CHANCE, **bench.get("chance", {})}
    notes: list[str] = []
    lines = [
        "## Benchmarks (lm-evaluation-harness)",
        "",
        "| task | metric | value ± stderr | chance | published (same few-shot count) |",
        "|---|---|---|---|---|",
    ]
    for task, metrics in bench["tasks"].items():
        for k, v, err in metric_items(metrics):
            value = _short(v) if err is None else f"{_short(v)} ± {_short(err)}"
            guess = f"{chance[task]:.3g}" if k in CHANCE_METRICS and task in chance else ""
            refs = []
            for r in references_for(task, k, shots.get(task)):
                if r.source not in notes:
                    notes.append(r.source)
                refs.append(f"{r.model} {r.value:.4g} [{notes.index(r.source) + 1}]")
            lines.append(f"| {task} | {k} | {value} | {guess} | {'; '.join(refs)} |")
    lines.append("")
    if notes:
        lines += [f"[{i}] {SOURCES[key]}." for i, key in enumerate(notes, 1)] + [""]
    lines += ["Measured:"] + [_call_line(c, ran) for c in calls]
    return lines + [""]


def _call_line(call: dict, ran) -> str:
    questions = call.get("questions") or {}
    tasks = ", ".join(f"{t} ({questions[t]} questions)" if questions.get(t) else t for t in call["tasks"])
    if ran & set(call["tasks"]):
        when = "this eval"
    else:
        when = f"an earlier eval ({call['at']})" if call.get("at") else "an earlier eval"
    step = "step not recorded" if call.get("step") is None else f"step {call['step']}"
    if call.get("checkpoint"):
        step += f" (checkpoint {call['checkpoint']})"
    n = call.get("num_fewshot")
    shots = "the tasks' default few-shot count" if n is None else f"{n}-shot"
    limit = call.get("limit")
    if limit:
        limit = f", {limit:.0%} of each task" if limit < 1 else f", at most {int(limit)} questions per task"
    line = f"- {tasks}: {when}, {step}, {shots}{limit or ''}, lm-eval {call.get('lm_eval_version') or '?'}."
    if call.get("truncated"):
        cut = ", ".join(f"{k} {kind}" for kind, k in call["truncated"].items())
        line += f" Inputs longer than the context, cut from the left: {cut}."
    return line


def comparison_columns(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Cross-run table columns: one per task and metric found in any run's benchmarks, blank where a run
    lacks it."""
    keys: list[tuple[str, str]] = []
    for r in results:
        for task, metrics in (r.get("benchmarks") or {}).get("tasks", {}).items():
            keys += [(task, k) for k, _, _ in metric_items(metrics) if (task, k) not in keys]
    rows = []
    for r in results:
        tasks = (r.get("benchmarks") or {}).get("tasks", {})
        rows.append([_short(tasks.get(t, {}).get(k)) for t, k in keys])
    return [f"{t} {k}" for t, k in keys], rows


def _short(v) -> str:
    """4 decimals for accuracies and small perplexities; a tiny model's perplexity of 538,785 needs none."""
    if not isinstance(v, (int, float)):
        return ""
    return f"{v:.4f}" if abs(v) < 100 else f"{v:,.1f}"
