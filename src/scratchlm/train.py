"""`scratchlm train`: the training loop, flat and visible.

Evaluation, checkpointing, plotting and logging happen inside the loop, the last step included.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import torch
from safetensors.torch import load_model
from tqdm import tqdm

from .checkpoint import load_train_state, rng_state, save_best, save_checkpoint, set_rng_state, step_dirs
from .common import UserError, is_interactive, pick_device, rank0_print, seed_everything
from .config import RunConfig
from .data.loader import RandomWindows
from .data.shards import open_split
from .evaluate import evaluate_loss
from .metrics import MetricsLog, plot_loss
from .model import GPT
from .optim import lr_at, make_optimizer
from .run import Run
from .tokenizer import Tokenizer


class StopFlag:
    """Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves, and exits cleanly."""

    def __init__(self):
        self.stop = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.stop:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.stop = True
        rank0_print("\nstopping after this step (Ctrl-C again to abort without saving)…")

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def train(run_dir: str | Path, cfg: RunConfig, resume: bool = True) -> dict:
    """Train the run's model; continue from its newest checkpoint when there is one and resume is on."""
    run = Run.at(run_dir)
    run.require_data()
    tokenizer = Tokenizer.load(run.tokenizer_dir)
    cfg.model.vocab_size = tokenizer.vocab_size
    tc = cfg.train
    if tc.max_steps <= 0:
        raise UserError(f"--train.max_steps {tc.max_steps}: must be positive")

    device = pick_device(tc.device)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    seed_everything(tc.seed)
    model = GPT(cfg.model).to(device)
    optimizer = make_optimizer(model, tc, device)
    train_shards = open_split(run.data_dir, "train", tokenizer.hash)
    val_shards = open_split(run.data_dir, "val", tokenizer.hash)
    loader = RandomWindows(train_shards, tc.batch_size, cfg.model.block_size, tc.seed)
    token_bytes = tokenizer.token_bytes()

    step, best_val, elapsed_before = 0, float("inf"), 0.0
    previous = step_dirs(run) if resume else []
    if previous:
        state = load_train_state(previous[-1])
        load_model(model, str(previous[-1] / "model.safetensors"), device=str(device))
        if "optimizer" in state:  # absent from weights-only checkpoints (`scratchlm import`): start fresh
            optimizer.load_state_dict(state["optimizer"])
            loader.load_state_dict(state["loader"])
            set_rng_state(state["rng"])
        step, best_val, elapsed_before = state["step"], state["best_val"], state["elapsed_s"]
        rank0_print(f"resuming from {previous[-1]} (step {step})")
        if step >= tc.max_steps:
            rank0_print(f"already trained for {step} steps (--train.max_steps {tc.max_steps}); nothing to do")
            return {"step": step, "best_val_loss": best_val}
    run.save_config(cfg)

    tokens_per_step = tc.batch_size * tc.grad_accum * cfg.model.block_size
    rank0_print(
        f"model: {cfg.model.flavour}, {model.num_params():,} parameters "
        f"({model.num_params(non_embedding=True):,} without embeddings), "
        f"{model.flops_per_token() / 1e6:.1f} MFLOPs per token; "
        f"{tokens_per_step:,} tokens per step on {device}"
    )
    metrics = MetricsLog(run.metrics_path, resume_step=step if previous else None)

    def evaluate_and_save(
        step: int, train_loss: float, tok_s: float | None, elapsed: float
    ) -> tuple[float, float]:
        nonlocal best_val
        val = evaluate_loss(model, val_shards, tc.batch_size, device, tc.eval_batches, token_bytes)
        metrics.log(
            step=step,
            tokens=step * tokens_per_step,
            train_loss=train_loss,
            val_loss=val["loss"],
            lr=lr_at(step - 1, tc),
            tokens_per_s=tok_s,
            elapsed_s=elapsed,
        )
        if val["loss"] < best_val:
            best_val = val["loss"]
            save_best(run, step, model, cfg, tokenizer.hash, best_val)
        state = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "loader": loader.state_dict(),
            "rng": rng_state(),
            "best_val": best_val,
            "elapsed_s": elapsed,
        }
        save_checkpoint(run, step, model, cfg, tokenizer.hash, state, tc.keep_last)
        plot_loss(run.metrics_path, run.loss_plot_path, title=str(run.root))
        return val["loss"], val["bits_per_byte"]

    model.train()
    t_start, t_log, tokens_since_log = time.time(), time.time(), 0
    bar = tqdm(
        total=tc.max_steps, initial=step, disable=not is_interactive(), unit="step", dynamic_ncols=True
    )
    val_loss = None
    with StopFlag() as stop:
        while step < tc.max_steps:
            lr = lr_at(step, tc)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for _ in range(tc.grad_accum):
                x, y = loader.next_batch()
                _, loss = model(x.to(device), y.to(device))
                (loss / tc.grad_accum).backward()
                loss_sum += loss.item()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            train_loss = loss_sum / tc.grad_accum
            if not torch.isfinite(torch.tensor(train_loss)):
                last = step_dirs(run)
                raise UserError(
                    f"loss became {train_loss} at step {step}; last good checkpoint: "
                    f"{last[-1] if last else 'none'}; lower --train.lr and resume"
                )
            tokens_since_log += tokens_per_step
            elapsed = elapsed_before + time.time() - t_start
            out_of_time = tc.max_minutes > 0 and elapsed >= tc.max_minutes * 60
            last_step = step == tc.max_steps or stop.stop or out_of_time

            if step % tc.log_interval == 0 or step == 1 or last_step:
                tok_s = tokens_since_log / max(1e-9, time.time() - t_log)
                t_log, tokens_since_log = time.time(), 0
                metrics.log(
                    step=step,
                    tokens=step * tokens_per_step,
                    train_loss=train_loss,
                    lr=lr,
                    tokens_per_s=tok_s,
                    elapsed_s=elapsed,
                )
                bar.set_postfix(
                    loss=f"{train_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}", refresh=False
                )
            bar.update(1)

            if step % tc.eval_interval == 0 or last_step:
                val_loss, bpb = evaluate_and_save(step, train_loss, None, elapsed)
                line = (
                    f"step {step:>6}/{tc.max_steps}  train {train_loss:.4f}  val {val_loss:.4f}  "
                    f"val bits/byte {bpb:.3f}  lr {lr:.2e}  {elapsed / 60:.1f} min"
                )
                bar.write(line) if is_interactive() else rank0_print(line)
                t_log, tokens_since_log = time.time(), 0  # keep evaluation time out of tokens/s
            if stop.stop or out_of_time:
                rank0_print(f"stopped at step {step}; `scratchlm train {run.root}` resumes")
                break
    bar.close()
    return {"step": step, "val_loss": val_loss, "best_val_loss": best_val}
