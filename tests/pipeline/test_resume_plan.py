"""A run knows the plan it was started with: resumed with another plan (operators, parameters, input files,
schema, output options) it is refused with an error that names each change; and its report counts every input
row, however many times it was killed and resumed."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest
from datacopilot.operators import create

import datacopilot as dc
from datacopilot.errors import InputError, PlanChangedError

from ._ops import KillAt
from .conftest import row, write_jsonl

ROOT = str(pathlib.Path(__file__).resolve().parents[2])


def _plan(files, **kw):
    ops = kw.pop("ops", None) or [create("filter_turns", min_turns=2), create("dedup_exact")]
    return dc.pipeline(files, schema=kw.pop("schema", "MM"), batch_size=16, **kw).apply(ops)


def test_resume_of_a_finished_run_with_another_plan_names_what_changed(files, tmp_path, executor):
    out = str(tmp_path / f"o-{executor}")
    first = _plan(files).write(out, executor=executor, max_rows_per_shard=25)
    base = os.path.basename
    cases = [
        (_plan(files, ops=[create("filter_turns", min_turns=3), create("dedup_exact")]), {},
         ["operator 1 filter_turns: min_turns 2 -> 3"]),
        (_plan(files, ops=[create("filter_turns", min_turns=2)]), {},
         ["operators: 2 -> 1 (filter_turns -> dedup_exact became filter_turns)"]),
        (_plan(files, ops=[create("filter_turns", min_turns=2), KillAt(id="r1")]), {},
         ["operator 2: dedup_exact -> test_pipe_kill_at"]),
        (_plan(files, on_error="quarantine"), {}, ["on_error raise -> quarantine"]),
        (_plan(files), {"max_rows_per_shard": 24}, ["max_rows_per_shard 25 -> 24"]),
        (_plan(files), {"format": "parquet"}, ["output format arrow -> parquet"]),
        (_plan(files[:3]), {}, [f"source {files[3]}: removed"]),
        (_plan(files, schema="SHAREGPT"), {}, ["schema MM -> SHAREGPT"]),
    ]
    for plan, options, changes in cases:
        with pytest.raises(PlanChangedError) as ei:
            plan.write(out, executor=executor, resume=True, **{"max_rows_per_shard": 25, **options})
        assert ei.value.changes == changes
        assert f"{out} (its published output" in str(ei.value) and "; ".join(changes) in str(ei.value)
    assert _plan(files).write(out, executor=executor, max_rows_per_shard=25, resume=True) == first  # the same plan
    with open(files[1], "a") as f:  # a file that grew, and one touched since
        f.write(json.dumps(row(999)) + "\n")
    st = os.stat(files[2])
    os.utime(files[2], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    with pytest.raises(PlanChangedError) as ei:
        _plan(files).write(out, executor=executor, max_rows_per_shard=25, resume=True)
    size = os.path.getsize(files[1])
    assert ei.value.changes[0] == f"source {files[1]}: size {size - len(json.dumps(row(999))) - 1} -> {size}"
    assert ei.value.changes[1].startswith(f"source {files[2]}: modified (") and len(ei.value.changes) == 2
    assert base(files[1]) in str(ei.value) and isinstance(ei.value, InputError)
    again = _plan(files).write(out, executor=executor, max_rows_per_shard=25)  # a fresh write: the new inputs
    assert again["ops"][0]["rows_in"] == first["ops"][0]["rows_in"] + 1


SCRIPT = """
import sys
import datacopilot as dc
from datacopilot.operators import create
from tests.pipeline._ops import KillAtEnv
files, out, resume, rows = sys.argv[1].split(","), sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
ops = [create("clean_whitespace"), KillAtEnv(), create("filter_turns", min_turns=%s), create("dedup_exact")]
dc.pipeline(files, schema="MM", batch_size=16, on_error="quarantine").apply(ops).write(
    out, max_rows_per_shard=rows, resume=resume)
