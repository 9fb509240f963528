"""The one shard writer (datacopilot.io.sink): ``write_shards``, the local executor's streaming write and the
default ``Executor.write`` (a result held in memory) name, hash and list the same rows the same way; shards
written elsewhere are recorded in order; segments continue the output's shard numbers. (The Ray write's parity:
tests/executors/test_ray_pipeline.py; killed writes: test_kill_matrix.py.)"""

from __future__ import annotations

import hashlib
import json
import multiprocessing

import pytest

import datacopilot as dc
from datacopilot import MMDataset
from datacopilot.errors import DataCopilotError
from datacopilot.executors import Executor, get_executor
from datacopilot.io.sink import ShardSink, shard_rows, write_shard


def rows(n: int) -> list[dict]:
    return [{"id": f"r{i:03d}", "image": f"img/{i}.png",
             "conversations": [{"from": "human", "value": f"<image>\nq{i}"}, {"from": "gpt", "value": "a" * (i % 7)}]}
            for i in range(n)]


def shared(manifest: dict) -> dict:
    """The fields every output's manifest has (a pipeline's adds ``pipeline`` and ``report``), ``created``
    aside."""
    return {k: v for k, v in manifest.items() if k not in ("created", "pipeline", "report")}


class InMemory(Executor):
    """The default ``Executor.write``: the local executor's rows, collected, then written as one table."""

    name = "in-memory"

    def run(self, plan):
        return get_executor("local").run(plan)


def three_writes(tmp_path, fmt: str, image_paths: str = "keep") -> list[dict]:
    ds = MMDataset.from_rows(rows(23), schema="MM", root=str(tmp_path / "images"))
    manifests = [ds.write_shards(str(tmp_path / "shards"), format=fmt, max_rows_per_shard=5,
                                 image_paths=image_paths)]
    for name, executor in (("local", "local"), ("memory", InMemory())):
        ds.lazy(batch_size=3).write(str(tmp_path / name), format=fmt, executor=executor, max_rows_per_shard=5,
                                    image_paths=image_paths, **({"progress": False} if name == "local" else {}))
        manifests.append(json.loads((tmp_path / name / "manifest.json").read_text()))
    return manifests


@pytest.mark.parametrize("fmt", ["arrow", "parquet", "jsonl"])
def test_write_shards_and_pipeline_writes_give_the_same_manifest(tmp_path, fmt):
    shards, local, memory = three_writes(tmp_path, fmt)
    ext = {"arrow": ".arrow", "parquet": ".parquet", "jsonl": ".jsonl"}[fmt]
    assert [s["file"] for s in shards["shards"]] == [f"part-g0001-{i:05d}{ext}" for i in range(5)]
    assert [s["rows"] for s in shards["shards"]] == [5, 5, 5, 5, 3]
    assert shared(local) == shared(memory)  # names, rows, bytes and sha256 of every shard too
    if fmt == "arrow":  # a write_shards shard is a slice, written without a copy: its buffer layout may differ
        layout = lambda m: {**shared(m), "shards": [{k: s[k] for k in ("file", "rows")} for s in m["shards"]]}
        assert layout(shards) == layout(local)
    else:
        assert shared(shards) == shared(local)
    assert shards["root"] == str(tmp_path / "images") and shards["quarantine"] == []
    assert "pipeline" not in shards and local["pipeline"]["complete"] and memory["report"]["file"] == "report.json"
    for s in shards["shards"]:
        data = (tmp_path / "shards" / s["file"]).read_bytes()
        assert len(data) == s["bytes"] and hashlib.sha256(data).hexdigest() == s["sha256"]
    assert dc.load(str(tmp_path / "local")).to_list() == dc.load(str(tmp_path / "shards")).to_list()


def test_rewritten_image_paths_are_counted_the_same_on_every_path(tmp_path):
    manifests = three_writes(tmp_path, "jsonl", image_paths="relative")
    assert [m["image_paths"] for m in manifests] == [{"mode": "relative", "rewritten": 23}] * 3
    assert all("root" not in m for m in manifests)


def test_segments_continue_the_shard_numbers_of_the_output(tmp_path):
    ds = MMDataset.from_rows(rows(7), schema="MM")
    sink = ShardSink(str(tmp_path / "o"), "arrow", 3, units=["a", "b"])
    sink.add(ds.to_arrow().slice(0, 4), ds.schema, None)
    sink.end_units((0,), ds.schema, None, None, [], {})
    staged = json.loads((tmp_path / "o" / ".staging-g0001" / "manifest.json").read_text())
    assert [s["file"] for s in staged["shards"]] == ["part-g0001-00000.arrow", "part-g0001-00001.arrow"]
    assert staged["complete"] is False and staged["pipeline"]["done"] == ["a"]
    sink.add(ds.to_arrow().slice(4), ds.schema, None)
    sink.end_units((1,), ds.schema, None, None, [], {})
    assert [(s["file"], s["rows"]) for s in sink.manifest["shards"]] == [
        ("part-g0001-00000.arrow", 3), ("part-g0001-00001.arrow", 1), ("part-g0001-00002.arrow", 3)]
    assert dc.load(str(tmp_path / "o")).to_list() == ds.to_list()
    with pytest.raises(DataCopilotError, match="publishes when its last unit ends"):
        sink.publish(ds.schema)


def _write_in_child(args):
    fmt, table, schema, path, name, first_row = args
    ds, info = shard_rows(fmt, table, schema, None, "", "keep")
    return write_shard(fmt, ds, path, name, first_row), info


def test_a_shard_written_in_another_process_is_recorded_by_name_and_in_order(tmp_path):
    ds = MMDataset.from_rows(rows(10), schema="MM")
    sink = ShardSink(str(tmp_path / "o"), "parquet", 4)
    t = ds.to_arrow()
    names = [sink.shard_name(k) for k in range(3)]
    jobs = [("parquet", t.slice(a, 4), ds.schema, sink.path(n), n, a) for n, a in zip(names, (0, 4, 8))]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        written = pool.map(_write_in_child, jobs)
    with pytest.raises(DataCopilotError, match="recorded out of order"):
        sink.record(*written[1])
    for entry, info in written:
        sink.record(entry, info, ds.schema)
    man = sink.publish()
    assert [(s["file"], s["rows"]) for s in man["shards"]] == list(zip(names, [4, 4, 2]))
    assert man["schema"] == "MM" and man["rows"] == 10 and dc.verify_shards(str(tmp_path / "o")) == man
    assert dc.load(str(tmp_path / "o")).to_list() == ds.to_list()
