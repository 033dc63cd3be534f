"""A killed `refineg train --unlabeled` resumed: the time it costs and whether it ends with the same model.

Runs the contract command (train-500 labelled, the other train tweets as unlabeled tokens, dev) as a whole
process, kills it with SIGKILL once its labelled-only stage is saved, runs it again, and compares the result
with an uninterrupted run of the same command (trained here, or given with --reference).

    .venv/bin/python benchmarks/train_resume.py [--reference runs/bench/train-500+unlabeled] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from refineg.data import load_samples, read_ids, save_samples  # noqa: E402
from refineg.tagger.tagger import Tagger  # noqa: E402
from refineg.trainstate import STATE, Checkpoints  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared/data/twitter-gmner"
REFINEG = str(Path(sys.executable).parent / "refineg")


def command(unlabeled: Path, out: Path) -> list[str]:
    """The contract command: 500 labelled tweets, the rest as unlabeled posts."""
    txt = DATA / "Twitter10000_v2.0/txt"
    return [
        REFINEG,
        "train",
        "--train",
        str(txt / "train.txt"),
        "--ids",
        str(DATA / "splits/train-500.ids"),
        "--dev",
        str(txt / "dev.txt"),
        "--unlabeled",
        str(unlabeled),
        "--out",
        str(out),
        "--quiet",
    ]


def killed_after_first_stage(cmd: list[str], out: Path) -> float:
    """Seconds the run lived: killed once its first stage is saved."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (Checkpoints(out, "").stage(0) / STATE).is_file():
        if proc.poll() is not None:
            raise SystemExit("the run ended before its first stage was saved")
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return time.perf_counter() - t0


def timed(cmd: list[str]) -> float:
    """Seconds a run takes to the end."""
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(res.stderr[-2000:])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, help="a model folder an uninterrupted run of the command made")
    ap.add_argument("--work", type=Path, help="folder for the posts file and the models (default: a temporary one)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="refineg-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    ids = set(read_ids(DATA / "splits/train-500.ids"))
    posts = [s.with_(entities=()) for s in load_samples(DATA / "Twitter10000_v2.0/txt/train.txt") if s.id not in ids]
    save_samples(posts, work / "unlabeled.jsonl")
    reference = args.reference
    if reference is None:
        reference = work / "whole"
        seconds = timed(command(work / "unlabeled.jsonl", reference))
        print(f"uninterrupted: {seconds:.0f} s")
    out = work / "killed"
    lived = killed_after_first_stage(command(work / "unlabeled.jsonl", out), out)
    again = timed(command(work / "unlabeled.jsonl", out))
    ref_meta, meta = (json.loads((d / "meta.json").read_text()) for d in (reference, out))
    print(
        f"killed after {lived:.0f} s (its first stage saved); the rerun took {again:.0f} s (resumed after "
        f"{meta['resumed_after']}); "
        f"{lived + again:.0f} s in all against {ref_meta['seconds_total']:.0f} s uninterrupted"
    )
    dev = load_samples(DATA / "Twitter10000_v2.0/txt/dev.txt")
    same = Tagger.load(out).predict(dev) == Tagger.load(reference).predict(dev)
    f1 = (ref_meta["dev"]["mner"]["f1"], meta["dev"]["mner"]["f1"])
    print(
        f"dev MNER F1 uninterrupted {f1[0]:.4f}, resumed {f1[1]:.4f}; gate AUROC {ref_meta['gate']['auroc']:.4f} / "
        f"{meta['gate']['auroc']:.4f}; every dev prediction (entities, scores) the same: {same}"
    )


if __name__ == "__main__":
    main()
