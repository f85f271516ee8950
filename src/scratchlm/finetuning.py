"""Instruction tuning with the shared loop: what `scratchlm sft RUN --from BASE_RUN --input FILE.jsonl` runs.

A fine-tuned model is a run of its own: RUN gets a copy of BASE_RUN's tokenizer, starts from BASE_RUN's best
weights (train.init_from) and keeps its own checkpoints, metrics and report, so the base stays untouched
and `scratchlm sft RUN` resumes like `scratchlm train`. The conversations are rendered with the one chat
template (chat_template.py); the loss covers the assistant replies and their <|end|> only.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from .checkpoint import read_metadata, resolve_weights
from .common import UserError, atomic_write_text, plural, rank0_print
from .config import RunConfig
from .data.sft import PackedBatches, describe, encode_conversations, sequential_batches, split_conversations
from .lm import share_that_end
from .run import Run
from .scoring import batches_loss
from .tokenizer import Tokenizer
from .trainer import Session, TrainData

STATS_FILE = "sft_data.json"


def check_target(run: Run, base: str, fresh: bool) -> None:
    """Refuse, in one line, a RUN and BASE that do not make sense together for fine-tuning."""
    saved = run.base if run.has_config() else None
    if saved == "" and run.is_run():
        first = "" if run.has_checkpoints() else f"`scratchlm train {run.root}` first, then "
        raise UserError(
            f"{run.root}: a pretraining run, not an SFT run; SFT makes a new run from it: "
            f"{first}`scratchlm sft NEW_RUN --from {run.root}`"
        )
    if not base:
        raise UserError(f"give the pretrained run to start from: `scratchlm sft {run.root} --from BASE_RUN`")
    base_run = Run.at(base)
    if not base_run.has_config():
        raise UserError(f"--from {base}: not a scratchlm run (no config.yaml); give a trained run directory")
    if base_run.root.resolve() == run.root.resolve():
        raise UserError(f"{run.root}: SFT writes a new run beside its base; give another directory for RUN")
    if saved and Path(saved).resolve() != base_run.root.resolve() and not fresh:
        raise UserError(
            f"{run.root}: fine-tuned from {saved}, not {base}; add --fresh to start it over from {base}, "
            "or give a new RUN"
        )


def base_sections(base_run: Run) -> dict[str, dict]:
    """What a fine-tuned run inherits from its base's best checkpoint: model, tokenizer and data settings."""
    weights = resolve_weights(base_run, "best")
    saved = RunConfig.from_dict(json.loads(read_metadata(weights)["config"]), str(weights))
    return {name: asdict(getattr(saved, name)) for name in ("model", "tokenizer", "data")}


def copy_tokenizer(base: Run, run: Run) -> None:
    """RUN/tokenizer is BASE's: copied under a temporary name and renamed, so it is whole or absent."""
    want = Tokenizer.load(base.tokenizer_dir).hash
    if run.tokenizer_dir.is_dir():
        if Tokenizer.load(run.tokenizer_dir).hash != want:
            raise UserError(
                f"{run.tokenizer_dir}: not the tokenizer of {base.root}; fine-tune into a new RUN directory"
            )
        return
    # Under torchrun every process gets here at once: each copies under its own name, and the first rename
    # wins (renaming a folder onto a full one fails); the others drop their copy.
    tmp = run.root / f".tokenizer.tmp.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base.tokenizer_dir, tmp)
    try:
        os.replace(tmp, run.tokenizer_dir)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not run.tokenizer_dir.is_dir():
            raise


def _steps(s: Session, rows_per_epoch: int) -> int:
    """The run's optimizer steps: from --sft.epochs, or --train.max-steps when epochs is 0 (commands/sft sets
    it to 0 when the user gave a step count and no epochs)."""
    if s.cfg.sft.epochs > 0:
        return max(1, math.ceil(s.cfg.sft.epochs * rows_per_epoch / (s.global_batch * s.grad_accum)))
    return s.cfg.train.max_steps


