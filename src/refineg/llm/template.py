"""Prompt templates: each MLLM stage keeps its own in a ``prompts/`` folder beside it.

A template is a file with a ``version:`` header, a ``---`` line, then the text a model reads, with
``{fields}`` the stage fills in. The version is part of every reply's cache key, so a changed
prompt is never answered from replies to the old one. Templates are written for models alone: test
servers read the same text a model would.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path


@dataclass(frozen=True)
class Template:
    """A prompt template file: its name (the file stem), version and text."""

    name: str
    version: str
    text: str

    @classmethod
    def load(cls, path: Path) -> Template:
        """A template from any file in this format (a user's own prompt, say)."""
        header, _, body = path.read_text(encoding="utf-8").partition("\n---\n")
        version = header.split(":", 1)[1].strip()
        return cls(path.stem, version, body)

    def render(self, **fields: str) -> str:
        """The text with its fields filled in."""
        return self.text.format(**fields)


@cache
def template(path: Path) -> Template:
    """A stage's packaged template, read once."""
    return Template.load(path)
