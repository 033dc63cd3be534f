"""Offline augmentation without an LLM: mention replacement within the labelled pool."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from ..types import Entity, Sample
from .validate import normalise


def mention_pool(samples: Sequence[Sample]) -> dict[str, list[tuple[str, ...]]]:
    """Distinct mentions (as token tuples) of each type in the labelled samples, in first-seen order."""
    pool: dict[str, dict[tuple[str, ...], None]] = defaultdict(dict)
    for s in samples:
        for e in s.entities:
            pool[e.type][tuple(s.tokens[e.start : e.end])] = None
    return {t: list(m) for t, m in pool.items()}


def replace_mentions(sample: Sample, pool: dict[str, list[tuple[str, ...]]], rng: random.Random, sid: str) -> Sample:
    """A copy of sample with every entity swapped for a random other mention of its type."""
    tokens: list[str] = []
    entities = []
    pos = 0
    for e in sorted(sample.entities, key=lambda x: x.start):
        tokens.extend(sample.tokens[pos : e.start])
        choices = [m for m in pool.get(e.type, []) if m != tuple(sample.tokens[e.start : e.end])] or [
            tuple(sample.tokens[e.start : e.end])
        ]
        new = rng.choice(choices)
        entities.append(Entity(" ".join(new), e.type, len(tokens), len(tokens) + len(new), source="synthetic"))
        tokens.extend(new)
        pos = e.end
    tokens.extend(sample.tokens[pos:])
    return Sample(
        sid,
        tuple(tokens),
        tuple(entities),
        meta={"source": "synthetic", "seed_id": sample.id, "method": "mention-replacement"},
    )


def mention_replacement(
    samples: Sequence[Sample], per_sample: int = 3, seed: int = 13, exclude: set[str] | None = None
) -> tuple[list[Sample], dict]:
    """per_sample new sentences for each sample with entities; duplicates and excluded texts are dropped and counted."""
    rng = random.Random(seed)
    pool = mention_pool(samples)
    seen = {normalise(s.text) for s in samples} | set(exclude or ())
    out, dropped = [], defaultdict(int)
    for s in samples:
        if not s.entities:
            continue
        for k in range(per_sample):
            new = replace_mentions(s, pool, rng, f"{s.id}~mr{k}")
            key = normalise(new.text)
            if key in seen:
                dropped["leaks_excluded_data" if exclude and key in exclude else "duplicate_sentence"] += 1
                continue
            seen.add(key)
            out.append(new)
    return out, {"kept": len(out), "dropped": dict(dropped), "notes": {}}
