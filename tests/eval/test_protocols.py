"""Peers' scoring protocols against the figures their own published scorers give on the same files.

The expected figures were made by running UnCo's evaluator.py (commit c8afea6) and the scoring loop of RiVEG's
statistic.py on these cases, outside this repository; refineg's reimplementations must give the same, to 0.01
points, from the objects and from the files written and read back in the peers' formats."""

import pytest

from refineg.data import load_predictions, load_samples, save_samples
from refineg.errors import ConfigError, DataError
from refineg.eval.protocols import PROTOCOLS, protocol, riveg_scores, unco_scores
from refineg.types import Entity, Prediction, Sample

from .peer_cases import CASES, GOLD

EXPECTED = {  # case: {"unco": {mode: [P, R, F1] in points}, "riveg": {...}}
    "perfect": {
        "unco": {"gmner": [100.0, 100.0, 100.0], "mner": [100.0, 100.0, 100.0], "eeg": [100.0, 100.0, 100.0]},
        "riveg": {"gmner": [100.0, 100.0, 100.0], "eeg": [100.0, 100.0, 100.0]},
    },
    "boxes too often": {
        "unco": {"gmner": [66.6667, 100.0, 80.0], "mner": [100.0, 100.0, 100.0], "eeg": [66.6667, 100.0, 80.0]},
        "riveg": {"gmner": [42.8571, 42.8571, 42.8571], "eeg": [42.8571, 42.8571, 42.8571]},
    },
    "wrong boxes": {
        "unco": {"gmner": [40.0, 50.0, 44.4444], "mner": [100.0, 100.0, 100.0], "eeg": [40.0, 50.0, 44.4444]},
        "riveg": {"gmner": [57.1429, 57.1429, 57.1429], "eeg": [57.1429, 57.1429, 57.1429]},
    },
    "one of several boxes": {
        "unco": {"gmner": [100.0, 87.5, 93.3333], "mner": [100.0, 100.0, 100.0], "eeg": [100.0, 87.5, 93.3333]},
        "riveg": {"gmner": [100.0, 100.0, 100.0], "eeg": [100.0, 100.0, 100.0]},
    },
    "no boxes at all": {
        "unco": {"gmner": [57.1429, 50.0, 53.3333], "mner": [100.0, 100.0, 100.0], "eeg": [57.1429, 50.0, 53.3333]},
        "riveg": {"gmner": [57.1429, 57.1429, 57.1429], "eeg": [57.1429, 57.1429, 57.1429]},
    },
    "empty lists": {
        "unco": {"gmner": [100.0, 100.0, 100.0], "mner": [100.0, 42.8571, 60.0], "eeg": [100.0, 100.0, 100.0]},
        "riveg": {"gmner": [100.0, 42.8571, 60.0], "eeg": [100.0, 42.8571, 60.0]},
    },
    "spurious in an empty post": {
        "unco": {"gmner": [100.0, 100.0, 100.0], "mner": [87.5, 100.0, 93.3333], "eeg": [100.0, 100.0, 100.0]},
        "riveg": {"gmner": [87.5, 100.0, 93.3333], "eeg": [87.5, 100.0, 93.3333]},
    },
    "a box at IoU 0.5": {
        "unco": {"gmner": [100.0, 100.0, 100.0], "mner": [100.0, 100.0, 100.0], "eeg": [100.0, 100.0, 100.0]},
        "riveg": {"gmner": [100.0, 100.0, 100.0], "eeg": [100.0, 100.0, 100.0]},
    },
    "wrong types": {
        "unco": {"gmner": [0.0, 0.0, 0.0], "mner": [0.0, 0.0, 0.0], "eeg": [100.0, 100.0, 100.0]},
        "riveg": {"gmner": [0.0, 0.0, 0.0], "eeg": [100.0, 100.0, 100.0]},
    },
    "missed entities": {
        "unco": {"gmner": [100.0, 62.5, 76.9231], "mner": [100.0, 71.4286, 83.3333], "eeg": [100.0, 62.5, 76.9231]},
        "riveg": {"gmner": [100.0, 71.4286, 83.3333], "eeg": [100.0, 71.4286, 83.3333]},
    },
}


def _points(prf) -> list[float]:
    return [100 * prf.precision, 100 * prf.recall, 100 * prf.f1]


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_protocol_gives_its_published_scorers_figures(case):
    for name, scorer in (("unco", unco_scores), ("riveg", riveg_scores)):
        got = scorer(GOLD, CASES[case])
        for mode, want in EXPECTED[case][name].items():
            assert _points(got[mode]) == pytest.approx(want, abs=0.01), (name, mode)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_same_figures_from_files_in_the_peers_formats(case, tmp_path):
    save_samples(GOLD, tmp_path / "gold.json", "unco")
    save_samples(CASES[case], tmp_path / "pred.json", "unco-pred")
    got = unco_scores(load_samples(tmp_path / "gold.json"), load_predictions(tmp_path / "pred.json"))
    for mode, want in EXPECTED[case]["unco"].items():
        assert _points(got[mode]) == pytest.approx(want, abs=0.01), mode
    save_samples(GOLD, tmp_path / "gold.txt", "riveg")
    save_samples(CASES[case], tmp_path / "pred.txt", "riveg")
    got = riveg_scores(load_samples(tmp_path / "gold.txt"), load_predictions(tmp_path / "pred.txt"))
    for mode, want in EXPECTED[case]["riveg"].items():
        assert _points(got[mode]) == pytest.approx(want, abs=0.01), mode


def test_the_default_protocol_is_unchanged():
    hindex = PROTOCOLS["hindex"].scores
    assert _points(hindex(GOLD, CASES["boxes too often"])["gmner"]) == pytest.approx([300 / 7] * 3)
    assert _points(hindex(GOLD, CASES["a box at IoU 0.5"])["gmner"]) == pytest.approx([600 / 7] * 3)  # > 0.5 only
    assert _points(hindex(GOLD, CASES["one of several boxes"])["gmner"]) == pytest.approx([100.0] * 3)


def test_a_type_outside_their_label_dictionary():
    gold = [Sample("x", ("Tornado",), (Entity("Tornado", "aircraft", 0, 1),))]
    with pytest.raises(DataError, match="the unco protocol knows the types"):
        unco_scores(gold, [])
    weird = [Prediction("a", (Entity("Bob", "WEIRD", 0, 1, source="tagger"),))]
    assert unco_scores(GOLD[:1], weird)["mner"].n_pred == 0  # a prediction of another type is left out
    with pytest.raises(ConfigError, match="one of hindex, unco, riveg"):
        protocol("seqeval")
