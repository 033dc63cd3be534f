"""Stage 2b: the MLLM re-checks the entities the gate delegated, and may add missed ones.

``Refiner`` is the stage: ``build_request`` gives the messages and ``parse`` reads the answer;
``merge`` keeps every confident entity as it is and replaces the uncertain ones with the validated
refined list.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from ..data.images import SentImage
from ..data.tokenize import tokenize
from ..llm.client import LLMRequest, image_part
from ..llm.jsonparse import parse_answer
from ..llm.stage import LLMStage, Outcome, Post
from ..llm.template import template
from ..llm.typesets import TypeSet
from ..types import Entity, Prediction, Sample

PROMPTS = Path(__file__).parent / "prompts"
TEMPLATE = "refine.txt"


class RefinedEntity(BaseModel):
    text: str = Field(min_length=1)
    type: str = Field(min_length=1)


class RefineAnswer(BaseModel):
    entities: list[RefinedEntity]


TASK_CHECK = (
    "For each UNCERTAIN entity decide whether it is a real entity of one of the types above, whether its "
    "boundaries are right (add or remove words) and whether its type is right."
)
TASK_MISSING = "The tagger may also have MISSED an entity in this post: look for one, and add it only if you are sure."
REASONING_CHARS = 1200  # room for a few sentences per entity, and a bound on a model that loops


def schema(types: Sequence[str], max_items: int) -> dict:
    """The answer schema: a leading free-text reasoning field (so that constrained decoding still thinks
    first), then at most max_items entities whose type is one of ours."""
    return {
        "type": "object",
        "properties": {
            "reasoning": {"type": "string", "maxLength": REASONING_CHARS},
            "entities": {
                "type": "array",
                "maxItems": max_items,
                "items": {
                    "type": "object",
                    "properties": {
                        "text": {"type": "string", "minLength": 1, "maxLength": 200},
                        "type": {"enum": list(types)},
                    },
                    "required": ["text", "type"],
                },
            },
        },
        "required": ["reasoning", "entities"],
    }


def build_request(sample: Sample, pred: Prediction, typeset: TypeSet, image: SentImage | None = None) -> LLMRequest:
    """One chain-of-thought request for a sample's uncertain entities (and missed ones, if the gate flagged it)."""
    prompt = template(PROMPTS / TEMPLATE)
    n_uncertain = sum(1 for e in pred.entities if e.decision == "delegate")
    missing = asks_for_additions(pred)
    text = prompt.render(
        domain=typeset.domain,
        types=typeset.describe(),
        text=sample.text,
        entities=entity_lines(pred),
        task=task_text(pred),
        added=" and any missed entity you add" if missing else "",
        type_names=", ".join(typeset.names),
    )
    content: list[dict] = [{"type": "text", "text": text}]
    if image is not None:
        content.insert(0, image_part(image))
    max_items = max(1, n_uncertain) + (3 if missing else 1)  # a boundary fix may split one entity into two
    return LLMRequest(
        "refinement",
        prompt.name,
        prompt.version,
        [{"role": "user", "content": content}],
        schema(typeset.names, max_items),
        sample.id,
    )


def entity_lines(pred: Prediction) -> str:
    """The tagger's entities as prompt lines, each marked KEPT or UNCERTAIN, with its confidence."""
    lines = []
    for e in pred.entities:
        mark = "UNCERTAIN" if e.decision == "delegate" else "KEPT"
        score = f", tagger confidence {e.score:.2f}" if e.score is not None else ""
        lines.append(f'- {mark}: "{e.text}" ({e.type}{score})')
    return "\n".join(lines) or "- (none)"


def task_text(pred: Prediction) -> str:
    """What the model is asked to do: check the uncertain entities, and look for missed ones if flagged."""
    uncertain = any(e.decision == "delegate" for e in pred.entities)
    return "\n".join(t for t, on in ((TASK_CHECK, uncertain), (TASK_MISSING, asks_for_additions(pred))) if on)


