"""What the model operators share: the model parameter (a :class:`ModelSpec`, kept as a dict so pipelines stay
data), one backend per worker, prompt templates, the images of a row, structured-output parsing, and writing
turns back in the batch's own conversation format.

How a model operator accounts for its rows (see ``operators.base.Outcome``):

* ``generated``: rows the model produced something usable for;
* ``rejected: <reason>``: rows whose output was unusable (does not parse, repeats a question, out of format).
  With ``on_reject="keep"`` (default) such a row goes on unchanged; with ``on_reject="fail"`` it fails with the
  reason, and the pipeline's error policy (raise, skip, quarantine) decides what happens to it;
* ``skipped: <reason>``: rows with nothing to work on (no image for a captioner), passed through unchanged;
* a row whose request the backend could not answer (an unreachable endpoint after retries, an unreadable image)
  fails with the backend's error.

A batch makes one call to the backend for all its requests. When a row fails, the executor retries the batch row
by row to single out the rows that fail; the operator remembers the last responses, so the retry makes no model
calls: a request's retry budget (``max_retries``) is spent once, in the batch's call. Answers are remembered across
batches; errors only for the row-by-row retry of the batch that got them (the next batch, or a rerun, asks
again). ``cache_dir`` adds an on-disk response cache, so a rerun or a resumed pipeline never pays twice: after a
failure (an endpoint that went away), a rerun asks only for the rows that have no answer yet.

>>> fields_of("Q: {question} A: {answer}")
['question', 'answer']
>>> parse_json('Sure! ```json\\n[{"question": "Q?", "answer": "A."}]\\n```')
[{'question': 'Q?', 'answer': 'A.'}]
"""

from __future__ import annotations

import json
import re
import string
import threading
from collections import OrderedDict
from typing import Any

import pyarrow as pa

from datacopilot.errors import DataCopilotError, OperatorError
from datacopilot.schemas import IMAGE_TOKEN

from ._conv import ROLES, conversation_column
from .base import Operator, check_choice, check_int
from .image_filters import row_images

REJECT_POLICIES = ("keep", "fail")
MEMO_SIZE = 8192
_BATCH = threading.local()  # .errors: {request digest: error response} of the batch this thread processes


