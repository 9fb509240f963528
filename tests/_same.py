"""One helper for "same output": two runs (MMDatasets, or ``(table, records, quarantine)``) give the same rows in
the same order, the same per-operator accounting (timings aside) and the same quarantine; on a difference it
fails with a left/right diff of what differs."""

from __future__ import annotations

import difflib

import pyarrow as pa


def _parts(run):
    if isinstance(run, tuple):
        table, records, quarantine = run
    else:
        table = run.to_arrow()
        records = [r for r in run.history() if not r.op.startswith("load")]
        quarantine = run.quarantine.to_arrow() if run.quarantine is not None else None
    if isinstance(quarantine, pa.Table) and not quarantine.num_rows:
        quarantine = None
    return table, records, quarantine


def _diff(what: str, a: list, b: list, limit: int = 40) -> str:
    lines = difflib.unified_diff([repr(x) for x in a], [repr(x) for x in b], "left", "right", lineterm="", n=1)
    return f"{what} differ:\n" + "\n".join(list(lines)[:limit])


def assert_same_run(left, right, last: int | None = None) -> None:
    """``left`` and ``right`` are the same run's output; ``last``: compare only the last ``last`` records."""
    ta, ra, qa = _parts(left)
    tb, rb, qb = _parts(right)
    acct = lambda recs: [(r.op, r.rows_in, r.rows_out, dict(r.dropped), r.failed) for r in recs]  # noqa: E731
    ra, rb = acct(ra), acct(rb)
    if last is not None:
        ra, rb = ra[-last:], rb[-last:]
    assert ra == rb, _diff("per-operator records (op, in, out, dropped, failed)", ra, rb)
    assert ta.schema.names == tb.schema.names, f"columns differ: {ta.schema.names} vs {tb.schema.names}"
    if not ta.equals(tb):
        assert False, _diff(f"rows ({ta.num_rows} vs {tb.num_rows})", ta.to_pylist(), tb.to_pylist())
    la = qa.to_pylist() if qa is not None else []
    lb = qb.to_pylist() if qb is not None else []
    assert la == lb, _diff("quarantined rows", la, lb)
