"""GMNER / MNER / EEG scoring (Yu et al., 2023). Pure functions, no I/O.

An entity is correct when its span and type are exact and its region is correct: both gold and
prediction have no box, or both have boxes and *every* predicted box has IoU > 0.5 with some gold
box. MNER ignores regions, EEG ignores types. Matching is one-to-one (a maximum bipartite
matching), so duplicate predictions count as false positives. A predicted entity without offsets
is matched on its whitespace-normalised text within its sample.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ..types import Box, Entity, Prediction, Sample

MODES = ("gmner", "mner", "eeg")
IOU_THRESHOLD = 0.5


@dataclass(frozen=True)
class PRF:
    """Micro counts and the precision, recall and F1 they give."""

    tp: int
    n_pred: int
    n_gold: int

    @property
    def precision(self) -> float:
        return self.tp / self.n_pred if self.n_pred else 0.0

    @property
    def recall(self) -> float:
        return self.tp / self.n_gold if self.n_gold else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict:
        """Fractions plus the raw counts."""
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "tp": self.tp,
            "pred": self.n_pred,
            "gold": self.n_gold,
        }


@dataclass(frozen=True)
class Scores:
    """Overall and per-type scores of one evaluation."""

    overall: dict[str, PRF]
    per_type: dict[str, dict[str, PRF]]
    unknown_pred_ids: int = 0
    missing_pred_ids: int = 0

    def as_dict(self) -> dict:
        """The ``--json`` form: gmner, mner, eeg, per_type (gmner figures at the top of each type)."""
        out: dict = {m: self.overall[m].as_dict() for m in MODES}
        out["per_type"] = {
            t: {**by_mode["gmner"].as_dict(), "gmner": by_mode["gmner"].as_dict(), "mner": by_mode["mner"].as_dict()}
            for t, by_mode in sorted(self.per_type.items())
        }
        out["samples"] = {"unknown_pred_ids": self.unknown_pred_ids, "missing_pred_ids": self.missing_pred_ids}
        return out


def normalise(text: str) -> str:
    """Text with runs of white space folded to one space."""
    return " ".join(text.split())


def region_correct(pred: Sequence[Box], gold: Sequence[Box], threshold: float = IOU_THRESHOLD) -> bool:
    """True when both are empty, or both non-empty and every predicted box hits some gold box."""
    if not pred or not gold:
        return not pred and not gold
    return all(any(p.iou(g) > threshold for g in gold) for p in pred)


def same_mention(pred: Entity, gold: Entity) -> bool:
    """Same span when both have offsets, else the same normalised text."""
    if pred.has_span and gold.has_span:
        return (pred.start, pred.end) == (gold.start, gold.end)
    return normalise(pred.text) == normalise(gold.text)


def compatible(pred: Entity, gold: Entity, mode: str) -> bool:
    """Whether pred may be matched to gold under the given mode."""
    if not same_mention(pred, gold):
        return False
    if mode != "eeg" and pred.type != gold.type:
        return False
    return mode == "mner" or region_correct(pred.boxes, gold.boxes)


def matching(preds: Sequence[Entity], golds: Sequence[Entity], mode: str) -> list[tuple[int, int]]:
    """A maximum one-to-one matching of (pred index, gold index) pairs."""
    edges = [[g for g, gold in enumerate(golds) if compatible(p, gold, mode)] for p in preds]
    owner: dict[int, int] = {}

    def augment(p: int, seen: set[int]) -> bool:
        for g in edges[p]:
            if g in seen:
                continue
            seen.add(g)
            if g not in owner or augment(owner[g], seen):
                owner[g] = p
                return True
        return False

    for p in range(len(preds)):
        if edges[p]:
            augment(p, set())
    return sorted((p, g) for g, p in owner.items())


def score(gold: Sequence[Sample], preds: Sequence[Prediction]) -> Scores:
    """Micro P/R/F1 for GMNER, MNER and EEG, overall and per type.

    Gold samples without a prediction count all their entities as misses; predictions for ids
    that are not in gold count all their entities as false positives.
    """
    by_id = {p.id: p for p in preds}
    gold_ids = {s.id for s in gold}
    tp: dict[str, Counter] = {m: Counter() for m in MODES}
    n_pred, n_gold = Counter(), Counter()
    for sample in gold:
        pred_ents = by_id[sample.id].entities if sample.id in by_id else ()
        n_gold.update(e.type for e in sample.entities)
        n_pred.update(e.type for e in pred_ents)
        for mode in MODES:
            for _, g in matching(pred_ents, sample.entities, mode):
                tp[mode][sample.entities[g].type] += 1
    extra = [p for p in preds if p.id not in gold_ids]
    for p in extra:
        n_pred.update(e.type for e in p.entities)
    total_pred, total_gold = sum(n_pred.values()), sum(n_gold.values())
    overall = {m: PRF(sum(tp[m].values()), total_pred, total_gold) for m in MODES}
    types = sorted(set(n_pred) | set(n_gold))
    per_type = {t: {m: PRF(tp[m][t], n_pred[t], n_gold[t]) for m in ("gmner", "mner")} for t in types}
    return Scores(overall, per_type, len(extra), len(gold_ids - set(by_id)))


def swapped_hint(gold: Sequence[Sample], preds: Sequence[Prediction]) -> str | None:
    """A warning when GOLD looks like predictions (its entities carry scores, or a tagger or MLLM made them),
    the mark of arguments given the wrong way round; None otherwise."""
    predicted = [e for s in gold for e in s.entities if e.score is not None or e.source in ("tagger", "mllm")]
    if not predicted:
        return None
    plain = (
        bool(preds) and all(e.source == "gold" for p in preds for e in p.entities) and any(p.entities for p in preds)
    )
    what = (
        "and PRED looks like gold: were they given the wrong way round (evaluate GOLD PRED)?"
        if plain
        else "is it a predictions file? evaluate takes GOLD first, then PRED"
    )
    return f"{len(predicted)} entities of GOLD carry a score or a tagger/MLLM source, {what}"
