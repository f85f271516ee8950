"""`scratchlm train`: the training loop, flat and visible.

Evaluation, checkpointing, plotting and logging happen inside the loop, the last step included.
Under torchrun each process trains on its slice of one global batch (DDP, or FSDP2 with --train.fsdp);
only rank 0 writes. The data order depends on the seed alone, not on the number of processes, so a
checkpoint resumes exactly on any world size.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from .checkpoint import (
    check_resumable,
    intact_step_dirs,
    load_train_state,
    load_weights,
    rng_state,
    save_best,
    save_checkpoint,
    set_rng_state,
    step_dirs,
    weights_of,
)
from .common import Dist, UserError, init_distributed, is_interactive, rank0_print, seed_everything
from .config import RunConfig, TrainConfig
from .data.loader import RandomWindows
from .data.shards import open_split
from .evaluate import evaluate_loss
from .metrics import MetricsLog, plot_loss
from .model import GPT
from .optim import lr_at, make_optimizers
from .run import Run
from .tokenizer import Tokenizer

# Dense bf16 peak of common GPUs, for MFU (model FLOPs utilization) in the progress bar.
PEAK_BF16_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10": 125e12,
    "4090": 165e12,
}


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


def resolve_batch(tc: TrainConfig, block_size: int, world_size: int) -> int:
    """Gradient-accumulation steps that give the requested tokens per optimizer step."""
    if not tc.batch_tokens:
        return tc.grad_accum
    per_micro_step = tc.batch_size * block_size * world_size
    if tc.batch_tokens % per_micro_step:
        raise UserError(
            f"--train.batch_tokens {tc.batch_tokens} is not a multiple of batch_size x block_size x "
            f"processes = {per_micro_step}; pick a multiple such as {per_micro_step * 8}"
        )
    return tc.batch_tokens // per_micro_step


def peak_bf16_flops(gpu_name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in gpu_name), None)


def peak_flops(device: torch.device) -> float | None:
    return peak_bf16_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX); without them bf16 is ~10x slower."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # private: absent means unknown
    return probe() if probe else True


def wrap_model(model: GPT, tc: TrainConfig, dist_info: Dist, device: torch.device) -> torch.nn.Module:
    """DDP or FSDP2 under torchrun, then torch.compile when asked (default on CUDA)."""
    wrapped: torch.nn.Module = model
    if tc.fsdp and dist_info.enabled:
        from torch.distributed.fsdp import fully_shard

        # The model returns its logits as a slice of the padded head's output (a view). FSDP2 warns that an
        # in-place op on that view would skip its backward hook; the trainer uses only the loss, so the
        # warning would only alarm.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)
    elif dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    use_compile = tc.compile if tc.compile is not None else device.type == "cuda"
    return torch.compile(wrapped) if use_compile else wrapped


def full_weights(model: GPT, tc: TrainConfig, dist_info: Dist) -> dict[str, torch.Tensor]:
    """The unsharded weights (every rank must call this under FSDP; rank 0 uses the result)."""
    if tc.fsdp and dist_info.enabled:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return weights_of(sd, model.config.tie_embeddings)
    return weights_of(model.state_dict(), model.config.tie_embeddings)


def optimizer_state(model: GPT, optimizers, tc: TrainConfig, dist_info: Dist) -> dict:
    """Optimizer state keyed by parameter name, so it loads on any world size and with or without FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    full = tc.fsdp and dist_info.enabled
    return get_optimizer_state_dict(
        model, optimizers, options=StateDictOptions(full_state_dict=full, cpu_offload=full)
    )


def load_optimizer_state(model: GPT, optimizers, state: dict, tc: TrainConfig, dist_info: Dist) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    full = tc.fsdp and dist_info.enabled
    set_optimizer_state_dict(
        model, optimizers, state, options=StateDictOptions(full_state_dict=full, broadcast_from_rank0=False)
    )


def all_mean(value: float, dist_info: Dist, device: torch.device) -> float:
    if not dist_info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist_info.world_size


