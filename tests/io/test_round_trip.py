"""Every round trip is lossless, property-tested: generated samples of every built-in schema (multi-image,
text-only, unicode with astral characters and empty strings, mixed str/int ids, extra keys in turns, parts, image
records and at the top level, embedded and path-only images) written to every format and read back give the same
rows, field for field and byte for byte, with the same id types, with and without an explicit schema; and so does
any chain of formats (read A, write B, read B).

A missing key and a null are the same (writers leave null optional keys out), so rows are compared with null keys
dropped; every other value is compared with its type (an int id is not a str id, ``1`` is not ``1.0``).
"""

from __future__ import annotations

import io
import itertools
import os
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

import datacopilot as dc
from datacopilot import MMDataset

FORMATS = ["jsonl", "json", "h5", "parquet", "arrow", "tar", "hf", "polars"]
SCHEMAS = ["MM", "MIX", "SHAREGPT", "MESSAGES", "CAPTION", "PAIRS", "CAULDRON", "MMC4"]
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _png(color) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (2, 2), color).save(buf, format="PNG")
    return buf.getvalue()


PNGS = [_png((i * 60, 10, 200 - i * 50)) for i in range(3)]
FILES = {f"imgs/{i}.png": data for i, data in enumerate(PNGS)}  # path-only images: these exist under the root


# -- generated samples ----------------------------------------------------------------------------------------
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=6)  # astral chars, "", controls; no surrogates
word = st.text("abcxyz", min_size=1, max_size=3)
ids = st.one_of(st.none(), text, st.integers(0, 2**53))
number = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False))
json_value = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-99, 99), text),
                          lambda kids: st.one_of(st.lists(kids, max_size=2),
                                                 st.dictionaries(word, kids, max_size=2)), max_leaves=4)


@st.composite
def image(draw, extra=True):
    """An embedded image (bytes, with or without a path) or a path-only one, maybe with a ``width``."""
    n = draw(st.integers(0, len(PNGS) - 1))
    kind = draw(st.sampled_from(["path", "bytes", "both"]))
    if kind == "path" and not draw(st.booleans()):
        return f"imgs/{n}.png"  # as files hold it
    img = {"path": f"imgs/{n}.png" if kind != "bytes" else None, "bytes": PNGS[n] if kind != "path" else None}
    if extra and draw(st.booleans()):
        img["width"] = draw(st.integers(0, 4096))
    return img


def images(max_size=3):
    return st.lists(image(), max_size=max_size)


@st.composite
def turns(draw, roles, role_key="from", text_key="value"):
    out = []
    for role in draw(st.lists(st.sampled_from(roles), min_size=1, max_size=4)):
        t = {role_key: role, text_key: draw(st.one_of(text, st.just("<image>\n"), text.map(lambda s: s + "<image>")))}
        if draw(st.booleans()):
            t["weight"] = draw(number)  # ints and floats across rows: a JSON value column
        out.append(t)
    return out


@st.composite
def extras(draw, row: dict) -> dict:
    """Top-level keys no schema names: ``source`` always text (a plain column), ``extra`` of any JSON shape."""
    if draw(st.booleans()):
        row["source"] = draw(text)
    if draw(st.booleans()):
        row["extra"] = draw(json_value)
    return row


def _with_id(draw, row):
    i = draw(ids)
    if i is not None:
        row["id"] = i
    return row


@st.composite
def mm_row(draw):
    row = _with_id(draw, {"conversations": draw(turns(["human", "gpt"]))})
    shape = draw(st.sampled_from(["none", "one", "many"]))
    if shape == "one":
        row["image"] = draw(image())
    elif shape == "many":
        row["image"] = draw(images())
    if draw(st.booleans()):
        row["meta"] = draw(st.dictionaries(word, json_value, max_size=2))
    return draw(extras(row))


@st.composite
def mix_row(draw):
    imgs = []
    for _ in range(draw(st.integers(1, 3))):
        img = {"id": draw(st.integers(0, 99)), "url": draw(text)}  # SCHEMA.MIX: image ids are integers >= 0
        if draw(st.booleans()):
            img["width"] = draw(st.integers(0, 4096))
        imgs.append(img)
    return draw(extras(_with_id(draw, {"images": imgs, "conversations": draw(turns(["user", "assistant"]))})))


@st.composite
def sharegpt_row(draw):
    roles = ["human", "gpt", "system", "function_call", "observation"]
    row = _with_id(draw, {"conversations": draw(turns(roles)), "system": draw(text)})  # system: tells it from MM
    if draw(st.booleans()):
        row["images"] = draw(images())
    if draw(st.booleans()):
        row["tools"] = draw(text)
    return draw(extras(row))


part = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, text),
    st.just({"type": "image"}),
    st.builds(lambda u: {"type": "image_url", "image_url": {"url": u}}, text),
    st.builds(lambda t, w: {"type": "text", "text": t, "weight": w}, text, st.integers(0, 9)),
)


@st.composite
def messages_row(draw):
    msgs = []
    for role in draw(st.lists(st.sampled_from(["system", "user", "assistant", "tool"]), min_size=1, max_size=4)):
        content = draw(st.one_of(text, st.lists(part, max_size=3)))
        msgs.append({"role": role, "content": content})
    row = _with_id(draw, {"messages": msgs})
    if draw(st.booleans()):
        row["images"] = draw(images())
    return draw(extras(row))


@st.composite
def caption_row(draw):
    row = _with_id(draw, {"caption": draw(text)})
    if draw(st.booleans()):
        row["image"] = draw(image())
    if draw(st.booleans()):
        row["meta"] = draw(st.dictionaries(word, json_value, max_size=2))
    return draw(extras(row))


@st.composite
def pairs_row(draw):
    convs = draw(st.lists(st.lists(text, min_size=2, max_size=2), min_size=1, max_size=3))
    row = _with_id(draw, {"conversations": convs})
    if draw(st.booleans()):
        row["image"] = draw(image())
    return draw(extras(row))


@st.composite
def cauldron_row(draw):
    texts = []
    for _ in range(draw(st.integers(1, 3))):
        t = {"user": draw(text), "assistant": draw(text)}
        if draw(st.booleans()):
            t["source"] = draw(word)
        texts.append(t)
    return draw(extras(_with_id(draw, {"images": draw(images()), "texts": texts})))


@st.composite
def mmc4_row(draw):
    sentences = draw(st.lists(text, min_size=1, max_size=3))
    infos = []
    for _ in range(draw(st.integers(0, 2))):
        info = {"image_name": draw(text), "matched_text_index": draw(st.integers(0, len(sentences) - 1))}
        if draw(st.booleans()):
            info["matched_sim"] = draw(st.floats(0, 1))
        if draw(st.booleans()):
            info["raw_url"] = draw(text)
        infos.append(info)
    return draw(extras(_with_id(draw, {"image_info": infos, "text_list": sentences})))


ROWS = {"MM": mm_row(), "MIX": mix_row(), "SHAREGPT": sharegpt_row(), "MESSAGES": messages_row(),
        "CAPTION": caption_row(), "PAIRS": pairs_row(), "CAULDRON": cauldron_row(), "MMC4": mmc4_row()}


@st.composite
def dataset(draw, schemas=tuple(SCHEMAS)):
    name = draw(st.sampled_from(schemas))
    rows = draw(st.lists(ROWS[name], min_size=1, max_size=4))
    return name, rows


# -- comparing rows -------------------------------------------------------------------------------------------
def strict(v):
    """``v`` with null dict entries dropped and every scalar tagged with its type (so ``1`` differs from ``1.0``
    and ``"1"``)."""
    if isinstance(v, dict):
        return {k: strict(x) for k, x in v.items() if x is not None}
    if isinstance(v, (list, tuple)):
        return [strict(x) for x in v]
    if v is None or isinstance(v, str):
        return v
    return (type(v).__name__, v)


def assert_same_rows(got: MMDataset, want: MMDataset, how: str) -> None:
    assert got.schema.name == want.schema.name, f"{how}: schema {got.schema.name}, want {want.schema.name}"
    a, b = [strict(r) for r in got.to_list()], [strict(r) for r in want.to_list()]
    assert len(a) == len(b), f"{how}: {len(a)} rows, want {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
        assert x == y, f"{how}: row {i} differs\n got: {x!r}\nwant: {y!r}"


def embedded(ds: MMDataset) -> MMDataset:
    """``ds`` as a webdataset gives it back: every image carries its bytes (path-only ones read from the root)."""
    def fill(v):
        if isinstance(v, list):
            return [fill(x) for x in v]
        if isinstance(v, dict) and v.get("bytes") is None and v.get("path") in FILES:
            return {**v, "bytes": FILES[v["path"]]}
        return v

    from datacopilot.transforms import image_columns

    cols = image_columns(ds.schema)
    rows = [{k: fill(v) if k in cols else v for k, v in r.items()} for r in ds.to_list()]
    return MMDataset.from_rows(rows, ds.schema)


# -- writing and reading one format ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("round_trip")
    for name, data in FILES.items():
        os.makedirs(d / os.path.dirname(name), exist_ok=True)
        (d / name).write_bytes(data)
    return str(d)


