"""Groupers (``merge_same_image``) across the whole dataset: the same groups whatever the batches or blocks, on
``ds.apply``, the local executor (spilled and read back) and Ray (groups spanning blocks), with every row
accounted for when a row or a merge fails."""

import json
import random
import re

import numpy as np
import pyarrow as pa
import pytest
from datacopilot.operators import create
from datacopilot.engine.grouping import group_ids, layout, take_rows, windows

import datacopilot as dc
from datacopilot.errors import OperatorError
from datacopilot.executors import get_executor
from tests.executors._ops import JoinByLetter
from tests.executors._ray import executor, ray_session  # noqa: F401  (fixtures: "local" / "ray")

from .conftest import ids, last, mm


def scattered(n=120, images=9, seed=4):
    """Rows on ``images`` images in random order, one or two exchanges each, some without an image."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        img = None if i % 13 == 5 else f"img/{rng.randrange(images)}.png"
        turns = [f"<image>\nq{i}?", f"a{i}"] + ([f"more {i}?", f"b{i}"] if i % 4 == 0 else [])
        rows.append(mm(f"r{i}", *turns, image=img))
    return rows


def expected(rows, max_turns=None):
    """The groups, written out the plain way: per image an open group, closed when a row would pass the cap."""
    groups, open_at = [], {}
    for r in rows:
        size = len(r["conversations"]) // 2
        g = open_at.get(r["image"]) if r["image"] else None
        if g is not None and (max_turns is None or groups[g][1] + size <= max_turns):
            groups[g][0].append(r["id"])
            groups[g][1] += size
            continue
        groups.append([[r["id"]], size])
        if r["image"]:
            open_at[r["image"]] = len(groups) - 1
    return ["+".join(g[0]) for g in groups]


def test_group_ids_layout_and_windows():
    sigs = np.array([[5, 2], [5, 2], [0, 1], [5, 1], [7, 3], [5, 2], [7, 1]], np.uint64)
    op = create("merge_same_image")
    assert group_ids(op, sigs).tolist() == [0, 0, 2, 0, 4, 0, 4]
    capped = group_ids(create("merge_same_image", max_turns=4), sigs)
    assert capped.tolist() == [0, 0, 2, 3, 4, 3, 4]  # 2+2 fills the first group; 1+2 the next
    order, offsets = layout(capped)
    assert order.tolist() == [0, 1, 2, 3, 5, 4, 6] and offsets.tolist() == [0, 2, 3, 5, 7]
    assert list(windows(offsets, 3)) == [(0, 2), (2, 3), (3, 4)]
    assert list(windows(offsets, 1)) == [(0, 1), (1, 2), (2, 3), (3, 4)]  # a group never splits


def test_take_rows_reads_batch_by_batch():
    table = pa.concat_tables([pa.table({"x": np.arange(k * 10, k * 10 + 10)}) for k in range(7)])
    idx = np.random.default_rng(1).permutation(70)[:25]
    assert take_rows(table, idx).column("x").to_pylist() == idx.tolist()


@pytest.mark.parametrize("max_turns", [None, 3])
def test_merge_across_batches_and_executors(executor, max_turns):  # noqa: F811
    rows = scattered()
    ds = dc.MMDataset.from_rows(rows, schema="MM")
    want = expected(rows, max_turns)
    op = create("merge_same_image", max_turns=max_turns)
    assert len(want) < len(rows) - 20  # groups really merge
    small = ds.apply(op, batch_size=7)
    assert ids(small) == want
    assert small.to_list() == ds.apply(op, batch_size=1000).to_list()
    ex = get_executor("ray", block_rows=16) if executor == "ray" else executor
    out = dc.pipeline(ds, batch_size=7).apply(op).collect(ex)
    assert out.to_list() == small.to_list()
    rec = last(out)
    assert (rec.rows_in, rec.rows_out, rec.failed) == (len(rows), len(want), 0)
    # a merged row: the first row's image, every exchange in row order, the image placeholder once
    merged = next(r for r in out if r["id"].count("+") >= 2)
    parts = [next(r for r in rows if r["id"] == i) for i in merged["id"].split("+")]
    assert merged["image"]["path"] == parts[0]["image"] and len({p["image"] for p in parts}) == 1
    texts = [t["value"] for t in merged["conversations"]]
    assert texts == [t["value"].replace("<image>\n", "") if k else t["value"]
                     for k, t in enumerate(t for p in parts for t in p["conversations"])]
    assert sum(t.count("<image>") for t in texts) == 1


def test_merge_after_other_operators_and_before_a_dedup(executor):  # noqa: F811
    rows = scattered(60)
    rows[10]["conversations"][1]["value"] = "   "  # an empty answer: filter_empty_turns drops it
    ds = dc.MMDataset.from_rows(rows, schema="MM")
    ops = lambda: [create("clean_whitespace"), create("filter_empty_turns"), create("merge_same_image"),
                   create("dedup_exact")]
    ref = ds.apply(ops(), batch_size=8)
    ex = get_executor("ray", block_rows=8) if executor == "ray" else executor
    out = dc.pipeline(ds, batch_size=8).apply(ops()).collect(ex)
    assert out.to_list() == ref.to_list()
    recs = [(r.op, r.rows_in, r.rows_out, r.dropped, r.failed) for r in out.history()[-4:]]
    assert recs == [(r.op, r.rows_in, r.rows_out, r.dropped, r.failed) for r in ref.history()[-4:]]
    assert recs[2][1:3] == (59, len(expected([r for r in rows if r["id"] != "r10"])))


def test_a_row_that_fails_is_quarantined_the_others_merge(executor):  # noqa: F811
    rows = scattered(40)
    rows[6]["conversations"][1]["from"] = "bot"
    ds = dc.MMDataset.from_rows(rows, schema="MM", validate=False)
    ref = ds.apply(create("merge_same_image"), on_error="quarantine", batch_size=8)
    assert ids(ref) == expected([r for r in rows if r["id"] != "r6"])
    ex = get_executor("ray", block_rows=8) if executor == "ray" else executor
    out = dc.pipeline(ds, batch_size=8, on_error="quarantine").apply(create("merge_same_image")).collect(ex)
    assert out.to_list() == ref.to_list()
    assert (last(out).rows_in, last(out).failed) == (40, 1)
    q = out.quarantine.to_list()
    assert [r["id"] for r in q] == ["r6"] and "conversations[1].from" in q[0]["_error"]
    with pytest.raises(OperatorError, match="r6"):
        dc.pipeline(ds, batch_size=8).apply(create("merge_same_image")).collect(ex)


def test_a_merge_that_fails_fails_its_group_only(executor):  # noqa: F811
    names = ["a1", "b1", "7x", "a2", "c1", "b2", "a3", "c2", "b3", "9y"]
    ds = dc.MMDataset.from_rows([mm(i, "<image>\nq?", "a") for i in names], schema="MM")
    op = JoinByLetter(bad=("b2",))
    ref = ds.apply(op, on_error="quarantine", batch_size=3)
    assert ids(ref) == ["a1+a2+a3", "7x", "c1+c2", "9y"]
    ex = get_executor("ray", block_rows=3) if executor == "ray" else executor
    out = dc.pipeline(ds, batch_size=3, on_error="quarantine").apply(op).collect(ex)
    assert out.to_list() == ref.to_list()
    rec = last(out)
    assert (rec.rows_in, rec.rows_out, rec.failed, rec.counts) == (10, 4, 3, {"merged groups": 2})
    assert sorted(r["id"] for r in out.quarantine) == ["b1", "b2", "b3"]
    assert all("cannot merge b2" in r["_error"] for r in out.quarantine)
    capped = dc.pipeline(ds, batch_size=3).apply(JoinByLetter(cap=2)).collect(ex)
    assert ids(capped) == ["a1+a2", "b1+b2", "7x", "c1+c2", "a3", "b3", "9y"]
    with pytest.raises(OperatorError, match="cannot merge b2"):
        dc.pipeline(ds, batch_size=3).apply(op).collect(ex)


def test_ray_retries_a_merge_task_whose_worker_died(ray_session, tmp_path):  # noqa: F811
    names = [f"{'abc'[k % 3]}{k}" for k in range(30)]
    ds = dc.MMDataset.from_rows([mm(i, "<image>\nq?", "a") for i in names], schema="MM")
    marker = tmp_path / "died"
    out = dc.pipeline(ds, batch_size=4).apply(JoinByLetter(marker=str(marker))).collect(
        get_executor("ray", block_rows=4))
    assert marker.exists()  # a worker really died in a merge
    assert ids(out) == ["+".join(n for n in names if n[0] == c) for c in "abc"]
    assert (last(out).rows_in, last(out).rows_out, last(out).counts) == (30, 3, {"merged groups": 3})


def test_write_streams_through_the_spill_and_reports(executor, tmp_path):  # noqa: F811
    rows = scattered(80)
    src = tmp_path / "in"
    src.mkdir()
    for k in range(4):
        dc.MMDataset.from_rows(rows[k * 20:(k + 1) * 20], schema="MM").write(str(src / f"part{k}.jsonl"))
    pipe = dc.pipeline(sorted(str(p) for p in src.glob("*.jsonl")), schema="MM", batch_size=6)
    pipe = pipe.apply(create("merge_same_image", max_turns=4))
    report = pipe.write(str(tmp_path / "out"), format="arrow", executor=executor)  # Ray: a block per file
    got = dc.load(str(tmp_path / "out"), schema="MM")
    assert ids(got) == expected(rows, 4)
    rec = report["ops"][-1]
    assert (rec["rows_in"], rec["rows_out"]) == (80, len(expected(rows, 4)))
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))


# -- the vectorized merge against a plain per-row reference ----------------------------------------------------
def reference(rows, max_turns=None):
    """merge_same_image on MESSAGES rows as dicts, row by row: group on (images, system turns)."""
    def split(msgs):
        prefix, ex = [], []
        for m in msgs:
            if m["role"] == "user":
                ex.append([m])
            elif ex:
                ex[-1].append(m)
            else:
                prefix.append(m)
        return prefix, ex

    def strip(s):
        return re.sub(r"<image>\n?", "", s).strip() if "<image>" in s else s

    groups, open_at = [], {}
    for r in rows:
        prefix, ex = split(r["messages"])
        key = (repr(r["images"]), repr(prefix)) if r["images"] and ex else None
        g = open_at.get(key) if key else None
        if g is not None and (max_turns is None or groups[g][1] + len(ex) <= max_turns):
            groups[g][0].append((r, ex))
            groups[g][1] += len(ex)
            continue
        groups.append([[(r, ex)], len(ex)])
        if key:
            open_at[key] = len(groups) - 1
    out = []
    for members, _ in groups:
        first = members[0][0]
        msgs = [dict(m) for m in first["messages"]]
        n_first = sum(m["content"].count("<image>") for m in msgs)
        n_later = max([sum(m["content"].count("<image>") for e in ex for m in e) for _, ex in members[1:]],
                      default=0)
        for _, ex in members[1:]:
            msgs += [{**m, "content": strip(m["content"])} for e in ex for m in e]
        if len(members) > 1 and n_first == 0 and n_later:
            q = next(m for m in msgs if m["role"] == "user")
            q["content"] = "<image>\n" * n_later + q["content"]
        out.append({**first, "messages": msgs, "id": "+".join(r["id"] for r, _ in members)})
    return out


def random_rows(seed, n=150):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        msgs = [{"role": "system", "content": rng.choice(["Be brief.", "Be kind."])}] if rng.random() < 0.3 else []
        if rng.random() < 0.05:
            msgs.append({"role": "assistant", "content": "Hello."})  # no question: stays alone
        else:
            for e in range(rng.randint(1, 3)):
                q = f"q{i}.{e}?"
                where = rng.random()
                if e == 0 and where < 0.5:
                    q = "<image>\n" + q
                elif e == 0 and where < 0.6:
                    q = q + " <image>"
                elif where < 0.05:
                    q = "<image>\n<image>\n" + q
                msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": f"a{i}.{e}"}]
        k = rng.randrange(6)
        images = ([] if k == 5 else [{"path": f"img/{k}.png", "bytes": None}] if k < 3
                  else [{"path": "img/x.png", "bytes": bytes([k])}] + ([{"path": "img/y.png", "bytes": None}]
                                                                       if k == 4 else []))
        rows.append({"id": f"r{i}", "messages": msgs, "images": images, "meta": None})
    return rows


@pytest.mark.parametrize("seed", range(6))
def test_vectorized_merge_equals_the_row_by_row_reference(seed):
    rows = random_rows(seed)
    ds = dc.MMDataset.from_rows(rows, schema="MESSAGES")
    cap = [None, 2, 4][seed % 3]
    got = ds.apply(create("merge_same_image", max_turns=cap), batch_size=[1000, 9, 1][seed % 3]).to_list()
    assert got == reference(rows, cap)


def test_a_yaml_pipeline_merges_from_the_cli(tmp_path):
    from click.testing import CliRunner

    from datacopilot.cli import main

    rows = scattered(60)
    (tmp_path / "in").mkdir()
    for k in range(3):
        dc.MMDataset.from_rows(rows[k * 20:(k + 1) * 20], schema="MM").write(str(tmp_path / "in" / f"p{k}.jsonl"))
    (tmp_path / "p.yaml").write_text("source: {paths: in/*.jsonl, schema: MM}\nbatch_size: 8\n"
                                     "ops:\n  - {name: merge_same_image, max_turns: 3}\noutput: {dir: out}\n")
    res = CliRunner().invoke(main, ["run", str(tmp_path / "p.yaml")])
    assert res.exit_code == 0, res.output
    assert ids(dc.load(str(tmp_path / "out"), schema="MM")) == expected(rows, 3)
    assert "merge_same_image: in 60" in res.output
    res = CliRunner().invoke(main, ["ops", "--kind", "group"])
    assert res.exit_code == 0 and "merge_same_image [group](max_turns=" in res.output


# -- the local executor's spill, read back out of order through buckets --------------------------------------
def test_spill_reorders_through_buckets():
    from datacopilot.executors.spill import Spill

    rng = np.random.default_rng(3)
    table = dc.MMDataset.from_rows(scattered(500), schema="MM").to_arrow()
    order = rng.permutation(500)
    offsets = np.unique(np.concatenate([[0, 500], rng.integers(1, 500, 120)]))
    for batch_rows, bucket_rows in ((0, 40), (64, 300), (64, 10_000)):
        spill = Spill("dc-test-", batch_rows=batch_rows)
        try:
            for k in range(0, 500, 37):
                spill.add(table.slice(k, 37))
            assert spill.finish() and spill.rows == 500
            got = list(spill.reordered(order, offsets, bucket_rows))
        finally:
            spill.close()
        assert len(got) > 1 or bucket_rows > 500
        assert pa.concat_tables([t for t, _ in got]).to_pylist() == table.take(order).to_pylist()
        sizes = [int(x) for _, o in got for x in np.diff(o)]
        assert sizes == np.diff(offsets).tolist() and all(o[0] == 0 and o[-1] == t.num_rows for t, o in got)


@pytest.mark.parametrize("ops", [lambda: [create("merge_same_image", max_turns=3)],
                                 lambda: [create("shuffle", seed=4), create("merge_same_image")],
                                 lambda: [create("sort", by="image.path", descending=True)]],
                         ids=["merge", "shuffle+merge", "sort"])
def test_local_executor_with_many_buckets(monkeypatch, ops):
    import datacopilot.executors.spill as spill

    monkeypatch.setattr(spill, "BATCH_ROWS", 16)  # 120 rows: spill batches and buckets of 16 rows
    ds = dc.MMDataset.from_rows(scattered(120), schema="MM")
    out = dc.pipeline(ds, batch_size=5).apply(ops()).collect()
    assert out.to_list() == ds.apply(ops(), batch_size=5).to_list()
