"""Pipelines written as data (YAML or JSON):

.. code-block:: yaml

    source: {paths: ["raw/*.jsonl"], schema: MM}   # or just: source: raw/*.jsonl
    on_error: quarantine                          # raise | skip | quarantine
    batch_size: 1024
    ops:
      - clean_whitespace                          # an operator with its defaults
      - {name: filter_turns, min_turns: 2}
    output: {dir: clean/, format: arrow, max_rows_per_shard: 100000, image_paths: keep}  # keep | relative | absolute
    executor: {name: local, num_workers: 2}       # optional

Relative paths (source paths, root, output dir, and a model operator's ``model.path``, ``model.tokenizer`` and
``cache_dir``) resolve against the spec file's directory; operators are looked up in the registry by name, with
their parameters checked as in Python:

.. code-block:: yaml

    ops:
      - {name: caption, model: {backend: paddle, path: models/tiny_vlm, max_new_tokens: 32}, cache_dir: cache/}

>>> p = from_spec({"source": "raw/*.jsonl", "ops": [{"name": "filter_turns", "min_turns": 2}]})  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os

from datacopilot.errors import DataCopilotError, InputError
from datacopilot.media import IMAGE_PATHS

SOURCE_KEYS = ("paths", "format", "schema", "root")
OUTPUT_KEYS = ("dir", "format", "max_rows_per_shard", "image_paths")
TOP_KEYS = ("source", "schema", "on_error", "batch_size", "ops", "output", "executor")


def read_spec(path: str) -> dict:
    """The spec in a YAML or JSON file, as a dict (InputError naming the file when it is not one)."""
    import yaml

    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    try:
        spec = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise InputError(f"{path}: not a valid pipeline spec: {e}") from e
    if not isinstance(spec, dict):
        raise InputError(f"{path}: a pipeline spec is a mapping with `source` and `ops`, got {type(spec).__name__}")
    return spec


def _unknown(where: str, given: dict, known: tuple) -> None:
    bad = [k for k in given if k not in known]
    if bad:
        raise DataCopilotError(f"{where}: unknown key(s) {', '.join(map(repr, bad))}; known: {', '.join(known)}")


def _resolve(path: str, base: str | None) -> str:
    path = os.fspath(path)
    if base is None or "://" in path or os.path.isabs(path):
        return path
    return os.path.join(base, path)


def _op(entry, i: int, base_dir: str | None = None):
    from datacopilot.operators.registry import create

    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise DataCopilotError(f"ops[{i}]: expected an operator name or a mapping with `name`, got {entry!r}")
    params = {k: v for k, v in entry.items() if k != "name"}
    if isinstance(params.get("model"), dict):  # a model operator: its local paths are relative to the spec
        model = dict(params["model"])
        for key in ("path", "tokenizer"):
            if isinstance(model.get(key), str):
                model[key] = _resolve(model[key], base_dir)
        params["model"] = model
    if isinstance(params.get("cache_dir"), str):
        params["cache_dir"] = _resolve(params["cache_dir"], base_dir)
    try:
        return create(entry["name"], **params)
    except TypeError as e:
        raise DataCopilotError(f"ops[{i}] ({entry['name']}): {e}") from e


def make_ops(entries: list, base_dir: str | None = None) -> list:
    """The operators of a spec's ``ops`` entries, looked up in the registry by name."""
    return [_op(e, i, base_dir) for i, e in enumerate(entries)]


def parse_spec(spec: dict, base_dir: str | None = None) -> dict:
    """A spec dict (see the module docstring) checked and resolved into what a plan is built from: ``source``
    (``paths``, ``schema``, ``format``, ``root``), ``ops`` (their entries: :func:`make_ops` builds them), ``on_error``, ``batch_size``, ``output``,
    ``executor``; :meth:`datacopilot.pipeline.Pipeline.from_spec` builds the plan."""
    if not isinstance(spec, dict):
        raise DataCopilotError(f"a pipeline spec is a mapping, got {type(spec).__name__}")
    _unknown("pipeline spec", spec, TOP_KEYS)
    if "source" not in spec:
        raise DataCopilotError("pipeline spec: `source` is required (paths of the input files)")
    src = spec["source"]
    if isinstance(src, (str, list)):
        src = {"paths": src}
    if not isinstance(src, dict) or "paths" not in src:
        raise DataCopilotError(f"pipeline spec: `source` must be paths or a mapping with `paths`, got {src!r}")
    _unknown("pipeline spec: source", src, SOURCE_KEYS)
    paths = src["paths"] if isinstance(src["paths"], list) else [src["paths"]]
    paths = [_resolve(p, base_dir) for p in paths]
    root = _resolve(src["root"], base_dir) if src.get("root") else None
    ops = spec.get("ops") or []
    if not isinstance(ops, list):
        raise DataCopilotError(f"pipeline spec: `ops` must be a list, got {type(ops).__name__}")
    output = dict(spec.get("output") or {})
    _unknown("pipeline spec: output", output, OUTPUT_KEYS)
    if output.get("dir"):
        output["dir"] = _resolve(output["dir"], base_dir)
    if "image_paths" in output and output["image_paths"] not in IMAGE_PATHS:
        raise DataCopilotError(f"pipeline spec: output: `image_paths` must be one of {', '.join(IMAGE_PATHS)} (what "
                               f"the writer does with image paths), got {output['image_paths']!r}")
    executor = spec.get("executor") or {}
    if isinstance(executor, str):
        executor = {"name": executor}
    return {"source": {"paths": paths, "schema": src.get("schema", spec.get("schema")), "format": src.get("format"),
                       "root": root},
            "ops": ops, "on_error": spec.get("on_error", "raise"),
            "batch_size": spec.get("batch_size", 1024), "output": output, "executor": dict(executor)}
