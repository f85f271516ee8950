"""scratchlm: train your own small GPT from scratch on your own text, end to end.

    import scratchlm
    lm = scratchlm.load("runs/demo")
    print(lm.generate("Prince Andrew", max_new_tokens=50))
    print(lm.chat([{"role": "user", "content": "Hi"}]).text)   # a model made by `scratchlm sft`
    lm = scratchlm.train_text(open("book.txt").read(), "runs/nb", train=dict(max_steps=300))  # prepare+train

The stages are plain functions in their modules: `scratchlm.prepare.prepare`, `scratchlm.train.train`,
`scratchlm.evaluate.evaluate`, `scratchlm.sample.sample`. Heavy modules (torch) load on first use, so
`scratchlm --help` stays instant.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig", "RunConfig", "load", "train_text"]

_LAZY = {
    "GPT": ("model", "GPT"),
    "GPTConfig": ("model", "GPTConfig"),
    "RunConfig": ("config", "RunConfig"),
    "load": ("lm", "load"),
    "train_text": ("notebook", "train_text"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'scratchlm' has no attribute {name!r}")
