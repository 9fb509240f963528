"""img2dataset webdatasets: its tars load as CAPTION rows with the metadata kept, its output folders load the
tars (not the metadata parquet or the stats), and what loads writes back and reads again unchanged."""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import datacopilot
from datacopilot.errors import InputError, ValidationError
from datacopilot.io.wds import read_wds

from .img2dataset_fixture import Sample, compute_key, image_bytes, write_shard


def _samples(fmt="JPEG"):
    return [
        Sample("http://127.0.0.1/a.jpg", "a red square", image_bytes((255, 0, 0), (6, 4), fmt)),
        Sample("http://127.0.0.1/b.jpg", "蓝色的猫 — a blue cat\non two lines",
               image_bytes((0, 0, 255), (3, 7), fmt),
               extra={"similarity": 0.31, "sample_id": 7}),
        Sample("http://127.0.0.1/gone.jpg", "never downloaded"),  # failed: in the parquet, not in the tar
        Sample("http://127.0.0.1/d.jpg", "green", image_bytes((0, 200, 0), (5, 5), fmt)),
    ]


def _members(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_compute_key_matches_img2dataset():
    assert compute_key(12, 0) == "000000012"
    assert compute_key(3, 1) == "000010003"


@pytest.mark.parametrize("ext,fmt", [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")])
def test_shard_loads_as_caption_rows_with_metadata(tmp_path, ext, fmt):
    samples = _samples(fmt)
    metas = write_shard(tmp_path, 0, samples, encode_format=ext, order=[3, 0, 2, 1],
                        additional_columns={"similarity": pa.float64(), "sample_id": pa.int64()})
    tar = str(tmp_path / "00000.tar")
    members = _members(tar)
    assert list(members)[:3] == sorted([f"000000003.{ext}", "000000003.json", "000000003.txt"])  # TarWriter sorts
    assert "000000002.json" not in members  # the failed download has no sample in the tar

    ds = datacopilot.load(tar)
    assert ds.schema.name == "CAPTION"
    assert ds.to_arrow().column_names == ["id", "image", "caption", "meta"]
    assert [r["id"] for r in ds] == ["000000003", "000000000", "000000001"]  # tar order (completion order)
    by_key = {m["key"]: m for m in metas}
    for row in ds:
        i = int(row["id"])
        assert row["image"] == {"path": f"{row['id']}.{ext}", "bytes": samples[i].image}
        assert row["caption"] == samples[i].caption
        meta = json.loads(row["meta"])
        assert list(meta.items()) == list(by_key[row["id"]].items())  # every key, its value and its order
    assert list(json.loads(ds[0]["meta"]))[:4] == ["similarity", "sample_id", "caption", "url"]
    assert json.loads(ds[2]["meta"])["similarity"] == 0.31 and json.loads(ds[2]["meta"])["exif"] == "{}"
    assert ds.image(2).size == (3, 7) and ds.image(0).size == (5, 5)


def test_keys_of_a_later_shard(tmp_path):
    write_shard(tmp_path, 1, _samples()[:2])
    ds = datacopilot.load(str(tmp_path / "00001.tar"))
    assert [r["id"] for r in ds] == ["000010000", "000010001"]
    assert ds[1]["image"]["path"] == "000010001.jpg"


def test_output_folder_loads_the_tars_with_images(tmp_path):
    out = tmp_path / "out"
    write_shard(out, 0, _samples(), order=[1, 0, 2, 3])
    write_shard(out, 1, _samples()[:2])
    assert sorted(p.name for p in out.iterdir()) == ["00000.parquet", "00000.tar", "00000_stats.json",
                                                     "00001.parquet", "00001.tar", "00001_stats.json"]
    successes = sum(json.loads((out / f"{s}_stats.json").read_text())["successes"] for s in ("00000", "00001"))
    for ds in (datacopilot.load(str(out)), datacopilot.load(str(out), invalid="quarantine")):
        assert len(ds) == successes == 5
        assert len(ds.quarantine or []) == 0
        assert ds.schema.name == "CAPTION"
        assert [r["id"] for r in ds] == ["000000001", "000000000", "000000003", "000010000", "000010001"]
        assert all(r["image"]["bytes"] for r in ds)  # the tars' images, not the parquet's metadata


def test_the_tars_of_an_output_folder_by_glob(tmp_path):
    write_shard(tmp_path, 0, _samples(), order=[1, 0, 2, 3])
    write_shard(tmp_path, 1, _samples()[:2])
    ds = datacopilot.load(str(tmp_path / "*.tar"))
    assert [r["id"] for r in ds] == ["000000001", "000000000", "000000003", "000010000", "000010001"]
    assert [r["caption"] for r in ds] == [_samples()[i].caption for i in (1, 0, 3, 0, 1)]
    assert all(json.loads(r["meta"])["status"] == "success" for r in ds)


def test_the_metadata_parquet_alone_still_reads_as_a_table(tmp_path):
    write_shard(tmp_path, 0, _samples())
    table = pq.read_table(tmp_path / "00000.parquet")
    assert table.column("status").to_pylist() == ["success", "success", "failed_to_download", "success"]
    assert table.schema.field("width").type == pa.int32()


def test_write_back_and_read_again_gives_the_same_rows(tmp_path):
    write_shard(tmp_path / "in", 0, _samples(), additional_columns={"similarity": pa.float64()})
    ds = datacopilot.load(str(tmp_path / "in" / "00000.tar"))
    for name in ("again.tar", "again.parquet", "again.arrow", "again.jsonl", "again.json", "again.h5"):
        out = str(tmp_path / name)
        datacopilot.write(ds, out)
        back = datacopilot.load(out)
        assert back.schema.name == "CAPTION", name
        assert back.to_list() == ds.to_list(), name
    # the datacopilot tar keeps the member names img2dataset gave as the image paths, and the metadata
    js = json.loads(_members(str(tmp_path / "again.tar"))["000000.json"])
    meta = json.loads(js["meta"]) if isinstance(js["meta"], str) else js["meta"]  # text, or an object where
    assert js["image"] == "000000000.jpg" and meta["key"] == "000000000"  # the schema names meta as Json


def test_a_null_caption_is_the_empty_text_img2dataset_wrote(tmp_path):
    write_shard(tmp_path, 0, [Sample("http://127.0.0.1/x.png", None, image_bytes((9, 9, 9)))])
    assert _members(str(tmp_path / "00000.tar"))["000000000.txt"] == b""
    ds = datacopilot.load(str(tmp_path / "00000.tar"))
    assert ds[0]["caption"] == "" and json.loads(ds[0]["meta"])["caption"] is None


def test_without_caption_col_every_row_is_invalid_naming_tar_and_key(tmp_path):
    write_shard(tmp_path, 0, _samples(), caption_col=False)
    tar = str(tmp_path / "00000.tar")
    assert not any(n.endswith(".txt") for n in _members(tar))
    with pytest.raises(ValidationError, match=r"00000\.tar: key '000000000'.*caption") as e:
        datacopilot.load(tar)
    assert "000000003" in str(e.value) and "000000002" not in str(e.value)
    ds = datacopilot.load(tar, invalid="quarantine")
    assert len(ds) == 0 and len(ds.quarantine) == 3
    assert ds.quarantine[0]["_source"].endswith("00000.tar: key '000000000'")


def test_one_sample_without_caption_is_quarantined_the_rest_load(tmp_path):
    write_shard(tmp_path, 0, _samples())
    members = [(n, d) for n, d in _members(str(tmp_path / "00000.tar")).items() if n != "000000001.txt"]
    tar = str(tmp_path / "cut.tar")
    _tar(tar, members)
    with pytest.raises(ValidationError, match=r"cut\.tar: key '000000001'"):
        datacopilot.load(tar)
    ds = datacopilot.load(tar, invalid="quarantine")
    assert [r["id"] for r in ds] == ["000000000", "000000003"]
    assert len(ds.quarantine) == 1 and ds.quarantine[0]["_source"].endswith("cut.tar: key '000000001'")


def test_broken_samples_name_tar_and_key(tmp_path):
    img = image_bytes((1, 1, 1))
    meta = json.dumps({"key": "k", "status": "success"}).encode()
    tar = str(tmp_path / "bad.tar")
    _tar(tar, [
        ("000000000.jpg", img), ("000000000.txt", b"fine"), ("000000000.json", meta),
        ("000000001.jpg", img), ("000000001.txt", b"\xff\xfe broken"),
        ("000000002.jpg", img), ("000000002.txt", b"x"), ("000000002.json", b'{"key": '),
        ("000000003.jpg", img), ("000000003.png", img), ("000000003.txt", b"x"),
        ("000000004.jpg", img), ("000000004.txt", b"x"), ("000000004.npy", b"\x93NUMPY"),
    ])
    with pytest.raises(InputError) as e:
        datacopilot.load(tar)
    msg = str(e.value)
    assert "4 broken sample(s)" in msg
    assert "bad.tar: key '000000001': 000000001.txt: invalid UTF-8 at byte 0" in msg
    assert "bad.tar: key '000000002': 000000002.json: invalid JSON" in msg
    assert "bad.tar: key '000000003': duplicate image members ['000000003.jpg', '000000003.png']" in msg
    assert "bad.tar: key '000000004': member(s) ['000000004.npy'] have no place in an img2dataset sample" in msg
    ds = datacopilot.load(tar, invalid="quarantine")
    assert [r["id"] for r in ds] == ["000000000"] and len(ds.quarantine) == 4
    assert json.loads(ds.quarantine[1]["_row"]) == {"id": "000000002",
                                                    "members": ["000000002.jpg", "000000002.json", "000000002.txt"]}


def test_another_schema_is_refused_not_converted_with_loss(tmp_path):
    write_shard(tmp_path, 0, _samples()[:1])
    with pytest.raises(InputError, match=r"00000\.tar: an img2dataset-style tar .* holds CAPTION rows, got "
                                         r"schema='MM'"):
        datacopilot.load(str(tmp_path / "00000.tar"), schema="MM")
    assert datacopilot.load(str(tmp_path / "00000.tar"), schema="CAPTION")[0]["caption"] == "a red square"


def test_generic_webdataset_caption_members(tmp_path):
    tar = str(tmp_path / "generic.tar")
    img = image_bytes((4, 5, 6), fmt="PNG")
    _tar(tar, [("s/a.png", img), ("s/a.caption", "une légende".encode()), ("s/b.jpg", img), ("s/b.text", b"t")])
    ds = read_wds(tar, None)
    assert ds.schema.name == "CAPTION"
    rows = ds.table.to_pylist()
    assert [r.pop("meta", None) for r in rows] == [None, None]  # no .json: no metadata
    assert rows == [{"id": "s/a", "image": {"path": "s/a.png", "bytes": img}, "caption": "une légende"},
                    {"id": "s/b", "image": {"path": "s/b.jpg", "bytes": img}, "caption": "t"}]


def test_a_datacopilot_caption_tar_still_reads_its_rows(tmp_path):
    img = image_bytes((7, 7, 7), fmt="PNG")
    rows = [{"id": "x", "image": {"path": "x.png", "bytes": img}, "caption": "a cap"}]
    ds = datacopilot.MMDataset.from_rows(rows, schema="CAPTION")
    datacopilot.write(ds, str(tmp_path / "dc.tar"))
    assert set(_members(str(tmp_path / "dc.tar"))) == {"000000.json", "000000.png"}
    assert datacopilot.load(str(tmp_path / "dc.tar")).to_list() == ds.to_list()


def test_deeply_nested_metadata_is_an_error_naming_tar_and_key(tmp_path):
    tar = str(tmp_path / "deep.tar")
    img = image_bytes((1, 1, 1))
    _tar(tar, [("k.jpg", img), ("k.txt", b"x"), ("k.json", b'{"a": ' + b"[" * 20000 + b"]" * 20000 + b"}")])
    with pytest.raises(InputError, match=r"deep\.tar: key 'k': k\.json: invalid JSON: nested too deeply"):
        datacopilot.load(tar)
