"""Stage 3: grounding. The MLLM draws boxes for given entities, shown the K most similar labelled
demos with their gold boxes in each demo's sent-image pixels. ``Grounder`` is the stage."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from ..data.images import SentImage
from ..eval.metrics import normalise
from ..llm.client import LLMRequest, image_part
from ..llm.families import Family, resolve
from ..llm.replies import RawBox, Reading, read_boxes
from ..llm.stage import LLMStage, Outcome, Post
from ..llm.template import Template, template
from ..llm.typesets import TypeSet, load_typeset
from ..types import Entity, Prediction, Sample

GENERIC = resolve("pixels", None).family
MAX_BOXES = 4  # per entity: a bound for constrained decoding
PROMPTS = Path(__file__).parent / "prompts"


@cache
def box_rules() -> str:
    """What gets a box and what does not: shared by every grounding prompt."""
    return (PROMPTS / "rules.txt").read_text(encoding="utf-8").strip()


def entity_lines(entities: Sequence[Entity]) -> str:
    """Entities as a model reads them in a grounding prompt: one quoted text and its type a line."""
    return "\n".join(f'- "{e.text}" ({e.type})' for e in entities) or "- (none)"


def instructions(family: Family, typeset: TypeSet) -> tuple[Template, str]:
    """The family's grounding template and its filled-in instruction text."""
    prompt = template(PROMPTS / family.template)
    return prompt, prompt.render(
        coords=family.convention.describe(), rules=box_rules(), types=typeset.describe()
    ).strip()


def schema(entities: Sequence[Entity]) -> dict:
    """For our own JSON dialect: the entities given (text as an enum), each with at most MAX_BOXES boxes."""
    texts = sorted({e.text for e in entities})
    box = {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}
    return {
        "type": "object",
        "properties": {
            "reasoning": {"type": "string", "maxLength": 600},
            "entities": {
                "type": "array",
                "maxItems": len(entities),
                "items": {
                    "type": "object",
                    "properties": {
                        "text": {"enum": texts},
                        "type": {"type": "string"},
                        "boxes": {"type": "array", "items": box, "maxItems": MAX_BOXES},
                    },
                    "required": ["text", "boxes"],
                },
            },
        },
        "required": ["entities"],
    }


def _answer(entities: Sequence[Entity], image: SentImage, family: Family) -> str:
    conv = family.convention
    return family.render([(e.text, e.type, [conv.from_original(b, image) for b in e.boxes]) for e in entities])


def build_request(
    query: Sample,
    entities: Sequence[Entity],
    image: SentImage,
    demos: Sequence[tuple[Sample, SentImage]],
    family: Family = GENERIC,
    typeset: TypeSet | None = None,
) -> LLMRequest:
    """One multimodal request in the family's dialect: K demos (image, post, gold answer), then the query."""
    prompt, text = instructions(family, typeset or load_typeset("twitter"))
    content: list[dict] = [{"type": "text", "text": text}]
    for k, (demo, demo_image) in enumerate(demos, 1):
        w, h = demo_image.sent_size
        content += [
            {"type": "text", "text": f"Example {k}. Image ({w}x{h} pixels):"},
            image_part(demo_image),
            {"type": "text", "text": f"Post: {demo.text}\nAnswer:\n{_answer(demo.entities, demo_image, family)}"},
        ]
    w, h = image.sent_size
    content += [
        {"type": "text", "text": f"Now the post to answer. Image ({w}x{h} pixels):"},
        image_part(image),
        {
            "type": "text",
            "text": f"Post: {query.text}\nEntities to locate:\n{entity_lines(entities)}\n"
            "Ground exactly these entities; do not add, drop or rename any. "
            "Answer in the format asked for above.",
        },
    ]
    req_schema = schema(entities) if family.style == "json" else None  # a native dialect is not JSON of ours
    return LLMRequest(
        "grounding",
        f"{prompt.name}:{family.name}",
        prompt.version,
        [{"role": "user", "content": content}],
        req_schema,
        query.id,
    )


