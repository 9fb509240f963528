"""The embedded demo: draw a dirty synthetic image-caption set, clean it with a pipeline of registered operators,
write Arrow shards, show what every operator did to the rows, and save the pipeline as a YAML spec that
``datacopilot run`` reruns.

The cleaning is :func:`cleaning_ops` (operators built by name from the registry) run lazily over the demo's jsonl
file by :func:`cleaning_pipeline`; invalid input rows go to the quarantine at load. The training step at the end
lives in :mod:`datacopilot.train.demo`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import datacopilot
from datacopilot.demo_data import MAX_ANSWER_CHARS, make_demo_data

MIN_TURNS = 2  # a question and its answer
MAX_TURNS = 6
SPEC_FILE = "pipeline.yaml"
INVALID_FILE = "invalid_rows.jsonl"

# the injected kind of dirty row each operator is there to drop (see demo_data.DIRTY_SHARE)
MEANT_FOR = {"filter_empty_turns": "empty_answers", "filter_turns": "unanswered", "filter_length": "overlong",
             "filter_image_exists": "missing_images", "dedup_exact": "duplicates"}


def cleaning_ops(max_answer_chars: int = MAX_ANSWER_CHARS) -> list:
    """The demo's cleaning operators, in order, built by name from the registry.

    >>> [op.name for op in cleaning_ops()][:3]
    ['clean_unicode', 'clean_whitespace', 'filter_empty_turns']
    """
    from datacopilot.operators import create

    return [
        create("clean_unicode"),                                   # NFC, no control / zero-width characters
        create("clean_whitespace"),                                # stray spaces, tabs, padding
        create("filter_empty_turns"),                              # empty answers
        create("filter_turns", min_turns=MIN_TURNS, max_turns=MAX_TURNS),  # unanswered questions
        create("filter_length", role="assistant", max_length=max_answer_chars),  # overlong answers
        create("filter_image_exists", num_threads=2),              # images that are not there
        create("dedup_exact", by="both"),                          # the same text and the same image bytes
    ]


def cleaning_pipeline(data_path: str):
    """The lazy cleaning pipeline over the demo's jsonl file (schema MM; invalid rows quarantined).

    >>> pipe = cleaning_pipeline("demo/demo.jsonl")  # doctest: +SKIP
    >>> report = pipe.write("demo/shards")  # doctest: +SKIP
    """
    return datacopilot.pipeline(data_path, schema="MM", on_error="quarantine").apply(cleaning_ops())


def save_spec(pipe, out_dir: str, shards_dir: str, max_rows_per_shard: int) -> str:
    """Write ``pipe`` as ``out_dir/pipeline.yaml`` with paths relative to ``out_dir`` (so the folder can move);
    return the spec's path. ``datacopilot run <spec>`` writes the same shards to ``shards_dir``."""
    import yaml

    spec = pipe.to_spec()
    src = spec["source"]
    src["paths"] = [os.path.relpath(os.path.abspath(p), os.path.abspath(out_dir)) for p in src["paths"]]
    spec["output"] = {"dir": os.path.relpath(os.path.abspath(shards_dir), os.path.abspath(out_dir)),
                      "format": "arrow", "max_rows_per_shard": max_rows_per_shard}
    path = os.path.join(out_dir, SPEC_FILE)
    with open(path, "w") as f:
        f.write("# the demo's cleaning pipeline; rerun it with: datacopilot run " + SPEC_FILE + "\n")
        yaml.safe_dump(spec, f, sort_keys=False)
    return path


def _save_invalid(bad: list, path: str) -> None:
    """The invalid input rows (where, error, raw row) as jsonl, so none is lost."""
    from datacopilot.loading import quarantine_table

    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in quarantine_table(bad).to_pylist())


