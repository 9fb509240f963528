"""The operator base classes, defined by the engine (:mod:`datacopilot.engine.kinds`): one hook per kind over an
Arrow record batch; the runtime owns everything else. Concrete operators in this folder subclass them.

A concrete operator declares its registry ``name``, its ``kind``, the columns it ``reads`` and ``writes``, the
optional packages it ``requires``, validates its parameters in ``__init__`` and implements its kind's hook (see
:mod:`datacopilot.engine.kinds` for the table of hooks).
"""

from datacopilot.engine.kinds import (Augmenter, Deduplicator, Evaluator, Filter, Grouper, Mapper,  # noqa: F401
                                      Synthesizer)
from datacopilot.engine.operator import (KINDS, Operator, check_choice, check_float, check_int,  # noqa: F401
                                         check_order)
from datacopilot.engine.step import Outcome  # noqa: F401
