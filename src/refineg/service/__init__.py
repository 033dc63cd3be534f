"""`refineg serve`: GMNER as an HTTP service (FastAPI), with a page to try a post and an image by hand.

POST /v1/gmner takes {"id"?, "text" | "tokens", "image"?: base64 or a data URL} and answers the post's
entities with their boxes. Concurrent requests are tagged together (a short micro-batch window); their MLLM
calls share the client's concurrency limit, and a client that goes away takes its MLLM work with it. Every
error is a JSON body: 4xx for a bad request, 5xx for ours; /healthz counts them all. The API docs at /docs
are served from the installed Swagger UI package (no network needed).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import h11
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..config import ServiceConfig
from ..data.images import open_image
from ..errors import DataError, RefinegError
from ..report import type_colors, with_renderer

log = logging.getLogger(__name__)
PAGE = Path(__file__).parent / "page.html"
DRAIN_LIMIT = 64_000_000  # bytes of an oversized body read (and dropped) so that any client can read the 413
CLIENT_GONE = 499  # nginx's status for a request whose client closed the connection first


class GmnerRequest(BaseModel):
    """One post: raw text or tokens, and an optional image (base64 or a data URL)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str | None = Field(None, max_length=200)
    text: str | None = Field(None, max_length=100_000)
    tokens: list[str] | None = Field(None, max_length=20_000)
    image: str | None = None


class MicroBatcher:
    """Runs fn over the items submitted within a short window, in one call (one thread owns fn)."""

    def __init__(self, fn: Callable[[list], list], max_batch: int = 32, window: float = 0.005):
        self.fn, self.max_batch, self.window = fn, max_batch, window
        self._queue: queue.Queue = queue.Queue()
        self.batches = 0
        self.items = 0
        threading.Thread(target=self._loop, daemon=True, name="refineg-tagger").start()

    def submit(self, item) -> Future:
        """A future for fn's result on this item."""
        fut: Future = Future()
        self._queue.put((item, fut))
        return fut

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            deadline = time.monotonic() + self.window
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
            self.batches += 1
            self.items += len(batch)
            try:
                results = self.fn([item for item, _ in batch])
            except Exception as exc:  # every waiting request learns of it; the batcher lives on
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            for (_, fut), res in zip(batch, results):
                fut.set_result(res)


def decode_image(value: str):
    """The image of a base64 string or data URL, decoded once (upright RGB); DataError when it is not base64,
    not an image, or too large."""
    if value.startswith("data:"):
        if "," not in value:
            raise DataError("image: a data URL holds its data after a comma (data:image/jpeg;base64,...)")
        value = value.split(",", 1)[1]
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise DataError("image is not valid base64 (or a base64 data URL)") from None
    return open_image(io.BytesIO(raw))


class _Counted:
    """ASGI middleware: counts every HTTP request by outcome, and turns an exception of ours into a JSON 500
    (one log line, no traceback on the wire)."""

    def __init__(self, app, stats: Counter):
        self.app, self.stats = app, stats

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = {}

        async def counting_send(message):
            if message["type"] == "http.response.start":
                started["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception as exc:
            log.error("%s %s: internal error: %s: %s", scope.get("method"), scope.get("path"), type(exc).__name__, exc)
            if "status" not in started:
                await JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)(
                    scope, receive, counting_send
                )
        status = started.get("status", 500)
        self.stats["total"] += 1
        self.stats[
            "ok"
            if status < 400
            else "cancelled"
            if status == CLIENT_GONE
            else "client_errors"
            if status < 500
            else "server_errors"
        ] += 1


