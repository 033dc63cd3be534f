"""Active learning, simulated with the contract commands: label 100 posts, then four rounds of +100 chosen by
`refineg select`, against the same rounds chosen at random (and by the naive rule), several seeds each.

The pool is Twitter-GMNER train (7,000 posts; `select` never reads its labels, the simulation's annotator
does); dev picks the epochs and calibrates the gate, as usual. The seed set is the first 100 ids of
splits/train-500.ids. Each round is two commands, exactly as a user runs them:

    refineg select --model M --pool train.txt --exclude LABELLED.ids --budget 100 --out NEW.ids --strategy S
    refineg train --train train.txt --ids LABELLED+NEW.ids --dev dev.txt --out M2 --seed SEED

It prints the learning curve (labels against dev MNER F1 and gate AUROC, mean and range over seeds, per
strategy) and draws it as an SVG for the docs. Results are kept in the work folder: a rerun goes on where it
stopped. With --self-train, the 500-label model of the first strategy and seed is trained again with the rest
of the pool as --unlabeled.

    .venv/bin/python benchmarks/active_learning.py [--strategies diverse risk random] [--seeds 0 1 2]
                                                   [--work runs/al] [--svg docs/img/active_learning.svg]
                                                   [--config run.toml] [--self-train]

Seeds can run as separate processes on one work folder (each writes only its own files); a last run over all
of them, which finds every figure kept, prints the curves and draws the picture.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared/data/twitter-gmner"
TRAIN = DATA / "Twitter10000_v2.0/txt/train.txt"
DEV = DATA / "Twitter10000_v2.0/txt/dev.txt"
REFINEG = str(Path(sys.executable).parent / "refineg")
CONFIG: list[str] = []  # --config FILE for every command, when given


def _run(*args) -> None:
    res = subprocess.run([REFINEG, *map(str, args), *CONFIG, "--quiet"], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"refineg {args[0]} failed: {res.stderr[-2000:]}")


def _train(ids: Path, out: Path, seed: int, unlabeled: Path | None = None) -> dict:
    """The dev figures of a model trained on these ids (trained unless its figures are already kept)."""
    figures = out.with_suffix(".json")
    if not figures.is_file():
        t0 = time.perf_counter()
        _run(
            "train",
            "--train",
            TRAIN,
            "--ids",
            ids,
            "--dev",
            DEV,
            "--out",
            out,
            "--seed",
            seed,
            *(["--unlabeled", unlabeled] if unlabeled else []),
        )
        meta = json.loads((out / "meta.json").read_text())
        figures.write_text(
            json.dumps(
                {
                    "f1": meta["dev"]["mner"]["f1"],
                    "auroc": meta["gate"]["auroc"],
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
        )
    return json.loads(figures.read_text())


def _arm(work: Path, strategy: str, seed: int, rounds: int, step: int) -> list[dict]:
    """One strategy and seed: the figures after the seed set and after each round."""
    seed_ids = work / "seed.ids"
    base = work / f"seed{seed}-r0"
    curve = [{"labels": 100, **_train(seed_ids, base, seed)}]
    labelled, model = seed_ids, base
    for r in range(1, rounds + 1):
        out = work / f"{strategy}-seed{seed}-r{r}"
        ids = out.with_suffix(".ids")
        if not ids.is_file():
            t0 = time.perf_counter()
            new = work / f"{strategy}-seed{seed}-r{r}.new"
            _run(
                "select",
                "--model",
                model,
                "--pool",
                TRAIN,
                "--exclude",
                labelled,
                "--budget",
                step,
                "--out",
                new,
                "--strategy",
                strategy,
                "--seed",
                seed,
            )
            ids.write_text(labelled.read_text() + new.read_text())
            (out.parent / (out.name + ".select-seconds")).write_text(f"{time.perf_counter() - t0:.1f}")
        curve.append({"labels": 100 + r * step, **_train(ids, out, seed)})
        if model != base:  # the previous round's model is no longer needed (its figures are kept)
            shutil.rmtree(model, ignore_errors=True)
        labelled, model = ids, out
    return curve


def _svg(results: dict, path: Path) -> None:
    """The learning curves: mean dev MNER F1 per strategy against labels, the seeds' range as a band."""
    colors = {"diverse": "#d7263d", "risk": "#f08a24", "random": "#1b65b0"}
    labels = sorted({p["labels"] for curves in results.values() for c in curves for p in c})
    f1s = [p["f1"] for curves in results.values() for c in curves for p in c]
    lo, hi = min(f1s) - 0.005, max(f1s) + 0.005
    w, h, m = 560, 340, 50
    x = {n: m + (w - 2 * m) * i / (len(labels) - 1) for i, n in enumerate(labels)}

    def y(v):
        return h - m - (h - 2 * m) * (v - lo) / (hi - lo)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
    ]
    for n in labels:
        parts.append(f'<text x="{x[n]:.1f}" y="{h - m + 18}" text-anchor="middle">{n}</text>')
    for k in range(6):
        v = lo + (hi - lo) * k / 5
        parts.append(
            f'<line x1="{m}" x2="{w - m}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>'
            f'<text x="{m - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{100 * v:.1f}</text>'
        )
    parts.append(
        f'<text x="{w / 2}" y="{h - 10}" text-anchor="middle">labelled posts</text>'
        f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" text-anchor="middle">dev MNER F1</text>'
    )
    for i, (strategy, curves) in enumerate(results.items()):
        color = colors.get(strategy, "#555")
        pts = [(n, [c[j]["f1"] for c in curves]) for j, n in enumerate(labels)]
        band = [(x[n], y(max(v))) for n, v in pts] + [(x[n], y(min(v))) for n, v in reversed(pts)]
        parts.append(
            f'<polygon points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in band)}" fill="{color}" fill-opacity="0.15"/>'
        )
        parts.append(
            f'<polyline points="{" ".join(f"{x[n]:.1f},{y(mean(v)):.1f}" for n, v in pts)}" fill="none" '
            f'stroke="{color}" stroke-width="2"/>'
        )
        parts.append(f'<text x="{m + 10}" y="{m - 20 + 16 * i}" fill="{color}">{strategy} ({len(curves)} seeds)</text>')
    parts.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strategies", nargs="+", default=["diverse", "risk", "random"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--step", type=int, default=100)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "al")
    ap.add_argument("--svg", type=Path, default=ROOT / "docs" / "img" / "active_learning.svg")
    ap.add_argument("--self-train", action="store_true", help="also self-train the first arm's 500-label model")
    ap.add_argument("--config", type=Path, help="a refineg config for every train and select (e.g. [tagger] threads)")
    args = ap.parse_args()
    if args.config:
        CONFIG.extend(["--config", str(args.config)])
    args.work.mkdir(parents=True, exist_ok=True)
    seed_ids = args.work / "seed.ids"
    seed_ids.write_text("".join(line + "\n" for line in (DATA / "splits/train-500.ids").read_text().split()[:100]))
    t0 = time.perf_counter()
    results: dict[str, list] = {s: [] for s in args.strategies}
    for seed in args.seeds:  # seed-major: every strategy of a seed before the next seed
        for strategy in args.strategies:
            results[strategy].append(_arm(args.work, strategy, seed, args.rounds, args.step))
            print(
                f"{strategy:<8} seed {seed}: "
                + "  ".join(f"{p['labels']}: {100 * p['f1']:.2f}" for p in results[strategy][-1]),
                flush=True,
            )
    print(f"\nlearning curve, dev MNER F1 and gate AUROC, mean [min, max] over seeds {args.seeds}")
    for strategy, curves in results.items():
        for j in range(args.rounds + 1):
            f1 = [c[j]["f1"] for c in curves]
            au = [c[j]["auroc"] for c in curves]
            print(
                f"{strategy:<8} {curves[0][j]['labels']:>4} labels  F1 {100 * mean(f1):6.2f} "
                f"[{100 * min(f1):.2f}, {100 * max(f1):.2f}]  AUROC {mean(au):.4f} [{min(au):.4f}, {max(au):.4f}]"
            )
    train_s = [json.loads(p.read_text())["seconds"] for p in args.work.glob("*.json")]
    select_s = [float(p.read_text()) for p in args.work.glob("*.select-seconds")]
    print(
        f"\n{len(train_s)} trainings, {mean(train_s):.0f} s each on average; {len(select_s)} selections, "
        f"{mean(select_s) if select_s else 0:.0f} s each; one strategy and seed "
        f"(5 trainings, 4 selections) takes about {(5 * mean(train_s) + 4 * mean(select_s or [0])) / 60:.0f} min; "
        f"this run {(time.perf_counter() - t0) / 60:.0f} min"
    )
    _svg(results, args.svg)
    print(f"picture: {args.svg}")
    if args.self_train:
        first = args.strategies[0]
        ids = args.work / f"{first}-seed{args.seeds[0]}-r{args.rounds}.ids"
        labelled = set(ids.read_text().split())
        rest = args.work / "unlabeled.txt"
        from refineg.data import load_unlabeled  # noqa: PLC0415 - only this option needs the package

        rest.write_text("".join(" ".join(s.tokens) + "\n" for s in load_unlabeled(TRAIN) if s.id not in labelled))
        st = _train(ids, args.work / f"{first}-seed{args.seeds[0]}-selftrained", args.seeds[0], rest)
        print(
            f"{first} 500 labels + the rest of the pool as --unlabeled: dev MNER F1 {100 * st['f1']:.2f}, "
            f"AUROC {st['auroc']:.4f} ({st['seconds']:.0f} s)"
        )


if __name__ == "__main__":
    main()
