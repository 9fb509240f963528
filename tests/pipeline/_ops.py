"""Operators for the pipeline tests (a module of their own, so subprocesses and process workers import them).

``FailOn`` and ``Twice`` are the executor tests' operators under names of their own here."""

import os
import signal
import time

from datacopilot.operators import Mapper
from tests.executors._ops import FailOn as _FailOn
from tests.executors._ops import Twice as _Twice


class FailOn(_FailOn):
    """Raises for rows whose id is in ``bad``."""

    name = "test_pipe_fail_on"


class Twice(_Twice):
    """Every row twice (an augmenter: more rows out than in)."""

    name = "test_pipe_twice"


class KillAt(Mapper):
    """``kill -9`` of its own process when it meets row ``id`` and the environment has DC_KILL=1."""

    name, reads, writes = "test_pipe_kill_at", ("id",), ("id",)

    def __init__(self, id: str = ""):
        super().__init__(id=id)

    def map_batch(self, batch):
        if os.environ.get("DC_KILL") == "1" and self.p["id"] in batch.column("id").to_pylist():
            os.kill(os.getpid(), signal.SIGKILL)
        return batch


class KillAtEnv(Mapper):
    """``kill -9`` of its own process when it meets the row whose id is in the environment's DC_KILL_AT (the same
    plan, with the same fingerprint, killed at another row in each run)."""

    name, reads, writes = "test_pipe_kill_at_env", ("id",), ("id",)

    def map_batch(self, batch):
        at = os.environ.get("DC_KILL_AT")
        if at and at in batch.column("id").to_pylist():
            os.kill(os.getpid(), signal.SIGKILL)
        return batch


class HangAt(Mapper):
    """Where it runs (a worker process), when it meets row ``id``: writes its pid to the file DC_HANG_MARK names,
    then hangs (a run stopped in the middle, its driver waiting for this worker)."""

    name, reads, writes = "test_pipe_hang_at", ("id",), ("id",)

    def __init__(self, id: str = ""):
        super().__init__(id=id)

    def map_batch(self, batch):
        mark = os.environ.get("DC_HANG_MARK")
        if mark and self.p["id"] in batch.column("id").to_pylist():
            with open(mark + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(mark + ".tmp", mark)
            while True:
                time.sleep(1)
        return batch
