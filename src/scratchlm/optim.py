"""Optimizers and learning-rate schedules.

AdamW everywhere, or Muon for the hidden weight matrices (attention and MLP inside the blocks) with
AdamW for the rest (embeddings, head, norms, biases) — Muon is meant for 2-D hidden layers only.
"""

from __future__ import annotations

import math

import torch

from .common import UserError, cpu_has_bf16
from .config import TrainConfig


def _is_embedding(name: str) -> bool:
    return name.endswith(("wte.weight", "wpe.weight", "lm_head.weight"))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: biases, norm gains and embeddings are left alone (as GPT-2 and nanoGPT do)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 and not _is_embedding(name) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizers(model: torch.nn.Module, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    # The fused kernel is the fastest AdamW on CUDA and on CPU too (3x the foreach step for the tiny
    # preset on this 2-core VM, bench in docs/benchmarks.md); FSDP's sharded DTensor parameters take
    # the foreach path.
    sharded = any(type(p).__name__ == "DTensor" for p in model.parameters())
    adamw_kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=not sharded)
    if cfg.optimizer == "adamw":
        return [torch.optim.AdamW(param_groups(model, cfg.weight_decay), **adamw_kwargs)]
    if not hasattr(torch.optim, "Muon"):
        raise UserError(f"--train.optimizer muon needs torch >= 2.9 (this is {torch.__version__}); use adamw")
    hidden = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() == 2 and ".h." in f".{n}"]
    hidden_ids = {id(p) for p in hidden}
    rest = [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in hidden_ids]
    rest_groups = [
        {
            "params": [p for n, p in rest if p.dim() >= 2 and not _is_embedding(n)],
            "weight_decay": cfg.weight_decay,
        },
        {"params": [p for n, p in rest if p.dim() < 2 or _is_embedding(n)], "weight_decay": 0.0},
    ]
    # match_rms_adamw scales Muon's update to AdamW's RMS, so the same lr and weight decay apply to both.
    # FSDP's sharded DTensors keep torch's per-matrix Muon (the stacked ops have no tested sharding rules).
    muon_cls = torch.optim.Muon if sharded else StackedMuon
    muon = muon_cls(
        hidden,
        lr=cfg.lr,
        momentum=cfg.muon_momentum,
        weight_decay=cfg.weight_decay,
        adjust_lr_fn="match_rms_adamw",
    )
    if isinstance(muon, StackedMuon):
        muon.row_blocks = fused_row_blocks(model)
    return [muon, torch.optim.AdamW([g for g in rest_groups if g["params"]], **adamw_kwargs)]


def fused_row_blocks(model: torch.nn.Module) -> dict[int, list[int]]:
    """The matrices the model keeps fused for one matmul, by id, with their parts' row counts: attention's
    [q; k; v] and SwiGLU's [up; gate]. Muon orthogonalises each part on its own, as if they were separate."""
    cfg = model.config
    blocks = {}
    for name, p in model.named_parameters():
        if name.endswith("attn.c_attn.weight"):
            blocks[id(p)] = cfg.qkv_rows
        elif name.endswith("mlp.c_fc.weight") and cfg.flavour == "llama":
            blocks[id(p)] = [cfg.ffn_hidden] * 2
    return blocks


