"""`scratchlm sft RUN --from BASE_RUN --input FILE.jsonl`: instruction-tune a base run into a new one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..common import UserError
from ..config import RunConfig
from ..run import Run
from ..settings import announce_changes, as_paths, print_settings, resolve


def _settings(target: Run, config, recipe, train, sft: dict, origin: str) -> RunConfig:
    """The settings `sft` runs with, before its base's sections are added (with_base): the SFT defaults for a
    new run, and the step count or the epochs, whichever the user gave."""
    sft.update(_steps_or_epochs(train, sft, recipe))
    overrides = {"train": train, "sft": sft}
    return resolve(target, "sft", config=config, recipe=recipe, overrides=overrides, origin=origin)


def _sft_section(sft, base, input, val_input) -> dict:
    """The sft settings with the command's own spellings of sft.base, sft.inputs and sft.val_inputs."""
    sft = dict(sft or {})
    for key, value in (
        ("base", base and str(base)),
        ("inputs", as_paths(input)),
        ("val_inputs", as_paths(val_input)),
    ):
        if value:
            sft[key] = value
    return sft


def _asked_train(train, recipe) -> dict:
    """The train settings the user gave: the recipe's train section under the flags or keywords."""
    from ..settings import read_recipe

    given = read_recipe(recipe, ("train", "sft")) if recipe else {}
    return {**given.get("train", {}), **(train or {})}


def _steps_or_epochs(train, sft: dict, recipe) -> dict:
    """An explicit step count or time budget is obeyed: given without epochs, it sets sft.epochs to 0 (epochs
    would set the steps otherwise, and 3 epochs of a small set end a 4-minute budget after seconds); steps
    and epochs at once are ambiguous."""
    from ..settings import read_recipe

    given = read_recipe(recipe, ("train", "sft")) if recipe else {}
    asked = _asked_train(train, recipe)
    epochs = sft.get("epochs", given.get("sft", {}).get("epochs"))
    if "max_steps" in asked and epochs:
        raise UserError("--train.max-steps and --sft.epochs: give one of them (epochs sets the steps)")
    budget = "max_steps" in asked or asked.get("max_minutes", 0) > 0
    return {"epochs": 0.0} if budget and epochs is None else {}


def with_base(cfg: RunConfig, scale_lr: bool = False) -> RunConfig:
    """A fine-tuned run keeps its base's model, tokenizer and data settings and starts from its weights;
    scale_lr (a new run, no LR given): the default peak LR for the base's width (config.sft_lr)."""
    from ..config import sft_lr
    from ..finetuning import base_sections

    sections = base_sections(Run.at(cfg.sft.base))
    train = {"init_from": cfg.sft.base}
    if scale_lr:
        train["lr"] = sft_lr(sections["model"]["n_embd"])
    return cfg.replace(**sections, train=train)


def sft(
    run: str | Path,
    config: RunConfig | None = None,
    *,
    base: str | None = None,
    input: Sequence[str] | None = None,
    val_input: Sequence[str] | None = None,
    recipe: str | None = None,
    resume: bool | None = None,
    fresh: bool = False,
    train: Mapping[str, Any] | None = None,
    sft: Mapping[str, Any] | None = None,
    print_config: bool = False,
    origin: str = "scratchlm.sft()",
) -> dict | RunConfig:
    """Instruction-tune a pretrained run on conversations (JSONL) into a new run RUN: a copy of the base's
    tokenizer, its best weights as the start, the loss on the assistant replies only.

    Args:
        run: the fine-tuned run's directory (new, or one to continue)
        config: a whole RunConfig to start from (Python only)
        base: the pretrained run (--from BASE_RUN)
        input: conversations: messages, Alpaca, prompt/completion or mapped fields; repeatable; hf:NAME
            (default: the bundled Self-Instruct seed tasks)
        val_input: validation conversations; repeatable
        recipe: a YAML recipe whose train and sft sections apply (flags and keywords override it)
        resume: True: continue from the newest checkpoint, an error if there is none; default: continue
            when there is one
        fresh: start from step 0; the old checkpoints and metrics go to RUN/previous/<time>/
        train: training settings to change, e.g. dict(max_steps=200)
        sft: SFT settings to change, e.g. dict(epochs=2)
        print_config: print the resolved settings as YAML (and return them) instead of training
    """
    from ..finetuning import check_target, copy_tokenizer, sft_data
    from ..trainer import fit

    if resume and fresh:
        raise UserError("--resume and --fresh: give one of them")
    target = Run.at(run)
    scale_lr = config is None and not target.has_config() and "lr" not in _asked_train(train, recipe)
    cfg = _settings(target, config, recipe, train, _sft_section(sft, base, input, val_input), origin)
    if print_config:  # the base's sections when it has a model to take them from
        return print_settings(
            with_base(cfg, scale_lr) if cfg.sft.base and Run.at(cfg.sft.base).has_checkpoints() else cfg
        )
    check_target(target, cfg.sft.base, fresh or resume is False)
    cfg = with_base(cfg, scale_lr)
    if not fresh:
        announce_changes(target, cfg)
    with target.removed_if_it_fails_untrained():
        copy_tokenizer(Run.at(cfg.sft.base), target)
        return fit(target.root, cfg, sft_data, False if fresh else resume, command="sft")
