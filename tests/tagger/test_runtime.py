"""The ONNX Runtime path against the PyTorch one, and how model folders get and keep their graph."""

import json
import shutil

import numpy as np
import pytest

from refineg.errors import ConfigError
from refineg.tagger import runtime as rt
from refineg.tagger import tagger as tagger_module
from refineg.tagger.lattice import Lattice
from refineg.tagger.tagger import Tagger


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    out, _, dev = tiny_model
    copy = tmp_path / "model"
    shutil.copytree(out, copy)
    return copy, dev


def _marginals(tagger: Tagger, dev) -> np.ndarray:
    enc = tagger.encode([list(s.tokens) for s in dev])
    em, crf = tagger.emissions(enc)
    return Lattice.of(crf, em, enc.word_mask).marginals[enc.word_mask]


def test_training_keeps_int8_only_within_the_allowed_dev_loss_and_ships_that_graph(tiny_model):
    out, result, dev = tiny_model
    check = result.meta["runtime"]["check"]
    int8 = check["dev_f1_float32"] - check["dev_f1_int8"] <= check["int8_max_loss"]
    assert check["int8"] is int8 and result.tagger.config.int8 is int8
    assert json.loads((out / "tagger_config.json").read_text())["int8"] is int8
    note = json.loads((out / rt.NOTE).read_text())
    assert note == {rt.graph_file(int8): rt._entry(int8, tagger_module.weights_digest(out))}
    assert not (out / rt.graph_file(not int8)).exists()  # only the graph predict runs is shipped
    loaded = Tagger.load(out)
    assert loaded.runtime == "onnx" and loaded.config.int8 is int8
    assert loaded.predict(dev) == result.tagger.predict(dev)  # the gate was calibrated on what predict runs
    assert loaded._model is None  # the PyTorch weights were never read


def test_a_model_whose_int8_costs_too_much_ships_float32(tiny_model, twitter_dev):
    from refineg.config import TaggerConfig
    from refineg.tagger.train import train_tagger

    _, result, dev = tiny_model
    cfg = TaggerConfig(epochs=1, min_epoch_steps=1, lstm_hidden=32, batch_size=8, int8_max_loss=0.0)
    tagger, _ = train_tagger(dev[:16], dev, cfg, progress=False, init=result.tagger)
    check = tagger.precision_check
    assert check["dev_f1_int8"] is not None and tagger.config.int8 is (check["dev_f1_int8"] >= check["dev_f1_float32"])
    forced, _ = train_tagger(dev[:16], dev, cfg.model_copy(update={"int8": True}), progress=False, init=result.tagger)
    assert forced.config.int8 is True and forced.precision_check is None and forced.onnx.int8


def test_float32_graph_matches_pytorch_marginals_and_entities(model_copy):
    folder, dev = model_copy
    in_torch = Tagger.load(folder, runtime="torch")
    in_onnx = Tagger.load(folder, runtime="onnx", int8=False)
    assert in_onnx.runtime == "onnx" and not in_onnx.config.int8
    assert np.abs(_marginals(in_onnx, dev) - _marginals(in_torch, dev)).max() <= 1e-4
    onnx_preds, torch_preds = in_onnx.predict(dev), in_torch.predict(dev)
    assert [[(e.start, e.end, e.type) for e in p.entities] for p in onnx_preds] == [
        [(e.start, e.end, e.type) for e in p.entities] for p in torch_preds
    ]
    scores = np.array(
        [(a.score, b.score) for p, q in zip(onnx_preds, torch_preds) for a, b in zip(p.entities, q.entities)]
    )
    assert len(scores) and np.abs(scores[:, 0] - scores[:, 1]).max() <= 1e-4


@pytest.mark.parametrize("int8", [True, False])
def test_a_posts_scores_do_not_depend_on_its_batch(model_copy, int8):
    folder, dev = model_copy
    tagger = Tagger.load(folder, int8=int8)
    together = tagger.predict(dev)
    alone = [tagger.predict([s])[0] for s in dev[:12]]
    assert alone == together[:12] and any(p.entities for p in alone)


def test_a_stale_graph_is_exported_again_and_both_precisions_can_sit_side_by_side(model_copy):
    folder, dev = model_copy
    first = Tagger.load(folder).predict(dev)
    note = json.loads((folder / rt.NOTE).read_text())
    stale = {k: {**v, "weights_sha256": "0" * 64} for k, v in note.items()}  # as if the weights changed since
    (folder / rt.NOTE).write_text(json.dumps(stale))
    assert Tagger.load(folder).predict(dev) == first
    assert json.loads((folder / rt.NOTE).read_text()) == note
    Tagger.load(folder, int8=False)
    both = json.loads((folder / rt.NOTE).read_text())
    assert set(both) == {rt.graph_file(True), rt.graph_file(False)}
    assert (folder / rt.graph_file(True)).stat().st_size < 0.5 * (folder / rt.graph_file(False)).stat().st_size
    assert not list(folder.glob(".graph-*"))  # no staging folder left behind


def test_an_older_folder_without_graph_gets_one_or_a_temporary_one_when_read_only(model_copy, monkeypatch):
    folder, dev = model_copy
    for name in (rt.graph_file(True), rt.CRF, rt.NOTE):
        (folder / name).unlink()
    real = tagger_module.tempfile.mkdtemp

    def no_writing_there(suffix=None, prefix=None, dir=None):
        if dir == folder:
            raise PermissionError(13, "Permission denied", str(folder))
        return real(suffix, prefix, dir)

    monkeypatch.setattr(tagger_module.tempfile, "mkdtemp", no_writing_there)
    read_only = Tagger.load(folder)
    assert read_only.runtime == "onnx" and not (folder / rt.graph_file(True)).exists()
    monkeypatch.undo()
    writable = Tagger.load(folder)
    assert (folder / rt.graph_file(True)).is_file() and writable.onnx.folder == folder
    assert writable.predict(dev) == read_only.predict(dev)


def test_a_damaged_graph_names_the_file(model_copy):
    folder, _ = model_copy
    raw = (folder / rt.graph_file(True)).read_bytes()
    (folder / rt.graph_file(True)).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ConfigError, match="tagger.int8.onnx"):
        Tagger.load(folder)
    (folder / rt.CRF).write_text("{")
    with pytest.raises(ConfigError, match="crf.json"):
        rt.CRFParams.load(folder / rt.CRF, 3)


def test_without_onnxruntime_auto_falls_back_to_pytorch_and_onnx_is_an_error(model_copy, monkeypatch):
    folder, dev = model_copy
    monkeypatch.setattr(tagger_module, "onnxruntime_installed", lambda: False)
    assert Tagger.load(folder).runtime == "torch"
    with pytest.raises(ConfigError, match="needs onnxruntime"):
        Tagger.load(folder, runtime="onnx")
