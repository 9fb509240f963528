"""Shared data for the pipeline tests: LLaVA-style rows with duplicates, short conversations and noise."""

import json

import pytest

import datacopilot as dc


def row(k: int) -> dict:
    """Row ``k``: every 7th has one turn, texts repeat every 40 rows (exact duplicates across files)."""
    turns = [{"from": "human", "value": f"what  is   item {k % 40}?"}, {"from": "gpt", "value": f"it is {k % 40}"}]
    if k % 7 == 0:
        turns = turns[:1]
    return {"id": f"r{k}", "conversations": turns}


def write_jsonl(path, rows) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


@pytest.fixture
def files(tmp_path):
    """Four jsonl files of 60 rows each."""
    d = tmp_path / "in"
    d.mkdir()
    return [write_jsonl(d / f"part{u}.jsonl", [row(u * 60 + i) for i in range(60)]) for u in range(4)]


@pytest.fixture
def ds():
    return dc.MMDataset.from_rows([row(k) for k in range(150)], schema="MM")


from tests.executors._ray import executor, ray_session  # noqa: F401  (H12: "local" / "ray" for each test)
