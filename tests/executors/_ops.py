"""Operators used by the executor tests (a module of their own, so Ray workers import them by name)."""

import os

import numpy as np
import pyarrow as pa
from datacopilot.operators import Augmenter, Grouper, Mapper, Outcome
from datacopilot.operators.dedup import NearTextDedup


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


class JoinByLetter(Grouper):
    """Rows whose ids start with the same letter become one row (ids joined by ``+``), at most ``cap`` rows a
    group; ids without a letter stay alone. A group holding an id in ``bad`` fails; with ``marker`` the first
    merge kills its worker (os._exit, Ray retries the task). Counts the groups it merged."""

    name, reads, writes = "test_join_by_letter", ("id",), ("id",)

    def __init__(self, cap: int | None = None, bad: tuple = (), marker: str = ""):
        super().__init__(cap=cap, bad=tuple(bad), marker=marker)

    @property
    def capacity(self):
        return self.p["cap"]

    def signatures(self, batch):
        ids = batch.column("id").to_pylist()
        return np.array([[ord(i[0]) if i[0].isalpha() else 0, 1] for i in ids], np.uint64)

    def merge(self, table, offsets):
        if self.p["marker"] and not os.path.exists(self.p["marker"]):
            with open(self.p["marker"], "w") as f:
                f.write("died\n")
            os._exit(1)
        ids = table.column("id").to_pylist()
        groups = [ids[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
        hit = [i for g in groups for i in g if i in self.p["bad"]]
        if hit:
            raise ValueError(f"cannot merge {hit[0]}")
        first = table.take([int(a) for a in offsets[:-1]])
        out = first.set_column(first.schema.get_field_index("id"), "id", pa.array(["+".join(g) for g in groups]))
        return Outcome(out, {"merged groups": len(groups)})


class NearTextWithSetup(NearTextDedup):
    """``dedup_near_text`` with state (a ``setup()``): it runs in an actor pool, its keys scattered by a task per
    block after it (the path of a deduplicator that is not folded into the stage's task)."""

    name = "test_dedup_near_text_setup"

    def setup(self):
        self.ready = True
