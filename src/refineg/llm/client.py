"""The one MLLM client: OpenAI chat completions, async and concurrent, cached, retried, accounted.

Tasks (synthesis, refinement, grounding) never do HTTP themselves: they build an ``LLMRequest``
and give a ``parse(text)`` function; the client returns an ``LLMResult`` for each request, in
order. A reply that does not parse is re-asked once with the error shown; if that fails too, the
result is a counted fallback (``value is None``), never an exception and never silent.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..config import LLMConfig, api_key, default_cache_dir
from ..data.images import SentImage, prepare_image
from ..errors import ConfigError, LLMError, ParseError
from ..progress import tqdm
from .accounting import Usage
from .cache import ReplyCache, cache_key
from .embedded import EmbeddedServer
from .families import resolve

log = logging.getLogger(__name__)
T = TypeVar("T")

REASK = (
    "Your last answer could not be used: {error}. Answer again, in the form the first message asked for, "
    "and put nothing after the answer."
)


@dataclass(frozen=True)
class Refusal:
    """A way an endpoint fails for good (matched on ``"STATUS body"``), and the fix to name."""

    name: str
    pattern: str
    hint: str


# Asking again cannot help with these: they are not retried, and the run names the fix.
REFUSALS: tuple[Refusal, ...] = (
    Refusal(
        "no_images",
        r"image input is not supported|does not support (?:image|vision|multi-?modal)|not a multimodal|"
        r"images? (?:are|is) not supported|no vision",
        "this model takes no images: serve a vision-language model (with --llm-gguf, give its --llm-mmproj "
        "too), or run without images",
    ),
    Refusal(
        "too_many_images",
        r"at most \d+ images?|too many images|limit[_-]mm[_-]per[_-]prompt|images? per (?:prompt|request)",
        "the endpoint takes fewer images per request than refineg sends (K demonstrations + 1): raise its "
        "limit (vLLM: --limit-mm-per-prompt) or lower [ground] k",
    ),
    Refusal("auth", r"^40[13]\b", "the endpoint refused the API key: set $REFINEG_LLM_API_KEY (or $OPENAI_API_KEY)"),
    Refusal(
        "not_found",
        r"^404\b",
        "the endpoint has no such model or path: check --llm-model and that --llm-base-url ends "
        "in /v1 (`refineg llm-check` shows what answers)",
    ),
    Refusal(
        "context",
        r"context (?:length|window|size)|maximum context|too many tokens|exceeds the available context",
        "the request is longer than the model's context: give the server a longer context, or lower "
        "[ground] k or [llm] image_max_side",
    ),
    Refusal("quota", r"insufficient_quota|billing", "the account behind the API key has no quota left"),
)
# Statuses worth asking again whatever the body says (unless a refusal above matches first).
TRANSIENT_STATUS = {408, 409, 425, 429}


def refusal(status: int | None, body: str) -> Refusal | None:
    """The permanent failure a reply's status and body describe, if any."""
    text = f"{status or ''} {body}"
    return next((r for r in REFUSALS if re.search(r.pattern, text, re.I)), None)


@dataclass(frozen=True)
class LLMRequest:
    """One chat request of a task, named by its stage, prompt template and version."""

    stage: str
    template: str
    version: str
    messages: list[dict]
    schema: dict | None = None
    key: str = ""


@dataclass(frozen=True)
class LLMResult(Generic[T]):
    """The parsed value, or None with the fallback reason; raw is the last reply text."""

    value: T | None
    raw: str | None = None
    reason: str | None = None
    error: str | None = None
    from_cache: bool = False
    exception: Exception | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.value is not None

    def unwrap(self) -> T:
        """The value, or the LLMError / ParseError that made this a fallback."""
        if self.value is None:
            raise self.exception or LLMError(self.error or "no value")
        return self.value


@dataclass
class _Reply:
    text: str
    from_cache: bool
    finish: str | None = None

    @property
    def incomplete(self) -> str | None:
        """'truncated' (cut at max_tokens) or 'empty' (no content, e.g. all reasoning), else None."""
        if self.finish == "length":
            return "truncated"
        return None if self.text.strip() else "empty"


def embedded_server(cfg: LLMConfig) -> EmbeddedServer:
    """The llama.cpp server for cfg.gguf; its log goes to the cache folder unless verbose."""
    log_dir = None if cfg.verbose else (cfg.cache_dir or default_cache_dir())
    return EmbeddedServer(
        cfg.gguf, cfg.mmproj, cfg.gguf_ctx, cfg.gguf_threads, min(cfg.concurrency, 4), log_dir=log_dir
    )


