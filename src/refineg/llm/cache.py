"""The on-disk reply cache. Keys cover the endpoint URL(s) (or GGUF file), model, messages (images by content hash),
parameters and the prompt template's name and version; never the API key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import diskcache


def _strip_images(obj: Any) -> Any:
    """A copy of messages with every data URL replaced by the hash of its content."""
    if isinstance(obj, dict):
        return {k: _strip_images(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strip_images(v) for v in obj]
    if isinstance(obj, str) and obj.startswith("data:"):
        return "sha256:" + hashlib.sha256(obj.encode()).hexdigest()
    return obj


def cache_key(model: str, messages: list, params: dict, template: str, version: str, scope: str = "") -> str:
    """A stable hash of everything that decides the reply; scope names the server (two servers serving one
    model name never share)."""
    payload = {"model": model, "messages": _strip_images(messages), "params": params,
               "template": template, "version": version, "base_url": scope.rstrip("/")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ReplyCache:
    """Replies (text and token usage) by key, in a diskcache folder; hits and misses are counted by the caller."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self._cache = diskcache.Cache(str(folder)) if folder is not None else None

    def get(self, key: str) -> dict | None:
        """The cached reply, or None."""
        return None if self._cache is None else self._cache.get(key)

    def set(self, key: str, value: dict) -> None:
        """Store a reply."""
        if self._cache is not None:
            self._cache.set(key, value)

    def close(self) -> None:
        """Close the underlying database."""
        if self._cache is not None:
            self._cache.close()
