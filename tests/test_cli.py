"""The ``datacopilot`` command line, run through click's CliRunner and once as the real console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import datacopilot as dc
from datacopilot.cli import main


def _row(i: int, answer: str = "hello", who: str = "gpt") -> dict:
    return {"id": str(i), "image": f"img{i}.png",
            "conversations": [{"from": "human", "value": "<image>\nhi"}, {"from": who, "value": answer}]}


def _write_jsonl(path: Path, rows: list, raw_lines: dict | None = None) -> Path:
    lines = [json.dumps(r) for r in rows]
    for i, text in (raw_lines or {}).items():
        lines.insert(i, text)
    path.write_text("\n".join(lines) + "\n")
    return path


def _json_values(text: str) -> list:
    """Every JSON value printed one after another (pretty-printed, so spread over lines)."""
    dec, out, i = json.JSONDecoder(), [], 0
    text = text.strip()
    while i < len(text):
        value, i = dec.raw_decode(text, i)
        out.append(value)
        while i < len(text) and text[i].isspace():
            i += 1
    return out


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return _write_jsonl(tmp_path / "good.jsonl", [_row(i) for i in range(3)])


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    return _write_jsonl(tmp_path / "bad.jsonl", [_row(0), _row(1, who="bot"), _row(2)])


def test_version(runner):
    res = runner.invoke(main, ["--version"])
    assert res.exit_code == 0
    assert dc.__version__ in res.output


def test_info_text_and_json(runner, good):
    res = runner.invoke(main, ["info", str(good)])
    assert res.exit_code == 0, res.output
    assert "3 rows, schema MM" in res.output
    assert "conversations" in res.output and "list<" in res.output
    assert "files: 1" in res.output

    res = runner.invoke(main, ["info", str(good), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["rows"] == 3 and summary["schema"] == "MM" and summary["files"] == 1
    assert summary["file_bytes"] == good.stat().st_size
    assert summary["columns"]["image"] == "struct<path: string, bytes: binary>"
    assert summary["invalid_rows"] == 0


def test_info_counts_invalid_rows_apart(runner, bad):
    res = runner.invoke(main, ["info", str(bad), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert (summary["rows"], summary["invalid_rows"]) == (2, 1)


def test_info_on_a_glob_of_shards(runner, good, tmp_path):
    dc.load(str(good)).write_shards(str(tmp_path / "sh"), max_rows_per_shard=1)
    res = runner.invoke(main, ["info", str(tmp_path / "sh"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert (summary["rows"], summary["files"]) == (3, 3)


def test_head_prints_rows_as_json(runner, good):
    res = runner.invoke(main, ["head", str(good), "-n", "2"])
    assert res.exit_code == 0, res.output
    rows = _json_values(res.stdout)
    assert [r["id"] for r in rows] == ["0", "1"]
    assert rows[0]["conversations"][1] == {"from": "gpt", "value": "hello"}


def test_head_skips_invalid_rows_with_a_note(runner, bad):
    res = runner.invoke(main, ["head", str(bad), "-n", "5"])
    assert res.exit_code == 0, res.output
    assert [r["id"] for r in _json_values(res.stdout)] == ["0", "2"]
    assert "1 invalid row(s) not shown" in res.stderr


def test_head_shows_image_bytes_as_a_size(runner, tmp_path):
    payload = b"\x89PNG" + bytes(96)
    ds = dc.MMDataset.from_rows([{"id": "a", "image": {"path": "a.png", "bytes": payload}, "meta": {"k": 1},
                                  "conversations": [{"from": "human", "value": "q"},
                                                    {"from": "gpt", "value": "a"}]}], schema="MM")
    path = ds.write(str(tmp_path / "x.arrow"))
    res = runner.invoke(main, ["head", path])
    assert res.exit_code == 0, res.output
    (row,) = _json_values(res.stdout)
    assert row["image"] == {"path": "a.png", "bytes": f"<{len(payload)} bytes>"}
    assert row["meta"] == {"k": 1}


def test_convert_to_another_format_and_schema(runner, good, tmp_path):
    out = tmp_path / "out.parquet"
    res = runner.invoke(main, ["convert", str(good), str(out), "--to", "MIX"])
    assert res.exit_code == 0, res.output
    assert "wrote 3 rows (schema MIX)" in res.output
    back = dc.load(str(out))
    assert back.schema.name == "MIX" and len(back) == 3
    assert back[1]["conversations"][1] == {"from": "assistant", "value": "hello"}


def test_convert_with_explicit_format(runner, good, tmp_path):
    out = tmp_path / "out.data"
    res = runner.invoke(main, ["convert", str(good), str(out), "--format", "jsonl"])
    assert res.exit_code == 0, res.output
    assert len(dc.load(str(out), format="jsonl")) == 3


def test_convert_to_shards_writes_a_manifest(runner, good, tmp_path):
    out = tmp_path / "shards"
    res = runner.invoke(main, ["convert", str(good), str(out), "--shards", "--format", "parquet",
                               "--max-rows-per-shard", "2"])
    assert res.exit_code == 0, res.output
    manifest = dc.verify_shards(str(out))
    assert manifest["format"] == "parquet" and [s["rows"] for s in manifest["shards"]] == [2, 1]
    assert [r["id"] for r in dc.load(str(out))] == ["0", "1", "2"]


def test_verify_prints_ok_or_each_bad_file(runner, good, tmp_path):
    out = tmp_path / "shards"
    man = dc.load(str(good)).write_shards(str(out), max_rows_per_shard=1)
    res = runner.invoke(main, ["verify", str(out)])
    assert res.exit_code == 0, res.output
    assert "OK, 3 file(s), 3 rows" in res.output
    first, last = (out / man["shards"][i]["file"] for i in (0, 2))
    first.write_bytes(first.read_bytes()[:-1])
    last.unlink()
    res = runner.invoke(main, ["verify", str(out)])
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.startswith(str(out) + "/part-")]
    assert len(lines) == 2 and "checksum mismatch" in lines[0] and str(first) in lines[0]
    assert str(last) in lines[1] and "missing" in lines[1]
    assert "2 of 3 file(s) do not match" in res.output
    res = runner.invoke(main, ["verify", str(tmp_path)])
    assert res.exit_code == 2 and "no manifest.json" in res.output


def test_convert_rejects_an_unknown_format(runner, good, tmp_path):
    res = runner.invoke(main, ["convert", str(good), str(tmp_path / "o.x"), "--format", "xml"])
    assert res.exit_code == 2
    assert "xml" in res.output


def test_convert_stops_on_invalid_rows(runner, bad, tmp_path):
    out = tmp_path / "out.parquet"
    res = runner.invoke(main, ["convert", str(bad), str(out)])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: ")
    assert f"{bad}:2: conversations[1].from" in res.stderr
    assert not out.exists()


def test_validate_good_file(runner, good):
    res = runner.invoke(main, ["validate", str(good)])
    assert res.exit_code == 0, res.output
    assert "all 3 rows valid" in res.output


def test_validate_bad_file_names_file_line_and_field(runner, bad):
    res = runner.invoke(main, ["validate", str(bad)])
    assert res.exit_code == 1
    assert f"{bad}:2: conversations[1].from: expected one of 'human', 'gpt', got 'bot'" in res.output
    assert "1 invalid row(s) of 3" in res.output


def test_validate_reports_every_problem_including_broken_json(runner, tmp_path):
    path = _write_jsonl(tmp_path / "mixed.jsonl", [_row(0), _row(1, who="bot"), _row(2), _row(3, who="user")],
                        raw_lines={2: '{"id": "x", "conversations": ['})
    res = runner.invoke(main, ["validate", str(path), "--schema", "MM"])
    assert res.exit_code == 1
    lines = res.output.splitlines()
    assert any(ln.startswith(f"{path}:2: conversations[1].from") for ln in lines)
    assert any(ln.startswith(f"{path}:3: invalid JSON") for ln in lines)
    assert any(ln.startswith(f"{path}:5: conversations[1].from") for ln in lines)
    assert "3 invalid row(s) of 5" in lines[-1]


@pytest.mark.parametrize("command", [["info"], ["head"], ["validate"], ["convert", "--to", "MIX"]])
def test_missing_file_is_a_clean_error(runner, tmp_path, command):
    missing = tmp_path / "nope.jsonl"
    args = [command[0], str(missing)] + (["out.parquet"] if command[0] == "convert" else []) + command[1:]
    res = runner.invoke(main, args)
    assert res.exit_code == 2
    assert res.stderr.startswith("error: ") and str(missing) in res.stderr
    assert "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1


def test_unknown_schema_is_a_clean_error(runner, good):
    res = runner.invoke(main, ["info", str(good), "--schema", "NOPE"])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: ") and "NOPE" in res.stderr


def test_demo_command(runner, tmp_path):
    out = tmp_path / "demo"
    res = runner.invoke(main, ["demo", "--out", str(out), "--rows", "60", "--seed", "3", "--quick"])
    assert res.exit_code == 0, res.output
    assert "quarantined" in res.output and "manifest" in res.output
    assert (out / "shards" / "manifest.json").exists()
    assert len(dc.load(str(out / "shards"))) == dc.verify_shards(str(out / "shards"))["rows"]
    for op in ("clean_whitespace", "filter_turns", "filter_length", "filter_image_exists", "dedup_exact"):
        assert op in res.output
    assert f"datacopilot run {out / 'pipeline.yaml'}" in res.output


def test_demo_spec_reruns_with_the_run_command(runner, tmp_path):
    from datacopilot.demo import run_demo

    out = tmp_path / "demo"
    report = run_demo(str(out), n=60, seed=4, echo=lambda s: None, train_steps=0)
    first = json.loads((out / "shards" / "manifest.json").read_text())
    moved = tmp_path / "moved"
    out.rename(moved)  # the spec's paths are relative to it: the folder can move
    res = runner.invoke(main, ["run", str(moved / "pipeline.yaml")])
    assert res.exit_code == 0, res.output
    again = json.loads((moved / "shards" / "manifest.json").read_text())
    assert again["rows"] == report["kept"] == first["rows"]
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in first["shards"]]
    assert json.loads((moved / "shards" / "report.json").read_text())["ops"][-1]["rows_out"] == report["kept"]


def test_console_script_runs(tmp_path, bad):
    script = Path(sys.executable).parent / "datacopilot"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "datacopilot"]
    res = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for name in ("info", "head", "convert", "validate", "demo"):
        assert name in res.stdout


def test_python_m_datacopilot_exit_codes(tmp_path, bad):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    res = subprocess.run([sys.executable, "-m", "datacopilot", "validate", str(bad)], capture_output=True,
                         text=True, timeout=120, env=env)
    assert res.returncode == 1
    assert f"{bad}:2: conversations[1].from" in res.stdout
