"""The HTML report, rendered for real in headless Chromium."""

import re
import shutil
import subprocess

import pytest

from refineg.data import load_samples
from refineg.report import build_report
from refineg.report.charts import reliability_svg, risk_coverage_svg
from refineg.types import Box, Prediction

from ..conftest import REPO, SAMPLE_IMAGE

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def report(twitter_train, tmp_path_factory):
    gold = [s for s in load_samples(twitter_train) if s.id == "O_3498"] + load_samples(twitter_train)[:11]
    preds = []
    for s in gold:
        ents = tuple(
            e.with_(
                source="tagger",
                score=0.9,
                decision="keep",
                boxes=tuple(Box(b.xmin + 5, b.ymin, b.xmax, b.ymax) for b in e.boxes),
            )
            for e in s.entities[:1]
        )
        preds.append(Prediction(s.id, ents, delegated=not ents))
    out = tmp_path_factory.mktemp("report")
    return build_report(preds, gold, out, [SAMPLE_IMAGE.parent], "test report"), gold


def _chromium() -> str:
    path = shutil.which("chromium")
    assert path, "chromium is missing: `make test` installs it through .ci/ensure-chromium"
    return path


def test_page_is_self_contained(report):
    index, _ = report
    page = index.read_text()
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "data:image/jpeg;base64," in page and "<svg" in page


def test_page_renders_in_headless_chromium_with_boxes_and_no_errors(report, tmp_path):
    index, gold = report
    flags = FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]
    res = subprocess.run(
        [_chromium(), *flags, "--virtual-time-budget=5000", "--dump-dom", index.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = res.stdout
    assert 'data-ready="1"' in dom, res.stderr[-2000:]
    assert 'data-errors="0"' in dom
    assert "Uncaught" not in res.stderr
    assert len(re.findall(r'class="sample"', dom)) == len(gold)
    o3498 = dom[dom.index('data-id="O_3498"') :]
    o3498 = o3498[: o3498.index('class="sample"', 10) if 'class="sample"' in o3498[10:] else len(o3498)]
    assert o3498.count('class="box gold-box"') == 2 and o3498.count('class="box pred-box"') == 1
    artifacts = REPO / "artifacts"
    artifacts.mkdir(exist_ok=True)
    shot = artifacts / "report.png"
    shot.unlink(missing_ok=True)
    subprocess.run(
        [_chromium(), *flags, "--window-size=1200,1400", f"--screenshot={shot}", index.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_charts_draw_bins_and_the_curve():
    svg = reliability_svg([0.05, 0.95, 0.9, 0.5], [False, True, True, False])
    assert svg.count('class="bar"') == 3
    assert "polyline" in risk_coverage_svg([0.9, 0.1], [True, False], kept_share=0.5)


def test_the_page_says_when_no_box_was_predicted_and_why(twitter_train, tmp_path):
    from refineg.report import boxes_note

    gold = [s for s in load_samples(twitter_train) if s.id == "O_3498"]
    preds = [Prediction(s.id, tuple(e.with_(source="tagger", boxes=()) for e in s.entities)) for s in gold]
    note = boxes_note(preds, {"llm_configured": False})
    assert "no MLLM was configured" in note
    page = build_report(preds, gold, tmp_path, [SAMPLE_IMAGE.parent], notes=[note]).read_text()
    assert "No box was predicted" in page and '"no box predicted"' in page and '"wrong box"' not in page
    assert boxes_note([p.with_(entities=gold[0].entities) for p in preds], {}) is None
