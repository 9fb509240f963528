"""Converters between the built-in schemas: property tests that A -> B -> A is lossless for every pair, and
that conversions that would lose information raise ConversionError."""

import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import datacopilot as dc
from datacopilot.errors import ConversionError
from datacopilot.schemas import BUILTIN, IMAGE_TOKEN, convert_row

NAMES = ["MM", "MIX", "PAIRS", "MESSAGES", "CAPTION"]

# what each schema can hold
CAPS = {
    "MM": dict(max_images=1, ids=False, bytes=True, meta=True, roles={"user", "assistant"}, shape="free"),
    "MIX": dict(max_images=3, ids=True, bytes=False, meta=True, roles={"user", "assistant"}, shape="free"),
    "PAIRS": dict(max_images=1, ids=False, bytes=True, meta=False, roles={"user", "assistant"}, shape="pairs"),
    "MESSAGES": dict(max_images=3, ids=False, bytes=True, meta=True, roles={"system", "user", "assistant"},
                     shape="free"),
    "CAPTION": dict(max_images=1, ids=False, bytes=True, meta=False, roles={"user", "assistant"}, shape="caption"),
}



def _no_placeholder(s: str) -> str:
    # placeholders are placed by ``specs`` (none, or one per image); hypothesis also draws the code's own strings
    while IMAGE_TOKEN in s:
        s = s.replace(IMAGE_TOKEN, "")
    return s


text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12).map(_no_placeholder)
names = st.text(alphabet="abcdefghij/._-0123456789", min_size=1, max_size=12)
blobs = st.binary(min_size=1, max_size=16)
meta = st.dictionaries(st.text(alphabet="abcxyz", min_size=1, max_size=4),
                       st.one_of(st.integers(-5, 5), text, st.lists(st.integers(0, 3), max_size=3), st.none()),
                       max_size=3)


@st.composite
def specs(draw, a: str, b: str):
    """A schema-neutral row (images, ids, messages, meta) that both ``a`` and ``b`` can hold."""
    ca, cb = CAPS[a], CAPS[b]
    with_bytes = ca["bytes"] and cb["bytes"]
    n_img = draw(st.integers(0, min(ca["max_images"], cb["max_images"])))
    images = []
    for _ in range(n_img):
        if with_bytes:
            kind = draw(st.sampled_from(["path", "bytes", "both"]))
            images.append({"path": draw(names) if kind != "bytes" else None,
                           "bytes": draw(blobs) if kind != "path" else None})
        else:
            images.append({"path": draw(names), "bytes": None})
    # MIX image ids: integers >= 0, one per image (SCHEMA.MIX requires them); None: numbered 0, 1, ... on the way in
    ids = [None] * n_img
    if ca["ids"] and cb["ids"]:
        ids = draw(st.one_of(st.just(ids), st.lists(st.integers(0, 9), min_size=n_img, max_size=n_img, unique=True)))
    shapes = {ca["shape"], cb["shape"]}
    if "caption" in shapes:
        msgs = [("user", IMAGE_TOKEN if images else ""), ("assistant", draw(text))]
    elif "pairs" in shapes:
        msgs = [m for _ in range(draw(st.integers(0, 3))) for m in (("user", draw(text)), ("assistant", draw(text)))]
    else:
        roles = sorted(ca["roles"] & cb["roles"])
        msgs = draw(st.lists(st.tuples(st.sampled_from(roles), text), max_size=5))
        if images and msgs and draw(st.booleans()):  # a placeholder per image (or none: the images lead the row)
            k = draw(st.integers(0, len(msgs) - 1))
            msgs[k] = (msgs[k][0], IMAGE_TOKEN * n_img + msgs[k][1])
    m = draw(st.one_of(st.none(), meta)) if ca["meta"] and cb["meta"] else None
    return {"id": draw(st.one_of(st.none(), names)), "images": images, "ids": ids, "messages": msgs, "meta": m}


def _img_file_form(img, draw_str: bool):
    # files hold an image as a bare path string or as {path, bytes}
    if draw_str and img["bytes"] is None:
        return img["path"]
    return dict(img)


def build(schema: str, spec: dict, as_str: bool) -> dict:
    img = _img_file_form(spec["images"][0], as_str) if spec["images"] else None
    extra = {"meta": spec["meta"]} if spec["meta"] is not None else {}
    if schema == "MM":
        mm = {"user": "human", "assistant": "gpt"}
        return {"id": spec["id"], "image": img, "conversations": [{"from": mm[r], "value": c} for r, c in spec["messages"]],
                **extra}
    if schema == "MIX":
        ids = spec["ids"] if any(i is not None for i in spec["ids"]) else list(range(len(spec["images"])))
        # listed in id order (what MIX writes back); the text places them
        images = sorted(({"id": i, "url": x["path"]} for i, x in zip(ids, spec["images"])), key=lambda x: x["id"])
        return {"id": spec["id"], "images": images or None,
                "conversations": [{"from": r, "value": mix_refs(c, ids)} for r, c in spec["messages"]], **extra}
    if schema == "PAIRS":
        ms = spec["messages"]
        return {"id": spec["id"], "image": img, "conversations": [[ms[i][1], ms[i + 1][1]] for i in range(0, len(ms), 2)]}
    if schema == "MESSAGES":
        return {"id": spec["id"], "images": [_img_file_form(x, as_str) for x in spec["images"]],
                "messages": [{"role": r, "content": c} for r, c in spec["messages"]], **extra}
    if schema == "CAPTION":
        return {"id": spec["id"], "image": img, "caption": spec["messages"][1][1]}
    raise AssertionError(schema)


