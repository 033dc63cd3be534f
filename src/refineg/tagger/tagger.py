"""A trained tagger: predict entities with single-pass confidence scores; save and load MODEL_DIR."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..config import TaggerConfig
from ..data.bio import spans_from_tags
from ..errors import ConfigError
from ..types import Entity, Prediction, Sample
from .align import Aligner
from .crf import forward_backward, marginals, span_probability
from .encoder import load_encoder
from .features import PriorNER, shape_ids
from .model import TaggerModel

WEIGHTS = "model.pt"
LEXICON = "lexicon.json"


def lexicon_key(text: str) -> str:
    """How entity texts are compared with the training lexicon (case and spacing ignored)."""
    return " ".join(text.lower().split())


def lexicon_of(samples: Sequence[Sample]) -> dict[str, list[str]]:
    """Every entity text of the samples with the types it was labelled with (pseudo-labels are not evidence)."""
    seen: dict[str, set[str]] = {}
    for s in samples:
        for e in (e for e in s.entities if e.source != "pseudo"):
            seen.setdefault(lexicon_key(e.text), set()).add(e.type)
    return {k: sorted(v) for k, v in sorted(seen.items())}


@dataclass(frozen=True)
class EntityScores:
    """Every confidence we compute for one predicted entity (the benchmark compares them)."""

    span_marginal: float
    mean_max_prob: float
    min_tag_marginal: float
    mc_dropout: float | None = None
    prior_agrees: bool | None = None  # the cased prior NER tagged exactly this span (any type)
    train_types: tuple[str, ...] | None = None  # types this text had in the training data (None: no lexicon)


@dataclass(frozen=True)
class Tagged:
    """A prediction plus the alternative scores of its entities, in the same order."""

    prediction: Prediction
    scores: tuple[EntityScores, ...]


def prior_agrees(prior: np.ndarray, start: int, end: int, n: int) -> bool:
    """True when the prior NER ids mark exactly [start, end) as one entity (ids: 1 outside, even B, odd I)."""
    ids = prior[:n]
    begins = ids[start] >= 2 and ids[start] % 2 == 0
    inside = all(i >= 3 and i % 2 == 1 for i in ids[start + 1:end])
    closed = end >= n or not (ids[end] >= 3 and ids[end] % 2 == 1)
    return bool(begins and inside and closed)


def prior_for(config: TaggerConfig) -> PriorNER | None:
    """The prior spaCy features a config asks for, if any."""
    return PriorNER(config.prior_ner) if config.prior_ner else None


def build_model(encoder, labels: list[str], config: TaggerConfig, prior: PriorNER | None) -> TaggerModel:
    """The network for a config (the prior NER decides its feature vocabulary)."""
    return TaggerModel(encoder, labels, config.shape_dim, config.lstm_hidden, config.dropout, config.shape_input,
                       prior.n_ids if prior else 0, config.prior_dim)


@dataclass(frozen=True)
class _Lattice:
    """One batch's forward-backward results as NumPy arrays, for fast per-entity scoring."""

    trans: np.ndarray
    end_trans: np.ndarray
    emissions: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    log_z: np.ndarray
    marginals: np.ndarray

    @classmethod
    def of(cls, crf, em: torch.Tensor, mask: torch.Tensor) -> _Lattice:
        alpha, beta, log_z = forward_backward(crf, em, mask)
        return cls(crf.transitions.detach().numpy(), crf.end_transitions.detach().numpy(), em.detach().numpy(),
                   alpha.numpy(), beta.numpy(), log_z.numpy(), marginals(alpha, beta, log_z).numpy())

    def span(self, b: int, n: int, start: int, end: int, bi: int, ii: int) -> float:
        """The CRF probability of one labelled span of sequence b."""
        return span_probability(self.trans, self.end_trans, self.emissions[b], self.alpha[b], self.beta[b],
                                float(self.log_z[b]), n, start, end, bi, ii)


