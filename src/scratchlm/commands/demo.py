"""`scratchlm demo`: the whole pipeline on the bundled book, in a few CPU minutes."""

from __future__ import annotations

from pathlib import Path

from ..common import UserError
from ..config import DEMO_MINUTES, RunConfig
from ..run import Run
from ..settings import resolve, with_tokenizer_vocab

PROMPT = "Prince Andrew"


def demo(run: str | Path = "runs/demo", *, minutes: float = DEMO_MINUTES) -> None:
    """The whole pipeline on the bundled book, in a few CPU minutes: `minutes` of training as the automatic
    plan lays them out, then eval and a sample (about 5 minutes in all on 2 CPU cores).

    Args:
        run: run directory (default: runs/demo)
        minutes: training time; the plan fills it
    """
    from ..data.prepare import prepare_run
    from ..evaluation import evaluate_runs
    from ..planning import make_plan
    from ..pretraining import pretraining_data
    from ..sampling import write_samples
    from ..trainer import fit

    if not minutes > 0:
        raise UserError(f"--minutes {minutes:g}: must be a number > 0")
    run = Run.at(run)
    print(f"== 1/4 prepare: the bundled book → tokenizer + token shards in {run.root}")
    cfg = resolve(run, "prepare", config=RunConfig())
    with run.writer_lock("demo"):
        prepare_run(run, cfg, overwrite=True)  # a demo run again starts over; the earlier one is set aside
    print(
        f"\n== 2/4 train: {minutes:g} minutes, the model this machine can train best in them (--preset auto)"
    )
    plan = make_plan(run.root, run.load_config(), minutes)
    print("\n".join(plan.lines()), flush=True)
    cfg = with_tokenizer_vocab(run, resolve(run, "train", preset=plan.settings))
    fit(run.root, cfg, pretraining_data, resume=False, command="train")
    print("\n== 3/4 eval: the validation split")
    evaluate_runs(run.root)
    print(f"\n== 4/4 sample: {PROMPT!r}")
    write_samples(run.root, PROMPT)
    _print_next_steps(run)


def _print_next_steps(run: Run) -> None:
    r = run.root
    steps_next = [
        (f'scratchlm sample {r} "Natasha" --temperature 0.7', "more samples"),
        # 5 minutes, not 30: on the one bundled book 30 buy no more (docs/benchmarks.md, quality per minute).
        (f"scratchlm train {r} --preset auto --train.max-minutes 5 --fresh", "a better model in 5 minutes"),
        (f"scratchlm serve {r}", "a web page and an OpenAI-compatible API"),
        (f"scratchlm sft {r}-chat --from {r}", "instruction-tune it (bundled Self-Instruct tasks)"),
        (f"scratchlm export {r} --format hf --out {r}-hf", "transformers (gguf, web, onnx: docs/deploy.md)"),
        ("scratchlm prepare runs/mine --input your_text.txt", "your own text"),
    ]
    width = max(len(cmd) for cmd, _ in steps_next) + 2
    print(f"\nEverything this run made is in {r}/:")
    made = "config.yaml tokenizer/ data/ checkpoints/ metrics.csv loss.png eval.json report.md samples.txt"
    print("  " + made.replace(" ", "  "))
    print("Next:")
    for cmd, why in steps_next:
        print(f"  {cmd.ljust(width)}# {why}")
