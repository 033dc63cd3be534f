import math

import pytest

from refineg.config import GateConfig
from refineg.gate import GateCalibration, apply_gate, auroc, calibrate
from refineg.types import Entity, Prediction, Sample


def test_auroc_by_hand():
    assert auroc([0.9, 0.8, 0.3, 0.1], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.9, 0.4, 0.6, 0.1], [True, True, False, False]) == 0.75
    assert math.isnan(auroc([0.3], [True]))


def _data():
    gold = [Sample(f"s{i}", ("a", "b"), (Entity("a", "PER", 0, 1),)) for i in range(8)]
    preds = []
    for i in range(8):
        right = i < 6
        preds.append(
            Prediction(
                f"s{i}",
                (Entity("a", "PER" if right else "ORG", 0, 1, score=0.5 + i / 20 if right else 0.1 * (i - 5)),),
                missing_score=i / 10,
            )
        )
    return gold, preds


def test_budget_calibration_delegates_the_least_confident_quarter():
    gold, preds = _data()
    cal = calibrate(preds, gold, GateConfig(budget=0.25))
    assert cal.delegation_rate == 0.25 and cal.errors_caught == 1.0 and cal.auroc == 1.0
    gated = apply_gate(preds, cal, delegate=True)
    assert [e.decision for p in gated for e in p.entities].count("delegate") == 2


def test_gate_keeps_every_entity_when_no_llm_is_configured(tiny_model):
    out, result, dev = tiny_model
    preds = result.tagger.predict(dev)
    gated = apply_gate(preds, GateCalibration.load(out), delegate=False)
    assert all(e.decision == "keep" for p in gated for e in p.entities)
    assert not any(p.delegated for p in gated)
    assert [e.text for p in gated for e in p.entities] == [e.text for p in preds for e in p.entities]


def test_f1_mode_picks_a_threshold_that_drops_low_scored_wrong_entities():
    gold, preds = _data()
    cal = calibrate(preds, gold, GateConfig(mode="f1"))
    assert cal.threshold == pytest.approx(0.35)  # halfway between the last wrong (0.2) and the first right (0.5) score
    assert apply_gate(preds, cal, True)[7].entities[0].decision == "delegate"


@pytest.mark.parametrize("mode", ["budget", "f1"])
def test_a_dev_score_moved_by_rounding_noise_keeps_its_decision(mode):
    gold, preds = _data()
    cal = calibrate(preds, gold, GateConfig(mode=mode, budget=0.25, missing_rate=0.25))
    before = apply_gate(preds, cal, True)
    for eps in (1e-12, -1e-12):  # what another batch's float rounding does to a score
        moved = [
            p.with_(
                entities=tuple(e.with_(score=e.score + eps) for e in p.entities), missing_score=p.missing_score + eps
            )
            for p in preds
        ]
        after = apply_gate(moved, cal, True)
        assert [[e.decision for e in p.entities] for p in after] == [[e.decision for e in p.entities] for p in before]
        assert [p.maybe_missing for p in after] == [p.maybe_missing for p in before]


def test_logistic_score_model_learns_a_separating_signal():
    import numpy as np

    from refineg.gate import cross_validated_scores, fit_logistic, predict_logistic

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = (x[:, 0] - 0.5 * x[:, 1] + 0.3 * rng.normal(size=400)) > 0
    w, b = fit_logistic(x, y.astype(float))
    assert w[0] > 0 > w[1] and abs(w[2]) < 0.3
    assert auroc(predict_logistic(x, w, b), y) > 0.95
    assert auroc(cross_validated_scores(x, y), y) > 0.9


def test_combined_scores_are_written_by_the_gated_tagger(tiny_model):
    from refineg.config import RunConfig
    from refineg.gate import GatedTagger

    out, result, dev = tiny_model
    gate = GateCalibration.load(out)
    assert gate.score_model is not None and len(gate.score_model["weights"]) == len(gate.score_model["features"])
    preds = GatedTagger.load(out, RunConfig(), delegate=False)(dev, mc_samples=2)
    ents = [e for p in preds for e in p.entities]
    raw = [e for p in result.tagger.predict(dev) for e in p.entities]
    assert [(e.start, e.end, e.type) for e in ents] == [(e.start, e.end, e.type) for e in raw]
    assert all(0.0 <= e.score <= 1.0 for e in ents) and [e.score for e in ents] != [e.score for e in raw]
    assert all(len(p.meta["mc_dropout_scores"]) == len(p.entities) for p in preds)
    assert all(e.decision == "keep" for e in ents)
    decided = GatedTagger.load(out, RunConfig(), delegate=True)(dev)
    assert [e.score for p in decided for e in p.entities] == [e.score for e in ents]
    assert {e.decision for p in decided for e in p.entities} == {"keep", "delegate"}


def test_score_model_falls_back_when_dev_has_no_errors_to_learn_from():
    # a bug found by `make demo` on the example set: every dev entity was right, Newton's system was singular
    import numpy as np

    from refineg.gate import ScoreModel, fit_logistic
    from refineg.tagger.tagger import EntityScores, Tagged

    gold = [Sample(f"s{i}", ("a", "b"), (Entity("a", "PER", 0, 1),)) for i in range(20)]
    tagged = [
        Tagged(
            Prediction(g.id, (Entity("a", "PER", 0, 1, score=0.9, source="tagger"),)),
            (EntityScores(0.9, 0.95, 0.9, None, True),),
        )
        for g in gold
    ]
    assert ScoreModel.fit(tagged, gold) is None
    w, b = fit_logistic(np.ones((20, 3)), np.ones(20))
    assert np.all(np.isfinite(w)) and np.isfinite(b)
    w, b = fit_logistic(np.zeros((0, 3)), np.zeros(0))
    assert np.all(w == 0)


