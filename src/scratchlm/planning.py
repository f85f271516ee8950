"""The automatic plan: the model and schedule that make the most of N minutes on this machine.

`scratchlm train RUN --preset auto --train.max-minutes M` and `scratchlm plan RUN --minutes M`.

A few seconds' probe times a training step of each candidate shape on this machine (float32, and bfloat16
where the hardware has it); the corpus size comes from the run's prepared data. The rule then takes the
largest shape that still sees enough tokens per parameter in the budget and that the corpus can feed
without being memorised, and sizes the batch for enough optimizer steps. Its constants come from sweeps
on this project's reference machine, recorded in docs/benchmarks.md ("Issue 17").
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from dataclasses import dataclass, field, replace

from .common import UserError, cpu_has_bf16, pick_device
from .config import ModelConfig, RunConfig, TrainConfig
from .run import Run


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_embd: int
    n_head: int
    block_size: int
    lr: float  # the peak rate that suited this width in the sweeps (Muon hidden, AdamW the rest)
    tie_embeddings: bool = True


# Small to large; each step roughly doubles to triples the work per token (2 layers to 4: 1.5x). The
# rates: 8e-3 at width 128 is the speedrun's measured best (Muon, llama flavour, QK-norm; 4e-3 and 1.2e-2
# were worse); wider shapes scale it by sqrt(128 / width) up to 384 and by 1 / width beyond: a rule of
# thumb, not tuned per shape. The 2-layer shape reads its tokens with one matrix and predicts them with
# another: untied, it scored 0.020 bits/byte lower on the demo's book at 450 fixed steps (two seeds) for the
# same FLOPs a token; 4 x 128 gained 0.002 (docs/benchmarks.md, "An output head of its own"), so the rest
# stay tied, as GPT-2 is.
LADDER = (
    Shape(2, 128, 4, 128, 8e-3, tie_embeddings=False),
    Shape(4, 128, 4, 128, 8e-3),
    Shape(4, 192, 6, 128, 6.5e-3),
    Shape(6, 256, 8, 256, 5.7e-3),
    Shape(6, 384, 6, 256, 4.6e-3),
    Shape(8, 512, 8, 512, 3.5e-3),
    Shape(12, 768, 12, 1024, 2.3e-3),
    Shape(24, 1024, 16, 1024, 1.7e-3),
)

# The rule (docs/benchmarks.md, "Issue 17: the sweeps behind the plan"):
# A larger shape lost to the next-smaller one whenever it saw few tokens per parameter in the budget:
# 4x192 at 0.1 and 0.4 against 4x128 at 0.3 and 1.0 (1 and 3.5 minutes, bench/plan_sweep.py); 2 keeps a
# margin above the largest ratio that lost.
MIN_TOKENS_PER_PARAM = 2.0
# More parameters per corpus token than this and a model memorises the text: nanoGPT's 10.7M character
# model trains well on Tiny Shakespeare's 1M characters (~10 per token), the 89M model on War and Peace
# (~110 per token) overfit after 500 steps on the H100 here.
MAX_PARAMS_PER_TOKEN = 16.0
# Optimizer steps the batch is sized for: in the speedrun 333 steps of 32 rows beat 593 of 12 (Muon's
# per-step cost is fixed, bigger batches amortise it).
TARGET_STEPS = 400
# ...but no more tokens a step than this: the 30-minute plan on War and Peace took 22k and did no better
# than 5 minutes at 5.4k (docs/benchmarks.md). A bound, not yet swept.
MAX_STEP_TOKENS = 8192
# Epochs over the corpus past which the val loss stopped improving (War and Peace, 30 minutes: best at
# ~5 epochs, worse after); the plan says so, since the best checkpoint is what eval and sample use.
USEFUL_EPOCHS = 5
MIN_ROWS, MAX_ROWS = 4, 256  # micro-batch rows per step, whatever the steps target asks for
# What every planned model is: the speedrun's sweeps (docs/benchmarks.md) found the llama flavour with
# QK-norm and Muon ahead of gpt2 + AdamW at the same minutes (1.765 vs 1.925 nats/char in 60 s).
# No biases, as modern models: they export as Qwen3ForCausalLM; bias=true ended 0.002-0.005 bits/byte
# ahead at equal steps, within seed noise (docs/benchmarks.md, "Biases in the automatic plan").
PLANNED_MODEL = {"flavour": "llama", "qk_norm": True, "bias": False, "n_kv_head": 0, "mlp_hidden": 0}
OPTIMIZER = "muon"
# Muon's momentum for a plan of at most SHORT_PLAN_STEPS steps (the plans of a few minutes, sized for
# TARGET_STEPS): 0.9 beat the default 0.95 in every demo-sized run measured (-0.007 to -0.012 bits/byte
# at 340-560 steps, 2 and 4 layers; neutral in the subword speedrun). Longer plans keep the default,
# which was not measured against.
SHORT_PLAN_MOMENTUM, SHORT_PLAN_STEPS = 0.9, 1000
# ...and AdamW's beta2 for the embedding, head and norms: 0.99 beat 0.95 at the demo's 450 fixed steps by
# 0.0023 and 0.0051 bits/byte (two seeds; docs/benchmarks.md, "Muon on the parts of a fused matrix").
SHORT_PLAN_BETA2 = 0.99
# After warmup the rate holds at its peak and then falls linearly to 0 over the clock's last DECAY_FRACTION
# (warmup-stable-decay). On the demo's book it beat a cosine over the whole run by 0.017-0.022 bits/byte at
# 450 fixed steps (two seeds) and 0.009 at 900; cooldowns of 30-60% were alike, 20% and a linear decay over
# the whole run gained less (docs/benchmarks.md, "The schedule: hold the peak, then decay").
SCHEDULE, DECAY_FRACTION = "wsd", 0.4
EVAL_SHARE = 0.05  # of the budget: periodic evaluations and the final one with its checkpoint
# What CPU training measured beyond the sum of the parts the estimate counts (docs/benchmarks.md).
TRAINING_OVERHEAD = 200 * 2**20


@dataclass
class Memory:
    """Peak resident memory of training, in bytes, by what holds it."""

    baseline: int  # the process itself: Python, torch, the data's memory maps
    weights: int
    gradients: int
    optimizer: int
    activations: int  # saved for the backward pass at the micro-batch and context, logits included
    overhead: int = 0  # what training adds beyond these: allocator caches, thread pools, checkpoint buffers
    measured: int = 0  # the process's peak so far (the plan's probes): its peak cannot end below it

    @property
    def counted(self) -> int:
        return (
            self.baseline + self.weights + self.gradients + self.optimizer + self.activations + self.overhead
        )

    @property
    def total(self) -> int:
        return max(self.counted, self.measured)


def estimate_memory(
    model: ModelConfig, rows: int, optimizer: str = "adamw", bf16: bool = False, baseline: int | None = None
) -> Memory:
    """Peak memory of training `model` on micro-batches of `rows` x block_size tokens (float32 weights).

    Activations per layer and token: the residual stream and the two norms' outputs (4C), q, k, v and the
    attention output (4C), the MLP's input and hidden before and after the activation (2 x hidden), each
    4 bytes (bf16 autocast keeps most of them in 2 bytes and adds bf16 copies of the matrices). The head's
    logits are held four times at the loss's backward (logits, log-softmax, two gradients). The overhead is
    what CPU runs measured beyond the sum (docs/benchmarks.md): 190-270 MB over four shapes.
    """
    n = _params(model)
    hidden = model.ffn_hidden
    tokens = rows * model.block_size
    per_layer = 8 * model.n_embd + (3 if model.flavour == "llama" else 2) * hidden
    act_bytes = 2 if bf16 else 4
    activations = tokens * (
        model.n_layer * per_layer * act_bytes + 4 * 4 * model.vocab_size + 4 * model.n_embd
    )
    matrices = n - model.vocab_size * model.n_embd * (1 if model.tie_embeddings else 2)
    opt_state = 8 * n if optimizer == "adamw" else 4 * matrices + 8 * (n - matrices)
    return Memory(
        baseline=_rss() if baseline is None else baseline,
        weights=4 * n + (2 * n if bf16 else 0),
        gradients=4 * n,
        optimizer=opt_state,
        activations=activations,
        overhead=TRAINING_OVERHEAD,
    )


def _params(model: ModelConfig) -> int:
    """Parameters of the model (the same count GPT(model).num_params() gives), without building it."""
    import torch

    from .model import GPT

    with torch.device("meta"):
        return GPT(model).num_params()


_PLAN_BASELINE: dict[str, int] = {}  # the process's memory when it first planned, before any probe


def _rss() -> int:
    """This process's resident memory now (Linux), 0 where /proc is absent."""
    return _proc_bytes("/proc/self/status", "VmRSS:") or 0


