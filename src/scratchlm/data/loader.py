"""Batches of (B, T) token windows from memory-mapped shards, with a state for exact resume."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import torch

from ..common import UserError
from .shards import TokenShards


class RandomWindows:
    """Training batches: windows at random offsets, drawn from an RNG whose state is checkpointed.

    Under torchrun every process draws the same global batch and the trainer gives each its rows.
    Windows are drawn with replacement, so there is no epoch or permutation to lose: the RNG state
    alone makes a resumed run draw exactly the batches it would have.
    """

    def __init__(self, shards: TokenShards, batch_size: int, block_size: int, seed: int):
        self.shards, self.batch_size, self.block_size = shards, batch_size, block_size
        sizes = np.array([a.size for a in shards.arrays], dtype=np.int64)
        self.starts = np.clip(sizes - block_size, 0, None)  # window starts that fit in each shard
        if not self.starts.any():
            raise UserError(
                f"the training split has {shards.total} tokens, fewer than one context window of "
                f"{block_size + 1}; add text or lower --model.block_size"
            )
        self.weights = self.starts / self.starts.sum()
        self.rng = np.random.default_rng(seed)
        self.batches = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        which = self.rng.choice(len(self.shards.arrays), size=self.batch_size, p=self.weights)
        offsets = (self.rng.random(self.batch_size) * self.starts[which]).astype(np.int64)
        pairs = zip(which, offsets, strict=True)
        rows = np.stack([self.shards.arrays[s][o : o + self.block_size + 1] for s, o in pairs])
        rows = torch.from_numpy(rows.astype(np.int64))
        self.batches += 1
        return rows[:, :-1], rows[:, 1:]  # (B, T) inputs and next-token targets

    def state_dict(self) -> dict:
        # JSON keeps the 128-bit PCG64 state loadable with torch.load(weights_only=True).
        return {"rng": json.dumps(self.rng.bit_generator.state), "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = json.loads(state["rng"])
        self.batches = int(state["batches"])


def sequential_windows(
    shards: TokenShards, batch_size: int, block_size: int, max_batches: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Evaluation batches: non-overlapping windows in order, so every token is scored at most once."""
    xs, n = [], 0
    for arr in shards.arrays:
        for start in range(0, arr.size - 1, block_size):
            window = np.asarray(arr[start : start + block_size + 1], dtype=np.int64)
            if window.size < 2:
                continue
            xs.append(window)
            if len(xs) == batch_size:
                yield _pad_batch(xs)
                xs, n = [], n + 1
                if max_batches is not None and n >= max_batches:
                    return
    if xs:
        yield _pad_batch(xs)


def _pad_batch(windows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack windows; a short last window is padded with target -1 (ignored by the loss)."""
    T = max(w.size for w in windows) - 1
    x = torch.zeros(len(windows), T, dtype=torch.long)
    y = torch.full((len(windows), T), -1, dtype=torch.long)
    for i, w in enumerate(windows):
        t = torch.from_numpy(w)
        x[i, : t.numel() - 1] = t[:-1]
        y[i, : t.numel() - 1] = t[1:]
    return x, y
