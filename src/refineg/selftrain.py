"""Self-training on unlabeled posts (``refineg train --unlabeled FILE``).

The trained tagger labels the unlabeled posts and its calibrated score model says which labels to
trust: an entity whose calibrated score is at least ``entity_score``. A post is used whole when every entity
is trusted and its missing-entity score is below the gate's flag threshold (so no token is likely an entity it
missed); with ``partial``, a post with some trusted entities is used partly labelled, its doubtful words unknown.
A student starts from the tagger's weights and trains on gold plus those pseudo-labels, weighted
below gold. It replaces the tagger only when dev MNER F1 rises; rounds repeat while it does. Dev
picks epochs and rounds and calibrates the gate, and is never pseudo-labelled. The tagger also keeps how the
unlabeled posts were tagged (CorpusCounts): how consistently a text is labelled across them is a signal for
the gate's score model.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import RunConfig, SelfTrainConfig
from .eval.metrics import normalise
from .gate import calibrate, fit_score_model, rescored
from .tagger.corpus import CorpusCounts
from .tagger.tagger import Tagger
from .tagger.train import train_tagger
from .types import Prediction, Sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelfTrained:
    """The tagger after self-training (the input one when no round helped) and the rounds."""

    tagger: Tagger
    rounds: list[dict]


def fresh_posts(unlabeled: Sequence[Sample], train: Sequence[Sample], dev: Sequence[Sample]) -> list[Sample]:
    """The unlabeled posts that are neither a labelled nor a dev post (by id or text), each text once."""
    seen_ids = {s.id for s in list(train) + list(dev)}
    seen_texts = {_key(s) for s in list(train) + list(dev)}
    out, same_id_other_text = [], 0
    for s in unlabeled:
        key = _key(s)
        same_id_other_text += s.id in seen_ids and key not in seen_texts
        if s.tokens and s.id not in seen_ids and key not in seen_texts:
            seen_texts.add(key)
            out.append(s)
    if same_id_other_text:  # an id is taken to name the same post; files numbered alike would lose posts here
        log.warning(
            "%d unlabeled post(s) left out: they have the id of a labelled or dev post but another text "
            "(give them other ids to use them)",
            same_id_other_text,
        )
    return out


def _key(sample: Sample) -> str:
    """A post's text with case and spacing ignored: a recased copy of a dev post is still that post."""
    return normalise(sample.text).lower()


def pseudo_labelled(
    posts: Sequence[Sample],
    preds: Sequence[Prediction],
    cfg: SelfTrainConfig,
    missing_threshold: float,
    seed: int,
    entity_prob: Sequence[Sequence[float]] | None = None,
) -> tuple[list[tuple[Sample, frozenset[int]]], Counter]:
    """The posts whose predicted labels the score model trusts, as training samples each with the word positions
    whose tag stays unknown (none for a wholly trusted post), and why others were not used.

    With ``cfg.partial`` and the per-word entity probabilities, a post with some trusted entities is used too: the
    words of its other entities, and the words that may be part of an entity it missed, are left unknown."""
    whole, partly, empty, counts = [], [], [], Counter()
    for k, (s, p) in enumerate(zip(posts, preds)):
        trusted = [e for e in p.entities if (e.score if e.score is not None else 0.0) >= cfg.entity_score]
        maybe_missing = (p.missing_score or 0.0) >= missing_threshold
        if len(trusted) == len(p.entities) and not maybe_missing:
            (whole if trusted else empty).append((_labelled(s, trusted), frozenset()))
        elif cfg.partial and trusted and entity_prob is not None:
            partly.append((_labelled(s, trusted), _unknown_words(p, trusted, entity_prob[k], missing_threshold)))
        else:
            counts["maybe_missing_an_entity" if maybe_missing else "uncertain_entity"] += 1
    rng = random.Random(seed)
    rng.shuffle(empty)  # posts without entities teach precision; a share of them, not all
    with_entities = whole + partly
    kept = with_entities + empty[: int(cfg.empty_share / (1 - cfg.empty_share) * len(with_entities))]
    if len(kept) > cfg.max_sentences:
        kept = rng.sample(kept, cfg.max_sentences)
    counts.update(
        trusted_with_entities=len(whole),
        partly_trusted=len(partly),
        trusted_without=len(empty),
        used=len(kept),
        entities_used=sum(len(s.entities) for s, _ in kept),
        unknown_words=sum(len(u) for _, u in kept),
    )
    return kept, counts


