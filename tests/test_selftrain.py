"""Self-training: which pseudo-labels are trusted, that dev is never pseudo-labelled, the unlabeled readers,
and `refineg train --unlabeled` end to end on real tweets (a tiny schedule: it measures nothing)."""

import json

import pytest

from refineg.config import SelfTrainConfig
from refineg.data import load_unlabeled, save_samples
from refineg.errors import DataError
from refineg.selftrain import fresh_posts, pseudo_labelled
from refineg.types import Entity, Prediction, Sample


def _post(i: int) -> Sample:
    return Sample(f"u{i}", tuple(f"w{i}_{k}" for k in range(4)))


def _pred(i: int, scores: list[float], missing: float = 0.0) -> Prediction:
    ents = tuple(
        Entity(f"w{i}_{k}", "PER", k, k + 1, score=s, source="tagger", decision="keep") for k, s in enumerate(scores)
    )
    return Prediction(f"u{i}", ents, missing_score=missing)


def test_a_post_is_used_only_when_every_entity_is_trusted_and_none_seems_missing():
    posts = [_post(i) for i in range(6)]
    preds = [
        _pred(0, [0.95, 0.99]),
        _pred(1, [0.95, 0.5]),
        _pred(2, [0.97], missing=0.8),
        _pred(3, []),
        _pred(4, [], missing=0.9),
        _pred(5, [0.93]),
    ]
    cfg = SelfTrainConfig(entity_score=0.9, empty_share=0.5)
    kept, counts = pseudo_labelled(posts, preds, cfg, missing_threshold=0.5, seed=1)
    assert all(not unknown for _, unknown in kept)
    kept = [s for s, _ in kept]
    assert sorted(s.id for s in kept) == ["u0", "u3", "u5"]
    assert counts["uncertain_entity"] == 1 and counts["maybe_missing_an_entity"] == 2
    ents = [e for s in kept for e in s.entities]
    assert all(e.source == "pseudo" and e.score is None and e.decision is None for e in ents)
    assert [(e.start, e.end, e.type) for e in next(s for s in kept if s.id == "u0").entities] == [
        (0, 1, "PER"),
        (1, 2, "PER"),
    ]


def test_posts_without_entities_are_capped_and_the_round_is_capped():
    posts = [_post(i) for i in range(40)]
    preds = [_pred(i, [0.99] if i < 10 else []) for i in range(40)]
    kept, _ = pseudo_labelled(posts, preds, SelfTrainConfig(empty_share=0.3), 0.5, seed=1)
    assert sum(1 for s, _ in kept if s.entities) == 10 and sum(1 for s, _ in kept if not s.entities) == 4
    kept, _ = pseudo_labelled(posts, preds, SelfTrainConfig(empty_share=0.3, max_sentences=5), 0.5, seed=1)
    assert len(kept) == 5


def test_a_partly_trusted_post_keeps_its_trusted_entities_and_leaves_the_doubtful_words_unknown():
    posts = [_post(i) for i in range(4)]
    # u0: entity 1 doubtful; u1: word 3 may be a missed entity; u2: no trusted entity; u3: wholly trusted
    preds = [_pred(0, [0.95, 0.5]), _pred(1, [0.97], missing=0.8), _pred(2, [0.4]), _pred(3, [0.99])]
    probs = [[0.99, 0.6, 0.1, 0.0], [0.99, 0.0, 0.2, 0.8], [0.5, 0.0, 0.0, 0.0], [0.99, 0.0, 0.0, 0.0]]
    cfg = SelfTrainConfig(entity_score=0.9, empty_share=0.0)
    kept, counts = pseudo_labelled(posts, preds, cfg, 0.5, seed=1, entity_prob=probs)
    by_id = {s.id: ([(e.start, e.end) for e in s.entities], sorted(u)) for s, u in kept}
    assert by_id == {"u0": ([(0, 1)], [1]), "u1": ([(0, 1)], [3]), "u3": ([(0, 1)], [])}
    assert counts["partly_trusted"] == 2 and counts["trusted_with_entities"] == 1 and counts["uncertain_entity"] == 1
    assert counts["unknown_words"] == 2
    off, _ = pseudo_labelled(posts, preds, cfg.model_copy(update={"partial": False}), 0.5, seed=1, entity_prob=probs)
    assert [s.id for s, _ in off] == ["u3"]


