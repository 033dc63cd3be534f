"""`refineg ground` against a replay server that answers like each model family: boxes come back in
original pixels whatever the dialect, the frame (Qwen2.5-VL resizes to multiples of 28) or the reasoning."""

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from refineg.llm.families import FAMILIES, resolve
from refineg.testing.fake_openai import FakeOpenAIServer, Reply
from refineg.types import Box

REFINEG = str(Path(sys.executable).parent / "refineg")
SIZE = (1200, 801)  # sent at 1000x668 (and at 1008x672 in Qwen2.5-VL's frame)
TRUTH = Box(240, 120, 720, 600)


def _sent_size(body) -> tuple[int, int]:
    url = [p for p in body["messages"][0]["content"] if p.get("type") == "image_url"][-1]["image_url"]["url"]
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size


def _n(scale, v, side):
    return round(v / side * scale)


def reply_for(family: str, body) -> str:
    """What a model of that family answers for TRUTH, in its own convention and shape."""
    w, h = SIZE
    sw, sh = _sent_size(body)
    px = [
        round(TRUTH.xmin * sw / w),
        round(TRUTH.ymin * sh / h),
        round(TRUTH.xmax * sw / w),
        round(TRUTH.ymax * sh / h),
    ]
    k = [_n(1000, TRUTH.xmin, w), _n(1000, TRUTH.ymin, h), _n(1000, TRUTH.xmax, w), _n(1000, TRUTH.ymax, h)]
    d = [_n(999, TRUTH.xmin, w), _n(999, TRUTH.ymin, h), _n(999, TRUTH.xmax, w), _n(999, TRUTH.ymax, h)]
    return {
        "qwen2.5-vl": f'```json\n[\n\t{{"bbox_2d": {px}, "label": "Kevin Durant"}}\n]\n```',
        "qwen3-vl": f"<think>The man at {px} in pixels...</think>\n"
        f'```json\n[{{"bbox_2d": {k}, "label": "Kevin Durant"}}]\n```',
        "qwen2-vl": f"Kevin Durant({k[0]},{k[1]}),({k[2]},{k[3]})",
        "internvl": f"<ref>Kevin Durant</ref><box>[{k}]</box>",
        "glm-4v": f"<think>left side</think><answer>Kevin Durant: <|begin_of_box|>[{k}]<|end_of_box|></answer>",
        "deepseek-vl2": f"<|ref|>Kevin Durant<|/ref|><|det|>[{d}]<|/det|>",
        "gemini": f'```json\n[\n  {{"box_2d": [{k[1]}, {k[0]}, {k[3]}, {k[2]}], "label": "Kevin Durant"}}\n]\n```',
        "gpt-4o": "The player is on the left.\n"
        f'```json\n{{"entities": [{{"text": "Kevin Durant", "type": "PER", "boxes": [{px}]}}]}}\n```',
        "claude": f'{{"bbox": {{"x_min": {px[0]}, "y_min": {px[1]}, "x_max": {px[2]}, "y_max": {px[3]}}}, '
        '"label": "Kevin Durant"}',
        "minicpm-v": f"<ref>Kevin Durant</ref><box>{k[0]} {k[1]} {k[2]} {k[3]}</box>",
        "kimi-vl": f'◁think▷...◁/think▷{{"bbox": {[round(v / 1000, 3) for v in k]}, "label": "Kevin Durant"}}',
        "cogvlm": "A man [[" + ",".join(f"{v:03d}" for v in k) + "]]",
    }[family]


@pytest.fixture()
def one_post(tmp_path):
    img = tmp_path / "images"
    img.mkdir()
    Image.new("RGB", SIZE, (30, 90, 160)).save(img / "p1.jpg")
    data = tmp_path / "data.jsonl"
    data.write_text(
        json.dumps(
            {
                "id": "p1",
                "tokens": ["Kevin", "Durant", "joins", "the", "Warriors"],
                "image": "p1.jpg",
                "entities": [{"start": 0, "end": 2, "type": "PER", "boxes": [[1, 1, 5, 5]]}],
            }
        )
        + "\n"
    )
    return data, img


