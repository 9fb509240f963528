"""The MMDataset API: indexing, combining, ordering, sampling, cleaning, reshaping, row accounting and
immutability."""

import os

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from datacopilot import MMDataset
from datacopilot.errors import ConversionError, DataCopilotError, SchemaError
from datacopilot.media import ImagePathWarning


def mm_rows(n, image=True):
    return [{"id": f"r{i:03d}", **({"image": f"img/{i}.png"} if image else {}),
             "conversations": [{"from": "human", "value": f"q{i}" + " x" * (i % 4)},
                               {"from": "gpt", "value": f"a{i}"}]} for i in range(n)]


@pytest.fixture
def ds():
    return MMDataset.from_rows(mm_rows(20), schema="MM", root="/data/a")


def ids(d):
    return [r["id"] for r in d]


def check_accounting(rec):
    assert rec.rows_in == rec.rows_out + rec.n_dropped + rec.failed, rec


# -- indexing ---------------------------------------------------------------------------------------------
def test_len_and_int_index(ds):
    assert len(ds) == 20
    assert ds[0]["id"] == "r000" and ds[19]["id"] == "r019"
    assert ds[-1]["id"] == "r019" and ds[-20]["id"] == "r000"
    assert ds[3]["image"] == {"path": "img/3.png", "bytes": None}
    with pytest.raises(IndexError):
        ds[20]
    with pytest.raises(IndexError):
        ds[-21]


def test_slices(ds):
    assert ids(ds[2:5]) == ["r002", "r003", "r004"]
    assert ids(ds[2:9:2]) == ["r002", "r004", "r006", "r008"]
    assert ids(ds[::-7]) == ["r019", "r012", "r005"]
    assert ids(ds[-2:]) == ["r018", "r019"]
    assert len(ds[5:2]) == 0
    assert isinstance(ds[2:5], MMDataset) and ds[2:5].schema == ds.schema and ds[2:5].root == ds.root


def test_list_and_mask(ds):
    assert ids(ds[[3, 0, -1]]) == ["r003", "r000", "r019"]
    assert ids(ds[np.array([1, 1])]) == ["r001", "r001"]
    mask = np.zeros(20, dtype=bool)
    mask[[4, 7]] = True
    assert ids(ds[mask]) == ["r004", "r007"]
    assert ids(ds[list(mask)]) == ["r004", "r007"]
    assert len(ds[[]]) == 0
    with pytest.raises(IndexError):
        ds[[0, 20]]
    with pytest.raises(IndexError):
        ds[np.ones(3, dtype=bool)]


# -- combining --------------------------------------------------------------------------------------------
def test_add_same_root(ds):
    both = ds[:3] + ds[10:12]
    assert ids(both) == ["r000", "r001", "r002", "r010", "r011"]
    assert both.root == "/data/a"
    assert both[0]["image"]["path"] == "img/0.png"


def test_add_different_roots_makes_paths_absolute(ds):
    other = MMDataset.from_rows(mm_rows(2), schema="MM", root="/data/b")
    url = MMDataset.from_rows(mm_rows(1), schema="MM", root="memory://bucket/c")
    with pytest.warns(ImagePathWarning, match="made absolute: the datasets resolve against 2 root"):
        both = ds[:2] + other + url
    assert both.root is None
    assert [r["image"]["path"] for r in both] == [
        os.path.join("/data/a", "img/0.png"), os.path.join("/data/a", "img/1.png"),
        os.path.join("/data/b", "img/0.png"), os.path.join("/data/b", "img/1.png"),
        "memory://bucket/c/img/0.png"]
    assert ds[0]["image"]["path"] == "img/0.png"  # the originals are unchanged


def test_add_different_schema_raises(ds):
    cap = MMDataset.from_rows([{"id": "c", "image": "x.png", "caption": "a cap"}], schema="CAPTION")
    with pytest.raises(SchemaError) as ei:
        cap + ds
    assert "CAPTION" in str(ei.value) and "MM" in str(ei.value)
    with pytest.raises(SchemaError):
        ds + cap
    assert ids(ds + cap.convert("MM"))[-1] == "c"