class StackedMuon(getattr(torch.optim, "Muon", torch.optim.Optimizer)):
    """torch.optim.Muon with the Newton-Schulz iterations run once per shape, on the stacked matrices.

    A transformer's hidden matrices come in a few shapes repeated per layer; torch's Muon orthogonalises
    them one at a time, ~20 small ops each. Stacked, a 4-layer model's 16 matrices take 4 batched runs:
    the optimizer step of a 4 x 128 model went from 32 to 20 ms on this 2-core CPU (docs/benchmarks.md).
    Same hyperparameters and state ("momentum_buffer") as torch's, so checkpoints load either way, and the
    same maths but for the fused matrices (row_blocks, from fused_row_blocks): their parts are orthogonalised
    apart, as the separate matrices they stand for; one [q; k; v] orthogonalised whole shares one spectrum
    over three maps. At the demo's 450 fixed steps that scored 0.009 bits/byte lower (two seeds;
    docs/benchmarks.md, "Muon on the parts of a fused matrix"). torch's Muon under FSDP steps them whole.

    Newton-Schulz runs in bfloat16 (as torch's) where the hardware has it, and in float32 on a CPU without
    bfloat16 instructions: there a bfloat16 (512 x 512) @ (512 x 2048) took 3.7 s against 0.03 s in
    float32 (AVX2 EPYC, 2 threads), and one 512-wide matrix's orthogonalisation 20 s against 0.3 s.
    """

    ns_dtype: torch.dtype | None = None  # None: bfloat16 on CUDA or a CPU with bfloat16, else float32
    row_blocks: dict[int, list[int]] = {}  # id(param) -> the row counts of its parts (fused_row_blocks)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("StackedMuon takes no closure")
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            bufs = []
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
                bufs.append(self.state[p]["momentum_buffer"])
            torch._foreach_lerp_(bufs, grads, 1 - group["momentum"])
            # A fresh list either way: the parts below are overwritten with their orthogonalised selves.
            updates = (
                torch._foreach_lerp(grads, bufs, group["momentum"])
                if group["nesterov"]
                else [b.clone() for b in bufs]
            )
            # Every part of every matrix, grouped by shape: each group is one batched Newton-Schulz.
            by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
            for p, update in zip(params, updates, strict=True):
                for part in update.split(self.row_blocks.get(id(p), [p.size(0)])):
                    by_shape.setdefault(tuple(part.shape), []).append(part)
            lr, wd = group["lr"], group["weight_decay"]
            ns = group["ns_coefficients"], group["ns_steps"], group["eps"]
            for shape, parts in by_shape.items():
                stacked = torch.stack(parts)
                ortho = _orthogonalise(stacked, *ns, self.ns_dtype or _ns_dtype(stacked.device)).to(
                    stacked.dtype
                )
                ortho.mul_(_shape_factor(group["adjust_lr_fn"], *shape))
                torch._foreach_copy_(parts, list(ortho.unbind(0)))  # the update, in place, scaled per part
            torch._foreach_mul_(params, 1 - lr * wd)
            torch._foreach_add_(params, updates, alpha=-lr)


def _shape_factor(adjust_lr_fn: str | None, rows: int, cols: int) -> float:
    """torch.optim.Muon's learning-rate scaling by the matrix's shape, for each of its adjust_lr_fn."""
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1, rows / cols)) if adjust_lr_fn in (None, "original") else 1.0


def _ns_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type != "cpu" or cpu_has_bf16() else torch.float32


def _orthogonalise(
    g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float, dtype=torch.bfloat16
):
    """Newton-Schulz on a stack of matrices (n, rows, cols), as torch.optim.Muon does for one."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(1) > g.size(2)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(1, 2), keepdim=True).clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def lr_at(step: int, cfg: TrainConfig, progress: float | None = None) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then the chosen schedule.

    cosine:   decay to min_lr_ratio x lr at max_steps.
    wsd:      warmup-stable-decay; flat, then linear to min_lr_ratio x lr over the last decay_fraction.
    constant: flat after warmup.

    progress: for a run with a clock budget (--train.max_minutes), the share of it spent (0 to 1); the
    decay then follows the clock instead of step / max_steps, so it ends when the minutes run out.
    """
    if progress is not None:
        return _lr_on_the_clock(step, cfg, progress)
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "wsd":
        decay_start = cfg.max_steps * (1 - cfg.decay_fraction)
        if step < decay_start:
            return cfg.lr
        return _decayed(cfg, min(1.0, (step - decay_start) / max(1, cfg.max_steps - decay_start)))
    return _decayed(cfg, min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)))


def _decayed(cfg: TrainConfig, share: float) -> float:
    """The rate after `share` (0 to 1) of the decay phase: cosine, or wsd's linear ramp; constant stays."""
    min_lr = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "wsd":
        return cfg.lr + (min_lr - cfg.lr) * share
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1 + math.cos(math.pi * share))


def _lr_on_the_clock(step: int, cfg: TrainConfig, progress: float) -> float:
    """The schedule laid over a share of the time budget; warmup stays in steps.

    Warmup is there to let the first updates (and Adam's moment estimates) settle, which is a number of
    steps whatever the hardware's speed; a share of the budget would warm up for 10x more steps on a 10x
    faster machine. The decay curve runs over the whole budget and the rate is the lower of the two, so the
    hand-over from warmup is continuous (the decay has moved only by the warmup's sliver of the clock).
    """
    warm = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
    p = min(1.0, max(0.0, progress))
    if cfg.schedule == "wsd" and p < 1:  # flat, then the ramp over the clock's last decay_fraction
        p = min(1.0, max(0.0, p - (1 - cfg.decay_fraction)) / max(1e-9, cfg.decay_fraction))
    return min(warm, _decayed(cfg, p))
