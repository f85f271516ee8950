"""SFT vs pretraining throughput at the same shape, through the same trainer: tokens/s of each, and the ratio.

    python bench/sft.py                 # tiny preset (4 x 128, context 128), batch 16, 2 rounds x 60 steps
    python bench/sft.py --preset small --batch 8 --steps 30

A base run is pretrained on the bundled book, then fine-tuned on the bundled Self-Instruct seed tasks; the
two alternate in rounds (each resumes its own run), so load from other processes hits both alike. tokens/s is
what the progress bar and metrics.csv report: real (non-padding) tokens per second of training, evaluation
excluded; the first logged interval of each session (warm-up) is left out. SFT rows are packed conversations,
so the ratio also shows what packing leaves as padding.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
from pathlib import Path

from scratchlm.commands.prepare import prepare
from scratchlm.commands.sft import sft
from scratchlm.commands.train import train
from scratchlm.config import PRESETS, SFT_TRAIN_DEFAULTS, RunConfig


def speeds(run: Path, after_step: int) -> list[float]:
    rows = list(csv.DictReader(open(run / "metrics.csv", encoding="utf-8")))
    return [float(r["tokens_per_s"]) for r in rows if r["tokens_per_s"] and int(r["step"]) > after_step]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=60, help="steps per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    base_cfg = RunConfig.from_dict(PRESETS[a.preset])
    tc = base_cfg.train
    tc.batch_size, tc.grad_accum, tc.log_interval, tc.threads = a.batch, 1, 10, a.threads
    tc.eval_interval, tc.eval_batches, tc.warmup_steps = 10**6, 1, 10
    prepare(root / "base", base_cfg)
    train(root / "base", _with(base_cfg, max_steps=20))  # the weights SFT starts from

    results: dict[str, list[float]] = {"pretraining": [], "sft": []}
    for r in range(1, a.rounds + 1):
        end = 20 + r * a.steps
        train(root / "base", _with(base_cfg, max_steps=end))
        results["pretraining"] += speeds(root / "base", end - a.steps + 10)
        sft_cfg = RunConfig.from_dict(base_cfg.to_dict())
        sft_cfg.train = _with(sft_cfg, **SFT_TRAIN_DEFAULTS).train
        sft_cfg.train.batch_size, sft_cfg.train.log_interval = a.batch, 10
        sft_cfg.train.eval_interval, sft_cfg.train.eval_batches, sft_cfg.train.max_steps = (
            10**6,
            1,
            r * a.steps,
        )
        sft_cfg.sft.base, sft_cfg.sft.epochs, sft_cfg.sft.check_prompts = str(root / "base"), 0, 0
        sft(root / "sft", sft_cfg)
        results["sft"] += speeds(root / "sft", (r - 1) * a.steps + 10)

    m = PRESETS[a.preset]["model"]
    print(
        f"shape: {a.preset} ({m['n_layer']} layers, {m['n_embd']} wide, context {m['block_size']}), "
        f"batch {a.batch}, "
        f"{a.rounds} rounds x {a.steps} steps each, CPU float32"
    )
    med = {k: statistics.median(v) for k, v in results.items()}
    for k, v in results.items():
        print(f"  {k:<12} {med[k]:>9,.0f} tokens/s (median of {len(v)} intervals of 10 steps)")
    print(f"ratio SFT / pretraining: {med['sft'] / med['pretraining']:.3f}")


def _with(cfg: RunConfig, **train) -> RunConfig:
    out = RunConfig.from_dict(cfg.to_dict())
    for k, v in train.items():
        setattr(out.train, k, v)
    return out


if __name__ == "__main__":
    main()
