"""The tiny PaddleNLP causal LM: build, save, load through the user path, the loss convention, lazy paddle."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")
pytest.importorskip("paddlenlp")

from datacopilot.errors import InputError, ModelError  # noqa: E402
from datacopilot.models.lm import build_tiny_lm, causal_lm_loss, lm_logits, load_causal_lm  # noqa: E402

VOCAB = 300


def tiny(path, seed=0, **kw):
    return build_tiny_lm(str(path), vocab_size=VOCAB, hidden=64, layers=2, heads=4, max_position=128, seed=seed, **kw)


def causal_inputs(rng, b=2, n=9):
    ids = paddle.to_tensor(rng.integers(0, VOCAB, (b, n)))
    pos = paddle.to_tensor(np.broadcast_to(np.arange(n), (b, n)).copy())
    mask = paddle.to_tensor(np.broadcast_to(np.tril(np.ones((n, n), bool)), (b, 1, n, n)).copy())
    return ids, pos, mask


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return tiny(tmp_path_factory.mktemp("lm"), seed=1)


def test_build_saves_a_cpu_model_directory(lm_dir):
    with open(os.path.join(lm_dir, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["vocab_size"] == VOCAB and cfg["hidden_size"] == 64 and cfg["num_hidden_layers"] == 2
    assert not cfg.get("use_flash_attention") and not cfg.get("fuse_attention_qkv")
    model = load_causal_lm(lm_dir)
    assert type(model).__name__ == "LlamaForCausalLM" and model.training
    assert all(p.dtype == paddle.float32 for p in model.parameters())


def test_same_seed_same_weights_other_seed_differs(tmp_path, lm_dir):
    again = load_causal_lm(tiny(tmp_path / "again", seed=1))
    other = load_causal_lm(tiny(tmp_path / "other", seed=2))
    first = load_causal_lm(lm_dir)
    ids, pos, mask = causal_inputs(np.random.default_rng(0))
    a, b, c = (lm_logits(m, ids, pos, mask).numpy() for m in (first, again, other))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_save_load_round_trip_same_logits(tmp_path, lm_dir):
    model = load_causal_lm(lm_dir)
    with paddle.no_grad():                                     # change the weights so the round trip is not trivial
        for p in model.parameters():
            p.set_value(p + 0.01 * paddle.randn(p.shape))
    model.save_pretrained(str(tmp_path / "saved"))
    loaded = load_causal_lm(str(tmp_path / "saved"))
    ids, pos, mask = causal_inputs(np.random.default_rng(1))
    np.testing.assert_array_equal(lm_logits(model, ids, pos, mask).numpy(), lm_logits(loaded, ids, pos, mask).numpy())
    assert np.abs(lm_logits(load_causal_lm(lm_dir), ids, pos, mask).numpy() - lm_logits(loaded, ids, pos, mask).numpy()).max() > 1e-4


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_causal_lm(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="empty.*no config.json"):
        load_causal_lm(str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="bad: could not load"):
        load_causal_lm(str(bad))


def test_build_rejects_bad_sizes(tmp_path):
    with pytest.raises(InputError, match="`hidden` must be divisible by `heads`"):
        build_tiny_lm(str(tmp_path), vocab_size=100, hidden=30, heads=4)
    with pytest.raises(InputError, match="`vocab_size` must be a positive integer, got 0"):
        build_tiny_lm(str(tmp_path), vocab_size=0)


def reference_loss(logits, labels):
    """numpy: mean over target tokens of -log softmax, position t predicting labels[t + 1]."""
    lg = logits[:, :-1].astype(np.float64)
    lab = labels[:, 1:]
    lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
    keep = lab != -100
    picked = np.take_along_axis(lg, np.where(keep, lab, 0)[..., None], -1)[..., 0]
    return float(((lse - picked) * keep).sum()), int(keep.sum())


def test_causal_lm_loss_is_token_sum_over_target_count():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((2, 6, 11)).astype(np.float32)
    labels = rng.integers(0, 11, (2, 6))
    labels[0, :3] = -100                                       # a prompt
    labels[1, 3:] = -100                                       # padding
    total, count = reference_loss(logits, labels)
    loss = causal_lm_loss(paddle.to_tensor(logits), paddle.to_tensor(labels))
    assert count == 3 + 2                                      # labels[:, 0] is never predicted
    assert abs(float(loss) - total / count) < 1e-5 * total / count
    s, n = causal_lm_loss(paddle.to_tensor(logits), paddle.to_tensor(labels), return_sum=True)
    assert n == count and abs(float(s) - total) < 1e-5 * total
    # not the mean of per-row means: rows with more targets weigh more
    row_means = [reference_loss(logits[i:i + 1], labels[i:i + 1]) for i in range(2)]
    assert abs(np.mean([t / c for t, c in row_means]) - total / count) > 1e-4


def test_causal_lm_loss_edge_cases():
    logits = paddle.to_tensor(np.zeros((1, 4, 5), np.float32))
    assert float(causal_lm_loss(logits, paddle.to_tensor(np.full((1, 4), -100)))) == 0.0
    # the first label is never a target (nothing precedes it); uniform logits give log(5) per target
    labels = paddle.to_tensor(np.array([[3, -100, 2, 1]]))
    assert abs(float(causal_lm_loss(logits, labels)) - np.log(5)) < 1e-6
    assert causal_lm_loss(logits, labels, return_sum=True)[1] == 2
    with pytest.raises(InputError, match=r"do not match: got \[1, 4, 5\] and \[1, 3\]"):
        causal_lm_loss(logits, paddle.to_tensor(np.zeros((1, 3), np.int64)))


def test_lm_logits_needs_a_boolean_4d_mask(lm_dir):
    model = load_causal_lm(lm_dir)
    ids, pos, mask = causal_inputs(np.random.default_rng(3))
    with pytest.raises(InputError, match="must be a boolean tensor"):
        lm_logits(model, ids, pos, mask.astype("float32"))
    with pytest.raises(InputError, match=r"shape \[B, 1, L, L\], got \[2, 9\]"):
        lm_logits(model, ids, pos, paddle.ones([2, 9], dtype="bool"))


def test_a_few_steps_lower_the_loss(lm_dir):
    model = load_causal_lm(lm_dir)
    ids, pos, mask = causal_inputs(np.random.default_rng(4), b=2, n=16)
    opt = paddle.optimizer.AdamW(learning_rate=3e-3, parameters=model.parameters())
    losses = []
    for _ in range(8):
        loss = causal_lm_loss(lm_logits(model, ids, pos, mask), ids)
        loss.backward()
        opt.step()
        opt.clear_grad()
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0]


def run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_datacopilot_does_not_import_paddle():
    r = run("import sys, datacopilot, datacopilot.models, datacopilot.models.lm\n"
            "print('paddle' in sys.modules, 'paddlenlp' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]


def test_missing_paddle_raises_missing_dependency():
    r = run("import sys; sys.modules['paddle'] = None\n"
            "from datacopilot.errors import MissingDependencyError\n"
            "from datacopilot.models.lm import build_tiny_lm, load_causal_lm\n"
            "from datacopilot.models.vlm import build_tiny_vlm\n"
            "for f in (lambda: build_tiny_lm('/tmp/x', 10), lambda: build_tiny_vlm('/tmp/x', 10)):\n"
            "    try:\n        f()\n    except MissingDependencyError as e:\n        print(e)\n")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines == ["paddlepaddle is not installed: pip install 'datacopilot[paddle]'"] * 2
