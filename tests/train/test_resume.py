"""Resume: a run stopped after step 3 and resumed to step 6 sees the same batches, logs the same losses and ends
with the same parameters as an uninterrupted 6-step run."""

import os
import shutil

import numpy as np
import pytest

pytest.importorskip("paddlenlp")

from datacopilot.errors import InputError  # noqa: E402
from datacopilot.train import sft  # noqa: E402
from datacopilot.train.checkpoint import list_checkpoints  # noqa: E402

from .sft_setup import build, config  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return build(str(tmp_path_factory.mktemp("resume")))


def _weights(checkpoint):
    import paddle

    return {k: v.numpy() for k, v in paddle.load(os.path.join(checkpoint, "model.pdparams")).items()}


@pytest.mark.parametrize("overrides", [{}, {"grad_accum": 2, "batch_size": 1, "lora": {"r": 4}}],
                         ids=["full", "accum+lora"])
def test_resume_gives_the_same_losses_and_parameters(env, tmp_path, overrides):
    # max_length 96 leaves fewer packs than 6 steps need: the resumed run also crosses an epoch boundary
    base = dict(max_steps=6, save_every=3, max_length=96, **overrides)
    whole = sft(config(env, str(tmp_path / "whole"), **base), echo=lambda s: None)
    assert len(whole["history"]) == 6

    # the interrupted run: what a run killed after step 3 leaves on disk is the step-3 checkpoint
    cut = str(tmp_path / "cut")
    sft(config(env, cut, **base), echo=lambda s: None)
    steps = dict(list_checkpoints(cut))
    shutil.rmtree(steps[6])
    shutil.rmtree(os.path.join(cut, "final"))
    assert [s for s, _ in list_checkpoints(cut)] == [3]

    lines = []
    resumed = sft(config(env, cut, **base), resume=True, echo=lines.append)
    assert any("resuming from" in line and "step-000003" in line for line in lines)
    np.testing.assert_allclose([h["loss"] for h in resumed["history"]], [h["loss"] for h in whole["history"]],
                               rtol=1e-5)
    assert [h["target_tokens"] for h in resumed["history"]] == [h["target_tokens"] for h in whole["history"]]
    a, b = _weights(whole["checkpoint"]), _weights(resumed["checkpoint"])
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_resume_refuses_a_different_data_order(env, tmp_path):
    out = str(tmp_path / "r")
    sft(config(env, out, max_steps=2, save_every=1), echo=lambda s: None)
    with pytest.raises(InputError, match="batch_size: is 1 but the checkpoint .* was written with 2"):
        sft(config(env, out, max_steps=4, batch_size=1), resume=True, echo=lambda s: None)


def test_resume_without_checkpoint_starts_fresh(env, tmp_path):
    lines = []
    res = sft(config(env, str(tmp_path / "fresh"), max_steps=2), resume=True, echo=lines.append)
    assert res["steps"] == 2 and any("starting from step 0" in line for line in lines)
