"""The plan's promises against what training then does: estimated peak memory and steps, measured peak RSS
and steps trained, for shapes from tiny to GPT-2 small's width, both flavours, with and without
--train.batch-size auto.

    python bench/plan_estimates.py                     # the default sweep (about 10-15 minutes on 2 cores)
    python bench/plan_estimates.py --minutes 0.3 --cases 0 1

Each case is one `train(RUN, preset="auto")` in a child process, the ladder cut down to the case's shape
(as a user's `--preset auto` would pick it), so the plan, its probe and the training share one process
as they do for a user; the child's peak RSS is the kernel's count (wait4's ru_maxrss). The estimate is
the plan's line, what the user is shown; with the batch probe, the estimate that picked its rows is printed
beside it (auto est).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# (layers, width, heads, context, flavour, batch probe)
CASES = [
    (2, 64, 2, 64, "llama", False),
    (4, 128, 4, 128, "gpt2", False),
    (4, 128, 4, 128, "llama", True),
    (6, 256, 8, 256, "gpt2", True),
    (6, 384, 6, 256, "llama", False),
    (8, 512, 8, 256, "gpt2", False),
    (12, 768, 12, 128, "llama", False),
    (12, 768, 12, 128, "gpt2", True),
]


def child(run: Path, case: list, minutes: float) -> None:
    """One plan + training in this process; prints a JSON line with the plan's estimates and the outcome."""
    from scratchlm import planning
    from scratchlm.commands.train import train

    n_layer, n_embd, n_head, ctx, flavour, probe = case
    planning.LADDER = (planning.Shape(n_layer, n_embd, n_head, ctx, 3e-3),)
    made = {}
    real_make = planning.make_plan

    def recording(*a, **k):
        made["plan"] = p = real_make(*a, **k)
        return p

    planning.make_plan = recording
    estimates = []  # what --train.batch-size auto estimated for each rows it tried
    real_estimate = planning.estimate_memory

    def estimating(model, rows, *a, **k):
        m = real_estimate(model, rows, *a, **k)
        estimates.append((rows, m.total))
        return m

    planning.estimate_memory = estimating
    model = {} if flavour == "llama" else {"flavour": "gpt2", "qk_norm": False}
    extra = {}
    if probe:  # the probe picks the rows, up to the plan's tokens a step
        extra = {"batch_size": "auto"}
    with contextlib.redirect_stdout(io.StringIO()) as out:
        if probe:
            # The plan's tokens a step, known only once planned: plan first, then train with the probe.
            p = real_make(run, _cfg(run), minutes)
            extra["batch_tokens"] = p.rows * ctx
        result = train(run, preset="auto", model=model, train={"max_minutes": minutes, **extra}, fresh=True)
    p = made["plan"]
    from scratchlm.run import Run

    cfg = Run.at(run).load_config()
    # The estimate the user was shown: the plan's line (with the probe, the rows it picked are at most the
    # plan's, and the probe's own estimate is printed beside it).
    est = p.memory.total
    auto_est = [t for r, t in estimates if r == cfg.train.batch_size][-1] if probe else None
    print(
        json.dumps(
            {
                "params": p.chosen.params,
                "rows": cfg.train.batch_size,
                "est_mem": est,
                "auto_est": auto_est,
                "est_steps": p.steps,
                "steps": result["step"],
                "log": out.getvalue()[-400:],
            }
        )
    )


def _cfg(run: Path):
    from scratchlm.run import Run

    return Run.at(run).config_or_default()


def measure(base: Path, work: Path, i: int, minutes: float) -> dict:
    run = work / f"case{i}"
    subprocess.run(["cp", "-r", str(base), str(run)], check=True)
    cmd = [sys.executable, __file__, "--child", json.dumps(CASES[i]), "--run", str(run)]
    cmd += ["--minutes", str(minutes)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise SystemExit(f"case {i} failed: {out[-2000:]}")
    r = json.loads(out.strip().splitlines()[-1])
    r["peak"] = usage.ru_maxrss * 1024
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=0.5)
    ap.add_argument("--cases", type=int, nargs="+", default=list(range(len(CASES))))
    ap.add_argument("--child")
    ap.add_argument("--run", type=Path)
    a = ap.parse_args()
    if a.child:
        return child(a.run, json.loads(a.child), a.minutes)
    from scratchlm.commands.prepare import prepare
    from scratchlm.config import RunConfig

    with tempfile.TemporaryDirectory(prefix="scratchlm-plan-est-") as tmp:
        base = Path(tmp) / "base"
        with contextlib.redirect_stdout(io.StringIO()):
            prepare(base, RunConfig())
        print(
            f"{'shape':<16} {'flavour':<6} {'probe':<5} {'params':>11} {'rows':>4} "
            f"{'est MB':>7} {'peak MB':>7} {'mem':>5} {'est steps':>9} {'steps':>5} {'auto est':>8}",
            flush=True,
        )
        for i in a.cases:
            n_layer, n_embd, _, ctx, flavour, probe = CASES[i]
            r = measure(base, Path(tmp), i, a.minutes)
            print(
                f"{n_layer}x{n_embd} ctx {ctx:<5} {flavour:<6} {'yes' if probe else 'no':<5} "
                f"{r['params']:>11,} {r['rows']:>4} {r['est_mem'] / 2**20:>7,.0f} {r['peak'] / 2**20:>7,.0f} "
                f"{r['est_mem'] / r['peak'] - 1:>+5.0%} {r['est_steps']:>9} {r['steps']:>5} "
                + (f"{r['auto_est'] / 2**20:>8,.0f}" if r["auto_est"] else f"{'-':>8}"),
                flush=True,
            )


if __name__ == "__main__":
    main()
