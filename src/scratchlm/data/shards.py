"""Documents → token shards on disk (flat uint16/uint32, numpy-memmappable) + manifest.json."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common import UserError, atomic_write, atomic_write_text

MANIFEST = "manifest.json"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def split_documents(docs: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out whole documents; a corpus of a few books gives each book's last part instead."""
    if not 0 < val_fraction < 1:
        raise UserError(f"--data.val_fraction {val_fraction}: must be between 0 and 1")
    if len(docs) >= 10:
        order = np.random.default_rng(seed).permutation(len(docs))
        n_val = max(1, round(len(docs) * val_fraction))
        val_idx = set(order[:n_val].tolist())
        return [d for i, d in enumerate(docs) if i not in val_idx], [
            d for i, d in enumerate(docs) if i in val_idx
        ]
    train, val = [], []
    for doc in docs:
        cut = int(len(doc) * (1 - val_fraction))
        # Cut at a paragraph break so neither side starts mid-sentence.
        para = doc.rfind("\n\n", 0, cut)
        cut = para + 2 if para > len(doc) // 2 else cut
        train.append(doc[:cut])
        val.append(doc[cut:])
    return train, val


def _encode_docs(tokenizer, docs: list[str]) -> np.ndarray:
    dtype = token_dtype(tokenizer.vocab_size)
    pieces = []
    for ids in tokenizer.encode_batch(docs):
        pieces.append(np.asarray(ids, dtype=dtype))
        pieces.append(np.asarray([tokenizer.eos_id], dtype=dtype))  # documents end with <|eos|>
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


def write_shards(data_dir: Path, tokenizer, train_docs: list[str], val_docs: list[str], extra: dict) -> dict:
    data_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "tokenizer_hash": tokenizer.hash,
        "vocab_size": tokenizer.vocab_size,
        "dtype": token_dtype(tokenizer.vocab_size).name,
        "splits": {},
        **extra,
    }
    for split, docs in (("train", train_docs), ("val", val_docs)):
        tokens = _encode_docs(tokenizer, docs)
        name = f"{split}_000.bin"
        atomic_write(data_dir / name, lambda p, t=tokens: t.tofile(p))
        sha = hashlib.sha256(tokens.tobytes()).hexdigest()
        manifest["splits"][split] = [{"file": name, "tokens": int(tokens.size), "sha256": sha}]
    # The manifest goes last: shards without a manifest are never read.
    atomic_write_text(data_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


@dataclass
class TokenShards:
    """The memory-mapped shards of one split."""

    arrays: list[np.ndarray]

    @property
    def total(self) -> int:
        return sum(a.size for a in self.arrays)


def read_manifest(data_dir: Path) -> dict:
    path = data_dir / MANIFEST
    if not path.is_file():
        raise UserError(f"{data_dir}: no prepared data (manifest.json); run `scratchlm prepare` first")
    return json.loads(path.read_text(encoding="utf-8"))


def open_split(data_dir: Path, split: str, tokenizer_hash: str | None = None) -> TokenShards:
    manifest = read_manifest(data_dir)
    if tokenizer_hash and manifest["tokenizer_hash"] != tokenizer_hash:
        raise UserError(f"{data_dir}: shards were made with another tokenizer; run `scratchlm prepare` again")
    dtype = np.dtype(manifest["dtype"])
    arrays = [
        np.memmap(data_dir / s["file"], dtype=dtype, mode="r")
        for s in manifest["splits"][split]
        if s["tokens"]
    ]
    return TokenShards(arrays)
