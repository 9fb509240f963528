"""Augmenters over conversations (MM, MIX and MESSAGES): rephrase questions from templates, split long
conversations, merge conversations on the same image, shuffle independent exchanges.

Each works per row (rows in a batch do not see each other) except ``merge_same_image``, a dataset-wide stage
that merges rows on the same image wherever they are. Random choices are seeded by ``seed`` and the row's own
content, so the output does not depend on batch sizes, workers or the executor. A row the operator cannot handle
(an unknown role) raises; the runner then retries row by row, so only that row fails.

>>> from datacopilot.operators import create
>>> ds.apply([create("split_conversations", max_turns=2), create("rephrase_questions", seed=1)])  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from datacopilot.schemas import IMAGE_TOKEN

from . import _merge
from ._augment import (
    Keys,
    bare,
    batch_rows,
    check_bool,
    count_placeholders,
    exchanges,
    no_images,
    refers_back,
    role,
    seeded,
    split_placeholders,
    text,
    to_table,
    with_suffix,
)
from ._conv import ConversationOp
from .base import Augmenter, Grouper, check_choice, check_int
from .registry import register

TEMPLATES = (
    "Please answer the following question about the image. {question}",
    "Could you tell me {question_bare}?",
    "Looking at the picture, {question_bare}?",
    "Here is my question: {question}",
    "{question} Please look at the image carefully before answering.",
    "Based on the image, {question_bare}?",
    "I would like to know {question_bare}.",
    "Answer this about the image: {question}",
)
TEXT_TEMPLATES = (  # for rows without an image
    "Please answer the following question. {question}",
    "Could you tell me {question_bare}?",
    "Here is my question: {question}",
    "I would like to know {question_bare}.",
    "{question} Please answer carefully.",
)
_SLOTS = {"question": "Q?", "question_bare": "q"}


def _with_variants(op, batch: pa.RecordBatch, make) -> pa.Table:
    """Each row followed by its variant ``make(row, k)`` (``keep_original``) or replaced by it, keeping the
    row's id; rows ``make`` returns None for stay as they are."""
    k, rows = batch_rows(op, batch)
    out = []
    for row in rows:
        new = make(row, k)
        if new is None:
            out.append(row)
        elif op.p["keep_original"]:
            out += [row, new]
        else:
            out.append({**new, "id": row.get("id")})
    return to_table(out, batch)


@register
class RephraseQuestions(ConversationOp, Augmenter):
    """Rephrase user questions with templates: a copy of the row with its questions rephrased is added after it
    (``keep_original=True``, id suffixed ``#rephrased``) or replaces it.

    ``templates``: strings with a ``{question}`` slot (the question as written) and/or ``{question_bare}`` (no
    final punctuation, first letter lowered); None uses a built-in set (:data:`TEMPLATES`, or
    :data:`TEXT_TEMPLATES` for a row without an image). One template is drawn
    per question from ``seed`` and the row's content. ``turns``: ``"all"`` questions or only the ``"first"``.
    ``<image>`` placeholders at the start or end of a question stay where they were (one inside a question stays
    inside ``{question}``). Rows without a question are passed on unchanged (and not copied).

    >>> from datacopilot.operators import create
    >>> op = create("rephrase_questions", templates=["Q: {question}"], keep_original=False)
    >>> ds.apply(op)[0]["conversations"][0]["value"]  # doctest: +SKIP
    '<image>\\nQ: What is on the table?'
    """

    name = "rephrase_questions"
    writes = ("conversations|messages",)

    def __init__(self, templates: list | None = None, seed: int = 0, keep_original: bool = True,
                 turns: str = "all"):
        if templates is not None:
            if isinstance(templates, str) or not isinstance(templates, (list, tuple)) or not templates:
                raise self.error(f"`templates` must be a non-empty list of strings, got {templates!r}")
            for t in templates:
                self._check_template(t)
            templates = list(templates)
        super().__init__(templates=templates, seed=check_int(self, "seed", seed),
                         keep_original=check_bool(self, "keep_original", keep_original),
                         turns=check_choice(self, "turns", turns, ("all", "first")))

    def _check_template(self, t: Any) -> None:
        if not isinstance(t, str) or ("{question}" not in t and "{question_bare}" not in t):
            raise self.error(f"`templates`: each template needs a {{question}} or {{question_bare}} slot, got {t!r}")
        try:
            t.format(**_SLOTS)
        except (KeyError, IndexError, ValueError) as e:
            raise self.error(f"`templates`: {t!r} has a slot other than {{question}}, {{question_bare}}: "
                             f"{type(e).__name__}: {e}") from None

    def _rephrase(self, row: dict, k: Keys) -> dict | None:
        conv = row.get(k.col)
        has_image = bool(k.image_col and row.get(k.image_col))
        templates = self.p["templates"] or (TEMPLATES if has_image else TEXT_TEMPLATES)
        rng = seeded(self.p["seed"], row.get("id"), [text(t, k) for t in conv or []])
        new, changed, n_user = [], False, 0
        for i, t in enumerate(conv or []):
            t = dict(t)
            if role(self, t, k, i) == "user" and (self.p["turns"] == "all" or n_user == 0):
                n_user += 1
                lead, body, trail = split_placeholders(text(t, k))
                if body.strip():
                    q = body.strip()
                    t[k.text_key] = lead + rng.choice(templates).format(question=q, question_bare=bare(q)) + trail
                    changed = True
            new.append(t)
        return {**row, k.col: new, "id": with_suffix(row.get("id"), "#rephrased")} if changed else None

    def augment(self, batch: pa.RecordBatch) -> pa.Table:
        return _with_variants(self, batch, self._rephrase)


