"""Files shaped like the real ones (tests/fixtures/real_formats.py) load with schema detection as the right schema,
every row, field and extra key kept, ids with their types, images in order; they write back losslessly; they
convert to the canonical sample and to MESSAGES; and what is written for DataCopilot MM/MIX passes the rules of
PaddleMIX's own validators."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

import datacopilot
from datacopilot.errors import ConversionError
from datacopilot.schemas import BUILTIN, MESSAGES, convert_row

from tests.fixtures import real_formats as rf
from tests.fixtures.datacopilot_rules import DATACOPILOT_MIX, DATACOPILOT_MM, original_errors, schema_errors

FIXTURES = {g.__name__: g for g in rf.ALL}


@pytest.fixture(params=sorted(FIXTURES))
def fx(request, tmp_path):
    return FIXTURES[request.param](tmp_path)


def assert_holds(loaded, given, where="row"):
    """``loaded`` (a stored row) holds everything ``given`` (the row as the file has it) has, with the same types;
    anything else in ``loaded`` is null. A path string given for an image holds as ``{path, bytes: None}``;
    ``meta`` (a Json field) is stored as the JSON text of what was given."""
    if where.endswith(".meta") and isinstance(loaded, str) and not isinstance(given, str):
        loaded = json.loads(loaded)
    if given is None:
        assert loaded is None, f"{where}: expected null, got {loaded!r}"[:300]
    elif isinstance(given, dict):
        assert isinstance(loaded, dict), f"{where}: expected an object, got {loaded!r}"[:300]
        for k, v in given.items():
            assert_holds(loaded.get(k), v, f"{where}.{k}")
        for k in set(loaded) - set(given):
            assert loaded[k] is None, f"{where}.{k}: not in the file, got {loaded[k]!r}"[:300]
    elif isinstance(given, list):
        assert isinstance(loaded, list) and len(loaded) == len(given), f"{where}: {loaded!r} vs {given!r}"[:300]
        for i, (a, b) in enumerate(zip(loaded, given)):
            assert_holds(a, b, f"{where}[{i}]")
    elif isinstance(given, str) and isinstance(loaded, dict) and set(loaded) >= {"path", "bytes"}:
        assert loaded["path"] == given and loaded["bytes"] is None, f"{where}: image {loaded!r} vs {given!r}"
    else:
        assert type(loaded) is type(given) and loaded == given, f"{where}: {loaded!r} vs {given!r}"[:300]


def canonical_image(img):
    return img["bytes"] if img.get("bytes") is not None else img["path"]


# -- loading -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("invalid", ["raise", "quarantine"])
def test_real_files_load_detected_with_every_row_and_field_kept(fx, invalid):
    ds = datacopilot.load(fx.path, invalid=invalid)
    assert ds.schema.name == fx.schema
    assert ds.quarantine is None
    rows = ds.to_list()
    assert len(rows) == len(fx.rows)
    for i, (got, given) in enumerate(zip(rows, fx.rows)):
        assert_holds(got, given, f"{fx.name} row {i}")


def test_ids_keep_their_types_when_a_file_mixes_str_and_int(tmp_path):
    fx = rf.llava_v1_5_mix665k(tmp_path)
    ids = [r["id"] for r in datacopilot.load(fx.path).to_list()]
    assert ids == [r["id"] for r in fx.rows]
    assert [type(i) for i in ids] == [type(r["id"]) for r in fx.rows]
    assert {type(i) for i in ids} == {str, int}


def test_llava_rows_without_image_and_with_the_token_at_either_end_are_kept_as_written(tmp_path):
    fx = rf.llava_v1_5_mix665k(tmp_path)
    rows = datacopilot.load(fx.path).to_list()
    assert [r["image"] is None for r in rows] == ["image" not in r for r in fx.rows]
    firsts = [r["conversations"][0]["value"] for r in rows if r["image"] is not None]
    assert any(v.startswith("<image>\n") for v in firsts) and any(v.endswith("\n<image>") for v in firsts)
    assert max(len(r["conversations"]) for r in rows) >= 20
    assert {r["image"]["path"].split("/")[0] for r in rows if r["image"]} == {"coco", "vg", "gqa", "ocr_vqa",
                                                                              "textvqa"}


def test_hf_parquet_fixtures_carry_the_features_metadata_datasets_reads(tmp_path):
    datasets = pytest.importorskip("datasets")
    for make in (rf.hf_llava_instruct_mix_vsft, rf.the_cauldron):
        fx = make(tmp_path)
        assert b"huggingface" in pq.read_schema(fx.path).metadata
        hf = datasets.Dataset.from_parquet(fx.path)
        assert type(hf.features["images"].feature).__name__ == "Image"
        assert len(hf) == len(fx.rows)
        ds = datacopilot.load(fx.path)
        assert [[i["bytes"] for i in r["images"]] for r in ds.to_list()] == fx.images


# -- writing back --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", ["jsonl", "parquet", "json", "arrow", "h5"])
def test_real_files_write_back_losslessly(fx, ext):
    ds = datacopilot.load(fx.path)
    out = ds.write(f"{fx.path}.back.{ext}")  # beside the source: paths relative to the same folder
    back = datacopilot.load(out, invalid="quarantine")
    assert back.quarantine is None
    assert back.schema.name == ds.schema.name
    assert back.to_list() == ds.to_list()


def test_embedded_images_without_a_path_write_back_through_webdataset_unchanged(tmp_path):
    fx = rf.the_cauldron(tmp_path)
    ds = datacopilot.load(fx.path)
    back = datacopilot.load(ds.write(f"{fx.path}.back.tar"))
    assert [[i["bytes"] for i in r["images"]] for r in back.to_list()] == fx.images  # bytes: unchanged
    assert back.to_list() == ds.to_list()


# -- the canonical sample ------------------------------------------------------------------------------------
def test_real_rows_give_their_images_in_order_and_their_roles(fx):
    ds = datacopilot.load(fx.path)
    for i, row in enumerate(ds.to_list()):
        c = ds.schema.to_canonical(row)
        assert [canonical_image(img) for img in c["images"]] == fx.images[i], f"{fx.name} row {i}"
        assert [m["role"] for m in c["messages"]] == fx.roles[i], f"{fx.name} row {i}"


def test_real_rows_convert_to_messages_or_say_what_would_be_lost(fx):
    """Every row converts to MESSAGES and back to the same canonical sample, except a ShareGPT tool call, which
    MESSAGES cannot hold: that raises, naming the turn."""
    ds = datacopilot.load(fx.path)
    src = BUILTIN[fx.schema]
    for i, row in enumerate(ds.to_list()):
        if "tool_call" in fx.roles[i]:
            with pytest.raises(ConversionError, match=r"messages\[\d+\] is a tool call"):
                convert_row(row, src, MESSAGES)
            continue
        msg = convert_row(row, src, MESSAGES)
        assert MESSAGES.validate_row(msg) == [], f"{fx.name} row {i}"
        before, after = src.to_canonical(row), MESSAGES.to_canonical(MESSAGES.normalize_row(msg))
        assert [canonical_image(img) for img in after["images"]] == fx.images[i]
        assert after["images"] == before["images"] and after["image_ids"] == before["image_ids"]
        assert after["messages"] == before["messages"], f"{fx.name} row {i}"


def test_mix_image_ids_survive_a_trip_through_messages(tmp_path):
    fx = rf.datacopilot_mix(tmp_path)
    ds = datacopilot.load(fx.path)
    for row in ds.to_list():
        back = convert_row(MESSAGES.normalize_row(convert_row(row, BUILTIN["MIX"], MESSAGES)), MESSAGES,
                           BUILTIN["MIX"])
        assert [i["id"] for i in back["images"]] == [i["id"] for i in row["images"]]
        assert back["conversations"] == row["conversations"]


# -- PaddleMIX DataCopilot's own validators ------------------------------------------------------------------
# their rules: tests/fixtures/datacopilot_rules.py (SCHEMA.MM and SCHEMA.MIX of paddlemix/datacopilot/core/schema.py)
def _written(ds, path: str) -> list[dict]:
    out = ds.write(path)
    if path.endswith(".jsonl"):
        return [json.loads(line) for line in open(out, encoding="utf-8") if line.strip()]
    return json.load(open(out, encoding="utf-8"))


def test_the_checker_applies_the_original_rules():
    good = {"id": 0, "image": "a.PNG", "conversations": [{"from": "human", "value": " x "}]}
    assert schema_errors(good, DATACOPILOT_MM) == []
    assert schema_errors({**good, "id": 3.0}, DATACOPILOT_MM) == []  # JSON Schema: 3.0 is an integer
    assert schema_errors({**good, "id": -1}, DATACOPILOT_MM)
    assert schema_errors({**good, "id": True}, DATACOPILOT_MM)
    assert schema_errors({**good, "image": "a.gif"}, DATACOPILOT_MM)
    assert schema_errors({k: v for k, v in good.items() if k != "image"}, DATACOPILOT_MM)
    assert schema_errors({**good, "conversations": [{"from": "gpt", "value": "  "}]}, DATACOPILOT_MM)
    assert schema_errors({**good, "meta": {"width": 1, "height": 2}}, DATACOPILOT_MM)
    mix = {"id": "m", "images": None, "conversations": [{"from": "user", "value": None}]}
    assert schema_errors(mix, DATACOPILOT_MIX) == []
    assert schema_errors({**mix, "images": []}, DATACOPILOT_MIX)
    assert schema_errors({**mix, "images": [{"id": "0", "url": "a.jpg"}]}, DATACOPILOT_MIX)
    assert schema_errors({**mix, "images": [{"id": 0, "url": "a.jpg", "heigh": -1}]}, DATACOPILOT_MIX)
    assert schema_errors({**mix, "images": [{"id": 0, "url": "a.jpg", "height": -1}]}, DATACOPILOT_MIX)
    assert schema_errors({k: v for k, v in mix.items() if k != "images"}, DATACOPILOT_MIX)


def test_the_checker_agrees_with_jsonschema_on_the_fixtures(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    cases = [(r, DATACOPILOT_MM) for r in rf.datacopilot_mm_rows()]
    cases += [(r, DATACOPILOT_MIX) for r in rf.datacopilot_mix(tmp_path).rows]
    cases += [({**r, "image": "x.gif"}, DATACOPILOT_MM) for r in rf.datacopilot_mm_rows()]
    for row, schema in cases:
        valid = jsonschema.Draft202012Validator(schema).is_valid(row)
        assert valid == (schema_errors(row, schema) == []), row


@pytest.mark.parametrize("make", [rf.datacopilot_mm_json, rf.datacopilot_mm_jsonl])
@pytest.mark.parametrize("ext", ["json", "jsonl"])
def test_datacopilot_mm_files_pass_the_original_validator_before_and_after(make, ext, tmp_path):
    fx = make(tmp_path)
    assert [original_errors(r, "MM") for r in fx.rows] == [[]] * len(fx.rows)
    written = _written(datacopilot.load(fx.path), str(tmp_path / f"out.{ext}"))
    assert [original_errors(r, "MM") for r in written] == [[]] * len(fx.rows)
    assert written == fx.rows


@pytest.mark.parametrize("make", [rf.datacopilot_mix, rf.datacopilot_mix_text_only])
@pytest.mark.parametrize("ext", ["json", "jsonl"])
def test_datacopilot_mix_files_pass_the_original_validator_before_and_after(make, ext, tmp_path):
    """Null images and null values are written as null (SCHEMA.MIX requires both keys)."""
    fx = make(tmp_path)
    assert [original_errors(r, "MIX") for r in fx.rows] == [[]] * len(fx.rows)
    written = _written(datacopilot.load(fx.path), str(tmp_path / f"out.{ext}"))
    assert [original_errors(r, "MIX") for r in written] == [[]] * len(fx.rows)
    assert written == fx.rows


def test_mm_converted_to_mix_passes_the_original_mix_validator_and_converts_back(tmp_path):
    """MM -> MIX numbers the image 0 and writes its placeholder as ``<image>0</image>`` where ``<image>`` was
    (the original's ``_convert_mm_mix`` does the same, and also adds one to every later human turn, which would
    show the image again); MIX -> MM gives the file's rows back."""
    fx = rf.datacopilot_mm_json(tmp_path)
    mix = datacopilot.load(fx.path).convert("MIX")
    rows = _written(mix, str(tmp_path / "mix.json"))
    assert [original_errors(r, "MIX") for r in rows] == [[]] * len(fx.rows)
    assert [r["images"] for r in rows] == [[{"id": 0, "url": r["image"]}] for r in fx.rows]
    for got, given in zip(rows, fx.rows):
        assert [t["value"] for t in got["conversations"]] == [
            t["value"].replace("<image>", "<image>0</image>") for t in given["conversations"]]
        assert got.get("meta") == given.get("meta")  # MIX rows may carry other keys: the original allows them
    back = _written(datacopilot.load(str(tmp_path / "mix.json")).convert("MM"), str(tmp_path / "mm.json"))
    assert back == fx.rows


def test_mix_rows_mm_cannot_hold_raise_naming_the_row_and_what_would_be_lost(tmp_path):
    fx = rf.datacopilot_mix(tmp_path)
    with pytest.raises(ConversionError) as ei:
        datacopilot.load(fx.path).convert("MM")
    msg = str(ei.value)
    assert "2 row(s) cannot be converted from MIX to MM" in msg
    assert "row 0: cannot convert to MM without loss: images[0] has keys ['heigh', 'width']" in msg
    assert "row 1: cannot convert to MM without loss: images[1] has keys ['width']" in msg
    row = {"id": 1, "images": None, "conversations": [{"from": "user", "value": "Hi"}, {"from": "assistant",
                                                                                         "value": None}]}
    with pytest.raises(ConversionError, match=r"to MM without loss: messages\[1\] has no content \(null\)"):
        convert_row(row, "MIX", "MM")
