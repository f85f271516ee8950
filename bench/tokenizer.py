"""Benchmark scratchlm's tokenizers against the bare libraries they wrap, side by side in one run.

    PYTHONPATH=src python bench/tokenizer.py [--vocab-size 8000] [--repeats 3] [--kinds unigram bpe ...]

For War and Peace and Soseki's 吾輩は猫である (../shared/data, cleaned as `prepare` cleans them) and
each kind, on the same text with the same settings:
  train   scratchlm's train_tokenizer vs the library's trainer called directly (SentencePiece with
          the same options on the same lines; `tokenizers` BpeTrainer with the same byte-level setup;
          for char, which has no library trainer, a bare collections.Counter over the text);
  1 core  encode() paragraph by paragraph vs the library's own encode on each paragraph (a single
          encode call runs on one thread in both libraries);
  cores   encode_batch(paragraphs) vs the library's batch API on all cores (sp.encode(list,
          num_threads), Tokenizer.encode_batch_fast);
  book    encode_batch([the whole book]) vs the library's batch API on [the whole book]: scratchlm
          cuts a long document at safe newlines so every core gets a share;
and bytes per token. Both sides must give identical ids (checked). Wrapper and library take turns in
each repeat and the best of the repeats is kept, since the machine is shared. Ratios are
scratchlm / library in throughput (train: library time / scratchlm time): 0.90 means scratchlm is 10%
slower, above 1 faster.
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BOOKS = {"war_and_peace": "war_and_peace.txt", "soseki": "soseki_wagahai_neko.txt"}


def best_of(repeats: int, *fns, budget_s: float = 0.0):
    """Run the functions in turns, `repeats` times and until `budget_s` has passed; the fastest time of
    each and its last result. Fast measurements get more turns: a burst of load from other jobs on
    this shared machine can last seconds, longer than a few turns."""
    times, results = [float("inf")] * len(fns), [None] * len(fns)
    start, turns = time.perf_counter(), 0
    while turns < repeats or time.perf_counter() - start < budget_s:
        turns += 1
        for i, fn in enumerate(fns):
            results[i] = None
            gc.collect()
            gc.disable()  # as timeit does: a collection inside one side's timing is not its cost
            t0 = time.perf_counter()
            results[i] = fn()
            times[i] = min(times[i], time.perf_counter() - t0)
            gc.enable()
    return times, results


# ---- the bare libraries, configured as scratchlm configures them ----
def bare_sentencepiece_train(text: str, kind: str, vocab_size: int) -> bytes:
    import sentencepiece as spm

    from scratchlm.tokenizer import SPECIALS, cpu_threads

    lines = text.split("\n")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        # Raised so the library sees all the text, as scratchlm does (it cuts long lines): by default it
        # silently skips lines over 4192 bytes, 42 of Soseki's paragraphs.
        max_sentence_length=max(4192, *(len(line.encode()) for line in lines)),
        model_writer=model,
        model_type=kind,
        vocab_size=vocab_size,
        character_coverage=0.9995,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        unk_id=len(SPECIALS),
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        control_symbols=SPECIALS,
        user_defined_symbols=["\n"],
        input_sentence_size=2_000_000,
        shuffle_input_sentence=True,
        num_threads=cpu_threads(),
        minloglevel=2,
    )
    return model.getvalue()


def bare_bytelevel_train(text: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from scratchlm.tokenizer import SPECIALS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer)
    return tok


def bare_encoders(kind: str, folder: Path):
    """(encode one text, encode a list on all cores) of the library, loaded from the saved files."""
    from scratchlm.tokenizer import cpu_threads

    if kind in ("unigram", "bpe"):
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
        return sp.encode, lambda texts: sp.encode(texts, num_threads=cpu_threads())
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return (
        lambda text: hf.encode(text, add_special_tokens=False).ids,
        lambda texts: [e.ids for e in hf.encode_batch_fast(texts, add_special_tokens=False)],
    )


def bench_one(
    book: str, text: str, kind: str, vocab_size: int, repeats: int, budget: float, work: Path
) -> dict:
    from scratchlm.config import TokenizerConfig
    from scratchlm.tokenizer import Tokenizer, train_tokenizer

    cfg = TokenizerConfig(kind=kind, vocab_size=vocab_size)
    bare_train = {
        "unigram": lambda: bare_sentencepiece_train(text, "unigram", vocab_size),
        "bpe": lambda: bare_sentencepiece_train(text, "bpe", vocab_size),
        "bytelevel": lambda: bare_bytelevel_train(text, vocab_size),
        "char": lambda: Counter(text),
    }[kind]
    # Training is slow and varies less than encoding: fewer repeats.
    ours_train = lambda: train_tokenizer([text], cfg)  # noqa: E731
    (t_ours, t_bare), (tok, _) = best_of(max(1, repeats - 1), ours_train, bare_train)
    folder = work / f"{book}-{kind}"
    tok.save(folder)
    tok = Tokenizer.load(folder)
    one, many = bare_encoders(kind, folder)
    paras = [p + "\n" for p in text.split("\n")]
    mb = len(text.encode()) / 1e6

    (e1_ours, e1_bare), (ids_ours, ids_bare) = best_of(
        repeats, lambda: [tok.encode(p) for p in paras], lambda: [one(p) for p in paras], budget_s=budget
    )
    assert ids_ours == ids_bare, (book, kind, "1 core")
    (en_ours, en_bare), (ids_ours, ids_bare) = best_of(
        repeats, lambda: tok.encode_batch(paras), lambda: many(paras), budget_s=budget
    )
    assert ids_ours == ids_bare, (book, kind, "all cores")
    (eb_ours, eb_bare), (ids_ours, ids_bare) = best_of(
        repeats, lambda: tok.encode_batch([text]), lambda: many([text]), budget_s=budget
    )
    assert ids_ours == ids_bare, (book, kind, "whole book")
    n_tokens = len(ids_ours[0])
    return {
        "book": book,
        "kind": kind,
        "vocab": tok.vocab_size,
        "train_s": (t_ours, t_bare),
        "enc1": (mb / e1_ours, mb / e1_bare),
        "encn": (mb / en_ours, mb / en_bare),
        "encbook": (mb / eb_ours, mb / eb_bare),
        "bytes_per_token": len(text.encode()) / n_tokens,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--repeats", type=int, default=3, help="turns of each measurement, at least")
    ap.add_argument("--budget", type=float, default=6.0, help="seconds of turns per encode measurement")
    ap.add_argument("--kinds", nargs="+", default=["unigram", "bpe", "bytelevel", "char"])
    ap.add_argument("--books", nargs="+", default=list(BOOKS), choices=list(BOOKS))
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

    from scratchlm.data.corpus import clean, read_text
    from scratchlm.tokenizer import cpu_threads

    print(f"{cpu_threads()} cores; MB/s of UTF-8 input; ratio = scratchlm / library (best of {args.repeats})")
    header = (
        f"{'book':<14}{'kind':<10}{'vocab':>6} | {'train s':>13} {'ratio':>5} "
        f"| {'1 core MB/s':>13} {'ratio':>5} | {'all cores':>13} {'ratio':>5} "
        f"| {'whole book':>13} {'ratio':>5} | bytes/token"
    )
    print(header)
    work = Path(tempfile.mkdtemp(prefix="scratchlm-bench-tok-"))
    try:
        for book in args.books:
            path = SHARED / BOOKS[book]
            if not path.is_file():
                print(f"{path} is missing: skipped")
                continue
            text = clean(read_text(path))
            for kind in args.kinds:
                r = bench_one(book, text, kind, args.vocab_size, args.repeats, args.budget, work)
                (to, tb), (o1, b1), (on, bn), (ob, bb) = r["train_s"], r["enc1"], r["encn"], r["encbook"]
                print(
                    f"{book:<14}{kind:<10}{r['vocab']:>6} | {to:>6.2f}/{tb:<6.2f} {tb / to:>5.2f} "
                    f"| {o1:>6.2f}/{b1:<6.2f} {o1 / b1:>5.2f} | {on:>6.2f}/{bn:<6.2f} {on / bn:>5.2f} "
                    f"| {ob:>6.2f}/{bb:<6.2f} {ob / bb:>5.2f} | {r['bytes_per_token']:.2f}",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
