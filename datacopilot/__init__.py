"""datacopilot: a Schema-typed, Arrow-backed multimodal data engine for vision-language SFT data.

>>> import datacopilot as dc
>>> ds = dc.load("train.jsonl", schema="MM")  # doctest: +SKIP
"""

from . import errors
from .dataset import MMDataset
from .io import load, verify_shards, write, write_shards
from .pipeline import pipeline
from datacopilot.schemas import CAPTION, MESSAGES, MIX, MM, PAIRS, Schema

__version__ = "0.1.0"

__all__ = ["MMDataset", "Schema", "load", "write", "write_shards", "verify_shards", "errors", "pipeline",
           "MM", "MIX", "PAIRS", "MESSAGES", "CAPTION"]
