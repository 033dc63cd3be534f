"""The MLLM client against our real loopback replay/fault server (real HTTP)."""

import json
import logging
import time

import pytest
from pydantic import BaseModel

from refineg.config import LLMConfig
from refineg.errors import LLMError, ParseError
from refineg.llm import LLMClient, LLMRequest, last_json_object, parse_answer
from refineg.testing.fake_openai import FakeOpenAIServer, Reply


class Answer(BaseModel):
    answer: str


def parse(text: str) -> Answer:
    return parse_answer(text, Answer)


def _cfg(srv, tmp_path, **kw) -> LLMConfig:
    base = dict(
        base_url=srv.base_url,
        model="replay",
        cache_dir=tmp_path / "cache",
        backoff_base=0.01,
        backoff_max=0.05,
        timeout=2.0,
        max_retries=3,
    )
    base.update(kw)
    return LLMConfig(**base)


def _req(i=0, stage="test") -> LLMRequest:
    return LLMRequest(stage, "unit", "1", [{"role": "user", "content": f"question {i}"}], {"type": "object"}, f"q{i}")


def test_429_429_200_makes_exactly_three_requests(tmp_path):
    with FakeOpenAIServer([Reply(status=429), Reply(status=429), Reply('{"answer": "yes"}')]) as srv:
        with LLMClient(_cfg(srv, tmp_path)) as client:
            result = client.ask(_req(), parse)
            assert result.value == Answer(answer="yes")
            assert client.usage.total("retries") == 2
        assert len(srv.requests) == 3


def test_5xx_is_retried(tmp_path):
    with FakeOpenAIServer([Reply(status=500), Reply(status=503), Reply('{"answer": "ok"}')]) as srv:
        with LLMClient(_cfg(srv, tmp_path)) as client:
            assert client.ask(_req(), parse).ok
        assert len(srv.requests) == 3


def test_400_is_not_retried_and_falls_back_with_the_attempt_count(tmp_path):
    with FakeOpenAIServer([Reply(status=400), Reply('{"answer": "never"}')]) as srv:
        with LLMClient(_cfg(srv, tmp_path)) as client:
            result = client.ask(_req(), parse)
            assert not result.ok and result.reason == "transport"
            assert "after 1 attempt" in result.error and "400" in result.error
            assert client.usage.summary()["stages"]["test"]["fallback_reasons"] == {"transport": 1}
        assert len(srv.requests) == 1


def test_timeout_is_retried_then_fails_with_a_clear_error(tmp_path):
    slow = [Reply('{"answer": "late"}', delay=1.0) for _ in range(3)]
    with FakeOpenAIServer(slow) as srv:
        with LLMClient(_cfg(srv, tmp_path, timeout=0.3, max_retries=2)) as client:
            result = client.ask(_req(), parse)
            assert not result.ok and result.reason == "transport"
            assert "after 3 attempts" in result.error and "no complete reply within 0.3 s" in result.error
            assert client.usage.total("retries") == 2
            with pytest.raises(LLMError) as info:
                result.unwrap()
            assert info.value.attempts == 3 and "no complete reply" in info.value.last_reply
        assert len(srv.requests) == 3


def test_broken_json_is_reasked_once_then_counted_as_a_fallback(tmp_path):
    with FakeOpenAIServer([Reply('{"other": '), Reply("still no json")]) as srv:
        with LLMClient(_cfg(srv, tmp_path)) as client:
            result = client.ask(_req(), parse)
            assert not result.ok and result.reason == "parse" and result.raw == "still no json"
            summary = client.summary()["stages"]["test"]
            assert summary["reasks"] == 1 and summary["fallbacks"] == 1
        # the re-ask shows the model its own reply and the error
        second = srv.requests[1]["messages"]
        assert second[-2] == {"role": "assistant", "content": '{"other": '}
        assert "could not be used" in second[-1]["content"]


def test_reask_can_succeed(tmp_path):
    with FakeOpenAIServer([Reply('{"wrong": 1}'), Reply('Thinking... {"answer": "fixed"}')]) as srv:
        with LLMClient(_cfg(srv, tmp_path)) as client:
            assert client.ask(_req(), parse).value.answer == "fixed"
            assert client.usage.total("fallbacks") == 0


def test_malformed_http_body_is_retried(tmp_path):
    with FakeOpenAIServer([Reply(raw_body='{"choices": [}'), Reply('{"answer": "ok"}')]) as srv:
        with LLMClient(_cfg(srv, tmp_path)) as client:
            assert client.ask(_req(), parse).ok
        assert len(srv.requests) == 2


