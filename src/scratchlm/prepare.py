"""`scratchlm prepare`: corpus → cleaned documents → tokenizer → train/val token shards."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

from .common import rank0_print
from .config import RunConfig
from .data.corpus import Corpus
from .data.shards import write_shards
from .run import Run
from .tokenizer import Tokenizer, train_on_corpus
from .tokenizer import exists as tokenizer_exists

REPORT_LINES = {
    "binary_files_skipped": "binary files skipped",
    "empty_files_skipped": "empty files skipped",
    "gutenberg_chars": "characters of Project Gutenberg header/footer removed",
    "aozora_chars": "characters of Aozora Bunko markup, header and colophon removed",
    "unicode_chars": "characters removed by Unicode normalization",
    "whitespace_chars": "characters of whitespace removed",
    "dropped_too_short": "documents dropped: shorter than --data.min_chars",
    "dropped_too_long": "documents dropped: longer than --data.max_chars",
    "dropped_not_included": "documents dropped: no --data.include match",
    "dropped_excluded": "documents dropped: an --data.exclude match",
    "dropped_duplicate": "documents dropped: exact duplicates",
}


def prepare(run_dir: str | Path, cfg: RunConfig | None = None) -> dict:
    """Read the inputs, train a tokenizer (unless the run has one) and write the token shards."""
    run = Run.at(run_dir)
    cfg = cfg or (run.load_config() if run.has_config() else RunConfig())
    corpus = Corpus(cfg.data)

    if tokenizer_exists(run.tokenizer_dir):  # the metadata file, written last by Tokenizer.save
        tokenizer = Tokenizer.load(run.tokenizer_dir)
        rank0_print(f"using the run's tokenizer ({tokenizer.kind}, {tokenizer.vocab_size} tokens)")
    else:
        tokenizer = train_on_corpus(corpus, cfg)
        tokenizer.save(run.tokenizer_dir)
    cfg.model.vocab_size = tokenizer.vocab_size

    report: Counter = Counter()
    sources: list[dict] = []
    local = [s.path for s in corpus.sources if s.kind in ("text", "jsonl")]
    total = sum(p.stat().st_size for p in local) if len(local) == len(corpus.sources) else None
    if total is not None and any(p.suffix.lower() == ".gz" for p in local):
        total = None  # compressed sizes say nothing about the text inside
    extra = {"report": report, "sources": sources, "data_config": dataclasses.asdict(cfg.data)}
    manifest = write_shards(
        run.data_dir,
        tokenizer,
        corpus.documents(report, sources),
        cfg.data,
        tail=corpus.few_text_files,
        extra={**extra, "total_bytes": total},
    )
    run.save_config(cfg)

    for key, label in REPORT_LINES.items():
        if report[key]:
            rank0_print(f"  {report[key]:>12,} {label}")
    n_train = sum(s["tokens"] for s in manifest["splits"]["train"])
    n_val = sum(s["tokens"] for s in manifest["splits"]["val"])
    rank0_print(
        f"kept {report['documents_kept']:,} of {report['documents_read']:,} document(s); "
        f"wrote {n_train:,} train and {n_val:,} val tokens to {run.data_dir} "
        f"({report['chars_kept'] / max(1, n_train + n_val):.2f} characters per token)"
    )
    return manifest
