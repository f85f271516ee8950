"""The run directory is never destroyed by accident: one writer at a time, replaced results set aside.

Each test reproduces a way a run used to lose work (issue 13) and checks that it no longer does.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from scratchlm.checkpoint import read_metadata, save_checkpoint, step_dirs
from scratchlm.cli import main
from scratchlm.commands.prepare import prepare
from scratchlm.commands.train import train
from scratchlm.common import UserError
from scratchlm.config import RunConfig
from scratchlm.model import GPT
from scratchlm.run import Run
from scratchlm.tokenizer import META_FILE, Tokenizer

from .conftest import ctrl_c_reaches_it, tiny_config


@pytest.fixture
def prepared_run(tiny_corpus, tmp_path) -> Path:
    run = tmp_path / "run"
    prepare(run, tiny_config(tiny_corpus))
    return run


def short(corpus: Path, steps: int, every: int) -> RunConfig:
    cfg = tiny_config(corpus)
    cfg.train.max_steps, cfg.train.eval_interval, cfg.train.eval_batches = steps, every, 2
    return cfg


def steps_of(run: Path) -> list[int]:
    return [int(p.name.split("_")[1]) for p in step_dirs(Run.at(run))]


def metric_steps(path: Path) -> list[int]:
    return [int(r["step"]) for r in csv.DictReader(open(path))]


def previous(run: Path) -> list[Path]:
    return sorted((run / "previous").iterdir()) if (run / "previous").is_dir() else []


def snapshot(run: Path) -> dict[str, bytes | list[int]]:
    return {
        "config": (run / "config.yaml").read_bytes(),
        "metrics": (run / "metrics.csv").read_bytes(),
        "best": (run / "checkpoints" / "best.safetensors").read_bytes(),
        "steps": steps_of(run),
    }


# --- 2. --fresh sets the old run aside; the fresh run is what resumes next ---


def test_fresh_sets_the_old_run_aside_and_the_fresh_run_resumes_next(prepared_run, tiny_corpus, capsys):
    train(prepared_run, short(tiny_corpus, 9, 3))
    old = snapshot(prepared_run)
    assert old["steps"] == [6, 9]

    # Fewer steps than the old run: keep-last pruning used to delete these right after writing them.
    train(prepared_run, short(tiny_corpus, 4, 2), resume=False)
    [aside] = previous(prepared_run)
    assert f"previous checkpoints and metrics are in {aside}" in capsys.readouterr().out
    assert steps_of(prepared_run) == [2, 4]
    assert metric_steps(prepared_run / "metrics.csv")[-1] == 4
    assert read_metadata(prepared_run / "checkpoints" / "best.safetensors")["step"] in ("2", "4")

    # Everything of the old run is there, whole, and its model still loads from there.
    assert steps_of(aside) == [6, 9]
    assert (aside / "metrics.csv").read_bytes() == old["metrics"]
    assert (aside / "checkpoints" / "best.safetensors").read_bytes() == old["best"]
    assert (aside / "config.yaml").read_bytes() == old["config"]
    assert (aside / "loss.png").is_file()
    assert main(["sample", str(aside), "The", "--max-new-tokens", "3"]) == 0

    assert train(prepared_run, short(tiny_corpus, 6, 2))["step"] == 6
    assert f"resuming from {prepared_run / 'checkpoints' / 'step_000004'}" in capsys.readouterr().out
    assert steps_of(prepared_run) == [4, 6] and len(previous(prepared_run)) == 1


def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path):
    run = Run.at(tmp_path)
    weights = {"w": torch.zeros(2)}
    for step in (10, 20):
        save_checkpoint(run, step, weights, RunConfig(), "hash", {"step": step}, keep_last=2)
    save_checkpoint(run, 3, weights, RunConfig(), "hash", {"step": 3}, keep_last=1)
    assert steps_of(tmp_path) == [3, 10, 20]  # higher step numbers are not this run's past: left alone
    save_checkpoint(run, 30, weights, RunConfig(), "hash", {"step": 30}, keep_last=2)
    assert steps_of(tmp_path) == [20, 30]


# --- 4. a start that fails changes nothing ---


def test_invalid_settings_are_not_saved_and_the_run_still_resumes(prepared_run, tiny_corpus, capsys):
    train(prepared_run, short(tiny_corpus, 3, 3))
    before = snapshot(prepared_run)
    # Through the CLI, as a user types it: the value used to land in config.yaml, so every later
    # `train RUN` failed the same way, and metrics.csv was emptied.
    assert main(["train", str(prepared_run), "--train.batch-size", "0", "--train.max-steps", "6"]) == 2
    assert snapshot(prepared_run) == before
    assert main(["train", str(prepared_run), "--train.max-steps", "6"]) == 0
    assert "(step 3)" in capsys.readouterr().out
    assert (prepared_run / "metrics.csv").read_bytes().startswith(before["metrics"])
    assert steps_of(prepared_run) == [3, 6]


def test_a_start_that_fails_keeps_everything_even_with_fresh(prepared_run, tiny_corpus, monkeypatch):
    train(prepared_run, short(tiny_corpus, 3, 3))
    before = snapshot(prepared_run)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(GPT, "forward", out_of_memory)
    bigger = short(tiny_corpus, 6, 3)
    bigger.train.batch_size = 16
    for resume in (None, False):
        with pytest.raises(torch.OutOfMemoryError):
            train(prepared_run, bigger, resume=resume)
        assert snapshot(prepared_run) == before and not previous(prepared_run)


# --- 3. one writer per run ---


def test_a_second_writer_fails_at_once_naming_the_holder(prepared_run, tiny_corpus):
    from scratchlm.commands.tokenizer import train as train_command

    cfg = short(tiny_corpus, 3, 3)
    with Run.at(prepared_run).writer_lock("train"):
        for attempt in (
            lambda: train(prepared_run, cfg),
            lambda: prepare(prepared_run, cfg),
            lambda: train_command(prepared_run, cfg, overwrite=True),
        ):
            with pytest.raises(
                UserError, match=rf"in use by `scratchlm train` \(pid {os.getpid()} on .*since"
            ):
                attempt()
    assert not step_dirs(Run.at(prepared_run))
    assert train(prepared_run, cfg)["step"] == 3  # released on leaving the block


def test_a_lock_left_by_a_killed_process_does_not_block(prepared_run):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import time
                from scratchlm.run import Run
                with Run.at({str(prepared_run)!r}).writer_lock("train"):
                    print("held", flush=True)
                    time.sleep(120)
            """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(UserError, match=rf"pid {holder.pid} "):
            with Run.at(prepared_run).writer_lock("prepare"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (prepared_run / ".lock").exists()  # the file stays; the kernel dropped the lock with the process
    with Run.at(prepared_run).writer_lock("prepare"):
        pass


def test_two_commands_on_one_run_the_second_exits_2(prepared_run):
    first = subprocess.Popen(
        [sys.executable, "-m", "scratchlm", "train", str(prepared_run), "--train.max-steps", "100000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_reaches_it,
    )
    try:
        while first.poll() is None and not (prepared_run / "metrics.csv").is_file():
            time.sleep(0.05)
        for args in (["train", str(prepared_run)], ["prepare", str(prepared_run)]):
            cmd = [sys.executable, "-m", "scratchlm", *args]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            assert out.returncode == 2, out.stderr
            [line] = out.stderr.splitlines()
            assert f"in use by `scratchlm train` (pid {first.pid} " in line
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err


# --- 5. prepare keeps a trained run's data and tokenizer unless told otherwise ---


def test_prepare_refuses_a_trained_run_and_overwrite_sets_it_aside(trained_run, tmp_path, capsys):
    other = tmp_path / "other.txt"
    other.write_text("吾輩は猫である。名前はまだ無い。" * 2000, encoding="utf-8")
    manifest = (trained_run / "data" / "manifest.json").read_bytes()
    before = snapshot(trained_run)

    assert main(["prepare", str(trained_run), "--input", str(other)]) == 2
    err = capsys.readouterr().err
    assert "already has checkpoints" in err and f"scratchlm prepare {trained_run} --overwrite" in err
    assert (trained_run / "data" / "manifest.json").read_bytes() == manifest
    assert snapshot(trained_run) == before

    assert main(["prepare", str(trained_run), "--input", str(other), "--overwrite"]) == 0
    [aside] = previous(trained_run)
    assert f"aside in {aside}" in capsys.readouterr().out
    assert steps_of(aside) == before["steps"] and (aside / "metrics.csv").read_bytes() == before["metrics"]
    assert not (trained_run / "checkpoints").exists() and not (trained_run / "metrics.csv").exists()
    assert (trained_run / "data" / "manifest.json").read_bytes() != manifest
    # The tokenizer settings did not change: the run keeps its tokenizer (and the copy aside matches it).
    assert Tokenizer.load(trained_run / "tokenizer").hash == Tokenizer.load(aside / "tokenizer").hash


def test_prepare_refuses_tokenizer_settings_that_differ_from_the_runs_tokenizer(trained_run, capsys):
    run = Run.at(trained_run)
    old_hash = Tokenizer.load(run.tokenizer_dir).hash
    # A tokenizer saved before they recorded their settings: config.yaml says what it was trained with.
    meta_file = run.tokenizer_dir / META_FILE
    meta = json.loads(meta_file.read_text())
    for recorded in (True, False):
        if not recorded:
            meta_file.write_text(json.dumps({k: v for k, v in meta.items() if k != "trained_with"}))
        assert main(["prepare", str(trained_run), "--tokenizer.vocab-size", "700"]) == 2
        err = capsys.readouterr().err
        assert "--tokenizer.vocab_size 700 (the run's tokenizer: 600)" in err and "--overwrite" in err
        assert yaml.safe_load(run.config_path.read_text())["tokenizer"]["vocab_size"] == 600

    assert main(["prepare", str(trained_run), "--tokenizer.vocab-size", "700", "--overwrite"]) == 0
    [aside] = previous(trained_run)
    assert Tokenizer.load(aside / "tokenizer").hash == old_hash  # the old model's tokenizer went with it
    assert Tokenizer.load(run.tokenizer_dir).vocab_size == 700
    assert yaml.safe_load(run.config_path.read_text())["tokenizer"]["vocab_size"] == 700
    assert main(["prepare", str(trained_run)]) == 0  # the settings now match: no complaint


def test_tokenizer_train_overwrite_sets_the_trained_model_aside_with_its_tokenizer(trained_run):
    from scratchlm.commands.tokenizer import train as train_command

    run = Run.at(trained_run)
    old_hash, steps = Tokenizer.load(run.tokenizer_dir).hash, steps_of(trained_run)
    cfg = run.load_config()
    cfg.tokenizer.kind = "bpe"
    train_command(trained_run, cfg, overwrite=True)
    [aside] = previous(trained_run)
    assert steps_of(aside) == steps and Tokenizer.load(aside / "tokenizer").hash == old_hash
    assert not run.has_checkpoints()
