"""Row accounting: what each operation did to the rows it was given."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class OpRecord:
    """One operation's accounting: every row in is kept, dropped (with a reason) or failed (with its error).

    ``rows_in == rows_out + sum(dropped.values()) + failed`` holds for filters and row maps; a map that
    splits or merges rows reports ``rows_out`` as it is. ``counts`` holds an operator's own counters about the
    rows it kept (a model operator's ``generated`` and ``rejected: <reason>``).
    """

    op: str
    rows_in: int
    rows_out: int
    dropped: dict = field(default_factory=dict)
    failed: int = 0
    seconds: float = 0.0
    counts: dict = field(default_factory=dict)

    @property
    def n_dropped(self) -> int:
        return int(sum(self.dropped.values()))

    def as_dict(self) -> dict:
        return {"op": self.op, "rows_in": self.rows_in, "rows_out": self.rows_out, "dropped": dict(self.dropped),
                "failed": self.failed, "seconds": round(self.seconds, 4), "counts": dict(self.counts)}

    def __str__(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in self.dropped.items())
        drop = f" dropped {self.n_dropped}" + (f" ({reasons})" if reasons else "") if self.dropped else ""
        fail = f" failed {self.failed}" if self.failed else ""
        counts = " (" + ", ".join(f"{k}: {v}" for k, v in self.counts.items()) + ")" if self.counts else ""
        return f"{self.op}: in {self.rows_in} -> out {self.rows_out}{drop}{fail}{counts} [{self.seconds:.2f}s]"


def format_history(records) -> str:
    """A table of records, one line each."""
    return "\n".join(str(r) for r in records) if records else "(no operations)"
