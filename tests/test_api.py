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
    res = subprocess.run([REFINEG, "predict", "--model", str(model), "--data", str(tmp_path / "dev.jsonl"),
                          "--out", str(tmp_path / "p.jsonl"), "--quiet"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    cli = [[(e["start"], e["end"], e["type"], e["score"]) for e in json.loads(l)["entities"]]
           for l in (tmp_path / "p.jsonl").read_text().splitlines()]
    nlp = refineg.load(model)
    assert isinstance(nlp, refineg.Pipeline)
    one_by_one = [nlp(tokens=s.tokens, id=s.id) for s in dev]
    piped = list(nlp.pipe([{"tokens": s.tokens, "id": s.id} for s in dev], batch_size=7))
    assert _rows(one_by_one) == cli and _rows(piped) == cli
    assert [p.id for p in piped] == [s.id for s in dev]  # input order
    text = nlp("RT @nfl : Kevin Durant joins the Golden State Warriors")
    assert text.tokens[:3] == ("RT", "@", "nfl")  # raw text is tokenised the Twitter-GMNER way


def test_import_refineg_is_lazy():
    out = subprocess.run([sys.executable, "-c", "import sys, refineg; print('torch' in sys.modules)"],
                         capture_output=True, text=True)
    assert out.stdout.strip() == "False"


def test_with_an_llm_an_in_memory_image_is_grounded(tiny_model, tmp_path):
    model, _, dev = tiny_model
    sample = next(s for s in dev if refineg.load(model)(tokens=s.tokens).entities)

    def answer(body):
        text = json.dumps(body)
        if "Ground exactly" in text or "lists every entity" in text:
            ents = refineg.load(model)(tokens=sample.tokens).entities
            return Reply(json.dumps({"entities": [{"text": e.text, "type": e.type, "boxes": [[10, 20, 110, 220]]} for e in ents]}))
        return Reply('{"entities": []}')

    with FakeOpenAIServer(default=answer) as srv:
        nlp = refineg.load(model, llm={"base_url": srv.base_url, "model": "m", "cache_dir": str(tmp_path)},
                           settings={"ground": {"skip_ungroundable": False}})
        with nlp:
            pred = nlp(tokens=sample.tokens, image=Image.new("RGB", (600, 400)))
    assert any(e.boxes for e in pred.entities)
