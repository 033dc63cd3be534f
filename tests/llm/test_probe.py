"""llm-check's grounding probe: which box convention an answer fits, tested on replayed answers over real HTTP."""

import json

import pytest

from refineg.config import LLMConfig
from refineg.data.images import prepare_image
from refineg.llm.families import CONVENTIONS, resolve
from refineg.llm.probe import PROBE_BOX, check, detect, probe_image
from refineg.testing.fake_openai import FakeOpenAIServer, Reply

PROBE = prepare_image(probe_image(), 1000)  # 640x400, sent as is
x1, y1, x2, y2 = PROBE_BOX.xmin, PROBE_BOX.ymin, PROBE_BOX.xmax, PROBE_BOX.ymax
W, H = PROBE.original_size
N = [round(v) for v in (x1 / W * 1000, y1 / H * 1000, x2 / W * 1000, y2 / H * 1000)]

ANSWERS = {  # the probe's square, answered in each family's own way
    "pixels": f'```json\n[{{"bbox_2d": [{x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}], "label": "red square"}}]\n```',
    "norm1000": f"<ref>red square</ref><box>[[{N[0]}, {N[1]}, {N[2]}, {N[3]}]]</box>",
    "norm1000-yx": f'[{{"box_2d": [{N[1]}, {N[0]}, {N[3]}, {N[2]}], "label": "red square"}}]',
    "norm1": json.dumps({"bbox": [round(v / 1000, 3) for v in N], "label": "red square"}),
}


@pytest.mark.parametrize("convention", sorted(ANSWERS))
def test_detect_names_the_convention_of_each_answer(convention):
    got = detect(ANSWERS[convention], PROBE, CONVENTIONS[convention])
    assert got["detected"] == convention and got["matches"] and got["iou"][convention] > 0.9
    other = "norm1000" if convention == "pixels" else "pixels"
    assert not detect(ANSWERS[convention], PROBE, CONVENTIONS[other])["matches"]


def test_an_answer_off_the_square_or_without_boxes_cannot_ground():
    assert detect('{"bbox_2d": [0, 300, 50, 390]}', PROBE, CONVENTIONS["pixels"])["detected"] is None
    assert detect("I see a red square.", PROBE, CONVENTIONS["pixels"])["detected"] is None


def test_check_with_images_over_http_reports_a_refused_image_count_and_the_convention(tmp_path):
    gemini = resolve("gemini", None).family
    pong = Reply('{"answer": "pong"}')
    refused = Reply(
        status=400, raw_body=json.dumps({"error": {"message": "At most 1 image(s) may be provided in one request."}})
    )
    with FakeOpenAIServer([pong, refused, Reply(ANSWERS["norm1000-yx"])]) as srv:
        report = check(LLMConfig(base_url=srv.base_url, model="gemini-2.5-flash", cache_dir=tmp_path), images=4)
        probe_requests = srv.requests[1:]
    probe = report["probe"]
    assert report["reachable"] and report["box_format"] == gemini.name
    assert not report["ok"]  # K + 1 images do not fit: grounding with demos would fail
    assert not probe["images_accepted"] and "At most 1 image" in probe["images_error"]
    assert "--limit-mm-per-prompt" in probe["images_error"]
    assert [sum(p["type"] == "image_url" for p in r["messages"][0]["content"]) for r in probe_requests] == [4, 1]
    assert probe["detected"] == "norm1000-yx" and probe["matches"]