def any_rank(flag: bool, dist_info: Dist, device: torch.device) -> bool:
    if not dist_info.enabled:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def train(run_dir: str | Path, cfg: RunConfig, resume: bool | None = None) -> dict:
    """Train the run's model.

    resume: None continues from the newest checkpoint if there is one; True requires one; False starts over.
    The process-wide torch settings that training changes (threads, deterministic kernels, TF32) are put
    back afterwards, so a notebook or script that calls train() keeps its own.
    """
    saved = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    try:
        with contextlib.ExitStack() as held:  # the run's writer lock, released however training ends
            return _train(run_dir, cfg, resume, held)
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[2:]


def _train(run_dir: str | Path, cfg: RunConfig, resume: bool | None, held: contextlib.ExitStack) -> dict:
    run = Run.at(run_dir)
    run.require_data()
    tokenizer = Tokenizer.load(run.tokenizer_dir)
    cfg.model.vocab_size = tokenizer.vocab_size
    cfg.validate()
    tc = cfg.train
    dist_info, device = init_distributed(tc.device)
    _hold_run(run, dist_info, held)
    if tc.tensorboard and dist_info.is_main:
        _summary_writer()  # a missing package fails here, before any training
    grad_accum = resolve_batch(tc, cfg.model.block_size, dist_info.world_size)
    tokens_per_step = tc.batch_size * grad_accum * cfg.model.block_size * dist_info.world_size
    if tc.max_tokens:
        tc.max_steps = math.ceil(tc.max_tokens / tokens_per_step)
    if tc.max_steps <= 0:
        raise UserError(f"--train.max_steps {tc.max_steps}: must be positive")

    if tc.threads:
        torch.set_num_threads(tc.threads)
    if tc.deterministic:
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls on Ampere+: ~3x fp32 speed, fp32 range
        torch.backends.cudnn.allow_tf32 = True
    use_bf16 = tc.dtype == "bfloat16" or (tc.dtype == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    if use_bf16 and device.type == "cpu" and not cpu_has_bf16():
        rank0_print(
            "scratchlm: note: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX): --train.dtype "
            "bfloat16 trains ~10x slower here than float32 (measured on an AVX2 machine)",
            file=sys.stderr,
        )

    seed_everything(tc.seed)
    model = GPT(cfg.model).to(device)  # fp32 master weights; autocast runs the matmuls in bf16
    train_shards = open_split(run.data_dir, "train", tokenizer.hash)
    val_shards = open_split(run.data_dir, "val", tokenizer.hash)
    # One global stream of windows; each process takes its slice (world-size independent data order).
    loader = RandomWindows(train_shards, tc.batch_size * dist_info.world_size, cfg.model.block_size, tc.seed)
    token_bytes = tokenizer.token_bytes()

    step, best_val, elapsed_before = 0, float("inf"), 0.0
    previous = intact_step_dirs(run) if resume is not False else []  # damaged ones: warned, skipped
    if resume and not previous:
        raise UserError(f"{run.root}: --resume given but there is no checkpoint to resume from")
    if previous:
        check_resumable(previous[-1], cfg.model, tokenizer.hash)
        state = load_train_state(previous[-1])
        load_weights(model, previous[-1] / "model.safetensors")
    forward = wrap_model(model, tc, dist_info, device)
    optimizers = make_optimizers(model, tc)
    if previous:
        if "optimizer" in state:  # absent from weights-only checkpoints (`scratchlm import`): start fresh
            load_optimizer_state(model, optimizers, state["optimizer"], tc, dist_info)
            loader.load_state_dict(state["loader"])
            set_rng_state(state["rng"])
        step, best_val, elapsed_before = state["step"], state["best_val"], state["elapsed_s"]
        rank0_print(f"resuming from {previous[-1]} (step {step})")
        if step >= tc.max_steps:
            rank0_print(f"already trained for {step} steps (--train.max_steps {tc.max_steps}); nothing to do")
            return {"step": step, "best_val_loss": best_val}
        if 0 < tc.max_minutes <= elapsed_before / 60:
            rank0_print(
                f"already trained for {elapsed_before / 60:.1f} minutes (--train.max_minutes "
                f"{tc.max_minutes:g}); nothing to do: raise --train.max_minutes to train on"
            )
            return {"step": step, "best_val_loss": best_val}

    flops_per_token = model.flops_per_token()
    rank0_print(
        f"model: {cfg.model.flavour}, {model.num_params():,} parameters "
        f"({model.num_params(non_embedding=True):,} without embeddings), "
        f"{flops_per_token / 1e6:.1f} MFLOPs per token; {tokens_per_step:,} tokens per step "
        f"({dist_info.world_size} x {tc.batch_size} x {grad_accum} x {cfg.model.block_size}) on {device}"
    )
    metrics = None  # opened by _start once the first step has gone through
    tb = None
    peak = peak_flops(device)

    def evaluate_and_save(step: int, elapsed: float) -> tuple[float, float]:
        nonlocal best_val
        with autocast:
            # Every rank scores the same global-size batches: the result does not depend on the world size.
            val = evaluate_loss(
                model,
                val_shards,
                tc.batch_size * dist_info.world_size,
                device,
                tc.eval_batches,
                token_bytes,
                skip_id=tokenizer.bos_id,
            )
        weights = full_weights(model, tc, dist_info)
        opt_state = optimizer_state(model, optimizers, tc, dist_info)
        if dist_info.is_main:
            metrics.log(
                step=step,
                tokens=step * tokens_per_step,
                val_loss=val["loss"],
                lr=lr_at(step - 1, tc),
                elapsed_s=elapsed,
            )
            if tb:
                tb.add_scalar("loss/val", val["loss"], step)
            if val["loss"] < best_val:
                save_best(run, step, weights, cfg, tokenizer.hash, val["loss"])
            state = {
                "step": step,
                "optimizer": opt_state,
                "loader": loader.state_dict(),
                "rng": rng_state(),
                "best_val": min(best_val, val["loss"]),
                "elapsed_s": elapsed,
                "world_size": dist_info.world_size,
            }
            save_checkpoint(run, step, weights, cfg, tokenizer.hash, state, tc.keep_last)
            plot_loss(run.metrics_path, run.loss_plot_path, title=str(run.root))
        best_val = min(best_val, val["loss"])
        return val["loss"], val["bits_per_byte"]

    forward.train()
    t_start, t_log, tokens_since_log, skipped = time.time(), time.time(), 0, 0
    bar = tqdm(
        total=tc.max_steps,
        initial=step,
        disable=not (is_interactive() and dist_info.is_main),
        unit="step",
        dynamic_ncols=True,
    )
    val_loss = None
    lo, hi = dist_info.rank * tc.batch_size, (dist_info.rank + 1) * tc.batch_size
    with StopFlag() as stop:
        while step < tc.max_steps:
            lr = lr_at(step, tc)
            for opt in optimizers:
                for group in opt.param_groups:
                    group["lr"] = lr
            micro_losses = []  # read after the last micro-step: one host sync per step, not per micro-step
            for micro in range(grad_accum):
                x, y = loader.next_batch()
                x, y = x[lo:hi].to(device, non_blocking=True), y[lo:hi].to(device, non_blocking=True)
                with _no_grad_sync(forward, model, tc, last=micro == grad_accum - 1):
                    with autocast:
                        _, loss = forward(x, y)
                    (loss / grad_accum).backward()
                micro_losses.append(loss.detach())
            train_loss = all_mean(sum(t.item() for t in micro_losses) / grad_accum, dist_info, device)
            if not math.isfinite(train_loss):
                if tc.on_nan == "stop":
                    last = step_dirs(run)
                    raise UserError(
                        f"loss became {train_loss} at step {step + 1}; last good checkpoint: "
                        f"{last[-1] if last else 'none'}; lower --train.lr and resume, "
                        f"or set --train.on_nan skip"
                    )
                skipped += 1
                rank0_print(f"step {step + 1}: loss is {train_loss}, batch skipped ({skipped} so far)")
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                step += 1
                bar.update(1)
                continue
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            for opt in optimizers:
                opt.step()
                opt.zero_grad(set_to_none=True)
            if metrics is None and dist_info.is_main:
                metrics, tb = _start(run, cfg, resumed_at=step if previous else None)
            step += 1
            tokens_since_log += tokens_per_step
            elapsed = elapsed_before + time.time() - t_start
            out_of_time = tc.max_minutes > 0 and elapsed >= tc.max_minutes * 60
            stopping = any_rank(stop.stop or out_of_time, dist_info, device)
            last_step = step == tc.max_steps or stopping

            if step % tc.log_interval == 0 or step == 1 or last_step:
                tok_s = tokens_since_log / max(1e-9, time.time() - t_log)
                t_log, tokens_since_log = time.time(), 0
                postfix = {"loss": f"{train_loss:.3f}", "lr": f"{lr:.2e}", "tok/s": f"{tok_s:,.0f}"}
                if peak:
                    postfix["mfu"] = f"{100 * flops_per_token * tok_s / (peak * dist_info.world_size):.1f}%"
                if dist_info.is_main:
                    metrics.log(
                        step=step,
                        tokens=step * tokens_per_step,
                        train_loss=train_loss,
                        lr=lr,
                        tokens_per_s=tok_s,
                        elapsed_s=elapsed,
                    )
                    if tb:
                        tb.add_scalar("loss/train", train_loss, step)
                        tb.add_scalar("lr", lr, step)
                bar.set_postfix(postfix, refresh=False)
            bar.update(1)

            if step % tc.eval_interval == 0 or last_step:
                val_loss, bpb = evaluate_and_save(step, elapsed)
                line = (
                    f"step {step:>6}/{tc.max_steps}  train {train_loss:.4f}  val {val_loss:.4f}  "
                    f"val bits/byte {bpb:.3f}  lr {lr:.2e}  {elapsed / 60:.1f} min"
                )
                bar.write(line) if bar.disable is False else rank0_print(line)
                t_log, tokens_since_log = time.time(), 0  # keep evaluation time out of tokens/s
            if stopping:
                rank0_print(f"stopped at step {step}; `scratchlm train {run.root}` resumes")
                break
    bar.close()
    if tb:
        tb.close()
    return {"step": step, "val_loss": val_loss, "best_val_loss": best_val, "skipped_steps": skipped}


def _hold_run(run: Run, dist_info: Dist, held: contextlib.ExitStack) -> None:
    """One writer per run: rank 0 takes the run's lock, and every rank learns whether it got it, so a refused
    torchrun job ends on all ranks with the same one-line error instead of waiting in its first collective."""
    error = None
    if dist_info.is_main:
        try:
            held.enter_context(run.writer_lock("train"))
        except UserError as e:
            error = str(e)
    if dist_info.enabled:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise UserError(error)


def _start(run: Run, cfg: RunConfig, resumed_at: int | None):
    """The first step went through: only now does the run's directory change, so a start that fails (bad
    settings, out of memory) leaves config.yaml, metrics.csv and the old checkpoints as they were.

    A run that starts over sets the earlier results aside instead of overwriting them: otherwise
    best.safetensors and metrics.csv would mix two runs, and the old run's higher step numbers would be what
    keep-last pruning keeps and the next `train` resumes.
    """
    if resumed_at is None and (aside := run.set_aside()):
        rank0_print(f"starting over: the previous checkpoints and metrics are in {aside}")
    run.save_config(cfg)
    tb = _summary_writer()(str(run.root / "tensorboard")) if cfg.train.tensorboard else None
    return MetricsLog(run.metrics_path, resume_step=resumed_at), tb


def _no_grad_sync(forward, model: GPT, tc: TrainConfig, last: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of a step."""
    if last:
        return contextlib.nullcontext()
    if hasattr(forward, "no_sync"):  # DDP
        return forward.no_sync()
    if tc.fsdp and hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        return _ResyncOnExit(model)
    return contextlib.nullcontext()


class _ResyncOnExit(contextlib.AbstractContextManager):
    def __init__(self, model):
        self.model = model

    def __exit__(self, *exc):
        self.model.set_requires_gradient_sync(True)


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "--train.tensorboard needs the tensorboard package: pip install tensorboard"
        ) from None
    return SummaryWriter
