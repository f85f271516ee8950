"""The training loop that pretraining (`train.py`) and instruction tuning (`sft.py`) share: flat and visible.

A stage hands `fit` its data source (a `TrainData`: global batches whose targets are -1 where no loss is
taken, and a validation score); everything else is here. Evaluation, checkpointing, plotting and logging
happen inside the loop, the last step included. Under torchrun each process trains on its slice of one
global batch (DDP, or FSDP2 with --train.fsdp); only rank 0 writes. The data order depends on the seed
alone, not on the number of processes, so a checkpoint resumes exactly on any world size. That holds for
step-based runs; with --train.max-minutes the learning rate follows the clock, so such a run is not
bit-reproducible (its steps fall elsewhere on a slower or busier machine).

The loss of a step is the mean over the supervised tokens of the whole step (all micro-batches, all
ranks), so a micro-batch with more answer tokens weighs more; in pretraining every micro-batch has the
same count and this is the plain mean.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from .allocator import kept_freed_memory
from .checkpoint import (
    check_resumable,
    intact_step_dirs,
    load_train_state,
    load_weights,
    read_metadata,
    resolve_weights,
    rng_state,
    save_best,
    save_checkpoint,
    set_rng_state,
    step_dirs,
    weights_of,
)
from .common import (
    Dist,
    UserError,
    cpu_has_bf16,
    init_distributed,
    is_interactive,
    peak_flops,
    rank0_print,
    seed_everything,
)
from .config import RunConfig, TrainConfig
from .metrics import MetricsLog, plot_loss
from .model import GPT
from .optim import lr_at, make_optimizers
from .planning import auto_batch
from .run import Run
from .tokenizer import Tokenizer


class Batches(Protocol):
    """A resumable source of global (B, T) batches: data.loader.EpochWindows or data.sft.PackedBatches."""

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class TrainData:
    """What a stage trains on. `validate(model)` returns {"loss", "bits_per_byte"}, the same on every rank;
    `extra_metrics(model)` (rank 0, after each evaluation) returns more metrics.csv columns."""

    batches: Batches
    validate: Callable[[GPT], dict]
    pad_id: int | None = None  # inputs equal to it are padding: not counted as trained tokens
    extra_metrics: Callable[[GPT], dict] | None = None
    on_start: Callable[[], None] | None = None  # writes the stage's files once the first step went through
    max_steps: int | None = None  # the stage's own length (SFT: from its epochs); None: --train.max-steps
    # (vocab,) float: each target's loss weight by its id (SFT: --sft.end-weight on <|end|>); None: all 1
    target_weights: torch.Tensor | None = None
    # (val loss, extra metrics) -> what the best checkpoint minimises (SFT: replies that end first); None:
    # the val loss. Called on every rank, where the extra metrics are empty but on rank 0.
    selection: Callable[[float, dict], float] | None = None


TB_TAGS = {"train_loss": "loss/train", "val_loss": "loss/val"}


@dataclass
class Session:
    """Everything the loop needs, set up once by `fit`.

    `cfg` is the session's own settings object, never the caller's: what `fit` was given with the derived
    numbers filled in (batch size auto, the step count), and what every checkpoint saves.
    """

    run: Run
    cfg: RunConfig
    command: str  # the stage's command, for messages: "train" or "sft"
    tokenizer: Tokenizer
    dist: Dist
    device: torch.device
    model: GPT
    autocast: contextlib.AbstractContextManager
    grad_accum: int
    forward: torch.nn.Module | None = None  # the model wrapped for DDP/FSDP and compiled
    optimizers: list = field(default_factory=list)
    max_steps: int = 0  # optimizer steps this run trains for: from max_tokens, the stage, or max_steps
    step: int = 0
    tokens: int = 0  # trained (non-padding) tokens so far, over all ranks
    best_val: float = float("inf")  # the best checkpoint's val loss, or its TrainData.selection score
    elapsed_before: float = 0.0  # seconds spent by earlier sessions of this run
    resumed: bool = False
    metrics: MetricsLog | None = None
    tb: object = None

    @property
    def global_batch(self) -> int:
        return self.cfg.train.batch_size * self.dist.world_size

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.grad_accum * self.cfg.model.block_size


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


def fit(
    run_dir: str | Path,
    cfg: RunConfig,
    make_data: Callable[[Session], TrainData],
    resume: bool | None = None,
    command: str = "train",
) -> dict:
    """Train the run's model on the data `make_data(session)` gives.

    resume: None continues from the newest checkpoint if there is one; True requires one; False starts over
    (from `--train.init_from`'s weights when set). The process-wide torch settings that training changes
    (threads, deterministic kernels, TF32) are put back afterwards, so a notebook keeps its own.
    """
    saved = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    try:
        with contextlib.ExitStack() as held:  # the run's writer lock, released however training ends
            held.enter_context(kept_freed_memory())  # a step's large blocks reused, not mapped again
            s = _setup(Run.at(run_dir), cfg, command, held)
            data = make_data(s)
            if not _restore(s, data, resume):
                return {"step": s.step, "best_val_loss": s.best_val}
            return _loop(s, data)
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[2:]


def _setup(run: Run, cfg: RunConfig, command: str, held: contextlib.ExitStack) -> Session:
    """Checks, the lock, process settings and a freshly initialised model; nothing is written yet."""
    tokenizer = Tokenizer.load(run.tokenizer_dir)
    cfg = _with_tokenizer_vocab(cfg, tokenizer)
    cfg.validate()
    tc = cfg.train
    dist_info, device = init_distributed(tc.device)
    _hold_run(run, dist_info, held, command)
    if tc.tensorboard and dist_info.is_main:
        _summary_writer()  # a missing package fails here, before any training
    _process_settings(tc, device)
    autocast = _autocast(tc, device)
    seed_everything(tc.seed)
    model = GPT(cfg.model).to(device)  # fp32 master weights; autocast runs the matmuls in bf16
    cfg = _with_batch(cfg, model, device, autocast, dist_info.world_size)
    grad_accum = resolve_batch(cfg.train, cfg.model.block_size, dist_info.world_size)
    return Session(run, cfg, command, tokenizer, dist_info, device, model, autocast, grad_accum)


def _with_tokenizer_vocab(cfg: RunConfig, tokenizer: Tokenizer) -> RunConfig:
    """The settings with the model's vocabulary equal to the tokenizer's (a new object when they differ)."""
    if cfg.model.vocab_size == tokenizer.vocab_size:
        return cfg
    # The commands resolve it (settings.with_tokenizer_vocab); a library caller of fit() with a RunConfig
    # built by hand gets the same, in the session's own copy.
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size))


def _process_settings(tc: TrainConfig, device: torch.device) -> None:
    """The process-wide torch settings training asks for (`fit` puts them back afterwards)."""
    if tc.threads:
        torch.set_num_threads(tc.threads)
    if tc.deterministic:
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls on Ampere+: ~3x fp32 speed, fp32 range
        torch.backends.cudnn.allow_tf32 = True


def _autocast(tc: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked (auto: on CUDA), else a no-op context."""
    use_bf16 = tc.dtype == "bfloat16" or (tc.dtype == "auto" and device.type == "cuda")
    if use_bf16 and device.type == "cpu" and not cpu_has_bf16():
        rank0_print(
            "scratchlm: note: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX): --train.dtype "
            "bfloat16 trains ~10x slower here than float32 (measured on an AVX2 machine)",
            file=sys.stderr,
        )
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()


def _with_batch(cfg: RunConfig, model: GPT, device: torch.device, autocast, world_size: int) -> RunConfig:
    """The session's own copy of the settings, --train.batch-size auto resolved to numbers.

    Resolved once, here because it measures the device; the saved config keeps the numbers, so a resume is
    exact. The train section is always a new object, so nothing written into the session's settings
    reaches the caller's.
    """
    tc = cfg.train
    if tc.batch_size == "auto":
        rows, tokens = auto_batch(model, cfg, device, autocast, world_size)
        rank0_print(f"--train.batch-size auto: {rows} sequences a micro-batch, {tokens:,} a step")
        return dataclasses.replace(cfg, train=dataclasses.replace(tc, batch_size=rows, batch_tokens=tokens))
    return dataclasses.replace(cfg, train=dataclasses.replace(tc))


def _restore(s: Session, data: TrainData, resume: bool | None) -> bool:
    """Resume from the newest intact checkpoint, or start from init_from's weights; False: nothing to do."""
    s.max_steps = _max_steps(s, data)
    # The saved config records the steps this run trains for (and lr_at's schedule reads them there).
    s.cfg = dataclasses.replace(s.cfg, train=dataclasses.replace(s.cfg.train, max_steps=s.max_steps))
    tc = s.cfg.train
    previous = intact_step_dirs(s.run) if resume is not False else []  # damaged ones: warned, skipped
    if resume and not previous:
        raise UserError(f"{s.run.root}: --resume given but there is no checkpoint to resume from")
    state = None
    if previous:
        check_resumable(previous[-1], s.cfg.model, s.tokenizer.hash)
        state = load_train_state(previous[-1])
        load_weights(s.model, previous[-1] / "model.safetensors")
    elif tc.init_from:
        _load_init_weights(s)
    s.forward = wrap_model(s.model, tc, s.dist, s.device)
    s.optimizers = make_optimizers(s.model, tc)
    s.resumed = bool(previous)
    if state is None:
        return True
    if "optimizer" in state:  # absent from weights-only checkpoints (`scratchlm import`): start fresh
        load_optimizer_state(s.model, s.optimizers, state["optimizer"], tc, s.dist)
        data.batches.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
    s.step, s.best_val, s.elapsed_before = state["step"], state["best_val"], state["elapsed_s"]
    s.tokens = state.get("tokens", s.step * s.tokens_per_step)
    rank0_print(f"resuming from {previous[-1]} (step {s.step})")
    return not _already_done(s)


def _max_steps(s: Session, data: TrainData) -> int:
    """Optimizer steps to train: --train.max-tokens wins, then the stage's own count (SFT's epochs), then
    --train.max-steps. Read after the stage built its data, which may be what sets the count."""
    tc = s.cfg.train
    if tc.max_tokens:
        return math.ceil(tc.max_tokens / s.tokens_per_step)
    return data.max_steps if data.max_steps is not None else tc.max_steps


def _already_done(s: Session) -> bool:
    """A resumed run whose step or clock budget is already spent says so and trains no further."""
    tc = s.cfg.train
    if s.step >= s.max_steps:
        rank0_print(f"already trained for {s.step} steps (--train.max_steps {s.max_steps}); nothing to do")
        return True
    if 0 < tc.max_minutes <= s.elapsed_before / 60:
        rank0_print(
            f"already trained for {s.elapsed_before / 60:.1f} minutes (--train.max_minutes "
            f"{tc.max_minutes:g}); nothing to do: raise --train.max_minutes to train on, e.g. "
            + _more_minutes_command(s)
        )
        return True
    return False


def _load_init_weights(s: Session) -> None:
    """A new run that starts from another run's best weights (SFT from its base)."""
    source = s.cfg.train.init_from
    path = resolve_weights(Run.at(source), "best")
    if read_metadata(path).get("tokenizer_hash") != s.tokenizer.hash:
        raise UserError(
            f"--train.init_from {source}: its tokenizer differs from this run's, so its weights would read "
            "other token ids; start from a run with the same tokenizer"
        )
    load_weights(s.model, path)
    rank0_print(f"starting from the weights of {path}")


@dataclass
class _Pace:
    """What the loop keeps between steps besides the Session: its clocks, counters and progress bar."""

    bar: tqdm
    flops_per_token: float
    peak: float | None  # the device's peak FLOP/s, for MFU; None when unknown
    budget_s: float  # --train.max_minutes in seconds; 0: no clock budget (it then carries the schedule)
    first_step: int
    t_start: float = field(default_factory=time.time)
    t_log: float = field(default_factory=time.time)
    tokens_at_log: int = 0
    reserve_s: float | None = None  # what an evaluation and save take: measured at this session's first
    step_s: float = 0.0  # how long the latest step took; 0 after a session's first (see _after_step)
    skipped: int = 0
    val_loss: float | None = None


def _loop(s: Session, data: TrainData) -> dict:
    """Steps until max_steps, the clock budget or Ctrl-C; evaluates and saves inside, the last step too."""
    tc, pace = s.cfg.train, _begin(s)
    with StopFlag() as stop:
        while s.step < s.max_steps:
            t_step = time.time()
            lr, final = _set_lr(s, pace, t_step)
            train_loss, trained = _train_step(s, data)
            if not math.isfinite(train_loss):
                _skip_step(s, pace, train_loss)
                continue
            _optimizer_step(s)
            if s.metrics is None and s.dist.is_main:
                _start(s, data)
            s.step += 1
            s.tokens += trained
            elapsed, out_of_time = _after_step(s, pace, t_step, final)
            stopping = any_rank(stop.stop or out_of_time, s.dist, s.device)
            last_step = s.step == s.max_steps or stopping
            if s.step % tc.log_interval == 0 or s.step == 1 or last_step:
                _log_progress(s, pace, train_loss, lr, elapsed)
            pace.bar.update(1)
            # A clock-based run evaluates after its first step too, to learn how long the last one will take.
            if s.step % tc.eval_interval == 0 or last_step or (pace.budget_s and pace.reserve_s is None):
                _eval_point(s, data, pace, train_loss, lr, elapsed, out_of_time)
            if stopping:
                rank0_print(_stop_message(s, clock=out_of_time and not stop.stop))
                break
    return _finish(s, pace)


def _stop_message(s: Session, clock: bool) -> str:
    """Why the loop stopped early and what trains on: a resume after Ctrl-C or SIGTERM; after the clock
    budget a resume would find it spent ("nothing to do"), so it names a larger one."""
    if clock:
        return (
            f"stopped at step {s.step}: its clock budget (--train.max-minutes {s.cfg.train.max_minutes:g}) "
            f"is spent; to train on, give the run more: {_more_minutes_command(s)}"
        )
    return f"stopped at step {s.step}; `scratchlm {s.command} {s.run.root}` resumes"


def _more_minutes_command(s: Session) -> str:
    # The budget counts every session's minutes, so the example doubles it rather than naming the same.
    return f"`scratchlm {s.command} {s.run.root} --train.max-minutes {2 * s.cfg.train.max_minutes:g}`"


def _clock_outlook(s: Session, pace: _Pace, elapsed: float) -> tuple[int, float]:
    """(about how many steps the clock budget allows in all, minutes left of it), from this session's
    measured pace so far: the step cap says nothing of a run the clock ends (4960 where ~400 fit)."""
    session_s = max(1e-9, time.time() - pace.t_start)
    per_s = (s.step - pace.first_step + 1) / session_s
    left_s = max(0.0, pace.budget_s - elapsed)
    more = per_s * max(0.0, left_s - (pace.reserve_s or 0.0))
    return min(s.max_steps, s.step + round(more)), left_s / 60


def _begin(s: Session) -> _Pace:
    """The model line, the progress bar and the clocks, just before the first step."""
    tc, flops_per_token = s.cfg.train, s.model.flops_per_token()
    rank0_print(
        f"model: {s.cfg.model.flavour}, {s.model.num_params():,} parameters "
        f"({s.model.num_params(non_embedding=True):,} without embeddings), "
        f"{flops_per_token / 1e6:.1f} MFLOPs per token; {s.tokens_per_step:,} tokens per step "
        f"({s.dist.world_size} x {tc.batch_size} x {s.grad_accum} x {s.cfg.model.block_size}) on {s.device}"
    )
    peak = peak_flops(s.device)
    s.forward.train()
    bar = tqdm(
        total=s.max_steps,
        initial=s.step,
        disable=not (is_interactive() and s.dist.is_main),
        unit="step",
        dynamic_ncols=True,
    )
    # A clock budget (--train.max_minutes) carries the schedule instead of max_steps (see _clock_progress).
    return _Pace(bar, flops_per_token, peak, tc.max_minutes * 60, s.step + 1, tokens_at_log=s.tokens)


def _set_lr(s: Session, pace: _Pace, t_step: float) -> tuple[float, bool]:
    """(the coming step's learning rate, now set on every optimizer; whether the clock makes it the last)."""
    progress, final = None, False
    if pace.budget_s:
        reserve_s = pace.reserve_s or 0.0
        progress, final = _clock_progress(s, t_step - pace.t_start, pace.budget_s, reserve_s, pace.step_s)
    lr = lr_at(s.step, s.cfg.train, progress)  # s.cfg.train.max_steps is s.max_steps (see _restore)
    for opt in s.optimizers:
        for group in opt.param_groups:
            group["lr"] = lr
    return lr, final


def _skip_step(s: Session, pace: _Pace, train_loss: float) -> None:
    """A step whose loss is not finite: stop, naming the last good checkpoint, or (--train.on_nan skip)
    drop its gradients and count it as a step."""
    if s.cfg.train.on_nan == "stop":
        last = step_dirs(s.run)
        raise UserError(
            f"loss became {train_loss} at step {s.step + 1}; last good checkpoint: "
            f"{last[-1] if last else 'none'}; lower --train.lr and resume, "
            f"or set --train.on_nan skip"
        )
    pace.skipped += 1
    rank0_print(f"step {s.step + 1}: loss is {train_loss}, batch skipped ({pace.skipped} so far)")
    for opt in s.optimizers:
        opt.zero_grad(set_to_none=True)
    s.step += 1
    pace.bar.update(1)


def _optimizer_step(s: Session) -> None:
    if s.cfg.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(s.model.parameters(), s.cfg.train.grad_clip)
    for opt in s.optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)


