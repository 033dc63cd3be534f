"""Runs the stages over a dataset. Every function here takes the same RunConfig the CLI builds."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from .config import RunConfig, default_cache_dir
from .data import load_samples
from .data.images import find_image
from .data.jsonl import write_jsonl
from .errors import DataError
from .eval.metrics import score
from .gate import GateCalibration, ScoreModel, apply_gate, calibrate, gate_figures
from .tagger.tagger import Tagger
from .tagger.train import train_tagger
from .types import Prediction, Sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """The trained tagger, its gate and what training measured."""

    tagger: Tagger
    gate: GateCalibration
    meta: dict


def train_model(train: Sequence[Sample], dev: Sequence[Sample], cfg: RunConfig, out_dir: str | Path | None = None,
                progress: bool = True, sources: dict | None = None) -> TrainResult:
    """Train the tagger, calibrate the gate on dev, and save both into out_dir (if given)."""
    if not dev:
        raise DataError("a dev set is needed to pick the epoch and calibrate the gate")
    tagger, report = train_tagger(train, dev, cfg.tagger, progress=progress)
    t0 = time.perf_counter()
    tagged = tagger.predict_detailed(dev)
    tag_seconds = time.perf_counter() - t0
    score_model = ScoreModel.fit(tagged, dev) if cfg.gate.score == "combined" else None  # None: too few errors
    dev_preds = score_model.rescore(tagged) if score_model else [t.prediction for t in tagged]
    gate = replace(calibrate(dev_preds, dev, cfg.gate), score_model=score_model.as_dict() if score_model else None)
    meta = {
        "train": report.as_dict(),
        "dev": {"mner": score(dev, dev_preds).overall["mner"].as_dict(), "tag_sentences_per_s": round(len(dev) / tag_seconds, 1)},
        "gate": {"auroc": gate.auroc, "delegation_rate": gate.delegation_rate, "errors_caught": gate.errors_caught},
        "sources": sources or {},
        "config": json.loads(cfg.model_dump_json(include={"tagger", "gate"})),
    }
    if out_dir is not None:
        tagger.save(out_dir, meta)
        gate.save(out_dir)
    return TrainResult(tagger, gate, meta)


@dataclass(frozen=True)
class TagResult:
    """Gated tagger predictions, with scores and gate figures when the data had gold entities."""

    predictions: list[Prediction]
    mner: dict | None
    gate: dict | None
    gate_active: bool
    sentences_per_s: float


def tag_samples(model_dir: str | Path, samples: Sequence[Sample], cfg: RunConfig, mc_samples: int = 0,
                progress: bool = True) -> TagResult:
    """Tag samples with a saved model and apply its gate (which keeps everything without an LLM)."""
    tagger = Tagger.load(model_dir)
    gate = GateCalibration.load(model_dir)
    t0 = time.perf_counter()
    tagged = tagger.predict_detailed(samples, mc_samples=mc_samples, progress=progress)
    speed = len(samples) / max(1e-9, time.perf_counter() - t0)
    preds = gate.rescore(tagged)
    if mc_samples:  # the slower MC-dropout estimate, for comparison, entity by entity
        preds = [p.with_(meta={**p.meta, "mc_dropout_scores": [round(s.mc_dropout, 6) for s in t.scores]})
                 for p, t in zip(preds, tagged)]
    preds = apply_gate(preds, gate, cfg.llm.configured)
    has_gold = any(s.entities for s in samples)
    mner = score(samples, preds).overall["mner"].as_dict() if has_gold else None
    figures = gate_figures(preds, samples, gate.threshold, gate.missing_threshold) if has_gold else None
    return TagResult(preds, mner, figures, cfg.llm.configured, speed)


def predict_file(model_dir: str | Path, data: str | Path, out: str | Path, cfg: RunConfig, ids: list[str] | None = None,
                 mc_samples: int = 0, progress: bool = True) -> TagResult:
    """Tag a data file and write the predictions as canonical JSONL."""
    result = tag_samples(model_dir, load_samples(data, ids), cfg, mc_samples, progress)
    write_jsonl(result.predictions, out)
    return result


# ---- the full run: tag, gate, refine, select demos, ground, write (resumable) --------------------


def done_ids(out: Path) -> set[str]:
    """Ids already written to out; a half-written last line (a killed run) is cut off first."""
    if not out.is_file():
        return set()
    raw = out.read_bytes()
    if raw and not raw.endswith(b"\n"):
        out.write_bytes(raw[: raw.rfind(b"\n") + 1])
    ids = set()
    for lineno, line in enumerate(out.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                ids.add(str(json.loads(line)["id"]))
            except (json.JSONDecodeError, KeyError):
                raise DataError("cannot resume: the existing output has a broken line", out, lineno) from None
    return ids


@dataclass
class _Images:
    """Finds and prepares images; missing or corrupt ones are counted (or fatal with strict)."""

    folders: list[Path]
    strict: bool
    client: object | None
    counts: Counter

    def path(self, sample: Sample) -> Path | None:
        return find_image(sample.image, self.folders)

    def sent(self, sample: Sample):
        """The SentImage of a sample, or None (counted) when it is missing or unreadable."""
        path = self.path(sample)
        try:
            if path is None:
                raise DataError(f"image {sample.image!r} not found in {', '.join(map(str, self.folders)) or 'no folder'}",
                                sample=sample.id)
            return self.client.image(path)
        except DataError as exc:
            if self.strict:
                raise
            self.counts["missing_or_corrupt_image"] += 1
            log.warning("%s: processed from text alone: %s", sample.id, exc)
            return None


def run_pipeline(model_dir: str | Path, data: str | Path, out: str | Path, cfg: RunConfig, images: Path | None = None,
                 demos: Path | None = None, demo_ids: list[str] | None = None, clip: str | None = None,
                 strict: bool = False, progress: bool = True, chunk: int = 32) -> dict:
    """Tag, gate, refine, ground and stream predictions to out; a rerun skips ids already written."""
    from .data.jsonl import append_jsonl

    out = Path(out)
    timings: Counter = Counter()
    counts: Counter = Counter()
    t0 = time.perf_counter()
    samples = load_samples(data)
    finished = done_ids(out)
    todo = [s for s in samples if s.id not in finished]
    timings["load"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    tagged = tag_samples(model_dir, todo, cfg, progress=progress).predictions if todo else []
    timings["tag_and_gate"] += time.perf_counter() - t0
    notes = []
    stages = _LLMStages.open(cfg, model_dir, data, images, demos, demo_ids, clip, strict, counts, timings, notes, progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as fh:
        for k in range(0, len(todo), chunk):
            preds = stages.process(todo[k:k + chunk], tagged[k:k + chunk])
            for p in preds:
                append_jsonl(p, fh)
    usage = stages.close()
    summary = _summary(samples, finished, tagged, counts, timings, usage, notes, cfg)
    Path(str(out) + ".summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _summary(samples, finished, tagged, counts, timings, usage, notes, cfg) -> dict:
    ents = [e for p in tagged for e in p.entities]
    return {
        "samples": len(samples), "resumed_done": len(finished), "processed": len(tagged),
        "tagger_entities": len(ents),
        "kept_entities": sum(1 for e in ents if e.decision != "delegate"),
        "delegated_entities": sum(1 for e in ents if e.decision == "delegate"),
        "samples_sent_to_refinement": sum(1 for p in tagged if p.delegated),
        "counts": dict(sorted(counts.items())),
        "llm": usage,
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "llm_configured": cfg.llm.configured,
        "notes": notes,
    }


@dataclass
class _LLMStages:
    """Refinement and grounding for chunks of gated predictions (a pass-through without an LLM)."""

    cfg: RunConfig
    client: object | None
    images: _Images | None
    selector: object | None
    embed: object | None
    image_embed: object | None
    demo_images: dict
    types: tuple[str, ...]
    typeset: object
    counts: Counter
    timings: Counter

    @classmethod
    def open(cls, cfg, model_dir, data, images, demos, demo_ids, clip, strict, counts, timings, notes, progress):
        from .synth.typesets import load_typeset

        labels = json.loads((Path(model_dir) / "labels.json").read_text())
        types = tuple(sorted({lab[2:] for lab in labels if lab != "O"}))
        typeset = load_typeset(cfg.synth.typeset)
        if not cfg.llm.configured:
            notes.append("no LLM configured: refinement and grounding were skipped; the gate kept every entity "
                         "and every entity has an empty box list")
            return cls(cfg, None, None, None, None, None, {}, types, typeset, counts, timings)
        from .llm import LLMClient

        client = LLMClient(cfg.llm, show_progress=progress)
        notes.append(client.dialect.note)
        folders = [p for p in (images, Path(data).parent, Path(data).parent.parent / "images") if p is not None]
        imgs = _Images(folders, strict, client, counts)
        selector = embed = image_embed = None
        demo_images: dict = {}
        if demos is None:
            notes.append("no --demos: grounding ran zero-shot, without demonstrations")
        else:
            selector, embed, image_embed, demo_images = _demo_selector(cfg, demos, demo_ids, images, clip, client, notes)
        return cls(cfg, client, imgs, selector, embed, image_embed, demo_images, types, typeset, counts, timings)

    def process(self, samples: list[Sample], preds: list[Prediction]) -> list[Prediction]:
        """Refined and grounded predictions for one chunk."""
        if self.client is None:
            return preds
        t0 = time.perf_counter()
        sent = {s.id: self.images.sent(s) for s in samples}
        preds = self._refine(samples, preds, sent)
        self.timings["refine"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        preds = self._ground(samples, preds, sent)
        self.timings["ground"] += time.perf_counter() - t0
        return preds

    def _refine(self, samples, preds, sent) -> list[Prediction]:
        from . import refine

        todo = [i for i, p in enumerate(preds) if refine.needs_refinement(p)]
        reqs = [refine.build_request(samples[i], preds[i], self.typeset, sent[samples[i].id]) for i in todo]
        results = self.client.run(reqs, refine.parse, desc="refinement")
        return self._apply("refinement", preds, todo, results,
                           lambda i, value: refine.merge(samples[i], preds[i], value, self.types))

    def _ground(self, samples, preds, sent) -> list[Prediction]:
        from . import ground

        family = self.client.dialect.family
        todo = [i for i, p in enumerate(preds) if p.entities and sent[samples[i].id] is not None]
        self.counts["grounding_skipped_no_image"] += sum(1 for i, p in enumerate(preds) if p.entities and sent[samples[i].id] is None)
        reqs = [ground.build_request(samples[i], preds[i].entities, sent[samples[i].id], self._demos(samples[i], preds[i]),
                                     family, self.typeset) for i in todo]
        parses = [ground.parser(family, sent[samples[i].id]) for i in todo]
        results = self.client.run(reqs, parses, desc="grounding")
        return self._apply("grounding", preds, todo, results,
                           lambda i, value: ground.apply_boxes(preds[i], value, sent[samples[i].id], family))

    def _apply(self, stage: str, preds: list[Prediction], todo: list[int], results: list, update) -> list[Prediction]:
        """Predictions with each parsed result applied; a failed result is a counted fallback that keeps the input."""
        preds = list(preds)
        for i, res in zip(todo, results):
            if not res.ok:
                self.counts[f"{stage}_fallback_{res.reason}"] += 1
                continue
            done = update(i, res.value)
            self.counts.update({f"{stage}_{k}": v for k, v in done.counts.items()})
            preds[i] = done.prediction
        return preds

    def _demos(self, sample: Sample, pred: Prediction) -> list:
        if self.selector is None:
            return []
        image_vec = None
        if self.image_embed is not None:
            from .data.images import open_image

            image_vec = self.image_embed([open_image(self.images.path(sample))])[0]
        picked = self.selector.select(sample, pred.entities, self.embed, image_vec)
        return [(self.selector.pool[i], self.demo_images[self.selector.pool[i].id]) for i in picked]

    def close(self) -> dict:
        """Stop the client; the LLM usage summary."""
        if self.client is None:
            return {}
        summary = self.client.summary()
        self.client.close()
        return summary


class _LazyImages(dict):
    """Demo images prepared on first use (a pool of thousands is never held in memory at once)."""

    def __init__(self, paths: dict, client, keep: int = 256):
        super().__init__()
        self.paths, self.client, self.keep = paths, client, keep

    def __missing__(self, sid: str):
        if len(self) >= self.keep:
            self.pop(next(iter(self)))
        self[sid] = self.client.image(self.paths[sid])
        return self[sid]


def _demo_selector(cfg, demos, demo_ids, images, clip, client, notes):
    """The demo pool (samples whose image is available), its selector, embedders and the pool's sent images."""
    from .data.images import open_image
    from .ground.select import DemoSelector, clip_embedder, sentence_embedder

    pool_all = load_samples(demos, demo_ids)
    folders = [p for p in (images, Path(demos).parent, Path(demos).parent.parent / "images") if p is not None]
    pool, paths = [], {}
    for s in pool_all:
        path = find_image(s.image, folders)
        if path is not None:
            pool.append(s)
            paths[s.id] = path
    notes.append(f"demo pool: {len(pool)} of {len(pool_all)} labelled samples have an image")
    sent = _LazyImages(paths, client)
    if not pool:
        return None, None, None, sent
    embed = sentence_embedder()
    image_embed = image_vecs = None
    if clip:
        image_embed = clip_embedder(clip)
        image_vecs = image_embed([open_image(paths[s.id]) for s in pool])
    else:
        notes.append("no image embedder (--clip): the image term of demo selection was dropped")
    selector = DemoSelector.build(pool, embed, (cfg.llm.cache_dir or default_cache_dir()) / "embeddings",
                                  image_vecs=image_vecs, weights=cfg.ground.weights, type_bonus=cfg.ground.type_bonus,
                                  k=cfg.ground.k)
    return selector, embed, image_embed, sent