@pytest.mark.parametrize("family", [f.name for f in FAMILIES])
def test_refineg_ground_maps_every_family_back_to_original_pixels(family, one_post, tmp_path):
    data, img = one_post
    out = tmp_path / "out.jsonl"
    with FakeOpenAIServer(default=lambda body: Reply(reply_for(family, body))) as srv:
        res = subprocess.run(
            [
                REFINEG,
                "ground",
                "--data",
                str(data),
                "--images",
                str(img),
                "--out",
                str(out),
                "--llm-base-url",
                srv.base_url,
                "--llm-model",
                "some-model",
                "--llm-box-format",
                family,
                "--cache-dir",
                str(tmp_path / "cache"),
                "--quiet",
            ],
            capture_output=True,
            text=True,
        )
        sent = _sent_size(srv.requests[0])
    assert res.returncode == 0, res.stderr
    row = json.loads(out.read_text())
    (box,) = row["entities"][0]["boxes"]
    assert Box(*box).iou(TRUTH) > 0.97, (family, box)
    assert sent == ((1008, 672) if family == "qwen2.5-vl" else (1000, 668))
    assert resolve(family, None).family.name in res.stdout  # the summary says which dialect was used


def test_auto_picks_the_family_from_the_model_name():
    cases = {
        "Qwen/Qwen2.5-VL-7B-Instruct": "qwen2.5-vl",
        "Qwen/Qwen2-VL-72B": "qwen2-vl",
        "qwen3-vl-plus": "qwen3-vl",
        "OpenGVLab/InternVL3-8B": "internvl",
        "zai-org/GLM-4.5V": "glm-4v",
        "deepseek-ai/deepseek-vl2-small": "deepseek-vl2",
        "gemini-2.5-pro": "gemini",
        "gpt-4o-mini": "gpt-4o",
        "claude-sonnet-4": "claude",
        "openbmb/MiniCPM-V-2_6": "minicpm-v",
        "moonshotai/Kimi-VL-A3B-Instruct": "kimi-vl",
        "THUDM/cogvlm2": "cogvlm",
        "llava-1.5": "pixels",
    }
    for model, family in cases.items():
        assert resolve("auto", model).family.name == family, model
    assert "matches no known family" in resolve("auto", "llava-1.5").note
    assert resolve("Qwen2_5_VL", None).family.name == "qwen2.5-vl"  # a spelling of a family is taken as that family


def test_a_box_past_the_edge_is_clipped_and_counted_and_flat_ones_are_dropped(one_post, tmp_path):
    data, img = one_post
    out = tmp_path / "out.jsonl"
    reply = (
        '[{"bbox_2d": [500, 300, 1100, 700], "label": "Kevin Durant"}, '
        '{"bbox_2d": [10, 10, 10, 50], "label": "Kevin Durant"}]'
    )
    with FakeOpenAIServer(default=lambda body: Reply(reply)) as srv:
        res = subprocess.run(
            [
                REFINEG,
                "ground",
                "--data",
                str(data),
                "--images",
                str(img),
                "--out",
                str(out),
                "--llm-base-url",
                srv.base_url,
                "--llm-model",
                "m",
                "--cache-dir",
                str(tmp_path / "c"),
                "--quiet",
            ],
            capture_output=True,
            text=True,
        )
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text())["entities"][0]["boxes"] == [
        [600, pytest.approx(359.73), 1200, 801]
    ]  # x1.2, clipped
    summary = json.loads(Path(str(out) + ".summary.json").read_text())
    assert (
        summary["counts"]["grounding_box_clipped"] == 1 and summary["counts"]["grounding_box_dropped_degenerate"] == 1
    )
