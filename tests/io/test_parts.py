"""A file read part by part (``Source.parts``, then each part's ``Source.batches`` in order) gives exactly what a
read of the whole file gives: the same rows, the same invalid rows with the same file, line or row and message."""

from __future__ import annotations

import gzip
import io
import json

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

import datacopilot as dc
from datacopilot.errors import DataCopilotError
from datacopilot.io import jsonl as jsonl_io
from datacopilot.io import screen
from datacopilot.io import line_blocks
from datacopilot.io.line_blocks import Block, LineBlocks, Long
from datacopilot.io.parts import Part, counted, ranges
from datacopilot.source import Source


def mm(k: int, role: str = "human") -> dict:
    return {"id": f"r{k}", "conversations": [{"from": role, "value": f"question {k} " + "w" * (k % 13)},
                                             {"from": "gpt", "value": f"answer {k}"}]}


def whole(path: str, schema="MM", invalid="quarantine", batch_size=8):
    src = Source.from_paths(path, schema=schema)
    tables = list(src.batches(path, batch_size, invalid))
    return tables, src.bad, src.schema


def in_parts(path: str, target: int, schema="MM", invalid="quarantine", batch_size=8):
    """Read as the Ray executor does, in this process: split, count, read each part in order, the schema the
    first part leaves passed on."""
    src = Source.from_paths(path, schema=schema)
    parts = src.parts(path, target, batch_size)
    if any(p.before is None for p in parts):
        parts = counted(parts, [src.count(path, p) for p in parts[:-1]])
    tables = []
    for p in parts or [None]:
        tables += src.batches(path, batch_size, invalid, p)
    return tables, src.bad, src.schema, parts


def rows_of(tables):
    return pa.concat_tables(tables).to_pylist() if tables else []


def same(path: str, target: int, schema="MM", invalid="quarantine", batch_size=8, min_parts=3):
    want, want_bad, want_schema = whole(path, schema, invalid, batch_size)
    got, got_bad, got_schema, parts = in_parts(path, target, schema, invalid, batch_size)
    assert len(parts) >= min_parts
    assert rows_of(got) == rows_of(want)
    assert got_bad == want_bad
    assert (got_schema.name if got_schema else None) == (want_schema.name if want_schema else None)
    return parts, got_bad


def write_lines(path, lines: list[bytes], end: bytes = b"\n", last_newline: bool = True) -> str:
    data = end.join(lines) + (end if last_newline and lines else b"")
    path.write_bytes(data)
    return str(path)


def test_ranges_start_at_multiples_of_the_step():
    assert ranges(100, 30, 16) == [(0, 32), (32, 64), (64, 96), (96, 100)]
    assert ranges(0, 30, 16) == [(0, 0)]


def test_counted_is_a_prefix_sum_of_the_parts_before():
    parts = [Part(0, 0, 4, 0), Part(1, 4, 8, None), Part(2, 8, 9, None)]
    assert [p.before for p in counted(parts, [3, 5])] == [0, 3, 8]
    with pytest.raises(Exception, match="2 counts for 2 parts"):
        counted(parts[:2], [1, 2])


def test_line_blocks_of_ranges_are_the_blocks_of_the_whole_file():
    data = b"".join(b"x" * (k % 11) + b"\n" for k in range(200)) + b"tail without newline"
    whole_blocks = [(b.offset, b.data) for b in LineBlocks(io.BytesIO(data), 0, None, 32).blocks()]
    assert b"".join(d for _, d in whole_blocks) == data
    assert all(off == 0 or data[off - 1:off] == b"\n" for off, _ in whole_blocks)
    got = []
    for a, b in ranges(len(data), 96, 32):
        got += [(x.offset, x.data) for x in LineBlocks(io.BytesIO(data), a, b, 32).blocks()]
    assert got == whole_blocks


def test_a_range_inside_one_long_line_owns_no_line():
    data = b"a\n" + b"y" * 100 + b"\nb\n"
    r = LineBlocks(io.BytesIO(data), 16, 32, 16)
    assert list(r.blocks()) == []
    r = LineBlocks(io.BytesIO(data), 96, 112, 16)
    assert r.skipped == 1 and [(b.offset, b.data) for b in r.blocks()] == [(103, b"b\n")]


