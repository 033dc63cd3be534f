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

from refineg.config import ServiceConfig
from refineg.data import save_samples
from refineg.llm.embedded import free_port
from refineg.pipeline import load
from refineg.service import create_app, server_config
from refineg.testing.fake_openai import FakeOpenAIServer, Reply

from ..conftest import REPO, SAMPLE_IMAGE
from ..report.test_report import FLAGS

REFINEG = str(Path(sys.executable).parent / "refineg")


class Running:
    """A uvicorn server in a thread on a free loopback port, with the settings `refineg serve` uses."""

    def __init__(self, app, service: ServiceConfig | None = None):
        self.port = free_port()
        service = (service or ServiceConfig()).model_copy(update={"port": self.port})
        self.server = uvicorn.Server(server_config(app, service))
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
    with Running(create_app(nlp, ServiceConfig(max_body_mb=1.0))) as running:
        yield running


def test_concurrent_answers_equal_refineg_predict(service, tiny_model, tmp_path):
    model, _, dev = tiny_model
    save_samples(dev, tmp_path / "dev.jsonl")
    subprocess.run(
        [
            REFINEG,
            "predict",
            "--model",
            str(model),
            "--data",
            str(tmp_path / "dev.jsonl"),
            "--out",
            str(tmp_path / "p.jsonl"),
            "--quiet",
        ],
        check=True,
        capture_output=True,
    )
    expected = {
        json.loads(line)["id"]: json.loads(line)["entities"] for line in (tmp_path / "p.jsonl").read_text().splitlines()
    }

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


