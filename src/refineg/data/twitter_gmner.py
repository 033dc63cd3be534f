"""Twitter-GMNER: CoNLL text (``IMGID:`` line, then ``token<TAB>tag``) plus Pascal-VOC XML boxes.

An entity's boxes are the XML objects whose ``<name>`` equals the entity text (tokens joined by
single spaces). Entities whose text occurs twice in a tweet therefore share their boxes.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..types import Box, Entity, Sample
from .bio import is_valid_tag, spans_from_tags, tags_from_spans
from .textio import atomic_open, read_text, text_lines

TWITTER_TYPES = ("PER", "ORG", "LOC", "OTHER")


@dataclass(frozen=True)
class VocAnnotation:
    """What one VOC XML file says: image size and (name, box) objects."""

    size: tuple[int, int] | None
    objects: tuple[tuple[str, Box], ...]


def xml_dir_for(txt_path: Path) -> Path:
    """The XML folder of a split file: ``.../txt/split.txt`` -> ``.../xml/``."""
    if txt_path.parent.name == "txt":
        return txt_path.parent.parent / "xml"
    return txt_path.parent / "xml"


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _finite(text: str | None) -> float:
    value = float(text)  # ValueError or TypeError for text that is no number
    if not math.isfinite(value):
        raise ValueError("not finite")
    return value


def read_voc(path: Path) -> VocAnnotation:
    """Parse one VOC XML file; raises DataError naming the file and line."""
    text = read_text(path)
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise DataError(f"unparsable XML: {exc}", path, exc.position[0]) from None
    size = None
    w, h = root.findtext("size/width"), root.findtext("size/height")
    if w and h:
        try:
            size = (int(_finite(w)), int(_finite(h)))
        except (TypeError, ValueError):
            raise DataError(
                f"image size must be numbers, got width {w!r} and height {h!r}",
                path,
                _line_of(text, text.find("<size")),
            ) from None
        if size[0] < 0 or size[1] < 0:
            raise DataError(f"negative image size {size}", path, _line_of(text, text.find("<size")))
    box_lines = [_line_of(text, m.start()) for m in re.finditer(r"<bndbox\b", text)]
    objects = []
    for k, obj in enumerate(root.iter("object")):
        line = box_lines[k] if k < len(box_lines) else None
        name = (obj.findtext("name") or "").strip()
        try:
            coords = [_finite(obj.findtext(f"bndbox/{c}")) for c in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise DataError(f"object {name!r} has a missing, non-numeric or non-finite bndbox", path, line) from None
        box = Box(*coords)
        if box.is_degenerate:
            raise DataError(
                f"object {name!r} has a degenerate box {box.as_list()} (xmin >= xmax or ymin >= ymax)", path, line
            )
        objects.append((name, box))
    return VocAnnotation(size, tuple(objects))


def _parse_conll(path: Path, types: tuple[str, ...] | None):
    """Yield (sample id, tokens, tags, first line) from a CoNLL split file."""
    sid, tokens, tags, first = None, [], [], 0
    for lineno, line in text_lines(path):
        if line.startswith("IMGID:"):
            if sid is not None and tokens:
                yield sid, tokens, tags, first
            sid, tokens, tags, first = line[6:].strip(), [], [], lineno
            continue
        if not line.strip():
            if sid is not None and tokens:
                yield sid, tokens, tags, first
                sid, tokens, tags = None, [], []
            continue
        if sid is None:
            raise DataError("token line before any IMGID: line", path, lineno)
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) < 2:
            raise DataError(f"token line without a tag: {line!r}", path, lineno)
        if len(parts) > 2:
            raise DataError(f"expected 2 columns (token, tag), got {len(parts)}: {line!r}", path, lineno)
        token, tag = parts[0], parts[1].strip()
        if not is_valid_tag(tag) or (types and tag != "O" and tag[2:] not in types):
            raise DataError(f"unknown tag {tag!r}", path, lineno)
        tokens.append(token)
        tags.append(tag)
    if sid is not None and tokens:
        yield sid, tokens, tags, first


def read_token_columns(path: str | Path) -> list[Sample]:
    """Posts of a token-per-line file (blank lines between posts, an optional ``IMGID:`` line naming a post and
    its image ``ID.jpg``, any tag columns ignored): a Twitter-GMNER split with or without its tags, or plain CoNLL.
    Unnamed posts are ``unlabeled-LINE`` (the line of their first token)."""
    path = Path(path)
    posts: list[Sample] = []
    sid, tokens, first = None, [], 0

    def close() -> None:
        if tokens:  # a post named by IMGID has that image, as in a Twitter-GMNER split
            posts.append(Sample(sid or f"unlabeled-{first}", tuple(tokens), image=f"{sid}.jpg" if sid else None))

    for lineno, line in text_lines(path):
        if line.startswith("IMGID:") or not line.strip():
            close()
            sid, tokens = (line[6:].strip() or None) if line.startswith("IMGID:") else None, []
            continue
        if not tokens:
            first = lineno
        tokens.append((line.split("\t")[0].strip() if "\t" in line else "") or line.split()[0])
    close()
    return posts


def read_twitter(path: str | Path, types: tuple[str, ...] | None = TWITTER_TYPES) -> tuple[list[Sample], Counter]:
    """Samples of a Twitter-GMNER split file with their boxes, and a counter of what was odd."""
    report: Counter = Counter()
    return list(iter_twitter(path, types, report)), report


def iter_twitter(
    path: str | Path, types: tuple[str, ...] | None = TWITTER_TYPES, report: Counter | None = None
) -> Iterator[Sample]:
    """The samples of a Twitter-GMNER split file one at a time, with their boxes; what was odd goes to report."""
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", path)
    xml_dir = xml_dir_for(path)
    report = Counter() if report is None else report
    seen: set[str] = set()
    for sid, tokens, tags, lineno in _parse_conll(path, types):
        if sid in seen:
            raise DataError(f"duplicate IMGID {sid}", path, lineno)
        seen.add(sid)
        voc = read_voc(xml_dir / f"{sid}.xml") if (xml_dir / f"{sid}.xml").is_file() else None
        yield _sample_from(sid, tokens, tags, voc, report)


def _sample_from(sid: str, tokens: list[str], tags: list[str], voc: VocAnnotation | None, report: Counter) -> Sample:
    spans = spans_from_tags(tags)
    texts = [" ".join(tokens[s:e]) for s, e, _ in spans]
    counts = Counter(texts)
    objects = voc.objects if voc else ()
    entities = []
    for (s, e, t), text in zip(spans, texts):
        boxes = tuple(b for name, b in objects if name == text)
        entities.append(Entity(text=text, type=t, start=s, end=e, boxes=boxes, source="gold"))
        report["entities_text_repeated"] += counts[text] > 1
    report["xml_objects"] += len(objects)
    report["xml_objects_unmatched"] += sum(1 for name, _ in objects if name not in counts)
    return Sample(
        id=sid,
        tokens=tuple(tokens),
        entities=tuple(entities),
        image=f"{sid}.jpg",
        image_size=voc.size if voc else None,
    )


def write_twitter(samples: list[Sample], txt_path: str | Path, overwrite: bool = False) -> None:
    """Write samples as a CoNLL split file plus one VOC XML per sample that has boxes.

    Nothing is written unless everything can be: the XML files go to a temporary folder first, and an
    existing split file or XML file (another split's gold boxes, say) is never replaced unless overwrite.
    """
    txt_path = Path(txt_path)
    xml_dir = xml_dir_for(txt_path)
    lines, xml = [], {}
    for sample in samples:
        try:
            tags = tags_from_spans(len(sample.tokens), [(e.start, e.end, e.type) for e in sample.entities])
        except (ValueError, TypeError) as exc:
            raise DataError(f"cannot write as BIO: {exc}", txt_path, sample=sample.id) from None
        lines.append(f"IMGID:{sample.id}")
        lines.extend(f"{tok}\t{tag}" for tok, tag in zip(sample.tokens, tags))
        lines.append("")
        if any(e.boxes for e in sample.entities):
            xml[f"{sample.id}.xml"] = voc_xml(sample)
    if not overwrite:
        taken = [txt_path] if txt_path.exists() else []
        taken += [xml_dir / name for name in xml if (xml_dir / name).exists()]
        if taken:
            more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
            raise DataError(f"would overwrite {taken[0]}{more}; give --overwrite to replace them", txt_path)
    txt_path.parent.mkdir(parents=True, exist_ok=True)
    if xml:
        xml_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=xml_dir, prefix=".refineg-"))
        try:
            for name, text in xml.items():
                (staging / name).write_text(text, encoding="utf-8")
            with atomic_open(txt_path) as fh:
                fh.write("\n".join(lines) + "\n")
            for name in xml:
                os.replace(staging / name, xml_dir / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    else:
        with atomic_open(txt_path) as fh:
            fh.write("\n".join(lines) + "\n")


def voc_xml(sample: Sample) -> str:
    """The VOC XML text for one sample's boxes (each distinct name/box pair once)."""
    w, h = sample.image_size or (0, 0)
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = sample.image or f"{sample.id}.jpg"
    size = ET.SubElement(root, "size")
    for tag, val in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, tag).text = str(val)
    written = set()
    for ent in sample.entities:
        for box in ent.boxes:
            if (ent.text, box) in written:
                continue
            written.add((ent.text, box))
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = ent.text
            bnd = ET.SubElement(obj, "bndbox")
            for tag, val in zip(("xmin", "ymin", "xmax", "ymax"), box.as_list()):
                ET.SubElement(bnd, tag).text = str(val)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"
