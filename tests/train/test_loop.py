"""The SFT loop on the demo shards: the loss goes down (tiny LM and tiny VLM), accumulation is exact, LoRA
trains only its adapters, and GPU-only switches are refused on a CPU with a clear error."""

import json
import sys
import os

import numpy as np
import pytest

pytest.importorskip("paddlenlp")

from datacopilot.errors import InputError  # noqa: E402
from datacopilot.train import SFTConfig, sft  # noqa: E402

from .sft_setup import build, config  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return build(str(tmp_path_factory.mktemp("sft")))


def _quiet(_):
    pass


def _params(model_dir):
    import paddle

    from datacopilot.models.lm import load_causal_lm

    paddle.set_device("cpu")
    return {k: v.numpy() for k, v in load_causal_lm(model_dir).state_dict().items()}


def test_short_run_lowers_the_loss_and_writes_its_outputs(env, tmp_path):
    out = str(tmp_path / "run")
    res = sft(config(env, out, max_steps=10, log_every=5), echo=_quiet)
    losses = [h["loss"] for h in res["history"]]
    assert len(losses) == 10 and res["steps"] == 10
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3
    h = res["history"][0]
    assert 0 < h["fill"] <= 1 and h["target_tokens"] > 0 and h["tokens_per_s"] > 0 and h["lr"] > 0
    assert res["fill_rate"] > 0.8  # best-fit decreasing on the demo lengths
    assert os.path.getsize(os.path.join(out, "loss.png")) > 1000
    with open(os.path.join(out, "log.jsonl")) as f:
        assert [json.loads(line)["loss"] for line in f] == losses
    trained = _params(res["model_dir"])
    start = _params(env["lm"])
    assert any(not np.allclose(trained[k], start[k]) for k in start)


def test_vlm_run_scatters_images_and_lowers_the_loss(env, tmp_path):
    from datacopilot.train.loop import prepare

    cfg = SFTConfig.from_dict(config(env, str(tmp_path / "vlm"), model=env["vlm"], model_type="vlm",
                                     image_token_count=8, image_size=16, max_steps=8))
    _, _, data = prepare(cfg)
    pack = data.pack(data.micro_batch(0)[0])
    with_images = [s for s in pack if "pixel_values" in s]
    assert with_images and with_images[0]["pixel_values"].shape[1:] == (3, 16, 16)
    res = sft(cfg, echo=_quiet)
    losses = [h["loss"] for h in res["history"]]
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    assert os.path.isfile(os.path.join(res["model_dir"], "vision.pdparams"))


def test_accumulation_equals_one_big_batch(env, tmp_path):
    # 2 micro-batches of 1 pack vs 1 micro-batch of 2 packs: the same packs per optimizer step, and the loss is
    # sum of token losses / target tokens of the whole step, so losses and weights agree
    a = sft(config(env, str(tmp_path / "a"), batch_size=2, grad_accum=1, max_steps=3), echo=_quiet)
    b = sft(config(env, str(tmp_path / "b"), batch_size=1, grad_accum=2, max_steps=3), echo=_quiet)
    assert [h["target_tokens"] for h in a["history"]] == [h["target_tokens"] for h in b["history"]]
    np.testing.assert_allclose([h["loss"] for h in a["history"]], [h["loss"] for h in b["history"]], rtol=1e-5)
    pa_, pb = _params(a["model_dir"]), _params(b["model_dir"])
    for k in pa_:
        np.testing.assert_allclose(pa_[k], pb[k], rtol=1e-4, atol=5e-5, err_msg=k)  # adam: tiny grads -> ~lr steps


def test_lora_changes_only_lora_parameters(env, tmp_path):
    import paddle

    from datacopilot.train.build import load_model
    from datacopilot.train.checkpoint import latest_checkpoint

    cfg = config(env, str(tmp_path / "lora"), max_steps=3, lr=1e-2, lora={"r": 4, "alpha": 8})
    before = {k: v.numpy().copy() for k, v in load_model(SFTConfig.from_dict(cfg)).state_dict().items()}
    res = sft(cfg, echo=_quiet)
    after = {k: v.numpy() for k, v in paddle.load(os.path.join(latest_checkpoint(res["output_dir"]),
                                                                "model.pdparams")).items()}
    lora_keys = [k for k in before if "lora" in k]
    assert lora_keys and set(after) == set(before)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed and changed <= set(lora_keys)
    assert any("lora_B" in k for k in changed)  # B starts at zero, so a change shows the adapters learnt
    assert os.path.isfile(os.path.join(res["adapter_dir"], "lora_config.json"))


