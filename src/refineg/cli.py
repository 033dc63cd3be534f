"""The ``refineg`` command line: each command parses its options, calls one library function and prints.

Options shared between commands are declared once, as ``Annotated`` types; every setting can also come from
the TOML config (``--config``), which the flags override.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .config import load_config
from .data import OUTPUT_FORMATS, load_dataset, load_predictions, load_samples, output_format, read_ids, save_samples
from .data.jsonl import summary_path, write_jsonl
from .data.labelstudio import label_config
from .data.stats import dataset_stats
from .data.textio import check_output
from .demo import DEMO_DEFAULTS, run_demo
from .errors import ConfigError, DataError, RefinegError
from .eval.metrics import score, swapped_hint
from .eval.protocols import PROTOCOLS
from .eval.protocols import protocol as get_protocol
from .gate import model_types
from .llm.families import BY_NAME, CONVENTIONS
from .llm.probe import check
from .llm.typesets import BUILTIN as TYPESETS
from .llm.typesets import load_typeset
from .pipeline import Pipeline
from .report import boxes_note, build_report, predictions_setting, predictions_summary
from .runs.local import ground_file, run_file
from .runs.predict import predict_file
from .runs.select import select_file
from .select import DEFAULT as DEFAULT_STRATEGY
from .select import STRATEGIES
from .service import serve as run_service
from .synth import synthesize as run_synthesis
from .tagger.features import PriorNER
from .training import train_files

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Low-resource grounded multimodal NER (ReFineG).",
)
out = Console()
err = Console(stderr=True)


def main() -> None:
    """Entry point: a RefinegError or an OS error becomes one line on stderr and exit code 2; anything
    else one line and exit code 1. ``--debug`` (anywhere on the line) shows the traceback instead."""
    PriorNER.spacy_without_torch = True  # this process is ours: no need for thinc's PyTorch support
    # our own progress reads well in a log; the Hugging Face libraries' bars (loading weights...) do not
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
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
        _die(
            f"refineg: internal error: {type(exc).__name__}: {str(exc)[:300]} (rerun with --debug for the traceback)",
            1,
            debug,
        )


def _die(message: str, code: int, debug: bool) -> None:
    if debug:
        raise
    print(message, file=sys.stderr)
    sys.exit(code)


# ---- options shared between commands -----------------------------------------------------------------

Config = Annotated[Path | None, typer.Option("--config", help="A TOML run config; options given here override it.")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress output.")]
Model = Annotated[Path, typer.Option("--model", help="MODEL_DIR from `refineg train`.")]
Ids = Annotated[Path | None, typer.Option("--ids", help="Keep only the sample ids in this file (one a line).")]
LLMBaseURL = Annotated[
    list[str] | None,
    typer.Option(
        "--llm-base-url",
        help="OpenAI-compatible endpoint (env REFINEG_LLM_BASE_URL); repeat it for replicas of one "
        "model: requests go to the least busy one.",
    ),
]
LLMModel = Annotated[
    str | None, typer.Option("--llm-model", help="Model name at that endpoint (env REFINEG_LLM_MODEL).")
]
LLMGguf = Annotated[
    Path | None,
    typer.Option("--llm-gguf", help="Run this GGUF in the embedded llama.cpp server (env REFINEG_LLM_GGUF)."),
]
LLMMmproj = Annotated[Path | None, typer.Option("--llm-mmproj", help="Vision projector GGUF for --llm-gguf.")]
LLMConcurrency = Annotated[
    int | None, typer.Option("--llm-concurrency", min=1, help="Requests in flight at once, per endpoint.")
]
LLMTimeout = Annotated[
    float | None,
    typer.Option("--llm-timeout", min=0.001, help="Seconds one attempt may take in all, its reply included."),
]
LLMRetries = Annotated[
    int | None, typer.Option("--llm-retries", min=0, help="Retries after 429, 5xx, timeouts and connection errors.")
]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Do not read or write the LLM reply cache.")]
CacheDir = Annotated[
    Path | None, typer.Option("--cache-dir", help="Cache folder (env REFINEG_CACHE_DIR, default ~/.cache/refineg).")
]
NoJsonSchema = Annotated[
    bool, typer.Option("--no-json-schema", help="The backend does not take response_format JSON schemas.")
]
BoxFormat = Annotated[
    str | None,
    typer.Option(
        "--llm-box-format",
        help="auto (from the model name), a convention ("
        + ", ".join(CONVENTIONS)
        + ") or a family ("
        + ", ".join(BY_NAME)
        + ").",
    ),
]
Verbose = Annotated[
    bool,
    typer.Option("--verbose", help="Show the embedded llama.cpp server's log (default: a file in the cache folder)."),
]
Images = Annotated[
    list[Path] | None,
    typer.Option("--images", help="Image folder; repeatable (e.g. twitter2015_images and twitter2017_images)."),
]
Demos = Annotated[Path | None, typer.Option("--demos", help="Labelled pool of grounding demonstrations (e.g. train).")]
DemoIds = Annotated[Path | None, typer.Option("--demo-ids", help="Keep only these demo ids.")]
Clip = Annotated[str | None, typer.Option("--clip", help="CLIP model name or path for image similarity.")]
Types = Annotated[
    str | None,
    typer.Option(
        "--types", help="Entity type descriptions for the prompts: " + ", ".join(TYPESETS) + " or a TOML file."
    ),
]
Strict = Annotated[bool, typer.Option("--strict", help="A missing or corrupt image is an error, not a warning.")]
AllowMissing = Annotated[
    bool, typer.Option("--allow-missing-images", help="Go on when more than 5% of the samples' images are missing.")
]
Window = Annotated[
    int | None,
    typer.Option(
        "--window", min=1, help="Posts under way at once at most (default: four times --llm-concurrency, at least 64)."
    ),
]


def _llm(given: dict) -> dict:
    """The [llm] settings a command's LLM options give (None: not given, the config's value stands)."""
    return {
        "base_url": list(given.get("llm_base_url") or []) or None,
        "model": given.get("llm_model"),
        "gguf": given.get("llm_gguf"),
        "mmproj": given.get("llm_mmproj"),
        "concurrency": given.get("llm_concurrency"),
        "timeout": given.get("llm_timeout"),
        "max_retries": given.get("llm_retries"),
        "cache_dir": given.get("cache_dir"),
        "cache": False if given.get("no_cache") else None,
        "json_schema": False if given.get("no_json_schema") else None,
        "box_format": given.get("llm_box_format"),
        "verbose": True if given.get("verbose") else None,
        "types": given.get("types"),
    }


def _run(given: dict) -> dict:
    """The [run] settings the run options give (None or False: not given)."""
    return {
        "images": list(given.get("images") or []) or None,
        "demos": given.get("demos"),
        "demo_ids": given.get("demo_ids"),
        "clip": given.get("clip"),
        "strict": given.get("strict") or None,
        "allow_missing_images": given.get("allow_missing_images") or None,
        "window": given.get("window"),
        "progress": False if given.get("quiet") else None,
    }


# ---- data ------------------------------------------------------------------------------------------


@app.command()
def convert(
    src: Annotated[
        Path,
        typer.Argument(
            help="Input: .jsonl, a Twitter-GMNER .txt split, a CCKS folder, a Label Studio "
            "export, or a peer's file (UnCo JSON, CCKS submission JSON, RiVEG lines)."
        ),
    ],
    dst: Annotated[
        Path, typer.Argument(help="Output: .jsonl, .txt (XML goes to ../xml or ./xml), or a folder (CCKS).")
    ],
    ids: Ids = None,
    to: Annotated[
        str | None,
        typer.Option(
            help="Output format: " + ", ".join(OUTPUT_FORMATS) + " (default: from "
            "DST). unco-pred writes predictions (pre_entities), unco gold."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing files (a split's XML boxes included).")
    ] = False,
) -> None:
    """Convert between formats (Twitter-GMNER, CCKS-GMNER, JSONL, Label Studio exports, the peers'); existing files
    are never replaced unless --overwrite."""
    fmt = output_format(dst, to)
    check_output(dst, folder=fmt == "ccks")
    if dst.resolve() == src.resolve():
        raise ConfigError(f"{dst}: the output is the input")
    ds = load_dataset(src, read_ids(ids) if ids else None)
    save_samples(list(ds.samples), dst, fmt, overwrite=overwrite)
    err.print(f"wrote {len(ds.samples)} samples to {dst}")


@app.command()
def stats(
    data: Annotated[Path, typer.Argument(help="Any supported input.")],
    ids: Ids = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print samples, entities per type, groundable share, boxes per entity and image sizes."""
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
    gold: Annotated[
        Path,
        typer.Argument(
            help="Gold: Twitter-GMNER .txt split, CCKS folder, canonical JSONL, or a "
            "peer's gold (UnCo JSON, RiVEG lines)."
        ),
    ],
    pred: Annotated[
        Path,
        typer.Argument(
            help="Predictions: canonical JSONL, or a peer's (UnCo JSON, CCKS submission JSON, RiVEG lines)."
        ),
    ],
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol",
            help="hindex (Twitter-GMNER's own, the default), unco "
            "(UnCo / ReFineG / SAKE's evaluator), riveg (RiVEG's statistic.py), or "
            "all, side by side.",
        ),
    ] = "hindex",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Score predictions: GMNER, MNER and EEG precision, recall and F1, overall and per type (hindex)."""
    names = list(PROTOCOLS) if protocol == "all" else [get_protocol(protocol).name]
    gold_samples, preds = load_samples(gold), load_predictions(pred)
    scores = score(gold_samples, preds)
    _evaluation_warnings(gold, pred, gold_samples, preds, scores)
    results = {
        name: PROTOCOLS[name].scores(gold_samples, preds) if name != "hindex" else scores.overall for name in names
    }
    if as_json:
        if names == ["hindex"]:
            print(json.dumps(scores.as_dict()))
        else:
            print(
                json.dumps(
                    {name: {m: prf.as_dict() for m, prf in r.items()} for name, r in results.items()}
                    if protocol == "all"
                    else {"protocol": names[0], **{m: prf.as_dict() for m, prf in results[names[0]].items()}}
                )
            )
        return
    if names == ["hindex"]:
        _print_scores(scores)
    else:
        _print_protocols(results)


def _evaluation_warnings(gold: Path, pred: Path, gold_samples, preds, scores) -> None:
    hint = swapped_hint(gold_samples, preds)
    if hint:
        err.print(f"[yellow]warning: {gold}: {hint}[/]", soft_wrap=True)
    if not preds:
        err.print(
            f"[yellow]warning: {pred} holds no prediction: all {len(gold_samples)} gold samples count as missed[/]"
        )
    elif scores.missing_pred_ids:
        err.print(
            f"[yellow]warning: {scores.missing_pred_ids} of {len(gold_samples)} gold samples have no prediction; "
            "their entities count as missed[/]"
        )
    if scores.unknown_pred_ids:
        err.print(
            f"[yellow]warning: {scores.unknown_pred_ids} predicted id(s) are not in gold; their entities count as "
            "false positives[/]"
        )


def _print_scores(scores) -> None:
    table = Table(title="GMNER evaluation (protocol hindex)")
    for col in ("", "precision", "recall", "F1", "tp", "pred", "gold"):
        table.add_column(col, justify="right" if col else "left")
    rows = [(m.upper(), prf) for m, prf in scores.overall.items()]
    rows += [(f"{t} GMNER", by["gmner"]) for t, by in scores.per_type.items()]
    rows += [(f"{t} MNER", by["mner"]) for t, by in scores.per_type.items()]
    for name, prf in rows:
        table.add_row(
            name,
            f"{prf.precision:.4f}",
            f"{prf.recall:.4f}",
            f"{prf.f1:.4f}",
            str(prf.tp),
            str(prf.n_pred),
            str(prf.n_gold),
        )
    out.print(table)


def _print_protocols(results: dict) -> None:
    table = Table(title="GMNER evaluation, by protocol")
    table.add_column("")
    for name in results:
        table.add_column(name, justify="right")
    for mode in ("gmner", "mner", "eeg"):
        for stat in ("precision", "recall", "f1"):
            table.add_row(
                f"{mode.upper()} {stat if stat != 'f1' else 'F1'}",
                *(f"{getattr(r[mode], stat):.4f}" for r in results.values()),
                end_section=stat == "f1",
            )
    out.print(table)
    for name in results:
        out.print(f"{name}: {PROTOCOLS[name].source}", soft_wrap=True)


# ---- the LLM --------------------------------------------------------------------------------------


@app.command("llm-check")
def llm_check(
    images: Annotated[
        bool,
        typer.Option(
            "--images",
            help="Also send K+1 images and a grounding probe: does the "
            "endpoint take that many images, and which box convention does its answer "
            "fit?",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    config: Config = None,
    llm_base_url: LLMBaseURL = None,
    llm_model: LLMModel = None,
    llm_gguf: LLMGguf = None,
    llm_mmproj: LLMMmproj = None,
    llm_concurrency: LLMConcurrency = None,
    llm_timeout: LLMTimeout = None,
    llm_retries: LLMRetries = None,
    no_cache: NoCache = False,
    cache_dir: CacheDir = None,
    no_json_schema: NoJsonSchema = False,
    llm_box_format: BoxFormat = None,
    verbose: Verbose = False,
) -> None:
    """Talk to the live endpoint (never the cache): model, latency, JSON-schema output; with --images, grounding."""
    cfg = load_config(config, {"llm": _llm(locals())})
    if not cfg.llm.configured:
        raise ConfigError(
            "no LLM configured: give --llm-base-url and --llm-model, or --llm-gguf (or the REFINEG_LLM_* variables)"
        )
    report = check(cfg.llm, cfg.ground.k + 1 if images else 0)
    if as_json:
        print(json.dumps(report))
    else:
        _print_check(report)
    if not report["ok"]:
        raise typer.Exit(1)


def _print_check(report: dict) -> None:
    u = report["usage"]
    out.print(f"model:        {report['model']}  ({report['base_url']})")
    out.print(f"reachable:    {'yes' if report['reachable'] else 'NO'}")
    if report["reachable"]:
        out.print(f"latency:      {report['latency_s']:.3f} s")
        out.print(
            f"json schema:  {'requested' if report['json_schema_requested'] else 'not requested'}, "
            f"answer {'valid' if report['json_valid'] else 'NOT valid'}"
        )
    out.print(f"box format:   {report['box_format_note']}")
    out.print(
        f"requests:     {u['requests']}  retries: {u['retries']}  re-asks: {u['reasks']}  fallbacks: {u['fallbacks']}"
    )
    if report["error"]:
        out.print(f"error:        {report['error']}", soft_wrap=True)
    probe = report.get("probe")
    if probe is None:
        if report["reachable"]:
            out.print("images:       not checked (add --images to check images and box format)")
        return
    n = probe["images_sent"]
    out.print(
        f"images:       {n} in one request "
        + ("accepted" if probe["images_accepted"] else f"REFUSED ({probe.get('images_error')})"),
        soft_wrap=True,
    )
    ious = ", ".join(f"{k} {v:.2f}" for k, v in probe.get("iou", {}).items())
    if not probe["images_accepted"] and probe.get("detected") is None:
        return
    if probe.get("detected") is None:
        out.print(
            f"grounding:    the answer put no box on the probe's red square (IoU {ious or 'none'}): "
            "this model cannot ground through refineg as configured"
        )
    elif probe["matches"]:
        out.print(f"grounding:    the answer fits {probe['detected']}, as expected (IoU {ious})")
    else:
        out.print(
            f"grounding:    the answer fits {probe['detected']}, NOT the configured {report['box_format']} "
            f"(IoU {ious}): rerun with --llm-box-format {probe['detected']}"
        )


@app.command()
def synthesize(
    train_data: Annotated[Path, typer.Option("--train", help="Labelled seed data (any supported input).")],
    out_path: Annotated[Path, typer.Option("--out", help="Synthesized sentences (canonical JSONL).")],
    ids: Ids = None,
    types: Types = None,
    method: Annotated[
        str | None, typer.Option("--method", help="llm or mention-replacement (default: llm if configured).")
    ] = None,
    per_sample: Annotated[
        int | None,
        typer.Option(
            "--per-sample",
            min=1,
            help="LLM: sentences keeping the entities (new and none get half); mention replacement: copies per seed.",
        ),
    ] = None,
    exclude: Annotated[
        list[Path] | None, typer.Option("--exclude", help="Data whose sentences must not appear (dev, test).")
    ] = None,
    quiet: Quiet = False,
    config: Config = None,
    llm_base_url: LLMBaseURL = None,
    llm_model: LLMModel = None,
    llm_gguf: LLMGguf = None,
    llm_mmproj: LLMMmproj = None,
    llm_concurrency: LLMConcurrency = None,
    llm_timeout: LLMTimeout = None,
    llm_retries: LLMRetries = None,
    no_cache: NoCache = False,
    cache_dir: CacheDir = None,
    no_json_schema: NoJsonSchema = False,
    verbose: Verbose = False,
) -> None:
    """Synthesize validated training sentences from labelled seeds (LLM, or offline mention replacement)."""
    if method not in (None, "llm", "mention-replacement"):
        raise ConfigError(f"--method must be llm or mention-replacement, not {method!r}")
    synth = (
        {}
        if per_sample is None
        else {
            "per_sample": per_sample,
            "n_keep": per_sample,
            "n_new": max(1, per_sample // 2),
            "n_none": max(1, per_sample // 2),
        }
    )
    cfg = load_config(config, {"llm": _llm(locals()), "synth": synth})
    if method == "llm" and not cfg.llm.configured:
        raise ConfigError("--method llm needs an LLM: give --llm-base-url and --llm-model, or --llm-gguf")
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
        out.print(
            f"[yellow]{s['failed_requests']} request(s) failed after retries or a re-ask (counted as fallbacks); "
            "a rerun asks only those again (the others come from the reply cache)[/]"
        )
        if s["failed_requests"] >= s.get("requests", 0) > 0:
            err.print(
                f"refineg: error: all {s['failed_requests']} LLM requests failed; nothing was synthesized by the LLM"
            )
            raise typer.Exit(1)


# ---- the tagger and its gate -----------------------------------------------------------------------


@app.command()
def train(
    train_data: Annotated[
        Path, typer.Option("--train", help="Training data (Twitter-GMNER split, CCKS folder or JSONL).")
    ],
    dev: Annotated[Path, typer.Option("--dev", help="Dev data: picks the epoch and calibrates the gate.")],
    out_dir: Annotated[Path, typer.Option("--out", help="MODEL_DIR to write.")],
    ids: Ids = None,
    augment: Annotated[
        list[Path] | None, typer.Option("--augment", help="Extra training sentences (JSONL); repeatable.")
    ] = None,
    unlabeled: Annotated[
        Path | None,
        typer.Option(
            "--unlabeled",
            help="Unlabeled posts for self-training: JSONL (tokens or text; ids optional, entities ignored), "
            "a token per line (CoNLL or a Twitter-GMNER split, tags ignored), a CCKS folder, or one post per line.",
        ),
    ] = None,
    encoder: Annotated[
        str | None, typer.Option("--encoder", help="HF encoder name or path (default: packaged MiniLM).")
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1)] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    gate_mode: Annotated[str | None, typer.Option("--gate-mode", help="budget (default) or f1.")] = None,
    budget: Annotated[float | None, typer.Option("--budget", help="Share of predicted entities to delegate.")] = None,
    config: Config = None,
    quiet: Quiet = False,
) -> None:
    """Train the tagger (encoder + CRF), calibrate its gate on dev, and save MODEL_DIR."""
    cfg = load_config(
        config,
        {"tagger": {"encoder": encoder, "epochs": epochs, "seed": seed}, "gate": {"mode": gate_mode, "budget": budget}},
    )
    result = train_files(train_data, dev, out_dir, cfg, ids, augment or (), unlabeled, progress=not quiet)
    _print_training(result.meta, result.gate)
    out.print(f"saved {out_dir}")


def _print_training(meta: dict, g) -> None:
    m, t, src = meta["dev"]["mner"], meta["train"], meta["sources"]
    out.print(f"setting: {meta['setting']}")
    if meta["resumed_after"]:
        out.print(f"resumed after {meta['resumed_after']} (an earlier run was interrupted)", soft_wrap=True)
    out.print(
        f"trained on {src['train_samples']} + {src['augment_samples']} augmented sentences in "
        f"{t['seconds']:.0f} s (best epoch {t['best_epoch']} of {t['epochs_run']}; weights averaged over epochs "
        f"{', '.join(map(str, t['soup_epochs']))})"
    )
    for r in (meta.get("selftraining") or {}).get("rounds", []):
        out.print(
            f"self-training round {r['round']}: {r['pseudo']['used']} pseudo-labelled posts "
            f"({r['pseudo']['entities_used']} entities) of {r['unlabeled_posts']}; dev MNER F1 "
            f"{r['dev_f1_before']:.4f} -> {r['dev_f1_after']:.4f}, {'kept' if r['kept'] else 'dropped'} "
            f"({r['seconds']:.0f} s)"
        )
    out.print(_runtime_line(meta["runtime"]))
    out.print(
        f"dev MNER  P {m['precision']:.4f}  R {m['recall']:.4f}  F1 {m['f1']:.4f}  [{meta['setting']}; "
        f"{meta['seconds_total']:.0f} s in all]"
    )
    out.print(
        f"gate ({g.mode}): AUROC {g.auroc:.4f}, delegates {g.delegation_rate:.1%} of entities, "
        f"catches {g.errors_caught:.1%} of wrong entities; flags {g.sample_flag_rate:.1%} of samples "
        f"holding {g.misses_in_flagged:.1%} of missed entities"
    )
    gr = meta.get("groundability")
    if gr:
        out.print(
            f"groundability: dev AUROC {gr['auroc']:.4f}; keeps {gr['recall_of_boxed_entities']:.1%} of boxed "
            f"entities while {gr['posts_skipped']} of {gr['posts_with_entities']} dev posts need no grounding call"
        )


def _runtime_line(rt: dict) -> str:
    """What predictions run on, and why int8 was kept or not."""
    if rt["runtime"] != "onnx":
        return "tagger runs in PyTorch (ONNX Runtime not used)"
    check, name = rt.get("check"), "int8" if rt["int8"] else "float32"
    if not check or check["dev_f1_int8"] is None:
        return f"tagger runs as an ONNX {name} graph"
    loss = check["dev_f1_float32"] - check["dev_f1_int8"]
    why = "within" if rt["int8"] else "over"
    return (
        f"tagger runs as an ONNX {name} graph: int8 costs {loss:+.4f} dev MNER F1 against float32 "
        f"({check['dev_f1_int8']:.4f} / {check['dev_f1_float32']:.4f}), {why} the {check['int8_max_loss']} allowed"
    )


@app.command()
def predict(
    model: Model,
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="Data to tag: any supported input, or posts without labels (one a line, JSONL or a token per line).",
        ),
    ],
    out_path: Annotated[Path, typer.Option("--out", help="Predictions (canonical JSONL).")],
    ids: Ids = None,
    decisions: Annotated[
        bool,
        typer.Option(
            "--decisions",
            help="Mark the entities the gate would send to an MLLM "
            "(decision delegate), as `refineg run` does with one; without it every "
            "entity is kept.",
        ),
    ] = False,
    images: Annotated[
        list[Path] | None,
        typer.Option(
            "--images", help="Image folder(s): checked only; predict tags the text (`run` and `ground` use images)."
        ),
    ] = None,
    mc_samples: Annotated[
        int, typer.Option("--mc-samples", min=0, help="Also compute MC-dropout scores with T passes (slow).")
    ] = 0,
    config: Config = None,
    quiet: Quiet = False,
    llm_base_url: LLMBaseURL = None,
    llm_model: LLMModel = None,
    llm_gguf: LLMGguf = None,
    llm_mmproj: LLMMmproj = None,
) -> None:
    """Tag data with a trained model and its gate: every entity gets a score (no MLLM is called)."""
    cfg = load_config(config, {"run": _run(locals())})
    check_output(out_path)
    for folder in images or []:
        if not folder.is_dir():
            raise ConfigError(f"{folder}: no such image folder")
    if any((llm_base_url, llm_model, llm_gguf, llm_mmproj)):
        err.print(
            "note: predict calls no LLM, so the --llm-* options change nothing; --decisions marks what "
            "`refineg run` would delegate to one"
        )
    result = predict_file(model, data, out_path, cfg, read_ids(ids) if ids else None, mc_samples, decisions)
    n_ent = sum(len(p.entities) for p in result.predictions)
    if result.resumed:
        out.print(f"resumed: {result.resumed} samples were tagged by an interrupted run of this command")
    out.print(
        f"tagged {len(result.predictions)} samples ({result.sentences_per_s:.0f}/s), {n_ent} entities -> {out_path}"
    )
    if result.decisions:
        n_del = sum(1 for p in result.predictions for e in p.entities if e.decision == "delegate")
        n_flag = sum(1 for p in result.predictions if p.delegated)
        out.print(f"gate: {n_del} entities would be delegated, {n_flag} samples would go to the MLLM")
    else:
        out.print("every entity is kept (scores are written); --decisions marks what the gate would send to an MLLM")
    if result.mner:
        m, g = result.mner, result.gate
        out.print(
            f"MNER  P {m['precision']:.4f}  R {m['recall']:.4f}  F1 {m['f1']:.4f}  (model: {result.setting})",
            soft_wrap=True,
        )
        out.print(
            f"score AUROC {g['auroc']:.4f}; at the calibrated threshold {g['delegation_rate']:.1%} delegated, "
            f"catching {g['errors_caught']:.1%} of wrong entities",
            soft_wrap=True,
        )


# ---- choosing what to label -----------------------------------------------------------------------


@app.command("select")
def select_posts(
    model: Model,
    pool: Annotated[
        Path,
        typer.Option(
            "--pool",
            help="Unlabelled posts to choose from: any format --unlabeled takes (labels in it are never read).",
        ),
    ],
    budget: Annotated[int, typer.Option("--budget", min=1, help="How many posts to choose.")],
    out_path: Annotated[
        Path,
        typer.Option(
            "--out",
            help="The chosen posts: ids (one a line, most useful first) or Label Studio tasks (--format label-studio).",
        ),
    ],
    exclude: Annotated[
        list[Path] | None,
        typer.Option(
            "--exclude",
            help="Ids already labelled (one a line); "
            "repeatable. Their posts, and posts with the same text, are "
            "never chosen.",
        ),
    ] = None,
    strategy: Annotated[
        str,
        typer.Option(
            "--strategy",
            help="How to choose: " + "; ".join(f"{name}: {entry.help}" for name, entry in STRATEGIES.items()) + ".",
        ),
    ] = DEFAULT_STRATEGY,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="ids or label-studio (tasks with refineg's entities, and with an MLLM its boxes, as pre-annotations).",
        ),
    ] = "ids",
    image_url: Annotated[
        str | None,
        typer.Option(
            "--image-url",
            help="label-studio: the URL prefix under which "
            "Label Studio finds the images (default: each image inside its "
            "task, as a data URL).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="For the random strategy.")] = 0,
    images: Images = None,
    quiet: Quiet = False,
    config: Config = None,
    llm_base_url: LLMBaseURL = None,
    llm_model: LLMModel = None,
    llm_gguf: LLMGguf = None,
    llm_mmproj: LLMMmproj = None,
    llm_concurrency: LLMConcurrency = None,
    llm_timeout: LLMTimeout = None,
    llm_retries: LLMRetries = None,
    no_cache: NoCache = False,
    cache_dir: CacheDir = None,
    llm_box_format: BoxFormat = None,
) -> None:
    """Choose the posts whose labels should help the tagger most (active learning), as ids or Label Studio tasks."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    if fmt not in ("ids", "label-studio"):
        raise ConfigError(f"--format must be ids or label-studio, not {fmt!r}")
    cfg = load_config(config, {"llm": _llm(locals()), "run": _run(locals())})
    check_output(out_path)
    result = select_file(
        model,
        pool,
        [i for f in exclude or [] for i in read_ids(f)],
        budget,
        cfg,
        strategy,
        seed,
        fmt,
        out_path,
        image_url,
    )
    out.print(f"chose {len(result.chosen)} of {result.candidates} posts ({strategy}) -> {out_path}")
    if result.chosen and strategy != "random":
        mean = sum(r.risk for r in result.chosen) / len(result.chosen)
        out.print(f"expected wrong or missed entities: {mean:.2f} per chosen post, {result.pool_risk:.2f} in the pool")


