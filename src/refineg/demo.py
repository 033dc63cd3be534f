"""`make demo`: train on 500 labelled tweets, calibrate the gate, run the pipeline on part of dev,
score it and write the HTML report. Offline by default; it uses an LLM when one is configured.

Data: ``$REFINEG_DATA`` (a folder holding ``twitter-gmner/``), else ``../shared/data``, else the
small example set in ``examples/mini`` (written by us, images drawn by us).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .config import RunConfig
from .data import load_samples, read_ids, read_predictions
from .data.jsonl import write_jsonl
from .errors import DataError
from .eval.metrics import score
from .gate import GateCalibration, gate_figures
from .report import boxes_note, build_report
from .runs.local import run_file
from .training import train_model
from .types import Sample

REPO = Path(__file__).resolve().parents[2]
MINI = REPO / "examples" / "mini"
# The demo's own settings, under any config file and flag: fewer epochs than a real training, for a demo of
# about two minutes (early stopping rarely runs past 8 on train-500)
DEMO_DEFAULTS = {"tagger": {"epochs": 8}}


@dataclass(frozen=True)
class DemoData:
    """What the demo trains, calibrates and runs on."""

    name: str
    train: list[Sample]
    calib: list[Sample]
    run: list[Sample]
    images: Path | None


def find_data_root() -> Path | None:
    """``$REFINEG_DATA``, else ``../shared/data`` beside the repo (or the working folder), if it holds Twitter-GMNER."""
    candidates = [Path(os.environ["REFINEG_DATA"])] if os.environ.get("REFINEG_DATA") else []
    candidates += [REPO.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if (c / "twitter-gmner" / "Twitter10000_v2.0" / "txt" / "train.txt").is_file():
            return c
    if os.environ.get("REFINEG_DATA"):
        raise DataError(
            "REFINEG_DATA does not hold twitter-gmner/Twitter10000_v2.0/txt/train.txt", os.environ["REFINEG_DATA"]
        )
    return None


def demo_data(root: Path | None, n_calib: int = 300, n_run: int = 500) -> DemoData:
    """Train-500, a calibration slice of dev and a disjoint run slice of dev; or the example set."""
    if root is None:
        dev = load_samples(MINI / "dev.jsonl")
        return DemoData(
            "examples/mini (shipped with refineg)",
            load_samples(MINI / "train.jsonl"),
            dev[:12],
            dev[12:],
            MINI / "images",
        )
    tw = root / "twitter-gmner"
    train = load_samples(tw / "Twitter10000_v2.0" / "txt" / "train.txt", read_ids(tw / "splits" / "train-500.ids"))
    dev = load_samples(tw / "Twitter10000_v2.0" / "txt" / "dev.txt")
    images = tw / "sample_images"
    return DemoData(
        f"Twitter-GMNER v2.0 from {root} (train-500; dev {n_calib + 1}-{n_calib + n_run})",
        train,
        dev[:n_calib],
        dev[n_calib : n_calib + n_run],
        images,
    )


def _model(out: Path, data: DemoData, cfg: RunConfig, progress: bool) -> tuple[Path, bool]:
    """The demo's model folder, trained unless an identical one is already there."""
    model_dir = out / "model"
    key = {
        "data": data.name,
        "train": len(data.train),
        "config": json.loads(cfg.model_dump_json(include={"tagger", "gate"})),
    }
    meta = model_dir / "meta.json"
    if (
        meta.is_file()
        and (model_dir / "gate.json").is_file()
        and json.loads(meta.read_text()).get("sources", {}).get("demo_key") == key
    ):
        return model_dir, False
    train_model(data.train, data.calib, cfg, model_dir, progress=progress, sources={"demo_key": key})
    return model_dir, True


def run_demo(out: Path, cfg: RunConfig, progress: bool = True) -> dict:
    """The whole demo; returns the figures it prints."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data = demo_data(find_data_root())
    model_dir, trained = _model(out, data, cfg, progress)
    t_train = time.perf_counter() - t0
    run_set, pred_file = out / "run-set.jsonl", out / "predictions.jsonl"
    write_jsonl(data.run, run_set)
    if trained:
        pred_file.unlink(missing_ok=True)  # predictions of an older model must not be resumed
    pool_file = out / "demo-pool.jsonl"
    write_jsonl(data.train, pool_file)
    run = {
        "images": [data.images] if data.images else [],
        "demos": pool_file if cfg.llm.configured else None,
        "progress": progress,
    }
    summary = run_file(model_dir, run_set, pred_file, cfg.model_copy(update={"run": cfg.run.model_copy(update=run)}))
    preds = read_predictions(pred_file)
    scores = score(data.run, preds)
    gate = GateCalibration.load(model_dir)
    note = boxes_note(preds, summary)
    index = build_report(
        preds,
        data.run,
        out / "report",
        [data.images] if data.images else [],
        title=f"refineg demo on {data.name}",
        setting=summary["model_setting"],
        notes=[note] if note else [],
    )
    figures = {
        "data": data.name,
        "trained": trained,
        "train_seconds": round(t_train, 1),
        "samples": len(data.run),
        **{m: scores.overall[m].as_dict() for m in ("gmner", "mner", "eeg")},
        "gate": {
            "auroc_on_run_set": gate_figures(preds, data.run, gate.threshold, gate.missing_threshold)["auroc"],
            "calibrated_delegation_rate": gate.delegation_rate,
            "llm_configured": cfg.llm.configured,
        },
        "pipeline": summary,
        "report": str(index),
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "demo-summary.json").write_text(json.dumps(figures, indent=1))
    return figures
