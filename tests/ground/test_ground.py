"""Grounding: demo selection, the multimodal request, and boxes mapped back (through real HTTP)."""

import json

import numpy as np
from PIL import Image

from refineg.config import LLMConfig
from refineg.data.images import prepare_image
from refineg.ground import apply_boxes, build_request, parse
from refineg.ground.select import DemoSelector
from refineg.llm import LLMClient
from refineg.testing.fake_openai import FakeOpenAIServer, Reply
from refineg.types import Box, Entity, Prediction, Sample


def _bow(texts):
    """A deterministic bag-of-words embedder for tests."""
    vocab = ["cruz", "texas", "sox", "boston", "game", "senate", "taylor", "swift", "concert"]
    out = np.zeros((len(texts), len(vocab)), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in t.lower().split():
            if w in vocab:
                out[i, vocab.index(w)] += 1
    return out + 1e-3


def _s(sid, text, ents=()):
    toks = tuple(text.split())
    return Sample(
        sid,
        toks,
        tuple(Entity(n, t, toks.index(n.split()[0]), toks.index(n.split()[0]) + len(n.split())) for n, t in ents),
        image=f"{sid}.jpg",
    )


POOL = [
    _s("q", "Cruz in Texas senate game", [("Cruz", "PER"), ("Texas", "LOC")]),
    _s("a", "Cruz speaks to the senate in Texas", [("Cruz", "PER"), ("Texas", "LOC")]),
    _s("b", "Sox game in Boston", [("Sox", "ORG"), ("Boston", "LOC")]),
    _s("c", "Taylor Swift concert", [("Taylor Swift", "PER")]),
]


def test_selection_never_returns_the_query_and_honours_the_weights():
    query = POOL[0]
    sel = DemoSelector.build(POOL, _bow, k=3)
    picked = sel.select(query, query.entities, _bow)
    assert 0 not in picked and len(picked) == 3 and picked[0] == 1
    # text only: "game" pulls b ahead of c; entity only with a big type bonus: PER/LOC matches win
    text_only = DemoSelector.build(POOL, _bow, weights=(1.0, 0.0, 0.0), k=3).select(query, query.entities, _bow)
    ent_only = DemoSelector.build(POOL, _bow, weights=(0.0, 0.0, 1.0), type_bonus=5.0, k=3).select(
        query, query.entities, _bow
    )
    assert text_only.index(2) < text_only.index(3)
    assert ent_only == [1, 2, 3]
    assert DemoSelector.build(POOL, _bow, weights=(0.0, 0.0, 1.0), type_bonus=0.0, k=1).select(
        POOL[3], POOL[3].entities, _bow
    ) != [3]


def test_request_carries_k_demo_images_with_boxes_in_sent_pixels():
    big = Image.new("RGB", (2000, 1000), (10, 120, 10))
    demos = []
    for k in range(3):
        d = Sample(f"d{k}", ("Ann", "waves"), (Entity("Ann", "PER", 0, 1, (Box(200, 100, 600, 500),)),))
        demos.append((d, prepare_image(big, max_side=1000)))
    query = Sample("q", ("Bob", "smiles"))
    req = build_request(query, (Entity("Bob", "PER", 0, 1),), prepare_image(big, max_side=1000), demos)
    parts = req.messages[0]["content"]
    assert sum(1 for p in parts if p["type"] == "image_url") == 4  # 3 demos + the query
    demo_texts = [p["text"] for p in parts if p["type"] == "text" and p["text"].startswith("Post: Ann")]
    assert len(demo_texts) == 3
    assert all('"boxes": [[100, 50, 300, 250]]' in t for t in demo_texts)
    assert "Image (1000x500 pixels)" in parts[1]["text"]


def test_a_2000x1000_query_is_sent_at_1000x500_and_its_box_comes_back_x2(tmp_path):
    big = Image.new("RGB", (2000, 1000), (120, 10, 10))
    pred = Prediction("q", (Entity("Bob", "PER", 0, 1), Entity("Paris", "LOC", 2, 3)))
    answer = {
        "entities": [
            {"text": "Bob", "type": "PER", "boxes": [[100, 50, 300, 250], [900, 10, 1050, 600], [5, 5, 5, 9]]},
            {"text": "Paris", "type": "LOC", "boxes": []},
            {"text": "Eve", "type": "PER", "boxes": [[1, 1, 2, 2]]},
        ]
    }
    with FakeOpenAIServer([Reply(json.dumps(answer))]) as srv:
        with LLMClient(LLMConfig(base_url=srv.base_url, model="m", cache_dir=tmp_path)) as client:
            sent = client.image(big)
            assert sent.sent_size == (1000, 500)
            req = build_request(Sample("q", ("Bob", "in", "Paris")), pred.entities, sent, [])
            res = client.ask(req, parse)
        sent_url = srv.requests[0]["messages"][0]["content"][2]["image_url"]["url"]
    from base64 import b64decode
    from io import BytesIO

    assert Image.open(BytesIO(b64decode(sent_url.split(",", 1)[1]))).size == (1000, 500)
    done = apply_boxes(pred, res.value, sent)
    bob, paris = done.prediction.entities
    assert bob.boxes == (Box(200, 100, 600, 500), Box(1800, 20, 2000, 1000))  # x2, then clipped
    assert paris.boxes == ()
    assert done.counts["box_dropped_degenerate"] == 1 and done.counts["answer_boxes_unmatched"] == 1
    assert done.counts["box_clipped"] == 1
    assert done.counts["grounded"] == 1 and done.counts["not_in_image"] == 1


def test_reversed_and_absurd_boxes_are_rejected_and_counted_not_repaired():
    from refineg.llm.replies import RawBox, Reading

    sent = prepare_image(Image.new("RGB", (600, 400)), 1000)
    pred = Prediction("q", (Entity("Bob", "PER", 0, 1),), ("Bob",))
    reading = Reading(
        [
            RawBox("Bob", (300, 300, 10, 10)),
            RawBox("Bob", (0, 0, 1e308, 1e308)),
            RawBox("Bob", (500, 300, 620, 420)),
            RawBox("Bob", (10, 20, 110, 220)),
        ]
    )
    done = apply_boxes(pred, reading, sent)
    assert done.prediction.entities[0].boxes == (Box(500, 300, 600, 400), Box(10, 20, 110, 220))
    assert done.counts["box_rejected_reversed"] == 1 and done.counts["box_rejected_outside"] == 1
    assert done.counts["box_clipped"] == 1
