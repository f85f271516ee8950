"""The settings dataclasses: every range is checked whenever one is built, whatever builds it."""

from __future__ import annotations

import dataclasses

import pytest

from scratchlm.config import PRESETS, EvalConfig, RunConfig, SampleConfig, SettingError, TrainConfig


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SampleConfig(top_p=0), "top_p 0: must be a number > 0 and <= 1"),
        (lambda: SampleConfig(temperature=float("nan")), "temperature nan: must be a number >= 0"),
        (lambda: TrainConfig(batch_size=2.5), "batch_size 2.5: must be an integer >= 1"),
        (lambda: TrainConfig(grad_accum=True), "grad_accum True: must be an integer >= 1"),
        (lambda: EvalConfig(stride=0), "stride 0: must be an integer >= 1"),
        (
            lambda: RunConfig.from_dict({"model": {"dropout": 1}}),
            "model.dropout 1: must be a number >= 0 and < 1",
        ),
    ],
)
def test_out_of_range_settings_are_refused(make, message):
    with pytest.raises(SettingError) as e:
        make()
    assert str(e.value) == message


def test_defaults_presets_and_edges_are_allowed():
    RunConfig()
    EvalConfig(stride=None)
    SampleConfig(temperature=0, top_k=0, top_p=1, min_p=0)
    for preset in PRESETS.values():
        RunConfig.from_dict(preset)
    assert dataclasses.replace(TrainConfig(), lr=1).lr == 1  # an int where a float goes
