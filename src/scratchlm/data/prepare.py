"""Preparing a run's data: corpus → cleaned documents → tokenizer → train/val token shards (what
`scratchlm prepare` runs once its settings are resolved)."""

from __future__ import annotations

import dataclasses
from collections import Counter

from ..common import UserError, plural, rank0_print
from ..config import RunConfig, TokenizerConfig
from ..run import Run
from ..tokenizer import Tokenizer, train_on_corpus
from ..tokenizer import exists as tokenizer_exists
from .corpus import Corpus
from .parallel import resolve_workers, write_shards_parallel
from .shards import write_shards

REPORT_LINES = {
    "binary_files_skipped": "binary files skipped",
    "empty_files_skipped": "empty files skipped",
    "gutenberg_chars": "characters of Project Gutenberg header/footer removed",
    "aozora_chars": "characters of Aozora Bunko markup, header and colophon removed",
    "unicode_chars": "characters removed by Unicode normalization",
    "whitespace_chars": "characters of whitespace removed",
    "unwrapped_lines": "line ends inside paragraphs joined (the text was wrapped at a fixed width)",
    "dropped_too_short": "documents dropped: shorter than --data.min_chars",
    "dropped_too_long": "documents dropped: longer than --data.max_chars",
    "dropped_not_included": "documents dropped: no --data.include match",
    "dropped_excluded": "documents dropped: an --data.exclude match",
    "dropped_duplicate": "documents dropped: exact duplicates",
}


def tokenizer_changes(run: Run, wanted: TokenizerConfig) -> list[str]:
    """The tokenizer settings asked for that differ from those the run's tokenizer was trained with."""
    if not tokenizer_exists(run.tokenizer_dir):
        return []
    trained = Tokenizer.load(run.tokenizer_dir).meta.get("trained_with")
    if trained is None and run.has_config():  # trained before tokenizers recorded it: config.yaml says
        trained = dataclasses.asdict(run.load_config().tokenizer)
    asked = dataclasses.asdict(wanted)
    return [
        f"--tokenizer.{k} {asked[k]} (the run's tokenizer: {v})"
        for k, v in (trained or {}).items()
        if k in asked and asked[k] != v
    ]


def prepare_run(run: Run, cfg: RunConfig, overwrite: bool) -> dict:
    """Read the inputs, train a tokenizer (unless the run has one) and write the token shards; the caller
    holds the run's writer lock.

    A run that has been trained keeps its data: overwrite=True sets its checkpoints and metrics aside in
    RUN/previous/ first (and its tokenizer, when the tokenizer settings changed and a new one is trained).
    config.yaml is written last, with the model's vocabulary size set from the tokenizer.
    """
    corpus = Corpus(cfg.data)
    changes = tokenizer_changes(run, cfg.tokenizer)
    if changes and not overwrite:
        raise UserError(
            f"{run.root}: {'; '.join(changes)}: the run keeps the tokenizer its data and checkpoints use; "
            f"prepare a new run directory, or `scratchlm prepare {run.root} --overwrite` to set the old "
            "results aside and train a new tokenizer"
        )
    # An imported run has a checkpoint but no data yet: preparing its first data replaces nothing.
    if run.has_checkpoints() and run.has_data() and not overwrite:
        raise UserError(
            f"{run.root} already has checkpoints trained on its data; prepare a new run directory for other "
            f"data, or `scratchlm prepare {run.root} --overwrite` to set them aside and start the run over"
        )

    retrain = bool(changes) or not tokenizer_exists(run.tokenizer_dir)  # its metadata file is written last
    if retrain:
        tokenizer = train_on_corpus(corpus, cfg)
    else:
        tokenizer = Tokenizer.load(run.tokenizer_dir)
        rank0_print(f"using the run's tokenizer ({tokenizer.kind}, {tokenizer.vocab_size} tokens)")
    # After the tokenizer trained, so a corpus that fails to read leaves the run as it was.
    if overwrite and (aside := run.set_aside(tokenizer=retrain)):
        rank0_print(f"set the run's earlier results aside in {aside}")
    if retrain:
        tokenizer.save(run.tokenizer_dir)
    cfg = cfg.replace(model={"vocab_size": tokenizer.vocab_size})

    report: Counter = Counter()
    sources: list[dict] = []
    local = [s.path for s in corpus.sources if s.kind in ("text", "jsonl")]
    total = sum(p.stat().st_size for p in local) if len(local) == len(corpus.sources) else None
    if total is not None and any(p.suffix.lower() == ".gz" for p in local):
        total = None  # compressed sizes say nothing about the text inside
    # --data.workers changes how fast, never what is written: the manifest is the same for any number.
    data_config = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k != "workers"}
    extra = {"report": report, "sources": sources, "data_config": data_config, "total_bytes": total}
    manifest = None
    workers = resolve_workers(cfg.data.workers, corpus)
    if workers > 1 and not corpus.few_text_files:
        rank0_print(f"reading, cleaning and encoding in {workers} worker processes")
        manifest = write_shards_parallel(
            run.data_dir, tokenizer, run.tokenizer_dir, corpus, workers, report, sources, extra
        )
    if manifest is None:  # one process, or fewer than 10 documents found (their tails are held out)
        report.clear()
        sources.clear()
        manifest = write_shards(
            run.data_dir, tokenizer, corpus.documents(report, sources), cfg.data, corpus.few_text_files, extra
        )
    run.save_config(cfg)

    for key, label in REPORT_LINES.items():
        if report[key]:
            rank0_print(f"  {report[key]:>12,} {label}")
    n_train = sum(s["tokens"] for s in manifest["splits"]["train"])
    n_val = sum(s["tokens"] for s in manifest["splits"]["val"])
    rank0_print(
        f"kept {report['documents_kept']:,} of {plural(report['documents_read'], 'document')}; "
        f"wrote {n_train:,} train and {n_val:,} val tokens to {run.data_dir} "
        f"({report['chars_kept'] / max(1, n_train + n_val):.2f} characters per token)"
    )
    return manifest
