from pathlib import Path

import pytest

from refineg.data import load_dataset, load_samples, read_ids, save_samples
from refineg.data.bio import spans_from_tags, tags_from_spans
from refineg.data.twitter_gmner import read_twitter
from refineg.errors import DataError

from ..conftest import SPLITS, TWITTER_V1


def _counts(samples):
    ents = [e for s in samples for e in s.entities]
    return len(samples), len(ents), sum(1 for e in ents if e.boxes)


def test_train_counts_match_the_data_readme(twitter_train):
    samples, report = read_twitter(twitter_train)
    assert _counts(samples) == (7000, 11779, 4733)
    assert report["xml_objects"] == 5652
    assert report["xml_objects_unmatched"] == 0
    assert report["entities_text_repeated"] > 0


def test_dev_counts_match_the_data_readme(twitter_dev):
    samples, report = read_twitter(twitter_dev)
    assert _counts(samples) == (1500, 2450, 991)
    assert report["xml_objects"] == 1164


def test_v1_reads_and_strips_white_space_around_xml_names():
    samples, _ = read_twitter(TWITTER_V1 / "txt" / "train.txt")
    # The data README counts 4,694 by exact string match; v1's O_41.xml has a name with a
    # trailing newline, which we strip, so that entity is groundable too.
    assert _counts(samples) == (7000, 11782, 4695)  # 11,782 as in the UnCo paper
    o41 = next(s for s in samples if s.id == "O_41")
    assert any(e.boxes for e in o41.entities)


def test_known_tweet_has_its_two_person_boxes(twitter_train):
    sample = next(s for s in load_samples(twitter_train) if s.id == "O_3498")
    assert [(e.text, e.type) for e in sample.entities] == [("Tobey Maguire", "PER"), ("Leonardo DiCaprio", "PER")]
    assert sample.entities[0].boxes[0].as_list() == [16, 10, 348, 603]
    assert sample.image == "O_3498.jpg" and sample.image_size == (702, 603)


def test_entity_with_several_boxes_gets_them_all(twitter_dev):
    samples = load_samples(twitter_dev)
    assert max(len(e.boxes) for s in samples for e in s.entities) >= 5


def test_ids_file_keeps_those_samples_in_order(twitter_train):
    ids = read_ids(SPLITS / "train-100.ids")
    samples = load_samples(twitter_train, ids)
    assert [s.id for s in samples] == ids and len(ids) == 100


def test_i_after_o_opens_an_entity_conlleval_style():
    assert spans_from_tags(["O", "I-PER", "I-PER", "O"]) == [(1, 3, "PER")]
    assert spans_from_tags(["B-PER", "I-ORG", "I-ORG"]) == [(0, 1, "PER"), (1, 3, "ORG")]
    assert spans_from_tags(["B-LOC", "B-LOC", "I-LOC"]) == [(0, 1, "LOC"), (1, 3, "LOC")]
    assert tags_from_spans(3, [(1, 3, "PER")]) == ["O", "B-PER", "I-PER"]


def test_i_after_o_in_a_file_reads_as_an_entity(tmp_path):
    f = tmp_path / "txt" / "s.txt"
    f.parent.mkdir()
    f.write_text("IMGID:1\nthe\tO\nRed\tI-ORG\nSox\tI-ORG\n\n")
    (sample,) = load_samples(f)
    assert [(e.start, e.end, e.type, e.text) for e in sample.entities] == [(1, 3, "ORG", "Red Sox")]


def _split(tmp_path: Path, body: str, xml: dict | None = None) -> Path:
    f = tmp_path / "txt" / "s.txt"
    f.parent.mkdir(exist_ok=True)
    f.write_text(body)
    for name, text in (xml or {}).items():
        (tmp_path / "xml").mkdir(exist_ok=True)
        (tmp_path / "xml" / name).write_text(text)
    return f


GOOD_XML = """<annotation>
<size><width>100</width><height>80</height><depth>3</depth></size>
<object><name>Ann</name>
<bndbox><xmin>{x0}</xmin><ymin>1</ymin><xmax>{x1}</xmax><ymax>20</ymax></bndbox>
</object>
</annotation>
"""


@pytest.mark.parametrize(
    "body, xml, line, words",
    [
        ("IMGID:1\nAnn\tB-PER\nsings\n\n", None, 3, "without a tag"),
        ("IMGID:1\nAnn\tB-PERSON\n\n", None, 2, "unknown tag"),
        ("IMGID:1\nAnn\tX-PER\n\n", None, 2, "unknown tag"),
        ("IMGID:1\nAnn\tB-PER\n\n", {"1.xml": "<annotation><size>\n<oops></annotation>"}, 2, "unparsable XML"),
        ("IMGID:1\nAnn\tB-PER\n\n", {"1.xml": GOOD_XML.format(x0=50, x1=50)}, 4, "degenerate box"),
        ("IMGID:1\nAnn\tB-PER\n\n", {"1.xml": GOOD_XML.format(x0=60, x1=10)}, 4, "degenerate box"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, body, xml, line, words):
    f = _split(tmp_path, body, xml)
    with pytest.raises(DataError) as info:
        load_samples(f)
    assert info.value.line == line
    assert words in str(info.value)
    assert (".xml" if xml else "s.txt") in str(info.value)


def test_jsonl_to_twitter_to_jsonl_is_lossless(twitter_dev, tmp_path):
    original = load_samples(twitter_dev)
    save_samples(original, tmp_path / "a.jsonl")
    from_jsonl = load_samples(tmp_path / "a.jsonl")
    save_samples(from_jsonl, tmp_path / "split" / "txt" / "dev.txt")
    back = load_dataset(tmp_path / "split" / "txt" / "dev.txt")
    assert list(back.samples) == from_jsonl == original
    assert back.report["xml_objects_unmatched"] == 0
