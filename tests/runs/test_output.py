"""A run's output file: one writer at a time, resumed without half lines or retry rows, put in input order."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from refineg.errors import DataError
from refineg.runs.output import OutputLock, RunOutput, done_ids
from refineg.types import Prediction

REFINEG = str(Path(sys.executable).parent / "refineg")


def test_a_second_writer_of_the_same_output_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "p.jsonl"
    with RunOutput(out, redo_retries=True) as first:
        first.append([Prediction("a")])
        with pytest.raises(DataError, match=rf"another refineg run is writing this output \(pid {os.getpid()}"):
            with RunOutput(out, redo_retries=True):
                pass
        with pytest.raises(DataError, match="another refineg run"):
            with OutputLock(out):  # predict takes the same lock
                pass
    with RunOutput(out, redo_retries=True) as again:  # released at the end of the block
        assert again.done == {"a"}


def test_resume_cuts_a_half_line_and_redoes_rows_marked_for_a_retry(tmp_path):
    out = tmp_path / "p.jsonl"
    out.write_text('{"id": "a"}\n{"id": "b", "status": "retry"}\n{"id": "c"}\n{"id": "d", "ent')
    assert done_ids(out, redo_retries=False) == {"a", "b", "c"}
    assert out.read_text() == '{"id": "a"}\n{"id": "b", "status": "retry"}\n{"id": "c"}\n'
    assert done_ids(out, redo_retries=True) == {"a", "c"}
    assert out.read_text() == '{"id": "a"}\n{"id": "c"}\n'
    out.write_text('{"id": "a", "n": 1}\n{"id": "b"}\n{"id": "a", "n": 2}\n')  # twice: an older refineg's two runs
    assert done_ids(out) == {"a", "b"} and out.read_text() == '{"id": "b"}\n{"id": "a", "n": 2}\n'
    out.write_text('{"id": "a"}\nnot json\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: cannot resume"):
        done_ids(out)


def test_rows_are_put_in_input_order_and_ids_not_in_it_stay_last(tmp_path):
    out = tmp_path / "p.jsonl"
    with RunOutput(out, redo_retries=True) as output:
        output.append([Prediction(i) for i in ("c", "z", "a", "b")])
        output.put_in_order(["a", "b", "c"])
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["a", "b", "c", "z"]
    before = out.stat().st_mtime_ns
    time.sleep(0.01)
    with RunOutput(out, redo_retries=True) as output:
        output.put_in_order(["a", "b", "c"])
    assert out.stat().st_mtime_ns == before  # already in order: untouched


def test_two_runs_on_one_output_at_once_the_second_refuses_and_no_row_is_written_twice(tiny_model, tmp_path):
    from refineg.data import save_samples

    model, _, dev = tiny_model
    posts = [s.with_(id=f"{s.id}-{k}") for k in range(20) for s in dev]  # long enough to overlap
    save_samples(posts, tmp_path / "data.jsonl")
    args = [
        REFINEG,
        "run",
        "--model",
        str(model),
        "--data",
        str(tmp_path / "data.jsonl"),
        "--out",
        str(tmp_path / "p.jsonl"),
        "--quiet",
    ]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / ".p.jsonl.lock.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and "another refineg run is writing this output" in second.stderr
    assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    assert first.wait(300) == 0, first.stderr.read()
    ids = [json.loads(line)["id"] for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert ids == [s.id for s in posts]