@register
class SplitConversations(ConversationOp, Augmenter):
    """Split conversations longer than ``max_turns`` exchanges (a question and its answers) into several rows of
    at most ``max_turns`` exchanges each, in order; ids become ``id#1``, ``id#2``, ... (rows not split keep
    theirs). System turns before the first question are repeated in every part.

    Images go with the part holding their ``<image>`` placeholder (all of them with the first part when the
    placeholders do not match the images one to one). A later part left without an image gets none
    (``keep_image=False``: a text-only row), or with ``keep_image=True`` the row's first image and an
    ``<image>\\n`` placeholder at the start of its first question, so placeholders still match images.

    >>> from datacopilot.operators import create
    >>> [r["id"] for r in ds.apply(create("split_conversations", max_turns=2))]  # doctest: +SKIP
    ['a#1', 'a#2', 'b']
    """

    name = "split_conversations"
    writes = ("conversations|messages", "image|images")

    def __init__(self, max_turns: int = 4, keep_image: bool = False):
        super().__init__(max_turns=check_int(self, "max_turns", max_turns, minimum=1),
                         keep_image=check_bool(self, "keep_image", keep_image))

    def _split(self, row: dict, k: Keys) -> list[dict]:
        prefix, ex = exchanges(self, row.get(k.col), k)
        n = self.p["max_turns"]
        if len(ex) <= n:
            return [row]
        parts = [[dict(t) for e in ex[i:i + n] for t in e] for i in range(0, len(ex), n)]
        value = row.get(k.image_col) if k.image_col else None
        images = self._distribute(value, parts, prefix, k)
        out = []
        for j, (turns, imgs) in enumerate(zip(parts, images)):
            if j and self.p["keep_image"] and value and not imgs:
                imgs = [value[0]] if isinstance(value, list) else value
                turns[0][k.text_key] = IMAGE_TOKEN + "\n" + text(turns[0], k)
            new = {**row, k.col: [dict(t) for t in prefix] + turns, "id": with_suffix(row.get("id"), f"#{j + 1}")}
            if k.image_col:
                new[k.image_col] = imgs
            out.append(new)
        return out

    def _distribute(self, value, parts: list, prefix: list, k: Keys) -> list:
        """The images of each part: by placeholder when they match one to one, else all with the first part."""
        empty = no_images(value)
        if not value:
            return [empty] * len(parts)
        counts = [count_placeholders(p, k) for p in parts]
        listed = value if isinstance(value, list) else [value]
        if count_placeholders(prefix, k) or sum(counts) != len(listed):
            return [value] + [empty] * (len(parts) - 1)
        out, at = [], 0
        for c in counts:
            got = listed[at:at + c]
            out.append(got if isinstance(value, list) else (got[0] if got else None))
            at += c
        return out

    def augment(self, batch: pa.RecordBatch) -> pa.Table:
        k, rows = batch_rows(self, batch)
        return to_table([part for row in rows for part in self._split(row, k)], batch)


