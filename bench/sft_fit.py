"""How much of an SFT set fits a context: the share of conversations that fit whole, and of those whose last
reply (with its <|end|>) fits, at several contexts, with a run's tokenizer.

    python bench/sft_fit.py runs/base                        # the bundled Self-Instruct seed tasks
    python bench/sft_fit.py runs/base --input chats.jsonl --contexts 128 256 512 1024

A conversation that does not fit whole is trained with its prompt side cut; one whose reply alone does not
fit is skipped (data/sft.py). A base meant for `scratchlm sft` wants a context that most conversations fit.
"""

from __future__ import annotations

import argparse

import numpy as np

from scratchlm.chat_template import render_many
from scratchlm.data.sft import bundled_sft, read_conversations
from scratchlm.run import Run
from scratchlm.tokenizer import Tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run whose tokenizer to count with")
    p.add_argument("--input", nargs="*", default=[], help="JSONL files (default: the bundled seed tasks)")
    p.add_argument("--contexts", nargs="*", type=int, default=[128, 256, 384, 512, 1024])
    a = p.parse_args()
    tok = Tokenizer.load(Run.at(a.run).tokenizer_dir)
    convs = read_conversations(a.input or [bundled_sft()])
    rendered = list(render_many([c.messages for c in convs], tok))
    whole = np.array([len(ids) for ids, _ in rendered])  # a row holds block_size + 1 tokens (the shift)
    reply = np.array([ids[::-1].index(tok.special_ids["<|assistant|>"]) for ids, _ in rendered])
    print(f"{len(convs)} conversations: median {np.median(whole):.0f} tokens, mean {whole.mean():.0f}")
    print("| context | fit whole | last reply fits |\n|---:|---:|---:|")
    for t in a.contexts:
        print(f"| {t} | {np.mean(whole <= t + 1):.0%} | {np.mean(reply <= t):.0%} |")


if __name__ == "__main__":
    main()