def cache_scope(cfg: LLMConfig) -> str:
    """What names a model's replies in the cache: the set of endpoint URLs, or the GGUF file (whose port changes)."""
    if cfg.cache_scope:
        return cfg.cache_scope
    if cfg.gguf:
        return f"gguf:{Path(cfg.gguf).resolve()}:{cfg.mmproj or ''}"
    return "|".join(sorted(cfg.endpoints))


@dataclass
class LLMClient:
    """A client for one endpoint, several replicas of one model, or an embedded GGUF server, built from an LLMConfig."""

    config: LLMConfig
    usage: Usage = field(default_factory=Usage)
    show_progress: bool = True

    def __post_init__(self) -> None:
        cfg = self.config
        self._embedded: EmbeddedServer | None = None
        if cfg.gguf is not None:
            self._embedded = embedded_server(cfg)
            self.endpoints, self.model = [self._embedded.base_url], cfg.model or self._embedded.model
        elif cfg.endpoints and cfg.model:
            self.endpoints, self.model = cfg.endpoints, cfg.model
        else:
            raise ConfigError("no LLM configured: give --llm-base-url and --llm-model, or --llm-gguf")
        self.base_url = self.endpoints[0]
        self.cache_scope = cache_scope(cfg)
        self.dialect = resolve(cfg.box_format, self.model)
        folder = (cfg.cache_dir or default_cache_dir()) / "llm" if cfg.cache else None
        self.cache = ReplyCache(folder)
        # One event loop in a thread of its own runs every request of this client: one HTTP connection
        # pool and one concurrency limit, whichever thread calls run() (the service calls it from many),
        # and run() works inside a caller's own event loop too (a notebook).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()

    def close(self) -> None:
        """Close the HTTP client and its event loop, the cache, and the embedded server, if any."""
        if self._loop is not None:
            for client in self._clients:
                asyncio.run_coroutine_threadsafe(client.close(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None
        self.cache.close()
        if self._embedded is not None:
            self._embedded.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- public API -------------------------------------------------------------------------

    def run(
        self,
        requests: Sequence[LLMRequest],
        parse: Callable[[str], T] | Sequence[Callable[[str], T]],
        desc: str = "LLM",
    ) -> list[LLMResult[T]]:
        """Results for every request, in order, with at most ``concurrency`` requests in flight.
        ``parse`` is one function for all requests, or one per request."""
        parses = list(parse) if isinstance(parse, (list, tuple)) else [parse] * len(requests)
        return asyncio.run_coroutine_threadsafe(self._run(list(requests), parses, desc), self._event_loop()).result()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, daemon=True, name="refineg-llm").start()
                self._loop = loop
                asyncio.run_coroutine_threadsafe(self._open(), loop).result()
        return self._loop

    async def _open(self) -> None:
        import openai  # here, not at the top: tagging alone never needs it (0.6 s of a predict run)

        # Retries are ours (counted, with jitter); the library's own are switched off.
        self._clients = [
            openai.AsyncOpenAI(
                base_url=url, api_key=api_key() or "not-needed", timeout=self.config.timeout, max_retries=0
            )
            for url in self.endpoints
        ]
        # ``concurrency`` is per endpoint: replicas each take that many requests at once
        self._sems = [asyncio.Semaphore(self.config.concurrency) for _ in self.endpoints]
        self._busy = [0] * len(self.endpoints)
        self._turn = 0
        self._failed_in_row = 0  # requests that failed for good, one after the other
        self._down_until = 0.0  # while the endpoint is taken as down, requests fail at once

    def _endpoint(self, avoid: int | None) -> int:
        """The least busy endpoint (taking turns on ties), other than the one that just failed if there is a choice."""
        self._turn += 1
        order = [(i + self._turn) % len(self.endpoints) for i in range(len(self.endpoints))]
        usable = [i for i in order if i != avoid] or order
        return min(usable, key=lambda i: self._busy[i])

    def ask(self, request: LLMRequest, parse: Callable[[str], T]) -> LLMResult[T]:
        """The result of one request."""
        return self.run([request], parse, desc=request.stage)[0]

    async def complete(self, request: LLMRequest, parse: Callable[[str], T]) -> LLMResult[T]:
        """The result of one request, awaited on this client's event loop (inside a coroutine given to submit)."""
        return await self._call(request, parse)

    def start(self) -> None:
        """Open the HTTP client and its event loop now (otherwise the first request does)."""
        self._event_loop()

    def submit(self, coro: Awaitable[T]) -> Future:
        """Run a coroutine on this client's event loop (where complete() may be awaited); its future."""
        return asyncio.run_coroutine_threadsafe(coro, self._event_loop())

    def cancel(self, futures: Collection[Future]) -> None:
        """Cancel the work behind futures from submit(), all in one turn of the event loop."""

        # Cancelled one by one from another thread, a call that gives back its concurrency slot would let a
        # queued call, not yet cancelled, start a request that nobody will read. The collection is read on the
        # loop, where the futures' done-callbacks run.
        async def cancel_all() -> None:
            for fut in list(futures):
                fut.cancel()

        if futures and self._loop is not None:
            asyncio.run_coroutine_threadsafe(cancel_all(), self._loop).result()

    def image(self, image) -> SentImage:
        """An image (path or PIL image) resized as configured, in the model family's own frame where it has one."""
        return prepare_image(
            image, self.config.image_max_side, self.config.image_multiple_of, self.dialect.family.frame
        )

    def summary(self) -> dict:
        """Usage per stage with the cost at the configured prices."""
        return self.usage.summary(self.config.price_prompt_per_1k, self.config.price_completion_per_1k)

    # ---- internals --------------------------------------------------------------------------

    async def _run(self, requests: list[LLMRequest], parses: list[Callable[[str], T]], desc: str) -> list[LLMResult[T]]:
        bar = tqdm(total=len(requests), desc=desc, disable=not self.show_progress or len(requests) < 2, leave=False)

        async def one(req: LLMRequest, parse: Callable[[str], T]) -> LLMResult[T]:
            try:
                return await self._call(req, parse)
            finally:
                bar.update(1)

        try:
            return list(await asyncio.gather(*(one(r, p) for r, p in zip(requests, parses))))
        finally:
            bar.close()

    async def _call(self, req: LLMRequest, parse: Callable[[str], T]) -> LLMResult[T]:
        """Ask; a truncated or empty reply is asked again once with twice the tokens, an unparsable one
        once with the error shown. What still fails is a fallback counted under its own reason."""
        messages = list(req.messages)
        max_tokens = self.config.tokens_for(req.stage)
        grown = reasked = False
        while True:
            try:
                reply = await self._ask(req, messages, max_tokens)
            except LLMError as exc:
                return self._fallback(req, "transport", exc, exc.last_reply)
            problem = reply.incomplete
            if problem:
                self.usage.add(req.stage, **{problem: 1})
                if not grown:
                    grown, max_tokens = True, max_tokens * 2
                    continue
            try:
                return LLMResult(parse(reply.text), reply.text, from_cache=reply.from_cache)
            except ParseError as exc:
                if problem:
                    return self._fallback(req, problem, exc, reply.text)
                if reasked:
                    return self._fallback(req, "parse", exc, reply.text)
                reasked = True
                self.usage.add(req.stage, reasks=1)
                messages += [
                    {"role": "assistant", "content": reply.text},
                    {"role": "user", "content": REASK.format(error=str(exc))},
                ]

    def _fallback(self, req: LLMRequest, reason: str, exc: Exception, raw: str | None) -> LLMResult:
        self.usage.fallback(req.stage, reason)
        if reason == "transport":
            self.usage.add(req.stage, failures=1)
        log.warning("%s %s: %s fallback: %s", req.stage, req.key, reason, exc)
        return LLMResult(None, raw, reason, str(exc), exception=exc)

    def _params(self, req: LLMRequest, max_tokens: int) -> dict[str, Any]:
        params: dict[str, Any] = {"temperature": self.config.temperature, "max_tokens": max_tokens}
        if req.schema is not None and self.config.json_schema:
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": req.template, "schema": req.schema},
            }
        return params

    async def _ask(self, req: LLMRequest, messages: list[dict], max_tokens: int) -> _Reply:
        params = self._params(req, max_tokens)
        key = cache_key(self.model, messages, params, req.template, req.version, self.cache_scope)
        hit = self.cache.get(key)
        if hit is not None:
            self.usage.add(req.stage, cache_hits=1)
            return _Reply(hit["text"], True, hit.get("finish"))
        if self.cache.folder is not None:
            self.usage.add(req.stage, cache_misses=1)
        text, usage, finish = await self._post(req.stage, messages, params)
        self.usage.add(req.stage, **usage)
        reply = _Reply(text, False, finish)
        if reply.incomplete is None:  # a cut or empty reply is never cached: a rerun asks again
            self.cache.set(key, {"text": text, "usage": usage, "finish": finish})
        return reply

    async def _post(self, stage: str, messages: list[dict], params: dict) -> tuple[str, dict, str | None]:
        """The reply text, token usage and finish reason. 429, 5xx, timeouts and connection errors are retried;
        an endpoint's refusal (REFUSALS) is not. Each attempt has ``timeout`` seconds in all, its reply included."""
        try:
            reply = await self._attempts(stage, messages, params)
        except LLMError as exc:
            if exc.attempts and not exc.refusal:  # sent and failed (a refusal is about the request, not the endpoint)
                self._failed_in_row += 1
                if self.config.give_up_after and self._failed_in_row >= self.config.give_up_after:
                    self._down_until = time.monotonic() + min(60.0, self.config.timeout)
            raise
        self._failed_in_row, self._down_until = 0, 0.0
        return reply

    def _check_up(self, stage: str) -> None:
        """Fail at once while the endpoint is taken as down (after give_up_after failures in a row); once the
        pause is over, requests go out again, and one more failure takes it down again."""
        if time.monotonic() < self._down_until:
            raise LLMError(
                f"{stage}: not sent: the last {self._failed_in_row} requests to "
                f"{', '.join(self.endpoints)} failed, so the endpoint is taken as down for now",
                0,
                hint="its rows are marked for a retry: rerun the same command once it answers",
            )

    async def _attempts(self, stage: str, messages: list[dict], params: dict) -> tuple[str, dict, str | None]:
        import openai

        cfg = self.config
        last, where = None, None
        for attempt in range(1, cfg.max_retries + 2):
            where = self._endpoint(avoid=where)  # a retry goes to another replica when there is one
            self._busy[where] += 1
            try:
                async with self._sems[where]:
                    self._check_up(stage)  # here, not before the queue: others may have failed meanwhile
                    self.usage.add(stage, requests=1)
                    resp = await asyncio.wait_for(
                        self._clients[where].chat.completions.create(model=self.model, messages=messages, **params),
                        cfg.timeout,
                    )
                text, finish = _reply_text(resp)
                return text, _usage(resp), finish
            except TimeoutError:  # the whole attempt took too long: a slow start or a reply sent slowly
                last = f"no complete reply within {cfg.timeout:g} s"
            except openai.APIStatusError as exc:
                body = _body(exc)
                refused = refusal(exc.status_code, body)
                if refused or (exc.status_code < 500 and exc.status_code not in TRANSIENT_STATUS):
                    raise LLMError(
                        f"{stage}: the endpoint refused the request ({exc.status_code})",
                        attempt,
                        _describe(exc),
                        refusal=refused.name if refused else "refused",
                        hint=refused.hint if refused else None,
                    ) from None
                last = _describe(exc)
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                last = _describe(exc)
            except ValueError as exc:  # a 200 whose body is not a chat completion
                last = f"malformed response: {exc}"
            finally:
                self._busy[where] -= 1
            if attempt <= cfg.max_retries:
                delay = min(cfg.backoff_max, cfg.backoff_base * 2 ** (attempt - 1)) * (0.5 + random.random())
                self.usage.add(stage, retries=1)
                log.info("%s: retry %d/%d in %.2fs after %s", stage, attempt, cfg.max_retries, delay, last)
                await asyncio.sleep(delay)
        raise LLMError(
            f"{stage}: no usable reply from {', '.join(self.endpoints)}",
            cfg.max_retries + 1,
            last,
            hint=_unreachable_hint(last),
        )


