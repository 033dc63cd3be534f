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
    """A tagger trained briefly on 80 real tweets and saved (shared by tagger, gate and pipeline tests).

    Half of its training tweets are the 40 dev tweets it is then run on, so that it predicts enough
    entities for the gate and the pipeline tests to have something to work with; it measures nothing.
    """
    from refineg.config import RunConfig, TaggerConfig
    from refineg.data import load_samples
    from refineg.pipeline import train_model

    dev = load_samples(twitter_dev)[:40]
    train = load_samples(twitter_train)[:40] + dev
    cfg = RunConfig(tagger=TaggerConfig(epochs=4, min_epoch_steps=1, lstm_hidden=32, batch_size=8, lr_head=3e-3,
                                        lr_encoder=2e-4, warmup=0))
    out = tmp_path_factory.mktemp("tiny_model")
    result = train_model(train, dev, cfg, out, progress=False)
    return out, result, dev
