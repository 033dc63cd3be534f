"""The MLLM client and what tasks need to talk through it."""

from .client import LLMClient, LLMRequest, LLMResult, image_part
from .jsonparse import last_json_object, parse_answer

__all__ = ["LLMClient", "LLMRequest", "LLMResult", "check", "image_part", "last_json_object", "parse_answer"]
