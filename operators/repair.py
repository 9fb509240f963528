"""Structural repair of conversations: image placeholders and role alternation. The rows to repair are found
vectorized (placeholder counts, role codes); only those are rewritten in Python, as whole conversations.

>>> from datacopilot.operators import create
>>> ds.apply([create("fix_image_tokens"), create("filter_image_tokens"), create("fix_roles")])  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from datacopilot.schemas import IMAGE_TOKEN

from ._conv import ROLES, ConversationOp, conversation_column, image_counts, replace_row_texts, replace_rows, turns
from .base import Filter, Mapper, check_choice
from .registry import register


def _strip_extra(conv: list, text_key: str, keep: int) -> None:
    """Remove every ``<image>`` after the first ``keep`` ones (with the line break that follows one)."""
    seen = 0
    for t in conv:
        text = t.get(text_key) or ""
        if IMAGE_TOKEN not in text:
            continue
        parts = text.split(IMAGE_TOKEN)
        out = parts[0]
        for part in parts[1:]:
            seen += 1
            out += (IMAGE_TOKEN + part) if seen <= keep else (part[1:] if part.startswith("\n") else part)
        t[text_key] = out.strip() if seen > keep else out


@register
class FixImageTokens(ConversationOp, Mapper):
    """Make the number of ``<image>`` placeholders equal the number of images of the row.

    Extra placeholders are removed (the first ones are kept); missing ones are added at the start of the
    first user turn, one per line (``"<image>\\n"``). A row whose images need placeholders but has no user
    turn cannot be fixed here: it is left as it is for :class:`FilterImageTokens` to drop with a reason.
    Images are counted in ``image`` (MM: 0 or 1) or ``images`` (MIX, MESSAGES).

    Parameters: ``add_missing`` (add placeholders for images that have none), ``strip_extra`` (remove
    placeholders beyond the number of images).
    """

    name = "fix_image_tokens"
    writes = ("conversations|messages",)

    def __init__(self, add_missing: bool = True, strip_extra: bool = True):
        super().__init__(add_missing=check_choice(self, "add_missing", add_missing, (True, False)),
                         strip_extra=check_choice(self, "strip_extra", strip_extra, (True, False)))

    def map_batch(self, batch: pa.RecordBatch) -> pa.Table:
        from datacopilot.kernels.text import count_literal

        col, role_key, text_key = conversation_column(self, batch)
        t = turns(self, batch)
        every = t.select("any")
        tokens = t.per_row(count_literal(*t.text_buffers(), IMAGE_TOKEN.encode()), every, "sum").astype(np.int64)
        images = image_counts(batch)
        null_turn = t.per_row(~_valid(t.values), every, "any")
        # the rows to rewrite (found vectorized; Python only for those): a conversation whose placeholders differ
        # from its images, in the direction the parameters repair
        need = (np.diff(t.offsets) > 0) & ((tokens > images) & self.p["strip_extra"] |
                                           (tokens < images) & self.p["add_missing"] | null_turn)
        rows = np.flatnonzero(need)
        if not len(rows):
            return pa.Table.from_batches([batch])
        convs = batch.column(col).take(pa.array(rows, pa.int64())).to_pylist()
        for conv, n_img, n_tok, null in zip(convs, images[rows].tolist(), tokens[rows].tolist(),
                                            null_turn[rows].tolist()):
            if null:  # fails here, as before
                n_tok = sum((turn.get(text_key) or "").count(IMAGE_TOKEN) for turn in conv)
            if n_tok > n_img and self.p["strip_extra"]:
                _strip_extra(conv, text_key, n_img)
            elif n_tok < n_img and self.p["add_missing"]:
                first = next((t for t in conv if ROLES.get(t.get(role_key)) == "user"), None)
                if first is not None:
                    first[text_key] = (IMAGE_TOKEN + "\n") * (n_img - n_tok) + (first.get(text_key) or "")
        return replace_row_texts(self, batch, t, rows, convs)  # only texts change: the lists are kept


@register
class FilterImageTokens(ConversationOp, Filter):
    """Drop rows whose ``<image>`` count differs from their number of images (the reason gives both)."""

    name = "filter_image_tokens"

    def __init__(self):
        super().__init__()

    def keep(self, batch: pa.RecordBatch):
        from datacopilot.kernels.text import count_literal

        t = turns(self, batch)
        per_turn = count_literal(*t.text_buffers(), IMAGE_TOKEN.encode())
        tokens = t.per_row(per_turn, t.select("any"), "sum").astype(np.int64)
        images = image_counts(batch)
        keep = tokens == images
        reasons = np.where(keep, None, np.where(tokens > images, "more <image> tokens than images",
                                                "fewer <image> tokens than images")).astype(object)
        return keep, reasons


@register
class FixRoles(ConversationOp, Mapper):
    """Role alternation repair: consecutive turns of the same role are merged into one (texts joined with
    ``separator``), and assistant turns before the first user turn are dropped (system turns stay first).
    The result alternates user / assistant after any system turns; a trailing user turn is kept (drop such
    rows with a filter if the trainer needs a final answer).
    """

    name = "fix_roles"
    writes = ("conversations|messages",)

    def __init__(self, separator: str = "\n\n"):
        if not isinstance(separator, str):
            raise self.error(f"`separator` must be a string, got {separator!r}")
        super().__init__(separator=separator)

    def _fix(self, conv: list, role_key: str, text_key: str) -> list:
        out: list = []
        seen_user = False
        for t in conv:
            role = ROLES.get(t.get(role_key), t.get(role_key))
            if role == "assistant" and not seen_user:
                continue
            seen_user = seen_user or role == "user"
            if out and out[-1][role_key] == t.get(role_key):
                prev, cur = out[-1].get(text_key) or "", t.get(text_key) or ""
                out[-1][text_key] = prev + self.p["separator"] + cur if prev and cur else prev or cur
            else:
                out.append(dict(t))
        return out

    def map_batch(self, batch: pa.RecordBatch) -> pa.Table:
        from datacopilot.kernels import text as k

        col, role_key, text_key = conversation_column(self, batch)
        t = turns(self, batch)
        raw = t.raw_roles
        r_off, r_data = k.string_buffers(raw) if pa.types.is_string(raw.type) or pa.types.is_large_string(
            raw.type) else k.string_buffers(raw.cast(pa.string()))
        # the rows whose roles do not alternate (vectorized); Python rewrites only those
        rows = np.flatnonzero(k.row_role_breaks(t.offsets, t.code, r_off, r_data, _valid(raw), _valid(t.values)))
        convs = batch.column(col).take(pa.array(rows, pa.int64())).to_pylist()
        return replace_rows(self, batch, rows, [self._fix(c, role_key, text_key) for c in convs])


def _valid(arr: pa.Array) -> np.ndarray:
    return np.ones(len(arr), dtype=bool) if not arr.null_count else arr.is_valid().to_numpy(zero_copy_only=False)
