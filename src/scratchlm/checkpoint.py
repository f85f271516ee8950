"""Checkpoints: atomic save, resume, and rebuilding a model with its tokenizer from a run.

Layout under RUN/checkpoints/:
  step_000500/model.safetensors   weights; metadata holds the resolved config, step, tokenizer hash
  step_000500/state.pt            optimizer, RNG states, loader position (torch.load weights_only=True)
  step_000500/manifest.json       size and sha256 of the two files above, written last
  best.safetensors                the weights with the lowest val loss so far
  manifest.json                   size and sha256 of best.safetensors

A step directory is written under a temporary name and renamed into place, so a crash mid-save
never leaves a half checkpoint that resume would pick up. Files are fsynced before the rename and
folders after it, so a power cut cannot leave a renamed checkpoint whose data never reached the disk.
Everything that picks a checkpoint (resume, sample, eval, export) first checks its files against
the manifest: a checkpoint damaged later (disk, copy, sync tool) is named in a warning and the newest
intact one is used instead, never loaded into NaNs or a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re
import shutil
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .common import UserError, atomic_path, rank0_print, usual_permissions
from .config import ModelConfig, RunConfig
from .model import GPT
from .run import Run
from .tokenizer import Tokenizer

_STEP_DIR = re.compile(r"^step_(\d+)$")
MANIFEST = "manifest.json"
WEIGHTS, STATE = "model.safetensors", "state.pt"


def _metadata(cfg: RunConfig, step: int, tokenizer_hash: str, **extra) -> dict[str, str]:
    meta = {
        "config": json.dumps(cfg.to_dict()),
        "step": str(step),
        "tokenizer_hash": tokenizer_hash,
        "format": "scratchlm-1",
    }
    return meta | {k: str(v) for k, v in extra.items()}


def rng_state() -> dict:
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    state = {
        "torch": torch.get_rng_state(),
        "python": json.dumps(random.getstate()),
        "numpy": json.dumps(np_state),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    np_state = json.loads(state["numpy"])
    np_state["state"]["key"] = np.array(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(np_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_dirs(run: Run) -> list[Path]:
    """Complete step checkpoints, oldest first (not verified: see intact_step_dirs)."""
    if not run.checkpoints_dir.is_dir():
        return []
    found = [p for p in run.checkpoints_dir.iterdir() if _STEP_DIR.match(p.name) and (p / STATE).is_file()]
    return sorted(found, key=_step_of)


def _step_of(path: Path) -> int:
    return int(_STEP_DIR.match(path.name).group(1))


# ---------------------------------------------------------------- integrity: manifests, fsync
def _fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries (the renames in it), to the disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its renames are durable without this
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _seal(path: Path) -> dict:
    """Flush the file to the disk and return its record: size and sha256."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
        os.fsync(f.fileno())
    return {"size": path.stat().st_size, "sha256": sha.hexdigest()}


def _record(folder: Path, records: dict[str, dict]) -> None:
    """Add file records to the folder's manifest.json (atomically, durably)."""
    path = folder / MANIFEST
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        files = {}
    files.update(records)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"files": files}, indent=2) + "\n", encoding="utf-8")
        _fsync(tmp)
    _fsync(folder)


