"""The reply reader on plain strings, in the shapes real MLLMs answer (published model cards and cookbooks)."""

import pytest

from refineg.errors import ParseError
from refineg.llm.replies import answer_text, read_boxes

B = (221.0, 423.0, 569.0, 886.0)


def boxes(text, fits=None):
    return [(b.label, b.values) for b in read_boxes(text, fits).boxes]


@pytest.mark.parametrize(
    "reply",
    [
        # Qwen2.5-VL / Qwen3-VL: a fenced JSON list of bbox_2d items
        '```json\n[\n\t{"bbox_2d": [221, 423, 569, 886], "label": "Kevin Durant"}\n]\n```',
        # Qwen2-VL with its special tokens kept, and with vLLM having stripped them
        "<|object_ref_start|>Kevin Durant<|object_ref_end|><|box_start|>(221,423),(569,886)<|box_end|>",
        "Kevin Durant(221,423),(569,886)",
        # InternVL, DeepSeek-VL2 (kept and stripped), MiniCPM-V, CogVLM (zero-padded), GLM-4.xV
        "<ref>Kevin Durant</ref><box>[[221, 423, 569, 886]]</box>",
        "<|ref|>Kevin Durant<|/ref|><|det|>[[221, 423, 569, 886]]<|/det|>",
        "Kevin Durant[[221, 423, 569, 886]]",
        "<ref>Kevin Durant</ref><box>221 423 569 886</box>",
        "Kevin Durant [[221,423,569,886]]",
        "<think>He is on the left.</think>"
        "<answer>Kevin Durant: <|begin_of_box|>[[221,423,569,886]]<|end_of_box|></answer>",
        # GPT-4o / Claude: our JSON, or their own keys, after prose
        "Here it is:\n"
        '```json\n{"entities": [{"text": "Kevin Durant", "type": "PER", "boxes": [[221, 423, 569, 886]]}]}\n```',
        "The player is visible.\n"
        '{"bbox": {"x_min": 221, "y_min": 423, "x_max": 569, "y_max": 886}, "label": "Kevin Durant"}',
        '{"objects": [{"description": "Kevin Durant", "coordinates": [221, 423, 569, 886]}]}',
        '[{"bbox_2d": [221, 423, 569, 886], "name_en": "Kevin Durant"}]',
        '[{"bbox_2d": [221, 423, 569, 886], "names": {"zh": "凯文·杜兰特", "en": "Kevin Durant"}}]',
        '{"Kevin Durant": [221, 423, 569, 886]}',
    ],
)
def test_every_dialect_gives_the_labelled_box(reply):
    got = boxes(reply)
    assert (
        (got[0][0] or "").endswith("Kevin Durant") or "Kevin Durant" in (got[0][0] or "") or got[0][0] == "凯文·杜兰特"
    )
    assert got[0][1] == B and len(got) == 1


def test_cogvlm_zero_padding_and_several_boxes_separated_by_semicolons():
    assert boxes("A player [[097,423,569,886;600,100,700,200]]") == [
        ("A player", (97.0, 423.0, 569.0, 886.0)),
        ("A player", (600.0, 100.0, 700.0, 200.0)),
    ]


def test_numbers_inside_reasoning_are_never_read_as_boxes():
    text = (
        "<think>maybe [10, 20, 30, 40] or (1,2),(3,4)</think>\n" + '[{"bbox_2d": [221, 423, 569, 886], "label": "x"}]'
    )
    assert boxes(text) == [("x", B)]
    assert answer_text("reasoning [1,2,3,4] here</think>final") == "final"  # only the closing tag was emitted
    assert answer_text("<think>still thinking [1, 2, 3, 4]") == ""  # cut inside the reasoning: no answer
    with pytest.raises(ParseError, match="empty after its reasoning"):
        read_boxes("<think>the box is [1, 2, 3, 4] ...")
    assert boxes("◁think▷[1,2,3,4]◁/think▷" + '{"bbox": [0.1, 0.2, 0.3, 0.4], "label": "y"}') == [
        ("y", (0.1, 0.2, 0.3, 0.4))
    ]


