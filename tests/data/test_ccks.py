import json
import shutil
from pathlib import Path

import pytest

from refineg.data import load_dataset, load_samples, save_samples
from refineg.errors import DataError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ccks"


def _entries(folder: Path) -> dict:
    data = json.loads((folder / "entity.json").read_text(encoding="utf-8"))
    return {k: sorted(json.dumps(e, sort_keys=True, ensure_ascii=False) for e in v) for k, v in data.items()}


def test_names_map_to_token_spans_with_all_their_boxes():
    ds = load_dataset(FIXTURE)
    assert ds.format == "ccks"
    s = {x.id: x for x in ds.samples}
    tornado = next(e for e in s["101"].entities if e.text == "Tornado")
    assert s["101"].tokens[tornado.start : tornado.end] == ("Tornado",) and len(tornado.boxes) == 2
    assert [e.text for e in s["101"].entities] == ["Tornado", "NH-90", "Kiel"]
    # longest name first: "Leopard 2A7" must not be tagged inside "Leopard 2A7V"
    assert [(e.text, e.end - e.start) for e in s["102"].entities] == [("Leopard 2A7", 2), ("Leopard 2A7V", 2)]
    assert [e.text for e in s["104"].entities] == ["歼-20", "珠海"]
    assert s["101"].image == "101.jpg"


def test_ccks_to_jsonl_to_ccks_is_lossless(tmp_path):
    save_samples(load_samples(FIXTURE), tmp_path / "a.jsonl")
    save_samples(load_samples(tmp_path / "a.jsonl"), tmp_path / "out", fmt="ccks")
    assert _entries(tmp_path / "out") == _entries(FIXTURE)
    texts = json.loads((tmp_path / "out" / "text.json").read_text(encoding="utf-8"))
    assert texts == json.loads((FIXTURE / "text.json").read_text(encoding="utf-8"))


def test_name_missing_from_text_is_an_error(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "c")
    ents = json.loads((tmp_path / "c" / "entity.json").read_text(encoding="utf-8"))
    ents["103"] = [{"name": "Eurofighter", "label": "aircraft", "bnd": None}]
    (tmp_path / "c" / "entity.json").write_text(json.dumps(ents), encoding="utf-8")
    with pytest.raises(DataError, match="Eurofighter") as info:
        load_samples(tmp_path / "c")
    assert info.value.sample == "103" and "entity.json" in str(info.value)
