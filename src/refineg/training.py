"""Training orchestration: the tagger (then self-training on unlabeled posts, if any), its gate calibrated on
dev, the groundability model, and the model folder written whole. A killed training resumes (trainstate.py)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .config import RunConfig
from .data import load_samples, load_unlabeled, read_ids
from .data.textio import check_output
from .errors import DataError
from .eval.metrics import score
from .gate import GateCalibration, calibrate, fit_score_model, rescored
from .ground.groundability import Groundability
from .tagger.tagger import WEIGHTS, Tagger
from .trainstate import Checkpoints, TrainingState, training_key
from .types import Sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """The trained tagger, its gate and what training measured."""

    tagger: Tagger
    gate: GateCalibration
    meta: dict


def train_model(
    train: Sequence[Sample],
    dev: Sequence[Sample],
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    progress: bool = True,
    sources: dict | None = None,
    unlabeled: Sequence[Sample] = (),
) -> TrainResult:
    """Train the tagger (then self-train it on unlabeled posts, if any), calibrate the gate on dev, and save
    both into out_dir (if given). With out_dir, each finished stage is saved beside it, and a rerun of a killed
    training goes on from the last one (trainstate.py)."""
    if not dev:
        raise DataError("a dev set is needed to pick the epoch and calibrate the gate")
    # here, not at the top: they load PyTorch (1.5 s), which no other command of the CLI needs
    from .selftrain import self_train
    from .tagger.train import train_tagger

    t_start = time.perf_counter()
    checkpoints = Checkpoints(out_dir, training_key(train, dev, unlabeled, cfg)) if out_dir is not None else None
    resumed = checkpoints.open() if checkpoints else None
    if resumed:
        tagger, state = resumed
        log.info("resuming after %s (%s)", state.stage, checkpoints.folder)
    else:
        tagger, report = train_tagger(
            train, dev, cfg.tagger, progress=progress, state_dir=checkpoints.epochs(0) if checkpoints else None
        )
        state = TrainingState(
            report.as_dict(),
            dev_f1=report.soup_dev_f1,
            finished=not unlabeled,
            precision_check=tagger.precision_check,
            seconds=report.seconds,
        )
        if checkpoints and unlabeled:  # without self-training only seconds of work follow
            checkpoints.save(tagger, state)
    before = state.seconds if resumed else 0.0  # spent by earlier, interrupted runs
    selftraining = None
    if unlabeled:

        def on_round(tagger: Tagger, rounds: list[dict], dev_f1: float, finished: bool) -> None:
            if checkpoints:
                checkpoints.save(
                    tagger,
                    replace(
                        state,
                        rounds=rounds,
                        dev_f1=dev_f1,
                        finished=finished,
                        precision_check=tagger.precision_check,
                        seconds=round(before + time.perf_counter() - t_start, 1),
                    ),
                )

        rounds = state.rounds
        if not state.finished:
            done = self_train(
                tagger,
                state.dev_f1,
                train,
                dev,
                unlabeled,
                cfg,
                progress,
                state.rounds,
                on_round,
                checkpoints.epochs if checkpoints else None,
            )
            tagger, rounds = done.tagger, done.rounds
        selftraining = {
            "unlabeled_posts": len(unlabeled),
            "rounds": rounds,
            "rounds_kept": sum(r["kept"] for r in rounds),
            "corpus_texts": len(tagger.corpus.tagged) if tagger.corpus else 0,
        }
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
        "dev": {
            "mner": score(dev, dev_preds).overall["mner"].as_dict(),
            "tag_sentences_per_s": round(len(dev) / tag_seconds, 1),
        },
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
    points = (
        [f"epoch {state.report['resumed_after_epoch']} of the labelled-only training"]
        if state.report.get("resumed_after_epoch")
        else []
    )
    points += [state.stage] if from_stage else []
    points += [
        f"epoch {r['resumed_after_epoch']} of self-training round {r['round']}"
        for r in rounds
        if r.get("resumed_after_epoch")
    ]
    return ", then ".join(points) or None


def _setting(train: Sequence[Sample], unlabeled: Sequence[Sample]) -> str:
    """Which data a model learnt from, in the words every report uses."""
    labelled = f"{len(train)} labelled"
    return f"{labelled} + {len(unlabeled)} unlabeled (self-training)" if unlabeled else f"{labelled} only"


def _fit_groundability(train: Sequence[Sample], dev: Sequence[Sample], cfg: RunConfig):
    """The groundability model on the labelled (not synthesized) training posts, calibrated on dev."""
    labelled = [s for s in train if all(e.source != "synthetic" for e in s.entities)]
    return Groundability.fit(labelled, dev, cfg.ground.groundability_recall)


def check_model_dir(out_dir: Path) -> None:
    """Refuse to train into a folder that holds anything but an earlier refineg model (which is replaced)."""
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / WEIGHTS).is_file():
        raise DataError("this folder is not empty and holds no refineg model: choose a new --out", out_dir)


def save_model_dir(out_dir: str | Path, tagger: Tagger, gate: GateCalibration, meta: dict, groundability=None) -> None:
    """Write the model into a folder beside out_dir, then swap it in: a failed save never leaves half a model."""
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


def train_files(
    train: Path,
    dev: Path,
    out_dir: Path,
    cfg: RunConfig,
    ids: Path | None = None,
    augment: Sequence[Path] = (),
    unlabeled: Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """`refineg train`: read the data files (refusing empty ones and an --out that is not ours), then train_model
    into out_dir; where the data came from is recorded in meta.json."""
    check_model_dir(check_output(out_dir, folder=True))
    samples = load_samples(train, read_ids(ids) if ids else None)
    extra = [s for f in augment for s in load_samples(f)]
    dev_samples = load_samples(dev)
    posts = load_unlabeled(unlabeled) if unlabeled else []
    for path, got in ((train, samples), (dev, dev_samples)):
        if not got:
            raise DataError("no samples in the file", path)
    sources = {
        "train": str(train),
        "ids": str(ids) if ids else None,
        "augment": [str(a) for a in augment],
        "dev": str(dev),
        "train_samples": len(samples),
        "augment_samples": len(extra),
        "unlabeled": str(unlabeled) if unlabeled else None,
    }
    return train_model(samples + extra, dev_samples, cfg, out_dir, progress=progress, sources=sources, unlabeled=posts)
