"""Judging and tagging samples with a model, and keeping the rare skills:

* ``judge_filter``: a model scores each sample against a rubric (1-5); the score is stored in a column of the
  rows kept, and rows under ``min_score`` are dropped with the reason ``"judge score < {min_score}"``;
* ``tag``: a model tags each sample with the skills and topics it exercises (as PaddleMIX DataCopilot's
  PP-InsCapTagger does), written to a ``list<string>`` column;
* ``filter_rare_tags``: dataset-wide, no model: drops the samples whose tags are all among the most common ones,
  keeping those with at least one rarer skill (DataCopilot kept about half of LLaVA-665k this way at equal
  scores). Only each row's tags are held in memory while the rows stream past.

The conversation is shown to the model as ``User: ...`` / ``Assistant: ...`` lines (``<image>`` placeholders
removed); the row's images go along with one ``<image>`` placeholder each in front of the prompt when
``with_images`` says so (by default: when the row has images and the model can take them, i.e. any ``openai``
endpoint, or a local ``paddle`` model directory holding a vision-language model).

>>> parse_score('Sure. {"score": 4}'), parse_score("I would rate it 2/5."), parse_score("good")
(4, 2, None)
>>> parse_tags('["OCR", " Counting", "ocr"]', max_tags=5)
['ocr', 'counting']
>>> from datacopilot.operators import create
>>> spec = {"backend": "openai", "endpoint": "http://127.0.0.1:8000/v1", "model": "judge"}
>>> ds.apply([create("tag", model=spec), create("filter_rare_tags")])                     # doctest: +SKIP
>>> ds.apply(create("judge_filter", model=spec, min_score=4)).history()[-1].counts       # doctest: +SKIP
{'scored': 97, 'rejected: unparsable score': 3}
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter

import numpy as np
import pyarrow as pa

from datacopilot.errors import OperatorError
from datacopilot.schemas import IMAGE_TOKEN

from ._conv import ConversationOp
from ._model import (ModelOp, Rejected, check_template, exchanges, fields_of, parse_json, response_text,
                     with_image_token)
from .base import Deduplicator, Filter, Mapper, Outcome, check_choice, check_float, check_int
from .registry import register

_LABELS = {"user": "User", "assistant": "Assistant", "system": "System"}
UNPARSABLE = ("drop", "keep", "fail")

DEFAULT_RUBRIC = """\
Rate how useful this sample is for teaching a vision-language assistant, from 1 to 5:
5: a clear instruction and an answer that is correct, complete, specific to the image and well written;
4: correct and helpful, with small gaps in detail or style;
3: acceptable but generic, shallow or partly vague;
2: partly wrong, off-topic, not grounded in the image, or badly formatted;
1: wrong, harmful, empty or meaningless."""

DEFAULT_TEMPLATE = """\
You review training data for a vision-language assistant.
{rubric}

Conversation:
{conversation}

Answer with JSON only: {{"score": <an integer from 1 to 5>}}"""

DEFAULT_TAG_PROMPT = """\
Which skills and topics does this sample teach (for example "counting", "ocr", "color recognition", \
"spatial reasoning")? Answer with a JSON list of at most {max_tags} short lowercase tags.

