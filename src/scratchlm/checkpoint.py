"""Checkpoints: atomic save, resume, and rebuilding a model with its tokenizer from a run.

Layout under RUN/checkpoints/:
  step_000500/model.safetensors   weights; metadata holds the resolved config, step, tokenizer hash
  step_000500/state.pt            optimizer, RNG states, loader position (torch.load weights_only=True)
  best.safetensors                the weights with the lowest val loss so far

A step directory is written under a temporary name and renamed into place, so a crash mid-save
never leaves a half checkpoint that resume would pick up.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .common import UserError, atomic_path
from .config import ModelConfig, RunConfig
from .model import GPT
from .run import Run
from .tokenizer import Tokenizer

_STEP_DIR = re.compile(r"^step_(\d+)$")


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
    """Complete step checkpoints, oldest first."""
    if not run.checkpoints_dir.is_dir():
        return []
    found = [
        p for p in run.checkpoints_dir.iterdir() if _STEP_DIR.match(p.name) and (p / "state.pt").is_file()
    ]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def weights_of(state_dict: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """The tensors to store: contiguous CPU copies, the tied head stored once (as the embedding)."""
    return {
        k: v.detach().cpu().contiguous()
        for k, v in state_dict.items()
        if not (tied and k == "lm_head.weight")
    }


def load_weights(model: GPT, path: Path) -> None:
    state = load_file(str(path))
    if any(k.endswith("mlp.c_gate.weight") for k in state):
        # Saved before SwiGLU's up and gate projections became one Linear (mlp.c_fc, rows [up; gate]).
        raise UserError(f"{path}: llama weights from an older scratchlm (separate mlp.c_gate); retrain")
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
    final = run.checkpoints_dir / f"step_{step:06d}"
    tmp = run.checkpoints_dir / f".tmp-step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_file(weights, str(tmp / "model.safetensors"), metadata=_metadata(cfg, step, tokenizer_hash))
        torch.save(train_state, tmp / "state.pt")
    except OSError as e:  # disk full, permissions: the complete checkpoints are untouched
        shutil.rmtree(tmp, ignore_errors=True)
        last = step_dirs(run)
        raise UserError(
            f"{final}: could not write the checkpoint ({e.strerror or e}); the last complete one is "
            f"{last[-1] if last else 'none'}; fix the cause and `scratchlm train {run.root}` resumes"
        ) from None
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    # Only checkpoints older than this one are pruned: a higher step number is not this run's past.
    older = [p for p in step_dirs(run) if int(_STEP_DIR.match(p.name).group(1)) < step]
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
    path = run.checkpoints_dir / "best.safetensors"
    try:
        with atomic_path(path) as tmp:
            save_file(weights, str(tmp), metadata=_metadata(cfg, step, tokenizer_hash, val_loss=val_loss))
    except OSError as e:  # the previous best.safetensors is untouched
        raise UserError(
            f"{path}: could not write the best weights ({e.strerror or e}); fix the cause and resume"
        ) from None


def load_train_state(path: Path) -> dict:
    return torch.load(path / "state.pt", weights_only=True)


def resolve_weights(run: Run, which: str = "last") -> Path:
    """ "last" (newest step), "best", or a path to a .safetensors file or step directory."""
    if which == "best":
        path = run.checkpoints_dir / "best.safetensors"
        if path.is_file():
            return path
        which = "last"
    if which == "last":
        dirs = step_dirs(run)
        if not dirs:
            raise UserError(f"{run.root}: no checkpoint yet; run `scratchlm train {run.root}` first")
        return dirs[-1] / "model.safetensors"
    path = Path(which)
    path = path / "model.safetensors" if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"--checkpoint {which}: no such checkpoint; use best, last or a .safetensors path")
    return path


def read_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


@dataclass
class LoadedModel:
    """A trained model with its tokenizer and settings: what `scratchlm.load(RUN)` returns."""

    model: GPT
    tokenizer: Tokenizer
    config: RunConfig
    step: int

    def generate(self, prompt: str, **sample_overrides) -> str:
        """The continuation of the prompt (without it), e.g. generate("Prince", max_new_tokens=50)."""
        from .sample import generate_text

        return generate_text(self, prompt, **sample_overrides)


def load(run_dir: str | Path, checkpoint: str = "best", device: str = "cpu") -> LoadedModel:
    """Rebuild the model and tokenizer of a run from its checkpoint."""
    run = Run.at(run_dir)
    path = resolve_weights(run, checkpoint)
    meta = read_metadata(path)
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
    return LoadedModel(model, tokenizer, cfg, int(meta.get("step", 0)))