def image_part(sent: SentImage) -> dict:
    """A chat content part carrying the image as a base64 data URL."""
    return {"type": "image_url", "image_url": {"url": sent.data_url}}


def _reply_text(resp: Any) -> tuple[str, str | None]:
    """The content and finish reason; null content (a reasoning model that spent its tokens thinking) is ''."""
    try:
        choice = resp.choices[0]
        message = choice.message
    except (AttributeError, IndexError, TypeError):
        raise ValueError("no choices[0].message in the response") from None
    if message is None:
        raise ValueError("no choices[0].message in the response")
    text = message.content
    if isinstance(text, list):  # some servers answer content parts: keep their text
        text = "".join(p.get("text") or "" if isinstance(p, dict) else getattr(p, "text", "") or "" for p in text)
    if text is not None and not isinstance(text, str):
        raise ValueError("the message content is not text")
    return text or "", getattr(choice, "finish_reason", None)


def _usage(resp: Any) -> dict[str, int]:
    u = getattr(resp, "usage", None)
    return {
        "prompt_tokens": getattr(u, "prompt_tokens", 0) or 0,
        "completion_tokens": getattr(u, "completion_tokens", 0) or 0,
    }


def _body(exc: Exception) -> str:
    """The text of an error reply (empty when there is none)."""
    try:
        return getattr(getattr(exc, "response", None), "text", None) or ""
    except Exception:  # a streamed body that cannot be read again
        return ""


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    body = _body(exc)
    return f"{type(exc).__name__}" + (f" {status}" if status else "") + (f": {body[:300]}" if body else f": {exc}")


def _unreachable_hint(last: str | None) -> str | None:
    """What to check when nothing usable came back at all."""
    if last and last.startswith("APIConnectionError"):
        return "nothing answers at that address: is the server running, and is the URL right (http://HOST:PORT/v1)?"
    if last and last.startswith("no complete reply"):
        return "the endpoint is too slow or stalled: raise --llm-timeout, or lower --llm-concurrency"
    return None
