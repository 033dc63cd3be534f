"""The whole run and predict: no LLM, a scripted MLLM over real HTTP, missing images, and resuming after a real kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from refineg.config import LLMConfig, RunConfig
from refineg.data import load_samples, save_samples
from refineg.errors import DataError
from refineg.pipeline import PREDICT_CHUNK, RunOptions, model_setting, predict_file, run_pipeline
from refineg.testing.fake_openai import FakeOpenAIServer, Reply

REFINEG = str(Path(sys.executable).parent / "refineg")


def scripted(body) -> Reply:
    """Deterministic answers: refinement confirms nothing; grounding boxes every entity at a fixed place."""
    content = body["messages"][0]["content"]
    text = " ".join(p.get("text", "") for p in content) if isinstance(content, list) else content
    if "Ground exactly these entities" in text:
        ents = json.loads(text.rsplit("Entities: ", 1)[1].split("\n", 1)[0])["entities"]
        return Reply(json.dumps({"entities": [dict(e, boxes=[[10, 20, 110, 220]]) for e in ents]}))
    return Reply('Let me check. {"entities": []}')


@pytest.fixture()
def data_dir(tiny_model, tmp_path):
    _, _, dev = tiny_model
    save_samples(dev, tmp_path / "dev.jsonl")
    img = tmp_path / "images"
    img.mkdir()
    for s in dev[1:]:  # the first sample has no image
        Image.new("RGB", (600, 400), (90, 90, 200)).save(img / s.image)
    return tmp_path


def _llm(srv, tmp_path) -> RunConfig:
    return RunConfig(llm=LLMConfig(base_url=srv.base_url, model="m", cache_dir=tmp_path / "cache", backoff_base=0.01))


def test_without_an_llm_the_tagger_and_gate_run_alone(tiny_model, data_dir):
    model, _, dev = tiny_model
    summary = run_pipeline(model, data_dir / "dev.jsonl", data_dir / "p.jsonl", RunConfig(), RunOptions(progress=False))
    lines = [json.loads(l) for l in (data_dir / "p.jsonl").read_text().splitlines()]
    assert [l["id"] for l in lines] == [s.id for s in dev]
    assert all(e["boxes"] == [] and e["decision"] == "keep" for l in lines for e in l["entities"])
    assert "no LLM configured" in summary["notes"][0] and summary["delegated_entities"] == 0
    written = json.loads((data_dir / "p.jsonl.summary.json").read_text())
    assert written["processed"] == len(dev) and written["model_setting"] == "80 labelled only"


def test_scripted_mllm_refines_grounds_and_counts_missing_images(tiny_model, data_dir):
    model, _, dev = tiny_model
    with FakeOpenAIServer(default=scripted) as srv:
        summary = run_pipeline(model, data_dir / "dev.jsonl", data_dir / "p.jsonl", _llm(srv, data_dir),
                               RunOptions(images=(data_dir / "images",), progress=False, allow_missing_images=True))
    lines = {l["id"]: l for l in map(json.loads, (data_dir / "p.jsonl").read_text().splitlines())}
    assert len(lines) == len(dev)
    assert summary["counts"]["missing_or_corrupt_image"] == 1
    assert summary["delegated_entities"] > 0
    # refinement said "no entity" for every uncertain one: only kept entities survive
    assert all(e["decision"] == "keep" for l in lines.values() for e in l["entities"])
    grounded = [e for l in lines.values() for e in l["entities"] if e["boxes"]]
    assert grounded and all(e["boxes"] == [[10, 20, 110, 220]] for e in grounded)  # 600x400 is sent as is
    assert all(e["boxes"] == [] for e in lines[dev[0].id]["entities"])  # no image: text alone
    assert summary["llm"]["total"]["requests"] > 0


def test_strict_makes_a_missing_image_an_error(tiny_model, data_dir):
    model, _, _ = tiny_model
    with FakeOpenAIServer(default=scripted) as srv:
        with pytest.raises(DataError, match="not found"):
            run_pipeline(model, data_dir / "dev.jsonl", data_dir / "p.jsonl", _llm(srv, data_dir),
                         RunOptions(images=(data_dir / "images",), strict=True, allow_missing_images=True, progress=False))


def _entities(path: Path) -> dict:
    return {l["id"]: [(e["start"], e["end"], e["type"], e["boxes"]) for e in l["entities"]]
            for l in map(json.loads, path.read_text().splitlines())}


def test_a_run_killed_midway_resumes_to_the_same_output(tiny_model, data_dir):
    model, _, dev = tiny_model
    with FakeOpenAIServer(default=scripted, latency=0.15) as srv:
        args = [REFINEG, "run", "--model", str(model), "--data", str(data_dir / "dev.jsonl"), "--images",
                str(data_dir / "images"), "--llm-base-url", srv.base_url, "--llm-model", "m", "--llm-concurrency", "1",
                "--quiet"]
        env = dict(os.environ, REFINEG_CACHE_DIR=str(data_dir / "cache-a"))
        subprocess.run(args + ["--out", str(data_dir / "full.jsonl")], env=env, check=True, capture_output=True)
        env = dict(os.environ, REFINEG_CACHE_DIR=str(data_dir / "cache-b"))
        out = data_dir / "killed.jsonl"
        proc = subprocess.Popen(args + ["--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and (not out.exists() or not out.read_text().strip()):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        partial = out.read_text().splitlines()
        assert 0 < len(partial) < len(dev), "the kill should land mid-run"
        res = subprocess.run(args + ["--out", str(out)], env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert f"({len(partial)} already done)" in res.stdout
    ids = [json.loads(l)["id"] for l in out.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == len(dev)
    assert _entities(out) == _entities(data_dir / "full.jsonl")


def test_grounding_requests_carry_k_demos_from_the_pool_never_the_sample_itself(tiny_model, data_dir):
    model, _, dev = tiny_model
    with FakeOpenAIServer(default=scripted) as srv:
        summary = run_pipeline(model, data_dir / "dev.jsonl", data_dir / "p.jsonl", _llm(srv, data_dir),
                               RunOptions(images=(data_dir / "images",), demos=data_dir / "dev.jsonl", progress=False,
                                          allow_missing_images=True))
        grounding = [r for r in srv.requests if "Ground exactly" in json.dumps(r)]
    assert grounding
    assert any(f"demo pool: {len(dev) - 1} of {len(dev)}" in n for n in summary["notes"])
    for req in grounding:
        parts = req["messages"][0]["content"]
        assert sum(1 for p in parts if p["type"] == "image_url") == 4
        query_post = [p["text"] for p in parts if p["type"] == "text" and "Entities:" in p.get("text", "")][0]
        demo_posts = [p["text"] for p in parts if p["type"] == "text" and p["text"].startswith("Post:") and "Answer:" in p["text"]]
        assert len(demo_posts) == 3
        assert query_post.split("\n")[0] not in [d.split("\n")[0] for d in demo_posts]


def _cli_run(model, data_dir, out, *llm, check=False, cache="cache"):
    args = [REFINEG, "run", "--model", str(model), "--data", str(data_dir / "dev.jsonl"), "--images",
            str(data_dir / "images"), "--out", str(out), "--quiet", *llm]
    env = dict(os.environ, REFINEG_CACHE_DIR=str(data_dir / cache))
    return subprocess.run(args, env=env, capture_output=True, text=True, check=check)


def test_a_run_whose_llm_calls_all_failed_is_redone_by_the_next_run(tiny_model, data_dir):
    model, _, dev = tiny_model
    with FakeOpenAIServer(default=scripted) as srv:
        _cli_run(model, data_dir, data_dir / "clean.jsonl", "--llm-base-url", srv.base_url, "--llm-model", "m", check=True,
                 cache="cache-clean")
        url = srv.base_url
    out = data_dir / "p.jsonl"
    # the endpoint is gone: every row is written, marked for a retry, and the run fails with the count
    failed = _cli_run(model, data_dir, out, "--llm-base-url", url, "--llm-model", "m", "--llm-retries", "0")
    assert failed.returncode == 1 and "LLM calls failed" in failed.stderr
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(rows) == len(dev) and sum(r.get("status") == "retry" for r in rows) > 0
    with FakeOpenAIServer(default=scripted) as srv:
        again = _cli_run(model, data_dir, out, "--llm-base-url", srv.base_url, "--llm-model", "m")
    assert again.returncode == 0, again.stderr
    assert _entities(out) == _entities(data_dir / "clean.jsonl")
    assert not any(json.loads(l).get("status") for l in out.read_text().splitlines())
    summary = json.loads((data_dir / "p.jsonl.summary.json").read_text())
    assert len(summary["history"]) == 1 and summary["history"][0]["llm_calls"]["failed_transport"] > 0
    assert summary["cumulative"]["runs"] == 2


def test_a_run_without_an_llm_is_completed_by_a_later_run_with_one(tiny_model, data_dir):
    model, _, _ = tiny_model
    out = data_dir / "p.jsonl"
    _cli_run(model, data_dir, out, check=True)
    marked = sum(json.loads(l).get("retry_reason") == "no_llm" for l in out.read_text().splitlines())
    assert marked > 0
    with FakeOpenAIServer(default=scripted) as srv:
        res = _cli_run(model, data_dir, out, "--llm-base-url", srv.base_url, "--llm-model", "m")
    assert res.returncode == 0, res.stderr
    assert f"{marked} samples processed" in res.stdout
    assert any(e["boxes"] for l in out.read_text().splitlines() for e in json.loads(l)["entities"])


def test_too_many_missing_images_stop_the_run_unless_allowed(tiny_model, data_dir):
    model, _, dev = tiny_model
    for f in list((data_dir / "images").iterdir())[:5]:
        f.unlink()
    with FakeOpenAIServer(default=scripted) as srv:
        with pytest.raises(DataError, match=r"6 of 40 samples name an image"):
            run_pipeline(model, data_dir / "dev.jsonl", data_dir / "p.jsonl", _llm(srv, data_dir),
                         RunOptions(images=(data_dir / "images",), progress=False))
        assert not srv.requests and not (data_dir / "p.jsonl").exists()


def test_a_huge_image_is_counted_and_skipped_not_fatal(tiny_model, data_dir):
    model, _, dev = tiny_model
    Image.new("1", (20000, 20000)).save(data_dir / "images" / dev[1].image)  # 400 megapixels, a few kB on disk
    with FakeOpenAIServer(default=scripted) as srv:
        summary = run_pipeline(model, data_dir / "dev.jsonl", data_dir / "p.jsonl", _llm(srv, data_dir),
                               RunOptions(images=(data_dir / "images",), progress=False))
    assert summary["counts"]["missing_or_corrupt_image"] == 2  # the one without a file, and the huge one
    assert len((data_dir / "p.jsonl").read_text().splitlines()) == len(dev)


def _kinds(srv) -> list[str]:
    """What each request asked for: combined, refinement or grounding."""
    out = []
    for r in srv.requests:
        text = json.dumps(r)
        out.append("combined" if "lists every entity of the post" in text else
                   "grounding" if "Ground exactly these entities" in text else "refinement")
    return out


def test_a_delegated_post_costs_one_call_and_two_with_the_two_call_path(tiny_model, data_dir):
    from refineg.config import GroundConfig
    from refineg.testing.oracle import GoldOracle

    model, _, dev = tiny_model
    for combined in (True, False):
        with FakeOpenAIServer(default=GoldOracle(dev)) as srv:
            cfg = _llm(srv, data_dir).model_copy(update={"ground": GroundConfig(combined=combined, skip_ungroundable=False)})
            out = data_dir / f"p-{combined}.jsonl"
            summary = run_pipeline(model, data_dir / "dev.jsonl", out, cfg,
                                   RunOptions(images=(data_dir / "images",), progress=False))
            kinds = _kinds(srv)
        rows = {l["id"]: l for l in map(json.loads, out.read_text().splitlines())}
        delegated = sum(1 for r in rows.values() if r["delegated"])
        assert delegated > 0
        if combined:
            # one call per delegated post; only the post without an image is refined alone (and not grounded)
            assert kinds.count("combined") + kinds.count("refinement") == delegated and kinds.count("refinement") <= 1
            assert summary["calls_per_sample"]["combined"] > 0
        else:
            assert "combined" not in kinds and kinds.count("refinement") == delegated
        # every call answered by the gold oracle: the boxed gold entities come back with boxes
        assert any(e["boxes"] for r in rows.values() for e in r["entities"])
    assert _entities(data_dir / "p-True.jsonl").keys() == _entities(data_dir / "p-False.jsonl").keys()


def test_posts_the_groundability_model_rules_out_get_no_grounding_call(tiny_model, data_dir):
    from refineg.config import GroundConfig
    from refineg.ground.groundability import Groundability

    model, _, dev = tiny_model
    assert Groundability.load(model) is not None  # train_model fitted and saved one
    with FakeOpenAIServer(default=scripted) as srv:
        cfg = _llm(srv, data_dir).model_copy(update={"ground": GroundConfig(groundability_recall=0.3)})
        summary = run_pipeline(model, data_dir / "dev.jsonl", data_dir / "p.jsonl", cfg,
                               RunOptions(images=(data_dir / "images",), progress=False))
        grounded_ids = {json.loads(r["messages"][0]["content"][-1]["text"].split("Entities: ", 1)[1].split("\n")[0])
                        ["entities"][0]["text"] for r in srv.requests if "Ground exactly" in json.dumps(r)}
    skipped = summary["counts"]["grounding_skipped_groundability"]
    assert skipped > 0 and summary["groundability"]["posts_skipped"] == skipped
    assert summary["groundability"]["estimated_recall_lost"] > 0
    rows = [json.loads(l) for l in (data_dir / "p.jsonl").read_text().splitlines()]
    local = [r for r in rows if r.get("grounding", "").startswith("decided locally")]
    assert len(local) == skipped and all(not r["delegated"] for r in local)
    assert all(e["boxes"] == [] for r in local for e in r["entities"])
    assert grounded_ids


def test_a_model_folder_without_a_recorded_setting_says_so(tiny_model, tmp_path):
    model, _, _ = tiny_model
    assert model_setting(model) == "80 labelled only"
    (tmp_path / "meta.json").write_text('{"train": {}}')
    assert model_setting(tmp_path) == "training setting not recorded in meta.json"
    assert model_setting(tmp_path / "nowhere") == "training setting not recorded in meta.json"


def test_a_killed_predict_resumes_from_its_partial_file_to_the_same_output(tiny_model, data_dir, monkeypatch):
    import refineg.pipeline as pl

    model, _, dev = tiny_model
    whole = predict_file(model, data_dir / "dev.jsonl", data_dir / "whole.jsonl", RunConfig(), progress=False)
    monkeypatch.setattr(pl, "PREDICT_CHUNK", 15)
    real_gated, chunks = pl._gated, []

    def gated(tagger, gate, samples, *args, **kw):
        chunks.append(len(samples))
        if kill_at == len(chunks):
            raise KeyboardInterrupt  # killed while tagging this chunk
        return real_gated(tagger, gate, samples, *args, **kw)

    monkeypatch.setattr(pl, "_gated", gated)
    out, partial = data_dir / "p.jsonl", data_dir / ".p.jsonl.partial"
    kill_at = 2
    with pytest.raises(KeyboardInterrupt):
        predict_file(model, data_dir / "dev.jsonl", out, RunConfig(), progress=False)
    assert not out.exists() and len(partial.read_text().splitlines()) == 15
    with partial.open("a") as fh:
        fh.write('{"id": "half a li')  # the kill came in the middle of a line
    chunks.clear()
    kill_at = None
    res = predict_file(model, data_dir / "dev.jsonl", out, RunConfig(), progress=False)
    assert chunks == [15, len(dev) - 30] and res.resumed == 15
    assert out.read_text() == (data_dir / "whole.jsonl").read_text()
    assert res.mner == whole.mner and res.gate == whole.gate
    assert not partial.exists() and not (data_dir / ".p.jsonl.partial.key").exists()
    out.unlink()
    kill_at, chunks[:] = 2, []
    with pytest.raises(KeyboardInterrupt):
        predict_file(model, data_dir / "dev.jsonl", out, RunConfig(), progress=False)
    partial.write_text("damaged\n" + partial.read_text())  # not our writing: everything is tagged again
    kill_at, chunks[:] = None, []
    res = predict_file(model, data_dir / "dev.jsonl", out, RunConfig(), progress=False)
    assert res.resumed == 0 and chunks == [15, 15, len(dev) - 30]
    assert out.read_text() == (data_dir / "whole.jsonl").read_text()


def test_a_partial_predict_file_of_other_settings_is_not_resumed(tiny_model, data_dir):
    model, _, dev = tiny_model
    (data_dir / ".p.jsonl.partial").write_text('{"id": "%s", "entities": []}\n' % dev[0].id)
    (data_dir / ".p.jsonl.partial.key").write_text("another model, data or settings")
    res = predict_file(model, data_dir / "dev.jsonl", data_dir / "p.jsonl", RunConfig(), progress=False)
    again = predict_file(model, data_dir / "dev.jsonl", data_dir / "q.jsonl", RunConfig(), progress=False)
    assert res.resumed == 0 and res.predictions == again.predictions
    assert not (data_dir / ".p.jsonl.partial").exists()


def test_a_sigkilled_predict_process_resumes_and_writes_what_an_uninterrupted_one_does(tiny_model, twitter_dev,
                                                                                       tmp_path):
    model, _, _ = tiny_model
    posts = load_samples(twitter_dev)
    posts = [s.with_(id=f"{s.id}-{k}") for k in range(PREDICT_CHUNK // len(posts) + 1) for s in posts]
    save_samples(posts, tmp_path / "many.jsonl")  # more than one chunk: the first is saved before the end

    def predict(out: str) -> subprocess.Popen:
        return subprocess.Popen([REFINEG, "predict", "--model", str(model), "--data", str(tmp_path / "many.jsonl"),
                                 "--out", str(tmp_path / out), "--quiet"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

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
    assert json.loads((tmp_path / "killed.jsonl.summary.json").read_text())["resumed"] == PREDICT_CHUNK
    assert not partial.exists()