def run_demo(out_dir: str, n: int = 400, seed: int = 0, echo: Callable[[str], None] = print,
             train_steps: int | None = None, synth_rows: int = 32, quick: bool = False,
             eval_rows: int | None = None) -> dict:
    """Make the demo data in ``out_dir``, clean it with a pipeline of registered operators that streams Arrow
    shards to ``out_dir/shards``, save the pipeline as ``out_dir/pipeline.yaml``, then train a tiny VLM on the
    shards for ``train_steps`` packed steps (None = the recipe's: :data:`datacopilot.train.demo.FULL`, or
    ``QUICK`` with ``quick``; 0 = no training; skipped with the install line without paddle),
    and with it caption and generate question-answer pairs for ``synth_rows`` curated rows (0 = no synthesis);
    score it on ``eval_rows`` new images (None: 12 with ``quick``, else 50; 0 = no evaluation; see
    :func:`datacopilot.train.demo_eval.evaluate_on_demo`); return a report.

    The report holds ``data`` (what :func:`make_demo_data` injected), ``steps`` (per operator: step, op, rows in,
    out, dropped by reason, failed, seconds), ``rows_in``, ``quarantined`` (invalid input rows and rows that
    failed), ``invalid`` (the invalid input rows: where and error), ``kept``, ``dropped`` (total), ``shards_dir``,
    ``manifest``, ``shards``, ``spec``, ``seconds``, ``train`` (the sft result, or None) and ``synth`` (the
    synthesis pipeline's report with per-operator generated / rejected / skipped counts, or None) and
    ``eval`` (the held-out evaluation's report, or None).
    ``rows_in == kept + dropped + quarantined`` always holds.

    >>> report = run_demo("/tmp/dc-demo", n=100, train_steps=0)  # doctest: +SKIP
    >>> report["rows_in"] == report["kept"] + report["dropped"] + report["quarantined"]  # doctest: +SKIP
    True
    """
    t0 = time.perf_counter()
    echo(f"1. drawing {n} synthetic image-caption rows (seed {seed}) into {out_dir}")
    data = make_demo_data(out_dir, n=n, seed=seed)
    injected = ", ".join(f"{k.replace('_', ' ')} {data[k]}" for k in
                         ("duplicates", "empty_answers", "missing_images", "overlong", "unanswered", "invalid"))
    echo(f"   {data['rows']} rows in {data['path']}; dirty rows injected: {injected}")

    pipe = cleaning_pipeline(data["path"])
    echo("2. cleaning with a pipeline of registered operators (invalid input rows quarantined at load):")
    echo("   " + " -> ".join(op.label for op in pipe.ops))
    shards_dir = os.path.join(out_dir, "shards")
    max_rows = max(1, n // 4 + 1)
    spec = save_spec(pipe, out_dir, shards_dir, max_rows)
    res = pipe.write(shards_dir, format="arrow", max_rows_per_shard=max_rows, progress=False)
    bad = list(pipe.source.bad)

    steps = [{"step": r["op"], **r} for r in res["ops"]]
    invalid = [{"where": w, "error": m} for w, m, _ in bad]
    quarantined = res["quarantined"]  # failed rows and invalid input rows, both kept in shards/quarantine/
    report = {
        "data": data, "steps": steps, "rows_in": (steps[0]["rows_in"] if steps else res["rows"]) + len(bad),
        "quarantined": quarantined, "invalid": invalid, "kept": res["rows"],
        "dropped": sum(sum(s["dropped"].values()) for s in steps), "shards_dir": shards_dir,
        "manifest": os.path.join(shards_dir, "manifest.json"), "shards": res["shards"], "spec": spec,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    echo(f"   {len(bad)} invalid row(s) quarantined at load" + (", e.g.:" if bad else ""))
    if bad:
        _save_invalid(bad, os.path.join(out_dir, INVALID_FILE))
        echo(f"   {invalid[0]['error']}")
        echo(f"   (all of them with their errors in {os.path.join(out_dir, INVALID_FILE)})")
    echo("\nper operator (rows in -> out, dropped by reason, failed; 'injected' = dirty rows of the kind it targets):")
    echo(_report_table(steps, data))
    extra = sum(s["rows_in"] - s["rows_out"] for s in steps if s["op"] == "dedup_exact") - data["duplicates"]
    if extra > 0:
        echo(f"  (dedup_exact also drops {extra} drawn row(s) that repeat another's text and image bytes)")
    echo(f"\n{report['rows_in']} rows in = {report['kept']} kept + {report['dropped']} dropped "
         f"+ {quarantined} quarantined")
    echo(f"3. wrote {report['kept']} rows in {report['shards']} shard(s) to {shards_dir}")
    echo(f"   manifest: {report['manifest']}; report: {os.path.join(shards_dir, 'report.json')}")
    echo(f"   load them back with datacopilot.load({shards_dir!r})  [{report['seconds']:.2f}s]")
    echo(f"   pipeline spec: {spec}; rerun it with: datacopilot run {spec}")
    report["train"] = None
    if train_steps != 0:
        from datacopilot.train.demo import FULL, QUICK, train_on_demo

        recipe = QUICK if quick else FULL
        echo(f"\n4. training a tiny VLM on the shards: {train_steps or recipe.steps} steps of packed batches "
             f"(MixToken, no cross-sample attention)")
        t1 = time.perf_counter()
        report["train"] = train_on_demo(shards_dir, os.path.join(out_dir, "train"), steps=train_steps, seed=seed,
                                        echo=echo, recipe=recipe)
        if report["train"] is not None:
            echo(f"   loss curve: {report['train']['loss_curve']}  [{time.perf_counter() - t1:.1f}s]")
    report["eval"] = None
    eval_rows = eval_rows if eval_rows is not None else (12 if quick else 50)
    if report["train"] is not None and eval_rows:
        from datacopilot.train.demo_eval import evaluate_on_demo

        echo(f"\n5. evaluating the VLM on new images: accuracy by ranking each question's answers by log-likelihood, "
             f"exact match of its greedy answer, against chance and with another image's pixels (wrong image)")
        t3 = time.perf_counter()
        report["eval"] = evaluate_on_demo(report["train"], out_dir, n=eval_rows, seed=seed, shards_dir=shards_dir,
                                          echo=echo)
        echo(f"   [{time.perf_counter() - t3:.1f}s]")
    report["synth"] = None
    if report["train"] is not None and synth_rows:
        from datacopilot.demo_synth import synthesize_on_demo

        echo(f"\n6. synthesis with the VLM just trained: captions and question-answer pairs for {synth_rows} "
             f"curated rows (operators caption -> generate_vqa; what does not parse is rejected, with the reason)")
        t2 = time.perf_counter()
        report["synth"] = synthesize_on_demo(shards_dir, report["train"], out_dir, rows=synth_rows, echo=echo)
        echo(f"   [{time.perf_counter() - t2:.1f}s]")
    return report


def _report_table(steps: list[dict], data: dict) -> str:
    width = max([len("operator")] + [len(s["step"]) for s in steps])
    lines = [f"  {'operator':<{width}}  {'in':>6}  {'kept':>6}  {'injected':>8}  dropped"]
    for s in steps:
        kind = MEANT_FOR.get(s["op"])
        reasons = ", ".join(f"{_short(k)}: {v}" for k, v in s["dropped"].items()) or "-"
        if s["failed"]:
            reasons += f"; failed: {s['failed']}"
        meant = str(data[kind]) if kind else "-"
        lines.append(f"  {s['step']:<{width}}  {s['rows_in']:>6}  {s['rows_out']:>6}  {meant:>8}  {reasons}")
    return "\n".join(lines)


def _short(reason: str, limit: int = 60) -> str:
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"


__all__ = ["MEANT_FOR", "cleaning_ops", "cleaning_pipeline", "run_demo", "save_spec"]
