"""Operators: Mapper, Filter, Augmenter, Synthesizer, Evaluator, Deduplicator and Grouper over Arrow record batches,
a registry by name, and the built-in operators (imported lazily by the registry).

>>> import datacopilot as dc
>>> from datacopilot.operators import create
>>> ds = dc.MMDataset.from_rows([{"conversations": [{"from": "human", "value": "hi  there"},
...                                                 {"from": "gpt", "value": "hello"}]}], schema="MM")
>>> ds.apply(create("clean_whitespace"))[0]["conversations"][0]["value"]
'hi there'
"""

from .base import (Augmenter, Deduplicator, Evaluator, Filter, Grouper, Mapper, Operator, Outcome, Synthesizer,
                   check_choice, check_float, check_int, check_order)
from .registry import create, get_operator, list_operators, register, unregister

__all__ = ["Operator", "Mapper", "Filter", "Augmenter", "Synthesizer", "Evaluator", "Deduplicator", "Grouper",
           "Outcome",
           "check_int", "check_float", "check_choice", "check_order",
           "register", "unregister", "get_operator", "create", "list_operators"]