# -- ordering and sampling --------------------------------------------------------------------------------
def test_sample_deterministic(ds):
    a, b, c = ds.sample(7, seed=1), ds.sample(7, seed=1), ds.sample(7, seed=2)
    assert ids(a) == ids(b) and ids(a) != ids(c)
    assert len(set(ids(a))) == 7 and set(ids(a)) <= set(ids(ds))
    assert len(ds.sample(20, seed=0)) == 20
    with pytest.raises(DataCopilotError):
        ds.sample(21)


def test_shuffle(ds):
    a, b = ds.shuffle(seed=3), ds.shuffle(seed=3)
    assert ids(a) == ids(b)
    assert ids(a) != ids(ds) and sorted(ids(a)) == ids(ds)


def test_sort_by_column_and_fn(ds):
    shuffled = ds.shuffle(seed=0)
    assert ids(shuffled.sort("id")) == ids(ds)
    assert ids(shuffled.sort("id", reverse=True)) == ids(ds)[::-1]
    by_len = shuffled.sort(lambda r: (len(r["conversations"][0]["value"]), r["id"]))
    keys = [(len(r["conversations"][0]["value"]), r["id"]) for r in by_len]
    assert keys == sorted(keys)
    rev = ds.sort(lambda r: r["id"], reverse=True)
    assert ids(rev) == ids(ds)[::-1]
    with pytest.raises(DataCopilotError):
        ds.sort("nope")


# -- cleaning ---------------------------------------------------------------------------------------------
def test_nonempty():
    rows = mm_rows(5)
    rows[1]["conversations"][1]["value"] = ""
    rows[3]["conversations"] = []
    d = MMDataset.from_rows(rows, schema="MM")
    out = d.nonempty()
    assert ids(out) == ["r000", "r002", "r004"]
    rec = out.history()[-1]
    assert rec.rows_in == 5 and rec.rows_out == 3 and rec.n_dropped == 2
    check_accounting(rec)


def test_unique_keeps_first():
    rows = mm_rows(6)
    for i, r in enumerate(rows):
        r["group"] = ["a", "b", "a", "c", "b", "a"][i]
    d = MMDataset.from_rows(rows, schema="MM")
    u = d.unique("group")
    assert ids(u) == ["r000", "r001", "r003"]
    rec = u.history()[-1]
    assert rec.n_dropped == 3 and rec.rows_out == 3
    check_accounting(rec)
    dup = d + d[:2]
    assert ids(dup.unique()) == ids(d)
    assert ids(dup.unique(["id", "group"])) == ids(d)


def test_sanitize_drops_invalid_rows_with_reasons():
    rows = mm_rows(6)
    rows[1]["conversations"][0]["from"] = "bot"
    rows[4]["conversations"][1]["from"] = "bot"
    rows[5]["conversations"] = None
    d = MMDataset.from_rows(rows, schema="MM", validate=False)
    assert len(d.validate()) == 3
    clean = d.sanitize()
    assert ids(clean) == ["r000", "r002", "r003"]
    rec = clean.history()[-1]
    assert rec.dropped == {"invalid conversations[].from": 2, "invalid conversations": 1}
    check_accounting(rec)
    assert clean.validate() == []


# -- map and filter ---------------------------------------------------------------------------------------
def test_map_and_drop(ds):
    def upper(r):
        if r["id"].endswith("3"):
            return None
        return {**r, "id": r["id"].upper()}

    out = ds.map(upper)
    assert ids(out) == [f"R{i:03d}" for i in range(20) if i % 10 != 3]
    assert out.schema == ds.schema
    rec = out.history()[-1]
    assert rec.op == "map upper" and rec.dropped == {"map returned None": 2}
    check_accounting(rec)