def _after_step(s: Session, pace: _Pace, t_step: float, final: bool) -> tuple[float, bool]:
    """(seconds trained, this session and earlier ones; whether the clock budget is spent) after a step."""
    elapsed = s.elapsed_before + time.time() - pace.t_start
    # A session's first step also compiles (30 s on 2 cores) and warms caches: taken as the step
    # time, it would make the clock end a 60-second run after its second step.
    pace.step_s = time.time() - t_step if s.step > pace.first_step else 0.0
    # `final` was planned; the second test catches a step that ran much slower than the one before.
    out_of_time = pace.budget_s > 0 and (final or elapsed + (pace.reserve_s or 0.0) >= pace.budget_s)
    return elapsed, out_of_time


def _log_progress(s: Session, pace: _Pace, train_loss: float, lr: float, elapsed: float) -> None:
    """A metrics.csv row and the progress bar's loss, lr, tokens/s (and MFU when the peak is known)."""
    tok_s = (s.tokens - pace.tokens_at_log) / max(1e-9, time.time() - pace.t_log)
    pace.t_log, pace.tokens_at_log = time.time(), s.tokens
    postfix = {"loss": f"{train_loss:.3f}", "lr": f"{lr:.2e}", "tok/s": f"{tok_s:,.0f}"}
    if pace.peak:
        postfix["mfu"] = f"{100 * pace.flops_per_token * tok_s / (pace.peak * s.dist.world_size):.1f}%"
    _log(s, train_loss=train_loss, lr=lr, tokens_per_s=tok_s, elapsed_s=elapsed)
    if pace.budget_s:
        pace.bar.total, left_min = _clock_outlook(s, pace, elapsed)
        postfix["left"] = f"{left_min:.1f} min"
    pace.bar.set_postfix(postfix, refresh=False)


