"""Validation of synthesized sentences. Every drop is counted by reason; nothing is dropped silently."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..data.tokenize import find_mentions, token_span, tokenize_with_offsets
from ..types import Entity, Sample
from .task import SynthSample


def normalise(text: str) -> str:
    """The form used to spot duplicate or leaked sentences: lower case, words only."""
    return " ".join(t.lower() for t, _, _ in tokenize_with_offsets(text) if any(c.isalnum() for c in t))


@dataclass
class Validator:
    """Turns raw LLM samples into tagged, tokenised Samples, and counts what it drops and why."""

    types: Sequence[str]
    type_map: dict[str, str] = field(default_factory=dict)
    exclude: set[str] = field(default_factory=set)
    dropped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    kept: int = 0

    def __post_init__(self) -> None:
        self._seen: set[str] = set(self.exclude)
        self._lower_types = {t.lower(): t for t in self.types}

    def mapped_type(self, raw: str) -> str | None:
        """The canonical type of a raw type name, or None if it is unknown."""
        raw = self.type_map.get(raw, raw)
        return raw if raw in self.types else self._lower_types.get(raw.lower())

    def accept(self, raw: SynthSample, sid: str, seed_id: str) -> Sample | None:
        """A tagged Sample, or None (with the reason counted)."""
        text = " ".join(raw.text.split())
        key = normalise(text)
        if not key:
            return self._drop("empty_sentence")
        if key in self.exclude:
            return self._drop("leaks_excluded_data")
        if key in self._seen:
            return self._drop("duplicate_sentence")
        typed: dict[str, str] = {}
        for ent in raw.entities:
            etype = self.mapped_type(ent.type)
            name = " ".join(ent.text.split())
            if etype is None:
                return self._drop("unknown_type")
            if name in typed and typed[name] != etype:
                return self._drop("entity_with_two_types")
            typed[name] = etype
        mentions = find_mentions(text, list(typed))
        found = {name for _, _, name in mentions}
        for name in typed:
            if name not in found:
                reason = "entity_inside_a_word" if name in text else "entity_not_in_text"
                return self._drop(reason)
        cuts = {p for s, e, _ in mentions for p in (s, e)}
        offsets = tokenize_with_offsets(text, cuts)
        entities = []
        for s, e, name in mentions:
            start, end = token_span(offsets, s, e)
            entities.append(
                Entity(" ".join(t for t, _, _ in offsets[start:end]), typed[name], start, end, source="synthetic")
            )
        self.notes["extra_occurrences_tagged"] += len(mentions) - len(typed)
        self._seen.add(key)
        self.kept += 1
        return Sample(
            sid, tuple(t for t, _, _ in offsets), tuple(entities), meta={"source": "synthetic", "seed_id": seed_id}
        )

    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1
        return None

    def summary(self) -> dict:
        """Kept count, drops by reason, and notes (such as extra occurrences that were tagged too)."""
        return {"kept": self.kept, "dropped": dict(sorted(self.dropped.items())), "notes": dict(self.notes)}


def excluded_texts(samples: Iterable[Sample]) -> set[str]:
    """Normalised texts of the samples a synthesized sentence must not repeat (dev or test)."""
    return {normalise(s.text) for s in samples}