def _labelled(sample: Sample, entities: Sequence) -> Sample:
    return sample.with_(entities=tuple(e.with_(score=None, decision=None, source="pseudo", boxes=()) for e in entities))


def _unknown_words(
    pred: Prediction, trusted: Sequence, entity_prob: Sequence[float], threshold: float
) -> frozenset[int]:
    """Words of the untrusted entities, and words outside the trusted ones that may be part of an entity."""
    known = {i for e in trusted for i in range(e.start, e.end)}
    doubtful = {i for e in pred.entities if e not in trusted for i in range(e.start, e.end)}
    return frozenset(doubtful | {i for i, q in enumerate(entity_prob) if q >= threshold and i not in known})


def _score_model(tagger: Tagger, dev: Sequence[Sample], cfg: RunConfig):
    """The tagger's score model fitted on dev, and dev's predictions scored by it."""
    tagged = tagger.predict_detailed(dev)
    model = fit_score_model(tagged, dev, cfg.gate)
    return model, rescored(tagged, model)


def self_train(
    tagger: Tagger,
    dev_f1: float,
    train: Sequence[Sample],
    dev: Sequence[Sample],
    unlabeled: Sequence[Sample],
    cfg: RunConfig,
    progress: bool = True,
    done: Sequence[dict] = (),
    on_round: Callable[[Tagger, list[dict], float, bool], None] | None = None,
    state_dirs: Callable[[int], Path] | None = None,
) -> SelfTrained:
    """Rounds of pseudo-labelling and student training, kept while dev MNER F1 rises.

    ``done`` are rounds an earlier, interrupted run finished (``tagger`` is where they left it); ``on_round`` is
    told after each round the tagger, the rounds so far, its dev F1 and whether self-training is over;
    ``state_dirs(r)`` is where round r's student keeps its epoch state (a killed round goes on from it)."""
    st = cfg.selftrain
    posts = fresh_posts(unlabeled, train, dev)
    score_model, dev_preds = _score_model(tagger, dev, cfg)
    rounds: list[dict] = list(done)
    for r in range(len(done) + 1, st.rounds + 1):
        t0 = time.perf_counter()
        missing = calibrate(dev_preds, dev, cfg.gate).missing_threshold
        tagged = tagger.predict_detailed(posts, progress=progress)
        preds = rescored(tagged, score_model)
        pseudo, counts = pseudo_labelled(
            posts, preds, st, missing, cfg.tagger.seed + r, [t.entity_prob for t in tagged]
        )
        student, after, resumed = tagger, dev_f1, 0  # with no trusted entity there is nothing to learn from
        if counts["entities_used"]:
            student_cfg = cfg.tagger.model_copy(update={"epochs": st.epochs, "seed": cfg.tagger.seed + r})
            student, report = train_tagger(
                list(train) + [p for p, _ in pseudo],
                dev,
                student_cfg,
                progress,
                weights=[1.0] * len(train) + [st.weight] * len(pseudo),
                init=tagger,
                unknown=[frozenset()] * len(train) + [u for _, u in pseudo],
                state_dir=state_dirs(r) if state_dirs else None,
            )
            after, resumed = report.soup_dev_f1, report.resumed_after_epoch
            log.info(
                "self-training round %d: %d pseudo-labelled posts, dev MNER F1 %.4f -> %.4f (%s)",
                r,
                len(pseudo),
                dev_f1,
                after,
                "kept" if after > dev_f1 else "dropped",
            )
        better = after > dev_f1
        rounds.append(
            {
                "round": r,
                "unlabeled_posts": len(posts),
                "pseudo": dict(counts),
                "dev_f1_before": round(dev_f1, 4),
                "dev_f1_after": round(after, 4),
                "kept": better,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            | ({"resumed_after_epoch": resumed} if resumed else {})
        )
        finished = not better or r == st.rounds
        if better:
            tagger, dev_f1 = student, after
        if finished and posts:  # how the last teacher labelled the unlabeled posts, for the gate (free: already tagged)
            tagger.corpus = CorpusCounts.of([t.prediction for t in tagged])
        if on_round:
            on_round(tagger, rounds, dev_f1, finished)
        if finished:
            break
        score_model, dev_preds = _score_model(tagger, dev, cfg)
    return SelfTrained(tagger, rounds)