def _eval_point(
    s: Session, data: TrainData, pace: _Pace, train_loss: float, lr: float, elapsed: float, out_of_time: bool
) -> None:
    """Evaluate and save, then print the step's line; the first one also measures what the last will take."""
    t_eval = time.time()
    # Stopped by the clock, the checkpoint counts the whole budget as spent (its rest goes to this
    # very evaluation and save), so resuming with the same budget has nothing left to do.
    pace.val_loss, line = _evaluate_and_save(s, data, pace.budget_s if out_of_time else elapsed, lr)
    if pace.reserve_s is None:
        pace.reserve_s = rank_max(time.time() - t_eval, s.dist, s.device)
    of, left = str(s.max_steps), ""
    if pace.budget_s:
        total, left_min = _clock_outlook(s, pace, elapsed)
        of, left = f"~{total}", f", {0.0 if out_of_time else left_min:.1f} min left"
    line = f"step {s.step:>6}/{of}  train {train_loss:.4f}  {line}  lr {lr:.2e}  {elapsed / 60:.1f} min{left}"
    pace.bar.write(line) if pace.bar.disable is False else rank0_print(line)
    pace.t_log, pace.tokens_at_log = time.time(), s.tokens  # keep evaluation time out of tokens/s


def _finish(s: Session, pace: _Pace) -> dict:
    """Close the bar and TensorBoard; say when max_steps ended a clock budget early."""
    pace.bar.close()
    spent_s = s.elapsed_before + time.time() - pace.t_start
    if pace.budget_s and s.step >= s.max_steps and spent_s < 0.9 * pace.budget_s:
        rank0_print(
            f"reached --train.max-steps {s.max_steps} after {spent_s / 60:.1f} of the "
            f"{s.cfg.train.max_minutes:g} minutes; raise --train.max-steps to train for the whole budget"
        )
    if s.tb:
        s.tb.close()
    return {
        "step": s.step,
        "val_loss": pace.val_loss,
        "best_val_loss": s.best_val,
        "skipped_steps": pace.skipped,
    }


