"""One small exception hierarchy; every error names where it came from."""

from __future__ import annotations

from pathlib import Path


class RefinegError(Exception):
    """Base of every error refineg raises on purpose."""


class DataError(RefinegError):
    """Bad input data, with the file and the line or sample it came from."""

    def __init__(
        self, message: str, path: str | Path | None = None, line: int | None = None, sample: str | None = None
    ):
        self.path = str(path) if path is not None else None
        self.line = line
        self.sample = sample
        self.reason = message
        super().__init__(self._render())

    def __reduce__(self):
        # rebuilt from its parts, not its rendered text (a Ray actor's error reaches the driver pickled)
        return type(self), (self.reason, self.path, self.line, self.sample)

    def _render(self) -> str:
        where = self.path or "<input>"
        if self.line is not None:
            where += f":{self.line}"
        if self.sample is not None:
            where += f" (sample {self.sample})"
        return f"{where}: {self.reason}"


class ConfigError(RefinegError):
    """A bad option, config file or model path."""


class LLMError(RefinegError):
    """An LLM call that failed for good, with the attempt count and the last raw reply. ``refusal`` names an
    endpoint's refusal that asking again cannot help (``no_images``, ``auth``...); ``hint`` is the fix."""

    def __init__(
        self,
        message: str,
        attempts: int = 0,
        last_reply: str | None = None,
        refusal: str | None = None,
        hint: str | None = None,
    ):
        self.attempts = attempts
        self.last_reply = last_reply
        self.refusal = refusal
        self.hint = hint
        detail = f"{message} (after {attempts} attempt{'s' if attempts != 1 else ''})"
        if last_reply:
            detail += f"; last reply: {last_reply[:300]!r}"
        if hint:
            detail += f"; {hint}"
        super().__init__(detail)


class ParseError(RefinegError):
    """An LLM answer that does not fit the expected format."""
