"""`refineg serve` on a real loopback port: answers equal `refineg predict` under concurrent posts, bad
requests get 4xx JSON and the service stays up, and the page works in headless Chromium."""

import base64
import json
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn

from refineg.data import save_samples
from refineg.llm.embedded import free_port
from refineg.pipeline import load
from refineg.service import create_app
from refineg.testing.fake_openai import FakeOpenAIServer, Reply

from ..conftest import REPO, SAMPLE_IMAGE
from ..report.test_report import FLAGS

REFINEG = str(Path(sys.executable).parent / "refineg")


class Running:
    """A uvicorn server in a thread on a free loopback port."""

    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        assert self.server.started
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def service(tiny_model):
    model, _, _ = tiny_model
    nlp = load(model)
    with Running(create_app(nlp, max_body=1_000_000)) as running:
        yield running


def test_concurrent_answers_equal_refineg_predict(service, tiny_model, tmp_path):
    model, _, dev = tiny_model
    save_samples(dev, tmp_path / "dev.jsonl")
    subprocess.run([REFINEG, "predict", "--model", str(model), "--data", str(tmp_path / "dev.jsonl"), "--out",
                    str(tmp_path / "p.jsonl"), "--quiet"], check=True, capture_output=True)
    expected = {json.loads(l)["id"]: json.loads(l)["entities"] for l in (tmp_path / "p.jsonl").read_text().splitlines()}

    def post(s):
        r = httpx.post(f"{service.url}/v1/gmner", json={"id": s.id, "tokens": list(s.tokens)}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, dev))
    for s, a in zip(dev, answers):
        assert a["id"] == s.id and a["tokens"] == list(s.tokens)
        assert a["entities"] == expected[s.id]
        assert set(a["timings"]) == {"tag_ms", "llm_ms", "total_ms"}
    health = httpx.get(f"{service.url}/healthz").json()
    assert health["status"] == "ok" and health["llm_configured"] is False
    assert health["model_setting"] == "80 labelled only"
    assert health["mean_batch_size"] > 1  # concurrent posts were tagged together


@pytest.mark.parametrize("body, status, says", [
    (b"{not json", 400, "invalid JSON"),
    (b'{"id": "x"}', 422, "text or tokens"),
    (b'{"text": "   "}', 422, "text or tokens"),
    (b'{"text": 42}', 422, "text"),
    (b'{"text": "a", "tokens": ["a"]}', 422, "one of them"),
    (json.dumps({"text": "Obama in Paris", "image": "not base64 !!"}).encode(), 400, "base64"),
    (json.dumps({"text": "Obama in Paris", "image": base64.b64encode(b"plain text, no image").decode()}).encode(), 400, "image"),
    (b'{"text": "' + b"a" * 1_200_000 + b'"}', 413, "over"),
])
def test_bad_requests_get_a_4xx_json_error_and_the_service_stays_up(service, body, status, says):
    r = httpx.post(f"{service.url}/v1/gmner", content=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    assert says in r.json()["error"]
    assert httpx.get(f"{service.url}/healthz").status_code == 200
    page = httpx.get(f"{service.url}/")
    assert page.status_code == 200 and "RefinegRender" in page.text
    assert httpx.get(f"{service.url}/docs").status_code == 200


def test_a_30_mb_body_is_refused_with_413(tiny_model):
    nlp = load(tiny_model[0])
    with Running(create_app(nlp)) as running:  # the default limit
        r = httpx.post(f"{running.url}/v1/gmner", content=b"x" * 30_000_000, timeout=60)
        assert r.status_code == 413 and "error" in r.json()
        assert httpx.get(f"{running.url}/healthz").json()["requests"]["client_errors"] == 1


def test_an_api_key_is_required_when_asked_for(tiny_model, monkeypatch):
    monkeypatch.setenv("REFINEG_TEST_KEY", "s3cret")
    with Running(create_app(load(tiny_model[0]), api_key_env="REFINEG_TEST_KEY")) as running:
        assert httpx.post(f"{running.url}/v1/gmner", json={"text": "Obama"}).status_code == 401
        ok = httpx.post(f"{running.url}/v1/gmner", json={"text": "Obama"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_the_page_draws_entities_and_boxes_in_headless_chromium(tiny_model, tmp_path):
    model, _, dev = tiny_model
    tokens = next(s.tokens for s in dev if load(model)(tokens=s.tokens).entities)

    def answer(body):  # every entity the MLLM is asked about is in the picture's upper left
        text = json.dumps(body)
        names = [e.text for e in load(model)(tokens=tokens).entities]
        return Reply(json.dumps({"entities": [{"text": n, "type": "PER", "boxes": [[20, 20, 200, 200]]} for n in names]})
                     if "Ground exactly" in text or "lists every entity" in text else '{"entities": []}')

    image = "data:image/jpeg;base64," + base64.b64encode(SAMPLE_IMAGE.read_bytes()).decode()
    with FakeOpenAIServer(default=answer) as llm:
        nlp = load(model, llm={"base_url": llm.base_url, "model": "m", "cache_dir": str(tmp_path / "cache")},
                   settings={"ground": {"skip_ungroundable": False}})
        with Running(create_app(nlp)) as running:
            from urllib.parse import quote

            url = f"{running.url}/#text={quote(' '.join(tokens))}&image={quote(image)}"
            chromium = shutil.which("chromium")
            assert chromium, "chromium is missing: `make test` installs it through .ci/ensure-chromium"
            flags = FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]
            res = subprocess.run([chromium, *flags, "--virtual-time-budget=15000", "--dump-dom", url],
                                 capture_output=True, text=True, timeout=120)
            dom = res.stdout
            assert 'data-ready="1"' in dom and 'data-errors="0"' in dom, res.stderr[-2000:]
            assert 'data-result="' in dom and 'data-result="error"' not in dom and 'data-result="0"' not in dom
            assert 'class="ent"' in dom and dom.count('class="box pred-box"') >= 1
            artifacts = REPO / "artifacts"
            artifacts.mkdir(exist_ok=True)
            shot = artifacts / "service.png"
            shot.unlink(missing_ok=True)
            subprocess.run([chromium, *flags, "--virtual-time-budget=15000", "--window-size=1100,800",
                            f"--screenshot={shot}", url], capture_output=True, timeout=120)
            assert shot.is_file() and shot.stat().st_size > 10_000
