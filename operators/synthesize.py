"""Synthesizing conversation turns with a model:

* ``generate_vqa``: from each row's image and/or caption, the model writes ``n`` question-answer pairs as a JSON
  array of ``{"question", "answer"}`` objects; the valid pairs are appended to the conversation as user and
  assistant turns;
* ``rewrite``: the model rewrites each assistant answer (more detailed, more concise, in another language, or
  after any instruction); the rewritten text replaces the answer when it passes the checks.

How ``generate_vqa`` accounts for its rows and pairs (counts of the operator's record):

* per row: ``generated`` (at least one pair appended), ``rejected: <reason>`` (no valid pair: the reason is the
  one of the output as a whole, ``unparsable`` or ``out of format``, or of its first invalid pair),
  ``skipped: no image`` / ``skipped: no caption`` (the row lacks what ``source`` needs); a row whose request the
  backend could not answer fails with the error;
* per pair: ``pairs`` (pairs appended), ``pair rejected: <reason>`` (pairs dropped: ``out of format``,
  ``placeholder in question``, ``placeholder in answer``, ``answer too long``, ``repeated question``), ``pairs
  beyond n`` (pairs past the first ``n`` of an output, ignored unchecked).

Invalid pairs are dropped one by one and the row keeps its valid ones; a rejected row keeps its conversation as it
was (``on_reject="keep"``) or fails with the reason (``on_reject="fail"``; the pipeline's error policy decides).

``rewrite`` counts turns: ``rewritten`` and ``rejected: <reason>`` (``empty output``, ``placeholder in output``,
``not shorter`` for the concise style, ``not longer`` for the detailed one; the answer is kept), and rows with no
assistant answer as ``skipped: no answer``. With ``on_reject="fail"`` a row with a rejected turn fails.

>>> from datacopilot.operators import create
>>> spec = {"backend": "paddle", "path": "models/tiny_vlm", "max_new_tokens": 256}
>>> ds = ds.apply(create("generate_vqa", model=spec, n=3, source="image"))            # doctest: +SKIP
>>> ds.history()[-1].counts                                                            # doctest: +SKIP
{'generated': 95, 'pairs': 270, 'pair rejected: repeated question': 12, 'rejected: unparsable': 5}
>>> ds.apply(create("rewrite", model={"backend": "paddle", "path": "models/tiny_lm"}, style="concise"))  # doctest: +SKIP
"""

from __future__ import annotations

import pyarrow as pa

from datacopilot.schemas import IMAGE_TOKEN

from ._conv import ConversationOp, conversation_column, image_counts, replace_conversations
from ._model import (ModelOp, Rejected, append_turns, check_template, exchanges, fields_of, normalized,
                     parse_json, response_text, with_image_token)
from .base import Mapper, Outcome, check_choice, check_int
from .registry import register

SOURCES = ("image", "caption", "both")
_FORMAT = """Reply with only a JSON array of {n} objects, in this exact format:
[{{"question": "...", "answer": "..."}}, ...]"""
IMAGE_PROMPT = ("Write {n} different questions about the image, each with a short answer that the image shows.\n"
                + _FORMAT)
CAPTION_PROMPT = ("An image is described as follows:\n{caption}\n\nWrite {n} different questions about the image, "
                  "each with a short answer that the description supports.\n" + _FORMAT)


def _request(content: str, images: tuple = ()):
    from datacopilot.models.backends import Request

    return Request([{"role": "user", "content": content}], images=tuple(images))


def _unplaced(text: str) -> str:
    return text.replace(IMAGE_TOKEN, " ").strip()


