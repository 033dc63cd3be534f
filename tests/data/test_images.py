import pytest
from PIL import Image

from refineg.data.images import open_image, prepare_image, sent_size
from refineg.errors import DataError
from refineg.types import Box

from ..conftest import SAMPLE_IMAGE


def test_2000x1000_is_sent_at_1000x500_and_boxes_map_back_x2_clipped():
    sent = prepare_image(Image.new("RGB", (2000, 1000), (200, 30, 30)), max_side=1000)
    assert sent.sent_size == (1000, 500) and sent.scale == (2.0, 2.0)
    assert sent.to_original(Box(100, 50, 300, 250)) == Box(200, 100, 600, 500)
    assert sent.to_original(Box(900, 400, 1100, 600)) == Box(1800, 800, 2000, 1000)  # clipped
    assert sent.data_url.startswith("data:image/jpeg;base64,")


def test_snap_to_multiples_of_28():
    assert sent_size((702, 603), 1000, 28) == (700, 616)
    w, h = sent_size((2000, 1000), 1000, 28)
    assert w % 28 == 0 and h % 28 == 0


def test_small_images_are_not_enlarged():
    assert sent_size((600, 400), 1000) == (600, 400)


def test_real_sample_image_round_trips_its_boxes():
    sent = prepare_image(SAMPLE_IMAGE, max_side=351)
    assert sent.original_size == (702, 603) and sent.sent_size == (351, 302)
    back = sent.to_original(sent.to_sent(Box(16, 10, 348, 603)))
    assert back.iou(Box(16, 10, 348, 603)) > 0.99


def test_corrupt_and_missing_images_are_data_errors(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="corrupt image"):
        open_image(bad)
    with pytest.raises(DataError, match="not found"):
        open_image(tmp_path / "missing.jpg")
