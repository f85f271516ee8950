"""Tokenizers held in Hugging Face's own format: byte-level BPE (GPT-2 style) and characters.

Both live in a `tokenizers.Tokenizer`, so tokenizer.json is the native file and transformers gives
the same ids by construction. The char kind is a BPE with no merges: one token per known character,
and `byte_fallback` spells any other character as its UTF-8 byte tokens <0x00>..<0xFF>.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

from ..common import UserError
from ..config import TokenizerConfig
from .base import HF_FILE, SPECIALS, Tokenizer

BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


class HFTokenizer(Tokenizer):
    kinds = ("bytelevel", "char")
    native_file = HF_FILE

    def __init__(self, json_bytes: bytes, kind: str, meta: dict | None = None):
        from tokenizers import Tokenizer as HFTok

        self.kind = kind
        self.native = json_bytes
        self.meta = dict(meta or {})
        self.tok = HFTok.from_str(json_bytes.decode("utf-8"))
        # Special-token text in the input stays text; allow_special is handled by Tokenizer.encode.
        self.tok.encode_special_tokens = True
        self.vocab_size = self.tok.get_vocab_size()
        for i, name in enumerate(SPECIALS):
            if self.tok.id_to_token(i) != name:
                raise UserError(f"{HF_FILE}: id {i} is not {name}; train the tokenizer again")

    def _encode_plain(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def _encode_many(self, texts: list[str]) -> list[list[int]]:
        # encode_batch_fast skips offsets; the library spreads the batch over all cores.
        return [e.ids for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def piece(self, i: int) -> str:
        return self.tok.id_to_token(i)

    def token_bytes(self) -> np.ndarray:
        out = np.zeros(self.vocab_size, dtype=np.int64)
        for i in range(len(SPECIALS), self.vocab_size):
            token = self.tok.id_to_token(i)
            if self.kind == "bytelevel":
                out[i] = len(token)  # one printable stand-in character per byte
            else:
                out[i] = 1 if token in _BYTE_SET else len(token.encode())
        return out

    def fallback_mask(self) -> np.ndarray:
        mask = np.zeros(self.vocab_size, dtype=bool)
        if self.kind == "char":
            for token in BYTE_TOKENS:
                mask[self.tok.token_to_id(token)] = True
        return mask

    def hf_json(self) -> str:
        return self.native.decode("utf-8")


_BYTE_SET = frozenset(BYTE_TOKENS)


def _finish(tok, kind: str) -> HFTokenizer:
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in SPECIALS])
    return HFTokenizer(tok.to_str().encode("utf-8"), kind)


def _normalizer(cfg: TokenizerConfig):
    from tokenizers import normalizers

    return normalizers.NFKC() if cfg.normalization == "nfkc" else None


def train_bytelevel(documents: Iterable[str], cfg: TokenizerConfig) -> HFTokenizer:
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    minimum = len(SPECIALS) + 256
    if cfg.vocab_size < minimum:
        raise UserError(
            f"--tokenizer.vocab_size {cfg.vocab_size} is too small for kind bytelevel: at least {minimum} "
            f"({len(SPECIALS)} special tokens + 256 bytes); try {minimum + 256} or more"
        )
    tok = HFTok(models.BPE())
    if (norm := _normalizer(cfg)) is not None:
        tok.normalizer = norm
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        special_tokens=SPECIALS,  # first, so they get ids 0..6
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer)
    if tok.get_vocab_size() < cfg.vocab_size:
        raise UserError(
            f"--tokenizer.vocab_size {cfg.vocab_size} is too large for this corpus: it only supports "
            f"{tok.get_vocab_size()}; try {tok.get_vocab_size()} or less, or add more text"
        )
    return _finish(tok, "bytelevel")


def train_char(documents: Iterable[str], cfg: TokenizerConfig) -> HFTokenizer:
    """One token per character, the most frequent first when they do not all fit in vocab_size."""
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models

    room = cfg.vocab_size - len(SPECIALS) - len(BYTE_TOKENS)
    if room < 1:
        raise UserError(
            f"--tokenizer.vocab_size {cfg.vocab_size} is too small for kind char: it needs more than "
            f"{len(SPECIALS) + 256} ({len(SPECIALS)} special tokens + 256 byte-fallback tokens)"
        )
    counts: Counter[str] = Counter()
    nfkc = cfg.normalization == "nfkc"
    for doc in documents:
        counts.update(_nfkc(doc) if nfkc else doc)
    chars = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:room]]
    vocab = {t: i for i, t in enumerate(SPECIALS + BYTE_TOKENS + sorted(chars))}
    tok = HFTok(models.BPE(vocab, [], byte_fallback=True))
    if (norm := _normalizer(cfg)) is not None:
        tok.normalizer = norm
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    return _finish(tok, "char")


def _nfkc(text: str) -> str:
    import unicodedata

    return unicodedata.normalize("NFKC", text)
