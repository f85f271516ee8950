"""CPU speedrun: the best Tiny Shakespeare model 60 seconds of training can buy, against the classic recipe.

    python bench/speedrun.py                                  # 60 s each, configs/shakespeare-speedrun.yaml
    python bench/speedrun.py --config configs/shakespeare-char-speedrun.yaml   # the character-level model
    python bench/speedrun.py --seconds 60 --config configs/shakespeare-char-speedrun.yaml --set train.lr=3e-3
    python bench/speedrun.py --skip-reference                 # scratchlm only (e.g. while sweeping a lever)
    python bench/speedrun.py --nproc 2                        # scratchlm as 2 processes (torchrun, DDP)

Both runs train for the same seconds in this process's machine state, one after the other, and are scored
the same way: nats per character over the whole last 10% of the text (non-overlapping windows of each
model's own context, every character predicted once, the first of each window with no context), which is
what the reference recipe's "val loss" estimates from random windows.

The reference is the minimal-GPT CPU recipe as tutorials and nanoGPT's README give it: character level,
context 64, batch 12, 4 layers x 4 heads x 128 wide, no dropout or biases, AdamW lr 1e-3 (betas 0.9/0.99,
weight decay 0.1), 100 warmup steps and cosine to 1e-4 over 2000 steps, clipping at 1.0; trained until
the clock runs out, as a user running it "for a minute" would. scratchlm runs `prepare` + `train` of the
config with --train.max-minutes set to the same seconds (the schedule is laid over the clock).
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from minimal_gpt import MinimalGPT  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


@torch.no_grad()
def nats_per_char(logits_of, ids: list[int], block: int, chars: int) -> float:
    """Total nats over every target of `ids` in non-overlapping windows of `block`, per character."""
    data = torch.tensor(ids)
    total, n = 0.0, len(ids) - 1
    for s in range(0, n, block):  # one window at a time keeps the ragged last one simple; seconds anyway
        end = min(s + block, n)
        logits = logits_of(data[s:end].unsqueeze(0))
        total += F.cross_entropy(logits[0].float(), data[s + 1 : end + 1], reduction="sum").item()
    return total / chars


def reference(text: str, seconds: float, seed: int) -> dict:
    torch.manual_seed(seed)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    cut = int(0.9 * len(text))
    train = torch.tensor([stoi[c] for c in text[:cut]])
    block, batch, max_iters, warmup, lr, min_lr = 64, 12, 2000, 100, 1e-3, 1e-4
    model = MinimalGPT(len(chars), block, layers=4, heads=4, width=128)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.99),
    )

    def lr_at(it: int) -> float:
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        ratio = min(1.0, (it - warmup) / (max_iters - warmup))
        return min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (lr - min_lr)

    start, step = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        ix = torch.randint(len(train) - block, (batch,))
        x = torch.stack([train[i : i + block] for i in ix])
        y = torch.stack([train[i + 1 : i + 1 + block] for i in ix])
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
    trained = time.perf_counter() - start
    model.eval()
    val = text[cut:]

    def logits_of(x):
        return model(x, x)[0]

    loss = nats_per_char(logits_of, [stoi[c] for c in val], block, len(val) - 1)
    return {
        "name": "reference (minimal GPT)",
        "steps": step,
        "tokens": step * batch * block,
        "seconds": trained,
        "params": sum(p.numel() for p in model.parameters()),
        "loss": loss,
    }


def scratchlm_run(
    text_path: Path, text: str, config: str, seconds: float, sets: list[str], workdir: Path, nproc: int = 1
) -> dict:
    import scratchlm
    from scratchlm.metrics import read_metrics

    run = workdir / "speedrun"
    overrides = [f"--{k.replace('_', '-')}={v}" for k, v in (s.split("=", 1) for s in sets)]
    tokenizer_sets = [o for o in overrides if o.startswith("--tokenizer.")]
    overrides = [o for o in overrides if o not in tokenizer_sets]
    cmd = [sys.executable, "-m", "scratchlm"]
    # The tokenizer learns from the training part only (the first 90%), so a subword vocabulary holds
    # nothing of the scored text; prepare then keeps it and splits off the same last 10% as val.
    train_part = workdir / "train-part.txt"
    train_part.write_text(text[: int(0.9 * len(text))], encoding="utf-8")
    if run.exists():
        shutil.rmtree(run)
    tok = [
        *cmd,
        "tokenizer",
        "train",
        str(run),
        "--input",
        str(train_part),
        "--config",
        config,
        *tokenizer_sets,
    ]
    subprocess.run(tok, check=True, capture_output=True)
    prep = [*cmd, "prepare", str(run), "--config", config, f"--data.inputs=[{text_path}]", *tokenizer_sets]
    subprocess.run(prep, check=True, capture_output=True)
    t = time.perf_counter()
    # Several processes (torchrun, DDP over gloo) split each step's rows between the cores.
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "-m", "scratchlm"]
    launch = cmd if nproc == 1 else torchrun
    subprocess.run(
        [
            *launch,
            "train",
            str(run),
            "--config",
            config,
            *overrides,
            f"--train.max-minutes={seconds / 60}",
            "--fresh",
        ],
        check=True,
    )
    wall = time.perf_counter() - t
    lm = scratchlm.load(run, "last")
    lm.model.eval()
    cut = int(0.9 * len(text))
    val = text[cut:]
    ids = lm.tokenizer.encode(val)
    loss = nats_per_char(lambda x: lm.model(x)[0], ids, lm.config.model.block_size, len(val) - 1)
    print(
        f"\nsample (temperature 0.8): {lm.generate('ROMEO:', max_new_tokens=300, temperature=0.8, seed=1)!r}"
    )
    rows = read_metrics(run / "metrics.csv")
    last = rows[-1] if rows else {}
    step = int(last.get("step", 0))
    tc = lm.config.train
    tokens = step * (tc.batch_tokens or nproc * tc.batch_size * tc.grad_accum * lm.config.model.block_size)
    return {
        "name": f"scratchlm ({Path(config).name})",
        "steps": step,
        "tokens": tokens,
        "seconds": wall,
        "params": lm.model.num_params(),
        "loss": loss,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--config", default=str(ROOT / "configs" / "shakespeare-speedrun.yaml"))
    p.add_argument("--input", type=Path, default=SHARED, help="Tiny Shakespeare (../shared/data by default)")
    p.add_argument(
        "--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override a setting"
    )
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--nproc", type=int, default=1, help="train scratchlm in this many processes (torchrun)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--keep", type=Path, help="keep scratchlm's run here (default: a temporary folder)")
    a = p.parse_args()
    if not a.input.exists():
        sys.exit(
            f"{a.input}: not found; pass --input PATH to Tiny Shakespeare (karpathy/char-rnn's input.txt)"
        )
    text = a.input.read_text(encoding="utf-8")
    results = []
    with tempfile.TemporaryDirectory(prefix="scratchlm-speedrun-") as tmp:
        if not a.skip_reference:
            results.append(reference(text, a.seconds, a.seed))
        results.append(scratchlm_run(a.input, text, a.config, a.seconds, a.set, a.keep or Path(tmp), a.nproc))
    print(f"\n{'run':<44} {'params':>9} {'steps':>6} {'tokens':>10} {'wall s':>7} {'val nats/char':>14}")
    for r in results:
        print(
            f"{r['name']:<44} {r['params']:>9,} {r['steps']:>6} {r['tokens']:>10,} {r['seconds']:>7.1f} "
            f"{r['loss']:>14.4f}"
        )
    if len(results) == 2:
        print(
            f"scratchlm - reference: {results[1]['loss'] - results[0]['loss']:+.4f} nats/char "
            f"(torch threads {torch.get_num_threads()})"
        )


if __name__ == "__main__":
    main()
