"""A training step with freed memory kept (scratchlm.allocator, what `train` and `sft` run under) against
glibc's default, which maps every block over 32 MB afresh each step: each in its own process, alternately.

    python bench/allocator.py                      # the demo's model (2 x 128, untied, 4,096 tokens), 41 rows
    python bench/allocator.py --rows 8 --pairs 3   # a batch whose logits stay under 32 MB

Prints, per run, milliseconds per step (median over the timed steps), page faults per step and the peak
resident memory, then the ratio default / kept of the median step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

STEP = """
import json, resource, statistics, sys, time
import torch
from scratchlm.allocator import kept_freed_memory
from scratchlm.config import ModelConfig, TrainConfig
from scratchlm.model import GPT
from scratchlm.optim import make_optimizers

rows, steps = int(sys.argv[1]), int(sys.argv[2])
with kept_freed_memory():
    torch.manual_seed(0)
    model = GPT(ModelConfig(flavour="llama", vocab_size=4096, block_size=128, n_layer=2, n_embd=128, n_head=4,
                            tie_embeddings=False))
    optimizers = make_optimizers(model, TrainConfig(optimizer="muon", lr=8e-3))
    x = torch.randint(0, 4096, (rows, 128))
    times, faults = [], []
    for i in range(steps + 3):  # three steps grow the heap and warm the caches first
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        _, loss = model(x, x)
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"ms": 1000 * statistics.median(times[3:]), "faults": statistics.mean(faults[3:]),
                  "peak_mb": peak_mb}))
"""


def run(mode: str, rows: int, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    if mode == "default":
        env["GLIBC_TUNABLES"] = ""  # a user's own malloc setting: scratchlm leaves glibc's defaults alone
    out = subprocess.run(
        [sys.executable, "-c", STEP, str(rows), str(steps)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=41, help="rows of 128 tokens a step (the demo's plan: 41-51)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--pairs", type=int, default=2)
    args = ap.parse_args()
    logits_mb = args.rows * 128 * 4096 * 4 / 2**20
    print(
        f"2 x 128 llama, {args.rows} rows of 128 (logits {logits_mb:.0f} MB), {args.steps} timed steps a run"
    )
    results: dict[str, list[float]] = {"default": [], "kept": []}
    for _ in range(args.pairs):
        for mode in ("default", "kept"):
            r = run(mode, args.rows, args.steps)
            results[mode].append(r["ms"])
            print(
                f"{mode:>8}: {r['ms']:7.1f} ms/step  {r['faults']:9,.0f} page faults/step  "
                f"peak {r['peak_mb']:,.0f} MB"
            )
    ratio = statistics.median(results["default"]) / statistics.median(results["kept"])
    print(f"default / kept: {ratio:.2f}x (median step of each)")


if __name__ == "__main__":
    main()