def _available_memory() -> int | None:
    return _proc_bytes("/proc/meminfo", "MemAvailable:")


def _proc_bytes(path: str, key: str) -> int | None:
    """A "key: N kB" line of a /proc file, in bytes (None where the file or the line is absent)."""
    try:
        for line in open(path):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


PROBE_ROWS = 8


@dataclass
class Probe:
    shape: Shape
    dtype: str
    tokens_per_s: float
    params: int
    rows: int = PROBE_ROWS


def probe(
    shape: Shape,
    vocab_size: int,
    device,
    rows: int = PROBE_ROWS,
    seconds: float = 0.6,
    dtypes: list[str] | None = None,
) -> Probe:
    """Training tokens/s of `shape` on this machine: a few real steps (forward, backward, optimizer) of
    `rows` rows of random tokens, in float32 and, where the hardware has bfloat16, autocast bf16 (or in
    `dtypes`); the faster one."""
    import torch

    from .model import GPT
    from .optim import make_optimizers

    cfg = _model_config(shape, vocab_size)
    best = None
    dtypes = dtypes or ["float32"] + (
        ["bfloat16"] if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()) else []
    )
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    # The optimizer the plan trains with: Muon's orthogonalisation is a third of a small model's step on CPU.
    optimizers = make_optimizers(model, TrainConfig(optimizer=OPTIMIZER, lr=1e-6))
    x = torch.randint(0, vocab_size, (rows, shape.block_size), device=device)
    for dtype in dtypes:
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if dtype == "bfloat16"
            else contextlib.nullcontext()
        )
        steps, t0 = 0, None
        while True:
            with autocast:
                _, loss = model(x, x)
            loss.backward()
            for opt in optimizers:
                opt.step()
                opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if t0 is None:  # the first step warms caches and allocators up
                t0 = time.perf_counter()
                continue
            steps += 1
            if time.perf_counter() - t0 >= seconds or steps >= 50:
                break
        rate = steps * rows * shape.block_size / (time.perf_counter() - t0)
        if best is None or rate > best.tokens_per_s:
            best = Probe(shape, dtype, rate, model.num_params(), rows)
    return best


