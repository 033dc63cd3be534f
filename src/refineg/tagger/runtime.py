"""The tagger's emissions through ONNX Runtime: the network (encoder, features, BiLSTM, emission layer) is
exported once to ONNX beside the PyTorch weights and run without importing PyTorch; the CRF stays exact in
NumPy (lattice.py)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .align import EncodedBatch
from .lattice import CRFParams

CRF = "crf.json"
NOTE = "onnx.json"  # per graph file: the PyTorch weights it was exported from
INPUTS = ("input_ids", "attention_mask", "sub_shape_ids", "first_index", "shape_ids", "prior_ids", "word_mask")
PIECE_INPUTS = ("input_ids", "attention_mask", "sub_shape_ids")  # one value per sub-token; the others per word
OPSET = 17
# 7-bit weights: CPUs without VNNI saturate full-range int8 products; a graph may travel to such a machine
QUANTIZATION = "int8 per channel, 7-bit range"


def onnxruntime_installed() -> bool:
    """True when onnxruntime can be imported."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def graph_file(int8: bool) -> str:
    """The file name of the graph of one precision (both may sit in a model folder)."""
    return "tagger.int8.onnx" if int8 else "tagger.float32.onnx"


def _note(folder: Path) -> dict:
    try:
        note = json.loads((folder / NOTE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return note if isinstance(note, dict) else {}


def _entry(int8: bool, weights_sha256: str) -> dict:
    """How a graph was made: from which weights, at which opset, quantized how (a change means export again)."""
    return {"weights_sha256": weights_sha256, "opset": OPSET, "weights": QUANTIZATION if int8 else "float32"}


def graph_current(folder: Path, int8: bool, weights_sha256: str) -> bool:
    """True when the folder holds a graph of the asked precision, made as this version makes it from these weights."""
    return (
        (folder / graph_file(int8)).is_file()
        and (folder / CRF).is_file()
        and _note(folder).get(graph_file(int8)) == _entry(int8, weights_sha256)
    )


def write_graph_note(folder: Path, int8: bool, weights_sha256: str) -> None:
    """Record how the folder's graph of this precision was made (graphs of other weights are forgotten)."""
    note = {k: v for k, v in _note(folder).items() if isinstance(v, dict) and v.get("weights_sha256") == weights_sha256}
    note[graph_file(int8)] = _entry(int8, weights_sha256)
    (folder / NOTE).write_text(json.dumps(note, indent=1))


def _graph_module(model):
    """A module computing the model's emissions from plain tensors, with a BiLSTM that ONNX can express.

    pytorch-style packed sequences do not export; the backward direction instead runs forward over each
    sequence reversed within its own length, which computes the same thing on the real words.
    """
    import torch
    from torch import nn

    class Graph(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.fwd = self.bwd = None
            if model.lstm is not None:
                self.fwd, self.bwd = (
                    nn.LSTM(model.lstm.input_size, model.lstm.hidden_size, batch_first=True) for _ in range(2)
                )
                for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
                    getattr(self.fwd, name).data = getattr(model.lstm, name).data.clone()
                    getattr(self.bwd, name).data = getattr(model.lstm, name + "_reverse").data.clone()

        def forward(self, input_ids, attention_mask, sub_shape_ids, first_index, shape_ids, prior_ids, word_mask):
            x = self.model.word_features(input_ids, attention_mask, sub_shape_ids, first_index, shape_ids, prior_ids)
            if self.fwd is not None:
                lengths = word_mask.long().sum(1, keepdim=True)
                pos = torch.arange(x.size(1)).unsqueeze(0)
                rev = torch.where(pos < lengths, lengths - 1 - pos, pos).unsqueeze(-1)
                forward, _ = self.fwd(x)
                backward, _ = self.bwd(torch.gather(x, 1, rev.expand(-1, -1, x.size(-1))))
                backward = torch.gather(backward, 1, rev.expand(-1, -1, backward.size(-1)))
                x = torch.cat([forward, backward], -1) * word_mask.unsqueeze(-1).to(x.dtype)
            return self.model.emit(x)

    return Graph().float().eval()


def export_graph(model, example: EncodedBatch, folder: Path, precisions: Sequence[bool]) -> None:
    """Write the model's ONNX graph in each asked precision (True: int8 weights) and its CRF scores into folder."""
    import torch

    graph = _graph_module(model)
    tensors = example.tensors()
    args = tuple(getattr(tensors, k) for k in INPUTS)
    axes = {k: {0: "batch", 1: "pieces" if k in PIECE_INPUTS else "words"} for k in INPUTS}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), _quiet():
        plain = Path(tmp) / "plain.onnx"
        torch.onnx.export(
            graph,
            args,
            str(plain),
            input_names=list(INPUTS),
            output_names=["emissions"],
            dynamic_axes=axes,
            dynamo=False,
            opset_version=OPSET,
        )
        for int8 in precisions:
            if int8:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                quantize_dynamic(
                    plain, folder / graph_file(True), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True
                )
            else:
                shutil.copyfile(plain, folder / graph_file(False))
    CRFParams.of(model.crf).save(folder / CRF)


@contextmanager
def _quiet():
    """Silence the exporter's tracing warnings and the quantizer's advice, logged on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


class OnnxEmissions:
    """Emissions (B, W, K) of an exported graph, run by ONNX Runtime one post per call, ``threads`` posts at once.

    One post per call makes a post's scores independent of its batch, bit for bit: int8 activations are
    scaled per call. Single-threaded calls side by side also run faster on CPU than batched calls
    (2 cores, int8: 750 posts/s against 640 batched, 450 one at a time on two threads).
    """

    def __init__(self, folder: Path, int8: bool, n_labels: int, threads: int):
        import onnxruntime as ort

        self.folder, self.int8 = folder, int8
        path = folder / graph_file(int8)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for a damaged graph
            raise ConfigError(f"{path}: not a loadable ONNX graph ({str(exc).splitlines()[0][:200]})") from None
        self.inputs = [i.name for i in self.session.get_inputs()]  # the exporter drops inputs a model does not use
        self.crf = CRFParams.load(folder / CRF, n_labels)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="refineg-onnx")

    def __call__(self, enc: EncodedBatch) -> np.ndarray:
        parts = list(self.pool.map(self._one, (_row(enc, b) for b in range(len(enc.input_ids)))))
        out = np.zeros((len(parts), enc.word_mask.shape[1], parts[0].shape[-1]))
        for b, p in enumerate(parts):
            out[b, : p.shape[0]] = p
        return out

    def _one(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, {k: arrays[k] for k in self.inputs})[0][0]


def _row(enc: EncodedBatch, b: int) -> dict[str, np.ndarray]:
    """The arrays of post b of a batch alone, without the batch's padding."""
    pieces, words = int(enc.attention_mask[b].sum()), max(1, int(enc.word_mask[b].sum()))
    return {k: v[b : b + 1, : pieces if k in PIECE_INPUTS else words] for k, v in enc.arrays().items()}
