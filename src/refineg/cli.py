"""The ``refineg`` command line: thin commands that parse options and call one library function."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import ConfigError, DataError, RefinegError

if TYPE_CHECKING:
    from .config import RunConfig

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Low-resource grounded multimodal NER (ReFineG).")
out = Console()
err = Console(stderr=True)


def main() -> None:
    """Entry point: a RefinegError or an OS error becomes one line on stderr and exit code 2; anything
    else one line and exit code 1. ``--debug`` (anywhere on the line) shows the traceback instead."""
    from .tagger.features import PriorNER

    PriorNER.spacy_without_torch = True  # this process is ours: no need for thinc's PyTorch support
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
        logging.basicConfig(level=logging.INFO)
    try:
        app()
    except RefinegError as exc:
        _die(f"refineg: error: {exc}", 2, debug)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        _die(f"refineg: error: {where}{exc.strerror or exc}", 2, debug)
    except KeyboardInterrupt:
        _die("refineg: interrupted; rerun the same command to resume", 130, debug)
    except Exception as exc:  # a bug of ours: one line for the user, the traceback with --debug
        _die(f"refineg: internal error: {type(exc).__name__}: {str(exc)[:300]} (rerun with --debug for the traceback)",
             1, debug)


def _die(message: str, code: int, debug: bool) -> None:
    if debug:
        raise
    print(message, file=sys.stderr)
    sys.exit(code)


@app.command()
def convert(
    src: Path = typer.Argument(..., help="Input: .jsonl, Twitter-GMNER .txt split, or CCKS folder."),
    dst: Path = typer.Argument(..., help="Output: .jsonl, .txt (XML goes to ../xml or ./xml), or a folder (CCKS)."),
    ids: Optional[Path] = typer.Option(None, help="Keep only the sample ids in this file."),
    to: Optional[str] = typer.Option(None, help="Output format: jsonl, twitter or ccks (default: from DST)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files (a split's XML boxes included)."),
) -> None:
    """Convert between Twitter-GMNER, CCKS-GMNER and canonical JSONL; existing files are never replaced unless --overwrite."""
    from .data import load_dataset, output_format, read_ids, save_samples
    from .data.textio import check_output

    fmt = output_format(dst, to)
    check_output(dst, folder=fmt == "ccks")
    if dst.resolve() == src.resolve():
        raise ConfigError(f"{dst}: the output is the input")
    ds = load_dataset(src, read_ids(ids) if ids else None)
    save_samples(list(ds.samples), dst, fmt, overwrite=overwrite)
    err.print(f"wrote {len(ds.samples)} samples to {dst}")


@app.command()
def stats(
    data: Path = typer.Argument(..., help="Any supported input."),
    ids: Optional[Path] = typer.Option(None, help="Keep only the sample ids in this file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Print samples, entities per type, groundable share, boxes per entity and image sizes."""
    from .data import load_dataset, read_ids
    from .data.stats import dataset_stats

    ds = load_dataset(data, read_ids(ids) if ids else None)
    figures = dataset_stats(ds.samples)
    figures["reader"] = dict(ds.report)
    if as_json:
        print(json.dumps(figures, indent=2))
        return
    table = Table(title=f"{data} ({ds.format})", show_header=False)
    for key, val in figures.items():
        if isinstance(val, float):
            val = f"{val:.3f}"
        elif isinstance(val, dict):
            val = ", ".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in val.items())
        table.add_row(key, str(val))
    out.print(table)


