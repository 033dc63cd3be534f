"""The Python API: refineg.load(MODEL_DIR), nlp(...) and nlp.pipe(...) give what `refineg predict` gives."""

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

import refineg
from refineg.data import save_samples
from refineg.testing.fake_openai import FakeOpenAIServer, Reply

REFINEG = str(Path(sys.executable).parent / "refineg")


def _rows(preds):
    return [[(e.start, e.end, e.type, round(e.score, 6)) for e in p.entities] for p in preds]


def test_load_call_and_pipe_match_refineg_predict(tiny_model, tmp_path):
    model, _, dev = tiny_model
    save_samples(dev, tmp_path / "dev.jsonl")
    res = subprocess.run(
        [
            REFINEG,
            "predict",
            "--model",
            str(model),
            "--data",
            str(tmp_path / "dev.jsonl"),
            "--out",
            str(tmp_path / "p.jsonl"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    cli = [
        [(e["start"], e["end"], e["type"], e["score"]) for e in json.loads(line)["entities"]]
        for line in (tmp_path / "p.jsonl").read_text().splitlines()
    ]
    nlp = refineg.load(model)
    assert isinstance(nlp, refineg.Pipeline)
    one_by_one = [nlp(tokens=s.tokens, id=s.id) for s in dev]
    piped = list(nlp.pipe([{"tokens": s.tokens, "id": s.id} for s in dev], batch_size=7))
    assert _rows(one_by_one) == cli and _rows(piped) == cli
    assert [p.id for p in piped] == [s.id for s in dev]  # input order
    text = nlp("RT @nfl : Kevin Durant joins the Golden State Warriors")
    assert text.tokens[:3] == ("RT", "@", "nfl")  # raw text is tokenised the Twitter-GMNER way


def test_import_refineg_is_lazy():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, refineg; print('torch' in sys.modules)"], capture_output=True, text=True
    )
    assert out.stdout.strip() == "False"


def test_with_an_llm_an_in_memory_image_is_grounded(tiny_model, tmp_path):
    model, _, dev = tiny_model
    sample = next(s for s in dev if refineg.load(model)(tokens=s.tokens).entities)

    def answer(body):
        text = json.dumps(body)
        if "Ground exactly" in text or "lists every entity" in text:
            ents = refineg.load(model)(tokens=sample.tokens).entities
            return Reply(
                json.dumps(
                    {"entities": [{"text": e.text, "type": e.type, "boxes": [[10, 20, 110, 220]]} for e in ents]}
                )
            )
        return Reply('{"entities": []}')

    with FakeOpenAIServer(default=answer) as srv:
        nlp = refineg.load(
            model,
            llm={"base_url": srv.base_url, "model": "m", "cache_dir": str(tmp_path)},
            settings={"ground": {"skip_ungroundable": False}},
        )
        with nlp:
            pred = nlp(tokens=sample.tokens, image=Image.new("RGB", (600, 400)))
    assert any(e.boxes for e in pred.entities)


def test_the_api_checks_its_inputs_with_our_own_errors(tiny_model, tmp_path):
    import pytest

    from refineg.errors import DataError

    nlp = refineg.load(tiny_model[0])
    for call, says in (
        (lambda: nlp(tokens="Obama in Paris"), "tokens must be a list of strings"),
        (lambda: nlp(42), "text must be a string"),
        (lambda: nlp("Obama in Paris", image=5), "image must be a file path"),
        (lambda: nlp("Obama in Paris", image=tmp_path / "missing.jpg"), "image not found"),
        (lambda: nlp("Obama in Paris", image=b"not an image"), "image"),
        (lambda: nlp("   "), "empty"),
        (lambda: nlp(), "text or as tokens"),
    ):
        with pytest.raises(DataError, match=says):
            call()


def test_a_result_has_a_json_form_and_the_pipeline_names_its_models_setting(tiny_model):
    nlp = refineg.load(tiny_model[0])
    pred = nlp(tokens=tiny_model[2][0].tokens, id="x")
    d = pred.to_dict()
    assert json.loads(json.dumps(d)) == d and d["id"] == "x" and all("score" in e for e in d["entities"])
    assert nlp.setting == "80 labelled only"
