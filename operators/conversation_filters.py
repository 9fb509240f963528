"""Conversation filters: turn count, turn length, empty or duplicate turns, refusal / boilerplate patterns,
n-gram repetition and special-character ratio. Vectorized over the flattened turns: compiled loops over their
bytes and list offsets (:mod:`datacopilot.kernels.text`, :mod:`datacopilot.kernels.ngrams`), regular expressions
(pyarrow compute, polars) where a rule is one. Each dropped row is counted with a reason naming the rule.

``role`` selects the turns a filter looks at: ``"user"`` (questions), ``"assistant"`` (answers) or
``"all"`` (both; system turns are never counted).

>>> from datacopilot.operators import create
>>> ds.apply([create("filter_turns", min_turns=2), create("filter_refusals")])  # doctest: +SKIP
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._conv import ConversationOp, turns
from .base import Filter, check_choice, check_float, check_int, check_order
from .registry import register

ROLE_CHOICES = ("user", "assistant", "all")


def _reasons(keep: np.ndarray, *rules: tuple[np.ndarray, str]) -> np.ndarray:
    """A reason per dropped row: the first rule (a mask of rows that break it) that the row breaks."""
    out = np.empty(len(keep), dtype=object)  # all None
    if keep.all():
        return out
    for broken, why in reversed(rules):
        out[broken] = why
    out[keep] = None
    return out


@register
class FilterTurns(ConversationOp, Filter):
    """Keep rows with between ``min_turns`` and ``max_turns`` user/assistant turns (system turns not counted)."""

    name = "filter_turns"
    row_local = True

    def __init__(self, min_turns: int = 2, max_turns: int | None = None):
        super().__init__(min_turns=check_int(self, "min_turns", min_turns, minimum=0),
                         max_turns=check_int(self, "max_turns", max_turns, minimum=0, optional=True))
        check_order(self, "min_turns", "max_turns")

    def keep(self, batch: pa.RecordBatch):
        t = turns(self, batch)
        n = t.count(t.select("all"))
        few = n < self.p["min_turns"]
        many = n > self.p["max_turns"] if self.p["max_turns"] is not None else np.zeros(len(n), dtype=bool)
        keep = ~few & ~many
        return keep, _reasons(keep, (few, f"fewer than {self.p['min_turns']} turns"),
                              (many, f"more than {self.p['max_turns']} turns"))


@register
class FilterLength(ConversationOp, Filter):
    """Keep rows whose every ``role`` turn has a length in [``min_length``, ``max_length``], counted in
    ``unit`` (``"chars"`` or ``"words"``; words are runs of non-space characters)."""

    name = "filter_length"
    row_local = True

    def __init__(self, role: str = "assistant", unit: str = "chars", min_length: int = 1,
                 max_length: int | None = None):
        super().__init__(role=check_choice(self, "role", role, ROLE_CHOICES),
                         unit=check_choice(self, "unit", unit, ("chars", "words")),
                         min_length=check_int(self, "min_length", min_length, minimum=0),
                         max_length=check_int(self, "max_length", max_length, minimum=0, optional=True))
        check_order(self, "min_length", "max_length")

    def keep(self, batch: pa.RecordBatch):
        from datacopilot.kernels import text as k

        t = turns(self, batch)
        hi = self.p["max_length"]
        # one compiled pass: per row, a selected turn too short (1) or too long (2); words are runs of non-space
        # bytes (RE2's \S+, ASCII whitespace, as pc.count_substring_regex counted); characters counted only where
        # the byte length cannot decide
        code = k.row_length_flags(t.offsets, *t.text_buffers(), t.select(self.p["role"]), self.p["min_length"],
                                  np.iinfo(np.int64).max if hi is None else hi, self.p["unit"] == "words")
        keep = code == 0
        if keep.all():
            return keep, np.empty(len(keep), dtype=object)
        role, unit = self.p["role"], self.p["unit"]
        why = np.array([None, f"{role} turn shorter than {self.p['min_length']} {unit}",
                        f"{role} turn longer than {hi} {unit}"], dtype=object)
        return keep, why[code]


@register
class FilterEmptyTurns(ConversationOp, Filter):
    """Drop rows with an empty (or whitespace-only, ``<image>``-only) turn, and rows that repeat a turn
    (the same role and the same text twice in one conversation)."""

    name = "filter_empty_turns"
    row_local = True

    def __init__(self, empty: bool = True, duplicates: bool = True):
        super().__init__(empty=check_choice(self, "empty", empty, (True, False)),
                         duplicates=check_choice(self, "duplicates", duplicates, (True, False)))

    def keep(self, batch: pa.RecordBatch):
        from datacopilot.kernels import text as k

        t = turns(self, batch)
        sel = t.select("all")
        stripped = pc.utf8_trim_whitespace(pc.replace_substring(t.text, "<image>", ""))
        s_off, s_data = k.string_buffers(stripped)
        blank = np.diff(s_off) == 0
        empty = t.per_row(blank, sel, "any") if self.p["empty"] else np.zeros(t.n_rows, dtype=bool)
        dup = np.zeros(t.n_rows, dtype=bool)
        if self.p["duplicates"] and len(t):
            # rows where two selected turns have the same role code and the same stripped bytes; each is then
            # checked by role name (OTHER codes several roles), as the rule reads
            for r in np.flatnonzero(k.row_repeats(t.offsets, sel, t.code, s_off, s_data)).tolist():
                at = [i for i in range(t.offsets[r], t.offsets[r + 1]) if sel[i]]
                keys = list(zip(t.role[at].tolist(), stripped.take(at).to_pylist()))
                dup[r] = len(set(keys)) < len(keys)
        keep = ~empty & ~dup
        return keep, _reasons(keep, (empty, "empty turn"), (dup, "duplicate turn"))


REFUSALS = (
    r"as an ai( language)? model",
    r"as a language model",
    r"i('| a)m (sorry|afraid),? but i (can(no|')t|cannot|am unable|'m unable)",
    r"i (cannot|can't|am unable to|'m unable to) (help|assist|provide|comply|fulfill)",
    r"i('m| am) not able to (help|assist|provide|see|view)",
    r"(i don't|i do not) have (the ability|access) to",
)


@register
class FilterRefusals(ConversationOp, Filter):
    """Drop rows whose ``role`` turns match a refusal / boilerplate pattern (case-insensitive regular
    expressions; ``patterns`` replaces the built-in list ``REFUSALS``, ``extra_patterns`` adds to it). The
    reason names the first pattern matched."""

    name = "filter_refusals"
    row_local = True

    def __init__(self, role: str = "assistant", patterns: list[str] | None = None,
                 extra_patterns: list[str] | None = None):
        pats = list(REFUSALS if patterns is None else patterns) + list(extra_patterns or [])
        for p in pats:
            try:
                re.compile(p)
            except (re.error, TypeError) as e:
                raise self.error(f"pattern {p!r} is not a regular expression: {e}") from None
        super().__init__(role=check_choice(self, "role", role, ROLE_CHOICES), patterns=patterns,
                         extra_patterns=extra_patterns)
        self._patterns = pats
        self._literals = self._strings = None  # built on first use (not pickled)

    def _prefilter(self):
        """The literals one of which every match of every pattern holds (a LiteralSet), or False when some
        pattern gives none (then every selected turn goes to the regex)."""
        if self._literals is None:
            from datacopilot.kernels.literals import LiteralSet, pattern_strings, required_literals

            found = [required_literals(p) for p in self._patterns]
            self._literals = LiteralSet(sorted(set().union(*found))) if found and all(found) else False
            strings = [pattern_strings(p) for p in self._patterns]
            self._strings = strings if self._literals and all(strings) else None
        return self._literals

    def _reasons_by_strings(self, t, idx: np.ndarray, reasons: np.ndarray) -> bool:
        """Where every pattern matches a few fixed strings only (:func:`pattern_strings`), the candidate turns
        ``idx`` decided in Python: a turn matches a pattern where its ASCII-lowered text holds one of them, as RE2
        reads it case-insensitively. False (nothing set) when a turn holds a character RE2 folds to an ASCII
        letter (a Kelvin sign, a long s): the regex decides then."""
        texts = t.text.take(pa.array(idx, pa.int64())).to_pylist()
        if any("\u017f" in s or "\u212a" in s for s in texts):
            return False
        folded = [s.translate(_ASCII_LOWER) for s in texts]
        for p, strings in zip(self._patterns, self._strings):
            hit = np.array([any(x in f for x in strings) for f in folded], dtype=bool)
            rows = np.zeros(t.n_rows, dtype=bool)
            rows[t.row[idx[hit]]] = True
            reasons[rows & (reasons == None)] = f"refusal or boilerplate: {p}"  # noqa: E711
        return True

    def keep(self, batch: pa.RecordBatch):
        t = turns(self, batch)
        reasons = np.empty(t.n_rows, dtype=object)  # all None
        # the turns holding a literal every match needs (a compiled scan), then one match of all patterns over
        # those; each pattern then runs only on the turns that hit
        sel = t.select(self.p["role"])
        literals = self._prefilter() if self._patterns else False
        if literals:
            sel = literals.holding(*t.text_buffers(), sel)
        idx = np.flatnonzero(sel)
        if not len(idx):
            return np.ones(t.n_rows, dtype=bool), reasons
        if literals and self._strings is not None and self._reasons_by_strings(t, idx, reasons):
            return reasons == None, reasons  # noqa: E711
        if self._patterns:  # the few turns holding a literal: RE2 (polars, and its import, for many turns only)
            idx = idx[self._any_pattern(t.text, sel, idx, rust=not literals)]
        if len(idx):
            texts = t.text.take(idx)
            for p in self._patterns:
                hit = pc.match_substring_regex(texts, p, ignore_case=True).to_numpy(zero_copy_only=False)
                rows = np.zeros(t.n_rows, dtype=bool)
                rows[t.row[idx[hit]]] = True
                reasons[rows & (reasons == None)] = f"refusal or boilerplate: {p}"  # noqa: E711
        keep = reasons == None  # noqa: E711
        return keep, reasons

    def _any_pattern(self, text: pa.Array, sel: np.ndarray, idx: np.ndarray, rust: bool = True) -> np.ndarray:
        """Whether each selected turn (``idx``) matches any pattern, case-insensitively. With ``rust``, polars
        (Rust regex, literal prefilters) where the patterns mean the same there as in RE2 (no ``\\w``, ``\\s``,
        ``\\d``, ``\\b`` or other backslash-letter class, whose Unicode reading differs); pyarrow compute (RE2)
        otherwise."""
        combined = "|".join(f"(?:{p})" for p in self._patterns)
        if rust and not any(_CLASS_ESCAPE.search(p) for p in self._patterns):
            import polars as pl

            try:
                texts = pl.from_arrow(text).filter(pl.Series(sel))
                return texts.str.contains(f"(?i)(?:{combined})").to_numpy()
            except pl.exceptions.ComputeError:  # a pattern Rust's regex does not take: RE2 below
                pass
        return pc.match_substring_regex(text.take(idx), combined, ignore_case=True).to_numpy(zero_copy_only=False)


_CLASS_ESCAPE = re.compile(r"\\[A-Za-z]")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def repetition_ratio(tokens: list, n: int) -> float:
    """Share of the ``n``-grams of ``tokens`` that repeat an earlier one (0 when there are none)."""
    total = len(tokens) - n + 1
    if total <= 1:
        return 0.0
    grams = {tuple(tokens[i:i + n]) for i in range(total)} if not isinstance(tokens, str) else \
        {tokens[i:i + n] for i in range(total)}
    return 1.0 - len(grams) / total


@register
class FilterRepetition(ConversationOp, Filter):
    """Drop rows whose ``role`` text repeats itself: the share of repeated character ``char_n``-grams above
    ``max_char_ratio``, or of repeated word ``word_n``-grams above ``max_word_ratio`` (either may be None).
    The text of a row is its ``role`` turns joined by line breaks."""

    name = "filter_repetition"
    row_local = True

    def __init__(self, role: str = "assistant", char_n: int = 10, max_char_ratio: float | None = 0.5,
                 word_n: int = 3, max_word_ratio: float | None = 0.5):
        super().__init__(role=check_choice(self, "role", role, ROLE_CHOICES),
                         char_n=check_int(self, "char_n", char_n, minimum=1),
                         max_char_ratio=check_float(self, "max_char_ratio", max_char_ratio, 0, 1, optional=True),
                         word_n=check_int(self, "word_n", word_n, minimum=1),
                         max_word_ratio=check_float(self, "max_word_ratio", max_word_ratio, 0, 1, optional=True))
        if max_char_ratio is None and max_word_ratio is None:
            raise self.error("set `max_char_ratio` or `max_word_ratio` (both are None)")

    def keep(self, batch: pa.RecordBatch):
        from datacopilot.kernels.ngrams import char_tokens, ngram_repetition, word_tokens

        t = turns(self, batch)
        sel = np.flatnonzero(t.select(self.p["role"]))
        texts, rows = t.text.take(pa.array(sel, pa.int64())), t.row[sel]  # a row's turns joined by line breaks
        keep = np.ones(t.n_rows, dtype=bool)
        reasons = np.full(t.n_rows, None, dtype=object)
        mc, mw = self.p["max_char_ratio"], self.p["max_word_ratio"]
        if mw is not None:
            bad = ngram_repetition(*word_tokens(texts, rows, t.n_rows), self.p["word_n"]) > mw
            keep[bad], reasons[bad] = False, f"word {self.p['word_n']}-gram repetition above {mw}"
        if mc is not None:  # the character reason wins where both hold
            bad = ngram_repetition(*char_tokens(texts, rows, t.n_rows), self.p["char_n"]) > mc
            keep[bad], reasons[bad] = False, f"character {self.p['char_n']}-gram repetition above {mc}"
        return keep, reasons


# letters, digits, whitespace and common punctuation are not special
_SPECIAL = r"[^\p{L}\p{N}\p{Z}\s.,!?;:'\"()\-]"


# the ASCII characters _SPECIAL matches, as RE2 reads it (its \s is [\t\n\f\r ]: a vertical tab is special)
_SPECIAL_ASCII = np.array(pc.count_substring_regex(pa.array([chr(b) for b in range(128)]), _SPECIAL).to_pylist()
                          + [0] * 128, dtype=np.uint8)


@register
class FilterSpecialChars(ConversationOp, Filter):
    """Drop rows whose ``role`` text has more than ``max_ratio`` special characters (anything but letters,
    digits, whitespace and ``.,!?;:'"()-``; ``<image>`` placeholders are not counted)."""

    name = "filter_special_chars"
    row_local = True

    def __init__(self, role: str = "all", max_ratio: float = 0.25):
        super().__init__(role=check_choice(self, "role", role, ROLE_CHOICES),
                         max_ratio=check_float(self, "max_ratio", max_ratio, 0, 1))

    def keep(self, batch: pa.RecordBatch):
        from datacopilot.kernels import text as k

        t = turns(self, batch)
        off, data = t.text_buffers()
        # ASCII turns by a byte table (each removed <image> takes 2 special characters and 7 characters with it);
        # the others through the regex, as before
        special = k.ascii_class_counts(off, data, _SPECIAL_ASCII)
        images = k.count_literal(off, data, b"<image>")
        length = np.diff(off) - 7 * images
        special = special - 2 * images
        other = np.flatnonzero(special < 0)
        if len(other):
            text = pc.replace_substring(t.text.take(other), "<image>", "")
            special[other] = pc.count_substring_regex(text, _SPECIAL).to_numpy(zero_copy_only=False)
            length[other] = pc.utf8_length(text).to_numpy(zero_copy_only=False)
        sel = t.select(self.p["role"])
        ratio = t.per_row(special, sel, "sum") / np.maximum(t.per_row(length, sel, "sum"), 1)
        keep = ratio <= self.p["max_ratio"]
        return keep, _reasons(keep, (~keep, f"special characters above {self.p['max_ratio']}"))
