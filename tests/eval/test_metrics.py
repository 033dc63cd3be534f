"""Scorer cases computed by hand."""

import pytest

from refineg.data import load_samples
from refineg.eval.metrics import region_correct, score
from refineg.types import Box, Entity, Prediction, Sample

G = Box(0, 0, 10, 10)  # area 100


def _gold(*ents, sid="s"):
    return Sample(sid, tuple(f"w{i}" for i in range(10)), tuple(ents))


def _f(scores, mode="gmner"):
    prf = scores.overall[mode]
    return prf.tp, prf.n_pred, prf.n_gold


def test_iou_exactly_half_is_not_enough_just_above_is():
    # Box(0,0,10,5) vs G: inter 50, union 100 -> IoU exactly 0.5
    assert Box(0, 0, 10, 5).iou(G) == 0.5
    assert not region_correct([Box(0, 0, 10, 5)], [G])
    assert region_correct([Box(0, 0, 10, 5.01)], [G])  # IoU 0.501
    assert not region_correct([Box(0, 0, 10, 4.99)], [G])  # IoU 0.499


def test_region_rules_for_empty_sides():
    assert region_correct([], [])
    assert not region_correct([G], [])
    assert not region_correct([], [G])


def test_every_predicted_box_must_hit_a_gold_box():
    g2 = Box(50, 50, 60, 60)
    assert region_correct([G, g2], [G, g2])
    assert region_correct([g2], [G, g2])  # one of several gold boxes is enough
    assert not region_correct([G, Box(80, 80, 90, 90)], [G, g2])  # one stray box spoils it


def test_span_type_and_region_all_count():
    gold = [_gold(Entity("w0 w1", "PER", 0, 2, (G,)), Entity("w3", "LOC", 3, 4))]
    pred = [
        Prediction(
            "s",
            (
                Entity("w0 w1", "PER", 0, 2, (Box(0, 0, 10, 9),)),  # right: IoU 0.9
                Entity("w3", "ORG", 3, 4),  # wrong type
            ),
        )
    ]
    s = score(gold, pred)
    assert _f(s, "gmner") == (1, 2, 2)
    assert _f(s, "mner") == (1, 2, 2)
    assert _f(s, "eeg") == (2, 2, 2)
    assert s.per_type["LOC"]["mner"].recall == 0.0 and s.per_type["ORG"]["mner"].n_pred == 1


def test_wrong_region_fails_gmner_but_not_mner():
    gold = [_gold(Entity("w0", "PER", 0, 1, (G,)))]
    s = score(gold, [Prediction("s", (Entity("w0", "PER", 0, 1, ()),))])
    assert _f(s, "gmner") == (0, 1, 1) and _f(s, "mner") == (1, 1, 1) and _f(s, "eeg") == (0, 1, 1)


def test_empty_gold_sample_with_predictions_counts_false_positives():
    gold = [_gold(Entity("w0", "PER", 0, 1)), _gold(sid="empty")]
    pred = [Prediction("s", (Entity("w0", "PER", 0, 1),)), Prediction("empty", (Entity("w1", "ORG", 1, 2),))]
    s = score(gold, pred)
    assert _f(s) == (1, 2, 1)
    assert s.overall["gmner"].precision == 0.5 and s.overall["gmner"].recall == 1.0
    assert s.overall["gmner"].f1 == pytest.approx(2 / 3)


def test_missing_prediction_counts_false_negatives_and_unknown_ids_false_positives():
    gold = [_gold(Entity("w0", "PER", 0, 1)), _gold(Entity("w1", "PER", 1, 2), sid="t")]
    pred = [Prediction("s", (Entity("w0", "PER", 0, 1),)), Prediction("zzz", (Entity("w0", "PER", 0, 1),))]
    s = score(gold, pred)
    assert _f(s) == (1, 2, 2) and s.unknown_pred_ids == 1 and s.missing_pred_ids == 1


def test_duplicate_predictions_are_false_positives():
    gold = [_gold(Entity("w0", "PER", 0, 1))]
    e = Entity("w0", "PER", 0, 1)
    s = score(gold, [Prediction("s", (e, e))])
    assert _f(s) == (1, 2, 1) and _f(s, "eeg") == (1, 2, 1)


def test_text_matched_predictions_one_to_one():
    # "w0" occurs twice in gold; three text-only predictions of it match two at most.
    gold = [_gold(Entity("w0", "PER", 0, 1, (G,)), Entity("w0", "PER", 5, 6, (G,)), Entity("w2  w3", "ORG", 2, 4))]
    p = Entity(" w0 ", "PER", boxes=(G,))
    pred = [Prediction("s", (p, p, p, Entity("w2 w3", "ORG")))]
    s = score(gold, pred)
    assert _f(s) == (3, 4, 3) and _f(s, "mner") == (3, 4, 3)


def test_matching_is_maximal_not_greedy():
    # first prediction could take either gold; the second fits only the first gold
    other = Box(100, 100, 110, 110)
    gold = [_gold(Entity("w0", "PER", 0, 1, (G, other)), Entity("w0", "PER", 5, 6, (other,)))]
    pred = [Prediction("s", (Entity("w0", "PER", boxes=(other,)), Entity("w0", "PER", boxes=(G,))))]
    assert _f(score(gold, pred)) == (2, 2, 2)


def test_gold_against_itself_is_perfect(twitter_dev):
    gold = load_samples(twitter_dev)
    s = score(gold, [Prediction(g.id, g.entities) for g in gold])
    for mode in ("gmner", "mner", "eeg"):
        assert (s.overall[mode].precision, s.overall[mode].recall, s.overall[mode].f1) == (1.0, 1.0, 1.0)
    assert all(by["gmner"].f1 == 1.0 for by in s.per_type.values())


def test_gold_and_predictions_given_the_wrong_way_round_are_noticed():
    from refineg.eval.metrics import swapped_hint

    gold = [Sample("a", ("Bob", "runs"), (Entity("Bob", "PER", 0, 1),))]
    pred = [Prediction("a", (Entity("Bob", "PER", 0, 1, score=0.9, source="tagger"),))]
    as_gold = [Sample(p.id, ("Bob", "runs"), p.entities) for p in pred]
    as_pred = [Prediction(s.id, s.entities) for s in gold]
    assert swapped_hint(gold, pred) is None
    assert "wrong way round" in swapped_hint(as_gold, as_pred)
