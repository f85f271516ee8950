"""Line ends that a fixed-width wrapper put inside paragraphs, found and turned back into spaces.

Project Gutenberg's books (and most plain-text e-texts) are wrapped at ~70 columns: each paragraph is
cut into lines wherever the next word would not fit. A model trained on them spends bits guessing where
a line was cut and writes ragged lines. A wrapper's line end gives itself away: the line plus the next
word would pass the width. Those become spaces (one character for one, so byte counts stay); verse,
indented lines and lines that end short keep their newlines.

The rule runs on whole arrays of code points (numpy), since a wrapped book has a line end every ~70
characters and a Python loop over them would be most of `prepare`'s cleaning time.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

import numpy as np

# A document counts as wrapped when its first cleaned piece has no line wider than WRAP_WIDTHS, at
# least WRAP_EVIDENCE line ends inside paragraphs, and WRAP_SHARE of them where the next word would not
# have fitted. The slack (an eighth of the width) covers wrappers that broke a little early or counted
# an accented letter as two: 99.9% of War and Peace's line ends inside paragraphs pass, 4% of Tiny
# Shakespeare's verse lines.
WRAP_WIDTHS = range(40, 101)
WRAP_EVIDENCE = 20
WRAP_SHARE = 0.8
_NEWLINE, _SPACE = ord("\n"), ord(" ")

# What a character tells at a line end, looked up in one table (np.isin costs ~70 us a call, more than
# the rest of a short document's cleaning); characters past the table have no flag.
SPACE, DASH, BULLET, NUMBER_END = 1, 2, 4, 8
_FLAGS = np.zeros(0x3002, dtype=np.uint8)
_FLAGS[: _SPACE + 1] |= SPACE
for _code in (0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000):
    _FLAGS[_code] |= SPACE
for _chars, _flag in (("-‐–—", DASH), ("-*•+", BULLET), (".)", NUMBER_END)):
    _FLAGS[[ord(c) for c in _chars]] |= _flag


def _flags(codes: np.ndarray) -> np.ndarray:
    return _FLAGS[np.minimum(codes, _FLAGS.size - 1)]


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


@lru_cache(maxsize=4096)
def _wide(code: int) -> bool:
    return unicodedata.east_asian_width(chr(code)) in "WF"


def _is_wide(codes: np.ndarray) -> np.ndarray:
    """East Asian wide characters: their lines are joined without a space, if at all, so they stay."""
    wide = codes >= 0x1100
    if wide.any():
        wide[wide] = [_wide(int(c)) for c in codes[wide]]
    return wide


def wrap_ends(codes: np.ndarray, width: int, carried: int = 0, last: int = 0) -> tuple[np.ndarray, int]:
    """The positions of the newlines in `codes` that a wrapper at `width` made, and how many newlines
    sit inside paragraphs (between two non-empty lines). `carried` characters of the first line, the
    last of them `last`, came in the text before."""
    newlines = np.flatnonzero(codes == _NEWLINE)
    if newlines.size == 0:
        return newlines, 0
    bounds = np.concatenate(([-1], newlines, [codes.size]))
    lengths = np.diff(bounds) - 1  # of each line, newline excluded
    before, after = lengths[:-1].copy(), lengths[1:]
    before[0] += carried
    inside = (before > 0) & (after > 0)
    spaces = np.append(np.flatnonzero(codes == _SPACE), codes.size)
    starts = newlines + 1  # of the next lines
    word = np.minimum(spaces[np.searchsorted(spaces, starts)], bounds[2:]) - starts
    past = inside & (before + 1 + word > width - max(2, width // 8))
    ends, word = newlines[past], word[past]
    first, prev = codes[ends + 1], np.where(ends > 0, codes[np.maximum(ends - 1, 0)], last)
    # A bullet ("- ", "* ", "• ") or a number ("1.", "12)") opens a list item.
    first_flags, word_end = _flags(first), _flags(codes[ends + np.maximum(word, 1)])
    item = (word == 1) & (first_flags & BULLET > 0)
    item |= (word <= 3) & (first >= ord("0")) & (first <= ord("9")) & (word_end & NUMBER_END > 0)
    keep = (first_flags & SPACE > 0) | (_flags(prev) & DASH > 0) | item | _is_wide(prev) | _is_wide(first)
    return ends[~keep], int(inside.sum())


def wrap_width(text: str) -> tuple[int, np.ndarray, np.ndarray]:
    """The width `text` was wrapped at, its code points and the wrapper's line ends among them; width 0
    when its line ends are not a wrapper's. The line count and the widest line come first: they rule
    out most texts for the cost of one split, before any array work."""
    width = max(map(len, text.split("\n"))) if text.count("\n") >= WRAP_EVIDENCE else 0
    if width in WRAP_WIDTHS:
        codes = _codes(text)
        ends, inside = wrap_ends(codes, width)
        if inside >= WRAP_EVIDENCE and ends.size >= WRAP_SHARE * inside:
            return width, codes, ends
    return 0, np.empty(0, np.uint32), np.empty(0, np.int64)


class Unwrapper:
    """Joins a document's wrapped lines piece by piece. The first piece decides whether the document
    is wrapped, and at what width (a text file's pieces are 64 KiB, hundreds of lines); pieces must
    not end in a newline (the cleaner holds those back until the next text)."""

    def __init__(self):
        self.width: int | None = None
        self.carried, self.last = 0, 0  # the line in progress: its length so far and last character

    def feed(self, text: str) -> tuple[str, int]:
        """The piece with its wrapper's line ends as spaces, and how many there were."""
        if self.width == 0 or not text:
            return text, 0
        if self.width is None:  # the first piece starts a line: nothing carried
            self.width, codes, ends = wrap_width(text)
            if not self.width:
                return text, 0
        else:
            codes = _codes(text)
            ends, _ = wrap_ends(codes, self.width, self.carried, self.last)
        tail = text.rfind("\n")
        self.carried = self.carried + len(text) if tail < 0 else len(text) - tail - 1
        self.last = ord(text[-1])
        if ends.size == 0:
            return text, 0
        codes = codes.copy()
        codes[ends] = _SPACE
        return codes.tobytes().decode("utf-32-le", "surrogatepass"), int(ends.size)
