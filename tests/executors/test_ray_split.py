"""Files read on Ray in parts (``RayOptions.split_bytes``: jsonl byte ranges, parquet row groups, Arrow IPC record
batches, a task each) give the rows, order, invalid rows (file and line or row) and accounting of one task per
file, and of the local executor."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from datacopilot.operators import create

import datacopilot as dc
from datacopilot.errors import DataCopilotError
from datacopilot.executors.ray import RayOptions, run_ops_on_ray
from datacopilot.source import Source
from tests._same import assert_same_run

TINY = 2048  # bytes per part: a file of a few hundred rows is read in many parts
BAD_ROLE = {7, 133, 298}  # rows whose first turn says 'bot' (invalid in MM)


def mm(k: int, bad=BAD_ROLE) -> dict:
    role = "bot" if k in bad else "human"
    return {"id": f"r{k}", "conversations": [{"from": role, "value": f"question {k}  " + "w" * (k % 13)},
                                             {"from": "gpt", "value": f"answer {k % 40}"}]}


def ops():
    return [create("clean_whitespace"), create("filter_turns", min_turns=2), create("dedup_exact")]


def jsonl(path, n=320, end=b"\n", last_newline=True, broken=(), bad=BAD_ROLE) -> str:
    """``n`` MM lines, the rows in BAD_ROLE invalid; or, given ``broken`` line indices, those lines broken JSON
    and no other invalid (a whole read lists a block's broken lines before its invalid rows, so with both kinds
    only parts read in the whole read's blocks list them in its order: split_bytes a multiple of
    jsonl.BLOCK_BYTES)."""
    lines = [json.dumps(mm(k, () if broken else bad)).encode() for k in range(n)]
    for k in broken:
        lines[k] = b'{"id": "x", "conversations": [ not json'
    path.write_bytes(end.join(lines) + (end if last_newline else b""))
    return str(path)


def run(paths, split_bytes, on_error="quarantine", schema="MM", block_rows=16):
    """(rows, records, quarantine) of a Ray run and the invalid input rows its source met."""
    src = Source.from_paths(paths, schema=schema)
    got = run_ops_on_ray(src, ops(), on_error, batch_size=8,
                         options=RayOptions(block_rows=block_rows, split_bytes=split_bytes))
    return got, src.bad


def local(paths, schema="MM"):
    """The local executor's (rows, records, quarantine) and invalid input rows, over the same files."""
    p = dc.pipeline(paths, ops(), schema=schema, on_error="quarantine", batch_size=8)
    out = p.collect()
    return out, p.source.bad


def parts_of(path: str, target: int, schema="MM", batch_size=16) -> int:
    return len(Source.from_paths(path, schema=schema).parts(path, target, batch_size))


def check_same(paths, split_bytes=TINY, schema="MM"):
    split, bad = run(paths, split_bytes, schema=schema)
    whole, whole_bad = run(paths, None, schema=schema)
    assert_same_run(split, whole)
    assert bad == whole_bad
    out, local_bad = local(paths, schema)
    assert split[0].to_pylist() == out.to_arrow().to_pylist()
    assert bad == local_bad
    return split, bad


def test_jsonl_in_many_parts_same_rows_and_invalid_lines(ray_session, tmp_path):
    path = jsonl(tmp_path / "a.jsonl")
    assert parts_of(path, TINY) >= 10
    (table, _, _), bad = check_same(path)
    assert table.num_rows > 250
    assert [w for w, _, _ in bad] == [f"{path}:{k + 1}" for k in sorted(BAD_ROLE)]


def test_jsonl_broken_lines_named_by_line(ray_session, tmp_path):
    path = jsonl(tmp_path / "a.jsonl", broken=(0, 150, 151, 319))
    _, bad = check_same(path)
    assert [w for w, _, _ in bad] == [f"{path}:{k}" for k in (1, 151, 152, 320)]


def test_jsonl_crlf_and_last_line_without_newline(ray_session, tmp_path):
    path = jsonl(tmp_path / "a.jsonl", end=b"\r\n", last_newline=False)
    (table, _, _), _ = check_same(path)
    assert "r319" in table.column("id").to_pylist()


def test_several_files_with_an_empty_one_keep_file_order(ray_session, tmp_path):
    a = jsonl(tmp_path / "a.jsonl")
    (tmp_path / "b.jsonl").write_bytes(b"")
    c = jsonl(tmp_path / "c.jsonl", n=40)
    (table, _, _), bad = check_same([a, str(tmp_path / "b.jsonl"), c])
    assert [w.rsplit(":", 1)[0] for w, _, _ in bad] == [a, a, a, c]


def test_jsonl_schema_detected_by_the_first_part(ray_session, tmp_path):
    path = jsonl(tmp_path / "a.jsonl")
    check_same(path, schema=None)


def test_jsonl_raise_names_the_same_line(ray_session, tmp_path):
    """One invalid line (a raised error lists the invalid lines of its block: with several, only parts read in
    the whole read's blocks list the same ones)."""
    path = jsonl(tmp_path / "a.jsonl", bad=(250,))
    with pytest.raises(DataCopilotError) as whole:
        run(path, None, on_error="raise")
    with pytest.raises(DataCopilotError) as split:
        run(path, TINY, on_error="raise")
    assert type(split.value) is type(whole.value) and str(split.value) == str(whole.value)
    assert str(split.value).startswith(f"1 invalid row(s):\n{path}:251: conversations[0].from")


def roles_table(n: int) -> pa.Table:
    return dc.MMDataset.from_rows([{**mm(k), "conversations": [{"from": "human", "value": f"q {k}  x"},
                                                               {"from": "gpt", "value": f"a {k % 40}"}]}
                                   for k in range(n)], schema="MM").to_arrow()


def with_bad_roles(table: pa.Table) -> pa.Table:
    conv = table.column("conversations").to_pylist()
    for k in BAD_ROLE:
        conv[k][0]["from"] = "bot"
    return table.set_column(table.column_names.index("conversations"), "conversations",
                            pa.array(conv, table.schema.field("conversations").type))


def test_parquet_row_groups_read_in_parts(ray_session, tmp_path):
    path = str(tmp_path / "a.parquet")
    pq.write_table(with_bad_roles(roles_table(320)), path, row_group_size=23)
    assert parts_of(path, TINY) >= 4
    _, bad = check_same(path)
    assert [w for w, _, _ in bad] == [f"{path}: row {k}" for k in sorted(BAD_ROLE)]
    check_same(path, schema=None)


def test_ipc_record_batches_read_in_parts(ray_session, tmp_path):
    path = str(tmp_path / "a.arrow")
    table = with_bad_roles(roles_table(320))
    with pa.OSFile(path, "wb") as f, ipc.new_file(f, table.schema) as w:
        w.write_table(table, max_chunksize=19)
    assert parts_of(path, TINY) >= 4
    _, bad = check_same(path)
    assert [w for w, _, _ in bad] == [f"{path}: row {k}" for k in sorted(BAD_ROLE)]
    check_same(path, schema=None)


def test_split_bytes_must_be_positive():
    with pytest.raises(DataCopilotError, match="`split_bytes` must be a positive integer or None, got 0"):
        RayOptions(split_bytes=0)
