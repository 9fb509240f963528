"""The ``datacopilot eval`` command: score a trained model on a held-out set (the work is in
:mod:`datacopilot.train.evaluate`); registered onto the main group by :func:`register_eval`."""

from __future__ import annotations

import os

import click


@click.command("eval")
@click.argument("model", type=click.Path(exists=True, file_okay=False))
@click.argument("data", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out", default="eval", show_default=True, type=click.Path(file_okay=False),
              help="Where the report (eval.json), the chart (eval.png) and a drawn held-out set go.")
@click.option("--rows", "rows", default=50, show_default=True, type=click.IntRange(min=2),
              help="Without DATA: how many new demo images to draw (4 questions each).")
@click.option("--seed", "seed", default=0, show_default=True, type=int,
              help="Seeds the drawn held-out set (a stream apart from the demo's training data) and the "
                   "wrong-image control.")
@click.option("--tokenizer", "tokenizer", default=None, type=click.Path(exists=True, file_okay=False),
              help="The tokenizer directory (default: MODEL itself or MODEL/tokenizer).")
@click.option("--batch-size", "batch_size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Candidate answers (or prompts) per forward pass.")
@click.option("--no-generate", "no_generate", is_flag=True, help="Skip exact match (greedy generation).")
def eval_command(model, data, out, rows, seed, tokenizer, batch_size, no_generate):
    """Score MODEL (a TinyVLM or causal LM directory) on DATA (jsonl of items: id, kind, question, answer,
    choices, image path) or, without DATA, on new demo images: accuracy by log-likelihood ranking of the
    candidate answers, exact match of the greedy answer, chance and a wrong-image control per question type.
    """
    from datacopilot.train.evaluate import evaluate_model, load_items

    if data is None:
        from datacopilot.train.demo_eval import demo_items

        where = os.path.join(out, "heldout")
        items = demo_items(where, n=rows, seed=seed)
        click.echo(f"{len(items)} questions about {rows} new demo images (seed {seed}) in {where}")
    else:
        items = load_items(data)
        click.echo(f"{len(items)} questions from {data}")
    evaluate_model(model, items, out, echo=click.echo, tokenizer=tokenizer, batch_size=batch_size,
                   generate=not no_generate, seed=seed)


def register_eval(group: click.Group) -> None:
    """Add ``eval`` to the ``datacopilot`` CLI group."""
    group.add_command(eval_command)
