"""The local engine of `refineg run`: no LLM, a scripted MLLM over real HTTP, missing images, and resuming after
a real kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from refineg.config import LLMConfig, RunConfig, RunSection
from refineg.data import save_samples
from refineg.errors import DataError
from refineg.runs.local import run_file
from refineg.tagger.tagger import read_setting
from refineg.testing.fake_openai import FakeOpenAIServer, Reply, asked_entities

REFINEG = str(Path(sys.executable).parent / "refineg")


def scripted(body) -> Reply:
    """Deterministic answers: refinement confirms nothing; grounding boxes every entity at a fixed place."""
    asked = asked_entities(body)
    if asked is not None:
        return Reply(json.dumps({"entities": [dict(e, boxes=[[10, 20, 110, 220]]) for e in asked]}))
    return Reply('Let me check. {"entities": []}')


def _cfg(data_dir, srv=None, **run) -> RunConfig:
    llm = (
        LLMConfig(base_url=srv.base_url, model="m", cache_dir=data_dir / "cache", backoff_base=0.01)
        if srv
        else LLMConfig()
    )
    return RunConfig(llm=llm, run=RunSection(progress=False, **run))


@pytest.fixture()
def data_dir(tiny_model, tmp_path):
    _, _, dev = tiny_model
    save_samples(dev, tmp_path / "dev.jsonl")
    img = tmp_path / "images"
    img.mkdir()
    for s in dev[1:]:  # the first sample has no image
        Image.new("RGB", (600, 400), (90, 90, 200)).save(img / s.image)
    return tmp_path


def test_without_an_llm_the_tagger_and_gate_run_alone(tiny_model, data_dir):
    model, _, dev = tiny_model
    summary = run_file(model, data_dir / "dev.jsonl", data_dir / "p.jsonl", _cfg(data_dir))
    lines = [json.loads(row) for row in (data_dir / "p.jsonl").read_text().splitlines()]
    assert [row["id"] for row in lines] == [s.id for s in dev]
    assert all(e["boxes"] == [] and e["decision"] == "keep" for row in lines for e in row["entities"])
    assert "no LLM configured" in summary["notes"][0] and summary["delegated_entities"] == 0
    written = json.loads((data_dir / "p.jsonl.summary.json").read_text())
    assert written["processed"] == len(dev) and written["model_setting"] == "80 labelled only"


def test_scripted_mllm_refines_grounds_and_counts_missing_images(tiny_model, data_dir):
    model, _, dev = tiny_model
    with FakeOpenAIServer(default=scripted) as srv:
        summary = run_file(
            model,
            data_dir / "dev.jsonl",
            data_dir / "p.jsonl",
            _cfg(data_dir, srv, images=[data_dir / "images"], allow_missing_images=True),
        )
    lines = {row["id"]: row for row in map(json.loads, (data_dir / "p.jsonl").read_text().splitlines())}
    assert len(lines) == len(dev)
    assert summary["counts"]["missing_or_corrupt_image"] == 1
    assert summary["delegated_entities"] > 0
    # refinement said "no entity" for every uncertain one: only kept entities survive
    assert all(e["decision"] == "keep" for row in lines.values() for e in row["entities"])
    grounded = [e for row in lines.values() for e in row["entities"] if e["boxes"]]
    assert grounded and all(e["boxes"] == [[10, 20, 110, 220]] for e in grounded)  # 600x400 is sent as is
    assert all(e["boxes"] == [] for e in lines[dev[0].id]["entities"])  # no image: text alone
    assert summary["llm"]["total"]["requests"] > 0


def test_strict_makes_a_missing_image_an_error(tiny_model, data_dir):
    model, _, _ = tiny_model
    with FakeOpenAIServer(default=scripted) as srv:
        with pytest.raises(DataError, match="not found"):
            run_file(
                model,
                data_dir / "dev.jsonl",
                data_dir / "p.jsonl",
                _cfg(data_dir, srv, images=[data_dir / "images"], strict=True, allow_missing_images=True),
            )


def _entities(path: Path) -> dict:
    return {
        row["id"]: [(e["start"], e["end"], e["type"], e["boxes"]) for e in row["entities"]]
        for row in map(json.loads, path.read_text().splitlines())
    }


def test_a_run_killed_midway_resumes_to_the_same_output(tiny_model, data_dir):
    model, _, dev = tiny_model
    with FakeOpenAIServer(default=scripted, latency=0.15) as srv:
        llm = ("--llm-base-url", srv.base_url, "--llm-model", "m", "--llm-concurrency", "1")
        _cli_run(model, data_dir, data_dir / "full.jsonl", *llm, check=True, cache="cache-a")
        out = data_dir / "killed.jsonl"
        args, env = _run_command(model, data_dir, out, *llm, cache="cache-b")
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and (not out.exists() or not out.read_text().strip()):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        partial = out.read_text().splitlines()
        assert 0 < len(partial) < len(dev), "the kill should land mid-run"
        res = _cli_run(model, data_dir, out, *llm, cache="cache-b")
        assert res.returncode == 0, res.stderr
        assert f"({len(partial)} already done)" in res.stdout
    ids = [json.loads(row)["id"] for row in out.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == len(dev)
    assert _entities(out) == _entities(data_dir / "full.jsonl")


def test_grounding_requests_carry_k_demos_from_the_pool_never_the_sample_itself(tiny_model, data_dir):
    model, _, dev = tiny_model
    with FakeOpenAIServer(default=scripted) as srv:
        summary = run_file(
            model,
            data_dir / "dev.jsonl",
            data_dir / "p.jsonl",
            _cfg(data_dir, srv, images=[data_dir / "images"], demos=data_dir / "dev.jsonl", allow_missing_images=True),
        )
        grounding = [r for r in srv.requests if "Ground exactly" in json.dumps(r)]
    assert grounding
    assert any(f"demo pool: {len(dev) - 1} of {len(dev)}" in n for n in summary["notes"])
    for req in grounding:
        parts = req["messages"][0]["content"]
        assert sum(1 for p in parts if p["type"] == "image_url") == 4
        query_post = [p["text"] for p in parts if p["type"] == "text" and "Entities to locate:" in p.get("text", "")][0]
        demo_posts = [
            p["text"] for p in parts if p["type"] == "text" and p["text"].startswith("Post:") and "Answer:" in p["text"]
        ]
        assert len(demo_posts) == 3
        assert query_post.split("\n")[0] not in [d.split("\n")[0] for d in demo_posts]


def _run_command(model, data_dir, out, *llm, cache="cache") -> tuple[list[str], dict]:
    """`refineg run` over the dev posts with their images, and its environment (a cache of its own)."""
    args = [
        REFINEG,
        "run",
        "--model",
        str(model),
        "--data",
        str(data_dir / "dev.jsonl"),
        "--images",
        str(data_dir / "images"),
        "--out",
        str(out),
        "--quiet",
        *llm,
    ]
    return args, dict(os.environ, REFINEG_CACHE_DIR=str(data_dir / cache))


def _cli_run(model, data_dir, out, *llm, check=False, cache="cache"):
    args, env = _run_command(model, data_dir, out, *llm, cache=cache)
    return subprocess.run(args, env=env, capture_output=True, text=True, check=check)


def test_a_run_whose_llm_calls_all_failed_is_redone_by_the_next_run(tiny_model, data_dir):
    model, _, dev = tiny_model
    with FakeOpenAIServer(default=scripted) as srv:
        _cli_run(
            model,
            data_dir,
            data_dir / "clean.jsonl",
            "--llm-base-url",
            srv.base_url,
            "--llm-model",
            "m",
            check=True,
            cache="cache-clean",
        )
        url = srv.base_url
    out = data_dir / "p.jsonl"
    # the endpoint is gone: every row is written, marked for a retry, and the run fails with the count
    failed = _cli_run(model, data_dir, out, "--llm-base-url", url, "--llm-model", "m", "--llm-retries", "0")
    assert failed.returncode == 1 and "LLM calls failed" in failed.stderr
    rows = [json.loads(row) for row in out.read_text().splitlines()]
    assert len(rows) == len(dev) and sum(r.get("status") == "retry" for r in rows) > 0
    with FakeOpenAIServer(default=scripted) as srv:
        again = _cli_run(model, data_dir, out, "--llm-base-url", srv.base_url, "--llm-model", "m")
    assert again.returncode == 0, again.stderr
    assert _entities(out) == _entities(data_dir / "clean.jsonl")
    assert not any(json.loads(row).get("status") for row in out.read_text().splitlines())
    summary = json.loads((data_dir / "p.jsonl.summary.json").read_text())
    assert len(summary["history"]) == 1 and summary["history"][0]["llm_calls"]["failed_transport"] > 0
    assert summary["cumulative"]["runs"] == 2


def test_a_run_without_an_llm_is_completed_by_a_later_run_with_one(tiny_model, data_dir):
    model, _, _ = tiny_model
    out = data_dir / "p.jsonl"
    _cli_run(model, data_dir, out, check=True)
    marked = sum(json.loads(row).get("retry_reason") == "no_llm" for row in out.read_text().splitlines())
    assert marked > 0
    with FakeOpenAIServer(default=scripted) as srv:
        res = _cli_run(model, data_dir, out, "--llm-base-url", srv.base_url, "--llm-model", "m")
    assert res.returncode == 0, res.stderr
    assert f"{marked} samples processed" in res.stdout
    assert any(e["boxes"] for row in out.read_text().splitlines() for e in json.loads(row)["entities"])


def test_too_many_missing_images_stop_the_run_unless_allowed(tiny_model, data_dir):
    model, _, dev = tiny_model
    for f in list((data_dir / "images").iterdir())[:5]:
        f.unlink()
    with FakeOpenAIServer(default=scripted) as srv:
        with pytest.raises(DataError, match=r"6 of 40 samples name an image"):
            run_file(
                model, data_dir / "dev.jsonl", data_dir / "p.jsonl", _cfg(data_dir, srv, images=[data_dir / "images"])
            )
        assert not srv.requests and not (data_dir / "p.jsonl").exists()


def test_a_huge_image_is_counted_and_skipped_not_fatal(tiny_model, data_dir):
    model, _, dev = tiny_model
    Image.new("1", (20000, 20000)).save(data_dir / "images" / dev[1].image)  # 400 megapixels, a few kB on disk
    with FakeOpenAIServer(default=scripted) as srv:
        summary = run_file(
            model, data_dir / "dev.jsonl", data_dir / "p.jsonl", _cfg(data_dir, srv, images=[data_dir / "images"])
        )
    assert summary["counts"]["missing_or_corrupt_image"] == 2  # the one without a file, and the huge one
    assert len((data_dir / "p.jsonl").read_text().splitlines()) == len(dev)


def _kinds(srv) -> list[str]:
    """What each request asked for: combined, refinement or grounding."""
    out = []
    for r in srv.requests:
        text = json.dumps(r)
        out.append(
            "combined"
            if "lists every entity of the post" in text
            else "grounding"
            if "Ground exactly these entities" in text
            else "refinement"
        )
    return out


def test_a_delegated_post_costs_one_call_and_two_with_the_two_call_path(tiny_model, data_dir):
    from refineg.config import GroundConfig
    from refineg.testing.oracle import GoldOracle

    model, _, dev = tiny_model
    for combined in (True, False):
        with FakeOpenAIServer(default=GoldOracle(dev)) as srv:
            cfg = _cfg(data_dir, srv, images=[data_dir / "images"]).model_copy(
                update={"ground": GroundConfig(combined=combined, skip_ungroundable=False)}
            )
            out = data_dir / f"p-{combined}.jsonl"
            summary = run_file(model, data_dir / "dev.jsonl", out, cfg)
            kinds = _kinds(srv)
        rows = {row["id"]: row for row in map(json.loads, out.read_text().splitlines())}
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
        cfg = _cfg(data_dir, srv, images=[data_dir / "images"]).model_copy(
            update={"ground": GroundConfig(groundability_recall=0.3)}
        )
        summary = run_file(model, data_dir / "dev.jsonl", data_dir / "p.jsonl", cfg)
        grounded = [asked_entities(r) for r in srv.requests if asked_entities(r) is not None]
    skipped = summary["counts"]["grounding_skipped_groundability"]
    assert skipped > 0 and summary["groundability"]["posts_skipped"] == skipped
    assert summary["groundability"]["estimated_recall_lost"] > 0
    rows = [json.loads(row) for row in (data_dir / "p.jsonl").read_text().splitlines()]
    local = [r for r in rows if r.get("grounding", "").startswith("decided locally")]
    assert len(local) == skipped and all(not r["delegated"] for r in local)
    assert all(e["boxes"] == [] for r in local for e in r["entities"])
    assert grounded and all(grounded)


def test_a_model_folder_without_a_recorded_setting_says_so(tiny_model, tmp_path):
    model, _, _ = tiny_model
    assert read_setting(model) == "80 labelled only"
    (tmp_path / "meta.json").write_text('{"train": {}}')
    assert read_setting(tmp_path) == "training setting not recorded in meta.json"
    assert read_setting(tmp_path / "nowhere") == "training setting not recorded in meta.json"


def test_a_run_against_an_endpoint_that_trickles_ends_in_time_with_its_rows_marked(tiny_model, data_dir):
    model, _, dev = tiny_model
    timeout, retries = 1.0, 1
    with FakeOpenAIServer(default=lambda body: Reply('{"entities": []}', trickle=0.3)) as srv:
        t0 = time.monotonic()
        res = _cli_run(
            model,
            data_dir,
            data_dir / "p.jsonl",
            "--llm-base-url",
            srv.base_url,
            "--llm-model",
            "m",
            "--llm-timeout",
            str(timeout),
            "--llm-retries",
            str(retries),
            "--llm-concurrency",
            "8",
        )
        took = time.monotonic() - t0
    rows = [json.loads(line) for line in (data_dir / "p.jsonl").read_text().splitlines()]
    assert res.returncode == 1 and "marked for a retry" in res.stderr
    assert len(rows) == len(dev) and sum(r.get("status") == "retry" for r in rows) > 0
    # the endpoint is taken as down after give_up_after failures in a row: the rest fail at once
    assert took < 2 * timeout * (retries + 1) + 15, took  # + the process start-up and the model load


def test_image_names_reaching_outside_the_image_folders_are_refused_never_sent(tiny_model, data_dir):
    model, _, dev = tiny_model
    secret = data_dir / "secret.jpg"
    Image.new("RGB", (64, 64), (255, 0, 0)).save(secret)
    odd = [dev[1].with_(image="../secret.jpg"), dev[2].with_(image=str(secret)), *dev[3:6]]
    save_samples(odd, data_dir / "odd.jsonl")
    with FakeOpenAIServer(default=scripted) as srv:
        summary = run_file(
            model,
            data_dir / "odd.jsonl",
            data_dir / "p.jsonl",
            _cfg(data_dir, srv, images=[data_dir / "images"], allow_missing_images=True),
        )
        sent = [
            p["image_url"]["url"]
            for r in srv.requests
            for p in r["messages"][0]["content"]
            if isinstance(p, dict) and p.get("type") == "image_url"
        ]
    assert summary["counts"]["image_name_refused"] == 2 and summary["counts"]["missing_or_corrupt_image"] == 2
    assert len(sent) <= 3 * 4  # only the three good posts' images (and demos) went out
    from refineg.data.images import prepare_image

    assert prepare_image(secret).data_url not in sent


def test_without_image_folders_names_resolve_beside_the_data_file_only(tiny_model, data_dir, tmp_path_factory):
    model, _, dev = tiny_model
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    save_samples(dev[:3], elsewhere / "dev.jsonl")
    Image.new("RGB", (100, 100)).save(elsewhere / dev[0].image)  # beside the data: found
    (elsewhere.parent / "images").mkdir(exist_ok=True)  # a folder nobody named: not searched
    Image.new("RGB", (100, 100)).save(elsewhere.parent / "images" / dev[1].image)
    with FakeOpenAIServer(default=scripted) as srv:
        summary = run_file(
            model, elsewhere / "dev.jsonl", elsewhere / "p.jsonl", _cfg(data_dir, srv, allow_missing_images=True)
        )
    assert summary["counts"]["missing_or_corrupt_image"] == 2


def test_predict_and_run_take_a_file_of_posts_one_a_line(tiny_model, tmp_path):
    model, _, dev = tiny_model
    (tmp_path / "posts.txt").write_text("\n".join(" ".join(s.tokens) for s in dev[:5]) + "\n")
    for command in ("predict", "run"):
        res = subprocess.run(
            [
                REFINEG,
                command,
                "--model",
                str(model),
                "--data",
                str(tmp_path / "posts.txt"),
                "--out",
                str(tmp_path / f"{command}.jsonl"),
                "--quiet",
            ],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr
        rows = [json.loads(line) for line in (tmp_path / f"{command}.jsonl").read_text().splitlines()]
        assert [r["id"] for r in rows] == [f"unlabeled-{k}" for k in range(1, 6)]