def sft_data(s: Session) -> TrainData:
    """Packed conversations for training; loss per reply token and the share of replies that end, for val."""
    tc, sc, tok, block = s.cfg.train, s.cfg.sft, s.tokenizer, s.cfg.model.block_size
    train_convs, val_convs = split_conversations(s.cfg, s.run.root)
    examples = encode_conversations(train_convs, tok, block)
    val_examples = encode_conversations(val_convs, tok, block)
    if not len(examples):
        raise UserError(
            f"no training conversation fits the context of {block} tokens (each reply alone is longer); "
            "give shorter examples or a base model with a longer context"
        )
    rank0_print(describe(examples.stats))
    if val_convs is not train_convs and not sc.val_inputs:
        n = len(train_convs) + len(val_convs)
        rank0_print(
            f"validation: {len(val_convs)} of the {plural(n, 'conversation')} held out (--sft.val-fraction "
            f"{sc.val_fraction:g}); --val-input FILE validates on other ones and trains on all of these"
        )
    batches = PackedBatches(examples, s.global_batch, block, tc.seed, pad_id=tok.pad_id)
    per_epoch = batches.rows_per_epoch()
    steps = _steps(s, per_epoch)
    rank0_print(
        f"{per_epoch} packed rows of {block} tokens per epoch ({100 * batches.fill():.0f}% filled): "
        + (
            f"{sc.epochs:g} epochs = {plural(steps, 'step')} (--sft.epochs)"
            if sc.epochs > 0
            else f"{plural(steps, 'step')} = {steps * s.global_batch * s.grad_accum / per_epoch:.1f} epochs "
            + "(--train.max-steps)"
            + (f", or the clock budget (--train.max-minutes {tc.max_minutes:g})" if tc.max_minutes else "")
        )
    )
    token_bytes = tok.token_bytes()
    stats = {
        "train": asdict(examples.stats),
        "val": asdict(val_examples.stats),
        "rows_per_epoch": per_epoch,
        "fill": batches.fill(),
        "steps": steps,
    }

    def validate(model) -> dict:
        val = sequential_batches(val_examples, s.global_batch, block, tc.eval_batches, tok.pad_id)
        return batches_loss(model, val, s.device, token_bytes)

    prompts = [c.messages[:-1] for c in val_convs[: sc.check_prompts]]

    def replies_that_end(model) -> dict:
        return {"end_rate": share_that_end(model, tok, prompts, sc.check_tokens)} if prompts else {}

    def on_start() -> None:
        atomic_write_text(s.run.root / STATS_FILE, json.dumps(stats, indent=2) + "\n")

    return TrainData(
        batches,
        validate,
        pad_id=tok.pad_id,
        extra_metrics=replies_that_end,
        on_start=on_start,
        max_steps=steps,
        target_weights=end_weights(s.cfg.model.vocab_size, tok, sc.end_weight),
        selection=most_replies_that_end if prompts else None,
    )


def most_replies_that_end(val_loss: float, extra: dict) -> float:
    """The best checkpoint of an SFT run: the one whose greedy replies end most often, then the lowest val
    loss. On the seed tasks the val loss of a small model is lowest a few epochs in and rises after, while
    the share of replies that end keeps rising (4x128 base: 16/32 at the loss's best, 32/32 at the end;
    docs/benchmarks.md, "Replies that end")."""
    return 100.0 * (1.0 - extra.get("end_rate", 0.0)) + val_loss


def end_weights(vocab_size: int, tok: Tokenizer, end_weight: float) -> torch.Tensor | None:
    """Loss weights by target id for --sft.end-weight: <|end|> weighs end_weight, every other token 1."""
    if end_weight == 1.0:
        return None
    weights = torch.ones(vocab_size)
    weights[tok.special_ids["<|end|>"]] = end_weight
    return weights
