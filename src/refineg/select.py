"""Choosing what to label: the unlabelled posts whose labels should help the tagger most.

A model rates every post of a pool by its risk: the expected number of entities it gets wrong (one minus the
gate's calibrated score of each entity it found) and of entities it misses (the probability mass of "part of
an entity" on the words outside its entities). A strategy turns risks into a choice; ``diverse`` (the default)
weighs each post's risk against its similarity (MiniLM sentence embeddings) to the posts already chosen or
labelled, so a batch spreads over topics, and never takes two near-duplicates (retweets, templates). Posts
already labelled never come back: not by id, not by their text.

Adding a strategy is adding an entry to STRATEGIES.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .gate import GatedTagger
from .ground.select import sentence_embedder
from .types import Prediction, Sample

SHORTLIST = 5  # the diverse strategy weighs the budget x this many riskiest posts
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
        key = text_key(r.sample)
        if key not in seen:
            seen.add(key)
            out.append(r)
        if len(out) == n:
            break
    return out


def _diverse(pool: list[Rated], n: int, ctx: Context) -> list[Rated]:
    """Risk discounted by redundancy: greedily the post whose risk times (1 - its highest cosine to a post
    chosen or labelled before) is largest, so a batch spreads over topics instead of piling onto one; a
    near-duplicate is never taken. Only the SHORTLIST x n riskiest posts are embedded, which keeps selection
    about as fast as tagging the pool."""
    shortlist = sorted(pool, key=lambda r: -r.risk)[: max(n * SHORTLIST, n)]
    if not shortlist:
        return []
    vecs = _unit(ctx.embed([r.sample for r in shortlist]))
    closest = np.zeros(len(shortlist))
    if ctx.labelled:
        closest = (vecs @ _unit(ctx.embed(ctx.labelled)).T).max(axis=1)
    risk = np.array([r.risk for r in shortlist])
    open_ = closest < NEAR_DUPLICATE
    out: list[Rated] = []
    while len(out) < n and open_.any():
        gain = np.where(open_, risk * (1.0 - np.clip(closest, 0.0, 1.0)), -np.inf)
        k = int(np.argmax(gain))
        out.append(shortlist[k])
        closest = np.maximum(closest, vecs @ vecs[k])
        open_ &= closest < NEAR_DUPLICATE
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class Entry(NamedTuple):
    """A strategy: how it picks, what it does in a few words, and whether it needs the model's risks."""

    pick: Strategy
    help: str
    needs_risk: bool = True


STRATEGIES: dict[str, Entry] = {
    "diverse": Entry(_diverse, "risk (expected wrong + missed entities) discounted by similarity to posts taken"),
    "risk": Entry(_riskiest, "the riskiest posts, exact duplicates once (the naive rule)"),
    "random": Entry(_random, "posts drawn at random (the baseline)", needs_risk=False),
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
    entry = STRATEGIES[strategy]
    if entry.needs_risk:
        candidates = rated(tagging, fresh, progress)
    else:  # tagging 7,000 posts for nothing would take most of the time
        candidates = [Rated(s, Prediction(s.id), 0.0, 0.0) for s in fresh]
    chosen = entry.pick(
        candidates, budget, Context(lambda samples: embedder([" ".join(s.tokens) for s in samples]), labelled, seed)
    )
    mean = sum(r.risk for r in candidates) / len(candidates) if candidates else 0.0
    return Choice(chosen, len(fresh), mean)
