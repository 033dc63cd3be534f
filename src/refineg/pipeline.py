"""Runs the stages over a dataset. Every function here takes the same RunConfig the CLI builds."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from .config import RunConfig, default_cache_dir
from .data import load_samples, read_predictions
from .data.images import find_image
from .data.jsonl import json_line, summary_path, write_jsonl
from .data.textio import atomic_open
from .errors import DataError
from .eval.metrics import score
from .gate import GateCalibration, apply_gate, calibrate, fit_score_model, gate_figures, rescored
from .tagger.tagger import Tagger
from .trainstate import Checkpoints, TrainingState, training_key
from .types import Prediction, Sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """The trained tagger, its gate and what training measured."""

    tagger: Tagger
    gate: GateCalibration
    meta: dict


def train_model(train: Sequence[Sample], dev: Sequence[Sample], cfg: RunConfig, out_dir: str | Path | None = None,
                progress: bool = True, sources: dict | None = None, unlabeled: Sequence[Sample] = ()) -> TrainResult:
    """Train the tagger (then self-train it on unlabeled posts, if any), calibrate the gate on dev, and save
    both into out_dir (if given). With out_dir, each finished stage is saved beside it, and a rerun of a killed
    training goes on from the last one (trainstate.py)."""
    if not dev:
        raise DataError("a dev set is needed to pick the epoch and calibrate the gate")
    from .tagger.train import train_tagger

    t_start = time.perf_counter()
    checkpoints = Checkpoints(out_dir, training_key(train, dev, unlabeled, cfg)) if out_dir is not None else None
    resumed = checkpoints.open() if checkpoints else None
    if resumed:
        tagger, state = resumed
        log.info("resuming after %s (%s)", state.stage, checkpoints.folder)
    else:
        tagger, report = train_tagger(train, dev, cfg.tagger, progress=progress,
                                      state_dir=checkpoints.epochs(0) if checkpoints else None)
        state = TrainingState(report.as_dict(), dev_f1=report.soup_dev_f1, finished=not unlabeled,
                              precision_check=tagger.precision_check, seconds=report.seconds)
        if checkpoints and unlabeled:  # without self-training only seconds of work follow
            checkpoints.save(tagger, state)
    before = state.seconds if resumed else 0.0  # spent by earlier, interrupted runs
    selftraining = None
    if unlabeled:
        from .selftrain import self_train

        def on_round(tagger: Tagger, rounds: list[dict], dev_f1: float, finished: bool) -> None:
            if checkpoints:
                checkpoints.save(tagger, replace(state, rounds=rounds, dev_f1=dev_f1, finished=finished,
                                                 precision_check=tagger.precision_check,
                                                 seconds=round(before + time.perf_counter() - t_start, 1)))

        rounds = state.rounds
        if not state.finished:
            done = self_train(tagger, state.dev_f1, train, dev, unlabeled, cfg, progress, state.rounds, on_round,
                              checkpoints.epochs if checkpoints else None)
            tagger, rounds = done.tagger, done.rounds
        selftraining = {"unlabeled_posts": len(unlabeled), "rounds": rounds,
                        "rounds_kept": sum(r["kept"] for r in rounds),
                        "corpus_texts": len(tagger.corpus.tagged) if tagger.corpus else 0}
    t0 = time.perf_counter()
    tagged = tagger.predict_detailed(dev)
    tag_seconds = time.perf_counter() - t0
    score_model = fit_score_model(tagged, dev, cfg.gate)
    dev_preds = rescored(tagged, score_model)
    gate = replace(calibrate(dev_preds, dev, cfg.gate), score_model=score_model.as_dict() if score_model else None)
    groundability = _fit_groundability(train, dev, cfg)
    meta = {
        "setting": _setting(train, unlabeled),
        "train": state.report,
        "selftraining": selftraining,
        "runtime": {"runtime": tagger.runtime, "int8": tagger.config.int8, "check": tagger.precision_check},
        "seconds_total": round(before + time.perf_counter() - t_start, 1),
        "resumed_after": _resumed_after(state, resumed is not None, (selftraining or {}).get("rounds", [])),
        "dev": {"mner": score(dev, dev_preds).overall["mner"].as_dict(), "tag_sentences_per_s": round(len(dev) / tag_seconds, 1)},
        "gate": {"auroc": gate.auroc, "delegation_rate": gate.delegation_rate, "errors_caught": gate.errors_caught},
        "groundability": groundability.dev if groundability else None,
        "sources": sources or {},
        "config": json.loads(cfg.model_dump_json(include={"tagger", "gate"})),
    }
    if out_dir is not None:
        save_model_dir(out_dir, tagger, gate, meta, groundability)
        checkpoints.clear()
    return TrainResult(tagger, gate, meta)


def _resumed_after(state: TrainingState, from_stage: bool, rounds: list[dict]) -> str | None:
    """Where this run took over from killed runs of the same training, in words (None: it did not)."""
    points = [f"epoch {state.report['resumed_after_epoch']} of the labelled-only training"] \
        if state.report.get("resumed_after_epoch") else []
    points += [state.stage] if from_stage else []
    points += [f"epoch {r['resumed_after_epoch']} of self-training round {r['round']}" for r in rounds
               if r.get("resumed_after_epoch")]
    return ", then ".join(points) or None


def _setting(train: Sequence[Sample], unlabeled: Sequence[Sample]) -> str:
    """Which data a model learnt from, in the words every report uses."""
    labelled = f"{len(train)} labelled"
    return f"{labelled} + {len(unlabeled)} unlabeled (self-training)" if unlabeled else f"{labelled} only"


def _fit_groundability(train: Sequence[Sample], dev: Sequence[Sample], cfg: RunConfig):
    """The groundability model on the labelled (not synthesized) training posts, calibrated on dev."""
    from .ground.groundability import Groundability

    labelled = [s for s in train if all(e.source != "synthetic" for e in s.entities)]
    return Groundability.fit(labelled, dev, cfg.ground.groundability_recall)


def check_model_dir(out_dir: Path) -> None:
    """Refuse to train into a folder that holds anything but an earlier refineg model (which is replaced)."""
    from .tagger.tagger import WEIGHTS

    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / WEIGHTS).is_file():
        raise DataError("this folder is not empty and holds no refineg model: choose a new --out", out_dir)


def save_model_dir(out_dir: str | Path, tagger: Tagger, gate: GateCalibration, meta: dict, groundability=None) -> None:
    """Write the model into a folder beside out_dir, then swap it in: a failed save never leaves half a model."""
    import shutil
    import tempfile

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.new-"))
    try:
        tagger.save(staging, meta)
        gate.save(staging)
        if groundability is not None:
            groundability.save(staging)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
            os.replace(out_dir, old / "model")
            os.replace(staging, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass(frozen=True)
class TagResult:
    """Gated tagger predictions, with scores and gate figures when the data had gold entities."""

    predictions: list[Prediction]
    mner: dict | None
    gate: dict | None
    gate_active: bool
    sentences_per_s: float
    setting: str  # the model's training setting: the figures above are that model's
    resumed: int = 0  # predictions an interrupted run of the same command had already made

    def summary(self) -> dict:
        """What `refineg predict` writes beside its output: counts, the model's setting and, with gold, its figures."""
        return {"samples": len(self.predictions), "entities": sum(len(p.entities) for p in self.predictions),
                "model_setting": self.setting, "mner": self.mner, "gate": self.gate, "gate_active": self.gate_active,
                "sentences_per_s": round(self.sentences_per_s, 1), "resumed": self.resumed}


