"""The Muon optimizer step: torch.optim.Muon (Newton-Schulz in bfloat16, one matrix at a time) vs scratchlm's
StackedMuon in bfloat16 and in float32 (what it picks on a CPU without bfloat16 instructions), per shape.

    python bench/muon.py                 # the hidden matrices of 4 x 128, 4 x 256 and 2 x 512 models
    python bench/muon.py --repeats 5

Prints milliseconds per optimizer step (median) and the ratio torch / ours.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from scratchlm.common import cpu_has_bf16
from scratchlm.config import ModelConfig
from scratchlm.model import GPT
from scratchlm.optim import StackedMuon


def hidden_matrices(n_layer: int, n_embd: int) -> list[torch.nn.Parameter]:
    model = GPT(ModelConfig(flavour="llama", n_layer=n_layer, n_embd=n_embd, n_head=max(1, n_embd // 64)))
    return [p for n, p in model.named_parameters() if p.dim() == 2 and ".h." in f".{n}"]


def step_ms(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first step allocates the momentum buffers
        for p in params:
            p.grad = torch.randn_like(p)
        t = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    print(f"CPU with bfloat16 instructions: {cpu_has_bf16()}; {torch.get_num_threads()} threads")
    print("shape      torch.Muon bf16   StackedMuon bf16   StackedMuon f32   torch / ours(f32)")
    kwargs = dict(lr=1e-3, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for n_layer, n_embd in ((4, 128), (4, 256), (2, 512)):
        params = hidden_matrices(n_layer, n_embd)
        theirs = step_ms(torch.optim.Muon(params, **kwargs), params, args.repeats)
        ours = {}
        for dtype in (torch.bfloat16, torch.float32):
            opt = StackedMuon(params, **kwargs)
            opt.ns_dtype = dtype
            ours[dtype] = step_ms(opt, params, args.repeats)
        print(
            f"{n_layer} x {n_embd:<4} {theirs:>12,.0f} ms {ours[torch.bfloat16]:>14,.0f} ms "
            f"{ours[torch.float32]:>14,.0f} ms {theirs / ours[torch.float32]:>16.1f}x"
        )


if __name__ == "__main__":
    main()