"""


def _run(files, out, resume: bool, kill_at: str = "", min_turns: int = 2, rows: int = 25):
    env = {**os.environ, "DC_KILL_AT": kill_at, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-c", SCRIPT % min_turns, ",".join(files), str(out),
                           "1" if resume else "0", str(rows)],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def dirty(tmp_path):
    """Four jsonl files of 60 rows, each with invalid rows: one first, one in the middle (``r130`` and ``r200``,
    where the runs are killed, come after the invalid rows of their files)."""
    d = tmp_path / "dirty"
    d.mkdir()
    files = []
    for u in range(4):
        path = write_jsonl(d / f"part{u}.jsonl", [row(u * 60 + i) for i in range(60)])
        lines = pathlib.Path(path).read_text().splitlines(keepends=True)
        lines.insert(5, '{"id": "bad-mid-%d", "conversations": 3}\n' % u)
        lines.insert(0, '{"id": "bad-first-%d", "conversations": "x"}\n' % u)
        pathlib.Path(path).write_text("".join(lines))
        files.append(path)
    return files


def _counts(out: pathlib.Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    report["ops"] = [{k: v for k, v in op.items() if k != "seconds"} for op in report["ops"]]
    return {k: v for k, v in report.items() if k not in ("output", "generation")}


def test_report_counts_every_input_row_after_two_kills_and_resumes(dirty, tmp_path):
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    assert _run(dirty, whole, resume=False).returncode == 0
    died = _run(dirty, crashed, resume=False, kill_at="r130")  # in the third file: two finished
    assert died.returncode == -signal.SIGKILL, died.stderr
    staged = json.loads((crashed / ".staging-g0001" / "manifest.json").read_text())
    assert staged["pipeline"]["done"] == dirty[:2] and staged["pipeline"]["invalid"] == 4
    died = _run(dirty, crashed, resume=True, kill_at="r200")  # the third file read again, finished; killed in the 4th
    assert died.returncode == -signal.SIGKILL, died.stderr
    staged = json.loads((crashed / ".staging-g0001" / "manifest.json").read_text())
    assert staged["pipeline"]["done"] == dirty[:3] and staged["pipeline"]["invalid"] == 6
    done = _run(dirty, crashed, resume=True)
    assert done.returncode == 0, done.stderr
    clean = _counts(whole)
    assert clean["invalid_input_rows"] == 8 and clean["quarantined"] == 8
    assert _counts(crashed) == clean
    first = clean["ops"][0]
    assert first["rows_in"] + clean["invalid_input_rows"] == 4 * 60 + 8  # every input row, once
    assert dc.load(str(whole)).to_arrow().equals(dc.load(str(crashed)).to_arrow())
    q = sorted(dc.load(str(crashed / "quarantine")).to_arrow().column("_source").to_pylist())
    assert q == sorted(dc.load(str(whole / "quarantine")).to_arrow().column("_source").to_pylist())
    assert _run(dirty, crashed, resume=True).returncode == 0  # finished: the published report, unchanged
    assert _counts(crashed) == clean


def test_killed_run_resumed_with_another_plan_names_the_change_and_keeps_its_state(dirty, tmp_path):
    out = tmp_path / "o"
    assert _run(dirty, out, resume=False, kill_at="r130").returncode == -signal.SIGKILL
    before = (out / ".staging-g0001" / "manifest.json").read_text()
    refused = _run(dirty, out, resume=True, min_turns=3)
    assert refused.returncode == 1
    assert "PlanChangedError" in refused.stderr and "operator 3 filter_turns: min_turns 2 -> 3" in refused.stderr
    refused = _run(dirty, out, resume=True, rows=30)
    assert "max_rows_per_shard 25 -> 30" in refused.stderr
    assert (out / ".staging-g0001" / "manifest.json").read_text() == before  # the staged run is untouched
    assert _run(dirty, out, resume=True).returncode == 0
    whole = tmp_path / "whole"
    assert _run(dirty, whole, resume=False).returncode == 0
    assert _counts(out) == _counts(whole)


def test_cli_resume_of_an_edited_spec_says_what_changed(files, tmp_path):
    from click.testing import CliRunner

    from datacopilot.cli import main

    spec = tmp_path / "p.yaml"
    spec.write_text("source: in/*.jsonl\nops:\n  - {name: filter_turns, min_turns: 2}\n  - dedup_exact\n"
                    "output: {dir: out}\n")
    assert CliRunner().invoke(main, ["run", str(spec)]).exit_code == 0
    spec.write_text(spec.read_text().replace("min_turns: 2", "min_turns: 3"))
    res = CliRunner().invoke(main, ["run", str(spec), "--resume"])
    assert res.exit_code == 2 and "cannot resume" in res.output, res.output
    assert "operator 1 filter_turns: min_turns 2 -> 3" in res.output and "Traceback" not in res.output


def test_inputs_behind_a_url_are_known_by_their_listing(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    urls = []
    for u in range(2):
        with fs.open(f"/resume-plan/p{u}.jsonl", "wb") as f:
            f.write("".join(json.dumps(row(u * 10 + i)) + "\n" for i in range(10)).encode())
        urls.append(f"memory://resume-plan/p{u}.jsonl")
    out = str(tmp_path / "o")
    try:
        first = _plan(urls).write(out)
        assert _plan(urls).write(out, resume=True) == first
        with fs.open("/resume-plan/p1.jsonl", "ab") as f:
            f.write((json.dumps(row(99)) + "\n").encode())
        with pytest.raises(PlanChangedError) as ei:
            _plan(urls).write(out, resume=True)
        assert len(ei.value.changes) == 1 and ei.value.changes[0].startswith(f"source {urls[1]}: size ")
    finally:
        fs.rm("/resume-plan", recursive=True)


def test_a_run_staged_before_plans_were_kept_resumes_by_its_fingerprint(dirty, tmp_path):
    out = tmp_path / "o"
    assert _run(dirty, out, resume=False, kill_at="r130").returncode == -signal.SIGKILL
    path = out / ".staging-g0001" / "manifest.json"
    staged = json.loads(path.read_text())
    del staged["pipeline"]["plan"], staged["pipeline"]["invalid"]
    path.write_text(json.dumps(staged))
    refused = _run(dirty, out, resume=True, min_turns=3)
    assert refused.returncode == 1 and "written by another plan (operators" in refused.stderr
    assert _run(dirty, out, resume=True).returncode == 0
    report = json.loads((out / "report.json").read_text())
    assert report["invalid_input_rows"] == 4  # the units it read (the count of the others was not kept then)
