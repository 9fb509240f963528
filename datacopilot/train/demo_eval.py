"""The demo's held-out set and its truth: new images drawn by the demo generator (another seed stream than the
training data's), one question per attribute each with every answer it can have, and synthesized rows checked
against what was drawn.

>>> items = demo_items("demo/heldout", n=50, seed=0)       # doctest: +SKIP
>>> len(items), items[0].kind, len(items[1].choices)       # doctest: +SKIP
(200, 'shape', 7)
>>> score_synthesized(datacopilot.load("demo/synth"))["pairs"]["color"]   # doctest: +SKIP
{'n': 12, 'correct': 7, 'wrong': 5, 'unscorable': 0, 'accuracy': 0.5833}
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Iterable

from datacopilot.demo_data import (ATTRIBUTES, BACKGROUNDS, COLORS, POSITIONS, SHAPES, VALUES, answer_choices,
                                   draw, questions)

from .evaluate import Item, write_items

ITEMS_FILE = "eval.jsonl"
# words that name a value of an attribute in free text (a synthesized answer or caption)
WORDS = {"shape": {s: (s,) for s in SHAPES}, "color": {c: (c,) for c in COLORS},
         "background": {b: (b, "grey") if b == "gray" else (b,) for b in BACKGROUNDS},
         "position": {**{p: (p,) for p in POSITIONS}, "center": ("center", "centre", "middle")}}


def heldout_attrs(n: int, seed: int) -> list[dict]:
    """``n`` attribute sets drawn as the demo generator draws them (the colour never the background's), from a
    random stream of its own (``"heldout-{seed}"``), so they are not the training rows of ``seed``."""
    rng = random.Random(f"heldout-{seed}")
    out = []
    for _ in range(n):
        a = {"shape": rng.choice(SHAPES), "color": rng.choice(list(COLORS)), "position": rng.choice(list(POSITIONS)),
             "background": rng.choice(list(BACKGROUNDS))}
        while a["background"] == a["color"]:
            a["background"] = rng.choice(list(BACKGROUNDS))
        out.append(a)
    return out


def demo_items(out_dir: str, n: int = 50, seed: int = 0) -> list[Item]:
    """Draw ``n`` held-out demo images into ``out_dir/images`` and return their items, one per attribute
    (:data:`~datacopilot.demo_data.ATTRIBUTES`) and image, also written to ``out_dir/eval.jsonl`` (rerun with
    ``datacopilot eval MODEL out_dir/eval.jsonl``)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"`n` must be an integer >= 2 (the wrong-image control needs two images), got {n!r}")
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    items, paths = [], []
    for i, a in enumerate(heldout_attrs(n, seed)):
        rel = f"images/heldout_{i:05d}.png"
        full = os.path.join(out_dir, rel)
        draw(a["shape"], a["color"], a["position"], a["background"], full)
        with open(full, "rb") as fh:
            png = fh.read()
        for kind, (q, answer) in questions(a).items():
            items.append(Item(f"heldout-{i:05d}-{kind}", kind, q, answer, tuple(answer_choices(kind, a)), png))
            paths.append(rel)
    write_items(items, os.path.join(out_dir, ITEMS_FILE), paths)
    return items


