"""scratchlm: train your own small GPT from scratch on your own text, end to end.

Every command is a function here, with the command's name and the same settings as keyword sections:

    import scratchlm
    scratchlm.prepare("runs/mine", input=["novel.txt"], tokenizer=dict(vocab_size=8000))
    scratchlm.train("runs/mine", preset="auto", train=dict(max_minutes=5))
    scratchlm.evaluate("runs/mine")
    scratchlm.sft("runs/chat", base="runs/mine", input="qa.jsonl", train=dict(max_steps=200))
    scratchlm.export("runs/chat", format="hf", out="exports/chat")
    lm = scratchlm.load("runs/chat")
    print(lm.chat([{"role": "user", "content": "Hi"}]).text)

The same call and the same flags resolve the same settings and write the same RUN/config.yaml.
`train_text(text, RUN)` prepares and trains from a string in one call (notebooks). Heavy modules (torch)
load on first use, so `scratchlm --help` stays instant. The code map is docs/architecture.md.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "prepare": ("commands.prepare", "prepare"),
    "train": ("commands.train", "train"),
    "sft": ("commands.sft", "sft"),
    "evaluate": ("commands.eval", "evaluate"),
    "sample": ("commands.sample", "sample"),
    "chat": ("commands.chat", "chat"),
    "serve": ("commands.serve", "serve"),
    "export": ("commands.export", "export"),
    "import_hf": ("commands.import_hf", "import_hf"),
    "plan": ("commands.plan", "plan"),
    "demo": ("commands.demo", "demo"),
    "load": ("lm", "load"),
    "train_text": ("notebook", "train_text"),
    "GPT": ("model", "GPT"),
    "GPTConfig": ("model", "GPTConfig"),
    "RunConfig": ("config", "RunConfig"),
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'scratchlm' has no attribute {name!r}")
