"""The engine: the operator protocol and its kinds, the step and its result types, the one runtime and the barrier
protocol. Executors (:mod:`datacopilot.executors`) only schedule what is defined here.

Where things go:

* a new operator: a class of one of the kinds in :mod:`.kinds`, with one hook, in ``operators/`` (registered by
  name in :mod:`datacopilot.operators.registry`); nothing here changes;
* a new kind: its base in :mod:`.kinds` turns its hook into :meth:`~.operator.Operator.step`; a barrier kind also
  gets its decide/apply in :mod:`.barriers`;
* a new executor: it calls :func:`.runtime.run_chain` over batches and the :mod:`.barriers` protocol, and merges
  the :class:`.runtime.Accounting` of its workers in input order;
* a new format: a module in :mod:`datacopilot.io` with its reader, batch reader and writer.
"""

from .kinds import (BARRIER_KINDS, Augmenter, Deduplicator, Evaluator, Filter, Grouper, Mapper, Synthesizer,
                    is_barrier)
from .operator import KINDS, Operator, check_choice, check_float, check_int, check_order
from .runtime import POLICIES, Accounting, OpAcc, run_chain
from .step import Failure, Outcome, StepOut, as_batch, quarantine_rows, to_table

__all__ = ["Accounting", "Augmenter", "BARRIER_KINDS", "Deduplicator", "Evaluator", "Failure", "Filter", "Grouper",
           "KINDS", "Mapper", "OpAcc", "Operator", "Outcome", "POLICIES", "StepOut", "Synthesizer", "as_batch",
           "check_choice", "check_float", "check_int", "check_order", "is_barrier", "quarantine_rows", "run_chain",
           "to_table"]
