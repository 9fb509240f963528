"""Image paths on pipeline writes: kept as they are by default (the manifest records their root), rewritten
``relative`` or ``absolute`` when asked (in the Ray tasks on Ray, shard by shard) and said so; the YAML key and
``datacopilot run --image-paths``; resume refuses another ``image_paths``; sources in several directories warn
as ``dc.load`` does. Real files: tiny PNGs in subfolders of an image folder away from the data (LLaVA's
``--image_folder``), read back from another working directory."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings

import pytest
from click.testing import CliRunner
from datacopilot.operators import create
from PIL import Image as PILImage

import datacopilot as dc
from datacopilot.cli import main
from datacopilot.errors import DataCopilotError, InputError
from datacopilot.media import ImagePathWarning
from datacopilot.pipeline import Pipeline

from ._ops import KillAt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZES = {"cats/0.png": (3, 2), "cats/1.png": (4, 2), "dogs/2.png": (5, 2), "dogs/3.png": (6, 2)}


def _rows(names):
    return [{"id": f"r{n[-5]}", "image": n, "conversations": [{"from": "human", "value": "<image>\nwhat  is it?"},
                                                              {"from": "gpt", "value": n.split("/")[0]}]}
            for n in names] + [{"id": "text", "conversations": [{"from": "human", "value": "hi"},
                                                                {"from": "gpt", "value": "hello"}]}]


def _jsonl(path, rows) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _pngs(folder, names):
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        PILImage.new("RGB", SIZES[name], "red").save(folder / name)
        assert (folder / name).read_bytes()[:4] == b"\x89PNG"


@pytest.fixture
def tree(tmp_path):
    """``tree/images/{cats,dogs}/*.png`` and two jsonl files under ``tree/data/`` naming them relative to the
    image folder; an empty ``elsewhere/`` to read outputs back from."""
    t = tmp_path / "tree"
    _pngs(t / "images", SIZES)
    files = [_jsonl(t / "data" / "p0.jsonl", _rows(["cats/0.png", "cats/1.png"])),
             _jsonl(t / "data" / "p1.jsonl", _rows(["dogs/2.png", "dogs/3.png"]))]
    (tmp_path / "elsewhere").mkdir()
    return {"t": t, "images": str(t / "images"), "files": files, "elsewhere": tmp_path / "elsewhere"}


def _paths(ds):
    return [r["image"]["path"] if r.get("image") else None for r in ds]


def _sizes(ds):
    return [ds.image(i).size for i in range(len(ds)) if ds[i].get("image")]


NAMES = ["cats/0.png", "cats/1.png", "dogs/2.png", "dogs/3.png"]


@pytest.mark.parametrize("mode", ["keep", "relative", "absolute"])
def test_write_keeps_or_rewrites_and_says_so(tree, executor, mode, caplog, monkeypatch):
    out = str(tree["t"] / "out")
    monkeypatch.chdir(tree["t"])  # root and output given relative to the driver's working directory
    plan = dc.pipeline(tree["files"], schema="MM", root="images", batch_size=2).apply(create("clean_whitespace"))
    with caplog.at_level(logging.INFO, logger="datacopilot"):
        report = plan.write("out", format="parquet", executor=executor, max_rows_per_shard=2, image_paths=mode)
    assert report["rows"] == 6 and report["shards"] >= 3
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["image_paths"] == {"mode": mode, "rewritten": 0 if mode == "keep" else 4}
    assert manifest.get("root") == (tree["images"] if mode == "keep" else None)
    said = f"out: 4 image path(s) rewritten (image_paths={mode!r})"
    assert (said in caplog.text) == (mode != "keep")
    want = {"keep": NAMES,
            "relative": [os.path.join("..", "images", n) for n in NAMES],
            "absolute": [os.path.join(tree["images"], n) for n in NAMES]}[mode]
    monkeypatch.chdir(tree["elsewhere"])  # nothing resolves against the working directory
    back = dc.load(out)
    assert [p for p in _paths(back) if p] == want
    assert _sizes(back) == [SIZES[n] for n in NAMES]
    assert back[0]["conversations"][0]["value"] == "<image>\nwhat is it?"  # the operator ran
    if mode == "relative":  # the output and its images move as one tree
        moved = tree["t"].parent / "moved"
        shutil.move(str(tree["t"]), str(moved))
        assert _sizes(dc.load(str(moved / "out"))) == [SIZES[n] for n in NAMES]
        assert not os.path.exists(want[0])


def test_image_paths_come_from_the_spec_and_are_checked(tree):
    spec = {"source": {"paths": "data/*.jsonl", "schema": "MM", "root": "images"},
            "output": {"dir": "spec-out", "image_paths": "absolute"}}
    report = Pipeline.from_spec(spec, str(tree["t"])).write()
    assert report["rows"] == 6
    assert [p for p in _paths(dc.load(str(tree["t"] / "spec-out"))) if p] == [
        os.path.join(tree["images"], n) for n in NAMES]
    pipe = Pipeline.from_spec(spec, str(tree["t"]))
    pipe.write(image_paths="keep")  # the argument wins over the spec
    assert dc.load(str(tree["t"] / "spec-out")).root == tree["images"]
    assert pipe.to_spec()["output"]["image_paths"] == "absolute"
    with pytest.raises(DataCopilotError, match=r"output: `image_paths` must be one of keep, relative, absolute.*"
                                               r"got 'rebase'"):
        Pipeline.from_spec({**spec, "output": {"dir": "x", "image_paths": "rebase"}}, str(tree["t"]))
    with pytest.raises(DataCopilotError, match="`image_paths` must be one of"):
        pipe.write(image_paths="rebase")
    assert not (tree["t"] / "x").exists()


def test_cli_run_yaml_key_and_overrides(tree, monkeypatch):
    spec = tree["t"] / "pipe.yaml"
    spec.write_text("source: {paths: data/*.jsonl, schema: MM}\nops: [clean_whitespace]\n"
                    "output: {dir: run-out, format: jsonl, image_paths: relative}\n")
    out = tree["t"] / "run-out"
    runner = CliRunner()
    res = runner.invoke(main, ["run", str(spec), "--root", tree["images"]])  # the spec has no source.root
    assert res.exit_code == 0, res.output
    assert "image paths: 4 rewritten (relative)" in res.output
    monkeypatch.chdir(tree["elsewhere"])
    back = dc.load(str(out))
    assert [p for p in _paths(back) if p] == [os.path.join("..", "images", n) for n in NAMES]
    assert _sizes(back) == [SIZES[n] for n in NAMES]
    res = runner.invoke(main, ["run", str(spec), "--root", tree["images"], "--image-paths", "keep"])
    assert res.exit_code == 0, res.output
    assert f"image paths: kept as they are, relative to {tree['images']} (recorded in the manifest)" in res.output
    back = dc.load(str(out))
    assert [p for p in _paths(back) if p] == NAMES and _sizes(back) == [SIZES[n] for n in NAMES]
    res = runner.invoke(main, ["run", str(spec), "--root", tree["images"], "--image-paths", "relative",
                               "--resume"])  # a finished run of another image_paths is not resumed
    assert res.exit_code != 0
    assert "image_paths='keep', now image_paths='relative'" in res.output + str(res.exception)
    res = runner.invoke(main, ["run", str(spec), "--image-paths", "rebase"])
    assert res.exit_code == 2 and "'rebase' is not one of 'keep', 'relative', 'absolute'" in res.output
    bad = tree["t"] / "bad.yaml"
    bad.write_text("source: data/*.jsonl\noutput: {dir: bad-out, image_paths: 3}\n")
    res = runner.invoke(main, ["run", str(bad)])
    assert res.exit_code != 0 and "`image_paths` must be one of" in res.output + str(res.exception)


SCRIPT = """
import sys
import datacopilot as dc
from datacopilot.operators import create
from tests.pipeline._ops import KillAt
files, out, root, mode = sys.argv[1].split(","), sys.argv[2], sys.argv[3], sys.argv[4]
dc.pipeline(files, schema="MM", root=root, batch_size=2).apply([KillAt(id="r2")]).write(
    out, max_rows_per_shard=2, resume=sys.argv[5] == "1", image_paths=mode)
"""


def _run(tree, out, mode, resume: bool, kill: bool):
    env = {**os.environ, "DC_KILL": "1" if kill else "0", "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-c", SCRIPT, ",".join(tree["files"]), str(out), tree["images"], mode,
                           "1" if resume else "0"], env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def test_resume_with_another_image_paths_is_refused(tree, monkeypatch):
    out = tree["t"] / "killed"
    died = _run(tree, out, "relative", resume=False, kill=True)  # killed in the second file (r2)
    assert died.returncode == -signal.SIGKILL, died.stderr
    staged = json.loads((out / ".staging-g0001" / "manifest.json").read_text())
    assert staged["pipeline"]["done"] == tree["files"][:1] and staged["image_paths"]["rewritten"] == 2
    plan = dc.pipeline(tree["files"], schema="MM", root=tree["images"], batch_size=2).apply(
        [KillAt(id="r2")])
    for other in ("keep", "absolute"):
        with pytest.raises(InputError, match=rf"cannot resume: its shards were written with image_paths="
                                             rf"'relative', now image_paths='{other}'"):
            plan.write(str(out), max_rows_per_shard=2, resume=True, image_paths=other)
    done = _run(tree, out, "relative", resume=True, kill=False)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["image_paths"] == {"mode": "relative", "rewritten": 4} and "root" not in manifest
    monkeypatch.chdir(tree["elsewhere"])
    back = dc.load(str(out))
    assert [p for p in _paths(back) if p] == [os.path.join("..", "images", n) for n in NAMES]
    assert _sizes(back) == [SIZES[n] for n in NAMES]


# -- sources in several directories --------------------------------------------------------------------------
@pytest.fixture
def two_dirs(tmp_path):
    """``a/p.jsonl`` with ``a/cats/*.png`` and ``b/q.jsonl`` with ``b/dogs/*.png``: each file's images under its
    own directory, so the two files resolve against different roots."""
    _pngs(tmp_path / "a", NAMES[:2])
    _pngs(tmp_path / "b", NAMES[2:])
    files = [_jsonl(tmp_path / "a" / "p.jsonl", _rows(NAMES[:2])), _jsonl(tmp_path / "b" / "q.jsonl",
                                                                          _rows(NAMES[2:]))]
    (tmp_path / "elsewhere").mkdir()
    return {"tmp": tmp_path, "files": files, "elsewhere": tmp_path / "elsewhere",
            "want": [str(tmp_path / "a" / n) for n in NAMES[:2]] + [str(tmp_path / "b" / n) for n in NAMES[2:]]}


def test_sources_in_several_directories_warn_like_load(two_dirs, executor, monkeypatch):
    files = two_dirs["files"]
    with pytest.warns(ImagePathWarning, match=r"4 relative image path\(s\) made absolute.*2 root\(s\)"):
        loaded = dc.load(files)
    with pytest.warns(ImagePathWarning, match=r"made absolute.*the files resolve against 2 root\(s\) \("
                                              + re.escape(str(two_dirs["tmp"] / "a")) + ".*pass root="):
        plan = dc.pipeline(files, schema="MM")
    monkeypatch.chdir(two_dirs["elsewhere"])
    got = plan.collect(executor)
    assert got.root is None and [p for p in _paths(got) if p] == two_dirs["want"] == [
        p for p in _paths(loaded) if p]
    assert _sizes(got) == [SIZES[n] for n in NAMES]
    out = str(two_dirs["tmp"] / f"out-{executor}")
    plan.write(out, executor=executor)
    back = dc.load(out)
    assert [p for p in _paths(back) if p] == two_dirs["want"] and _sizes(back) == [SIZES[n] for n in NAMES]


def test_one_root_for_several_directories_keeps_paths_without_a_warning(two_dirs, tmp_path):
    shutil.copytree(tmp_path / "b" / "dogs", tmp_path / "a" / "dogs")  # every image under a/
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = dc.pipeline(two_dirs["files"], schema="MM", root=str(tmp_path / "a"))
        text = dc.pipeline(two_dirs["files"], schema="MIX")  # no image path column: nothing to warn about
    assert [p for p in _paths(plan.collect()) if p] == NAMES
    assert text.source.root is None


def test_finished_run_resumed_with_another_image_paths_is_refused(tree, executor):
    out = str(tree["t"] / f"done-{executor}")
    plan = dc.pipeline(tree["files"], schema="MM", root=tree["images"])
    plan.write(out, executor=executor, image_paths="absolute")
    with pytest.raises(InputError, match="image_paths='absolute', now image_paths='keep'"):
        plan.write(out, executor=executor, resume=True)
    again = plan.write(out, executor=executor, resume=True, image_paths="absolute")  # the same: nothing to do
    assert again["rows"] == 6
    assert json.loads((tree["t"] / f"done-{executor}" / "manifest.json").read_text())["image_paths"]["rewritten"] == 4


def test_in_memory_source_rewritten_relative(tree, monkeypatch):
    ds = dc.load(tree["files"], root=tree["images"])
    out = tree["t"] / "mem-out"
    report = ds.lazy().apply(create("clean_whitespace")).write(str(out), format="jsonl", image_paths="relative")
    assert report["rows"] == 6
    monkeypatch.chdir(tree["elsewhere"])
    back = dc.load(str(out))
    assert [p for p in _paths(back) if p] == [os.path.join("..", "images", n) for n in NAMES]
    assert _sizes(back) == [SIZES[n] for n in NAMES] and back.root == str(out)


@pytest.mark.parametrize("inputs", ["relative", "absolute"])
def test_image_operators_read_through_a_relative_root_from_the_drivers_cwd(tree, executor, monkeypatch, inputs):
    """An operator that opens the image files (here a size filter) reads them through the relative root the
    pipeline was given, against the driver's working directory, on Ray too (where the workers have their own),
    with the input files named relative to it or not; the filter keeps the images at least 5 pixels wide and the
    text rows, so an image path resolved elsewhere fails."""
    monkeypatch.chdir(tree["t"])
    files = [os.path.relpath(f, tree["t"]) for f in tree["files"]] if inputs == "relative" else tree["files"]
    plan = dc.pipeline(files, schema="MM", root="images", batch_size=2).apply(create("filter_image_size",
                                                                                      min_width=5))
    got = plan.collect(executor=executor)
    assert [r["id"] for r in got] == ["text", "r2", "r3", "text"]
    report = plan.write("out", executor=executor, max_rows_per_shard=2)
    assert report["rows"] == 4 and sum(report["ops"][0]["dropped"].values()) == 2 and report["ops"][0]["failed"] == 0
