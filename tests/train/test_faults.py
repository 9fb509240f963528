"""Training that survives: a bad image stops the run before training (or is skipped under `bad_samples: skip`) and
the process always exits; an interrupt between the update and the step counter saves the step the weights are at;
a run stopped early and resumed repeats the uninterrupted run; a damaged newest checkpoint is reported by file and
the older intact one is used."""

import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("paddlenlp")

from datacopilot.errors import InputError  # noqa: E402
from datacopilot.train import SFTConfig, sft  # noqa: E402
from datacopilot.train.checkpoint import list_checkpoints  # noqa: E402
from datacopilot.train.runner import Run  # noqa: E402

from .sft_setup import build, config  # noqa: E402

GUARD = 300  # seconds: a subprocess that outlives this has hung (a guard, not a timed assertion)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return build(str(tmp_path_factory.mktemp("faults")))


def _quiet(_):
    pass


def _cfg(env, out, **overrides):
    return config(env, out, attention="dense", **overrides)


def _vlm(env, out, root, **overrides):
    return _cfg(env, out, model=env["vlm"], model_type="vlm", image_token_count=8, image_size=16, root=root,
                **overrides)


def _images(env, tmp_path) -> str:
    """A copy of the demo's image root (the shards' paths are relative to it) to damage."""
    import datacopilot

    root = str(tmp_path / "root")
    shutil.copytree(datacopilot.load(env["shards"]).root, root)
    return root


def _paths(env) -> list[tuple[str, str]]:
    import datacopilot

    return [(r["id"], r["image"]["path"]) for r in datacopilot.load(env["shards"])]


def _cut_after_header(path: str) -> None:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: max(64, len(data) // 3)])


def _write_yaml(path, cfg: dict) -> str:
    import yaml

    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return str(path)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "datacopilot", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=GUARD)


