"""The Ray executor: plans run on Ray Data by :mod:`.ray` (tasks over Arrow blocks, the engine's runtime in each)
and written by :mod:`.ray_write` (shards written in Ray tasks)."""

from __future__ import annotations

from typing import Any

from datacopilot.errors import DataCopilotError

from .base import ExecResult, Executor
from .ray import RayOptions, require_ray, run_ops_on_ray
from .ray_write import write_on_ray


class RayExecutor(Executor):
    """Runs a pipeline on Ray Data (see the module docstring); ``options`` are :class:`RayOptions` fields.

    >>> from datacopilot.executors import get_executor
    >>> get_executor("ray", concurrency=2).name  # doctest: +SKIP
    'ray'
    """

    name = "ray"

    def __init__(self, **options: Any):
        require_ray()
        try:
            self.options = RayOptions(**options)
        except TypeError as e:
            raise DataCopilotError(f"ray executor: {e}; options are address, num_cpus, num_gpus, concurrency, "
                                   f"resources, block_rows, split_bytes") from None

    def run(self, plan) -> ExecResult:
        src = plan.source
        data = src.dataset.to_arrow() if src.dataset is not None else src
        table, records, quarantine = run_ops_on_ray(data, plan.prepared_ops(), plan.on_error, root=src.root,
                                                    batch_size=plan.batch_size, options=self.options)
        if not table.num_columns:
            table = plan.empty_output()
        return ExecResult(table, records, quarantine)

    def write(self, plan, out_dir: str, format: str = "arrow", resume: bool = False,
              max_rows_per_shard: int | None = 100_000, image_paths: str = "keep") -> dict:
        """Like :meth:`Executor.write`, with the shards written by Ray tasks in parallel (the driver gathers only
        the accounting); ``resume`` skips only a finished run."""
        if out_dir.startswith("memory://"):  # workers cannot see the driver's in-memory filesystem
            return super().write(plan, out_dir, format=format, resume=resume, max_rows_per_shard=max_rows_per_shard,
                                 image_paths=image_paths)
        return write_on_ray(self, plan, out_dir, format, resume, max_rows_per_shard, image_paths)

    def __repr__(self) -> str:
        return f"RayExecutor({self.options})"