@pytest.mark.parametrize("kind", ["lm", "vlm"])
def test_lora_final_model_is_merged_and_loads_without_peft(env, tmp_path, kind):
    import paddle

    from datacopilot.models.lm import lm_logits, load_causal_lm
    from datacopilot.models.vlm import load_vlm
    from datacopilot.train.build import load_model
    from datacopilot.train.checkpoint import latest_checkpoint

    over = {"max_steps": 3, "lr": 2e-2, "lora": {"r": 4, "alpha": 8}}
    if kind == "vlm":
        over.update(model=env["vlm"], model_type="vlm", image_token_count=8, image_size=16)
    cfg = config(env, str(tmp_path / kind), **over)
    res = sft(cfg, echo=_quiet)
    adapted = load_model(SFTConfig.from_dict(cfg))          # the LoRA model with the trained weights
    paddle.nn.Layer.set_state_dict(adapted, paddle.load(os.path.join(latest_checkpoint(res["output_dir"]),
                                                                     "model.pdparams")))
    merged = (load_vlm if kind == "vlm" else load_causal_lm)(res["model_dir"])   # no peft involved
    base = (load_vlm if kind == "vlm" else load_causal_lm)(env[kind])
    ids = paddle.to_tensor([[3, 17, 42, 5, 99, 8, 23]])

    def logits(m):
        m.eval()
        return lm_logits(m.lm if kind == "vlm" else m, input_ids=ids).numpy()

    np.testing.assert_allclose(logits(merged), logits(adapted), rtol=1e-4, atol=1e-5)
    assert not np.allclose(logits(merged), logits(base), atol=1e-4)    # the adapters' training is in the weights
    if kind == "vlm":
        for k, v in adapted.vision.state_dict().items():
            np.testing.assert_array_equal(merged.vision.state_dict()[k].numpy(), v.numpy())


@pytest.mark.parametrize("key, value, message", [
    ("precision", "bf16", "precision: 'bf16' needs a gpu"),
    ("precision", "fp16", "precision: 'fp16' needs a gpu"),
    ("attention", "flashmask", "attention: 'flashmask' needs a gpu"),
    ("attention", "cu_seqlens", "attention: 'cu_seqlens' needs a gpu"),
])
def test_gpu_only_switches_are_refused_on_cpu(env, tmp_path, key, value, message):
    from datacopilot.train.build import has_gpu

    if has_gpu():
        pytest.skip("a gpu is present")
    with pytest.raises(InputError, match=message):
        sft(config(env, str(tmp_path / "x"), **{key: value}), echo=_quiet)


def test_lora_patterns_that_match_nothing_are_an_error(env, tmp_path):
    with pytest.raises(InputError, match="lora.target_modules: no layer of the model matches"):
        sft(config(env, str(tmp_path / "y"), lora={"target_modules": [".*nothing_here.*"]}), echo=_quiet)


def test_demo_training_step_says_what_to_install_without_paddle(monkeypatch, tmp_path):
    from datacopilot.train.demo import train_on_demo

    monkeypatch.setitem(sys.modules, "paddlenlp", None)
    lines = []
    assert train_on_demo(str(tmp_path / "shards"), str(tmp_path / "train"), echo=lines.append) is None
    assert lines == ["   skipped: the training step needs paddle and paddlenlp: pip install 'datacopilot[paddle]'"]


def test_cli_train_and_resume(env, tmp_path):
    from click.testing import CliRunner

    from datacopilot.cli import main

    cfg = tmp_path / "sft.yaml"
    cfg.write_text(f"data: {env['shards']}\nmodel: {env['lm']}\ntokenizer: {env['tokenizer']}\noutput_dir: run\n"
                   f"max_length: 192\nbatch_size: 2\nlr: 3e-3\nmax_steps: 3\nsave_every: 1\nnum_workers: 1\n")
    runner = CliRunner()
    res = runner.invoke(main, ["train", str(cfg), "--no-progress", "--max-steps", "2"])  # stop early
    assert res.exit_code == 0, res.output
    assert "step 2/3" in res.output and (tmp_path / "run" / "loss.png").is_file()
    res = runner.invoke(main, ["train", str(cfg), "--no-progress", "--resume"])
    assert res.exit_code == 0, res.output
    assert "resuming from" in res.output and "step 3/3" in res.output and "step 1/3" not in res.output
    cfg.write_text(cfg.read_text() + "batch: 3\n")
    res = runner.invoke(main, ["train", str(cfg)])
    assert res.exit_code == 2 and "batch: unknown config key (did you mean 'batch_size'?)" in res.output


def test_loss_curve_without_matplotlib_is_drawn_with_pillow(monkeypatch, tmp_path):
    from PIL import Image

    from datacopilot.train.plot import save_loss_curve

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = save_loss_curve([{"step": i + 1, "loss": 5.0 - i * 0.3} for i in range(8)], str(tmp_path / "c.png"))
    img = Image.open(path).convert("RGB")
    assert img.size == (600, 350)
    assert (31, 119, 180) in {c for _, c in img.getcolors(100000)}  # the curve is drawn


def test_config_ratios_mix_the_data(env, tmp_path):
    from datacopilot.train.loop import load_data

    other = str(tmp_path / "other.jsonl")
    with open(other, "w") as f:
        for i in range(30):
            f.write(json.dumps({"id": f"o{i}", "conversations": [{"from": "human", "value": f"q{i}"},
                                                                  {"from": "gpt", "value": f"a{i}"}]}) + "\n")
    cfg = SFTConfig.from_dict(config(env, str(tmp_path / "m"), schema="MM", mix_samples=40,
                                     data=[{"path": env["shards"], "ratio": 0.75}, {"path": other, "ratio": 0.25}]))
    ds = load_data(cfg)
    ids = [r["id"] for r in ds]
    assert len(ids) == 40 and sum(i.startswith("o") for i in ids) == 10
    assert ids == [r["id"] for r in load_data(cfg)]
