"""Loss, perplexity and bits per byte: `scratchlm eval`.

Bits per byte = total nats / (ln 2 x UTF-8 bytes of the scored tokens): independent of the
tokenizer, so a character model and a 32k-vocabulary model can be compared.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load
from .common import atomic_write_text, rank0_print
from .data.corpus import clean, read_text
from .data.loader import sequential_windows
from .data.shards import TokenShards, open_split
from .run import Run


@torch.no_grad()
def evaluate_loss(
    model,
    shards: TokenShards,
    batch_size: int,
    device,
    max_batches: int | None = None,
    token_bytes: np.ndarray | None = None,
) -> dict:
    """Mean next-token loss over non-overlapping windows of the split (all of it unless max_batches)."""
    was_training = model.training
    model.eval()
    total_nats, total_tokens, total_bytes = 0.0, 0, 0
    block = model.config.block_size
    for x, y in sequential_windows(shards, batch_size, block, max_batches):
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
    loss = total_nats / max(1, total_tokens)
    out = {"loss": loss, "perplexity": math.exp(min(loss, 50)), "tokens": total_tokens}
    if token_bytes is not None:
        out["bytes"] = total_bytes
        out["bits_per_byte"] = total_nats / math.log(2) / max(1, total_bytes)
    return out


def evaluate(
    run_dir: str | Path, text: str | None = None, checkpoint: str = "best", batch_size: int = 16
) -> dict:
    """Score the run's val split, or a text file, with the run's checkpoint; write RUN/eval.json."""
    run = Run.at(run_dir)
    lm = load(run.root, checkpoint)
    if text:
        ids = lm.tokenizer.encode(clean(read_text(Path(text)), gutenberg=False))
        shards = TokenShards([np.asarray(ids, dtype=np.int64)])
        source = text
    else:
        shards = open_split(run.data_dir, "val", lm.tokenizer.hash)
        source = "val"
    result = evaluate_loss(lm.model, shards, batch_size, "cpu", token_bytes=lm.tokenizer.token_bytes())
    result = {"source": source, "step": lm.step, **result}
    atomic_write_text(run.eval_path, json.dumps(result, indent=2) + "\n")
    rank0_print(
        f"{source}: loss {result['loss']:.4f}  perplexity {result['perplexity']:.2f}  "
        f"bits/byte {result['bits_per_byte']:.4f}  ({result['tokens']:,} tokens, {result['bytes']:,} bytes, "
        f"step {lm.step})"
    )
    return result
