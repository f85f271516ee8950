"""`scratchlm demo`: the whole pipeline on the bundled book, in a few CPU minutes."""

from __future__ import annotations

from pathlib import Path

from .config import RunConfig
from .evaluate import evaluate
from .prepare import prepare
from .run import Run
from .sample import sample
from .train import train

PROMPT = "Prince Andrew"


def demo(run_dir: str | Path = "runs/demo", steps: int = 360, minutes: float = 4.0) -> None:
    """About 3 minutes on 2 CPU cores: 360 steps of the tiny preset, cut short at `minutes` if slower."""
    run = Run.at(run_dir)
    print(f"== 1/4 prepare: the bundled book → tokenizer + token shards in {run.root}")
    cfg = RunConfig()
    prepare(run.root, cfg, overwrite=True)  # a demo run again starts over; the earlier one is set aside
    print(f"\n== 2/4 train: the tiny preset, {steps} steps (at most {minutes:g} minutes)")
    cfg.apply_preset("tiny")
    cfg.train.max_steps, cfg.train.warmup_steps, cfg.train.eval_interval = steps, steps // 10, steps // 4
    cfg.train.max_minutes = minutes
    train(run.root, cfg, resume=False)
    print("\n== 3/4 eval: the validation split")
    evaluate(run.root)
    print(f"\n== 4/4 sample: {PROMPT!r}")
    sample(run.root, PROMPT)
    r = run.root
    steps_next = [
        (f'scratchlm sample {r} "Natasha" --temperature 0.7', "more samples"),
        # The demo's time limit is saved with the run: lift it, or the longer run stops at the same minutes.
        (f"scratchlm train {r} --train.max-steps 4000 --train.max-minutes 0", "train longer (continues)"),
        (f"scratchlm serve {r}", "a web page and an OpenAI-compatible API"),
        (f"scratchlm sft {r}-chat --from {r}", "instruction-tune it (bundled Self-Instruct tasks)"),
        (f"scratchlm export {r} --format hf --out {r}-hf", "a transformers model (or --format gguf)"),
        ("scratchlm prepare runs/mine --input your_text.txt", "your own text"),
    ]
    width = max(len(cmd) for cmd, _ in steps_next) + 2
    print(f"\nEverything this run made is in {r}/:")
    made = "config.yaml tokenizer/ data/ checkpoints/ metrics.csv loss.png eval.json report.md samples.txt"
    print("  " + made.replace(" ", "  "))
    print("Next:")
    for cmd, why in steps_next:
        print(f"  {cmd.ljust(width)}# {why}")