def tag_samples(model_dir: str | Path, samples: Sequence[Sample], cfg: RunConfig, mc_samples: int = 0,
                progress: bool = True) -> TagResult:
    """Tag samples with a saved model and apply its gate (which keeps everything without an LLM)."""
    with Pipeline(model_dir, cfg) as nlp:
        return nlp.tag(samples, mc_samples, progress)


def _tag_and_gate(tagger: Tagger, gate: GateCalibration, samples: Sequence[Sample], cfg: RunConfig, mc_samples: int,
                  progress: bool, setting: str) -> TagResult:
    preds, seconds = _gated(tagger, gate, samples, cfg, mc_samples, progress)
    return _tag_result(preds, samples, gate, cfg, len(samples) / max(1e-9, seconds), setting)


def _gated(tagger: Tagger, gate: GateCalibration, samples: Sequence[Sample], cfg: RunConfig, mc_samples: int,
           progress: bool) -> tuple[list[Prediction], float]:
    """The samples' predictions, scored and gated, and the seconds the tagging took."""
    t0 = time.perf_counter()
    tagged = tagger.predict_detailed(samples, mc_samples=mc_samples, progress=progress)
    seconds = time.perf_counter() - t0
    preds = gate.rescore(tagged)
    if mc_samples:  # the slower MC-dropout estimate, for comparison, entity by entity
        preds = [p.with_(meta={**p.meta, "mc_dropout_scores": [round(s.mc_dropout, 6) for s in t.scores]})
                 for p, t in zip(preds, tagged)]
    return apply_gate(preds, gate, cfg.llm.configured), seconds


def _tag_result(preds: list[Prediction], samples: Sequence[Sample], gate: GateCalibration, cfg: RunConfig,
                speed: float, setting: str) -> TagResult:
    """Gated predictions with their MNER and gate figures when the samples have gold entities."""
    has_gold = any(s.entities for s in samples)
    mner = score(samples, preds).overall["mner"].as_dict() if has_gold else None
    figures = gate_figures(preds, samples, gate.threshold, gate.missing_threshold) if has_gold else None
    return TagResult(preds, mner, figures, cfg.llm.configured, speed, setting)


