"""Stage 3: grounding. The MLLM draws boxes for given entities, shown the K most similar labelled
demos with their gold boxes in each demo's sent-image pixels."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pydantic import BaseModel, Field

from ..data.images import SentImage
from ..eval.metrics import normalise
from ..llm import LLMRequest, image_part, parse_answer
from ..synth.task import Template
from ..types import Box, Entity, Prediction, Sample

TEMPLATE = Path(__file__).parent / "prompts" / "ground.txt"


class GroundedEntity(BaseModel):
    text: str
    type: str = ""
    boxes: list[list[float]] = Field(default_factory=list)


class GroundAnswer(BaseModel):
    entities: list[GroundedEntity]


SCHEMA = GroundAnswer.model_json_schema()


def _entity_lines(entities: Sequence[Entity], image: SentImage | None, with_boxes: bool) -> str:
    out = []
    for e in entities:
        if with_boxes:
            boxes = [image.to_sent(b).as_list() for b in e.boxes] if image else []
            out.append({"text": e.text, "type": e.type, "boxes": [[round(v) for v in b] for b in boxes]})
        else:
            out.append({"text": e.text, "type": e.type})
    import json

    return json.dumps({"entities": out}, ensure_ascii=False)


def build_request(query: Sample, entities: Sequence[Entity], image: SentImage,
                  demos: Sequence[tuple[Sample, SentImage]], template: Template | None = None) -> LLMRequest:
    """One multimodal request: K demos (image, text, gold entities and boxes), then the query."""
    template = template or Template.load(TEMPLATE)
    content: list[dict] = [{"type": "text", "text": template.text.strip()}]
    for k, (demo, demo_image) in enumerate(demos, 1):
        w, h = demo_image.sent_size
        content += [
            {"type": "text", "text": f"Example {k}. Image ({w}x{h} pixels):"},
            image_part(demo_image),
            {"type": "text", "text": f"Post: {demo.text}\nAnswer: {_entity_lines(demo.entities, demo_image, True)}"},
        ]
    w, h = image.sent_size
    content += [
        {"type": "text", "text": f"Now the post to answer. Image ({w}x{h} pixels):"},
        image_part(image),
        {"type": "text", "text": f"Post: {query.text}\nEntities: {_entity_lines(entities, None, False)}\n"
                                 "Ground exactly these entities; do not add, drop or rename any. End with one JSON "
                                 'object {"entities": [{"text": ..., "type": ..., "boxes": [[xmin, ymin, xmax, ymax]]}]}.'},
    ]
    return LLMRequest("grounding", template.name, template.version, [{"role": "user", "content": content}], SCHEMA, query.id)


def parse(text: str) -> list[GroundedEntity]:
    """The grounded entities of an answer; ParseError if it does not fit the format."""
    return parse_answer(text, GroundAnswer).entities


def _box(raw: list[float]) -> Box | None:
    if len(raw) != 4:
        return None
    try:
        return Box(*(float(v) for v in raw))
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Grounded:
    """A prediction with boxes and counts of what happened to the answer's boxes."""

    prediction: Prediction
    counts: Counter


def apply_boxes(pred: Prediction, answer: list[GroundedEntity], image: SentImage) -> Grounded:
    """Boxes from the answer mapped back to original pixels, clipped, degenerate ones dropped.

    The answer is matched to the entities by text and type (text alone as a fallback); an entity
    the answer leaves out gets no box, and an answer entity that matches none is ignored.
    """
    counts: Counter = Counter()
    pool = list(answer)
    ents = []
    for e in pred.entities:
        match = next((a for a in pool if normalise(a.text) == normalise(e.text) and a.type == e.type), None) \
            or next((a for a in pool if normalise(a.text) == normalise(e.text)), None)
        if match is None:
            counts["entity_not_answered"] += 1
            ents.append(e.with_(boxes=()))
            continue
        pool.remove(match)
        boxes = []
        for raw in match.boxes:
            box = _box(raw)
            mapped = image.to_original(box) if box is not None else None
            if mapped is None or mapped.is_degenerate:
                counts["box_dropped_degenerate"] += 1
                continue
            boxes.append(mapped)
        counts["grounded" if boxes else "not_in_image"] += 1
        ents.append(e.with_(boxes=tuple(boxes)))
    counts["answer_entities_ignored"] += len(pool)
    return Grounded(pred.with_(entities=tuple(ents)), counts)
