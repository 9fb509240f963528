"""Operator benchmark: each built-in per-batch cleaner / filter next to the same transform written in polars.

Generates LLaVA-style MM rows once (``bench/_gen.py``, fixed seed) into one Arrow record batch, and for each
operator times, in one run, sides taking turns (best of ``--repeat``), results checked equal:

- datacopilot: the operator's one hook on the batch (``map_batch`` for a cleaner, ``keep`` for a filter);
- polars: the same transform as polars expressions over ``pl.from_arrow`` of the same batch (converted once,
  outside the timing).

Each cleaner runs on the text as generated ("gen": some turns hold doubled spaces or paragraph breaks) and on
text it has already cleaned ("clean": nothing to change), and is also set against one regex match over the same
turn texts (the issue's target: a cleaner on clean text costs at most 1.5x one match).

    python bench/operators.py                 # 200,000 rows
    python bench/operators.py --rows 20000    # quick

This is a start: clean_unicode, mask_pii, filter_empty_turns, filter_repetition, the image filters and repair
have no polars side yet.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _gen

MATCH = r"\r|[\t\f\v\x{A0}\x{3000}]|  | \n|\n |\n{3,}"  # the single match the cleaners are set against


def side_by_side(fns: list, repeat: int) -> list[tuple[float, object]]:
    """(best seconds, last output) of each function; the functions take turns within each round."""
    best, outs = [float("inf")] * len(fns), [None] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            outs[i] = None
            gc.collect()
            t0 = time.perf_counter()
            outs[i] = fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return list(zip(best, outs))


def batch_of(n: int):
    import pyarrow as pa

    table = pa.Table.from_pylist(list(_gen.rows(n))).combine_chunks()
    return table.to_batches(max_chunksize=n)[0]


# -- the polars sides -------------------------------------------------------------------------------------
def pl_clean_whitespace(df, max_newlines: int = 2):
    import polars as pl

    v = (pl.field("value").str.replace_all(r"\r\n?", "\n").str.replace_all(r"[ \t\f\v\x{A0}\x{3000}]+", " ")
         .str.replace_all(r" ?\n ?", "\n").str.replace_all(r"\n{" + str(max_newlines + 1) + ",}", "\n" * max_newlines)
         .str.strip_chars())
    return df.with_columns(pl.col("conversations").list.eval(pl.element().struct.with_fields(v)))


def _assistant(expr):
    import polars as pl

    return pl.element().filter(pl.element().struct.field("from").is_in(["gpt", "assistant"])).pipe(expr)


def pl_filter_turns(df, min_turns: int = 2, max_turns: int | None = None):
    import polars as pl

    n = pl.col("conversations").list.eval(pl.element().struct.field("from") != "system").list.sum()
    keep = n >= min_turns if max_turns is None else n.is_between(min_turns, max_turns)
    return df.select(keep.fill_null(min_turns <= 0)).to_series().to_numpy()


def pl_filter_length(df, min_length: int = 1):
    import polars as pl

    shortest = pl.col("conversations").list.eval(
        _assistant(lambda e: e.struct.field("value").fill_null("").str.len_chars())).list.min()
    return df.select((shortest >= min_length).fill_null(True)).to_series().to_numpy()


def pl_filter_refusals(df):
    import polars as pl
    from datacopilot.operators.conversation_filters import REFUSALS

    pattern = "(?i)(?:" + "|".join(REFUSALS) + ")"
    hit = pl.col("conversations").list.eval(
        _assistant(lambda e: e.struct.field("value").fill_null("").str.contains(pattern))).list.any()
    return df.select(~hit.fill_null(False)).to_series().to_numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    import numpy as np
    import polars as pl
    import pyarrow.compute as pc
    from datacopilot.operators import create

    t0 = time.perf_counter()
    gen = batch_of(args.rows)
    clean = create("clean_whitespace").map_batch(gen).combine_chunks().to_batches()[0]
    frames = {"gen": pl.from_arrow(gen), "clean": pl.from_arrow(clean)}
    texts = pc.struct_field(clean.column("conversations").flatten(), "value")
    print(f"{args.rows:,} rows, {len(texts):,} turns, {pc.sum(pc.binary_length(texts)).as_py() / 1e6:.0f} MB of "
          f"turn text, made in {time.perf_counter() - t0:.1f} s; best of {args.repeat}\n")
    (match_s, _), = side_by_side([lambda: pc.match_substring_regex(texts, MATCH)], args.repeat)

    rows = []
    for label, batch in (("gen", gen), ("clean", clean)):
        op = create("clean_whitespace")
        (dc_s, dc_out), (pl_s, pl_out) = side_by_side(
            [lambda op=op, b=batch: op.map_batch(b), lambda df=frames[label]: pl_clean_whitespace(df)], args.repeat)
        same = dc_out.column("conversations").to_pylist() == pl_out["conversations"].to_list()
        rows.append((f"clean_whitespace ({label})", dc_s, pl_s, same, f"{dc_s / match_s:.2f}x one match"))
    filters = [("filter_turns", create("filter_turns"), pl_filter_turns),
               ("filter_length", create("filter_length"), pl_filter_length),
               ("filter_refusals", create("filter_refusals"), pl_filter_refusals)]
    for name, op, pl_fn in filters:
        (dc_s, dc_out), (pl_s, pl_out) = side_by_side(
            [lambda op=op: op.keep(gen), lambda fn=pl_fn: fn(frames["gen"])], args.repeat)
        same = bool(np.array_equal(np.asarray(dc_out[0], dtype=bool), pl_out.astype(bool)))
        rows.append((name, dc_s, pl_s, same, f"keeps {int(np.sum(pl_out)):,}"))

    print(f"one regex match over the turn text: {match_s * 1000:.0f} ms\n")
    print(f"| {'operator':28s} | {'datacopilot':>11s} | {'polars':>8s} | {'polars/dc':>9s} | same | note")
    print(f"|{'-' * 30}|{'-' * 13}|{'-' * 10}|{'-' * 11}|------|------")
    for name, dc_s, pl_s, same, note in rows:
        print(f"| {name:28s} | {dc_s * 1000:8.0f} ms | {pl_s * 1000:5.0f} ms | {pl_s / dc_s:8.2f}x | "
              f"{'yes' if same else 'NO':4s} | {note}")


if __name__ == "__main__":
    main()
