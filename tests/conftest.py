"""Shared fixtures: the real Twitter-GMNER files live in ../shared/data beside the repo."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TWITTER_V2 = SHARED_DATA / "twitter-gmner" / "Twitter10000_v2.0"
TWITTER_V1 = SHARED_DATA / "twitter-gmner" / "Twitter10000"
SPLITS = SHARED_DATA / "twitter-gmner" / "splits"
SAMPLE_IMAGE = SHARED_DATA / "twitter-gmner" / "sample_images" / "O_3498.jpg"


@pytest.fixture(scope="session")
def twitter_dev():
    """Path of the real v2.0 dev split (the tests need ../shared; they never skip without it)."""
    path = TWITTER_V2 / "txt" / "dev.txt"
    assert path.is_file(), f"the shared data is missing: {path}"
    return path


@pytest.fixture(scope="session")
def twitter_train():
    path = TWITTER_V2 / "txt" / "train.txt"
    assert path.is_file(), f"the shared data is missing: {path}"
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, twitter_train, twitter_dev):
    """A tagger trained briefly on 50 real tweets and saved (shared by tagger, gate and pipeline tests)."""
    from refineg.config import RunConfig, TaggerConfig
    from refineg.data import load_samples
    from refineg.pipeline import train_model

    train = load_samples(twitter_train)[:50]
    dev = load_samples(twitter_dev)[:40]
    cfg = RunConfig(tagger=TaggerConfig(epochs=2, lstm_hidden=32, batch_size=8))
    out = tmp_path_factory.mktemp("tiny_model")
    result = train_model(train, dev, cfg, out, progress=False)
    return out, result, dev
