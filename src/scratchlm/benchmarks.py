"""lm-evaluation-harness tasks on a run's model (harness.ScratchLM): `scratchlm eval RUN --tasks ...`.

lm-eval indexes its ~15,000 bundled task configs in about a minute here, so tasks that all come from
--include-path are looked up there alone. A task lm-eval does not know, a dataset that cannot be
downloaded (no network) or a missing local data file is one UserError line, never a traceback.
"""

from __future__ import annotations

import logging

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
    """{task: {metric: value, metric_stderr: value}} plus the settings and truncation counts."""
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
    return {
        "tasks": tasks,
        "num_fewshot": cfg.num_fewshot,
        "limit": cfg.limit,
        "apply_chat_template": cfg.apply_chat_template,
        "truncated": dict(model.truncated),
        "lm_eval_version": getattr(lm_eval, "__version__", None),
    }


def report_lines(bench: dict) -> list[str]:
    lines = [
        "## Benchmarks (lm-evaluation-harness)",
        "",
        "| task | metric | value | stderr |",
        "|---|---|---|---|",
    ]
    for task, metrics in bench["tasks"].items():
        for k, v in metrics.items():
            if k.endswith("_stderr") or k == "sample_len" or not isinstance(v, (int, float)):
                continue
            err = metrics.get(f"{k}_stderr")
            err_s = f"{err:.4f}" if isinstance(err, (int, float)) else "n/a"
            lines.append(f"| {task} | {k} | {v:.4f} | {err_s} |")
    if bench["truncated"]:
        cut = ", ".join(f"{n} {kind}" for kind, n in bench["truncated"].items())
        lines.append(f"\nInputs longer than the context, cut from the left: {cut}.")
    return lines + [""]
