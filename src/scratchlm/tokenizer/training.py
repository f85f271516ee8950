"""Training a tokenizer of any kind: on a stream of documents, or on a sample of a run's corpus."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from ..common import UserError, rank0_print
from ..config import RunConfig, TokenizerConfig
from .base import KINDS, Tokenizer
from .huggingface import train_bytelevel, train_char
from .sentencepiece import train_sentencepiece

if TYPE_CHECKING:
    from ..data.corpus import Corpus


class CorpusStats:
    """Counts and hashes the documents as the trainer streams through them (RAM stays bounded)."""

    def __init__(self) -> None:
        self.docs = 0
        self.chars = 0
        self._sha = hashlib.sha256()

    def watch(self, documents: Iterable[str]) -> Iterator[str]:
        for doc in documents:
            self.docs += 1
            self.chars += len(doc)
            self._sha.update(doc.encode("utf-8", "surrogatepass") + b"\0")
            yield doc

    @property
    def hash(self) -> str:
        return self._sha.hexdigest()[:16]


def train_tokenizer(documents: Iterable[str], cfg: TokenizerConfig) -> Tokenizer:
    """Train a tokenizer of `cfg.kind` on any iterable of documents (read once, streamed)."""
    if cfg.kind not in KINDS:
        raise UserError(f"--tokenizer.kind {cfg.kind!r}: choose one of {', '.join(KINDS)}")
    docs = iter(documents)
    head = []
    for doc in docs:  # look ahead to the first document with text, so an empty corpus fails clearly
        head.append(doc)
        if doc.strip():
            break
    else:
        raise UserError("the corpus is empty: nothing to train a tokenizer on; give files with text in them")
    stats = CorpusStats()
    stream = stats.watch(itertools.chain(head, docs))
    if cfg.kind in ("unigram", "bpe"):
        tok = train_sentencepiece(stream, cfg)
    else:
        tok = train_bytelevel(stream, cfg) if cfg.kind == "bytelevel" else train_char(stream, cfg)
    tok.meta.update(
        corpus_hash=stats.hash,
        corpus_chars=stats.chars,
        corpus_documents=stats.docs,
        normalization=cfg.normalization,
    )
    return tok


def train_on_corpus(corpus: Corpus, cfg: RunConfig) -> Tokenizer:
    """Train cfg.tokenizer on the first --data.tokenizer_sample_mb of the corpus's cleaned documents.

    `scratchlm prepare` and `scratchlm tokenizer train` both call this, so they train on the same text.
    """
    sample = corpus.sample(int(cfg.data.tokenizer_sample_mb * 1e6))
    # A char vocabulary is what the text holds (the size is only its cap): say the size it got.
    size = f"{'up to ' if cfg.tokenizer.kind == 'char' else ''}{cfg.tokenizer.vocab_size}"
    rank0_print(
        f"training a {cfg.tokenizer.kind} tokenizer of {size} tokens "
        f"on {sum(len(d) for d in sample):,} characters…"
    )
    tok = train_tokenizer(sample, cfg.tokenizer)
    if tok.vocab_size != cfg.tokenizer.vocab_size:
        rank0_print(f"the {tok.kind} tokenizer has {tok.vocab_size:,} tokens")
    # Recorded so that a later `prepare` can tell a changed setting from the one this tokenizer was made with.
    tok.meta["trained_with"] = dataclasses.asdict(cfg.tokenizer)
    return tok
