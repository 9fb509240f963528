"""WebDataset tars: round trips with real images, tars built by hand, and the errors that name tar and key."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
from PIL import Image as PILImage

import datacopilot
from datacopilot import MMDataset
from datacopilot.errors import InputError
from datacopilot.io.wds import image_slots, read_wds, split_name, write_wds


def _turns(q, a):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


@pytest.fixture
def images(tmp_path):
    """Three tiny PNGs drawn with Pillow; {name: bytes}."""
    out = {}
    for i, color in enumerate([(255, 0, 0), (0, 128, 255), (10, 200, 30)]):
        img = PILImage.new("RGB", (5 + i, 4), color)
        img.putpixel((0, 0), (i, i, i))
        img.save(tmp_path / f"img{i}.png")
        out[f"img{i}.png"] = (tmp_path / f"img{i}.png").read_bytes()
    return out


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _mm(tmp_path):
    rows = [
        {"id": "a", "image": "img0.png", "conversations": _turns("<image>\nwhat?", "红色 red")},
        {"id": "b", "conversations": _turns("no image", "fine")},
        {"id": "c", "image": "img2.png", "conversations": _turns("<image>", "green"), "meta": {"k": 1}},
    ]
    return MMDataset.from_rows(rows, schema="MM", root=str(tmp_path))


def test_split_name():
    assert split_name("000123.json") == ("000123", "json")
    assert split_name("shard/000123.0.png") == ("shard/000123", "0.png")
    assert split_name("README") is None


def test_round_trip_embeds_images(tmp_path, images):
    ds = _mm(tmp_path)
    out = str(tmp_path / "out" / "shard.tar")
    datacopilot.write(ds, out)
    with tarfile.open(out) as tar:
        assert tar.getnames() == ["000000.json", "000000.png", "000001.json", "000002.json", "000002.png"]
        assert json.load(tar.extractfile("000000.json"))["image"] == "img0.png"  # path, bytes are a member
    back = datacopilot.load(out)
    assert back.schema.name == "MM"
    assert back[0]["image"] == {"path": "img0.png", "bytes": images["img0.png"]}
    assert back[1]["image"] is None
    assert back[2]["image"]["bytes"] == images["img2.png"]
    assert json.loads(back[2]["meta"]) == {"k": 1}
    assert back[0]["conversations"] == ds[0]["conversations"]
    assert back.image(0).getpixel((0, 0)) == (0, 0, 0) and back.image(0).size == (5, 4)


def test_messages_with_several_images(tmp_path, images):
    rows = [{"id": "m", "messages": [{"role": "user", "content": "<image><image> compare"},
                                     {"role": "assistant", "content": "different"}],
             "images": ["img1.png", {"path": "img2.png", "bytes": images["img2.png"]}]}]
    ds = MMDataset.from_rows(rows, schema="MESSAGES", root=str(tmp_path))
    out = str(tmp_path / "m.tar")
    write_wds(ds, out)
    with tarfile.open(out) as tar:
        assert tar.getnames() == ["000000.json", "000000.0.png", "000000.1.png"]
    back = datacopilot.load(out)
    assert back.schema.name == "MESSAGES"
    assert back[0]["images"] == [{"path": "img1.png", "bytes": images["img1.png"]},
                                 {"path": "img2.png", "bytes": images["img2.png"]}]


def test_memory_round_trip(tmp_path, images):
    ds = _mm(tmp_path)
    write_wds(ds, "memory://wds-rt/s.tar")
    back = datacopilot.load("memory://wds-rt/s.tar")
    assert [r["id"] for r in back] == ["a", "b", "c"]
    assert back[0]["image"]["bytes"] == images["img0.png"]
    again = "memory://wds-rt/again.tar"
    write_wds(back, again)  # images now travel as bytes: nothing is read from disk
    assert datacopilot.load(again).to_list() == back.to_list()


def test_hand_built_tar_members_and_paths(tmp_path, images):
    path = str(tmp_path / "hand.tar")
    _tar(path, [
        ("s/k1.json", json.dumps({"conversations": _turns("<image>", "x")}).encode()),
        ("s/k1.jpg", images["img0.png"]),
        ("s/k2.json", json.dumps({"image": "elsewhere/pic.png", "conversations": _turns("<image>", "y")}).encode()),
    ])
    ds = datacopilot.load(path)
    assert ds[0]["image"] == {"path": "s/k1.jpg", "bytes": images["img0.png"]}  # no path in json: member name
    assert ds[1]["image"] == {"path": "elsewhere/pic.png", "bytes": None}  # no member: path kept for later


def test_duplicate_key_names_tar_and_key(tmp_path):
    path = str(tmp_path / "dup.tar")
    row = json.dumps({"conversations": _turns("a", "b")}).encode()
    _tar(path, [("000001.json", row), ("000002.json", row), ("000001.json", row)])
    with pytest.raises(InputError, match=r"dup\.tar: key '000001': duplicate member '000001\.json'"):
        datacopilot.load(path)


def test_two_images_for_one_slot(tmp_path, images):
    path = str(tmp_path / "two.tar")
    _tar(path, [("k.json", json.dumps({"conversations": _turns("a", "b")}).encode()),
                ("k.png", images["img0.png"]), ("k.jpg", images["img1.png"])])
    with pytest.raises(InputError, match=r"two\.tar: key 'k': duplicate image members"):
        read_wds(path, None)


def test_broken_json_names_tar_and_key(tmp_path):
    path = str(tmp_path / "broken.tar")
    good = json.dumps({"id": "ok", "conversations": _turns("a", "b")}).encode()
    _tar(path, [("000000.json", good), ("000001.json", b'{"conversations": ['), ("000002.json", good)])
    with pytest.raises(InputError, match=r"broken\.tar: key '000001': 000001\.json: invalid JSON"):
        datacopilot.load(path)
    ds = datacopilot.load(path, invalid="quarantine")
    assert len(ds) == 2 and len(ds.quarantine) == 1
    assert ds.quarantine[0]["_source"].endswith("broken.tar: key '000001'")


def test_unknown_member_and_missing_json(tmp_path):
    path = str(tmp_path / "odd.tar")
    good = json.dumps({"conversations": _turns("a", "b")}).encode()
    _tar(path, [("a.json", good), ("a.npy", b"\x93NUMPY"), ("b.png", b"\x89PNG")])
    with pytest.raises(InputError, match=r"odd\.tar: key 'b': sample has no \.json member"):
        datacopilot.load(path)
    ds = datacopilot.load(path, invalid="quarantine")
    assert len(ds) == 0
    errors = sorted(ds.quarantine.to_list(), key=lambda r: r["_source"])
    assert "'a.npy'" in errors[0]["_error"] and "no place in a MM row" in errors[0]["_error"]
    assert "no .json member" in errors[1]["_error"]


def test_invalid_rows_go_to_quarantine(tmp_path):
    path = str(tmp_path / "inv.tar")
    _tar(path, [("x.json", json.dumps({"conversations": _turns("a", "b")}).encode()),
                ("y.json", json.dumps({"conversations": [{"from": "bot", "value": "?"}]}).encode())])
    ds = datacopilot.load(path, schema="MM", invalid="quarantine")
    assert len(ds) == 1
    assert ds.quarantine[0]["_source"].endswith("inv.tar: key 'y'") and "'bot'" in ds.quarantine[0]["_error"]


@pytest.mark.parametrize("cut,message", [
    (1024, r"truncated tar: it ends after member '000000\.json'"),  # at a member boundary
    (1100, r"truncated tar: it ends after member '000000\.json'"),  # inside the image's header
    (1600, r"not a readable tar file"),  # inside the image's bytes
    (100, r"not a readable tar file"),  # inside the first header
])
def test_truncated_tar(tmp_path, images, cut, message):
    path = tmp_path / "cut.tar"
    write_wds(_mm(tmp_path), str(path))
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(InputError, match=r"cut\.tar: " + message):
        datacopilot.load(str(path))


def test_empty_dataset_round_trip(tmp_path):
    ds = _mm(tmp_path).head(0)
    write_wds(ds, str(tmp_path / "empty.tar"))
    assert len(read_wds(str(tmp_path / "empty.tar"), ds.schema).table) == 0


def test_write_names_row_and_missing_image(tmp_path):
    ds = MMDataset.from_rows([{"conversations": _turns("a", "b")},
                              {"image": "gone.png", "conversations": _turns("<image>", "b")}],
                             schema="MM", root=str(tmp_path))
    out = tmp_path / "never.tar"
    with pytest.raises(InputError, match=r"row 1: image: image 'gone\.png' not found"):
        write_wds(ds, str(out))
    assert not out.exists() and not list(tmp_path.glob("never.tar*"))  # atomic: nothing half-written


def test_interoperates_with_the_webdataset_package(tmp_path, images):
    import webdataset

    theirs = str(tmp_path / "theirs.tar")
    with webdataset.TarWriter(theirs) as w:
        w.write({"__key__": "s1", "json": {"conversations": _turns("<image>", "red")}, "png": images["img0.png"]})
    ds = datacopilot.load(theirs)
    assert ds[0]["image"] == {"path": "s1.png", "bytes": images["img0.png"]}
    ours = str(tmp_path / "ours.tar")
    write_wds(ds, ours)
    samples = list(webdataset.WebDataset(ours, shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["000000"]
    assert samples[0]["png"] == images["img0.png"]
    assert json.loads(samples[0]["json"])["conversations"][1]["value"] == "red"


def test_mix_rows_refer_to_images_by_url(tmp_path, images):
    rows = [{"id": "x", "images": [{"id": 0, "url": "img0.png"}, {"id": 1, "url": "img1.png"}],
             "conversations": [{"from": "user", "value": "<image>0</image><image>1</image>"},
                               {"from": "assistant", "value": "two"}]}]
    ds = MMDataset.from_rows(rows, schema="MIX", root=str(tmp_path))
    out = str(tmp_path / "mix.tar")
    write_wds(ds, out)
    with tarfile.open(out) as tar:
        assert tar.getnames() == ["000000.json"]
    back = datacopilot.load(out)
    assert back.schema.name == "MIX" and back.to_list() == ds.to_list()
    _tar(str(tmp_path / "mixm.tar"), [("k.json", json.dumps(rows[0]).encode()), ("k.0.png", images["img0.png"])])
    with pytest.raises(InputError, match=r"mixm\.tar: key 'k': member\(s\) \['k\.0\.png'\] have no place in a MIX"):
        datacopilot.load(str(tmp_path / "mixm.tar"))


@pytest.mark.skipif(dict(image_slots(datacopilot.MM)).get("image") != "either",
                    reason="MM's image is one image only in this schema version")
def test_mm_image_lists_and_single_images_keep_their_shape(tmp_path, images):
    rows = [{"id": 1, "image": ["img0.png", "img1.png"], "conversations": _turns("<image><image>", "two")},
            {"id": "b", "image": "img2.png", "conversations": _turns("<image>", "one")},
            {"id": "c", "image": ["img1.png"], "conversations": _turns("<image>", "a list of one")}]
    ds = MMDataset.from_rows(rows, schema="MM", root=str(tmp_path))
    out = str(tmp_path / "next.tar")
    write_wds(ds, out)
    with tarfile.open(out) as tar:
        assert tar.getnames() == ["000000.json", "000000.0.png", "000000.1.png", "000001.json", "000001.png",
                                  "000002.json", "000002.0.png"]
    back = datacopilot.load(out)
    assert [r["id"] for r in back] == [1, "b", "c"]
    assert back[0]["image"] == [{"path": "img0.png", "bytes": images["img0.png"]},
                                {"path": "img1.png", "bytes": images["img1.png"]}]
    assert back[1]["image"] == {"path": "img2.png", "bytes": images["img2.png"]}
    assert back[2]["image"] == [{"path": "img1.png", "bytes": images["img1.png"]}]
    _tar(str(tmp_path / "bad.tar"), [("k.json", json.dumps({"image": ["x.png"], "conversations": _turns(
        "<image>", "a")}).encode()), ("k.png", images["img0.png"])])
    with pytest.raises(InputError, match=r"bad\.tar: key 'k': image: member 'k\.png' is one image, but image is "
                                         r"a list"):
        datacopilot.load(str(tmp_path / "bad.tar"))


def test_deeply_nested_json_is_an_error_naming_tar_and_key(tmp_path):
    path = str(tmp_path / "deep.tar")
    good = json.dumps({"conversations": _turns("a", "b")}).encode()
    _tar(path, [("a.json", good), ("b.json", b'{"conversations": [], "meta": ' + b"[" * 20000 + b"]" * 20000 + b"}")])
    with pytest.raises(InputError, match=r"deep\.tar: key 'b': b\.json: invalid JSON: nested too deeply"):
        datacopilot.load(path)
    ds = datacopilot.load(path, invalid="quarantine")
    assert len(ds) == 1 and ds.quarantine[0]["_source"].endswith("deep.tar: key 'b'")