@app.command("label-config")
def label_config_command(
    model: Annotated[Path | None, typer.Option("--model", help="Take the entity types from this MODEL_DIR.")] = None,
    types: Types = None,
) -> None:
    """Print the Label Studio labeling configuration: text spans with the types, boxes, a relation between them."""
    print(label_config(model_types(model) if model else load_typeset(types or "twitter").names), end="")


# ---- the whole pipeline ----------------------------------------------------------------------------


@app.command()
def run(
    model: Model,
    data: Annotated[
        Path, typer.Option("--data", help="Data to process: any supported input, or posts without labels.")
    ],
    out_path: Annotated[Path, typer.Option("--out", help="Predictions (canonical JSONL), streamed; a rerun resumes.")],
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="local (this process) or ray (a Ray cluster; see [ray] in the config for actors and resources).",
        ),
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="Ray cluster address, or auto for a running cluster; none starts a local cluster (--engine ray).",
        ),
    ] = None,
    images: Images = None,
    demos: Demos = None,
    demo_ids: DemoIds = None,
    clip: Clip = None,
    types: Types = None,
    strict: Strict = False,
    allow_missing_images: AllowMissing = False,
    window: Window = None,
    quiet: Quiet = False,
    config: Config = None,
    llm_base_url: LLMBaseURL = None,
    llm_model: LLMModel = None,
    llm_gguf: LLMGguf = None,
    llm_mmproj: LLMMmproj = None,
    llm_concurrency: LLMConcurrency = None,
    llm_timeout: LLMTimeout = None,
    llm_retries: LLMRetries = None,
    no_cache: NoCache = False,
    cache_dir: CacheDir = None,
    no_json_schema: NoJsonSchema = False,
    llm_box_format: BoxFormat = None,
    verbose: Verbose = False,
) -> None:
    """Tag, gate, refine (MLLM), select demos, ground (MLLM) and write predictions; resumable."""
    if engine not in ("local", "ray"):
        raise ConfigError(f"--engine must be local or ray, not {engine!r}")
    if ray_address and engine != "ray":
        raise ConfigError("--ray-address needs --engine ray")
    cfg = load_config(config, {"llm": _llm(locals()), "run": _run(locals()), "ray": {"address": ray_address}})
    check_output(out_path)
    if engine == "ray":
        from .runs.ray import run_ray  # Ray is an optional dependency

        summary = run_ray(model, data, out_path, cfg)
    else:
        summary = run_file(model, data, out_path, cfg)
    out.print(
        f"entities: {summary['tagger_entities']} from the tagger, {summary['kept_entities']} kept, "
        f"{summary['delegated_entities']} delegated; {summary['samples_sent_to_refinement']} samples refined"
    )
    _print_run(summary, out_path)


