"""The peers' file formats: told apart by their content, read and written back unchanged, bad input named."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from refineg.data import detect_format, load_predictions, load_samples, save_samples
from refineg.data.peers import read_unco
from refineg.errors import DataError

from ..eval.peer_cases import CASES, GOLD

REFINEG = str(Path(sys.executable).parent / "refineg")


@pytest.mark.parametrize(
    "fmt, name, kind",
    [
        ("unco", "g.json", "unco"),
        ("unco-pred", "p.json", "unco"),
        ("ccks-json", "c.json", "ccks-json"),
        ("riveg", "r.txt", "riveg"),
        ("jsonl", "j.json", "jsonl"),
        ("twitter", "t.txt", "twitter"),
    ],
)
def test_each_format_is_told_by_its_content(tmp_path, fmt, name, kind):
    save_samples(GOLD, tmp_path / name, fmt)
    assert detect_format(tmp_path / name) == kind


def test_unco_json_round_trips_entities_boxes_and_types(tmp_path):
    save_samples(GOLD, tmp_path / "g.json", "unco")
    rows = json.loads((tmp_path / "g.json").read_text())
    ann = [r for r in rows[0]["gt_entities"] if r["phrase"] == "Ann"]
    assert len(ann) == 2 and ann[0]["end"] == 2 and ann[0]["start"] == 2  # a row per box, the end inclusive
    assert [r["entity_type"] for r in rows[3]["gt_entities"]] == ["ORG", "MISC"]  # OTHER is their MISC
    back, kind = read_unco(tmp_path / "g.json")
    assert kind == "gold" and [s.entities for s in back] == [s.entities for s in GOLD]
    assert [s.id for s in back] == [s.id for s in GOLD] and back[0].image == "a.jpg"


def test_predictions_come_back_from_every_predictions_format(tmp_path):
    preds = CASES["boxes too often"]
    for fmt, name in (("unco-pred", "p.json"), ("ccks-json", "p.ccks.json"), ("riveg", "p.txt"), ("jsonl", "p.jsonl")):
        save_samples(preds, tmp_path / name, fmt)
        back = {p.id: p for p in load_predictions(tmp_path / name)}
        for p in preds:
            got = back.get(p.id)
            assert got is not None or not p.entities, (fmt, p.id)
            if got is not None:
                assert [(e.text, e.type, e.boxes) for e in got.entities] == [
                    (e.text, e.type, e.boxes) for e in p.entities
                ], fmt


@pytest.mark.parametrize(
    "text, says",
    [
        ("[1, 2]", "item 0: a post must be a JSON object"),
        ('[{"tokens": ["a"], "image_id": "x.jpg"}]', "item 0: needs gt_entities or pre_entities"),
        (
            '[{"tokens": ["a"], "image_id": "x.jpg", "gt_entities": [{"start": 0, "end": 3, "entity_type": "PER", '
            '"region_box": []}]}]',
            "end 3 is past the post's 1 tokens",
        ),
        (
            '[{"tokens": ["a"], "image_id": "x.jpg", "gt_entities": [{"start": 0, "end": 0, "entity_type": "PER", '
            '"region_box": [1, 2, 3]}]}]',
            "a box must be four finite numbers",
        ),
        (
            '[{"tokens": ["a"], "image_id": "x.jpg", "gt_entities": []}, {"tokens": ["a"], "image_id": "x.jpg", '
            '"pre_entities": []}]',
            "mixes gt_entities and pre_entities",
        ),
    ],
)
def test_a_malformed_unco_file_is_one_clear_error(tmp_path, text, says):
    (tmp_path / "bad.json").write_text(text)
    res = subprocess.run([REFINEG, "stats", str(tmp_path / "bad.json")], capture_output=True, text=True)
    assert res.returncode == 2 and says in res.stderr and "bad.json" in res.stderr and "Traceback" not in res.stderr


def test_a_malformed_riveg_line_names_its_line(tmp_path):
    (tmp_path / "r.txt").write_text("a.jpg###Bob(PER)###a man###2###&[1, 2, 3, 4]\nno separators here\n")
    with pytest.raises(DataError, match=r"r.txt:2: a RiVEG line is"):
        load_samples(tmp_path / "r.txt")


def test_convert_evaluate_and_report_take_the_peers_formats(tmp_path):
    save_samples(GOLD, tmp_path / "gold.jsonl")
    save_samples(CASES["wrong boxes"], tmp_path / "pred.jsonl")
    for to, name in (("unco-pred", "pred.json"), ("ccks-json", "pred.ccks.json"), ("riveg", "pred.txt")):
        res = subprocess.run(
            [REFINEG, "convert", str(tmp_path / "pred.jsonl"), str(tmp_path / name), "--to", to],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr
    scores = {}
    for name in ("pred.jsonl", "pred.json", "pred.ccks.json", "pred.txt"):
        res = subprocess.run(
            [REFINEG, "evaluate", str(tmp_path / "gold.jsonl"), str(tmp_path / name), "--json"],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr
        scores[name] = json.loads(res.stdout)["gmner"]["f1"]
    assert len(set(scores.values())) == 1, scores  # the same predictions, whatever the file format
    res = subprocess.run(
        [
            REFINEG,
            "report",
            str(tmp_path / "pred.json"),
            "--gold",
            str(tmp_path / "gold.jsonl"),
            "--out",
            str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert "Figures by the hindex protocol" in (tmp_path / "report" / "index.html").read_text()
