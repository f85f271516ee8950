"""Training-step throughput on CPU: scratchlm's GPT vs transformers' GPT2LMHeadModel, same shape and batch.

    python bench/train.py                       # 4 layers, 4 heads, 128 wide, vocab 65, batch 12 x 64
    python bench/train.py --vocab 4096 --block 128 --batch 16
    python bench/train.py --compile             # scratchlm with torch.compile (--train.compile true)
    python bench/train.py --activation gelu_tanh   # scratchlm with GPT-2's tanh GELU, as GPT2LMHeadModel
    python bench/train.py --bias false          # scratchlm without biases (the minimal GPT's default)
    python bench/train.py --peer-dropout        # also GPT2LMHeadModel with GPT2Config's dropout 0.1
    python bench/train.py --peer-minimal        # also a minimal tutorial-style GPT (bench/minimal_gpt.py)

On a CUDA GPU (bf16 autocast, fused AdamW, both sides compiled; prints MFU and peak GPU memory):

    python bench/train.py --device cuda --preset gpt2 --vocab 50257 --batch 16 --compile --rounds 1
    python bench/train.py --device cuda --preset gpt2 --vocab 50257 --batch 8 --compile --find-max-batch

Both models are trained with the same AdamW settings on the same random batches, interleaved in rounds
so that load from other processes hits both alike. Prints tokens/s, the ratio, and peak RSS of each
model measured in its own subprocess.

What differs between the sides: scratchlm runs its own GELU (--activation; default: scratchlm's
default, exact GELU) and, with --bias false, no biases; GPT2LMHeadModel runs its default "gelu_new"
(tanh GELU as separate ops). When the activations differ, GPT2LMHeadModel is also run with scratchlm's
activation (transformers' "gelu" for exact GELU), so the ratio with the same math is printed beside the
ratio against transformers' default. Dropout is 0 on both sides (the recipe's setting); --peer-dropout
adds a run of GPT2LMHeadModel with GPT2Config's default dropout of 0.1, which is what a script that
builds GPT2Config(n_layer=..., ...) without setting the *_pdrop fields trains with: context for
published "x times faster than GPT2LMHeadModel" figures, not a like-for-like ratio. --peer-minimal
adds the kind of minimal GPT those figures are quoted for (bench/minimal_gpt.py: exact GELU, no
biases, dropout 0), to measure on this machine what such a model gains over GPT2LMHeadModel.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from scratchlm.config import PRESETS, ModelConfig


def make_model(kind: str, a):
    import torch

    if kind == "scratchlm":
        from scratchlm.model import GPT, GPTConfig

        cfg = GPTConfig(
            vocab_size=a.vocab,
            block_size=a.block,
            n_layer=a.layers,
            n_head=a.heads,
            n_embd=a.width,
            activation=a.activation,
            bias=a.bias == "true",
        )
        return GPT(cfg)
    if kind == "minimal":
        from minimal_gpt import MinimalGPT

        torch.manual_seed(0)
        return MinimalGPT(a.vocab, a.block, a.layers, a.heads, a.width)
    from transformers import GPT2Config, GPT2LMHeadModel

    from scratchlm.formats.adapters import HF_ACTIVATION

    cfg = GPT2Config(
        vocab_size=a.vocab,
        n_positions=a.block,
        n_layer=a.layers,
        n_head=a.heads,
        n_embd=a.width,
        attn_implementation="sdpa",
        **(
            {}
            if kind == "transformers-dropout"
            else {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
        ),
        # "transformers": its default; "transformers-same": scratchlm's activation under its HF name.
        activation_function=HF_ACTIVATION[a.activation] if kind == "transformers-same" else "gelu_new",
    )
    torch.manual_seed(0)
    return GPT2LMHeadModel(cfg)


def step_fn(kind: str, model, a):
    import torch

    from scratchlm.optim import param_groups

    # The same optimizer for both: the fused AdamW that scratchlm's trainer uses on CPU and GPU.
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.95), fused=True)
    g = torch.Generator(device=a.device).manual_seed(0)
    # The trainer's defaults: bf16 autocast (fp32 master weights) on CUDA, fp32 on CPU.
    autocast = torch.autocast(a.device, dtype=torch.bfloat16, enabled=a.device == "cuda")

    def step(batch: int = a.batch):
        x = torch.randint(0, a.vocab, (batch, a.block), generator=g, device=a.device)
        y = torch.randint(0, a.vocab, (batch, a.block), generator=g, device=a.device)
        with autocast:
            if kind in ("scratchlm", "minimal"):
                _, loss = model(x, y)
            else:
                logits = model(input_ids=x).logits
                loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def worker(kind: str, a) -> None:
    """One model in a fresh process: prints steps timed per round and peak memory, as JSON."""
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    cuda = a.device == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # as the trainer sets it
    model = make_model(kind, a).to(a.device)
    # scratchlm's --train.compile (on by default on CUDA); on CUDA the peers are compiled too, so that the
    # ratio compares models rather than compilers. The warm-up steps include compiling.
    if a.compile and (kind == "scratchlm" or cuda):
        model = torch.compile(model)
    step = step_fn(kind, model, a)
    sync = torch.cuda.synchronize if cuda else lambda: None
    if a.find_max_batch:
        return print(json.dumps({"max_batch": largest_batch(step, a)}))
    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        sync()
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    if cuda:
        mem_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        mem_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = torch.cuda.get_device_name() if cuda else None
    print(json.dumps({"times": times, "mem_mb": mem_mb, "gpu": gpu}))


def largest_batch(step, a) -> int:
    """The largest micro-batch of --batch, 2x, 4x, ... (up to --max-batch) whose training step fits."""
    import torch

    from scratchlm.planning import largest_fitting

    def fits(batch: int) -> bool:
        try:
            for _ in range(2):  # the second step holds the optimizer state as well
                step(batch)
            torch.cuda.synchronize()
        except torch.OutOfMemoryError:
            return False
        return True

    return largest_fitting(fits, a.max_batch, start=a.batch)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--preset", choices=sorted(PRESETS), help="layers, heads, width and block of a preset")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--vocab", type=int, default=65)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--steps", type=int, default=30, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per model")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument(
        "--compile", action="store_true", help="scratchlm compiled (on CPU transformers stays eager)"
    )
    p.add_argument(
        "--find-max-batch", action="store_true", help="CUDA: the largest micro-batch scratchlm trains at"
    )
    p.add_argument("--max-batch", type=int, default=1024, help="where --find-max-batch stops doubling")
    p.add_argument(
        "--activation",
        choices=["gelu", "gelu_tanh"],
        default=ModelConfig.activation,
        help="scratchlm's MLP activation (default: scratchlm's default)",
    )
    p.add_argument("--bias", choices=["true", "false"], default="true", help="biases in scratchlm's model")
    p.add_argument(
        "--peer-dropout", action="store_true", help="also run GPT2LMHeadModel with its default dropout 0.1"
    )
    p.add_argument(
        "--peer-minimal", action="store_true", help="also run the minimal GPT of bench/minimal_gpt.py"
    )
    p.add_argument(
        "--worker",
        choices=["scratchlm", "transformers", "transformers-same", "transformers-dropout", "minimal"],
        help=argparse.SUPPRESS,
    )
    a = p.parse_args()
    if a.preset:
        m = PRESETS[a.preset]["model"]
        a.layers, a.heads, a.width, a.block = m["n_layer"], m["n_head"], m["n_embd"], m["block_size"]
    if a.find_max_batch and a.device != "cuda":
        p.error("--find-max-batch needs --device cuda (a CPU run does not run out of memory, it swaps)")
    if a.worker:
        return worker(a.worker, a)

    args = [a for a in sys.argv[1:]]
    if a.find_max_batch:
        out = subprocess.run(
            [sys.executable, __file__, *args, "--worker", "scratchlm"], capture_output=True, text=True
        )
        if out.returncode:
            sys.exit(out.stderr)
        batch = json.loads(out.stdout.strip().splitlines()[-1])["max_batch"]
        return print(
            f"largest micro-batch that trains (doubling from {a.batch}): {batch} x {a.block} tokens "
            f"({a.layers} layers, {a.width} wide, vocab {a.vocab}{', compiled' if a.compile else ''})"
        )
    results = {"scratchlm": [], "transformers": []}
    if a.activation != "gelu_tanh":  # transformers' default is the tanh GELU: also run it with ours
        results["transformers-same"] = []
    if a.peer_dropout:
        results["transformers-dropout"] = []
    if a.peer_minimal:
        results["minimal"] = []
    mem, gpu = {}, None
    for _ in range(a.rounds):
        for kind in results:
            out = subprocess.run(
                [sys.executable, __file__, *args, "--worker", kind],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[kind].extend(r["times"])
            mem[kind] = max(mem.get(kind, 0), r["mem_mb"])
            gpu = r["gpu"]
    tokens = a.batch * a.block
    speed = {k: tokens / sorted(v)[len(v) // 2] for k, v in results.items()}  # median step time
    compiled = ("all compiled" if a.device == "cuda" else "scratchlm compiled") if a.compile else "eager"
    print(
        f"shape: {a.layers} layers, {a.heads} heads, {a.width} wide, vocab {a.vocab}, "
        f"batch {a.batch} x {a.block}, {a.rounds} rounds x {a.steps} steps, {compiled}, "
        + (f"{gpu}, bf16 autocast" if gpu else "CPU, float32")
    )
    mfu = {}
    if gpu:
        import torch

        from scratchlm.common import peak_bf16_flops

        with torch.device("meta"):
            flops = make_model("scratchlm", a).flops_per_token()
        peak = peak_bf16_flops(gpu)
        if peak:  # the same model FLOPs for every side: what MFU compares is the work the model needs
            mfu = {k: flops * v / peak for k, v in speed.items()}
    from scratchlm.formats.adapters import HF_ACTIVATION

    labels = {
        "scratchlm": f"scratchlm, activation {a.activation}, bias {a.bias}",
        "transformers": "GPT2LMHeadModel, gelu_new (its default)",
        "transformers-same": f"GPT2LMHeadModel, {HF_ACTIVATION[a.activation]} (scratchlm's activation)",
        "transformers-dropout": "GPT2LMHeadModel, gelu_new, dropout 0.1 (GPT2Config's)",
        "minimal": "minimal GPT (bench/minimal_gpt.py), gelu, no bias",
    }
    memory = "peak GPU memory" if gpu else "peak RSS"
    for k in results:
        line = f"  {labels[k]:<54} {speed[k]:>9,.0f} tokens/s   {memory} {mem[k]:,.0f} MB"
        print(line + (f"   MFU {100 * mfu[k]:.1f}%" if k in mfu else ""))
    for k in results:
        if k != "scratchlm":
            print(f"ratio scratchlm / {labels[k]}: {speed['scratchlm'] / speed[k]:.2f}x")
    if "minimal" in results:
        for k in results:
            if k.startswith("transformers"):
                print(f"ratio minimal GPT / {labels[k]}: {speed['minimal'] / speed[k]:.2f}x")


if __name__ == "__main__":
    main()
