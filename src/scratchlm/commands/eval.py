"""`scratchlm eval RUN [RUN ...]`: loss, perplexity and bits per byte; samples; eval.json and report.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import EvalConfig
from ..settings import build_section


def evaluate(
    runs: str | Path | list[str | Path],
    config: EvalConfig | None = None,
    *,
    origin: str = "scratchlm.evaluate()",
    **settings: Any,
) -> dict | list[dict]:
    """Loss, perplexity and bits per byte with a sliding window; fixed-seed samples; eval.json and report.md
    in each RUN; a comparison table for several runs.

    Args:
        runs: one or more trained run directories
        config: a whole EvalConfig (Python only); the keyword settings change it
    """
    from ..evaluation import evaluate_runs

    cfg = build_section(EvalConfig, config, settings, origin)
    return evaluate_runs(runs, cfg)
