"""Label Studio: tasks with pre-annotations, the labeling configuration, and an export read back; round trip
through a real Label Studio server (its own virtual environment, started on loopback here)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from refineg.data import load_dataset
from refineg.data.labelstudio import label_config, read_export, task
from refineg.errors import DataError
from refineg.types import Box, Entity, Prediction, Sample

from ..conftest import REPO

REFINEG = str(Path(sys.executable).parent / "refineg")
LABEL_STUDIO = REPO / ".venv-label-studio" / "bin" / "label-studio"
HOME_TEMPLATE = REPO / ".venv-label-studio" / "home-template"  # a migrated database, made by make install
POST = Sample("p1", ("Kevin", "Durant", "joins", "the", "Warriors", "in", "Oakland"), image="p1.jpg")
PRED = Prediction(
    "p1",
    (
        Entity("Kevin Durant", "PER", 0, 2, (Box(60, 40, 300, 380),), score=0.93, source="tagger"),
        Entity("Warriors", "ORG", 4, 5, score=0.41, source="tagger"),
    ),
)


def _as_export(tasks: list[dict], edit=lambda result: result) -> list[dict]:
    """Tasks as Label Studio exports them once an annotator accepted (and maybe edited) the pre-annotations."""
    return [
        {
            **t,
            "id": k + 1,
            "annotations": [{"id": 10 + k, "was_cancelled": False, "result": edit(t["predictions"][0]["result"])}],
        }
        for k, t in enumerate(tasks)
    ]


def test_a_task_goes_out_and_comes_back_as_the_same_entities_and_boxes(tmp_path):
    t = task(POST, PRED, "data:image/png;base64,xx", (640, 480), "refineg (test)", risk=1.5)
    result = t["predictions"][0]["result"]
    assert {r["type"] for r in result} == {"labels", "rectanglelabels", "relation"}
    assert [r["value"]["text"] for r in result if r["type"] == "labels"] == ["Kevin Durant", "Warriors"]
    assert t["predictions"][0]["score"] == 1.5 and result[0]["score"] == 0.93
    (tmp_path / "export.json").write_text(json.dumps(_as_export([t])))
    back = load_dataset(tmp_path / "export.json")
    assert back.format == "label-studio"
    (s,) = back.samples
    assert s.id == "p1" and s.tokens == POST.tokens and s.image == "p1.jpg" and s.image_size == (640, 480)
    assert [(e.text, e.type, e.start, e.end, e.boxes) for e in s.entities] == [
        (e.text, e.type, e.start, e.end, e.boxes) for e in PRED.entities
    ]


def test_a_task_that_cannot_be_converted_is_named(tmp_path):
    t = task(POST, PRED, None, (640, 480), "refineg (test)")

    def off_words(result):  # an annotator dragged a span into the middle of a word
        return [dict(r, value=dict(r["value"], start=1)) if r.get("id") == "e0" else r for r in result]

    (tmp_path / "export.json").write_text(
        json.dumps(_as_export([t, t], off_words) + [{"id": 9, "data": t["data"], "annotations": []}])
    )
    with pytest.raises(DataError) as info:
        read_export(tmp_path / "export.json")
    message = str(info.value)
    assert "3 task(s) cannot be converted" in message and "does not start and end at words" in message
    assert "task 9 (p1): it has no annotation" in message


def test_label_config_names_the_types_boxes_and_the_relation():
    config = label_config(("PER", "ORG"))
    assert config.count('<Label value="PER"') == 2 and "<RectangleLabels" in config and "<Relation " in config
    res = subprocess.run([REFINEG, "label-config", "--types", "ccks"], capture_output=True, text=True)
    assert res.returncode == 0 and 'value="aircraft"' in res.stdout


# ---- a real Label Studio ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """Label Studio from its own virtual environment (make install makes it), on a free loopback port."""
    assert LABEL_STUDIO.is_file(), f"{LABEL_STUDIO} is missing: `make install` creates .venv-label-studio"
    home, port, token = tmp_path_factory.mktemp("label-studio"), _free_port(), "refineg-test-token"
    if HOME_TEMPLATE.is_dir():  # without it the server builds its database itself, which takes a minute
        shutil.copytree(HOME_TEMPLATE, home, dirs_exist_ok=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))},
        "LABEL_STUDIO_BASE_DATA_DIR": str(home),
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "LATEST_VERSION_CHECK": "false",  # offline: no question to the package index at start
        "HOME": str(home),
    }
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [
            str(LABEL_STUDIO),
            "start",
            "--no-browser",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--username",
            "annotator@example.org",
            "--password",
            "refineg-pass",
            "--user-token",
            token,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=home,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    while time.time() < deadline:
        assert proc.poll() is None, (home / "server.log").read_text()[-3000:]
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("Label Studio did not start in 240 s: " + (home / "server.log").read_text()[-3000:])
    try:
        yield httpx.Client(base_url=url, headers={"Authorization": f"Token {token}"}, timeout=120)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def test_a_round_trip_through_a_real_label_studio(label_studio, tiny_model, tmp_path):
    from refineg.data import save_samples
    from refineg.testing.oracle import placeholder_images

    model, _, dev = tiny_model
    save_samples(dev[:12], tmp_path / "pool.jsonl")
    placeholder_images(dev[:12], tmp_path)
    res = subprocess.run(
        [
            REFINEG,
            "select",
            "--model",
            str(model),
            "--pool",
            str(tmp_path / "pool.jsonl"),
            "--budget",
            "4",
            "--format",
            "label-studio",
            "--out",
            str(tmp_path / "tasks.json"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    config = subprocess.run([REFINEG, "label-config", "--model", str(model)], capture_output=True, text=True).stdout
    project = label_studio.post("/api/projects", json={"title": "refineg round trip", "label_config": config})
    assert project.status_code == 201, project.text
    pid = project.json()["id"]
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    imported = label_studio.post(f"/api/projects/{pid}/import", json=tasks)
    assert imported.status_code == 201, imported.text
    listed = label_studio.get("/api/tasks", params={"project": pid, "fields": "all"}).json()
    listed = listed["tasks"] if isinstance(listed, dict) else listed
    assert len(listed) == 4 and all(t["predictions"] for t in listed)
    # the annotator accepts the first task's pre-annotations, and on the second adds a box to an entity
    with_spans = [t for t in listed if any(r["type"] == "labels" for r in t["predictions"][0]["result"])]
    assert len(with_spans) >= 2, "the tiny model should find entities in the riskiest posts"
    first, second = with_spans[:2]
    result = first["predictions"][0]["result"]
    assert label_studio.post(f"/api/tasks/{first['id']}/annotations", json={"result": result}).status_code == 201
    spans = [r for r in second["predictions"][0]["result"] if r["type"] == "labels"]
    w, h = 640, 480
    box = {
        "id": "added",
        "from_name": "box",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {
            "x": 10,
            "y": 20,
            "width": 30,
            "height": 40,
            "rotation": 0,
            "rectanglelabels": spans[0]["value"]["labels"],
        },
    }
    link = {"from_id": "added", "to_id": spans[0]["id"], "type": "relation", "direction": "right", "labels": ["shows"]}
    edited = [r for r in second["predictions"][0]["result"]] + [box, link]
    assert label_studio.post(f"/api/tasks/{second['id']}/annotations", json={"result": edited}).status_code == 201
    export = label_studio.get(f"/api/projects/{pid}/export", params={"exportType": "JSON"})
    assert export.status_code == 200, export.text
    annotated = [t for t in export.json() if t.get("annotations")]
    (tmp_path / "export.json").write_text(json.dumps(annotated))
    res = subprocess.run(
        [REFINEG, "convert", str(tmp_path / "export.json"), str(tmp_path / "labelled.jsonl")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    back = {s.id: s for s in load_dataset(tmp_path / "labelled.jsonl").samples}
    sent = {t["data"]["refineg_id"]: t for t in tasks}
    one = back[first["data"]["refineg_id"]]
    want = [r for r in sent[one.id]["predictions"][0]["result"] if r["type"] == "labels"]
    assert [(e.text, e.type) for e in one.entities] == [(r["value"]["text"], r["value"]["labels"][0]) for r in want]
    two = back[second["data"]["refineg_id"]]
    boxed = [e for e in two.entities if e.boxes]
    assert len(boxed) == 1 and boxed[0].boxes == (Box(64, 96, 256, 288),)  # percent of 640x480 in pixels