def test_concurrency_limit_is_never_exceeded(tmp_path):
    with FakeOpenAIServer(default=lambda body: Reply('{"answer": "x"}'), latency=0.05) as srv:
        with LLMClient(_cfg(srv, tmp_path, concurrency=3), show_progress=False) as client:
            results = client.run([_req(i) for i in range(20)], parse)
        assert all(r.ok for r in results)
        assert srv.max_in_flight == 3
        assert len(srv.requests) == 20


def test_cancelled_work_starts_no_queued_request(tmp_path):
    stalled = Reply('{"answer": "late"}', delay=30.0)
    with FakeOpenAIServer(default=lambda body: stalled) as srv:
        with LLMClient(_cfg(srv, tmp_path, concurrency=2, timeout=60.0), show_progress=False) as client:
            for round_ in range(1, 4):  # a few rounds: the race it guards against needs the loop to run in between
                futures = [client.submit(client.complete(_req(10 * round_ + i), parse)) for i in range(12)]
                deadline = time.monotonic() + 10
                while srv.in_flight < 2 and time.monotonic() < deadline:
                    time.sleep(0.02)
                client.cancel(futures)
                while srv.in_flight and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert all(f.cancelled() for f in futures)
                assert srv.in_flight == 0 and len(srv.requests) == srv.abandoned == 2 * round_


def test_results_come_back_in_request_order(tmp_path):
    def echo(body):
        n = body["messages"][0]["content"].split()[-1]
        return Reply(json.dumps({"answer": n}), delay=0.01 * (10 - int(n)))

    with FakeOpenAIServer(default=echo) as srv:
        with LLMClient(_cfg(srv, tmp_path, concurrency=10)) as client:
            results = client.run([_req(i) for i in range(10)], parse)
    assert [r.value.answer for r in results] == [str(i) for i in range(10)]


def test_second_identical_run_is_served_from_the_cache_with_zero_requests(tmp_path):
    with FakeOpenAIServer(default=lambda body: Reply('{"answer": "x"}')) as srv:
        with LLMClient(_cfg(srv, tmp_path)) as client:
            client.run([_req(i) for i in range(5)], parse)
        n_first = len(srv.requests)
        with LLMClient(_cfg(srv, tmp_path)) as client:
            results = client.run([_req(i) for i in range(5)], parse)
            assert client.usage.total("cache_hits") == 5 and client.usage.total("cache_misses") == 0
            assert client.usage.total("requests") == 0
        assert all(r.from_cache for r in results)
        assert len(srv.requests) == n_first == 5


def test_cache_key_changes_with_the_template_version(tmp_path):
    with FakeOpenAIServer(default=lambda body: Reply('{"answer": "x"}')) as srv:
        with LLMClient(_cfg(srv, tmp_path)) as client:
            client.ask(_req(), parse)
            client.ask(LLMRequest("test", "unit", "2", _req().messages, {"type": "object"}), parse)
        assert len(srv.requests) == 2


def test_json_schema_goes_out_as_response_format_unless_switched_off(tmp_path):
    with FakeOpenAIServer(default=lambda body: Reply('{"answer": "x"}')) as srv:
        with LLMClient(_cfg(srv, tmp_path)) as client:
            client.ask(_req(), parse)
        with LLMClient(_cfg(srv, tmp_path, json_schema=False, cache=False)) as client:
            client.ask(_req(), parse)
    assert srv.requests[0]["response_format"]["type"] == "json_schema"
    assert "response_format" not in srv.requests[1]


def test_api_key_is_sent_but_never_cached_or_logged(tmp_path, monkeypatch, caplog):
    secret = "sk-test-SECRET-4f9c2a"
    monkeypatch.setenv("REFINEG_LLM_API_KEY", secret)
    caplog.set_level(logging.DEBUG)
    with FakeOpenAIServer([Reply(status=429), Reply('{"bad": 1}'), Reply(status=400)]) as srv:
        with LLMClient(_cfg(srv, tmp_path)) as client:
            result = client.ask(_req(), parse)
            summary = json.dumps(client.summary())
    assert srv.headers[0]["authorization"] == f"Bearer {secret}"
    for f in (tmp_path / "cache").rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
    assert secret not in caplog.text
    assert secret not in summary and secret not in (result.error or "")


