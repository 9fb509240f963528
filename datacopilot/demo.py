"""The embedded demo: draw a dirty synthetic image-caption set, clean it with a chain of operators, write
Arrow shards, and show what every step did to the rows.

Each step is one small function over an MMDataset, so the sequence reads top to bottom in :func:`run_demo`
and later steps (training on the shards) can be appended.
"""

from __future__ import annotations

import os
import re
import time
from typing import Callable

import polars as pl

import datacopilot
from datacopilot.dataset import MMDataset
from datacopilot.demo_data import MAX_ANSWER_CHARS, make_demo_data
from datacopilot.schemas.image import resolve_path

MIN_TURNS = 2  # a question and its answer
MAX_TURNS = 6
_SPACES = re.compile(r"[ \t]+")


# -- the steps ------------------------------------------------------------------------------------------
def turn_count_ok() -> pl.Expr:
    """Vectorized: the conversation has between MIN_TURNS and MAX_TURNS turns."""
    return pl.col("conversations").list.len().is_between(MIN_TURNS, MAX_TURNS)


def answers_short_enough(max_chars: int = MAX_ANSWER_CHARS) -> pl.Expr:
    """Vectorized: no answer (a ``gpt`` turn) is longer than ``max_chars`` characters."""
    turn = pl.element()
    longest = pl.col("conversations").list.eval(
        turn.filter(turn.struct.field("from") == "gpt").struct.field("value").str.len_chars()
    ).list.max()
    return longest.fill_null(0) <= max_chars


def image_exists(root: str | None) -> Callable[[dict], tuple[bool, str | None]]:
    """A row filter: keep a row whose image has bytes or a file on disk; else drop it as ``missing image``."""

    def has_image(row: dict) -> tuple[bool, str | None]:
        img = row.get("image")
        if img is None:
            return True, None  # a text-only row has no image to miss
        if img.get("bytes") is not None or os.path.exists(resolve_path(img["path"], root)):
            return True, None
        return False, "missing image"

    return has_image


def normalize_whitespace(row: dict) -> dict:
    """Collapse runs of spaces and tabs and strip every line of every turn (keeps ``<image>\\n``)."""
    turns = []
    for t in row["conversations"]:
        lines = [_SPACES.sub(" ", ln).strip() for ln in t["value"].strip().split("\n")]
        turns.append({**t, "value": "\n".join(lines)})
    return {**row, "conversations": turns}


def clean(ds: MMDataset) -> MMDataset:
    """The cleaning chain of the demo; every step is recorded in ``history()``."""
    return (
        ds.nonempty()
        .filter(turn_count_ok())
        .filter(answers_short_enough())
        .filter(image_exists(ds.root), num_workers=2, mode="thread", batch_size=64)
        .map(normalize_whitespace)
        .unique(["conversations", "image"])
    )


# -- the demo -------------------------------------------------------------------------------------------
STEP_NAMES = ("load", "nonempty", "turn count", "answer length", "image exists", "normalize whitespace",
              "unique")


