"""Operators for the pipeline tests (a module of their own, so subprocesses and process workers import them)."""

import os
import signal

from datacopilot.operators import Augmenter, Mapper


class FailOn(Mapper):
    """Raises for rows whose id is in ``bad``."""

    name, reads, writes = "test_pipe_fail_on", ("id",), ("id",)

    def __init__(self, bad: tuple = ()):
        super().__init__(bad=tuple(bad))

    def map_batch(self, batch):
        hit = set(batch.column("id").to_pylist()) & set(self.p["bad"])
        if hit:
            raise ValueError(f"bad row {min(hit)}")
        return batch


class KillAt(Mapper):
    """``kill -9`` of its own process when it meets row ``id`` and the environment has DC_KILL=1."""

    name, reads, writes = "test_pipe_kill_at", ("id",), ("id",)

    def __init__(self, id: str = ""):
        super().__init__(id=id)

    def map_batch(self, batch):
        if os.environ.get("DC_KILL") == "1" and self.p["id"] in batch.column("id").to_pylist():
            os.kill(os.getpid(), signal.SIGKILL)
        return batch


class Twice(Augmenter):
    """Every row twice (an augmenter: more rows out than in)."""

    name, reads = "test_pipe_twice", ("id",)

    def augment(self, batch):
        import pyarrow as pa

        t = pa.Table.from_batches([batch])
        return pa.concat_tables([t, t]).take(
            [i for k in range(t.num_rows) for i in (k, k + t.num_rows)])
