"""``image_text_alignment_filter``: how well a row's text fits its image, scored offline by a vision-language
model's log-likelihood of the text given the image, and rows under a threshold dropped.

The score (``score="pmi"``, default) is the pointwise mutual information of the text and the image, per token::

    pmi = mean log p(text | image) - mean log p(text | a blank gray image of the same size)

(means over the text's tokens, as the assistant's answer; see ``PaddleBackend.loglikelihood``). It measures how
much *this* image explains the text beyond what the model would say about any picture: a fluent but generic or
wrong caption scores near or under 0, a caption that names what only this image shows scores above 0. Plain
``score="loglik"`` (``mean log p(text | image)``, always <= 0) also rewards text the model finds likely in
general (short, common words), so it mixes fluency with alignment; it costs half the forward passes.

>>> from datacopilot.operators import create
>>> op = create("image_text_alignment_filter", model={"backend": "paddle", "path": "models/vlm"},
...             min_score=0.0)                                                               # doctest: +SKIP
>>> out = ds.apply(op); out.history()[-1].dropped                                            # doctest: +SKIP
{'alignment score < 0.0': 12}
>>> out[0]["alignment_score"]                                                                # doctest: +SKIP
1.73
"""

from __future__ import annotations

import importlib
import io
import os
import threading
from collections import OrderedDict

import numpy as np
import pyarrow as pa

from datacopilot.errors import DataCopilotError, ModelError
from datacopilot.schemas import IMAGE_TOKEN

from ._model import MEMO_SIZE, ModelOp, exchanges, with_image_token
from .base import Filter, Operator, Outcome, check_choice, check_float
from .registry import register

TEXTS = ("auto", "caption", "answers")
SCORES = ("pmi", "loglik")
GRAY = (128, 128, 128)


