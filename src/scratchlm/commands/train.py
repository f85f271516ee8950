"""`scratchlm train RUN`: pretrain (or continue training) the run's model on its token shards."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from ..common import UserError
from ..config import RunConfig
from ..run import Run
from ..settings import announce_changes, print_settings, resolve, setting_name, with_tokenizer_vocab


def _settings(target: Run, config, preset, recipe, overrides: dict, origin: str, fresh: bool) -> RunConfig:
    """The settings `train` runs with; --preset auto plans here."""
    if preset == "auto":
        preset = _auto_preset(target, config, recipe, overrides, origin, fresh)
    cfg = resolve(
        target, "train", config=config, preset=preset, recipe=recipe, overrides=overrides, origin=origin
    )
    return with_tokenizer_vocab(target, cfg)


def _auto_preset(target: Run, config, recipe, overrides, origin: str, fresh: bool) -> dict | None:
    """--preset auto: the plan for the budget on this machine; a run with checkpoints continues its shape."""
    from ..planning import make_plan

    if target.has_checkpoints() and not fresh:
        m = target.load_config().model
        print(
            f"--preset auto: {target.root} has checkpoints, so it continues in its planned shape "
            f"({m.n_layer} x {m.n_embd}) up to --train.max-minutes; --fresh plans and trains anew"
        )
        return None
    target.require_data()
    asked = resolve(target, "train", config=config, recipe=recipe, overrides=overrides, origin=origin)
    # A context given with the plan is planned at (probes, rows, memory), not laid over a plan made for
    # another one: a base meant for `sft` needs room for whole conversations (docs/benchmarks.md).
    context = (overrides.get("model") or {}).get("block_size")
    plan = make_plan(target.root, asked, asked.train.max_minutes, context)
    print("\n".join(plan.lines()), flush=True)
    replaced = _replaced_by_flags(plan.settings, overrides, origin)
    if replaced:
        print(f"  yours: {', '.join(replaced)} (the plan's figures above assumed its own)", flush=True)
    return plan.settings


def _replaced_by_flags(planned: dict, overrides: Mapping, origin: str) -> list[str]:
    """'--train.batch-size 17 for 34', one per setting the user gave that the plan had chosen otherwise:
    flags win over the plan, and the printed plan would otherwise describe a run that does not happen."""
    replaced = []
    for section, chosen in planned.items():
        given = overrides.get(section)
        if not isinstance(given, Mapping):
            continue
        for key, value in given.items():
            if key in chosen and value != chosen[key]:
                replaced.append(f"{setting_name(origin, section, key)} {value} for {chosen[key]}")
    return replaced


def train(
    run: str | Path,
    config: RunConfig | None = None,
    *,
    preset: Literal["tiny", "small", "gpt2", "auto"] | None = None,
    recipe: str | None = None,
    resume: bool | None = None,
    fresh: bool = False,
    model: Mapping[str, Any] | None = None,
    train: Mapping[str, Any] | None = None,
    print_config: bool = False,
    origin: str = "scratchlm.train()",
) -> dict | RunConfig:
    """Train (or continue training) the run's model.

    Args:
        run: a run directory made by `scratchlm prepare`
        config: a whole RunConfig to start from (Python only; default: the run's config.yaml)
        preset: model size and schedule: tiny (~1M params), small (~10M), gpt2 (124M), or auto: the best
            shape for --train.max-minutes on this machine (see `scratchlm plan`)
        recipe: a YAML recipe whose model and train sections apply (flags and keywords override it)
        resume: True: continue from the newest checkpoint, an error if there is none; default: continue
            when there is one
        fresh: start from step 0; the old checkpoints and metrics go to RUN/previous/<time>/
        model: model settings to change, e.g. dict(n_layer=6)
        train: training settings to change, e.g. dict(max_steps=500, lr=1e-3)
        print_config: print the resolved settings as YAML (and return them) instead of training
    """
    from ..pretraining import pretraining_data
    from ..trainer import fit

    if resume and fresh:
        raise UserError("--resume and --fresh: give one of them")
    target = Run.at(run)
    target.refuse_sft_run("train")
    overrides = {"model": model, "train": train}
    cfg = _settings(target, config, preset, recipe, overrides, origin, fresh or resume is False)
    if print_config:
        return print_settings(cfg)
    target.require_data()  # after the settings: a bad flag is named first, whatever the run holds
    if not fresh:
        announce_changes(target, cfg)
    if preset != "auto":  # the plan's printout says it already
        from ..planning import unexportable_note

        for line in unexportable_note(cfg.model):
            print(line.strip())
    return fit(target.root, cfg, pretraining_data, False if fresh else resume, command="train")