@app.command()
def evaluate(
    gold: Path = typer.Argument(..., help="Gold: Twitter-GMNER .txt split, CCKS folder or canonical JSONL."),
    pred: Path = typer.Argument(..., help="Predictions: canonical JSONL."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Score predictions: GMNER, MNER and EEG precision, recall and F1, overall and per type."""
    from .data import load_samples, read_predictions
    from .eval.metrics import score

    gold_samples, preds = load_samples(gold), read_predictions(pred)
    scores = score(gold_samples, preds)
    if not preds:
        err.print(f"[yellow]warning: {pred} holds no prediction: all {len(gold_samples)} gold samples count as missed[/]")
    elif scores.missing_pred_ids:
        err.print(f"[yellow]warning: {scores.missing_pred_ids} of {len(gold_samples)} gold samples have no prediction; "
                  "their entities count as missed[/]")
    if scores.unknown_pred_ids:
        err.print(f"[yellow]warning: {scores.unknown_pred_ids} predicted id(s) are not in gold; their entities count as false positives[/]")
    if as_json:
        print(json.dumps(scores.as_dict()))
        return
    table = Table(title="GMNER evaluation")
    for col in ("", "precision", "recall", "F1", "tp", "pred", "gold"):
        table.add_column(col, justify="right" if col else "left")
    rows = [(m.upper(), prf) for m, prf in scores.overall.items()]
    rows += [(f"{t} GMNER", by["gmner"]) for t, by in scores.per_type.items()]
    rows += [(f"{t} MNER", by["mner"]) for t, by in scores.per_type.items()]
    for name, prf in rows:
        table.add_row(name, f"{prf.precision:.4f}", f"{prf.recall:.4f}", f"{prf.f1:.4f}", str(prf.tp), str(prf.n_pred), str(prf.n_gold))
    out.print(table)


# ---- LLM options, shared by every command that may call an LLM ---------------------------------

CONFIG = typer.Option(None, "--config", help="A TOML run config; options given here override it.")
LLM_BASE_URL = typer.Option(None, "--llm-base-url", help="OpenAI-compatible endpoint (env REFINEG_LLM_BASE_URL); "
                            "repeat it for replicas of one model: requests go to the least busy one.")
LLM_MODEL = typer.Option(None, "--llm-model", help="Model name at that endpoint (env REFINEG_LLM_MODEL).")
LLM_GGUF = typer.Option(None, "--llm-gguf", help="Run this GGUF in the embedded llama.cpp server (env REFINEG_LLM_GGUF).")
LLM_MMPROJ = typer.Option(None, "--llm-mmproj", help="Vision projector GGUF for --llm-gguf.")
LLM_CONCURRENCY = typer.Option(None, "--llm-concurrency", help="Requests in flight at once.")
LLM_TIMEOUT = typer.Option(None, "--llm-timeout", help="Seconds before a request times out.")
LLM_RETRIES = typer.Option(None, "--llm-retries", help="Retries after 429, 5xx, timeouts and connection errors.")
NO_CACHE = typer.Option(False, "--no-cache", help="Do not read or write the LLM reply cache.")
CACHE_DIR = typer.Option(None, "--cache-dir", help="Cache folder (env REFINEG_CACHE_DIR, default ~/.cache/refineg).")
NO_JSON_SCHEMA = typer.Option(False, "--no-json-schema", help="The backend does not take response_format JSON schemas.")
BOX_FORMAT = typer.Option(None, "--llm-box-format", help="auto (from the model name), a convention (pixels, norm1000, "
                          "norm1000-yx, norm1) or a family (qwen2.5-vl, qwen2-vl, qwen3-vl, internvl, glm-4v, "
                          "deepseek-vl2, gemini, gpt-4o, claude, minicpm-v, kimi-vl, cogvlm).")
VERBOSE = typer.Option(False, "--verbose", help="Show the embedded llama.cpp server's log (default: a file in the cache folder).")
IMAGES = typer.Option(None, "--images", help="Image folder; repeatable (e.g. twitter2015_images and twitter2017_images).")
ALLOW_MISSING = typer.Option(False, "--allow-missing-images", help="Go on when more than 5% of the samples' images are missing.")


def run_config(config=None, llm_base_url=None, llm_model=None, llm_gguf=None, llm_mmproj=None, llm_concurrency=None,
               llm_timeout=None, llm_retries=None, no_cache=False, cache_dir=None, no_json_schema=False,
               llm_box_format=None, verbose=False):
    """The run config from the file, the environment and the LLM options."""
    from .config import load_config

    llm = {"base_url": list(llm_base_url) or None if isinstance(llm_base_url, (list, tuple)) else llm_base_url, "model": llm_model, "gguf": llm_gguf, "mmproj": llm_mmproj,
           "concurrency": llm_concurrency, "timeout": llm_timeout, "max_retries": llm_retries, "cache_dir": cache_dir,
           "cache": False if no_cache else None, "json_schema": False if no_json_schema else None,
           "box_format": llm_box_format, "verbose": True if verbose else None}
    return load_config(config, {"llm": llm})


_KW = inspect.Parameter.KEYWORD_ONLY
LLM_PARAMS = [inspect.Parameter(name, _KW, default=default, annotation=kind) for name, kind, default in (
    ("config", Optional[Path], CONFIG), ("llm_base_url", Optional[list[str]], LLM_BASE_URL),
    ("llm_model", Optional[str], LLM_MODEL), ("llm_gguf", Optional[Path], LLM_GGUF),
    ("llm_mmproj", Optional[Path], LLM_MMPROJ), ("llm_concurrency", Optional[int], LLM_CONCURRENCY),
    ("llm_timeout", Optional[float], LLM_TIMEOUT), ("llm_retries", Optional[int], LLM_RETRIES),
    ("no_cache", bool, NO_CACHE), ("cache_dir", Optional[Path], CACHE_DIR), ("no_json_schema", bool, NO_JSON_SCHEMA),
    ("llm_box_format", Optional[str], BOX_FORMAT), ("verbose", bool, VERBOSE))]


def llm_options(command):
    """Give a command every LLM option; it receives the run config they make as ``cfg``."""
    sig = inspect.signature(command)
    names = [p.name for p in LLM_PARAMS]

    @functools.wraps(command)
    def with_llm(**kw):
        return command(cfg=run_config(**{n: kw.pop(n) for n in names}), **kw)

    own = [p.replace(kind=_KW) for p in sig.parameters.values() if p.name != "cfg"]
    with_llm.__signature__ = sig.replace(parameters=own + LLM_PARAMS)
    return with_llm


STREAM_PARAMS = [inspect.Parameter(name, _KW, default=default, annotation=kind) for name, kind, default in (
    ("images", Optional[list[Path]], IMAGES),
    ("demos", Optional[Path], typer.Option(None, "--demos", help="Labelled pool of grounding demonstrations (e.g. train).")),
    ("demo_ids", Optional[Path], typer.Option(None, "--demo-ids", help="Keep only these demo ids.")),
    ("clip", Optional[str], typer.Option(None, "--clip", help="CLIP model name or path for image similarity.")),
    ("types", Optional[str], typer.Option(None, "--types", help="Type descriptions for the prompts: twitter, ccks or a TOML file.")),
    ("strict", bool, typer.Option(False, "--strict", help="A missing or corrupt image is an error, not a warning.")),
    ("allow_missing_images", bool, ALLOW_MISSING),
    ("quiet", bool, typer.Option(False, "--quiet", help="No progress bars.")))]


def stream_options(command):
    """Give `run` and `ground` their shared options; the command receives them as ``options`` (RunOptions)."""
    sig = inspect.signature(command)
    names = [p.name for p in STREAM_PARAMS]

    @functools.wraps(command)
    def with_stream(cfg=None, **kw):
        got = {n: kw.pop(n) for n in names}
        if got["types"]:
            cfg = cfg.model_copy(update={"synth": cfg.synth.model_copy(update={"typeset": got["types"]})})
        options = _run_options(got["images"], got["demos"], got["demo_ids"], got["clip"], got["strict"],
                               got["allow_missing_images"], got["quiet"])
        return command(cfg=cfg, options=options, **kw)

    own = [p.replace(kind=_KW) for p in sig.parameters.values() if p.name not in ("options", "cfg")]
    cfg = inspect.Parameter("cfg", _KW, default=None)  # llm_options fills it
    with_stream.__signature__ = sig.replace(parameters=own + STREAM_PARAMS + [cfg])
    return with_stream


def _run_options(images, demos, demo_ids, clip, strict, allow_missing_images, quiet):
    from .data import read_ids
    from .pipeline import RunOptions

    return RunOptions(images=tuple(images or ()), demos=demos, demo_ids=tuple(read_ids(demo_ids)) if demo_ids else None,
                      clip=clip, strict=strict, allow_missing_images=allow_missing_images, progress=not quiet)


@app.command("llm-check")
@llm_options
def llm_check(
    images: bool = typer.Option(False, "--images", help="Also send K+1 images and a grounding probe: does the endpoint "
                                "take that many images, and which box convention does its answer fit?"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    cfg=None,
) -> None:
    """Talk to the live endpoint (never the cache): model, latency, JSON-schema output; with --images, grounding."""
    from .llm.probe import check

    if not cfg.llm.configured:
        raise ConfigError("no LLM configured: give --llm-base-url and --llm-model, or --llm-gguf (or the REFINEG_LLM_* variables)")
    report = check(cfg.llm, cfg.ground.k + 1 if images else 0)
    probe = report.get("probe")
    if as_json:
        print(json.dumps(report))
    else:
        _print_check(report)
    if not report["ok"] or (probe is not None and not (probe["images_accepted"] and probe["matches"])):
        raise typer.Exit(1)


def _print_check(report: dict) -> None:
    u = report["usage"]
    out.print(f"model:        {report['model']}  ({report['base_url']})")
    out.print(f"reachable:    {'yes' if report['ok'] else 'NO'}")
    out.print(f"latency:      {report['latency_s']:.3f} s")
    out.print(f"json schema:  {'requested' if report['json_schema_requested'] else 'not requested'}, "
              f"answer {'valid' if report['json_valid'] else 'NOT valid'}")
    out.print(f"box format:   {report['box_format_note']}")
    out.print(f"requests:     {u['requests']}  retries: {u['retries']}  re-asks: {u['reasks']}  fallbacks: {u['fallbacks']}")
    if report["error"]:
        out.print(f"error:        {report['error']}")
    probe = report.get("probe")
    if probe is None:
        return
    n = probe["images_sent"]
    out.print(f"images:       {n} in one request " + ("accepted" if probe["images_accepted"] else
              f"REFUSED ({probe.get('images_error')}); raise the endpoint's images-per-prompt limit "
              f"(vLLM: --limit-mm-per-prompt) or lower [ground] k"))
    ious = ", ".join(f"{k} {v:.2f}" for k, v in probe.get("iou", {}).items())
    if probe.get("detected") is None:
        out.print(f"grounding:    the answer put no box on the probe's red square (IoU {ious or 'none'}): "
                  "this model cannot ground through refineg as configured")
    elif probe["matches"]:
        out.print(f"grounding:    the answer fits {probe['detected']}, as expected (IoU {ious})")
    else:
        out.print(f"grounding:    the answer fits {probe['detected']}, NOT the configured {report['box_format']} "
                  f"(IoU {ious}): rerun with --llm-box-format {probe['detected']}")


# ---- stage 1b + 2a: the tagger and its gate ------------------------------------------------------


def _config_with(config: Optional[Path], **sections) -> "RunConfig":
    from .config import load_config

    return load_config(config, sections)


@app.command()
def train(
    train_data: Path = typer.Option(..., "--train", help="Training data (Twitter-GMNER split, CCKS folder or JSONL)."),
    dev: Path = typer.Option(..., "--dev", help="Dev data: picks the epoch and calibrates the gate."),
    out_dir: Path = typer.Option(..., "--out", help="MODEL_DIR to write."),
    ids: Optional[Path] = typer.Option(None, "--ids", help="Keep only these training sample ids."),
    augment: Optional[list[Path]] = typer.Option(None, "--augment", help="Extra training sentences (JSONL); repeatable."),
    unlabeled: Optional[Path] = typer.Option(None, "--unlabeled", help="Unlabeled posts for self-training: JSONL (tokens "
                                             "or text; ids optional, entities ignored), a token per line (CoNLL or a "
                                             "Twitter-GMNER split, tags ignored), a CCKS folder, or one post per line."),
    encoder: Optional[str] = typer.Option(None, "--encoder", help="HF encoder name or path (default: packaged MiniLM)."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    gate_mode: Optional[str] = typer.Option(None, "--gate-mode", help="budget (default) or f1."),
    budget: Optional[float] = typer.Option(None, "--budget", help="Share of predicted entities to delegate."),
    config: Optional[Path] = CONFIG,
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Train the tagger (encoder + CRF), calibrate its gate on dev, and save MODEL_DIR."""
    from .data import load_samples, load_unlabeled, read_ids
    from .pipeline import train_model

    from .data.textio import check_output
    from .pipeline import check_model_dir

    cfg = _config_with(config, tagger={"encoder": encoder, "epochs": epochs, "seed": seed},
                       gate={"mode": gate_mode, "budget": budget})
    check_model_dir(check_output(out_dir, folder=True))
    samples = load_samples(train_data, read_ids(ids) if ids else None)
    extra = [s for f in augment or [] for s in load_samples(f)]
    dev_samples = load_samples(dev)
    posts = load_unlabeled(unlabeled) if unlabeled else []
    for path, got in ((train_data, samples), (dev, dev_samples)):
        if not got:
            raise DataError("no samples in the file", path)
    sources = {"train": str(train_data), "ids": str(ids) if ids else None, "augment": [str(a) for a in augment or []],
               "dev": str(dev), "train_samples": len(samples), "augment_samples": len(extra),
               "unlabeled": str(unlabeled) if unlabeled else None}
    result = train_model(samples + extra, dev_samples, cfg, out_dir, progress=not quiet, sources=sources,
                         unlabeled=posts)
    m, g, t = result.meta["dev"]["mner"], result.gate, result.meta["train"]
    out.print(f"setting: {result.meta['setting']}")
    if result.meta["resumed_after"]:
        out.print(f"resumed after {result.meta['resumed_after']} (an earlier run was interrupted)", soft_wrap=True)
    out.print(f"trained on {len(samples)} + {len(extra)} augmented sentences in {t['seconds']:.0f} s "
              f"(best epoch {t['best_epoch']} of {t['epochs_run']}; weights averaged over epochs "
              f"{', '.join(map(str, t['soup_epochs']))})")
    for r in (result.meta.get("selftraining") or {}).get("rounds", []):
        out.print(f"self-training round {r['round']}: {r['pseudo']['used']} pseudo-labelled posts "
                  f"({r['pseudo']['entities_used']} entities) of {r['unlabeled_posts']}; dev MNER F1 "
                  f"{r['dev_f1_before']:.4f} -> {r['dev_f1_after']:.4f}, {'kept' if r['kept'] else 'dropped'} "
                  f"({r['seconds']:.0f} s)")
    out.print(_runtime_line(result.meta["runtime"]))
    out.print(f"dev MNER  P {m['precision']:.4f}  R {m['recall']:.4f}  F1 {m['f1']:.4f}  [{result.meta['setting']}; "
              f"{result.meta['seconds_total']:.0f} s in all]")
    out.print(f"gate ({g.mode}): AUROC {g.auroc:.4f}, delegates {g.delegation_rate:.1%} of entities, "
              f"catches {g.errors_caught:.1%} of wrong entities; flags {g.sample_flag_rate:.1%} of samples "
              f"holding {g.misses_in_flagged:.1%} of missed entities")
    gr = result.meta.get("groundability")
    if gr:
        out.print(f"groundability: dev AUROC {gr['auroc']:.4f}; keeps {gr['recall_of_boxed_entities']:.1%} of boxed "
                  f"entities while {gr['posts_skipped']} of {gr['posts_with_entities']} dev posts need no grounding call")
    out.print(f"saved {out_dir}")


@app.command()
def predict(
    model: Path = typer.Option(..., "--model", help="MODEL_DIR from `refineg train`."),
    data: Path = typer.Option(..., "--data", help="Data to tag (any supported input)."),
    out_path: Path = typer.Option(..., "--out", help="Predictions (canonical JSONL)."),
    ids: Optional[Path] = typer.Option(None, "--ids", help="Keep only these sample ids."),
    images: Optional[list[Path]] = typer.Option(None, "--images", help="Image folder(s): checked, and used by `run` and "
                                                "`ground`; predict itself tags the text only."),
    mc_samples: int = typer.Option(0, "--mc-samples", min=0, help="Also compute MC-dropout scores with T passes (slow)."),
    config: Optional[Path] = CONFIG, llm_base_url: Optional[str] = LLM_BASE_URL, llm_model: Optional[str] = LLM_MODEL,
    llm_gguf: Optional[Path] = LLM_GGUF, llm_mmproj: Optional[Path] = LLM_MMPROJ,
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Tag data with a trained model: every entity gets a score and a keep/delegate decision."""
    from .data import read_ids
    from .pipeline import predict_file

    from .data.textio import check_output

    cfg = _config_with(config, llm={"base_url": llm_base_url, "model": llm_model, "gguf": llm_gguf, "mmproj": llm_mmproj})
    check_output(out_path)
    for folder in images or []:
        if not folder.is_dir():
            raise ConfigError(f"{folder}: no such image folder")
    if images:
        out.print("note: predict tags the text only; the images are used by `refineg run` and `refineg ground`")
    result = predict_file(model, data, out_path, cfg, read_ids(ids) if ids else None, mc_samples, progress=not quiet)
    n_ent = sum(len(p.entities) for p in result.predictions)
    if result.resumed:
        out.print(f"resumed: {result.resumed} samples were tagged by an interrupted run of this command")
    out.print(f"tagged {len(result.predictions)} samples ({result.sentences_per_s:.0f}/s), {n_ent} entities -> {out_path}")
    if not result.gate_active:
        out.print("no LLM configured: the gate keeps every entity (scores are still written)")
    else:
        n_del = sum(1 for p in result.predictions for e in p.entities if e.decision == "delegate")
        n_flag = sum(1 for p in result.predictions if p.delegated)
        out.print(f"gate: {n_del} entities delegated, {n_flag} samples sent to the MLLM")
    if result.mner:
        m, g = result.mner, result.gate
        out.print(f"MNER  P {m['precision']:.4f}  R {m['recall']:.4f}  F1 {m['f1']:.4f}  (model: {result.setting})",
                  soft_wrap=True)
        out.print(f"score AUROC {g['auroc']:.4f}; at the calibrated threshold {g['delegation_rate']:.1%} delegated, "
                  f"catching {g['errors_caught']:.1%} of wrong entities", soft_wrap=True)


def _runtime_line(rt: dict) -> str:
    """What predictions run on, and why int8 was kept or not."""
    if rt["runtime"] != "onnx":
        return "tagger runs in PyTorch (ONNX Runtime not used)"
    check, name = rt.get("check"), "int8" if rt["int8"] else "float32"
    if not check or check["dev_f1_int8"] is None:
        return f"tagger runs as an ONNX {name} graph"
    loss = check["dev_f1_float32"] - check["dev_f1_int8"]
    why = "within" if rt["int8"] else "over"
    return (f"tagger runs as an ONNX {name} graph: int8 costs {loss:+.4f} dev MNER F1 against float32 "
            f"({check['dev_f1_int8']:.4f} / {check['dev_f1_float32']:.4f}), {why} the {check['int8_max_loss']} allowed")


# ---- stage 1a: synthesis -----------------------------------------------------------------------


@app.command()
@llm_options
def synthesize(
    train_data: Path = typer.Option(..., "--train", help="Labelled seed data (any supported input)."),
    out_path: Path = typer.Option(..., "--out", help="Synthesized sentences (canonical JSONL)."),
    ids: Optional[Path] = typer.Option(None, "--ids", help="Keep only these seed ids."),
    types: Optional[str] = typer.Option(None, "--types", help="Type descriptions: twitter, ccks or a TOML file."),
    method: Optional[str] = typer.Option(None, "--method", help="llm or mention-replacement (default: llm if configured)."),
    per_sample: Optional[int] = typer.Option(None, "--per-sample", min=1, help="LLM: sentences keeping the entities (new and "
                                             "none get half); mention replacement: copies per seed."),
    exclude: Optional[list[Path]] = typer.Option(None, "--exclude", help="Data whose sentences must not appear (dev, test)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    cfg=None,
) -> None:
    """Synthesize validated training sentences from labelled seeds (LLM, or offline mention replacement)."""
    from .data import load_samples, read_ids
    from .data.jsonl import summary_path, write_jsonl
    from .synth import synthesize as run_synthesis

    if method not in (None, "llm", "mention-replacement"):
        raise ConfigError(f"--method must be llm or mention-replacement, not {method!r}")
    synth = {"typeset": types}
    if per_sample is not None:
        synth.update(per_sample=per_sample, n_keep=per_sample, n_new=max(1, per_sample // 2), n_none=max(1, per_sample // 2))
    cfg = cfg.model_copy(update={"synth": cfg.synth.model_copy(update={k: v for k, v in synth.items() if v is not None})})
    if method == "llm" and not cfg.llm.configured:
        raise ConfigError("--method llm needs an LLM: give --llm-base-url and --llm-model, or --llm-gguf")
    from .data.textio import check_output

    check_output(out_path)
    seeds = load_samples(train_data, read_ids(ids) if ids else None)
    if not seeds:
        raise DataError("no seed samples to synthesize from", train_data)
    held_out = [s for f in exclude or [] for s in load_samples(f)]
    result = run_synthesis(seeds, cfg, method, held_out, progress=not quiet)
    write_jsonl(result.samples, out_path)
    summary_path(out_path).write_text(json.dumps(result.summary, indent=1))
    s = result.summary
    if s.get("note"):
        out.print(s["note"])
    drops = ", ".join(f"{k} {v}" for k, v in s["dropped"].items()) or "none"
    out.print(f"kept {s['kept']} sentences from {len(seeds)} seeds -> {out_path}")
    out.print(f"dropped: {drops}")
    if s.get("failed_requests"):
        out.print(f"[yellow]{s['failed_requests']} request(s) failed after retries or a re-ask (counted as fallbacks); "
                  "a rerun asks only those again (the others come from the reply cache)[/]")
        if s["failed_requests"] >= s.get("requests", 0) > 0:
            err.print(f"refineg: error: all {s['failed_requests']} LLM requests failed; nothing was synthesized by the LLM")
            raise typer.Exit(1)


# ---- the whole pipeline ----------------------------------------------------------------------------


@app.command()
@llm_options
@stream_options
def run(
    model: Path = typer.Option(..., "--model", help="MODEL_DIR from `refineg train`."),
    data: Path = typer.Option(..., "--data", help="Data to process (any supported input)."),
    out_path: Path = typer.Option(..., "--out", help="Predictions (canonical JSONL), streamed; a rerun resumes."),
    engine: str = typer.Option("local", "--engine", help="local (this process) or ray (a Ray cluster; see [ray] in "
                               "the config for actors and resources)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster address, or auto for a running "
                                              "cluster; none starts a local cluster (--engine ray)."),
    cfg=None, options=None,
) -> None:
    """Tag, gate, refine (MLLM), select demos, ground (MLLM) and write predictions; resumable."""
    from .data.textio import check_output
    from .pipeline import run_pipeline

    if engine not in ("local", "ray"):
        raise ConfigError(f"--engine must be local or ray, not {engine!r}")
    if ray_address and engine != "ray":
        raise ConfigError("--ray-address needs --engine ray")
    check_output(out_path)
    if engine == "ray":
        from .ray_engine import run_ray

        summary = run_ray(model, data, out_path, cfg, options, ray_address)
    else:
        summary = run_pipeline(model, data, out_path, cfg, options)
    out.print(f"entities: {summary['tagger_entities']} from the tagger, {summary['kept_entities']} kept, "
              f"{summary['delegated_entities']} delegated; {summary['samples_sent_to_refinement']} samples refined")
    _print_run(summary, out_path)


@app.command()
@llm_options
@stream_options
def ground(
    data: Path = typer.Option(..., "--data", help="Samples whose entities to ground (any supported input); their boxes are ignored."),
    out_path: Path = typer.Option(..., "--out", help="Grounded predictions (canonical JSONL), streamed; a rerun resumes."),
    cfg=None, options=None,
) -> None:
    """Ground the entities DATA already has (the EEG setting): every sample gets a row with boxes."""
    from .data.textio import check_output
    from .pipeline import ground_file

    check_output(out_path)
    summary = ground_file(data, out_path, cfg, options)
    _print_run(summary, out_path)


def _print_run(summary: dict, out_path: Path) -> None:
    """The end of a run: counts and notes; exit 1 when every LLM call failed."""
    from .data.jsonl import summary_path

    out.print(f"{summary['processed']} samples processed ({summary['resumed_done']} already done) -> {out_path}")
    if "model_setting" in summary:
        out.print(f"model: {summary['model_setting']}", soft_wrap=True)
    c = summary["calls_per_sample"]
    if summary["llm_calls"]["attempted"]:
        cost = summary["llm"].get("total", {}).get("cost", 0.0)
        out.print(f"MLLM calls per sample: {c['total']:.3f} (combined {c['combined']:.3f}, refinement {c['refinement']:.3f}, "
                  f"grounding {c['grounding']:.3f})" + (f"; cost {cost:.4f}" if cost else ""))
    g = summary.get("groundability")
    if g and g["active"] and summary["llm_calls"]["attempted"]:
        out.print(f"groundability gate: {g['posts_skipped']} posts needed no grounding call (threshold {g['threshold']:.3f}, "
                  f"dev AUROC {g['dev_auroc']}, estimated recall of boxed entities lost {g['estimated_recall_lost']:.1%})")
    for key, val in summary["counts"].items():
        out.print(f"  {key}: {val}")
    for note in summary["notes"]:
        out.print(f"note: {note}")
    if summary["rows_marked_retry"]:
        out.print(f"{summary['rows_marked_retry']} row(s) marked for a retry: rerun the same command to redo them")
    out.print(f"summary: {summary_path(out_path)}")
    calls = summary["llm_calls"]
    if calls["attempted"] and calls["failed_transport"] == calls["attempted"]:
        err.print(f"refineg: error: all {calls['attempted']} LLM calls failed (see the warnings above); "
                  "every row was written without LLM work and is marked for a retry")
        raise typer.Exit(1)


@app.command()
@llm_options
def serve(
    model: Path = typer.Option(..., "--model", help="MODEL_DIR from `refineg train`."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback unless told otherwise)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    images: Optional[list[Path]] = IMAGES,
    demos: Optional[Path] = typer.Option(None, "--demos", help="Labelled pool of grounding demonstrations (e.g. train)."),
    demo_ids: Optional[Path] = typer.Option(None, "--demo-ids", help="Keep only these demo ids."),
    clip: Optional[str] = typer.Option(None, "--clip", help="CLIP model name or path for image similarity."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="Require 'Authorization: Bearer KEY', KEY "
                                              "read from this environment variable."),
    max_body_mb: float = typer.Option(20.0, "--max-body-mb", min=0.001, help="Larger request bodies get 413."),
    cfg=None,
) -> None:
    """Serve GMNER over HTTP: POST /v1/gmner, GET /healthz, a page at / and the API docs at /docs."""
    from .pipeline import Pipeline
    from .service import serve as run_service

    options = _run_options(images, demos, demo_ids, clip, False, True, True)
    with Pipeline(model, cfg, options) as nlp:
        nlp.warm()
        err.print(f"refineg serve: http://{host}:{port}/ (model {model}; LLM {cfg.llm.model or cfg.llm.gguf or 'none'})")
        run_service(nlp, host, port, api_key_env, int(max_body_mb * 1_000_000))


@app.command()
def report(
    pred: Path = typer.Argument(..., help="Predictions (canonical JSONL)."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for index.html."),
    gold: Optional[Path] = typer.Option(None, "--gold", help="Gold data: adds metrics, charts, errors and gold boxes."),
    images: Optional[list[Path]] = typer.Option(None, "--images", help="Image folder(s)."),
    title: str = typer.Option("", "--title", help="A line under the heading."),
) -> None:
    """Write a self-contained HTML report: metrics, charts, and every sample with its boxes."""
    from .data import load_samples, read_predictions
    from .report import build_report, predictions_setting

    from .data.textio import check_output

    check_output(out_dir, folder=True)
    preds = read_predictions(pred)
    gold_samples = load_samples(gold) if gold else None
    folders = list(images or []) + [pred.parent]
    index = build_report(preds, gold_samples, out_dir, folders, title, predictions_setting(pred))
    out.print(f"report: {index}")


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", help="Folder for the model, predictions and report."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs (default: the demo config's)."),
    config: Optional[Path] = CONFIG, llm_base_url: Optional[str] = LLM_BASE_URL, llm_model: Optional[str] = LLM_MODEL,
    llm_gguf: Optional[Path] = LLM_GGUF, llm_mmproj: Optional[Path] = LLM_MMPROJ,
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Train on 500 tweets, calibrate the gate, run the pipeline on dev, score it and write the report."""
    from .demo import run_demo

    tagger = {"epochs": epochs if epochs is not None else 8}
    cfg = _config_with(config, tagger=tagger, llm={"base_url": llm_base_url, "model": llm_model, "gguf": llm_gguf,
                                                    "mmproj": llm_mmproj})
    t0 = time.perf_counter()
    f = run_demo(out_dir, cfg, progress=not quiet)
    out.print(f"[bold]refineg demo[/] on {f['data']}")
    out.print(f"tagger: {'trained' if f['trained'] else 'reused'} ({f['train_seconds']:.0f} s; "
              f"{f['pipeline']['model_setting']}); {f['samples']} samples run through the pipeline", soft_wrap=True)
    for m in ("mner", "gmner", "eeg"):
        out.print(f"  {m.upper():<6} P {f[m]['precision']:.4f}  R {f[m]['recall']:.4f}  F1 {f[m]['f1']:.4f}")
    g = f["gate"]
    auroc = g["auroc_on_run_set"]
    auroc_text = f"{auroc:.4f}" if auroc == auroc else "n/a (no wrong entity to rank)"
    out.print(f"  gate: AUROC {auroc_text} on these samples; calibrated to delegate "
              f"{g['calibrated_delegation_rate']:.0%} of entities")
    for note in f["pipeline"]["notes"]:
        out.print(f"  note: {note}")
    if not f["gate"]["llm_configured"]:
        out.print("  without an LLM, refinement and grounding did not run, so GMNER counts only entities that are "
                  "not in the image; set --llm-base-url/--llm-model or --llm-gguf (see README) to run them")
    out.print(f"report: {f['report']}")
    out.print(f"wall time: {time.perf_counter() - t0:.0f} s")
