"""The reply cache: a damaged one is set aside with a warning and rebuilt, never the end of a run."""

import logging

import pytest

from refineg.config import LLMConfig
from refineg.llm import LLMClient, LLMRequest
from refineg.llm.cache import ReplyCache
from refineg.testing.fake_openai import FakeOpenAIServer, Reply


@pytest.mark.parametrize("damage", ["overwritten", "a folder in its place", "a file in place of the folder"])
def test_a_damaged_cache_is_set_aside_and_rebuilt(tmp_path, caplog, damage):
    folder = tmp_path / "cache" / "llm"
    ReplyCache(folder).set("k", {"text": "before"})
    db = folder / "cache.db"
    if damage == "overwritten":
        db.write_bytes(b"not a database at all" * 100)
    elif damage == "a folder in its place":
        db.unlink()
        db.mkdir()
    else:
        import shutil

        shutil.rmtree(folder)
        folder.write_text("x")
    req = LLMRequest("test", "unit", "1", [{"role": "user", "content": "hi"}], None, "q")
    with FakeOpenAIServer(default=lambda body: Reply("fresh")) as srv, caplog.at_level(logging.WARNING):
        with LLMClient(LLMConfig(base_url=srv.base_url, model="m", cache_dir=tmp_path / "cache")) as client:
            assert client.ask(req, str).value == "fresh"
        with LLMClient(LLMConfig(base_url=srv.base_url, model="m", cache_dir=tmp_path / "cache")) as client:
            assert client.ask(req, str).from_cache  # the new cache works
    assert "set aside" in caplog.text and len(list(tmp_path.glob("cache/llm.damaged-*"))) == 1
