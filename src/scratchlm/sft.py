"""`scratchlm sft RUN --from BASE_RUN --input FILE.jsonl`: instruction tuning with the shared loop.

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

import numpy as np

from .chat_template import render, stop_ids
from .checkpoint import read_metadata, resolve_weights
from .common import UserError, atomic_write_text, rank0_print
from .config import RunConfig, SampleConfig
from .data.sft import (
    Conversation,
    PackedBatches,
    bundled_sft,
    describe,
    encode_conversations,
    read_conversations,
    sequential_batches,
)
from .evaluate import batches_loss
from .run import Run
from .sample import generate_ids
from .tokenizer import Tokenizer
from .trainer import Session, TrainData, fit

STATS_FILE = "sft_data.json"


def sft(run_dir: str | Path, cfg: RunConfig, resume: bool | None = None) -> dict:
    """Fine-tune cfg.sft.base's model on cfg.sft.inputs into run_dir (resume as in `train`)."""
    run = Run.at(run_dir)
    base = cfg.sft.base
    if not base:
        raise UserError(f"give the pretrained run to start from: scratchlm sft {run.root} --from BASE_RUN")
    base_run = Run.at(base)
    if base_run.root.resolve() == run.root.resolve():
        raise UserError(f"{run.root}: SFT writes a new run beside its base; give another directory for RUN")
    if run.has_config():
        saved = run.load_config().sft.base
        if not saved:
            raise UserError(
                f"{run.root}: a pretraining run; SFT makes a new run from it: scratchlm sft NEW_RUN --from "
                f"{run.root}"
            )
        if Path(saved).resolve() != base_run.root.resolve() and resume is not False:
            raise UserError(
                f"{run.root}: fine-tuned from {saved}, not {base}; add --fresh to start it over from {base}, "
                "or give a new RUN"
            )
    weights = resolve_weights(base_run, "best")
    base_cfg = RunConfig.from_dict(json.loads(read_metadata(weights)["config"]))
    cfg.model, cfg.tokenizer, cfg.data = base_cfg.model, base_cfg.tokenizer, base_cfg.data
    cfg.train.init_from = str(base)
    _copy_tokenizer(base_run, run)
    return fit(run.root, cfg, sft_data, resume, command="sft")


def _copy_tokenizer(base: Run, run: Run) -> None:
    """RUN/tokenizer is BASE's: copied under a temporary name and renamed, so it is whole or absent."""
    want = Tokenizer.load(base.tokenizer_dir).hash
    if run.tokenizer_dir.is_dir():
        if Tokenizer.load(run.tokenizer_dir).hash != want:
            raise UserError(
                f"{run.tokenizer_dir}: not the tokenizer of {base.root}; fine-tune into a new RUN directory"
            )
        return
    tmp = run.root / ".tokenizer.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base.tokenizer_dir, tmp)
    os.replace(tmp, run.tokenizer_dir)


def read_split(s: Session) -> tuple[list[Conversation], list[Conversation]]:
    """The training and validation conversations: val_inputs, or a seeded val_fraction of the inputs."""
    sc = s.cfg.sft
    options = dict(
        shape=sc.shape,
        prompt_field=sc.prompt_field,
        response_field=sc.response_field,
        system_prompt=sc.system_prompt,
    )
    train = read_conversations([_local(p, s) for p in sc.inputs] or [bundled_sft()], **options)
    if sc.val_inputs:
        return train, read_conversations([_local(p, s) for p in sc.val_inputs], **options)
    n_val = round(len(train) * sc.val_fraction)
    if sc.val_fraction > 0 and len(train) >= 2:
        n_val = min(max(1, n_val), len(train) - 1)
    if n_val == 0:
        rank0_print("no validation conversations (--sft.val_fraction 0): validating on the training ones")
        return train, train
    order = np.random.default_rng(s.cfg.train.seed).permutation(len(train))
    held = set(order[:n_val].tolist())
    return [c for i, c in enumerate(train) if i not in held], [train[i] for i in sorted(held)]


