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
_DASHES = np.array([ord(c) for c in "-‐–—"], dtype=np.uint32)
_BULLETS = np.array([ord(c) for c in "-*•+"], dtype=np.uint32)
_NUMBER_ENDS = np.array([ord("."), ord(")")], dtype=np.uint32)
_WIDE_SPACES = np.array([0x85, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000], dtype=np.uint32)


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _is_space(codes: np.ndarray) -> np.ndarray:
    return (codes <= _SPACE) | np.isin(codes, _WIDE_SPACES) | ((codes >= 0x2000) & (codes <= 0x200A))


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
    first, word_end = codes[ends + 1], codes[ends + np.maximum(word, 1)]
    prev = np.where(ends > 0, codes[np.maximum(ends - 1, 0)], last)
    keep = _is_space(first) | np.isin(prev, _DASHES) | _is_wide(prev) | _is_wide(first)
    keep |= _is_list_item(first, word, word_end)
    return ends[~keep], int(inside.sum())


def _is_list_item(first: np.ndarray, word: np.ndarray, word_end: np.ndarray) -> np.ndarray:
    """Lines that open with a bullet ("- ", "* ", "• ") or a number ("1.", "12)") start items."""
    bullet = (word == 1) & np.isin(first, _BULLETS)
    numbered = (word <= 3) & (first >= ord("0")) & (first <= ord("9")) & np.isin(word_end, _NUMBER_ENDS)
    return bullet | numbered


def wrap_width(codes: np.ndarray) -> int:
    """The width `codes` were wrapped at, or 0 when its line ends are not a wrapper's."""
    bounds = np.concatenate(([-1], np.flatnonzero(codes == _NEWLINE), [codes.size]))
    width = int(np.diff(bounds).max()) - 1
    if width not in WRAP_WIDTHS:
        return 0
    ends, inside = wrap_ends(codes, width)
    return width if inside >= WRAP_EVIDENCE and ends.size >= WRAP_SHARE * inside else 0


class Unwrapper:
    """Joins a document's wrapped lines piece by piece. The first piece decides whether the document
    is wrapped, and at what width (a text file's pieces are 64 KiB, hundreds of lines); pieces must
    not end in a newline (the cleaner holds those back until the next text)."""

    def __init__(self):
        self.width: int | None = None
        self.carried, self.last = 0, 0  # the line in progress: its length so far and last character

    def feed(self, text: str) -> tuple[str, int]:
        """The piece with its wrapper's line ends as spaces, and how many there were."""
        codes = _codes(text)
        if self.width is None:
            self.width = wrap_width(codes)
        if not self.width or not text:
            return text, 0
        ends, _ = wrap_ends(codes, self.width, self.carried, self.last)
        tail = text.rfind("\n")
        self.carried = self.carried + len(text) if tail < 0 else len(text) - tail - 1
        self.last = ord(text[-1])
        if ends.size == 0:
            return text, 0
        codes = codes.copy()
        codes[ends] = _SPACE
        return codes.tobytes().decode("utf-32-le", "surrogatepass"), int(ends.size)