@register
class MergeSameImage(ConversationOp, Grouper):
    """Merge the conversations of rows on the same image(s), across the whole dataset, into one row of at most
    ``max_turns`` exchanges (None: no limit), in row order; the merged row takes the place of the group's first
    row.

    Rows merge when their images (path and bytes) and their system turns are equal; rows without an image are
    passed on. The merged id joins the ids with ``+``; ``meta`` is the first row's. ``<image>`` placeholders of
    the later rows are removed (the image appears once). A row that would take a group past ``max_turns``
    starts the next group of its image; a row longer than ``max_turns`` stays alone.

    A dataset-wide stage (a :class:`~datacopilot.operators.base.Grouper`): executors keep 16 bytes a row in
    memory (a hash of the image and system turns, the number of exchanges) while they read the rows, then read
    back the rows of a few groups at a time to merge them.
    """

    name = "merge_same_image"
    writes = ("conversations|messages",)

    def __init__(self, max_turns: int | None = None):
        super().__init__(max_turns=check_int(self, "max_turns", max_turns, minimum=1, optional=True))

    @property
    def capacity(self) -> int | None:
        return self.p["max_turns"]

    def signatures(self, batch: pa.RecordBatch) -> np.ndarray:
        return _merge.signatures(self, batch)

    def merge(self, table: pa.Table, offsets: np.ndarray) -> pa.Table:
        return _merge.merge(self, table, offsets)


@register
class ShuffleTurns(ConversationOp, Augmenter):
    """Shuffle the order of independent exchanges (a question and its answers) within each conversation.

    An exchange whose question refers back (:func:`refers_back`: starts with "it", "that", "this", "they",
    "and", ...; or says "above", "previous", "mentioned", ...) stays glued to the one before it;
    ``assume_independent=True`` shuffles every exchange. The ``<image>`` placeholders of the first question move
    to the new first question (same place: start or end). Rows with placeholders in later turns (interleaved
    images) or fewer than two movable blocks are passed on unchanged. ``keep_original=True`` adds the shuffled
    copy (id suffixed ``#shuffled``) after the row instead of replacing it. Seeded by ``seed`` and the row.
    """

    name = "shuffle_turns"
    writes = ("conversations|messages",)

    def __init__(self, seed: int = 0, keep_original: bool = False, assume_independent: bool = False):
        super().__init__(seed=check_int(self, "seed", seed), keep_original=check_bool(self, "keep_original", keep_original),
                         assume_independent=check_bool(self, "assume_independent", assume_independent))

    def _shuffle(self, row: dict, k: Keys) -> dict | None:
        prefix, ex = exchanges(self, row.get(k.col), k)
        if len(ex) < 2 or count_placeholders(prefix, k) or count_placeholders(ex[0][1:], k) \
                or any(count_placeholders(e, k) for e in ex[1:]):
            return None
        lead, body, trail = split_placeholders(text(ex[0][0], k))
        if IMAGE_TOKEN in body:
            return None
        ex = [[dict(t) for t in e] for e in ex]
        ex[0][0][k.text_key] = body
        blocks: list[list] = []
        for e in ex:
            if blocks and not self.p["assume_independent"] and refers_back(text(e[0], k)):
                blocks[-1].append(e)
            else:
                blocks.append([e])
        if len(blocks) < 2:
            return None
        rng = seeded(self.p["seed"], row.get("id"), [text(t, k) for t in row[k.col]])
        order = list(range(len(blocks)))
        rng.shuffle(order)
        if order == sorted(order):  # a shuffle that changes nothing: swap two blocks instead
            i, j = rng.sample(range(len(blocks)), 2)
            order[i], order[j] = order[j], order[i]
        turns = [dict(t) for b in order for e in blocks[b] for t in e]
        turns[0][k.text_key] = lead + text(turns[0], k) + trail
        return {**row, k.col: [dict(t) for t in prefix] + turns, "id": with_suffix(row.get("id"), "#shuffled")}

    def augment(self, batch: pa.RecordBatch) -> pa.Table:
        return _with_variants(self, batch, self._shuffle)
