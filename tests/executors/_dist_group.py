"""Calls run on the multi-node cluster's driver (tests/_cluster.py) by test_ray_group.py: groupers on Ray."""

import os

import psutil
import pyarrow as pa
from datacopilot.operators.reorder import Sort

from datacopilot.engine import partitions as pt
from datacopilot.errors import OperatorError
from datacopilot.executors import ray_group
from datacopilot.executors.ray import RayOptions, run_ops_on_ray
from tests.executors._ops import JoinByLetter


INLINE_BYTES = pt.INLINE_BYTES


def run(cluster, table: pa.Table, ops: list, on_error: str, batch_size: int, block_rows: int,
        inline_bytes: int = INLINE_BYTES):
    """``(rows, records, quarantine)`` of the operators on the cluster, or the OperatorError raised as
    ``("raised", op, row, row_id, its first line)``; with what the driver held for the last grouper.
    ``inline_bytes``: the least bytes of a hash stage's piece (small: many groups of blocks on small data)."""
    pt.INLINE_BYTES = inline_bytes
    try:
        got = run_ops_on_ray(table, ops, on_error, batch_size=batch_size, options=RayOptions(block_rows=block_rows))
    except OperatorError as e:
        got = ("raised", e.op, e.row, e.row_id, str(e).splitlines()[0])
    return got, dict(ray_group.DRIVER)


def driver_state(cluster, table: pa.Table, ops: list, batch_size: int, block_rows: int) -> dict:
    """What the driver held for the last grouper of the run."""
    pt.INLINE_BYTES = INLINE_BYTES
    run_ops_on_ray(table, ops, "raise", batch_size=batch_size, options=RayOptions(block_rows=block_rows))
    return dict(ray_group.DRIVER)


class OwnArrange(Sort):
    """A grouper with its own arrange: decided on the driver from every signature."""

    name = "test_own_arrange"

    def arrange(self, parts):
        return super().arrange(parts)


class KillNodeOnce(JoinByLetter):
    """The first merge kills its node (the raylet that started its worker, with the objects in that node's store,
    and every process the raylet started), leaving ``marker``; Ray then rebuilds what was lost and runs the merge
    again on a node still alive."""

    name = "test_kill_node_once"

    def merge(self, table, offsets):
        if not os.path.exists(self.p["marker"]):
            with open(self.p["marker"], "w") as f:
                f.write("killed\n")
            me, raylet = psutil.Process(), psutil.Process().parent()
            assert raylet.name() == "raylet", raylet.name()
            for p in raylet.children(recursive=True):  # the node's other processes, then the node itself
                if p.pid != me.pid:
                    p.kill()
            raylet.kill()
            os._exit(1)  # and this worker
        return super().merge(table, offsets)


def nodes_alive(cluster) -> int:
    import ray

    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU"))


def range_pieces(cluster, table: pa.Table, ops: list, block_rows: int) -> dict:
    """A run whose range stage's pieces (rows per block group and range) are kept to be looked at: how many, how
    many Ray kept inline (in the driver's memory: no node holds them) and their sizes, with the run's split groups
    and blocks."""
    import ray

    pt.INLINE_BYTES = INLINE_BYTES
    many, kept = ray_group._many, []

    def recorded(ref_or_refs, n):
        got = many(ref_or_refs, n)
        kept.extend(got)
        return got

    ray_group._many = recorded
    try:
        run_ops_on_ray(table, ops, "raise", batch_size=block_rows, options=RayOptions(block_rows=block_rows))
    finally:
        ray_group._many = many
    where = ray.experimental.get_object_locations(kept)
    return {"pieces": len(kept), "inline": sum(not w["node_ids"] for w in where.values()),
            "smallest": min(w["object_size"] or 0 for w in where.values()),
            "groups": ray_group.DRIVER.get("split_groups"), "blocks": ray_group.DRIVER["blocks"],
            "ranges": ray_group.DRIVER["partitions"]}
