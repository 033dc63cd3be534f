"""Builds the small example set that ships with refineg (written by us; the images are drawn here).

Every name is invented. Run from the repo root: `.venv/bin/python examples/mini/build.py`.
It writes train.jsonl, dev.jsonl and images/*.png deterministically.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
NAMES = {
    "PER": [
        "Mara Quint",
        "Tobin Hale",
        "Ines Varga",
        "Olu Bakare",
        "Dara Finch",
        "Kei Morrow",
        "Lena Sorel",
        "Amos Ridley",
        "Priya Nandakumar",
        "Felix Orban",
        "Sunny Adair",
        "Noor Haddad",
    ],
    "ORG": [
        "Lakeview Rovers",
        "Brightwell Labs",
        "Northgate FC",
        "Copperline Records",
        "Vantor Motors",
        "Eastbay Herald",
        "Solace Health",
        "Kestrel Airways",
        "Marrow & Co",
        "Tidewater University",
    ],
    "LOC": [
        "Port Selby",
        "Arden Valley",
        "Corvin Bay",
        "Eastmere",
        "Halden Square",
        "Mount Veyra",
        "Rill Street",
        "Saltmarsh",
        "Lower Frome",
        "Wyncote Park",
    ],
    "OTHER": [
        "Glowfest",
        "Summer Cup",
        "Nightjar Awards",
        "Velvet Hours",
        "Harbour Run",
        "Kite Week",
        "Pixel Expo",
        "Ember Trilogy",
    ],
}
TEMPLATES = [
    "{PER} signs with {ORG} ahead of the {OTHER} in {LOC}",
    "Great night at {OTHER} ! {PER} was amazing # {LOC}",
    "RT @ fanzone : {PER} and {PER2} arrive in {LOC} for the {OTHER}",
    "{ORG} opens a new office in {LOC} today",
    "So proud of {PER} for winning at the {OTHER} !",
    "Traffic is terrible on the way to {LOC} this morning",
    "Just finished watching {OTHER} , {PER} steals every scene",
    "{ORG} and {ORG2} agree on a deal , says {PER}",
    "Sunset over {LOC} , no filter needed",
    "Who else is going to {OTHER} next week ? # {LOC}",
    "{PER} talks about her new role at {ORG}",
    "Can not believe how good the coffee is here",
]
GROUNDED = ("PER", "ORG")
COLORS = {"PER": (214, 96, 77), "ORG": (52, 101, 164)}


def _fill(template: str, rng: random.Random) -> tuple[list[str], list[dict]]:
    picks: dict[str, str] = {}
    for slot in ("PER", "PER2", "ORG", "ORG2", "LOC", "OTHER"):
        base = slot.rstrip("2")
        pool = [n for n in NAMES[base] if n not in picks.values()]
        picks[slot] = rng.choice(pool)
    tokens: list[str] = []
    entities = []
    for word in template.split():
        slot = word[1:-1] if word.startswith("{") else None
        if slot is None:
            tokens.append(word)
            continue
        name = picks[slot].split()
        entities.append(
            {
                "start": len(tokens),
                "end": len(tokens) + len(name),
                "text": " ".join(name),
                "type": slot.rstrip("2"),
                "boxes": [],
            }
        )
        tokens.extend(name)
    return tokens, entities


def _draw(sid: str, entities: list[dict], rng: random.Random) -> tuple[int, int]:
    w, h = 480, 320
    im = Image.new("RGB", (w, h), tuple(rng.randint(200, 240) for _ in range(3)))
    d = ImageDraw.Draw(im)
    d.rectangle([0, int(h * 0.7), w, h], fill=(150, 170, 140))
    slots = [(20, 40, 170, 300), (180, 60, 310, 290), (330, 30, 470, 280)]
    rng.shuffle(slots)
    for ent in entities:
        if ent["type"] not in GROUNDED or not slots:
            continue
        x0, y0, x1, y1 = slots.pop()
        c = COLORS[ent["type"]]
        if ent["type"] == "PER":  # a simple figure: head and body
            cx = (x0 + x1) // 2
            d.ellipse([cx - 25, y0, cx + 25, y0 + 50], fill=c)
            d.rectangle([cx - 40, y0 + 55, cx + 40, y1], fill=c)
        else:  # a logo board
            d.rectangle([x0, y0 + 60, x1, y0 + 160], fill=c)
            d.text((x0 + 8, y0 + 100), ent["text"][:16], fill=(255, 255, 255))
            y0, y1 = y0 + 60, y0 + 160
        ent["boxes"] = [[x0, y0, x1, y1]]
    (HERE / "images").mkdir(exist_ok=True)
    im.save(HERE / "images" / f"{sid}.png")
    return w, h


def build(n_train: int = 96, n_dev: int = 36, seed: int = 0) -> None:
    """Write both splits and their images."""
    rng = random.Random(seed)
    for split, n in (("train", n_train), ("dev", n_dev)):
        lines = []
        for i in range(n):
            sid = f"{split}{i:03d}"
            tokens, entities = _fill(TEMPLATES[(i * 7 + (split == "dev")) % len(TEMPLATES)], rng)
            w, h = _draw(sid, entities, rng)
            lines.append(
                json.dumps(
                    {"id": sid, "tokens": tokens, "image": f"{sid}.png", "width": w, "height": h, "entities": entities}
                )
            )
        (HERE / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    build()
