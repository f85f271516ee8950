"""Sources → cleaned documents.

Each file is one document. Cleaning is deliberately small and explained: the BOM goes, Windows
newlines become "\n", and a Project Gutenberg header and licence footer are cut when present.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from ..common import UserError

TEXT_SUFFIXES = {".txt", ".md", ".text", ".gz"}
_GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG EBOOK.*$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG EBOOK.*$", re.M | re.I)


def bundled_corpus() -> Path:
    """War and Peace (Project Gutenberg #2600), shipped gzipped inside the package."""
    return Path(str(resources.files("scratchlm") / "assets" / "war_and_peace.txt.gz"))


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Paths, directories (recursive) and globs → the text files they name, in a stable order."""
    files: list[Path] = []
    for spec in inputs or [str(bundled_corpus())]:
        path = Path(spec).expanduser()
        if any(ch in spec for ch in "*?["):
            matches = sorted(
                Path().glob(spec) if not path.is_absolute() else Path("/").glob(spec.lstrip("/"))
            )
            if not matches:
                raise UserError(f"--input {spec}: the pattern matches no file")
            files.extend(m for m in matches if m.is_file())
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
            if not found:
                raise UserError(f"--input {spec}: the directory holds no .txt/.md/.gz file")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"--input {spec}: no such file or directory")
    return files


def read_text(path: Path) -> str:
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    if b"\x00" in raw[:8192]:
        raise UserError(f"{path}: looks like a binary file (NUL bytes); give a UTF-8 text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}: not valid UTF-8 at byte offset {e.start}; convert it to UTF-8 first"
        ) from None


def strip_gutenberg(text: str) -> str:
    start, end = _GUTENBERG_START.search(text), _GUTENBERG_END.search(text)
    if start:
        text_start = start.end()
        text_end = end.start() if end and end.start() > text_start else len(text)
        return text[text_start:text_end].strip("\n") + "\n"
    return text


def clean(text: str, gutenberg: bool = True) -> str:
    text = text.lstrip("\ufeff").replace("\r\n", "\n")
    return strip_gutenberg(text) if gutenberg else text


def read_documents(inputs: list[str], gutenberg: bool = True) -> Iterator[tuple[Path, str]]:
    for path in expand_inputs(inputs):
        text = clean(read_text(path), gutenberg)
        if not text.strip():
            raise UserError(f"{path}: the file is empty; give a file with text in it")
        yield path, text