def create_app(nlp, service: ServiceConfig | None = None) -> FastAPI:
    """The FastAPI app around a loaded Pipeline."""
    service = service or nlp.cfg.service
    app = FastAPI(
        title="refineg",
        version=__import__("refineg").__version__,
        docs_url=None,
        redoc_url=None,
        description="Grounded multimodal NER: entities, their types and their boxes in the image.",
    )
    started = time.time()
    stats: Counter = Counter()
    batcher = MicroBatcher(nlp.tag, window=service.batch_window_ms / 1000)
    key = os.environ.get(service.api_key_env) if service.api_key_env else None
    if service.api_key_env and not key:
        raise DataError(f"--api-key-env {service.api_key_env}: that environment variable is not set")
    page = (
        with_renderer(PAGE.read_text(encoding="utf-8"))
        .replace("__COLORS__", json.dumps(type_colors(nlp.types)))
        .replace("__AUTH__", "true" if key else "false")
    )
    app.add_middleware(_Counted, stats=stats)
    _swagger_ui(app)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):  # noqa: ANN001 - FastAPI's signature
        return error(422, str(exc.errors()[0].get("msg")))

    @app.exception_handler(HTTPException)
    async def _http(request, exc):  # noqa: ANN001
        return error(exc.status_code, str(exc.detail))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz")
    def healthz() -> dict:
        """Liveness and what the service runs: model, LLM, uptime and request counts (total = the others' sum)."""
        llm = nlp.cfg.llm
        return {
            "status": "ok",
            "model": str(nlp.model_dir),
            "model_setting": nlp.setting,
            "llm_configured": llm.configured,
            "llm_model": llm.model if llm.configured else None,
            "uptime_s": round(time.time() - started, 1),
            "requests": {k: stats[k] for k in ("total", "ok", "client_errors", "server_errors", "cancelled")},
            "tagger_batches": batcher.batches,
            "mean_batch_size": round(batcher.items / max(1, batcher.batches), 2),
        }

    @app.post("/v1/gmner")
    async def gmner(request: Request):
        """Entities of one post, with their types, scores and boxes in original pixels."""
        if key and request.headers.get("authorization") != f"Bearer {key}":
            return error(401, "missing or wrong bearer key")
        body = await _body(request, service.max_body)
        if body is None:
            return JSONResponse(
                {"error": f"request body over {service.max_body:,} bytes"},
                status_code=413,
                headers={"Connection": "close"},
            )
        try:
            req = GmnerRequest.model_validate(_json(body))
        except DataError as exc:
            return error(400, exc.reason)
        except ValidationError as exc:
            first = exc.errors()[0]
            return error(422, f"{'.'.join(map(str, first['loc'])) or 'body'}: {first['msg']}")
        if (req.text is None) == (req.tokens is None) or not (req.text or "").strip() and not req.tokens:
            return error(422, "give the post as a non-empty text or tokens (one of them)")
        t0 = time.perf_counter()
        try:
            image = await asyncio.to_thread(decode_image, req.image) if req.image else None
            sample = nlp.sample(req.text, tokens=req.tokens, image=image, id=req.id)
        except DataError as exc:
            return error(400, exc.reason)
        try:
            pred = await asyncio.wrap_future(batcher.submit(sample))
            t1 = time.perf_counter()
            if nlp.llm is not None:
                pred = await _unless_gone(request, asyncio.wrap_future(nlp.llm.client.submit(nlp.finish(sample, pred))))
        except _Gone:
            return Response(status_code=CLIENT_GONE)
        except RefinegError as exc:
            return error(502 if nlp.llm is not None else 500, str(exc))
        finally:
            nlp.forget_image(sample)
        t2 = time.perf_counter()
        return {
            "id": pred.id,
            "tokens": list(sample.tokens),
            "entities": [e.to_dict() for e in pred.entities],
            "delegated": pred.delegated,
            **{k: v for k, v in pred.meta.items() if k in ("status", "retry_reason", "grounding")},
            "timings": {
                "tag_ms": round((t1 - t0) * 1000, 1),
                "llm_ms": round((t2 - t1) * 1000, 1),
                "total_ms": round((t2 - t0) * 1000, 1),
            },
        }

    return app


def _swagger_ui(app: FastAPI) -> None:
    """/docs from the swagger-ui-bundle package's own files: no CDN, so it works offline."""
    import swagger_ui_bundle

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title="refineg API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )


def _json(body: bytes):
    """The JSON value of a request body; DataError saying what is wrong (not UTF-8, not JSON, nested too deep)."""
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"the body is not UTF-8 (byte {exc.start + 1})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise DataError("invalid JSON: nested too deeply") from None


class _Gone(Exception):
    """The client closed its connection before its answer was ready."""


async def _unless_gone(request: Request, work: asyncio.Future):
    """Work's result; if the client goes away first, the work is cancelled (its MLLM requests with it)."""
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server is shutting down
        work.cancel()
        raise
    finally:
        watch.cancel()
    if work not in done:
        work.cancel()
        raise _Gone
    return work.result()


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed the connection."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _body(request: Request, limit: int) -> bytes | None:
    """The request body, or None when it is over limit bytes; an oversized body is still read (up to
    DRAIN_LIMIT) so that the client, still sending, can read the 413 instead of a broken pipe."""
    declared = request.headers.get("content-length")
    over = bool(declared and declared.isdigit() and int(declared) > limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        over = over or size > limit
        if over and size > DRAIN_LIMIT:
            break
        if not over:
            chunks.append(chunk)
    return None if over else b"".join(chunks)


def header_timeout_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol, closing a connection that has not sent complete request headers within seconds
    of being opened or of its last answer (a client that trickles its headers holds nothing for long)."""

    class Protocol(H11Protocol):
        _header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE and self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is None and not self.transport.is_closing():
                self._header_timer = self.loop.call_later(seconds, self._headers_late)

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return Protocol


def server_config(app: FastAPI, service: ServiceConfig):
    """uvicorn's settings for the service: its address, the header timeout and the shutdown deadline."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=service.host,
        port=service.port,
        log_level="warning",
        http=header_timeout_protocol(service.header_timeout_s),
        timeout_graceful_shutdown=max(1, round(service.shutdown_grace_s)),
    )


def serve(nlp) -> None:
    """Run the service until SIGTERM or Ctrl-C; requests still running then get ``shutdown_grace_s`` to finish
    before they are cancelled."""
    import uvicorn

    uvicorn.Server(server_config(create_app(nlp), nlp.cfg.service)).run()
