"""The pipeline commands: run, ops, describe."""

import json

from click.testing import CliRunner

import datacopilot as dc
from datacopilot.cli import main

SPEC = """
source: in/*.jsonl
ops:
  - {name: filter_turns, min_turns: 2}
  - dedup_exact
output: {dir: out}
"""


def test_run_writes_shards_and_report(files, tmp_path):
    (tmp_path / "p.yaml").write_text(SPEC)
    res = CliRunner().invoke(main, ["run", str(tmp_path / "p.yaml")])
    assert res.exit_code == 0, res.output
    assert "filter_turns: in 240" in res.output and "dedup_exact" in res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["rows"] == len(dc.load(str(tmp_path / "out"))) == report["ops"][-1]["rows_out"]
    res = CliRunner().invoke(main, ["run", str(tmp_path / "p.yaml"), "--resume", "--out", str(tmp_path / "o2"),
                                    "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert dc.load(str(tmp_path / "o2")).to_list() == dc.load(str(tmp_path / "out")).to_list()


def test_run_reports_bad_specs(tmp_path):
    (tmp_path / "p.yaml").write_text("source: x.jsonl\nops: [no_such_op]\n")
    res = CliRunner().invoke(main, ["run", str(tmp_path / "p.yaml")])
    assert res.exit_code != 0 and "no such file" in res.output


def test_ops_lists_parameters():
    res = CliRunner().invoke(main, ["ops"])
    assert res.exit_code == 0 and "filter_turns [filter](min_turns=" in res.output
    res = CliRunner().invoke(main, ["ops", "--kind", "dedup", "--json"])
    rows = json.loads(res.output)
    assert {r["kind"] for r in rows} == {"dedup"} and "dedup_exact" in {r["name"] for r in rows}


def test_describe_writes_the_page(files, tmp_path):
    res = CliRunner().invoke(main, ["describe", files[0], "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "d" / "index.html").exists() and "turns: mean" in res.output
    assert json.loads((tmp_path / "d" / "stats.json").read_text())["metrics"]["turns"]["count"] == 60
