"""A small OpenAI-compatible HTTP server on loopback that replays scripted answers and injects faults.

It speaks ``POST /v1/chat/completions`` (and ``GET /v1/models``), records every request body it
gets, and tracks how many requests were in flight at once. Each request takes the next scripted
``Reply``; when the script is empty, ``default`` (a function of the request body) answers.

Run it alone: ``python -m refineg.testing.fake_openai --port 8001 --latency 0.2``.
"""

from __future__ import annotations

import argparse
import json
import re
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    """One scripted answer: an HTTP status, the assistant's content (or a raw body) and a delay."""

    content: str | None = "{}"
    status: int = 200
    delay: float = 0.0
    raw_body: str | None = None
    prompt_tokens: int = 10
    completion_tokens: int = 5
    finish_reason: str = "stop"
    reasoning: str | None = None  # sent as reasoning_content, the way vLLM's reasoning parsers do
    trickle: float = 0.0  # seconds between two bytes of the body: a server that sends its reply slowly

    def body(self, model: str) -> bytes:
        """The HTTP body to send."""
        if self.raw_body is not None:
            return self.raw_body.encode()
        if self.status != 200:
            return json.dumps(
                {"error": {"message": f"scripted status {self.status}", "type": "scripted", "code": self.status}}
            ).encode()
        return json.dumps(
            {
                "id": "chatcmpl-replay",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "finish_reason": self.finish_reason, "message": self._message()}],
                "usage": {
                    "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens,
                    "total_tokens": self.prompt_tokens + self.completion_tokens,
                },
            }
        ).encode()

    def _message(self) -> dict:
        msg = {"role": "assistant", "content": self.content}
        if self.reasoning is not None:
            msg["reasoning_content"] = self.reasoning
        return msg


def request_text(body: dict) -> str:
    """Every text part of a request's messages, joined: what a model reads (images left out)."""
    parts = []
    for message in body.get("messages", []):
        content = message.get("content")
        parts += (
            [content] if isinstance(content, str) else [p.get("text", "") for p in content or [] if isinstance(p, dict)]
        )
    return "\n".join(parts)


_ASKED = re.compile(r'^- "(.*)" \((\w+)\)$')


def asked_entities(body: dict) -> list[dict] | None:
    """The entities a grounding request asks to locate, read from its prompt as a model would (None: the request
    is not a grounding one)."""
    text = request_text(body)
    if "Entities to locate:" not in text:
        return None
    lines = text.rsplit("Entities to locate:", 1)[1].strip().splitlines()
    asked = []
    for line in lines:
        m = _ASKED.match(line.strip())
        if not m:
            break
        asked.append({"text": m.group(1), "type": m.group(2)})
    return asked


@dataclass
class FakeOpenAIServer:
    """A threaded loopback server; use it as a context manager."""

    script: Iterable[Reply] = ()
    default: Callable[[dict], Reply] = field(default=lambda body: Reply())
    latency: float = 0.0
    requests: list[dict] = field(default_factory=list)
    headers: list[dict] = field(default_factory=list)
    max_in_flight: int = 0
    abandoned: int = 0  # requests whose client closed the connection before the reply was sent

    def __post_init__(self) -> None:
        self._queue: deque[Reply] = deque(self.script)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        """The ``/v1`` URL to give an OpenAI client."""
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def push(self, *replies: Reply) -> None:
        """Append replies to the script."""
        with self._lock:
            self._queue.extend(replies)

    def next_reply(self, body: dict) -> Reply:
        """The next scripted reply, or the default's answer."""
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        return self.default(body)

    def enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        """Requests being answered right now."""
        return self._in_flight

    def gave_up(self) -> None:
        with self._lock:
            self.abandoned += 1

    def start(self, port: int = 0) -> FakeOpenAIServer:
        """Listen on 127.0.0.1 (a free port by default) in a background thread."""
        server = self
        handler = type("Handler", (_Handler,), {"server_state": server})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._httpd.daemon_threads = True
        self._httpd.request_queue_size = 256
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    server_state: FakeOpenAIServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes; avoid the 40 ms delayed-ACK stall

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, json.dumps({"object": "list", "data": [{"id": "replay", "object": "model"}]}).encode())
        else:
            self._send(404, b'{"error": {"message": "not found"}}')

    def do_POST(self) -> None:
        state = self.server_state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, b'{"error": {"message": "not found"}}')
            return
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            self._send(400, b'{"error": {"message": "request body is not JSON"}}')
            return
        state.enter()
        try:
            with state._lock:
                state.requests.append(body)
                state.headers.append({k.lower(): v for k, v in self.headers.items()})
            reply = state.next_reply(body)
            if not self._wait(state.latency + reply.delay):
                state.gave_up()
                return
            self._send(reply.status, reply.body(body.get("model", "replay")), reply.trickle)
        finally:
            state.leave()

    def _wait(self, seconds: float) -> bool:
        """Sleep, watching the connection: False as soon as the client closes it."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.05))
            if readable:
                try:
                    if not self.connection.recv(1, socket.MSG_PEEK):
                        return False
                except OSError:
                    return False
                time.sleep(min(max(left, 0), 0.05))  # a pipelined request waiting: not a close
        return True

    def _send(self, status: int, payload: bytes, trickle: float = 0.0) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if not trickle:
                self.wfile.write(payload)
                return
            for k in range(len(payload)):  # one byte at a time: every read gets data, the whole never ends
                self.wfile.write(payload[k : k + 1])
                self.wfile.flush()
                time.sleep(trickle)
        except (BrokenPipeError, ConnectionResetError):
            self.server_state.gave_up()  # the client gave up (a timeout we injected); nothing left to tell it


def main() -> None:
    """Serve until interrupted, answering every request with a fixed content after a fixed latency."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--content", default='{"ok": true}')
    args = ap.parse_args()
    srv = FakeOpenAIServer(default=lambda body: Reply(args.content), latency=args.latency).start(args.port)
    print(f"listening on {srv.base_url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":
    main()
