"""Scoring protocols: the official Twitter-GMNER one (``hindex``, refineg's default) and those of peer systems,
reimplemented rule by rule so that a refineg number can stand beside each paper's.

- ``hindex``: Yu et al. (2023), the protocol of metrics.py (see eval.metrics).
- ``unco``: the evaluator of UnCo (EMNLP 2025), copied into ReFineG and SAKE (tangjielong928/UnCo,
  evaluator.py and utils.py at commit c8afea6); every rule below names the lines it comes from.
- ``riveg``: RiVEG's statistic.py (JinYuanLi0012/RiVEG, statistic/statistic.py at commit 37f3057).

Each returns micro precision, recall and F1 for GMNER, MNER and EEG as PRF counts. No code of those
repositories is used or copied; docs/comparing.md explains the differences with figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, DataError
from ..types import Box, Entity, Prediction, Sample
from .metrics import MODES, PRF, score

# UnCo's label dictionary (evaluator.py __main__): a predicted type outside it is dropped (evaluator.py:74-75)
UNCO_LABELS = ("LOC", "PER", "ORG", "MISC")
UNCO_NAMES = {"OTHER": "MISC"}  # refineg's OTHER is their MISC
UNCO_IOU = 0.5  # a box matches at IoU >= 0.5 (evaluator.py:181, 209)
RIVEG_IOU = 0.5  # ">= 0.5" (statistic.py, the region check)
NO_REGION, UNMATCHED = 0, -100  # evaluator.py:200, 208 and 215


@dataclass(frozen=True)
class Protocol:
    """A named way to score predictions: whose it is, in one line, and its scorer."""

    name: str
    source: str
    scores: Callable[[Sequence[Sample], Sequence[Prediction]], dict[str, PRF]]


def hindex_scores(gold: Sequence[Sample], preds: Sequence[Prediction]) -> dict[str, PRF]:
    """The official protocol (refineg's own scorer, unchanged)."""
    return score(gold, preds).overall


# ---- UnCo / ReFineG / SAKE ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    """One row of their format: an entity with one of its boxes (or none), end inclusive."""

    start: int
    end: int
    type: str
    box: Box | None


def _unco_rows(entities: Sequence[Entity], sid: str, gold: bool) -> list[_Row]:
    """Their rows for our entities: one row per box, one row without a box for an entity with none
    (annotations/twitter_gmner_gt.json writes gold that way); OTHER is written MISC."""
    rows = []
    for e in entities:
        if not e.has_span:
            raise DataError("the unco protocol matches spans: every entity needs start and end", sample=sid)
        etype = UNCO_NAMES.get(e.type, e.type)
        if etype not in UNCO_LABELS:
            if gold:  # their evaluator fails on such gold (a KeyError at evaluator.py:252)
                raise DataError(
                    f"the unco protocol knows the types {', '.join(UNCO_LABELS)} (and OTHER), not {e.type!r}",
                    sample=sid,
                )
            continue  # a prediction of another type is left out, unseen (evaluator.py:74-75)
        rows += [_Row(e.start, e.end - 1, etype, b) for b in e.boxes] or [_Row(e.start, e.end - 1, etype, None)]
    return rows


def _iou32(a: Box, b: Box) -> float:
    """IoU as torchvision's box_iou computes it, in float32 (utils.py:63-73): a borderline 0.5 rounds alike."""
    a32, b32 = (np.asarray([v.xmin, v.ymin, v.xmax, v.ymax], dtype=np.float32) for v in (a, b))
    area_a = (a32[2] - a32[0]) * (a32[3] - a32[1])
    area_b = (b32[2] - b32[0]) * (b32[3] - b32[1])
    wh = np.maximum(np.minimum(a32[2:], b32[2:]) - np.maximum(a32[:2], b32[:2]), np.float32(0))
    inter = wh[0] * wh[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(inter / (area_a + area_b - inter))


def _unco_slots(gold: list[_Row], pred: list[_Row], typed: bool, regions: bool) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of one post under their rules."""
    key = (lambda r: (r.start, r.end, r.type)) if typed else (lambda r: (r.start, r.end, None))
    if not regions:  # MNER: (start, end, type) tuples as sets (evaluator.py:165-179, 245-246): a repeat counts once
        g, p = {key(r) for r in gold}, {key(r) for r in pred}
        return len(g & p), len(p - g), len(g - p)
    if not gold or not pred:  # a post whose gold or predicted list is empty drops out (evaluator.py:184-185)
        return 0, 0, 0
    # every gold row is its own region: its 1-based row number, or 0 without a box (evaluator.py:194-200)
    g = [(key(r), n + 1 if r.box is not None else NO_REGION) for n, r in enumerate(gold)]
    p = []
    for r in pred:
        if r.box is None:  # a prediction without a box has region 0 (evaluator.py:207-208)
            p.append((key(r), NO_REGION))
            continue
        # else the first gold row of the same span (types not compared) whose box it hits (evaluator.py:206-213),
        # or none at all (evaluator.py:214-215)
        hit = next(
            (
                n + 1
                for n, q in enumerate(gold)
                if q.box is not None and (q.start, q.end) == (r.start, r.end) and _iou32(r.box, q.box) >= UNCO_IOU
            ),
            UNMATCHED,
        )
        p.append((key(r), hit))
    gold_set, pred_set = set(g), set(p)
    # collect(): a prediction that is not gold, but has the span and type of a gold row, adds (span, type, 0)
    # to the predictions (utils.py:75-85); a wrong box becomes two false positives, a box on a box-less gold
    # entity a hit and a false positive
    keys = {k for k, _ in g}
    pred_set |= {(k, NO_REGION) for k, region in p if (k, region) not in gold_set and k in keys}
    # every distinct tuple is one slot (evaluator.py:244-262); micro figures over them (evaluator.py:266-270)
    return len(gold_set & pred_set), len(pred_set - gold_set), len(gold_set - pred_set)


def unco_scores(gold: Sequence[Sample], preds: Sequence[Prediction]) -> dict[str, PRF]:
    """The UnCo evaluator's figures. A gold post without a prediction is scored as one whose predicted list is
    empty (their evaluator asserts one prediction per gold post, in order: evaluator.py:68-71)."""
    by_id = {p.id: p for p in preds}
    totals = {m: [0, 0, 0] for m in MODES}
    for s in gold:
        g = _unco_rows(s.entities, s.id, gold=True)
        p = _unco_rows(by_id[s.id].entities, s.id, gold=False) if s.id in by_id else []
        for mode, typed, regions in (("gmner", True, True), ("mner", True, False), ("eeg", False, True)):
            for k, n in enumerate(_unco_slots(g, p, typed, regions)):
                totals[mode][k] += n
    return {m: PRF(tp, tp + fp, tp + fn) for m, (tp, fp, fn) in totals.items()}


# ---- RiVEG --------------------------------------------------------------------------------------------------


def _riveg_right(pred: Entity, golds: list[Entity], typed: bool, regions: bool) -> bool:
    """One predicted line is right when a gold line of the same post has its text (and type), and either both
    have no box or one of its boxes has IoU >= 0.5 with one of the gold line's (statistic.py, the loop over
    pred and label lines). An entity with several boxes is one line, right when any of its boxes hits."""
    for g in golds:
        if pred.text != g.text or (typed and pred.type != g.type):
            continue
        if not regions or (not pred.boxes and not g.boxes):
            return True
        if any(pb.iou(gb) >= RIVEG_IOU for pb in pred.boxes for gb in g.boxes):
            return True
    return False


def riveg_scores(gold: Sequence[Sample], preds: Sequence[Prediction]) -> dict[str, PRF]:
    """RiVEG's figures: precision is right lines over predicted lines, recall right lines over gold lines
    (a line matches by text, not offsets; a right line is counted once, repeated lines each). statistic.py prints
    GMNER (EEG with its commented line); MNER is the same rule without the region."""
    by_id = {s.id: list(s.entities) for s in gold}
    n_pred = sum(len(p.entities) for p in preds)
    n_gold = sum(len(s.entities) for s in gold)
    out = {}
    for mode, typed, regions in (("gmner", True, True), ("mner", True, False), ("eeg", False, True)):
        right = sum(_riveg_right(e, by_id.get(p.id, []), typed, regions) for p in preds for e in p.entities)
        out[mode] = PRF(right, n_pred, n_gold)
    return out


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            "hindex",
            "Twitter-GMNER's own (Yu et al., 2023): span and type exact, every predicted box IoU > 0.5 "
            "with a gold box, one-to-one",
            hindex_scores,
        ),
        Protocol(
            "unco",
            "UnCo / ReFineG / SAKE's evaluator.py: a row per box, IoU >= 0.5, empty posts dropped from "
            "GMNER and EEG, a wrong box two false positives",
            unco_scores,
        ),
        Protocol(
            "riveg", "RiVEG's statistic.py: lines matched by text, IoU >= 0.5, precision over lines", riveg_scores
        ),
    )
}


def protocol(name: str) -> Protocol:
    """A protocol by name; DataError listing the names for an unknown one."""
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}: one of {', '.join(PROTOCOLS)}, or all")
    return PROTOCOLS[name]