def _model_fields(shape: Shape) -> dict:
    """The model settings of a ladder shape, as --preset auto sets them."""
    return {
        "n_layer": shape.n_layer,
        "n_embd": shape.n_embd,
        "n_head": shape.n_head,
        "block_size": shape.block_size,
        "tie_embeddings": shape.tie_embeddings,
        **PLANNED_MODEL,
    }


def _model_config(shape: Shape, vocab_size: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, **_model_fields(shape))


@dataclass
class Plan:
    minutes: float
    device: str
    corpus_tokens: int
    probes: list[Probe]
    chosen: Probe
    rows: int
    steps: int
    memory: Memory
    why: str
    settings: dict = field(default_factory=dict)  # section -> field -> value, what --preset auto sets

    @property
    def train_tokens(self) -> int:
        return self.steps * self.rows * self.chosen.shape.block_size

    def lines(self, start: dt.datetime | None = None) -> list[str]:
        s, m = self.chosen.shape, self.memory
        now = start or dt.datetime.now()
        finish = now + dt.timedelta(minutes=self.minutes)
        when = finish.strftime("%H:%M" if finish.date() == now.date() else "%Y-%m-%d %H:%M")
        epochs = self.train_tokens / max(1, self.corpus_tokens)
        measured = ", ".join(f"{p.shape.n_layer}x{p.shape.n_embd} {p.tokens_per_s:,.0f}" for p in self.probes)
        return [
            f"plan for {self.minutes:g} minutes on {self.device} (measured tokens/s: {measured})",
            f"  model: {s.n_layer} layers x {s.n_embd} wide, {s.n_head} heads, context {s.block_size}"
            f"{'' if s.tie_embeddings else ', untied embeddings'}: "
            f"{self.chosen.params:,} parameters",
            f"  train: {self.rows} x {s.block_size} tokens a step, ~{self.steps:,} steps at the probe's "
            "speed "
            "(evaluations and saves counted; a busier machine trains fewer), "
            f"{self.settings['train']['optimizer']} at lr {s.lr:g}{self._momentum()}{self._decay()}, "
            f"{self.chosen.dtype}, {self.chosen.tokens_per_s:,.0f} tokens/s at {self.chosen.rows} rows",
            f"  data:  ~{self.train_tokens:,} tokens = {epochs:.1f} epochs of the "
            f"{self.corpus_tokens:,}-token corpus"
            + (
                f" (past ~{USEFUL_EPOCHS} epochs the val loss stops improving: more text would help more "
                "than more minutes; the best checkpoint is kept)"
                if epochs > USEFUL_EPOCHS
                else ""
            ),
            f"  memory: ~{_mb(m.total)} peak ({_mb(m.weights + m.gradients)} weights+grads, "
            f"{_mb(m.optimizer)} optimizer, {_mb(m.activations)} activations, "
            f"{_mb(m.baseline + m.overhead)} the process and runtime"
            + (
                f"; the plan's own probes peaked at {_mb(m.measured)}, which the process keeps)"
                if m.measured > m.counted
                else ")"
            ),
            f"  finish: ~{when} ({self.why})",
            *unexportable_note(ModelConfig(**self.settings["model"])),
        ]

    def _decay(self) -> str:
        share = self.settings["train"]["decay_fraction"]
        return f" until the last {share:.0%} of the minutes, then decaying to 0"

    def _momentum(self) -> str:
        train = self.settings["train"]
        if "muon_momentum" not in train:
            return ""
        return f" (momentum {train['muon_momentum']:g}, AdamW beta2 {train['beta2']:g})"


