"""Documents → token shards on disk (flat uint16/uint32, numpy-memmappable) + manifest.json.

Documents stream through: pieces are batched (~1M characters) and encoded on all cores by the
tokenizer, and the ids are appended to the open shard of their split. A shard is written under a
temporary name and renamed when complete; the manifest is written last and lists only complete
shards, and the old manifest is removed before the first new shard lands. So an interrupted prepare
leaves nothing that training would read, and running it again redoes the data from scratch.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common import UserError, atomic_path, atomic_write_text, is_interactive, rank0_print
from ..config import DataConfig
from .corpus import CleanDoc

MANIFEST = "manifest.json"
FEW_DOCS = 10  # fewer documents than this: hold out the end of each instead of whole documents
LOOKAHEAD_CHARS = 1 << 24
BATCH_CHARS = 1 << 20  # ~1M tokens as Python ints in flight (~40 MB); larger batches only cost memory
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


class ShardWriter:
    """Appends token arrays to `{split}_{i:03d}.bin`, starting a new file every `shard_tokens` tokens."""

    def __init__(self, data_dir: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.data_dir, self.split, self.dtype, self.shard_tokens = data_dir, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self.documents = 0
        self._stack: contextlib.ExitStack | None = None
        self.held: list[np.ndarray] | None = None  # tokens kept in memory until `release` (a look-ahead)

    def hold(self) -> None:
        self.held = []

    def release(self) -> None:
        held, self.held = self.held, None
        for tokens in held or []:
            self.write(tokens)

    def _open(self) -> None:
        self._name = f"{self.split}_{len(self.shards):03d}.bin"
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.data_dir / self._name))
        self._file = self._stack.enter_context(open(tmp, "wb"))
        self._sha, self._n = hashlib.sha256(), 0

    def write(self, tokens: np.ndarray) -> None:
        if self.held is not None:
            self.held.append(tokens.astype(self.dtype, copy=False))
            return
        while tokens.size:
            if self._stack is None:
                self._open()
            part, tokens = tokens[: self.shard_tokens - self._n], tokens[self.shard_tokens - self._n :]
            data = part.astype(self.dtype, copy=False).tobytes()
            self._file.write(data)
            self._sha.update(data)
            self._n += part.size
            if self._n >= self.shard_tokens:
                self._close()

    def _close(self) -> None:
        self._file.flush()
        self._stack.close()  # closes the file, then renames it into place
        self.shards.append({"file": self._name, "tokens": self._n, "sha256": self._sha.hexdigest()})
        self._stack = None

    def finish(self) -> list[dict]:
        if self._stack is not None:
            self._close()
        return self.shards

    def abort(self) -> None:
        if self._stack is not None:
            self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)  # deletes the temp file
            self._stack = None


class Progress:
    """A tqdm bar at a terminal; a plain line every 30 s otherwise (logs, CI)."""

    def __init__(self, total: int | None):
        self.done, self.t0, self.last = 0, time.perf_counter(), time.perf_counter()
        self.bar = None
        if is_interactive():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc="encode", smoothing=0.1)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif time.perf_counter() - self.last > 30:
            self.last = time.perf_counter()
            rate = self.done / (self.last - self.t0) / 1e6
            rank0_print(f"encoded {self.done / 1e6:,.0f} MB of text ({rate:.1f} MB/s)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _with_last(items: Iterable[str]) -> Iterator[tuple[str, bool]]:
    it = iter(items)
    prev = next(it, None)
    for item in it:
        yield prev, False
        prev = item
    if prev is not None:
        yield prev, True


def few_documents(docs: Iterable[CleanDoc]) -> tuple[bool, Iterator[CleanDoc]]:
    """Whether the corpus has fewer than FEW_DOCS documents, by looking ahead (at most LOOKAHEAD_CHARS
    of cached text are held), and the documents again."""
    docs, head, chars = iter(docs), [], 0
    for doc in docs:
        head.append(doc)
        chars += doc.chars
        if len(head) >= FEW_DOCS or chars > LOOKAHEAD_CHARS:
            return False, itertools.chain(head, docs)
    return True, iter(head)


def _route(docs: Iterable[CleanDoc], cfg: DataConfig, tail: bool) -> Iterator[tuple[str, str, bool, bool]]:
    """(split, text, starts_document, ends_document) for every piece. Whole documents go to val with
    probability val_fraction (a seeded draw per document); with `tail`, the last val_fraction of each
    document does (that val piece starts mid-document)."""
    rng = np.random.default_rng(cfg.seed)
    for doc in docs:
        if tail:
            yield from doc_pieces(doc, "train", cfg.val_fraction)
        else:
            yield from doc_pieces(doc, "val" if rng.random() < cfg.val_fraction else "train")


def doc_pieces(
    doc: CleanDoc, split: str, tail_fraction: float = 0.0
) -> Iterator[tuple[str, str, bool, bool]]:
    """One document's pieces as _route yields them: all to `split`, or its last `tail_fraction` to val."""
    cut_at = int(doc.chars * (1 - tail_fraction)) if tail_fraction else doc.chars
    pos, first = 0, True
    for piece, last in _with_last(doc.pieces()):
        if split == "train" and pos + len(piece) > cut_at:
            local = cut_at - pos
            # Cut at a paragraph (or at least a line) break so val does not start mid-sentence.
            para, line = piece.find("\n\n", local), piece.find("\n", local)
            cut = para + 2 if para >= 0 else line + 1 if line >= 0 else local
            yield "train", piece[:cut], first, True
            split, piece, first = "val", piece[cut:], False
        pos += len(piece)
        yield split, piece, first, last
        first = False