# -- bad images -----------------------------------------------------------------------------------------
def test_cli_run_with_a_missing_image_exits_before_training_naming_the_row_and_file(env, tmp_path):
    root = _images(env, tmp_path)
    rid, path = _paths(env)[5]
    os.remove(os.path.join(root, path))
    cfg = _write_yaml(tmp_path / "sft.yaml", _vlm(env, str(tmp_path / "run"), root, progress=False))
    res = _cli("train", cfg, "--no-progress", cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert f"id {rid!r}" in out and path in out and "not found" in out and "bad_samples: skip" in out
    assert "step 1/" not in out and "Traceback" not in out
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_cli_run_with_an_image_cut_after_its_header_exits_when_it_is_decoded(env, tmp_path):
    # the header check before training passes; the decode in the batch reader thread fails: the run must stop
    # with the file's name, not hang waiting for a batch that never comes
    root = _images(env, tmp_path)
    paths = _paths(env)
    for _, path in paths:
        _cut_after_header(os.path.join(root, path))
    cfg = _write_yaml(tmp_path / "sft.yaml", _vlm(env, str(tmp_path / "run"), root, progress=False))
    res = _cli("train", cfg, "--no-progress", cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "does not decode" in out and any(p in out for _, p in paths)
    assert "Traceback" not in out


def test_bad_samples_skip_leaves_them_out_counts_and_reports_them(env, tmp_path):
    import json

    root = _images(env, tmp_path)
    paths = _paths(env)
    os.remove(os.path.join(root, paths[3][1]))
    with open(os.path.join(root, paths[7][1]), "wb") as f:
        f.write(b"not an image at all")
    out = str(tmp_path / "run")
    lines = []
    res = sft(_vlm(env, out, root, bad_samples="skip", max_steps=2), echo=lines.append)
    assert res["skipped"] == 2 and res["steps"] == 2 and res["samples"] == env["rows"] - 2
    assert [b["id"] for b in res["bad_samples"]] == [paths[3][0], paths[7][0]]
    assert "not found" in res["bad_samples"][0]["error"] and "does not decode" in res["bad_samples"][1]["error"]
    with open(os.path.join(out, "bad_samples.jsonl")) as f:
        assert [json.loads(line)["id"] for line in f] == [paths[3][0], paths[7][0]]
    assert any("skipped 2 sample(s)" in line for line in lines)


def test_bad_samples_skip_leaves_out_an_image_that_fails_only_when_decoded(env, tmp_path):
    from datacopilot.train.loop import prepare

    root = _images(env, tmp_path)
    rid, path = _paths(env)[0]
    _cut_after_header(os.path.join(root, path))
    cfg = SFTConfig.from_dict(_vlm(env, str(tmp_path / "run"), root, bad_samples="skip"))
    _, tok, data = prepare(cfg)
    assert data.skipped == []  # the header is fine
    i = [r["id"] for r in tok].index(rid)
    key = next((0, p) for p, ids in enumerate(data.epoch(0)[0]) if i in ids)
    before = len(data.epoch(0)[0][key[1]])
    samples = data.pack(key)
    assert len(samples) == before - 1
    assert [(b["id"], b["stage"]) for b in data.skipped] == [(rid, "decode")] and path in data.skipped[0]["error"]
    strict = SFTConfig.from_dict(_vlm(env, str(tmp_path / "run2"), root))
    _, _, data = prepare(strict)
    with pytest.raises(InputError, match=f"id {rid!r}.*{path}.*does not decode"):
        data.pack(key)


# -- the interrupt window ---------------------------------------------------------------------------------
def _weights(checkpoint):
    import paddle

    return {k: v.numpy() for k, v in paddle.load(os.path.join(checkpoint, "model.pdparams")).items()}


def test_interrupt_between_the_update_and_the_counter_saves_the_step_the_weights_are_at(env, tmp_path, monkeypatch):
    base = dict(max_steps=5, save_every=3, max_length=96)
    whole = sft(_cfg(env, str(tmp_path / "whole"), **base), echo=_quiet)
    at3 = dict(list_checkpoints(whole["output_dir"]))[3]

    update = Run.update

    def update_then_interrupt(self):
        update(self)
        if self._step == 2:  # step 3's weights are in place, the counter still says 2
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Run, "update", update_then_interrupt)
    cut = str(tmp_path / "cut")
    lines = []
    with pytest.raises(KeyboardInterrupt):
        sft(_cfg(env, cut, max_steps=5, max_length=96), echo=lines.append)
    monkeypatch.setattr(Run, "update", update)
    assert [s for s, _ in list_checkpoints(cut)] == [3]
    assert any("interrupted: saved" in line and "step-000003" in line for line in lines)
    a, b = _weights(at3), _weights(dict(list_checkpoints(cut))[3])
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    resumed = sft(_cfg(env, cut, max_steps=5, max_length=96), resume=True, echo=_quiet)
    assert [h["step"] for h in resumed["history"]] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([h["loss"] for h in resumed["history"]], [h["loss"] for h in whole["history"]],
                               rtol=1e-6)


def test_sigterm_saves_the_step_reached_and_exits(env, tmp_path):
    import json

    out = tmp_path / "run"
    cfg = _write_yaml(tmp_path / "sft.yaml", _cfg(env, str(out), max_steps=400, max_length=96, progress=False))
    proc = subprocess.Popen([sys.executable, "-m", "datacopilot", "train", cfg, "--no-progress"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("step 2/400"):
                proc.send_signal(signal.SIGTERM)  # what a scheduler or a preempted machine sends
                break
        rest, _ = proc.communicate(timeout=GUARD)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(seen) + rest
    assert proc.returncode != 0, text
    assert "interrupted: saved" in text and "step 400/400" not in text
    [(step, path)] = list_checkpoints(str(out))
    with open(os.path.join(path, "state.json")) as f:
        state = json.load(f)
    assert step >= 2 and state["step"] == step and [h["step"] for h in state["history"]] == list(range(1, step + 1))


# -- stop early, resume -----------------------------------------------------------------------------------
def test_max_steps_then_resume_repeats_the_uninterrupted_run(env, tmp_path):
    from click.testing import CliRunner

    from datacopilot.cli import main

    base = dict(max_steps=6, max_length=96, warmup_steps=1, progress=False)
    whole = sft(_cfg(env, str(tmp_path / "whole"), **base), echo=_quiet)
    cfg = _write_yaml(tmp_path / "sft.yaml", _cfg(env, str(tmp_path / "cut"), **base))
    runner = CliRunner()
    res = runner.invoke(main, ["train", cfg, "--no-progress", "--max-steps", "3"])
    assert res.exit_code == 0, res.output
    assert "step 3/6" in res.output and "stopped at step 3 of 6" in res.output and "step 4/6" not in res.output
    assert not os.path.exists(tmp_path / "cut" / "final")
    res = runner.invoke(main, ["train", cfg, "--no-progress", "--resume"])
    assert res.exit_code == 0, res.output
    assert "resuming from" in res.output and "step 4/6" in res.output and "step 3/6" not in res.output
    resumed = sft(_cfg(env, str(tmp_path / "cut"), **base), resume=True, echo=_quiet)  # from step 6: no new step
    assert [h["lr"] for h in resumed["history"]] == [h["lr"] for h in whole["history"]]
    assert all(h["lr"] > 0 for h in resumed["history"])
    np.testing.assert_allclose([h["loss"] for h in resumed["history"]], [h["loss"] for h in whole["history"]],
                               rtol=1e-6)
    res = runner.invoke(main, ["train", cfg, "--no-progress", "--max-steps", "9"])
    assert res.exit_code == 2 and "raise max_steps" in res.output


def test_resume_refuses_a_changed_schedule_and_says_why(env, tmp_path):
    out = str(tmp_path / "r")
    sft(_cfg(env, out, max_steps=4), stop_at=2, echo=_quiet)
    with pytest.raises(InputError, match="max_steps: is 6 but the checkpoint .* was written with 4.*learning-rate"):
        sft(_cfg(env, out, max_steps=6), resume=True, echo=_quiet)
    with pytest.raises(InputError, match="lr: is 0.01 but"):
        sft(_cfg(env, out, max_steps=4, lr=1e-2), resume=True, echo=_quiet)


# -- damaged checkpoints ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(env, tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4."""
    out = str(tmp_path_factory.mktemp("saved") / "run")
    res = sft(_cfg(env, out, max_steps=4, save_every=2, max_length=96), echo=_quiet)
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]
    return res


def _damage(path: str, how: str) -> None:
    with open(path, "rb") as f:
        data = f.read()
    if how == "truncated":
        data = data[: len(data) // 2]
    else:  # one byte changed, same size
        data = data[:-1] + bytes([data[-1] ^ 0xFF])
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("name, how", [(name, how) for name in ("model.pdparams", "optimizer.pdopt", "rng.pkl",
                                                                  "state.json") for how in ("truncated", "altered")]
                         + [("manifest.json", "truncated")])
def test_a_damaged_newest_checkpoint_is_named_and_the_older_one_used(env, saved, tmp_path, name, how):
    out = str(tmp_path / "run")
    shutil.copytree(saved["output_dir"], out)
    bad = os.path.join(out, "checkpoints", "step-000004", name)
    _damage(bad, how)
    lines = []
    res = sft(_cfg(env, out, max_steps=4, save_every=2, max_length=96), resume=True, echo=lines.append)
    warned = [line for line in lines if line.startswith("warning:")]
    assert any(bad in line for line in warned), lines
    assert any("resuming from" in line and "step-000002" in line for line in lines)
    np.testing.assert_allclose([h["loss"] for h in res["history"]], [h["loss"] for h in saved["history"]],
                               rtol=1e-6)


def test_every_checkpoint_damaged_is_a_clear_error_naming_each_file(env, saved, tmp_path):
    from click.testing import CliRunner

    from datacopilot.cli import main

    out = str(tmp_path / "run")
    shutil.copytree(saved["output_dir"], out)
    bad = [os.path.join(out, "checkpoints", "step-000004", "optimizer.pdopt"),
           os.path.join(out, "checkpoints", "step-000002", "model.pdparams")]
    for path in bad:
        _damage(path, "truncated")
    cfg = _cfg(env, out, max_steps=4, save_every=2, max_length=96)
    with pytest.raises(InputError, match="no intact checkpoint") as err:
        sft(cfg, resume=True, echo=_quiet)
    assert all(path in str(err.value) for path in bad)
    res = CliRunner().invoke(main, ["train", _write_yaml(tmp_path / "sft.yaml", cfg), "--resume"])
    assert res.exit_code == 2 and all(path in res.output for path in bad), res.output
    assert "Aborted!" not in res.output and "UnpicklingError" not in res.output.split("(")[0]


def test_a_checkpoint_records_its_files_checksums_and_the_step(saved):
    import hashlib
    import json

    for step, path in list_checkpoints(saved["output_dir"]):
        with open(os.path.join(path, "manifest.json")) as f:
            manifest = json.load(f)
        assert manifest["step"] == step
        assert set(manifest["files"]) == {"model.pdparams", "optimizer.pdopt", "rng.pkl", "state.json"}
        for name, meta in manifest["files"].items():
            with open(os.path.join(path, name), "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == meta["sha256"]
        with open(os.path.join(path, "state.json")) as f:
            assert json.load(f)["step"] == step


def test_what_a_killed_save_leaves_is_ignored_and_swept(env, saved, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(saved["output_dir"], out)
    left = os.path.join(out, "checkpoints", "step-000006.tmp-4242")
    os.makedirs(left)
    with open(os.path.join(left, "model.pdparams"), "wb") as f:
        f.write(b"half")
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]
    lines = []
    sft(_cfg(env, out, max_steps=4, save_every=2, max_length=96), resume=True, echo=lines.append)
    assert any("step-000004" in line for line in lines if "resuming from" in line)
    assert not os.path.exists(left)  # swept by the next save


def test_a_checkpoint_without_manifest_still_loads_and_a_damaged_file_in_it_is_named(env, saved, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(saved["output_dir"], out)
    for step in (2, 4):
        os.remove(os.path.join(out, "checkpoints", f"step-{step:06d}", "manifest.json"))  # written before manifests
    bad = os.path.join(out, "checkpoints", "step-000004", "rng.pkl")
    _damage(bad, "truncated")
    lines = []
    res = sft(_cfg(env, out, max_steps=4, save_every=2, max_length=96), resume=True, echo=lines.append)
    assert any(bad in line and "truncated or corrupt" in line for line in lines if line.startswith("warning:"))
    assert any("resuming from" in line and "step-000002" in line for line in lines)
    np.testing.assert_allclose([h["loss"] for h in res["history"]], [h["loss"] for h in saved["history"]],
                               rtol=1e-6)
