"""Pipelines as Ray jobs (datacopilot.jobs, ``datacopilot submit / status / stop``).

The Ray part runs against a real Ray head with its job server, started once for the module inside a network and PID
namespace of its own (only a loopback interface; the kernel ends every process of the namespace when its driver,
tests/_jobs_cluster.py, exits), so nothing it opens is reachable from outside and nothing outlives the test.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

import datacopilot as dc
from datacopilot.cli import main
from datacopilot.errors import JobError
from datacopilot.jobs import (EXCLUDES, entrypoint, job_runtime_env, merge_runtime_env, output_dir,
                              read_runtime_env, stage_package)

ROOT = Path(__file__).resolve().parents[1]
SPEC = """
source: in/*.jsonl
ops:
  - {name: filter_turns, min_turns: 2}
  - dedup_exact
output: {dir: out}
"""


def row(k: int) -> dict:
    turns = [{"from": "human", "value": f"what is item {k % 40}?"}, {"from": "gpt", "value": f"it is {k % 40}"}]
    return {"id": f"r{k}", "conversations": turns[:1] if k % 7 == 0 else turns}


def write_rows(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# --- without Ray -------------------------------------------------------------------------------------------------

def test_the_staged_package_imports_without_the_checkout(tmp_path):
    pkg = stage_package(str(tmp_path))
    for src, dst in {"datacopilot": "", "schemas": "schemas", "operators": "operators", "models": "models",
                     "kernels": "kernels"}.items():
        for init in (ROOT / src).rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                rel = init.relative_to(ROOT / src)
                assert (Path(pkg) / dst / rel).is_file(), f"{src}/{rel} is not shipped"
    assert not list(Path(pkg).rglob("__pycache__"))
    # a Python that cannot see the editable install imports every layer from the staged copy
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
            f"sys.path.insert(0, {str(tmp_path)!r}); "
            "import datacopilot.operators, datacopilot.schemas, datacopilot.kernels, datacopilot.models, "
            "datacopilot.cli, datacopilot.pipeline; "
            "print('\\n'.join(m.__file__ for n, m in sys.modules.items() if n.startswith('datacopilot')))")
    files = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=str(tmp_path)).stdout.split()
    assert len(files) > 20 and all(f.startswith(pkg) for f in files), [f for f in files if not f.startswith(pkg)]


def test_the_runtime_env_ships_the_spec_dir_without_its_output(tmp_path):
    spec = tmp_path / "job" / "p.yaml"
    spec.parent.mkdir()
    spec.write_text(SPEC)
    out = output_dir(str(spec), None)
    assert out == str(tmp_path / "job" / "out")  # relative output.dir: against the spec's directory
    assert output_dir(str(spec), "s3://b/out") == "s3://b/out"
    env = job_runtime_env(str(spec), out, "/pkgs/datacopilot", {"py_modules": ["/x/mine"], "env_vars": {"A": "1"},
                                                                "excludes": ["*.bin"]})
    assert env["working_dir"] == str(spec.parent) and env["py_modules"] == ["/pkgs/datacopilot", "/x/mine"]
    assert env["excludes"] == [*EXCLUDES, "/out", "*.bin"] and env["env_vars"] == {"A": "1"}
    (tmp_path / "elsewhere").mkdir()
    outside = job_runtime_env(str(spec), str(tmp_path / "elsewhere"), "/p", None)
    assert outside["excludes"] == list(EXCLUDES)
    command = entrypoint(str(spec), env, out, resume=True)
    assert command == f"python -m datacopilot run p.yaml --ray auto --out {out} --resume"
    with pytest.raises(JobError, match="not inside the job's working_dir"):
        entrypoint(str(spec), {**env, "working_dir": str(tmp_path / "elsewhere")}, out)
    with pytest.raises(JobError, match="must be a local directory"):
        entrypoint(str(spec), {**env, "working_dir": "s3://b/wd.zip"}, out)


def test_the_spec_needs_an_output_dir(tmp_path):
    spec = tmp_path / "p.yaml"
    spec.write_text("source: in/*.jsonl\nops: []\n")
    with pytest.raises(JobError, match="needs an output directory"):
        output_dir(str(spec), None)


def test_runtime_env_from_a_file_or_inline(tmp_path):
    f = tmp_path / "env.yaml"
    f.write_text("env_vars: {X: '1'}\nexcludes: ['*.h5']\n")
    assert read_runtime_env(str(f)) == {"env_vars": {"X": "1"}, "excludes": ["*.h5"]}
    assert read_runtime_env('{"pip": ["polars"]}') == {"pip": ["polars"]}
    with pytest.raises(JobError, match="a runtime_env is a mapping"):
        read_runtime_env("[1, 2]")
    assert merge_runtime_env({"working_dir": "a"}, {"working_dir": "b"}) == {"working_dir": "b"}


def test_a_dead_address_is_a_clear_error():
    res = CliRunner().invoke(main, ["status", "raysubmit_x", "--address", "http://127.0.0.1:9"])
    assert res.exit_code == 2, res.output
    assert "error: cannot reach a Ray job server at http://127.0.0.1:9" in res.output
    assert "Traceback" not in res.output
    res = CliRunner(env={"RAY_ADDRESS": "http://127.0.0.1:9", "RAY_API_SERVER_ADDRESS": None}).invoke(
        main, ["stop", "raysubmit_x"])
    assert res.exit_code == 2 and "cannot reach a Ray job server at http://127.0.0.1:9" in res.output
    res = CliRunner(env={"RAY_ADDRESS": None, "RAY_API_SERVER_ADDRESS": None}).invoke(main, ["stop", "raysubmit_x"])
    assert res.exit_code == 2 and "pass --address http://HOST:8265" in res.output


# --- on a real Ray head with its job server ----------------------------------------------------------------------

def _unshare_works() -> bool:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    return subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", "true"],
                          capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The scenarios' pipelines, and what the driver in the namespace saw running them."""
    pytest.importorskip("ray.job_submission")
    pytest.importorskip("aiohttp")
    if not _unshare_works():
        pytest.skip("needs unshare --net --pid (root or user namespaces) to keep Ray on a loopback of its own")
    w = tmp_path_factory.mktemp("jobs")
    ok = w / "ok"
    write_rows(ok / "in" / "a.jsonl", [row(k) for k in range(90)])
    write_rows(ok / "in" / "b.jsonl", [row(k) for k in range(90, 150)])
    (ok / "p.yaml").write_text(SPEC)
    (ok / ".git").mkdir()
    (ok / ".git" / "objects").write_bytes(b"x" * 1000)
    (ok / "__pycache__").mkdir()
    (ok / "__pycache__" / "junk.pyc").write_bytes(b"x")
    (w / "fail").mkdir()
    (w / "fail" / "p.yaml").write_text(SPEC.replace("in/*.jsonl", "in/missing.jsonl"))
    big = w / "big"
    write_rows(big / "in" / "a.jsonl", [row(1)])
    (big / "in" / "blob.bin").write_bytes(os.urandom(20 * 2**20))
    (big / "p.yaml").write_text(SPEC)
    (w / "long").mkdir()
    os.mkfifo(w / "never.jsonl")  # the job's reader waits on it until the job is stopped
    (w / "long" / "p.yaml").write_text(SPEC.replace("in/*.jsonl", str(w / "never.jsonl")))
    ray_tmp = tempfile.mkdtemp(prefix="dcjobs", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    try:
        subprocess.run(["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", sys.executable,
                        str(ROOT / "tests" / "_jobs_cluster.py"), str(w), ray_tmp], timeout=900, cwd=str(ROOT))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    results = w / "results.json"
    assert results.exists(), "the driver in the namespace wrote no results"
    r = json.loads(results.read_text())
    assert r["start"]["rc"] == 0, r["start"]
    return w, r


def _text(res: dict) -> str:
    return res["out"] + res["err"]


def test_submit_streams_the_logs_and_succeeds(work):
    w, r = work
    res = r["ok"]
    assert res["rc"] == 0, _text(res)
    assert "submitted job raysubmit_" in res["err"]
    assert "filter_turns: in 150" in res["out"] and "dedup_exact" in res["out"]  # the job's report, streamed
    assert ": SUCCEEDED" in res["out"]
    assert "Connected to Ray cluster" in res["out"]  # `run --ray auto` in the job joined the job's cluster
    from datacopilot.pipeline import Pipeline
    from datacopilot.pipeline_spec import read_spec

    want = Pipeline.from_spec(read_spec(str(w / "ok" / "p.yaml")), str(w / "ok"))
    want.write(str(w / "local_out"))  # the same spec run here, on the local executor
    got = dc.load(str(w / "ok" / "out"))
    assert got.to_list() == dc.load(str(w / "local_out")).to_list() and len(got) > 0
    report = json.loads((w / "ok" / "out" / "report.json").read_text())
    assert report["rows"] == len(got)


def test_status_names_the_finished_job(work):
    _, r = work
    res = r["status_ok"]
    assert res is not None and res["rc"] == 0, res
    assert ": SUCCEEDED" in res["out"] and "datacopilot run p.yaml --ray auto" in res["out"]
    res = r["follow_ok"]  # --follow on a job that has ended: its whole log, then its state, exit code 0
    assert res["rc"] == 0 and "filter_turns: in 150" in res["out"] and ": SUCCEEDED" in res["out"], res


def test_the_upload_leaves_out_caches_version_control_and_the_output(work):
    _, r = work
    # the second run of ok/ (with out/ written) uploads the same package, so it reads the same paths and resumes
    assert r["resume_ok"]["rc"] == 0, _text(r["resume_ok"])
    dirs = r["packages"]["working_dir_files"]
    ok = [files for files in dirs.values() if "p.yaml" in files and os.path.join("in", "b.jsonl") in files]
    assert len(ok) == 1, dirs
    for files in ok:
        assert not [f for f in files if f.startswith(("out", ".git", "__pycache__"))], files
    shipped = [f for files in r["packages"]["py_modules_files"].values() for f in files]
    assert os.path.join("datacopilot", "schemas", "__init__.py") in shipped  # (its __pycache__: the job's own)


def test_a_failing_pipeline_fails_the_job_and_the_command(work):
    _, r = work
    res = r["fail"]
    assert res["rc"] == 1, _text(res)
    assert ": FAILED" in res["out"] and "missing.jsonl" in res["out"]  # the job's own error, in its logs
    assert "exit code: 2" in res["out"]
    st = r["status_fail"]
    assert st is not None and st["rc"] == 0, st
    lines = st["out"].splitlines()
    assert "Running entrypoint for job" in st["out"]  # --logs: what the job printed, then its state
    assert any(line.endswith(": FAILED") for line in lines) and lines[-1].startswith("  error: ")
    assert "missing.jsonl" in lines[-1]


def test_an_unknown_job_is_a_clear_error(work):
    _, r = work
    res = r["unknown"]
    assert res["rc"] == 2 and "error: no job 'raysubmit_nosuchjob' at http://127.0.0.1:8265" in res["err"]
    assert "Traceback" not in _text(res)


def test_an_upload_over_the_cluster_limit_names_the_limit_and_the_big_file(work):
    _, r = work
    res = r["big"]
    assert res["rc"] == 2, _text(res)
    assert "over the 16.00MiB a Ray cluster stores" in res["err"] and "in/blob.bin (20.0 MiB)" in res["err"]
    assert "Traceback" not in _text(res)


def test_stop_ends_a_running_job(work):
    _, r = work
    assert r["long"]["rc"] == 0 and r["long"]["out"].strip() == "dc-long", _text(r["long"])
    assert r["long_seen"][-1] == "RUNNING", r["long_seen"]
    res = r["interrupted"]  # Ctrl-C while following: the command ends, the job runs on
    assert res["rc"] == 130 and "it keeps running" in res["err"] and "Traceback" not in res["err"], res
    assert r["long_after_interrupt"] == "RUNNING"
    assert r["stop"]["rc"] == 0 and "dc-long: STOPPED" in r["stop"]["out"], _text(r["stop"])
    assert r["long_after"] == "STOPPED"
    assert r["stop_again"]["rc"] == 0 and "had already ended: STOPPED" in r["stop_again"]["out"]


def test_ray_listens_on_loopback_only(work):
    _, r = work
    assert r["listening"], "no listening socket seen"
    assert all(a.startswith(("127.0.0.1:", "::ffff:127.0.0.1:", "::1:")) for a in r["listening"]), r["listening"]


def test_run_with_ray_keeps_the_specs_ray_options(tmp_path):
    # what a job runs (`run SPEC --ray auto`) uses the spec's executor options: here an invalid one, refused before
    # any Ray starts (they were dropped when --ray was given, and the run went on with the defaults)
    write_rows(tmp_path / "in" / "a.jsonl", [row(1)])
    (tmp_path / "p.yaml").write_text(SPEC + "executor: {name: ray, block_rows: 0}\n")
    res = CliRunner().invoke(main, ["run", str(tmp_path / "p.yaml"), "--ray", "auto"])
    assert res.exit_code == 2 and "`block_rows` must be a positive integer, got 0" in res.output, res.output


def test_a_spec_with_a_typo_is_refused_before_any_upload(tmp_path):
    spec = tmp_path / "p.yaml"
    spec.write_text(SPEC.replace("min_turns: 2", "min_turn: 2"))
    # the address is dead: the spec is checked before the job server is asked anything
    res = CliRunner().invoke(main, ["submit", str(spec), "--address", "http://127.0.0.1:9"])
    assert res.exit_code == 2, res.output
    assert f"error: {spec}: ops[0] (filter_turns): unknown parameter(s) 'min_turn'; known: min_turns" in res.output
    spec.write_text(SPEC.replace("dedup_exact", "dedup_exactly"))
    res = CliRunner().invoke(main, ["submit", str(spec), "--address", "http://127.0.0.1:9"])
    assert res.exit_code == 2 and "unknown operator 'dedup_exactly'" in res.output, res.output
    spec.write_text(SPEC + "outptu: {dir: x}\n")
    res = CliRunner().invoke(main, ["submit", str(spec), "--address", "http://127.0.0.1:9"])
    assert res.exit_code == 2 and "unknown key(s) 'outptu'" in res.output, res.output
