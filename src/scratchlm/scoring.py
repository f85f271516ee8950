"""Scoring a model on tokens: loss per token, perplexity and bits per byte.

Bits per byte = total nats / (ln 2 x UTF-8 bytes of the scored tokens): independent of the tokenizer, so
a character model and a 32k-vocabulary model can be compared. Perplexity is per token, so it compares only
runs that share a tokenizer. Training (its validation), SFT and `scratchlm eval` all score through here.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .common import UserError
from .data.loader import sequential_windows
from .data.shards import TokenShards


def _unscored(y: torch.Tensor, skip_id: int | None) -> torch.Tensor:
    """Targets with skip_id (<|bos|>, which always follows <|eos|>) set to -1: they are layout, not text,
    and scoring them would pad the token count with free predictions."""
    return y if skip_id is None else y.masked_fill(y == skip_id, -1)


def _summary(total_nats: float, total_tokens: int, total_bytes: int | None) -> dict:
    loss = total_nats / max(1, total_tokens)
    out = {"loss": loss, "perplexity": math.exp(min(loss, 50)), "tokens": total_tokens}
    if total_bytes is not None:
        out["bytes"] = total_bytes
        out["bits_per_byte"] = total_nats / math.log(2) / max(1, total_bytes)
    return out


def evaluate_loss(
    model,
    shards: TokenShards,
    batch_size: int,
    device,
    max_batches: int | None = None,
    token_bytes: np.ndarray | None = None,
    skip_id: int | None = None,
) -> dict:
    """Mean next-token loss over non-overlapping windows of the split (all of it unless max_batches).

    The quick estimate used during training; `score_tokens` is the full sliding-window evaluation.
    """
    windows = sequential_windows(shards, batch_size, model.config.block_size, max_batches)
    return batches_loss(model, ((x, _unscored(y, skip_id)) for x, y in windows), device, token_bytes)


@torch.no_grad()
def batches_loss(model, batches, device, token_bytes: np.ndarray | None = None) -> dict:
    """Loss per scored token (targets >= 0) over (x, y) batches; bits per byte when token_bytes is given."""
    was_training = model.training
    model.eval()
    total_nats, total_tokens, total_bytes = 0.0, 0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits, _ = model(x)
        nats = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1, reduction="sum"
        )
        total_nats += nats.item()
        scored = y[y >= 0]
        total_tokens += scored.numel()
        if token_bytes is not None:
            total_bytes += int(token_bytes[scored.cpu().numpy()].sum())
    model.train(was_training)
    return _summary(total_nats, total_tokens, total_bytes if token_bytes is not None else None)


def sliding_windows(n_tokens: int, block: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows (start, end, first) over a sequence of n_tokens: the model reads tokens[start:end-1] and
    its predictions of positions first..end-1 are scored. Every position but the first (which nothing
    predicts) is scored exactly once: the first window scores a whole context, each later one the next
    `stride` positions, each with at least block - stride + 1 tokens of context."""
    if not 0 < stride <= block:
        raise UserError(f"--stride {stride}: must be between 1 and the context length {block}")
    windows, first = [], 1
    while first < n_tokens:
        last = min(first + (block if first == 1 else stride) - 1, n_tokens - 1)
        start = max(0, last - block)
        windows.append((start, last + 1, first))
        first = last + 1
    return windows


@torch.inference_mode()
def score_tokens(
    model,
    tokens: np.ndarray,
    stride: int,
    batch_size: int,
    token_bytes: np.ndarray | None = None,
    skip_id: int | None = None,
) -> dict:
    """Loss, perplexity (and bits per byte given the bytes of each token) of a token sequence, scored
    with a sliding window of the model's context moved by `stride` tokens; targets equal to skip_id
    are context only."""
    model.eval()
    device = model.transformer.wte.weight.device
    block = model.config.block_size
    windows = sliding_windows(len(tokens), block, stride)
    total_nats, total_tokens, total_bytes = 0.0, 0, 0
    for i in range(0, len(windows), batch_size):
        group = windows[i : i + batch_size]
        T = max(end - start for start, end, _ in group) - 1
        x = torch.zeros(len(group), T, dtype=torch.long)
        y = torch.full((len(group), T), -1, dtype=torch.long)
        for row, (start, end, first) in enumerate(group):
            w = torch.from_numpy(np.asarray(tokens[start:end], dtype=np.int64))
            x[row, : len(w) - 1] = w[:-1]
            y[row, first - start - 1 : len(w) - 1] = w[first - start :]  # earlier targets are context only
        y = _unscored(y, skip_id)
        logits, _ = model(x.to(device))
        total_nats += torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)),
            y.to(device).reshape(-1),
            ignore_index=-1,
            reduction="sum",
        ).item()
        scored = y[y >= 0].numpy()
        total_tokens += scored.size
        if token_bytes is not None:
            total_bytes += int(token_bytes[scored].sum())
    return _summary(total_nats, total_tokens, total_bytes if token_bytes is not None else None)
