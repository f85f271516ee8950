"""The mistakes a new user makes between the stages: each ends in one line that says what to do, and
nothing made earlier is lost."""

from __future__ import annotations

import shutil

import pytest
import yaml

import scratchlm
from scratchlm.cli import main
from scratchlm.common import UserError


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_an_empty_input_is_not_the_current_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not meant to be trained on\n" * 200)
    assert main(["prepare", str(tmp_path / "run"), "--input", ""]) == 2
    assert "an empty path" in one_error_line(capsys)
    assert not (tmp_path / "run" / "data").exists()
    with pytest.raises(UserError, match="the text is empty"):
        scratchlm.train_text("", tmp_path / "nb")


@pytest.fixture
def sft_run(trained_run, tmp_path):
    """A fine-tuned run made the way a user makes one (3 steps, the bundled tasks)."""
    run = tmp_path / "chat"
    argv = ["sft", str(run), "--from", str(trained_run), "--train.max-steps", "3"]
    assert (
        main([*argv, "--train.eval-interval", "3", "--train.eval-batches", "1", "--sft.check-prompts", "1"])
        == 0
    )
    return run


@pytest.mark.parametrize("command", ["prepare", "train", "plan"])
def test_pretraining_commands_on_an_sft_run_say_what_it_is(sft_run, capsys, command):
    before = (sft_run / "config.yaml").read_text()
    extra = ["--minutes", "1"] if command == "plan" else []
    assert main([command, str(sft_run), *extra]) == 2
    err = one_error_line(capsys)
    assert "an SFT run (tuned from" in err and f"scratchlm sft {sft_run}" in err
    assert (sft_run / "config.yaml").read_text() == before and not (sft_run / "data").exists()


def test_an_explicit_sft_step_count_is_obeyed(trained_run, tmp_path, capsys):
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(f'{{"prompt": "Question {i}?", "completion": "Answer {i}."}}\n' for i in range(4)))
    run = tmp_path / "chat"
    argv = ["sft", str(run), "--from", str(trained_run), "--input", str(qa), "--train.max-steps", "7"]
    assert main([*argv, "--train.eval-interval", "7", "--train.eval-batches", "1"]) == 0
    out = capsys.readouterr().out
    assert "7 steps =" in out and "(--train.max-steps)" in out  # the first line says which set the steps
    assert "validation: 1 of the 4 conversations held out" in out  # taken from a tiny set, and said
    assert yaml.safe_load((run / "config.yaml").read_text())["sft"]["epochs"] == 0
    assert main(["sft", str(run)]) == 0  # a resume keeps the step count: nothing left to do
    assert "already trained for 7 steps" in capsys.readouterr().out
    assert main([*argv, "--sft.epochs", "2", "--fresh"]) == 2
    assert "give one of them" in one_error_line(capsys)


def test_the_hf_export_generates_within_the_context(trained_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "hf"
    scratchlm.export(trained_run, format="hf", out=out)
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    inputs = tok("Prince Andrew", return_tensors="pt")
    ids = model.generate(**inputs)  # the shipped generation_config alone: no IndexError past n_positions
    assert ids.shape[1] <= model.config.n_positions
    shutil.rmtree(out)


def test_export_force_keeps_what_the_user_added(trained_run, tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "hf"
    scratchlm.export(trained_run, format="hf", out=out)
    (out / "Modelfile").write_text("FROM ./model.gguf\n")
    (out / "assets").mkdir()
    (out / "assets" / "logo.txt").write_text("mine")
    (out / "model.safetensors").write_bytes(b"stale")  # what export wrote is replaced
    scratchlm.export(trained_run, format="hf", out=out, force=True)
    assert (out / "Modelfile").read_text() == "FROM ./model.gguf\n"
    assert (out / "assets" / "logo.txt").read_text() == "mine"
    assert (out / "model.safetensors").stat().st_size > 1000
    assert "Modelfile" not in (out / ".scratchlm-export").read_text()  # still the user's, not export's


def test_serve_on_a_busy_port_is_one_line_before_serving(trained_run, capsys):
    pytest.importorskip("uvicorn")
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", str(trained_run), "--port", str(port)]) == 2
    captured = capsys.readouterr()
    assert f"127.0.0.1:{port} is in use" in captured.err and "serving" not in captured.out


@pytest.mark.parametrize(
    "command",
    [["sample", "{run}", "x"], ["serve", "{run}"], ["export", "{run}", "--format", "hf", "--out", "{out}"]],
)
def test_a_command_on_a_missing_run_says_so(tmp_path, capsys, command):
    argv = [a.format(run=tmp_path / "nope", out=tmp_path / "out") for a in command]
    assert main(argv) == 2
    assert "no such run directory" in one_error_line(capsys)


def test_a_failed_sft_leaves_no_half_made_run(trained_run, tmp_path, capsys):
    bad = tmp_path / "long.jsonl"
    long_reply = " ".join(["word"] * 400)  # no reply fits the 64-token context
    bad.write_text(f'{{"prompt": "Say it.", "completion": "{long_reply}"}}\n' * 3)
    run = tmp_path / "chat"
    assert main(["sft", str(run), "--from", str(trained_run), "--input", str(bad)]) == 2
    err = one_error_line(capsys)
    assert "is left as it was before this command" in err
    assert not run.exists()  # no tokenizer, no lock: the next attempt starts as new
    ok = ["sft", str(run), "--from", str(trained_run), "--train.max-steps", "2", "--train.eval-interval", "2"]
    assert main([*ok, "--train.eval-batches", "1", "--sft.check-prompts", "1"]) == 0


def test_a_failed_train_text_leaves_no_half_made_run(tmp_path):
    run = tmp_path / "nb"
    with pytest.raises(UserError, match="left as it was"):
        scratchlm.train_text("x\n" * 3, run, data=dict(min_chars=10**6), train=dict(max_steps=1))
    assert not run.exists()


def test_the_model_card_of_an_sft_run_names_its_data(sft_run, trained_run, tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "hf"
    scratchlm.export(sft_run, format="hf", out=out)
    card = (out / "README.md").read_text()
    assert "manifest.json is missing" not in card
    assert "instruction-tuned on the bundled Self-Instruct seed tasks" in card
    assert "train split:" in card  # the base's pretraining data