@register
class ImageTextAlignmentFilter(ModelOp, Filter):
    """Score how well each row's text fits its image(s) and drop the rows scoring under ``min_score``.

    ``model``: a local ``paddle`` vision-language model directory (the project's TinyVLM layout); the ``openai``
    backend is refused at construction (a chat-completions endpoint gives generated text, not the probability of
    a given text), and so is a text-only model.

    ``text``: what is scored, as the assistant's answer after a user turn:

    * ``"caption"``: the string column ``text_field`` (default ``caption``), after a user turn holding ``prompt``
      with one ``<image>`` per image in front (default ``""``: a bare ``<image>`` turn, as the CAPTION schema
      trains captions);
    * ``"answers"``: every assistant answer of the conversation, each after the turns before it (the images go
      where the conversation's ``<image>`` placeholders are, or in front of its first user turn); the row's score
      is the mean of its answers' scores (each answer weighs the same);
    * ``"auto"`` (default): a row's caption when it has a non-empty one, else its answers.

    ``score``: ``"pmi"`` (default; see the module docstring) or ``"loglik"``. The score (float64) goes to the
    column ``field`` of the rows kept; rows with ``score < min_score`` are dropped with the reason
    ``"alignment score < {min_score}"`` (``min_score=None``: nothing is dropped, rows are only scored; for
    ``pmi``, 0 keeps the rows whose image explains their text better than a blank one).

    Rows without an image are kept with a null score and counted ``skipped: no image``; rows with an image but
    no text to score (no caption and no non-empty answer) likewise, counted ``skipped: no text`` (a filter of
    image-text alignment has nothing to say about them; drop them with another filter if they are unwanted).
    ``<image>`` placeholders inside the scored text are removed. A row whose image cannot be read, or that the
    model cannot score (too long for its positions), fails with the error. Counts: ``scored``,
    ``skipped: no image``, ``skipped: no text``.

    One backend call per batch (all texts of the batch, with the real and, for ``pmi``, the gray images;
    batched by length in the spec's ``batch_size``); scores are remembered for the executor's row-by-row
    retry, but not cached on disk (a scoring pass is one forward pass, no generation).
    """

    name = "image_text_alignment_filter"
    reads = ("image|images",)
    writes = ("alignment_score",)

    def __init__(self, model, text: str = "auto", text_field: str = "caption", prompt: str = "",
                 score: str = "pmi", min_score: float | None = None, field: str = "alignment_score",
                 concurrency: int = 1, root: str | None = None):
        params = self._model_params(model, None, concurrency)   # scores are not cached; no output to reject
        del params["cache_dir"]
        self._check_scorer(params["model"])
        for name, value in (("text_field", text_field), ("field", field)):
            if not isinstance(value, str) or not value:
                raise self.error(f"`{name}` must be a column name, got {value!r}")
        if not isinstance(prompt, str):
            raise self.error(f"`prompt` must be a string (the user turn before a caption), got {prompt!r}")
        super().__init__(**params, text=check_choice(self, "text", text, TEXTS), text_field=text_field,
                         prompt=prompt, score=check_choice(self, "score", score, SCORES),
                         min_score=check_float(self, "min_score", min_score, optional=True), field=field,
                         root=root)
        self.writes = (field,)

    def _check_scorer(self, model: dict) -> None:
        from datacopilot.models.backends import BACKENDS

        backend = model["backend"]
        cls = getattr(importlib.import_module(f"datacopilot.models.backends.{backend}"), BACKENDS[backend])
        if not callable(getattr(cls, "loglikelihood", None)):
            raise self.error(f"`model`: the {backend!r} backend cannot score a text (it returns generated text, "
                             f"not the log-likelihood of a given text); use a local vision-language model with "
                             f"backend 'paddle'")
        if backend == "paddle" and not os.path.isfile(os.path.join(model["path"], "vlm_config.json")):
            raise self.error(f"`model`: {model['path']!r} is a text-only model (no vlm_config.json); image-text "
                             f"alignment needs a vision-language model")

    def check(self, columns: list[str], schema: str | None = None) -> None:
        Operator.check(self, columns, schema)
        text, field = self.p["text"], self.p["text_field"]
        convs = "conversations" in columns or "messages" in columns
        if text == "caption" and field not in columns:
            raise self.error(f"`text` is 'caption' but the dataset has no {field!r} column (`text_field`); it has "
                             f"{sorted(columns)}")
        if text == "answers" and not convs:
            raise self.error(f"`text` is 'answers' but the dataset has no 'conversations' or 'messages' column; "
                             f"it has {sorted(columns)}")
        if text == "auto" and field not in columns and not convs:
            raise self.error(f"needs a {field!r} column (`text_field`) or a conversation to score; the dataset "
                             f"has {sorted(columns)}")

    # -- the model ------------------------------------------------------------------------------------------
    def setup(self) -> None:
        from datacopilot.models.backends import shared_backend

        self.backend = shared_backend(self.spec)
        if not callable(getattr(self.backend, "loglikelihood", None)):
            raise ModelError(f"{self.label}: the {self.spec.backend!r} backend cannot score texts")
        self._memo: OrderedDict = OrderedDict()
        self._memo_lock = threading.Lock()
        self._grays: dict = {}

    def loglik(self, requests: list, targets: list[str]) -> list:
        """The backend's mean log-likelihoods of ``targets`` after ``requests`` (floats, or the error of a
        request); scores remembered from the last batches are reused, the rest go in one backend call."""
        keys = [(r.digest(), t) for r, t in zip(requests, targets)]
        with self._memo_lock:
            have = {k: self._memo[k] for k in keys if k in self._memo}
        todo = {k: (r, t) for k, r, t in zip(keys, requests, targets) if k not in have}
        if todo:
            values = self.backend.loglikelihood([r for r, _ in todo.values()], [t for _, t in todo.values()])
            with self._memo_lock:
                for k, v in zip(todo, values):
                    if not isinstance(v, BaseException):
                        self._memo[k] = v
                    have[k] = v
                while len(self._memo) > MEMO_SIZE:
                    self._memo.popitem(last=False)
        return [have[k] for k in keys]

    def gray(self, data: bytes) -> bytes:
        """A blank gray PNG of the size of the encoded image ``data`` (Pillow's error when it cannot be read)."""
        from PIL import Image

        size = Image.open(io.BytesIO(data)).size
        if size not in self._grays:
            buf = io.BytesIO()
            Image.new("RGB", size, GRAY).save(buf, format="PNG")
            self._grays[size] = buf.getvalue()
        return self._grays[size]

    # -- texts ----------------------------------------------------------------------------------------------
    def texts(self, batch: pa.RecordBatch, n_images: list[int]) -> list[list[tuple[list[dict], str]]]:
        """Per row, the (context messages, target text) pairs to score (empty: nothing to score)."""
        p = self.p
        names = batch.schema.names
        captions = (batch.column(p["text_field"]).to_pylist() if p["text"] != "answers" and p["text_field"] in names
                    else [None] * batch.num_rows)
        has_conv = p["text"] != "caption" and any(c in names for c in ("conversations", "messages"))
        convs = exchanges(self, batch) if has_conv else None
        out = []
        for i in range(batch.num_rows):
            caption = _clean(captions[i]) if isinstance(captions[i], str) else ""
            if caption:
                out.append([([{"role": "user", "content": _user_turn(p["prompt"], n_images[i])}], caption)])
                continue
            pairs = []
            for j, (role, text) in enumerate(convs[i] if convs is not None else []):
                target = _clean(text)
                if role != "assistant" or not target:
                    continue
                context = [{"role": r, "content": t} for r, t in convs[i][:j]]
                if not any(m["role"] == "user" for m in context):
                    context.append({"role": "user", "content": _user_turn(p["prompt"], n_images[i])})
                pairs.append((context, target))
            out.append(pairs)
        return out

    # -- the hook -------------------------------------------------------------------------------------------
    def keep(self, batch: pa.RecordBatch) -> Outcome:
        from datacopilot.models.backends import Request

        p = self.p
        images = self.images(batch)
        texts = self.texts(batch, [len(imgs) for imgs in images])
        outcomes: list = [None] * batch.num_rows
        requests, targets, owner = [], [], []          # owner: (row, 0 = real image / 1 = gray) per request
        for i, imgs in enumerate(images):
            bad = next((b for b in imgs if isinstance(b, BaseException)), None)
            if not imgs:
                outcomes[i] = "skipped: no image"
            elif not texts[i]:
                outcomes[i] = "skipped: no text"
            elif bad is not None:
                outcomes[i] = bad
            else:
                try:
                    grays = tuple(self.gray(b) for b in imgs) if p["score"] == "pmi" else None
                except (OSError, ValueError, DataCopilotError) as e:
                    outcomes[i] = OSError(f"cannot decode the image: {e}")
                    continue
                for context, target in texts[i]:
                    for kind, shown in ((0, tuple(imgs)), (1, grays)):
                        if shown is not None:
                            requests.append(Request(context, images=shown))
                            targets.append(target)
                            owner.append((i, kind))
        values = self.loglik(requests, targets) if requests else []
        parts: dict = {}
        for (i, kind), v in zip(owner, values):
            if isinstance(v, BaseException):
                if not isinstance(outcomes[i], BaseException):
                    outcomes[i] = v
                continue
            parts.setdefault(i, ([], []))[kind].append(v)
        keep = np.ones(batch.num_rows, dtype=bool)
        reasons = np.full(batch.num_rows, None, dtype=object)
        scores: list = [None] * batch.num_rows
        for i, (real, gray) in parts.items():
            if isinstance(outcomes[i], BaseException):
                continue
            value = float(np.mean(real) - (np.mean(gray) if gray else 0.0))
            outcomes[i], scores[i] = "scored", value
            if p["min_score"] is not None and value < p["min_score"]:
                keep[i], reasons[i] = False, f"alignment score < {p['min_score']}"
        counts: dict = {}
        self.settle(outcomes, counts)
        return Outcome((keep, reasons), counts, columns=pa.table({p["field"]: pa.array(scores, pa.float64())}))


def _user_turn(prompt: str, n_images: int) -> str:
    """The user turn before a scored caption: ``prompt`` with one ``<image>`` per image in front (a bare
    ``<image>`` per image for an empty prompt, as the CAPTION schema has it)."""
    return IMAGE_TOKEN * n_images if not prompt.strip() else with_image_token(prompt, n_images)


def _clean(text: str | None) -> str:
    """``text`` without ``<image>`` placeholders, stripped."""
    return (text or "").replace(IMAGE_TOKEN, "").strip()