@app.command()
def ground(
    data: Annotated[
        Path,
        typer.Option("--data", help="Samples whose entities to ground (any supported input); their boxes are ignored."),
    ],
    out_path: Annotated[
        Path, typer.Option("--out", help="Grounded predictions (canonical JSONL), streamed; a rerun resumes.")
    ],
    images: Images = None,
    demos: Demos = None,
    demo_ids: DemoIds = None,
    clip: Clip = None,
    types: Types = None,
    strict: Strict = False,
    allow_missing_images: AllowMissing = False,
    window: Window = None,
    quiet: Quiet = False,
    config: Config = None,
    llm_base_url: LLMBaseURL = None,
    llm_model: LLMModel = None,
    llm_gguf: LLMGguf = None,
    llm_mmproj: LLMMmproj = None,
    llm_concurrency: LLMConcurrency = None,
    llm_timeout: LLMTimeout = None,
    llm_retries: LLMRetries = None,
    no_cache: NoCache = False,
    cache_dir: CacheDir = None,
    no_json_schema: NoJsonSchema = False,
    llm_box_format: BoxFormat = None,
    verbose: Verbose = False,
) -> None:
    """Ground the entities DATA already has (the EEG setting): every sample gets a row with boxes."""
    cfg = load_config(config, {"llm": _llm(locals()), "run": _run(locals())})
    check_output(out_path)
    _print_run(ground_file(data, out_path, cfg), out_path)


