"""The command line: help for every command, settings merging, one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scratchlm.cli import main

COMMANDS = ["prepare", "train", "eval", "sample", "demo"]


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "scratchlm", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help_with_examples(cmd):
    out = run_cli(cmd, "--help")
    assert out.returncode == 0
    assert "examples:" in out.stdout and f"scratchlm {cmd}" in out.stdout


def test_top_level_help_lists_commands():
    out = run_cli("--help")
    assert out.returncode == 0
    for cmd in COMMANDS:
        assert cmd in out.stdout


@pytest.mark.parametrize("make_input", ["missing", "empty", "empty_dir", "binary"])
def test_bad_input_is_one_line_exit_2(tmp_path, make_input):
    path = tmp_path / "input.txt"
    if make_input == "empty":
        path.write_text("")
    elif make_input == "empty_dir":
        path = tmp_path / "folder"
        path.mkdir()
    elif make_input == "binary":
        path.write_bytes(b"\x00\x01\x02" * 100)
    out = run_cli("prepare", str(tmp_path / "run"), "--input", str(path))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in out.stderr


def test_invalid_utf8_names_the_byte_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    out = run_cli("prepare", str(tmp_path / "run"), "--input", str(path))
    assert out.returncode == 2 and "byte offset 3" in out.stderr


def test_train_without_prepare_says_what_to_do(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nothing")]) == 2
    assert "scratchlm prepare" in capsys.readouterr().err


def test_settings_merge_preset_file_and_flags(trained_run, tmp_path, monkeypatch):
    import scratchlm.train as train_mod

    seen = {}
    monkeypatch.setattr(train_mod, "train", lambda run, cfg, resume: seen.setdefault("cfg", cfg))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"n_layer": 3}, "train": {"lr": 0.005}}))
    argv = ["train", str(trained_run), "--preset", "small", "--config", str(recipe), "--train.max-steps", "7"]
    assert main(argv) == 0
    cfg = seen["cfg"]
    assert cfg.model.n_embd == 384  # from the preset
    assert cfg.model.n_layer == 3 and cfg.train.lr == 0.005  # the file overrides the preset
    assert cfg.train.max_steps == 7  # a flag overrides the file; dashes work like underscores
    assert cfg.data.inputs == yaml.safe_load((trained_run / "config.yaml").read_text())["data"]["inputs"]


def test_saved_run_config_is_the_default(trained_run, monkeypatch):
    import scratchlm.train as train_mod

    seen = {}
    monkeypatch.setattr(train_mod, "train", lambda run, cfg, resume: seen.setdefault("cfg", cfg))
    assert main(["train", str(trained_run)]) == 0
    assert seen["cfg"].model.n_layer == 2 and seen["cfg"].train.max_steps == 60


def test_bad_model_shape_is_a_user_error(trained_run, capsys):
    assert main(["train", str(trained_run), "--model.n-head", "3", "--fresh"]) == 2
    assert "--model.n_embd 64 must be divisible by --model.n_head 3" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "flag", "message"),
    [
        ("train", "--train.device", "--train.device tpu: not a device; use auto, cpu, cuda, cuda:N or mps"),
        ("eval", "--device", "--device tpu: not a device; use auto, cpu, cuda, cuda:N or mps"),
    ],
)
def test_unknown_device_is_a_user_error(trained_run, capsys, command, flag, message):
    assert main([command, str(trained_run), flag, "tpu"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_sample_cli_is_deterministic(trained_run):
    a = run_cli("sample", str(trained_run), "The", "--max-new-tokens", "20", "--seed", "3")
    b = run_cli("sample", str(trained_run), "The", "--max-new-tokens", "20", "--seed", "3")
    assert a.returncode == 0 and a.stdout == b.stdout and a.stdout.startswith("The")


def test_a_recipe_holds_every_section_and_each_command_takes_its_own(trained_run, tmp_path, monkeypatch):
    import scratchlm.train as train_mod

    seen = {}
    monkeypatch.setattr(train_mod, "train", lambda run, cfg, resume: seen.setdefault("cfg", cfg))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"val_fraction": 0.2}, "model": {"n_layer": 5}}))
    assert main(["train", str(trained_run), f"--config={recipe}"]) == 0
    assert seen["cfg"].model.n_layer == 5 and seen["cfg"].data.val_fraction != 0.2


@pytest.mark.parametrize(
    ("content", "message"),
    [("modle:\n  n_layer: 3\n", "unknown section 'modle'"), ("model: [1\n", "not valid YAML")],
)
def test_bad_recipe_is_one_line_exit_2(trained_run, tmp_path, capsys, content, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(content)
    assert main(["train", str(trained_run), "--config", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(recipe) in err and len(err.splitlines()) == 1


def test_recipe_values_are_type_checked(trained_run, tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("train:\n  max_steps: lots\n")
    out = run_cli("train", str(trained_run), "--config", str(recipe))
    assert out.returncode == 2 and "max_steps" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("recipe", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")))
def test_shipped_recipes_parse(recipe, trained_run, monkeypatch):
    import scratchlm.train as train_mod

    monkeypatch.setattr(train_mod, "train", lambda run, cfg, resume: None)
    assert main(["train", str(trained_run), "--config", str(recipe)]) == 0


def test_llama_with_a_gelu_choice_is_a_user_error(trained_run, capsys):
    argv = [
        "train",
        str(trained_run),
        "--model.flavour",
        "llama",
        "--model.activation",
        "gelu_tanh",
        "--fresh",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert (
        "--model.activation gelu_tanh applies to the gpt2 flavour only" in err and len(err.splitlines()) == 1
    )
