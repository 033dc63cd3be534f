"""Checkpoints of `refineg train`: a training killed after a stage or an epoch resumes there and ends with the model
an uninterrupted training makes; the checkpoints of another training are never used."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from refineg.config import RunConfig, TaggerConfig
from refineg.data import load_samples
from refineg.tagger.tagger import Tagger
from refineg.trainstate import STATE, Checkpoints, TrainingState, training_key


def _entities(tagger: Tagger, dev) -> list:
    return [[(e.start, e.end, e.type, round(e.score, 6)) for e in p.entities] for p in tagger.predict(dev)]


def _kill_once_saved(proc: subprocess.Popen, saved: Path, what: str) -> None:
    """SIGKILL the training as soon as the file saved exists; it must not have ended before."""
    deadline = time.monotonic() + 600
    while not saved.is_file():
        assert proc.poll() is None and time.monotonic() < deadline, f"the run ended before {what} was saved"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_stage_is_found_again_only_by_the_same_training(tmp_path, tiny_model):
    _, result, dev = tiny_model
    checkpoints = Checkpoints(tmp_path / "model", "key-1")
    assert checkpoints.open() is None  # nothing saved yet
    checkpoints.save(result.tagger, TrainingState({"epochs_run": 4}, dev_f1=0.5, seconds=12.0))
    (checkpoints.folder / "stage-001").mkdir()  # a stage killed while it was being saved: no state, never used
    tagger, state = Checkpoints(tmp_path / "model", "key-1").open()
    assert state.report == {"epochs_run": 4} and state.dev_f1 == 0.5 and state.stage == "the labelled-only training"
    assert _entities(tagger, dev) == _entities(result.tagger, dev)
    (checkpoints.epochs(1) / "training.pt").parent.mkdir()
    assert Checkpoints(tmp_path / "model", "key-2").open() is None  # other data or settings: start over
    assert list(checkpoints.folder.iterdir()) == [checkpoints.folder / "key.txt"]


def test_the_key_follows_the_data_and_the_settings(twitter_dev):
    dev = load_samples(twitter_dev)[:20]
    cfg = RunConfig()
    key = training_key(dev[:10], dev[10:], [], cfg)
    assert key == training_key(dev[:10], dev[10:], [], RunConfig())
    assert key != training_key(dev[:10], dev[10:], [], RunConfig(tagger=TaggerConfig(seed=14)))
    assert key != training_key(dev[:10], dev[10:], [dev[0].with_(entities=())], cfg)
    assert key != training_key([dev[0].with_(entities=dev[0].entities[:-1])] + dev[1:10], dev[10:], [], cfg)
    # how often the epoch state is saved changes nothing the training does
    assert key == training_key(dev[:10], dev[10:], [], RunConfig(tagger=TaggerConfig(checkpoint_seconds=5)))


def test_a_killed_self_training_resumes_after_its_last_stage_and_ends_as_if_never_killed(self_training):
    folder, dev, whole = self_training.folder, self_training.dev, self_training.result
    assert "resumed" not in whole.stdout
    work = folder / ".killed.work"
    proc = subprocess.Popen(self_training.command("killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_once_saved(proc, work / "stage-000" / STATE, "its first stage")  # the labelled-only tagger: kill round 1
    assert not (folder / "killed").exists()  # no half model

    again = subprocess.run(self_training.command("killed"), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed after the labelled-only training" in again.stdout
    assert not work.exists()  # the checkpoints go once the model is saved

    metas = [json.loads((folder / out / "meta.json").read_text()) for out in ("whole", "killed")]
    assert metas[1]["resumed_after"].startswith("the labelled-only training") and metas[0]["resumed_after"] is None
    for key in ("dev_f1_by_epoch", "best_epoch", "soup_epochs"):
        assert metas[1]["train"][key] == metas[0]["train"][key]
    rounds = [
        [
            {k: v for k, v in r.items() if k not in ("seconds", "resumed_after_epoch")}
            for r in m["selftraining"]["rounds"]
        ]
        for m in metas
    ]
    assert rounds[1] == rounds[0]
    assert metas[1]["dev"]["mner"] == metas[0]["dev"]["mner"]
    assert metas[1]["seconds_total"] >= metas[1]["train"]["seconds"]  # the killed run's training is counted
    taggers = [Tagger.load(folder / out) for out in ("whole", "killed")]
    assert _entities(taggers[1], dev) == _entities(taggers[0], dev)
    assert taggers[1].corpus.posts == taggers[0].corpus.posts == 50


def test_a_killed_training_resumes_after_its_last_saved_epoch_and_ends_as_if_never_killed(self_training):
    # the uninterrupted reference is the fixture's own labelled-only stage: the same data and settings
    folder, out = self_training.folder, "plain-killed"
    command = self_training.command(out, unlabeled=False)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = folder / f".{out}.work" / "epochs-000" / "training.pt"
    _kill_once_saved(proc, state, "an epoch")  # an epoch's state is saved: kill the training in a later epoch
    assert not (folder / out).exists()
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert not state.parent.parent.exists()
    meta = json.loads((folder / out / "meta.json").read_text())
    whole, resumed = json.loads((folder / "whole" / "meta.json").read_text())["train"], meta["train"]
    assert whole["resumed_after_epoch"] == 0 and 1 <= resumed["resumed_after_epoch"] < 4
    assert meta["resumed_after"] == f"epoch {resumed['resumed_after_epoch']} of the labelled-only training"
    for key in ("dev_f1_by_epoch", "loss_by_epoch", "best_epoch", "soup_epochs", "soup_dev_f1"):
        assert resumed[key] == whole[key]
