"""The pipeline's stream: tagging overlaps the MLLM calls, the window bounds the posts under way, rows are the
ones the batch path gives, in input order when asked, and a stopped stream cancels its MLLM work."""

import json
import random
import threading
import time

import pytest

from refineg.config import GroundConfig, LLMConfig, RunConfig, RunSection
from refineg.pipeline import Pipeline
from refineg.testing.fake_openai import FakeOpenAIServer, Reply
from refineg.testing.oracle import GoldOracle, placeholder_images


@pytest.fixture(scope="module")
def images(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    placeholder_images(tiny_model[2], folder)
    return folder


def _nlp(model, srv, images, tmp_path, concurrency=8, **run) -> Pipeline:
    """A pipeline whose every post with entities calls the MLLM (its image is there, grounding is never skipped)."""
    cfg = RunConfig(
        llm=LLMConfig(
            base_url=srv.base_url, model="gold-oracle", concurrency=concurrency, cache=False, cache_dir=tmp_path
        ),
        ground=GroundConfig(skip_ungroundable=False),
        run=RunSection(progress=False, images=[images], **run),
    )
    return Pipeline(model, cfg)


def _posts(dev, n):
    """n posts: the tiny model's dev posts again under new ids."""
    return [s.with_(id=f"{s.id}-{k}") for k in range(n // len(dev) + 1) for s in dev][:n]


def test_tagging_of_later_posts_overlaps_the_mllm_calls_of_earlier_ones(tiny_model, images, tmp_path):
    model, _, dev = tiny_model
    posts = _posts(dev, 80)
    arrivals, tagged = [], []
    oracle = GoldOracle(dev)

    def answer(body):
        arrivals.append(time.monotonic())
        return oracle(body)

    with FakeOpenAIServer(default=answer, latency=0.2) as srv, _nlp(model, srv, images, tmp_path, tag_batch=4) as nlp:
        real = nlp.tagging.__call__

        class Recording:
            delegate = nlp.tagging.delegate

            def __call__(self, samples, *args):
                out = real(samples, *args)
                tagged.append(time.monotonic())
                return out

        nlp.tagging = Recording()
        done = list(nlp.stream(posts))
    assert len(done) == len(posts) and len(tagged) == 20
    assert arrivals and arrivals[0] < tagged[-1], "no MLLM call went out before the last batch was tagged"


def test_the_window_bounds_the_posts_under_way_and_concurrency_the_requests(tiny_model, images, tmp_path):
    model, _, dev = tiny_model
    posts = _posts(dev, 80)
    for window, concurrency, most in ((5, 8, 5), (64, 6, 6)):
        with (
            FakeOpenAIServer(default=GoldOracle(dev), latency=0.2) as srv,
            _nlp(model, srv, images, tmp_path, concurrency=concurrency, window=window) as nlp,
        ):
            done = list(nlp.stream(posts))
        assert len(done) == len(posts)
        # never more than allowed, and the endpoint kept busy up to that
        assert most - 1 <= srv.max_in_flight <= most, (window, concurrency, srv.max_in_flight)


def test_stream_rows_equal_the_batch_path_and_ordered_keeps_the_input_order(tiny_model, images, tmp_path):
    model, _, dev = tiny_model
    oracle, rng, lock = GoldOracle(dev), random.Random(0), threading.Lock()

    def jittered(body):
        with lock:
            delay = rng.uniform(0, 0.15)
        time.sleep(delay)  # replies come back out of order
        return oracle(body)

    with FakeOpenAIServer(default=jittered) as srv, _nlp(model, srv, images, tmp_path, tag_batch=7) as nlp:
        batch = nlp.process(dev)
        unordered = list(nlp.stream(dev))
        ordered = list(nlp.stream(dev, ordered=True))
    assert [d.index for d in ordered] == list(range(len(dev)))
    assert [d.prediction for d in ordered] == batch
    assert sorted(unordered, key=lambda d: d.index) == ordered
    assert [d.index for d in unordered] != list(range(len(dev))), "the jitter should reorder some replies"


def test_a_stream_stopped_early_cancels_its_mllm_work(tiny_model, images, tmp_path):
    model, _, dev = tiny_model
    quick = iter(range(2))

    def answer(body):  # two quick replies, then a stalled endpoint
        return Reply('{"entities": []}', delay=0.0 if next(quick, None) is not None else 30.0)

    with FakeOpenAIServer(default=answer) as srv, _nlp(model, srv, images, tmp_path, concurrency=4) as nlp:
        stream = nlp.stream(_posts(dev, 40))
        next(stream)
        deadline = time.monotonic() + 10
        while srv.in_flight < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.in_flight == 4
        t0 = time.monotonic()
        stream.close()
        while srv.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.in_flight == 0 and srv.abandoned == 4, "the stopped stream's requests were not cancelled"
        assert time.monotonic() - t0 < 5


def test_a_stream_whose_input_fails_at_once_opens_no_mllm_client(tiny_model, images, tmp_path):
    model, _, _ = tiny_model

    def broken():
        raise OSError("the input went away")
        yield

    with FakeOpenAIServer() as srv, _nlp(model, srv, images, tmp_path) as nlp:
        with pytest.raises(OSError, match="went away"):
            list(nlp.stream(broken()))
        assert nlp.report()["usage"] is None  # stopping had nothing to cancel, so no client was opened for it


def test_pipe_gives_predictions_in_input_order_for_text_tokens_and_samples(tiny_model):
    model, _, dev = tiny_model
    with Pipeline(model) as nlp:
        items = [dev[0], {"tokens": list(dev[1].tokens), "id": "b"}, " ".join(dev[2].tokens)]
        got = list(nlp.pipe(items, batch_size=2))
        assert [p.id for p in got[:2]] == [dev[0].id, "b"] and got[2].tokens == dev[2].tokens
        assert [json.dumps([e.text for e in p.entities]) for p in got] == [
            json.dumps([e.text for e in nlp(tokens=s.tokens).entities]) for s in dev[:3]
        ]
