"""`refineg predict`: a killed predict resumes from its partial file, to the output an uninterrupted one writes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from refineg.config import RunConfig, RunSection
from refineg.data import load_samples, save_samples
from refineg.gate import GatedTagger
from refineg.runs.predict import predict_file

REFINEG = str(Path(sys.executable).parent / "refineg")
QUIET = RunConfig(run=RunSection(progress=False))


@pytest.fixture()
def data_dir(tiny_model, tmp_path):
    _, _, dev = tiny_model
    save_samples(dev, tmp_path / "dev.jsonl")
    return tmp_path


def test_a_killed_predict_resumes_from_its_partial_file_to_the_same_output(tiny_model, data_dir, monkeypatch):
    model, _, dev = tiny_model
    whole = predict_file(model, data_dir / "dev.jsonl", data_dir / "whole.jsonl", QUIET)
    every15 = RunConfig(run=RunSection(progress=False, save_every=15))
    real_call, chunks = GatedTagger.__call__, []

    def gated(self, samples, *args, **kw):
        chunks.append(len(samples))
        if kill_at == len(chunks):
            raise KeyboardInterrupt  # killed while tagging this chunk
        return real_call(self, samples, *args, **kw)

    monkeypatch.setattr(GatedTagger, "__call__", gated)
    out, partial = data_dir / "p.jsonl", data_dir / ".p.jsonl.partial"
    kill_at = 2
    with pytest.raises(KeyboardInterrupt):
        predict_file(model, data_dir / "dev.jsonl", out, every15)
    assert not out.exists() and len(partial.read_text().splitlines()) == 15
    with partial.open("a") as fh:
        fh.write('{"id": "half a li')  # the kill came in the middle of a line
    chunks.clear()
    kill_at = None
    res = predict_file(model, data_dir / "dev.jsonl", out, every15)
    assert chunks == [15, len(dev) - 30] and res.resumed == 15
    assert out.read_text() == (data_dir / "whole.jsonl").read_text()
    assert res.mner == whole.mner and res.gate == whole.gate
    assert not partial.exists() and not (data_dir / ".p.jsonl.partial.key").exists()
    out.unlink()
    kill_at, chunks[:] = 2, []
    with pytest.raises(KeyboardInterrupt):
        predict_file(model, data_dir / "dev.jsonl", out, every15)
    partial.write_text("damaged\n" + partial.read_text())  # not our writing: everything is tagged again
    kill_at, chunks[:] = None, []
    res = predict_file(model, data_dir / "dev.jsonl", out, every15)
    assert res.resumed == 0 and chunks == [15, 15, len(dev) - 30]
    assert out.read_text() == (data_dir / "whole.jsonl").read_text()


def test_a_partial_predict_file_of_other_settings_is_not_resumed(tiny_model, data_dir):
    model, _, dev = tiny_model
    (data_dir / ".p.jsonl.partial").write_text(json.dumps({"id": dev[0].id, "entities": []}) + "\n")
    (data_dir / ".p.jsonl.partial.key").write_text("another model, data or settings")
    res = predict_file(model, data_dir / "dev.jsonl", data_dir / "p.jsonl", QUIET)
    again = predict_file(model, data_dir / "dev.jsonl", data_dir / "q.jsonl", QUIET)
    assert res.resumed == 0 and res.predictions == again.predictions
    assert not (data_dir / ".p.jsonl.partial").exists()


def test_a_sigkilled_predict_process_resumes_and_writes_what_an_uninterrupted_one_does(
    tiny_model, twitter_dev, tmp_path
):
    model, _, _ = tiny_model
    save_samples(load_samples(twitter_dev)[:600], tmp_path / "many.jsonl")
    (tmp_path / "run.toml").write_text("[run]\nsave_every = 150\n")  # four saves: the first comes before the end

    def predict(out: str) -> subprocess.Popen:
        return subprocess.Popen(
            [
                REFINEG,
                "predict",
                "--model",
                str(model),
                "--data",
                str(tmp_path / "many.jsonl"),
                "--out",
                str(tmp_path / out),
                "--config",
                str(tmp_path / "run.toml"),
                "--quiet",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    proc, partial = predict("killed.jsonl"), tmp_path / ".killed.jsonl.partial"
    deadline = time.monotonic() + 300
    while not (partial.is_file() and partial.stat().st_size):
        assert proc.poll() is None and time.monotonic() < deadline, "predict ended before saving a chunk"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed.jsonl").exists()
    for out in ("killed.jsonl", "whole.jsonl"):
        stdout, stderr = predict(out).communicate(timeout=300)
        assert not stderr and ("resumed:" in stdout) == (out == "killed.jsonl"), stdout + stderr
    assert (tmp_path / "killed.jsonl").read_text() == (tmp_path / "whole.jsonl").read_text()
    resumed = json.loads((tmp_path / "killed.jsonl.summary.json").read_text())["resumed"]
    assert 0 < resumed < 600 and resumed % 150 == 0
    assert not partial.exists()
