import json
import subprocess
import sys
from pathlib import Path

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


def test_llm_check_counts_retries_and_reruns_from_the_cache(tmp_path):
    from refineg.testing.fake_openai import FakeOpenAIServer, Reply

    script = [Reply(status=429), Reply(status=500), Reply('{"answer": "pong"}')]
    with FakeOpenAIServer(script) as srv:
        args = ["llm-check", "--llm-base-url", srv.base_url, "--llm-model", "m", "--cache-dir", tmp_path, "--json"]
        first = _run(*args)
        assert first.returncode == 0, first.stderr
        report = json.loads(first.stdout)
        assert report["usage"]["requests"] == 3 and report["usage"]["retries"] == 2 and report["json_valid"]
        second = json.loads(_run(*args).stdout)
        assert second["usage"]["requests"] == 0 and second["usage"]["cache_hits"] == 1 and second["from_cache"]
        assert len(srv.requests) == 3


def test_llm_check_without_an_llm_is_a_clear_error(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("REFINEG_LLM")}
    res = subprocess.run(REFINEG + ["llm-check", "--cache-dir", str(tmp_path)], capture_output=True, text=True, env=env)
    assert res.returncode == 2 and "no LLM configured" in res.stderr
