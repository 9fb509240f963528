"""``caption``: a model describes each row's image; the caption goes to a field or becomes a new exchange.

>>> from datacopilot.operators import create
>>> op = create("caption", model={"backend": "paddle", "path": "models/tiny_vlm"})     # doctest: +SKIP
>>> ds.apply(op).history()[-1].counts                                                  # doctest: +SKIP
{'generated': 98, 'rejected: empty output': 2}
"""

from __future__ import annotations

import pyarrow as pa

from datacopilot.schemas import IMAGE_TOKEN

from ._conv import ConversationOp
from ._model import ModelOp, Rejected, append_turns, check_template, exchanges, response_text, with_image_token
from .base import Mapper, Operator, Outcome, check_choice
from .registry import register

TARGETS = ("field", "turn")


def check_caption(text: str) -> str:
    """``text`` if it can be used as a caption, else :class:`Rejected` with the reason."""
    if not text:
        raise Rejected("empty output")
    if IMAGE_TOKEN in text:
        raise Rejected("placeholder in output")
    return text


@register
class Caption(ModelOp, Mapper):
    """Caption each row's image(s) with a vision-language model; rows without an image are skipped.

    ``to="field"``: the caption goes to the string column ``field`` (rows that already have a non-empty one keep
    it unless ``overwrite``). ``to="turn"``: the prompt and the caption are appended to the conversation as a
    user and an assistant turn (the prompt gets the ``<image>`` placeholders when the conversation has none).
    Empty captions and captions holding ``<image>`` are rejected. ``prompt`` is sent with the images.
    """

    name = "caption"
    reads = ("image|images",)
    writes = ("caption",)

    def __init__(self, model, prompt: str = "Describe the image in one sentence.", to: str = "field",
                 field: str = "caption", overwrite: bool = False, cache_dir: str | None = None,
                 concurrency: int = 1, on_reject: str = "keep", root: str | None = None):
        params = self._model_params(model, cache_dir, concurrency, on_reject)
        check_template(self, "prompt", prompt, ())
        if not isinstance(field, str) or not field:
            raise self.error(f"`field` must be a column name, got {field!r}")
        if not isinstance(overwrite, bool):
            raise self.error(f"`overwrite` must be true or false, got {overwrite!r}")
        super().__init__(**params, prompt=prompt, to=check_choice(self, "to", to, TARGETS), field=field,
                         overwrite=overwrite, root=root)

    def check(self, columns: list[str], schema: str | None = None) -> None:
        Operator.check(self, columns, schema)
        if self.p["to"] == "turn":
            ConversationOp.check(self, columns, schema)

    def map_batch(self, batch: pa.RecordBatch):
        images = self.images(batch)
        field, to = self.p["field"], self.p["to"]
        old = (batch.column(field).to_pylist() if to == "field" and field in batch.schema.names
               else [None] * batch.num_rows)
        convs = exchanges(self, batch) if to == "turn" else None
        todo, outcomes = [], [None] * batch.num_rows
        for i, imgs in enumerate(images):
            if not imgs:
                outcomes[i] = "skipped: no image"
            elif old[i] and not self.p["overwrite"]:
                outcomes[i] = "skipped: has a caption"
            elif any(isinstance(b, BaseException) for b in imgs):
                outcomes[i] = next(b for b in imgs if isinstance(b, BaseException))
            else:
                todo.append(i)
        from datacopilot.models.backends import Request

        prompts = {i: with_image_token(self.p["prompt"], len(images[i])) for i in todo}
        answers = self.ask([Request([{"role": "user", "content": prompts[i]}], images=tuple(images[i]))
                            for i in todo])
        new_values, new_turns = list(old), [[] for _ in range(batch.num_rows)]
        for i, resp in zip(todo, answers):
            try:
                text = check_caption(response_text(resp))
            except Rejected as r:
                outcomes[i] = r
                continue
            except Exception as e:  # the backend's error: the row fails
                outcomes[i] = e
                continue
            outcomes[i] = "generated"
            if to == "field":
                new_values[i] = text
            else:
                has_token = any(IMAGE_TOKEN in t for _, t in convs[i])
                new_turns[i] = [("user", self.p["prompt"] if has_token else prompts[i]), ("assistant", text)]
        counts: dict = {}
        self.settle(outcomes, counts)
        if to == "turn":
            return Outcome(append_turns(self, batch, new_turns), counts)
        table = pa.Table.from_batches([batch])
        column = pa.array(new_values, pa.string())
        i = table.schema.get_field_index(field)
        table = table.set_column(i, field, column) if i >= 0 else table.append_column(field, column)
        return Outcome(table, counts)
