"""Pipeline commands of the ``datacopilot`` CLI: ``run`` (a YAML pipeline), ``ops`` (the registered operators)
and ``describe`` (statistics, histograms and an HTML page). Registered onto the main group by
:func:`register_commands`.

.. code-block:: console

    $ datacopilot run pipeline.yaml --resume
    $ datacopilot run pipeline.yaml --ray                # a local Ray instance, or --ray ray://head:10001
    $ datacopilot ops --kind filter
    $ datacopilot describe data.jsonl --out report/
"""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("spec", type=click.Path(exists=True, dir_okay=False))
@click.option("--ray", "ray", is_flag=False, flag_value="auto", default=None, metavar="[ADDRESS]",
              help="Run on Ray: a local instance, or the cluster at ADDRESS.")
@click.option("--resume", is_flag=True, help="Skip the input files a previous, interrupted run finished.")
@click.option("--out", "out", default=None, metavar="DIR", help="Output directory (overrides the spec's output.dir).")
@click.option("--workers", "workers", default=None, type=click.IntRange(min=1),
              help="Local executor: number of workers (threads).")
@click.option("--root", "root", default=None, metavar="DIR",
              help="Where relative image paths resolve (overrides the spec's source.root).")
@click.option("--image-paths", "image_paths", default=None, type=click.Choice(["keep", "relative", "absolute"]),
              help="Keep image paths as they are (the default; the manifest records their root) or rewrite them "
                   "relative to the output or absolute (overrides the spec's output.image_paths).")
def run(spec: str, ray: str | None, resume: bool, out: str | None, workers: int | None, root: str | None,
        image_paths: str | None) -> None:
    """Run the pipeline described in the YAML (or JSON) file SPEC and write its output shards.

    Prints the per-operator report (rows in / out / dropped by reason / failed) and saves it as report.json
    next to the output, and what was done to image paths.
    """
    import os

    from datacopilot.pipeline import Pipeline
    from datacopilot.pipeline_spec import read_spec

    raw = read_spec(spec)
    if root is not None and isinstance(raw, dict):
        src = raw.get("source")
        src = dict(src) if isinstance(src, dict) else {"paths": src}
        raw = {**raw, "source": {**src, "root": os.path.abspath(root)}}
    pipe = Pipeline.from_spec(raw, os.path.dirname(os.path.abspath(spec)))
    options: dict = {}
    executor = None
    if ray is not None:  # the spec's Ray options (resources, block_rows, ...) still hold; --ray says where
        executor = "ray"
        if pipe.executor.get("name") == "ray":
            options = {k: v for k, v in pipe.executor.items() if k != "name"}
        if ray != "auto":
            options["address"] = ray
    elif workers is not None:
        executor, options = "local", {"num_workers": workers}
    report = pipe.write(out, executor=executor, resume=resume, image_paths=image_paths, **options)
    from datacopilot.media import image_paths_of
    from datacopilot.io.sink import read_manifest

    manifest = read_manifest(report["output"]) or {}
    info = image_paths_of(manifest)
    if info.rewritten:
        click.echo(f"image paths: {info.rewritten} rewritten ({info.mode})")
    elif info.root:
        click.echo(f"image paths: kept as they are, relative to {info.root} (recorded in the manifest)")


@click.command()
@click.option("--kind", "kind", default=None, help="Only operators of this kind (mapper, filter, dedup, ...).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def ops(kind: str | None, as_json: bool) -> None:
    """List the registered operators with their parameters."""
    from datacopilot.operators import list_operators

    rows = list_operators(kind)
    if as_json:
        click.echo(json.dumps(rows, indent=1, default=str))
        return
    for r in rows:
        params = ", ".join(p["name"] + (f"={p['default']!r}" if "default" in p else "") for p in r["parameters"])
        click.echo(f"{r['name']} [{r['kind']}]({params})")
        if r["doc"]:
            click.echo(f"    {r['doc']}")


@click.command()
@click.argument("path")
@click.option("--out", "out", default="describe", show_default=True, metavar="DIR",
              help="Where the histograms, index.html and stats.json go.")
@click.option("--schema", "schema", default=None, metavar="NAME", help="Schema to read with; detected if omitted.")
@click.option("--root", "root", default=None, metavar="DIR",
              help="Where relative image paths resolve (LLaVA's --image_folder).")
def describe(path: str, out: str, schema: str | None, root: str | None) -> None:
    """Statistics of the dataset at PATH (turns, lengths, images, languages) as PNG histograms and a page."""
    import datacopilot
    from datacopilot.operators.report import describe as run_describe

    ds = datacopilot.load(path, schema=schema, invalid="quarantine", root=root)
    stats = run_describe(ds, out)
    click.echo(f"{stats.get('rows', len(ds))} rows described -> {out}/index.html")
    for name, m in stats["metrics"].items():
        if m.get("count"):
            click.echo(f"  {name}: mean {m['mean']:.2f}, min {m['min']}, max {m['max']}")


def register_commands(group: click.Group) -> None:
    """Add ``run``, ``ops`` and ``describe`` to the main CLI group."""
    for cmd in (run, ops, describe):
        group.add_command(cmd)
