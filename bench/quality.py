"""Quality per minute on CPU: val loss and bits per byte after a fixed training time.

    python bench/quality.py                          # tiny and small presets on War and Peace, 5 minutes each
    python bench/quality.py --presets tiny --minutes 2
    python bench/quality.py --recipe configs/shakespeare-char-cpu.yaml   # a recipe as written (its own steps)

For a preset, a 20-step pilot measures steps/s and the run gets max_steps = steps/s x the time budget, so
the learning-rate schedule completes (a run cut short by --train.max-minutes would stop mid-schedule).
Bits per byte are tokenizer-independent: runs with different tokenizers compare.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def scratchlm(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "scratchlm", *args], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"scratchlm {' '.join(args)} failed:\n{out.stderr}")
    return out.stdout


def train_preset(run: Path, preset: str, steps: int, *extra: str) -> None:
    scratchlm("train", str(run), "--preset", preset, "--fresh", "--train.max-steps", str(steps), *extra)


def steps_per_second(run: Path, preset: str) -> float:
    t = time.time()
    train_preset(run, preset, 20, "--train.eval-interval", "1000", "--train.eval-batches", "1")
    return 20 / (time.time() - t - 3.0)  # ~3 s of start-up (imports, data) are not training


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "small"])
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--recipe", help="train this recipe as written instead of presets")
    p.add_argument("--workdir", default=None)
    a = p.parse_args()
    root = Path(a.workdir or tempfile.mkdtemp(prefix="scratchlm-quality-"))
    results = []
    if a.recipe:
        run = root / Path(a.recipe).stem
        scratchlm("prepare", str(run), "--config", a.recipe)
        t = time.time()
        scratchlm("train", str(run), "--config", a.recipe, "--fresh")
        results.append((Path(a.recipe).stem, time.time() - t, run))
    else:
        base = root / "base"
        scratchlm("prepare", str(base))
        for preset in a.presets:
            run = root / preset
            subprocess.run(["cp", "-r", str(base), str(run)], check=True)
            rate = steps_per_second(run, preset)
            steps = max(50, int(rate * a.minutes * 60))
            t = time.time()
            train_preset(
                run,
                preset,
                steps,
                "--train.warmup-steps",
                str(max(10, steps // 20)),
                "--train.eval-interval",
                str(steps),
                "--train.eval-batches",  # the pilot's 1 would otherwise stick (the run's saved config)
                "20",
                "--train.max-minutes",
                str(a.minutes * 1.2),
            )
            results.append((f"{preset} ({steps} steps)", time.time() - t, run))
    print(f"{'run':<28} {'minutes':>8} {'val loss':>9} {'ppl':>8} {'bits/byte':>10}")
    for name, seconds, run in results:
        scratchlm("eval", str(run), "--checkpoint", "last")
        ev = json.loads((run / "eval.json").read_text())
        loss, ppl, bpb = ev["loss"], ev["perplexity"], ev["bits_per_byte"]
        print(f"{name:<28} {seconds / 60:>8.1f} {loss:>9.4f} {ppl:>8.2f} {bpb:>10.4f}")


if __name__ == "__main__":
    main()
