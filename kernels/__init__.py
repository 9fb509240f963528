"""Array-in, array-out hot paths: packing of token lengths, masks and positions for packed sequences.

Example:
    >>> from datacopilot.kernels import pack, block_causal_mask
    >>> plan = pack([5, 3, 2, 4], max_length=7)
    >>> block_causal_mask([plan.seq_lens(i) for i in range(plan.n_packs)], 7).shape
    (2, 1, 7, 7)
"""

from .masks import block_causal_mask, cu_seqlens, dense_from_flashmask, flashmask_row_indices, position_ids
from .packing import OVERLONG, STRATEGIES, PackPlan, pack
from .stream import PackStream, pack_stream

__all__ = [
    "OVERLONG", "STRATEGIES", "PackPlan", "PackStream", "block_causal_mask", "cu_seqlens", "dense_from_flashmask",
    "flashmask_row_indices", "pack", "pack_stream", "position_ids",
]