def sft_data(s: Session) -> TrainData:
    """Packed conversations for training; loss per reply token and the share of replies that end, for val."""
    tc, sc, tok, block = s.cfg.train, s.cfg.sft, s.tokenizer, s.cfg.model.block_size
    train_convs, val_convs = read_split(s)
    examples = encode_conversations(train_convs, tok, block)
    val_examples = encode_conversations(val_convs, tok, block)
    if not len(examples):
        raise UserError(
            f"no training conversation fits the context of {block} tokens (each reply alone is longer); "
            "give shorter examples or a base model with a longer context"
        )
    rank0_print(describe(examples.stats))
    batches = PackedBatches(examples, s.global_batch, block, tc.seed, pad_id=tok.pad_id)
    per_epoch = batches.rows_per_epoch()
    if sc.epochs > 0:
        tc.max_steps = max(1, math.ceil(sc.epochs * per_epoch / (s.global_batch * s.grad_accum)))
        rank0_print(
            f"{per_epoch} packed rows of {block} tokens per epoch ({100 * batches.fill():.0f}% filled): "
            f"{sc.epochs:g} epochs = {tc.max_steps} steps"
        )
    token_bytes = tok.token_bytes()
    stats = {
        "train": asdict(examples.stats),
        "val": asdict(val_examples.stats),
        "rows_per_epoch": per_epoch,
        "fill": batches.fill(),
        "steps": tc.max_steps,
    }

    def validate(model) -> dict:
        val = sequential_batches(val_examples, s.global_batch, block, tc.eval_batches, tok.pad_id)
        return batches_loss(model, val, s.device, token_bytes)

    prompts = [c.messages[:-1] for c in val_convs[: sc.check_prompts]]

    def replies_that_end(model) -> dict:
        return {"end_rate": end_rate(model, tok, prompts, sc.check_tokens)} if prompts else {}

    def on_start() -> None:
        atomic_write_text(s.run.root / STATS_FILE, json.dumps(stats, indent=2) + "\n")

    return TrainData(batches, validate, pad_id=tok.pad_id, extra_metrics=replies_that_end, on_start=on_start)


def end_rate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int) -> float:
    """Share of greedy replies that end with <|end|> (or <|eos|>) within max_new_tokens."""
    stops, greedy = set(stop_ids(tokenizer)), SampleConfig(temperature=0.0, max_new_tokens=max_new_tokens)
    was_training = model.training
    model.eval()
    ended = 0
    for messages in prompts:
        ids = render(messages, tokenizer, add_generation_prompt=True).ids[-model.config.block_size :]
        ended += sum(1 for _ in generate_ids(model, ids, greedy, stops)) < max_new_tokens
    model.train(was_training)
    return ended / len(prompts)


def _local(spec: str, s: Session) -> str:
    """A file path as given; hf:OWNER/NAME is read from the hub once into RUN/sft_inputs/ as JSONL."""
    if not spec.startswith("hf:"):
        return spec
    name = spec[3:]
    dest = s.run.root / "sft_inputs" / (name.replace("/", "__") + ".jsonl")
    if not dest.is_file():
        try:
            import datasets
        except ImportError:
            raise UserError(f"--input {spec} needs the datasets package: pip install datasets") from None
        try:
            rows = datasets.load_dataset(name, s.cfg.data.hf_config or None, split=s.cfg.data.hf_split)
            lines = "".join(json.dumps(dict(r), ensure_ascii=False, default=str) + "\n" for r in rows)
        except Exception as e:  # no network, no such dataset, no such split: one line naming the input
            first = str(e).splitlines()[0] if str(e) else ""
            raise UserError(f"--input {spec}: cannot load it from the Hugging Face hub ({first})") from None
        atomic_write_text(dest, lines)
    return str(dest)
