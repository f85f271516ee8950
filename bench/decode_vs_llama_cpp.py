"""Batch-1 greedy decoding on CPU: scratchlm vs llama.cpp (llama-cpp-python on our own f32 GGUF) and
transformers `generate`, same weights, same prompt, same number of tokens, one run (issue 27, item 1).

    PYTHONPATH=src python bench/decode_vs_llama_cpp.py                    # tiny preset + 6x384 llama
    PYTHONPATH=src python bench/decode_vs_llama_cpp.py --models tiny --tokens 100 --repeats 7

Per model: a run with a BPE tokenizer trained on a slice of the bundled book and random weights (speed does
not depend on them; bench/export.py's make_run), exported to an f32 GGUF with `scratchlm export`, then the
engines take turns within each repeat (median shown), each after one untimed warm-up. Every engine gets
the same thread count (2 by default: the machine's cores). The scratchlm rows are `generate_ids`, the
decoder `sample`, `chat` and the server use; "compiled" is the same call with decode compilation on.
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

sys.path.insert(0, str(Path(__file__).parent))
from export import make_run  # noqa: E402  (the bench folder's own helper)

import scratchlm  # noqa: E402
from scratchlm.config import SampleConfig  # noqa: E402
from scratchlm.decode import generate_ids, prompt_ids_for  # noqa: E402
from scratchlm.formats import write_export  # noqa: E402
from scratchlm.formats.adapters import to_hf_model  # noqa: E402

MODELS = {"tiny": ("tiny", "gpt2"), "6x384": ("small", "llama")}  # name: (preset, flavour)


def llama_cpp_engine(gguf: Path, ids: list[int], n: int, n_ctx: int, threads: int):
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)

    def run() -> list[int]:
        out = []
        for t in llm.generate(ids, top_k=1, temp=0.0, reset=True):
            out.append(t)
            if len(out) == n:
                break
        return out

    return run


def hf_engine(model, ids: list[int], n: int):
    hf = to_hf_model(model)
    x = torch.tensor([ids])

    @torch.inference_mode()
    def run() -> list[int]:
        y = hf.generate(
            x,
            attention_mask=torch.ones_like(x),
            do_sample=False,
            max_new_tokens=n,
            min_new_tokens=n,
            pad_token_id=0,
            eos_token_id=None,
        )
        return y[0, len(ids) :].tolist()

    return run


def scratch_engine(model, ids: list[int], n: int, compile: bool = False):
    cfg = SampleConfig(temperature=0.0, max_new_tokens=n, compile=compile)
    return lambda: list(generate_ids(model, ids, cfg))


def bench(name: str, root: Path, a) -> None:
    preset, flavour = MODELS[name]
    (root / name).mkdir()
    run = make_run(root / name, preset, flavour)
    lm = scratchlm.load(run)
    gguf = write_export(run, "gguf", root / f"{name}.gguf", dtype="f32")
    block = lm.config.model.block_size
    ids = prompt_ids_for(lm.tokenizer, "Prince Andrew said that", block)
    n = min(a.tokens, block - len(ids))
    engines = {"scratchlm": scratch_engine(lm.model, ids, n)}
    if a.compile:
        t = time.perf_counter()
        engines["scratchlm compiled"] = scratch_engine(lm.model, ids, n, compile=True)
        engines["scratchlm compiled"]()  # the first call compiles
        print(f"  {name}: compiling the decode step took {time.perf_counter() - t:.1f} s", flush=True)
    engines["llama.cpp (f32 GGUF)"] = llama_cpp_engine(gguf, ids, n, block, a.threads)
    if not a.no_hf:
        engines["transformers generate"] = hf_engine(lm.model, ids, n)
    outputs = {k: fn() for k, fn in engines.items()}  # warm-up
    times: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(a.repeats):
        for k, fn in engines.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    cfg = lm.config.model
    print(
        f"\n{name} ({preset} preset, {flavour}): {cfg.n_layer} layers x {cfg.n_embd}, context {block}, "
        f"vocab {cfg.vocab_size}, {lm.model.num_params() / 1e6:.2f}M params; {len(ids)}-token prompt, "
        f"{n} new tokens, {a.threads} threads, median of {a.repeats}; load average {os.getloadavg()[0]:.2f}"
    )
    ref = outputs["scratchlm"]
    llama_tps = n / statistics.median(times["llama.cpp (f32 GGUF)"])
    for k, ts in times.items():
        tps = n / statistics.median(ts)
        agree = next((i for i, (x, y) in enumerate(zip(outputs[k], ref, strict=False)) if x != y), n)
        print(f"  {k:24s} {tps:8.0f} tokens/s  {tps / llama_tps:5.2f}x llama.cpp  same tokens: {agree}/{n}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time the compiled decode step")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers generate")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models:
            bench(name, Path(tmp), a)


if __name__ == "__main__":
    main()