class Tagger:
    """An encoder + CRF tagger with its tokenizer, labels and config."""

    def __init__(self, model: TaggerModel, tokenizer, config: TaggerConfig, prior: PriorNER | None = None,
                 lexicon: dict[str, list[str]] | None = None):
        self.model = model
        self.lexicon = lexicon  # training entity texts -> types, a signal for the gate's score model
        self.prior = prior
        self.tokenizer = tokenizer
        self.config = config
        self.aligner = Aligner(tokenizer, config.max_subtokens)
        self.labels = model.labels
        self.frozen = False  # True once trained or loaded: the weights no longer change
        self._double: TaggerModel | None = None
        self._o = self.labels.index("O")

    def encode(self, batch_words: list[list[str]]):
        """Model inputs for word lists."""
        prior = self.prior.ids(batch_words) if self.prior is not None else None
        return self.aligner.encode(batch_words, [shape_ids(w) for w in batch_words], prior)

    # ---- prediction -----------------------------------------------------------------------

    def predict(self, samples: Sequence[Sample], mc_samples: int = 0, progress: bool = False) -> list[Prediction]:
        """One prediction per sample, each entity with a score in [0, 1] (the CRF span marginal)."""
        return [t.prediction for t in self.predict_detailed(samples, mc_samples, progress)]

    def windows(self, tokens: Sequence[str]) -> list[tuple[int, int]]:
        """Word ranges that each fit the encoder (one range for a normal post); long posts get windows that
        overlap by about a quarter, so that every word is tagged with context on both sides."""
        budget = self.config.max_subtokens - 2  # [CLS] and [SEP]
        pieces = [min(self.aligner._pieces(w) or 1, budget) for w in self.aligner.clean(tokens)]
        if sum(pieces) <= budget:
            return [(0, len(tokens))]
        out, start = [], 0
        while True:
            end, used = start, 0
            while end < len(tokens) and used + pieces[end] <= budget:
                used += pieces[end]
                end += 1
            out.append((start, end))
            if end >= len(tokens):
                return out
            start = max(start + 1, end - max(1, (end - start) // 4))

    @torch.no_grad()
    def predict_detailed(self, samples: Sequence[Sample], mc_samples: int = 0, progress: bool = False) -> list[Tagged]:
        """Predictions with every alternative entity score; mc_samples > 0 adds MC-dropout scores.
        A post longer than the encoder takes is tagged in overlapping windows, to its end."""
        spans = [self.windows(s.tokens) for s in samples]
        if all(len(w) == 1 for w in spans):
            return self._predict_all(samples, mc_samples, progress)
        parts = [s.with_(id=f"{s.id}\x00{k}", tokens=s.tokens[a:b]) if len(w) > 1 else s
                 for s, w in zip(samples, spans) for k, (a, b) in enumerate(w)]
        tagged = iter(self._predict_all(parts, mc_samples, progress))
        return [next(tagged) if len(w) == 1 else _stitch(s, w, [next(tagged) for _ in w]) for s, w in zip(samples, spans)]

    def _predict_all(self, samples: Sequence[Sample], mc_samples: int, progress: bool) -> list[Tagged]:
        from tqdm import tqdm

        torch.set_num_threads(self.config.threads)
        # Sorting by sub-token count, not word count, keeps padding low: URLs and emoji split into many pieces.
        order = sorted(range(len(samples)), key=lambda i: self.aligner.n_subtokens(samples[i].tokens))
        out: list[Tagged | None] = [None] * len(samples)
        bs = self.config.eval_batch_size
        for k in tqdm(range(0, len(order), bs), desc="tagging", disable=not progress, leave=False):
            idx = [i for i in order[k:k + bs]]
            for i, tagged in zip(idx, self._predict_batch([samples[i] for i in idx], mc_samples)):
                out[i] = tagged
        return out  # type: ignore[return-value]

    def _inference_model(self) -> TaggerModel:
        """The model predictions run on: a float64 copy when batch invariance is asked for, else the model itself.

        In float32 a post's scores move by about 1e-6 with the other posts of its batch (padding changes
        the shapes the kernels see); in float64 that noise is about 1e-15, so `predict`, the Python API and
        the service agree to every digit written.
        """
        if not (self.config.batch_invariant and self.frozen):
            return self.model
        if self._double is None:
            import copy

            self._double = copy.deepcopy(self.model).double().eval()
        return self._double

    def _predict_batch(self, batch: list[Sample], mc_samples: int) -> list[Tagged]:
        results = {s.id: Tagged(Prediction(s.id, (), tokens=s.tokens, image=s.image, missing_score=0.0), ())
                   for s in batch if not s.tokens}
        nonempty = [s for s in batch if s.tokens]
        if nonempty:
            words = [list(s.tokens) for s in nonempty]
            enc = self.encode(words)
            model = self._inference_model()
            model.eval()
            em = model.emissions(enc)
            paths = model.crf.decode(em, mask=enc.word_mask)
            single = _Lattice.of(model.crf, em, enc.word_mask)
            mc = [_Lattice.of(model.crf, e, enc.word_mask) for e in self._mc_emissions(model, enc, mc_samples)]
            priors = enc.prior_ids.numpy() if self.prior is not None else None
            for b, sample in enumerate(nonempty):
                results[sample.id] = self._tagged(sample, b, paths[b], single, mc, None if priors is None else priors[b])
        return [results[s.id] for s in batch]

    def _mc_emissions(self, model: TaggerModel, enc, n: int) -> list[torch.Tensor]:
        """Emissions of n passes with dropout on (MC dropout)."""
        if not n:
            return []
        model.train()
        try:
            return [model.emissions(enc) for _ in range(n)]
        finally:
            model.eval()

    def _tagged(self, sample: Sample, b: int, path: list[int], lat: _Lattice, mc: list[_Lattice],
                prior: np.ndarray | None) -> Tagged:
        n = len(path)  # words past the sub-token limit are left untagged
        tags = [self.labels[t] for t in path] + ["O"] * (len(sample.tokens) - n)
        entities, scores = [], []
        inside = np.zeros(n, dtype=bool)
        marg = lat.marginals[b, :n]
        for start, end, etype in spans_from_tags(tags):
            bi, ii = self.labels.index(f"B-{etype}"), self.labels.index(f"I-{etype}")
            p = lat.span(b, n, start, end, bi, ii)
            m = marg[start:end]
            mc_score = sum(x.span(b, n, start, end, bi, ii) for x in mc) / len(mc) if mc else None
            decoded = m[np.arange(end - start), path[start:end]]
            text = " ".join(sample.tokens[start:end])
            scores.append(EntityScores(p, float(m.max(-1).mean()), float(decoded.min()), mc_score,
                                       None if prior is None else prior_agrees(prior, start, end, n),
                                       self._train_types(text)))
            entities.append(Entity(text, etype, start, end, score=p, source="tagger"))
            inside[start:end] = True
        outside = marg[~inside, self._o]
        missing = float((1 - outside).max()) if outside.size else 0.0
        pred = Prediction(sample.id, tuple(entities), tokens=sample.tokens, image=sample.image,
                          missing_score=min(1.0, max(0.0, missing)))
        return Tagged(pred, tuple(scores))

    def _train_types(self, text: str) -> tuple[str, ...] | None:
        return None if self.lexicon is None else tuple(self.lexicon.get(lexicon_key(text), ()))

    # ---- persistence ----------------------------------------------------------------------

    def save(self, model_dir: str | Path, meta: dict | None = None) -> None:
        """Write weights, tokenizer, encoder config, labels, tagger config and metadata."""
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        self.model.encoder.config.save_pretrained(model_dir / "encoder")
        self.tokenizer.save_pretrained(model_dir / "encoder")
        torch.save(self.model.state_dict(), model_dir / WEIGHTS)
        (model_dir / "labels.json").write_text(json.dumps(self.labels, indent=1))
        (model_dir / "tagger_config.json").write_text(self.config.model_dump_json(indent=1))
        if self.lexicon is not None:
            (model_dir / LEXICON).write_text(json.dumps(self.lexicon, ensure_ascii=False))
        if meta is not None:
            (model_dir / "meta.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, model_dir: str | Path) -> Tagger:
        """A tagger saved by save(); ConfigError naming the file when the folder is damaged."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ConfigError(f"{model_dir}: no such model folder; train one with `refineg train`")
        if not (model_dir / WEIGHTS).is_file():
            raise ConfigError(f"{model_dir}: not a refineg model folder (no {WEIGHTS}); train one with `refineg train`")
        try:
            config = TaggerConfig.model_validate_json((model_dir / "tagger_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{model_dir / 'tagger_config.json'}: missing or damaged: {str(exc).splitlines()[0]}") from None
        labels = read_labels(model_dir)
        try:
            encoder, tokenizer = load_encoder(None, config_only_from=model_dir / "encoder")
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{model_dir / 'encoder'}: missing or damaged: {str(exc).splitlines()[0]}") from None
        prior = prior_for(config)
        model = build_model(encoder, labels, config, prior)
        try:
            state = torch.load(model_dir / WEIGHTS, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:  # torch raises many types for a truncated or foreign checkpoint
            raise ConfigError(f"{model_dir / WEIGHTS}: not a checkpoint of this model ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]})") from None
        model.eval()
        lexicon = _read_json(model_dir / LEXICON, dict) if (model_dir / LEXICON).is_file() else None
        tagger = cls(model, tokenizer, config, prior, lexicon)
        tagger.frozen = True
        return tagger


def _stitch(sample: Sample, spans: list[tuple[int, int]], parts: list[Tagged]) -> Tagged:
    """One Tagged from the windows of a long post: each window contributes the entities that start in
    its share of the overlaps (the middle of each overlap is the cut)."""
    cuts = [0] + [(spans[k + 1][0] + spans[k][1]) // 2 for k in range(len(spans) - 1)] + [len(sample.tokens)]
    entities, scores = [], []
    for k, ((offset, _), part) in enumerate(zip(spans, parts)):
        for e, sc in zip(part.prediction.entities, part.scores):
            overlaps = entities and e.start + offset < entities[-1].end
            if cuts[k] <= e.start + offset < cuts[k + 1] and not overlaps:
                entities.append(e.with_(start=e.start + offset, end=e.end + offset))
                scores.append(sc)
    missing = max((p.prediction.missing_score or 0.0) for p in parts)
    pred = Prediction(sample.id, tuple(entities), tokens=sample.tokens, image=sample.image, missing_score=missing)
    return Tagged(pred, tuple(scores))


def _read_json(path: Path, kind: type):
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: missing or damaged: {exc}") from None
    if not isinstance(value, kind):
        raise ConfigError(f"{path}: expected a JSON {kind.__name__}")
    return value


def read_labels(model_dir: str | Path) -> list[str]:
    """The tag set of a model folder (labels.json); ConfigError naming the file when it is wrong."""
    path = Path(model_dir) / "labels.json"
    labels = _read_json(path, list)
    if not labels or not all(isinstance(x, str) and (x == "O" or x[:2] in ("B-", "I-")) for x in labels):
        raise ConfigError(f"{path}: not a BIO label list")
    return labels
