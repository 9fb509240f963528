"""The ``datacopilot`` command line: look at, check and convert datasets, and run the demo.

    datacopilot info data.jsonl
    datacopilot head data.jsonl -n 3
    datacopilot validate data/llava.json --images --root images/
    datacopilot convert data.jsonl out.parquet --to MIX
    datacopilot convert data.jsonl shards/ --shards --format arrow
    datacopilot verify shards/
    datacopilot demo --out demo/ --rows 400
    datacopilot train sft.yaml [--resume]
    datacopilot eval demo/train/run/final --tokenizer demo/train/tokenizer --out demo/eval   # held-out accuracy
    datacopilot submit pipeline.yaml --address http://head:8265   # a Ray job; also status JOB, stop JOB

Errors of the library (bad input, invalid rows, impossible conversions) print one ``error: ...`` message and
exit with code 2; a validation that finds problems exits with 1.
"""

from __future__ import annotations

import json
import os

import click

from datacopilot import __version__
from datacopilot.errors import DataCopilotError

SCHEMAS = ("MM", "MIX", "PAIRS", "MESSAGES", "CAPTION")


class DataError(click.ClickException):
    """A DataCopilotError shown as ``error: <message>`` with exit code 2, without a traceback."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DataCopilotError as e:
            raise DataError(str(e)) from e


def _schema_option(f):
    return click.option("--schema", "schema", default=None, metavar="NAME",
                        help=f"Schema to read with ({', '.join(SCHEMAS)}); detected from the columns if omitted.")(f)


def _root_option(f):
    return click.option("--root", "root", default=None, metavar="DIR",
                        help="Where relative image paths resolve (LLaVA's --image_folder); by default the root a "
                             "manifest records, else the data file's directory.")(f)


def _files(path: str) -> list[str]:
    from datacopilot.io import EXTENSIONS
    from datacopilot.io.fs import expand

    return expand(path, EXTENSIONS)


def _file_bytes(files: list[str]) -> int:
    from datacopilot.io.fs import get_fs

    total = 0
    for f in files:
        fs, p = get_fs(f)
        total += int(fs.size(p) or 0)
    return total


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _load(path: str, schema: str | None, invalid: str = "quarantine", root: str | None = None):
    import datacopilot

    return datacopilot.load(path, schema=schema, invalid=invalid, root=root)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="datacopilot")
def main() -> None:
    """datacopilot: a Schema-typed, Arrow-backed multimodal (image + text) dataset engine."""


@main.command()
@click.argument("path")
@_schema_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(path: str, schema: str | None, as_json: bool) -> None:
    """Rows, schema, columns with their types, size and file count of PATH (a file, glob or directory)."""
    files = _files(path)
    ds = _load(path, schema)
    summary = {
        "path": path, "rows": len(ds), "schema": ds.schema.name,
        "columns": {f.name: str(f.type) for f in ds.to_arrow().schema},
        "files": len(files), "file_bytes": _file_bytes(files), "memory_bytes": ds.nbytes,
        "invalid_rows": len(ds.quarantine) if ds.quarantine is not None else 0,
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{path}: {summary['rows']} rows, schema {summary['schema']}")
    click.echo(f"files: {summary['files']} ({_human(summary['file_bytes'])} on disk, "
               f"{_human(summary['memory_bytes'])} in memory)")
    click.echo("columns:")
    width = max((len(c) for c in summary["columns"]), default=0)
    for name, type_ in summary["columns"].items():
        click.echo(f"  {name:<{width}}  {type_}")
    if summary["invalid_rows"]:
        click.echo(f"invalid rows: {summary['invalid_rows']} (not counted above; see `datacopilot validate {path}`)")


def _printable(value):
    """A row value as JSON can show it: bytes become ``"<N bytes>"``."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict):
        return {k: _printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable(v) for v in value]
    return value


def _json_fields(ds) -> list[str]:
    from datacopilot.schemas import Json

    return [f.name for f in ds.schema.fields if isinstance(f.dtype, Json)]


