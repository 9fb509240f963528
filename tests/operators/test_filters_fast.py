"""The conversation filters' compiled paths decide every row as the filters did before them (pyarrow compute over
the flattened turns, reductions with ``np.*.at``, a Python loop for duplicates): same mask, same reasons."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datacopilot.operators import create
from datacopilot.operators._conv import ROLES
from hypothesis import given, settings
from hypothesis import strategies as st

_PIECES = ["a", "word", " ", "  ", "\n", "\t", "\x0b", "\u3000", "é", "东东", "<image>", "<image>\n", "."]
_TEXT = st.one_of(st.none(), st.lists(st.sampled_from(_PIECES), max_size=8).map("".join))
_ROLE = st.one_of(st.sampled_from(list(ROLES) + ["bot"]), st.none())


def _convs(role_key="from", text_key="value"):
    turn = st.one_of(st.none(), st.fixed_dictionaries({role_key: _ROLE, text_key: _TEXT}))
    return st.lists(st.one_of(st.none(), st.lists(turn, max_size=6)), min_size=1, max_size=12)


def _batch(convs, schema="MM", start=0):
    role_key, text_key, col = ("from", "value", "conversations") if schema == "MM" else \
        ("role", "content", "messages")
    turn = pa.struct([(role_key, pa.string()), (text_key, pa.string())])
    arr = pa.array([[]] * start + convs, pa.list_(turn)).slice(start)  # a slice: offsets start past 0
    return pa.RecordBatch.from_arrays([arr], [col])


class _Old:
    """The flattened turns as they were: parent indices, canonical role strings, texts with nulls as ""."""

    def __init__(self, batch):
        col = batch.schema.names[0]
        role_key, text_key = ("from", "value") if col == "conversations" else ("role", "content")
        arr = batch.column(col)
        values = arr.flatten()
        self.row = pc.list_parent_indices(arr).to_numpy().astype(np.int64)
        self.role = np.array([ROLES.get(r, r) for r in pc.struct_field(values, role_key).to_pylist()], object)
        self.text = pc.fill_null(pc.struct_field(values, text_key), "")
        self.n = batch.num_rows

    def select(self, role):
        if role == "any":
            return np.ones(len(self.row), dtype=bool)
        return self.role != "system" if role == "all" else self.role == role

    def per_row(self, values, turns, how, empty=0):
        rows, vals = self.row[turns], np.asarray(values)[turns]
        if how == "any":
            out = np.zeros(self.n, dtype=bool)
            out[rows[vals.astype(bool)]] = True
            return out
        out = np.full(self.n, empty if how != "sum" else 0, dtype=np.float64)
        if how == "sum":
            np.add.at(out, rows, vals)
            return out
        seen = np.zeros(self.n, dtype=bool)
        seen[rows] = True
        acc = np.full(self.n, np.inf if how == "min" else -np.inf)
        (np.minimum if how == "min" else np.maximum).at(acc, rows, vals)
        out[seen] = acc[seen]
        return out


def _old_turns(op, batch):
    t = _Old(batch)
    n = t.per_row(np.ones(len(t.row)), t.select("all"), "sum")
    few = n < op.p["min_turns"]
    many = n > op.p["max_turns"] if op.p["max_turns"] is not None else np.zeros(len(n), dtype=bool)
    return ~few & ~many


def _old_length(op, batch):
    t = _Old(batch)
    if op.p["unit"] == "chars":
        lengths = pc.utf8_length(t.text)
    else:
        lengths = pc.count_substring_regex(t.text, r"\S+")
    lengths = lengths.to_numpy(zero_copy_only=False).astype(np.float64)
    sel = t.select(op.p["role"])
    short = t.per_row(lengths, sel, "min", empty=np.inf) < op.p["min_length"]
    longest = t.per_row(lengths, sel, "max", empty=-np.inf)
    long = longest > op.p["max_length"] if op.p["max_length"] is not None else np.zeros_like(short)
    return ~short & ~long, short


_SCHEMAS = st.sampled_from(["MM", "MESSAGES"])


@settings(max_examples=200, deadline=None)
@given(_convs(), _SCHEMAS, st.integers(0, 2), st.integers(0, 3), st.one_of(st.none(), st.integers(3, 5)))
def test_filter_turns_keeps_the_rows_it_kept_before(convs, schema, start, lo, hi):
    op = create("filter_turns", min_turns=lo, max_turns=hi)
    batch = _batch(convs, schema, start)
    keep, reasons = op.keep(batch)
    assert keep.tolist() == _old_turns(op, batch).tolist()
    assert all((r is None) == k for r, k in zip(reasons, keep))


@settings(max_examples=300, deadline=None)
@given(_convs(), _SCHEMAS, st.integers(0, 2), st.sampled_from(["user", "assistant", "all"]),
       st.sampled_from(["chars", "words"]), st.integers(0, 6), st.one_of(st.none(), st.integers(0, 8)))
def test_filter_length_keeps_the_rows_it_kept_before(convs, schema, start, role, unit, lo, span):
    op = create("filter_length", role=role, unit=unit, min_length=lo, max_length=None if span is None else lo + span)
    batch = _batch(convs, schema, start)
    keep, reasons = op.keep(batch)
    old_keep, old_short = _old_length(op, batch)
    assert keep.tolist() == old_keep.tolist()
    assert [r is not None and "shorter" in r for r in reasons] == (old_short & ~old_keep).tolist()


def _old_empty_turns(op, batch):
    t = _Old(batch)
    sel = t.select("all")
    stripped = pc.utf8_trim_whitespace(pc.replace_substring(t.text, "<image>", ""))
    blank = pc.equal(pc.utf8_length(stripped), 0).to_numpy(zero_copy_only=False)
    empty = t.per_row(blank, sel, "any") if op.p["empty"] else np.zeros(t.n, dtype=bool)
    dup = np.zeros(t.n, dtype=bool)
    if op.p["duplicates"] and len(t.row):
        texts = stripped.to_numpy(zero_copy_only=False)
        seen: set = set()
        for i in np.flatnonzero(sel):
            key = (t.row[i], t.role[i], texts[i])
            if key in seen:
                dup[t.row[i]] = True
            seen.add(key)
    return ~empty & ~dup, empty


_REPEATING = st.lists(st.one_of(st.none(), st.lists(st.fixed_dictionaries(
    {"from": st.sampled_from(["human", "user", "gpt", "bot", "tool", "system", None]),
     "value": st.sampled_from(["a", " a", "a ", "<image>\na", "<image>", "", None, "b"])}), max_size=6)),
    min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_convs(), _REPEATING), _SCHEMAS, st.integers(0, 2), st.booleans(), st.booleans())
def test_filter_empty_turns_keeps_the_rows_it_kept_before(convs, schema, start, empty, duplicates):
    op = create("filter_empty_turns", empty=empty, duplicates=duplicates)
    batch = _batch(convs, schema, start)
    keep, reasons = op.keep(batch)
    old_keep, old_empty = _old_empty_turns(op, batch)
    assert keep.tolist() == old_keep.tolist()
    assert [r == "empty turn" for r in reasons] == (old_empty & ~old_keep).tolist()


# -- repair: the rows needing no change are found vectorized; the rewrite equals rewriting every row in Python --
def _old_fix_image_tokens(op, batch):
    from datacopilot.operators._conv import image_counts
    from datacopilot.operators.repair import IMAGE_TOKEN, _strip_extra

    col = batch.schema.names[0]
    role_key, text_key = ("from", "value") if col == "conversations" else ("role", "content")
    convs = batch.column(col).to_pylist()
    counts = [sum((t.get(text_key) or "").count(IMAGE_TOKEN) for t in c or []) for c in convs]
    for conv, n_img, n_tok in zip(convs, image_counts(batch), counts):
        if not conv or n_tok == n_img:
            continue
        if n_tok > n_img and op.p["strip_extra"]:
            _strip_extra(conv, text_key, int(n_img))
        elif n_tok < n_img and op.p["add_missing"]:
            first = next((t for t in conv if ROLES.get(t.get(role_key)) == "user"), None)
            if first is not None:
                first[text_key] = (IMAGE_TOKEN + "\n") * int(n_img - n_tok) + (first.get(text_key) or "")
    return convs


def _old_fix_roles(op, batch):
    col = batch.schema.names[0]
    role_key, text_key = ("from", "value") if col == "conversations" else ("role", "content")
    return [op._fix(c, role_key, text_key) if c else c for c in batch.column(col).to_pylist()]


def _with_images(batch, images):
    kind = pa.list_(pa.string())
    return pa.RecordBatch.from_arrays([batch.column(0), pa.array(images[:batch.num_rows], kind)],
                                      [batch.schema.names[0], "images"])


_VALID_TURN = st.fixed_dictionaries({"from": _ROLE, "value": _TEXT})
_VALID = st.lists(st.one_of(st.none(), st.lists(_VALID_TURN, max_size=6)), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_VALID, _REPEATING), st.integers(0, 2), st.booleans(), st.booleans(),
       st.lists(st.one_of(st.none(), st.lists(st.just("i.png"), max_size=3)), min_size=12, max_size=12))
def test_fix_image_tokens_rewrites_as_it_did_row_by_row(convs, start, add, strip, images):
    op = create("fix_image_tokens", add_missing=add, strip_extra=strip)
    batch = _with_images(_batch(convs, "MM", start), images)
    assert op.map_batch(batch).column("conversations").to_pylist() == _old_fix_image_tokens(op, batch)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_VALID, _REPEATING), _SCHEMAS, st.integers(0, 2))
def test_fix_roles_rewrites_as_it_did_row_by_row(convs, schema, start):
    op = create("fix_roles")
    batch = _batch(convs, schema, start)
    assert op.map_batch(batch).column(0).to_pylist() == _old_fix_roles(op, batch)


def test_repairs_still_fail_on_a_null_turn():
    import pytest

    batch = _with_images(_batch([[{"from": "human", "value": "<image>"}, None]]), [["i.png"]])
    for name in ("fix_image_tokens", "fix_roles"):
        with pytest.raises(AttributeError):
            create(name).map_batch(batch)


def _old_special_chars(op, batch):
    from datacopilot.operators.conversation_filters import _SPECIAL

    t = _Old(batch)
    text = pc.replace_substring(t.text, "<image>", "")
    special = pc.count_substring_regex(text, _SPECIAL).to_numpy(zero_copy_only=False)
    length = pc.utf8_length(text).to_numpy(zero_copy_only=False)
    sel = t.select(op.p["role"])
    ratio = t.per_row(special, sel, "sum") / np.maximum(t.per_row(length, sel, "sum"), 1)
    return ratio <= op.p["max_ratio"]


_SPECIAL_TEXT = st.one_of(st.none(), st.lists(st.sampled_from(
    ["a", "$", "_", "\x0b", "\x7f", " ", "<image>", "<", "image>", "é", "东", "!", "\u2028", "—"]), max_size=8).map("".join))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.lists(st.fixed_dictionaries({"from": _ROLE, "value": _SPECIAL_TEXT}),
                                              max_size=5)), min_size=1, max_size=12),
       st.integers(0, 2), st.sampled_from(["user", "assistant", "all"]), st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]))
def test_filter_special_chars_keeps_the_rows_it_kept_before(convs, start, role, max_ratio):
    op = create("filter_special_chars", role=role, max_ratio=max_ratio)
    batch = _batch(convs, "MM", start)
    assert op.keep(batch)[0].tolist() == _old_special_chars(op, batch).tolist()
