"""The executor interface: an executor runs a :class:`datacopilot.pipeline.Pipeline` (a plan) and returns its
rows, one :class:`OpRecord` per operator and the quarantined rows.

What an executor may use of a plan (and nothing else):

* ``plan.ops``: the operators, in order (``datacopilot.operators.Operator`` instances, picklable);
* ``plan.on_error``: ``"raise"``, ``"skip"`` or ``"quarantine"``;
* ``plan.batch_size``: rows per record batch;
* ``plan.source``: a :class:`datacopilot.source.Source` with ``units()`` (names of the input units: one per
  file, or ``["<memory>"]`` for a dataset), ``batches(unit)`` (an iterator of ``pa.Table`` of at most
  ``plan.batch_size`` rows, validated against the schema), ``paths`` (the files, or None), ``format``,
  ``schema`` (a Schema or None) and ``root``.

Accounting must equal ``ds.apply(plan.ops)`` on the same rows: same output rows in the same order and the same
``OpRecord.op / rows_in / rows_out / dropped / failed`` per operator (seconds aside).

>>> from datacopilot.executors import get_executor
>>> get_executor("local", num_workers=2).name
'local'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import pyarrow as pa

from datacopilot.history import OpRecord

if TYPE_CHECKING:  # pragma: no cover
    from datacopilot.pipeline import Pipeline

EXECUTORS = ("local", "ray")


@dataclass
class ExecResult:
    """What an executor returns: the output rows, one record per operator, the failed rows (``_op``, ``_error``
    columns added) under ``on_error="quarantine"``."""

    table: pa.Table
    records: list[OpRecord] = field(default_factory=list)
    quarantine: pa.Table | None = None


class Executor:
    """Runs a plan. Subclasses implement :meth:`run`; :meth:`write` defaults to ``run`` followed by writing the
    result as shards (no per-input resume); the local executor streams instead."""

    name: ClassVar[str] = ""

    def run(self, plan: Pipeline) -> ExecResult:
        """All output rows of ``plan`` in memory, with the accounting."""
        raise NotImplementedError

    def write(self, plan: Pipeline, out_dir: str, format: str = "arrow", resume: bool = False,
              max_rows_per_shard: int | None = 100_000, image_paths: str = "keep") -> dict:
        """Write the output of ``plan`` to shards under ``out_dir`` with ``manifest.json`` and ``report.json``;
        returns the report (a dict). ``image_paths`` as in ``MMDataset.write_shards``."""
        from .output import write_result

        return write_result(plan, self, out_dir, format=format, resume=resume,
                            max_rows_per_shard=max_rows_per_shard, image_paths=image_paths)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
