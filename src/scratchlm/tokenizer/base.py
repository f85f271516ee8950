"""The Tokenizer interface: encode/decode, special tokens, save/load — one interface over four kinds.

unigram / bpe  SentencePiece with byte fallback (sentencepiece.py): the usual choice for CJK + English.
bytelevel      GPT-2 style byte-level BPE from Hugging Face `tokenizers` (huggingface.py).
char           one token per character seen, unseen characters fall back to UTF-8 byte tokens
               (huggingface.py).

Every kind round-trips any str exactly. The special tokens get the same fixed ids 0..6 in every kind,
reserved at training time so SFT later needs no resize; text that merely contains "<|eos|>" stays text
unless `allow_special=True`. A saved tokenizer is a folder that transformers loads as it is
(`tokenizer.json` + `tokenizer_config.json`), plus the native model file and our metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ..chat_template import jinja_template
from ..common import UserError, atomic_write, atomic_write_text, is_interactive

SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
KINDS = ("unigram", "bpe", "bytelevel", "char")
META_FILE = "scratchlm_tokenizer.json"
HF_FILE = "tokenizer.json"
HF_CONFIG_FILE = "tokenizer_config.json"
SP_FILE = "tokenizer.model"

# Long documents are cut into pieces of about this many characters so a batch of one book still uses
# every core. A cut falls just after a lone "\n" between non-blank text (at most one space-like
# character, such as the ideographic space opening a Japanese paragraph, may follow): no token of any
# kind spans it — SentencePiece keeps "\n" a piece of its own and the GPT-2 pattern ends a run of
# whitespace there — so the ids are exactly those of the whole document (tested).
_PIECE_CHARS = 1 << 16
_SAFE_CUT = re.compile(r"(?<=\S)\n(?=[^\s]|[^\S\n]\S)")
_BAR_CHARS = 16 << 20  # a progress bar from this many characters on (seconds of encoding)
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in SPECIALS) + ")")


class Tokenizer:
    """What the rest of scratchlm sees. Subclasses supply the backend-specific methods below."""

    kinds: tuple[str, ...] = ()  # the kinds a subclass implements
    native_file: str  # the name of its native model file in a saved folder
    kind: str
    vocab_size: int
    native: bytes  # the native model file's bytes; the hash is taken over them
    meta: dict  # extra metadata saved beside the model (corpus hash, normalization…)

    # ---- backend interface ----
    def _encode_plain(self, text: str) -> list[int]:
        """Ids of `text`, special-token text included as ordinary text."""
        raise NotImplementedError

    def _encode_many(self, texts: list[str]) -> list[list[int]]:
        """_encode_plain over a list, on all cores."""
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        """Ids to text; special tokens decode to nothing."""
        raise NotImplementedError

    def piece(self, i: int) -> str:
        """The vocabulary entry of id i, as the library spells it (for display)."""
        raise NotImplementedError

    def token_bytes(self) -> np.ndarray:
        """UTF-8 byte length of each token as it appears in decoded text (for bits per byte).

        Sums exactly to len(decode(ids).encode()) for ids that decode to valid UTF-8; specials are 0.
        """
        raise NotImplementedError

    def fallback_mask(self) -> np.ndarray:
        """True for ids that stand for a raw byte of a character the vocabulary lacks."""
        raise NotImplementedError

    def hf_json(self) -> str:
        """The Hugging Face fast-tokenizer file (tokenizer.json) giving the same ids."""
        raise NotImplementedError

    def _native_files(self) -> dict[str, bytes]:
        return {self.native_file: self.native}

    # ---- common ----
    @property
    def special_ids(self) -> dict[str, int]:
        return {tok: i for i, tok in enumerate(SPECIALS)}

    bos_id = property(lambda self: 0)
    eos_id = property(lambda self: 1)
    pad_id = property(lambda self: 2)

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.kind.encode() + b"\0" + self.native).hexdigest()[:16]

    def encode(self, text: str, *, bos: bool = False, allow_special: bool = False) -> list[int]:
        """Text to ids. With allow_special, "<|eos|>" etc. in the text become their special ids."""
        if not allow_special:
            # No list built around the library's own: this layer cost 5% on War and Peace's 63k lines.
            ids = self._encode_plain(text)
            if bos:
                ids.insert(0, self.bos_id)
            return ids
        ids = [self.bos_id] if bos else []
        for part in _SPECIAL_RE.split(text):
            if part in SPECIALS:
                ids.append(SPECIALS.index(part))
            elif part:
                ids.extend(self._encode_plain(part))
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """encode() of each text, on all cores, with a progress bar on large inputs at a terminal."""
        texts = list(texts)
        show_bar = sum(map(len, texts)) >= _BAR_CHARS and is_interactive()
        if not show_bar and max(map(len, texts), default=0) <= _PIECE_CHARS:
            # The usual case (prepare's batches): straight to the library. The bookkeeping below cost
            # 12% on Soseki's 2,337 paragraphs (46 vs 41 ms, best of 8).
            return self._encode_many(texts)
        pieces, owner = [], []
        for i, text in enumerate(texts):
            for piece in split_for_batch(text):
                pieces.append(piece)
                owner.append(i)
        total = sum(len(p) for p in pieces)
        out: list[list[int]] = [[] for _ in texts]
        # ~1M characters per call keeps every core busy while the bar still moves.
        step = max(1, len(pieces) * (1 << 20) // max(1, total))
        from tqdm.auto import tqdm

        with tqdm(
            total=total,
            unit="char",
            unit_scale=True,
            desc="tokenizing",
            disable=not show_bar,
        ) as bar:
            for start in range(0, len(pieces), step):
                chunk = pieces[start : start + step]
                for i, ids in zip(owner[start : start + step], self._encode_many(chunk), strict=True):
                    out[i].extend(ids)
                bar.update(sum(len(p) for p in chunk))
        return out

    # ---- persistence ----
    def save(self, directory: str | Path) -> None:
        """Write the tokenizer folder; the metadata file goes last, so its presence means complete."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / META_FILE).unlink(missing_ok=True)
        for stale in (SP_FILE, HF_FILE):
            (directory / stale).unlink(missing_ok=True)
        for name, data in self._native_files().items():
            atomic_write(directory / name, lambda p, d=data: p.write_bytes(d))
        if HF_FILE not in self._native_files():
            atomic_write_text(directory / HF_FILE, self.hf_json())
        atomic_write_text(directory / HF_CONFIG_FILE, json.dumps(self._hf_config(), indent=2) + "\n")
        meta = {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "hash": self.hash,
            "special_ids": self.special_ids,
            **self.meta,
        }
        atomic_write_text(directory / META_FILE, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")

    def _hf_config(self) -> dict:
        # PreTrainedTokenizerFast reads tokenizer.json as it is; a model-specific class (LlamaTokenizer…)
        # would rebuild parts of the pipeline and could change the ids.
        return {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": SPECIALS[0],
            "eos_token": SPECIALS[1],
            "pad_token": SPECIALS[2],
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000_000,
            "chat_template": jinja_template(),  # so apply_chat_template works on the run's own folder
        }

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        directory = Path(directory)
        if not exists(directory):
            raise UserError(
                f"{directory}: no tokenizer here; run `scratchlm prepare` "
                "(or `scratchlm tokenizer train`) first"
            )
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        kind = meta.get("kind")
        extra = {k: v for k, v in meta.items() if k not in ("kind", "vocab_size", "hash", "special_ids")}
        # The kinds' classes are the subclasses (the package's __init__ imports every one), so this
        # module needs none of them: no import cycle.
        for backend in Tokenizer.__subclasses__():
            if kind in backend.kinds:
                return backend((directory / backend.native_file).read_bytes(), kind, extra)
        raise UserError(
            f"{directory / META_FILE}: unknown tokenizer kind {kind!r}; train the tokenizer again"
        )


def exists(directory: str | Path) -> bool:
    """Whether `directory` holds a complete saved tokenizer."""
    return (Path(directory) / META_FILE).is_file()


def split_for_batch(text: str, size: int = _PIECE_CHARS) -> Iterator[str]:
    """Cut a long text at safe places (see _SAFE_CUT); short texts come back whole."""
    start = 0
    while len(text) - start > size:
        m = _SAFE_CUT.search(text, start + size)
        if not m:
            break
        yield text[start : m.end()]
        start = m.end()
    if start < len(text) or not text:
        yield text[start:]


ENCODE_THREADS: int | None = None  # prepare's worker processes set 1: they are one process per core


def cpu_threads() -> int:
    if ENCODE_THREADS:
        return ENCODE_THREADS
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
