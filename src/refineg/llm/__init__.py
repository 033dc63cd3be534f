"""The MLLM layer: the client, the model families' dialects, the reply readers, the prompt template format
and the interface of the stages that talk through it. Imported lazily, so that modules needing only the
family table (the config, say) do not load the HTTP client."""

__all__ = ["LLMClient", "LLMRequest", "LLMResult", "image_part", "last_json_object", "parse_answer"]

_HOME = {
    "LLMClient": "client",
    "LLMRequest": "client",
    "LLMResult": "client",
    "image_part": "client",
    "last_json_object": "jsonparse",
    "parse_answer": "jsonparse",
}


def __getattr__(name: str):
    if name in _HOME:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
