"""The command line: help for every command, settings merging, one-line errors with exit code 2."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scratchlm.cli import main
from scratchlm.config import RunConfig

from .conftest import ctrl_c_reaches_it

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


def resolved(argv: list[str], capsys) -> RunConfig:
    """The settings a command would run with (--print_config resolves them as the command does)."""
    assert main([*argv, "--print_config"]) == 0
    return RunConfig.from_dict(yaml.safe_load(capsys.readouterr().out))


def test_settings_merge_preset_file_and_flags(trained_run, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"n_layer": 3}, "train": {"lr": 0.005}}))
    argv = ["train", str(trained_run), "--preset", "small", "--config", str(recipe), "--train.max-steps", "7"]
    cfg = resolved(argv, capsys)
    assert cfg.model.n_embd == 384  # from the preset
    assert cfg.model.n_layer == 3 and cfg.train.lr == 0.005  # the file overrides the preset
    assert cfg.train.max_steps == 7  # a flag overrides the file; dashes work like underscores
    assert cfg.data.inputs == yaml.safe_load((trained_run / "config.yaml").read_text())["data"]["inputs"]


def test_saved_run_config_is_the_default(trained_run, capsys):
    cfg = resolved(["train", str(trained_run)], capsys)
    assert cfg.model.n_layer == 2 and cfg.train.max_steps == 60


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


def test_a_recipe_holds_every_section_and_each_command_takes_its_own(trained_run, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"val_fraction": 0.2}, "model": {"n_layer": 5}}))
    cfg = resolved(["train", str(trained_run), f"--config={recipe}"], capsys)
    assert cfg.model.n_layer == 5 and cfg.data.val_fraction != 0.2


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
def test_shipped_recipes_parse(recipe, trained_run, capsys):
    resolved(["train", str(trained_run), "--config", str(recipe)], capsys)


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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "RUN", "--train.lr", "-1"], "--train.lr -1: must be a number > 0"),
        (["train", "RUN", "--train.batch-size", "0"], "--train.batch-size 0: must be an integer >= 1"),
        (["train", "RUN", "--train.grad-accum", "0"], "--train.grad-accum 0: must be an integer >= 1"),
        (["train", "RUN", "--model.dropout", "1.5"], "--model.dropout 1.5: must be a number >= 0 and < 1"),
        (["train", "RUN", "--train.eval_interval", "0"], "--train.eval-interval 0: must be an integer >= 1"),
        (["train", "RUN", "--train.warmup-steps", "-1"], "--train.warmup-steps -1: must be an integer >= 0"),
        (["train", "RUN", "--train.keep-last", "0"], "--train.keep-last 0: must be an integer >= 1"),
        (
            ["prepare", "RUN", "--tokenizer.vocab-size", "0"],
            "--tokenizer.vocab-size 0: must be an integer >= 1",
        ),
        (["sample", "RUN", "x", "--top-p", "0"], "--top-p 0: must be a number > 0 and <= 1"),
        (["sample", "RUN", "x", "--top-p", "2"], "--top-p 2: must be a number > 0 and <= 1"),
        (["sample", "RUN", "x", "--repetition-penalty", "0"], "--repetition-penalty 0: must be a number > 0"),
        (["sample", "RUN", "x", "--temperature", "-1"], "--temperature -1: must be a number >= 0"),
        (["sample", "RUN", "x", "--top-k", "-5"], "--top-k -5: must be an integer >= 0"),
        (["sample", "RUN", "x", "--min-p", "1.5"], "--min-p 1.5: must be a number >= 0 and <= 1"),
        (["sample", "RUN", "x", "--max-new-tokens", "-5"], "--max-new-tokens -5: must be an integer >= 1"),
        (["eval", "RUN", "--stride", "0"], "--stride 0: must be an integer >= 1"),
        (["train", "RUN", "--train.max-steps", "lots"], "--train.max-steps lots: must be an integer"),
        (["train", "RUN", "--model.flavour", "gtp2"], "--model.flavour gtp2: must be one of 'gpt2', 'llama'"),
        (
            ["train", "RUN", "--train.compile", "maybe"],
            "--train.compile maybe: must be true or false or null",
        ),
        (["train", "RUN", "--bogus"], "unrecognized arguments: --bogus (see scratchlm train --help)"),
        (["demo", "RUN", "--minutes", "0"], "--minutes 0: must be a number > 0"),
        (["plan", "RUN", "--minutes", "-1"], "--minutes -1: must be a number > 0"),
        (
            ["train", "RUN", "--train.batch-size", "big"],
            "--train.batch-size big: must be an integer or 'auto'",
        ),
    ],
)
def test_bad_option_values_are_one_line_exit_2(tmp_path, capsys, argv, message):
    # Checked when parsed: RUN does not even need to exist.
    argv = [str(tmp_path / "run") if a == "RUN" else a for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == f"scratchlm: error: {message}\n" and captured.out == ""


def test_a_parse_error_is_one_line_not_the_usage(tmp_path):
    out = run_cli("train", str(tmp_path), "--train.batch-size", "0")
    message = "scratchlm: error: --train.batch-size 0: must be an integer >= 1\n"
    assert out.returncode == 2 and out.stderr == message
    out = run_cli("sample")
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1 and "run" in out.stderr


def test_options_may_come_between_run_and_prompt(trained_run, capsys):
    assert main(["sample", str(trained_run), "--max-new-tokens", "20", "--seed", "3", "Prince"]) == 0
    between = capsys.readouterr().out
    assert main(["sample", str(trained_run), "Prince", "--max-new-tokens", "20", "--seed", "3"]) == 0
    after = capsys.readouterr().out
    assert between == after and between.startswith("Prince") and len(between) > len("Prince\n")


def test_two_prompts_are_one_line_exit_2(trained_run, capsys):
    assert main(["sample", str(trained_run), "Prince", "Andrew"]) == 2
    assert "quote a PROMPT with spaces" in capsys.readouterr().err


def test_unknown_key_in_a_recipe_names_the_file_and_the_key(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model:\n  n_layr: 3\n")
    for command in ("train", "prepare"):  # a typo in any section is caught, whichever command reads it
        assert main([command, str(tmp_path / "run"), "--config", str(recipe)]) == 2
        err = capsys.readouterr().err
        assert err == f"scratchlm: error: {recipe}: unknown key 'model.n_layr' (did you mean 'n_layer'?)\n"


def test_a_recipe_value_out_of_range_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  batch_size: 0\n")
    assert main(["train", str(tmp_path / "run"), "--config", str(recipe)]) == 2
    message = f"scratchlm: error: {recipe}: train.batch_size 0: must be an integer >= 1\n"
    assert capsys.readouterr().err == message  # the file and the key that hold the value


def test_flags_override_a_recipe_wherever_they_stand(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model:\n  n_layer: 3\n")
    run = str(tmp_path / "run")
    first = resolved(["train", run, "--model.n-layer", "5", "--config", str(recipe)], capsys)
    last = resolved(["train", run, "--config", str(recipe), "--model.n-layer", "5"], capsys)
    assert first.model.n_layer == last.model.n_layer == 5


def test_a_bad_value_in_a_runs_saved_config_names_the_file(trained_run, capsys):
    path = trained_run / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    saved["train"]["lr"] = -1
    path.write_text(yaml.safe_dump(saved))
    assert main(["train", str(trained_run)]) == 2
    assert capsys.readouterr().err == f"scratchlm: error: {path}: train.lr -1: must be a number > 0\n"


@pytest.mark.parametrize("flag", ["--print_config", "--print-config"])
def test_print_config_shows_the_merged_settings(trained_run, tmp_path, monkeypatch, capsys, flag):
    import scratchlm.trainer as trainer

    monkeypatch.setattr(trainer, "fit", lambda *a, **k: pytest.fail("--print_config must not train"))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model:\n  n_layer: 3\n")
    argv = ["train", str(trained_run), "--preset", "small", "--config", str(recipe), "--train.max-steps", "7"]
    assert main([*argv, flag]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["model"]["n_embd"] == 384  # the preset
    assert shown["model"]["n_layer"] == 3 and shown["train"]["max_steps"] == 7  # the recipe, the flag
    assert shown["data"] == yaml.safe_load((trained_run / "config.yaml").read_text())["data"]


def test_prepare_into_a_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("not a run")
    assert main(["prepare", str(path)]) == 2
    assert capsys.readouterr().err == f"scratchlm: error: {path}: is a file, not a run directory\n"


def test_a_failed_write_comes_after_the_result_in_one_line(trained_run, monkeypatch, capsys):
    # What a read-only run does, as root too: creating the temporary file beside the result fails.
    import scratchlm.common as common

    def refuse(*args, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", dir)

    monkeypatch.setattr(common.tempfile, "mkstemp", refuse)
    assert main(["eval", str(trained_run), "--prompts", "[]"]) == 2
    captured = capsys.readouterr()
    assert "perplexity" in captured.out
    assert captured.err == f"scratchlm: error: {trained_run / 'eval.json'}: Permission denied\n"
    assert main(["sample", str(trained_run), "Prince", "--max-new-tokens", "5"]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith("Prince")
    assert captured.err == f"scratchlm: error: {trained_run / 'samples.txt'}: Permission denied\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories anyway")
def test_a_read_only_run_still_shows_eval_and_sample(trained_run):
    for path in [trained_run, *trained_run.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        out = run_cli("eval", str(trained_run), "--prompts", "[]")
        assert out.returncode == 2 and "perplexity" in out.stdout
        assert out.stderr == f"scratchlm: error: {trained_run / 'eval.json'}: Permission denied\n"
        out = run_cli("sample", str(trained_run), "Prince", "--max-new-tokens", "5")
        assert out.returncode == 2 and out.stdout.startswith("Prince")
        assert out.stderr == f"scratchlm: error: {trained_run / 'samples.txt'}: Permission denied\n"
    finally:
        for path in [trained_run, *trained_run.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)


def test_ctrl_c_in_sample_exits_130_without_a_traceback(trained_run):
    argv = ["sample", str(trained_run), "The", "--max-new-tokens", "1000000"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "scratchlm", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=ctrl_c_reaches_it,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)  # generating: the prompt has been printed
        assert ready, "sample printed nothing in 120 s"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err.decode().strip() == "scratchlm: interrupted"


def test_a_second_ctrl_c_in_train_exits_130_without_a_traceback(trained_run, monkeypatch, capsys):
    import scratchlm.trainer as trainer

    def interrupted(*args, **kwargs):  # what train's StopFlag raises on the second Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "fit", interrupted)
    assert main(["train", str(trained_run)]) == 130
    assert capsys.readouterr().err.strip() == "scratchlm: interrupted"


def test_a_list_setting_takes_a_plain_value_and_repeats():
    """`--sft.inputs my.jsonl` is what users type; jsonargparse alone wanted `[my.jsonl]` and said only
    "must be <class 'list'>"."""
    from scratchlm.cli import parse

    argv = ["sft", "runs/x", "--from", "runs/b", "--sft.inputs", "a.jsonl", "--sft.val-inputs=b.jsonl"]
    _, given = parse(argv)
    assert given["sft"] == {"inputs": ["a.jsonl"], "val_inputs": ["b.jsonl"]}
    _, given = parse(["prepare", "runs/x", "--data.inputs", "a.txt", "--data.inputs", "b.txt"])
    assert given["data"]["inputs"] == ["a.txt", "b.txt"]
    _, given = parse(["sft", "runs/x", "--from", "runs/b", "--sft.inputs", "[a.jsonl, c.jsonl]"])
    assert given["sft"]["inputs"] == ["a.jsonl", "c.jsonl"]
    # The flat lists of sample, chat, serve and eval too; eval's --tasks also takes a comma string as it is.
    assert parse(["chat", "runs/x", "--stop", "END", "--stop=###"])[1]["stop"] == ["END", "###"]
    assert parse(["eval", "runs/x", "--prompts", "The"])[1]["prompts"] == ["The"]
    assert parse(["eval", "runs/x", "--tasks", "hellaswag,arc_easy"])[1]["tasks"] == "hellaswag,arc_easy"
