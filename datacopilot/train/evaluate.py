"""Scoring a trained model on a held-out set of multiple-choice questions: accuracy by log-likelihood ranking of
each question's candidate answers, exact match of the greedy answer, per question type, against chance and a
wrong-image control.

The held-out set is a list of :class:`Item` (a question, its true answer, its candidate answers, its type, an
encoded image or none). :func:`evaluate` asks a *scorer* for two things, both batched:

- ``loglikelihood(requests, targets) -> list[float | Exception]``: the score of ``targets[i]`` as the answer to
  ``requests[i]`` (the paddle backend's mean log-probability per token, one forward pass per batch of candidates);
  every candidate of every item goes in one call, and the backend cuts it into batches;
- ``generate(requests) -> list[Response]``: the greedy answers, compared with the truth after normalizing case,
  whitespace and a final period (:func:`normalize`).

:class:`~datacopilot.models.backends.paddle.PaddleBackend` is such a scorer for the TinyVLM and any PaddleNLP
causal LM (:func:`model_scorer`); tests pass oracles built from the truth. Accuracy gives a tie between ``k``
candidates that include the truth ``1 / k`` (the expected score under a random tie-break), so a model scoring
every candidate the same scores exactly chance, ``1 / number of candidates``.

The wrong-image control asks the same questions with another item's image (a seeded derangement of the distinct
images): a model that reads the image falls toward chance there, one that answers from the question's text alone
does not move. Items without an image have no control.

>>> report = evaluate(model_scorer("demo/train/run/final", "demo/train/tokenizer"), items)  # doctest: +SKIP
>>> print(format_table(report))                                    # doctest: +SKIP
>>> save_report(report, "demo/eval")                               # doctest: +SKIP
{'json': 'demo/eval/eval.json', 'png': 'demo/eval/eval.png'}
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from datacopilot.errors import InputError

REPORT_JSON = "eval.json"
REPORT_PNG = "eval.png"
TIE = 1e-9  # candidate scores closer than this are a tie


@dataclass(frozen=True)
class Item:
    """One held-out question: ``kind`` (the question type, e.g. an attribute), ``question``, the true ``answer``,
    the candidate answers ``choices`` (the answer among them) and the encoded ``image`` (PNG/JPEG bytes) or None."""

    id: str
    kind: str
    question: str
    answer: str
    choices: tuple[str, ...]
    image: bytes | None = None

    def __post_init__(self):
        object.__setattr__(self, "choices", tuple(self.choices))
        if len(self.choices) < 2 or self.answer not in self.choices:
            raise InputError(f"item {self.id!r}: `choices` must hold at least 2 answers, the true one among them; "
                             f"got answer {self.answer!r} and choices {list(self.choices)!r}")
        if len(set(self.choices)) != len(self.choices):
            raise InputError(f"item {self.id!r}: `choices` repeat an answer: {list(self.choices)!r}")


def request(item: Item, image: bytes | None = None):
    """The chat request asking ``item``'s question (with ``image``, by default the item's own), as in training:
    one user turn, ``<image>`` then a newline before the question when there is an image."""
    from datacopilot.models.backends import Request
    from datacopilot.schemas import IMAGE_TOKEN

    image = item.image if image is None else image
    if image is None:
        return Request([{"role": "user", "content": item.question}])
    return Request([{"role": "user", "content": f"{IMAGE_TOKEN}\n{item.question}"}], images=(image,))


def normalize(text: str) -> str:
    """An answer as compared for exact match: lowercase, whitespace collapsed, no final period.

    >>> normalize("  It is  Red. ")
    'it is red'
    """
    return re.sub(r"\s+", " ", str(text)).strip().lower().rstrip(".").strip()


def wrong_images(items: Sequence[Item], seed: int = 0) -> list[bytes | None]:
    """Per item, the image of another sample: the distinct images in a seeded shuffle, each given the next one's
    (no image keeps its own when there are two or more); items without an image get None."""
    keys = sorted({hashlib.sha256(it.image).hexdigest() for it in items if it.image is not None})
    if len(keys) < 2:
        return [None] * len(items)
    by_key = {hashlib.sha256(it.image).hexdigest(): it.image for it in items if it.image is not None}
    random.Random(seed).shuffle(keys)
    swap = {k: by_key[keys[(i + 1) % len(keys)]] for i, k in enumerate(keys)}
    return [swap[hashlib.sha256(it.image).hexdigest()] if it.image is not None else None for it in items]


def rank(scorer, items: Sequence[Item], images: Sequence[bytes | None] | None = None) -> list[dict]:
    """Score every candidate of every item in one ``scorer.loglikelihood`` call; per item ``{"scores", "pick",
    "credit", "error"}``: ``pick`` the best candidate, ``credit`` 1 / (size of the tie at the top) when the truth
    is in it, else 0 (0 and the error's message when a candidate could not be scored)."""
    reqs, targets, owner = [], [], []
    for i, it in enumerate(items):
        req = request(it, images[i] if images is not None else None)
        for c in it.choices:
            reqs.append(req)
            targets.append(c)
            owner.append(i)
    scores = scorer.loglikelihood(reqs, targets) if reqs else []
    if len(scores) != len(reqs):
        raise InputError(f"the scorer returned {len(scores)} scores for {len(reqs)} candidates")
    per: list[list] = [[] for _ in items]
    for i, s in zip(owner, scores):
        per[i].append(s)
    out = []
    for it, ss in zip(items, per):
        bad = next((s for s in ss if isinstance(s, BaseException) or s is None), None)
        if bad is not None or not ss:
            out.append({"scores": None, "pick": None, "credit": 0.0, "error": str(bad)})
            continue
        best = max(ss)
        top = [c for c, s in zip(it.choices, ss) if best - s <= TIE]
        out.append({"scores": [round(float(s), 6) for s in ss], "pick": it.choices[ss.index(best)],
                    "credit": (1.0 / len(top)) if it.answer in top else 0.0, "error": None})
    return out


def evaluate(scorer, items: Sequence[Item], generate: bool = True, control: bool = True, seed: int = 0) -> dict:
    """Score ``items`` with ``scorer`` (see the module docstring); returns the report.

    The report: ``items``; ``kinds``: per question type ``{"n", "accuracy", "exact_match", "chance",
    "wrong_image", "errors"}`` (``exact_match`` None without ``generate``, ``wrong_image`` None without
    ``control`` or images), and ``all`` the same over every item; ``predictions``: per item its id, kind, answer,
    pick, credit, scores, generated text and exact match, and the pick under the wrong image.
    """
    items = list(items)
    if not items:
        raise InputError("evaluate: `items` is empty: nothing to score")
    ranked = rank(scorer, items)
    swapped = wrong_images(items, seed) if control else [None] * len(items)
    has_control = [img is not None for img in swapped]
    ctl = {}
    if any(has_control):
        idx = [i for i, ok in enumerate(has_control) if ok]
        ctl = dict(zip(idx, rank(scorer, [items[i] for i in idx], [swapped[i] for i in idx])))
    texts: list[str | None] = [None] * len(items)
    if generate:
        responses = scorer.generate([request(it) for it in items])
        texts = [r.text if r.finish_reason != "error" else None for r in responses]
    preds = []
    for i, (it, r) in enumerate(zip(items, ranked)):
        p = {"id": it.id, "kind": it.kind, "answer": it.answer, "pick": r["pick"], "credit": r["credit"],
             "scores": r["scores"], "chance": 1.0 / len(it.choices)}
        if r["error"]:
            p["error"] = r["error"]
        if generate:
            p["generated"] = texts[i]
            p["exact"] = texts[i] is not None and normalize(texts[i]) == normalize(it.answer)
        if i in ctl:
            p["wrong_image_pick"], p["wrong_image_credit"] = ctl[i]["pick"], ctl[i]["credit"]
        preds.append(p)
    kinds = {k: _summary([p for p in preds if p["kind"] == k]) for k in dict.fromkeys(it.kind for it in items)}
    return {"items": len(items), "kinds": kinds, "all": _summary(preds), "predictions": preds}


def _summary(preds: list[dict]) -> dict:
    n = len(preds)
    ctl = [p["wrong_image_credit"] for p in preds if "wrong_image_credit" in p]
    exact = [p["exact"] for p in preds if "exact" in p]
    return {"n": n, "accuracy": round(sum(p["credit"] for p in preds) / n, 4),
            "exact_match": round(sum(exact) / len(exact), 4) if exact else None,
            "chance": round(sum(p["chance"] for p in preds) / n, 4),
            "wrong_image": round(sum(ctl) / len(ctl), 4) if ctl else None,
            "errors": sum(1 for p in preds if p.get("error"))}


def model_scorer(model_dir: str, tokenizer: str | None = None, batch_size: int = 64, max_new_tokens: int = 16):
    """The paddle backend over a local model directory (TinyVLM or causal LM; the tokenizer in it, in its
    ``tokenizer/`` folder, or ``tokenizer``), greedy, ``batch_size`` rows per forward pass."""
    from datacopilot.models.backends import ModelSpec, load_backend

    return load_backend(ModelSpec(backend="paddle", path=model_dir, tokenizer=tokenizer, batch_size=batch_size,
                                  max_new_tokens=max_new_tokens, temperature=0.0))


def format_table(report: dict) -> str:
    """The report as a table: per question type (and all), n, accuracy, exact match, chance, wrong-image
    accuracy; '-' where a figure was not measured."""
    def f(v):
        return "-" if v is None else f"{v:.2f}"

    rows = [*report["kinds"].items(), ("all", report["all"])]
    width = max(len("question"), *(len(k) for k, _ in rows))
    lines = [f"  {'question':<{width}}  {'n':>5}  {'accuracy':>8}  {'exact':>6}  {'chance':>6}  {'wrong image':>11}"]
    for k, s in rows:
        lines.append(f"  {k:<{width}}  {s['n']:>5}  {f(s['accuracy']):>8}  {f(s['exact_match']):>6}  "
                     f"{f(s['chance']):>6}  {f(s['wrong_image']):>11}" + (f"  ({s['errors']} errors)"
                                                                           if s["errors"] else ""))
    return "\n".join(lines)


def save_report(report: dict, out_dir: str, title: str = "held-out accuracy") -> dict:
    """Write ``out_dir/eval.json`` (the report) and ``out_dir/eval.png`` (a bar chart per question type:
    accuracy, exact match, wrong-image accuracy, chance marked); returns both paths."""
    from .plot import save_bars

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, REPORT_JSON)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=1)
    kinds = list(report["kinds"])
    series = {name: [report["kinds"][k][key] for k in kinds] for name, key in
              (("accuracy", "accuracy"), ("exact match", "exact_match"), ("wrong image", "wrong_image"))}
    series = {k: v for k, v in series.items() if any(x is not None for x in v)}
    png = save_bars(kinds, series, [report["kinds"][k]["chance"] for k in kinds],
                    os.path.join(out_dir, REPORT_PNG), title=title)
    return {"json": path, "png": png}


