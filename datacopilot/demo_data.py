"""A small synthetic image-caption set for the demo: shapes drawn with Pillow, true captions and LLaVA-style
conversations derived from what was drawn, plus a realistic share of dirty rows, each kind counted.

Every row has its own 64x64 PNG under ``out_dir/images/`` (relative paths in ``out_dir/demo.jsonl``), except
the rows whose image is missing on purpose. Deterministic under ``seed``.
"""

from __future__ import annotations

import json
import os
import random

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLORS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220), "yellow": (240, 210, 30),
          "purple": (130, 50, 170), "orange": (245, 140, 20), "black": (15, 15, 15)}
BACKGROUNDS = {"white": (255, 255, 255), "gray": (150, 150, 150), "beige": (240, 230, 200), "black": (0, 0, 0)}
POSITIONS = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73),
             "center": (0.5, 0.5)}
PLACES = {"left": "on the left of", "right": "on the right of", "top": "at the top of",
          "bottom": "at the bottom of", "center": "in the center of"}
# what the generator knows of every image, and the values each attribute takes
ATTRIBUTES = ("shape", "color", "position", "background")
VALUES = {"shape": SHAPES, "color": tuple(COLORS), "position": tuple(POSITIONS), "background": tuple(BACKGROUNDS)}
SIZE = 64
MAX_ANSWER_CHARS = 400  # the demo's filter drops rows with a longer answer; overlong rows exceed it

# share of the rows of each dirty kind (at least one of each when there are 20 rows or more)
DIRTY_SHARE = {"duplicates": 0.05, "empty_answers": 0.03, "missing_images": 0.03, "overlong": 0.02,
               "unanswered": 0.02, "invalid": 0.02}


