"""Calls run on the multi-node cluster's driver (tests/_cluster.py) by test_ray_group.py: groupers on Ray."""

import pyarrow as pa

from datacopilot.operators.reorder import Sort

from datacopilot.errors import OperatorError
from datacopilot.executors import ray_group
from datacopilot.executors.ray import RayOptions, run_ops_on_ray


def run(cluster, table: pa.Table, ops: list, on_error: str, batch_size: int, block_rows: int):
    """``(rows, records, quarantine)`` of the operators on the cluster, or the OperatorError raised as
    ``("raised", op, row, row_id, its first line)``; with what the driver held for the last grouper."""
    try:
        got = run_ops_on_ray(table, ops, on_error, batch_size=batch_size, options=RayOptions(block_rows=block_rows))
    except OperatorError as e:
        got = ("raised", e.op, e.row, e.row_id, str(e).splitlines()[0])
    return got, dict(ray_group.DRIVER)


def driver_state(cluster, table: pa.Table, ops: list, batch_size: int, block_rows: int) -> dict:
    """What the driver held for the last grouper of the run."""
    run_ops_on_ray(table, ops, "raise", batch_size=batch_size, options=RayOptions(block_rows=block_rows))
    return dict(ray_group.DRIVER)


class OwnArrange(Sort):
    """A grouper with its own arrange: decided on the driver from every signature."""

    name = "test_own_arrange"

    def arrange(self, parts):
        return super().arrange(parts)