def test_invalid_json_is_repaired():
    assert boxes('{ {"bbox_2d": [221, 423, 569, 886], "label": "x"}') == [("x", B)]  # a stray brace
    assert boxes('```json\n[{"bbox_2d": [221, 423, 569, 886], "label": "x"},') == [("x", B)]  # cut, fence left open
    assert boxes('[{"bbox_2d": [221, 423, 569, 886], label: "x",}]') == [("x", B)]  # unquoted key, trailing comma
    assert boxes('[{"bbox_2d": [097, 423, 569, 886], "label": "x"}]') == [("x", (97.0, 423.0, 569.0, 886.0))]


def test_truncated_tags():
    assert boxes("<ref>x</ref><box>[[221, 423, 569, 886]]") == [("x", B)]  # closing tag cut, box complete
    with pytest.raises(ParseError):  # cut inside the numbers: the last one may be short
        read_boxes("<|box_start|>(221,423),(569,88")


def test_bad_boxes_are_rejected_one_at_a_time():
    reading = read_boxes(
        '{"entities": [{"text": "x", "boxes": [[1, 2, 3], null, "[221, 423, 569, 886]", [1, "a", 3, 4], '
        "[221, 423, 569, 886]]}]}"
    )
    assert [(b.label, b.values) for b in reading.boxes] == [("x", B)]  # the stringified box equals the last one
    assert reading.counts["box_rejected_shape"] == 2 and reading.counts["box_rejected_not_numeric"] == 1


def test_points_are_counted_not_read_as_boxes():
    reading = read_boxes('[{"point_2d": [300, 500], "label": "x"}, {"bbox_2d": [221, 423, 569, 886], "label": "y"}]')
    assert [b.label for b in reading.boxes] == ["y"] and reading.counts["points_ignored"] == 1


def test_of_two_json_blocks_the_one_that_fits_the_convention_wins():
    text = (
        'Normalised: ```json\n[{"bbox_2d": [0.2, 0.4, 0.5, 0.8], "label": "x"}]\n```\n'
        'In pixels: ```json\n[{"bbox_2d": [221, 423, 569, 886], "label": "x"}]\n```'
    )
    assert boxes(text, fits=lambda v: max(v) <= 1.0) == [("x", (0.2, 0.4, 0.5, 0.8))]
    assert boxes(text, fits=lambda v: max(v) > 1.0) == [("x", B)]
    # one block per entity: both are kept
    two = '```json\n{"label": "a", "bbox": [1, 2, 3, 4]}\n```\n```json\n{"label": "b", "bbox": [5, 6, 7, 8]}\n```'
    assert [b.label for b in read_boxes(two).boxes] == ["a", "b"]


def test_an_explicit_empty_answer_is_an_answer_and_prose_is_not():
    reading = read_boxes('{"entities": [{"text": "Texas", "type": "LOC", "boxes": []}]}')
    assert reading.boxes == [] and reading.empty_labels == ["Texas"]
    assert read_boxes("```json\n[]\n```").answered
    for bad in ("", "   ", "None of them is in the image."):
        with pytest.raises(ParseError):
            read_boxes(bad)


def test_boxes_come_out_in_the_replys_order_whatever_the_hash_seed():
    """A set of labels once decided the order: another process (a Ray actor, a rerun) wrote other rows."""
    import subprocess
    import sys

    code = (
        "from refineg.llm.replies import read_boxes; import json; "
        "r = read_boxes(json.dumps({'entities': [{'text': t, 'boxes': [[i, i, i + 9, i + 9]]} "
        "for i, t in enumerate(['Lou Reed', 'Mick Jagger', 'Bowie', 'Iggy', 'Nico', 'Cale'])]})); "
        "print([b.label for b in r.boxes])"
    )
    seen = {
        subprocess.run(
            [sys.executable, "-c", code], env={"PYTHONHASHSEED": str(seed)}, capture_output=True, text=True, check=True
        ).stdout
        for seed in range(6)
    }
    assert seen == {"['Lou Reed', 'Mick Jagger', 'Bowie', 'Iggy', 'Nico', 'Cale']\n"}
