"""The embedded demo: its synthetic data, and a cleaning run whose accounting matches what was injected."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

import datacopilot as dc
from datacopilot.demo import INVALID_FILE, MEANT_FOR, cleaning_ops, run_demo
from datacopilot.demo_data import DIRTY_SHARE, MAX_ANSWER_CHARS, make_demo_data
from datacopilot.pipeline import Pipeline

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
    report = run_demo(str(out), n=200, seed=1, echo=lines.append, train_steps=0)
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


def _expected_kept(out: Path) -> int:
    """The rows a correct cleaning keeps, worked out from the raw file: valid, complete, short enough, with an
    image on disk, and distinct by (image bytes, whitespace-normalized text)."""
    keys = set()
    for line in (out / "demo.jsonl").read_text().splitlines():
        r = json.loads(line)
        turns = r["conversations"]
        if any(t["from"] not in ("human", "gpt") or not isinstance(t["value"], str) for t in turns):
            continue  # invalid: quarantined
        texts = [" ".join(t["value"].split()) for t in turns]
        if any(not x.replace("<image>", "").strip() for x in texts) or len(turns) < 2:
            continue
        if any(len(x) > MAX_ANSWER_CHARS for t, x in zip(turns, texts) if t["from"] == "gpt"):
            continue
        img = out / r["image"]
        if not img.exists():
            continue
        keys.add((hashlib.sha256(img.read_bytes()).hexdigest(), "\n".join(texts).lower()))
    return len(keys)


def test_demo_accounting_adds_up(demo):
    out, report, _ = demo
    data = report["data"]
    assert report["rows_in"] == data["rows"] == 200
    assert report["rows_in"] == report["kept"] + report["dropped"] + report["quarantined"]
    assert report["quarantined"] == data["invalid"] == len(report["invalid"])
    steps = {s["op"]: s for s in report["steps"]}
    assert list(steps) == [op.name for op in cleaning_ops()]
    # each injected kind of dirty row is dropped by the operator meant for it, and by no other
    assert steps["filter_empty_turns"]["dropped"] == {"empty turn": data["empty_answers"]}
    assert steps["filter_turns"]["dropped"] == {"fewer than 2 turns": data["unanswered"]}
    assert steps["filter_length"]["dropped"] == {
        f"assistant turn longer than {MAX_ANSWER_CHARS} chars": data["overlong"]}
    assert steps["filter_image_exists"]["dropped"] == {"image missing": data["missing_images"]}
    for name in ("clean_unicode", "clean_whitespace"):
        assert steps[name]["rows_in"] == steps[name]["rows_out"] and not steps[name]["dropped"]
    # dedup drops the injected copies, and drawn rows that by chance repeat another's image and text
    assert sum(steps["dedup_exact"]["dropped"].values()) >= data["duplicates"]
    assert report["kept"] == _expected_kept(out) <= data["clean"]
    assert report["steps"][0]["rows_in"] == data["rows"] - data["invalid"]
    for prev, s in zip(report["steps"], report["steps"][1:]):
        assert s["rows_in"] == prev["rows_out"]
    for s in report["steps"]:
        assert s["rows_in"] == s["rows_out"] + sum(s["dropped"].values()) + s["failed"]
        assert s["failed"] == 0


def test_demo_keeps_the_invalid_rows(demo):
    out, report, _ = demo
    lines = [json.loads(ln) for ln in (out / INVALID_FILE).read_text().splitlines()]
    assert len(lines) == report["data"]["invalid"]
    assert all(str(out / "demo.jsonl") in r["_error"] for r in lines)
    assert any("expected one of 'human', 'gpt'" in r["_error"] for r in lines)
    ids = {json.loads(r["_row"])["id"] for r in lines}
    assert not ids & {r["id"] for r in dc.load(report["shards_dir"])}


def test_demo_shards_load_back(demo):
    _, report, _ = demo
    manifest = dc.verify_shards(report["shards_dir"])
    assert manifest["rows"] == report["kept"] and len(manifest["shards"]) == report["shards"] > 1
    assert os.path.exists(report["manifest"])
    saved = json.loads((Path(report["shards_dir"]) / "report.json").read_text())
    assert saved["ops"] == [{k: v for k, v in s.items() if k != "step"} for s in report["steps"]]
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


def test_demo_prints_the_operator_report_and_the_rerun_command(demo):
    _, report, text = demo
    for s in report["steps"]:
        assert s["op"] in text
    for kind in MEANT_FOR.values():  # the injected count stands next to the operator that drops it
        assert f"  {report['data'][kind]}  " in text
    assert "image missing: " in text and "fewer than 2 turns: " in text
    assert report["shards_dir"] in text and report["manifest"] in text
    assert f"{report['rows_in']} rows in = {report['kept']} kept" in text
    assert f"datacopilot run {report['spec']}" in text
    assert report["invalid"][0]["error"] in text


def test_demo_spec_describes_the_pipeline(demo):
    out, report, _ = demo
    import yaml

    spec = yaml.safe_load(Path(report["spec"]).read_text())
    assert spec["source"]["paths"] == ["demo.jsonl"] and spec["output"]["dir"] == "shards"  # movable folder
    assert spec["on_error"] == "quarantine"
    pipe = Pipeline.from_yaml(report["spec"])
    assert [op.params() for op in pipe.ops] == [op.params() for op in cleaning_ops()]
    assert [op.name for op in pipe.ops] == [op.name for op in cleaning_ops()]
    assert pipe.output["dir"] == str(out / "shards")


def test_cleaning_ops_on_their_own(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "b.png")
    qa = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]
    ds = dc.MMDataset.from_rows([
        {"id": "messy", "image": "a.png",
         "conversations": [{"from": "human", "value": " <image>\n  What  shape?\t"},
                           {"from": "gpt", "value": "A\tcircle.\u200b "}]},
        {"id": "unanswered", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nq"}]},
        {"id": "empty", "image": "a.png", "conversations": [qa[0], {"from": "gpt", "value": "  "}]},
        {"id": "overlong", "image": "a.png", "conversations": [qa[0], {"from": "gpt", "value": "x" * 500}]},
        {"id": "missing", "image": "nowhere.png", "conversations": qa},
        {"id": "first", "image": "b.png", "conversations": qa},
        {"id": "copy", "image": "b.png", "conversations": [qa[0], {"from": "gpt", "value": "A "}]},
        {"id": "other image", "image": "a.png", "conversations": qa},
    ], schema="MM", root=str(tmp_path))
    out = ds.apply(cleaning_ops())
    assert [r["id"] for r in out] == ["messy", "first", "other image"]
    assert [t["value"] for t in out[0]["conversations"]] == ["<image>\nWhat shape?", "A circle."]
    dropped = {r.op: r.dropped for r in out.history()[-len(cleaning_ops()):]}
    assert dropped["filter_empty_turns"] == {"empty turn": 1}
    assert dropped["filter_turns"] == {"fewer than 2 turns": 1}
    assert dropped["filter_length"] == {f"assistant turn longer than {MAX_ANSWER_CHARS} chars": 1}
    assert dropped["filter_image_exists"] == {"image missing": 1}
    assert sum(dropped["dedup_exact"].values()) == 1
