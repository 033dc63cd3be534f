"""The on-disk reply cache. Keys cover the endpoint URL(s) (or GGUF file), model, messages (images by content hash),
parameters and the prompt template's name and version; never the API key."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import diskcache

log = logging.getLogger(__name__)


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
    payload = {
        "model": model,
        "messages": _strip_images(messages),
        "params": params,
        "template": template,
        "version": version,
        "base_url": scope.rstrip("/"),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ReplyCache:
    """Replies (text and token usage) by key, in a diskcache folder; hits and misses are counted by the caller.

    A damaged cache never stops a run: one that cannot be opened is set aside (renamed beside itself) with a
    warning and started anew; one that fails later is left alone for the rest of the run, with a warning.
    """

    def __init__(self, folder: Path | None):
        self.folder = folder
        self._cache = _opened(folder) if folder is not None else None

    def get(self, key: str) -> dict | None:
        """The cached reply, or None."""
        try:
            return None if self._cache is None else self._cache.get(key)
        except (sqlite3.DatabaseError, OSError) as exc:
            self._give_up(exc)
            return None

    def set(self, key: str, value: dict) -> None:
        """Store a reply."""
        try:
            if self._cache is not None:
                self._cache.set(key, value)
        except (sqlite3.DatabaseError, OSError) as exc:
            self._give_up(exc)

    def _give_up(self, exc: Exception) -> None:
        log.warning(
            "%s: the reply cache failed (%s: %s); this run goes on without it", self.folder, type(exc).__name__, exc
        )
        self._cache = None

    def close(self) -> None:
        """Close the underlying database."""
        if self._cache is not None:
            self._cache.close()


def _opened(folder: Path) -> diskcache.Cache:
    """The cache in folder; a damaged one (not a database, a folder where its file should be) is set aside."""
    try:
        return diskcache.Cache(str(folder))
    except (sqlite3.DatabaseError, OSError) as exc:
        aside = folder.with_name(f"{folder.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        os.replace(folder, aside)
        log.warning(
            "%s: the reply cache is damaged (%s: %s); set aside as %s, starting a new one",
            folder,
            type(exc).__name__,
            exc,
            aside,
        )
        return diskcache.Cache(str(folder))