def draw(shape: str, color: str, position: str, background: str, path: str) -> None:
    """Draw one demo image (a ``SIZE`` x ``SIZE`` PNG) of the given attributes to ``path``."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (SIZE, SIZE), BACKGROUNDS[background])
    d = ImageDraw.Draw(img)
    cx, cy = (int(f * SIZE) for f in POSITIONS[position])
    r = SIZE // 6
    fill = COLORS[color]
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:  # cross
        w = r // 3
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    img.save(path, format="PNG")


def caption(shape: str, color: str, position: str, background: str) -> str:
    """The true caption of a drawn image.

    >>> caption("circle", "red", "left", "white")
    'a red circle on the left of a white background'
    """
    return f"a {color} {shape} {PLACES[position]} a {background} background"


def questions(attrs: dict) -> dict[str, tuple[str, str]]:
    """Per attribute (:data:`ATTRIBUTES`), the demo's question about it and its true answer.

    >>> questions({"shape": "circle", "color": "red", "position": "left", "background": "white"})["color"]
    ('What color is the circle?', 'It is red.')
    """
    s, c, p, b = attrs["shape"], attrs["color"], attrs["position"], attrs["background"]
    where = {"left": "On the left.", "right": "On the right.", "top": "At the top.", "bottom": "At the bottom.",
             "center": "In the center."}[p]
    return {"shape": ("What shape is in the image?", f"A {s}."), "color": (f"What color is the {s}?", f"It is {c}."),
            "position": (f"Where is the {s}?", where), "background": ("What color is the background?",
                                                                       f"{b.capitalize()}.")}


def answer_choices(attribute: str, attrs: dict) -> list[str]:
    """The answers the demo's question about ``attribute`` can have (one per value, in :data:`VALUES` order),
    the true one among them.

    >>> answer_choices("background", {"shape": "circle", "color": "red", "position": "left", "background": "gray"})
    ['White.', 'Gray.', 'Beige.', 'Black.']
    """
    return [questions({**attrs, attribute: v})[attribute][1] for v in VALUES[attribute]]


def _qa(attrs: dict) -> list[tuple[str, str]]:
    q = questions(attrs)
    cap = caption(attrs["shape"], attrs["color"], attrs["position"], attrs["background"])
    return [*(q[a] for a in ATTRIBUTES), ("Describe the image.", cap[0].upper() + cap[1:] + ".")]


def _conversation(rng: random.Random, attrs: dict) -> list[dict]:
    pairs = rng.sample(_qa(attrs), rng.randint(1, 3))
    turns = []
    for i, (q, a) in enumerate(pairs):
        turns.append({"from": "human", "value": ("<image>\n" + q) if i == 0 else q})
        turns.append({"from": "gpt", "value": a})
    return turns


def _messy(rng: random.Random, text: str) -> str:
    """The same text with the stray whitespace scraped data carries (doubled spaces, tabs, padding)."""
    words = text.split(" ")
    i = rng.randrange(len(words))
    words[i] = words[i] + rng.choice(["  ", "\t", "   "])
    return rng.choice(["", " ", "  "]) + " ".join(words) + rng.choice([" ", "\n", "  "])


def _counts(n: int) -> dict:
    counts = {k: max(1, round(n * share)) if n >= 20 else 0 for k, share in DIRTY_SHARE.items()}
    if sum(counts.values()) >= n:
        raise ValueError(f"`n` too small for the dirty rows, got {n!r}")
    return counts


def _corrupt(kind: str, row: dict, rng: random.Random, k: int) -> dict:
    turns = [dict(t) for t in row["conversations"]]
    if kind == "empty_answers":
        turns[rng.randrange(1, len(turns), 2)]["value"] = ""
    elif kind == "overlong":
        turns[1]["value"] = " ".join([turns[1]["value"]] * (MAX_ANSWER_CHARS // 4 + 10))
    elif kind == "unanswered":
        turns = turns[:1]
    elif kind == "missing_images":
        row = {**row, "image": f"images/missing_{k:05d}.png"}
    elif kind == "invalid":
        bad = k % 3
        if bad == 0:
            turns[1]["from"] = "bot"
        elif bad == 1:
            turns[0]["from"] = "user"
        else:
            turns[1]["value"] = 42
    return {**row, "conversations": turns}


def make_demo_data(out_dir: str, n: int = 400, seed: int = 0) -> dict:
    """Draw ``n`` rows of a dirty synthetic image-caption set into ``out_dir``; return what was written.

    Returns ``{"path", "images_dir", "rows", "clean", "messy_whitespace", "duplicates", "empty_answers",
    "missing_images", "overlong", "unanswered", "invalid"}``: ``rows`` lines in total, of which ``clean``
    survive a correct cleaning (the rows with messy whitespace are among them) and each dirty kind counts
    the rows injected of that kind (every dirty row has exactly one defect).

    >>> info = make_demo_data("/tmp/demo", n=100, seed=0)  # doctest: +SKIP
    >>> info["rows"] == info["clean"] + sum(info[k] for k in DIRTY_SHARE)  # doctest: +SKIP
    True
    """
    if n < 1:
        raise ValueError(f"`n` must be positive, got {n!r}")
    rng = random.Random(seed)
    counts = _counts(n)
    images_dir = os.path.join(out_dir, "images")
    os.makedirs(images_dir, exist_ok=True)
    base_n = n - counts["duplicates"]
    rows = []
    for i in range(base_n):
        attrs = {"shape": rng.choice(SHAPES), "color": rng.choice(list(COLORS)),
                 "position": rng.choice(list(POSITIONS)),
                 "background": rng.choice(list(BACKGROUNDS))}
        while attrs["background"] == attrs["color"]:
            attrs["background"] = rng.choice(list(BACKGROUNDS))
        attrs["caption"] = caption(attrs["shape"], attrs["color"], attrs["position"], attrs["background"])
        rows.append({"id": f"demo-{i:05d}", "image": f"images/{i:05d}.png",
                     "conversations": _conversation(rng, attrs), "meta": attrs})
    order = list(range(base_n))
    rng.shuffle(order)
    kinds = [k for k in DIRTY_SHARE if k != "duplicates"]
    dirty_of: dict[int, str] = {}
    pos = 0
    for kind in kinds:
        for j in range(counts[kind]):
            i = order[pos]
            pos += 1
            dirty_of[i] = kind
            rows[i] = _corrupt(kind, rows[i], rng, j)
    clean_ids = order[pos:]
    messy = 0
    for i in clean_ids[: len(clean_ids) // 10]:  # a tenth of the clean rows carry stray whitespace
        turns = [dict(t) for t in rows[i]["conversations"]]
        t = turns[rng.randrange(len(turns))]
        t["value"] = _messy(rng, t["value"])
        rows[i] = {**rows[i], "conversations": turns}
        messy += 1
    for i, row in enumerate(rows):
        if dirty_of.get(i) != "missing_images":
            m = row["meta"]
            draw(m["shape"], m["color"], m["position"], m["background"], os.path.join(out_dir, row["image"]))
    copies = [json.loads(json.dumps(rows[i])) for i in rng.sample(clean_ids, counts["duplicates"])]
    for copy in copies:
        rows.insert(rng.randrange(len(rows) + 1), copy)
    path = os.path.join(out_dir, "demo.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    clean = n - sum(counts.values())
    return {"path": path, "images_dir": images_dir, "rows": len(rows), "clean": clean,
            "messy_whitespace": messy, **counts}
