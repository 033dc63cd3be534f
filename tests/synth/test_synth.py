"""Synthesis: validation of canned LLM answers served over real HTTP, and offline mention replacement."""

import json

from refineg.config import LLMConfig, RunConfig, SynthConfig
from refineg.data import load_samples
from refineg.llm.typesets import load_typeset
from refineg.synth import synthesize
from refineg.synth.replace import mention_replacement
from refineg.synth.task import parse
from refineg.testing.fake_openai import FakeOpenAIServer, Reply
from refineg.types import Entity, Sample

SEED = Sample(
    "seed1", ("Ted", "Cruz", "speaks", "in", "Texas"), (Entity("Ted Cruz", "PER", 0, 2), Entity("Texas", "LOC", 4, 5))
)
HELD_OUT = Sample("dev9", ("Ted", "Cruz", "speaks", "for", "me", "in", "Austin", "!"))

CANNED = {
    "samples": [
        {
            "text": "Ted Cruz visited Texas today",
            "entities": [{"text": "Ted Cruz", "type": "PER"}, {"text": "Texas", "type": "LOC"}],
        },
        {
            "text": "Ted Cruz visited",
            "entities": [{"text": "Ted Cruz", "type": "PER"}, {"text": "Ohio", "type": "LOC"}],
        },
        {
            "text": "Ted Cruz went to Texasville",
            "entities": [{"text": "Ted Cruz", "type": "PER"}, {"text": "Texas", "type": "LOC"}],
        },
        {
            "text": "Ted Cruz loves pizza",
            "entities": [{"text": "Ted Cruz", "type": "PER"}, {"text": "pizza", "type": "FOOD"}],
        },
        {"text": "ted cruz  visited TEXAS today!", "entities": [{"text": "TEXAS", "type": "LOC"}]},
        {"text": "Texas fans love Texas BBQ", "entities": [{"text": "Texas", "type": "loc"}]},
        {"text": "Ted Cruz speaks for me in Austin !", "entities": [{"text": "Ted Cruz", "type": "PER"}]},
        {
            "text": "RT @tedcruz: Vote for Ted Cruz's plan in #Texas http://t.co/abc",
            "entities": [{"text": "Ted Cruz", "type": "PER"}, {"text": "Texas", "type": "LOC"}],
        },
    ]
}


def _answer(body):
    prompt = body["messages"][0]["content"]
    if "SAME entities" in prompt:
        return Reply("Here you go:\n```json\n" + json.dumps(CANNED) + "\n```")
    return Reply('{"samples": "broken')  # the "new entities" request never parses


def _cfg(srv, tmp_path) -> RunConfig:
    return RunConfig(
        llm=LLMConfig(base_url=srv.base_url, model="replay", cache_dir=tmp_path, backoff_base=0.01),
        synth=SynthConfig(n_keep=8, n_new=4),
    )


def test_validation_handles_and_counts_every_bad_case(tmp_path):
    with FakeOpenAIServer(default=_answer) as srv:
        result = synthesize([SEED], _cfg(srv, tmp_path), exclude=[HELD_OUT], progress=False)
    s = result.summary
    assert s["dropped"] == {
        "duplicate_sentence": 1,
        "entity_inside_a_word": 1,
        "entity_not_in_text": 1,
        "leaks_excluded_data": 1,
        "unknown_type": 1,
    }
    assert s["kept"] == 3 and s["notes"]["extra_occurrences_tagged"] == 1
    assert s["failed_requests"] == 1 and s["llm"]["fallbacks"] == 1 and s["llm"]["reasks"] == 1
    by_text = {" ".join(x.tokens): x for x in result.samples}
    twice = by_text["Texas fans love Texas BBQ"]
    assert [(e.start, e.end, e.type) for e in twice.entities] == [(0, 1, "LOC"), (3, 4, "LOC")]
    tweet = by_text["RT @ tedcruz : Vote for Ted Cruz ' s plan in # Texas http://t. co/abc"]
    assert [(e.text, e.type) for e in tweet.entities] == [("Ted Cruz", "PER"), ("Texas", "LOC")]
    for x in result.samples:
        assert x.meta["source"] == "synthetic" and x.meta["seed_id"] == "seed1"
        for e in x.entities:
            assert " ".join(x.tokens[e.start : e.end]) == e.text and e.source == "synthetic"


def test_second_identical_run_is_served_entirely_from_the_cache(tmp_path):
    with FakeOpenAIServer(default=_answer) as srv:
        first = synthesize([SEED], _cfg(srv, tmp_path), progress=False)
        n = len(srv.requests)
        second = synthesize([SEED], _cfg(srv, tmp_path), progress=False)
        assert len(srv.requests) == n
    assert second.summary["llm"]["requests"] == 0 and second.summary["llm"]["cache_hits"] == n
    assert [x.tokens for x in second.samples] == [x.tokens for x in first.samples]


def test_seed_without_entities_asks_for_entity_free_sentences(tmp_path):
    from refineg.synth import llm_requests

    reqs = llm_requests([SEED, Sample("e", ("nice", "day"))], RunConfig())
    kinds = [r.key for r in reqs]
    assert kinds == ["seed1:keep", "seed1:new", "e:none"]
    assert "20 new" in reqs[0].messages[0]["content"] and "NO named entity" in reqs[2].messages[0]["content"]
    assert reqs[0].version == "1" and reqs[0].schema["required"] == ["samples"]


def test_mention_replacement_keeps_types_and_offsets(twitter_train):
    seeds = load_samples(twitter_train)[:200]
    out, summary = mention_replacement(seeds, per_sample=3, seed=1)
    assert summary["kept"] == len(out) > 300
    by_id = {s.id: s for s in seeds}
    for x in out:
        seed = by_id[x.meta["seed_id"]]
        assert [e.type for e in x.entities] == [e.type for e in sorted(seed.entities, key=lambda e: e.start)]
        for e in x.entities:
            assert " ".join(x.tokens[e.start : e.end]) == e.text
    again, _ = mention_replacement(seeds, per_sample=3, seed=1)
    assert again == out  # seeded


def test_mention_replacement_never_emits_excluded_text():
    from refineg.synth.validate import normalise

    seeds = [
        SEED,
        Sample("s2", ("Obama", "speaks", "in", "Ohio"), (Entity("Obama", "PER", 0, 1), Entity("Ohio", "LOC", 3, 4))),
    ]
    leak = normalise("Obama speaks in Texas")
    out, summary = mention_replacement(seeds, per_sample=5, seed=0, exclude={leak})
    assert all(normalise(x.text) != leak for x in out)


def test_parse_takes_the_last_json_object():
    text = 'draft {"samples": []} final {"samples": [{"text": "a b", "entities": []}]}'
    assert [s.text for s in parse(text)] == ["a b"]


def test_builtin_typesets_load():
    assert load_typeset("twitter").names == ("PER", "ORG", "LOC", "OTHER")
    assert load_typeset("ccks").names == ("vehicle", "aircraft", "vessel", "weapon", "location", "other")
