"""Decoding speed: scratchlm's KV-cache sampler vs transformers `generate`, same weights, one run.

    PYTHONPATH=src python bench/generate.py                 # gpt2 and llama flavours, CPU, batch 1
    PYTHONPATH=src python bench/generate.py --flavour llama --new-tokens 128 --repeats 5

Both sides decode greedily with a KV cache from the same 16-token prompt; the weights are random
(speed does not depend on them) and copied into GPT2LMHeadModel / LlamaForCausalLM with the export
key map (scratchlm.formats.adapters, issue 8). The outputs are compared token by token, which checks the
copy. The ratios are what to read: absolute tokens/s on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from scratchlm.config import ModelConfig, SampleConfig
from scratchlm.decode import generate_ids
from scratchlm.formats.adapters import to_hf_model
from scratchlm.model import GPT


def scratch_cached(model: GPT, prompt: list[int], n: int) -> list[int]:
    cfg = SampleConfig(max_new_tokens=n, temperature=0.0)
    return list(generate_ids(model, prompt, cfg))


@torch.inference_mode()
def scratch_uncached(model: GPT, prompt: list[int], n: int) -> list[int]:
    """A full forward over the whole (sliding) context per new token: what the cache saves."""
    ids = list(prompt)
    for _ in range(n):
        logits, _ = model(torch.tensor([ids[-model.config.block_size :]]))
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


@torch.inference_mode()
def hf_generate(hf, prompt: list[int], n: int) -> list[int]:
    x = torch.tensor([prompt])
    y = hf.generate(
        x,
        attention_mask=torch.ones_like(x),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
        eos_token_id=None,
    )
    return y[0, len(prompt) :].tolist()


def timed(contenders: dict, repeats: int) -> dict:
    """Median seconds per contender. The contenders take turns within each repeat, so a change in
    the machine's load (it is shared) hits all of them alike; one warm-up call each first."""
    outputs = {name: fn() for name, fn in contenders.items()}
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: (statistics.median(times[name]), outputs[name]) for name in contenders}


def bench(flavour: str, args) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(
        flavour=flavour,
        vocab_size=args.vocab,
        block_size=args.block,
        n_layer=args.layers,
        n_head=args.heads,
        n_embd=args.width,
        bias=flavour == "gpt2",
    )
    model = GPT(cfg).eval()
    hf = to_hf_model(model)  # the export key map (issue 8)
    prompt = torch.randint(0, args.vocab, (16,), generator=torch.Generator().manual_seed(1)).tolist()
    n = args.new_tokens
    results = timed(
        {
            "scratchlm (KV cache)": lambda: scratch_cached(model, prompt, n),
            "transformers generate (KV cache)": lambda: hf_generate(hf, prompt, n),
            "scratchlm (no cache)": lambda: scratch_uncached(model, prompt, n),
        },
        args.repeats,
    )
    ours = results["scratchlm (KV cache)"]
    theirs = results["transformers generate (KV cache)"][1]
    agree = next((i for i, (a, b) in enumerate(zip(ours[1], theirs, strict=True)) if a != b), n)
    print(
        f"\n{flavour}: {cfg.n_layer} layers, {cfg.n_embd} wide, {cfg.n_head} heads, vocab {cfg.vocab_size}, "
        f"{model.num_params():,} parameters; batch 1, {len(prompt)}-token prompt, {n} new tokens, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(f"  greedy outputs agree on the first {agree}/{n} tokens")
    for name, (seconds, _) in results.items():
        print(f"  {name:34s} {n / seconds:8.0f} tokens/s   scratchlm (KV cache) is {seconds / ours[0]:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flavour", choices=["gpt2", "llama", "both"], default="both")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--block", type=int, default=512, help="context; > prompt + new tokens so nothing slides")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: least noise when shared)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for flavour in ("gpt2", "llama") if args.flavour == "both" else (args.flavour,):
        bench(flavour, args)


if __name__ == "__main__":
    main()
