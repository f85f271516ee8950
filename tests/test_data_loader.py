"""The loader: epochs that see every window once, exact resume from a saved state, sequential eval windows."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from scratchlm.common import UserError
from scratchlm.data.loader import EpochWindows, sequential_windows
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
    loader = EpochWindows(data, batch_size=4, block_size=16, seed=3)
    for _ in range(5):
        loader.next_batch()
    buf = io.BytesIO()
    torch.save({"loader": loader.state_dict()}, buf)
    expected = [loader.next_batch() for _ in range(7)]

    buf.seek(0)
    state = torch.load(buf, weights_only=True)["loader"]
    resumed = EpochWindows(data, batch_size=4, block_size=16, seed=3)
    resumed.load_state_dict(state)
    got = [resumed.next_batch() for _ in range(7)]
    for (x0, y0), (x1, y1) in zip(expected, got, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert resumed.batches == loader.batches == 12
    # Without the state, a fresh loader starts over instead.
    fresh = EpochWindows(data, batch_size=4, block_size=16, seed=3).next_batch()
    assert not torch.equal(fresh[0], got[0][0])


def window_starts(x: torch.Tensor) -> list[int]:
    return x[:, 0].tolist()  # a window's first token is its global position (see shards())


def test_each_epoch_sees_every_window_once_and_moves_the_window_edges():
    data, T = shards(1000, 517), 16
    loader = EpochWindows(data, batch_size=7, block_size=T, seed=1)
    epochs: dict[int, list[int]] = {}
    while loader.epoch < 4:
        # A batch that crosses into the next epoch splits at the epoch's end.
        epoch, split = loader.epoch, min(7, int(loader.bounds[-1]) - loader.cursor)
        x, _ = loader.next_batch()
        starts = window_starts(x)
        epochs.setdefault(epoch, []).extend(starts[:split])
        if split < 7:
            epochs.setdefault(epoch + 1, []).extend(starts[split:])
    phases = set()
    for epoch in range(3):
        starts = sorted(epochs[epoch])
        phase = starts[0]
        phases.add(phase)
        # Back-to-back windows from the phase, in each shard, none missing, none twice.
        expected = list(range(phase, 1000 - T, T)) + list(range(1000 + phase, 1517 - T, T))
        assert starts == expected
        assert epochs[epoch] != starts  # shuffled, not in order
    assert len(phases) > 1


def test_resume_across_an_epoch_boundary_equals_the_unbroken_run():
    data = shards(300, 250)
    unbroken = EpochWindows(data, batch_size=5, block_size=16, seed=4)
    expected = [unbroken.next_batch()[0] for _ in range(20)]  # ~3 epochs of ~32 windows
    assert unbroken.epoch >= 2
    for stop in (3, 6, 7, 13):
        first = EpochWindows(data, batch_size=5, block_size=16, seed=4)
        for _ in range(stop):
            first.next_batch()
        state = first.state_dict()
        resumed = EpochWindows(data, batch_size=5, block_size=16, seed=4)
        resumed.load_state_dict(state)
        got = [resumed.next_batch()[0] for _ in range(20 - stop)]
        assert all(torch.equal(a, b) for a, b in zip(expected[stop:], got, strict=True))


def test_a_checkpoint_from_before_epochs_resumes_at_its_count_of_windows():
    data = shards(3000)
    old_state = {"rng": "{}", "batches": 9}  # what the loader with replacement saved
    resumed = EpochWindows(data, batch_size=4, block_size=16, seed=2)
    resumed.load_state_dict(old_state)
    unbroken = EpochWindows(data, batch_size=4, block_size=16, seed=2)
    for _ in range(9):
        unbroken.next_batch()
    assert torch.equal(resumed.next_batch()[0], unbroken.next_batch()[0])
    assert resumed.batches == unbroken.batches == 10


def test_targets_are_inputs_shifted_by_one():
    x, y = EpochWindows(shards(1000), batch_size=8, block_size=32, seed=0).next_batch()
    assert x.shape == y.shape == (8, 32) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y[:, -1], x[:, -1] + 1)


def test_too_little_data_for_one_window_is_a_user_error():
    with pytest.raises(UserError, match="fewer than one context window"):
        EpochWindows(shards(60), batch_size=2, block_size=64, seed=0)


def test_sequential_windows_score_every_token_once():
    data = shards(100, 37)
    targets = []
    for _, y in sequential_windows(data, batch_size=3, block_size=10):
        targets += [t for t in y.flatten().tolist() if t >= 0]
    # Each shard's first token is never a target; every other token is, exactly once.
    assert sorted(targets) == [t for t in range(137) if t not in (0, 100)]
    assert len(list(sequential_windows(data, batch_size=3, block_size=10, max_batches=2))) == 2
