"""Checkpoints of `refineg train`: a killed training resumes where it stopped, and ends with the same model.

A training is the labelled-only tagger, then each self-training round. After every stage the current tagger and
what is needed to go on (the training report, the rounds so far, the dev F1 a next student must beat, the seconds
spent) are saved into a work folder beside MODEL_DIR, ``.NAME.work``; a stage folder is complete once its
``state.json`` is there (written last). Within a stage, the training saves its epoch state there too
(tagger/train.py). A rerun with the same data and settings goes on from the newest of them; other data or
settings start over. The work folder goes once the model is saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import RunConfig
from .errors import ConfigError
from .tagger.tagger import Tagger
from .types import Sample

log = logging.getLogger(__name__)

STATE = "state.json"
KEY = "key.txt"  # training_key of the training the folder belongs to


@dataclass(frozen=True)
class TrainingState:
    """Where a training stands after a stage."""

    report: dict  # TrainReport of the labelled-only training
    rounds: list[dict] = field(default_factory=list)  # self-training rounds done
    dev_f1: float = 0.0  # the current tagger's dev MNER F1
    finished: bool = False  # no stage left before the gate is calibrated
    precision_check: dict | None = None  # the current tagger's int8 check
    seconds: float = 0.0  # spent on the stages so far, over every run

    @property
    def stage(self) -> str:
        """The stage just finished, in words."""
        return f"self-training round {len(self.rounds)}" if self.rounds else "the labelled-only training"


def training_key(train: Sequence[Sample], dev: Sequence[Sample], unlabeled: Sequence[Sample], cfg: RunConfig) -> str:
    """A digest of everything a training's stages depend on: the three data sets and the settings that shape them."""
    from . import __version__

    h = hashlib.sha256(__version__.encode())
    h.update(
        cfg.model_dump_json(
            include={"tagger", "gate", "selftrain"}, exclude={"tagger": {"checkpoint_seconds"}}
        ).encode()
    )
    for name, samples in (("train", train), ("dev", dev), ("unlabeled", unlabeled)):
        h.update(f"\x00{name}\x00".encode())
        for s in samples:
            h.update(json.dumps(s.to_dict(), sort_keys=True, ensure_ascii=False, default=str).encode())
            h.update(b"\n")
    return h.hexdigest()


class Checkpoints:
    """The checkpoints of one training into ``out_dir``: a stage folder per finished stage (0: the labelled-only
    tagger, r: self-training round r), and the epoch state of the stage in progress."""

    def __init__(self, out_dir: str | Path, key: str):
        out_dir = Path(out_dir)
        self.folder = out_dir.parent / f".{out_dir.name}.work"
        self.key = key

    def open(self) -> tuple[Tagger, TrainingState] | None:
        """Start or go on: the tagger and state of the newest finished stage, if any. A work folder of another
        training (other data or settings) is removed first."""
        if self.folder.is_dir() and _read_text(self.folder / KEY) != self.key:
            log.info("%s: the checkpoints of another training (other data or settings); starting over", self.folder)
            self.clear()
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / KEY).write_text(self.key)
        stages = sorted(self.folder.glob("stage-*/" + STATE))
        state = _read_state(stages[-1]) if stages else None
        if state is None:
            return None
        try:
            tagger = Tagger.load(stages[-1].parent)
        except ConfigError as exc:
            log.warning("%s; starting over", exc)
            self.clear()
            return self.open()
        tagger.precision_check = state.precision_check
        return tagger, state

    def stage(self, stage: int) -> Path:
        """The folder of finished stage ``stage`` (complete once it holds STATE)."""
        return self.folder / f"stage-{stage:03d}"

    def epochs(self, stage: int) -> Path:
        """Where the training that makes stage ``stage`` keeps its epoch state."""
        return self.folder / f"epochs-{stage:03d}"

    def save(self, tagger: Tagger, state: TrainingState) -> None:
        """Save a finished stage: the tagger, then its state (the mark of a complete stage); its epoch state goes."""
        stage = self.stage(len(state.rounds))
        tagger.save(stage)
        tmp = Path(tempfile.mkstemp(dir=stage, prefix=".state-")[1])
        tmp.write_text(json.dumps(asdict(state), indent=1))
        os.replace(tmp, stage / STATE)
        shutil.rmtree(self.epochs(len(state.rounds)), ignore_errors=True)

    def clear(self) -> None:
        """Remove the work folder (the model is saved, or the checkpoints belong to another training)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def _read_state(path: Path) -> TrainingState | None:
    try:
        return TrainingState(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        log.warning("%s: unreadable (%s); starting over", path, exc)
        return None