PREDICT_CHUNK = 4096  # posts tagged between two saves of a predict run's progress


def predict_file(model_dir: str | Path, data: str | Path, out: str | Path, cfg: RunConfig, ids: list[str] | None = None,
                 mc_samples: int = 0, progress: bool = True) -> TagResult:
    """Tag a data file and write the predictions as canonical JSONL, and their summary beside them.

    Out appears only complete. Until then the predictions go, a chunk at a time, to a partial file beside
    it, and a killed run's rerun (same model, data and settings) goes on from there.
    """
    out, samples = Path(out), load_samples(data, ids)
    with Pipeline(model_dir, cfg) as nlp:
        partial = _PartialPredictions(out, _predict_key(nlp, samples, mc_samples))
        done = partial.resume()
        todo, seconds = [s for s in samples if s.id not in done], 0.0
        for k in range(0, len(todo), PREDICT_CHUNK):  # the figures are made once, over every post, below
            preds, took = _gated(nlp.tagger, nlp.gate, todo[k:k + PREDICT_CHUNK], cfg, mc_samples, progress)
            partial.append(preds)
            seconds += took
        speed = len(todo) / max(1e-9, seconds) if todo else 0.0
        by_id = {**done, **{p.id: p for p in partial.fresh}}
        result = replace(_tag_result([by_id[s.id] for s in samples], samples, nlp.gate, cfg, speed, nlp.setting),
                         resumed=len(done))
    write_jsonl(result.predictions, out)
    with atomic_open(summary_path(out)) as fh:
        json.dump(result.summary(), fh, indent=1)
    partial.remove()
    return result


def _predict_key(nlp: Pipeline, samples: Sequence[Sample], mc_samples: int) -> str:
    """What a predict run's output depends on: the model (weights and gate), the samples and the settings."""
    from .tagger.tagger import weights_digest

    h = hashlib.sha256(weights_digest(nlp.model_dir).encode())
    h.update((nlp.model_dir / "gate.json").read_bytes())
    h.update(nlp.cfg.model_dump_json(include={"tagger", "gate"}).encode())
    h.update(f"{mc_samples} {nlp.cfg.llm.configured}".encode())
    for s in samples:
        h.update(json_line(s).encode())
    return h.hexdigest()


class _PartialPredictions:
    """The predictions of an unfinished predict run, beside its output: ``.OUT.partial`` (JSONL, a chunk
    appended and synced at a time) and ``.OUT.partial.key`` (what they were made from)."""

    def __init__(self, out: Path, key: str):
        self.path = out.with_name(f".{out.name}.partial")
        self.key_path = out.with_name(f".{out.name}.partial.key")
        self.key = key
        self.fresh: list[Prediction] = []

    def resume(self) -> dict[str, Prediction]:
        """The predictions an interrupted run of the same key left (a half-written last line cut off); any
        other partial file, or a damaged one, is removed."""
        if self.path.is_file() and self.key_path.is_file() and self.key_path.read_text().strip() == self.key:
            try:
                done_ids(self.path, llm_configured=False)  # cuts the half line a kill may have left
                return {p.id: p for p in read_predictions(self.path)}
            except DataError as exc:
                log.warning("%s; tagging every post again", exc)
        self.remove()
        self.key_path.write_text(self.key)
        return {}

    def append(self, preds: list[Prediction]) -> None:
        """Save a tagged chunk for good (flushed and synced) before the next one starts."""
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write("".join(json_line(p) for p in preds))
            fh.flush()
            os.fsync(fh.fileno())
        self.fresh.extend(preds)

    def remove(self) -> None:
        """Remove both files (once the output is written, or when they belong to another run)."""
        self.path.unlink(missing_ok=True)
        self.key_path.unlink(missing_ok=True)


# ---- the full run: tag, gate, refine, select demos, ground, write (resumable) --------------------


class Counts(Counter):
    """A Counter whose update() is atomic: the service and the Ray engine run several chunks at once."""

    _lock = threading.RLock()

    def update(self, *args, **kw) -> None:
        with self._lock:
            super().update(*args, **kw)


RETRY = "retry"  # the status of a row whose LLM work did not happen; a rerun re-does it
MISSING_IMAGES_LIMIT = 0.05


