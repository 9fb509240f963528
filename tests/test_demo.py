"""The embedded demo: its synthetic data, and a cleaning run whose accounting matches what was injected."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

import datacopilot as dc
from datacopilot.demo import answers_short_enough, image_exists, normalize_whitespace, run_demo, turn_count_ok
from datacopilot.demo_data import DIRTY_SHARE, MAX_ANSWER_CHARS, make_demo_data

KINDS = tuple(DIRTY_SHARE)


def _digest(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(d)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    report = run_demo(str(out), n=200, seed=1, echo=lines.append)
    return out, report, "\n".join(lines)


def test_make_demo_data_counts_every_row(tmp_path):
    info = make_demo_data(str(tmp_path), n=120, seed=5)
    rows = [json.loads(ln) for ln in Path(info["path"]).read_text().splitlines()]
    assert info["rows"] == len(rows) == 120
    assert info["rows"] == info["clean"] + sum(info[k] for k in KINDS)
    assert all(info[k] >= 1 for k in KINDS)
    assert info["messy_whitespace"] >= 1
    # every row refers to a drawn image except the ones missing on purpose
    missing = [r for r in rows if not (tmp_path / r["image"]).exists()]
    assert len(missing) == info["missing_images"]
    # exact duplicates: identical lines
    texts = [json.dumps(r, sort_keys=True) for r in rows]
    assert len(texts) - len(set(texts)) == info["duplicates"]
    overlong = [r for r in rows if any(len(str(t["value"])) > MAX_ANSWER_CHARS for t in r["conversations"])]
    assert len(overlong) == info["overlong"]
    bad_roles = [r for r in rows if any(t["from"] not in ("human", "gpt") or not isinstance(t["value"], str)
                                        for t in r["conversations"])]
    assert len(bad_roles) == info["invalid"]


def test_captions_and_conversations_describe_what_was_drawn(tmp_path):
    from PIL import Image

    from datacopilot.demo_data import COLORS, POSITIONS, SIZE

    info = make_demo_data(str(tmp_path), n=30, seed=2)
    rows = [json.loads(ln) for ln in Path(info["path"]).read_text().splitlines()]
    checked = 0
    for r in rows:
        m = r["meta"]
        if not (tmp_path / r["image"]).exists():
            continue
        assert r["conversations"][0]["from"] == "human" and r["conversations"][0]["value"].startswith("<image>\n")
        assert m["caption"].startswith(f"a {m['color']} {m['shape']} ")
        assert m["caption"].endswith(f"a {m['background']} background")
        img = Image.open(tmp_path / r["image"]).convert("RGB")
        assert img.size == (SIZE, SIZE)
        cx, cy = (int(f * SIZE) for f in POSITIONS[m["position"]])
        assert img.getpixel((cx, cy)) == COLORS[m["color"]]  # the shape sits where the caption says
        checked += 1
    assert checked >= 20


def test_make_demo_data_is_deterministic(tmp_path):
    a = make_demo_data(str(tmp_path / "a"), n=40, seed=7)
    b = make_demo_data(str(tmp_path / "b"), n=40, seed=7)
    make_demo_data(str(tmp_path / "c"), n=40, seed=8)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")
    assert {k: v for k, v in a.items() if k not in ("path", "images_dir")} == \
        {k: v for k, v in b.items() if k not in ("path", "images_dir")}


def test_demo_accounting_adds_up(demo):
    _, report, _ = demo
    data = report["data"]
    assert report["rows_in"] == data["rows"] == 200
    assert report["rows_in"] == report["kept"] + report["dropped"] + report["quarantined"]
    assert report["quarantined"] == data["invalid"]
    assert report["kept"] == data["clean"]
    steps = {s["step"]: s for s in report["steps"]}
    assert steps["nonempty"]["dropped"] == {"empty field": data["empty_answers"]}
    assert steps["turn count"]["dropped"] == {"turn count": data["unanswered"]}
    assert steps["answer length"]["dropped"] == {"answer length": data["overlong"]}
    assert steps["image exists"]["dropped"] == {"missing image": data["missing_images"]}
    assert steps["normalize whitespace"]["rows_in"] == steps["normalize whitespace"]["rows_out"]
    assert sum(steps["unique"]["dropped"].values()) == data["duplicates"]
    for prev, s in zip(report["steps"], report["steps"][1:]):
        assert s["rows_in"] == prev["rows_out"]
        assert s["rows_in"] == s["rows_out"] + sum(s["dropped"].values()) + s["failed"]


def test_demo_shards_load_back(demo):
    out, report, _ = demo
    manifest = dc.verify_shards(report["shards_dir"])
    assert manifest["rows"] == report["kept"] and len(manifest["shards"]) == report["shards"] > 1
    assert os.path.exists(report["manifest"])
    back = dc.load(report["shards_dir"])
    assert len(back) == report["kept"] and back.schema.name == "MM"
    assert back.image(0).size == (64, 64)  # shards point at images that exist
    for row in back:
        for t in row["conversations"]:
            v = t["value"]
            assert v == v.strip() and "  " not in v and "\t" not in v
            assert v and len(v) <= MAX_ANSWER_CHARS
    ids = [r["id"] for r in back]
    assert len(set(ids)) == len(ids)


def test_demo_prints_history_and_where_the_shards_went(demo):
    _, report, text = demo
    for step in ("nonempty", "turn count", "answer length", "image exists", "normalize whitespace", "unique"):
        assert step in text
    assert report["shards_dir"] in text and report["manifest"] in text
    assert f"{report['rows_in']} rows in = {report['kept']} kept" in text


def test_steps_on_their_own():
    ds = dc.MMDataset.from_rows([
        {"id": "a", "conversations": [{"from": "human", "value": " <image>\n  What  shape?\t"},
                                      {"from": "gpt", "value": "A\tcircle. "}]},
        {"id": "b", "conversations": [{"from": "human", "value": "q"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "x" * 500}]},
        {"id": "d", "image": "nowhere/x.png",
         "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    ], schema="MM")
    assert [r["id"] for r in ds.filter(turn_count_ok())] == ["a", "c", "d"]
    assert [r["id"] for r in ds.filter(answers_short_enough())] == ["a", "b", "d"]
    kept = ds.filter(image_exists(None))
    assert [r["id"] for r in kept] == ["a", "b", "c"]
    assert kept.history()[-1].dropped == {"missing image": 1}
    row = normalize_whitespace(ds[0])
    assert [t["value"] for t in row["conversations"]] == ["<image>\nWhat shape?", "A circle."]
