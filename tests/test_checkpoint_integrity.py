"""Damaged checkpoints: every file is recorded (size, sha256) when written and checked before use, so a
truncated or bit-flipped checkpoint is named and skipped for the newest intact one, never loaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import scratchlm.checkpoint as checkpoint
from scratchlm.checkpoint import damage, load, save_checkpoint, step_dirs, weights_of
from scratchlm.cli import main
from scratchlm.commands.train import train
from scratchlm.config import RunConfig
from scratchlm.model import GPT
from scratchlm.run import Run

from .conftest import tiny_config


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def flip_bytes(path: Path) -> None:
    """Flip a few bytes in the middle, keeping the size: only the hash can tell."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 8] = bytes(b ^ 0xFF for b in data[mid : mid + 8])
    path.write_bytes(bytes(data))


def step(run: Path, n: int) -> Path:
    return run / "checkpoints" / f"step_{n:06d}"


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scratchlm: error:") and "\n" not in err and "Traceback" not in err, err
    return err


def test_every_checkpoint_file_is_recorded_when_written(trained_run):
    for folder, names in [(step(trained_run, 60), ("model.safetensors", "state.pt"))] + [
        (trained_run / "checkpoints", ("best.safetensors",))
    ]:
        files = json.loads((folder / "manifest.json").read_text())["files"]
        for name in names:
            assert files[name]["size"] == (folder / name).stat().st_size
            assert damage(folder / name) is None
    flip_bytes(trained_run / "checkpoints" / "best.safetensors")
    assert "sha256" in damage(trained_run / "checkpoints" / "best.safetensors")


def test_checkpoint_files_get_the_usual_permissions(trained_run):
    """0666 less the umask, like every other file (mkstemp's 0600 kept other users of the machine out)."""
    umask = os.umask(0)
    os.umask(umask)
    checkpoints = trained_run / "checkpoints"
    for path in [
        step(trained_run, 60) / "model.safetensors",
        step(trained_run, 60) / "state.pt",
        step(trained_run, 60) / "manifest.json",
        checkpoints / "best.safetensors",
        checkpoints / "manifest.json",
        trained_run / "config.yaml",
        trained_run / "metrics.csv",
    ]:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


@pytest.mark.parametrize(("name", "harm"), [("model.safetensors", truncate), ("state.pt", flip_bytes)])
def test_train_resumes_from_the_previous_checkpoint_when_the_newest_is_damaged(
    trained_run, name, harm, capsys
):
    harm(step(trained_run, 60) / name)
    result = train(trained_run, tiny_config(Path("unused")))
    out, err = capsys.readouterr()
    assert f"warning: {step(trained_run, 60)}: damaged checkpoint ({name}" in err
    assert f"resuming from {step(trained_run, 30)} (step 30)" in out
    # Steps 30..60 were trained again and step 60 saved anew, over the damaged one.
    assert result["step"] == 60
    assert damage(step(trained_run, 60) / name) is None
    assert not list((trained_run / "checkpoints").glob(".*step*"))


def test_sample_and_eval_warn_and_use_the_newest_intact_checkpoint(trained_run, capsys):
    truncate(trained_run / "checkpoints" / "best.safetensors")
    flip_bytes(step(trained_run, 60) / "model.safetensors")

    assert main(["sample", str(trained_run), "The", "--max_new_tokens", "5"]) == 0
    err = capsys.readouterr().err
    assert f"{trained_run / 'checkpoints' / 'best.safetensors'}: damaged (best.safetensors is" in err
    assert f"{step(trained_run, 60)}: damaged checkpoint (model.safetensors does not match" in err
    assert "--- step 30," in (trained_run / "samples.txt").read_text()

    assert main(["eval", str(trained_run), "--checkpoint", "last", "--sample_tokens", "4"]) == 0
    assert "damaged checkpoint" in capsys.readouterr().err
    assert json.loads((trained_run / "eval.json").read_text())["step"] == 30


def test_sampling_reads_only_the_weights_so_a_damaged_state_file_does_not_matter(trained_run, capsys):
    flip_bytes(step(trained_run, 60) / "state.pt")
    assert load(trained_run, "last").step == 60
    assert "warning" not in capsys.readouterr().err