def test_a_score_model_fitted_on_other_features_is_refused():
    from refineg.errors import ConfigError
    from refineg.gate import FEATURE_NAMES, ScoreModel

    old = {"features": ["logit_span_marginal", "type=PER"], "types": ["PER"], "weights": [1.0, 0.0], "bias": 0.0}
    with pytest.raises(ConfigError, match="other features"):
        ScoreModel.from_dict(old)
    current = ScoreModel(("PER",), tuple([0.0] * (len(FEATURE_NAMES) + 1)), 0.0)
    assert ScoreModel.from_dict(current.as_dict()) == current


def test_entity_surface_features():
    from refineg.gate import FEATURE_NAMES, entity_features
    from refineg.tagger.tagger import EntityScores, Tagged

    tokens = ("RT", "@", "bob", ":", "NASA", "is", "great")
    ents = (Entity("bob", "PER", 2, 3), Entity("NASA", "ORG", 4, 5))
    scores = (EntityScores(0.5, 0.5, 0.5, None, False, ("PER",)), EntityScores(0.5, 0.5, 0.5, None, True, ("PER",)))
    x = entity_features([Tagged(Prediction("s", ents, tokens=tokens), scores)], ["ORG", "PER"])
    col = {n: i for i, n in enumerate(FEATURE_NAMES)}
    assert x[0, col["after_hash_or_at"]] == 1 and x[1, col["after_hash_or_at"]] == 0
    assert x[0, col["seen_same_type"]] == 1 and x[1, col["seen_other_type"]] == 1
    assert x[1, col["prior_agrees"]] == 1


def test_a_gate_file_from_an_older_score_model_names_the_file(tmp_path):
    import json

    from refineg.errors import ConfigError

    fields = dict(
        mode="budget",
        budget=0.25,
        threshold=0.5,
        missing_threshold=0.9,
        auroc=0.8,
        delegation_rate=0.25,
        errors_caught=0.5,
        misses_in_flagged=0.3,
        sample_flag_rate=0.1,
        n_entities=10,
        n_errors=3,
    )
    old = {"features": ["logit_span_marginal", "type=PER"], "types": ["PER"], "weights": [1.0, 0.0], "bias": 0.0}
    (tmp_path / "gate.json").write_text(json.dumps({**fields, "score_model": old}))
    with pytest.raises(ConfigError, match=r"gate\.json: .*other features"):
        GateCalibration.load(tmp_path)


def _tagged_with_corpus(n: int, corpus: bool = True):
    """Entities whose corpus share alone says whether they are right (the tagger's own scores say nothing)."""
    from refineg.tagger.tagger import EntityScores, Tagged

    gold, tagged = [], []
    for i in range(n):
        right = i % 3 != 0
        gold.append(Sample(f"s{i}", ("a", "b"), (Entity("a", "PER" if right else "ORG", 0, 1),)))
        signal = (math.log1p(5), 1.0 if right else 0.2, 0.9 if right else 0.3) if corpus else None
        pred = Prediction(f"s{i}", (Entity("a", "PER", 0, 1, score=0.5, source="tagger"),), tokens=("a", "b"))
        tagged.append(Tagged(pred, (EntityScores(0.5, 0.5, 0.5, None, True, ("PER",), signal),)))
    return gold, tagged


def test_the_score_model_learns_from_corpus_counts_when_the_tagger_has_them():
    from refineg.errors import ConfigError
    from refineg.gate import CORPUS_FEATURES, ScoreModel, entity_correctness

    gold, tagged = _tagged_with_corpus(60)
    model = ScoreModel.fit(tagged, gold)
    assert model.corpus and set(CORPUS_FEATURES) <= set(model.as_dict()["features"])
    assert ScoreModel.from_dict(model.as_dict()) == model
    assert auroc(*entity_correctness(model.rescore(tagged), gold)) == 1.0
    _, plain = _tagged_with_corpus(60, corpus=False)
    assert ScoreModel.fit(plain, gold).corpus is False  # a tagger without counts: the features it always had
    with pytest.raises(ConfigError, match="sample s0: .*corpus counts"):
        model.rescore(plain)


def test_a_gate_whose_score_model_uses_corpus_counts_needs_the_counts_file(tmp_path):
    from dataclasses import replace

    from refineg.errors import ConfigError
    from refineg.gate import ScoreModel

    gold, tagged = _tagged_with_corpus(60)
    gold_, preds = _data()
    gate = replace(calibrate(preds, gold_, GateConfig()), score_model=ScoreModel.fit(tagged, gold).as_dict())
    gate.save(tmp_path)
    with pytest.raises(ConfigError, match=r"corpus\.json: missing"):
        GateCalibration.load(tmp_path)
    (tmp_path / "corpus.json").write_text('{"posts": 0, "tagged": {}, "mentions": {}}')
    assert GateCalibration.load(tmp_path).score_model["corpus"] is True