def test_no_llm_configured_is_a_config_error(tmp_path):
    from refineg.errors import ConfigError

    with pytest.raises(ConfigError, match="no LLM configured"):
        LLMClient(LLMConfig(cache_dir=tmp_path))


def test_last_json_object_takes_the_last_of_several():
    text = 'Step 1 {"a": 1}. Finally:\n```json\n{"answer": "b", "nested": {"x": [1, 2]}}\n```'
    assert last_json_object(text) == {"answer": "b", "nested": {"x": [1, 2]}}
    with pytest.raises(ParseError):
        last_json_object("no json {here")
    with pytest.raises(ParseError, match="answer"):
        parse('{"other": 1}')


def _whole_object(text: str) -> Answer:
    """A parse that refuses a cut object (the repairer would otherwise close it)."""
    if not text.rstrip().endswith("}"):
        raise ParseError("the object is cut")
    return parse(text)


def test_a_truncated_reply_is_asked_again_with_more_tokens_and_never_cached(tmp_path):
    cut = Reply('{"answer": "ye', finish_reason="length")
    with FakeOpenAIServer([cut, Reply('{"answer": "yes"}')]) as srv:
        with LLMClient(_cfg(srv, tmp_path, max_tokens=100)) as client:
            result = client.ask(_req(stage="refinement"), parse)
            assert result.value == Answer(answer="yes")
            assert client.usage.by_stage["refinement"]["truncated"] == 1
        assert [r["max_tokens"] for r in srv.requests] == [100, 200]
    with FakeOpenAIServer([cut, cut]) as srv:  # cut twice: a fallback under its own reason, and nothing cached
        with LLMClient(_cfg(srv, tmp_path / "other", max_tokens=100)) as client:
            result = client.ask(_req(), _whole_object)
            assert result.reason == "truncated" and client.usage.fallback_reasons["test"]["truncated"] == 1
            assert client.usage.total("failures") == 0  # not a transport failure
        with LLMClient(_cfg(srv, tmp_path / "other")) as client:
            srv.push(Reply('{"answer": "now"}'))
            assert client.ask(_req(), parse).value == Answer(answer="now")  # asked again, not served from the cache


def test_null_content_from_a_reasoning_model_is_empty_not_a_transport_failure(tmp_path):
    thinking = Reply(None, reasoning="Let me think about [1, 2, 3, 4]...", finish_reason="length")
    with FakeOpenAIServer([thinking, Reply('{"answer": "ok"}')]) as srv:
        with LLMClient(_cfg(srv, tmp_path)) as client:
            result = client.ask(_req(), parse)
            assert result.value == Answer(answer="ok")
            assert client.usage.total("truncated") == 1 and client.usage.total("failures") == 0
    with FakeOpenAIServer([Reply(""), Reply(None)]) as srv:
        with LLMClient(_cfg(srv, tmp_path / "e")) as client:
            result = client.ask(_req(), parse)
            assert result.reason == "empty" and client.usage.total("empty") == 2


def test_two_endpoints_serving_one_model_name_never_share_replies(tmp_path):
    with FakeOpenAIServer([Reply('{"answer": "a"}')]) as a, FakeOpenAIServer([Reply('{"answer": "b"}')]) as b:
        with LLMClient(_cfg(a, tmp_path)) as client:
            assert client.ask(_req(), parse).value.answer == "a"
        with LLMClient(_cfg(b, tmp_path)) as client:
            assert client.ask(_req(), parse).value.answer == "b"
            assert client.usage.total("cache_hits") == 0


def test_content_given_as_parts_is_read_as_text(tmp_path):
    body = json.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {
                        "role": "assistant",
                        "content": [{"type": "text", "text": '{"answer": '}, {"type": "text", "text": '"parts"}'}],
                    },
                }
            ],
        }
    )
    with FakeOpenAIServer([Reply(raw_body=body)]) as srv:
        with LLMClient(_cfg(srv, tmp_path)) as client:
            assert client.ask(_req(), parse).value == Answer(answer="parts")


