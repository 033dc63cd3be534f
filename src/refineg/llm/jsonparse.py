"""Pull the last JSON object out of a free-text reply and validate it with pydantic."""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import ParseError

M = TypeVar("M", bound=BaseModel)
_decoder = json.JSONDecoder()


def last_json_object(text: str) -> dict:
    """The last top-level JSON object in text (fenced or bare); ParseError if there is none."""
    found = None
    i = text.find("{")
    while i != -1:
        try:
            obj, end = _decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
            continue
        if isinstance(obj, dict):
            found = obj
        i = text.find("{", end)
    if found is None:
        raise ParseError("the reply holds no JSON object")
    return found


def parse_answer(text: str, model: type[M]) -> M:
    """The last JSON object of text, validated as model; ParseError says what is wrong."""
    obj = last_json_object(text)
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ParseError(f"the JSON object does not fit the schema at {loc}: {first['msg']}") from None
