"""The sweeps behind the automatic plan: each ladder shape trained for the same minutes, and its val loss.

    python bench/plan_sweep.py --minutes 1 3.5            # the first three shapes on the bundled book
    python bench/plan_sweep.py --minutes 5 --shapes 0 1 2 3 --run runs/wp   # an already prepared run
    python bench/plan_sweep.py --minutes 1 --rows 8 16 32  # the batch the rule would pick, and others

Every run goes through `plan.make_plan` with the ladder cut down to one shape, so it gets the rule's batch,
learning rate and schedule for that shape (or the rows given), then `train` and `evaluate` (bits per byte on
the whole val split, sliding window). The row to read: for each budget, which shape reached the lowest
loss, and how many tokens per parameter it saw; MIN_TOKENS_PER_PARAM in plan.py comes from there.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import tempfile
import time
from pathlib import Path

from scratchlm import planning
from scratchlm.commands.prepare import prepare
from scratchlm.commands.train import train
from scratchlm.config import RunConfig
from scratchlm.evaluation import evaluate_runs as evaluate


def one(base: Path, work: Path, shape: planning.Shape, minutes: float, rows: int | None) -> dict:
    run = work / f"{shape.n_layer}x{shape.n_embd}-{minutes:g}m-{rows or 'rule'}"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(base, run, ignore=shutil.ignore_patterns("checkpoints", "previous", "metrics.csv"))
    cfg = RunConfig()
    planning.LADDER = (shape,)
    p = planning.make_plan(run, cfg, minutes)
    if rows:
        p.rows = rows
        p.settings["train"]["batch_size"] = rows
    cfg = RunConfig.from_dict(p.settings, "the plan")  # what --preset auto would set
    t = time.time()
    with contextlib.redirect_stdout(io.StringIO()):
        train(run, cfg, resume=False)
        result = evaluate(run)
    return {
        "shape": f"{shape.n_layer}x{shape.n_embd} ctx {shape.block_size}",
        "minutes": minutes,
        "rows": p.rows,
        "params": p.chosen.params,
        "dtype": p.chosen.dtype,
        "tokens_per_s": p.chosen.tokens_per_s,
        "wall_min": (time.time() - t) / 60,
        "bpb": result["bits_per_byte"],
        "loss": result["loss"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[1.0])
    ap.add_argument("--shapes", type=int, nargs="+", default=[0, 1, 2], help="indices into plan.LADDER")
    ap.add_argument("--rows", type=int, nargs="+", default=[0], help="micro-batch rows; 0: the rule's")
    ap.add_argument("--run", type=Path, help="a prepared run to copy (default: prepare the bundled book)")
    a = ap.parse_args()
    ladder = planning.LADDER
    with tempfile.TemporaryDirectory(prefix="scratchlm-plan-sweep-") as tmp:
        work = Path(tmp)
        base = a.run or work / "base"
        if not a.run:
            with contextlib.redirect_stdout(io.StringIO()):
                prepare(base, RunConfig())
        print(
            f"{'shape':<20} {'min':>5} {'rows':>5} {'params':>11} {'dtype':>9} {'tok/s':>8} "
            f"{'tok/param':>9} {'wall':>5} {'bits/byte':>9}",
            flush=True,
        )
        for minutes in a.minutes:
            for i in a.shapes:
                for rows in a.rows:
                    r = one(base, work, ladder[i], minutes, rows or None)
                    ratio = r["tokens_per_s"] * minutes * 60 / r["params"]
                    print(
                        f"{r['shape']:<20} {minutes:>5g} {r['rows']:>5} {r['params']:>11,} {r['dtype']:>9} "
                        f"{r['tokens_per_s']:>8,.0f} {ratio:>9.1f} {r['wall_min']:>5.1f} {r['bpb']:>9.4f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
