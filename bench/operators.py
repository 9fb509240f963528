"""Operator benchmark: every built-in per-batch operator next to the same transform written in polars.

Generates LLaVA-style MM rows once (``bench/_gen.py``, fixed seed; cached as Arrow IPC in ``bench/_data/``) and
for each operator times, in one run, sides taking turns (best of ``--repeat``), results checked equal:

- datacopilot on one record batch of all rows, through the operator's one hook as the engine calls it
  (``op.map_batch(batch)`` for a mapper, ``op.keep(batch)`` for a filter);
- datacopilot on record batches of the engine's default size (``Pipeline(batch_size=1024)``,
  ``datacopilot.parallel.PIECE_ROWS``): zero-copy slices of the same table, one hook call each, so the per-batch
  overhead shows;
- polars: the same transform as polars expressions over ``pl.from_arrow`` of the same rows (converted once,
  outside the timing); ``bench/_pl_ops.py`` holds them.

Ratio = polars time / datacopilot time (>= 1: datacopilot is at least as fast). Cleaners run on the text as
generated ("gen": some turns hold doubled spaces or paragraph breaks) and on text the cleaner has already cleaned
("clean": nothing to change); on clean text each is also set against one regex match over the same turn texts
(``pc.match_substring_regex``; target: at most 1.5x). The repair operators run on the rows with placeholders and
roles broken in every 25th row. ``filter_repetition`` runs on the first ``--capped-rows`` rows (20,000): its
polars side (character n-grams have no cheap expression) takes about 1.3 s per 1,000 rows. The image filters run on a tenth of the rows (at most 50,000), each with a small
embedded PNG: there are no pre-decoded sizes in the image type (``{path, bytes}``), so ``filter_image_size`` and
``filter_aspect_ratio`` read each image's header (Pillow) on both sides; ``filter_file_size`` needs no decode.

    python bench/operators.py                    # 50,000 rows (about 2 minutes)
    python bench/operators.py --rows 1000000     # the issue's size
    python bench/operators.py --rows 20000 --only filter_turns,clean_whitespace
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _gen  # noqa: E402
import _pl_ops as P  # noqa: E402

MATCH = r"\r|[\t\f\v\x{A0}\x{3000}]|  | \n|\n |\n{3,}"  # the single match the cleaners are set against
BATCH = 1024  # the engine's default batch size (Pipeline, parallel.PIECE_ROWS)


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


# -- data -----------------------------------------------------------------------------------------------------
def rows_table(n: int):
    """``n`` generated rows as one Arrow table (one chunk), cached in ``bench/_data``."""
    import pyarrow as pa
    import pyarrow.feather as feather

    path = os.path.join(HERE, "_data", f"operators-v{_gen.VERSION}-{n}.arrow")
    if os.path.exists(path):
        return feather.read_table(path, memory_map=False).combine_chunks()
    table = pa.Table.from_pylist(list(_gen.rows(n))).combine_chunks()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    feather.write_feather(table, path + ".tmp", compression="uncompressed")
    os.replace(path + ".tmp", path)
    return table


def broken_table(table, every: int = 25):
    """The rows with repairs to do: in every ``every``-th row the placeholder is dropped (an image row) or doubled
    (a text-only row gets one, so it has more than its images), and the first question is said twice (two user
    turns in a row)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    idx = list(range(0, table.num_rows, every))
    conv = table.column("conversations").take(idx).to_pylist()
    has_image = table.column("image").take(idx).is_valid().to_pylist()
    for c, img in zip(conv, has_image):
        first = c[0]
        first["value"] = first["value"].replace("<image>\n", "") if img else "<image>\n" + first["value"]
        c.insert(1, dict(first))
    col = table.column("conversations").combine_chunks()
    fixed = pa.array(conv, col.type)
    where = list(range(table.num_rows))
    for j, i in enumerate(idx):
        where[i] = table.num_rows + j
    new = pa.concat_arrays([col, fixed]).take(pa.array(where))
    out = table.set_column(table.schema.get_field_index("conversations"), "conversations", new)
    assert pc.sum(pc.list_value_length(new)).as_py() > pc.sum(pc.list_value_length(col)).as_py()
    return out.combine_chunks()