{conversation}"""


# -- parsing ---------------------------------------------------------------------------------------------------
_SCORE_KEY = re.compile(r"""["']?\bscore["']?\s*[:=]\s*["']?\s*(-?\d+(?:\.\d+)?)""", re.IGNORECASE)
_RANGE = re.compile(r"\d\s*(?:-|–|to)\s*\d")
_DIGIT = re.compile(r"(?<![\w.\-])([1-5])(?!\w|\.\d)")


def parse_score(text: str) -> int | None:
    """The 1-5 score in a judge's output: the value of a ``"score"`` key (``{"score": 4}``; a value that is not
    an integer from 1 to 5 makes the output unparsable), else the first standalone digit 1-5 outside ranges such
    as "1-5" or "1 to 5" (``"4/5"`` gives 4; ``"10"``, ``"4.5"`` and ``"5th"`` give nothing); None otherwise.

    >>> parse_score('```json\\n{"score": "5", "reason": "clear"}\\n```'), parse_score('{"score": 7}')
    (5, None)
    >>> parse_score("On a scale of 1-5 this is a 3."), parse_score("Score: 4.5")
    (3, None)
    """
    m = _SCORE_KEY.search(text)
    if m:
        value = float(m.group(1))
        return int(value) if value.is_integer() and 1 <= value <= 5 else None
    m = _DIGIT.search(_RANGE.sub(" ", text))
    return int(m.group(1)) if m else None


_LEAD = re.compile(r"^(?:[-*•]+|\d+[.)])\s*")
_LABEL = re.compile(r"^\s*tags?\s*:\s*", re.IGNORECASE)
MAX_TAG_CHARS = 64


def normalize_tag(tag: str) -> str:
    """A tag in its canonical form: lower case, single spaces (control characters count as spaces), no bullet,
    numbering, quotes or end punctuation.

    >>> normalize_tag('  2. "Spatial   Reasoning".')
    'spatial reasoning'
    """
    tag = re.sub(r"\s+", " ", "".join(c if c.isprintable() else " " for c in tag)).strip().lower()
    return _LEAD.sub("", tag).strip(" \"'`[](){}.,:;!?")


def parse_tags(text: str, max_tags: int) -> list[str]:
    """The tags of a tagger's output: the strings of a JSON list (or of ``{"tags": [...]}``; other JSON gives
    none), else, when the output holds no JSON, the pieces between commas, semicolons and line breaks;
    normalized (:func:`normalize_tag`), without empty ones, ones longer than 64 characters (a sentence, not a
    tag) or ones holding ``<image>``, deduplicated in order, at most ``max_tags``.

    >>> parse_tags("Tags: Counting, OCR; color\\n- OCR", max_tags=2)
    ['counting', 'ocr']
    """
    try:
        value = parse_json(text)
    except Rejected:
        value = None
    if value is None:
        pieces = re.split(r"[,;\n]", _LABEL.sub("", text))
    else:
        if isinstance(value, dict):
            value = value.get("tags")
        pieces = [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
    out: list[str] = []
    for piece in pieces:
        tag = normalize_tag(piece)
        if tag and len(tag) <= MAX_TAG_CHARS and IMAGE_TOKEN not in tag and tag not in out:
            out.append(tag)
    return out[:max_tags]


def render(turns: list[tuple[str, str]]) -> str:
    """Canonical turns as ``User: ...`` / ``Assistant: ...`` lines, ``<image>`` placeholders removed.

    >>> render([("user", "<image>\\nWhat is it?"), ("assistant", "A cat.")])
    'User: What is it?\\nAssistant: A cat.'
    """
    return "\n".join(f"{_LABELS.get(role, role.capitalize())}: {_strip_images(text)}" for role, text in turns)


def _strip_images(text: str) -> str:
    return text.replace(IMAGE_TOKEN + "\n", "").replace(IMAGE_TOKEN, "").strip()


# -- the model operators ---------------------------------------------------------------------------------------
class _SampleModelOp(ConversationOp, ModelOp):
    """What ``judge_filter`` and ``tag`` share: a prompt per row from its conversation, the images sent or not,
    one backend call per batch, and rows with nothing to look at skipped."""

    def _with_images(self, with_images, model: dict) -> bool | None:
        if with_images is not None and not isinstance(with_images, bool):
            raise self.error(f"`with_images` must be true, false or null (send them when the model can take "
                             f"images), got {with_images!r}")
        if with_images and not self._model_sees(model):
            raise self.error(f"`with_images` is true but {model['path']!r} is a text-only model (no "
                             f"vlm_config.json)")
        return with_images

    @staticmethod
    def _model_sees(model: dict) -> bool:
        """Whether the model takes images: any openai endpoint, or a paddle directory holding a VLM."""
        return model["backend"] != "paddle" or os.path.isfile(os.path.join(model["path"], "vlm_config.json"))

    def _check_template(self, name: str, template, allowed: tuple[str, ...]) -> str:
        check_template(self, name, template, allowed)
        if not {"conversation", "instruction"} & set(fields_of(template)):
            raise self.error(f"`{name}` must contain {{conversation}}" +
                             (" or {instruction}" if "instruction" in allowed else "") + f": {template!r}")
        if IMAGE_TOKEN in template:
            raise self.error(f"`{name}` must not contain {IMAGE_TOKEN!r}: the operator puts one in front of the "
                             f"prompt per image it sends")
        return template

    def _ask_rows(self, batch: pa.RecordBatch, prompt) -> tuple[list[int], list, list]:
        """(rows asked, their responses, one outcome per row) with ``prompt(turns) -> text``; rows without
        turns are ``"skipped: no conversation"``, rows whose image cannot be read hold the error."""
        from datacopilot.models.backends import Request

        convs = exchanges(self, batch)
        send = self.p["with_images"]
        if send is None:
            send = self._model_sees(self.p["model"])
        images = self.images(batch) if send else [[] for _ in convs]
        outcomes: list = [None] * batch.num_rows
        todo, requests = [], []
        for i, turns in enumerate(convs):
            bad = next((b for b in images[i] if isinstance(b, BaseException)), None)
            if not any(_strip_images(t) for _, t in turns):
                outcomes[i] = "skipped: no conversation"
            elif bad is not None:
                outcomes[i] = bad
            else:
                text = with_image_token(prompt(turns), len(images[i]))
                requests.append(Request([{"role": "user", "content": text}], images=tuple(images[i])))
                todo.append(i)
        return todo, self.ask(requests), outcomes


@register
class JudgeFilter(_SampleModelOp, Filter):
    """Score each sample with a model against ``rubric`` (1-5) and drop the rows under ``min_score``.

    The prompt is ``template`` with ``{rubric}`` and ``{conversation}`` filled in (the conversation as
    ``User: ...`` / ``Assistant: ...`` lines); the model should answer ``{"score": n}`` (see :func:`parse_score`).
    The score goes to the int64 column ``field`` of the rows kept. ``with_images``: send the row's images (true),
    never (false), or when the model can take them (null, the default).

    An output without a score (counted ``rejected: unparsable score``) is, per ``on_unparsable``: dropped with
    the reason ``"judge: unparsable score"`` (``"drop"``, default), kept with a null score (``"keep"``), or
    failed (``"fail"``: the pipeline's ``on_error`` decides: raise, skip or quarantine). Rows without turns are
    kept with a null score (``skipped: no conversation``); a row the backend cannot answer, or whose image cannot
    be read, fails. Counts: ``scored``, ``rejected: unparsable score``, ``skipped: no conversation``.

    >>> from datacopilot.operators import create
    >>> op = create("judge_filter", model={"backend": "paddle", "path": "models/vlm"}, min_score=4)  # doctest: +SKIP
    >>> ds.apply(op)[0]["judge_score"]                                                               # doctest: +SKIP
    5
    """

    name = "judge_filter"
    writes = ("judge_score",)

    def __init__(self, model, rubric: str = DEFAULT_RUBRIC, template: str = DEFAULT_TEMPLATE, min_score: float = 3,
                 field: str = "judge_score", with_images: bool | None = None, on_unparsable: str = "drop",
                 cache_dir: str | None = None, concurrency: int = 1, root: str | None = None):
        params = self._model_params(model, cache_dir, concurrency)  # unusable outputs: on_unparsable
        if not isinstance(rubric, str) or not rubric.strip() or IMAGE_TOKEN in rubric:
            raise self.error(f"`rubric` must be a non-empty string without {IMAGE_TOKEN!r}, got {rubric!r}")
        self._check_template("template", template, ("rubric", "conversation"))
        score = check_float(self, "min_score", min_score, 1, 5)
        if not isinstance(field, str) or not field:
            raise self.error(f"`field` must be a column name, got {field!r}")
        super().__init__(**params, rubric=rubric, template=template,
                         min_score=int(score) if score.is_integer() else score, field=field,
                         with_images=self._with_images(with_images, params["model"]),
                         on_unparsable=check_choice(self, "on_unparsable", on_unparsable, UNPARSABLE), root=root)
        self.writes = (field,)

    def keep(self, batch: pa.RecordBatch) -> Outcome:
        p = self.p
        todo, answers, outcomes = self._ask_rows(
            batch, lambda turns: p["template"].format(rubric=p["rubric"], conversation=render(turns)))
        keep = np.ones(batch.num_rows, dtype=bool)
        reasons = np.full(batch.num_rows, None, dtype=object)
        scores: list = [None] * batch.num_rows
        for i, resp in zip(todo, answers):
            try:
                text = response_text(resp)
            except Exception as e:  # the backend's error: the row fails
                outcomes[i] = e
                continue
            score = parse_score(text)
            if score is None:
                if p["on_unparsable"] == "fail":
                    outcomes[i] = OperatorError(self.label, None, f"rejected: unparsable score in {text[:200]!r}")
                    continue
                outcomes[i] = "rejected: unparsable score"
                if p["on_unparsable"] == "drop":
                    keep[i], reasons[i] = False, "judge: unparsable score"
                continue
            outcomes[i], scores[i] = "scored", score
            if score < p["min_score"]:
                keep[i], reasons[i] = False, f"judge score < {p['min_score']}"
        counts: dict = {}
        self.settle(outcomes, counts)
        return Outcome((keep, reasons), counts, columns=pa.table({p["field"]: pa.array(scores, pa.int64())}))


@register
class Tag(_SampleModelOp, Mapper):
    """Tag each sample with the skills and topics it exercises (like PaddleMIX's PP-InsCapTagger).

    The prompt is ``prompt`` with ``{conversation}`` (all turns as ``User: ...`` / ``Assistant: ...`` lines),
    ``{instruction}`` (the user turns only) and ``{max_tags}`` filled in; the output is read as a JSON list of
    strings or as comma-separated tags (see :func:`parse_tags`): lower case, stripped, deduplicated, at most
    ``max_tags``, written to the ``list<string>`` column ``field``. ``with_images`` as for ``judge_filter``.

    An output without tags is counted ``rejected: no tags``: with ``on_reject="keep"`` (default) the row keeps
    its old value of ``field`` (null when it had none), with ``"fail"`` it fails. Rows without turns are
    ``skipped: no conversation``. Counts: ``tagged``, ``rejected: no tags``, ``skipped: no conversation``.

    >>> from datacopilot.operators import create
    >>> ds.apply(create("tag", model={"backend": "paddle", "path": "models/tiny_vlm"}))[0]["tags"]  # doctest: +SKIP
    ['color recognition', 'counting']
    """

    name = "tag"
    writes = ("tags",)

    def __init__(self, model, prompt: str = DEFAULT_TAG_PROMPT, max_tags: int = 5, field: str = "tags",
                 with_images: bool | None = None, cache_dir: str | None = None, concurrency: int = 1,
                 on_reject: str = "keep", root: str | None = None):
        params = self._model_params(model, cache_dir, concurrency, on_reject)
        self._check_template("prompt", prompt, ("conversation", "instruction", "max_tags"))
        if not isinstance(field, str) or not field:
            raise self.error(f"`field` must be a column name, got {field!r}")
        super().__init__(**params, prompt=prompt, max_tags=check_int(self, "max_tags", max_tags, 1, 100),
                         field=field, with_images=self._with_images(with_images, params["model"]), root=root)
        self.writes = (field,)

    def _prompt(self, turns: list[tuple[str, str]]) -> str:
        instruction = "\n".join(_strip_images(t) for role, t in turns if role == "user")
        return self.p["prompt"].format(conversation=render(turns), instruction=instruction,
                                       max_tags=self.p["max_tags"])

    def map_batch(self, batch: pa.RecordBatch) -> Outcome:
        field = self.p["field"]
        todo, answers, outcomes = self._ask_rows(batch, self._prompt)
        old = batch.column(field) if field in batch.schema.names else None
        tags = (old.to_pylist() if old is not None and pa.types.is_list(old.type) else [None] * batch.num_rows)
        for i, resp in zip(todo, answers):
            try:
                found = parse_tags(response_text(resp), self.p["max_tags"])
            except Exception as e:  # the backend's error: the row fails
                outcomes[i] = e
                continue
            if found:
                outcomes[i], tags[i] = "tagged", found
            else:
                outcomes[i] = Rejected("no tags")
        counts: dict = {}
        self.settle(outcomes, counts)
        table = pa.Table.from_batches([batch])
        column = pa.array([[str(t) for t in v] if v is not None else None for v in tags], pa.list_(pa.string()))
        i = table.schema.get_field_index(field)
        return Outcome(table.set_column(i, field, column) if i >= 0 else table.append_column(field, column), counts)


# -- the dataset-wide filter -----------------------------------------------------------------------------------
@register
class FilterRareTags(Deduplicator):
    """Drop the samples whose tags are all among the most common ones; keep those with at least one rarer tag.

    Tags are counted once per row over the whole dataset and ranked by frequency (ties by name). The common tags
    are, by exactly one of:

    * ``top_k``: the ``top_k`` most frequent tags;
    * ``common_share``: the tags present in at least this share of the rows that have tags;
    * ``drop_share`` (default 0.5 when none is given): the most frequent tags, as many as can be taken while
      the rows holding only them stay at most this share of all rows: about half of a skewed dataset is dropped,
      as in DataCopilot's recipe (less when one more tag would cross the line).

    Rows whose ``field`` is null or empty are kept (no tag tells them apart). Dropped rows are counted as
    ``"only common tags"``. Only the rows' tags are kept in memory; it runs as a dataset-wide stage on every
    executor. :meth:`common_tags` tells which tags a set of signatures deems common.

    >>> import datacopilot as dc
    >>> from datacopilot.operators import create
    >>> ds = dc.MMDataset.from_rows([{"id": str(i), "tags": t} for i, t in
    ...                              enumerate([["caption"], ["caption"], ["caption", "ocr"], ["color"], None])])
    >>> [r["id"] for r in ds.apply(create("filter_rare_tags", top_k=1))]
    ['2', '3', '4']
    """

    name = "filter_rare_tags"
    reads = ("tags",)
    near = True

    def __init__(self, field: str = "tags", top_k: int | None = None, common_share: float | None = None,
                 drop_share: float | None = None):
        if not isinstance(field, str) or not field:
            raise self.error(f"`field` must be a column name, got {field!r}")
        given = [n for n, v in (("top_k", top_k), ("common_share", common_share), ("drop_share", drop_share))
                 if v is not None]
        if len(given) > 1:
            raise self.error(f"give one of `top_k`, `common_share` and `drop_share`, got {' and '.join(given)}")
        if not given:
            drop_share = 0.5
        super().__init__(field=field, top_k=check_int(self, "top_k", top_k, 1, optional=True),
                         common_share=self._share(common_share),
                         drop_share=check_float(self, "drop_share", drop_share, 0, 1, optional=True))
        self.reads = (field,)

    def _share(self, value) -> float | None:
        share = check_float(self, "common_share", value, 0, 1, optional=True)
        if share == 0:
            raise self.error("`common_share` must be > 0 (0 would make every tag common), got 0")
        return share

    @property
    def drop_reason(self) -> str:
        return "only common tags"

    def signatures(self, batch: pa.RecordBatch) -> np.ndarray:
        """Each row's set of tags as a sorted tuple of lower-cased strings (None for a row without tags)."""
        field = self.p["field"]
        col = batch.column(field)
        t = col.type
        if not ((pa.types.is_list(t) or pa.types.is_large_list(t)) and
                (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type))):
            raise self.error(f"column {field!r} must be a list of strings (as `tag` writes), got {t}")
        out = np.empty(batch.num_rows, dtype=object)
        for i, tags in enumerate(col.to_pylist()):
            found = {sys.intern(s.strip().lower()) for s in tags or () if s and s.strip()}
            out[i] = tuple(sorted(found)) or None
        return out

    def _ranks(self, sigs) -> tuple[list[str], np.ndarray, Counter]:
        """(tags by frequency, each row's worst rank or -1 for untagged rows, counts per tag)."""
        counts = Counter(tag for s in sigs if s for tag in s)
        order = sorted(counts, key=lambda tag: (-counts[tag], tag))
        rank = {tag: r for r, tag in enumerate(order)}
        worst = np.fromiter((max(rank[tag] for tag in s) if s else -1 for s in sigs), dtype=np.int64,
                            count=len(sigs))
        return order, worst, counts

    def _k(self, order: list[str], worst: np.ndarray, counts: Counter) -> int:
        p, tagged = self.p, worst >= 0
        if p["top_k"] is not None:
            return min(p["top_k"], len(order))
        if p["common_share"] is not None:
            need = p["common_share"] * int(tagged.sum())
            return sum(1 for tag in order if counts[tag] >= need)
        only = np.cumsum(np.bincount(worst[tagged], minlength=len(order)))  # rows dropped with k = j + 1
        return int(np.searchsorted(only, p["drop_share"] * len(worst), side="right"))

    def common_tags(self, sigs) -> list[str]:
        """The tags deemed common over ``sigs`` (signatures of all rows), most frequent first."""
        order, worst, counts = self._ranks(sigs)
        return order[:self._k(order, worst, counts)]

    def duplicates(self, sigs) -> np.ndarray:
        order, worst, counts = self._ranks(sigs)
        return (worst >= 0) & (worst < self._k(order, worst, counts))
