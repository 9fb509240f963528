"""Helpers of the augment operators (operators/augment.py): rows of a batch as dicts, conversations cut into
exchanges, ``<image>`` placeholders, and seeds that depend on a row's content, never on its batch.

An *exchange* is one user turn with the assistant turns that follow it (a trailing question without an answer
is an exchange too). Turns before the first user turn (system prompts) are the conversation's *prefix*.

>>> conv = [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"},
...         {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
>>> prefix, ex = exchanges(None, conv, Keys("messages", "role", "content", "images"))
>>> len(prefix), [len(e) for e in ex]
(1, [2, 1])
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from datacopilot.schemas import IMAGE_TOKEN

from ._conv import ROLES, conversation_column
from .base import Operator

_REFERS_START = re.compile(r"^(this|that|these|those|and|also|then|so|what about|how about|what else|"
                           r"anything else)\b", re.IGNORECASE)
_REFERS_ANY = re.compile(r"\b(it|its|they|them|their|he|she|him|his|her|above|previous|previously|earlier|"
                         r"aforementioned|mentioned|former|latter|again|you said|your answer)\b", re.IGNORECASE)


def refers_back(question: str) -> bool:
    """Whether a question seems to depend on the exchange before it (the heuristic of ``shuffle_turns``).

    A question refers back when it starts with "this", "that", "and", "also", "what about", ... or holds a
    personal pronoun ("it", "they", "her", ...) or a word such as "above", "previous", "mentioned", "again".

    >>> refers_back("What color is the car?"), refers_back("Is it parked?"), refers_back("That one, as well?")
    (False, True, True)
    """
    q = strip_placeholders(question).strip()
    return bool(_REFERS_START.match(q) or _REFERS_ANY.search(q))

_LEAD = re.compile(r"^\s*(?:<image>\s*)+")
_TRAIL = re.compile(r"(?:\s*<image>)+\s*$")
_ANY = re.compile(r"<image>\n?")


@dataclass(frozen=True)
class Keys:
    """Where a batch keeps its turns and images: ``image`` (MM: one or null), ``images`` (a list) or None."""

    col: str
    role_key: str
    text_key: str
    image_col: str | None


def batch_rows(op: Operator, batch: pa.RecordBatch) -> tuple[Keys, list[dict]]:
    """The batch's conversation keys and its rows as dicts."""
    col, role_key, text_key = conversation_column(op, batch)
    names = batch.schema.names
    image_col = "image" if "image" in names else "images" if "images" in names else None
    return Keys(col, role_key, text_key, image_col), batch.to_pylist()


def to_table(rows: list[dict], batch: pa.RecordBatch) -> pa.Table:
    """Rows back into a table of the batch's schema."""
    return pa.Table.from_pylist(rows, schema=batch.schema)


def role(op: Operator, turn: dict, k: Keys, i: int) -> str:
    """The canonical role of ``turn`` (``user``, ``assistant``, ``system``); OperatorError for an unknown one."""
    r = turn.get(k.role_key)
    if r not in ROLES:
        raise op.error(f"{k.col}[{i}].{k.role_key}: expected one of {', '.join(map(repr, ROLES))}, got {r!r}")
    return ROLES[r]


def exchanges(op: Operator | None, conv: list | None, k: Keys) -> tuple[list[dict], list[list[dict]]]:
    """(prefix turns, exchanges) of a conversation (see the module docstring)."""
    prefix: list[dict] = []
    out: list[list[dict]] = []
    for i, t in enumerate(conv or []):
        r = role(op, t, k, i) if op is not None else ROLES.get(t.get(k.role_key))
        if r == "user":
            out.append([t])
        elif out:
            out[-1].append(t)
        else:
            prefix.append(t)
    return prefix, out


def text(turn: dict, k: Keys) -> str:
    return turn.get(k.text_key) or ""


def split_placeholders(s: str) -> tuple[str, str, str]:
    """(leading placeholders, body, trailing placeholders) of a text; lead + body + trail == s.

    >>> split_placeholders("<image>\\nWhat is it?")
    ('<image>\\n', 'What is it?', '')
    """
    m = _LEAD.match(s)
    lead = m.group(0) if m else ""
    rest = s[len(lead):]
    m = _TRAIL.search(rest)
    trail = m.group(0) if m else ""
    return lead, rest[:len(rest) - len(trail)], trail


def strip_placeholders(s: str) -> str:
    """The text without any ``<image>`` placeholder (and the line break after one)."""
    return _ANY.sub("", s).strip() if IMAGE_TOKEN in s else s


def count_placeholders(turns: list[dict], k: Keys) -> int:
    return sum(text(t, k).count(IMAGE_TOKEN) for t in turns)


def seeded(seed: int, *parts) -> random.Random:
    """A random generator seeded by ``seed`` and the given parts (a row's id and texts): the same row gets the same
    draws whatever batch, worker or executor it runs in."""
    h = hashlib.blake2b(repr((seed,) + parts).encode("utf-8", "surrogatepass"), digest_size=8)
    return random.Random(int.from_bytes(h.digest(), "little"))


def with_suffix(id, suffix: str):
    """``id + suffix``; a null id stays null."""
    return None if id is None else f"{id}{suffix}"


def image_key(value) -> str | None:
    """A key identifying a row's image(s) (path and bytes), None when it has none."""
    if value is None or value == []:
        return None
    return hashlib.blake2b(repr(value).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def no_images(value):
    """The empty value of an image column: null (``image``) or an empty list (``images``)."""
    return [] if isinstance(value, list) else None


def check_bool(op: Operator, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise op.error(f"`{name}` must be True or False, got {value!r}")
    return value


def bare(q: str) -> str:
    """The question as a clause: final punctuation removed, first letter lowered unless it starts an acronym."""
    q = q.strip().rstrip("?.!。？ ").strip()
    if len(q) > 1 and q[0].isupper() and q[1].islower() and not q.startswith("I "):
        q = q[0].lower() + q[1:]
    return q
