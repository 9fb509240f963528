"""Process mode works from scripts without a ``__main__`` guard and from code read on stdin."""

import subprocess
import sys

SCRIPT = """
import datacopilot as dc
print("body")
ds = dc.MMDataset.from_rows([{"id": str(i), "conversations": [{"from": "human", "value": "hi"}]}
                             for i in range(50)], schema="MM")
def up(r):
    return {**r, "id": r["id"] + "!"}
out = ds.map(up, num_workers=2, mode="process", batch_size=10)
print(out[49]["id"], len(out))
"""


def test_unguarded_script_runs_its_body_once(tmp_path):
    path = tmp_path / "script.py"
    path.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["body", "49!", "50"]


def test_code_from_stdin(tmp_path):
    out = subprocess.run([sys.executable, "-"], input=SCRIPT, capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["body", "49!", "50"]


def test_dead_worker_is_an_error_and_the_next_call_works():
    import os

    import datacopilot as dc
    from datacopilot.errors import DataCopilotError

    ds = dc.MMDataset.from_rows([{"id": str(i), "conversations": [{"from": "human", "value": "hi"}]}
                                 for i in range(20)], schema="MM")

    def die(r):
        if r["id"] == "13":
            os._exit(3)
        return r

    try:
        ds.map(die, num_workers=2, mode="process", batch_size=5)
    except DataCopilotError as e:
        assert "worker process died" in str(e)
    else:
        raise AssertionError("a dead worker must not pass silently")
    out = ds.map(lambda r: {**r, "id": r["id"] + "x"}, num_workers=2, mode="process", batch_size=5)
    assert [r["id"] for r in out] == [f"{i}x" for i in range(20)]
