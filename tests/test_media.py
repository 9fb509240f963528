"""Embedding images into rows, and image paths surviving a write to another directory."""

import os

import polars as pl
import pytest
from PIL import Image as PILImage

import datacopilot as dc
from datacopilot.errors import OperatorError, ValidationError


def _turns(q, a):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


@pytest.fixture
def data(tmp_path):
    (tmp_path / "img").mkdir()
    for i, color in enumerate(["red", "blue"]):
        PILImage.new("RGB", (8, 6), color).save(tmp_path / "img" / f"{i}.png")
    rows = [{"id": f"r{i}", "image": f"img/{i}.png", "conversations": _turns("<image>", f"a {i}")} for i in range(2)]
    rows.append({"id": "gone", "image": "img/missing.png", "conversations": _turns("<image>", "x")})
    return dc.MMDataset.from_rows(rows, schema="MM", root=str(tmp_path))


def test_embed_images_reads_bytes_and_names_missing(data):
    with pytest.raises(OperatorError) as ei:
        data.embed_images()
    assert "id 'gone'" in str(ei.value) and "img/missing.png" in str(ei.value)
    ds = data.embed_images(on_error="quarantine")
    assert len(ds) == 2 and len(ds.quarantine) == 1 and ds.quarantine[0]["id"] == "gone"
    assert ds.history()[-1].failed == 1
    assert ds[0]["image"]["bytes"][:4] == b"\x89PNG"
    assert ds.image(1).getpixel((0, 0)) == (0, 0, 255)


def test_written_elsewhere_paths_are_kept_and_still_resolve(data, tmp_path):
    ds = data[:2]
    out = tmp_path / "deep" / "out"
    manifest = ds.write_shards(str(out), format="parquet")
    assert manifest["root"] == str(tmp_path) and manifest["image_paths"] == {"mode": "keep", "rewritten": 0}
    back = dc.load(str(out))
    assert back[0]["image"]["path"] == "img/0.png" and back.root == str(tmp_path)
    assert back.image(0).size == (8, 6)
    ds.write(str(tmp_path / "x" / "one.jsonl"))  # kept as is: a jsonl cannot record its root, so it is given
    assert dc.load(str(tmp_path / "x" / "one.jsonl"), root=str(tmp_path)).image(1).getpixel((0, 0)) == (0, 0, 255)
    ds.write(str(tmp_path / "x" / "two.jsonl"), image_paths="relative")
    again = dc.load(str(tmp_path / "x" / "two.jsonl"))
    assert again[1]["image"]["path"] == os.path.join("..", "img", "1.png")
    assert again.image(1).getpixel((0, 0)) == (0, 0, 255)


def test_in_memory_loads_validate(tmp_path):
    df = pl.DataFrame({"id": ["a", "b"], "conversations": [[{"from": "human", "value": "q"}],
                                                             [{"from": "bot", "value": "q"}]]})
    with pytest.raises(ValidationError) as ei:
        dc.load(df, schema="MM")
    assert "<DataFrame> row 1: conversations[0].from: expected one of 'human', 'gpt', got 'bot'" in str(ei.value)
    ds = dc.load(df, schema="MM", invalid="quarantine")
    assert len(ds) == 1 and len(ds.quarantine) == 1


def test_step_names_label_history(data):
    ds = data.filter(pl.col("id") != "gone", name="drop gone").map(lambda r: r, name="identity")
    assert [r.op for r in ds.history()] == ["drop gone", "identity"]
    assert ds.history()[0].dropped == {"drop gone": 1}


def test_missing_images_named_by_row_and_cli(data, tmp_path):
    from click.testing import CliRunner

    from datacopilot.cli import main
    from datacopilot.media import missing_images

    assert missing_images(data) == [f"row 2 (id 'gone'): image: image 'img/missing.png' not found under {tmp_path}"]
    assert missing_images(data[:2]) == []
    path = str(tmp_path / "d.jsonl")
    data.write(path)
    res = CliRunner().invoke(main, ["validate", path])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["validate", path, "--images"])
    assert res.exit_code == 1 and "id 'gone'" in res.output and "img/missing.png" in res.output
    assert "1 invalid row(s) of 3" in res.output