Piece = tuple[str, str, bool, bool]  # (split, text, starts_document, ends_document), as _route yields


def write_shards(
    data_dir: Path, tokenizer, docs: Iterable[CleanDoc], cfg: DataConfig, tail: bool, extra: dict
) -> dict:
    """Encode `docs` into train/val shards and write the manifest; returns the manifest.

    `tail` holds out the end of each document (for a few books); it is also chosen when the stream
    turns out to hold fewer than FEW_DOCS documents."""

    def fill(writers: dict[str, ShardWriter], progress: Progress) -> bool:
        nonlocal docs
        few = tail
        if not few:
            few, docs = few_documents(docs)
        _encode_into(writers, tokenizer, _route(docs, cfg, few), progress)
        return few

    return write_with(data_dir, tokenizer, cfg, extra, fill)


def write_with(data_dir: Path, tokenizer, cfg: DataConfig, extra: dict, fill) -> dict:
    """Open the writers, let `fill(writers, progress)` append every document (it returns whether the
    tails of documents were held out), then close the shards and write the manifest."""
    _start_writing(data_dir, cfg)
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {s: ShardWriter(data_dir, s, dtype, cfg.shard_tokens) for s in SPLITS}
    extra = dict(extra)
    progress = Progress(extra.pop("total_bytes", None))
    try:
        tail = fill(writers, progress)
        for split in SPLITS:
            if not writers[split].documents:
                raise UserError(
                    f"no document went to the {split} split ({writers['train'].documents} in train); "
                    f"raise --data.val_fraction or add documents"
                )
        splits = {s: w.finish() for s, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        progress.close()
    manifest = {
        "tokenizer_hash": tokenizer.hash,
        "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
        "layout": "<|bos|> document <|eos|>",
        "dtype": dtype.name,
        "split_mode": "tail of each document" if tail else "whole documents",
        "documents": {s: w.documents for s, w in writers.items()},
        "splits": splits,
        # Counters in key order: worker processes count in another order than one process does.
        **{k: dict(sorted(v.items())) if isinstance(v, Counter) else v for k, v in extra.items()},
    }
    # The manifest goes last: shards without a manifest are never read.
    atomic_write_text(data_dir / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    listed = {s["file"] for files in splits.values() for s in files}
    for old in data_dir.glob("*_*.bin"):  # shards of an earlier, larger prepare
        if old.name not in listed and old.name.startswith(SPLITS):
            old.unlink()
    return manifest


def _start_writing(data_dir: Path, cfg: DataConfig) -> None:
    """Check the split settings, then make the old data unreadable before the first new shard lands."""
    if not 0 < cfg.val_fraction < 1:
        raise UserError(f"--data.val_fraction {cfg.val_fraction}: must be between 0 and 1")
    if cfg.shard_tokens < 1:
        raise UserError(f"--data.shard_tokens {cfg.shard_tokens}: must be at least 1")
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MANIFEST).unlink(missing_ok=True)  # from here on, the old shards are never read
    for stale in data_dir.glob(".*.tmp"):  # temp files of an interrupted earlier prepare
        stale.unlink()


def _encode_into(
    writers: dict[str, ShardWriter], tokenizer, pieces: Iterable[Piece], progress: Progress
) -> None:
    """Encode the pieces in batches of about BATCH_CHARS characters and append them to their split's shard.

    One batch is encoded (sentencepiece's C++ threads, GIL released) while the next one is read and
    cleaned and the previous one written. On the shared 2-core test VM, where encoding alone fills
    both cores, an A/B of this overlap against encode-then-write was within noise (3 runs each, 20 MB);
    it pays where more cores make encoding faster than the single-threaded reading and cleaning.
    """
    pool = ThreadPoolExecutor(max_workers=1)
    pending: tuple[list[Piece], Future] | None = None
    try:
        for batch in _batches(pieces, BATCH_CHARS):
            job = (batch, pool.submit(tokenizer.encode_batch, [t[1] for t in batch]))
            if pending is not None:
                _write_encoded(writers, tokenizer, pending[0], pending[1].result(), progress)
            pending = job
        if pending is not None:
            _write_encoded(writers, tokenizer, pending[0], pending[1].result(), progress)
    finally:
        pool.shutdown(cancel_futures=True)


def _batches(pieces: Iterable[Piece], chars: int) -> Iterator[list[Piece]]:
    """The pieces in consecutive lists of at least `chars` characters (the last one may hold fewer)."""
    batch, size = [], 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece[1])
        if size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _write_encoded(
    writers: dict[str, ShardWriter],
    tokenizer,
    batch: list[Piece],
    encoded: list[list[int]],
    progress: Progress,
) -> None:
    # Documents are laid out as <|bos|> text <|eos|>, Llama-style: <|bos|> is the context a model knows
    # as "a text starts here" (sampling starts every prompt with it), <|eos|> teaches it to stop.
    dtype = writers["train"].dtype
    bos, eos = np.array([tokenizer.bos_id], dtype=dtype), np.array([tokenizer.eos_id], dtype=dtype)
    for (split, _, starts, ends), ids in zip(batch, encoded, strict=True):
        if starts:
            writers[split].write(bos)
        writers[split].write(np.asarray(ids, dtype=dtype))
        if ends:
            writers[split].write(eos)
            writers[split].documents += 1
    progress.update(sum(len(t.encode("utf-8", "surrogatepass")) for _, t, _, _ in batch))  # in bytes


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
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e}); run `scratchlm prepare` again") from None


def open_split(data_dir: Path, split: str, tokenizer_hash: str | None = None) -> TokenShards:
    manifest = read_manifest(data_dir)
    if tokenizer_hash and manifest["tokenizer_hash"] != tokenizer_hash:
        raise UserError(f"{data_dir}: shards were made with another tokenizer; run `scratchlm prepare` again")
    dtype = np.dtype(manifest["dtype"])
    arrays = []
    for s in manifest["splits"][split]:
        # Shards are plain names beside the manifest: "../x" or "/x" would read a file outside the run.
        if (
            not isinstance(s["file"], str)
            or Path(s["file"]).name != s["file"]
            or s["file"] in ("", ".", "..")
        ):
            raise UserError(
                f"{data_dir / MANIFEST}: shard {s['file']!r} is not a file in {data_dir}; "
                "run `scratchlm prepare` again"
            )
        path = data_dir / s["file"]
        if not path.is_file() or path.stat().st_size != s["tokens"] * dtype.itemsize:
            raise UserError(f"{path}: missing or not the size in the manifest; run `scratchlm prepare` again")
        if s["tokens"]:
            arrays.append(np.memmap(path, dtype=dtype, mode="r"))
    return TokenShards(arrays)
