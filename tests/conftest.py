"""Shared fixtures: the real Twitter-GMNER files live in ../shared/data beside the repo. Tests are marked by
what they need (data, train, server, ray): `make test-fast` runs those that need none of it. Without
../shared, the tests that need it skip when run directly, and fail under `make test` (REFINEG_REQUIRE_DATA)."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TWITTER_V2 = SHARED_DATA / "twitter-gmner" / "Twitter10000_v2.0"
TWITTER_V1 = SHARED_DATA / "twitter-gmner" / "Twitter10000"
SPLITS = SHARED_DATA / "twitter-gmner" / "splits"
SAMPLE_IMAGE = SHARED_DATA / "twitter-gmner" / "sample_images" / "O_3498.jpg"
REFINEG = str(Path(sys.executable).parent / "refineg")
DATA_THERE = (TWITTER_V2 / "txt" / "dev.txt").is_file()

# what marks a test: fixtures it takes, or words in its own source
MARKS = {
    "data": (
        {"twitter_dev", "twitter_train", "tiny_model", "self_training"},
        ("SHARED_DATA", "TWITTER_V1", "TWITTER_V2", "SPLITS", "SAMPLE_IMAGE"),
    ),
    "train": (
        {"tiny_model", "self_training"},
        (
            "train_model(",
            "train_tagger(",
            "self_train(",
            '"train", "--train"',
            '_run("train"',
            "run_demo(",
            '"demo", "--out"',
        ),
    ),
    "server": ({"label_studio", "service"}, ("Running(", "packaged_smollm2", "chromium", '"serve"')),
    "ray": (set(), ('"--engine", "ray"', "_ray_args(")),
}


def pytest_collection_modifyitems(config, items):
    """Mark each test by what it needs; without the shared data, skip (or, when it is required, fail) those
    that need it."""
    for item in items:
        try:
            source = inspect.getsource(item.function)
        except (OSError, TypeError, AttributeError):
            source = ""
        for mark, (fixtures, words) in MARKS.items():
            if fixtures & set(getattr(item, "fixturenames", ())) or any(w in source for w in words):
                item.add_marker(mark)
        if not DATA_THERE and item.get_closest_marker("data"):
            item.add_marker(pytest.mark.skip(reason=f"the shared data is missing: {TWITTER_V2}"))


def pytest_sessionstart(session):
    if os.environ.get("REFINEG_REQUIRE_DATA") and not DATA_THERE:
        raise pytest.UsageError(f"the shared data is missing: {TWITTER_V2} (make test and CI need ../shared)")


@pytest.fixture(scope="session")
def twitter_dev():
    """Path of the real v2.0 dev split (a test taking it is marked data)."""
    return TWITTER_V2 / "txt" / "dev.txt"


@pytest.fixture(scope="session")
def twitter_train():
    return TWITTER_V2 / "txt" / "train.txt"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, twitter_train, twitter_dev):
    """A tagger trained briefly on 80 real tweets and saved (shared by tagger, gate and pipeline tests).

    Half of its training tweets are the 40 dev tweets it is then run on, so that it predicts enough
    entities for the gate and the pipeline tests to have something to work with; it measures nothing.
    """
    from refineg.config import RunConfig, TaggerConfig
    from refineg.data import load_samples
    from refineg.training import train_model

    dev = load_samples(twitter_dev)[:40]
    train = load_samples(twitter_train)[:40] + dev
    cfg = RunConfig(
        tagger=TaggerConfig(
            epochs=4, min_epoch_steps=1, lstm_hidden=32, batch_size=8, lr_head=3e-3, lr_encoder=2e-4, warmup=0
        )
    )
    out = tmp_path_factory.mktemp("tiny_model")
    result = train_model(train, dev, cfg, out, progress=False)
    return out, result, dev


@dataclass(frozen=True)
class SelfTraining:
    """The inputs of a tiny `refineg train --unlabeled` (80 labelled, 40 dev, 50 unlabeled real tweets), its
    command for any --out, and one finished run of it into folder / "whole"."""

    folder: Path
    dev: list
    result: subprocess.CompletedProcess

    def command(self, out: str, unlabeled: bool = True) -> list[str]:
        """The training command writing MODEL_DIR folder / out (without unlabeled posts: a plain training)."""
        return [
            REFINEG,
            "train",
            "--train",
            str(self.folder / "train.jsonl"),
            "--dev",
            str(self.folder / "dev.jsonl"),
            *(["--unlabeled", str(self.folder / "unlabeled.txt")] if unlabeled else []),
            "--out",
            str(self.folder / out),
            "--config",
            str(self.folder / "cfg.toml"),
            "--quiet",
        ]


@pytest.fixture(scope="session")
def self_training(tmp_path_factory, twitter_train, twitter_dev) -> SelfTraining:
    """A tiny self-training through the CLI (shared by the self-training and training-checkpoint tests)."""
    from refineg.data import load_samples, save_samples

    folder = tmp_path_factory.mktemp("self_training")
    train, dev = load_samples(twitter_train), load_samples(twitter_dev)[:40]
    save_samples(train[:40] + dev, folder / "train.jsonl")  # as the tiny model: enough entities to work with
    save_samples(dev, folder / "dev.jsonl")
    (folder / "unlabeled.txt").write_text("\n".join(s.text for s in train[40:90]) + "\n", encoding="utf-8")
    (folder / "cfg.toml").write_text(
        "[tagger]\nepochs = 4\nmin_epoch_steps = 1\nlstm_hidden = 32\nsoup = 2\n"
        "batch_size = 8\nlr_head = 3e-3\nlr_encoder = 2e-4\nwarmup = 0\n"
        'checkpoint_seconds = 0\nruntime = "torch"\n'  # the ONNX export is tested elsewhere: 7 s a training
        "[selftrain]\nepochs = 1\nentity_score = 0.0\nrounds = 1\n"
    )
    run = SelfTraining(folder, dev, None)
    result = subprocess.run(run.command("whole"), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return SelfTraining(folder, dev, result)
