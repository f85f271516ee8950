"""SentencePiece Unigram / BPE with byte fallback, and its exact twin in Hugging Face's format.

Settings that make decode(encode(s)) == s: identity normalization, no dummy prefix, no whitespace
folding, byte fallback, and "▁" always in the vocabulary. SentencePiece still reads a literal U+2581
("▁") in the input as a space, so the wrapper sends that one character as its three UTF-8 byte tokens
instead.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Iterator

import numpy as np

from ..common import UserError
from ..config import TokenizerConfig
from .base import SP_FILE, SPECIALS, Tokenizer, cpu_threads

UNK = "<unk>"
WS = "\u2581"  # SentencePiece's visible space
# Unigram scores are rounded to multiples of 1/4096. Why: SentencePiece sums scores in float32, Hugging Face
# in float64 and llama.cpp in integers; on this grid the sums are exact in all three up to 4,096 (a line of
# ~500 tokens), so all see the same ties: 35 of 13,047 paragraphs of the two bundled books got other ids
# from transformers before scores were rounded. And exact ties must be rare: where two segmentations score
# the same, SentencePiece keeps the longest last piece and llama.cpp the longest first one ("r|est" vs
# "re|st"). Held-out lines cut differently in llama.cpp (4,096 pieces, bench/tokenize_parity.py): 0.6-1.0%
# on a 1/32 grid, 0.07% on 1/1024, none of 7,165 on 1/4096. The model changes by < 0.00013 nats per piece.
_SCORE_GRID = 4096


class SentencePieceTokenizer(Tokenizer):
    kinds = ("unigram", "bpe")
    native_file = SP_FILE

    def __init__(self, model_bytes: bytes, kind: str, meta: dict | None = None):
        import sentencepiece as spm

        self.kind = kind
        self.native = model_bytes
        self.meta = dict(meta or {})
        self.sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        self.vocab_size = self.sp.get_piece_size()
        for i, tok in enumerate(SPECIALS):
            if self.sp.id_to_piece(i) != tok or not self.sp.is_control(i):
                raise UserError(
                    f"{SP_FILE}: id {i} is not the control token {tok}; train the tokenizer again"
                )
        self._ws_bytes = [self.sp.piece_to_id(f"<0x{b:02X}>") for b in WS.encode()]

    def _encode_plain(self, text: str) -> list[int]:
        if WS not in text:
            return self.sp.encode(text)
        ids: list[int] = []
        for n, part in enumerate(text.split(WS)):
            if n:
                ids.extend(self._ws_bytes)
            if part:
                ids.extend(self.sp.encode(part))
        return ids

    def _encode_many(self, texts: list[str]) -> list[list[int]]:
        out = self.sp.encode(texts, num_threads=cpu_threads())
        for i, text in enumerate(texts):
            if WS in text:
                out[i] = self._encode_plain(text)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def piece(self, i: int) -> str:
        return self.sp.id_to_piece(i)

    def token_bytes(self) -> np.ndarray:
        out = np.zeros(self.vocab_size, dtype=np.int64)
        for i in range(self.vocab_size):
            if self.sp.is_control(i) or self.sp.is_unknown(i):
                continue
            out[i] = 1 if self.sp.is_byte(i) else len(self.sp.id_to_piece(i).replace(WS, " ").encode())
        return out

    def fallback_mask(self) -> np.ndarray:
        return np.array([self.sp.is_byte(i) for i in range(self.vocab_size)], dtype=bool)

    def _hf_config(self) -> dict:
        return {**super()._hf_config(), "unk_token": UNK}

    def hf_json(self) -> str:
        from tokenizers import AddedToken, decoders, models, normalizers
        from tokenizers import Tokenizer as HFTok

        sp = self.sp
        pieces = [sp.id_to_piece(i) for i in range(self.vocab_size)]
        if self.kind == "unigram":
            scores = [(p, sp.get_score(i)) for i, p in enumerate(pieces)]
            model = models.Unigram(scores, unk_id=sp.unk_id(), byte_fallback=True)
        else:
            vocab = {p: i for i, p in enumerate(pieces)}
            model = models.BPE(
                vocab, _bpe_merges(sp, vocab), unk_token=UNK, fuse_unk=True, byte_fallback=True
            )
        tok = HFTok(model)
        replace = normalizers.Replace(" ", WS)
        if self.meta.get("normalization", "identity") == "identity":
            tok.normalizer = replace
        else:  # the model's own compiled NFKC table, so transformers normalizes exactly as SentencePiece
            tok.normalizer = normalizers.Sequence([normalizers.Precompiled(_charsmap(self.native)), replace])
        tok.decoder = decoders.Sequence([decoders.Replace(WS, " "), decoders.ByteFallback(), decoders.Fuse()])
        if self.kind == "unigram" and not any("<|" in p or "<u" in p for p in pieces[len(SPECIALS) + 1 :]):
            tok.pre_tokenizer = _keep_controls_out()
        tok.add_tokens([AddedToken("\n", normalized=False, special=False)])
        tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in SPECIALS])
        return tok.to_str()


def _keep_controls_out():
    """A cut after every "<" that starts "<|" or "<unk>", for the Unigram model in tokenizer.json.

    SentencePiece never matches a control piece (<|end|>, score 0) or <unk> in text; Hugging Face's
    Unigram does, and no score keeps them out (its unknown-character score sits below the lowest piece).
    Typed "<|end|>" then became the special id wherever transformers encodes text without its added-token
    pass: split_special_tokens, apply_chat_template's sanitize_control_tokens. No other piece of the
    vocabulary holds "<|" or "<u" (the caller checks), so no segmentation crosses the cut and every other
    text keeps its ids.
    """
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Split(Regex(r"<(?=\||unk>)"), behavior="isolated")


def _bpe_merges(sp, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """SentencePiece BPE merges the adjacent pair whose joined piece scores highest, and its scores
    fall with the id; Hugging Face applies merges by rank. So rank the splits of each piece by id."""
    merges = []
    for piece, i in vocab.items():
        if len(piece) < 2 or sp.is_control(i) or sp.is_byte(i) or sp.is_unknown(i):
            continue
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                merges.append((i, vocab[left], vocab[right], left, right))
    merges.sort()
    return [(left, right) for *_, left, right in merges]


def _charsmap(model_bytes: bytes) -> bytes:
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(model_bytes)
    return proto.normalizer_spec.precompiled_charsmap


def _quantize_scores(model_bytes: bytes) -> bytes:
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(model_bytes)
    for p in proto.pieces:
        p.score = round(p.score * _SCORE_GRID) / _SCORE_GRID
    return proto.SerializeToString()


def _training_lines(documents: Iterable[str], max_chars: int) -> Iterator[str]:
    # The trainer reads sentences, and drops those over max_sentence_length bytes: long lines (a
    # Japanese paragraph is one line) are cut into pieces that fit, at 4 bytes per character at worst.
    for doc in documents:
        for line in doc.split("\n"):
            for start in range(0, len(line), max_chars):
                yield line[start : start + max_chars]


def min_vocab_size() -> int:
    return len(SPECIALS) + 3 + 256  # specials, <unk>, "\n", "▁", the 256 byte-fallback tokens


def train_sentencepiece(documents: Iterable[str], cfg: TokenizerConfig) -> SentencePieceTokenizer:
    import sentencepiece as spm

    if cfg.vocab_size <= min_vocab_size():
        raise UserError(
            f"--tokenizer.vocab_size {cfg.vocab_size} is too small for kind {cfg.kind}: it needs more "
            f"than {min_vocab_size()} ({len(SPECIALS)} special tokens, <unk>, newline, space and 256 byte "
            f"tokens); try {min_vocab_size() + 256} or more"
        )
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_training_lines(documents, max(1, cfg.max_sentence_length // 4)),
            model_writer=model,
            model_type=cfg.kind,
            vocab_size=cfg.vocab_size,
            character_coverage=cfg.character_coverage,
            byte_fallback=True,
            # SentencePiece turns a space into "▁" before looking it up, so a corpus without spaces
            # (Japanese) would leave "▁" out, and a space would come back as the bytes of "▁" ("JIS▁X").
            # Required, it is in every vocabulary; on a corpus with spaces the pieces and scores are as
            # before (checked on War and Peace + Japanese).
            required_chars=WS,
            split_digits=True,
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            normalization_rule_name="identity" if cfg.normalization == "identity" else "nfkc",
            unk_id=len(SPECIALS),
            unk_piece=UNK,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            control_symbols=SPECIALS,  # ids 0..6: control symbols fill the free ids in order
            # Newlines never reach the trainer (it reads lines), so "\n" gets a piece of its own.
            user_defined_symbols=["\n"],
            max_sentence_length=cfg.max_sentence_length,
            input_sentence_size=cfg.input_sentence_size,
            shuffle_input_sentence=True,
            num_threads=cpu_threads(),
            minloglevel=2,
        )
    except RuntimeError as e:
        raise _user_error(str(e), cfg) from None
    model_bytes = model.getvalue()
    if cfg.kind == "unigram":
        model_bytes = _quantize_scores(model_bytes)
    return SentencePieceTokenizer(model_bytes, cfg.kind)


def _user_error(msg: str, cfg: TokenizerConfig) -> Exception:
    m = re.search(r"Please set it to a value <= (\d+)", msg)
    if m:
        return UserError(
            f"--tokenizer.vocab_size {cfg.vocab_size} is too large for this corpus: try {m.group(1)} "
            "or less, or add more text"
        )
    m = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", msg)
    if m:
        return UserError(
            f"--tokenizer.vocab_size {cfg.vocab_size} is too small: the characters that "
            f"--tokenizer.character_coverage {cfg.character_coverage} keeps, with the special and byte "
            f"tokens, need {m.group(2)} ids; try --tokenizer.vocab_size {int(m.group(2)) + 256} or more, "
            "or a lower "
            "--tokenizer.character_coverage"
        )
    return RuntimeError(msg)
