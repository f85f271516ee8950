"""Inputs → raw documents, streamed.

A text file is one document, read in 64 KiB chunks and handed on as pieces cut after a newline, so a
500 MB book (or a single 500 MB line) never sits in memory whole. A JSONL line, a Parquet row or a
Hugging Face dataset row is one document (one piece). Readers raise UserError naming the file, the
line or the byte offset; callers decide whether a binary or empty file is skipped or refused.
"""

from __future__ import annotations

import codecs
import gzip
import itertools
import json
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..common import UserError

CHUNK_BYTES = 1 << 16
# A longer line or record is cut into pieces of at most this many characters: the encoder's memory
# grows with the length of what it is given, and many pieces spread over all cores.
MAX_PIECE_CHARS = 1 << 16
DIR_SUFFIXES = (".txt", ".md", ".text", ".jsonl", ".ndjson", ".parquet", ".gz")
HF_PREFIX = "hf:"


class SkipFile(Exception):
    """A file that holds no usable text (binary or empty); the reason is the message."""


@dataclass(frozen=True)
class Source:
    kind: str  # text | jsonl | parquet | hf_disk | hf_hub
    name: str  # a path, or the hub name
    explicit: bool  # named by the user (not found inside a directory or by a glob)

    @property
    def path(self) -> Path:
        return Path(self.name)


@dataclass
class Document:
    """One document before cleaning: `pieces()` can be called again to re-read it."""

    name: str
    pieces: Callable[[], Iterator[str]]