def evaluate_on_demo(train: dict, out_dir: str, n: int = 50, seed: int = 0, shards_dir: str | None = None,
                     echo: Callable[[str], None] = print) -> dict:
    """Score the demo's trained VLM (``train``: the sft result, with ``model_dir`` and ``tokenizer_dir``) on ``n``
    new demo images drawn into ``out_dir/heldout``, the report written to ``out_dir/eval``; returns the report
    (see :func:`~datacopilot.train.evaluate.evaluate`), with ``seen_in_training``: how many held-out images have
    attributes some row of ``shards_dir`` also has (the generator draws 700 combinations without jitter, so those
    images are the same pixels as a training image)."""
    from .evaluate import evaluate_model

    items = demo_items(os.path.join(out_dir, "heldout"), n=n, seed=seed)
    seen = None
    if shards_dir is not None:
        import datacopilot

        trained = {tuple(sorted((k, m.get(k)) for k in ATTRIBUTES)) for m in
                   map(row_attrs, datacopilot.load(shards_dir)) if m is not None}
        seen = sum(tuple(sorted((k, a[k]) for k in ATTRIBUTES)) in trained for a in heldout_attrs(n, seed))
    echo(f"   {len(items)} questions about {n} new images (drawn apart from the training rows"
         + (f"; {seen} of them with attributes also drawn in training" if seen is not None else "") + ")")
    report = evaluate_model(train["model_dir"], items, os.path.join(out_dir, "eval"), echo=echo,
                            tokenizer=train.get("tokenizer_dir"), seed=seed)
    report["seen_in_training"] = seen
    return report


# -- synthesized rows against the truth ----------------------------------------------------------------------
def question_kind(question: str) -> str | None:
    """The attribute a free-form question asks about, ``"caption"`` for a request to describe the image, or None.

    >>> question_kind("What colour is the background?"), question_kind("Where is the cross?")
    ('background', 'position')
    """
    q = str(question).lower()
    if re.search(r"\b(describe|description|caption)\b", q):
        return "caption"
    if "background" in q:
        return "background"
    if re.search(r"\bcolou?rs?\b", q):
        return "color"
    if re.search(r"\b(where|position|located|placed|side|part)\b", q):
        return "position"
    if re.search(r"\b(shape|object|figure|form)\b|what is (in|shown|drawn)|what do you see", q):
        return "shape"
    return None


def mentioned(kind: str, text: str) -> set[str]:
    """The values of ``kind`` that ``text`` names (whole words).

    >>> sorted(mentioned("color", "It is red, not blue."))
    ['blue', 'red']
    """
    words = set(re.findall(r"[a-z]+", str(text).lower()))
    return {v for v, names in WORDS[kind].items() if words & set(names)}


def verdict(kind: str, text: str, attrs: dict) -> str:
    """``"correct"`` when ``text`` names the true value of ``kind`` and no other, ``"unscorable"`` when it names
    none, else ``"wrong"``."""
    said = mentioned(kind, text)
    if not said:
        return "unscorable"
    return "correct" if said == {attrs[kind]} else "wrong"


def caption_verdicts(caption: str, attrs: dict) -> dict[str, str]:
    """Per attribute a caption names, its verdict; the background is read from ``<colour> background`` and the
    shape's colour from the rest."""
    text = str(caption).lower()
    back = re.findall(r"([a-z]+)\s+background", text)
    rest = re.sub(r"[a-z]+\s+background", " ", text)
    out = {}
    for kind, part in (("shape", rest), ("color", rest), ("position", rest), ("background", " ".join(back))):
        v = verdict(kind, part, attrs)
        if v != "unscorable":
            out[kind] = v
    return out


def qa_pairs(turns) -> list[tuple[str, str]]:
    """The (question, answer) pairs of a conversation (MM ``from``/``value`` or ``role``/``content`` turns), the
    ``<image>`` placeholder taken out of the questions."""
    out, question = [], None
    for t in turns or []:
        role = t.get("from", t.get("role"))
        text = t.get("value", t.get("content"))
        if role in ("human", "user"):
            question = text
        elif role in ("gpt", "assistant") and question is not None:
            out.append((str(question).replace("<image>", "").strip(), str(text)))
            question = None
    return out


def row_attrs(row: dict) -> dict | None:
    """The attributes a demo row was drawn with: its ``meta`` (a dict, or the JSON text the shards hold), or None.

    >>> row_attrs({"meta": '{"shape": "circle"}'})
    {'shape': 'circle'}
    """
    meta = row.get("meta")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError:
            return None
    return meta if isinstance(meta, dict) else None


