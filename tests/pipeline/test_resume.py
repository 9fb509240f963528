"""write() streams shards with a manifest of finished inputs; killed with -9, a resumed run ends with exactly the
rows and the accounting of an uninterrupted one."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest
from datacopilot.operators import create

import datacopilot as dc
from datacopilot.errors import InputError

from ._ops import KillAt

ROOT = str(pathlib.Path(__file__).resolve().parents[2])

SCRIPT = """
import sys
import datacopilot as dc
from datacopilot.operators import create
from tests.pipeline._ops import KillAt
files, out, resume = sys.argv[1].split(","), sys.argv[2], sys.argv[3] == "1"
ops = [create("clean_whitespace"), KillAt(id="r130"), create("filter_turns", min_turns=2), create("dedup_exact")]
dc.pipeline(files, schema="MM", batch_size=16).apply(ops).write(out, max_rows_per_shard=25, resume=resume)
"""


def _run(files, out, resume: bool, kill: bool):
    env = {**os.environ, "DC_KILL": "1" if kill else "0", "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-c", SCRIPT, ",".join(files), str(out), "1" if resume else "0"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def _ops():
    return [create("clean_whitespace"), KillAt(id="r130"), create("filter_turns", min_turns=2),
            create("dedup_exact")]


def test_kill_9_then_resume_equals_uninterrupted(files, tmp_path):
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    dc.pipeline(files, schema="MM", batch_size=16).apply(_ops()).write(str(whole), max_rows_per_shard=25)
    died = _run(files, crashed, resume=False, kill=True)
    assert died.returncode == -signal.SIGKILL, died.stderr
    assert not (crashed / "manifest.json").exists()  # nothing published: the finished part is staged
    staged = json.loads((crashed / ".staging-g0001" / "manifest.json").read_text())
    assert staged["pipeline"]["done"] == files[:2] and staged["complete"] is False  # r130 is in the third file
    with pytest.raises(InputError, match="incomplete output"):
        dc.load(str(crashed))
    assert len(dc.load(str(crashed), partial=True)) == staged["rows"] > 0
    done = _run(files, crashed, resume=True, kill=False)
    assert done.returncode == 0, done.stderr
    a, b = dc.load(str(whole)), dc.load(str(crashed))
    assert a.to_arrow().equals(b.to_arrow())
    ids = b.to_arrow().column("id").to_pylist()
    assert len(ids) == len(set(ids))
    ra, rb = (json.loads((d / "report.json").read_text())["ops"] for d in (whole, crashed))
    strip = lambda ops: [{k: v for k, v in op.items() if k != "seconds"} for op in ops]
    assert strip(ra) == strip(rb)
    dc.verify_shards(str(crashed))


def test_write_equals_collect_and_reports(files, tmp_path):
    p = dc.pipeline(files, schema="MM", on_error="quarantine", batch_size=16).apply(
        [create("filter_turns", min_turns=2), create("dedup_exact")])
    report = p.write(str(tmp_path / "o"), max_rows_per_shard=7)
    out = dc.load(str(tmp_path / "o"))
    assert out.to_arrow().equals(p.collect().to_arrow().replace_schema_metadata(None)) or \
        out.to_list() == p.collect().to_list()
    assert report["rows"] == len(out) and report["ops"][1]["op"] == "dedup_exact"
    assert json.loads((tmp_path / "o" / "report.json").read_text())["rows"] == len(out)
    assert all(s["rows"] <= 7 for s in json.loads((tmp_path / "o" / "manifest.json").read_text())["shards"])


def test_quarantine_shards(files, tmp_path):
    from ._ops import FailOn

    p = dc.pipeline(files, schema="MM", on_error="quarantine").apply(FailOn(bad=("r5", "r200")))
    report = p.write(str(tmp_path / "o"))
    assert report["quarantined"] == 2
    q = dc.load(str(tmp_path / "o" / "quarantine"))
    assert sorted(q.to_arrow().column("id").to_pylist()) == ["r200", "r5"]
    assert len(dc.load(str(tmp_path / "o"))) == 238


def test_resume_refuses_other_inputs_and_skips_finished_runs(files, tmp_path):
    out = str(tmp_path / "o")
    p = dc.pipeline(files, schema="MM").apply(create("filter_turns", min_turns=2))
    first = p.write(out)
    before = os.stat(os.path.join(out, "manifest.json")).st_mtime_ns
    again = p.write(out, resume=True)
    assert again["rows"] == first["rows"] and again["ops"] == first["ops"]
    assert len(dc.load(out)) == first["rows"]
    with pytest.raises(InputError, match="cannot resume"):
        dc.pipeline(files[:2], schema="MM").write(out, resume=True)
    assert os.stat(os.path.join(out, "manifest.json")).st_mtime_ns >= before


def test_fresh_write_replaces_previous_output(files, tmp_path):
    out = str(tmp_path / "o")
    dc.pipeline(files, schema="MM").write(out, max_rows_per_shard=10)
    dc.pipeline(files[:1], schema="MM").write(out, max_rows_per_shard=100)
    shards = sorted(f for f in os.listdir(out) if f.startswith("part-"))
    assert shards == ["part-g0002-00000.arrow"] and len(dc.load(out)) == 60
    assert sorted(os.listdir(out)) == ["manifest.json", "part-g0002-00000.arrow", "report.json"]


def test_kill_9_before_a_shuffle_then_resume(files, tmp_path):
    """A dataset-wide reordering stage finishes no input before it has read them all: the killed run leaves no
    finished input, and the resumed run writes the rows of an uninterrupted one, each once."""
    script = SCRIPT.replace('create("dedup_exact")]', 'create("dedup_exact"), create("shuffle", seed=3)]')
    ops = _ops() + [create("shuffle", seed=3)]
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    dc.pipeline(files, schema="MM", batch_size=16).apply(ops).write(str(whole), max_rows_per_shard=25)
    env = {**os.environ, "PYTHONPATH": ROOT}
    args = [sys.executable, "-c", script, ",".join(files), str(crashed)]
    died = subprocess.run(args + ["0"], env={**env, "DC_KILL": "1"}, capture_output=True, text=True, timeout=120,
                          check=False)
    assert died.returncode == -signal.SIGKILL, died.stderr
    assert not (crashed / "manifest.json").exists()
    staged = crashed / ".staging-g0001" / "manifest.json"  # (none yet: the first input had not ended)
    assert not staged.exists() or json.loads(staged.read_text())["pipeline"]["done"] == []
    done = subprocess.run(args + ["1"], env={**env, "DC_KILL": "0"}, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    a, b = dc.load(str(whole)), dc.load(str(crashed))
    assert a.to_arrow().equals(b.to_arrow())
    assert b.to_arrow().column("id").to_pylist() != sorted(b.to_arrow().column("id").to_pylist())
    dc.verify_shards(str(crashed))


def _killed_run(files, out) -> dict:
    died = _run(files, out, resume=False, kill=True)
    assert died.returncode == -signal.SIGKILL, died.stderr
    return json.loads((out / ".staging-g0001" / "manifest.json").read_text())


def test_resume_refuses_another_plan_and_staged_files_that_do_not_match(files, tmp_path):
    out = tmp_path / "o"
    staged = _killed_run(files, out)
    other = [create("clean_whitespace"), KillAt(id="r130"), create("filter_turns", min_turns=3),
             create("dedup_exact")]
    with pytest.raises(InputError, match="another plan"):
        dc.pipeline(files, schema="MM", batch_size=16).apply(other).write(str(out), max_rows_per_shard=25,
                                                                          resume=True)
    with pytest.raises(InputError, match="another plan"):  # the shard size is part of the plan
        dc.pipeline(files, schema="MM", batch_size=16).apply(_ops()).write(str(out), max_rows_per_shard=24,
                                                                           resume=True)
    shard = out / ".staging-g0001" / staged["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(InputError) as ei:
        dc.pipeline(files, schema="MM", batch_size=16).apply(_ops()).write(str(out), max_rows_per_shard=25,
                                                                           resume=True)
    assert "does not describe the files present" in str(ei.value) and str(shard) in str(ei.value)
    report = dc.pipeline(files, schema="MM", batch_size=16).apply(_ops()).write(str(out), max_rows_per_shard=25)
    assert report["rows"] == len(dc.load(str(out), verify=True))  # a fresh write replaces the staged run
    assert not [f for f in os.listdir(out) if f.startswith(".")]


def test_report_is_listed_checked_by_verify_and_kept_by_a_finished_resume(files, tmp_path):
    """The report is published with the output: listed in its manifest by sha256, of its generation;
    ``verify_shards`` and ``datacopilot verify`` refuse a changed report, a resume of the finished run returns
    the published report (its invalid-row count too) and rewrites the output when the report does not match."""
    from click.testing import CliRunner

    from datacopilot.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "conversations": 3}\n' + pathlib.Path(files[0]).read_text())
    out = str(tmp_path / "o")
    p = dc.pipeline([str(bad), *files[1:]], schema="MM", on_error="quarantine").apply(create("dedup_exact"))
    first = p.write(out)
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["report"]["file"] == "report.json" and first["generation"] == manifest["generation"] == 1
    assert first["invalid_input_rows"] == 1
    assert p.write(out, resume=True) == first  # finished: nothing written, the published report
    assert CliRunner().invoke(main, ["verify", out]).exit_code == 0
    report = tmp_path / "o" / "report.json"
    report.write_text(report.read_text().replace('"rows"', '"rows" ', 1))
    with pytest.raises(InputError, match="report.json: checksum mismatch"):
        dc.verify_shards(out)
    res = CliRunner().invoke(main, ["verify", out])
    assert res.exit_code == 1 and "report.json" in res.output
    again = p.write(out, resume=True)  # the published output does not match its manifest: written again
    assert again["generation"] == 2 and {**again, "generation": 1} == {**first, "ops": again["ops"]}
    dc.verify_shards(out)
