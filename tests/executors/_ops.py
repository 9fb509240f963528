"""Operators used by the executor tests (a module of their own, so Ray workers import them by name)."""

import os

import pyarrow as pa
from datacopilot.operators import Augmenter, Mapper


class FailOn(Mapper):
    """Raises for rows whose id is in ``bad`` (the runner then fails only those rows)."""

    name, reads, writes = "test_fail_on", ("id",), ("id",)

    def __init__(self, bad: tuple = ()):
        super().__init__(bad=tuple(bad))

    def map_batch(self, batch):
        hit = set(batch.column("id").to_pylist()) & set(self.p["bad"])
        if hit:
            raise ValueError(f"bad row {min(hit)}")
        return batch


class DieOnce(Mapper):
    """Kills its worker process (os._exit) the first time it runs, leaving ``marker``; Ray then retries."""

    name, reads, writes = "test_die_once", ("id",), ("id",)

    def __init__(self, marker: str = ""):
        super().__init__(marker=marker)

    def map_batch(self, batch):
        if not os.path.exists(self.p["marker"]):
            with open(self.p["marker"], "w") as f:
                f.write("died\n")
            os._exit(1)
        return batch


class CountSetup(Mapper):
    """Has state: appends a line to ``log`` each time ``setup()`` runs; adds a ``tag`` column."""

    name, reads, writes = "test_count_setup", ("id",), ("tag",)

    def __init__(self, log: str = ""):
        super().__init__(log=log)

    def setup(self):
        with open(self.p["log"], "a") as f:
            f.write(f"{os.getpid()}\n")
        self.tag = "ready"

    def map_batch(self, batch):
        return pa.Table.from_batches([batch]).append_column("tag", pa.array([self.tag] * batch.num_rows))


class Twice(Augmenter):
    """Every row twice, the copy right after it (more rows out than in)."""

    name, reads = "test_twice", ("id",)

    def augment(self, batch):
        t = pa.Table.from_batches([batch])
        return pa.concat_tables([t, t]).take([i for k in range(t.num_rows) for i in (k, k + t.num_rows)])
