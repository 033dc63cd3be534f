"""Stage 2a: the uncertainty gate. Calibrated on dev, it decides which tagger entities to keep and
which to delegate to the MLLM, and which samples may be missing an entity.

An entity whose score is below ``threshold`` is delegated; a sample whose ``missing_score`` is at
or above ``missing_threshold`` is flagged. With no LLM configured, everything is kept.
``GatedTagger`` is the tagger and its gate as one stage.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .config import GateConfig, RunConfig
from .errors import ConfigError
from .eval.metrics import matching
from .tagger.corpus import CORPUS
from .tagger.features import is_shouting
from .tagger.tagger import Tagger, read_labels
from .types import Prediction, Sample

GATE_FILE = "gate.json"


@dataclass(frozen=True)
class GateCalibration:
    """The calibrated thresholds and the dev figures behind them."""

    mode: str
    budget: float
    threshold: float
    missing_threshold: float
    auroc: float
    delegation_rate: float
    errors_caught: float
    misses_in_flagged: float
    sample_flag_rate: float
    n_entities: int
    n_errors: int
    score_model: dict | None = None  # a fitted ScoreModel, when the gate's score is "combined"

    def rescore(self, tagged: Sequence) -> list[Prediction]:
        """The tagged predictions with each entity's score from the score model (unchanged without one)."""
        return rescored(tagged, ScoreModel.from_dict(self.score_model) if self.score_model else None)

    def save(self, model_dir: str | Path) -> None:
        """Write gate.json into the model folder."""
        Path(model_dir, GATE_FILE).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, model_dir: str | Path) -> GateCalibration:
        """Read gate.json from a model folder."""
        path = Path(model_dir, GATE_FILE)
        if not path.is_file():
            raise ConfigError(f"{path}: the model has no calibrated gate")
        try:
            gate = cls(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: damaged gate file: {str(exc).splitlines()[0][:200]}") from None
        if gate.score_model is not None:
            try:
                model = ScoreModel.from_dict(gate.score_model)
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from None
            if model.corpus and not Path(model_dir, CORPUS).is_file():
                raise ConfigError(
                    f"{Path(model_dir, CORPUS)}: missing; the gate's score model ({path}) uses its counts"
                )
        return gate


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of scores for the positive labels (scikit-learn); NaN with one class only."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels, dtype=bool)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, np.asarray(scores, dtype=float)))


def entity_correctness(preds: Sequence[Prediction], gold: Sequence[Sample]) -> tuple[list[float], list[bool]]:
    """(score, is correct under MNER) for every predicted entity."""
    by_id = {g.id: g for g in gold}
    scores, correct = [], []
    for p in preds:
        g = by_id.get(p.id)
        hit = {i for i, _ in matching(p.entities, g.entities, "mner")} if g else set()
        for i, e in enumerate(p.entities):
            scores.append(1.0 if e.score is None else e.score)
            correct.append(i in hit)
    return scores, correct


def _misses_by_sample(preds: Sequence[Prediction], gold: Sequence[Sample]) -> dict[str, int]:
    by_id = {p.id: p for p in preds}
    out = {}
    for g in gold:
        ents = by_id[g.id].entities if g.id in by_id else ()
        out[g.id] = len(g.entities) - len(matching(ents, g.entities, "mner"))
    return out


def _f1_threshold(scores: np.ndarray, correct: np.ndarray, n_gold: int) -> float:
    """The threshold whose kept entities (score >= it) give the best F1."""
    best, best_t = -1.0, 0.0
    for t in np.unique(np.concatenate([[0.0], scores])):
        keep = scores >= t
        tp = int(correct[keep].sum())
        f1 = 2 * tp / (int(keep.sum()) + n_gold) if keep.any() else 0.0
        if f1 > best:
            best, best_t = f1, float(t)
    below = scores[scores < best_t]
    return _between(float(below.max()) if len(below) else 0.0, best_t)


def _between(lower: float, upper: float) -> float:
    """A threshold halfway between two neighbouring dev scores, never on one: a score that moves by
    rounding noise (another batch, another machine) cannot flip its decision."""
    return (lower + upper) / 2


def _rounded(score: float) -> float:
    """A score at the precision it is written with: decisions can be checked against the output file."""
    return round(score, 6)


def calibrate(preds: Sequence[Prediction], gold: Sequence[Sample], cfg: GateConfig) -> GateCalibration:
    """Thresholds for the configured mode, with AUROC and catch rates measured on the same dev data."""
    sc, ok = entity_correctness(preds, gold)
    scores, correct = np.asarray(sc), np.asarray(ok, dtype=bool)
    if cfg.mode == "budget":
        threshold = _above_lowest(scores, int(round(cfg.budget * len(scores))))
    else:
        threshold = _f1_threshold(scores, correct, sum(len(g.entities) for g in gold))
    missing = np.asarray([p.missing_score or 0.0 for p in preds])
    # the top missing_rate of dev samples are flagged (none at all with a rate of 0)
    missing_threshold = (
        _above_lowest(missing, int(round((1 - cfg.missing_rate) * len(missing)))) if cfg.missing_rate else float("inf")
    )
    figures = gate_figures(preds, gold, threshold, missing_threshold)
    return GateCalibration(
        mode=cfg.mode, budget=cfg.budget, threshold=threshold, missing_threshold=missing_threshold, **figures
    )


def _above_lowest(scores: np.ndarray, k: int) -> float:
    """The threshold with exactly the k lowest scores below it, halfway between two of them (inf when k
    takes them all)."""
    if k >= len(scores):
        return float("inf")
    ranked = np.sort(scores)
    return _between(float(ranked[k - 1]) if k else 0.0, float(ranked[k]))


def gate_figures(
    preds: Sequence[Prediction], gold: Sequence[Sample], threshold: float, missing_threshold: float
) -> dict:
    """AUROC, delegation rate, share of wrong entities delegated and share of misses in flagged samples."""
    sc, ok = entity_correctness(preds, gold)
    scores, correct = np.asarray(sc), np.asarray(ok, dtype=bool)
    delegated = scores < threshold
    misses = _misses_by_sample(preds, gold)
    flagged = {p.id for p in preds if (p.missing_score or 0.0) >= missing_threshold}
    n_miss = sum(misses.values())
    return {
        "auroc": auroc(scores, correct),
        "delegation_rate": float(delegated.mean()) if len(scores) else 0.0,
        "errors_caught": float((delegated & ~correct).sum() / max(1, (~correct).sum())),
        "misses_in_flagged": sum(m for sid, m in misses.items() if sid in flagged) / max(1, n_miss),
        "sample_flag_rate": len(flagged) / max(1, len(preds)),
        "n_entities": int(len(scores)),
        "n_errors": int((~correct).sum()),
    }


def apply_gate(preds: Sequence[Prediction], calib: GateCalibration | None, delegate: bool) -> list[Prediction]:
    """Mark each entity keep/delegate and each sample delegated or not; without ``delegate`` (no MLLM to
    delegate to), keep everything."""
    out = []
    for p in preds:
        if not delegate or calib is None:
            out.append(
                p.with_(
                    entities=tuple(e.with_(decision="keep") for e in p.entities), delegated=False, maybe_missing=False
                )
            )
            continue
        ents = tuple(
            e.with_(
                decision="delegate" if _rounded(e.score if e.score is not None else 1.0) < calib.threshold else "keep"
            )
            for e in p.entities
        )
        flagged = _rounded(p.missing_score or 0.0) >= calib.missing_threshold
        out.append(
            p.with_(
                entities=ents, delegated=flagged or any(e.decision == "delegate" for e in ents), maybe_missing=flagged
            )
        )
    return out


# ---- a learned entity score: logistic regression over the tagger's single-pass signals ------------

FEATURE_NAMES = (
    "logit_span_marginal",
    "logit_mean_max_prob",
    "logit_min_tag_marginal",
    "prior_agrees",
    "n_tokens",
    "seen_same_type",
    "seen_other_type",
    "after_hash_or_at",
    "shouting_post",
)
# how the tagger labelled the same text across the unlabeled posts (self-trained models only; CorpusCounts.features)
CORPUS_FEATURES = ("log_corpus_tagged", "corpus_same_type_share", "corpus_tagged_share")


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return float(np.log(p / (1 - p)))


def entity_features(tagged: Sequence, types: Sequence[str], corpus: bool = False) -> np.ndarray:
    """One feature row per predicted entity of tagged predictions (see FEATURE_NAMES, then CORPUS_FEATURES when
    ``corpus``, then a type one-hot)."""
    rows = []
    for t in tagged:
        tokens = t.prediction.tokens or ()
        shouting = float(is_shouting(tokens))  # capitalisation says little in an all-caps or title-case post
        for e, s in zip(t.prediction.entities, t.scores):
            seen = s.train_types or ()
            after_tag = float(0 < (e.start or 0) <= len(tokens) and tokens[e.start - 1] in ("#", "@"))
            rows.append(
                [
                    _logit(s.span_marginal),
                    _logit(s.mean_max_prob),
                    _logit(s.min_tag_marginal),
                    float(bool(s.prior_agrees)),
                    float(min(e.end - e.start, 6)),
                    float(e.type in seen),
                    float(bool(seen) and e.type not in seen),
                    after_tag,
                    shouting,
                ]
                + (list(_corpus_row(s, t.prediction.id)) if corpus else [])
                + [float(e.type == ty) for ty in types]
            )
    width = len(FEATURE_NAMES) + len(CORPUS_FEATURES) * corpus + len(types)
    return np.asarray(rows, dtype=float).reshape(len(rows), width)


def _corpus_row(scores, sample_id: str) -> tuple[float, float, float]:
    if scores.corpus is None:
        raise ConfigError(
            f"sample {sample_id}: the gate's score model uses corpus counts ({CORPUS}) that the tagger "
            "does not have; train the model again with `refineg train --unlabeled`"
        )
    return scores.corpus


def uses_corpus(tagged: Sequence) -> bool:
    """True when the tagger that tagged these has corpus counts (it was self-trained on unlabeled posts)."""
    return any(s.corpus is not None for t in tagged for s in t.scores)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> tuple[np.ndarray, float]:
    """Weights and bias of an L2-regularised logistic regression (scikit-learn, C = 1 / l2); with one class
    only there is nothing to separate, and the model is all zeros with the bias of that class."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y, dtype=float)
    if len(np.unique(y)) < 2:
        return np.zeros(x.shape[1]), (0.0 if not len(y) else 4.0 if y[0] else -4.0)
    model = LogisticRegression(C=1.0 / l2, max_iter=1000).fit(x, y)
    return model.coef_[0].copy(), float(model.intercept_[0])


def predict_logistic(x: np.ndarray, weights: np.ndarray, bias: float) -> np.ndarray:
    """Probabilities from stored coefficients (the model folder keeps numbers, never a pickled object)."""
    return 1 / (1 + np.exp(-(x @ weights + bias)))


def cross_validated_scores(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold logistic scores (scikit-learn), so that their AUROC is an honest estimate."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(
        LogisticRegression(max_iter=1000), x, np.asarray(y, dtype=int), cv=cv, method="predict_proba"
    )[:, 1]


@dataclass(frozen=True)
class ScoreModel:
    """A logistic regression that turns the tagger's signals into one entity score in [0, 1]."""

    types: tuple[str, ...]
    weights: tuple[float, ...]
    bias: float
    corpus: bool = False  # whether CORPUS_FEATURES are among the features

    @classmethod
    def fit(cls, tagged: Sequence, gold: Sequence[Sample], min_per_class: int = 5) -> ScoreModel | None:
        """Fitted on tagged dev predictions (is each entity correct under MNER?); None when dev has
        too few right or wrong entities to learn from, and the span marginal stays the score."""
        types = tuple(
            sorted({e.type for g in gold for e in g.entities} | {e.type for t in tagged for e in t.prediction.entities})
        )
        _, correct = entity_correctness([t.prediction for t in tagged], gold)
        y = np.asarray(correct, dtype=float)
        if min(y.sum(), len(y) - y.sum()) < min_per_class:
            return None
        corpus = uses_corpus(tagged)
        w, b = fit_logistic(entity_features(tagged, types, corpus), y)
        return cls(types, tuple(float(v) for v in w), b, corpus)

    @classmethod
    def from_dict(cls, d: dict) -> ScoreModel:
        """The model saved by as_dict; one fitted on other features is refused."""
        corpus = bool(d.get("corpus", False))
        model = cls(tuple(d["types"]), tuple(d["weights"]), float(d["bias"]), corpus)
        if list(d.get("features", [])) != model.feature_names() or len(model.weights) != len(model.feature_names()):
            raise ConfigError(
                "the gate's score model was fitted on other features (an older refineg?); "
                "train the model again with `refineg train`"
            )
        return model

    def feature_names(self) -> list[str]:
        """The name of each weight, in order."""
        return list(FEATURE_NAMES) + list(CORPUS_FEATURES) * self.corpus + [f"type={t}" for t in self.types]

    def as_dict(self) -> dict:
        return {
            "features": self.feature_names(),
            "types": list(self.types),
            "weights": list(self.weights),
            "bias": self.bias,
            "corpus": self.corpus,
        }

    def rescore(self, tagged: Sequence) -> list[Prediction]:
        """Predictions whose entity scores come from this model."""
        x = entity_features(tagged, self.types, self.corpus)
        probs = iter(predict_logistic(x, np.asarray(self.weights), self.bias) if len(x) else [])
        return [
            t.prediction.with_(entities=tuple(e.with_(score=float(next(probs))) for e in t.prediction.entities))
            for t in tagged
        ]


def fit_score_model(tagged: Sequence, gold: Sequence[Sample], cfg: GateConfig) -> ScoreModel | None:
    """The combined entity score fitted on dev, or None (the span marginal is configured, or dev has too few errors)."""
    return ScoreModel.fit(tagged, gold) if cfg.score == "combined" else None


def rescored(tagged: Sequence, model: ScoreModel | None) -> list[Prediction]:
    """The tagged predictions with each entity scored by the score model (the span marginal without one)."""
    return model.rescore(tagged) if model else [t.prediction for t in tagged]


class GatedTagger:
    """Stage 1b + 2a as one step: the tagger's entities, each scored by the gate's score model and marked keep
    or delegate. ``delegate`` says whether anything may be delegated (an MLLM is there to take it); without it
    every entity is kept. Safe to call from several threads: one batch is tagged at a time."""

    def __init__(self, tagger: Tagger, gate: GateCalibration, delegate: bool):
        self.tagger, self.gate, self.delegate = tagger, gate, delegate
        self.seconds = 0.0  # spent tagging so far
        self._lock = threading.Lock()  # PyTorch and the spaCy memo are shared

    @classmethod
    def load(cls, model_dir: str | Path, cfg: RunConfig, delegate: bool) -> GatedTagger:
        """The tagger and gate of a model folder, run as the config says."""
        return cls(
            Tagger.load(model_dir, cfg.tagger.runtime, cfg.tagger.int8), GateCalibration.load(model_dir), delegate
        )

    def __call__(self, samples: Sequence[Sample], mc_samples: int = 0, progress: bool = False) -> list[Prediction]:
        """Scored and gated predictions, one per sample; ``mc_samples`` adds the slower MC-dropout scores under
        ``meta.mc_dropout_scores``, for comparison."""
        with self._lock:
            t0 = time.perf_counter()
            tagged = self.tagger.predict_detailed(samples, mc_samples=mc_samples, progress=progress)
            self.seconds += time.perf_counter() - t0
        preds = self.gate.rescore(tagged)
        if mc_samples:
            preds = [
                p.with_(meta={**p.meta, "mc_dropout_scores": [round(s.mc_dropout, 6) for s in t.scores]})
                for p, t in zip(preds, tagged)
            ]
        return apply_gate(preds, self.gate, self.delegate)


def model_types(model_dir: str | Path) -> tuple[str, ...]:
    """The entity types a model folder's tagger predicts, without loading it."""
    return tuple(sorted({lab[2:] for lab in read_labels(model_dir) if lab != "O"}))
