"""Stage 3: grounding. The MLLM draws boxes for given entities, shown the K most similar labelled
demos with their gold boxes in each demo's sent-image pixels."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from ..data.images import SentImage
from ..eval.metrics import normalise
from ..llm import LLMRequest, image_part
from ..llm.families import Family, resolve
from ..llm.replies import RawBox, Reading, read_boxes
from ..synth.task import Template
from ..synth.typesets import TypeSet, load_typeset
from ..types import Entity, Prediction, Sample

PROMPTS = Path(__file__).parent / "prompts"
GENERIC = resolve("pixels", None).family
MAX_BOXES = 4  # per entity: a bound for constrained decoding


@lru_cache(maxsize=None)
def load_template(name: str) -> Template:
    """A grounding prompt template by file name (read once)."""
    return Template.load(PROMPTS / name)


def instructions(family: Family, typeset: TypeSet) -> tuple[Template, str]:
    """The family's grounding template and its filled-in instruction text."""
    template = load_template(family.template)
    return template, template.text.format(coords=family.convention.describe(), rules=rules(),
                                          types=typeset.describe()).strip()


@lru_cache(maxsize=None)
def rules() -> str:
    """The rules for what gets a box, shared by every grounding template."""
    return (PROMPTS / "rules.txt").read_text(encoding="utf-8").strip()


def schema(entities: Sequence[Entity]) -> dict:
    """For our own JSON dialect: the entities given (text as an enum), each with at most MAX_BOXES boxes."""
    texts = sorted({e.text for e in entities})
    box = {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}
    return {
        "type": "object",
        "properties": {
            "reasoning": {"type": "string", "maxLength": 600},
            "entities": {"type": "array", "maxItems": len(entities), "items": {
                "type": "object",
                "properties": {"text": {"enum": texts}, "type": {"type": "string"},
                               "boxes": {"type": "array", "items": box, "maxItems": MAX_BOXES}},
                "required": ["text", "boxes"]}},
        },
        "required": ["entities"],
    }


def _answer(entities: Sequence[Entity], image: SentImage, family: Family) -> str:
    conv = family.convention
    return family.render([(e.text, e.type, [conv.from_original(b, image) for b in e.boxes]) for e in entities])


def build_request(query: Sample, entities: Sequence[Entity], image: SentImage,
                  demos: Sequence[tuple[Sample, SentImage]], family: Family = GENERIC,
                  typeset: TypeSet | None = None) -> LLMRequest:
    """One multimodal request in the family's dialect: K demos (image, post, gold answer), then the query."""
    template, text = instructions(family, typeset or load_typeset("twitter"))
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
        {"type": "text", "text": f"Post: {query.text}\nEntities: {_entity_list(entities)}\n"
                                 "Ground exactly these entities; do not add, drop or rename any. "
                                 "Answer in the format asked for above."},
    ]
    req_schema = schema(entities) if family.style == "json" else None  # a native dialect is not JSON of ours
    return LLMRequest("grounding", f"{template.name}:{family.name}", template.version,
                      [{"role": "user", "content": content}], req_schema, query.id)


def _entity_list(entities: Sequence[Entity]) -> str:
    # kept as one JSON line: replay servers and oracles read the query's entities from it
    return json.dumps({"entities": [{"text": e.text, "type": e.type} for e in entities]}, ensure_ascii=False)


def parse(text: str, family: Family = GENERIC, image: SentImage | None = None) -> Reading:
    """The labelled boxes of a reply in any dialect; of several JSON blocks, those that fit the family's
    convention win. ParseError when the reply holds no answer at all."""
    return read_boxes(text, lambda values: family.convention.fits(values, image))


def parser(family: Family, image: SentImage | None):
    """parse() bound to one family and one sent image."""
    return lambda text: parse(text, family, image)


def _key(text: str) -> str:
    return normalise(re.sub(r"[#@\"'`“”‘’]", " ", text)).lower()


def _match(label: str, keys: list[str]) -> list[int]:
    """Indices of the entities a box label names: exact text, then whole-word containment, then word overlap."""
    lab = _key(label)
    exact = [i for i, k in enumerate(keys) if k == lab]
    if exact or not lab:
        return exact
    contained = [i for i, k in enumerate(keys) if k and (re.search(rf"\b{re.escape(k)}\b", lab)
                                                          or re.search(rf"\b{re.escape(lab)}\b", k))]
    if contained:
        best = max(len(keys[i]) for i in contained)
        return [i for i in contained if len(keys[i]) == best]
    words = set(lab.split())
    overlap = [(len(words & set(k.split())) / len(words | set(k.split())), i) for i, k in enumerate(keys) if k]
    best = max((o for o, _ in overlap), default=0.0)
    return [i for o, i in overlap if o == best] if best >= 0.5 else []


@dataclass(frozen=True)
class Grounded:
    """A prediction with boxes and counts of what happened to the answer's boxes."""

    prediction: Prediction
    counts: Counter


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


def apply_boxes(pred: Prediction, reading: Reading, image: SentImage, family: Family = GENERIC) -> Grounded:
    """Boxes from the reply mapped back to original pixels and clipped; bad ones dropped one at a time, counted."""
    per, counts = assign(reading, pred.entities)
    counts.update(reading.counts)
    ents = []
    for e, raw in zip(pred.entities, per):
        boxes: list = []
        for r in raw:
            box, clipped = family.convention.to_original(r.values, image)
            if box.is_degenerate:
                counts["box_dropped_degenerate"] += 1
                continue
            counts["box_clipped"] += clipped
            if box not in boxes:
                boxes.append(box)
        counts["grounded" if boxes else "not_in_image"] += 1
        ents.append(e.with_(boxes=tuple(boxes)))
    return Grounded(pred.with_(entities=tuple(ents)), counts)


__all__ = ["Grounded", "apply_boxes", "assign", "build_request", "instructions", "parse", "parser", "schema"]
