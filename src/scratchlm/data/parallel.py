"""Prepare on many cores: reading, cleaning and encoding in worker processes, written in input order.

The parent cuts the inputs into units of about UNIT_BYTES, each a contiguous run of documents: a few
small text files, a block of whole JSONL lines (read as bytes, numbered), or a list of Parquet/Hugging
Face records. A worker decodes, parses, cleans and measures each document (`Selection.measure`) and
encodes the ones that may be kept with the run's tokenizer (loaded from RUN/tokenizer, one thread).
The parent takes the results in unit order, at most IN_FLIGHT units per worker ahead, and does what
depends on the documents before: de-duplication, the seeded train/val draw and the shard writes. So
the shards and the manifest are byte for byte those of one process, and memory stays bounded.

A text file larger than INLINE_BYTES is one document that cannot be split (its cleaning carries state
from line to line): the parent streams it as one process does, while the workers read on ahead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from ..common import UserError
from ..config import DataConfig
from .corpus import CACHE_CHARS, Corpus, Selection, count_document, source_info
from .shards import (
    FEW_DOCS,
    LOOKAHEAD_CHARS,
    Progress,
    ShardWriter,
    _encode_into,
    doc_pieces,
    token_dtype,
)
from .shards import write_with as _write_with
from .sources import (
    Document,
    SkipFile,
    Source,
    _open_binary,
    parse_jsonl_lines,
    records_of,
    split_text,
    text_pieces,
)

UNIT_BYTES = 1 << 20  # 1 MB of input per task: ~0.3 s of work, far more than handing it over costs
INLINE_BYTES = CACHE_CHARS  # a text file above this is streamed by the parent (one document, bounded memory)
IN_FLIGHT = 2  # units queued per worker: enough to keep it busy while the parent writes
MAX_AUTO_WORKERS = 32
AUTO_MIN_BYTES = 1 << 23  # 8 MB: about 2 s of one process's work


class FewDocuments(Exception):
    """The corpus turned out to hold fewer than FEW_DOCS documents: one process holds out their tails."""


def resolve_workers(setting: int | str, corpus: Corpus) -> int:
    """--data.workers auto: one per core (at most MAX_AUTO_WORKERS); one for a few text files (each is
    one document, which one process reads) and for inputs under AUTO_MIN_BYTES, where starting the
    workers (~1 s: each imports numpy and loads the tokenizer) would cost more than they save."""
    if setting != "auto":
        return int(setting)
    files = [s.path for s in corpus.sources if s.kind in ("text", "jsonl", "parquet")]
    small = len(files) == len(corpus.sources) and sum(p.stat().st_size for p in files) < AUTO_MIN_BYTES
    if corpus.few_text_files or small:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, MAX_AUTO_WORKERS))


@dataclass
class UnitResult:
    """What a worker found in one unit: per raw document (in order) its source, cleaned length, digest
    and drop reason ("skip:binary"/"skip:empty" for a file without text), the tokens of those that may be
    kept (<|bos|> ids <|eos|>, one array, `lengths` apart), and the cleaning counts."""

    report: Counter
    sources: list[int] = field(default_factory=list)
    chars: list[int] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    reasons: list[str | None] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    tokens: np.ndarray | None = None


# ---- the worker side -------------------------------------------------------------------------------

_WORKER: dict = {}


def _start_worker(tokenizer_dir: str, cfg: DataConfig) -> None:
    # Ctrl-C reaches the whole process group: the parent stops the workers, they must not print tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["RAYON_NUM_THREADS"] = "1"  # Hugging Face tokenizers: one thread per worker process
    from ..tokenizer import Tokenizer, base

    base.ENCODE_THREADS = 1  # SentencePiece likewise
    _WORKER.update(tokenizer=Tokenizer.load(tokenizer_dir), cfg=cfg, selection=Selection(cfg))


def _raw_documents(unit: tuple, cfg: DataConfig) -> Iterator[tuple[int, Document]]:
    kind = unit[0]
    if kind == "files":
        for src, path in unit[1]:
            yield src, Document(path, lambda p=path: text_pieces(Path(p), cfg.encoding, cfg.errors))
    elif kind == "lines":
        _, src, path, first, block = unit
        lines = block.split(b"\n")
        if not lines[-1]:
            lines.pop()  # the block ends with a newline
        objects = parse_jsonl_lines(Path(path), enumerate(lines, first), cfg.encoding, cfg.errors)
        for doc in records_of(objects, cfg.text_field):
            yield src, doc
    else:
        for where, text in unit[2]:
            yield unit[1], Document(where, lambda t=text: split_text(t))


def _work(unit: tuple) -> UnitResult:
    """Read, clean, measure and encode one unit's documents (in a worker process)."""
    cfg, selection, tokenizer = _WORKER["cfg"], _WORKER["selection"], _WORKER["tokenizer"]
    out = UnitResult(Counter())
    texts, owners = [], []
    for src, raw in _raw_documents(unit, cfg):
        out.sources.append(src)
        try:
            m = selection.measure(raw, out.report)
        except SkipFile as e:
            out.chars.append(0)
            out.keys.append(b"")
            out.reasons.append(f"skip:{e}")
            continue
        out.chars.append(m.chars)
        out.keys.append(m.key)
        out.reasons.append(m.reason)
        if m.reason is None:  # the parent decides whether it is a duplicate
            for _, text, _, _ in doc_pieces(m.doc(cfg), "train"):
                texts.append(text)
                owners.append(len(out.sources) - 1)
    _encode(out, tokenizer, texts, owners)
    return out


