"""`scratchlm plan RUN --minutes M`: what `train RUN --preset auto --train.max-minutes M` would train."""

from __future__ import annotations

from pathlib import Path

from ..common import UserError
from ..run import Run


def plan(run: str | Path, *, minutes: float, context: int | None = None, device: str = "auto"):
    """Print what `scratchlm train RUN --preset auto --train.max-minutes M` would train: a few seconds'
    probe of this machine's speed and the run's corpus size give the model, batch, steps and memory.

    Args:
        run: a run directory made by `scratchlm prepare`
        minutes: the training time budget
        context: plan at this context (tokens) instead of each shape's own, e.g. 512 for a base meant for
            `scratchlm sft` (as --model.block-size does with --preset auto)
        device: auto, cpu, cuda, cuda:N or mps
    """
    from ..planning import make_plan

    if not minutes > 0:
        raise UserError(f"--minutes {minutes:g}: must be a number > 0")
    if context is not None and context < 1:
        raise UserError(f"--context {context}: must be a number of tokens > 0")
    target = Run.at(run)
    target.refuse_sft_run("plan")
    cfg = target.config_or_default().replace(train={"device": device})
    made = make_plan(target.root, cfg, minutes, context)
    print("\n".join(made.lines()))
    command = f"scratchlm train {target.root} --preset auto --train.max-minutes {minutes:g}"
    if context is not None:
        command += f" --model.block-size {context}"
    if target.has_checkpoints():  # `train --preset auto` continues a trained run in its own shape
        print(f"{target.root} has checkpoints, which `{command}` continues; this plan trains with --fresh")
    else:
        print(f"to train it: {command}")
    return made
