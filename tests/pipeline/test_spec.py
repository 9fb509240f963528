"""Pipelines as data: YAML/JSON specs, operators from the registry, clear errors for bad specs."""

import json

import pytest
from datacopilot.operators import create

import datacopilot as dc
from datacopilot.errors import DataCopilotError, InputError, OperatorError
from datacopilot.pipeline import Pipeline

YAML = """
source: {paths: "in/*.jsonl", schema: MM}
on_error: quarantine
batch_size: 32
ops:
  - clean_whitespace
  - {name: filter_turns, min_turns: 2}
  - dedup_exact
output: {dir: out, max_rows_per_shard: 50}
"""


def test_yaml_paths_resolve_against_the_file(files, tmp_path):
    spec = tmp_path / "p.yaml"
    spec.write_text(YAML)
    p = Pipeline.from_yaml(str(spec))
    assert [op.name for op in p.ops] == ["clean_whitespace", "filter_turns", "dedup_exact"]
    assert p.ops[1].params()["min_turns"] == 2 and p.on_error == "quarantine" and p.batch_size == 32
    report = p.write()
    assert (tmp_path / "out" / "report.json").exists()
    ref = dc.load(files, schema="MM").apply(list(p.ops))
    assert report["rows"] == len(ref) and dc.load(str(tmp_path / "out")).to_list() == ref.to_list()


def test_spec_round_trip(files, tmp_path):
    p = dc.pipeline(files, schema="MM", on_error="skip", batch_size=8).apply(
        [create("filter_turns", min_turns=2), create("dedup_near_text", threshold=0.7)])
    spec = p.to_spec()
    assert spec["ops"][1] == {"name": "dedup_near_text", **create("dedup_near_text", threshold=0.7).params()}
    again = Pipeline.from_spec(json.loads(json.dumps(spec)))
    assert again.to_spec() == spec
    assert again.collect().to_list() == p.collect().to_list()
    path = tmp_path / "p.yaml"
    p.to_yaml(str(path))
    assert Pipeline.from_yaml(str(path)).to_spec()["ops"] == spec["ops"]


def test_dataset_pipelines_have_no_spec(ds):
    with pytest.raises(DataCopilotError, match="no spec"):
        ds.lazy().to_spec()


@pytest.mark.parametrize("spec, message", [
    ({"ops": []}, "`source` is required"),
    ({"source": "x.jsonl", "opps": []}, "unknown key.*'opps'"),
    ({"source": {"path": "x.jsonl"}}, "mapping with `paths`"),
    ({"source": "IN", "ops": [{"min_turns": 2}]}, r"ops\[0\]"),
    ({"source": "IN", "ops": ["no_such_op"]}, "unknown operator 'no_such_op'"),
    ({"source": "IN", "ops": [{"name": "filter_turns", "min_turn": 2}]}, r"ops\[0\] \(filter_turns\)"),
    ({"source": "IN", "on_error": "ignore"}, "on_error"),
    ({"source": "IN", "output": {"dirs": "o"}}, "output: unknown key"),
])
def test_bad_specs(files, spec, message):
    if spec.get("source") == "IN":
        spec = {**spec, "source": files}
    with pytest.raises(DataCopilotError, match=message):
        Pipeline.from_spec(spec)


def test_bad_parameters_and_files(files, tmp_path):
    with pytest.raises(OperatorError, match="min_turns"):
        Pipeline.from_spec({"source": files, "ops": [{"name": "filter_turns", "min_turns": -1}]})
    with pytest.raises(InputError, match="no such file"):
        Pipeline.from_yaml(str(tmp_path / "missing.yaml"))
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(InputError, match="a mapping"):
        Pipeline.from_yaml(str(tmp_path / "list.yaml"))
    with pytest.raises(InputError, match="nope"):
        Pipeline.from_spec({"source": str(tmp_path / "nope.jsonl")})