def _clock_progress(
    s: Session, session_s: float, budget_s: float, reserve_s: float, step_s: float
) -> tuple[float, bool]:
    """(share of the schedule done, whether the coming step is the last) for a run with a clock budget.

    The schedule spans the training time: the budget, earlier sessions' minutes included, less the final
    evaluation and save. The step after which another would no longer fit is the last one, and it trains
    at the schedule's end, so the decay ends when the minutes run out. Every rank reads the slowest rank's
    clock, so all agree on the learning rate and on which step is the last. Whichever limit comes first
    carries the decay: max_steps reached before the minutes (the demo's 360 steps in a 4-minute cap) still
    ends at the minimum rate.
    """
    elapsed = rank_max(s.elapsed_before + session_s, s.dist, s.device)
    train_s = max(1e-9, budget_s - reserve_s)
    final = elapsed + 2 * step_s >= train_s  # this step, then the one after it, would run past the end
    by_steps = s.step / max(1, s.max_steps - 1)
    return (1.0 if final else max(min(1.0, elapsed / train_s), by_steps)), final


def _train_step(s: Session, data: TrainData) -> tuple[float, int]:
    """Forward and backward over the step's micro-batches: (mean loss per supervised token, tokens trained).

    Each micro-batch's mean loss is weighted by its share of the step's supervised tokens over all ranks;
    DDP and FSDP average gradients over ranks, hence the factor world_size.
    """
    lo, hi = s.dist.rank * s.cfg.train.batch_size, (s.dist.rank + 1) * s.cfg.train.batch_size
    micro = [tuple(t[lo:hi] for t in data.batches.next_batch()) for _ in range(s.grad_accum)]
    counts = [_supervised(y, data.target_weights) for _, y in micro]
    padding = sum(int((x == data.pad_id).sum()) for x, _ in micro) if data.pad_id is not None else 0
    real = sum(x.numel() for x, _ in micro) - padding
    supervised, trained = all_sum([sum(counts), real], s.dist, s.device)
    if supervised == 0:  # every row of a batch holds at least one target: a data-source bug
        raise RuntimeError("a training step without a single supervised token")
    weighted = []  # read after the last micro-step: one host sync per step, not per micro-step
    for i, ((x, y), n) in enumerate(zip(micro, counts, strict=True)):
        x, y = x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True)
        with _no_grad_sync(s.forward, s.model, s.cfg.train, last=i == s.grad_accum - 1):
            with s.autocast:
                logits, loss = _forward(s.forward, x, y, data.target_weights)
            if n:
                (loss * (n * s.dist.world_size / supervised)).backward()
                weighted.append(loss.detach() * n)
            else:  # padding alone: its mean is NaN; a zero backward keeps the ranks' all-reduces in step
                (logits.float().sum() * 0.0).backward()
    loss_sum = all_sum([sum(t.item() for t in weighted)], s.dist, s.device)[0]
    return loss_sum / supervised, int(trained)