def through(ds: MMDataset, fmt: str, workdir: str, schema: str | None) -> MMDataset:
    """``ds`` written as ``fmt`` and read back (with ``schema``, or detected when None)."""
    if fmt == "hf":
        return MMDataset.from_hf(ds.to_hf(), schema)
    if fmt == "polars":
        return MMDataset.from_polars(ds.to_polars(), schema)
    path = os.path.join(workdir, f"{uuid.uuid4().hex[:12]}.{fmt}")
    src = MMDataset(ds.to_arrow(), ds.schema, root=workdir)  # the root resolves path-only images for tars
    dc.write(src, path)
    try:
        return dc.load(path, schema=schema)
    finally:
        os.remove(path)


def build(name: str, rows: list) -> MMDataset:
    return MMDataset.from_rows(rows, schema=name)


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=20, **SETTINGS)
@given(data=dataset())
def test_write_then_read_gives_the_same_rows(fmt, data, workdir):
    name, rows = data
    ds = build(name, rows)
    want = embedded(ds) if fmt == "tar" else ds
    for schema in (None, name):
        assert_same_rows(through(ds, fmt, workdir, schema), want, f"{name} through {fmt} (schema={schema})")


PAIRS_OF_FORMATS = list(itertools.permutations(FORMATS, 2))


@settings(max_examples=25, **SETTINGS)
@given(data=dataset(), chain=st.lists(st.sampled_from(FORMATS), min_size=2, max_size=3))
def test_any_chain_of_formats_gives_the_same_rows(data, chain, workdir):
    name, rows = data
    ds = build(name, rows)
    out = ds
    for fmt in chain:
        out = through(out, fmt, workdir, None)
    want = embedded(ds) if "tar" in chain else ds
    assert_same_rows(out, want, f"{name} through {' -> '.join(chain)}")


@settings(max_examples=15, **SETTINGS)
@given(data=dataset())
def test_built_rows_keep_what_was_given(data):
    """The generator's rows as the dataset holds them: ids keep their type, images their bytes and extra keys,
    turns their ``weight``, extra columns their values (the round trips above start from these)."""
    name, rows = data
    got = build(name, rows).to_list()
    for r, g in zip(rows, got):
        for key in ("id", "source", "extra"):
            assert strict(g.get(key)) == strict(r.get(key)), (key, r, g)
        turns_key = {"MM": "conversations", "MIX": "conversations", "SHAREGPT": "conversations"}.get(name)
        if turns_key:
            assert [strict(t) for t in g[turns_key]] == [strict(t) for t in r[turns_key]]
        for key in ("image", "images"):
            if key in r and name != "MIX":
                norm = (lambda v: {"path": v} if isinstance(v, str) else v)
                want = [norm(v) for v in r[key]] if isinstance(r[key], list) else norm(r[key])
                assert strict(g[key]) == strict(want)


# -- files as HF writes them ----------------------------------------------------------------------------------
def test_cauldron_parquet_as_hf_writes_it_goes_through_every_writer(tmp_path):
    """HF's ``Sequence(Image())`` is ``list<struct<bytes, path>>`` (bytes first) beside ``texts`` structs: every
    writer takes it and every reader gives the same rows back."""
    import datasets

    feats = datasets.Features({"images": datasets.Sequence(datasets.Image()),
                               "texts": [{"user": datasets.Value("string"), "assistant": datasets.Value("string"),
                                          "source": datasets.Value("string")}]})
    hf = datasets.Dataset.from_dict({
        "images": [[{"bytes": PNGS[0], "path": None}], [{"bytes": PNGS[1], "path": "q.png"}, {"bytes": PNGS[2], "path": None}]],
        "texts": [[{"user": "What is it?", "assistant": "a cat", "source": "vqav2"}],
                  [{"user": "u2", "assistant": "a2", "source": "s2"}]]}, features=feats)
    hf.to_parquet(str(tmp_path / "cauldron.parquet"))
    ds = dc.load(str(tmp_path / "cauldron.parquet"))
    assert ds.schema.name == "CAULDRON" and ds[1]["images"][0] == {"path": "q.png", "bytes": PNGS[1]}
    for fmt in ("jsonl", "json", "h5", "parquet", "arrow", "tar"):
        assert_same_rows(through(ds, fmt, str(tmp_path), None), ds, f"cauldron through {fmt}")