def _print_run(summary: dict, out_path: Path) -> None:
    """The end of a run: counts and notes; exit 1 when every LLM call failed."""
    out.print(f"{summary['processed']} samples processed ({summary['resumed_done']} already done) -> {out_path}")
    if "model_setting" in summary:
        out.print(f"model: {summary['model_setting']}", soft_wrap=True)
    c = summary["calls_per_sample"]
    if summary["llm_calls"]["attempted"]:
        cost = summary["llm"].get("total", {}).get("cost", 0.0)
        out.print(
            f"MLLM calls per sample: {c['total']:.3f} (combined {c['combined']:.3f}, refinement {c['refinement']:.3f}, "
            f"grounding {c['grounding']:.3f})" + (f"; cost {cost:.4f}" if cost else "")
        )
    g = summary.get("groundability")
    if g and g["active"] and summary["llm_calls"]["attempted"]:
        out.print(
            f"groundability gate: {g['posts_skipped']} posts needed no grounding call (threshold {g['threshold']:.3f}, "
            f"dev AUROC {g['dev_auroc']}, estimated recall of boxed entities lost {g['estimated_recall_lost']:.1%})"
        )
    for key, val in summary["counts"].items():
        out.print(f"  {key}: {val}")
    for note in summary["notes"]:
        out.print(f"note: {note}", soft_wrap=True)
    if summary["rows_marked_retry"]:
        out.print(f"{summary['rows_marked_retry']} row(s) marked for a retry: rerun the same command to redo them")
    out.print(f"summary: {summary_path(out_path)}")
    calls = summary["llm_calls"]
    if calls["attempted"] and calls["failed_transport"] == calls["attempted"]:
        err.print(
            f"refineg: error: all {calls['attempted']} LLM calls failed (see the warnings above); "
            "every row was written without LLM work and is marked for a retry"
        )
        raise typer.Exit(1)