def run_demo(out_dir: str, n: int = 400, seed: int = 0, echo: Callable[[str], None] = print,
             train_steps: int = 16) -> dict:
    """Make the demo data in ``out_dir``, clean it, write Arrow shards to ``out_dir/shards``, then train a tiny
    VLM on them for ``train_steps`` packed steps (0 = no training; skipped with the install line without paddle);
    return a report.

    The report holds ``data`` (what :func:`make_demo_data` injected), ``steps`` (per step: name, rows in, out,
    dropped by reason, failed), ``rows_in``, ``quarantined``, ``kept``, ``dropped`` (total), ``shards_dir``,
    ``manifest``, ``seconds`` and ``train`` (the sft result, or None). ``rows_in == kept + dropped + quarantined``
    always holds.

    >>> report = run_demo("/tmp/dc-demo", n=100)  # doctest: +SKIP
    >>> report["kept"] == report["data"]["clean"]  # doctest: +SKIP
    True
    """
    t0 = time.perf_counter()
    echo(f"1. drawing {n} synthetic image-caption rows (seed {seed}) into {out_dir}")
    data = make_demo_data(out_dir, n=n, seed=seed)
    injected = ", ".join(f"{k.replace('_', ' ')} {data[k]}" for k in
                         ("duplicates", "empty_answers", "missing_images", "overlong", "unanswered", "invalid"))
    echo(f"   {data['rows']} rows in {data['path']}; dirty rows injected: {injected}")

    echo("2. loading with invalid='quarantine'")
    ds = datacopilot.load(data["path"], schema="MM", invalid="quarantine")
    quarantined = len(ds.quarantine) if ds.quarantine is not None else 0
    echo(f"   {len(ds)} valid rows, {quarantined} invalid row(s) kept apart in ds.quarantine, e.g.:")
    if quarantined:
        echo(f"   {ds.quarantine[0]['_error']}")

    echo("3. cleaning: nonempty -> turn count -> answer length -> image exists (2 threads) -> "
         "normalize whitespace -> unique")
    cleaned = clean(ds)

    shards_dir = os.path.join(out_dir, "shards")
    echo(f"4. writing Arrow shards to {shards_dir}")
    manifest = cleaned.with_absolute_paths().write_shards(shards_dir, format="arrow",
                                                          max_rows_per_shard=max(1, len(cleaned) // 4 + 1))

    steps = [_step(name, rec) for name, rec in zip(STEP_NAMES, cleaned.history())]
    dropped = sum(sum(s["dropped"].values()) for s in steps[1:]) + sum(s["failed"] for s in steps[1:])
    report = {
        "data": data, "steps": steps, "rows_in": steps[0]["rows_in"], "quarantined": quarantined,
        "kept": len(cleaned), "dropped": dropped, "shards_dir": shards_dir,
        "manifest": os.path.join(shards_dir, "manifest.json"), "shards": len(manifest["shards"]),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    echo("\nhistory (rows in -> out, dropped by reason):")
    echo(_history_table(steps))
    echo(f"\n{report['rows_in']} rows in = {report['kept']} kept + {report['dropped']} dropped "
         f"+ {quarantined} quarantined")
    echo(f"wrote {report['kept']} rows in {report['shards']} shard(s) to {shards_dir}")
    echo(f"manifest: {report['manifest']}")
    echo(f"load them back with datacopilot.load({shards_dir!r})  [{report['seconds']:.2f}s]")
    report["train"] = None
    if train_steps:
        from datacopilot.train.demo import train_on_demo

        echo(f"\n5. training a tiny VLM on the shards: {train_steps} steps of packed batches (MixToken, no "
             f"cross-sample attention)")
        t1 = time.perf_counter()
        report["train"] = train_on_demo(shards_dir, os.path.join(out_dir, "train"), steps=train_steps, seed=seed,
                                        echo=echo)
        if report["train"] is not None:
            echo(f"   loss curve: {report['train']['loss_curve']}  [{time.perf_counter() - t1:.1f}s]")
    return report


def _step(name: str, rec) -> dict:
    """One history record as a report entry; a vectorized filter's reason (its expression) becomes the step name."""
    d = {"step": name, **rec.as_dict()}
    d["dropped"] = {(name if k == rec.op else k): v for k, v in d["dropped"].items()}
    return d


def _history_table(steps: list[dict]) -> str:
    width = max(len(s["step"]) for s in steps)
    lines = [f"  {'step':<{width}}  {'in':>6}  {'out':>6}  dropped"]
    for s in steps:
        reasons = ", ".join(f"{_short(k)}: {v}" for k, v in s["dropped"].items()) or "-"
        if s["failed"]:
            reasons += f"; failed: {s['failed']}"
        lines.append(f"  {s['step']:<{width}}  {s['rows_in']:>6}  {s['rows_out']:>6}  {reasons}")
    return "\n".join(lines)


def _short(reason: str, limit: int = 60) -> str:
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"


__all__ = ["run_demo", "clean", "turn_count_ok", "answers_short_enough", "image_exists", "normalize_whitespace"]
