"""The names pipelines imported from here, now in the modules that own them: :class:`Source` in
:mod:`datacopilot.source`, the one shard writer :class:`ShardSink` in :mod:`datacopilot.io.sink`, and what every
executor's write shares (the plan's fingerprint, the report, the write of an in-memory result) in
:mod:`datacopilot.executors.output`.
"""

from __future__ import annotations

from datacopilot.executors.output import make_report, plan_fingerprint, records_from, with_invalid, write_result
from datacopilot.io.sink import REPORT, ShardSink, read_manifest
from datacopilot.source import MEMORY, Source

__all__ = ["MEMORY", "REPORT", "ShardSink", "Source", "make_report", "plan_fingerprint", "read_manifest",
           "records_from", "with_invalid", "write_result"]