class Rejected(Exception):
    """A model output that cannot be used; ``reason`` is counted as ``rejected: <reason>``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def fields_of(template: str) -> list[str]:
    """The ``{field}`` names of a ``str.format`` template, in order (``{{`` escapes a brace)."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]


def check_template(op: Operator, name: str, template: Any, allowed: tuple[str, ...],
                   required: tuple[str, ...] = ()) -> str:
    """``template`` if it is a string whose fields are among ``allowed`` and include ``required``."""
    if not isinstance(template, str) or not template.strip():
        raise op.error(f"`{name}` must be a non-empty template string, got {template!r}")
    try:
        fields = fields_of(template)
    except ValueError as e:
        raise op.error(f"`{name}` is not a valid template ({e}): {template!r}") from None
    bad = [f for f in fields if f not in allowed]
    if bad:
        raise op.error(f"`{name}` uses unknown field(s) {bad}; it may use {list(allowed)}")
    missing = [f for f in required if f not in fields]
    if missing:
        raise op.error(f"`{name}` must contain {', '.join('{' + f + '}' for f in missing)}: {template!r}")
    return template


def parse_json(text: str) -> Any:
    """The first JSON array or object in a model's output (code fences and chatter around it are ignored);
    :class:`Rejected` ("unparsable") when there is none."""
    body = re.sub(r"```(?:json)?", " ", text)
    for opener, closer in (("[", "]"), ("{", "}")):
        start = body.find(opener)
        end = body.rfind(closer)
        while start != -1 and end > start:
            try:
                return json.loads(body[start:end + 1])
            except ValueError:
                end = body.rfind(closer, start, end)
    raise Rejected("unparsable")


def normalized(text: str) -> str:
    """Lower-case words only: how questions are compared for repeats."""
    return " ".join(re.findall(r"\w+", text.lower()))


class ModelOp:
    """Mixin of the model operators (listed before the kind's base class): ``model`` (a ModelSpec, or a dict of
    its fields), ``cache_dir`` (an on-disk response cache), ``concurrency`` (actors per Ray pool) and
    ``on_reject``. The spec is checked at construction (model directory, backend installed, endpoint form)."""

    uses_root = True

    def _model_params(self, model, cache_dir, concurrency, on_reject=None) -> dict:
        from datacopilot.models.backends import ModelSpec

        if isinstance(model, dict):
            try:
                model = ModelSpec(**model)
            except TypeError as e:
                raise self.error(f"`model`: {e}") from None
        if not isinstance(model, ModelSpec):
            raise self.error(f"`model` must be a ModelSpec or a dict of its fields, e.g. {{'backend': 'paddle', "
                             f"'path': 'models/tiny_vlm'}}, got {model!r}")
        try:
            model.check()
        except DataCopilotError as e:
            raise self.error(f"`model`: {e}") from None
        if cache_dir is not None and not isinstance(cache_dir, str):
            raise self.error(f"`cache_dir` must be a directory path or None, got {cache_dir!r}")
        params = {"model": model.to_dict(), "cache_dir": cache_dir,
                  "concurrency": check_int(self, "concurrency", concurrency, minimum=1)}
        if on_reject is not None:  # None: the operator makes no output to reject (a scorer)
            params["on_reject"] = check_choice(self, "on_reject", on_reject, REJECT_POLICIES)
        return params

    @property
    def spec(self):
        from datacopilot.models.backends import ModelSpec

        return ModelSpec(**self.p["model"])

    def resources(self) -> dict:
        spec = self.spec
        return {"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus, "concurrency": self.p["concurrency"]}

    def setup(self) -> None:
        from datacopilot.models.backends import shared_backend

        self.backend = shared_backend(self.spec, self.p.get("cache_dir"))
        self._memo: OrderedDict = OrderedDict()
        self._memo_lock = threading.Lock()

    def process(self, table: pa.Table, policy: str = "raise"):
        """The executor's call (the hook over the batch, then row by row if it raised), with the batch's errors
        remembered for its row-by-row retry only."""
        outer = getattr(_BATCH, "errors", None)
        _BATCH.errors = {}
        try:
            return super().process(table, policy)
        finally:
            _BATCH.errors = outer

    def ask(self, requests: list) -> list:
        """The backend's responses to ``requests`` (in order). Answers remembered from the last batches are
        reused, and so are the errors the backend gave in the batch being processed (it has spent the requests'
        retries already), so a row-by-row retry makes no new calls."""
        keys = [r.digest() for r in requests]
        errors = getattr(_BATCH, "errors", None)
        with self._memo_lock:
            have = {k: self._memo[k] for k in keys if k in self._memo}
        if errors:
            have.update((k, errors[k]) for k in keys if k not in have and k in errors)
        todo = {k: r for k, r in zip(keys, requests) if k not in have}
        if todo:
            answers = self.backend.generate(list(todo.values()))
            with self._memo_lock:
                for k, resp in zip(todo, answers):
                    if resp.finish_reason != "error":
                        self._memo[k] = resp
                    elif errors is not None:
                        errors[k] = resp
                    have[k] = resp
                while len(self._memo) > MEMO_SIZE:
                    self._memo.popitem(last=False)
        return [have[k] for k in keys]

    def images(self, batch: pa.RecordBatch) -> list[list]:
        """Each row's images as encoded bytes (a row whose image cannot be read holds the OSError instead)."""
        from datacopilot.schemas.image import read_image_bytes

        out = []
        for values in row_images(batch):
            row = []
            for v in values:
                try:
                    row.append(read_image_bytes(v, self.p.get("root")))
                except (OSError, ValueError, DataCopilotError) as e:
                    row.append(OSError(f"image {v.get('path') if isinstance(v, dict) else v!r}: {e}"))
            out.append(row)
        return out

    def settle(self, outcomes: list, counts: dict) -> None:
        """Count each row's outcome (None: skipped silently; a str: counted as is; Rejected; an exception) and
        raise for the first row that must fail, so the executor retries row by row and fails only that row."""
        for i, o in enumerate(outcomes):
            if isinstance(o, Rejected):
                key = f"rejected: {o.reason}"
                counts[key] = counts.get(key, 0) + 1
            elif isinstance(o, str):
                counts[o] = counts.get(o, 0) + 1
        for i, o in enumerate(outcomes):
            if isinstance(o, Rejected) and self.p.get("on_reject") == "fail":
                raise OperatorError(self.label, None, f"rejected: {o.reason}")
            if isinstance(o, BaseException) and not isinstance(o, Rejected):
                raise o


def response_text(resp) -> str:
    """A response's text, or the backend's error raised as an OperatorError-worthy exception."""
    if resp.finish_reason == "error":
        raise DataCopilotError(f"model call failed: {resp.error}")
    return resp.text.strip()


def append_turns(op: Operator, batch: pa.RecordBatch, new: list[list[tuple[str, str]]]) -> pa.Table:
    """The batch with ``new[i]`` (canonical ``(role, text)`` pairs, roles ``user``/``assistant``) appended to row
    ``i``'s conversation, in the batch's own format (MM: human/gpt, MIX: user/assistant, MESSAGES: role/content);
    a null conversation becomes a list."""
    col, role_key, text_key = conversation_column(op, batch)
    mm_roles = role_key == "from" and "image" in batch.schema.names
    names = {"user": "human", "assistant": "gpt"} if mm_roles else {"user": "user", "assistant": "assistant"}
    convs = batch.column(col).to_pylist()
    value_type = batch.schema.field(col).type.value_type
    other = [value_type.field(i).name for i in range(value_type.num_fields)
             if value_type.field(i).name not in (role_key, text_key)]
    out = []
    for conv, add in zip(convs, new):
        conv = list(conv or [])
        for role, text in add:
            turn = {role_key: names.get(role, role), text_key: text}
            turn.update({k: None for k in other})
            conv.append(turn)
        out.append(conv)
    table = pa.Table.from_batches([batch])
    return table.set_column(table.schema.get_field_index(col), table.schema.field(col),
                            pa.array(out, type=batch.schema.field(col).type))


def exchanges(op: Operator, batch: pa.RecordBatch) -> list[list[tuple[str, str]]]:
    """Each row's turns as canonical ``(role, text)`` pairs (``[]`` for a null conversation)."""
    col, role_key, text_key = conversation_column(op, batch)
    return [[(ROLES.get(t[role_key], t[role_key]), t[text_key] or "") for t in conv or []]
            for conv in batch.column(col).to_pylist()]


def with_image_token(text: str, n_images: int) -> str:
    """``text`` with one ``<image>`` placeholder per image in front (none when it already has them)."""
    if n_images and IMAGE_TOKEN not in text:
        return (IMAGE_TOKEN + "\n") * n_images + text
    return text
