"""The loader: exact resume from a saved state, sequential eval windows."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from scratchlm.common import UserError
from scratchlm.data.loader import RandomWindows, sequential_windows
from scratchlm.data.shards import TokenShards


def shards(*sizes: int) -> TokenShards:
    """Shards whose tokens are their global positions, so a window tells where it came from."""
    out, start = [], 0
    for n in sizes:
        out.append(np.arange(start, start + n, dtype=np.uint32))
        start += n
    return TokenShards(out)


def test_resumed_loader_draws_exactly_the_batches_of_the_uninterrupted_one():
    data = shards(5000, 3000)
    loader = RandomWindows(data, batch_size=4, block_size=16, seed=3)
    for _ in range(5):
        loader.next_batch()
    buf = io.BytesIO()
    torch.save({"loader": loader.state_dict()}, buf)
    expected = [loader.next_batch() for _ in range(7)]

    buf.seek(0)
    state = torch.load(buf, weights_only=True)["loader"]
    resumed = RandomWindows(data, batch_size=4, block_size=16, seed=3)
    resumed.load_state_dict(state)
    got = [resumed.next_batch() for _ in range(7)]
    for (x0, y0), (x1, y1) in zip(expected, got, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert resumed.batches == loader.batches == 12
    # Without the state, a fresh loader starts over instead.
    fresh = RandomWindows(data, batch_size=4, block_size=16, seed=3).next_batch()
    assert not torch.equal(fresh[0], got[0][0])


def test_targets_are_inputs_shifted_by_one():
    x, y = RandomWindows(shards(1000), batch_size=8, block_size=32, seed=0).next_batch()
    assert x.shape == y.shape == (8, 32) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y[:, -1], x[:, -1] + 1)


def test_too_little_data_for_one_window_is_a_user_error():
    with pytest.raises(UserError, match="fewer than one context window"):
        RandomWindows(shards(60), batch_size=2, block_size=64, seed=0)


def test_sequential_windows_score_every_token_once():
    data = shards(100, 37)
    targets = []
    for _, y in sequential_windows(data, batch_size=3, block_size=10):
        targets += [t for t in y.flatten().tolist() if t >= 0]
    # Each shard's first token is never a target; every other token is, exactly once.
    assert sorted(targets) == [t for t in range(137) if t not in (0, 100)]
    assert len(list(sequential_windows(data, batch_size=3, block_size=10, max_batches=2))) == 2