def test_replicas_share_the_load_each_within_its_own_limit(tmp_path):
    answer = lambda body: Reply('{"answer": "x"}')  # noqa: E731
    with FakeOpenAIServer(default=answer, latency=0.05) as a, FakeOpenAIServer(default=answer, latency=0.05) as b:
        cfg = _cfg(a, tmp_path, base_url=[a.base_url, b.base_url], concurrency=2)
        with LLMClient(cfg, show_progress=False) as client:
            results = client.run([_req(i) for i in range(24)], parse)
        assert all(r.ok for r in results)
        assert len(a.requests) + len(b.requests) == 24 and len(a.requests) >= 8 and len(b.requests) >= 8
        assert a.max_in_flight == 2 and b.max_in_flight == 2


def test_a_failing_replica_is_retried_on_another(tmp_path):
    with (
        FakeOpenAIServer(default=lambda body: Reply(status=503)) as bad,
        FakeOpenAIServer(default=lambda body: Reply('{"answer": "ok"}')) as good,
    ):
        with LLMClient(
            _cfg(good, tmp_path, base_url=[bad.base_url, good.base_url], max_retries=1), show_progress=False
        ) as client:
            results = client.run([_req(i) for i in range(10)], parse)
        assert all(r.ok and r.value.answer == "ok" for r in results)
        assert len(good.requests) == 10


def test_replies_are_cached_under_the_set_of_replicas_not_the_one_that_answered(tmp_path):
    with (
        FakeOpenAIServer(default=lambda body: Reply('{"answer": "x"}')) as a,
        FakeOpenAIServer(default=lambda body: Reply('{"answer": "x"}')) as b,
    ):
        cfg = _cfg(a, tmp_path, base_url=[a.base_url, b.base_url])
        with LLMClient(cfg, show_progress=False) as client:
            client.run([_req(i) for i in range(6)], parse)
        with LLMClient(cfg.model_copy(update={"base_url": [b.base_url, a.base_url]}), show_progress=False) as client:
            assert all(r.from_cache for r in client.run([_req(i) for i in range(6)], parse))
            assert client.usage.total("requests") == 0


def test_a_reply_sent_one_byte_at_a_time_is_cut_off_at_the_deadline(tmp_path):
    trickle = [Reply('{"answer": "late, very late"}', trickle=0.2) for _ in range(2)]
    with FakeOpenAIServer(trickle) as srv:
        with LLMClient(_cfg(srv, tmp_path, timeout=0.8, max_retries=1)) as client:
            t0 = time.perf_counter()
            result = client.ask(_req(), parse)
            took = time.perf_counter() - t0
    assert not result.ok and result.reason == "transport" and "no complete reply within 0.8 s" in result.error
    assert took < 2 * 0.8 + 1.0, took  # every read got a byte in time; the whole attempt did not
    assert len(srv.requests) == 2


@pytest.mark.parametrize(
    "status, body, refusal, says",
    [
        (
            500,
            "image input is not supported - hint: if this is unexpected, you may need to provide the mmproj",
            "no_images",
            "takes no images",
        ),
        (400, "At most 1 image(s) may be provided in one request.", "too_many_images", "--limit-mm-per-prompt"),
        (401, "Incorrect API key provided", "auth", "REFINEG_LLM_API_KEY"),
        (404, "The model `m` does not exist", "not_found", "check --llm-model"),
        (400, "This model's maximum context length is 4096 tokens", "context", "context"),
    ],
)
def test_an_endpoints_refusal_is_not_retried_and_names_the_fix(tmp_path, status, body, refusal, says):
    reply = Reply(status=status, raw_body=json.dumps({"error": {"message": body}}))
    with FakeOpenAIServer([reply, Reply('{"answer": "never asked"}')]) as srv:
        with LLMClient(_cfg(srv, tmp_path)) as client:
            result = client.ask(_req(), parse)
    assert not result.ok and result.reason == "transport" and len(srv.requests) == 1
    assert result.exception.refusal == refusal and says in result.error


def test_after_failures_in_a_row_the_endpoint_is_taken_as_down_then_tried_again(tmp_path):
    with FakeOpenAIServer(default=lambda body: Reply(status=503)) as srv:
        cfg = _cfg(srv, tmp_path, max_retries=0, give_up_after=3, timeout=0.5, concurrency=1)
        with LLMClient(cfg) as client:
            results = client.run([_req(i) for i in range(6)], parse)
            assert [r.ok for r in results] == [False] * 6
            assert len(srv.requests) == 3 and "taken as down" in results[-1].error  # the last three never went out
            time.sleep(0.6)  # the pause (min(60 s, timeout)) is over: requests go out again
            srv.default = lambda body: Reply('{"answer": "back"}')
            assert client.ask(_req(9), parse).ok
