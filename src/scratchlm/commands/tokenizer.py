"""`scratchlm tokenizer train|encode|decode|stats RUN …`: the tokenizer on its own, without shards."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..common import UserError, rank0_print
from ..config import RunConfig
from ..run import Run
from ..settings import print_settings, resolve, with_inputs

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer


def train(
    run: str | Path,
    config: RunConfig | None = None,
    *,
    input: Sequence[str] | None = None,
    overwrite: bool = False,
    recipe: str | None = None,
    data: Mapping[str, Any] | None = None,
    tokenizer: Mapping[str, Any] | None = None,
    print_config: bool = False,
    origin: str = "scratchlm tokenizer train",
) -> Tokenizer | RunConfig:
    """Train RUN's tokenizer on the inputs and record the settings in RUN/config.yaml.

    Args:
        run: run directory (created if missing)
        input: as for `prepare`; repeatable
        overwrite: replace the run's existing tokenizer
        recipe: a YAML recipe whose data and tokenizer sections apply
        print_config: print the resolved settings as YAML (and return them) instead of training
    """
    from ..data.corpus import Corpus
    from ..tokenizer import exists, train_on_corpus

    overrides = {"data": with_inputs(data, input), "tokenizer": tokenizer}
    cfg = resolve(run, "tokenizer train", config=config, recipe=recipe, overrides=overrides, origin=origin)
    if print_config:
        return print_settings(cfg)
    target = Run.at(run)
    with target.writer_lock("tokenizer train"):
        if exists(target.tokenizer_dir) and not overwrite:
            raise UserError(
                f"{target.tokenizer_dir} already holds a tokenizer; pass --overwrite to replace it "
                "(then run `scratchlm prepare` again: shards and checkpoints belong to the old one)"
            )
        tok = train_on_corpus(Corpus(cfg.data), cfg)  # the same text as `prepare` trains on
        # The old checkpoints only make sense with the old tokenizer: both are set aside together.
        if target.has_checkpoints() and (aside := target.set_aside(tokenizer=True)):
            rank0_print(f"set the run's earlier results and tokenizer aside in {aside}")
        tok.save(target.tokenizer_dir)
        target.save_config(cfg.replace(model={"vocab_size": tok.vocab_size}))
    rank0_print(
        f"saved {target.tokenizer_dir} ({tok.kind}, {tok.vocab_size} tokens, "
        f"{tok.meta['corpus_chars']:,} characters read)"
    )
    return tok


def encode(run: str | Path, text: str, *, allow_special: bool = False) -> list[int]:
    """Print the ids of TEXT.

    Args:
        run: a run directory with a tokenizer
        text: text to encode
        allow_special: turn "<|eos|>" etc. into special ids
    """
    from ..tokenizer import Tokenizer

    ids = Tokenizer.load(Run.at(run).tokenizer_dir).encode(text, allow_special=allow_special)
    print(" ".join(map(str, ids)))
    return ids


def decode(run: str | Path, ids: list[str]) -> str:
    """Print the text of IDS.

    Args:
        run: a run directory with a tokenizer
        ids: token ids (spaces or commas between them)
    """
    from ..tokenizer import Tokenizer

    tok = Tokenizer.load(Run.at(run).tokenizer_dir)
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
    from ..data.corpus import Corpus, read_cleaned

    data = run.config_or_default().data
    if text:  # cleaned as the run's prepare cleans, so the numbers are those of its training data
        yield read_cleaned(Path(text), data)
        return
    for doc in Corpus(data).documents(Counter()):
        yield from doc.pieces()


def stats(run: str | Path, *, text: str | None = None, top: int = 20) -> dict:
    """Tokens, bytes and characters per token, the byte-fallback rate and the longest tokens of a text.

    Args:
        run: a run directory with a tokenizer
        text: measure this UTF-8 file (default: the run's inputs)
        top: how many of the longest tokens to list
    """
    from ..tokenizer import Tokenizer, measure

    run = Run.at(run)
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
