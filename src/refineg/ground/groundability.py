"""Groundability: the probability that an entity is shown in the post's image, from the text alone.

Most entities named in posts are not in the image (on Twitter-GMNER dev, 60%), and whether one is
depends on its type, its name and the wording around it. A logistic regression over those features
is fitted on the labelled set (entities with and without boxes) and calibrated on dev: the threshold
keeps a target share (default 97%) of the dev entities that do have a box. A post whose entities all
fall below it, and that the gate did not delegate, needs no grounding call: its entities get [].

Stored in MODEL_DIR as plain coefficients (``groundability.json``), never as a pickled object.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..types import Entity, Sample

FILE = "groundability.json"
_WORD = re.compile(r"[a-z][a-z']+")


def _shape(text: str) -> str:
    if text.isupper():
        return "upper"
    if text.istitle():
        return "title"
    if text.islower():
        return "lower"
    return "mixed"


def entity_features(tokens: Sequence[str], entity: Entity, entities: Sequence[Entity]) -> dict[str, float]:
    """Sparse text features of one entity in its post (names are lower-cased)."""
    s, e = entity.start or 0, entity.end or 0
    words = [w.lower() for w in entity.text.split()]
    feats: dict[str, float] = {
        f"type={entity.type}": 1.0,
        f"name={' '.join(words)}": 1.0,
        f"shape={_shape(entity.text)}": 1.0,
        f"len={min(len(words), 4)}": 1.0,
        f"n_entities={min(len(entities), 4)}": 1.0,
        f"type={entity.type}|n_entities={min(len(entities), 3)}": 1.0,
        f"position={'first' if s == 0 else 'early' if s < 4 else 'late'}": 1.0,
    }
    for w in words:
        feats[f"word={w}"] = 1.0
    if 0 < s <= len(tokens):
        feats[f"before={tokens[s - 1].lower()}"] = 1.0
    if e < len(tokens):
        feats[f"after={tokens[e].lower()}"] = 1.0
    inside = {i for x in entities if x.has_span for i in range(x.start, x.end)}
    post = {w for i, t in enumerate(tokens) if i not in inside for w in _WORD.findall(t.lower())}
    for w in post:
        feats[f"post={w}"] = 1.0 / math.sqrt(len(post))
    for other in entities:
        if other is not entity:
            feats[f"other_type={other.type}"] = 1.0
    return feats


def _rows(samples: Sequence[Sample]) -> tuple[list[dict], list[bool]]:
    rows, labels = [], []
    for s in samples:
        for ent in s.entities:
            rows.append(entity_features(s.tokens, ent, s.entities))
            labels.append(bool(ent.boxes))
    return rows, labels


@dataclass(frozen=True)
class Groundability:
    """Logistic-regression coefficients by feature name, the calibrated threshold and its dev figures."""

    intercept: float
    weights: dict[str, float]
    threshold: float = 0.0
    target_recall: float = 0.97
    dev: dict = field(default_factory=dict)
    dev_boxed: tuple[float, ...] = ()  # P(shown) of dev's boxed entities, highest first: any target recall's threshold

    def at_recall(self, recall: float) -> Groundability:
        """This model with the threshold that keeps that share of dev's boxed entities."""
        if not self.dev_boxed or recall == self.target_recall:
            return self
        k = min(len(self.dev_boxed) - 1, max(0, math.ceil(recall * len(self.dev_boxed)) - 1))
        return Groundability(self.intercept, self.weights, self.dev_boxed[k], recall, self.dev, self.dev_boxed)

    def probability(self, tokens: Sequence[str], entity: Entity, entities: Sequence[Entity]) -> float:
        """P(entity is shown in the image)."""
        z = self.intercept + sum(
            self.weights.get(k, 0.0) * v for k, v in entity_features(tokens, entity, entities).items()
        )
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))

    def probabilities(self, tokens: Sequence[str], entities: Sequence[Entity]) -> list[float]:
        """P(shown) for each entity of one post."""
        return [self.probability(tokens, e, entities) for e in entities]

    def needs_grounding(self, tokens: Sequence[str], entities: Sequence[Entity]) -> bool:
        """True when some entity may be in the image (at or above the calibrated threshold)."""
        return any(p >= self.threshold for p in self.probabilities(tokens, entities))

    @classmethod
    def fit(
        cls, train: Sequence[Sample], dev: Sequence[Sample], target_recall: float = 0.97, c: float = 1.0
    ) -> Groundability | None:
        """Fit on train's entities, calibrate the threshold on dev's; None when either set has no boxed entity."""
        from sklearn.feature_extraction import DictVectorizer
        from sklearn.linear_model import LogisticRegression

        rows, labels = _rows(train)
        if not rows or len(set(labels)) < 2:
            return None
        vec = DictVectorizer()
        model = LogisticRegression(C=c, max_iter=2000, class_weight="balanced").fit(vec.fit_transform(rows), labels)
        weights = {name: float(w) for name, w in zip(vec.get_feature_names_out(), model.coef_[0]) if abs(w) > 1e-6}
        fitted = cls(float(model.intercept_[0]), weights, 0.0, target_recall)
        return fitted.calibrated(dev, target_recall)

    def calibrated(self, dev: Sequence[Sample], target_recall: float) -> Groundability:
        """This model with the threshold that keeps target_recall of dev's boxed entities, and dev figures."""
        from sklearn.metrics import roc_auc_score

        probs, labels = self._scores(dev)
        pos = np.sort(probs[labels])[::-1]
        if not len(pos):
            return self
        k = min(len(pos) - 1, max(0, math.ceil(target_recall * len(pos)) - 1))
        threshold = float(pos[k])
        auroc = float(roc_auc_score(labels, probs)) if 0 < labels.sum() < len(labels) else float("nan")
        posts = [s for s in dev if s.entities]
        skipped = sum(
            1 for s in posts if not any(self.probability(s.tokens, e, s.entities) >= threshold for e in s.entities)
        )
        figures = {
            "auroc": round(auroc, 4),
            "recall_of_boxed_entities": round(float((probs[labels] >= threshold).mean()), 4),
            "entities": int(len(labels)),
            "boxed_entities": int(labels.sum()),
            "posts_with_entities": len(posts),
            "posts_skipped": skipped,
        }
        return Groundability(
            self.intercept, self.weights, threshold, target_recall, figures, tuple(round(float(p), 5) for p in pos)
        )

    def _scores(self, samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
        probs, labels = [], []
        for s in samples:
            for e in s.entities:
                probs.append(self.probability(s.tokens, e, s.entities))
                labels.append(bool(e.boxes))
        return np.asarray(probs), np.asarray(labels, dtype=bool)

    def save(self, model_dir: str | Path) -> None:
        """Write groundability.json into the model folder."""
        Path(model_dir, FILE).write_text(json.dumps(asdict(self), ensure_ascii=False))

    @classmethod
    def load(cls, model_dir: str | Path) -> Groundability | None:
        """The model folder's groundability model, or None when it has none (older models)."""
        path = Path(model_dir, FILE)
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{**raw, "dev_boxed": tuple(raw.get("dev_boxed", ()))})
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: damaged groundability file: {str(exc).splitlines()[0][:200]}") from None
