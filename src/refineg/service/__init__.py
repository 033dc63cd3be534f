"""`refineg serve`: GMNER as an HTTP service (FastAPI), with a page to try a post and an image by hand.

POST /v1/gmner takes {"id"?, "text" | "tokens", "image"?: base64 or a data URL} and answers the post's
entities with their boxes. Concurrent requests are tagged together (a short micro-batch window) and
their LLM calls share the client's concurrency limit. Bad requests get a 4xx JSON error, never a 5xx.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import os
import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future
from pathlib import Path
from typing import Callable

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..data.images import open_image
from ..data.jsonl import entity_dict
from ..errors import DataError
from ..report import type_colors, with_renderer

PAGE = Path(__file__).parent / "page.html"
MAX_BODY = 20_000_000  # bytes; a base64 image of a few MB fits, a 30 MB body does not


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
    data = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise DataError("image is not valid base64 (or a base64 data URL)") from None
    return open_image(io.BytesIO(raw))


def create_app(nlp, api_key_env: str | None = None, max_body: int = MAX_BODY, batch_window: float = 0.005):
    """The FastAPI app around a loaded Pipeline."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    app = FastAPI(title="refineg", version=__import__("refineg").__version__,
                  description="Grounded multimodal NER: entities, their types and their boxes in the image.")
    started = time.time()
    stats: Counter = Counter()
    batcher = MicroBatcher(lambda samples: nlp.tag(samples).predictions, window=batch_window)
    key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and not key:
        raise DataError(f"--api-key-env {api_key_env}: that environment variable is not set")
    page = with_renderer(PAGE.read_text(encoding="utf-8")).replace(
        "__COLORS__", json.dumps(type_colors(nlp.types))).replace("__AUTH__", "true" if key else "false")

    def error(status: int, message: str) -> JSONResponse:
        stats["client_errors" if status < 500 else "server_errors"] += 1
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
        """Liveness and what the service runs: model, LLM, uptime and request counts."""
        llm = nlp.cfg.llm
        return {"status": "ok", "model": str(nlp.model_dir), "model_setting": nlp.setting,
                "llm_configured": llm.configured, "llm_model": llm.model if llm.configured else None, "uptime_s": round(time.time() - started, 1),
                "requests": {k: stats[k] for k in ("total", "ok", "client_errors", "server_errors")},
                "tagger_batches": batcher.batches, "mean_batch_size": round(batcher.items / max(1, batcher.batches), 2)}

    @app.post("/v1/gmner")
    async def gmner(request: Request):
        """Entities of one post, with their types, scores and boxes in original pixels."""
        stats["total"] += 1
        if key and request.headers.get("authorization") != f"Bearer {key}":
            return error(401, "missing or wrong bearer key")
        body = await _body(request, max_body)
        if body is None:
            return error(413, f"request body over {max_body:,} bytes")
        try:
            req = GmnerRequest.model_validate(json.loads(body))
        except json.JSONDecodeError as exc:
            return error(400, f"invalid JSON: {exc.msg}")
        except ValidationError as exc:
            first = exc.errors()[0]
            return error(422, f"{'.'.join(map(str, first['loc'])) or 'body'}: {first['msg']}")
        if (req.text is None) == (req.tokens is None) or not (req.text or "").strip() and not req.tokens:
            return error(422, "give the post as a non-empty text or tokens (one of them)")
        t0 = time.perf_counter()
        try:
            image = await run_in_threadpool(decode_image, req.image) if req.image else None
            sample = nlp.sample(req.text, tokens=req.tokens, image=image, id=req.id)
        except DataError as exc:
            return error(400, exc.reason)
        try:
            pred = await asyncio.wrap_future(batcher.submit(sample))
            t1 = time.perf_counter()
            pred = (await run_in_threadpool(nlp.process, [sample], [pred]))[0]
        finally:
            nlp.forget_image(sample)
        t2 = time.perf_counter()
        stats["ok"] += 1
        return {"id": pred.id, "tokens": list(sample.tokens), "entities": [entity_dict(e) for e in pred.entities],
                "delegated": pred.delegated, **{k: v for k, v in pred.meta.items() if k in ("status", "retry_reason", "grounding")},
                "timings": {"tag_ms": round((t1 - t0) * 1000, 1), "llm_ms": round((t2 - t1) * 1000, 1),
                            "total_ms": round((t2 - t0) * 1000, 1)}}

    return app


async def _body(request, limit: int) -> bytes | None:
    """The request body, or None as soon as it passes limit bytes (a declared length is checked first)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def serve(nlp, host: str = "127.0.0.1", port: int = 8000, api_key_env: str | None = None, max_body: int = MAX_BODY) -> None:
    """Run the service until interrupted."""
    import uvicorn

    uvicorn.run(create_app(nlp, api_key_env, max_body), host=host, port=port, log_level="warning")
