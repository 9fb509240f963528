"""Interop with polars, pandas, Hugging Face datasets and Arrow: round trips keep rows and schema."""

import json

import datasets
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import datacopilot as dc
from datacopilot import MMDataset


@pytest.fixture
def ds():
    rows = [{"id": str(i), "image": {"path": f"{i}.png", "bytes": b"\x89PNG" * i if i % 2 else None},
             "conversations": [{"from": "human", "value": f"<image> q{i}"}, {"from": "gpt", "value": f"a{i}"}],
             "meta": {"k": i, "tags": ["x"]}} for i in range(6)]
    return MMDataset.from_rows(rows, schema="MM", root="/data")


def test_polars_round_trip(ds):
    df = ds.to_polars()
    assert isinstance(df, pl.DataFrame) and df.height == 6
    assert df["id"].to_list() == [str(i) for i in range(6)]
    assert df["conversations"][2].to_list()[1] == {"from": "gpt", "value": "a2"}
    back = MMDataset.from_polars(df)
    assert back.schema == ds.schema and back.to_list() == ds.to_list()
    loaded = dc.load(df, root="/data")
    assert loaded.schema.name == "MM" and loaded.root == "/data" and loaded.to_list() == ds.to_list()
    # polars work in between: the schema holds as long as the columns fit it
    filtered = MMDataset.from_polars(df.filter(pl.col("id") != "3").with_columns(n=pl.col("id").cast(pl.Int64)))
    assert filtered.schema.name == "MM" and [r["n"] for r in filtered] == [0, 1, 2, 4, 5]


def test_polars_frames_as_found(ds):
    df = pl.DataFrame({"id": ["a", "b"], "image": ["x.png", None], "caption": ["one", "two"]})
    d = dc.load(df)
    assert d.schema.name == "CAPTION"
    assert d[0]["image"] == {"path": "x.png", "bytes": None} and d[1]["image"] is None
    msgs = dc.load(pl.DataFrame({"messages": [[{"role": "user", "content": "hi"}]], "images": [["a.png"]],
                                 "meta": [{"src": "web"}]}))
    assert msgs.schema.name == "MESSAGES"
    assert msgs[0]["images"] == [{"path": "a.png", "bytes": None}] and json.loads(msgs[0]["meta"]) == {"src": "web"}
    forced = dc.load(pl.DataFrame({"conversations": [[{"from": "human", "value": "q"}]]}), schema="MM")
    assert forced.schema.name == "MM"


def test_pandas(ds):
    pdf = ds.to_pandas()
    assert isinstance(pdf, pd.DataFrame) and list(pdf["id"]) == [str(i) for i in range(6)]
    assert list(pdf.columns) == ds.columns
    back = dc.load(pdf)
    assert back.schema == ds.schema and back.to_list() == ds.to_list()
    cap = dc.load(pd.DataFrame({"image": ["a.png", "b.png"], "caption": ["x", "y"]}))
    assert cap.schema.name == "CAPTION" and cap[1]["image"]["path"] == "b.png"


def test_hf_round_trip(ds):
    hf = ds.to_hf()
    assert isinstance(hf, datasets.Dataset) and hf.num_rows == 6
    assert hf[1]["image"] == {"path": "1.png", "bytes": b"\x89PNG"}
    assert hf[4]["conversations"][1] == {"from": "gpt", "value": "a4"}
    back = MMDataset.from_hf(hf, root="/data")
    assert back.schema == ds.schema and back.to_list() == ds.to_list()
    assert dc.load(hf).to_list() == ds.to_list()


def test_hf_after_select_filter_shuffle(ds):
    hf = ds.to_hf()
    assert [r["id"] for r in MMDataset.from_hf(hf.select([4, 1]))] == ["4", "1"]
    odd = hf.filter(lambda r: int(r["id"]) % 2 == 1)
    assert [r["id"] for r in dc.load(odd)] == ["1", "3", "5"]
    shuffled = hf.shuffle(seed=0)
    assert [r["id"] for r in MMDataset.from_hf(shuffled)] == shuffled["id"]


def test_hf_built_by_hf():
    hf = datasets.Dataset.from_dict({"id": ["a", "b"], "image": ["a.png", "b.png"], "caption": ["x", "y"]})
    d = dc.load(hf)
    assert d.schema.name == "CAPTION" and d[1]["image"] == {"path": "b.png", "bytes": None}
    assert d.validate() == []


def test_arrow_table_and_schema_kept_through_ops(ds):
    t = ds.to_arrow()
    assert isinstance(t, pa.Table) and t.num_rows == 6
    assert dc.load(t).to_list() == ds.to_list()
    chained = MMDataset.from_polars(ds.filter(pl.col("id") != "0").to_polars()).to_hf()
    assert MMDataset.from_hf(chained).schema.name == "MM"
    cap = ds.convert("MESSAGES")
    assert dc.load(cap.to_polars()).schema.name == "MESSAGES"
    assert dc.load(cap.to_pandas()).to_list() == cap.to_list()
    assert dc.load(cap.to_hf()).to_list() == cap.to_list()
