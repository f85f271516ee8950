"""`scratchlm train`: pretraining on the run's token shards, with the shared loop of `trainer.py`."""

from __future__ import annotations

from pathlib import Path

from .config import RunConfig
from .data.loader import RandomWindows
from .data.shards import open_split
from .run import Run
from .scoring import evaluate_loss
from .trainer import Session, TrainData, fit


def train(run_dir: str | Path, cfg: RunConfig, resume: bool | None = None) -> dict:
    """Pretrain the run's model on RUN/data.

    resume: None continues from the newest checkpoint if there is one; True requires one; False starts over.
    The process-wide torch settings that training changes (threads, deterministic kernels, TF32) are put
    back afterwards, so a notebook or script that calls train() keeps its own.
    """
    Run.at(run_dir).require_data()
    return fit(run_dir, cfg, pretraining_data, resume, command="train")


def pretraining_data(s: Session) -> TrainData:
    """Random windows of the train shards; the val split scored in order (bits per byte from token bytes)."""
    tc, tokenizer = s.cfg.train, s.tokenizer
    train_shards = open_split(s.run.data_dir, "train", tokenizer.hash)
    val_shards = open_split(s.run.data_dir, "val", tokenizer.hash)
    # One global stream of windows; each process takes its slice (world-size independent data order).
    loader = RandomWindows(train_shards, s.global_batch, s.cfg.model.block_size, tc.seed)
    token_bytes = tokenizer.token_bytes()

    def validate(model) -> dict:
        # Every rank scores the same global-size batches: the result does not depend on the world size.
        bos = tokenizer.bos_id
        return evaluate_loss(model, val_shards, s.global_batch, s.device, tc.eval_batches, token_bytes, bos)

    return TrainData(loader, validate)
