"""Refinement: parse on plain strings, merge rules, and the task through the replay server (real HTTP)."""

import json

import pytest

from refineg.config import LLMConfig
from refineg.errors import ParseError
from refineg.llm import LLMClient
from refineg.llm.typesets import load_typeset
from refineg.refine import build_request, merge, parse
from refineg.testing.fake_openai import FakeOpenAIServer, Reply
from refineg.types import Entity, Prediction, Sample

TYPES = ("LOC", "ORG", "OTHER", "PER")
SAMPLE = Sample("s1", tuple("Ted Cruz met the Red Sox in Boston today".split()))
PRED = Prediction(
    "s1",
    (
        Entity("Ted Cruz", "PER", 0, 2, score=0.98, source="tagger", decision="keep"),
        Entity("Red", "ORG", 4, 5, score=0.31, source="tagger", decision="delegate"),
        Entity("Boston", "PER", 7, 8, score=0.40, source="tagger", decision="delegate"),
    ),
    delegated=True,
)


def test_parse_reads_the_last_object_and_rejects_malformed_answers():
    text = (
        'Red is part of "Red Sox". {"entities": [{"text": "x", "type": "ORG"}]} '
        'So: {"entities": [{"text": "Red Sox", "type": "ORG"}]}'
    )
    assert [(e.text, e.type) for e in parse(text)] == [("Red Sox", "ORG")]
    for bad in ('{"entities": [{"text": "Red Sox"}]}', '{"entities": "Red Sox"}', "no json", "<think>{}</think>"):
        with pytest.raises(ParseError):
            parse(bad)
    # broken JSON is repaired, and reasoning before the answer is never read as the answer
    assert parse('{"entities": [}') == []
    thought = (
        '<think>maybe {"entities": [{"text": "x", "type": "PER"}]}</think>'
        '{"reasoning": "r", "entities": [{"text": "Red Sox", "type": "ORG",}]'
    )
    assert [(e.text, e.type) for e in parse(thought)] == [("Red Sox", "ORG")]


def test_merge_fixes_uncertain_keeps_confident_and_rejects_hallucinations():
    refined = parse(
        json.dumps(
            {
                "entities": [
                    {"text": "Red Sox", "type": "ORG"},
                    {"text": "Boston", "type": "LOC"},
                    {"text": "Fenway Park", "type": "LOC"},  # not in the text
                    {"text": "today", "type": "DATE"},  # not a type of ours
                    {"text": "Cruz", "type": "PER"},  # overlaps a kept entity
                ]
            }
        )
    )
    merged = merge(SAMPLE, PRED, refined, TYPES)
    got = [(e.text, e.type, e.start, e.end, e.source, e.score) for e in merged.prediction.entities]
    assert got == [
        ("Ted Cruz", "PER", 0, 2, "tagger", 0.98),
        ("Red Sox", "ORG", 4, 6, "mllm", None),
        ("Boston", "LOC", 7, 8, "mllm", None),
    ]
    c = merged.counts
    assert c["rejected_not_in_text"] == 1 and c["rejected_unknown_type"] == 1 and c["rejected_overlaps"] == 1
    assert c["changed_or_added"] == 2 and c["dropped"] == 1  # "Red" is gone; "Boston" was retyped


def test_empty_refinement_drops_the_uncertain_entities_only():
    merged = merge(SAMPLE, PRED, [], TYPES)
    assert [e.text for e in merged.prediction.entities] == ["Ted Cruz"]


def test_request_marks_kept_and_uncertain_entities():
    req = build_request(SAMPLE, PRED, load_typeset("twitter"))
    text = req.messages[0]["content"][-1]["text"]
    assert '- KEPT: "Ted Cruz" (PER, tagger confidence 0.98)' in text
    assert '- UNCERTAIN: "Red" (ORG, tagger confidence 0.31)' in text
    assert "POST: Ted Cruz met the Red Sox in Boston today" in text and "step-by-step" in text
    assert req.stage == "refinement" and req.version == "2"
    assert "MISSED" not in text  # the gate did not flag this sample as missing an entity
    # the schema lets the model reason first, and bounds the types and the list
    props = req.schema["properties"]
    assert list(props) == ["reasoning", "entities"] and props["reasoning"]["maxLength"] > 0
    assert props["entities"]["items"]["properties"]["type"]["enum"] == ["PER", "ORG", "LOC", "OTHER"]
    assert props["entities"]["maxItems"] == 3
    flagged = build_request(SAMPLE, PRED.with_(maybe_missing=True), load_typeset("twitter"))
    assert (
        "MISSED" in flagged.messages[0]["content"][-1]["text"]
        and flagged.schema["properties"]["entities"]["maxItems"] == 5
    )


def test_additions_are_kept_only_where_the_gate_flagged_a_missing_entity():
    refined = parse(json.dumps({"entities": [{"text": "Red Sox", "type": "ORG"}, {"text": "today", "type": "OTHER"}]}))
    merged = merge(SAMPLE, PRED, refined, TYPES)
    assert [e.text for e in merged.prediction.entities] == ["Ted Cruz", "Red Sox"]
    assert merged.counts["rejected_addition_not_asked"] == 1
    merged = merge(SAMPLE, PRED.with_(maybe_missing=True), refined, TYPES)
    assert [e.text for e in merged.prediction.entities] == ["Ted Cruz", "Red Sox", "today"]


def _refine_over_http(srv, tmp_path):
    with LLMClient(LLMConfig(base_url=srv.base_url, model="m", cache_dir=tmp_path, backoff_base=0.01)) as client:
        res = client.ask(build_request(SAMPLE, PRED, load_typeset("twitter")), parse)
        usage = client.summary()["total"]
    merged = merge(SAMPLE, PRED, res.value, TYPES).prediction if res.ok else PRED
    return res, merged, usage


def test_scripted_refinement_over_http_fixes_the_uncertain_entity(tmp_path):
    answer = 'Step by step... {"entities": [{"text": "Red Sox", "type": "ORG"}, {"text": "Boston", "type": "LOC"}]}'
    with FakeOpenAIServer([Reply(answer)]) as srv:
        res, merged, _ = _refine_over_http(srv, tmp_path)
    assert res.ok
    assert [(e.text, e.type) for e in merged.entities] == [("Ted Cruz", "PER"), ("Red Sox", "ORG"), ("Boston", "LOC")]
    assert merged.entities[0] == PRED.entities[0]  # the confident entity is untouched


def test_broken_json_then_reask_then_fallback_keeps_the_tagger_entities(tmp_path):
    with FakeOpenAIServer([Reply('{"entities": [{"text": "Red'), Reply("I cannot answer.")]) as srv:
        res, merged, usage = _refine_over_http(srv, tmp_path)
        assert len(srv.requests) == 2
    assert not res.ok and res.reason == "parse" and usage["reasks"] == 1 and usage["fallbacks"] == 1
    assert merged == PRED
