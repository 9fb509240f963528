"""Array-in, array-out hot paths: packing of token lengths, masks and positions for packed sequences.

The package is lazy (PEP 562): ``import datacopilot.kernels.hashing`` loads that module alone, and a name below
(``pack``, ``block_causal_mask``, ...) imports its module, and numba where that module needs it, on first access.

Example:
    >>> from datacopilot.kernels import pack, block_causal_mask
    >>> plan = pack([5, 3, 2, 4], max_length=7)
    >>> block_causal_mask([plan.seq_lens(i) for i in range(plan.n_packs)], 7).shape
    (2, 1, 7, 7)
"""

import importlib as _importlib
import typing as _typing

# public name -> the module (in this package) that defines it
_EXPORTS = {
    "block_causal_mask": ".masks", "cu_seqlens": ".masks", "dense_from_flashmask": ".masks",
    "flashmask_row_indices": ".masks", "position_ids": ".masks", "dense_from_cu_seqlens": ".masks",
    "VarlenPlan": ".varlen", "bucket_lengths": ".varlen", "varlen_plan": ".varlen",
    "OVERLONG": ".packing", "STRATEGIES": ".packing", "PackPlan": ".packing", "pack": ".packing",
    "PackStream": ".stream", "pack_stream": ".stream",
}

__all__ = [
    "OVERLONG", "STRATEGIES", "PackPlan", "PackStream", "VarlenPlan", "block_causal_mask", "bucket_lengths",
    "cu_seqlens", "dense_from_cu_seqlens", "dense_from_flashmask", "flashmask_row_indices", "pack", "pack_stream",
    "position_ids", "varlen_plan",
]

if _typing.TYPE_CHECKING:  # for type checkers and IDEs; at run time the names come from __getattr__
    from .masks import (block_causal_mask, cu_seqlens, dense_from_cu_seqlens, dense_from_flashmask,
                        flashmask_row_indices, position_ids)
    from .packing import OVERLONG, STRATEGIES, PackPlan, pack
    from .stream import PackStream, pack_stream
    from .varlen import VarlenPlan, bucket_lengths, varlen_plan


def __getattr__(name: str) -> _typing.Any:
    """Import a public name from its module on first access and cache it on the package."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({n for n in globals() if not n.startswith("_")} | set(__all__))