def output_rows(path: Path) -> list[tuple[str, str | None, str]]:
    """(id, status, line) of every whole line of an output file: a half-written last line (a killed run) is
    left out, and a broken line is a DataError naming the file and line."""
    raw = path.read_bytes()
    rows = []
    for lineno, line in enumerate(raw[: raw.rfind(b"\n") + 1].decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            rows.append((str(obj["id"]), obj.get("status"), line))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError("cannot resume: the existing output has a broken line", path, lineno) from None
    return rows


def done_ids(out: Path, llm_configured: bool = True) -> set[str]:
    """Ids already final in out. A half-written last line (a killed run) is cut off, and rows marked for
    a retry are removed when an LLM is configured, so that this run re-does exactly those."""
    if not out.is_file():
        return set()
    rows = output_rows(out)
    keep = [(sid, line) for sid, status, line in rows if not (status == RETRY and llm_configured)]
    if len(keep) < len(rows) or not out.read_bytes().endswith(b"\n"):
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text("".join(line + "\n" for _, line in keep), encoding="utf-8")
        os.replace(tmp, out)
        if len(keep) < len(rows):
            log.info("%s: %d row(s) marked for a retry will be done again", out, len(rows) - len(keep))
    return {sid for sid, _ in keep}


def _folders(images, data: str | Path | None) -> list[Path]:
    given = [Path(p) for p in ([images] if isinstance(images, (str, Path)) else images or [])]
    extra = [Path(data).parent, Path(data).parent.parent / "images"] if data is not None else []
    return given + [f for f in extra if f not in given]


@dataclass
class _Images:
    """Finds and prepares images; missing or corrupt ones are counted (or fatal with strict)."""

    folders: list[Path]
    strict: bool
    client: object | None
    counts: Counter
    inline: dict = field(default_factory=dict)  # images handed over in memory (the Python API, the service)

    def path(self, sample: Sample) -> Path | None:
        if sample.image and Path(sample.image).is_absolute():
            return Path(sample.image) if Path(sample.image).is_file() else None
        if sample.image and not self.folders and Path(sample.image).is_file():
            return Path(sample.image)
        return find_image(sample.image, self.folders)

    def check_missing(self, samples: Sequence[Sample], allow: bool) -> None:
        """Stop when more than 5% of the samples that name an image have none, unless allowed."""
        named = [s for s in samples if s.image]
        missing = [s for s in named if self.path(s) is None]
        if named and len(missing) > MISSING_IMAGES_LIMIT * len(named) and not allow:
            raise DataError(f"{len(missing)} of {len(named)} samples name an image that is in none of "
                            f"{', '.join(map(str, self.folders))} (e.g. {missing[0].image!r} of sample {missing[0].id}); "
                            "give the image folders with --images (repeatable), or --allow-missing-images "
                            "to ground only the samples whose image is there")

    def sent(self, sample: Sample):
        """The SentImage of a sample, or None (counted) when it is missing or unreadable."""
        try:
            return self.client.image(self._source(sample))
        except DataError as exc:
            if self.strict:
                raise
            self.counts.update({"missing_or_corrupt_image": 1})
            log.warning("%s: processed from text alone: %s", sample.id, exc)
            return None

    def _source(self, sample: Sample):
        """The image to send: one handed over in memory, or the file; DataError when there is none."""
        if sample.image in self.inline:
            return _decoded(self.inline[sample.image])
        path = self.path(sample)
        if path is None:
            raise DataError(f"image {sample.image!r} not found in {', '.join(map(str, self.folders)) or 'no folder'}",
                            sample=sample.id)
        return path


def _decoded(image):
    """A PIL image from an in-memory image or its encoded bytes."""
    import io

    from .data.images import open_image

    if isinstance(image, (bytes, bytearray)):
        return open_image(io.BytesIO(bytes(image)))
    return image


@dataclass(frozen=True)
class RunOptions:
    """The options of a run beyond its config: image folders, demos, CLIP, strictness."""

    images: tuple[Path, ...] = ()
    demos: Path | None = None
    demo_ids: tuple[str, ...] | None = None
    clip: str | None = None
    strict: bool = False
    allow_missing_images: bool = False
    progress: bool = True
    chunk: int = 32


def run_pipeline(model_dir: str | Path, data: str | Path, out: str | Path, cfg: RunConfig,
                 options: RunOptions = RunOptions()) -> dict:
    """Tag, gate, refine, ground and stream predictions to out; a rerun skips ids already final."""
    options = replace(options, images=tuple(_folders(options.images, data)))
    with Pipeline(model_dir, cfg, options) as nlp:
        return _stream(data, out, cfg, options, lambda todo: nlp.tag(todo, progress=options.progress).predictions,
                       nlp.stages, nlp.setting)


def ground_file(data: str | Path, out: str | Path, cfg: RunConfig, options: RunOptions = RunOptions()) -> dict:
    """Ground the entities DATA already has (its boxes are ignored); every sample gets a row."""
    def given(todo: list[Sample]) -> list[Prediction]:
        return [Prediction(s.id, tuple(e.with_(boxes=(), decision="keep") for e in s.entities), s.tokens, s.image)
                for s in todo]

    from .synth.typesets import load_typeset

    options = replace(options, images=tuple(_folders(options.images, data)))
    stages = _LLMStages.open(cfg, load_typeset(cfg.synth.typeset).names, options, refine=False)
    try:
        return _stream(data, out, cfg, options, given, stages)
    finally:
        stages.close()


def load_groundability(model_dir: str | Path, cfg: RunConfig):
    """The model folder's groundability model at the configured recall, or None (older folders have none)."""
    from .ground.groundability import Groundability

    groundability = Groundability.load(model_dir)
    return groundability.at_recall(cfg.ground.groundability_recall) if groundability else None


def model_setting(model_dir: str | Path) -> str:
    """What a model was trained on, as `refineg train` recorded it (e.g. "500 labelled only"), so that
    every figure made with it can say which setting it belongs to."""
    try:
        setting = json.loads((Path(model_dir) / "meta.json").read_text(encoding="utf-8")).get("setting")
    except (OSError, ValueError, AttributeError):
        setting = None
    return setting if isinstance(setting, str) and setting else "training setting not recorded in meta.json"


def model_types(model_dir: str | Path) -> tuple[str, ...]:
    from .tagger.tagger import read_labels

    return tuple(sorted({lab[2:] for lab in read_labels(model_dir) if lab != "O"}))


def _stream(data, out, cfg: RunConfig, options: RunOptions, predict, stages: _LLMStages,
            setting: str | None = None) -> dict:
    from .data.jsonl import append_jsonl

    out = Path(out)
    counts, timings = stages.counts, stages.timings
    t0 = time.perf_counter()
    samples = load_samples(data)
    finished = done_ids(out, cfg.llm.configured)
    todo = [s for s in samples if s.id not in finished]
    timings["load"] += time.perf_counter() - t0
    if stages.images is not None:
        stages.images.check_missing(todo, options.allow_missing_images)
    t0 = time.perf_counter()
    preds = predict(todo) if todo else []
    timings["tag_and_gate"] += time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as fh:
        for k in range(0, len(todo), options.chunk):
            for p in stages.process(todo[k:k + options.chunk], preds[k:k + options.chunk]):
                if stages.client is None and p.entities:  # a later run with an LLM completes this row
                    p = stages.mark(p, "no_llm")
                append_jsonl(p, fh)
    return finish_run(out, samples, finished, preds, counts, timings, stages.usage(), stages.notes, cfg,
                      stages.groundability, {"name": "local"}, setting)


def finish_run(out: Path, samples, finished, tagged, counts, timings, usage, notes, cfg: RunConfig, groundability,
               engine: dict, setting: str | None) -> dict:
    """The run's summary, written beside out (earlier runs' kept under "history") and returned; ``setting``
    is the model's training setting (None when no model tagged, as in `refineg ground`)."""
    summary = _summary(samples, finished, tagged, counts, timings, usage, notes, cfg)
    if setting is not None:
        summary["model_setting"] = setting
    summary["groundability"] = _groundability_summary(groundability, cfg, counts)
    summary["engine"] = engine
    _write_summary(summary_path(out), summary)
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
        "llm_calls": {"attempted": counts["llm_calls"], "failed_transport": counts["llm_calls_failed"]},
        "calls_per_sample": {**{stage: round(counts[f"calls_{stage}"] / max(1, len(tagged)), 4)
                                for stage in ("combined", "refinement", "grounding")},
                             "total": round(counts["llm_calls"] / max(1, len(tagged)), 4)},
        "rows_marked_retry": counts["rows_marked_retry"],
        "llm": usage,
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "llm_configured": cfg.llm.configured,
        "notes": notes,
    }


