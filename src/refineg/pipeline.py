"""Runs the stages over a dataset. Every function here takes the same RunConfig the CLI builds."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .config import RunConfig
from .data import load_samples
from .data.jsonl import write_jsonl
from .errors import DataError
from .eval.metrics import score
from .gate import GateCalibration, apply_gate, calibrate, gate_figures
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
    dev_preds = tagger.predict(dev)
    tag_seconds = time.perf_counter() - t0
    gate = calibrate(dev_preds, dev, cfg.gate)
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
    preds = tagger.predict(samples, mc_samples=mc_samples, progress=progress)
    speed = len(samples) / max(1e-9, time.perf_counter() - t0)
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