def test_all_damaged_is_a_one_line_error(trained_run, capsys):
    truncate(trained_run / "checkpoints" / "best.safetensors")
    for n in (30, 60):
        flip_bytes(step(trained_run, n) / "model.safetensors")
    err = one_line_error(capsys, ["sample", str(trained_run), "The"])
    assert "all 2 step checkpoints are damaged" in err and "--fresh" in err
    err = one_line_error(capsys, ["train", str(trained_run)])
    assert "all 2 step checkpoints are damaged" in err
    # Named by path, a damaged checkpoint is refused rather than replaced by another.
    err = one_line_error(
        capsys, ["sample", str(trained_run), "The", "--checkpoint", str(step(trained_run, 30))]
    )
    assert "damaged (model.safetensors does not match" in err


def test_a_non_weights_checkpoint_is_a_one_line_error(trained_run, tmp_path, capsys):
    state = str(step(trained_run, 60) / "state.pt")
    for argv in (
        ["sample", str(trained_run), "The", "--checkpoint", state],
        ["eval", str(trained_run), "--checkpoint", state],
        [
            "export",
            str(trained_run),
            "--format",
            "gguf",
            "--out",
            str(tmp_path / "m.gguf"),
            "--checkpoint",
            state,
        ],
    ):
        assert "not a weights file" in one_line_error(capsys, argv)
    fake = tmp_path / "notes.safetensors"
    fake.write_text("not weights")
    assert "not a readable .safetensors file" in one_line_error(
        capsys, ["sample", str(trained_run), "The", "--checkpoint", str(fake)]
    )
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(foreign))
    assert "not a scratchlm checkpoint" in one_line_error(
        capsys, ["sample", str(trained_run), "The", "--checkpoint", str(foreign)]
    )


def _save(run: Run, n: int, keep_last: int = 2, value: float = 0.0) -> Path:
    cfg = RunConfig()
    cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head, cfg.model.vocab_size = 1, 16, 2, 64
    model = GPT(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    weights = weights_of(model.state_dict(), cfg.model.tie_embeddings)
    return save_checkpoint(run, n, weights, cfg, "hash", {"step": n}, keep_last=keep_last)


def test_saving_a_step_again_keeps_the_old_one_until_the_new_one_is_in(tmp_path, monkeypatch):
    run = Run.at(tmp_path / "run")
    old = _save(run, 7, value=1.0)
    old_sha = json.loads((old / "manifest.json").read_text())["files"]["model.safetensors"]["sha256"]
    real_replace = os.replace

    def crash_on_moving_the_new_one_in(src, dst):
        if Path(src).name.startswith(".tmp-"):
            raise KeyboardInterrupt  # the process dies between the two renames
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", crash_on_moving_the_new_one_in)
    with pytest.raises(KeyboardInterrupt):
        _save(run, 7, value=2.0)
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    kept = [p for p in run.checkpoints_dir.rglob("model.safetensors") if damage(p) is None]
    assert old_sha in {
        json.loads((p.parent / "manifest.json").read_text())["files"]["model.safetensors"]["sha256"]
        for p in kept
    }

    new = _save(run, 7, value=3.0)
    assert json.loads((new / "manifest.json").read_text())["files"]["model.safetensors"]["sha256"] != old_sha
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == ["step_000007"]


def test_keep_last_never_prunes_the_checkpoint_just_written(tmp_path):
    """A resume that fell back past a damaged step 9 saves step 6: step 9 is newer, but 6 must stay."""
    run = Run.at(tmp_path / "run")
    _save(run, 3, keep_last=1)
    _save(run, 9, keep_last=1)
    _save(run, 6, keep_last=1)
    assert [p.name for p in step_dirs(run)] == ["step_000006", "step_000009"]


def test_old_checkpoints_without_a_manifest_still_load(trained_run):
    for manifest in (trained_run / "checkpoints").rglob("manifest.json"):
        manifest.unlink()
    assert load(trained_run, "best").step in (30, 60)
