"""Tokenizers: one interface over four kinds, their training, and stats.

    base.py           the Tokenizer interface, special tokens and their ids, save / load by kind, hash
    sentencepiece.py  unigram / bpe: SentencePiece with byte fallback, and its twin in HF's format
    huggingface.py    bytelevel (GPT-2 style BPE) and char, held in Hugging Face's own format
    training.py       train a tokenizer of any kind on documents, or on a sample of a corpus
    stats.py          how a tokenizer cuts a text (tokens per byte, byte fallback, longest tokens)

Imports point one way: base ← sentencepiece, huggingface ← training; stats uses only base. base
finds the kinds' classes as Tokenizer's subclasses, which exist once this file has run.
"""

from __future__ import annotations

from .base import (
    HF_CONFIG_FILE,
    HF_FILE,
    KINDS,
    META_FILE,
    SP_FILE,
    SPECIALS,
    Tokenizer,
    cpu_threads,
    exists,
    split_for_batch,
)
from .huggingface import BYTE_TOKENS, HFTokenizer
from .sentencepiece import SentencePieceTokenizer
from .stats import measure
from .training import CorpusStats, train_on_corpus, train_tokenizer

__all__ = [
    "BYTE_TOKENS",
    "HF_CONFIG_FILE",
    "HF_FILE",
    "KINDS",
    "META_FILE",
    "SP_FILE",
    "SPECIALS",
    "CorpusStats",
    "HFTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "cpu_threads",
    "exists",
    "measure",
    "split_for_batch",
    "train_on_corpus",
    "train_tokenizer",
]