@main.command()
@click.argument("path")
@click.option("-n", "n", default=5, show_default=True, type=click.IntRange(min=0), help="Number of rows.")
@_schema_option
def head(path: str, n: int, schema: str | None) -> None:
    """The first N valid rows of PATH as pretty JSON (image bytes shown as "<N bytes>")."""
    ds = _load(path, schema)
    json_fields = _json_fields(ds)
    for row in ds.head(n):
        for k in json_fields:
            if isinstance(row.get(k), str):
                try:
                    row[k] = json.loads(row[k])
                except ValueError:
                    pass
        click.echo(json.dumps(_printable(row), indent=2, ensure_ascii=False, default=str))
    if ds.quarantine is not None:
        click.echo(f"note: {len(ds.quarantine)} invalid row(s) not shown; see `datacopilot validate {path}`",
                   err=True)


@main.command()
@click.argument("src")
@click.argument("dst")
@click.option("--to", "to", default=None, metavar="SCHEMA", help=f"Target schema ({', '.join(SCHEMAS)}).")
@click.option("--format", "fmt", default=None, metavar="FMT",
              help="Output format (jsonl, json, parquet, arrow, h5, webdataset); from DST's extension if omitted "
                   "(arrow for --shards).")
@click.option("--shards", is_flag=True, help="Write DST as a directory of shards with a manifest.json.")
@click.option("--max-rows-per-shard", default=100_000, show_default=True, type=click.IntRange(min=1))
@click.option("--image-paths", "image_paths", default="keep", show_default=True,
              type=click.Choice(["keep", "relative", "absolute"]),
              help="Write image paths as they are (their root is recorded in a manifest, or printed), relative "
                   "to DST's directory, or absolute.")
@_schema_option
@_root_option
def convert(src: str, dst: str, to: str | None, fmt: str | None, shards: bool, max_rows_per_shard: int,
            image_paths: str, schema: str | None, root: str | None) -> None:
    """Read SRC, optionally convert it to another schema, and write DST (a file, or shards with --shards).

    Invalid rows stop the conversion with every problem listed (run `datacopilot validate SRC`). Image paths
    are written as they are unless --image-paths says otherwise; the output says what was done with them.
    """
    from datacopilot.io import FORMATS

    if fmt is not None and fmt not in FORMATS:
        raise click.BadParameter(f"expected one of {sorted(FORMATS)}, got {fmt!r}", param_hint="--format")
    ds = _load(src, schema, invalid="raise", root=root)
    if to is not None:
        ds = ds.convert(to)
    if shards:
        manifest = ds.write_shards(dst, format=fmt or "arrow", max_rows_per_shard=max_rows_per_shard,
                                   image_paths=image_paths)
        click.echo(f"wrote {len(ds)} rows (schema {ds.schema.name}) in {len(manifest['shards'])} "
                   f"{manifest['format']} shard(s) to {dst} with {os.path.join(dst, 'manifest.json')}")
        click.echo(_said_paths(manifest["image_paths"]["rewritten"], manifest.get("root"), image_paths, True))
    else:
        from datacopilot.io import format_of
        from datacopilot.media import image_paths_for

        info = image_paths_for(ds, os.path.dirname(os.path.abspath(dst)), image_paths,
                               format_of(dst, fmt).embeds_images)[1]
        ds.write(dst, format=fmt, image_paths=image_paths)
        click.echo(f"wrote {len(ds)} rows (schema {ds.schema.name}) to {dst}")
        click.echo(_said_paths(info.rewritten, info.root, image_paths, False))


def _said_paths(rewritten: int, root: str | None, mode: str, recorded: bool) -> str:
    if rewritten:
        return f"image paths: {rewritten} rewritten ({mode})"
    if root:
        where = "recorded in the manifest" if recorded else f"load it with --root {root}"
        return f"image paths: kept as they are, relative to {root} ({where})"
    return "image paths: kept as they are"


