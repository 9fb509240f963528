"""Dataset statistics as an Evaluator: turns, question and answer lengths, images per row, image sizes (when the
images are readable), token counts (with a tokenizer) and languages (when lingua is installed).

Each batch gives its per-row (or per-turn, per-image) values; ``merge`` summarizes them: count, mean, std, min,
quantiles, max and a histogram per metric, all JSON-serializable. :func:`datacopilot.operators.report.describe`
turns the summary into PNG histograms and an HTML page.

>>> from datacopilot.operators import create
>>> from datacopilot.operators.run import evaluate
>>> stats = evaluate(ds, create("dataset_stats"))  # doctest: +SKIP
>>> stats["metrics"]["turns"]["mean"]  # doctest: +SKIP
2.0
"""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datacopilot.schemas import read_image_bytes

from datacopilot.errors import InputError

from ._conv import ConversationOp, turn_counts, turns
from .base import Evaluator, check_int
from .image_filters import row_images
from .registry import register

METRICS = {
    "turns": "turns per row",
    "question_chars": "characters per user turn",
    "answer_chars": "characters per assistant turn",
    "images_per_row": "images per row",
    "image_width": "image width (pixels)",
    "image_height": "image height (pixels)",
    "tokens": "tokens per row",
}
QUANTILES = (0.5, 0.9, 0.99)


def summarize(values: np.ndarray, bins: int = 30) -> dict:
    """count, mean, std, min, p50, p90, p99, max and a histogram ``{edges, counts}`` of ``values``.

    >>> summarize(np.array([1, 2, 3, 4]))["mean"]
    2.5
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"count": 0}
    out = {"count": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
           "min": float(values.min())}
    for q, v in zip(QUANTILES, np.quantile(values, QUANTILES)):
        out[f"p{round(q * 100)}"] = float(v)
    out["max"] = float(values.max())
    lo, hi = out["min"], out["max"]
    if bool(np.all(values == np.round(values))):  # integers: bins at least one unit wide, the max in the last
        n_bins, hi = min(bins, int(hi - lo) + 1), hi + 1
    else:
        n_bins, hi = bins, (hi if hi > lo else lo + 1)
    counts, edges = np.histogram(values, bins=n_bins, range=(lo, hi))
    out["histogram"] = {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}
    return out


@register
class DatasetStats(ConversationOp, Evaluator):
    """Statistics of a dataset: turns, question/answer lengths, images, image sizes, tokens, languages."""

    name = "dataset_stats"
    uses_root = True

    def __init__(self, images: bool = True, tokenizer: str | None = None, languages: bool = True,
                 bins: int = 30, root: str | None = None):
        if not isinstance(images, bool) or not isinstance(languages, bool):
            raise self.error(f"`images` and `languages` must be booleans, got {images!r} and {languages!r}")
        if tokenizer is not None and not isinstance(tokenizer, str) and not callable(tokenizer):
            raise self.error(f"`tokenizer` must be a tokenizer directory or a tokenizer, got {tokenizer!r}")
        if root is not None and not isinstance(root, str):
            raise self.error(f"`root` must be a directory or URL prefix, got {root!r}")
        super().__init__(images=images, tokenizer=tokenizer, languages=languages,
                         bins=check_int(self, "bins", bins, 1, 1000), root=root)

    def setup(self) -> None:
        tok = self.p["tokenizer"]
        if isinstance(tok, str):
            from .model_filters import load_tokenizer

            tok = load_tokenizer(tok)
        self._tokenizer = tok
        self._detector = None
        if self.p["languages"]:
            try:
                from lingua import LanguageDetectorBuilder
            except ImportError:
                return
            self._detector = LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().build()

    # -- per batch ------------------------------------------------------------------------------------
    def evaluate(self, batch: pa.RecordBatch) -> dict:
        self.ensure_setup()
        t = turns(self, batch)
        lengths = pc.utf8_length(t.text).to_numpy(zero_copy_only=False).astype(np.int64)
        values = {
            "turns": turn_counts(self, batch),
            "question_chars": lengths[t.select("user")],
            "answer_chars": lengths[t.select("assistant")],
        }
        part = {"rows": batch.num_rows, "values": values, "languages": Counter(), "images_unreadable": 0}
        texts = self._row_texts(t)
        if self._tokenizer is not None:
            values["tokens"] = self._count_tokens(texts)
        if self._detector is not None:
            part["languages"] = self._languages(texts)
        names = batch.schema.names
        if "image" in names or "images" in names:
            rows = row_images(batch)
            values["images_per_row"] = np.array([len(r) for r in rows], np.int64)
            if self.p["images"]:
                sizes, bad = self._sizes([img for r in rows for img in r])
                values["image_width"], values["image_height"] = sizes[:, 0], sizes[:, 1]
                part["images_unreadable"] = bad
        return part

    @staticmethod
    def _row_texts(t) -> list[str]:
        texts: list[list[str]] = [[] for _ in range(t.n_rows)]
        for r, s in zip(t.row, t.text.to_pylist()):
            texts[r].append(s)
        return ["\n".join(p) for p in texts]

    def _count_tokens(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0, np.int64)
        ids = self._tokenizer(texts, add_special_tokens=False)["input_ids"]
        return np.array([len(x) for x in ids], np.int64)

    def _languages(self, texts: list[str]) -> Counter:
        out = Counter()
        for conf in self._detector.compute_language_confidence_values_in_parallel(texts):
            best = conf[0] if conf else None
            out[best.language.iso_code_639_1.name.lower() if best else "unknown"] += 1
        return out

    def _sizes(self, images: list) -> tuple[np.ndarray, int]:
        from PIL import Image

        sizes, bad = [], 0
        for value in images:
            try:
                with Image.open(io.BytesIO(read_image_bytes(value, self.p["root"]))) as img:
                    sizes.append(img.size)
            except (InputError, OSError, ValueError, Image.DecompressionBombError):
                bad += 1
        return np.array(sizes, np.int64).reshape(-1, 2), bad

    # -- merged ---------------------------------------------------------------------------------------
    def merge(self, parts: list[dict]) -> dict:
        """One summary: ``rows``, ``metrics`` (name -> summary with a histogram), ``languages`` (code ->
        rows, only when a detector ran) and ``images_unreadable``."""
        if not parts:
            return {"rows": 0, "metrics": {}, "images_unreadable": 0}
        names = [m for m in METRICS if any(m in p["values"] for p in parts)]
        metrics = {}
        for m in names:
            vals = np.concatenate([np.asarray(p["values"].get(m, []), np.float64) for p in parts])
            metrics[m] = {"label": METRICS[m], **summarize(vals, self.p["bins"])}
        langs = sum((p["languages"] for p in parts), Counter())
        out = {"rows": int(sum(p["rows"] for p in parts)), "metrics": metrics,
               "images_unreadable": int(sum(p["images_unreadable"] for p in parts))}
        if langs:
            out["languages"] = dict(langs.most_common())
        return out