def test_a_datasets_json_feature_is_decoded_not_quoted(tmp_path):
    """HF datasets 5 stores a ``Json`` feature as JSON text, marked in the ``huggingface`` metadata: the ids come
    in as the string and the integer they encode, not as text with quotes."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = {"huggingface": json.dumps({"info": {"features": {
        "id": {"_type": "Json"}, "caption": {"dtype": "string", "_type": "Value"}}}})}
    table = pa.table({"id": ['"a1"', "7"], "caption": ["x", "y"]}).replace_schema_metadata(meta)
    pq.write_table(table, tmp_path / "hf5.parquet")
    ds = dc.load(str(tmp_path / "hf5.parquet"))
    assert ds.schema.name == "CAPTION" and [r["id"] for r in ds] == ["a1", 7]
    bad = table.set_column(0, "id", pa.array(["a1", "7"]))
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(dc.errors.InputError, match=r"bad.parquet: row 0: column 'id' is a Json feature"):
        dc.load(str(tmp_path / "bad.parquet"))


def test_hf_keeps_mixed_ids_through_select_and_save_to_disk(tmp_path):
    """Mixed str/int ids go to HF as their storage struct (never stringified) and come back from the dataset, any
    selection of it, and a ``save_to_disk`` directory (whose Arrow metadata HF rewrites: the types ride in the
    dataset's description), through HF's ``load_from_disk`` and through ``dc.load`` of the directory."""
    import datasets

    ds = MMDataset.from_rows([{"id": "a", "caption": "x"}, {"id": 3, "caption": "y"}], "CAPTION")
    hf = ds.to_hf()
    assert hf[1]["id"] == {"str": None, "int": 3}
    assert [r["id"] for r in MMDataset.from_hf(hf)] == ["a", 3]
    assert [r["id"] for r in MMDataset.from_hf(hf.select([1, 0]))] == [3, "a"]
    hf.save_to_disk(str(tmp_path / "hf"))
    assert [r["id"] for r in MMDataset.from_hf(datasets.load_from_disk(str(tmp_path / "hf")))] == ["a", 3]
    assert [r["id"] for r in dc.load(str(tmp_path / "hf"))] == ["a", 3]


# -- the schema of a multi-file load --------------------------------------------------------------------------
def _mm(i):
    return {"id": i, "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": "a"}]}


def test_an_empty_first_file_is_skipped_not_trusted(tmp_path):
    """An empty first shard (or an h5 export with fewer rows than files) says nothing about the schema: the
    files after it are detected and validated as MM, a bad role among them is reported."""
    from datacopilot.io.h5 import write_h5_parts

    (tmp_path / "a-0.jsonl").write_text("")
    dc.write(MMDataset.from_rows([_mm(1), _mm("b")], "MM"), str(tmp_path / "a-1.jsonl"))
    ds = dc.load([str(tmp_path / "a-0.jsonl"), str(tmp_path / "a-1.jsonl")])
    assert ds.schema.name == "MM" and [r["id"] for r in ds] == [1, "b"]
    (tmp_path / "b-0.jsonl").write_text("")
    (tmp_path / "b-1.jsonl").write_text('{"id": 1, "conversations": [{"from": "bot", "value": "hi"}]}\n')
    with pytest.raises(dc.errors.ValidationError, match=r"b-1.jsonl:1: conversations\[0\].from"):
        dc.load([str(tmp_path / "b-0.jsonl"), str(tmp_path / "b-1.jsonl")])
    paths = write_h5_parts(MMDataset.from_rows([_mm(1)], "MM")[:0], str(tmp_path / "h5"), rows_per_file=1)
    write_h5_parts(MMDataset.from_rows([_mm(2), _mm(3)], "MM"), str(tmp_path / "h5"), part="z", rows_per_file=1)
    ds = dc.load(str(tmp_path / "h5"))
    assert len(paths) == 1 and ds.schema.name == "MM" and [r["id"] for r in ds] == [2, 3]


def test_files_of_different_shapes_are_an_error_naming_each(tmp_path):
    dc.write(MMDataset.from_rows([_mm(1)], "MM"), str(tmp_path / "a.jsonl"))
    dc.write(MMDataset.from_rows([{"id": 2, "caption": "c"}], "CAPTION"), str(tmp_path / "b.jsonl"))
    with pytest.raises(dc.errors.SchemaError) as e:
        dc.load(str(tmp_path))
    msg = str(e.value)
    assert "a.jsonl: MM (columns ['id', 'image', 'conversations', 'meta'])" in msg
    assert "b.jsonl: CAPTION (columns ['id', 'image', 'caption', 'meta'])" in msg


def test_files_that_one_schema_reads_load_as_it(tmp_path):
    """A ShareGPT shard without system turns looks like MM; the shard with them makes the load SHAREGPT."""
    dc.write(MMDataset.from_rows([_mm(1)], "MM"), str(tmp_path / "a.jsonl"))
    sys_row = {"id": 2, "conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"},
                                          {"from": "gpt", "value": "a"}]}
    dc.write(MMDataset.from_rows([sys_row], "SHAREGPT"), str(tmp_path / "b.jsonl"))
    ds = dc.load(str(tmp_path))
    assert ds.schema.name == "SHAREGPT" and [r["id"] for r in ds] == [1, 2]
    assert ds[1]["conversations"][0] == {"from": "system", "value": "s"}
