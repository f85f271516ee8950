"""Quality per minute on CPU: val loss and bits per byte after a fixed training time, plan vs presets.

    python bench/quality.py                                  # auto, tiny and small; 1 and 5 minutes each
    python bench/quality.py --presets auto --minutes 30
    python bench/quality.py --recipe configs/shakespeare-char-cpu.yaml   # a recipe as written (its own steps)

Each run is `scratchlm train RUN --preset P --train.max-minutes M --fresh` on the bundled book: the learning
rate schedule is laid over the clock, so every preset gets a complete schedule in the same minutes; auto is
the automatic plan for those minutes. Then `scratchlm eval` of the final checkpoint on the whole val split.
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["auto", "tiny", "small"])
    p.add_argument("--minutes", type=float, nargs="+", default=[1.0, 5.0])
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
        for minutes in a.minutes:
            for preset in a.presets:
                run = root / f"{preset}-{minutes:g}"
                subprocess.run(["rm", "-rf", str(run)], check=True)
                subprocess.run(["cp", "-r", str(base), str(run)], check=True)
                t = time.time()
                budget = ("--train.max-minutes", str(minutes))
                scratchlm("train", str(run), "--preset", preset, *budget, "--fresh")
                results.append((f"{preset} ({minutes:g} min)", time.time() - t, run))
    print(f"{'run':<28} {'minutes':>8} {'val loss':>9} {'ppl':>8} {'bits/byte':>10}")
    for name, seconds, run in results:
        scratchlm("eval", str(run), "--checkpoint", "last")
        ev = json.loads((run / "eval.json").read_text())
        loss, ppl, bpb = ev["loss"], ev["perplexity"], ev["bits_per_byte"]
        print(f"{name:<28} {seconds / 60:>8.1f} {loss:>9.4f} {ppl:>8.2f} {bpb:>10.4f}")


if __name__ == "__main__":
    main()
