"""Corpus counts: how a tagger labelled unlabeled posts, per entity text (a signal for the gate's score model)."""

import math

import pytest

from refineg.errors import ConfigError
from refineg.tagger.corpus import CorpusCounts
from refineg.types import Entity, Prediction


def _pred(i: int, text: str, spans: list[tuple[int, int, str]]) -> Prediction:
    tokens = tuple(text.split())
    return Prediction(f"p{i}", tuple(Entity(" ".join(tokens[a:b]), t, a, b) for a, b, t in spans), tokens=tokens)


def _counts() -> CorpusCounts:
    return CorpusCounts.of(
        [
            _pred(0, "I love New York", [(2, 4, "LOC")]),
            _pred(1, "new  york is big", [(0, 2, "LOC")]),
            _pred(2, "NEW YORK signs Smith", [(0, 2, "ORG"), (3, 4, "PER")]),
            _pred(3, "back in new york again", []),  # a mention the tagger left untagged
        ]
    )


def test_counts_say_how_consistently_a_text_was_tagged_wherever_it_occurs():
    counts = _counts()
    assert counts.posts == 4
    assert counts.tagged["new york"] == {"LOC": 2, "ORG": 1} and counts.mentions["new york"] == 4
    log_tagged, same_type, tagged_share = counts.features("New  York", "LOC")
    assert log_tagged == pytest.approx(math.log1p(3))
    assert same_type == pytest.approx(2 / 3) and tagged_share == pytest.approx(3 / 4)
    assert counts.features("new york", "ORG")[1] == pytest.approx(1 / 3)
    assert counts.features("Smith", "PER") == (pytest.approx(math.log1p(1)), 1.0, 1.0)
    assert counts.features("Boston", "LOC") == (0.0, 0.0, 0.0)


def test_counts_survive_a_round_trip_and_a_damaged_file_is_named(tmp_path):
    counts = _counts()
    counts.save(tmp_path / "corpus.json")
    assert CorpusCounts.load(tmp_path / "corpus.json") == counts
    (tmp_path / "corpus.json").write_text('{"posts": 4, "tagged": []}')
    with pytest.raises(ConfigError, match=r"corpus\.json: damaged"):
        CorpusCounts.load(tmp_path / "corpus.json")
