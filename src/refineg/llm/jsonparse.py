"""Pull the answer's JSON object out of a free-text reply and validate it with pydantic."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import ParseError
from .replies import answer_text, json_blocks

M = TypeVar("M", bound=BaseModel)


def json_objects(text: str) -> list[dict]:
    """Every top-level JSON object after any reasoning block (fenced or bare, repaired if broken)."""
    return [b for b in json_blocks(answer_text(text)) if isinstance(b, dict)]


def last_json_object(text: str) -> dict:
    """The last top-level JSON object in text; ParseError if there is none."""
    found = json_objects(text)
    if not found:
        raise ParseError("the reply holds no JSON object")
    return found[-1]


def parse_answer(text: str, model: type[M]) -> M:
    """The last JSON object of text that fits model; ParseError says what is wrong with the last one."""
    objects = json_objects(text)
    if not objects:
        raise ParseError("the reply holds no JSON object")
    first_error = None
    for obj in reversed(objects):
        try:
            return model.model_validate(obj)
        except ValidationError as exc:
            first_error = first_error or exc
    first = first_error.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(root)"
    raise ParseError(f"the JSON object does not fit the schema at {loc}: {first['msg']}") from None
