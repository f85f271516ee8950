"""`scratchlm tokenizer train|encode|decode|stats RUN …`: the tokenizer on its own, without shards."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from .common import UserError, rank0_print
from .config import RunConfig
from .data.corpus import Corpus, clean, read_text
from .run import Run
from .tokenizer import Tokenizer, exists, measure, train_on_corpus


def train_command(run_dir: str | Path, cfg: RunConfig, overwrite: bool = False) -> Tokenizer:
    """Train the run's tokenizer on cfg.data.inputs and record the settings in RUN/config.yaml."""
    run = Run.at(run_dir)
    cfg.validate()
    with run.writer_lock("tokenizer train"):
        if exists(run.tokenizer_dir) and not overwrite:
            raise UserError(
                f"{run.tokenizer_dir} already holds a tokenizer; pass --overwrite to replace it "
                "(then run `scratchlm prepare` again: shards and checkpoints belong to the old one)"
            )
        tok = train_on_corpus(Corpus(cfg.data), cfg)  # the same text as `prepare` trains on
        # The old checkpoints only make sense with the old tokenizer: both are set aside together.
        if run.has_checkpoints() and (aside := run.set_aside(tokenizer=True)):
            rank0_print(f"set the run's earlier results and tokenizer aside in {aside}")
        tok.save(run.tokenizer_dir)
        cfg.model.vocab_size = tok.vocab_size
        run.save_config(cfg)
    rank0_print(
        f"saved {run.tokenizer_dir} ({tok.kind}, {tok.vocab_size} tokens, "
        f"{tok.meta['corpus_chars']:,} characters read)"
    )
    return tok


def encode_command(run_dir: str | Path, text: str, allow_special: bool = False) -> list[int]:
    ids = Tokenizer.load(Run.at(run_dir).tokenizer_dir).encode(text, allow_special=allow_special)
    print(" ".join(map(str, ids)))
    return ids


def decode_command(run_dir: str | Path, ids: list[str]) -> str:
    tok = Tokenizer.load(Run.at(run_dir).tokenizer_dir)
    values = []
    for raw in ids:
        for part in raw.replace(",", " ").split():
            if not part.lstrip("-").isdigit() or not 0 <= int(part) < tok.vocab_size:
                raise UserError(
                    f"id {part!r} is not a token id: give integers from 0 to {tok.vocab_size - 1}"
                )
            values.append(int(part))
    text = tok.decode(values)
    sys.stdout.write(text)
    return text


def _texts(run: Run, text: str | None) -> Iterator[str]:
    if text:  # cleaned as prepare cleans, so the numbers are those of the training data
        if not Path(text).is_file():
            raise UserError(f"--text {text}: no such file")
        yield clean(read_text(Path(text)), gutenberg=False)
        return
    cfg = run.load_config() if run.has_config() else RunConfig()
    for doc in Corpus(cfg.data).documents(Counter()):
        yield from doc.pieces()


def stats(run_dir: str | Path, text: str | None = None, top: int = 20) -> dict:
    """How the tokenizer cuts a text (the run's corpus by default), and its longest tokens."""
    run = Run.at(run_dir)
    tok = Tokenizer.load(run.tokenizer_dir)
    result = measure(tok, _texts(run, text), top)
    fallback_line = (
        "n/a (byte-level: every byte is in the vocabulary)"
        if tok.kind == "bytelevel"
        else f"{result['byte_fallback_tokens']:,} tokens ({100 * result['byte_fallback_rate']:.3f}%)"
    )
    lengths = tok.token_bytes()
    print(f"tokenizer       {tok.kind}, {tok.vocab_size:,} tokens, hash {tok.hash}")
    print(f"text            {result['chars']:,} characters, {result['bytes']:,} bytes")
    print(f"tokens          {result['tokens']:,} ({result['vocab_used']:,} distinct ids used)")
    print(f"bytes/token     {result['bytes_per_token']:.3f}")
    print(f"chars/token     {result['chars_per_token']:.3f}")
    print(f"byte-fallback   {fallback_line}")
    print(f"{top} longest tokens (bytes, id, text):")
    for i, piece in result["longest"]:
        print(f"  {lengths[i]:3d}  {i:6d}  {piece!r}")
    return result
