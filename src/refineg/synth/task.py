"""The LLM synthesis task: build_request() gives messages, parse() gives typed samples. No HTTP here."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from ..llm.client import LLMRequest
from ..llm.jsonparse import parse_answer
from ..llm.template import template
from ..llm.typesets import TypeSet
from ..types import Sample

PROMPTS = Path(__file__).parent / "prompts"
TEMPLATE = "synthesize.txt"
TASKS = {
    "keep": "Write {n} new, varied sentences that mention the SAME entities as the example (all or some of them), "
    "each with the same type as in the example.",
    "new": "Write {n} new, varied sentences about DIFFERENT entities of the same types as in the example: invent or "
    "recall other real names of those types that fit the descriptions.",
    "none": "Write {n} new, varied sentences like the example that contain NO named entity of any of the types.",
}


class SynthEntity(BaseModel):
    text: str = Field(min_length=1)
    type: str = Field(min_length=1)


class SynthSample(BaseModel):
    text: str = Field(min_length=1)
    entities: list[SynthEntity] = Field(default_factory=list)


class SynthAnswer(BaseModel):
    samples: list[SynthSample]


def schema(types: tuple[str, ...], n: int) -> dict:
    """The answer schema: at most n sentences, each entity's type one of ours (a tiny model cannot invent types)."""
    entity = {
        "type": "object",
        "properties": {"text": {"type": "string", "minLength": 1, "maxLength": 200}, "type": {"enum": list(types)}},
        "required": ["text", "type"],
    }
    sample = {
        "type": "object",
        "properties": {
            "text": {"type": "string", "minLength": 1, "maxLength": 1000},
            "entities": {"type": "array", "items": entity, "maxItems": 20},
        },
        "required": ["text", "entities"],
    }
    return {
        "type": "object",
        "properties": {"samples": {"type": "array", "items": sample, "maxItems": n}},
        "required": ["samples"],
    }


def build_request(seed: Sample, kind: str, n: int, typeset: TypeSet) -> LLMRequest:
    """The chat request asking for n sentences of one kind (keep, new or none) from a seed sample."""
    prompt_template = template(PROMPTS / TEMPLATE)
    ents = "; ".join(f"{e.text} ({e.type})" for e in seed.entities) or "none"
    prompt = prompt_template.render(
        domain=typeset.domain, types=typeset.describe(), text=seed.text, entities=ents, task=TASKS[kind].format(n=n)
    )
    return LLMRequest(
        "synthesis",
        prompt_template.name,
        prompt_template.version,
        [{"role": "user", "content": prompt}],
        schema(typeset.names, n),
        f"{seed.id}:{kind}",
    )


def parse(text: str) -> list[SynthSample]:
    """The samples of an answer; ParseError if it does not fit the synthesis format."""
    return parse_answer(text, SynthAnswer).samples