def unexportable_note(model: ModelConfig) -> list[str]:
    """A line for a model that trains, samples and serves here but that `scratchlm export` refuses, said
    before training rather than discovered at export."""
    from .formats.adapters import export_blocker

    blocker = export_blocker(model)
    if not blocker:
        return []
    why, _, todo = blocker.partition("; ")
    return [
        f"  note: {why}: this model trains, evaluates, samples and serves here, but `scratchlm export` "
        f"refuses it ({todo or 'see scratchlm export'})"
    ]


def _mb(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:,.0f} MB"


def make_plan(run_dir, cfg: RunConfig, minutes: float, context: int | None = None) -> Plan:
    """The plan for `minutes` of training of the run in `run_dir` (prepared) on cfg.train.device; with
    `context`, every shape of the ladder is probed and planned at that context instead of its own (a base
    meant for `sft` needs its instructions to fit: docs/benchmarks.md, "Replies that end")."""
    if not minutes > 0:
        raise UserError("--preset auto plans for a time budget: give --train.max-minutes M (e.g. 5)")
    run = Run.at(run_dir)
    run.require_data()
    from .data.shards import read_manifest

    manifest = read_manifest(run.data_dir)
    corpus = sum(s["tokens"] for s in manifest["splits"]["train"])
    vocab = manifest["vocab_size"]
    device = pick_device(cfg.train.device)
    baseline = _PLAN_BASELINE.setdefault("rss", _rss())
    train_s = minutes * 60 * (1 - EVAL_SHARE)
    available = _available_memory()
    probes: list[Probe] = []
    chosen, why = None, "the largest shape in the ladder"
    for shape in LADDER if context is None else (replace(s, block_size=context) for s in LADDER):
        p = probe(shape, vocab, device)
        probes.append(p)
        tokens = p.tokens_per_s * train_s
        if chosen is not None and tokens < MIN_TOKENS_PER_PARAM * p.params:
            why = f"a larger model would see under {MIN_TOKENS_PER_PARAM:g} tokens per parameter"
            break
        if chosen is not None and p.params > MAX_PARAMS_PER_TOKEN * corpus:
            why = f"a larger model would have over {MAX_PARAMS_PER_TOKEN:g} parameters per corpus token"
            break
        rows = _rows(tokens, shape)
        mem = _memory(p, rows, vocab, baseline)
        if chosen is not None and available and device.type == "cpu" and mem.total > 0.8 * available:
            why = "a larger model would not fit in memory"
            break
        chosen, chosen_rows = p, rows
    assert chosen is not None
    if _read_slow(chosen, probes):
        again = probe(chosen.shape, vocab, device)
        if again.tokens_per_s > chosen.tokens_per_s:
            probes[probes.index(chosen)] = chosen = again
            chosen_rows = _rows(chosen.tokens_per_s * train_s, chosen.shape)
    chosen, chosen_rows = _timed_at_rows(chosen, chosen_rows, vocab, device, train_s)
    # The count (_memory) misses what autograd and the allocator hold beyond the tensors it names (6x384 at 8
    # rows: 886 MB counted, 1,294 MB measured), while the probes just ran the same steps in this process, and
    # a process's peak never falls: the measured high-water mark bounds the estimate from below.
    peak = _proc_bytes("/proc/self/status", "VmHWM:") or 0
    memory = replace(_memory(chosen, chosen_rows, vocab, baseline), measured=peak)
    shape, rows = chosen.shape, chosen_rows
    step_s = rows * shape.block_size / chosen.tokens_per_s
    steps = steps_in_budget(minutes * 60, step_s, chosen.params, cfg.train.eval_batches)
    settings = {
        "model": _model_fields(shape),
        "train": {
            "batch_size": rows,
            "grad_accum": 1,
            "batch_tokens": 0,
            "lr": shape.lr,
            "optimizer": OPTIMIZER,
            "dtype": chosen.dtype,
            "max_minutes": minutes,
            "max_steps": 10 * steps + 1000,
            "max_tokens": 0,
            "warmup_steps": max(10, min(100, steps // 20)),
            "min_lr_ratio": 0.0,
            "schedule": SCHEDULE,
            "decay_fraction": DECAY_FRACTION,
            "eval_interval": _eval_interval(steps),
        },
    }
    if steps <= SHORT_PLAN_STEPS:
        settings["train"]["muon_momentum"] = SHORT_PLAN_MOMENTUM
        settings["train"]["beta2"] = SHORT_PLAN_BETA2
    return Plan(minutes, str(device), corpus, probes, chosen, rows, steps, memory, why, settings)


# What one evaluation and save costs beyond its forward passes: the best weights and a checkpoint (weights
# and optimizer state) written and synced, metrics.csv and loss.png redrawn: 3 s for the first and
# 1.5-3 s for later ones on this (contended) VM for models under 10M parameters (docs/benchmarks.md,
# "Plan estimates against training").
SAVE_FIXED_S = 1.5
FIRST_EVAL_S = 1.5  # the first also imports and sets up matplotlib and the metrics file
SAVE_BYTES_PER_S = 150 * 2**20


def _memory(p: Probe, rows: int, vocab: int, baseline: int) -> Memory:
    # The probe's own steps (PROBE_ROWS rows) are part of the same process's peak under --preset auto:
    # 6x384 at 4 rows measured 1,170 MB against 780 MB estimated at the training's rows.
    cfg = _model_config(p.shape, vocab)
    return estimate_memory(cfg, max(rows, PROBE_ROWS), OPTIMIZER, p.dtype == "bfloat16", baseline)


def _read_slow(chosen: Probe, probes: list[Probe]) -> bool:
    """Whether the chosen shape read slower than the costlier shape probed after it: a cheaper shape cannot
    train slower, so the machine slowed during its probe (a VM once read 4,452 tokens/s for 2 x 128 and
    6,357 for 4 x 128, and the plan took 17 rows a step where its speed called for ~40)."""
    after = probes[probes.index(chosen) + 1 :]
    return bool(after) and after[0].tokens_per_s > chosen.tokens_per_s


# The ladder's probes run PROBE_ROWS rows a step, and a step of more rows uses the cores better: the demo's
# 2 x 128 read 7,078 tokens/s at 8 rows and trained at ~9,000 at the 28 rows planned from that reading, so
# the plan said ~348 steps and trained 499 (docs/benchmarks.md, "The plan times the rows it trains").
def _timed_at_rows(chosen: Probe, rows: int, vocab: int, device, train_s: float) -> tuple[Probe, int]:
    """The chosen shape timed again at the rows planned from its ladder reading, and the rows planned again
    from that speed when it is faster; skipped when two steps would take over 2% of the budget."""
    step_s = rows * chosen.shape.block_size / chosen.tokens_per_s
    if rows <= chosen.rows or 2 * step_s > 0.02 * train_s:
        return chosen, rows
    import torch

    try:
        again = probe(chosen.shape, vocab, device, rows=rows, dtypes=[chosen.dtype])
    except torch.OutOfMemoryError:  # a small GPU: the ladder's reading stands, and training will say so
        return chosen, rows
    if again.tokens_per_s > chosen.tokens_per_s:
        return again, _rows(again.tokens_per_s * train_s, chosen.shape)
    return chosen, rows


def _eval_interval(steps: int) -> int:
    return max(50, steps // 4)


def steps_in_budget(budget_s: float, step_s: float, params: int, eval_batches: int) -> int:
    """Optimizer steps the trainer fits in `budget_s` seconds at `step_s` a step: what the clock also spends
    on the first step's warm-up (about two steps' time), an evaluation and save after the first step, at
    every eval interval and at the end (forward passes over eval_batches micro-batches, ~1/3 of a step
    each, and the checkpoint writes), and the last two steps' margin the clock keeps. A 0.6-second budget
    promised 12 steps and trained 2 before this was counted."""
    eval_s = eval_batches * step_s / 3 + SAVE_FIXED_S + 16 * params / SAVE_BYTES_PER_S
    steps = max(0.0, budget_s / step_s)
    for _ in range(3):  # the number of evaluations depends on the steps: settle it
        evals = 2 + int(steps // _eval_interval(max(1, int(steps))))
        steps = (budget_s - FIRST_EVAL_S - evals * eval_s) / step_s - 4
    return max(1, int(steps))


def _rows(tokens: float, shape: Shape) -> int:
    """Micro-batch rows so that the budget's tokens make about TARGET_STEPS optimizer steps."""
    rows = min(round(tokens / TARGET_STEPS / shape.block_size), MAX_STEP_TOKENS // shape.block_size)
    return max(MIN_ROWS, min(MAX_ROWS, rows))


DEFAULT_BATCH_TOKENS = 524_288  # GPT-2's half a million tokens a step, when --train.batch-size auto has none


def auto_batch(model, cfg: RunConfig, device, autocast, world_size: int = 1) -> tuple[int, int]:
    """(rows, batch_tokens) for --train.batch-size auto: the largest power-of-two micro-batch that fits,
    and the tokens per optimizer step (batch_tokens, or DEFAULT_BATCH_TOKENS) it is accumulated to.

    CUDA: real forward+backward steps, doubling until out of memory (caught; the cache is emptied).
    CPU: the memory estimate against 80% of the available memory (an out-of-memory there kills the process
    instead of raising)."""
    T = cfg.model.block_size
    target = cfg.train.batch_tokens or DEFAULT_BATCH_TOKENS
    most = max(1, target // (T * world_size))
    if device.type == "cuda":
        rows = largest_fitting(lambda b: _fits_on_gpu(model, b, T, device, autocast), most)
    else:
        # The process before the plan's probes and this model, not now: both are resident (freed memory
        # the allocator keeps and training reuses) and the estimate counts them itself (counting them
        # twice put the estimate 47% over the measured peak).
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        baseline = _PLAN_BASELINE.get("rss") or max(0, _rss() - weights)
        room = 0.8 * (_available_memory() or 2**34) + baseline
        bf16 = cfg.train.dtype == "bfloat16"
        rows = largest_fitting(
            lambda b: estimate_memory(cfg.model, b, cfg.train.optimizer, bf16, baseline).total <= room, most
        )
    if rows == 0:
        raise UserError(
            f"--train.batch-size auto: not even one sequence of {T} tokens fits on {device}; "
            "lower --model.block-size or the model's size"
        )
    per_micro_step = rows * T * world_size
    return rows, max(1, target // per_micro_step) * per_micro_step


def largest_fitting(fits, most: int, start: int = 1) -> int:
    """The largest of start, 2 x start, 4 x start... <= most for which fits(rows) is true, doubling until
    one does not (0 if not even `start` fits)."""
    rows = 0
    b = start
    while b <= most and fits(b):
        rows, b = b, 2 * b
    return rows


def _fits_on_gpu(model, rows: int, T: int, device, autocast) -> bool:
    import torch

    ok = True
    cuda = device.type == "cuda"
    # Dropout's draws must not shift the run's random stream.
    with torch.random.fork_rng(devices=[device] if cuda else []):
        try:
            x = torch.zeros((rows, T), dtype=torch.long, device=device)
            with autocast:
                _, loss = model(x, x)
            loss.backward()
            # The optimizer's state is allocated at the first real step: make room for AdamW's two moments.
            n = sum(p.numel() for p in model.parameters())
            state = torch.empty(2 * n, dtype=torch.float32, device=device)
            del state, loss, x
        except torch.OutOfMemoryError:
            ok = False
    model.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.empty_cache()
    return ok
