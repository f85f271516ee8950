"""Batches of (B, T) token windows from memory-mapped shards, with a state for exact resume."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..common import UserError
from .shards import TokenShards


class EpochWindows:
    """Training batches: every window of the split once per epoch, in a shuffled order.

    Each epoch cuts the shards into back-to-back windows starting at a random phase (so window
    edges move from one epoch to the next) and visits them in a random permutation. Drawn with
    replacement instead, an epoch's worth of windows leaves ~37% of the text unseen and shows some twice:
    on the demo's book, 450 steps of 32 rows of 128 (2.2 epochs) scored 1.675 and 1.673 bits/byte against
    1.704 and 1.696 with replacement (two seeds; docs/benchmarks.md, "The demo's 3.5 minutes").

    Position in the stream is only the count of windows consumed; the seed and the epoch number
    re-create any epoch's phase and order, so a resumed run draws exactly the batches it would
    have. Under torchrun every process draws the same global batch and the trainer gives each its rows.
    """

    def __init__(self, shards: TokenShards, batch_size: int, block_size: int, seed: int):
        self.shards, self.batch_size, self.block_size, self.seed = shards, batch_size, block_size, seed
        self.sizes = np.array([a.size for a in shards.arrays], dtype=np.int64)
        # The largest phase that still leaves a window in the longest shard.
        self.max_phase = int(self.sizes.max(initial=0)) - block_size - 1
        if self.max_phase < 0:
            raise UserError(
                f"the training split has {shards.total} tokens, fewer than one context window of "
                f"{block_size + 1}; add text or lower --model.block_size"
            )
        self.batches = self.windows = 0
        self._seek(0)

    def _epoch_plan(self, epoch: int) -> tuple[int, np.ndarray, np.random.Generator]:
        """This epoch's phase, its windows per shard, and the generator that then shuffles them."""
        rng = np.random.default_rng([self.seed, epoch])
        phase = int(rng.integers(min(self.block_size, self.max_phase + 1)))
        # A window starting at s needs tokens s..s+T: starts phase, phase+T, ... up to size-T-1.
        room = self.sizes - self.block_size - 1 - phase
        return phase, np.where(room >= 0, room // self.block_size + 1, 0), rng

    def _begin_epoch(self, epoch: int) -> None:
        self.phase, counts, rng = self._epoch_plan(epoch)
        self.epoch, self.cursor, self.bounds = epoch, 0, np.cumsum(counts)
        self.order = rng.permutation(int(self.bounds[-1]))

    def _seek(self, windows: int) -> None:
        """Position the stream after `windows` windows: skip whole epochs by their counts (no shuffles),
        then build the order of the one it is in."""
        epoch = 0
        while windows >= (in_epoch := int(self._epoch_plan(epoch)[1].sum())):
            windows -= in_epoch
            epoch += 1
        self._begin_epoch(epoch)
        self.cursor = windows

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        while len(rows) < self.batch_size:
            if self.cursor == self.order.size:
                self._begin_epoch(self.epoch + 1)
            index = int(self.order[self.cursor])
            shard = int(np.searchsorted(self.bounds, index, side="right"))
            first = index - (int(self.bounds[shard - 1]) if shard else 0)
            start = self.phase + first * self.block_size
            rows.append(self.shards.arrays[shard][start : start + self.block_size + 1])
            self.cursor += 1
            self.windows += 1
        batch = torch.from_numpy(np.stack(rows).astype(np.int64))
        self.batches += 1
        return batch[:, :-1], batch[:, 1:]  # (B, T) inputs and next-token targets

    def state_dict(self) -> dict:
        # "epoch" is for a reader of the checkpoint; resume needs only the count of windows.
        return {"batches": self.batches, "windows": self.windows, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.batches = int(state["batches"])
        # Checkpoints from before epochs hold an RNG state instead: continue at the same count of
        # windows in the epoch stream (the run sees new windows, not a replay of its old draws).
        self.windows = int(state.get("windows", self.batches * self.batch_size))
        self._seek(self.windows)


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