def score_synthesized(rows: Iterable[dict], truth: Callable[[dict], dict | None] | None = None,
                      skip_pairs: Callable[[dict], int] | None = None, caption_field: str = "caption") -> dict:
    """Check synthesized rows against the attributes of their images.

    ``truth(row)`` gives a row's attributes (by default its ``meta``, as the demo's rows carry; None = unknown, the
    row is counted in ``rows_without_truth``); ``skip_pairs(row)`` how many of its first question-answer pairs are
    not synthesized (by default 0). Each synthesized pair's question is classed by attribute
    (:func:`question_kind`; ``other`` when none) and its answer judged by :func:`verdict`; the ``caption_field``
    text and the answers to a request for a description are judged as captions, per attribute they name.
    Returns ``{"rows", "rows_without_truth", "pairs": {kind: {"n", "correct", "wrong", "unscorable",
    "accuracy"}}, "captions": {kind: {"n", "correct", "wrong", "accuracy"}}, "captions_scored"}``; ``accuracy``
    is correct / n (None for ``other``).
    """
    truth = truth or row_attrs
    pairs = {k: {"n": 0, "correct": 0, "wrong": 0, "unscorable": 0} for k in (*ATTRIBUTES, "other")}
    caps = {k: {"n": 0, "correct": 0, "wrong": 0} for k in ATTRIBUTES}
    seen = without = captions = 0
    for row in rows_iter(rows):
        seen += 1
        attrs = truth(row)
        if not attrs or any(attrs.get(k) not in VALUES[k] for k in ATTRIBUTES):
            without += 1
            continue
        skip = skip_pairs(row) if skip_pairs else 0
        for q, a in qa_pairs(row.get("conversations") or row.get("messages"))[skip:]:
            kind = question_kind(q)
            if kind == "caption":
                captions += 1
                for k, v in caption_verdicts(a, attrs).items():
                    caps[k]["n"] += 1
                    caps[k][v] += 1
                continue
            if kind is None:
                pairs["other"]["n"] += 1
                continue
            pairs[kind]["n"] += 1
            pairs[kind][verdict(kind, a, attrs)] += 1
        cap = row.get(caption_field)
        if isinstance(cap, str) and cap.strip():
            captions += 1
            for kind, v in caption_verdicts(cap, attrs).items():
                caps[kind]["n"] += 1
                caps[kind][v] += 1
    for k, s in pairs.items():
        s["accuracy"] = round(s["correct"] / s["n"], 4) if s["n"] and k != "other" else None
    for s in caps.values():
        s["accuracy"] = round(s["correct"] / s["n"], 4) if s["n"] else None
    return {"rows": seen, "rows_without_truth": without, "pairs": pairs, "captions": caps,
            "captions_scored": captions}


def rows_iter(rows):
    """Rows as dicts from a list of dicts or a dataset (``to_pylist`` / iteration)."""
    if hasattr(rows, "to_pylist"):
        return rows.to_pylist()
    return rows


def synth_table(score: dict) -> str:
    """Per attribute: synthesized pairs asked, correct, wrong, unscorable; captions naming it and correct."""
    lines = [f"  {'attribute':<10}  {'pairs':>5}  {'correct':>7}  {'wrong':>5}  {'unscorable':>10}  "
             f"{'captions':>8}  {'correct':>7}"]
    for k in (*ATTRIBUTES, "other"):
        p = score["pairs"][k]
        c = score["captions"].get(k, {"n": "-", "correct": "-"})
        lines.append(f"  {k:<10}  {p['n']:>5}  {(p['correct'] if k != 'other' else '-'):>7}  "
                     f"{(p['wrong'] if k != 'other' else '-'):>5}  {(p['unscorable'] if k != 'other' else '-'):>10}  "
                     f"{c['n']:>8}  {c['correct']:>7}")
    return "\n".join(lines)


__all__ = ["ITEMS_FILE", "caption_verdicts", "demo_items", "evaluate_on_demo", "heldout_attrs", "mentioned", "qa_pairs",
           "question_kind", "row_attrs", "score_synthesized", "synth_table", "verdict"]
