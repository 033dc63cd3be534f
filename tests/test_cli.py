import json
import subprocess
import sys
from pathlib import Path

import pytest

REFINEG = [str(Path(sys.executable).parent / "refineg")]


def _run(*args):
    return subprocess.run(REFINEG + [str(a) for a in args], capture_output=True, text=True)


def test_evaluate_json_on_gold_against_itself(twitter_dev, tmp_path):
    assert _run("convert", twitter_dev, tmp_path / "dev.jsonl").returncode == 0
    res = _run("evaluate", twitter_dev, tmp_path / "dev.jsonl", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["gmner"]["f1"] == 1.0 and out["mner"]["precision"] == 1.0 and out["eeg"]["recall"] == 1.0
    assert set(out["per_type"]) == {"PER", "ORG", "LOC", "OTHER"}


def test_bad_input_is_one_line_on_stderr_and_exit_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "tokens": []}\n{"id": "b", "tokens": [\n')
    res = _run("stats", bad)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0
    assert f"{bad}:2" in res.stderr and "broken JSON" in res.stderr and "Traceback" not in res.stderr


def test_stats_json(twitter_dev):
    res = _run("stats", twitter_dev, "--json")
    figures = json.loads(res.stdout)
    assert figures["samples"] == 1500 and figures["entities"] == 2450 and figures["groundable_entities"] == 991


def test_llm_check_counts_retries_and_always_talks_to_the_live_endpoint(tmp_path):
    from refineg.testing.fake_openai import FakeOpenAIServer, Reply

    script = [Reply(status=429), Reply(status=500), Reply('{"answer": "pong"}'), Reply('{"answer": "pong"}')]
    with FakeOpenAIServer(script) as srv:
        args = ["llm-check", "--llm-base-url", srv.base_url, "--llm-model", "m", "--cache-dir", tmp_path, "--json"]
        first = _run(*args)
        assert first.returncode == 0, first.stderr
        report = json.loads(first.stdout)
        assert report["usage"]["requests"] == 3 and report["usage"]["retries"] == 2 and report["json_valid"]
        second = json.loads(_run(*args).stdout)
        assert second["usage"]["requests"] == 1 and second["usage"]["cache_hits"] == 0
        assert len(srv.requests) == 4
        url = srv.base_url
    assert not any(tmp_path.rglob("*.db")), "llm-check wrote a cache"
    # the server is gone: the check fails, whatever it answered before
    gone = _run("llm-check", "--llm-base-url", url, "--llm-model", "m", "--cache-dir", tmp_path, "--llm-retries", "0")
    assert gone.returncode == 1 and "reachable:    NO" in gone.stdout


def test_llm_check_says_what_is_wrong_and_how_to_fix_it(tmp_path):
    import time

    from refineg.testing.fake_openai import FakeOpenAIServer, Reply

    with FakeOpenAIServer(default=lambda body: Reply("pong!")) as srv:  # answers, but not the JSON asked for
        res = _run("llm-check", "--llm-base-url", srv.base_url, "--llm-model", "m", "--cache-dir", tmp_path)
        url = srv.base_url
    assert res.returncode == 1 and "answer NOT valid" in res.stdout
    assert "not with the JSON object asked for" in " ".join(res.stdout.split())
    t0 = time.monotonic()
    gone = _run("llm-check", "--llm-base-url", url, "--llm-model", "m", "--cache-dir", tmp_path)
    assert gone.returncode == 1 and time.monotonic() - t0 < 12  # a few quick retries, not a run's patience
    text = " ".join(gone.stdout.split())
    assert "reachable: NO" in text and "nothing answers at that address" in text and "latency" not in text
    bad = _run("llm-check", "--llm-base-url", "localhost:8000/v1", "--llm-model", "m")
    assert bad.returncode == 2 and "not an http(s) URL" in bad.stderr


def test_llm_check_without_an_llm_is_a_clear_error(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("REFINEG_LLM")}
    res = subprocess.run(REFINEG + ["llm-check", "--cache-dir", str(tmp_path)], capture_output=True, text=True, env=env)
    assert res.returncode == 2 and "no LLM configured" in res.stderr


def test_train_then_predict_through_the_cli(twitter_train, twitter_dev, tmp_path):
    from refineg.data import load_samples, save_samples

    save_samples(load_samples(twitter_train)[:30], tmp_path / "train.jsonl")
    save_samples(load_samples(twitter_dev)[:20], tmp_path / "dev.jsonl")
    cfg = tmp_path / "run.toml"
    cfg.write_text('[tagger]\nlstm_hidden = 16\nbatch_size = 8\nruntime = "torch"\n')  # no ONNX export: 7 s
    res = _run(
        "train",
        "--train",
        tmp_path / "train.jsonl",
        "--dev",
        tmp_path / "dev.jsonl",
        "--out",
        tmp_path / "m",
        "--epochs",
        "1",
        "--config",
        cfg,
    )
    assert res.returncode == 0, res.stderr
    # stderr is a pipe here, as in a log file: plain progress lines, a line per epoch with its dev score
    assert "\r" not in res.stderr and "epoch 1/1: loss" in res.stderr and "dev MNER F1" in res.stderr
    assert "dev MNER" in res.stdout and "AUROC" in res.stdout
    assert "weights averaged over epochs 1)" in " ".join(res.stdout.split())  # rich wraps long lines
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    assert meta["config"]["tagger"]["lstm_hidden"] == 16 and meta["sources"]["train_samples"] == 30
    res = _run("predict", "--model", tmp_path / "m", "--data", tmp_path / "dev.jsonl", "--out", tmp_path / "p.jsonl")
    assert res.returncode == 0, res.stderr
    assert "\r" not in res.stderr
    assert "every entity is kept" in res.stdout
    assert "(model: 30 labelled only)" in res.stdout  # every figure says which setting's model made it
    summary = json.loads((tmp_path / "p.jsonl.summary.json").read_text())
    assert summary["model_setting"] == "30 labelled only" and summary["samples"] == 20
    assert summary["mner"]["f1"] == pytest.approx(float(res.stdout.split("F1 ")[1].split()[0]), abs=1e-4)
    res = _run("report", tmp_path / "p.jsonl", "--gold", tmp_path / "dev.jsonl", "--out", tmp_path / "report")
    assert res.returncode == 0, res.stderr
    assert "model: 30 labelled only" in (tmp_path / "report" / "index.html").read_text()
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(lines) == 20
    for line in lines:
        assert 0.0 <= line["missing_score"] <= 1.0
        for e in line["entities"]:
            assert 0.0 <= e["score"] <= 1.0 and e["decision"] == "keep" and e["source"] == "tagger"
    assert _run("evaluate", tmp_path / "dev.jsonl", tmp_path / "p.jsonl", "--json").returncode == 0
    # LLM options call no LLM in predict and change nothing; --decisions marks what the gate would delegate
    res = _run(
        "predict",
        "--model",
        tmp_path / "m",
        "--data",
        tmp_path / "dev.jsonl",
        "--out",
        tmp_path / "q.jsonl",
        "--quiet",
        "--llm-base-url",
        "http://127.0.0.1:9/v1",
        "--llm-model",
        "m",
    )
    assert res.returncode == 0 and "change nothing" in res.stderr
    assert (tmp_path / "q.jsonl").read_text() == (tmp_path / "p.jsonl").read_text()
    res = _run(
        "predict",
        "--model",
        tmp_path / "m",
        "--data",
        tmp_path / "dev.jsonl",
        "--out",
        tmp_path / "d.jsonl",
        "--quiet",
        "--decisions",
    )
    assert res.returncode == 0 and "would be delegated" in res.stdout
    decided = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert [[e["score"] for e in r["entities"]] for r in decided] == [
        [e["score"] for e in r["entities"]] for r in lines
    ]


def test_train_with_a_bad_encoder_exits_2(twitter_dev, tmp_path):
    res = _run(
        "train",
        "--train",
        twitter_dev,
        "--dev",
        twitter_dev,
        "--out",
        tmp_path / "m",
        "--encoder",
        tmp_path / "missing-encoder",
        "--quiet",
    )
    assert res.returncode == 2 and "no such encoder folder" in res.stderr and "Traceback" not in res.stderr


def test_synthesize_offline_and_with_a_scripted_llm(twitter_train, twitter_dev, tmp_path):
    from refineg.testing.fake_openai import FakeOpenAIServer, Reply

    ids = tmp_path / "ids"
    ids.write_text("O_3498\n")
    res = _run(
        "synthesize",
        "--train",
        twitter_train,
        "--ids",
        ids,
        "--out",
        tmp_path / "mr.jsonl",
        "--quiet",
        "--per-sample",
        "2",
    )
    assert res.returncode == 0, res.stderr
    assert "no LLM configured" in res.stdout
    # one seed, two PER mentions: the only new sentence swaps them; the second copy repeats it
    assert len((tmp_path / "mr.jsonl").read_text().splitlines()) == 1
    assert json.loads((tmp_path / "mr.jsonl.summary.json").read_text())["dropped"] == {"duplicate_sentence": 1}

    answer = {
        "samples": [
            {
                "text": "Tobey Maguire and Leonardo DiCaprio at the lanes",
                "entities": [{"text": "Tobey Maguire", "type": "PER"}, {"text": "Leonardo DiCaprio", "type": "PER"}],
            },
            {"text": "Leonardo DiCaprio won", "entities": [{"text": "Kate Winslet", "type": "PER"}]},
        ]
    }
    with FakeOpenAIServer(default=lambda body: Reply(json.dumps(answer))) as srv:
        res = _run(
            "synthesize",
            "--train",
            twitter_train,
            "--ids",
            ids,
            "--out",
            tmp_path / "llm.jsonl",
            "--quiet",
            "--llm-base-url",
            srv.base_url,
            "--llm-model",
            "m",
            "--cache-dir",
            tmp_path / "c",
            "--exclude",
            twitter_dev,
        )
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in (tmp_path / "llm.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["seed_id"] == "O_3498" and lines[0]["source"] == "synthetic"
    summary = json.loads((tmp_path / "llm.jsonl.summary.json").read_text())
    assert summary["dropped"] == {"entity_not_in_text": 2, "duplicate_sentence": 1}  # keep + new requests