def image_table(n: int):
    """``n`` rows, each with a small embedded PNG (sizes from 4x4 to 96x96, some banners) and one exchange."""
    import io

    import numpy as np
    import pyarrow as pa
    from PIL import Image

    from datacopilot.schemas.image import IMAGE_ARROW_TYPE

    rng = np.random.default_rng(0)
    sizes = [(w, h) for w in (4, 16, 32, 64, 96) for h in (4, 16, 48, 96)]
    pngs = []
    for w, h in sizes:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    pick = rng.integers(0, len(pngs), n)
    images = pa.array([{"path": f"{i:07d}.png", "bytes": pngs[k]} for i, k in enumerate(pick.tolist())],
                      IMAGE_ARROW_TYPE)
    conv = pa.array([[{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A square."}]] * n)
    return pa.table({"id": pa.array([f"{i:07d}" for i in range(n)]), "image": images, "conversations": conv})


# -- cases ----------------------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    op: tuple  # (registry name, params)
    polars: Callable
    data: str  # "gen", "clean" (the op's own output on gen), "broken", "images"
    note: str = ""
    capped: bool = False  # runs on the first --capped-rows rows (its polars side is slow)


CASES = [
    Case("clean_whitespace (gen)", ("clean_whitespace", {}), P.clean_whitespace, "gen"),
    Case("clean_whitespace (clean)", ("clean_whitespace", {}), P.clean_whitespace, "clean"),
    Case("clean_unicode (gen)", ("clean_unicode", {}), P.clean_unicode, "gen"),
    Case("clean_unicode (clean)", ("clean_unicode", {}), P.clean_unicode, "clean"),
    Case("mask_pii (gen)", ("mask_pii", {}), P.mask_pii, "gen"),
    Case("filter_turns", ("filter_turns", {}), P.filter_turns, "gen"),
    Case("filter_length (chars)", ("filter_length", {}), P.filter_length, "gen"),
    Case("filter_length (words)", ("filter_length", {"unit": "words", "min_length": 3}),
         lambda df: P.filter_length(df, unit="words", min_length=3), "gen"),
    Case("filter_empty_turns", ("filter_empty_turns", {}), P.filter_empty_turns, "broken"),
    Case("filter_refusals", ("filter_refusals", {}), P.filter_refusals, "gen"),
    Case("filter_repetition", ("filter_repetition", {}), P.filter_repetition, "gen",
         "polars: word n-grams as expressions, character n-grams by map_elements", capped=True),
    Case("filter_special_chars", ("filter_special_chars", {}), P.filter_special_chars, "gen"),
    Case("filter_image_tokens", ("filter_image_tokens", {}), P.filter_image_tokens, "broken"),
    Case("fix_image_tokens", ("fix_image_tokens", {}), P.fix_image_tokens, "broken"),
    Case("fix_roles", ("fix_roles", {}), P.fix_roles, "broken"),
    Case("filter_image_size", ("filter_image_size", {"min_width": 16, "min_height": 16}),
         lambda df: P.filter_image_size(df, 16, 16), "images", "Pillow header read, both sides"),
    Case("filter_aspect_ratio", ("filter_aspect_ratio", {}), P.filter_aspect_ratio, "images",
         "Pillow header read, both sides"),
    Case("filter_file_size", ("filter_file_size", {"min_bytes": 200}),
         lambda df: P.filter_file_size(df, 200), "images", "embedded bytes: no read"),
]


def run_op(op, batches):
    """The hook over each batch, as the engine calls it; results joined (a mask, or the conversations column)."""
    import numpy as np
    import pyarrow as pa

    if op.kind == "filter":
        masks = []
        for b in batches:
            out = op.keep(b)
            masks.append(np.asarray(out[0] if isinstance(out, tuple) else out, dtype=bool))
        return np.concatenate(masks)
    return pa.chunked_array([op.map_batch(b).column("conversations").combine_chunks() for b in batches])


def same(dc_out, pl_out) -> bool:
    import numpy as np
    import polars as pl

    if isinstance(dc_out, np.ndarray):
        return bool(np.array_equal(dc_out, np.asarray(pl_out, dtype=bool)))
    return pl.from_arrow(dc_out.combine_chunks()).equals(pl_out, check_names=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--capped-rows", type=int, default=20_000,
                    help="rows for filter_repetition (its polars side takes ~1.3 s per 1,000 rows)")
    ap.add_argument("--only", default="", help="comma-separated operator names (default: all)")
    args = ap.parse_args()

    import polars as pl
    import pyarrow.compute as pc

    from datacopilot.operators import create

    only = {s for s in args.only.split(",") if s}
    cases = [c for c in CASES if not only or c.op[0] in only]
    t0 = time.perf_counter()
    tables = {"gen": rows_table(args.rows)}
    if any(c.data == "broken" for c in cases):
        tables["broken"] = broken_table(tables["gen"])
    if any(c.data == "images" for c in cases):
        tables["images"] = image_table(min(50_000, max(args.rows // 10, 1)))
    frames, batches = {}, {}

    def prepare(key, table):
        tables[key], frames[key] = table, pl.from_arrow(table)
        batches[key] = (table.to_batches(max_chunksize=table.num_rows), table.to_batches(max_chunksize=BATCH))

    for key in list(tables):
        prepare(key, tables[key])
    gen = tables["gen"]
    texts = pc.struct_field(gen.column("conversations").combine_chunks().flatten(), "value")
    print(f"{args.rows:,} rows, {len(texts):,} turns, {pc.sum(pc.binary_length(texts)).as_py() / 1e6:.0f} MB of "
          f"turn text, ready in {time.perf_counter() - t0:.1f} s; best of {args.repeat}; "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, polars {pl.__version__}\n", flush=True)

    results = []
    for case in cases:
        name, params = case.op
        key = case.data
        if key == "clean":  # the text this cleaner leaves as it is
            key = f"clean:{name}"
            if key not in tables:
                prepare(key, tables["gen"].set_column(
                    gen.schema.get_field_index("conversations"), "conversations",
                    create(name, **params).map_batch(batches["gen"][0][0]).column("conversations")).combine_chunks())
        if case.capped and tables[key].num_rows > args.capped_rows:
            key = f"{key}:{args.capped_rows}"
            if key not in tables:
                prepare(key, tables[case.data].slice(0, args.capped_rows).combine_chunks())
        one, small = batches[key]
        op = create(name, **params)
        run_op(op, small[:4])  # warm: JIT-compiled kernels load, lazy imports happen
        fns = [lambda: run_op(op, one), lambda: run_op(op, small), lambda: case.polars(frames[key])]
        (dc1, out1), (dcb, outb), (pls, plo) = side_by_side(fns, args.repeat)
        ok = same(out1, plo) and same(outb, plo)
        note = case.note
        if case.data == "clean":
            t = pc.struct_field(tables[key].column("conversations").combine_chunks().flatten(), "value")
            (m, _), = side_by_side([lambda: pc.match_substring_regex(t, MATCH)], args.repeat)
            note = f"{dc1 / m:.2f}x one regex match ({m * 1000:.0f} ms)"
        elif op.kind == "filter":
            note = (note + "; " if note else "") + f"keeps {int(out1.sum()):,} of {len(out1):,}"
        results.append((case.name, tables[key].num_rows, dc1, dcb, pls, ok, note))
        print(f"  {case.name}: {dc1 * 1000:.0f} / {dcb * 1000:.0f} / {pls * 1000:.0f} ms", flush=True)

    print(f"\n`python bench/operators.py --rows {args.rows}` (best of {args.repeat}; ratio = polars / datacopilot)\n")
    print("| operator | rows | datacopilot, 1 batch | datacopilot, 1024-row batches | polars | ratio (1 batch) | "
          "ratio (1024-row batches) | same | note |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---|")
    for name, n, dc1, dcb, pls, ok, note in results:
        print(f"| {name} | {n:,} | {_ms(dc1)} | {_ms(dcb)} | {_ms(pls)} | {pls / dc1:.2f}x | {pls / dcb:.2f}x | "
              f"{'yes' if ok else 'NO'} | {note} |")
    print(f"\nwhole run {time.perf_counter() - t0:.0f} s")


def _ms(s: float) -> str:
    return f"{s * 1000:,.0f} ms" if s >= 0.01 else f"{s * 1000:.1f} ms"


if __name__ == "__main__":
    main()