# ---- serving and reporting -------------------------------------------------------------------------


@app.command()
def serve(
    model: Model,
    host: Annotated[str | None, typer.Option("--host", help="Address to bind (default 127.0.0.1: loopback).")] = None,
    port: Annotated[int | None, typer.Option("--port", min=0, max=65535, help="Port (default 8000).")] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(
            "--api-key-env", help="Require 'Authorization: Bearer KEY', KEY read from this environment variable."
        ),
    ] = None,
    max_body_mb: Annotated[
        float | None, typer.Option("--max-body-mb", min=0.001, help="Larger request bodies get 413 (default 20).")
    ] = None,
    images: Images = None,
    demos: Demos = None,
    demo_ids: DemoIds = None,
    clip: Clip = None,
    types: Types = None,
    config: Config = None,
    llm_base_url: LLMBaseURL = None,
    llm_model: LLMModel = None,
    llm_gguf: LLMGguf = None,
    llm_mmproj: LLMMmproj = None,
    llm_concurrency: LLMConcurrency = None,
    llm_timeout: LLMTimeout = None,
    llm_retries: LLMRetries = None,
    no_cache: NoCache = False,
    cache_dir: CacheDir = None,
    no_json_schema: NoJsonSchema = False,
    llm_box_format: BoxFormat = None,
    verbose: Verbose = False,
) -> None:
    """Serve GMNER over HTTP: POST /v1/gmner, GET /healthz, a page at / and the API docs at /docs."""
    cfg = load_config(
        config,
        {
            "llm": _llm(locals()),
            "run": {**_run(locals()), "progress": False},
            "service": {"host": host, "port": port, "api_key_env": api_key_env, "max_body_mb": max_body_mb},
        },
    )
    with Pipeline(model, cfg) as nlp:
        nlp.warm()
        s = cfg.service
        err.print(
            f"refineg serve: http://{s.host}:{s.port}/ (model {model}; LLM {cfg.llm.model or cfg.llm.gguf or 'none'})"
        )
        run_service(nlp)