def check_pairs(parsed, n: int, seen: set, max_answer_chars: int, counts: dict) -> list[tuple[str, str]]:
    """The valid ``(question, answer)`` pairs among the first ``n`` items of ``parsed`` (a model's JSON), in
    order; each dropped pair is counted as ``pair rejected: <reason>`` in ``counts``. ``seen`` (normalized
    questions already asked) grows with the questions kept. :class:`Rejected` when no pair is valid: the
    reason of the output (not a list: ``out of format``; an empty list: ``no pairs``) or of its first invalid pair.

    >>> counts = {}
    >>> check_pairs([{"question": "Color?", "answer": "Red."}, {"question": "color", "answer": "Red"}], 3,
    ...             set(), 100, counts)
    [('Color?', 'Red.')]
    >>> counts
    {'pair rejected: repeated question': 1}
    """
    if not isinstance(parsed, list):
        raise Rejected("out of format")
    if not parsed:
        raise Rejected("no pairs")
    if len(parsed) > n:
        counts["pairs beyond n"] = counts.get("pairs beyond n", 0) + len(parsed) - n
    kept, first_reason = [], None
    for item in parsed[:n]:
        try:
            kept.append(_check_pair(item, seen, max_answer_chars))
        except Rejected as r:
            key = f"pair rejected: {r.reason}"
            counts[key] = counts.get(key, 0) + 1
            first_reason = first_reason or r.reason
    if not kept:
        raise Rejected(first_reason)
    return kept


def _check_pair(item, seen: set, max_answer_chars: int) -> tuple[str, str]:
    if not isinstance(item, dict):
        raise Rejected("out of format")
    q, a = item.get("question"), item.get("answer")
    if not (isinstance(q, str) and isinstance(a, str) and q.strip() and a.strip()):
        raise Rejected("out of format")
    q, a = q.strip(), a.strip()
    if IMAGE_TOKEN in q:
        raise Rejected("placeholder in question")
    if IMAGE_TOKEN in a:
        raise Rejected("placeholder in answer")
    if len(a) > max_answer_chars:
        raise Rejected("answer too long")
    key = normalized(q)
    if not key:
        raise Rejected("out of format")
    if key in seen:
        raise Rejected("repeated question")
    seen.add(key)
    return q, a


