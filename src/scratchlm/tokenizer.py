"""Tokenizers: train, encode/decode, special tokens, save/load.

SentencePiece (Unigram or BPE) with byte fallback, so every string round-trips. Special tokens are
reserved at training time with fixed ids so SFT later needs no resize; they are control symbols,
so text that merely contains "<|eos|>" is never turned into the special id unless asked.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from .common import UserError, atomic_write_text
from .config import TokenizerConfig

SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
UNK = "<unk>"
MODEL_FILE = "tokenizer.model"
META_FILE = "scratchlm_tokenizer.json"


class Tokenizer:
    def __init__(self, model_bytes: bytes, kind: str):
        import sentencepiece as spm

        self.kind = kind
        self.model_bytes = model_bytes
        self.sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        self.vocab_size = self.sp.get_piece_size()
        self.special_ids = {tok: self.sp.piece_to_id(tok) for tok in SPECIALS}
        self._special_re = re.compile("(" + "|".join(re.escape(t) for t in SPECIALS) + ")")

    # ---- ids ----
    bos_id = property(lambda self: self.special_ids["<|bos|>"])
    eos_id = property(lambda self: self.special_ids["<|eos|>"])
    pad_id = property(lambda self: self.special_ids["<|pad|>"])

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.model_bytes).hexdigest()[:16]

    # ---- text <-> ids ----
    def encode(self, text: str, *, bos: bool = False, allow_special: bool = False) -> list[int]:
        """Text to ids. With allow_special, "<|eos|>" etc. in the text become their special ids."""
        ids = [self.bos_id] if bos else []
        if not allow_special:
            return ids + self.sp.encode(text)
        for part in self._special_re.split(text):
            if part in self.special_ids:
                ids.append(self.special_ids[part])
            elif part:
                ids.extend(self.sp.encode(part))
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # SentencePiece's own batch API spreads the work over all cores.
        return self.sp.encode(texts, num_threads=-1)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids to text; special tokens decode to nothing."""
        return self.sp.decode([int(i) for i in ids])

    def token_bytes(self) -> np.ndarray:
        """UTF-8 byte length of each token as it appears in decoded text (for bits per byte)."""
        out = np.zeros(self.vocab_size, dtype=np.int64)
        for i in range(self.vocab_size):
            if self.sp.is_control(i) or self.sp.is_unknown(i):
                continue
            out[i] = 1 if self.sp.is_byte(i) else len(self.sp.id_to_piece(i).replace("\u2581", " ").encode())
        return out

    # ---- persistence ----
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / (MODEL_FILE + ".tmp"), "wb") as f:
            f.write(self.model_bytes)
        (directory / (MODEL_FILE + ".tmp")).replace(directory / MODEL_FILE)
        meta = {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "hash": self.hash,
            "special_ids": self.special_ids,
        }
        atomic_write_text(directory / META_FILE, json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        directory = Path(directory)
        if not (directory / META_FILE).is_file():
            raise UserError(f"{directory}: no tokenizer here; run `scratchlm prepare` on the run first")
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        return cls((directory / MODEL_FILE).read_bytes(), meta["kind"])


def _training_lines(documents: Iterable[str], max_len: int) -> Iterator[str]:
    for doc in documents:
        for line in doc.split("\n"):
            if line.strip():
                yield line[:max_len]


def train_tokenizer(documents: list[str], cfg: TokenizerConfig) -> Tokenizer:
    """Train a SentencePiece model on the documents, fully in memory."""
    import sentencepiece as spm

    n_chars = sum(len(d) for d in documents)
    if n_chars == 0:
        raise UserError("the corpus is empty: nothing to train a tokenizer on")
    min_vocab = len(SPECIALS) + 2 + 256
    if cfg.vocab_size < min_vocab:
        raise UserError(
            f"--tokenizer.vocab_size {cfg.vocab_size} is too small: at least {min_vocab} "
            f"(specials + 256 byte-fallback tokens)"
        )
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_training_lines(documents, 4096),
            model_writer=model,
            model_type=cfg.kind,
            vocab_size=cfg.vocab_size,
            character_coverage=cfg.character_coverage,
            byte_fallback=True,
            split_digits=True,
            # Exact round trip: no dummy prefix, no whitespace folding, identity normalization.
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            normalization_rule_name="identity",
            unk_id=0,
            unk_piece=UNK,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            control_symbols=SPECIALS,
            # Newlines never reach the trainer (it reads lines), so "\n" gets a piece of its own.
            user_defined_symbols=["\n"],
            input_sentence_size=2_000_000,
            shuffle_input_sentence=True,
            num_threads=8,
            minloglevel=2,
        )
    except RuntimeError as e:
        msg = str(e)
        m = re.search(r"Please set it to a value <= (\d+)", msg)
        if m:
            raise UserError(
                f"--tokenizer.vocab_size {cfg.vocab_size} is too large for this corpus; "
                f"try {m.group(1)} or less, or add more text"
            ) from None
        raise
    return Tokenizer(model.getvalue(), cfg.kind)