@main.command()
@click.argument("path")
@_schema_option
@click.option("--images", is_flag=True, help="Also check that every image referred to by path exists.")
@_root_option
def validate(path: str, schema: str | None, images: bool, root: str | None) -> None:
    """Check every row of PATH against its schema; print each problem with its file and line.

    Lines no parser may read (invalid UTF-8, nesting deeper than 512, lines over 256 MiB) are reported with
    their file and line too. With --images, also check that every image a row refers to by path exists. Exits
    with 0 when all rows are valid, 1 otherwise.
    """
    ds = _load(path, schema, root=root)
    problems = ds.validate()  # what loading quarantined (broken JSON, invalid UTF-8, deep nesting ...), then rows
    quarantined = len(ds.quarantine) if ds.quarantine is not None else 0
    total = len(ds) + quarantined
    bad_rows = quarantined + len({p.split(":", 1)[0] for p in problems if p.startswith("row ")})
    if images:
        from datacopilot.media import missing_images

        missing = missing_images(ds)
        problems += missing
        bad_rows += len({m.split(":", 1)[0] for m in missing})  # "row 17 (id ...)" once per row
    for p in problems:
        click.echo(p)
    if problems:
        click.echo(f"{path}: {bad_rows} invalid row(s) of {total} ({len(problems)} problem(s)), schema "
                   f"{ds.schema.name}")
        click.get_current_context().exit(1)
    click.echo(f"{path}: all {total} rows valid, schema {ds.schema.name}")


@main.command()
@click.argument("directory")
@click.option("--partial", is_flag=True, help="Check an output whose write did not finish (what it finished).")
def verify(directory: str, partial: bool) -> None:
    """Check every file DIRECTORY's manifest.json lists against its recorded size and sha256.

    Prints one line per missing or changed file and exits with 1, or OK with the counts. A directory without a
    manifest, or whose write did not finish, is an error (exit code 2).
    """
    from datacopilot.io.shards import verify_problems

    manifest, problems = verify_problems(directory, partial=partial)
    for p in problems:
        click.echo(p)
    files = len(manifest["shards"]) + len(manifest.get("quarantine", [])) + bool(manifest.get("report"))
    if problems:
        click.echo(f"{directory}: {len(problems)} of {files} file(s) do not match the manifest", err=True)
        click.get_current_context().exit(1)
    click.echo(f"{directory}: OK, {files} file(s), {manifest['rows']} rows: sizes and sha256 match the manifest")


@main.command()
@click.option("--out", "out", default="datacopilot-demo", show_default=True, type=click.Path(file_okay=False),
              help="Directory for the data, images and shards.")
@click.option("--rows", "rows", default=400, show_default=True, type=click.IntRange(min=1), help="Rows to draw.")
@click.option("--seed", "seed", default=0, show_default=True, type=int)
@click.option("--quick", is_flag=True, help="A short training run (16 steps, the first recipe) for CI: under a "
                                            "minute, the model learns little.")
def demo(out: str, rows: int, seed: int, quick: bool) -> None:
    """Draw a dirty synthetic image-caption set, clean it step by step, write Arrow shards, train a tiny VLM."""
    from datacopilot.demo import run_demo

    run_demo(out, n=rows, seed=seed, echo=click.echo, quick=quick)


@main.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in the config's output_dir.")
@click.option("--max-steps", "max_steps", default=None, type=click.IntRange(min=1),
              help="Stop after this many steps (at most the config's max_steps, which fixes the learning-rate "
                   "schedule); continue later with --resume.")
@click.option("--no-progress", "no_progress", is_flag=True, help="No progress bar; print a log line per step.")
@_root_option
def train(config: str, resume: bool, max_steps: int | None, no_progress: bool, root: str | None) -> None:
    """Supervised fine-tuning as configured in the YAML file CONFIG (see the README's Training section).

    Tokenizes and packs the data, trains with AdamW, writes checkpoints, log.jsonl, loss.png and the final model
    to the config's output_dir. Needs the paddle extra: pip install 'datacopilot[paddle]'.
    """
    from datacopilot.train import SFTConfig, sft

    cfg = SFTConfig.from_yaml(config)
    if no_progress:
        cfg.progress = False
    if root is not None:
        cfg.root = os.path.abspath(root)
    sft(cfg.check(), resume=resume, echo=click.echo, stop_at=max_steps)


from .cli_pipeline import register_commands  # noqa: E402

register_commands(main)

from .serve import register_serve  # noqa: E402

register_serve(main)

from .cli_jobs import register_jobs  # noqa: E402

register_jobs(main)

from .cli_eval import register_eval  # noqa: E402

register_eval(main)

if __name__ == "__main__":  # pragma: no cover
    main()