@register
class GenerateVQA(ModelOp, ConversationOp, Mapper):
    """Ask the model for ``n`` question-answer pairs about each row and append the valid ones as turns.

    ``source``: what the model is given: ``"image"`` (the row's images: a vision-language model),
    ``"caption"`` (the text of the column ``caption_field``: any text model) or ``"both"``. ``prompt`` is a
    template with the fields ``{n}`` and ``{caption}`` (``{caption}`` is required unless ``source="image"``, and
    not allowed then); by default one that asks for the exact JSON format. Pairs are checked one by one (see the
    module docstring): a pair is dropped when it is out of format, holds ``<image>``, has an answer over
    ``max_answer_chars`` characters, or repeats a question of the conversation or an earlier generated one
    (compared lower-cased, words only). More than ``n`` pairs: the first ``n`` are used. The first question
    appended gets the row's ``<image>`` placeholders when the conversation has none.

    >>> from datacopilot.operators import create
    >>> op = create("generate_vqa", model={"backend": "openai", "endpoint": "http://127.0.0.1:8000/v1"},
    ...             n=2, source="caption")
    >>> op.p["n"], op.p["caption_field"]
    (2, 'caption')
    """

    name = "generate_vqa"
    reads = ("conversations|messages",)
    writes = ("conversations|messages",)

    def __init__(self, model, n: int = 3, source: str = "image", prompt: str | None = None,
                 caption_field: str = "caption", max_answer_chars: int = 500, cache_dir: str | None = None,
                 concurrency: int = 1, on_reject: str = "keep", root: str | None = None):
        params = self._model_params(model, cache_dir, concurrency, on_reject)
        source = check_choice(self, "source", source, SOURCES)
        if prompt is not None:
            check_template(self, "prompt", prompt, ("n", "caption") if source != "image" else ("n",),
                           ("caption",) if source != "image" else ())
        if not isinstance(caption_field, str) or not caption_field:
            raise self.error(f"`caption_field` must be a column name, got {caption_field!r}")
        super().__init__(**params, n=check_int(self, "n", n, minimum=1, maximum=100), source=source, prompt=prompt,
                         caption_field=caption_field,
                         max_answer_chars=check_int(self, "max_answer_chars", max_answer_chars, minimum=1),
                         root=root)

    @property
    def template(self) -> str:
        """The prompt template in use (``prompt``, or the default for ``source``)."""
        if self.p["prompt"] is not None:
            return self.p["prompt"]
        return IMAGE_PROMPT if self.p["source"] == "image" else CAPTION_PROMPT

    def check(self, columns: list[str], schema: str | None = None) -> None:
        ConversationOp.check(self, columns, schema)
        if self.p["source"] != "caption" and not {"image", "images"} & set(columns):
            raise self.error(f"`source` {self.p['source']!r} needs column 'image' or 'images'; the dataset "
                             f"has {sorted(columns)}")
        if self.p["source"] != "image" and self.p["caption_field"] not in columns:
            raise self.error(f"`source` {self.p['source']!r} needs the column `caption_field` "
                             f"{self.p['caption_field']!r}; the dataset has {sorted(columns)}")

    def map_batch(self, batch: pa.RecordBatch):
        source, n_rows = self.p["source"], batch.num_rows
        use_image, use_caption = source != "caption", source != "image"
        n_images = image_counts(batch)
        images = self.images(batch) if use_image else [[] for _ in range(n_rows)]
        captions = (batch.column(self.p["caption_field"]).to_pylist() if use_caption
                    else [None] * n_rows)
        outcomes, todo = [None] * n_rows, []
        for i in range(n_rows):
            caption = captions[i]
            if use_image and not images[i]:
                outcomes[i] = "skipped: no image"
            elif use_caption and not (isinstance(caption, str) and caption.strip()):
                outcomes[i] = "skipped: no caption"
            elif any(isinstance(b, BaseException) for b in images[i]):
                outcomes[i] = next(b for b in images[i] if isinstance(b, BaseException))
            else:
                todo.append(i)
        fields = {"n": self.p["n"]}
        requests = []
        for i in todo:
            text = self.template.format(**fields, **({"caption": captions[i].strip()} if use_caption else {}))
            requests.append(_request(with_image_token(text, len(images[i])), images[i]))
        answers = self.ask(requests)
        convs = exchanges(self, batch)
        new_turns: list[list] = [[] for _ in range(n_rows)]
        counts: dict = {}
        for i, resp in zip(todo, answers):
            try:
                parsed = parse_json(response_text(resp))
                seen = {normalized(_unplaced(t)) for role, t in convs[i] if role == "user"}
                pairs = check_pairs(parsed, self.p["n"], seen, self.p["max_answer_chars"], counts)
            except Rejected as r:
                outcomes[i] = r
                continue
            except Exception as e:  # the backend's error: the row fails
                outcomes[i] = e
                continue
            outcomes[i] = "generated"
            counts["pairs"] = counts.get("pairs", 0) + len(pairs)
            placed = any(IMAGE_TOKEN in t for _, t in convs[i])
            for k, (q, a) in enumerate(pairs):
                if k == 0 and not placed:
                    q = with_image_token(q, int(n_images[i]))
                new_turns[i] += [("user", q), ("assistant", a)]
        self.settle(outcomes, counts)
        return Outcome(append_turns(self, batch, new_turns), counts)


STYLES = {
    "detailed": "Rewrite the answer below so that it is more detailed: keep every fact it states, add relevant "
                "detail and explanation, and do not contradict it.",
    "concise": "Rewrite the answer below so that it is shorter and more concise: keep its key facts and drop "
               "everything else.",
    "translate": "Translate the answer below into {language}. Keep its meaning and formatting.",
}
REWRITE_TEMPLATE = """{instruction}

Question: {question}
Answer: {answer}

Reply with the rewritten answer only."""


def check_rewrite(new: str, old: str, style: str | None) -> str:
    """``new`` if it can replace the answer ``old`` under ``style``, else :class:`Rejected` with the reason.

    >>> check_rewrite("Red.", "It is red, like a tomato.", "concise")
    'Red.'
    >>> try:
    ...     check_rewrite("It is red.", "Red.", "concise")
    ... except Rejected as r:
    ...     print(r.reason)
    not shorter
    """
    if not new:
        raise Rejected("empty output")
    if new.count(IMAGE_TOKEN) > old.count(IMAGE_TOKEN):
        raise Rejected("placeholder in output")
    if style == "concise" and len(new) >= len(old):
        raise Rejected("not shorter")
    if style == "detailed" and len(new) <= len(old):
        raise Rejected("not longer")
    return new