@pytest.mark.parametrize(
    "body, status, says",
    [
        (b"{not json", 400, "invalid JSON"),
        (b'{"id": "x"}', 422, "text or tokens"),
        (b'{"text": "   "}', 422, "text or tokens"),
        (b'{"text": 42}', 422, "text"),
        (b'{"text": "a", "tokens": ["a"]}', 422, "one of them"),
        (json.dumps({"text": "Obama in Paris", "image": "not base64 !!"}).encode(), 400, "base64"),
        (
            json.dumps(
                {"text": "Obama in Paris", "image": base64.b64encode(b"plain text, no image").decode()}
            ).encode(),
            400,
            "image",
        ),
        (b'{"text": "' + b"a" * 1_200_000 + b'"}', 413, "over"),
        (b'{"text": "caf\xe9 in Paris"}', 400, "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
        (json.dumps({"text": "Obama in Paris", "image": "data:image/png;base64"}).encode(), 400, "comma"),
        (json.dumps({"text": "Obama in Paris", "image": "data:,"}).encode(), 400, "image"),
    ],
)
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
    with Running(create_app(load(tiny_model[0]), ServiceConfig(api_key_env="REFINEG_TEST_KEY"))) as running:
        assert httpx.post(f"{running.url}/v1/gmner", json={"text": "Obama"}).status_code == 401
        ok = httpx.post(f"{running.url}/v1/gmner", json={"text": "Obama"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_the_page_draws_entities_and_boxes_in_headless_chromium(tiny_model, tmp_path):
    model, _, dev = tiny_model
    tokens = next(s.tokens for s in dev if load(model)(tokens=s.tokens).entities)

    def answer(body):  # every entity the MLLM is asked about is in the picture's upper left
        text = json.dumps(body)
        names = [e.text for e in load(model)(tokens=tokens).entities]
        return Reply(
            json.dumps({"entities": [{"text": n, "type": "PER", "boxes": [[20, 20, 200, 200]]} for n in names]})
            if "Ground exactly" in text or "lists every entity" in text
            else '{"entities": []}'
        )

    image = "data:image/jpeg;base64," + base64.b64encode(SAMPLE_IMAGE.read_bytes()).decode()
    with FakeOpenAIServer(default=answer) as llm:
        nlp = load(
            model,
            llm={"base_url": llm.base_url, "model": "m", "cache_dir": str(tmp_path / "cache")},
            settings={"ground": {"skip_ungroundable": False}},
        )
        with Running(create_app(nlp)) as running:
            from urllib.parse import quote

            url = f"{running.url}/#text={quote(' '.join(tokens))}&image={quote(image)}"
            chromium = shutil.which("chromium")
            assert chromium, "chromium is missing: `make test` installs it through .ci/ensure-chromium"
            flags = FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]
            res = subprocess.run(
                [chromium, *flags, "--virtual-time-budget=15000", "--dump-dom", url],
                capture_output=True,
                text=True,
                timeout=120,
            )
            dom = res.stdout
            assert 'data-ready="1"' in dom and 'data-errors="0"' in dom, res.stderr[-2000:]
            assert 'data-result="' in dom and 'data-result="error"' not in dom and 'data-result="0"' not in dom
            assert 'class="ent"' in dom and dom.count('class="box pred-box"') >= 1
            artifacts = REPO / "artifacts"
            artifacts.mkdir(exist_ok=True)
            shot = artifacts / "service.png"
            shot.unlink(missing_ok=True)
            subprocess.run(
                [
                    chromium,
                    *flags,
                    "--virtual-time-budget=15000",
                    "--window-size=1100,800",
                    f"--screenshot={shot}",
                    url,
                ],
                capture_output=True,
                timeout=120,
            )
            assert shot.is_file() and shot.stat().st_size > 10_000


def test_a_body_over_the_limit_gets_a_413_that_urllib_can_read(tiny_model):
    import urllib.error
    import urllib.request

    with Running(create_app(load(tiny_model[0]), ServiceConfig(max_body_mb=1.0))) as running:
        req = urllib.request.Request(
            f"{running.url}/v1/gmner", data=b"x" * 5_000_000, headers={"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=60)
        assert info.value.code == 413 and "over" in json.loads(info.value.read())["error"]


def test_every_error_is_json_and_healthz_counts_add_up(tiny_model, monkeypatch):
    nlp = load(tiny_model[0])
    with Running(create_app(nlp)) as running:
        assert httpx.post(f"{running.url}/v1/gmner", json={"text": "Obama in Paris"}).status_code == 200
        assert httpx.post(f"{running.url}/v1/gmner", content=b"{").status_code == 400
        assert httpx.get(f"{running.url}/no/such/page").status_code == 404
        monkeypatch.setattr(nlp, "tagging", lambda *args: 1 / 0)  # a bug of ours
        broken = httpx.post(f"{running.url}/v1/gmner", json={"text": "Obama in Paris"})
        assert broken.status_code == 500 and broken.json() == {"error": "internal error: ZeroDivisionError"}
        counts = httpx.get(f"{running.url}/healthz").json()["requests"]
    assert counts["server_errors"] == 1 and counts["client_errors"] == 2 and counts["ok"] == 1
    assert counts["total"] == 4 == sum(v for k, v in counts.items() if k != "total")  # healthz itself after


def test_the_api_docs_are_served_offline(service):
    page = httpx.get(f"{service.url}/docs")
    assert page.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in page.text and "cdn" not in page.text
    js = httpx.get(f"{service.url}/docs-assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert httpx.get(f"{service.url}/openapi.json").json()["paths"]["/v1/gmner"]


def _llm_nlp(model, srv, tmp_path, **llm):
    return load(
        model,
        llm={
            "base_url": srv.base_url,
            "model": "m",
            "cache": False,
            "cache_dir": str(tmp_path),
            "backoff_base": 0.01,
            **llm,
        },
        images=[tmp_path],
        settings={"ground": {"skip_ungroundable": False}},
    )


def test_a_text_only_post_on_a_service_with_image_folders_is_quiet(tiny_model, tmp_path, caplog):
    model, _, dev = tiny_model
    with FakeOpenAIServer(default=lambda body: Reply('{"entities": []}')) as srv, caplog.at_level("WARNING"):
        with Running(create_app(_llm_nlp(model, srv, tmp_path))) as running:
            for s in dev[:5]:
                assert httpx.post(f"{running.url}/v1/gmner", json={"tokens": list(s.tokens)}).status_code == 200
    assert "not found" not in caplog.text and "image" not in caplog.text


def test_a_client_that_goes_away_takes_its_mllm_work_with_it(tiny_model, tmp_path):
    model, _, dev = tiny_model
    image = "data:image/jpeg;base64," + base64.b64encode(SAMPLE_IMAGE.read_bytes()).decode()
    tokens = next(s.tokens for s in dev if load(model)(tokens=s.tokens).entities)
    with FakeOpenAIServer(default=lambda body: Reply('{"entities": []}', delay=30)) as srv:
        with Running(create_app(_llm_nlp(model, srv, tmp_path))) as running:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{running.url}/v1/gmner", json={"tokens": list(tokens), "image": image}, timeout=2)
            deadline = time.time() + 10
            while not srv.abandoned and time.time() < deadline:
                time.sleep(0.1)
            assert srv.abandoned == 1 and srv.in_flight == 0  # the MLLM request was cancelled, not left to run
            assert httpx.get(f"{running.url}/healthz").json()["requests"]["cancelled"] == 1


def test_endpoints_that_trickle_their_replies_do_not_wedge_later_requests(tiny_model, tmp_path):
    model, _, dev = tiny_model
    image = "data:image/jpeg;base64," + base64.b64encode(SAMPLE_IMAGE.read_bytes()).decode()
    alone = load(model)  # once: a load per post made this test 20 s longer
    posts = [s.tokens for s in dev if alone(tokens=s.tokens).entities][:4]
    slow = Reply('{"entities": []}', trickle=0.5)
    with FakeOpenAIServer(default=lambda body: slow) as srv:
        nlp = _llm_nlp(model, srv, tmp_path, timeout=1.0, max_retries=0, concurrency=2)
        with Running(create_app(nlp)) as running:

            def post(tokens):
                return httpx.post(f"{running.url}/v1/gmner", json={"tokens": list(tokens), "image": image}, timeout=30)

            t0 = time.time()
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(post, posts))
            assert time.time() - t0 < 8 and all(a.status_code == 200 for a in answers)
            assert all(a.json()["status"] == "retry" for a in answers)  # marked: the MLLM work did not happen
            srv.default = lambda body: Reply(json.dumps({"entities": []}))  # the endpoint recovers
            again = post(posts[0])
            assert again.status_code == 200 and "status" not in again.json()


def test_a_header_that_never_ends_is_cut_off(tiny_model):
    import socket

    with Running(create_app(load(tiny_model[0])), ServiceConfig(header_timeout_s=1.0)) as running:
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as conn:
            conn.sendall(b"POST /v1/gmner HTTP/1.1\r\nHost: x\r\n")
            t0 = time.time()
            for _ in range(20):  # keeps trickling headers: a byte every 0.2 s
                try:
                    conn.sendall(b"X")
                except OSError:
                    break
                time.sleep(0.2)
            conn.settimeout(5)
            try:
                assert conn.recv(100) == b""
            except ConnectionResetError:
                pass
            assert time.time() - t0 < 4
        assert httpx.get(f"{running.url}/healthz").status_code == 200


def test_sigterm_ends_the_service_within_its_grace_period_even_with_a_stalled_request(tiny_model, tmp_path):
    import signal

    model, _, dev = tiny_model
    port = free_port()
    (tmp_path / "serve.toml").write_text("[service]\nshutdown_grace_s = 2\n[ground]\nskip_ungroundable = false\n")
    with FakeOpenAIServer(default=lambda body: Reply('{"entities": []}', delay=120)) as srv:
        proc = subprocess.Popen(
            [
                REFINEG,
                "serve",
                "--model",
                str(model),
                "--port",
                str(port),
                "--config",
                str(tmp_path / "serve.toml"),
                "--llm-base-url",
                srv.base_url,
                "--llm-model",
                "m",
                "--cache-dir",
                str(tmp_path / "c"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.time() + 60
            while time.time() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            tokens = next(s.tokens for s in dev if load(model)(tokens=s.tokens).entities)
            image = "data:image/jpeg;base64," + base64.b64encode(SAMPLE_IMAGE.read_bytes()).decode()
            stalled = threading.Thread(
                target=lambda: _quietly(f"http://127.0.0.1:{port}/v1/gmner", {"tokens": list(tokens), "image": image})
            )
            stalled.start()
            while not srv.in_flight and time.time() < deadline:
                time.sleep(0.1)
            assert srv.in_flight
            t0 = time.time()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            assert time.time() - t0 < 2 + 6, "the service did not stop within its grace period"
            stalled.join(30)
        finally:  # a failed check must not leave a service behind
            if proc.poll() is None:
                proc.kill()


def _quietly(url: str, body: dict) -> None:
    try:
        httpx.post(url, json=body, timeout=60)
    except httpx.HTTPError:
        pass