@app.command()
def report(
    pred: Annotated[Path, typer.Argument(help="Predictions (canonical JSONL).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for index.html.")],
    gold: Annotated[
        Path | None, typer.Option("--gold", help="Gold data: adds metrics, charts, errors and gold boxes.")
    ] = None,
    images: Images = None,
    title: Annotated[str, typer.Option("--title", help="A line under the heading.")] = "",
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol",
            help="The scoring protocol of the figures: hindex (default), "
            "unco or riveg (see `refineg evaluate --help`).",
        ),
    ] = "hindex",
) -> None:
    """Write a self-contained HTML report: metrics, charts, and every sample with its boxes."""
    check_output(out_dir, folder=True)
    preds = load_predictions(pred)
    gold_samples = load_samples(gold) if gold else None
    folders = list(images or []) + [pred.parent]
    note = boxes_note(preds, predictions_summary(pred)) if gold_samples else None
    index = build_report(
        preds,
        gold_samples,
        out_dir,
        folders,
        title,
        predictions_setting(pred),
        [note] if note else [],
        get_protocol(protocol).name,
    )
    out.print(f"report: {index}")


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the model, predictions and report.")] = Path(
        "runs/demo"
    ),
    epochs: Annotated[
        int | None, typer.Option("--epochs", min=1, help="Training epochs (default: the demo's own, 8).")
    ] = None,
    config: Config = None,
    llm_base_url: LLMBaseURL = None,
    llm_model: LLMModel = None,
    llm_gguf: LLMGguf = None,
    llm_mmproj: LLMMmproj = None,
    quiet: Quiet = False,
) -> None:
    """Train on 500 tweets, calibrate the gate, run the pipeline on dev, score it and write the report."""
    cfg = load_config(config, {"tagger": {"epochs": epochs}, "llm": _llm(locals())}, defaults=DEMO_DEFAULTS)
    t0 = time.perf_counter()
    f = run_demo(out_dir, cfg, progress=not quiet)
    _print_demo(f)
    out.print(f"wall time: {time.perf_counter() - t0:.0f} s")