def damage(path: Path) -> str | None:
    """Why the file at `path` is not the one its folder's manifest recorded, or None when it is. A file
    the manifest does not list (checkpoints of scratchlm before manifests, files the user put there)
    cannot be checked and counts as intact."""
    if not path.is_file():
        return f"{path.name} is missing"
    manifest = path.parent / MANIFEST
    if not manifest.is_file():
        return None
    try:
        files = json.loads(manifest.read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        return f"its {MANIFEST} is unreadable"
    rec = files.get(path.name) if isinstance(files, dict) else None  # another tool's manifest.json: no files
    if not isinstance(rec, dict) or not {"size", "sha256"} <= rec.keys():
        return None
    size, sha = rec["size"], rec["sha256"]
    actual = path.stat().st_size
    if actual != size:
        return f"{path.name} is {actual:,} bytes but was written with {size:,}"
    if _seal(path)["sha256"] != sha:
        return f"{path.name} does not match the sha256 recorded when it was written"
    return None


def _warn(message: str) -> None:
    rank0_print(f"scratchlm: warning: {message}", file=sys.stderr)


def _newest_intact(run: Run, files: tuple[str, ...]) -> tuple[list[Path], list[str]]:
    """step_dirs up to the newest one whose `files` are intact, and a warning for each newer, damaged
    one (left on disk). UserError when there are checkpoints but none is intact."""
    dirs, skipped = step_dirs(run), []
    for i in range(len(dirs) - 1, -1, -1):
        problem = next((p for p in map(damage, (dirs[i] / f for f in files)) if p), None)
        if problem is None:
            return dirs[: i + 1], [
                f"{d}: damaged checkpoint ({p}); skipped for an older one" for d, p in skipped
            ]
        skipped.append((dirs[i], problem))
    if dirs:
        raise UserError(
            f"{run.checkpoints_dir}: all {len(dirs)} step checkpoints are damaged ("
            + "; ".join(f"{d.name}: {p}" for d, p in skipped)
            + f"); restore them from a backup, or start over with `scratchlm train {run.root} --fresh`"
        )
    return [], []


def intact_step_dirs(run: Run, files: tuple[str, ...] = (WEIGHTS, STATE)) -> list[Path]:
    """step_dirs up to the newest intact one; each newer, damaged one is named in a warning."""
    dirs, warnings = _newest_intact(run, files)
    for warning in warnings:
        _warn(warning)
    return dirs


def weights_of(state_dict: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """The tensors to store: contiguous CPU copies, the tied head stored once (as the embedding)."""
    return {
        k: v.detach().cpu().contiguous()
        for k, v in state_dict.items()
        if not (tied and k == "lm_head.weight")
    }


def load_weights(model: GPT, path: Path) -> None:
    try:
        state = load_file(str(path))
    except SafetensorError as e:  # checked against its manifest before, so an unrecorded file
        raise UserError(f"{path}: not a readable .safetensors file ({e})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed_missing = {"lm_head.weight"} if model.config.tie_embeddings else set()
    if set(missing) - allowed_missing or unexpected:
        raise UserError(f"{path}: weights do not fit the model (missing {missing}, unexpected {unexpected})")


# Settings a resume may change: they do not touch the weights' shapes or what the weights compute.
RESUMABLE_MODEL_CHANGES = {"dropout"}


def check_resumable(checkpoint: Path, model_cfg: ModelConfig, tokenizer_hash: str) -> None:
    """A run keeps the model and tokenizer it was trained with: refuse a resume where either changed."""
    meta = read_metadata(checkpoint / "model.safetensors")
    if meta.get("tokenizer_hash", tokenizer_hash) != tokenizer_hash:
        raise UserError(
            f"{checkpoint}: the run's tokenizer changed since this checkpoint was trained, so its token ids "
            "mean other text now; restore the tokenizer, or add --fresh to start this run over"
        )
    if "config" not in meta:
        return
    saved = RunConfig.from_dict(json.loads(meta["config"])).model
    changed = [
        f.name
        for f in fields(ModelConfig)
        if f.name not in RESUMABLE_MODEL_CHANGES and getattr(saved, f.name) != getattr(model_cfg, f.name)
    ]
    if changed:
        diffs = ", ".join(
            f"--model.{n} {getattr(model_cfg, n)} (checkpoint: {getattr(saved, n)})" for n in changed
        )
        raise UserError(
            f"{checkpoint}: {diffs}; a run keeps the model it was trained with: drop the flag to resume, "
            "add --fresh to start this run over, or prepare a new run"
        )


def save_checkpoint(
    run: Run,
    step: int,
    weights: dict[str, torch.Tensor],
    cfg: RunConfig,
    tokenizer_hash: str,
    train_state: dict,
    keep_last: int,
) -> Path:
    final = run.step_dir(step)
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_file(weights, str(tmp / WEIGHTS), metadata=_metadata(cfg, step, tokenizer_hash))
        torch.save(train_state, tmp / STATE)
        usual_permissions(tmp / WEIGHTS)  # save_file writes 0600
        _record(tmp, {name: _seal(tmp / name) for name in (WEIGHTS, STATE)})  # the manifest goes last
    except OSError as e:  # disk full, permissions: the complete checkpoints are untouched
        shutil.rmtree(tmp, ignore_errors=True)
        last = step_dirs(run)
        raise UserError(
            f"{final}: could not write the checkpoint ({e.strerror or e}); the last complete one is "
            f"{last[-1] if last else 'none'}; fix the cause and `scratchlm train {run.root}` resumes"
        ) from None
    # Saving a step again (a resume that fell back past it): the old one stays until the new one is in.
    # A crash between the two renames leaves it as .old-step_N, which the next save of step N removes.
    aside = run.checkpoints_dir / f".old-{final.name}"
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
    os.replace(tmp, final)
    _fsync(run.checkpoints_dir)
    shutil.rmtree(aside, ignore_errors=True)
    # Only checkpoints older than this one count against keep_last: a newer one is damaged (the resume
    # fell back past it) or from before a --fresh, and pruning by age would delete the one just written.
    older = [d for d in step_dirs(run) if _step_of(d) < step]
    for old in older[: max(0, len(older) - keep_last + 1)] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_best(
    run: Run,
    step: int,
    weights: dict[str, torch.Tensor],
    cfg: RunConfig,
    tokenizer_hash: str,
    val_loss: float,
) -> None:
    path = run.best_path
    try:
        with atomic_path(path) as tmp:
            save_file(weights, str(tmp), metadata=_metadata(cfg, step, tokenizer_hash, val_loss=val_loss))
            record = _seal(tmp)
        # A crash right here leaves a record of the old file: a false alarm that falls back to "last".
        _record(run.checkpoints_dir, {path.name: record})
    except OSError as e:  # the previous best.safetensors is untouched
        raise UserError(
            f"{path}: could not write the best weights ({e.strerror or e}); fix the cause and resume"
        ) from None


def load_train_state(path: Path) -> dict:
    try:
        return torch.load(path / STATE, weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:  # an unrecorded, damaged file
        raise UserError(
            f"{path / STATE}: unreadable ({str(e).splitlines()[0]}); delete {path} to resume from an older "
            "checkpoint"
        ) from None


def resolve_weights(run: Run, which: str = "last") -> Path:
    """ "last" (newest intact step), "best", or a path to a .safetensors file or step directory.

    A damaged best or newest step is named in a warning and the next intact one used; a damaged
    checkpoint named by path is an error (the user asked for that one)."""
    damaged_best = None
    if which == "best":
        path = run.best_path
        if path.is_file():
            problem = damage(path)
            if problem is None:
                return path
            damaged_best = f"{path}: damaged ({problem})"
        which = "last"
    if which == "last":
        dirs, skipped = _newest_intact(run, (WEIGHTS,))
        if not dirs and damaged_best:
            raise UserError(f"{damaged_best}, and there is no step checkpoint to use instead")
        if not dirs:
            raise UserError(run.no_model_message())
        if damaged_best:
            _warn(f"{damaged_best}; using {dirs[-1]} instead")
        for warning in skipped:
            _warn(warning)
        return dirs[-1] / WEIGHTS
    path = Path(which)
    path = path / WEIGHTS if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"--checkpoint {which}: no such checkpoint; use best, last or a .safetensors path")
    if path.suffix != ".safetensors":
        raise UserError(
            f"--checkpoint {which}: not a weights file; use best, last, a step folder or its {WEIGHTS}"
        )
    problem = damage(path)
    if problem:
        raise UserError(f"--checkpoint {which}: damaged ({problem}); choose another checkpoint")
    return path


def read_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except SafetensorError as e:
        raise UserError(f"{path}: not a readable .safetensors file ({e})") from None


@dataclass
class Restored:
    """A model rebuilt from a checkpoint, with its tokenizer, settings and step. Generation lives above
    (lm.LoadedModel, what `scratchlm.load(RUN)` returns), so this module never imports the sampler."""

    model: GPT
    tokenizer: Tokenizer
    config: RunConfig
    step: int


def load(run_dir: str | Path, checkpoint: str = "best", device: str = "cpu") -> Restored:
    """Rebuild the model and tokenizer of a run from its checkpoint."""
    run = Run.at(run_dir)
    path = resolve_weights(run, checkpoint)
    meta = read_metadata(path)
    if "config" not in meta:
        raise UserError(
            f"{path}: not a scratchlm checkpoint (no config in its metadata); use best, last or a step "
            f"folder of {run.checkpoints_dir}, or `scratchlm import` a Hugging Face folder first"
        )
    cfg = RunConfig.from_dict(json.loads(meta["config"]))
    tokenizer = Tokenizer.load(run.tokenizer_dir)
    if tokenizer.hash != meta.get("tokenizer_hash"):
        raise UserError(
            f"{run.tokenizer_dir}: the tokenizer changed since {path} was trained; restore it or train again"
        )
    if tokenizer.vocab_size != cfg.model.vocab_size:
        raise UserError(
            f"{path}: model vocab {cfg.model.vocab_size} != tokenizer vocab {tokenizer.vocab_size}"
        )
    model = GPT(cfg.model)
    load_weights(model, path)
    model.to(device).eval()
    return Restored(model, tokenizer, cfg, int(meta.get("step", 0)))
