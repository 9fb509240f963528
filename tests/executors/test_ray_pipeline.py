"""Pipelines (datacopilot.pipeline) on the Ray executor: collect and write give what the local executor gives."""

import json

import pytest
from datacopilot.operators import create

import datacopilot as dc
from datacopilot.errors import DataCopilotError
from datacopilot.executors import get_executor

from ._ops import FailOn
from .test_ray import records, rows


def write_jsonl(tmp_path, data, bad_line_in=None):
    paths = []
    for k in range(3):
        p = tmp_path / f"part{k}.jsonl"
        lines = [json.dumps(r) for r in data[k * 8:(k + 1) * 8]]
        if k == bad_line_in:
            lines.insert(2, json.dumps({"id": "broken", "conversations": "not a list"}))
        p.write_text("\n".join(lines) + "\n")
        paths.append(str(p))
    return paths


def test_collect_from_files_same_as_local(ray_session, tmp_path):
    write_jsonl(tmp_path, rows(24), bad_line_in=1)
    ops = [create("clean_whitespace"), FailOn(bad=("r5",)), create("filter_turns", min_turns=2),
           create("dedup_exact")]
    plan = dc.pipeline(str(tmp_path / "*.jsonl"), schema="MM", on_error="quarantine", batch_size=5).apply(ops)
    local = plan.collect("local")
    ray_ds = dc.pipeline(str(tmp_path / "*.jsonl"), schema="MM", on_error="quarantine",
                         batch_size=5).apply(ops).collect("ray")
    assert ray_ds.to_arrow().to_pylist() == local.to_arrow().to_pylist()
    assert records(ray_ds) == records(local)
    assert records(ray_ds)[1][4] == 1  # r5 failed
    assert len(ray_ds.quarantine) == len(local.quarantine) == 2  # the invalid line and the failed row
    assert ray_ds.quarantine.to_arrow().to_pylist() == local.quarantine.to_arrow().to_pylist()


def test_write_on_ray_shards_and_reports_like_local(ray_session, tmp_path):
    write_jsonl(tmp_path, rows(24), bad_line_in=0)
    ops = [FailOn(bad=("r9",)), create("filter_turns", min_turns=2), create("dedup_exact")]
    plan = lambda: dc.pipeline(str(tmp_path / "*.jsonl"), schema="MM", on_error="quarantine",
                               batch_size=5).apply(ops)
    rep_ray = plan().write(str(tmp_path / "ray"), executor="ray", max_rows_per_shard=4)
    rep_local = plan().write(str(tmp_path / "local"), executor="local", max_rows_per_shard=4)
    got, want = dc.load(str(tmp_path / "ray")), dc.load(str(tmp_path / "local"))
    assert got.to_arrow().to_pylist() == want.to_arrow().to_pylist()
    strip = lambda rep: [{k: v for k, v in r.items() if k != "seconds"} for r in rep["ops"]]
    assert strip(rep_ray) == strip(rep_local) and len(strip(rep_ray)) == 3
    assert {k: rep_ray[k] for k in ("rows", "quarantined", "invalid_input_rows")} == \
        {k: rep_local[k] for k in ("rows", "quarantined", "invalid_input_rows")} == \
        {"rows": len(want), "quarantined": 2, "invalid_input_rows": 1}  # the failed row and the invalid line
    shards = json.loads((tmp_path / "ray" / "manifest.json").read_text())["shards"]
    assert [s["rows"] for s in shards] == [4] * (len(want) // 4) + ([len(want) % 4] if len(want) % 4 else [])
    assert json.loads((tmp_path / "ray" / "report.json").read_text())["rows"] == len(want)


def test_bad_options_and_evaluators_are_refused(ray_session):
    with pytest.raises(DataCopilotError, match="concurency"):
        get_executor("ray", concurency=2)
    ex = get_executor("ray", resources={"filter_turns": {"gpus": 1}})
    plan = dc.MMDataset.from_rows(rows(4), schema="MM").lazy().apply(create("filter_turns"))
    with pytest.raises(DataCopilotError, match=r"resources\['filter_turns'\].*'gpus'"):
        plan.collect(ex)


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_ray_write_names_hashes_and_lists_shards_as_write_shards_and_local_do(ray_session, tmp_path, fmt):
    from ..io.test_sink import rows as sink_rows
    from ..io.test_sink import shared, three_writes

    shards, local, _ = three_writes(tmp_path, fmt)
    ds = dc.MMDataset.from_rows(sink_rows(23), schema="MM", root=str(tmp_path / "images"))
    ds.lazy(batch_size=3).write(str(tmp_path / "ray"), format=fmt, executor="ray", max_rows_per_shard=5)
    on_ray = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    if fmt == "parquet":  # names, rows, bytes and sha256 of each shard, root, image_paths
        assert shared(on_ray) == shared(local) == shared(shards)
    else:  # an Arrow IPC shard keeps a few bytes of the layout of the slice it was written from (io.sink)
        layout = lambda m: {**shared(m), "shards": [(s["file"], s["rows"]) for s in m["shards"]]}  # noqa: E731
        assert layout(on_ray) == layout(local) == layout(shards)
    assert on_ray["pipeline"]["fingerprint"] == local["pipeline"]["fingerprint"]
    assert dc.load(str(tmp_path / "ray")).to_list() == dc.load(str(tmp_path / "shards")).to_list()
