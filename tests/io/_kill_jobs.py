"""The writes of the kill matrix (test_kill_matrix.py), importable by the forkserver that starts them.

A write's *events* are the calls that change what a reader of the output directory could see: every rename
(``mv``: a file finished by ``atomic_open``, a staged file moved in, the manifest replaced) and every removal
(``rm``) on the local filesystem. ``run(job, kill_at=k)`` arms a hook that sends SIGKILL to its own process just
before the k-th event, then runs the write: the process dies with the output exactly as it was after k - 1 events.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading

import datacopilot as dc
from datacopilot.operators import create


def rows(n: int, tag: str = "r") -> list[dict]:
    """LLaVA-style rows; every 5th has one turn, answers repeat every 12 rows (duplicates for dedup)."""
    out = []
    for i in range(n):
        turns = [{"from": "human", "value": f"what  is {i % 12}?"}, {"from": "gpt", "value": f"{tag} {i % 12}"}]
        out.append({"id": f"{tag}{i}", "conversations": turns[:1] if i % 5 == 0 else turns})
    return out


def write_inputs(directory: str, n_files: int, per_file: int, tag: str = "r") -> list[str]:
    os.makedirs(directory, exist_ok=True)
    paths, all_rows = [], rows(n_files * per_file, tag)
    for u in range(n_files):
        path = os.path.join(directory, f"part{u}.jsonl")
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in all_rows[u * per_file:(u + 1) * per_file])
        paths.append(path)
    return paths


def ops() -> list:
    return [create("clean_whitespace"), create("filter_turns", min_turns=2), create("dedup_exact")]


def write(job: dict) -> None:
    """Run one write: ``{"kind": "shards", "out", "n", "tag", "max_rows"}`` or ``{"kind": "pipeline" | "ray",
    "out", "files", "max_rows", "resume"}`` (``"ray"``: the pipeline written by the Ray executor; Ray must be
    running, see :func:`run_ray`)."""
    if job["kind"] == "shards":
        ds = dc.MMDataset.from_rows(rows(job["n"], job.get("tag", "r")), schema="MM")
        ds.write_shards(job["out"], format=job.get("format", "arrow"), max_rows_per_shard=job["max_rows"])
    elif job["kind"] == "ray":
        p = dc.pipeline(job["files"], schema="MM", batch_size=8).apply(ops())
        p.write(job["out"], executor="ray", max_rows_per_shard=job["max_rows"], resume=job.get("resume", False))
    else:
        p = dc.pipeline(job["files"], schema="MM", batch_size=8).apply(ops())
        p.write(job["out"], max_rows_per_shard=job["max_rows"], resume=job.get("resume", False),
                progress=False)


@contextlib.contextmanager
def events(kill_at: int | None = None):
    """Record the write events inside the block (the yielded list gets ``(name, *paths)`` per event); with
    ``kill_at``, SIGKILL this process just before event number ``kill_at`` (1-based)."""
    from fsspec.implementations.local import LocalFileSystem

    log, lock = [], threading.Lock()
    saved = {name: getattr(LocalFileSystem, name) for name in ("mv", "rm")}

    def hooked(fn):
        def inner(self, *a, **kw):
            with lock:
                if len(log) + 1 == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                log.append((fn.__name__, *map(str, a)))
            return fn(self, *a, **kw)
        return inner

    for name, fn in saved.items():
        setattr(LocalFileSystem, name, hooked(fn))
    try:
        yield log
    finally:
        for name, fn in saved.items():
            setattr(LocalFileSystem, name, fn)


def run(job: dict, kill_at: int | None = None) -> None:
    """The target of a forked process: the write, killed before event ``kill_at``."""
    with events(kill_at):
        write(job)


def start_ray(temp_dir: str | None = None) -> None:
    """A real local Ray for this process (2 CPUs, no dashboard, its files under ``temp_dir``); its workers can
    import the repository."""
    import pathlib

    import ray

    root = str(pathlib.Path(__file__).resolve().parents[2])
    # in the environment Ray's processes inherit (a runtime_env would keep the pre-started workers idle)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp_dir)


def run_ray(temp_dir: str, steps: list[dict], kill_at: int | None = None) -> None:
    """The target of a spawned process: a new process group (so the test can kill the Ray processes this driver
    started with it), a local Ray with its files under ``temp_dir``, then the writes ``steps`` in order, the last
    killed before its event ``kill_at``. Without a kill, Ray is shut down at the end."""
    os.setpgrp()
    start_ray(temp_dir)
    for job in steps[:-1]:
        write(job)
    with events(kill_at):
        write(steps[-1])
    import ray

    ray.shutdown()
