"""``refineg predict``: a model's tagger and gate over a data file (no MLLM is called), resumable.

The output appears only complete. Until then the predictions go, a chunk at a time, to a partial file
beside it (``.OUT.partial``, with ``.OUT.partial.key`` naming the model, data and settings they were made
from), and a rerun of a killed run goes on from there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import RunConfig
from ..data import iter_samples, pick_ids, read_predictions
from ..data.jsonl import json_line, summary_path, write_jsonl
from ..data.textio import atomic_open
from ..errors import DataError
from ..eval.metrics import score
from ..gate import GatedTagger, gate_figures
from ..tagger.tagger import read_setting, weights_digest
from ..types import Prediction, Sample
from .output import OutputLock, done_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TagResult:
    """Gated tagger predictions, with scores and gate figures when the data had gold entities."""

    predictions: list[Prediction]
    mner: dict | None
    gate: dict | None
    decisions: bool  # entities below the gate's threshold are marked delegate (else every entity is kept)
    sentences_per_s: float
    setting: str  # the model's training setting: the figures above are that model's
    resumed: int = 0  # predictions an interrupted run of the same command had already made

    def summary(self) -> dict:
        """What `refineg predict` writes beside its output: counts, the model's setting and, with gold, its figures."""
        return {
            "samples": len(self.predictions),
            "entities": sum(len(p.entities) for p in self.predictions),
            "model_setting": self.setting,
            "mner": self.mner,
            "gate": self.gate,
            "decisions": self.decisions,
            "sentences_per_s": round(self.sentences_per_s, 1),
            "resumed": self.resumed,
        }


def tag_result(
    tagging: GatedTagger, preds: list[Prediction], samples: Sequence[Sample], speed: float, setting: str
) -> TagResult:
    """Gated predictions with their MNER and gate figures when the samples have gold entities."""
    has_gold = any(s.entities for s in samples)
    mner = score(samples, preds).overall["mner"].as_dict() if has_gold else None
    gate = tagging.gate
    figures = gate_figures(preds, samples, gate.threshold, gate.missing_threshold) if has_gold else None
    return TagResult(preds, mner, figures, tagging.delegate, speed, setting)


def predict_file(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path,
    cfg: RunConfig,
    ids: list[str] | None = None,
    mc_samples: int = 0,
    decisions: bool = False,
) -> TagResult:
    """Tag a data file and write the predictions as canonical JSONL, and their summary beside them. With
    ``decisions``, the entities the gate would send to an MLLM are marked delegate."""
    out = Path(out)
    samples = list(iter_samples(data))
    samples = pick_ids(samples, ids, data) if ids else samples
    with OutputLock(out):
        tagging = GatedTagger.load(model_dir, cfg, delegate=decisions)
        partial = PartialPredictions(out, _predict_key(Path(model_dir), cfg, samples, mc_samples, decisions))
        done = partial.resume()
        todo = [s for s in samples if s.id not in done]
        step = cfg.run.save_every
        for k in range(0, len(todo), step):  # the figures are made once, over every post, below
            partial.append(tagging(todo[k : k + step], mc_samples, cfg.run.progress))
        speed = len(todo) / max(1e-9, tagging.seconds) if todo else 0.0
        by_id = {**done, **{p.id: p for p in partial.fresh}}
        result = replace(
            tag_result(tagging, [by_id[s.id] for s in samples], samples, speed, read_setting(model_dir)),
            resumed=len(done),
        )
        write_jsonl(result.predictions, out)
        with atomic_open(summary_path(out)) as fh:
            json.dump(result.summary(), fh, indent=1)
        partial.remove()
    return result


def _predict_key(model_dir: Path, cfg: RunConfig, samples: Sequence[Sample], mc_samples: int, decisions: bool) -> str:
    """What a predict run's output depends on: the model (weights and gate), the samples and the settings."""
    h = hashlib.sha256(weights_digest(model_dir).encode())
    h.update((model_dir / "gate.json").read_bytes())
    h.update(cfg.model_dump_json(include={"tagger", "gate"}).encode())
    h.update(f"{mc_samples} {decisions}".encode())
    for s in samples:
        h.update(json_line(s).encode())
    return h.hexdigest()


class PartialPredictions:
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
                done_ids(self.path, redo_retries=False)  # cuts the half line a kill may have left
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