def test_map_keeps_keys_that_only_some_rows_have(ds):
    out = ds.map(lambda r: {**r, "extra": int(r["id"][1:])} if r["id"] in ("r003", "r017") else r, batch_size=8)
    assert [r["extra"] for r in out] == [3 if i == 3 else 17 if i == 17 else None for i in range(20)]
    out2 = ds.map(lambda r: {**r, "score": 0.5} if r["id"] == "r000" else {**r, "note": "n"})
    assert out2[0]["score"] == 0.5 and out2[0]["note"] is None and out2[1]["note"] == "n" and out2[1]["score"] is None
    retyped = ds.map(lambda r: {**r, "id": int(r["id"][1:])})
    assert retyped.schema == ds.schema and retyped[5]["id"] == 5  # an id may be a string or an integer: kept as given


def test_map_mixed_types_in_a_column_are_kept_as_json_values(ds):
    out = ds.map(lambda r: {**r, "x": 1 if r["id"] == "r000" else "text"})
    assert [r["x"] for r in out][:3] == [1, "text", "text"]
    across = ds.map(lambda r: {**r, "x": 1 if r["id"] < "r010" else "text"}, batch_size=5)
    assert [r["x"] for r in across] == [1] * 10 + ["text"] * 10


def test_map_changes_schema_when_needed(ds):
    out = ds.map(lambda r: {"id": r["id"], "caption": r["conversations"][1]["value"]})
    assert out.schema.name == "CAPTION"
    assert out[0] == {"id": "r000", "image": None, "caption": "a0", "meta": None}


def test_filter_with_reasons(ds):
    def pred(r):
        n = int(r["id"][1:])
        if n % 3 == 0:
            return False, "multiple of 3"
        if n > 15:
            return False
        return True

    out = ds.filter(pred)
    assert ids(out) == [f"r{i:03d}" for i in range(20) if i % 3 and i <= 15]
    rec = out.history()[-1]
    assert rec.dropped == {"multiple of 3": 7, "filter pred": 3}
    check_accounting(rec)


def test_filter_polars_expr(ds):
    out = ds.filter(pl.col("id").str.slice(1).cast(pl.Int64) >= 17)
    assert ids(out) == ["r017", "r018", "r019"]
    rec = out.history()[-1]
    assert rec.rows_in == 20 and rec.rows_out == 3 and rec.n_dropped == 17
    check_accounting(rec)


def test_with_columns(ds):
    out = ds.with_columns(n_turns=pl.col("conversations").list.len(), tag="x")
    assert out[0]["n_turns"] == 2 and out[0]["tag"] == "x"
    assert out.schema == ds.schema and "n_turns" not in ds.columns
    out2 = out.with_columns(pl.col("id").str.to_uppercase())
    assert out2[1]["id"] == "R001" and out2.columns == out.columns


def test_select_drop_rename(ds):
    d = ds.with_columns(tag=pl.lit("t"))
    sel = d.select(["id", "tag"])
    assert sel.columns == ["id", "tag"] and sel[0] == {"id": "r000", "tag": "t"}
    dropped = d.drop(["tag"])
    assert dropped.columns == ds.columns and dropped.schema == ds.schema
    dropped_img = d.drop(["image"])
    # an optional field of the schema stays as a column of nulls; the schema is kept
    assert dropped_img.schema == ds.schema and all(r["image"] is None for r in dropped_img)
    assert d.drop(["conversations"]).schema.name != "MM"  # a required field gone: the schema cannot hold
    ren = d.rename({"tag": "label"})
    assert "label" in ren.columns and "tag" not in ren.columns and ren[0]["label"] == "t"
    with pytest.raises(DataCopilotError):
        d.select(["missing"])
    with pytest.raises(DataCopilotError):
        d.rename({"missing": "x"})


# -- iteration and splitting ------------------------------------------------------------------------------
def test_iteration_is_reentrant(ds):
    small = ds[:4]
    pairs = [(a["id"], b["id"]) for a in small for b in small]
    assert len(pairs) == 16 and pairs[5] == ("r001", "r001")
    it1, it2 = iter(small), iter(small)
    assert next(it1)["id"] == "r000" and next(it1)["id"] == "r001" and next(it2)["id"] == "r000"


