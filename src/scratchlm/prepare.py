"""`scratchlm prepare`: corpus → cleaned documents → tokenizer → train/val token shards."""

from __future__ import annotations

from pathlib import Path

from .common import rank0_print
from .config import RunConfig
from .data.corpus import read_documents
from .data.shards import split_documents, write_shards
from .run import Run
from .tokenizer import Tokenizer, train_tokenizer
from .tokenizer import exists as tokenizer_exists


def prepare(run_dir: str | Path, cfg: RunConfig | None = None) -> dict:
    """Read the inputs, train a tokenizer (unless the run has one) and write the token shards."""
    run = Run.at(run_dir)
    cfg = cfg or (run.load_config() if run.has_config() else RunConfig())
    sources, docs = [], []
    for path, text in read_documents(cfg.data.inputs, gutenberg=cfg.data.strip_gutenberg):
        sources.append({"path": str(path), "chars": len(text)})
        docs.append(text)
    rank0_print(f"read {len(docs)} document(s), {sum(len(d) for d in docs):,} characters")

    if tokenizer_exists(run.tokenizer_dir):
        tokenizer = Tokenizer.load(run.tokenizer_dir)
        rank0_print(f"using the run's tokenizer ({tokenizer.kind}, {tokenizer.vocab_size} tokens)")
    else:
        rank0_print(f"training a {cfg.tokenizer.kind} tokenizer of {cfg.tokenizer.vocab_size} tokens…")
        tokenizer = train_tokenizer(docs, cfg.tokenizer)
        tokenizer.save(run.tokenizer_dir)
    cfg.model.vocab_size = tokenizer.vocab_size

    train_docs, val_docs = split_documents(docs, cfg.data.val_fraction, cfg.data.seed)
    manifest = write_shards(run.data_dir, tokenizer, train_docs, val_docs, {"sources": sources})
    run.save_config(cfg)
    n_train = manifest["splits"]["train"][0]["tokens"]
    n_val = manifest["splits"]["val"][0]["tokens"]
    rank0_print(
        f"wrote {n_train:,} train and {n_val:,} val tokens to {run.data_dir} "
        f"({sum(s['chars'] for s in sources) / max(1, n_train + n_val):.2f} characters per token)"
    )
    return manifest