def asks_for_additions(pred: Prediction) -> bool:
    """True when the gate flagged the sample as maybe missing an entity (so additions are asked for and kept)."""
    # Predictions written before the flag existed carry only `delegated`: no uncertain entity means flagged.
    return pred.maybe_missing or (pred.delegated and not any(e.decision == "delegate" for e in pred.entities))


def parse(text: str) -> list[RefinedEntity]:
    """The refined entities of an answer; ParseError if it does not fit the format."""
    return parse_answer(text, RefineAnswer).entities


def _occurrences(tokens: tuple[str, ...], name: str) -> list[tuple[int, int]]:
    """Token spans where the entity text occurs (tokenised our way)."""
    needle = tuple(tokenize(name))
    n = len(needle)
    if not n:
        return []
    return [(i, i + n) for i in range(len(tokens) - n + 1) if tuple(tokens[i : i + n]) == needle]


def merge(sample: Sample, pred: Prediction, refined: list[RefinedEntity], types: tuple[str, ...]) -> Outcome:
    """Kept entities stay; uncertain ones are replaced by the refined entities that pass validation."""
    counts: Counter = Counter()
    kept = [e for e in pred.entities if e.decision != "delegate"]
    delegated = {(e.start, e.end): e for e in pred.entities if e.decision == "delegate"}
    taken = {i for e in kept for i in range(e.start, e.end)}
    added: list[Entity] = []
    by_lower = {t.lower(): t for t in types}
    may_add = asks_for_additions(pred)
    uncertain = {i for (s, e) in delegated for i in range(s, e)}
    for r in refined:
        etype = r.type if r.type in types else by_lower.get(r.type.lower())
        if etype is None:
            counts["rejected_unknown_type"] += 1
            continue
        spans = _occurrences(sample.tokens, " ".join(r.text.split()))
        if not spans:
            counts["rejected_not_in_text"] += 1
            continue
        free = [sp for sp in spans if not taken.intersection(range(*sp))]
        if not free:
            counts["rejected_overlaps"] += 1
            continue
        if not may_add:  # not asked for additions: only corrections of an uncertain entity count
            free = [sp for sp in free if uncertain.intersection(range(*sp))]
            if not free:
                counts["rejected_addition_not_asked"] += 1
                continue
        for start, end in free:
            old = delegated.get((start, end))
            same = old is not None and old.type == etype
            counts["confirmed" if same else "changed_or_added"] += 1
            added.append(
                Entity(
                    " ".join(sample.tokens[start:end]),
                    etype,
                    start,
                    end,
                    score=old.score if same else None,
                    source="tagger" if same else "mllm",
                    decision="delegate",
                )
            )
            taken.update(range(start, end))
    counts["dropped"] += sum(
        1 for (s, e), old in delegated.items() if not any(a.start == s and a.end == e for a in added)
    )
    ents = tuple(sorted(kept + added, key=lambda e: e.start))
    return Outcome(pred.with_(entities=ents), counts)


class Refiner(LLMStage[list[RefinedEntity]]):
    """The refinement stage: the post's uncertain entities (and missed ones, when flagged) checked by the MLLM,
    its image shown when there is one."""

    name = "refinement"

    def __init__(self, typeset: TypeSet, types: tuple[str, ...]):
        self.typeset, self.types = typeset, types

    def request(self, post: Post) -> LLMRequest:
        """The chain-of-thought request for the post."""
        return build_request(post.sample, post.prediction, self.typeset, post.image)

    def parse(self, post: Post, text: str) -> list[RefinedEntity]:
        """The refined entities of a reply."""
        return parse(text)

    def apply(self, post: Post, answer: list[RefinedEntity]) -> Outcome:
        """Kept entities as they were, uncertain ones replaced by the answer's valid entities."""
        return merge(post.sample, post.prediction, answer, self.types)
