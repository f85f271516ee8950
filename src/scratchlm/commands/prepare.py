"""`scratchlm prepare RUN --input FILE`: corpus → tokenizer → train/val token shards in RUN."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..run import Run
from ..settings import print_settings, resolve, with_inputs


def prepare(
    run: str | Path,
    config: RunConfig | None = None,
    *,
    input: Sequence[str] | None = None,
    overwrite: bool = False,
    recipe: str | None = None,
    data: Mapping[str, Any] | None = None,
    tokenizer: Mapping[str, Any] | None = None,
    print_config: bool = False,
    origin: str = "scratchlm.prepare()",
) -> dict | RunConfig:
    """Read a corpus, train a tokenizer and write train/val token shards into RUN.

    Args:
        run: run directory (created if missing)
        config: a whole RunConfig to start from (Python only; default: the run's config.yaml or defaults)
        input: text/.gz/.jsonl/.parquet file, directory, glob, save_to_disk folder or hf:NAME; repeatable
            (default: the bundled book)
        overwrite: prepare a run that has been trained: its checkpoints and metrics go to RUN/previous/<time>/
        recipe: a YAML recipe whose data and tokenizer sections apply (flags and keywords override it)
        data: data settings to change, e.g. dict(val_fraction=0.1)
        tokenizer: tokenizer settings to change, e.g. dict(vocab_size=8000)
        print_config: print the resolved settings as YAML (and return them) instead of preparing
    """
    from ..data.prepare import prepare_run

    overrides = {"data": with_inputs(data, input), "tokenizer": tokenizer}
    cfg = resolve(run, "prepare", config=config, recipe=recipe, overrides=overrides, origin=origin)
    if print_config:
        return print_settings(cfg)
    target = Run.at(run)
    target.refuse_sft_run("prepare")
    with target.writer_lock("prepare"):
        return prepare_run(target, cfg, overwrite)
