"""Sharded writes with a manifest: shard sizes by rows and by bytes, manifest contents, corruption
detection, loading a shard directory back in order, and what a directory with a manifest reads: exactly the files
it lists, never an unfinished write unless asked. (Writes killed with -9: test_kill_matrix.py.)"""

import hashlib
import json
import os
import uuid

import fsspec
import pytest

import datacopilot as dc
from datacopilot import MMDataset
from datacopilot.errors import DataCopilotError, InputError


@pytest.fixture(scope="module")
def ds():
    rows = [{"id": f"r{i:04d}", "image": f"i/{i}.png",
             "conversations": [{"from": "human", "value": "q" * (i % 13)}, {"from": "gpt", "value": f"a{i}"}]}
            for i in range(1000)]
    return MMDataset.from_rows(rows, schema="MM")


def ids(d):
    return [r["id"] for r in d]


@pytest.mark.parametrize("fmt", ["arrow", "parquet", "jsonl"])
def test_by_rows(ds, tmp_path, fmt):
    man = ds.write_shards(str(tmp_path / "out"), format=fmt, max_rows_per_shard=300)
    assert [s["rows"] for s in man["shards"]] == [300, 300, 300, 100]
    ext = {"arrow": ".arrow", "parquet": ".parquet", "jsonl": ".jsonl"}[fmt]
    assert [s["file"] for s in man["shards"]] == [f"part-g0001-{i:05d}{ext}" for i in range(4)]
    assert man["rows"] == 1000 and man["schema"] == "MM" and man["format"] == fmt
    assert man["complete"] is True and man["generation"] == 1
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk == man
    for s in man["shards"]:
        data = (tmp_path / "out" / s["file"]).read_bytes()
        assert s["bytes"] == len(data)
        assert s["sha256"] == hashlib.sha256(data).hexdigest()
    assert sorted(os.listdir(tmp_path / "out")) == sorted([s["file"] for s in man["shards"]] + ["manifest.json"])
    back = dc.load(str(tmp_path / "out"))
    assert back.schema.name == "MM"
    assert back.to_list() == ds.to_list()
    part = dc.load(str(tmp_path / "out" / man["shards"][2]["file"]))
    assert ids(part) == [f"r{i:04d}" for i in range(600, 900)]
    assert dc.verify_shards(str(tmp_path / "out")) == man


def test_by_bytes(ds, tmp_path):
    limit = ds.nbytes // 7
    man = dc.write_shards(ds, str(tmp_path / "b"), max_rows_per_shard=None, max_bytes_per_shard=limit)
    rows = [s["rows"] for s in man["shards"]]
    assert sum(rows) == 1000 and len(rows) >= 7
    assert dc.load(str(tmp_path / "b")).to_list() == ds.to_list()
    for s in man["shards"]:
        assert dc.load(str(tmp_path / "b" / s["file"])).to_arrow().nbytes <= limit
    # both limits: the tighter wins
    man2 = dc.write_shards(ds, str(tmp_path / "c"), max_rows_per_shard=50, max_bytes_per_shard=ds.nbytes)
    assert [s["rows"] for s in man2["shards"]] == [50] * 20


def test_by_bytes_with_skewed_rows(tmp_path):
    small = [{"id": f"s{i}", "caption": "c"} for i in range(300)]
    big = [{"id": f"b{i}", "image": {"path": None, "bytes": bytes([i % 256]) * 20_000}, "caption": "c"}
           for i in range(30)]
    d = MMDataset.from_rows(small + big, schema="CAPTION")
    limit = 100_000
    man = d.write_shards(str(tmp_path / "s"), max_rows_per_shard=None, max_bytes_per_shard=limit)
    for s in man["shards"]:
        assert s["bytes"] <= limit * 1.1, man["shards"]  # the file: the Arrow data plus a little framing
        assert dc.load(str(tmp_path / "s" / s["file"])).to_arrow().nbytes <= limit
    assert sum(s["rows"] for s in man["shards"]) == 330
    assert man["shards"][0]["rows"] > 300  # the small rows share one shard with a few big ones
    assert [s["rows"] for s in man["shards"][1:-1]] == [4] * (len(man["shards"]) - 2)
    huge = d.write_shards(str(tmp_path / "h"), max_rows_per_shard=None, max_bytes_per_shard=10_000)
    assert [s["rows"] for s in huge["shards"]][-30:] == [1] * 30  # a row over the limit gets its own shard
    assert dc.load(str(tmp_path / "h")).to_list() == d.to_list()


