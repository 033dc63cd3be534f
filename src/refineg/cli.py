"""The ``refineg`` command line: thin commands that parse options and call one library function."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import RefinegError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Low-resource grounded multimodal NER (ReFineG).")
out = Console()
err = Console(stderr=True)


def main() -> None:
    """Entry point: run the app; a RefinegError becomes one line on stderr and exit code 2."""
    try:
        app()
    except RefinegError as exc:
        print(f"refineg: error: {exc}", file=sys.stderr)
        sys.exit(2)


@app.command()
def convert(
    src: Path = typer.Argument(..., help="Input: .jsonl, Twitter-GMNER .txt split, or CCKS folder."),
    dst: Path = typer.Argument(..., help="Output: .jsonl, .txt (XML goes to ../xml or ./xml), or a folder (CCKS)."),
    ids: Optional[Path] = typer.Option(None, help="Keep only the sample ids in this file."),
    to: Optional[str] = typer.Option(None, help="Output format: jsonl, twitter or ccks (default: from DST)."),
) -> None:
    """Convert between Twitter-GMNER, CCKS-GMNER and canonical JSONL."""
    from .data import load_dataset, read_ids, save_samples

    ds = load_dataset(src, read_ids(ids) if ids else None)
    save_samples(list(ds.samples), dst, to)
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

    scores = score(load_samples(gold), read_predictions(pred))
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
