"""Reading and writing files safely: UTF-8 with the offending line named, a line-size limit, output
paths checked before any work, and atomic writes (a temporary file beside the target, then a rename)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ..errors import DataError

MAX_LINE_BYTES = 1_000_000  # one post, sample or prediction per line; longer lines are refused, not read


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"invalid UTF-8 (byte {exc.start + 1} of the line)", path, lineno) from None
    return text.removeprefix("\ufeff") if lineno == 1 else text  # a BOM is accepted on the first line


def text_lines(path: str | Path, max_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, str]]:
    """(line number, line without its newline) for every line of a UTF-8 text file."""
    path = Path(path)
    if path.is_dir():
        raise DataError("is a folder, not a file", path)
    if not path.is_file():
        raise DataError("no such file", path)
    with path.open("rb") as fh:
        lineno = 0
        while True:
            raw = fh.readline(max_bytes + 1)
            if not raw:
                return
            lineno += 1
            if len(raw) > max_bytes and not raw.endswith(b"\n"):
                raise DataError(f"line longer than {max_bytes:,} bytes (the limit for one sample)", path, lineno)
            yield lineno, _decode(raw, path, lineno).rstrip("\n").rstrip("\r")


def read_text(path: str | Path) -> str:
    """A whole UTF-8 file (BOM accepted); DataError naming the line of a bad byte."""
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", path)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise DataError("invalid UTF-8", path, raw.count(b"\n", 0, exc.start) + 1) from None


def check_output(path: str | Path, folder: bool = False) -> Path:
    """The output path, after checking that its parent exists and is writable and that it is the right kind
    (a file target must not be a folder, a folder target must not be a file). Call before the work."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise DataError("cannot write here: the parent folder does not exist", path)
    if folder and path.exists() and not path.is_dir():
        raise DataError("is a file, but a folder is expected here", path)
    if not folder and path.is_dir():
        raise DataError("is a folder, but a file is expected here", path)
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".refineg-probe-"):
            pass
    except OSError as exc:
        raise DataError(f"cannot write in {parent}: {exc.strerror or exc}", path) from None
    return path


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """A file handle on a temporary file beside path, renamed onto path only when the block succeeds."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