def _supervised(y: torch.Tensor, weights: torch.Tensor | None) -> float:
    """The supervised targets of a micro-batch: their count, or their summed weight when targets weigh
    differently (the step's loss is then the weighted mean over the step)."""
    if weights is None:
        return int((y >= 0).sum())
    return float(weights[y[y >= 0]].sum())


def _forward(forward, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None):
    """logits and the micro-batch's loss: the model's own mean, or with `weights` the mean of each
    target's cross-entropy times weights[target] over the sum of those weights."""
    if weights is None:
        return forward(x, y)
    logits, _ = forward(x)
    per = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1, reduction="none")
    w = torch.where(y >= 0, weights.to(y.device)[y.clamp(min=0)], 0.0).flatten()
    return logits, (per * w).sum() / w.sum().clamp(min=1e-12)


def _evaluate_and_save(s: Session, data: TrainData, elapsed: float, lr: float) -> tuple[float, str]:
    """Validation, then (rank 0) metrics, best weights, a checkpoint and the loss plot."""
    tc = s.cfg.train
    with s.autocast:
        val = data.validate(s.model)
    weights = full_weights(s.model, tc, s.dist)
    opt_state = optimizer_state(s.model, s.optimizers, tc, s.dist)
    extra = data.extra_metrics(s.model) if data.extra_metrics and s.dist.is_main else {}
    score = data.selection(val["loss"], extra) if data.selection else val["loss"]
    if s.dist.is_main:
        _log(s, val_loss=val["loss"], lr=lr, elapsed_s=elapsed, **extra)
        if score < s.best_val:
            save_best(s.run, s.step, weights, s.cfg, s.tokenizer.hash, val["loss"])
        state = {
            "step": s.step,
            "tokens": s.tokens,
            "optimizer": opt_state,
            "loader": data.batches.state_dict(),
            "rng": rng_state(),
            "best_val": min(s.best_val, score),
            "elapsed_s": elapsed,
            "world_size": s.dist.world_size,
        }
        save_checkpoint(s.run, s.step, weights, s.cfg, s.tokenizer.hash, state, tc.keep_last)
        plot_loss(s.run.metrics_path, s.run.loss_plot_path, title=str(s.run.root))
    s.best_val = min(s.best_val, score)
    line = f"val {val['loss']:.4f}  val bits/byte {val['bits_per_byte']:.3f}"
    return val["loss"], line + "".join(f"  {k.replace('_', ' ')} {v:.3f}" for k, v in extra.items())