def test_manifest_order_not_name_order(ds, tmp_path):
    d = tmp_path / "o"
    man = ds.write_shards(str(d), max_rows_per_shard=400)
    man["shards"].reverse()
    (d / "manifest.json").write_text(json.dumps(man))
    assert ids(dc.load(str(d))) == ids(ds[800:]) + ids(ds[400:800]) + ids(ds[:400])


def test_verify_detects_corruption(ds, tmp_path):
    d = tmp_path / "v"
    man = ds.write_shards(str(d), max_rows_per_shard=250)
    bad = d / man["shards"][1]["file"]
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError) as ei:
        dc.verify_shards(str(d))
    assert str(bad) in str(ei.value) and "checksum mismatch" in str(ei.value)
    bad.write_bytes(bytes(data[:-10]))
    with pytest.raises(InputError, match="checksum mismatch"):
        dc.verify_shards(str(d))
    bad.unlink()
    with pytest.raises(InputError) as ei:
        dc.verify_shards(str(d))
    assert "missing" in str(ei.value) and str(bad) in str(ei.value)
    (d / "manifest.json").unlink()
    with pytest.raises(InputError, match="manifest"):
        dc.verify_shards(str(d))


def test_memory_fs_shards(ds):
    base = f"memory://shards-{uuid.uuid4().hex[:8]}"
    man = ds.write_shards(base, max_rows_per_shard=600)
    assert [s["rows"] for s in man["shards"]] == [600, 400]
    assert dc.verify_shards(base)["rows"] == 1000
    assert dc.load(base).to_list() == ds.to_list()
    fsspec.filesystem("memory").rm(base.split("://")[1], recursive=True)


def test_empty_and_bad_limits(ds, tmp_path):
    man = ds[:0].write_shards(str(tmp_path / "e"))
    assert man["rows"] == 0 and sum(s["rows"] for s in man["shards"]) == 0
    assert len(dc.load(str(tmp_path / "e"))) == 0
    with pytest.raises(DataCopilotError):
        ds.write_shards(str(tmp_path / "x"), max_rows_per_shard=0)
    with pytest.raises(DataCopilotError):
        ds.write_shards(str(tmp_path / "x"), max_bytes_per_shard=-1)
    with pytest.raises(DataCopilotError):
        ds.write_shards(str(tmp_path / "x"), format="csv")


def test_a_new_write_replaces_the_old_generation_whole(ds, tmp_path):
    d = tmp_path / "g"
    ds[:500].write_shards(str(d), max_rows_per_shard=100)
    man = ds.write_shards(str(d), format="parquet", max_rows_per_shard=400)
    assert man["generation"] == 2
    assert sorted(os.listdir(d)) == ["manifest.json", "part-g0002-00000.parquet", "part-g0002-00001.parquet",
                                     "part-g0002-00002.parquet"]
    assert dc.load(str(d)).to_list() == ds.to_list()


def test_load_reads_exactly_the_files_the_manifest_lists(ds, tmp_path):
    d = tmp_path / "m"
    ds[:300].write_shards(str(d), max_rows_per_shard=100)
    ds[300:350].write_shards(str(tmp_path / "other"))
    stray = next((tmp_path / "other").glob("part-*.arrow"))
    os.rename(stray, d / "part-zzzz-00000.arrow")  # a file the manifest does not name: not part of the output
    (d / "notes.jsonl").write_text('{"id": "x", "caption": "not data"}\n')
    assert ids(dc.load(str(d))) == ids(ds[:300])