def _groundability_summary(groundability, cfg: RunConfig, counts: Counter) -> dict | None:
    if groundability is None:
        return None
    dev = groundability.dev
    kept = groundability.dev_boxed
    recall = sum(1 for p in kept if p >= groundability.threshold) / len(kept) if kept else dev.get("recall_of_boxed_entities")
    return {"active": cfg.ground.skip_ungroundable, "threshold": round(groundability.threshold, 5),
            "target_recall": groundability.target_recall, "dev_auroc": dev.get("auroc"),
            "posts_skipped": counts["grounding_skipped_groundability"],
            "estimated_recall_lost": round(1 - recall, 4) if recall is not None else None}


def _write_summary(path: Path, summary: dict) -> None:
    """Write this run's summary, keeping the earlier runs' under "history" and their sum under "cumulative"."""
    history = []
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            history = old.pop("history", []) + [{k: v for k, v in old.items() if k != "cumulative"}]
        except (json.JSONDecodeError, AttributeError):
            log.warning("%s: unreadable earlier summary, not kept", path)
    runs = history + [summary]
    cumulative = {"runs": len(runs), "processed": sum(r.get("processed", 0) for r in runs),
                  "counts": dict(sum((Counter(r.get("counts", {})) for r in runs), Counter())),
                  "llm_requests": sum(r.get("llm", {}).get("total", {}).get("requests", 0) for r in runs)}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**summary, "history": history, "cumulative": cumulative}, indent=1))
    os.replace(tmp, path)


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
    refine: bool = True
    groundability: object | None = None
    notes: list = field(default_factory=list)

    @classmethod
    def open(cls, cfg, types, options: RunOptions, refine=True, groundability=None, index: DemoIndex | None = None):
        """The stages for a config: a pass-through without an LLM, else the client, images and demo index
        (``index`` one already built, as the Ray engine hands to each of its actors)."""
        from .synth.typesets import load_typeset

        typeset = load_typeset(cfg.synth.typeset)
        counts, timings, notes = Counts(), Counts(), []
        if not cfg.llm.configured:
            notes.append("no LLM configured: refinement and grounding were skipped; the gate kept every entity "
                         "and every entity has an empty box list; rows with entities are marked for a retry, "
                         "which a rerun with an LLM does")
            return cls(cfg, None, None, None, None, None, {}, types, typeset, counts, timings, refine, groundability, notes)
        from .llm import LLMClient

        client = LLMClient(cfg.llm, show_progress=options.progress)
        notes.append(client.dialect.note)
        imgs = _Images(list(options.images), options.strict, client, counts)
        selector = embed = image_embed = None
        demo_images: dict = {}
        if options.demos is None:
            notes.append("no --demos: grounding ran zero-shot, without demonstrations")
        else:
            index = index or DemoIndex.build(cfg, options)
            notes.extend(index.notes)
            selector, embed, image_embed, demo_images = index.tools(client)
        return cls(cfg, client, imgs, selector, embed, image_embed, demo_images, types, typeset, counts, timings, refine,
                   groundability, notes)

    def process(self, samples: list[Sample], preds: list[Prediction]) -> list[Prediction]:
        """Refined and grounded predictions for one chunk; rows whose LLM work failed are marked for a retry.

        A delegated post with an image gets one combined call (refine + ground), or two calls with
        ``ground.combined = false``; a delegated post without an image is refined only. A post the gate
        kept is grounded unless the groundability model says none of its entities is in the image.
        """
        from .refine import needs_refinement

        if self.client is None:
            return list(preds)
        failed: dict[int, set[str]] = {}  # local: the service runs several chunks at once
        t0 = time.perf_counter()
        sent = {s.id: self.images.sent(s) for s in samples}
        has_image = [sent[s.id] is not None for s in samples]
        delegated = [self.refine and needs_refinement(p) for p in preds]
        combined = [d and img and self.cfg.ground.combined for d, img in zip(delegated, has_image)]
        preds = self._combined(samples, preds, sent, [i for i, c in enumerate(combined) if c], failed)
        preds = self._refine(samples, preds, sent, [i for i, (d, c) in enumerate(zip(delegated, combined)) if d and not c],
                             failed)
        self.timings.update({"refine": time.perf_counter() - t0})
        t0 = time.perf_counter()
        todo = []
        for i, p in enumerate(preds):
            if combined[i] or not p.entities:
                continue
            if not has_image[i]:
                self.counts.update({"grounding_skipped_no_image": 1})
            elif not delegated[i] and self._ungroundable(p):
                self.counts.update({"grounding_skipped_groundability": 1})
                preds[i] = p.with_(meta={**p.meta, "grounding": "decided locally: no entity likely in the image"})
            else:
                todo.append(i)
        preds = self._ground(samples, preds, sent, todo, failed)
        self.timings.update({"ground": time.perf_counter() - t0})
        return [self.mark(p, *sorted(failed[i])) if i in failed else p for i, p in enumerate(preds)]

    def _ungroundable(self, pred: Prediction) -> bool:
        g = self.groundability
        return g is not None and self.cfg.ground.skip_ungroundable and not g.needs_grounding(pred.tokens or (), pred.entities)

    def mark(self, pred: Prediction, *reasons: str) -> Prediction:
        """The prediction marked for a retry (a rerun of the same command re-does it), counted."""
        self.counts.update({"rows_marked_retry": 1})
        return pred.with_(meta={**pred.meta, "status": RETRY, "retry_reason": ", ".join(reasons)})

    def _combined(self, samples, preds, sent, todo: list[int], failed: dict) -> list[Prediction]:
        from .ground import combined

        family = self.client.dialect.family
        reqs = [combined.build_request(samples[i], preds[i], sent[samples[i].id], self._demos(samples[i], preds[i]),
                                       self.typeset, family) for i in todo]
        parses = [combined.parser(family, sent[samples[i].id]) for i in todo]
        results = self.client.run(reqs, parses, desc="refine+ground")
        return self._apply("combined", preds, todo, results, failed,
                           lambda i, value: combined.apply(samples[i], preds[i], value, sent[samples[i].id], self.types, family))

    def _refine(self, samples, preds, sent, todo: list[int], failed: dict) -> list[Prediction]:
        from . import refine

        reqs = [refine.build_request(samples[i], preds[i], self.typeset, sent[samples[i].id]) for i in todo]
        results = self.client.run(reqs, refine.parse, desc="refinement")
        return self._apply("refinement", preds, todo, results, failed,
                           lambda i, value: refine.merge(samples[i], preds[i], value, self.types))

    def _ground(self, samples, preds, sent, todo: list[int], failed: dict) -> list[Prediction]:
        from . import ground

        family = self.client.dialect.family
        reqs = [ground.build_request(samples[i], preds[i].entities, sent[samples[i].id], self._demos(samples[i], preds[i]),
                                     family, self.typeset) for i in todo]
        parses = [ground.parser(family, sent[samples[i].id]) for i in todo]
        results = self.client.run(reqs, parses, desc="grounding")
        return self._apply("grounding", preds, todo, results, failed,
                           lambda i, value: ground.apply_boxes(preds[i], value, sent[samples[i].id], family))

    def _apply(self, stage: str, preds: list[Prediction], todo: list[int], results: list, failed: dict,
               update) -> list[Prediction]:
        """Predictions with each parsed result applied; a failed result is a counted fallback that keeps the input."""
        preds = list(preds)
        for i, res in zip(todo, results):
            self.counts.update({"llm_calls": 1, f"calls_{stage}": 1})
            if not res.ok:
                self.counts.update({f"{stage}_fallback_{res.reason}": 1})
                if res.reason == "transport":  # the endpoint, not the model, failed: worth doing again
                    self.counts.update({"llm_calls_failed": 1})
                    failed.setdefault(i, set()).add(f"{stage} {res.reason}")
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

    def usage(self) -> dict:
        """The LLM usage summary so far ({} without an LLM)."""
        return self.client.summary() if self.client is not None else {}

    def close(self) -> None:
        """Stop the client (and the embedded server, if any)."""
        if self.client is not None:
            self.client.close()


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