def test_over_long_line_comes_as_long_not_held(monkeypatch):
    monkeypatch.setattr(screen, "MAX_LINE_BYTES", 50)
    monkeypatch.setattr(screen, "QUARANTINE_TEXT_BYTES", 10)
    monkeypatch.setattr(line_blocks, "TAIL", 16)
    data = b"ab\n" + b"z" * 200 + b"\ncd\n"
    got = list(LineBlocks(io.BytesIO(data), 0, None, 8).blocks())
    assert got == [Block(0, b"ab\n"), Long(3, 200, b"z" * 10), Block(204, b"cd\n")]


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of lines of 256 bytes, for the whole read too: a whole read's block holds the invalid lines of
    every kind in one list (the screen's, then the parser's, then the validator's), so only reads in the same
    blocks list them in the same order; a split's parts (``target`` a multiple of it) are read in its blocks."""
    monkeypatch.setattr(jsonl_io, "BLOCK_BYTES", 256)


def test_jsonl_split_in_many_parts_gives_the_rows_and_lines_of_the_whole_read(tmp_path, small_blocks):
    lines = [json.dumps(mm(k, "bot" if k in (7, 55, 160) else "human")).encode() for k in range(200)]
    lines[30] = b'{"id": "r30", "conversations": [ broken'
    lines[90] = b""  # a blank line: the line numbers after it still count it
    path = write_lines(tmp_path / "a.jsonl", lines)
    parts, bad = same(path, 512)
    assert parts[0].before == 0 and all(p.step == 256 for p in parts)
    assert [w for w, _, _ in bad] == [f"{path}:{n}" for n in (8, 31, 56, 161)]
    assert "conversations[0].from" in bad[2][1] or "bot" in bad[2][1]


@pytest.mark.parametrize("end", [b"\n", b"\r\n"])
@pytest.mark.parametrize("last_newline", [True, False])
def test_jsonl_crlf_and_a_last_line_without_newline(tmp_path, end, last_newline):
    lines = [json.dumps(mm(k, "bot" if k == 98 else "human")).encode() for k in range(100)]
    path = write_lines(tmp_path / "a.jsonl", lines, end, last_newline)
    parts, bad = same(path, 256)
    assert [w for w, _, _ in bad] == [f"{path}:99"]
    got, _, _, _ = in_parts(path, 256)
    assert sum(t.num_rows for t in got) == 99


def test_jsonl_empty_and_small_files_are_one_part(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_bytes(b"")
    assert Source.from_paths(str(empty), schema="MM").parts(str(empty), 1, 8) == []
    assert whole(str(empty))[0] == in_parts(str(empty), 1)[0] == []
    small = write_lines(tmp_path / "s.jsonl", [json.dumps(mm(1)).encode()])
    assert Source.from_paths(small, schema="MM").parts(small, 1 << 20, 8) == []


def test_jsonl_compressed_is_one_part(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(b"".join(json.dumps(mm(k)).encode() + b"\n" for k in range(500))))
    assert jsonl_io.split_jsonl(str(path), 64, 8) == []


def test_jsonl_raise_names_the_same_line(tmp_path):
    lines = [json.dumps(mm(k, "bot" if k == 120 else "human")).encode() for k in range(150)]
    path = write_lines(tmp_path / "a.jsonl", lines)
    with pytest.raises(DataCopilotError) as want:
        whole(path, invalid="raise")
    with pytest.raises(DataCopilotError) as got:
        in_parts(path, 256, invalid="raise")
    assert str(got.value) == str(want.value) and f"{path}:121" in str(got.value)


def test_jsonl_screened_lines_keep_line_and_byte_offset(tmp_path, small_blocks):
    lines = [json.dumps(mm(k)).encode() for k in range(120)]
    lines[77] = b'{"id": "r77", "conversations": [{"from": "human", "value": "\xff"}]}'
    lines[20] = b"[" * 600 + b"]" * 600
    path = write_lines(tmp_path / "a.jsonl", lines)
    _, bad = same(path, 256)
    assert [w for w, _, _ in bad] == [f"{path}:21", f"{path}:78"]
    assert "byte offset" in bad[1][1]


def test_jsonl_over_long_line_across_parts(tmp_path, monkeypatch, small_blocks):
    monkeypatch.setattr(screen, "MAX_LINE_BYTES", 700)
    lines = [json.dumps(mm(k)).encode() for k in range(60)]
    lines[25] = b'{"id": "long", "x": "' + b"q" * 3000 + b'"}'
    path = write_lines(tmp_path / "a.jsonl", lines)
    _, bad = same(path, 256, min_parts=5)
    assert [w for w, _, _ in bad] == [f"{path}:26"] and "line of 3023 bytes" in bad[0][1]


def test_jsonl_schema_detected_by_the_first_part(tmp_path):
    lines = [json.dumps(mm(k)).encode() for k in range(200)]
    path = write_lines(tmp_path / "a.jsonl", lines)
    same(path, 512, schema=None)


def test_jsonl_url_split(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    lines = [json.dumps(mm(k, "bot" if k == 150 else "human")).encode() for k in range(200)]
    data = b"\n".join(lines) + b"\n"
    with fsspec.open("memory://split/a.jsonl", "wb") as f:
        f.write(data)
    parts, bad = same("memory://split/a.jsonl", 1024)
    assert [w for w, _, _ in bad] == ["memory://split/a.jsonl:151"]


def with_bad_roles(n: int, bad) -> pa.Table:
    """``n`` MM rows as a table, the rows in ``bad`` with the role 'bot' (invalid in MM)."""
    table = dc.MMDataset.from_rows([mm(k) for k in range(n)], schema="MM").to_arrow()
    conv = table.column("conversations").to_pylist()
    for k in bad:
        conv[k][0]["from"] = "bot"
    return table.set_column(table.column_names.index("conversations"), "conversations",
                            pa.array(conv, table.schema.field("conversations").type))


def parquet_file(tmp_path, n=500, group=37, bad=(3, 200, 480)) -> str:
    table = with_bad_roles(n, bad)
    path = str(tmp_path / "a.parquet")
    pq.write_table(table, path, row_group_size=group)
    return path


def test_parquet_split_by_row_groups_at_batch_multiples(tmp_path):
    path = parquet_file(tmp_path)
    parts, bad = same(path, 2000, batch_size=10)
    assert all(p.start % 10 == 0 and p.before == p.start for p in parts)  # 10: the rows per batch
    assert [w for w, _, _ in bad] == [f"{path}: row {k}" for k in (3, 200, 480)]
    same(path, 2000, schema=None, batch_size=64)


def ipc_file(tmp_path, n=500, chunk=41, stream=False) -> str:
    table = with_bad_roles(n, (2, 333))
    path = str(tmp_path / "a.arrow")
    with pa.OSFile(path, "wb") as f:
        w = (ipc.new_stream if stream else ipc.new_file)(f, table.schema)
        w.write_table(table, max_chunksize=chunk)
        w.close()
    return path


def test_ipc_split_by_record_batches(tmp_path):
    path = ipc_file(tmp_path)
    parts, bad = same(path, 4000, batch_size=16)
    assert parts[0].start == 0 and parts[-1].end == 13  # 500 rows in record batches of 41
    assert [w for w, _, _ in bad] == [f"{path}: row {k}" for k in (2, 333)]
    same(path, 4000, schema=None)


def test_ipc_stream_is_one_part(tmp_path):
    path = ipc_file(tmp_path, stream=True)
    assert Source.from_paths(path, schema="MM").parts(path, 100, 8) == []


def test_ipc_and_parquet_urls_split(tmp_path):
    """A URL's IPC batches are cut by count and their rows counted per part; a URL's parquet footer read."""
    fsspec = pytest.importorskip("fsspec")
    for name in ("a.arrow", "a.parquet"):
        local = ipc_file(tmp_path) if name == "a.arrow" else parquet_file(tmp_path, bad=(2, 333))
        url = f"memory://split-urls/{name}"
        with open(local, "rb") as src, fsspec.open(url, "wb") as f:
            f.write(src.read())
        parts, bad = same(url, 4000, batch_size=16)
        assert [w for w, _, _ in bad] == [f"{url}: row {k}" for k in (2, 333)]
        if name == "a.arrow":  # a URL's batch sizes are not read by the split: the parts are counted
            assert Source.from_paths(url, schema="MM").parts(url, 4000, 16)[1].before is None
            assert parts[1].before == parts[1].start * 41


def test_jsonl_mixed_ids_and_numbers_across_parts(tmp_path, small_blocks):
    """Ids that are integers in some blocks and strings in others, a number an int in some and a float in others:
    the rows, types and values of the whole read, block by block (parts are read in the whole read's blocks: a
    block's table types its ids by what that block holds)."""
    from datacopilot.schemas.arrow_build import concat_tables

    lines = []
    for k in range(300):
        row = mm(k)
        row["id"] = k if k < 150 else f"s{k}"
        row["score"] = k if k < 200 else k + 0.5
        lines.append(json.dumps(row).encode())
    path = write_lines(tmp_path / "a.jsonl", lines)
    for schema in (None, "MM"):
        want, _, _ = whole(path, schema)
        got, _, _, parts = in_parts(path, 1024, schema)
        assert len(parts) > 5
        assert [t.schema for t in got] == [t.schema for t in want]
        a, b = concat_tables(got), concat_tables(want)
        assert a.to_pylist() == b.to_pylist() and a.schema == b.schema


def test_line_blocks_take_short_reads():
    """A file object may give fewer bytes than asked before its end (a raw stream): nothing is lost."""
    class Short(io.BytesIO):
        def read(self, n=-1):
            return super().read(min(n, 7) if n is not None and n >= 0 else 7)

    data = b"".join(b"line %d\n" % k for k in range(100))
    assert b"".join(b.data for b in LineBlocks(Short(data), 0, None, 64).blocks()) == data
    got = b""
    for a, b in ranges(len(data), 128, 64):
        got += b"".join(x.data for x in LineBlocks(Short(data), a, b, 64).blocks())
    assert got == data


def test_line_blocks_of_a_stream_that_cannot_seek_are_those_of_a_file_that_can():
    """A seekable file's block is one read past its bound, the bytes after its last line read again with the next
    block; a stream that cannot seek carries them over instead: the same blocks either way, any range."""
    class Stream(io.BytesIO):
        def seekable(self):
            return False

    data = b"".join(b"line %d %s\n" % (k, b"x" * (k % 37)) for k in range(300))
    for step in (16, 64, 100):
        want = [(b.offset, b.data) for b in LineBlocks(Stream(data), 0, None, step).blocks()]
        assert [(b.offset, b.data) for b in LineBlocks(io.BytesIO(data), 0, None, step).blocks()] == want
        assert b"".join(d for _, d in want) == data
