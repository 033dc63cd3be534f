"""Refinement and grounding of a delegated post in one request (the seed's single call per post).

The answer merges the two formats: every entity of the post after the corrections, each with its
boxes. Every safeguard of the two-call path holds: KEPT entities stay as the tagger gave them,
refined texts must occur in the post, additions count only where the gate flagged the post as
missing one, and boxes are mapped back to original pixels and clipped.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, Field

from .. import refine
from ..data.images import SentImage
from ..eval.metrics import normalise
from ..llm.client import LLMRequest, image_part
from ..llm.families import Family
from ..llm.jsonparse import parse_answer
from ..llm.replies import Reading, read_boxes
from ..llm.stage import LLMStage, Outcome, Post
from ..llm.template import template
from ..llm.typesets import TypeSet
from ..types import Prediction, Sample
from . import GENERIC, MAX_BOXES, PROMPTS, apply_boxes, box_rules

TEMPLATE = "refine_ground.txt"


class _Item(BaseModel):
    text: str = Field(min_length=1)
    type: str = Field(min_length=1)


class _Answer(BaseModel):
    entities: list[_Item]


@dataclass(frozen=True)
class CombinedAnswer:
    """The corrected entity list and the boxes of the same reply."""

    entities: list[refine.RefinedEntity]
    reading: Reading


def schema(types: Sequence[str], max_items: int) -> dict:
    """Reasoning first, then at most max_items entities of our types, each with at most MAX_BOXES boxes."""
    box = {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}
    item = {
        "type": "object",
        "properties": {
            "text": {"type": "string", "minLength": 1, "maxLength": 200},
            "type": {"enum": list(types)},
            "boxes": {"type": "array", "items": box, "maxItems": MAX_BOXES},
        },
        "required": ["text", "type", "boxes"],
    }
    return {
        "type": "object",
        "properties": {
            "reasoning": {"type": "string", "maxLength": refine.REASONING_CHARS},
            "entities": {"type": "array", "items": item, "maxItems": max_items},
        },
        "required": ["reasoning", "entities"],
    }


def build_request(
    sample: Sample,
    pred: Prediction,
    image: SentImage,
    demos: Sequence[tuple[Sample, SentImage]],
    typeset: TypeSet,
    family: Family = GENERIC,
) -> LLMRequest:
    """One request: the demos (image, post, gold entities with boxes), then the post with its KEPT and UNCERTAIN
    entities."""
    prompt = template(PROMPTS / TEMPLATE)
    missing = refine.asks_for_additions(pred)
    text = prompt.render(
        domain=typeset.domain,
        types=typeset.describe(),
        rules=box_rules(),
        task=refine.task_text(pred),
        coords=family.convention.describe(),
        type_names=", ".join(typeset.names),
    ).strip()
    conv = family.convention
    content: list[dict] = [{"type": "text", "text": text}]
    for k, (demo, demo_image) in enumerate(demos, 1):
        answer = {
            "entities": [
                {"text": e.text, "type": e.type, "boxes": [conv.from_original(b, demo_image) for b in e.boxes]}
                for e in demo.entities
            ]
        }
        w, h = demo_image.sent_size
        content += [
            {"type": "text", "text": f"Example {k}. Image ({w}x{h} pixels):"},
            image_part(demo_image),
            {"type": "text", "text": f"Post: {demo.text}\nAnswer: {json.dumps(answer, ensure_ascii=False)}"},
        ]
    w, h = image.sent_size
    content += [
        {"type": "text", "text": f"Now the post to answer. Image ({w}x{h} pixels):"},
        image_part(image),
        {"type": "text", "text": f"POST: {sample.text}\nEntities found by the tagger:\n" + refine.entity_lines(pred)},
    ]
    max_items = len(pred.entities) + (3 if missing else 1)
    return LLMRequest(
        "combined",
        f"{prompt.name}:{family.name}",
        prompt.version,
        [{"role": "user", "content": content}],
        schema(typeset.names, max_items),
        sample.id,
    )


def parse(text: str, family: Family = GENERIC, image: SentImage | None = None) -> CombinedAnswer:
    """The corrected entities and the boxes of one reply; ParseError if it has no entity list."""
    entities = parse_answer(text, _Answer).entities
    reading = read_boxes(text, lambda values: family.convention.fits(values, image))
    return CombinedAnswer([refine.RefinedEntity(text=e.text, type=e.type) for e in entities], reading)


def apply(
    sample: Sample,
    pred: Prediction,
    answer: CombinedAnswer,
    image: SentImage,
    types: tuple[str, ...],
    family: Family = GENERIC,
) -> Outcome:
    """The merged prediction (kept entities untouched, uncertain ones corrected) with boxes from the same reply."""
    kept = {(normalise(e.text), e.type) for e in pred.entities if e.decision != "delegate"}
    counts: Counter = Counter()
    refined = []
    for r in answer.entities:
        if (normalise(r.text), r.type) in kept:
            counts["kept_echoed"] += 1  # the answer repeats a KEPT entity, as asked: nothing to merge
        else:
            refined.append(r)
    merged = refine.merge(sample, pred, refined, types)
    grounded = apply_boxes(merged.prediction, answer.reading, image, family)
    counts.update({f"refine_{k}": v for k, v in merged.counts.items()})
    counts.update(grounded.counts)
    return Outcome(grounded.prediction, counts)


class RefineAndGround(LLMStage[CombinedAnswer]):
    """Refinement and grounding of a delegated post with an image, in one request."""

    name = "combined"

    def __init__(self, typeset: TypeSet, types: tuple[str, ...], family: Family = GENERIC):
        self.typeset, self.types, self.family = typeset, types, family

    def request(self, post: Post) -> LLMRequest:
        """The demonstrations, then the post with its KEPT and UNCERTAIN entities."""
        return build_request(post.sample, post.prediction, post.image, post.demos, self.typeset, self.family)

    def parse(self, post: Post, text: str) -> CombinedAnswer:
        """The corrected entities and boxes of a reply."""
        return parse(text, self.family, post.image)

    def apply(self, post: Post, answer: CombinedAnswer) -> Outcome:
        """The merged prediction with the reply's boxes."""
        return apply(post.sample, post.prediction, answer, post.image, self.types, self.family)