@dataclass(frozen=True)
class DemoIndex:
    """The demo pool (samples whose image is available), its selector and image paths: built once per run."""

    selector: object | None
    paths: dict
    clip: str | None
    notes: tuple[str, ...]

    @classmethod
    def build(cls, cfg: RunConfig, options: RunOptions) -> DemoIndex:
        """Find the pool's images and embed its texts and entities (and images, with --clip)."""
        from .data.images import open_image
        from .ground.select import DemoSelector, clip_embedder, sentence_embedder

        pool_all = load_samples(options.demos, list(options.demo_ids) if options.demo_ids else None)
        folders = _folders(options.images, options.demos)
        paths = {s.id: path for s in pool_all if (path := find_image(s.image, folders)) is not None}
        pool = [s for s in pool_all if s.id in paths]
        notes = [f"demo pool: {len(pool)} of {len(pool_all)} labelled samples have an image"]
        if not pool:
            return cls(None, paths, options.clip, tuple(notes))
        image_vecs = None
        if options.clip:
            image_vecs = clip_embedder(options.clip)([open_image(paths[s.id]) for s in pool])
        else:
            notes.append("no image embedder (--clip): the image term of demo selection was dropped")
        selector = DemoSelector.build(pool, sentence_embedder(), (cfg.llm.cache_dir or default_cache_dir()) / "embeddings",
                                      image_vecs=image_vecs, weights=cfg.ground.weights,
                                      type_bonus=cfg.ground.type_bonus, k=cfg.ground.k)
        return cls(selector, paths, options.clip, tuple(notes))

    def tools(self, client):
        """The selector, the query embedders and the pool's sent images (prepared for this client on first use)."""
        from .ground.select import clip_embedder, sentence_embedder

        sent = _LazyImages(self.paths, client)
        if self.selector is None:
            return None, None, None, sent
        return self.selector, sentence_embedder(), clip_embedder(self.clip) if self.clip else None, sent


