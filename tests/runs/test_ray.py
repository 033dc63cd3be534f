"""The Ray engine on a real local Ray cluster against the gold-oracle replay server: the same rows as the
local engine, over two replicas, and after a SIGKILL of the driver; shard folding on its own."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from refineg.config import LLMConfig, RunConfig, RunSection
from refineg.data import save_samples
from refineg.runs.local import run_file
from refineg.testing.fake_openai import FakeOpenAIServer
from refineg.testing.oracle import GoldOracle, placeholder_images

REFINEG = str(Path(sys.executable).parent / "refineg")


@pytest.fixture(scope="module")
def work(tiny_model, tmp_path_factory):
    """The tiny model's 40 dev posts with placeholder images, a demo pool, and the local engine's output."""
    model, _, dev = tiny_model
    root = tmp_path_factory.mktemp("ray")
    save_samples(dev, root / "dev.jsonl")
    save_samples(dev[:20], root / "pool.jsonl")
    placeholder_images(dev, root / "images")
    (root / "ray.toml").write_text("[ray]\nbatch_size = 4\nllm_actors = 2\n")
    with FakeOpenAIServer(default=GoldOracle(dev)) as srv:
        cfg = RunConfig(
            llm=LLMConfig(base_url=srv.base_url, model="gold-oracle", cache_dir=root / "cache-local"),
            run=RunSection(images=[root / "images"], demos=root / "pool.jsonl", progress=False),
        )
        run_file(model, root / "dev.jsonl", root / "local.jsonl", cfg)
    return root


def _ray_args(model, work: Path, out: Path, *urls: str) -> list[str]:
    args = [
        REFINEG,
        "run",
        "--engine",
        "ray",
        "--model",
        str(model),
        "--data",
        str(work / "dev.jsonl"),
        "--images",
        str(work / "images"),
        "--demos",
        str(work / "pool.jsonl"),
        "--llm-model",
        "gold-oracle",
        "--config",
        str(work / "ray.toml"),
        "--llm-concurrency",
        "2",
        "--out",
        str(out),
        "--quiet",
    ]
    return args + [a for url in urls for a in ("--llm-base-url", url)]


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_a_ray_run_killed_midway_resumes_to_the_same_rows_over_two_replicas(tiny_model, work):
    model, _, dev = tiny_model
    oracle, out = GoldOracle(dev), work / "killed.jsonl"
    env = dict(os.environ, REFINEG_CACHE_DIR=str(work / "cache-killed"))
    with FakeOpenAIServer(default=oracle, latency=0.4) as srv:
        proc = subprocess.Popen(
            _ray_args(model, work, out, srv.base_url), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline, written = time.time() + 300, 0
        while time.time() < deadline and written < 8 and proc.poll() is None:
            time.sleep(0.1)
            written = len(out.read_bytes().splitlines()) if out.exists() else 0
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert 0 < written < len(dev), "the kill should land mid-run"
    # the rest on two replicas: both serve, and the cap per endpoint holds across the actors
    with FakeOpenAIServer(default=oracle) as a, FakeOpenAIServer(default=oracle) as b:
        res = subprocess.run(
            _ray_args(model, work, out, a.base_url, b.base_url), env=env, capture_output=True, text=True, timeout=400
        )
        assert res.returncode == 0, res.stderr[-2000:]
        assert a.requests and b.requests
        assert a.max_in_flight <= 2 and b.max_in_flight <= 2
    done = int(res.stdout.split("(")[1].split(" already done")[0])
    assert done >= written
    assert _ids(out) == [s.id for s in dev]
    assert out.read_text() == (work / "local.jsonl").read_text()
    summary = json.loads((work / "killed.jsonl.summary.json").read_text())
    assert summary["engine"]["name"] == "ray" and summary["engine"]["llm_actors"] == 2
    assert summary["resumed_done"] == done and summary["processed"] == len(dev) - done
    assert summary["llm"]["total"]["requests"] == len(a.requests) + len(b.requests)
    again = subprocess.run(
        _ray_args(model, work, out, "http://127.0.0.1:9/v1"), env=env, capture_output=True, text=True, timeout=400
    )  # nothing left: no cluster, no call, the rows untouched
    assert again.returncode == 0 and f"({len(dev)} already done)" in again.stdout
    assert out.read_text() == (work / "local.jsonl").read_text()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--engine", "spark"], "--engine must be local or ray"),
        (["--ray-address", "auto"], "--ray-address needs --engine ray"),
    ],
)
def test_engine_options_are_checked(tiny_model, work, extra, message):
    model, _, _ = tiny_model
    res = subprocess.run(
        [REFINEG, "run", "--model", str(model), "--data", str(work / "dev.jsonl"), "--out", str(work / "x.jsonl")]
        + extra,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


@pytest.fixture
def foreign_cluster():
    """Somebody else's Ray cluster running on this machine (a plain ray.init would join it); stopped by its own
    process group, so that a cluster the developer runs is left alone (`ray stop` would stop every one)."""
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--port", "0", "--num-cpus", "1"]
        + ["--include-dashboard", "false", "--disable-usage-stats", "--block"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen = []
    for line in proc.stdout:  # it prints this once the cluster is up, then blocks
        seen.append(line)
        if "Ray runtime started" in line:
            break
    assert proc.poll() is None, "".join(seen)[-2000:]
    # it goes on logging: a full pipe would block it, and a blocked process cannot stop on SIGINT
    threading.Thread(target=seen.extend, args=(proc.stdout,), daemon=True).start()
    yield
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C: `ray start --block` stops what it started (SIGTERM: not)
    try:
        proc.wait(10)  # it takes a second or two; a suite run once waited out 30 s here
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own process group: only this cluster's processes
        proc.wait()


def test_an_actors_error_is_one_clean_line(tiny_model, work, foreign_cluster):
    # with another cluster on the machine, the run starts one of its own and gets as far as its actors
    model, _, dev = tiny_model
    missing = work / "some-images"
    missing.mkdir()
    for s in dev[1:]:  # the first post's image is gone: with --strict that is fatal
        (missing / s.image).write_bytes((work / "images" / s.image).read_bytes())
    args = _ray_args(model, work, work / "strict.jsonl", "http://127.0.0.1:9/v1")
    args[args.index("--images") + 1] = str(missing)
    res = subprocess.run(args + ["--strict", "--allow-missing-images"], capture_output=True, text=True, timeout=400)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == (
        f"refineg: error: <input> (sample {dev[0].id}): image {dev[0].image!r} not found in {missing}"
    )
    assert "Traceback" not in res.stderr
