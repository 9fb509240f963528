"""DataCopilot MM and MIX files load exactly as PaddleMIX DataCopilot's own JSON schemas accept them, and what is
written here passes those validators: property tests over rows the original accepts (its rules and the strategies:
tests/fixtures/datacopilot_rules.py)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import datacopilot
from datacopilot.schemas import MIX, convert_row

from tests.fixtures.datacopilot_rules import mix_rows, mm_rows, original_errors

SETTINGS = dict(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow])


def _trip(rows: list[dict], schema: str, ext: str, convert: str | None = None) -> list[dict]:
    """``rows`` written as DataCopilot writes them (a JSON array), loaded with schema detection, optionally
    converted, written as ``ext`` and read back as plain JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.json"
        src.write_text(json.dumps(rows, ensure_ascii=False, indent=4), encoding="utf-8")
        ds = datacopilot.load(str(src), invalid="raise")
        assert ds.schema.name == schema
        if convert:
            ds = ds.convert(convert)
        out = ds.write(str(Path(tmp) / f"out.{ext}"))
        text = Path(out).read_text(encoding="utf-8")
    if ext == "jsonl":
        return [json.loads(line) for line in text.split("\n") if line.strip()]  # not splitlines: U+0085 is text
    return json.loads(text)


@settings(**SETTINGS)
@given(st.lists(mm_rows(), min_size=1, max_size=4), st.sampled_from(["json", "jsonl"]))
def test_every_mm_file_the_original_accepts_loads_and_is_written_back_unchanged(rows, ext):
    assert [original_errors(r, "MM") for r in rows] == [[]] * len(rows)
    back = _trip(rows, "MM", ext)
    assert back == rows
    assert [original_errors(r, "MM") for r in back] == [[]] * len(rows)


@settings(**SETTINGS)
@given(st.lists(mix_rows(), min_size=1, max_size=4), st.sampled_from(["json", "jsonl"]))
def test_every_mix_file_the_original_accepts_loads_and_is_written_back_unchanged(rows, ext):
    assert [original_errors(r, "MIX") for r in rows] == [[]] * len(rows)
    back = _trip(rows, "MIX", ext)
    assert back == rows
    assert [original_errors(r, "MIX") for r in back] == [[]] * len(rows)


@settings(**SETTINGS)
@given(st.lists(mm_rows(placeholder=True), min_size=1, max_size=4))
def test_mm_converted_to_mix_passes_the_original_and_converts_back(rows):
    mix = _trip(rows, "MM", "json", convert="MIX")
    assert [original_errors(r, "MIX") for r in mix] == [[]] * len(rows)
    for got, given_row in zip(mix, rows):
        assert got["images"] == [{"id": 0, "url": given_row["image"]}]
        assert sum(t["value"].count("<image>0</image>") for t in got["conversations"]) == 1
    back = _trip(mix, "MIX", "json", convert="MM")
    assert back == rows


def test_mix_references_place_images_in_the_order_the_text_names_them():
    """``<image>1</image>`` before ``<image>0</image>``: the canonical sample's first image is image 1; its ids are
    kept (they are not 0, 1 in placeholder order), so MIX gets the same row back."""
    row = {"id": 7, "images": [{"id": 0, "url": "a.png"}, {"id": 1, "url": "b.png", "width": 9}],
           "conversations": [{"from": "user", "value": "<image>1</image> then <image>0</image>?"},
                             {"from": "assistant", "value": "b, a"}]}
    canon = MIX.to_canonical(MIX.normalize_row(row))
    assert [i["path"] for i in canon["images"]] == ["b.png", "a.png"]
    assert canon["image_ids"] == [1, 0]
    assert canon["messages"][0]["content"] == "<image> then <image>?"
    assert convert_row(row, "MIX", "MIX") == row
