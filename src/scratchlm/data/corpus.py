"""Sources → cleaned, selected documents, streamed, with a report of what each step removed.

Selection (length limits, include/exclude filters, exact de-duplication) needs the whole cleaned
document, so each document is cleaned once to decide. A document under CACHE_CHARS keeps its cleaned
pieces for the encoder; a larger one (a 500 MB single-file book) is read and cleaned again when it
is encoded, so memory stays bounded by the cache, never by the corpus.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from ..common import UserError
from ..config import DataConfig
from .clean import DocCleaner
from .sources import (
    Document,
    SkipFile,
    Source,
    expand_inputs,
    hf_disk_records,
    hf_hub_records,
    jsonl_records,
    parquet_records,
    text_pieces,
)

CACHE_CHARS = 1 << 24


def bundled_corpus() -> Path:
    """War and Peace (Project Gutenberg #2600), shipped gzipped inside the package."""
    return Path(str(resources.files("scratchlm") / "assets" / "war_and_peace.txt.gz"))


def read_text(path: Path) -> str:
    """A whole UTF-8 text file (for `eval --text`); the same checks as prepare's reader."""
    try:
        return "".join(text_pieces(Path(path)))
    except SkipFile as e:
        raise UserError(f"{path}: the file is {e}; give a UTF-8 text file with text in it") from None


def clean(text: str, gutenberg: bool = True, data: DataConfig | None = None) -> str:
    """Clean one text as `prepare` would with the settings `data` (default: the defaults), except that
    `gutenberg` says whether to cut a Project Gutenberg header and licence."""
    return DocCleaner(replace(data or DataConfig(), strip_gutenberg=gutenberg)).feed(text)


def read_cleaned(path: Path, data: DataConfig) -> str:
    """A --text file (eval, tokenizer stats) cleaned as the run's `prepare` cleaned its corpus, so its
    numbers compare with the val split's; it keeps any Gutenberg header."""
    if not path.is_file():
        raise UserError(f"--text {path}: no such file")
    return clean(read_text(path), gutenberg=False, data=data)


@dataclass
class CleanDoc:
    """A kept document: its cleaned length and its cleaned pieces (cached, or cleaned again on demand)."""

    name: str
    chars: int
    raw: Document
    cfg: DataConfig
    cached: list[str] | None = field(default=None, repr=False)

    def pieces(self) -> Iterator[str]:
        if self.cached is not None:
            yield from self.cached
            return
        cleaner = DocCleaner(self.cfg)
        for piece in self.raw.pieces():
            if out := cleaner.feed(piece):
                yield out


def source_info(src: Source) -> dict:
    """The manifest's summary of one input, filled as its documents are read."""
    return {"input": src.name, "kind": src.kind, "documents": 0, "kept": 0, "chars": 0}


def count_document(info: dict, kept: bool, chars: int) -> None:
    info["documents"] += 1
    if kept:
        info["kept"] += 1
        info["chars"] += chars


def _pattern(words: list[str], regex: bool) -> re.Pattern | None:
    if not words:
        return None
    try:
        return re.compile("|".join(w if regex else re.escape(w) for w in words))
    except re.error as e:
        raise UserError(f"--data.include/--data.exclude: not a valid regular expression ({e})") from None


@dataclass
class Measured:
    """One raw document cleaned once: what selection needs, decided without the other documents."""

    raw: Document
    chars: int
    key: bytes  # the cleaned text's digest, for exact de-duplication
    reason: str | None  # why it is dropped (a report key), or None: kept unless it is a duplicate
    cached: list[str] | None  # its cleaned pieces when under CACHE_CHARS

    def doc(self, cfg: DataConfig) -> CleanDoc:
        return CleanDoc(self.raw.name, self.chars, self.raw, cfg, self.cached)


class Selection:
    """The per-document half of selection (cleaning, length and include/exclude rules): it needs nothing
    but the document, so prepare's worker processes run it; de-duplication needs the documents before,
    so `keep` runs in input order in one process."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.include = _pattern(cfg.include, cfg.regex)
        self.exclude = _pattern(cfg.exclude, cfg.regex)

    def measure(self, raw: Document, report: Counter) -> Measured:
        cleaner = DocCleaner(self.cfg, report)
        digest = hashlib.blake2b(digest_size=16)
        cache: list[str] | None = []
        chars, included, excluded = 0, self.include is None, False
        for piece in raw.pieces():
            piece = cleaner.feed(piece)
            if not piece:
                continue
            chars += len(piece)
            digest.update(piece.encode("utf-8", "surrogatepass"))
            included = included or bool(self.include.search(piece))
            excluded = excluded or (self.exclude is not None and bool(self.exclude.search(piece)))
            if cache is not None:
                cache.append(piece)
                if chars > CACHE_CHARS:
                    cache = None  # too big to keep: it is cleaned again when encoded
        report["documents_read"] += 1
        reason = None
        if chars < max(1, self.cfg.min_chars):
            reason = "dropped_too_short"
        elif self.cfg.max_chars and chars > self.cfg.max_chars:
            reason = "dropped_too_long"
        elif not included:
            reason = "dropped_not_included"
        elif excluded:
            reason = "dropped_excluded"
        return Measured(raw, chars, digest.digest(), reason, cache)

    def keep(self, chars: int, key: bytes, reason: str | None, report: Counter, seen: set[bytes]) -> bool:
        """The in-order half: a document that passed `measure` is kept unless an earlier one had its text."""
        if reason is None and self.cfg.dedup and key in seen:
            reason = "dropped_duplicate"
        if reason is not None:
            report[reason] += 1
            return False
        seen.add(key)
        report["documents_kept"] += 1
        report["chars_kept"] += chars
        return True


class Corpus:
    """The inputs of one prepare, as a stream of kept documents; `documents()` can run more than once."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.sources = expand_inputs(cfg.inputs, str(bundled_corpus()))
        self.selection = Selection(cfg)

    @property
    def few_text_files(self) -> bool:
        """A few books: hold out the end of each instead of whole documents (known before reading)."""
        return len(self.sources) < 10 and all(s.kind == "text" for s in self.sources)

    def raw_documents(self, src: Source) -> Iterator[Document]:
        c = self.cfg
        if src.kind == "text":
            yield Document(src.name, lambda: text_pieces(src.path, c.encoding, c.errors))
        elif src.kind == "jsonl":
            yield from jsonl_records(src.path, c.text_field, c.encoding, c.errors)
        elif src.kind == "parquet":
            yield from parquet_records(src.path, c.text_field)
        elif src.kind == "hf_disk":
            yield from hf_disk_records(src.path, c.hf_split, c.text_field)
        else:
            yield from hf_hub_records(src.name, c.hf_config, c.hf_split, c.text_field)

    def documents(self, report: Counter, sources: list[dict] | None = None) -> Iterator[CleanDoc]:
        """Kept documents in input order; `report` counts what each step removed, `sources` gets one
        summary per input."""
        seen: set[bytes] = set()
        skipped: list[str] = []
        for src in self.sources:
            info = source_info(src)
            try:
                for raw in self.raw_documents(src):
                    m = self.selection.measure(raw, report)
                    kept = self.selection.keep(m.chars, m.key, m.reason, report, seen)
                    count_document(info, kept, m.chars)
                    if kept:
                        yield m.doc(self.cfg)
            except SkipFile as e:
                self.skip(src, e, report, info, skipped)
            if sources is not None:
                sources.append(info)
        self.check_not_empty(report, skipped)

    def skip(self, src: Source, e: SkipFile, report: Counter, info: dict, skipped: list[str]) -> None:
        """A binary or empty file: counted and skipped, or refused (--data.strict, or named by the user)."""
        if self.cfg.strict or (str(e) == "empty" and src.explicit):
            what = "looks like a binary file (NUL bytes)" if str(e) == "binary" else "is empty"
            raise UserError(f"{src.name}: the file {what}; give a text file with text") from None
        report[f"{e}_files_skipped"] += 1
        info["skipped"] = str(e)
        skipped.append(f"{src.name} ({e})")

    @staticmethod
    def check_not_empty(report: Counter, skipped: list[str]) -> None:
        if not report["documents_kept"]:
            why = f"; skipped: {', '.join(skipped[:3])}" if skipped else ""
            raise UserError(f"the corpus is empty after cleaning and filtering: no document kept{why}")

    def sample(self, max_chars: int) -> list[str]:
        """The first `max_chars` characters of the kept documents, as pieces: the tokenizer's training
        text. Pieces, not whole documents, so a file that is one huge line still gives many lines."""
        out, n = [], 0
        for doc in self.documents(Counter()):
            for piece in doc.pieces():
                out.append(piece[: max_chars - n])
                n += len(out[-1])
                if n >= max_chars:
                    return out
        return out
