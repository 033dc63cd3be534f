"""The embedded llama.cpp backend with the packaged SmolLM2 (plumbing only: the model is tiny)."""

import pytest
from pydantic import BaseModel, Field

from refineg.config import LLMConfig
from refineg.errors import ConfigError
from refineg.llm import LLMClient, LLMRequest, parse_answer
from refineg.llm.embedded import packaged_smollm2


class Pong(BaseModel):
    answer: str = Field(pattern="^(pong|ping)$")
    note: str = Field(max_length=12)


SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["pong", "ping"]}, "note": {"type": "string", "maxLength": 12}},
    "required": ["answer", "note"],
}


def test_smollm2_returns_schema_valid_json_through_the_same_client(tmp_path):
    cfg = LLMConfig(gguf=packaged_smollm2(), cache_dir=tmp_path, max_tokens=64, gguf_ctx=1024)
    req = LLMRequest(
        "check",
        "embedded-test",
        "1",
        [{"role": "user", "content": "Answer pong with a short note, as JSON."}],
        SCHEMA,
        "e1",
    )
    with LLMClient(cfg, show_progress=False) as client:
        assert client.base_url.startswith("http://127.0.0.1:")
        result = client.ask(req, lambda text: parse_answer(text, Pong))
        assert result.ok, result.error
        assert result.value.answer in ("pong", "ping")
        assert client.usage.total("requests") == 1 and client.usage.total("completion_tokens") > 0
        port = client._embedded.port
    # the server's own log lines went to a file in the cache folder, not to the terminal
    log_file = tmp_path / "llama-server.log"
    assert log_file.is_file() and log_file.stat().st_size > 0
    # shut down cleanly: the port is free again
    import socket

    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    # a second run starts the server on another port, and still finds the first run's reply in the cache
    with LLMClient(cfg, show_progress=False) as client:
        assert client._embedded.port != port
        again = client.ask(req, lambda text: parse_answer(text, Pong))
        assert again.from_cache and again.raw == result.raw and client.usage.total("requests") == 0


def test_missing_gguf_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="GGUF file not found"):
        LLMClient(LLMConfig(gguf=tmp_path / "nope.gguf", cache_dir=tmp_path))


def test_a_text_only_model_refuses_images_once_and_the_fix_is_named(tmp_path):
    """SmolLM2 takes no images: the refusal is not retried, and both llm-check and ground name the fix."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    refineg = str(Path(sys.executable).parent / "refineg")
    gguf = ["--llm-gguf", str(packaged_smollm2()), "--cache-dir", str(tmp_path / "cache")]
    check = subprocess.run(
        [refineg, "llm-check", "--images", "--json", *gguf], capture_output=True, text=True, timeout=300
    )
    report = json.loads(check.stdout)
    assert check.returncode == 1 and report["reachable"] and not report["probe"]["images_accepted"]
    assert "takes no images" in report["probe"]["images_error"] and report["usage"]["retries"] == 0
    (tmp_path / "images").mkdir()
    Image.new("RGB", (300, 200)).save(tmp_path / "images" / "a.jpg")
    (tmp_path / "d.jsonl").write_text(
        json.dumps(
            {
                "id": "a",
                "tokens": ["Obama", "in", "Paris"],
                "image": "a.jpg",
                "entities": [{"start": 0, "end": 1, "type": "PER"}],
            }
        )
        + "\n"
    )
    ground = subprocess.run(
        [
            refineg,
            "ground",
            "--data",
            str(tmp_path / "d.jsonl"),
            "--images",
            str(tmp_path / "images"),
            "--out",
            str(tmp_path / "g.jsonl"),
            "--quiet",
            *gguf,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ground.returncode == 1 and "takes no images" in ground.stdout
    summary = json.loads((tmp_path / "g.jsonl.summary.json").read_text())
    assert summary["counts"]["llm_refused_no_images"] == 1 and summary["llm"]["total"]["retries"] == 0
    row = json.loads((tmp_path / "g.jsonl").read_text())
    assert row["status"] == "retry" and row["retry_reason"] == "grounding refused (no_images)"