def mix_refs(text: str, ids: list) -> str:
    """MIX's text: the k-th ``<image>`` placeholder as ``<image>ids[k]</image>``."""
    parts = text.split(IMAGE_TOKEN)
    return parts[0] + "".join(f"<image>{i}</image>{p}" for i, p in zip(ids, parts[1:]))


def stored(schema: str, row: dict) -> dict:
    """A row as it is stored: normalized, every field of the schema present."""
    s = BUILTIN[schema]
    norm = s.normalize_row(row)
    return {f: norm.get(f) for f in s.names}


PAIRS_OF_SCHEMAS = [(a, b) for a, b in itertools.permutations(NAMES, 2)]


@pytest.mark.parametrize("a,b", PAIRS_OF_SCHEMAS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_is_lossless(a, b, data):
    spec = data.draw(specs(a, b))
    row = build(a, spec, data.draw(st.booleans()))
    assert BUILTIN[a].validate_row(row) == [], row
    mid = convert_row(row, a, b)
    assert BUILTIN[b].validate_row(mid) == [], (row, mid)
    assert stored(b, mid) == stored(b, build(b, spec, False))
    back = convert_row(mid, b, a)
    assert stored(a, back) == stored(a, row)


@pytest.mark.parametrize("a", NAMES)
@given(data=st.data())
@settings(max_examples=20, deadline=None)
def test_identity_conversion(a, data):
    row = build(a, data.draw(specs(a, a)), False)
    assert stored(a, convert_row(row, a, a)) == stored(a, row)


@pytest.mark.parametrize("a,b", PAIRS_OF_SCHEMAS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(data=st.data())
def test_any_row_converts_losslessly_or_raises(a, b, data):
    """Rows of ``a`` free of ``b``'s limits: either the conversion raises or the way back gives the row."""
    spec = data.draw(specs(a, a))
    row = build(a, spec, False)
    try:
        mid = convert_row(row, a, b)
    except ConversionError:
        return
    assert BUILTIN[b].validate_row(mid) == []
    assert stored(a, convert_row(mid, b, a)) == stored(a, row)


LOSSY = [
    ("MESSAGES", {"messages": [{"role": "user", "content": "<image><image>"}], "images": ["a.png", "b.png"]},
     "PAIRS", "2 images"),
    ("MIX", {"images": [{"id": 4, "url": "a.png"}], "conversations": []}, "SHAREGPT", "image ids"),
    ("MIX", {"images": [{"id": 4, "url": "a.png"}], "conversations": []}, "MM", "image ids"),
    ("MM", {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "meta": {"k": 1}},
     "PAIRS", "meta"),
    ("MM", {"image": ["a.png", "b.png"], "conversations": [{"from": "human", "value": "<image>"},
                                                          {"from": "gpt", "value": "a"}]}, "CAPTION", "2 images"),
    ("MESSAGES", {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}, "MM", "system"),
    ("MESSAGES", {"messages": [{"role": "system", "content": "s"}]}, "MIX", "system"),
    ("MESSAGES", {"messages": [{"role": "user", "content": "q"}], "images": [{"path": "a", "bytes": b"\x89"}]},
     "MIX", "bytes"),
    ("MM", {"conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "q2"}]}, "PAIRS", "pairs"),
    ("MM", {"conversations": [{"from": "human", "value": "q"}]}, "PAIRS", "pairs"),
    ("MM", {"image": "a.png", "conversations": [{"from": "human", "value": "describe <image>"},
                                               {"from": "gpt", "value": "a"}]}, "CAPTION", "caption"),
    ("PAIRS", {"conversations": [["q", "a"], ["q2", "a2"]]}, "CAPTION", "caption"),
]


@pytest.mark.parametrize("src,row,dst,why", LOSSY)
def test_lossy_conversions_raise(src, row, dst, why):
    with pytest.raises(ConversionError) as ei:
        convert_row(row, src, dst)
    msg = str(ei.value)
    assert msg.startswith(f"cannot convert to {dst} without loss")
    assert msg == msg.lower() or dst in msg


def test_dataset_convert_round_trip_and_error_names_row():
    rows = [{"id": str(i), "image": f"{i}.png", "caption": f"cap {i}"} for i in range(4)]
    ds = dc.MMDataset.from_rows(rows, schema="CAPTION")
    mm = ds.convert("MM")
    assert mm.schema.name == "MM" and len(mm) == 4
    assert mm[2]["conversations"] == [{"from": "human", "value": IMAGE_TOKEN}, {"from": "gpt", "value": "cap 2"}]
    assert mm.convert("CAPTION").to_list() == ds.to_list()
    assert ds.to_list() == dc.MMDataset.from_rows(rows, schema="CAPTION").to_list()  # the original is unchanged
    two = dc.MMDataset.from_rows([{"id": "0", "images": ["a.png"], "messages": [{"role": "user", "content": "x"},
                                                                                {"role": "assistant", "content": "y"}]},
                                  {"id": "1", "images": ["a.png", "b.png"], "messages": []}], schema="MESSAGES")
    with pytest.raises(ConversionError) as ei:
        two.convert("PAIRS")
    assert "row 1" in str(ei.value) and "2 images" in str(ei.value)
    assert "row 0" not in str(ei.value)


def test_dataset_convert_keeps_meta_and_extra_columns():
    rows = [{"id": "1", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
             "meta": {"src": "web", "score": 0.5}, "lang": "en"}]
    ds = dc.MMDataset.from_rows(rows, schema="MM")
    msg = ds.convert("MESSAGES")
    assert json.loads(msg[0]["meta"]) == {"src": "web", "score": 0.5}
    assert msg[0]["lang"] == "en"
    assert msg.convert("MM").to_list() == ds.to_list()