def _encode(out: UnitResult, tokenizer, texts: list[str], owners: list[int]) -> None:
    """Each document that may be kept as <|bos|> ids <|eos|>, concatenated in order (what one process
    writes for it: pieces are encoded one by one there too)."""
    parts: list[list[int]] = [[] for _ in out.sources]
    for owner, ids in zip(owners, tokenizer.encode_batch(texts) if texts else [], strict=True):
        parts[owner].extend(ids)
    flat: list[int] = []
    for i, reason in enumerate(out.reasons):
        if reason is None:
            flat.append(tokenizer.bos_id)
            flat.extend(parts[i])
            flat.append(tokenizer.eos_id)
            out.lengths.append(len(parts[i]) + 2)
        else:
            out.lengths.append(0)
    out.tokens = np.asarray(flat, dtype=token_dtype(tokenizer.vocab_size))


# ---- the parent side -------------------------------------------------------------------------------


def _units(corpus: Corpus) -> Iterator[tuple[tuple, int]]:
    """(unit, input bytes) for every source in order; see the module docstring."""
    files: list[tuple[int, str]] = []
    size = 0
    for i, src in enumerate(corpus.sources):
        if src.kind == "text":
            n = src.path.stat().st_size
            if n * (4 if src.path.suffix.lower() == ".gz" else 1) <= INLINE_BYTES:
                files.append((i, src.name))
                size += n
                if size < UNIT_BYTES:
                    continue
                yield ("files", files), size
                files, size = [], 0
                continue
            if files:
                yield ("files", files), size
                files, size = [], 0
            yield ("inline", i), n
            continue
        if files:
            yield ("files", files), size
            files, size = [], 0
        yield from _line_units(i, src) if src.kind == "jsonl" else _record_units(i, src, corpus)
    if files:
        yield ("files", files), size


def _line_units(i: int, src: Source) -> Iterator[tuple[tuple, int]]:
    """Blocks of whole lines of a JSONL file, with the number of their first line (for error messages)."""
    line = 1
    with _open_binary(src.path) as f:
        while True:
            try:
                block = f.read(UNIT_BYTES)
                if block and not block.endswith(b"\n"):
                    block += f.readline()
            except (OSError, EOFError) as e:
                raise UserError(f"{src.path}: cannot read it ({e}); is it a valid .gz file?") from None
            if not block:
                return
            yield ("lines", i, src.name, line, block), len(block)
            line += block.count(b"\n")


def _record_units(i: int, src: Source, corpus: Corpus) -> Iterator[tuple[tuple, int]]:
    """Parquet and Hugging Face records, read here (pyarrow is fast) and handed on as text."""
    records, size = [], 0
    for raw in corpus.raw_documents(src):
        text = "".join(raw.pieces())
        records.append((raw.name, text))
        size += len(text)
        if size >= UNIT_BYTES:
            yield ("records", i, records), size
            records, size = [], 0
    if records:
        yield ("records", i, records), size


def _ordered(pool: ProcessPoolExecutor, units: Iterator[tuple[tuple, int]], depth: int):
    """(result or the inline unit, input bytes) in input order, with at most `depth` units in flight."""
    pending: deque = deque()
    for unit, nbytes in units:
        pending.append((unit if unit[0] == "inline" else pool.submit(_work, unit), nbytes))
        while len(pending) >= depth or (pending and isinstance(pending[0][0], tuple)):
            item, n = pending.popleft()
            yield (item if isinstance(item, tuple) else item.result()), n
    while pending:
        item, n = pending.popleft()
        yield (item if isinstance(item, tuple) else item.result()), n


