"""Pretraining data for the shared loop of `trainer.py`: shuffled epochs of windows of the run's token
shards, and the validation split scored in order (what `scratchlm train` fits on)."""

from __future__ import annotations

from .data.loader import EpochWindows
from .data.shards import open_split
from .scoring import evaluate_loss
from .trainer import Session, TrainData


def pretraining_data(s: Session) -> TrainData:
    """Shuffled epochs of train-shard windows; the val split scored in order (bits/byte from token bytes)."""
    tc, tokenizer = s.cfg.train, s.tokenizer
    train_shards = open_split(s.run.data_dir, "train", tokenizer.hash)
    val_shards = open_split(s.run.data_dir, "val", tokenizer.hash)
    # One global stream of windows; each process takes its slice (world-size independent data order).
    loader = EpochWindows(train_shards, s.global_batch, s.cfg.model.block_size, tc.seed)
    token_bytes = tokenizer.token_bytes()

    def validate(model) -> dict:
        # Every rank scores the same global-size batches: the result does not depend on the world size.
        bos = tokenizer.bos_id
        return evaluate_loss(model, val_shards, s.global_batch, s.device, tc.eval_batches, token_bytes, bos)

    return TrainData(loader, validate)
