"""Choosing what to label: the unlabelled posts whose labels should help the tagger most.

A model rates every post of a pool by its risk: the expected number of entities it gets wrong (one minus the
gate's calibrated score of each entity it found) and of entities it misses (the probability mass of "part of
an entity" on the words outside its entities). A strategy turns risks into a choice; ``diverse`` (the default)
takes the riskiest posts but never two near-duplicates (retweets, templates), by their MiniLM sentence
embeddings. Posts already labelled never come back: not by id, not by their text.

Adding a strategy is adding an entry to STRATEGIES.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .gate import GatedTagger
from .ground.select import sentence_embedder
from .types import Prediction, Sample

CHUNK = 256  # candidates embedded at a time by the diverse strategy
NEAR_DUPLICATE = 0.85  # sentence cosine at or above which two posts count as one (retweets, templates)
ENTITY_WORDS = 1.5  # words per entity on Twitter-GMNER train: turns missed entity-word mass into entities
_URL = re.compile(r"https?://\S+|\S+\.co/\S*")
# "RT @user :" headers, nested ones too; a tokenizer may have split the name ("@ Gabriele _ Corno :")
_RT_HEADER = re.compile(r"^(?:rt\s*@[^:]{0,60}?:\s*|rt\s*@\s*\w+\s*)+")


def text_key(sample: Sample) -> str:
    """A post's text as duplicates share it: lower case, links, RT headers and punctuation gone."""
    text = _URL.sub(" ", " ".join(sample.tokens).lower()).strip()
    return " ".join(re.findall(r"\w+", _RT_HEADER.sub(" ", text)))


@dataclass(frozen=True)
class Rated:
    """A pool post with the model's prediction and its risk: expected wrong and missed entities."""

    sample: Sample
    prediction: Prediction
    wrong: float
    missed: float

    @property
    def risk(self) -> float:
        """Expected entities the tagger gets wrong or misses in this post."""
        return self.wrong + self.missed


def rated(tagging: GatedTagger, posts: Sequence[Sample], progress: bool = False) -> list[Rated]:
    """Every post with the model's entities, scored by the gate, and its risk."""
    tagged = tagging.tagger.predict_detailed(posts, progress=progress)
    preds = tagging.gate.rescore(tagged)
    out = []
    for s, t, p in zip(posts, tagged, preds):
        inside = {i for e in p.entities for i in range(e.start, e.end)}
        missed = sum(prob for i, prob in enumerate(t.entity_prob) if i not in inside) / ENTITY_WORDS
        wrong = sum(1.0 - (e.score if e.score is not None else 1.0) for e in p.entities)
        out.append(Rated(s, p, wrong, missed))
    return out


Strategy = Callable[[list[Rated], int, "Context"], list[Rated]]


@dataclass
class Context:
    """What a strategy may use beyond the risks: embeddings of the pool and of the labelled posts, a seed."""

    embed: Callable[[list[Sample]], np.ndarray]
    labelled: list[Sample]
    seed: int = 0


def _random(pool: list[Rated], n: int, ctx: Context) -> list[Rated]:
    return random.Random(ctx.seed).sample(pool, min(n, len(pool)))


def _riskiest(pool: list[Rated], n: int, ctx: Context) -> list[Rated]:
    """The naive rule: the highest expected wrong-or-missed count, exact duplicates of text once."""
    seen, out = set(), []
    for r in sorted(pool, key=lambda r: -r.risk):
        if text_key(r.sample) not in seen:
            seen.add(text_key(r.sample))
            out.append(r)
        if len(out) == n:
            break
    return out


def _diverse(pool: list[Rated], n: int, ctx: Context) -> list[Rated]:
    """The riskiest posts, never one that is a near-duplicate of a post chosen or labelled before. Only the
    posts looked at are embedded, a chunk at a time, riskiest first."""
    order = sorted(range(len(pool)), key=lambda i: -pool[i].risk)
    taken = [_unit(ctx.embed(ctx.labelled))] if ctx.labelled else []
    out: list[Rated] = []
    for k in range(0, len(order), CHUNK):
        chunk = [pool[i] for i in order[k : k + CHUNK]]
        vecs = _unit(ctx.embed([r.sample for r in chunk]))
        for r, v in zip(chunk, vecs):
            if not taken or float((np.vstack(taken) @ v).max()) < NEAR_DUPLICATE:
                taken.append(v[None, :])
                out.append(r)
                if len(out) == n:
                    return out
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


STRATEGIES: dict[str, tuple[Strategy, str]] = {
    "diverse": (_diverse, "the riskiest posts (expected wrong + missed entities), no two near-duplicates"),
    "risk": (_riskiest, "the riskiest posts, exact duplicates once (the naive rule)"),
    "random": (_random, "posts drawn at random (the baseline)"),
}
DEFAULT = "diverse"


@dataclass(frozen=True)
class Choice:
    """The chosen posts (most useful first), how many could be chosen from, and their mean risk."""

    chosen: list[Rated]
    candidates: int
    pool_risk: float


def choose(
    tagging: GatedTagger,
    pool: Sequence[Sample],
    labelled_ids: set[str],
    budget: int,
    strategy: str = DEFAULT,
    seed: int = 0,
    progress: bool = False,
) -> Choice:
    """The budget posts of the pool to label next, most useful first: never one already labelled (its id is in
    labelled_ids, or its text is that of a labelled post of the pool), never one twice."""
    labelled = [s for s in pool if s.id in labelled_ids]
    known_texts = {text_key(s) for s in labelled}
    fresh = [s for s in pool if s.id not in labelled_ids and text_key(s) not in known_texts]
    embedder = sentence_embedder()
    if strategy == "random":
        candidates = [Rated(s, Prediction(s.id), 0.0, 0.0) for s in fresh]
    else:
        candidates = rated(tagging, fresh, progress)
    pick, _ = STRATEGIES[strategy]
    chosen = pick(
        candidates, budget, Context(lambda samples: embedder([" ".join(s.tokens) for s in samples]), labelled, seed)
    )
    mean = sum(r.risk for r in candidates) / len(candidates) if candidates else 0.0
    return Choice(chosen, len(fresh), mean)
