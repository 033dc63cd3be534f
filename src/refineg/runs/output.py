"""A run's output file: one writer at a time, resumed from where a killed run stopped, appended to as posts
finish, and put in input order at the end.

Rows are canonical JSONL predictions, one per post, keyed by id. A row marked ``"status": "retry"`` is one
whose MLLM work did not happen; a rerun with an LLM re-does it. A half-written last line (a killed run) is
cut off. Both engines write through ``RunOutput``; ``refineg predict`` holds the same lock.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import filelock

from ..data.jsonl import json_line
from ..data.textio import atomic_open
from ..errors import DataError
from ..types import Prediction

log = logging.getLogger(__name__)

RETRY = "retry"
FSYNC_SECONDS = 1.0  # rows are flushed as they come (a killed run loses none); synced to disk at most this often


class OutputLock:
    """An exclusive lock on an output path, held while a run writes it (a lock file beside it, and a note
    saying which run holds it). A second run on the same output refuses, naming the first."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.path = self.out.with_name(f".{self.out.name}.lock")
        self.note = self.out.with_name(f".{self.out.name}.lock.json")
        self._lock = filelock.FileLock(self.path, timeout=0)

    def __enter__(self) -> OutputLock:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise DataError(
                f"another refineg run is writing this output ({self._holder()}); wait for it to finish "
                "or choose another --out",
                self.out,
            ) from None
        self.note.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "command": " ".join(sys.argv),
                }
            )
        )
        return self

    def _holder(self) -> str:
        try:
            h = json.loads(self.note.read_text())
            return f"pid {h['pid']} on {h['host']}, started {h['started']}: {h['command']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "its details are unknown"

    def __exit__(self, *exc) -> None:
        self.note.unlink(missing_ok=True)
        self._lock.release()


def output_rows(path: Path) -> list[tuple[str, str | None, int, int]]:
    """(id, status, offset, length) of every whole line of an output file: a half-written last line (a killed
    run) is left out; a broken line is a DataError naming the file and line."""
    rows = []
    with path.open("rb") as fh:
        offset, lineno = 0, 0
        for raw in fh:
            lineno += 1
            if not raw.endswith(b"\n"):
                break
            if raw.strip():
                try:
                    obj = json.loads(raw)
                    rows.append((str(obj["id"]), obj.get("status"), offset, len(raw)))
                except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                    raise DataError("cannot resume: the existing output has a broken line", path, lineno) from None
            offset += len(raw)
    return rows


def done_ids(out: Path, redo_retries: bool = True) -> set[str]:
    """Ids already final in out. A half-written last line is cut off and, with ``redo_retries`` (an LLM is
    configured), rows marked for a retry are removed, so that this run re-does exactly those."""
    if not out.is_file():
        return set()
    rows = output_rows(out)
    last = {r[0]: r for r in rows}  # a row written twice (by an older refineg) counts once: the later one
    keep = [r for r in rows if last[r[0]] is r and not (r[1] == RETRY and redo_retries)]
    whole = sum(r[3] for r in rows) == out.stat().st_size
    if len(keep) < len(rows) or not whole:
        _rewrite(out, keep)
        if len(last) < len(rows):
            log.warning("%s: %d row(s) were there twice; the later one of each is kept", out, len(rows) - len(last))
        if len(keep) < len(last):
            log.info("%s: %d row(s) marked for a retry will be done again", out, len(last) - len(keep))
    return {r[0] for r in keep}


def _rewrite(out: Path, rows: Sequence[tuple[str, str | None, int, int]]) -> None:
    """Out with only these rows, in this order (read by offset: the file is never held in memory)."""
    with out.open("rb") as src, atomic_open(out, "wb") as dst:
        for _, _, offset, length in rows:
            src.seek(offset)
            dst.write(src.read(length))
        dst.flush()
        os.fsync(dst.fileno())


class RunOutput:
    """The output of a run, locked while it is written: ``done`` holds the ids already final, ``append`` adds
    finished rows (flushed and synced: a kill loses nothing written), ``put_in_order`` sorts the file into
    input order at the end."""

    def __init__(self, path: str | Path, redo_retries: bool):
        self.path = Path(path)
        self.redo_retries = redo_retries
        self.lock = OutputLock(self.path)
        self.done: set[str] = set()
        self._fh = None
        self._synced = 0.0

    def __enter__(self) -> RunOutput:
        self.lock.__enter__()
        try:
            self.done = done_ids(self.path, self.redo_retries)
        except BaseException:
            self.lock.__exit__()
            raise
        return self

    def append(self, preds: Iterable[Prediction]) -> None:
        """Write finished rows now: flushed, so a killed process loses none; synced to disk every FSYNC_SECONDS."""
        if self._fh is None:
            self._fh = self.path.open("a", encoding="utf-8")
        self._fh.write("".join(json_line(p) for p in preds))
        self._fh.flush()
        if time.monotonic() - self._synced >= FSYNC_SECONDS:
            os.fsync(self._fh.fileno())
            self._synced = time.monotonic()

    def put_in_order(self, order: Sequence[str]) -> None:
        """The rows sorted into the input's order (ids not in it stay last, in their order); untouched when
        they already are."""
        self.close()
        if not self.path.is_file():
            return
        rows = output_rows(self.path)
        rank = {sid: k for k, sid in enumerate(order)}
        ranked = sorted(rows, key=lambda r: rank.get(r[0], len(rank)))
        if ranked != rows:
            _rewrite(self.path, ranked)

    def close(self) -> None:
        """Sync and close the file (the lock stays until the block ends)."""
        if self._fh is not None:
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def __exit__(self, *exc) -> None:
        self.close()
        self.lock.__exit__()
