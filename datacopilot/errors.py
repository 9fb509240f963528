"""The one exception hierarchy of datacopilot.

Every error the library raises on purpose derives from :class:`DataCopilotError`, so callers can catch
all of them with one clause. Messages are lowercase, name the parameter, field, file or row, and show
what was given.
"""

from __future__ import annotations


class DataCopilotError(Exception):
    """Base class of every datacopilot error."""


class SchemaError(DataCopilotError):
    """A row or a table does not fit its schema, or two schemas do not fit each other."""


class ValidationError(SchemaError):
    """One or more rows failed validation; ``problems`` holds every message, not just the first."""

    def __init__(self, problems: list[str], limit: int = 20):
        self.problems, self.limit = list(problems), limit
        shown = "\n".join(self.problems[:limit])
        more = len(self.problems) - limit
        tail = f"\n... and {more} more" if more > 0 else ""
        super().__init__(f"{len(self.problems)} invalid row(s):\n{shown}{tail}")

    def __reduce__(self):  # pickled (a Ray or process worker raising it) with its problems, not its message
        return type(self), (self.problems, self.limit)


class InputError(DataCopilotError):
    """Malformed input: a broken JSON line, a truncated file, a duplicate key, a missing image."""


class PlanChangedError(InputError):
    """A run cannot be resumed: the plan differs from the one its output was started with; ``changes`` names each
    difference (``"operator 2 filter_length: max_chars 100 -> 200"``, ``"source a.jsonl: size 10 -> 12"``)."""

    def __init__(self, where: str, changes: list[str]):
        self.where, self.changes = where, list(changes)
        super().__init__(f"{where}: cannot resume: it was written by another plan ({'; '.join(self.changes)}); "
                         "resume with the plan it was started with, or write again without resume=True")


class ConversionError(SchemaError):
    """A row cannot be converted between two schemas without losing information."""


class OperatorError(DataCopilotError):
    """A user function or operator failed on a row; names the operation and the row."""

    def __init__(self, op: str, row: int | None, message: str, tb: str | None = None, row_id=None):
        self.op, self.row, self.tb, self.row_id = op, row, tb, row_id
        where = f" at row {row}" if row is not None else ""
        where += f" (id {row_id!r})" if row_id is not None else ""
        text = f"{op}{where}: {message}"
        if tb:
            text += f"\n--- worker traceback ---\n{tb.rstrip()}"
        super().__init__(text)


class HookError(OperatorError):
    """An operator's hook broke its kind's contract (rows, booleans or keys of the wrong number): a bug in the
    operator, raised at once for the whole batch, never retried row by row as a row's failure would be."""


class ModelError(DataCopilotError):
    """A model could not be loaded or called."""


class JobError(DataCopilotError):
    """A Ray job could not be submitted, found, followed or stopped; names the job server's address and the job."""


class MissingDependencyError(DataCopilotError, ImportError):
    """An optional dependency is not installed; the message carries the install line."""

    def __init__(self, package: str, extra: str):
        super().__init__(f"{package} is not installed: pip install 'datacopilot[{extra}]'")
