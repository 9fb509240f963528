"""Conversation filters that need a model: language (lingua, offline) and token count (a tokenizer directory).
The model is built in ``setup()``, once per worker; the operators pickle as their parameters.

>>> from datacopilot.operators import create
>>> ds.apply(create("filter_language", languages=["en"]))  # doctest: +SKIP
>>> ds.apply(create("filter_tokens", tokenizer="path/to/tokenizer", max_tokens=2048))  # doctest: +SKIP
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datacopilot.errors import MissingDependencyError

from ._conv import ConversationOp, turns
from .base import Filter, check_choice, check_float, check_int
from .conversation_filters import ROLE_CHOICES
from .registry import register


def _row_texts(t, role: str) -> list[str]:
    texts: list[list[str]] = [[] for _ in range(t.n_rows)]
    values = pc.replace_substring(t.text, "<image>", "").to_pylist()
    for i in np.flatnonzero(t.select(role)):
        texts[t.row[i]].append(values[i])
    return ["\n".join(p).strip() for p in texts]


@register
class FilterLanguage(ConversationOp, Filter):
    """Keep rows whose ``role`` text is in one of ``languages`` (ISO 639-1 codes such as ``"en"``, ``"zh"``)
    with a confidence of at least ``min_confidence``, detected offline by lingua among all the languages it
    knows. Rows with no text of ``role`` are kept. Needs ``pip install 'datacopilot[lang]'``."""

    name = "filter_language"
    requires = (("lingua", "lang"),)

    def __init__(self, languages: list[str] = ("en",), role: str = "all", min_confidence: float = 0.5):
        if isinstance(languages, str):
            languages = [languages]
        try:
            from lingua import IsoCode639_1
        except ImportError as e:
            raise MissingDependencyError("lingua", "lang") from e

        codes = []
        for code in languages:
            try:
                codes.append(getattr(IsoCode639_1, str(code).upper()).name.lower())
            except AttributeError:
                raise self.error(f"`languages`: {code!r} is not an ISO 639-1 language code") from None
        if not codes:
            raise self.error("`languages` must name at least one language, got []")
        super().__init__(languages=codes, role=check_choice(self, "role", role, ROLE_CHOICES),
                         min_confidence=check_float(self, "min_confidence", min_confidence, 0, 1))

    def setup(self) -> None:
        from lingua import LanguageDetectorBuilder

        self._detector = LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().build()

    def keep(self, batch: pa.RecordBatch):
        texts = _row_texts(turns(self, batch), self.p["role"])
        has = [i for i, s in enumerate(texts) if s]
        keep = np.ones(len(texts), dtype=bool)
        reasons = np.full(len(texts), None, dtype=object)
        wanted = set(self.p["languages"])
        values = self._detector.compute_language_confidence_values_in_parallel([texts[i] for i in has])
        for i, conf in zip(has, values):
            best = conf[0] if conf else None
            code = best.language.iso_code_639_1.name.lower() if best else None
            if code not in wanted:
                keep[i], reasons[i] = False, f"language {code or 'unknown'} not in {sorted(wanted)}"
            elif best.value < self.p["min_confidence"]:
                keep[i], reasons[i] = False, f"language confidence below {self.p['min_confidence']}"
        return keep, reasons


def load_tokenizer(path: str):
    """A tokenizer from a local directory: datacopilot.models.tokenizer.load_tokenizer when it exists, else
    PaddleNLP's AutoTokenizer."""
    try:
        from datacopilot.models.tokenizer import load_tokenizer as load
    except ImportError:
        from paddlenlp.transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    return load(path)


@register
class FilterTokens(ConversationOp, Filter):
    """Keep rows whose ``role`` turns hold at most ``max_tokens`` tokens in total with the tokenizer saved in
    the directory ``tokenizer`` (no special or template tokens counted). Needs the ``paddle`` extra."""

    name = "filter_tokens"
    requires = (("paddlenlp", "paddle"),)

    def __init__(self, tokenizer: str = "", max_tokens: int = 2048, role: str = "all"):
        if not isinstance(tokenizer, str) or not os.path.isdir(tokenizer):
            raise self.error(f"`tokenizer` must be a tokenizer directory, got {tokenizer!r}")
        super().__init__(tokenizer=tokenizer, max_tokens=check_int(self, "max_tokens", max_tokens, minimum=1),
                         role=check_choice(self, "role", role, ROLE_CHOICES))

    def setup(self) -> None:
        self._tokenizer = load_tokenizer(self.p["tokenizer"])

    def count(self, texts: list[str]) -> np.ndarray:
        """Tokens per text."""
        if not texts:
            return np.zeros(0, dtype=np.int64)
        self.ensure_setup()
        ids = self._tokenizer(texts, add_special_tokens=False)["input_ids"]
        return np.array([len(x) for x in ids], dtype=np.int64)

    def keep(self, batch: pa.RecordBatch):
        t = turns(self, batch)
        sel = np.flatnonzero(t.select(self.p["role"]))
        values = t.text.to_pylist()
        counts = np.zeros(len(t.row), dtype=np.int64)
        counts[sel] = self.count([values[i] for i in sel])
        total = t.per_row(counts, t.select(self.p["role"]), "sum")
        keep = total <= self.p["max_tokens"]
        reasons = np.where(keep, None, f"more than {self.p['max_tokens']} tokens").astype(object)
        return keep, reasons