def evaluate_model(model_dir: str, items: Sequence[Item], out_dir: str | None = None, echo=print,
                   tokenizer: str | None = None, batch_size: int = 64, generate: bool = True, seed: int = 0) -> dict:
    """:func:`evaluate` the model in ``model_dir`` (see :func:`model_scorer`) on ``items``, print the table with
    ``echo``, and with ``out_dir`` write the JSON and PNG there (their paths in the report's ``files``).

    >>> items = demo_items("demo/heldout", 50)                                               # doctest: +SKIP
    >>> report = evaluate_model("demo/train/run/final", items, "demo/eval",
    ...                         tokenizer="demo/train/tokenizer")                            # doctest: +SKIP
    """
    import warnings

    with warnings.catch_warnings():  # paddlenlp's deprecation notices, not the user's concern here
        warnings.simplefilter("ignore")
        scorer = model_scorer(model_dir, tokenizer=tokenizer, batch_size=batch_size)
        report = evaluate(scorer, items, generate=generate, seed=seed)
    report["model"] = os.path.abspath(model_dir)
    report["forward_passes"] = getattr(scorer, "model_calls", None)
    echo(format_table(report))
    if out_dir is not None:
        report["files"] = save_report(report, out_dir)
        echo(f"   report: {report['files']['json']}; chart: {report['files']['png']}")
    return report


def load_items(path: str) -> list[Item]:
    """Items from a jsonl file written by :func:`write_items` (``image``: a path relative to the file, or
    absent)."""
    base = os.path.dirname(os.path.abspath(path))
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                image = d.pop("image", None)
                if image is not None:
                    with open(os.path.join(base, image), "rb") as img:
                        d["image"] = img.read()
                out.append(Item(**d))
            except (ValueError, TypeError, OSError) as e:
                raise InputError(f"{path}:{n}: not an evaluation item: {e}") from e
    return out


def write_items(items: Sequence[Item], path: str, image_paths: Sequence[str | None]) -> str:
    """Write ``items`` as jsonl to ``path``, each image as its path in ``image_paths`` (relative to the file)."""
    with open(path, "w", encoding="utf-8") as fh:
        for it, img in zip(items, image_paths):
            d = {k: v for k, v in asdict(it).items() if k != "image"}
            d["choices"] = list(it.choices)
            if img is not None:
                d["image"] = img
            fh.write(json.dumps(d, ensure_ascii=False) + "\n")
    return path


__all__ = ["Item", "evaluate", "evaluate_model", "format_table", "load_items", "model_scorer", "normalize", "rank",
           "request", "save_report", "write_items", "wrong_images"]