def test_an_unfinished_write_is_invisible_and_then_refused(ds, tmp_path):
    d = tmp_path / "u"
    ds[:200].write_shards(str(d), max_rows_per_shard=100)
    stage = d / ".staging-g0002"  # what a write killed before its publishing step leaves
    stage.mkdir()
    (stage / "part-g0002-00000.arrow").write_bytes((d / "part-g0001-00000.arrow").read_bytes())
    assert ids(dc.load(str(d))) == ids(ds[:200])  # the previous output, unchanged
    (d / "manifest.json").unlink()
    with pytest.raises(InputError, match="interrupted before it published anything"):
        dc.load(str(d))
    for f in d.glob("part-*"):
        f.unlink()
    with pytest.raises(InputError, match="interrupted"):  # hidden staging files are never listed as data
        dc.load(str(d))
    again = ds[:50].write_shards(str(d))  # a new write clears what the interrupted one left
    assert again["generation"] == 3 and sorted(os.listdir(d)) == ["manifest.json", "part-g0003-00000.arrow"]


def test_an_incomplete_manifest_is_refused_unless_partial(ds, tmp_path):
    d = tmp_path / "p"
    man = ds.write_shards(str(d), max_rows_per_shard=400)
    (d / "manifest.json").write_text(json.dumps({**man, "complete": False}))
    with pytest.raises(InputError) as ei:
        dc.load(str(d))
    assert "incomplete output" in str(ei.value) and "partial=True" in str(ei.value)
    assert len(dc.load(str(d), partial=True)) == 1000
    legacy = {**man, "pipeline": {"units": ["a", "b"], "done": ["a"], "complete": False}}
    del legacy["complete"]
    (d / "manifest.json").write_text(json.dumps(legacy))
    with pytest.raises(InputError, match="1 of 2 input"):
        dc.load(str(d))
    with pytest.raises(InputError, match="incomplete"):
        dc.verify_shards(str(d))


def test_load_verify_checks_sizes_and_hashes(ds, tmp_path):
    d = tmp_path / "h"
    man = ds.write_shards(str(d), max_rows_per_shard=250)
    assert dc.load(str(d), verify=True).to_list() == ds.to_list()
    bad = d / man["shards"][2]["file"]
    data = bytearray(bad.read_bytes())
    data[-40] ^= 0x01
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError) as ei:
        dc.load(str(d), verify=True)
    assert str(bad) in str(ei.value) and "checksum mismatch" in str(ei.value)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.jsonl").write_text('{"id": "a", "caption": "x"}\n')
    with pytest.raises(InputError, match="needs a manifest.json"):
        dc.load(str(plain), verify=True)


def test_hidden_folders_are_not_listed(tmp_path):
    d = tmp_path / "plain"
    (d / ".cache").mkdir(parents=True)
    (d / "a.jsonl").write_text('{"id": "a", "caption": "x"}\n')
    (d / ".cache" / "b.jsonl").write_text('{"id": "b", "caption": "y"}\n')
    assert ids(dc.load(str(d), schema="CAPTION")) == ["a"]


def test_webdataset_keys_are_unique_across_shards(tmp_path):
    import tarfile

    rows = [{"id": f"c{i}", "image": {"path": f"i/{i}.png", "bytes": b"\x89PNG" + bytes([i])}, "caption": f"t{i}"}
            for i in range(25)]
    d = MMDataset.from_rows(rows, schema="CAPTION")
    man = d.write_shards(str(tmp_path / "w"), format="webdataset", max_rows_per_shard=10)
    keys = []
    for s in man["shards"]:
        with tarfile.open(tmp_path / "w" / s["file"]) as t:
            keys += sorted({m.name.split(".", 1)[0] for m in t.getmembers()})
    assert len(keys) == 25 and len(set(keys)) == 25 and keys[10] == "000010"
    assert ids(dc.load(str(tmp_path / "w"))) == [f"c{i}" for i in range(25)]
