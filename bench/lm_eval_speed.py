"""lm-eval speed: scratchlm's model class (harness.ScratchLM) against lm-eval's own HFLM on the run's
Hugging Face export, on one local task, at batch size 1 and batched, in one run.

    PYTHONPATH=src python bench/lm_eval_speed.py [--preset small] [--task wp_next] [--fewshot 0]
        [--batch 16] [--limit 32] [--threads 1] [--repeats 3]

Random weights (the speed does not depend on them) on a tokenizer trained on a slice of the bundled book;
the task is one of tests/assets/lm_eval_tasks (local JSONL). The requests are built once; the two model
classes take turns within each repeat (median shown), so a change in the machine's load hits them alike.
Both must give the same log-likelihoods (within 1e-4): the same model read two ways.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from export import make_run  # noqa: E402  (bench/export.py: a run with random weights)

import scratchlm  # noqa: E402
from scratchlm.formats import write_export  # noqa: E402
from scratchlm.harness import ScratchLM  # noqa: E402


def task_requests(task_name: str, fewshot: int, limit: int | None) -> tuple[str, list]:
    """The task's requests as lm-eval builds them (its own loader, local data, no network)."""
    from lm_eval.tasks import TaskManager, get_task_dict

    os.chdir(REPO)  # the task YAMLs name their data files from the repository root
    manager = TaskManager(include_path=str(REPO / "tests/assets/lm_eval_tasks"), include_defaults=False)
    task = get_task_dict([task_name], manager)[task_name]
    if fewshot:
        task.set_config("num_fewshot", fewshot)
    task.build_all_requests(limit=limit)
    requests = [inst for inst in task.instances]
    return requests[0].request_type, requests


def scores(lm, kind: str, requests) -> list[float]:
    out = getattr(lm, kind)(requests, disable_tqdm=True)
    return [r[0] if isinstance(r, tuple) else r for r in out]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--flavour", default="gpt2")
    ap.add_argument("--task", default="wp_next")
    ap.add_argument("--fewshot", type=int, default=0)
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    # 1 thread by default: on this shared 2-core machine two threads contend (bench/export.py).
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from lm_eval.models.huggingface import HFLM

    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp), a.preset, a.flavour)
        write_export(run, "hf", Path(tmp) / "hf")
        lm = scratchlm.load(run)
        kind, requests = task_requests(a.task, a.fewshot, a.limit)
        n_params = sum(p.numel() for p in lm.model.parameters())
        print(
            f"{a.preset} {a.flavour}: {n_params / 1e6:.1f}M parameters, {a.threads} threads; {a.task} "
            f"({kind}), {a.fewshot}-shot, {len(requests)} requests"
        )
        for batch in (1, a.batch):
            ours = ScratchLM(lm.model, lm.tokenizer, batch_size=batch)
            # logits_cache off: its shared one-token lookup mis-scores requests whose tokens coincide
            # with another's (see docs/evaluation.md); it does not change the timing of these tasks.
            hf = HFLM(
                pretrained=str(Path(tmp) / "hf"),
                device="cpu",
                batch_size=batch,
                add_bos_token=True,
                logits_cache=False,
            )
            engines = {"scratchlm": ours, "lm-eval HFLM": hf}
            results = {name: scores(m, kind, requests) for name, m in engines.items()}  # warm-up
            diff = max(abs(x - y) for x, y in zip(*results.values(), strict=True))
            times: dict[str, list[float]] = {name: [] for name in engines}
            for _ in range(a.repeats):
                for name, m in engines.items():
                    t = time.perf_counter()
                    scores(m, kind, requests)
                    times[name].append(time.perf_counter() - t)
            ours_s, hf_s = (statistics.median(times[n]) for n in engines)
            print(
                f"batch {batch:3d}: scratchlm {ours_s:7.3f} s  HFLM {hf_s:7.3f} s  "
                f"({hf_s / ours_s:.2f}x faster)  max |log-likelihood difference| {diff:.2e}"
            )
            if diff > 1e-4:
                raise SystemExit("the two model classes disagree: one of them reads the model wrong")


if __name__ == "__main__":
    main()
