"""The plain data types that cross every stage boundary. No I/O here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Source = Literal["gold", "tagger", "mllm", "synthetic", "pseudo"]
Decision = Literal["keep", "delegate"]


@dataclass(frozen=True)
class Box:
    """A pixel box [xmin, ymin, xmax, ymax] in the original image."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float

    @property
    def area(self) -> float:
        """Area in square pixels (zero for a degenerate box)."""
        return max(0.0, self.xmax - self.xmin) * max(0.0, self.ymax - self.ymin)

    def iou(self, other: Box) -> float:
        """Intersection over union with another box (continuous coordinates)."""
        w = min(self.xmax, other.xmax) - max(self.xmin, other.xmin)
        h = min(self.ymax, other.ymax) - max(self.ymin, other.ymin)
        if w <= 0 or h <= 0:
            return 0.0
        inter = w * h
        return inter / (self.area + other.area - inter)

    def scaled(self, sx: float, sy: float) -> Box:
        """This box with x multiplied by sx and y by sy."""
        return Box(self.xmin * sx, self.ymin * sy, self.xmax * sx, self.ymax * sy)

    def clipped(self, width: float, height: float) -> Box:
        """This box clipped to an image of the given size."""
        return Box(
            min(max(self.xmin, 0.0), width),
            min(max(self.ymin, 0.0), height),
            min(max(self.xmax, 0.0), width),
            min(max(self.ymax, 0.0), height),
        )

    @property
    def is_degenerate(self) -> bool:
        """True when the box has no area."""
        return self.xmax <= self.xmin or self.ymax <= self.ymin

    def as_list(self) -> list[float | int]:
        """The box as a JSON-friendly list, integers where the value is whole."""
        return [int(v) if float(v).is_integer() else round(v, 2) for v in (self.xmin, self.ymin, self.xmax, self.ymax)]


@dataclass(frozen=True)
class Entity:
    """A typed mention; start/end are token offsets (end exclusive), or None when matched by text."""

    text: str
    type: str
    start: int | None = None
    end: int | None = None
    boxes: tuple[Box, ...] = ()
    score: float | None = None
    source: Source = "gold"
    decision: Decision | None = None

    @property
    def has_span(self) -> bool:
        """True when the entity carries token offsets."""
        return self.start is not None and self.end is not None

    def with_(self, **changes: Any) -> Entity:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """The entity as canonical JSON (design.md): offsets, text, type, boxes, score, source, decision."""
        d: dict[str, Any] = {}
        if self.has_span:
            d["start"], d["end"] = self.start, self.end
        d.update(text=self.text, type=self.type, boxes=[b.as_list() for b in self.boxes])
        if self.score is not None:
            d["score"] = round(self.score, 6)
        d["source"] = self.source
        if self.decision is not None:
            d["decision"] = self.decision
        return d


@dataclass(frozen=True)
class Sample:
    """One post: tokens, an optional image file name and its entities."""

    id: str
    tokens: tuple[str, ...]
    entities: tuple[Entity, ...] = ()
    image: str | None = None
    image_size: tuple[int, int] | None = None
    raw_text: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The raw text when known, else the tokens joined by spaces."""
        return self.raw_text if self.raw_text is not None else " ".join(self.tokens)

    def with_(self, **changes: Any) -> Sample:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """The sample as one canonical JSONL line holds it."""
        d: dict[str, Any] = {"id": self.id, "tokens": list(self.tokens), "image": self.image}
        if self.raw_text is not None:
            d["text"] = self.raw_text
        if self.image_size:
            d["width"], d["height"] = self.image_size
        d["entities"] = [e.to_dict() for e in self.entities]
        d.update(self.meta)
        return d


@dataclass(frozen=True)
class Prediction:
    """What the system says about one sample: its entities and how sure it is."""

    id: str
    entities: tuple[Entity, ...] = ()
    tokens: tuple[str, ...] | None = None
    image: str | None = None
    missing_score: float | None = None
    delegated: bool = False
    maybe_missing: bool = False  # the gate flagged the sample as maybe missing an entity
    meta: Mapping[str, Any] = field(default_factory=dict)

    def with_(self, **changes: Any) -> Prediction:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """The prediction as canonical JSON: what a predictions file holds on one line (json.dumps it)."""
        d: dict[str, Any] = {"id": self.id}
        if self.tokens is not None:
            d["tokens"] = list(self.tokens)
        if self.image is not None:
            d["image"] = self.image
        d["entities"] = [e.to_dict() for e in self.entities]
        if self.missing_score is not None:
            d["missing_score"] = round(self.missing_score, 6)
        d["delegated"] = self.delegated
        if self.maybe_missing:
            d["maybe_missing"] = True
        d.update(self.meta)
        return d
