"""Typed text in llama.cpp vs scratchlm: how many lines get other ids, per tokenizer kind.

    PYTHONPATH=src python bench/tokenize_parity.py [--vocab-size 4096] [--lines 3000] [--kinds unigram ...]
        [--data ../shared/data]

Each kind is trained on War and Peace plus the first half of Soseki's 吾輩は猫である (../shared/data,
cleaned as `prepare` cleans them), its vocabulary written as the GGUF export writes it
(formats.gguf.write_vocab_gguf), and llama.cpp (llama-cpp-python) tokenizes text the tokenizer never saw:
the first --lines lines of Tiny Shakespeare (English) and the first --lines sentences of the book's second
half (Japanese, cut after each 。). A line mismatches when llama.cpp's ids differ from scratchlm's encode().
For the SentencePiece kinds a mismatch is also sorted by why: the same pieces in another order
("permuted"), other pieces with exactly the same total score ("tie"), or anything else ("other").
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

from scratchlm.config import TokenizerConfig
from scratchlm.data.corpus import clean, read_text
from scratchlm.formats.gguf import write_vocab_gguf
from scratchlm.tokenizer import KINDS, train_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def texts(data: Path, n_lines: int) -> tuple[list[str], dict[str, list[str]]]:
    """The training documents (the first half of each book) and held-out lines per language."""
    wp = clean(read_text(data / "war_and_peace.txt")).split("\n")
    neko = clean(read_text(data / "soseki_wagahai_neko.txt"), gutenberg=False).split("\n")
    shakespeare = read_text(data / "tinyshakespeare.txt").split("\n")
    train = ["\n".join(wp[: len(wp) // 2]), "\n".join(neko[: len(neko) // 2])]

    def held_out(lines: list[str]) -> list[str]:
        return [s for s in lines if s.strip()][:n_lines]

    return train, {
        "War and Peace": held_out(wp[len(wp) // 2 :]),
        "Shakespeare": held_out(shakespeare),
        "Soseki": held_out(neko[len(neko) // 2 :]),
    }


def why(tok, ours: list[int], theirs: list[int]) -> str:
    """For SentencePiece kinds: how llama.cpp's segmentation relates to scratchlm's."""
    if Counter(ours) == Counter(theirs):
        return "permuted"
    if not hasattr(tok, "sp"):
        return "other"
    score = tok.sp.get_score
    return "tie" if sum(map(score, ours)) == sum(map(score, theirs)) else "other"


def measure(kind: str, docs: list[str], lines: dict[str, list[str]], vocab_size: int, tmp: Path):
    from llama_cpp import Llama

    t0 = time.perf_counter()
    tok = train_tokenizer(docs, TokenizerConfig(kind=kind, vocab_size=vocab_size))
    tok_dir = tmp / kind
    tok.save(tok_dir)
    write_vocab_gguf(tok, tok_dir, tmp / f"{kind}.gguf")
    llm = Llama(model_path=str(tmp / f"{kind}.gguf"), vocab_only=True, verbose=False)
    out = {}
    try:
        for lang, group in lines.items():
            reasons, example = Counter(), None
            for line in group:
                ours = tok.encode(line)
                theirs = llm.tokenize(line.encode(), add_bos=False, special=False)
                if theirs != ours:
                    reasons[why(tok, ours, theirs)] += 1
                    example = example or line
            out[lang] = (reasons, len(group), example)
    finally:
        llm.close()
    return tok.vocab_size, out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--lines", type=int, default=3000)
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--data", type=Path, default=SHARED, help="the folder of the three books")
    a = ap.parse_args()
    docs, lines = texts(a.data, a.lines)
    print(f"held-out lines: {', '.join(f'{len(v)} {k}' for k, v in lines.items())}")
    print(f"{'kind':<10} {'vocab':>6} {'text':<13} {'mismatching lines':>18}  why")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in a.kinds:
            size, out, secs = measure(kind, docs, lines, a.vocab_size, Path(tmp))
            for lang, (reasons, total, example) in out.items():
                bad = sum(reasons.values())
                detail = ", ".join(f"{n} {r}" for r, n in reasons.most_common()) or "-"
                print(f"{kind:<10} {size:>6} {lang:<13} {bad:>6}/{total} {100 * bad / total:5.2f}%  {detail}")
                if example:
                    print(f"{'':<31} e.g. {example[:70]!r}")
            print(f"{'':<31} ({secs:.0f} s)")


if __name__ == "__main__":
    main()