def _print_demo(f: dict) -> None:
    out.print(f"[bold]refineg demo[/] on {f['data']}")
    out.print(
        f"tagger: {'trained' if f['trained'] else 'reused'} ({f['train_seconds']:.0f} s; "
        f"{f['pipeline']['model_setting']}); {f['samples']} samples run through the pipeline",
        soft_wrap=True,
    )
    for m in ("mner", "gmner", "eeg"):
        out.print(f"  {m.upper():<6} P {f[m]['precision']:.4f}  R {f[m]['recall']:.4f}  F1 {f[m]['f1']:.4f}")
    g = f["gate"]
    auroc = g["auroc_on_run_set"]
    auroc_text = f"{auroc:.4f}" if auroc == auroc else "n/a (no wrong entity to rank)"
    out.print(
        f"  gate: AUROC {auroc_text} on these samples; calibrated to delegate "
        f"{g['calibrated_delegation_rate']:.0%} of entities"
    )
    for note in f["pipeline"]["notes"]:
        out.print(f"  note: {note}", soft_wrap=True)
    if not f["gate"]["llm_configured"]:
        out.print(
            "  without an LLM, refinement and grounding did not run, so GMNER counts only entities that are "
            "not in the image; set --llm-base-url/--llm-model or --llm-gguf (see README) to run them"
        )
    out.print(f"report: {f['report']}")


__all__ = ["app", "main"]
