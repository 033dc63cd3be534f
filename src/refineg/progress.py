"""Progress that reads well wherever it goes: tqdm's bars on a terminal; in a log file (stderr is not a
terminal) one plain line every LOG_SECONDS and a last one at the end, never a carriage return."""

from __future__ import annotations

import sys

from tqdm import tqdm as _tqdm

LOG_SECONDS = 10.0
PLAIN = (
    "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%), {elapsed} elapsed, about {remaining} left, {rate_fmt}{postfix}"
)
PLAIN_NO_TOTAL = "{desc}: {n_fmt}, {elapsed} elapsed, {rate_fmt}{postfix}"


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class tqdm(_tqdm):  # noqa: N801 - a drop-in for tqdm's own name
    """tqdm on a terminal; elsewhere a plain line every LOG_SECONDS (and at the end) instead of redrawn bars."""

    def __init__(self, *args, **kw):
        self._plain = not _is_terminal(kw.get("file") or sys.stderr)
        if self._plain:
            total = kw.get("total", len(args[0]) if args and hasattr(args[0], "__len__") else None)
            kw.update(
                mininterval=LOG_SECONDS,
                maxinterval=LOG_SECONDS * 6,
                leave=False,
                dynamic_ncols=False,
                bar_format=PLAIN if total else PLAIN_NO_TOTAL,
            )
        super().__init__(*args, **kw)

    def display(self, msg=None, pos=None):
        if not self._plain:
            return super().display(msg, pos)
        # msg == "" is tqdm clearing a finished bar: the log gets its last state; other lines come at most every
        # LOG_SECONDS (a bar refreshed at every step, as set_postfix does, would fill the log)
        now = self._time()
        if msg != "" and (self.n == 0 or now - getattr(self, "_printed", 0.0) < LOG_SECONDS):
            return None
        self._printed = now
        self.fp.write((msg or self.__str__()).strip() + "\n")
        self.fp.flush()
        return None  # tqdm writes a carriage return after a display that returns True

    def clear(self, nolock=False):
        if not self._plain:
            super().clear(nolock)


def progress_bar(total: int, desc: str, enabled: bool = True) -> tqdm:
    """A progress bar over total items (a context manager), silent when not enabled."""
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def say(line: str) -> None:
    """One line of progress on stderr (under any bar on a terminal)."""
    _tqdm.write(line, file=sys.stderr)


def duration(seconds: float) -> str:
    """Seconds in words a person reads at a glance: 45 s, 3 min 20 s, 1 h 05 min."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