class _Writer:
    """The parent's in-order half: de-duplication, the seeded train/val draw, the look-ahead that tells
    a few documents (whose tails one process holds out) from many, and the shard writes."""

    def __init__(self, corpus: Corpus, writers: dict[str, ShardWriter], tokenizer, report: Counter, progress):
        self.corpus, self.writers, self.tokenizer = corpus, writers, tokenizer
        self.report, self.progress, self.cfg = report, progress, corpus.cfg
        self.infos = [source_info(src) for src in corpus.sources]
        self.seen: set[bytes] = set()
        self.skipped: list[str] = []
        self.rng = np.random.default_rng(self.cfg.seed)  # drawn once per kept document, as _route does
        self.kept_docs = self.kept_chars = 0
        for w in writers.values():
            w.hold()

    def _kept(self, chars: int) -> str:
        """Count a kept document and draw its split; release the held tokens once the corpus is not few."""
        self.kept_docs += 1
        self.kept_chars += chars
        if self.writers["train"].held is not None and (
            self.kept_docs >= FEW_DOCS or self.kept_chars > LOOKAHEAD_CHARS
        ):
            for w in self.writers.values():
                w.release()
        return "val" if self.rng.random() < self.cfg.val_fraction else "train"

    def take(self, result: UnitResult) -> None:
        self.report.update(result.report)
        offset = 0
        for src, chars, key, reason, length in zip(
            result.sources, result.chars, result.keys, result.reasons, result.lengths, strict=True
        ):
            if reason and reason.startswith("skip:"):
                self.corpus.skip(
                    self.corpus.sources[src], SkipFile(reason[5:]), self.report, self.infos[src], self.skipped
                )
                continue
            kept = self.corpus.selection.keep(chars, key, reason, self.report, self.seen)
            count_document(self.infos[src], kept, chars)
            if kept:
                writer = self.writers[self._kept(chars)]
                writer.write(result.tokens[offset : offset + length])
                writer.documents += 1
            offset += length

    def take_inline(self, i: int) -> None:
        """A large text file: read, cleaned and encoded here as one process does, streaming."""
        src, selection = self.corpus.sources[i], self.corpus.selection
        try:
            for raw in self.corpus.raw_documents(src):
                m = selection.measure(raw, self.report)
                kept = selection.keep(m.chars, m.key, m.reason, self.report, self.seen)
                count_document(self.infos[i], kept, m.chars)
                if kept:
                    split = self._kept(m.chars)
                    _encode_into(
                        self.writers, self.tokenizer, doc_pieces(m.doc(self.cfg), split), self.progress
                    )
        except SkipFile as e:
            self.corpus.skip(src, e, self.report, self.infos[i], self.skipped)

    def finish(self, sources: list[dict]) -> None:
        sources.extend(self.infos)
        self.corpus.check_not_empty(self.report, self.skipped)
        if self.writers["train"].held is not None:
            raise FewDocuments


@contextlib.contextmanager
def _main_script_hidden() -> Iterator[None]:
    """A spawned process first runs the parent's main script again (as __mp_main__), which a script that
    calls scratchlm.prepare() without an `if __name__ == "__main__":` guard would turn into a prepare per
    worker. The workers need nothing from it, so while they start, the main module names no script."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main and k in main.__dict__}
    for k in saved:
        setattr(main, k, None) if k == "__spec__" else delattr(main, k)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


def write_shards_parallel(
    data_dir: Path,
    tokenizer,
    tokenizer_dir: Path,
    corpus: Corpus,
    workers: int,
    report: Counter,
    sources: list[dict],
    extra: dict,
) -> dict | None:
    """write_shards with `workers` processes; None when the corpus holds fewer than FEW_DOCS documents
    (the caller then prepares it in one process, which holds out the end of each)."""

    def fill(writers: dict[str, ShardWriter], progress: Progress) -> bool:
        state = _Writer(corpus, writers, tokenizer, report, progress)
        stack = contextlib.ExitStack()
        stack.enter_context(_main_script_hidden())
        pool = ProcessPoolExecutor(
            workers,
            mp_context=get_context("spawn"),
            initializer=_start_worker,
            initargs=(str(tokenizer_dir), corpus.cfg),
        )
        try:
            for result, nbytes in _ordered(pool, _units(corpus), workers * IN_FLIGHT):
                if isinstance(result, tuple):  # ("inline", source)
                    state.take_inline(result[1])
                else:
                    state.take(result)
                    progress.update(nbytes)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            stack.close()
        state.finish(sources)
        return False

    try:
        return _write_with(data_dir, tokenizer, corpus.cfg, extra, fill)
    except FewDocuments:
        return None