def test_dev_and_labelled_posts_are_never_pseudo_labelled_even_under_another_id(caplog):
    dev = [Sample("d1", ("A", "dev", "post"))]
    train = [Sample("t1", ("A", "train", "post"))]
    unlabeled = [
        Sample("x1", ("a", "DEV", "post")),
        Sample("t1", ("other",)),
        Sample("x2", ("new", "post")),
        Sample("x3", ("new", "post")),
        Sample("x4", ()),
    ]
    assert [s.id for s in fresh_posts(unlabeled, train, dev)] == ["x2"]
    assert "1 unlabeled post(s) left out: they have the id of a labelled or dev post" in caplog.text  # t1


def test_unlabeled_posts_come_as_plain_text_jsonl_or_a_split(tmp_path, twitter_dev):
    txt = tmp_path / "posts.txt"
    txt.write_text("RT @user : Obama visits Paris\n\n  second post here  \n", encoding="utf-8")
    posts = load_unlabeled(txt)
    assert [s.tokens for s in posts] == [
        ("RT", "@", "user", ":", "Obama", "visits", "Paris"),
        ("second", "post", "here"),
    ]
    assert [s.id for s in posts] == ["unlabeled-1", "unlabeled-3"]
    jsonl = tmp_path / "posts.jsonl"
    save_samples([Sample("j1", ("Obama", "here"), (Entity("Obama", "PER", 0, 1),))], jsonl)
    assert load_unlabeled(jsonl) == [Sample("j1", ("Obama", "here"))]
    split = load_unlabeled(twitter_dev)
    assert len(split) > 1000 and not any(s.entities for s in split)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl: no posts"):
        load_unlabeled(tmp_path / "empty.jsonl")
    named_txt = tmp_path / "posts-as-json.txt"  # JSON lines under a .txt name: read as JSONL, not as words
    named_txt.write_text('\n{"text": "Obama here", "entities": []}\n{"tokens": ["again"]}\n', encoding="utf-8")
    assert [s.tokens for s in load_unlabeled(named_txt)] == [("Obama", "here"), ("again",)]
    named_txt.write_text('["Obama", "here"]\n"a quoted post"\n', encoding="utf-8")
    assert [s.tokens for s in load_unlabeled(named_txt)] == [("Obama", "here"), ("a", "quoted", "post")]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfe broken\n")
    with pytest.raises(DataError, match="bad.txt:2"):
        load_unlabeled(bad)


@pytest.mark.parametrize(
    "name, text",
    [
        ("untagged-split.txt", "IMGID:17\nObama\nvisits\nParis\n\nIMGID:18\nHello\nworld\n\n"),
        ("tagged-no-ids.txt", "Obama\tB-PER\nvisits\tO\nParis\tB-LOC\n\nHello\tO\nworld\tO\n"),
        ("conll2003-style.conll", "Obama NNP B-PER\nvisits VBZ O\nParis NNP B-LOC\n\n\nHello UH O\nworld NN O\n"),
        ("one-token-a-line.txt", "Obama\nvisits\nParis\n\nHello\nworld\n"),
    ],
)
def test_token_per_line_files_are_posts_not_lines(tmp_path, name, text):
    (tmp_path / name).write_text(text, encoding="utf-8")
    posts = load_unlabeled(tmp_path / name)
    assert [s.tokens for s in posts] == [("Obama", "visits", "Paris"), ("Hello", "world")]
    assert not any(s.entities for s in posts)
    assert [s.id for s in posts][0] == ("17" if name.startswith("untagged") else "unlabeled-1")


def test_train_with_unlabeled_posts_self_trains_and_says_which_setting(self_training):
    res = self_training.result
    assert "setting: 80 labelled + 50 unlabeled (self-training)" in res.stdout
    assert "self-training round 1:" in res.stdout
    meta = json.loads((self_training.folder / "whole" / "meta.json").read_text())
    assert meta["setting"] == "80 labelled + 50 unlabeled (self-training)"
    first = meta["selftraining"]["rounds"][0]
    assert first["unlabeled_posts"] == 50 and first["pseudo"]["used"] > 0
    assert first["kept"] == (first["dev_f1_after"] > first["dev_f1_before"])
    from refineg.tagger.tagger import Tagger

    assert Tagger.load(self_training.folder / "whole").corpus.posts == 50  # the gate's corpus signal travels with it
