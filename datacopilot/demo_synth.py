"""The demo's synthesis step: the tiny VLM it just trained captions images and generates question-answer pairs
for a sample of the curated shards, through the registered model operators (``caption``, ``generate_vqa``) in a
streaming pipeline, and the demo shows what each operator generated, rejected (with reasons), skipped and failed.

A VLM trained for a few dozen steps on a few hundred rows writes little that parses: most VQA outputs are
rejected as unparsable, and that is the point of showing the accounting. Nothing is lost: every row in is kept
(with or without new content) or quarantined with its error.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

import datacopilot

CAPTION_PROMPT = "What is in the image?"


def synthesis_ops(model_dir: str, tokenizer_dir: str, max_new_tokens: int = 48) -> list:
    """``caption`` then ``generate_vqa`` over the trained VLM (paddle backend, greedy, batches of 16)."""
    from datacopilot.models.backends import ModelSpec
    from datacopilot.operators import create

    spec = ModelSpec(backend="paddle", path=model_dir, tokenizer=tokenizer_dir, max_new_tokens=max_new_tokens,
                     batch_size=16).to_dict()
    return [create("caption", model=spec, prompt=CAPTION_PROMPT, field="caption", overwrite=True),
            create("generate_vqa", model=spec, n=2, source="image")]


def synthesize_on_demo(shards_dir: str, train: dict, out_dir: str, rows: int = 32,
                       echo: Callable[[str], None] = print) -> dict:
    """Run :func:`synthesis_ops` over the first ``rows`` rows of ``shards_dir`` with the model of ``train`` (the
    demo's sft result) and write the result to ``out_dir/synth``; returns the pipeline's report (per operator:
    rows in / out, dropped, failed, and ``counts``: generated, rejected by reason, skipped) and ``truth``: the
    synthesized pairs and captions checked against the drawn attributes
    (:func:`datacopilot.train.demo_eval.score_synthesized`).

    >>> report = synthesize_on_demo("demo/shards", train_result, "demo")     # doctest: +SKIP
    >>> report["ops"][0]["counts"]                                           # doctest: +SKIP
    {'generated': 30, 'rejected: empty output': 2}
    """
    ds = datacopilot.load(shards_dir)
    ds = ds[: min(rows, len(ds))]
    ops = synthesis_ops(train["model_dir"], train["tokenizer_dir"])
    pipe = datacopilot.pipeline(ds, on_error="quarantine", batch_size=16).apply(ops)
    with warnings.catch_warnings():  # paddlenlp's deprecation notices, not the user's concern here
        warnings.simplefilter("ignore")
        report = pipe.write(os.path.join(out_dir, "synth"), format="arrow", progress=False)
    echo(f"   {len(ds)} rows -> {report['rows']} rows in {report['output']} "
         f"({report['quarantined']} quarantined)")
    echo(table(report["ops"]))
    from datacopilot.train.demo_eval import qa_pairs, score_synthesized, synth_table

    before = {r["id"]: len(qa_pairs(r["conversations"])) for r in ds}
    report["truth"] = score_synthesized(datacopilot.load(report["output"]),
                                        skip_pairs=lambda r: before.get(r["id"], 0))
    echo("   checked against what was drawn (synthesized pairs by the attribute asked, captions by the attributes "
         "they name):")
    echo(synth_table(report["truth"]))
    return report


def table(ops: list[dict]) -> str:
    """One line per operator: rows in and out, generated, rejected by reason, skipped, failed."""
    width = max([len("operator")] + [len(o["op"]) for o in ops])
    lines = [f"  {'operator':<{width}}  {'in':>4}  {'out':>4}  {'generated':>9}  rejected / skipped / failed"]
    for o in ops:
        counts = o.get("counts", {})
        gen = counts.get("generated", 0)
        rest = [f"{k}: {v}" for k, v in counts.items() if k != "generated"]
        if o["failed"]:
            rest.append(f"failed: {o['failed']}")
        lines.append(f"  {o['op']:<{width}}  {o['rows_in']:>4}  {o['rows_out']:>4}  {gen:>9}  "
                     + (", ".join(rest) or "-"))
    return "\n".join(lines)
