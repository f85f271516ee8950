"""The engine's batching: aggregate tokens/s of N concurrent requests vs one alone, one process.

    PYTHONPATH=src python bench/serve_engine.py                  # tiny preset, CPU, 16 greedy requests
    PYTHONPATH=src python bench/serve_engine.py --requests 8 --new-tokens 64
    PYTHONPATH=src python bench/serve_engine.py --temperature 0.8   # seeded sampling, top-k 50, as served

The weights are random (speed does not depend on them); the prompts differ in length so the rows
sit at different positions. The ratio is what to read: absolute tokens/s on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from scratchlm.config import PRESETS, ModelConfig, SampleConfig
from scratchlm.engine import Engine
from scratchlm.model import GPT


def run(engine: Engine, prompts: list[list[int]], cfg: SampleConfig) -> float:
    """Tokens/s over all requests, submitted together (seeds 0, 1, ...) and consumed to the end."""
    t = time.perf_counter()
    requests = [engine.submit(p, dataclasses.replace(cfg, seed=i)) for i, p in enumerate(prompts)]
    n = sum(len(list(r)) for r in requests)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64, help="64: the tiny context holds prompt + output")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy; > 0: seeded, top-k 50")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: least noise when shared)")
    ap.add_argument(
        "--compile", action="store_true", help="the engine's compiled batch step (serve --compile)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig(**PRESETS[args.preset]["model"])
    model = GPT(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    lengths = [4 + 3 * i for i in range(args.requests)]
    prompts = [torch.randint(0, cfg.vocab_size, (n,), generator=gen).tolist() for n in lengths]
    sample = SampleConfig(temperature=args.temperature, top_k=50, max_new_tokens=args.new_tokens)
    with Engine(model, max_batch=args.requests, compile=args.compile) as engine:
        run(engine, prompts[:1], sample)  # warm-up
        alone, together = [], []
        for _ in range(args.repeats):  # taking turns, so a change in the machine's load hits both alike
            alone.append(run(engine, prompts[:1], sample))
            together.append(run(engine, prompts, sample))
    a, b = statistics.median(alone), statistics.median(together)
    print(
        f"{args.preset}: {model.num_params():,} parameters, context {cfg.block_size}, "
        f"{args.new_tokens} new tokens each, temperature {args.temperature}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(f"  1 request alone          {a:8.0f} tokens/s")
    print(f"  {args.requests:2d} concurrent requests {b:8.0f} tokens/s   {b / a:.2f}x")


if __name__ == "__main__":
    main()
