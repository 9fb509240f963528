"""Training through ``sft`` with ``attention: varlen`` (the default): the same losses as the dense block mask."""

import numpy as np
import pytest

pytest.importorskip("paddlenlp")

from datacopilot.train import SFTConfig, sft  # noqa: E402

from .sft_setup import build, config  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return build(str(tmp_path_factory.mktemp("sft_varlen")), rows=48)


def _quiet(_):
    pass


def test_varlen_is_the_default():
    cfg = SFTConfig.from_dict({"data": "d.jsonl", "model": "m", "tokenizer": "t", "output_dir": "o"})
    assert cfg.attention == "varlen"


@pytest.mark.parametrize("kind", ["lm", "vlm"])
def test_varlen_training_repeats_the_dense_losses(env, tmp_path, kind):
    over = {"max_steps": 3, "batch_size": 2}
    if kind == "vlm":
        over.update(model=env["vlm"], model_type="vlm", image_token_count=8, image_size=16)
    dense = sft(config(env, str(tmp_path / "dense"), attention="dense", **over), echo=_quiet)
    varlen = sft(config(env, str(tmp_path / "varlen"), **over), echo=_quiet)
    assert [h["target_tokens"] for h in varlen["history"]] == [h["target_tokens"] for h in dense["history"]]
    losses = [h["loss"] for h in varlen["history"]]
    np.testing.assert_allclose(losses, [h["loss"] for h in dense["history"]], rtol=1e-5)
    assert len(set(losses)) == 3                 # the steps saw different data and updated weights
