"""Supervised fine-tuning on the dataset's own shards: tokenize -> pack (MixToken, no contamination) -> Paddle.

>>> from datacopilot.train import sft, SFTConfig
>>> result = sft(SFTConfig.from_yaml("sft.yaml"))          # doctest: +SKIP
>>> result["history"][-1]["loss"] < result["history"][0]["loss"]  # doctest: +SKIP
True

Importing this package needs neither paddle nor paddlenlp; :func:`sft` raises MissingDependencyError with the
install line (``pip install 'datacopilot[paddle]'``) when they are missing.
"""

from .config import SFTConfig
from .mix import mix, mix_counts, mix_indices
from .schedule import lr_at


def sft(config, resume: bool = False, echo=print, stop_at: int | None = None) -> dict:
    """Run supervised fine-tuning as configured; see :func:`datacopilot.train.loop.sft`."""
    from .loop import sft as _sft

    return _sft(config, resume=resume, echo=echo, stop_at=stop_at)


__all__ = ["SFTConfig", "sft", "mix", "mix_counts", "mix_indices", "lr_at"]
