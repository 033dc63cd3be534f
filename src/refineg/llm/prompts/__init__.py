"""The prompt templates of every MLLM stage (synthesis, refinement, grounding, the combined call).

Each template is a file here: a ``version:`` header, a ``---`` line, then the text a model reads,
with ``{fields}`` the stage fills in. The version is part of every reply's cache key, so a changed
prompt is never answered from replies to the old one. Templates are written for models alone: test
servers read the same text a model would.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

FOLDER = Path(__file__).parent


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
def template(name: str) -> Template:
    """One of the packaged templates by file name (``refine.txt``), read once."""
    return Template.load(FOLDER / name)


@cache
def box_rules() -> str:
    """What gets a box and what does not: shared by every grounding prompt."""
    return (FOLDER / "rules.txt").read_text(encoding="utf-8").strip()


def entity_lines(entities) -> str:
    """Entities as a model reads them in a grounding prompt: one quoted text and its type a line."""
    return "\n".join(f'- "{e.text}" ({e.type})' for e in entities) or "- (none)"


__all__ = ["Template", "box_rules", "entity_lines", "template"]
