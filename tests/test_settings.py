"""One settings resolution: the CLI and the Python API resolve the same settings and write the same
config.yaml; typos are one-line errors naming the file and the key; resolved settings are frozen."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import yaml

import scratchlm
from scratchlm.cli import main
from scratchlm.common import UserError
from scratchlm.config import SFT_TRAIN_DEFAULTS, FrozenError, RunConfig
from scratchlm.run import Run
from scratchlm.settings import resolve


@pytest.fixture
def prepared_pair(trained_run_template, tmp_path):
    """Two copies of one prepared (untrained) run: one for the CLI, one for the Python API."""
    runs = []
    for name in ("cli", "api"):
        dst = tmp_path / name
        untrained = shutil.ignore_patterns("checkpoints", "metrics.csv")
        shutil.copytree(trained_run_template, dst, ignore=untrained)
        runs.append(dst)
    return runs


def saved(run) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


def test_the_same_flags_and_keywords_write_the_same_config(prepared_pair, tmp_path):
    cli_run, api_run = prepared_pair
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model:\n  n_layer: 1\ntrain:\n  lr: 0.004\n")
    argv = ["train", str(cli_run), "--preset", "tiny", "--config", str(recipe)]
    assert main([*argv, "--model.n-embd", "32", "--train.max-steps", "3", "--train.eval-interval", "3"]) == 0
    scratchlm.train(
        api_run,
        preset="tiny",
        recipe=str(recipe),
        model=dict(n_embd=32),
        train=dict(max_steps=3, eval_interval=3),
    )
    assert saved(cli_run) == saved(api_run)
    cfg = saved(api_run)
    assert cfg["model"]["n_layer"] == 1 and cfg["model"]["n_embd"] == 32 and cfg["train"]["lr"] == 0.004


def test_prepare_from_python_and_the_cli_agree(tiny_corpus, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["prepare", str(a), "--input", str(tiny_corpus), "--tokenizer.vocab-size", "500"]) == 0
    scratchlm.prepare(b, input=[str(tiny_corpus)], tokenizer=dict(vocab_size=500))
    assert saved(a) == saved(b) and saved(a)["model"]["vocab_size"] == 500


@pytest.mark.parametrize(
    ("section", "typo", "near"),
    [("train", "max_stepz", "max_steps"), ("model", "n_layr", "n_layer")],
)
def test_a_typo_in_a_runs_config_names_the_file_and_key(trained_run, capsys, section, typo, near):
    path = trained_run / "config.yaml"
    cfg = saved(trained_run)
    cfg[section][typo] = 3
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(trained_run)]) == 2
    err = capsys.readouterr().err
    assert err == f"scratchlm: error: {path}: unknown key '{section}.{typo}' (did you mean '{near}'?)\n"


def test_a_typo_in_python_keywords_is_refused(trained_run):
    with pytest.raises(UserError, match=r"unknown key 'train.max_stepz' \(did you mean 'max_steps'\?\)"):
        scratchlm.train(trained_run, train=dict(max_stepz=3))
    with pytest.raises(UserError, match="lr -1: must be a number > 0"):
        scratchlm.train(trained_run, train=dict(lr=-1))


def test_from_dict_refuses_unknown_keys():
    with pytest.raises(UserError, match="x.yaml: unknown key 'train.max_stepz'"):
        RunConfig.from_dict({"train": {"max_stepz": 3}}, "x.yaml")
    with pytest.raises(UserError, match="unknown section 'modle'"):
        RunConfig.from_dict({"modle": {}})


def test_resolved_settings_are_frozen_and_presets_are_checked(trained_run):
    cfg = resolve(trained_run, "train", preset="small")
    assert cfg.model.n_embd == 384
    with pytest.raises(FrozenError):
        cfg.train.lr = 1.0
    with pytest.raises(FrozenError):
        cfg.train = dataclasses.replace(cfg.train)
    with pytest.raises(UserError, match="--preset huge: use one of"):
        resolve(trained_run, "train", preset="huge")


def test_a_changed_setting_on_resume_is_announced(trained_run, capsys):
    lr = saved(trained_run)["train"]["lr"]
    steps = saved(trained_run)["train"]["max_steps"]
    assert main(["train", str(trained_run), "--train.lr", "0.001", "--train.max-steps", str(steps + 1)]) == 0
    out = capsys.readouterr().out
    assert f"train.lr {lr} → 0.001 for this run" in out
    assert f"train.max_steps {steps} → {steps + 1} for this run" in out


def test_python_sft_gets_the_sft_defaults(trained_run, tmp_path, capsys):
    cfg = scratchlm.sft(tmp_path / "chat", base=str(trained_run), print_config=True)
    assert yaml.safe_load(capsys.readouterr().out) == cfg.to_dict()
    for key, value in SFT_TRAIN_DEFAULTS.items():
        assert getattr(cfg.train, key) == value, key
    assert cfg.model == Run.at(trained_run).load_config().model  # the base's model, whoever calls


def test_print_config_writes_nothing(tmp_path, tiny_corpus, capsys):
    run = tmp_path / "run"
    assert main(["prepare", str(run), "--input", str(tiny_corpus), "--print_config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["inputs"] == [str(tiny_corpus)]
    assert not run.exists()