@register
class Rewrite(ModelOp, ConversationOp, Mapper):
    """Rewrite every assistant answer with a text model: one request per answer, the rewritten text replaces it.

    ``style``: ``"detailed"`` (the output must be longer), ``"concise"`` (it must be shorter) or ``"translate"``
    (into ``language``); ``instruction`` replaces the style's instruction text (it may use ``{language}``), and
    either is enough. ``template`` is the request, with the fields ``{instruction}``, ``{question}`` (the user
    turn before the answer, ``""`` when there is none) and ``{answer}`` (required); ``<image>`` placeholders are
    left out of the request. A rewrite that is empty, adds an ``<image>`` placeholder or fails the style's length
    check is rejected and the answer kept (see the module docstring for the counts).

    >>> from datacopilot.operators import create
    >>> op = create("rewrite", model={"backend": "openai", "endpoint": "http://127.0.0.1:8000/v1"},
    ...             style="translate", language="French")
    >>> op.instruction
    'Translate the answer below into French. Keep its meaning and formatting.'
    """

    name = "rewrite"
    writes = ("conversations|messages",)
    uses_root = False  # text only

    def __init__(self, model, style: str | None = None, instruction: str | None = None, language: str | None = None,
                 template: str = REWRITE_TEMPLATE, cache_dir: str | None = None, concurrency: int = 1,
                 on_reject: str = "keep"):
        params = self._model_params(model, cache_dir, concurrency, on_reject)
        if style is None and instruction is None:
            raise self.error(f"give `style` (one of {', '.join(repr(s) for s in STYLES)}) or `instruction`")
        if style is not None:
            check_choice(self, "style", style, tuple(STYLES))
        text = instruction if instruction is not None else STYLES[style]
        if instruction is not None:
            check_template(self, "instruction", instruction, ("language",))
        needs_language = "language" in fields_of(text)
        if needs_language and not (isinstance(language, str) and language.strip()):
            raise self.error(f"`language` must name the language to translate into (e.g. 'French'), got "
                             f"{language!r}")
        if language is not None and not needs_language:
            raise self.error(f"`language` ({language!r}) is only used by style 'translate' or an instruction "
                             f"with {{language}}")
        check_template(self, "template", template, ("instruction", "question", "answer"), ("answer",))
        super().__init__(**params, style=style, instruction=instruction, language=language, template=template)

    @property
    def instruction(self) -> str:
        """The instruction text sent (``instruction`` or the style's), with ``{language}`` filled in."""
        text = self.p["instruction"] if self.p["instruction"] is not None else STYLES[self.p["style"]]
        return text.format(language=self.p["language"]) if "language" in fields_of(text) else text

    def map_batch(self, batch: pa.RecordBatch):
        convs = exchanges(self, batch)
        jobs, requests, outcomes, counts = [], [], [None] * batch.num_rows, {}
        instruction = self.instruction
        for i, conv in enumerate(convs):
            question, found = "", False
            for k, (role, text) in enumerate(conv):
                if role == "user":
                    question = _unplaced(text)
                elif role == "assistant" and text.strip():
                    found = True
                    jobs.append((i, k, text))
                    requests.append(_request(self.p["template"].format(
                        instruction=instruction, question=question, answer=_unplaced(text))))
            if not found:
                outcomes[i] = "skipped: no answer"
                counts["skipped: no answer"] = counts.get("skipped: no answer", 0) + 1
        new: dict = {}
        for (i, k, old), resp in zip(jobs, self.ask(requests)):
            try:
                new[(i, k)] = check_rewrite(response_text(resp), old, self.p["style"])
                counts["rewritten"] = counts.get("rewritten", 0) + 1
            except Rejected as r:
                key = f"rejected: {r.reason}"
                counts[key] = counts.get(key, 0) + 1
                if outcomes[i] is None:
                    outcomes[i] = r
            except Exception as e:  # the backend's error: the row fails
                if outcomes[i] is None or isinstance(outcomes[i], Rejected):
                    outcomes[i] = e
        self.settle(outcomes, {})  # counts are per turn (above); settle only raises for the rows that fail
        if not new:
            return Outcome(pa.Table.from_batches([batch]), counts)
        col, _, text_key = conversation_column(self, batch)
        rows = batch.column(col).to_pylist()
        for (i, k), text in new.items():
            rows[i][k][text_key] = text
        return Outcome(replace_conversations(self, batch, rows), counts)