def test_iter_batches(ds):
    batches = list(ds.iter_batches(6))
    assert [b.num_rows for b in batches] == [6, 6, 6, 2]
    assert all(isinstance(b, pa.RecordBatch) for b in batches)
    assert [i for b in batches for i in b.column("id").to_pylist()] == ids(ds)
    with pytest.raises(DataCopilotError):
        list(ds.iter_batches(0))


def test_split(ds):
    a, b = ds.split(0.8)
    assert len(a) == 16 and len(b) == 4 and ids(a) + ids(b) == ids(ds)
    parts = ds.split([0.5, 0.25, 0.25], seed=4)
    assert [len(p) for p in parts] == [10, 5, 5]
    assert sorted(i for p in parts for i in ids(p)) == ids(ds)
    assert [ids(p) for p in parts] == [ids(p) for p in ds.split([0.5, 0.25, 0.25], seed=4)]
    assert [len(p) for p in ds.split(1)] == [20, 0]
    with pytest.raises(DataCopilotError):
        ds.split([0.5, 0.6])


@pytest.mark.parametrize("n", [1, 3, 7, 20, 25])
@pytest.mark.parametrize("contiguous", [True, False])
def test_shard_covers_all_rows_once(ds, n, contiguous):
    parts = [ds.shard(n, i, contiguous=contiguous) for i in range(n)]
    got = [i for p in parts for i in ids(p)]
    assert sorted(got) == ids(ds) and len(got) == len(ds)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    if contiguous:
        assert got == ids(ds)
    with pytest.raises(DataCopilotError):
        ds.shard(n, n)


def test_head_and_info(ds, capsys):
    assert ids(ds.head(3)) == ["r000", "r001", "r002"]
    assert len(ds.head()) == 5
    info = ds.filter(lambda r: r["id"] != "r001").info()
    printed = capsys.readouterr().out
    assert info["rows"] == 19 and info["schema"] == "MM"
    assert set(info["columns"]) == {"id", "image", "conversations", "meta"}
    assert info["history"][0]["rows_in"] == 20 and info["history"][0]["rows_out"] == 19
    assert "19 rows" in printed and "conversations" in printed


def test_history_accounting_over_a_chain(ds):
    out = (ds.filter(lambda r: (int(r["id"][1:]) % 2 == 0, "odd"))
             .map(lambda r: None if r["id"] == "r004" else r)
             .map(lambda r: r if r["id"] != "r008" else 1 / 0, on_error="skip")
             .nonempty()
             .unique("id"))
    hist = out.history()
    assert [h.rows_in for h in hist] == [20, 10, 9, 8, 8]
    assert [h.rows_out for h in hist] == [10, 9, 8, 8, 8]
    assert hist[2].failed == 1
    for h in hist:
        check_accounting(h)
    assert ds.history() == []


def test_immutability(ds):
    before = ds.to_list()
    cols = list(ds.columns)
    ds.map(lambda r: {**r, "id": "x"})
    ds.filter(lambda r: False)
    ds.with_columns(tag=pl.lit(1))
    ds.sort("id", reverse=True)
    ds.shuffle(seed=1)
    ds.rename({"id": "key"})
    ds.drop(["image"])
    ds.convert("MESSAGES")
    ds.sanitize()
    ds + ds
    ds[:3].map(lambda r: r)
    row = ds[0]
    row["id"] = "changed"
    row["conversations"][0]["value"] = "changed"
    assert ds.to_list() == before and ds.columns == cols and ds.history() == []


def test_convert(ds):
    msg = ds.convert("MESSAGES")
    assert msg.schema.name == "MESSAGES"
    assert msg[0]["messages"][0] == {"role": "user", "content": "q0"}
    assert msg[0]["images"] == [{"path": "img/0.png", "bytes": None}]
    assert msg.root == ds.root
    assert msg.convert("MM").to_list() == ds.to_list()
    assert ds.convert("MM") is ds
    with pytest.raises(ConversionError):
        ds.convert("CAPTION")


def test_select_and_drop_take_one_name_as_a_string():
    ds = MMDataset.from_rows([{"id": "a", "caption": "x", "image": None}], schema="CAPTION")
    assert ds.select("id").columns == ["id"]
    assert "caption" not in ds.drop("caption").columns
