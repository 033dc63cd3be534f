import json
import re

import pytest

from refineg.data import load_samples, read_predictions, save_samples
from refineg.data.jsonl import read_posts, write_jsonl
from refineg.errors import DataError
from refineg.types import Box, Entity, Prediction, Sample


def _write(tmp_path, *lines):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(lines) + "\n")
    return f


def test_sample_round_trip_keeps_every_field(tmp_path):
    s = Sample(
        id="a1",
        tokens=("Tobey", "Maguire", "bowls"),
        image="a1.jpg",
        image_size=(702, 603),
        entities=(Entity("Tobey Maguire", "PER", 0, 2, (Box(16, 10, 348.5, 603),), 0.97, "tagger", "keep"),),
        meta={"source": "synthetic", "seed_id": "O_3498"},
    )
    write_jsonl([s], tmp_path / "x.jsonl")
    assert load_samples(tmp_path / "x.jsonl") == [s]
    line = json.loads((tmp_path / "x.jsonl").read_text())
    assert line["entities"][0]["boxes"] == [[16, 10, 348.5, 603]]


def test_prediction_without_offsets_or_tokens(tmp_path):
    f = _write(tmp_path, json.dumps({"id": 7, "entities": [{"text": "Ted  Cruz", "type": "PER", "boxes": []}]}))
    (p,) = read_predictions(f)
    assert p.id == "7" and p.entities[0].start is None and p.entities[0].text == "Ted  Cruz"


def test_text_only_sample_is_tokenised(tmp_path):
    f = _write(
        tmp_path, json.dumps({"id": "t", "text": "RT @bob_2: We're at Kiel's #Sox! http://t.co/x https://x.org/a"})
    )
    (s,) = load_samples(f)
    assert s.tokens == (
        "RT",
        "@",
        "bob",
        "_",
        "2",
        ":",
        "We",
        "'",
        "re",
        "at",
        "Kiel",
        "'",
        "s",
        "#",
        "Sox",
        "!",
        "http://t.",
        "co/x",
        "https://x.org/a",
    )


@pytest.mark.parametrize(
    "line, words",
    [
        ('{"id": "a", "tokens": ["x"]', "broken JSON"),
        ('{"tokens": ["x"], "entities": []}', "without an id"),
        (
            '{"id": "a", "tokens": ["x"], "entities": [{"start": 0, "end": 1, "type": "PER", '
            '"boxes": [[5, 5, 5, 9]]}]}',
            "degenerate box",
        ),
        ('{"id": "a", "tokens": ["x"], "entities": [{"start": 0, "end": 2, "type": "PER"}]}', "beyond the 1 tokens"),
        (
            '{"id": "a", "tokens": ["x"], "entities": [{"start": 0, "end": 1, "text": "y", "type": "PER"}]}',
            "does not match",
        ),
        ('{"id": "a", "tokens": ["x"], "entities": [{"start": 0, "end": 1, "type": "PER", "score": 1.5}]}', "score"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, line, words):
    f = _write(tmp_path, '{"id": "ok", "tokens": ["fine"]}', line)
    with pytest.raises(DataError) as info:
        load_samples(f)
    assert info.value.line == 2 and words in str(info.value) and "d.jsonl" in str(info.value)


def test_write_is_atomic_and_leaves_no_temp_file(tmp_path):
    save_samples([Sample("a", ("x",))], tmp_path / "o.jsonl")
    assert [p.name for p in tmp_path.iterdir()] == ["o.jsonl"]


def test_prediction_round_trip(tmp_path):
    p = Prediction("a", (Entity("x", "ORG", 0, 1, score=0.5, source="mllm"),), missing_score=0.25, delegated=True)
    write_jsonl([p], tmp_path / "p.jsonl")
    assert read_predictions(tmp_path / "p.jsonl") == [p]


def test_predictions_from_other_systems_may_name_their_own_source(tmp_path):
    f = _write(tmp_path, json.dumps({"id": "a", "entities": [{"text": "x", "type": "PER", "source": "h-index"}]}))
    assert read_predictions(f)[0].entities[0].source == "h-index"
    g = _write(
        tmp_path,
        json.dumps(
            {"id": "a", "tokens": ["x"], "entities": [{"start": 0, "end": 1, "type": "PER", "source": "h-index"}]}
        ),
    )
    with pytest.raises(DataError, match="unknown source"):
        load_samples(g)


def test_unlabeled_posts_need_no_id_keep_their_image_and_their_entities_are_not_read(tmp_path):
    f = _write(
        tmp_path,
        json.dumps({"tokens": ["Obama", "in", "Paris"], "image": "x.jpg"}),
        json.dumps({"id": 9, "text": "RT @a : hi", "entities": [{"type": "PER", "start": 5, "end": 2}]}),
        "",
        json.dumps({"text": "again", "entities": "not even a list", "lang": "en"}),
        '["just", "tokens"]',
        '"just text"',
    )
    assert read_posts(f) == [
        Sample("unlabeled-1", ("Obama", "in", "Paris"), image="x.jpg"),  # select writes it into Label Studio tasks
        Sample("9", ("RT", "@", "a", ":", "hi"), raw_text="RT @a : hi"),
        Sample("unlabeled-4", ("again",), raw_text="again"),
        Sample("unlabeled-5", ("just", "tokens")),
        Sample("unlabeled-6", ("just", "text"), raw_text="just text"),
    ]


@pytest.mark.parametrize(
    "line, words",
    [
        ('{"tokens": "Obama in Paris"}', "tokens: input should be a valid list"),
        ('{"id": "p1", "image": "x.jpg"}', "a post needs tokens or text"),
        ('{"tokens": ["a", 3]}', "tokens.1: input should be a valid string"),
        ('{"tokens": ["a"]', "broken JSON"),
        ("42", "a line must hold a post"),
        ('["a", 3]', "tokens.1: input should be a valid string"),
    ],
)
def test_a_bad_unlabeled_post_names_file_and_line(tmp_path, line, words):
    f = _write(tmp_path, '{"text": "fine"}', line)
    with pytest.raises(DataError, match=rf"d\.jsonl:2: {re.escape(words)}"):
        read_posts(f)