# ---- the loaded pipeline: one object for the CLI, Python callers and the service ----------------


class Pipeline:
    """A loaded model (tagger, gate, groundability) and, with an LLM, its client, images and demo index.

    ``nlp(text)`` or ``nlp(tokens=[...], image=...)`` returns a Prediction; ``nlp.pipe(items)`` yields one
    per item in input order, tagging in batches and running the LLM stages of a batch concurrently.
    ``refineg predict``, ``refineg run`` and ``refineg serve`` all go through this object.
    """

    def __init__(self, model_dir: str | Path, cfg: RunConfig | None = None, options: RunOptions = RunOptions()):
        import threading

        from .config import load_config

        self.model_dir = Path(model_dir)
        self.cfg = cfg if cfg is not None else load_config()
        self.options = options
        self.tagger = Tagger.load(model_dir, self.cfg.tagger.runtime, self.cfg.tagger.int8)
        self.gate = GateCalibration.load(model_dir)
        self.groundability = load_groundability(model_dir, self.cfg)
        self.types = model_types(model_dir)
        self.setting = model_setting(model_dir)
        self._stages: _LLMStages | None = None
        self._tag_lock = threading.Lock()  # one tagging batch at a time (PyTorch and the spaCy memo are shared)
        self._open_lock = threading.Lock()
        self._inline: dict[str, object] = {}
        self._next_id = 0

    @property
    def stages(self) -> _LLMStages:
        """Refinement and grounding, opened on first use (the LLM client and the demo index load once)."""
        with self._open_lock:
            if self._stages is None:
                self._stages = _LLMStages.open(self.cfg, self.types, self.options, True, self.groundability)
                if self._stages.images is not None:
                    self._stages.images.inline = self._inline
        return self._stages

    def warm(self) -> None:
        """Load what the first call would (the LLM client, the demo index, the tagger's runtime) now."""
        if self.cfg.llm.configured:
            _ = self.stages
        self.tag([Sample("warm-up", ("warm", "up"))])

    def tag(self, samples: Sequence[Sample], mc_samples: int = 0, progress: bool = False) -> TagResult:
        """Tagger and gate only: every entity with a score and a keep/delegate decision."""
        with self._tag_lock:
            return _tag_and_gate(self.tagger, self.gate, samples, self.cfg, mc_samples, progress, self.setting)

    def process(self, samples: Sequence[Sample], preds: Sequence[Prediction] | None = None) -> list[Prediction]:
        """The whole pipeline for samples (given predictions skip the tagger): tag, gate, refine, ground."""
        samples = list(samples)
        preds = list(preds) if preds is not None else self.tag(samples).predictions
        return self.stages.process(samples, preds)

    def __call__(self, text: str | None = None, *, tokens: Sequence[str] | None = None, image=None,
                 id: str | None = None) -> Prediction:
        """The prediction for one post (raw text is tokenised the Twitter-GMNER way)."""
        return self.process([self.sample(text, tokens=tokens, image=image, id=id)])[0]

    def pipe(self, items, batch_size: int = 32):
        """Predictions for items (str, dict with text/tokens/image/id, or Sample), in input order."""
        batch: list[Sample] = []
        for item in items:
            batch.append(self.sample(**item) if isinstance(item, dict) else item if isinstance(item, Sample)
                         else self.sample(item))
            if len(batch) >= batch_size:
                yield from self.process(batch)
                batch = []
        if batch:
            yield from self.process(batch)

    def sample(self, text: str | None = None, *, tokens: Sequence[str] | None = None, image=None,
               id: str | None = None) -> Sample:
        """A Sample from raw text or tokens and an optional image (a path, a PIL image or encoded bytes)."""
        from .data.tokenize import tokenize

        if (text is None) == (tokens is None):
            raise DataError("give the post as text or as tokens (one of them)", sample=id)
        if tokens is not None and not all(isinstance(t, str) for t in tokens):
            raise DataError("tokens must be strings", sample=id)
        toks = tuple(tokens) if tokens is not None else tuple(tokenize(text))
        with self._open_lock:
            self._next_id += 1
            sid = str(id) if id is not None else f"post-{self._next_id}"
        name = None
        if image is not None:
            if isinstance(image, (str, Path)):
                name = str(image)
            else:  # a PIL image or the bytes of an encoded image: kept in memory for this process
                name = f"inline:{sid}:{self._next_id}"
                self._inline[name] = image
        return Sample(sid, toks, image=name, raw_text=text)

    def forget_image(self, sample: Sample) -> None:
        """Drop an in-memory image once its sample is done (the service does this after every request)."""
        if sample.image:
            self._inline.pop(sample.image, None)

    def close(self) -> None:
        """Stop the LLM client (and an embedded server)."""
        if self._stages is not None:
            self._stages.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load(model_dir: str | Path, llm: dict | None = None, demos: str | Path | None = None,
         demo_ids: Sequence[str] | None = None, images: Sequence[str | Path] = (), config: str | Path | None = None,
         settings: dict[str, dict] | None = None, **options) -> Pipeline:
    """A Pipeline for MODEL_DIR; ``llm`` holds LLM settings (base_url, model, box_format, ...), ``demos`` the
    labelled pool of grounding demonstrations, ``settings`` other config sections ({"ground": {...}}), and
    ``config`` a TOML file. Without an LLM it is text-only GMNER (tagger and gate)."""
    from .config import load_config

    cfg = load_config(Path(config) if config else None, {**(settings or {}), "llm": dict(llm or {})})
    opts = RunOptions(images=tuple(Path(p) for p in images), demos=Path(demos) if demos else None,
                      demo_ids=tuple(demo_ids) if demo_ids else None, progress=False, **options)
    return Pipeline(model_dir, cfg, opts)
