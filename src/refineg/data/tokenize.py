"""Tokenisation that keeps character offsets, and mention search at word boundaries."""

from __future__ import annotations

import re
import unicodedata

# As Twitter-GMNER tokenises: a t.co link splits after "t." ("http://t." "co/xyz"), other URLs
# stay whole, words keep inner hyphens ("F-16", "wi-fi"), and every other non-space character is
# its own token, so "#", "@", "_", apostrophes ("We ' re") and punctuation split off.
_TOKEN_RE = re.compile(r"https?://t\.(?=co/)|co/\S+|https?://\S+|[^\W_]+(?:-[^\W_]+)*|\S", re.UNICODE)


def _is_cjk(ch: str) -> bool:
    return unicodedata.name(ch, "").startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL"))


def is_word_char(ch: str) -> bool:
    """True for characters that glue into words (CJK characters stand alone)."""
    return (ch.isalnum() or ch == "_") and not _is_cjk(ch)


def is_boundary(text: str, i: int) -> bool:
    """True when position i of text does not fall inside a word."""
    if i <= 0 or i >= len(text):
        return True
    return not (is_word_char(text[i - 1]) and is_word_char(text[i]))


def tokenize_with_offsets(text: str, cuts: set[int] | frozenset[int] = frozenset()) -> list[tuple[str, int, int]]:
    """Tokens of text as (token, start, end), also split at every position in cuts."""
    out: list[tuple[str, int, int]] = []
    for m in _TOKEN_RE.finditer(text):
        pieces = [m.start()] + sorted(c for c in cuts if m.start() < c < m.end()) + [m.end()]
        for s, e in zip(pieces, pieces[1:]):
            if all(_is_cjk(ch) for ch in text[s:e]) and e - s > 1:
                out.extend((text[k], k, k + 1) for k in range(s, e))
            else:
                out.append((text[s:e], s, e))
    return out


def tokenize(text: str) -> list[str]:
    """Tokens of text, without offsets."""
    return [t for t, _, _ in tokenize_with_offsets(text)]


def find_mentions(text: str, names: list[str]) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, name) character spans of names in text, longest names first."""
    taken = [False] * len(text)
    found: list[tuple[int, int, str]] = []
    for name in sorted(set(n for n in names if n.strip()), key=len, reverse=True):
        for m in re.finditer(re.escape(name), text):
            s, e = m.start(), m.end()
            if is_boundary(text, s) and is_boundary(text, e) and not any(taken[s:e]):
                found.append((s, e, name))
                for k in range(s, e):
                    taken[k] = True
    return sorted(found)


def token_span(offsets: list[tuple[str, int, int]], start: int, end: int) -> tuple[int, int] | None:
    """The token span exactly covering characters [start, end), or None if it cuts a token."""
    first = next((i for i, (_, s, _) in enumerate(offsets) if s == start), None)
    last = next((i for i, (_, _, e) in enumerate(offsets) if e == end), None)
    if first is None or last is None or last < first:
        return None
    return first, last + 1
