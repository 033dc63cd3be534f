"""A trained tagger: predict entities with single-pass confidence scores; save and load MODEL_DIR."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..config import TaggerConfig
from ..data.bio import spans_from_tags
from ..errors import ConfigError
from ..types import Entity, Prediction, Sample
from .align import Aligner, EncodedBatch, Pieces
from .corpus import CORPUS, CorpusCounts, text_key
from .features import PriorNER, shape_ids
from .lattice import CRFParams, Lattice, viterbi
from .runtime import (
    CRF,
    OnnxEmissions,
    export_graph,
    graph_current,
    graph_file,
    onnxruntime_installed,
    write_graph_note,
)

if TYPE_CHECKING:
    from .model import TaggerModel

log = logging.getLogger(__name__)

WEIGHTS = "model.pt"
LEXICON = "lexicon.json"


def lexicon_of(samples: Sequence[Sample]) -> dict[str, list[str]]:
    """Every entity text of the samples with the types it was labelled with (pseudo-labels are not evidence)."""
    seen: dict[str, set[str]] = {}
    for s in samples:
        for e in (e for e in s.entities if e.source != "pseudo"):
            seen.setdefault(text_key(e.text), set()).add(e.type)
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
    corpus: tuple[float, float, float] | None = None  # CorpusCounts.features (None: no unlabeled corpus)


@dataclass(frozen=True)
class Tagged:
    """A prediction plus the alternative scores of its entities, in the same order."""

    prediction: Prediction
    scores: tuple[EntityScores, ...]
    entity_prob: tuple[float, ...] = ()  # per word, 1 - P(O): how likely it is part of some entity


def prior_agrees(prior: np.ndarray, start: int, end: int, n: int) -> bool:
    """True when the prior NER ids mark exactly [start, end) as one entity (ids: 1 outside, even B, odd I)."""
    ids = prior[:n]
    begins = ids[start] >= 2 and ids[start] % 2 == 0
    inside = all(i >= 3 and i % 2 == 1 for i in ids[start + 1 : end])
    closed = end >= n or not (ids[end] >= 3 and ids[end] % 2 == 1)
    return bool(begins and inside and closed)


def prior_for(config: TaggerConfig) -> PriorNER | None:
    """The prior spaCy features a config asks for, if any."""
    return PriorNER(config.prior_ner) if config.prior_ner else None


def build_model(encoder, labels: list[str], config: TaggerConfig, prior: PriorNER | None) -> TaggerModel:
    """The network for a config (the prior NER decides its feature vocabulary)."""
    from .model import TaggerModel

    return TaggerModel(
        encoder,
        labels,
        config.shape_dim,
        config.lstm_hidden,
        config.dropout,
        config.shape_input,
        prior.n_ids if prior else 0,
        config.prior_dim,
    )


def weights_digest(model_dir: Path) -> str:
    """The SHA-256 of a folder's PyTorch weights (the ONNX graph records which weights it was exported from)."""
    with open(model_dir / WEIGHTS, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Tagger:
    """An encoder + CRF tagger with its tokenizer, labels and config.

    The network runs in PyTorch while it trains; once trained (``use_runtime``) or loaded, in the runtime
    the config asks for. The PyTorch model of a loaded tagger is read from its folder on first use only.
    """

    def __init__(
        self,
        model: TaggerModel | None,
        tokenizer,
        config: TaggerConfig,
        prior: PriorNER | None = None,
        lexicon: dict[str, list[str]] | None = None,
        labels: list[str] | None = None,
        model_dir: Path | None = None,
    ):
        self._model = model
        self.model_dir = model_dir  # where a loaded tagger's PyTorch weights are
        self.lexicon = lexicon  # training entity texts -> types, a signal for the gate's score model
        self.corpus: CorpusCounts | None = None  # how it tagged unlabeled posts (self-training), another signal
        self.prior = prior
        self.tokenizer = Pieces.of(tokenizer)
        self.config = config
        self.aligner = Aligner(self.tokenizer, config.max_subtokens)
        self.labels = list(model.labels if model is not None else labels)
        self.frozen = False  # True once trained or loaded: the weights no longer change
        self.onnx: OnnxEmissions | None = None
        self._graph: tempfile.TemporaryDirectory | None = None  # a graph exported outside the model folder
        self._double: TaggerModel | None = None
        self.precision_check: dict | None = None  # int8 against float32 on dev, when training decided it
        self._o = self.labels.index("O")

    @property
    def model(self) -> TaggerModel:
        """The PyTorch network (a loaded tagger reads its weights now, on first use)."""
        if self._model is None:
            self._model = _load_network(self.model_dir, self.config, self.labels, self.prior)
        return self._model

    @property
    def runtime(self) -> str:
        """What runs the network now: "onnx" or "torch"."""
        return "onnx" if self.onnx is not None else "torch"

    def _wants_onnx(self) -> bool:
        if self.config.runtime == "onnx" and not onnxruntime_installed():
            raise ConfigError(
                "tagger runtime 'onnx' needs onnxruntime (pip install onnxruntime), or set runtime = 'auto'"
            )
        return self.config.runtime != "torch" and onnxruntime_installed()

    def use_runtime(self, dev_f1: Callable[[], float] | None = None) -> None:
        """Freeze the weights and tag from now on with the runtime the config asks for, exporting the ONNX graph.

        With ``int8`` undecided, ``dev_f1`` (the tagger's dev MNER F1) is measured with both graphs and int8 is
        kept only when it costs at most ``int8_max_loss``; the check is left in ``precision_check``.
        """
        self.frozen = True
        if not self._wants_onnx():
            return
        int8 = self.config.int8
        folder = self._temporary_graph((False, True) if int8 is None else (int8,))
        if int8 is None:
            f1 = {}
            for precision in (False, True) if dev_f1 else ():
                self.onnx = OnnxEmissions(folder, precision, len(self.labels), self.config.threads)
                f1[precision] = dev_f1()
            int8 = bool(f1) and f1[False] - f1[True] <= self.config.int8_max_loss
            self.precision_check = {
                "int8": int8,
                "dev_f1_float32": f1.get(False),
                "dev_f1_int8": f1.get(True),
                "int8_max_loss": self.config.int8_max_loss,
            }
            self.config = self.config.model_copy(update={"int8": int8})
        self.onnx = OnnxEmissions(folder, int8, len(self.labels), self.config.threads)

    def _temporary_graph(self, precisions: tuple[bool, ...] | None = None) -> Path:
        """A folder outside the model folder holding freshly exported graphs, kept as long as this tagger."""
        self._graph = tempfile.TemporaryDirectory(prefix="refineg-graph-")
        self._export(Path(self._graph.name), precisions)
        return Path(self._graph.name)

    def _export(self, folder: Path, precisions: tuple[bool, ...] | None = None) -> None:
        self.model.eval()
        export_graph(
            self.model, self.encode([["An", "example"], ["RT"]]), folder, precisions or (bool(self.config.int8),)
        )

    def encode(self, batch_words: list[list[str]], prior: list[list[int]] | None = None) -> EncodedBatch:
        """Model inputs for word lists (the prior NER's ids are computed unless given)."""
        if prior is None and self.prior is not None:
            prior = self.prior.ids(batch_words)
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

    def predict_detailed(self, samples: Sequence[Sample], mc_samples: int = 0, progress: bool = False) -> list[Tagged]:
        """Predictions with every alternative entity score; mc_samples > 0 adds MC-dropout scores.
        A post longer than the encoder takes is tagged in overlapping windows, to its end."""
        spans = [self.windows(s.tokens) for s in samples]
        if all(len(w) == 1 for w in spans):
            return self._predict_all(samples, mc_samples, progress)
        parts = [
            s.with_(id=f"{s.id}\x00{k}", tokens=s.tokens[a:b]) if len(w) > 1 else s
            for s, w in zip(samples, spans)
            for k, (a, b) in enumerate(w)
        ]
        tagged = iter(self._predict_all(parts, mc_samples, progress))
        return [
            next(tagged) if len(w) == 1 else _stitch(s, w, [next(tagged) for _ in w]) for s, w in zip(samples, spans)
        ]

    def _predict_all(self, samples: Sequence[Sample], mc_samples: int, progress: bool) -> list[Tagged]:
        from concurrent.futures import ThreadPoolExecutor

        from ..progress import tqdm

        # Sorting by sub-token count, not word count, keeps padding low: URLs and emoji split into many pieces.
        order = sorted(range(len(samples)), key=lambda i: self.aligner.n_subtokens(samples[i].tokens))
        bs = self.config.eval_batch_size
        batches = [[samples[i] for i in order[k : k + bs]] for k in range(0, len(order), bs)]
        tagged: list[Tagged] = []
        # The spaCy prior runs on one core, holding the GIL; the network releases it. A helper thread computing
        # the priors ahead lets the two overlap instead of taking turns.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="refineg-prior") as pool:
            priors = pool.map(self._prior_ids, batches)
            for batch, prior in tqdm(
                zip(batches, priors), total=len(batches), desc="tagging", disable=not progress, leave=False
            ):
                tagged += self._predict_batch(batch, mc_samples, prior)
        out: list[Tagged | None] = [None] * len(samples)
        for i, t in zip(order, tagged):
            out[i] = t
        return out  # type: ignore[return-value]

    def _prior_ids(self, batch: list[Sample]) -> list[list[int]] | None:
        return self.prior.ids([list(s.tokens) for s in batch if s.tokens]) if self.prior is not None else None

    def _inference_model(self) -> TaggerModel:
        """The PyTorch model predictions run on: a float64 copy when batch invariance is asked for, else the model.

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

    def emissions(self, enc: EncodedBatch) -> tuple[np.ndarray, CRFParams]:
        """Per-word tag scores (B, W, K) in float64, and the CRF scores to decode them with."""
        if self.onnx is not None:
            return self.onnx(enc), self.onnx.crf
        import torch

        torch.set_num_threads(self.config.threads)
        model = self._inference_model()
        model.eval()
        with torch.no_grad():
            return model.emissions(enc).double().numpy(), CRFParams.of(model.crf)

    def _predict_batch(self, batch: list[Sample], mc_samples: int, prior: list[list[int]] | None) -> list[Tagged]:
        results = {
            s.id: Tagged(Prediction(s.id, (), tokens=s.tokens, image=s.image, missing_score=0.0), ())
            for s in batch
            if not s.tokens
        }
        nonempty = [s for s in batch if s.tokens]
        if nonempty:
            enc = self.encode([list(s.tokens) for s in nonempty], prior)
            em, crf = self.emissions(enc)
            paths = viterbi(crf, em, enc.word_mask)
            single = Lattice.of(crf, em, enc.word_mask)
            mc = [Lattice.of(crf, e, enc.word_mask) for e in self._mc_emissions(enc, mc_samples)]
            priors = enc.prior_ids if self.prior is not None else None
            for b, sample in enumerate(nonempty):
                results[sample.id] = self._tagged(
                    sample, b, paths[b], single, mc, None if priors is None else priors[b]
                )
        return [results[s.id] for s in batch]

    def _mc_emissions(self, enc: EncodedBatch, n: int) -> list[np.ndarray]:
        """Emissions of n PyTorch passes with dropout on (MC dropout)."""
        if not n:
            return []
        import torch

        model = self._inference_model()
        model.train()
        try:
            with torch.no_grad():
                return [model.emissions(enc).double().numpy() for _ in range(n)]
        finally:
            model.eval()

    def _tagged(
        self, sample: Sample, b: int, path: list[int], lat: Lattice, mc: list[Lattice], prior: np.ndarray | None
    ) -> Tagged:
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
            scores.append(
                EntityScores(
                    p,
                    float(m.max(-1).mean()),
                    float(decoded.min()),
                    mc_score,
                    None if prior is None else prior_agrees(prior, start, end, n),
                    self._train_types(text),
                    None if self.corpus is None else self.corpus.features(text, etype),
                )
            )
            entities.append(Entity(text, etype, start, end, score=p, source="tagger"))
            inside[start:end] = True
        entity_prob = np.clip(1 - marg[:, self._o], 0.0, 1.0)
        outside = entity_prob[~inside]
        missing = float(outside.max()) if outside.size else 0.0
        pred = Prediction(sample.id, tuple(entities), tokens=sample.tokens, image=sample.image, missing_score=missing)
        return Tagged(pred, tuple(scores), tuple(entity_prob.tolist()) + (0.0,) * (len(sample.tokens) - n))

    def _train_types(self, text: str) -> tuple[str, ...] | None:
        return None if self.lexicon is None else tuple(self.lexicon.get(text_key(text), ()))

    # ---- persistence ----------------------------------------------------------------------

    def save(self, model_dir: str | Path, meta: dict | None = None) -> None:
        """Write weights, tokenizer, encoder config, labels, tagger config, metadata and the ONNX graph if used."""
        import torch

        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        self.model.encoder.config.save_pretrained(model_dir / "encoder")
        self.tokenizer.save(model_dir / "encoder")
        torch.save(self.model.state_dict(), model_dir / WEIGHTS)
        (model_dir / "labels.json").write_text(json.dumps(self.labels, indent=1))
        (model_dir / "tagger_config.json").write_text(self.config.model_dump_json(indent=1))
        if self.lexicon is not None:
            (model_dir / LEXICON).write_text(json.dumps(self.lexicon, ensure_ascii=False))
        if self.corpus is not None:
            self.corpus.save(model_dir / CORPUS)
        if meta is not None:
            (model_dir / "meta.json").write_text(json.dumps(meta, indent=1))
        if self.onnx is not None:
            for name in (graph_file(self.onnx.int8), CRF):
                if (self.onnx.folder / name).resolve() != (model_dir / name).resolve():
                    shutil.copyfile(self.onnx.folder / name, model_dir / name)
        elif self._wants_onnx():
            self._export(model_dir)
        else:
            return
        write_graph_note(model_dir, bool(self.config.int8), weights_digest(model_dir))

    @classmethod
    def load(cls, model_dir: str | Path, runtime: str | None = None, int8: bool | None = None) -> Tagger:
        """A tagger saved by save(), run by ``runtime`` with int8 weights or not (default: as saved); ConfigError
        naming the file when the folder is damaged. A folder without a current ONNX graph gets one."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ConfigError(f"{model_dir}: no such model folder; train one with `refineg train`")
        if not (model_dir / WEIGHTS).is_file():
            raise ConfigError(f"{model_dir}: not a refineg model folder (no {WEIGHTS}); train one with `refineg train`")
        try:
            config = TaggerConfig.model_validate_json((model_dir / "tagger_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{model_dir / 'tagger_config.json'}: missing or damaged: {str(exc).splitlines()[0]}"
            ) from None
        wanted = {k: v for k, v in (("runtime", runtime), ("int8", int8)) if v is not None}
        config = config.model_copy(update=wanted)
        if config.int8 is None:  # a folder from before the dev check: float32, as good as the PyTorch model
            config = config.model_copy(update={"int8": False})
        labels = read_labels(model_dir)
        lexicon = _read_json(model_dir / LEXICON, dict) if (model_dir / LEXICON).is_file() else None
        tagger = cls(None, Pieces.load(model_dir / "encoder"), config, prior_for(config), lexicon, labels, model_dir)
        tagger.corpus = CorpusCounts.load(model_dir / CORPUS) if (model_dir / CORPUS).is_file() else None
        tagger.frozen = True
        if not tagger._wants_onnx():
            _ = tagger.model  # read and check the weights now
            return tagger
        folder, digest = model_dir, weights_digest(model_dir)
        if not graph_current(model_dir, config.int8, digest):
            folder = tagger._export_for_load(digest)
        tagger.onnx = OnnxEmissions(folder, config.int8, len(labels), config.threads)
        return tagger

    def _export_for_load(self, digest: str) -> Path:
        """Export the graph of a folder that has none (or a stale one) into it, or into a temporary folder for this
        run when the model folder is read-only; ``digest`` is the folder's weights_digest."""
        try:
            staging = Path(tempfile.mkdtemp(dir=self.model_dir, prefix=".graph-"))
        except OSError:
            log.info("%s is read-only: the ONNX graph is exported for this run only", self.model_dir)
            return self._temporary_graph()
        try:
            self._export(staging)
            for name in (graph_file(self.config.int8), CRF):
                (staging / name).replace(self.model_dir / name)
            write_graph_note(self.model_dir, self.config.int8, digest)  # last: a half-moved graph is never current
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("exported the tagger to ONNX in %s", self.model_dir)
        return self.model_dir


def _load_network(
    model_dir: Path | None, config: TaggerConfig, labels: list[str], prior: PriorNER | None
) -> TaggerModel:
    """The PyTorch network of a model folder; ConfigError naming the file when it is damaged."""
    import torch

    from .encoder import load_encoder

    if model_dir is None:
        raise ConfigError("this tagger has no PyTorch weights")
    try:
        encoder, _ = load_encoder(None, config_only_from=model_dir / "encoder")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{model_dir / 'encoder'}: missing or damaged: {str(exc).splitlines()[0]}") from None
    model = build_model(encoder, labels, config, prior)
    try:
        state = torch.load(model_dir / WEIGHTS, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # torch raises many types for a truncated or foreign checkpoint
        raise ConfigError(
            f"{model_dir / WEIGHTS}: not a checkpoint of this model ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]})"
        ) from None
    return model.eval()


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
    entity_prob = tuple(
        p
        for k, ((offset, _), part) in enumerate(zip(spans, parts))
        for i, p in enumerate(part.entity_prob, offset)
        if cuts[k] <= i < cuts[k + 1]
    )
    return Tagged(pred, tuple(scores), entity_prob)


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


def read_setting(model_dir: str | Path) -> str:
    """What a model was trained on, as `refineg train` recorded it in meta.json (e.g. "500 labelled only"), so
    that every figure made with it can say which setting it belongs to."""
    try:
        setting = json.loads((Path(model_dir) / "meta.json").read_text(encoding="utf-8")).get("setting")
    except (OSError, ValueError, AttributeError):
        setting = None
    return setting if isinstance(setting, str) and setting else "training setting not recorded in meta.json"
