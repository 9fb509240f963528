"""Ids that mix strings and integers keep their types through HF datasets (save_to_disk / load_from_disk) and
pandas DataFrames."""

import pytest

import datacopilot as dc
from datacopilot.dataset import MMDataset

datasets = pytest.importorskip("datasets")
pd = pytest.importorskip("pandas")

TURNS = [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "yo"}]
ROWS = [{"id": "a", "image": "x.jpg", "conversations": TURNS},
        {"id": 7, "image": "y.jpg", "conversations": TURNS},
        {"id": "0012", "conversations": TURNS}]


def _ids(ds):
    return [r["id"] for r in ds.to_list()]


def test_mixed_ids_survive_save_to_disk_and_load_from_disk(tmp_path):
    ds = MMDataset.from_rows(ROWS, "MM")
    ds.to_hf().save_to_disk(str(tmp_path / "hf"))
    back = datasets.load_from_disk(str(tmp_path / "hf"))
    assert back.num_rows == 3
    for schema in ("MM", None):
        out = dc.load(back, schema=schema)
        assert _ids(out) == ["a", 7, "0012"]
        assert [type(i) for i in _ids(out)] == [str, int, str]
        assert out.to_list() == ds.to_list()


def test_mixed_ids_survive_a_selection_after_load_from_disk(tmp_path):
    MMDataset.from_rows(ROWS, "MM").to_hf().save_to_disk(str(tmp_path / "hf"))
    back = datasets.load_from_disk(str(tmp_path / "hf")).select([2, 1])
    assert _ids(dc.load(back, schema="MM")) == ["0012", 7]


def test_string_ids_are_untouched_by_the_types_record(tmp_path):
    ds = MMDataset.from_rows([{**r, "id": str(r["id"])} for r in ROWS], "MM")
    hf = ds.to_hf()
    assert hf.info.description == ""  # nothing to record
    hf.save_to_disk(str(tmp_path / "hf"))
    assert _ids(dc.load(datasets.load_from_disk(str(tmp_path / "hf")))) == ["a", "7", "0012"]


def test_pandas_object_column_of_mixed_ids_keeps_each_type():
    df = pd.DataFrame(ROWS)
    for schema in ("MM", None):
        for ds in (MMDataset.from_pandas(df, schema), dc.load(df, schema=schema)):
            assert _ids(ds) == ["a", 7, "0012"]
            assert [type(i) for i in _ids(ds)] == [str, int, str]


def test_pandas_mixed_ids_with_missing_values_stay_missing():
    df = pd.DataFrame({"id": ["a", 7, None], "conversations": [TURNS] * 3})
    assert _ids(MMDataset.from_pandas(df, "MM")) == ["a", 7, None]


def test_pandas_bad_row_is_still_named():
    df = pd.DataFrame({"id": ["a", 7], "conversations": [TURNS, [{"from": "bot", "value": "x"}]]})
    with pytest.raises(dc.errors.ValidationError) as e:
        dc.load(df, schema="MM")
    assert "row 1" in str(e.value) and "from" in str(e.value)
