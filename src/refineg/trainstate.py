"""Stage checkpoints of `refineg train`: a killed training resumes after its last finished stage.

A training is the labelled-only tagger, then each self-training round. After every stage the current tagger and
what is needed to go on (the training report, the rounds so far, the dev F1 a next student must beat, the seconds
spent) are saved into a work folder beside MODEL_DIR, ``.NAME.work``. A stage folder is complete once its
``state.json`` is there (written last). A rerun with the same data and settings starts from the newest complete
stage; other data or settings start over. The work folder goes once the model is saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from .config import RunConfig
from .data.jsonl import sample_dict
from .errors import ConfigError
from .tagger.tagger import Tagger
from .types import Sample

log = logging.getLogger(__name__)

STATE = "state.json"


@dataclass(frozen=True)
class TrainingState:
    """Where a training stands after a stage."""

    key: str  # training_key of the data and settings it belongs to
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
    h.update(cfg.model_dump_json(include={"tagger", "gate", "selftrain"}).encode())
    for name, samples in (("train", train), ("dev", dev), ("unlabeled", unlabeled)):
        h.update(f"\x00{name}\x00".encode())
        for s in samples:
            h.update(json.dumps(sample_dict(s), sort_keys=True, ensure_ascii=False, default=str).encode())
            h.update(b"\n")
    return h.hexdigest()


class Checkpoints:
    """The stage checkpoints of one training into ``out_dir``."""

    def __init__(self, out_dir: str | Path, key: str):
        out_dir = Path(out_dir)
        self.folder = out_dir.parent / f".{out_dir.name}.work"
        self.key = key

    def latest(self) -> tuple[Tagger, TrainingState] | None:
        """The tagger and state of the newest complete stage of this training; None (and the folder of another
        training removed) when there is none."""
        stages = sorted(self.folder.glob("stage-*/" + STATE)) if self.folder.is_dir() else []
        state = _read_state(stages[-1]) if stages else None
        if state is None or state.key != self.key:
            if self.folder.exists():
                log.info("%s: stages of another training (other data or settings); starting over", self.folder)
                self.clear()
            return None
        try:
            tagger = Tagger.load(stages[-1].parent)
        except ConfigError as exc:
            log.warning("%s; starting over", exc)
            self.clear()
            return None
        tagger.precision_check = state.precision_check
        return tagger, state

    def save(self, tagger: Tagger, state: TrainingState) -> None:
        """Save a finished stage: the tagger, then its state (the mark of a complete stage)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        stage = self.folder / f"stage-{len(list(self.folder.glob('stage-*'))):03d}"
        tagger.save(stage)
        tmp = Path(tempfile.mkstemp(dir=stage, prefix=".state-")[1])
        tmp.write_text(json.dumps(asdict(state), indent=1))
        os.replace(tmp, stage / STATE)

    def clear(self) -> None:
        """Remove the work folder (the model is saved, or the stages belong to another training)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _read_state(path: Path) -> TrainingState | None:
    try:
        return TrainingState(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        log.warning("%s: unreadable (%s); starting over", path, exc)
        return None