def parse(text: str, family: Family = GENERIC, image: SentImage | None = None) -> Reading:
    """The labelled boxes of a reply in any dialect; of several JSON blocks, those that fit the family's
    convention win. ParseError when the reply holds no answer at all."""
    return read_boxes(text, lambda values: family.convention.fits(values, image))


def _key(text: str) -> str:
    return normalise(re.sub(r"[#@\"'`“”‘’]", " ", text)).lower()


def _match(label: str, keys: list[str]) -> list[int]:
    """Indices of the entities a box label names: exact text, then whole-word containment, then word overlap."""
    lab = _key(label)
    exact = [i for i, k in enumerate(keys) if k == lab]
    if exact or not lab:
        return exact
    contained = [
        i
        for i, k in enumerate(keys)
        if k and (re.search(rf"\b{re.escape(k)}\b", lab) or re.search(rf"\b{re.escape(lab)}\b", k))
    ]
    if contained:
        best = max(len(keys[i]) for i in contained)
        return [i for i in contained if len(keys[i]) == best]
    words = set(lab.split())
    overlap = [(len(words & set(k.split())) / len(words | set(k.split())), i) for i, k in enumerate(keys) if k]
    best = max((o for o, _ in overlap), default=0.0)
    return [i for o, i in overlap if o == best] if best >= 0.5 else []


def assign(reading: Reading, entities: Sequence[Entity]) -> tuple[list[list[RawBox]], Counter]:
    """The reply's boxes per entity, by label; unlabelled boxes go to the entity when only one was asked about."""
    counts: Counter = Counter()
    keys = [_key(e.text) for e in entities]
    per: list[list[RawBox]] = [[] for _ in entities]
    unmatched: list[RawBox] = []
    for box in reading.boxes:
        hits = _match(box.label, keys) if box.label else []
        if not hits:
            unmatched.append(box)
        for i in hits:
            per[i].append(box)
    if unmatched and len(entities) == 1 and not per[0]:
        # one entity asked about: whatever the reply boxed (labelled "person", or not at all) is that entity
        per[0] = unmatched
        counts["single_entity_boxes_assigned"] += len(unmatched)
    else:
        counts["answer_boxes_unmatched"] += len(unmatched)
    return per, counts


def apply_boxes(pred: Prediction, reading: Reading, image: SentImage, family: Family = GENERIC) -> Outcome:
    """Boxes from the reply mapped back to original pixels and clipped a little where they pass the edge; reversed
    or absurd ones are rejected, flat ones dropped, one at a time, each counted."""
    per, counts = assign(reading, pred.entities)
    counts.update(reading.counts)
    ents = []
    for e, raw in zip(pred.entities, per):
        boxes: list = []
        for r in raw:
            box, status = family.convention.to_original(r.values, image)
            if box is None:
                counts[f"box_rejected_{status}"] += 1
                continue
            if box.is_degenerate:
                counts["box_dropped_degenerate"] += 1
                continue
            counts["box_clipped"] += status == "clipped"
            if box not in boxes:
                boxes.append(box)
        counts["grounded" if boxes else "not_in_image"] += 1
        ents.append(e.with_(boxes=tuple(boxes)))
    return Outcome(pred.with_(entities=tuple(ents)), counts)


class Grounder(LLMStage[Reading]):
    """The grounding stage: boxes for the post's entities, in the family's dialect, after its demonstrations."""

    name = "grounding"

    def __init__(self, typeset: TypeSet, family: Family = GENERIC):
        self.typeset, self.family = typeset, family

    def request(self, post: Post) -> LLMRequest:
        """The demonstrations, then the post's image, text and entities."""
        return build_request(post.sample, post.prediction.entities, post.image, post.demos, self.family, self.typeset)

    def parse(self, post: Post, text: str) -> Reading:
        """The labelled boxes of a reply."""
        return parse(text, self.family, post.image)

    def apply(self, post: Post, answer: Reading) -> Outcome:
        """The post's entities with the answer's boxes, in original pixels."""
        return apply_boxes(post.prediction, answer, post.image, self.family)


__all__ = ["Grounder", "apply_boxes", "assign", "build_request", "instructions", "parse", "schema"]
