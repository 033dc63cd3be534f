"""The combined refine + ground call: parse on plain strings, the merge safeguards, and one call per delegated post."""

import json

from PIL import Image

from refineg.data.images import prepare_image
from refineg.ground import combined
from refineg.llm.families import resolve
from refineg.llm.typesets import load_typeset
from refineg.types import Box, Entity, Prediction, Sample

TYPES = ("LOC", "ORG", "OTHER", "PER")
SAMPLE = Sample("s1", tuple("Ted Cruz met the Red Sox in Boston today".split()))
PRED = Prediction(
    "s1",
    (
        Entity("Ted Cruz", "PER", 0, 2, score=0.98, source="tagger", decision="keep"),
        Entity("Red", "ORG", 4, 5, score=0.31, source="tagger", decision="delegate"),
    ),
    delegated=True,
)
IMAGE = prepare_image(Image.new("RGB", (2000, 1000)), 1000)  # sent at 1000x500


def test_request_lists_kept_and_uncertain_entities_and_bounds_the_answer():
    req = combined.build_request(SAMPLE, PRED, IMAGE, [], load_typeset("twitter"))
    text = " ".join(p.get("text", "") for p in req.messages[0]["content"])
    assert '- KEPT: "Ted Cruz"' in text and '- UNCERTAIN: "Red"' in text and "POST: Ted Cruz met" in text
    assert "MISSED" not in text and req.stage == "combined"
    items = req.schema["properties"]["entities"]
    assert list(req.schema["properties"]) == ["reasoning", "entities"] and items["maxItems"] == 3
    assert items["items"]["properties"]["type"]["enum"] == ["PER", "ORG", "LOC", "OTHER"]


def test_one_answer_fixes_the_uncertain_entity_keeps_the_confident_one_and_boxes_both():
    reply = "Thinking...\n" + json.dumps(
        {
            "reasoning": "Red Sox is the team.",
            "entities": [
                {"text": "Ted Cruz", "type": "PER", "boxes": [[100, 50, 300, 250]]},
                {"text": "Red Sox", "type": "ORG", "boxes": [[500, 100, 900, 400], [1, 1, 1, 9]]},
                {"text": "Fenway Park", "type": "LOC", "boxes": []},  # not in the post
                {"text": "today", "type": "OTHER", "boxes": []},  # an addition nobody asked for
            ],
        }
    )
    answer = combined.parse(reply)
    done = combined.apply(SAMPLE, PRED, answer, IMAGE, TYPES)
    got = [(e.text, e.type, e.source, e.boxes) for e in done.prediction.entities]
    assert got == [
        ("Ted Cruz", "PER", "tagger", (Box(200, 100, 600, 500),)),
        ("Red Sox", "ORG", "mllm", (Box(1000, 200, 1800, 800),)),
    ]
    assert done.prediction.entities[0].score == 0.98  # the confident entity is the tagger's, untouched
    c = done.counts
    assert (
        c["kept_echoed"] == 1 and c["refine_rejected_not_in_text"] == 1 and c["refine_rejected_addition_not_asked"] == 1
    )
    assert c["box_dropped_degenerate"] == 1


def test_boxes_in_a_family_convention_are_mapped_back():
    gemini = resolve("gemini", None).family
    reply = json.dumps({"entities": [{"text": "Ted Cruz", "type": "PER", "boxes": [[100, 50, 500, 150]]}]})
    done = combined.apply(SAMPLE, PRED, combined.parse(reply, gemini, IMAGE), IMAGE, TYPES, gemini)
    assert done.prediction.entities[0].boxes == (Box(100, 100, 300, 500),)  # [ymin, xmin, ymax, xmax] of 1000