def _kind(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    return "parquet" if name.endswith(".parquet") else "text"


def _is_hf_disk(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def expand_inputs(inputs: list[str], default: str) -> list[Source]:
    """Paths, directories (recursive), globs and hf:NAME → sources, in a stable order."""
    sources: list[Source] = []
    for spec in inputs or [default]:
        if not str(spec).strip():  # Path("") is the current directory: never read it by accident
            raise UserError("--input '': an empty path; give a file, folder, glob or hf:NAME")
        if spec.startswith(HF_PREFIX):
            sources.append(Source("hf_hub", spec[len(HF_PREFIX) :], True))
            continue
        path = Path(spec).expanduser()
        if any(ch in spec for ch in "*?["):
            root, pattern = (Path("/"), spec.lstrip("/")) if path.is_absolute() else (Path(), spec)
            matches = sorted(m for m in root.glob(pattern) if m.is_file())
            if not matches:
                raise UserError(f"--input {spec}: the pattern matches no file")
            sources.extend(Source(_kind(m), str(m), False) for m in matches)
        elif path.is_dir() and _is_hf_disk(path):
            sources.append(Source("hf_disk", str(path), True))
        elif path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.name.lower().endswith(DIR_SUFFIXES) and p.is_file()
            )
            if not found:
                raise UserError(f"--input {spec}: the directory holds no .txt/.md/.gz/.jsonl/.parquet file")
            sources.extend(Source(_kind(p), str(p), False) for p in found)
        elif path.is_file():
            sources.append(Source(_kind(path), str(path), True))
        else:
            hint = " (for a Hugging Face hub dataset write hf:NAME)" if "/" in spec else ""
            raise UserError(f"--input {spec}: no such file or directory{hint}")
    return sources


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")


def _cut_point(text: str, at: int, start: int = 0) -> int:
    """A cut at or before `at` that does not separate a base character from its combining marks."""
    while at > start + 1 and unicodedata.combining(text[at]):
        at -= 1
    return at


def split_text(text: str) -> Iterator[str]:
    """One record's text as pieces of at most MAX_PIECE_CHARS, cut after a newline when there is one."""
    start = 0
    while len(text) - start > MAX_PIECE_CHARS:
        end = start + MAX_PIECE_CHARS
        cut = text.rfind("\n", start, end) + 1 or _cut_point(text, end, start)
        yield text[start:cut]
        start = cut
    yield text[start:]


def text_pieces(path: Path, encoding: str = "utf-8", errors: str = "strict") -> Iterator[str]:
    """Decode a (possibly gzipped) text file chunk by chunk; pieces end after a newline when possible."""
    decoder = codecs.getincrementaldecoder(encoding)(errors=errors)
    check_binary = not encoding.lower().replace("_", "-").startswith(("utf-16", "utf-32"))
    offset, carry = 0, ""
    with _open_binary(path) as f:
        while True:
            try:
                chunk = f.read(CHUNK_BYTES)
            except (OSError, EOFError) as e:
                raise UserError(f"{path}: cannot read it ({e}); is it a valid .gz file?") from None
            if offset == 0:
                if not chunk:
                    raise SkipFile("empty")
                if check_binary and b"\x00" in chunk[:8192]:
                    raise SkipFile("binary")
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                raise UserError(
                    f"{path}: not valid {encoding} at byte offset {offset - pending + e.start}; "
                    f"convert it, set --data.encoding, or use --data.errors replace"
                ) from None
            offset += len(chunk)
            carry += text
            if not chunk:
                break
            cut = carry.rfind("\n") + 1
            if cut:
                yield carry[:cut]
                carry = carry[cut:]
            while len(carry) > MAX_PIECE_CHARS:  # a line longer than any piece may be
                cut = _cut_point(carry, MAX_PIECE_CHARS)
                yield carry[:cut]
                carry = carry[cut:]
    if carry:
        yield carry


def get_field(record, dotted: str, where: str, fix: str = "set --data.text_field") -> str:
    """record["a"]["b"] for "a.b" (list items by number); a one-line error names the place and the fix."""
    value = record
    for key in dotted.split("."):
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            keys = f" (it has: {', '.join(map(str, value))})" if isinstance(value, dict) else ""
            raise UserError(f"{where}: no field {dotted!r}{keys}; {fix}")
    if not isinstance(value, str):
        raise UserError(f"{where}: field {dotted!r} is {type(value).__name__}, not text; {fix}")
    return value


def jsonl_objects(
    path: Path, encoding: str = "utf-8", errors: str = "strict"
) -> Iterator[tuple[str, object]]:
    """("file:line", parsed value) for each non-blank line of a JSONL file (.gz too), read streaming; a line
    that is not JSON is a one-line error naming it. Shared by prepare, eval, sample and SFT."""
    with _open_binary(path) as f:
        yield from parse_jsonl_lines(path, enumerate(f, 1), encoding, errors)


def parse_jsonl_lines(
    path: Path, lines: Iterable[tuple[int, bytes]], encoding: str, errors: str
) -> Iterator[tuple[str, object]]:
    """("file:line", parsed value) for numbered raw lines (prepare's workers get them as blocks of bytes)."""
    for lineno, raw in lines:
        if not raw.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            yield where, json.loads(raw.decode(encoding, errors))
        except UnicodeDecodeError as e:
            raise UserError(f"{where}: not valid {encoding} at byte {e.start} of the line") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not valid JSON ({e.msg}); write one JSON object a line") from None


def jsonl_records(path: Path, field: str, encoding: str, errors: str) -> Iterator[Document]:
    yield from records_of(jsonl_objects(path, encoding, errors), field)


def records_of(objects: Iterable[tuple[str, object]], field: str) -> Iterator[Document]:
    for where, obj in objects:
        text = get_field(obj, field, where)
        yield Document(where, lambda t=text: split_text(t))


def _batch_records(batches, field: str, name: str) -> Iterator[Document]:
    top, row = field.split(".")[0], 0
    for batch in batches:
        for value in batch.column(top).to_pylist():
            row += 1
            where = f"{name}:row {row}"
            text = get_field({top: value}, field, where)
            yield Document(where, lambda t=text: split_text(t))


def _check_column(names: list[str], field: str, where: str) -> None:
    if field.split(".")[0] not in names:
        raise UserError(
            f"{where}: no column {field.split('.')[0]!r} (columns: {', '.join(names)}); set --data.text_field"
        )


def parquet_records(path: Path, field: str) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    _check_column(pf.schema_arrow.names, field, str(path))
    # Row batches keep memory bounded whatever the file size.
    batches = pf.iter_batches(batch_size=1024, columns=[field.split(".")[0]])
    yield from _batch_records(batches, field, str(path))


def hf_disk_records(path: Path, split: str, field: str) -> Iterator[Document]:
    """A `datasets` save_to_disk folder, read with pyarrow (its Arrow stream files) without `datasets`."""
    import pyarrow as pa

    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        if split not in splits:
            raise UserError(f"{path}: no split {split!r} (splits: {', '.join(splits)}); set --data.hf_split")
        path = path / split
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    for entry in state["_data_files"]:
        with pa.memory_map(str(path / entry["filename"])) as src:
            reader = pa.ipc.open_stream(src)
            _check_column(reader.schema.names, field, str(path))
            yield from _batch_records(reader, field, str(path / entry["filename"]))


def hf_hub_records(name: str, config: str, split: str, field: str) -> Iterator[Document]:
    try:
        import datasets
    except ImportError:
        raise UserError(f"--input hf:{name} needs the datasets package: pip install datasets") from None

    def fail(e: Exception) -> UserError:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        return UserError(
            f"--input hf:{name}: cannot load it from the Hugging Face hub ({type(e).__name__}: {first}); "
            f"check the name, --data.hf_config/--data.hf_split and the network, or give a save_to_disk folder"
        )

    try:
        rows = iter(datasets.load_dataset(name, config or None, split=split, streaming=True))
    except Exception as e:  # any failure of a remote load is the user's to fix (name, network)
        raise fail(e) from None
    for i in itertools.count(1):
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as e:  # a stream can fail midway too (network)
            raise fail(e) from None
        where = f"hf:{name}:row {i}"
        text = get_field(row, field, where)
        yield Document(where, lambda t=text: split_text(t))
