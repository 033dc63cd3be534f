"""BIO tags <-> entity spans.

Reading is conlleval-style: an ``I-X`` that follows ``O`` or a tag of another type opens a new
entity of type X, exactly as if it were ``B-X``. Writers always emit well-formed BIO.
"""

from __future__ import annotations

import re

TAG_RE = re.compile(r"^(O|[BI]-[^\s-][^\s]*)$")


def is_valid_tag(tag: str) -> bool:
    """True for ``O``, ``B-X`` and ``I-X``."""
    return bool(TAG_RE.match(tag))


def spans_from_tags(tags: list[str] | tuple[str, ...]) -> list[tuple[int, int, str]]:
    """Entity spans (start, end exclusive, type) decoded conlleval-style from BIO tags."""
    spans: list[tuple[int, int, str]] = []
    start, etype = None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, ttype = tag.partition("-")
        continues = prefix == "I" and etype == ttype and start is not None
        if start is not None and not continues:
            spans.append((start, i, etype))
            start, etype = None, None
        if prefix == "B" or (prefix == "I" and not continues):
            start, etype = i, ttype
    return spans


def tags_from_spans(n_tokens: int, spans: list[tuple[int, int, str]]) -> list[str]:
    """BIO tags for n_tokens tokens; raises ValueError on overlapping or out-of-range spans."""
    tags = ["O"] * n_tokens
    for start, end, etype in sorted(spans):
        if not 0 <= start < end <= n_tokens:
            raise ValueError(f"span [{start}, {end}) is outside the {n_tokens} tokens")
        if any(t != "O" for t in tags[start:end]):
            raise ValueError(f"span [{start}, {end}) {etype} overlaps another entity")
        tags[start] = f"B-{etype}"
        for i in range(start + 1, end):
            tags[i] = f"I-{etype}"
    return tags
