"""`refineg select`: the riskiest posts of a pool, never a labelled one (by id or by text), never two
near-duplicates, as ids or Label Studio tasks; the strategies by name."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from refineg.config import RunConfig
from refineg.data import load_samples, save_samples
from refineg.gate import GatedTagger
from refineg.select import STRATEGIES, choose, rated, text_key
from refineg.types import Sample

REFINEG = str(Path(sys.executable).parent / "refineg")


@pytest.fixture(scope="module")
def pool(tiny_model, twitter_train):
    """200 train posts the tiny model has not seen, with a retweet of one of them and a copy of a labelled one."""
    posts = load_samples(twitter_train)[200:400]
    retweet = posts[0].with_(id="rt-copy", tokens=("RT", "@someone", ":") + posts[0].tokens)
    return [*posts, retweet]


def test_the_riskiest_posts_come_first_and_risk_counts_wrong_and_missed_entities(tiny_model, pool):
    tagging = GatedTagger.load(tiny_model[0], RunConfig(), delegate=False)
    rated_posts = rated(tagging, pool)
    for r in rated_posts:
        assert r.wrong == pytest.approx(sum(1 - e.score for e in r.prediction.entities))
        assert r.missed >= 0 and r.risk == r.wrong + r.missed
    choice = choose(tagging, pool, set(), 20, "risk")
    risks = [r.risk for r in choice.chosen]
    assert risks == sorted(risks, reverse=True) and len(risks) == 20
    assert min(risks) >= sorted((r.risk for r in rated_posts), reverse=True)[25]  # the top, but for duplicates
    assert choice.pool_risk == pytest.approx(sum(r.risk for r in rated_posts) / len(rated_posts))


def test_labelled_posts_never_come_back_by_id_or_by_text(tiny_model, pool):
    tagging = GatedTagger.load(tiny_model[0], RunConfig(), delegate=False)
    labelled = {pool[0].id, pool[1].id}
    for strategy in STRATEGIES:
        chosen = choose(tagging, pool, labelled, len(pool), strategy).chosen
        ids = [r.sample.id for r in chosen]
        assert len(ids) == len(set(ids)) and not labelled & set(ids)
        assert "rt-copy" not in ids  # the retweet of a labelled post has its text
    assert text_key(pool[-1]) == text_key(pool[0])


def test_diverse_never_takes_two_near_duplicates(tiny_model, pool):
    tagging = GatedTagger.load(tiny_model[0], RunConfig(), delegate=False)
    twins = [
        Sample(
            f"twin-{k}",
            ("RT", "@fan", ":", "Kevin", "Durant", "and", "LeBron", "James", "win", "again", "!", "#", f"game{k}"),
        )
        for k in range(5)
    ]
    chosen = [r.sample.id for r in choose(tagging, pool + twins, set(), len(pool) + 5, "diverse").chosen]
    assert sum(sid.startswith("twin-") for sid in chosen) == 1
    naive = [r.sample.id for r in choose(tagging, pool + twins, set(), len(pool) + 5, "risk").chosen]
    assert sum(sid.startswith("twin-") for sid in naive) == 5  # exact duplicates only: they differ by a hashtag


def test_random_is_the_seeded_baseline(tiny_model, pool):
    tagging = GatedTagger.load(tiny_model[0], RunConfig(), delegate=False)
    a = [r.sample.id for r in choose(tagging, pool, set(), 10, "random", seed=1).chosen]
    b = [r.sample.id for r in choose(tagging, pool, set(), 10, "random", seed=1).chosen]
    c = [r.sample.id for r in choose(tagging, pool, set(), 10, "random", seed=2).chosen]
    assert a == b != c


def test_the_contract_commands_select_then_train(tiny_model, pool, twitter_train, twitter_dev, tmp_path):
    model, _, _ = tiny_model
    save_samples(pool, tmp_path / "pool.jsonl")
    (tmp_path / "labelled.ids").write_text(f"{pool[0].id}\n{pool[1].id}\n")
    res = subprocess.run(
        [
            REFINEG,
            "select",
            "--model",
            str(model),
            "--pool",
            str(tmp_path / "pool.jsonl"),
            "--exclude",
            str(tmp_path / "labelled.ids"),
            "--budget",
            "30",
            "--out",
            str(tmp_path / "new.ids"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    new = (tmp_path / "new.ids").read_text().split()
    assert len(new) == 30 and not {pool[0].id, pool[1].id} & set(new)
    assert "chose 30 of" in res.stdout and "per chosen post" in res.stdout
    bad = subprocess.run(
        [
            REFINEG,
            "select",
            "--model",
            str(model),
            "--pool",
            str(tmp_path / "pool.jsonl"),
            "--budget",
            "3",
            "--out",
            str(tmp_path / "x.ids"),
            "--strategy",
            "clever",
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--strategy must be one of diverse, risk, random" in bad.stderr


def test_label_studio_tasks_carry_the_entities_and_their_scores(tiny_model, pool, tmp_path):
    from refineg.testing.oracle import placeholder_images

    model, _, _ = tiny_model
    posts = pool[:30]
    save_samples(posts, tmp_path / "pool.jsonl")
    placeholder_images(posts, tmp_path)
    res = subprocess.run(
        [
            REFINEG,
            "select",
            "--model",
            str(model),
            "--pool",
            str(tmp_path / "pool.jsonl"),
            "--budget",
            "10",
            "--out",
            str(tmp_path / "tasks.json"),
            "--format",
            "label-studio",
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert len(tasks) == 10 and all(t["data"]["image"].startswith("data:image/jpeg;base64,") for t in tasks)
    spans = [r for t in tasks for r in t["predictions"][0]["result"] if r["type"] == "labels"]
    assert spans and all(0 <= r["score"] <= 1 for r in spans)
    for t in tasks:
        for r in t["predictions"][0]["result"]:
            if r["type"] == "labels":
                assert t["data"]["text"][r["value"]["start"] : r["value"]["end"]] == r["value"]["text"]


def test_label_studio_tasks_carry_the_mllms_boxes_linked_to_their_entities(tiny_model, pool, tmp_path):
    from refineg.data.labelstudio import read_export
    from refineg.testing.fake_openai import FakeOpenAIServer
    from refineg.testing.oracle import GoldOracle, placeholder_images

    model, _, _ = tiny_model
    posts = [s for s in pool[:200] if any(e.boxes for e in s.entities)][:12]
    save_samples([s.with_(entities=()) for s in posts], tmp_path / "pool.jsonl")
    placeholder_images(posts, tmp_path / "images")
    (tmp_path / "all.toml").write_text("[ground]\nskip_ungroundable = false\n")
    with FakeOpenAIServer(default=GoldOracle(posts)) as llm:
        res = subprocess.run(
            [REFINEG, "select", "--model", str(model), "--pool", str(tmp_path / "pool.jsonl"), "--budget", "12"]
            + ["--format", "label-studio", "--out", str(tmp_path / "tasks.json"), "--images", str(tmp_path / "images")]
            + ["--llm-base-url", llm.base_url, "--llm-model", "m", "--cache-dir", str(tmp_path / "cache")]
            + ["--config", str(tmp_path / "all.toml"), "--quiet"],
            capture_output=True,
            text=True,
        )
    assert res.returncode == 0, res.stderr
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    results = [r for t in tasks for r in t["predictions"][0]["result"]]
    rects = {r["id"] for r in results if r["type"] == "rectanglelabels"}
    assert rects and rects == {r["from_id"] for r in results if r["type"] == "relation"}
    # accepted as they are, the pre-annotated boxes come back as the oracle's (gold) boxes of those entities
    export = [
        {**t, "id": k, "annotations": [{"id": k, "result": t["predictions"][0]["result"]}]} for k, t in enumerate(tasks)
    ]
    (tmp_path / "export.json").write_text(json.dumps(export))
    gold = {(s.id, e.start, e.end): e.boxes for s in posts for e in s.entities}
    back = [(s.id, e) for s in read_export(tmp_path / "export.json") for e in s.entities if e.boxes]
    exact = [(sid, e) for sid, e in back if (sid, e.start, e.end) in gold]  # the tagger may cut a span otherwise
    assert len(exact) >= len(back) / 2
    mismatched = [
        (sid, e.text, e.boxes, gold[(sid, e.start, e.end)])
        for sid, e in exact
        if not _same(e.boxes, gold[(sid, e.start, e.end)])
    ]
    assert not mismatched


def _same(boxes, other) -> bool:
    def pixels(bs):
        return [(round(b.xmin), round(b.ymin), round(b.xmax), round(b.ymax)) for b in bs]

    return pixels(boxes) == pixels(other)


def test_diverse_spreads_a_batch_over_topics():
    """Risk 3.0 and 2.9 on one topic (cosine 0.7), 2.0 on another: the second pick is the other topic."""
    from refineg.select import Context, Rated, _diverse

    posts = [Sample(f"p{k}", (f"w{k}",)) for k in range(3)]
    vecs = {"p0": [1.0, 0.0, 0.0], "p1": [0.7, 0.714, 0.0], "p2": [0.0, 0.0, 1.0]}
    pool = [Rated(s, None, risk, 0.0) for s, risk in zip(posts, (3.0, 2.9, 2.0))]
    ctx = Context(lambda samples: np.array([vecs[s.id] for s in samples]), labelled=[])
    assert [r.sample.id for r in _diverse(pool, 2, ctx)] == ["p0", "p2"]
    near_labelled = Context(
        lambda samples: np.array([vecs.get(s.id, [0.0, 0.0, 1.0]) for s in samples]), [Sample("l", ("x",))]
    )
    assert [r.sample.id for r in _diverse(pool, 3, near_labelled)] == ["p0", "p1"]  # p2 repeats a labelled post
