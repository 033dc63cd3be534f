"""Images: open and verify, resize for sending, and map boxes from the sent image back."""

from __future__ import annotations

import base64
import hashlib
import io
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError
from ..types import Box


@dataclass(frozen=True)
class SentImage:
    """An image as sent to the MLLM, with what is needed to map its boxes back."""

    data_url: str
    sha256: str
    original_size: tuple[int, int]
    sent_size: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """Original pixels per sent pixel, along x and y."""
        return self.original_size[0] / self.sent_size[0], self.original_size[1] / self.sent_size[1]

    def to_original(self, box: Box) -> Box:
        """A box in sent-image pixels mapped to original pixels and clipped to the image."""
        sx, sy = self.scale
        return box.scaled(sx, sy).clipped(*self.original_size)

    def to_sent(self, box: Box) -> Box:
        """A box in original pixels mapped to sent-image pixels."""
        sx, sy = self.scale
        return box.scaled(1 / sx, 1 / sy).clipped(*self.sent_size)


def find_image(name: str | None, folders: Sequence[Path]) -> Path | None:
    """The first folder's file of that name, or None (also when there is no name, or a name that would reach
    outside the folders: absolute, or with a ``..`` part)."""
    if not name or not safe_name(name):
        return None
    return next((f / name for f in folders if (f / name).is_file()), None)


def safe_name(name: str) -> bool:
    """True for an image name that stays inside the folder it is looked up in (no absolute path, no ``..``,
    no drive or home folder)."""
    path = PurePosixPath(name.replace("\\", "/"))
    return not path.is_absolute() and ".." not in path.parts and not re.match(r"^[A-Za-z]:|^~", name)


def image_folders(given: Sequence[str | Path], data: str | Path | None) -> tuple[Path, ...]:
    """Where a run looks for its posts' images: the folders given, else the data file's own folder."""
    if given:
        return tuple(Path(p) for p in given)
    return (Path(data).parent,) if data is not None else ()


MAX_PIXELS = 64_000_000  # larger images are refused before decoding (a 20000x20000 file would need 1.2 GB)


def open_image(path: str | Path | IO[bytes], max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The image at path (or in a binary file object) as upright RGB, EXIF orientation applied;
    DataError if missing, corrupt or too large."""
    source = path
    if isinstance(path, (str, Path)):
        path = source = Path(path)
        if not path.is_file():
            raise DataError("image not found", path)
    else:
        path = "<image data>"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                if im.width * im.height > max_pixels:
                    raise DataError(f"image too large: {im.width}x{im.height} pixels (limit {max_pixels:,})", path)
                im.load()
                return ImageOps.exif_transpose(im).convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"image too large: {exc}", path) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"corrupt image: {exc}", path) from None


def qwen25_frame(
    size: tuple[int, int], factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 12_845_056
) -> tuple[int, int]:
    """The (width, height) Qwen2.5-VL's processor resizes an image to (its ``smart_resize``): sides
    rounded to multiples of 28 and the pixel count kept within min/max; it answers boxes in this frame."""
    w, h = size
    h_bar, w_bar = max(factor, round(h / factor) * factor), max(factor, round(w / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        h_bar, w_bar = math.floor(h / beta / factor) * factor, math.floor(w / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        h_bar, w_bar = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return w_bar, h_bar


def sent_size(size: tuple[int, int], max_side: int, multiple_of: int | None = None) -> tuple[int, int]:
    """The size an image is sent at: longest side at most max_side, optionally snapped to a multiple."""
    w, h = size
    ratio = min(1.0, max_side / max(w, h))
    nw, nh = max(1, round(w * ratio)), max(1, round(h * ratio))
    if multiple_of:
        nw = max(multiple_of, round(nw / multiple_of) * multiple_of)
        nh = max(multiple_of, round(nh / multiple_of) * multiple_of)
    return nw, nh


def prepare_image(
    image: Image.Image | str | Path,
    max_side: int = 1000,
    multiple_of: int | None = None,
    frame: Callable[[tuple[int, int]], tuple[int, int]] | None = None,
) -> SentImage:
    """Resize (never enlarge past max_side, then into a model's own frame), encode as JPEG and keep the scale."""
    im = image if isinstance(image, Image.Image) else open_image(image)
    im = im.convert("RGB")
    target = sent_size(im.size, max_side, multiple_of)
    if frame is not None:
        target = frame(target)
    resized = im.resize(target, Image.Resampling.BICUBIC) if target != im.size else im
    buf = io.BytesIO()
    resized.save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    return SentImage(
        data_url="data:image/jpeg;base64," + base64.b64encode(data).decode("ascii"),
        sha256=hashlib.sha256(data).hexdigest(),
        original_size=im.size,
        sent_size=target,
    )
