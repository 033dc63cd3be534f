"""Every command over a table of broken inputs: one clean line on stderr naming the culprit, a non-zero
exit, no traceback, and no partial output. Each row builds its input in a fresh folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REFINEG = str(Path(sys.executable).parent / "refineg")
GOOD = {
    "id": "a",
    "tokens": ["Kevin", "Durant", "joins", "the", "Warriors"],
    "image": "a.jpg",
    "entities": [{"start": 0, "end": 2, "type": "PER", "boxes": [[1, 2, 30, 40]]}],
}


def jsonl(tmp: Path, *records, name="data.jsonl", raw: bytes | None = None) -> Path:
    path = tmp / name
    path.write_bytes(raw if raw is not None else "".join(json.dumps(r) + "\n" for r in records).encode())
    return path


def with_entity(**changes) -> dict:
    return {**GOOD, "entities": [{**GOOD["entities"][0], **changes}]}


def twitter_split(tmp: Path, conll: str, xml: str | None = None) -> Path:
    (tmp / "split" / "txt").mkdir(parents=True)
    (tmp / "split" / "xml").mkdir()
    (tmp / "split" / "txt" / "dev.txt").write_text(conll)
    if xml is not None:
        (tmp / "split" / "xml" / "a.xml").write_text(xml)
    return tmp / "split" / "txt" / "dev.txt"


CONLL = "IMGID:a\nKevin\tB-PER\nDurant\tI-PER\njoins\tO\n\n"
XML = (
    "<annotation><size><width>{w}</width><height>100</height></size><object><name>Kevin Durant</name>"
    "<bndbox><xmin>{x}</xmin><ymin>2</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object></annotation>"
)


def damaged_model(tmp: Path, model: Path, damage: Callable[[Path], None]) -> Path:
    copy = tmp / "model"
    shutil.copytree(model, copy)
    damage(copy)
    return copy


@dataclass
class Case:
    """argv built from a fresh folder (and the trained model); what stderr must say; outputs that must not exist."""

    name: str
    argv: Callable[[Path, Path], list]
    says: str
    no_output: tuple[str, ...] = ()
    code: int | None = None  # None: any non-zero
    extra: Callable[[Path], None] | None = field(default=None, repr=False)


CASES = [
    Case("entities not a list", lambda t, m: ["stats", jsonl(t, {**GOOD, "entities": 5})], "entities"),
    Case("boxes not a list", lambda t, m: ["stats", jsonl(t, with_entity(boxes=7))], "boxes"),
    Case("entity text a number", lambda t, m: ["stats", jsonl(t, with_entity(text=42))], "text"),
    Case("a box with three numbers", lambda t, m: ["stats", jsonl(t, with_entity(boxes=[[1, 2, 3]]))], "boxes"),
    Case("NaN in JSONL", lambda t, m: ["stats", jsonl(t, raw=b'{"id": "a", "tokens": ["x"], "width": NaN}\n')], "NaN"),
    Case(
        "score out of range",
        lambda t, m: ["evaluate", jsonl(t, GOOD), jsonl(t, with_entity(score=2), name="p.jsonl")],
        "score",
    ),
    Case(
        "invalid UTF-8", lambda t, m: ["stats", jsonl(t, raw=b'{"id": "a", "tokens": ["caf\xe9"]}\n')], "invalid UTF-8"
    ),
    Case("a line over 1 MB", lambda t, m: ["stats", jsonl(t, {"id": "a", "text": "word " * 250_000})], "longer than"),
    Case(
        "NaN box in VOC XML",
        lambda t, m: ["convert", twitter_split(t, CONLL, XML.format(w=100, x="nan")), t / "o.jsonl"],
        "non-finite",
        ("o.jsonl",),
    ),
    Case(
        "inf box in VOC XML", lambda t, m: ["stats", twitter_split(t, CONLL, XML.format(w=100, x="inf"))], "non-finite"
    ),
    Case(
        "a width that is a word",
        lambda t, m: ["stats", twitter_split(t, CONLL, XML.format(w="wide", x=1))],
        "image size must be numbers",
    ),
    Case(
        "three CoNLL columns", lambda t, m: ["stats", twitter_split(t, "IMGID:a\nKevin\tNNP\tB-PER\n\n")], "2 columns"
    ),
    Case(
        "an empty train file",
        lambda t, m: [
            "train",
            "--train",
            jsonl(t, raw=b""),
            "--dev",
            jsonl(t, GOOD, name="d.jsonl"),
            "--out",
            t / "m",
            "--quiet",
        ],
        "data.jsonl: no samples",
        ("m",),
    ),
    Case(
        "a broken unlabeled post",
        lambda t, m: [
            "train",
            "--train",
            jsonl(t, GOOD),
            "--dev",
            jsonl(t, GOOD, name="d.jsonl"),
            "--unlabeled",
            jsonl(t, raw=b'{"text": "fine"}\n{"tokens": "a b"}\n', name="u.jsonl"),
            "--out",
            t / "m",
            "--quiet",
        ],
        "u.jsonl:2: tokens",
        ("m",),
    ),
    Case("convert to .csv", lambda t, m: ["convert", jsonl(t, GOOD), t / "out.csv"], "output format", ("out.csv",)),
    Case(
        "convert onto another split's XML",
        lambda t, m: ["convert", jsonl(t, GOOD), twitter_split(t, CONLL, XML.format(w=100, x=1)).with_name("mine.txt")],
        "would overwrite",
        ("split/txt/mine.txt",),
        extra=lambda t: _assert_xml_untouched(t),
    ),
    Case(
        "predict --out a folder",
        lambda t, m: ["predict", "--model", m, "--data", jsonl(t, GOOD), "--out", _mkdir(t / "d")],
        "is a folder",
    ),
    Case(
        "train --out a file",
        lambda t, m: [
            "train",
            "--train",
            jsonl(t, GOOD),
            "--dev",
            jsonl(t, GOOD, name="d.jsonl"),
            "--out",
            _touch(t / "f"),
        ],
        "is a file",
    ),
    Case(
        "output in a missing folder",
        lambda t, m: ["predict", "--model", m, "--data", jsonl(t, GOOD), "--out", t / "nope" / "p.jsonl"],
        "parent folder does not exist",
    ),
    Case(
        "gguf and base URL",
        lambda t, m: [
            "run",
            "--model",
            m,
            "--data",
            jsonl(t, GOOD),
            "--out",
            t / "p.jsonl",
            "--llm-gguf",
            _touch(t / "x.gguf"),
            "--llm-base-url",
            "http://127.0.0.1:9/v1",
            "--llm-model",
            "m",
        ],
        "not both",
        ("p.jsonl",),
    ),
    Case(
        "base URL without a model",
        lambda t, m: [
            "run",
            "--model",
            m,
            "--data",
            jsonl(t, GOOD),
            "--out",
            t / "p.jsonl",
            "--llm-base-url",
            "http://127.0.0.1:9/v1",
        ],
        "needs --llm-model",
        ("p.jsonl",),
    ),
    Case(
        "negative per-sample",
        lambda t, m: ["synthesize", "--train", jsonl(t, GOOD), "--out", t / "s.jsonl", "--per-sample", "-2"],
        "per-sample",
        ("s.jsonl",),
    ),
    Case(
        "unknown box format",
        lambda t, m: [
            "ground",
            "--data",
            jsonl(t, GOOD),
            "--out",
            t / "g.jsonl",
            "--llm-base-url",
            "http://127.0.0.1:9/v1",
            "--llm-model",
            "m",
            "--llm-box-format",
            "xyz",
        ],
        "unknown box format",
        ("g.jsonl",),
    ),
    Case(
        "missing image folder",
        lambda t, m: [
            "predict",
            "--model",
            m,
            "--data",
            jsonl(t, GOOD),
            "--out",
            t / "p.jsonl",
            "--images",
            t / "no-images",
        ],
        "no such image folder",
        ("p.jsonl",),
    ),
    Case(
        "missing local encoder",
        lambda t, m: [
            "train",
            "--train",
            jsonl(t, GOOD),
            "--dev",
            jsonl(t, GOOD, name="d.jsonl"),
            "--out",
            t / "m",
            "--encoder",
            "./no/such/encoder",
        ],
        "no such encoder folder",
        ("m",),
    ),
    Case(
        "missing model folder",
        lambda t, m: ["predict", "--model", t / "none", "--data", jsonl(t, GOOD), "--out", t / "p.jsonl"],
        "no such model folder",
        ("p.jsonl",),
    ),
    Case(
        "corrupt gate.json",
        lambda t, m: [
            "predict",
            "--model",
            damaged_model(t, m, lambda d: (d / "gate.json").write_text("{")),
            "--data",
            jsonl(t, GOOD),
            "--out",
            t / "p.jsonl",
        ],
        "gate.json",
        ("p.jsonl",),
    ),
    Case(
        "missing labels.json",
        lambda t, m: [
            "predict",
            "--model",
            damaged_model(t, m, lambda d: (d / "labels.json").unlink()),
            "--data",
            jsonl(t, GOOD),
            "--out",
            t / "p.jsonl",
        ],
        "labels.json",
        ("p.jsonl",),
    ),
    Case(
        "truncated model.pt",
        lambda t, m: [
            "predict",
            "--model",
            damaged_model(t, m, _truncate),
            "--data",
            jsonl(t, GOOD),
            "--out",
            t / "p.jsonl",
        ],
        "model.pt",
        ("p.jsonl",),
    ),
    Case(
        "another tool's checkpoint",
        lambda t, m: [
            "predict",
            "--model",
            damaged_model(t, m, _foreign),
            "--data",
            jsonl(t, GOOD),
            "--out",
            t / "p.jsonl",
        ],
        "model.pt",
        ("p.jsonl",),
    ),
]


def _mkdir(p: Path) -> Path:
    p.mkdir()
    return p


def _touch(p: Path) -> Path:
    p.write_text("x")
    return p


def _truncate(d: Path) -> None:
    raw = (d / "model.pt").read_bytes()
    (d / "model.pt").write_bytes(raw[: len(raw) // 3])


def _foreign(d: Path) -> None:
    import torch

    torch.save({"layer.weight": torch.zeros(3, 3)}, d / "model.pt")


def _assert_xml_untouched(t: Path) -> None:
    assert (t / "split" / "xml" / "a.xml").read_text() == XML.format(w=100, x=1)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_one_clean_line_and_no_partial_output(case, tiny_model, tmp_path):
    model = tiny_model[0]
    argv = [str(a) for a in case.argv(tmp_path, model)]
    res = subprocess.run([REFINEG, *argv], capture_output=True, text=True, timeout=300)
    assert res.returncode != 0, res.stdout
    if case.code is not None:
        assert res.returncode == case.code
    assert "Traceback" not in res.stderr, res.stderr
    err = res.stderr.strip()
    assert case.says.lower() in err.lower(), err
    if "Usage:" not in err:  # typer's own usage errors draw a box; ours are one line
        assert err.startswith("refineg: error:") and err.count("\n") == 0, err
    for name in case.no_output:
        assert not (tmp_path / name).exists(), f"{name} was written"
    assert not list(tmp_path.rglob("*.tmp")), "a temporary file was left behind"
    if case.extra:
        case.extra(tmp_path)


def test_a_bom_in_ids_and_conll_files_is_accepted(tmp_path):
    split = twitter_split(tmp_path, "\ufeff" + CONLL)
    ids = tmp_path / "ids.txt"
    ids.write_text("\ufeffa\n", encoding="utf-8")
    res = subprocess.run([REFINEG, "stats", str(split), "--ids", str(ids), "--json"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["samples"] == 1


def test_an_empty_prediction_file_is_scored_with_a_warning(tmp_path):
    gold = jsonl(tmp_path, GOOD)
    empty = jsonl(tmp_path, raw=b"", name="p.jsonl")
    res = subprocess.run([REFINEG, "evaluate", str(gold), str(empty), "--json"], capture_output=True, text=True)
    assert res.returncode == 0 and json.loads(res.stdout)["mner"]["f1"] == 0.0
    assert "holds no prediction" in res.stderr and "1 gold samples" in res.stderr
