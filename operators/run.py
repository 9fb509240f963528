"""``evaluate(ds, op)``: an Evaluator's statistics over a dataset (its rows are not changed), the same as
``ds.evaluate(op)``. Operators that change rows run with ``ds.apply(ops)``, the lazy plan collected
(:meth:`datacopilot.MMDataset.apply`).

>>> from datacopilot.operators import create
>>> evaluate(ds, create("dataset_stats"))["rows"]  # doctest: +SKIP
"""

from __future__ import annotations

from .base import Evaluator


def evaluate(ds, op: Evaluator, num_workers: int = 1, mode: str = "thread", batch_size: int | None = None) -> dict:
    """Run an Evaluator over every batch of ``ds`` and merge the parts into one dict of statistics
    (:meth:`datacopilot.MMDataset.evaluate`)."""
    return ds.evaluate(op, num_workers=num_workers, mode=mode, batch_size=batch_size)
