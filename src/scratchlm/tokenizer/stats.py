"""How a tokenizer cuts a text: tokens, bytes and characters per token, byte fallback, longest tokens."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from .base import Tokenizer


def _batches(texts: Iterable[str], chars: int = 1 << 22) -> Iterator[list[str]]:
    """Groups of about `chars` characters: a whole corpus is measured in bounded memory."""
    batch, n = [], 0
    for t in texts:
        batch.append(t)
        n += len(t)
        if n >= chars:
            yield batch
            batch, n = [], 0
    if batch:
        yield batch


def shown(tok: Tokenizer, i: int) -> str:
    """The token's text, or its vocabulary entry when it holds only part of a character."""
    text = tok.decode([i])
    return tok.piece(i) if "\ufffd" in text else text


def measure(tok: Tokenizer, texts: Iterable[str], top: int = 20) -> dict:
    """Counts over `texts` (streamed), and the `top` longest tokens of the vocabulary as (id, text)."""
    counts = np.zeros(tok.vocab_size, dtype=np.int64)
    n_bytes = n_chars = 0
    for batch in _batches(texts):
        for ids in tok.encode_batch(batch):
            counts += np.bincount(np.asarray(ids, dtype=np.int64), minlength=tok.vocab_size)
        n_bytes += sum(len(t.encode("utf-8", "surrogatepass")) for t in batch)
        n_chars += sum(len(t) for t in batch)
    n_tokens = int(counts.sum())
    fallback = int(counts[tok.fallback_mask()].sum())
    # Byte-fallback tokens are one byte each and tell nothing about the vocabulary: leave them out.
    ranked = np.where(tok.fallback_mask(), -1, tok.token_bytes())
    longest = [int(i) for i in np.argsort(-ranked, kind="stable")[:top] if ranked[i] > 0]
    return {
        "kind": tok.kind,
        "vocab_size": tok.vocab_size,
        "tokens": n_tokens,
        "bytes": n_bytes,
        "chars": n_chars,
        "bytes_per_token": n_bytes / max(1, n_tokens),
        "chars_per_token": n_chars / max(1, n_tokens),
        "byte_fallback_tokens": fallback,
        "byte_fallback_rate": fallback / max(1, n_tokens),
        "vocab_used": int((counts > 0).sum()),
        "longest": [(i, shown(tok, i)) for i in longest],
    }
