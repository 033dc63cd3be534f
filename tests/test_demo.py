"""The demo's fallback: the example set that ships with the repo, used when no Twitter-GMNER is found."""

import json

from refineg import demo
from refineg.config import RunConfig, TaggerConfig


def test_demo_runs_end_to_end_on_the_shipped_example_set(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "find_data_root", lambda: None)
    cfg = RunConfig(tagger=TaggerConfig(epochs=3, lstm_hidden=32, lr_head=3e-3, warmup=0))
    figures = demo.run_demo(tmp_path, cfg, progress=False)
    assert figures["data"].startswith("examples/mini") and figures["samples"] == 24 and figures["trained"]
    assert figures["mner"]["f1"] > 0.3  # template sentences: even 3 epochs learn something
    page = (tmp_path / "report" / "index.html").read_text()
    assert "data:image/jpeg;base64," in page  # the shipped images are in the report
    assert json.loads((tmp_path / "demo-summary.json").read_text())["pipeline"]["processed"] == 24
    again = demo.run_demo(tmp_path, cfg, progress=False)
    assert not again["trained"] and again["pipeline"]["resumed_done"] == 24 and again["mner"] == figures["mner"]