def _log(s: Session, **row) -> None:
    """One metrics.csv row (and TensorBoard scalars) on rank 0."""
    if not s.dist.is_main:
        return
    s.metrics.log(step=s.step, tokens=s.tokens, **row)
    if s.tb:
        for key, value in row.items():
            if key != "elapsed_s":
                s.tb.add_scalar(TB_TAGS.get(key, key), value, s.step)


def _start(s: Session, data: TrainData) -> None:
    """The first step went through: only now does the run's directory change, so a start that fails (bad
    settings, out of memory) leaves config.yaml, metrics.csv and the old checkpoints as they were.

    A run that starts over sets the earlier results aside instead of overwriting them: otherwise
    best.safetensors and metrics.csv would mix two runs, and the old run's higher step numbers would be what
    keep-last pruning keeps and the next `train` resumes.
    """
    if not s.resumed and (aside := s.run.set_aside()):
        rank0_print(f"starting over: the previous checkpoints and metrics are in {aside}")
    s.run.save_config(s.cfg)
    s.tb = _summary_writer()(str(s.run.root / "tensorboard")) if s.cfg.train.tensorboard else None
    s.metrics = MetricsLog(s.run.metrics_path, resume_step=s.step if s.resumed else None)
    if data.on_start:
        data.on_start()


# ---------------------------------------------------------------- distributed helpers


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


def all_sum(values: list[float], dist_info: Dist, device: torch.device) -> list[float]:
    """Sum over ranks (float64, one all-reduce for the whole list)."""
    if not dist_info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def rank_max(value: float, dist_info: Dist, device: torch.device) -> float:
    """The largest value over ranks (float64): one clock reading that every rank agrees on."""
    if not dist_info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def any_rank(flag: bool, dist_info: Dist, device: torch.device) -> bool:
    if not dist_info.enabled:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _hold_run(run: Run, dist_info: Dist, held: contextlib.ExitStack, command: str) -> None:
    """One writer per run: rank 0 takes the run's lock, and every rank learns whether it got it, so a refused
    torchrun job ends on all ranks with the same one-line error instead of waiting in its first collective."""
    error = None
    if dist_info.is_main:
        try:
            held.enter_context(run.writer_lock(command))
        except UserError as e:
            error = str(e)
    if dist_info.enabled:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise UserError(error)


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
