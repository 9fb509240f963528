"""On a GPU: ``attention: cu_seqlens`` (flash_attn_unpadded) and ``attention: flashmask`` (flashmask_attention) give
the results of the dense block-diagonal mask and of ``attention: varlen``. The whole module is skipped without
paddle built with CUDA and a visible device; nothing here has run on the CPU-only CI machine.

The kernels run in bfloat16 (float16 where bfloat16 is not supported) while the references run in float32, so the
tolerances are those of half precision: 3e-2 on attention outputs and logits, 2e-2 on the loss, 1e-1 on gradient
norms. Padding positions are compared for flashmask only (cu_seqlens makes each row's padding run one sequence).
"""

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")
pytest.importorskip("paddlenlp")


def _has_gpu() -> bool:
    try:
        return paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    except Exception:
        return False


pytestmark = pytest.mark.skipif(not _has_gpu(), reason="needs paddle built with cuda and a visible gpu")

ROWS, LENGTH = [[37, 50, 1, 20], [128], [64, 33]], 128
KINDS = ("cu_seqlens", "flashmask")


@pytest.fixture(autouse=True)
def on_gpu():
    previous = paddle.device.get_device()
    paddle.set_device("gpu")
    yield
    paddle.set_device(previous)


def real_tokens(rows, length):
    real = np.zeros((len(rows), length), bool)
    for b, r in enumerate(rows):
        real[b, :sum(r)] = True
    return real


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.parametrize("kind", KINDS)
def test_kernel_equals_per_segment_attention(kind):
    from datacopilot.models.attention import Segments, attend

    rng = np.random.default_rng(0)
    q, k, v = (paddle.to_tensor(rng.standard_normal((3, LENGTH, 4, 32)).astype(np.float32)) for _ in range(3))
    want = attend(q, k, v, Segments.from_lens(ROWS, LENGTH)).numpy()        # float32, per segment
    got = attend(q, k, v, Segments.from_lens(ROWS, LENGTH, kind)).numpy()   # the flash kernel
    keep = real_tokens(ROWS, LENGTH) if kind == "cu_seqlens" else np.ones((3, LENGTH), bool)
    np.testing.assert_allclose(got[keep], want[keep], atol=3e-2)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from datacopilot.models.lm import build_tiny_lm
    from datacopilot.models.vlm import build_tiny_vlm

    root = tmp_path_factory.mktemp("gpu_models")
    lm = build_tiny_lm(str(root / "lm"), vocab_size=500, hidden=128, layers=2, heads=4, max_position=256, seed=1,
                       init_std=0.08)
    vlm = build_tiny_vlm(str(root / "vlm"), vocab_size=500, image_token_count=8, image_size=16, hidden=128,
                         layers=2, heads=4, vision_hidden=32, max_position=256, image_token_id=5, seed=2)
    return {"lm": lm, "vlm": vlm}


def packs(rng, vlm: bool):
    out = []
    for row in ROWS:
        pack = []
        for n in row:
            ids = rng.integers(10, 500, n)
            labels = ids.copy()
            labels[: n // 4] = -100
            s = {"input_ids": ids, "labels": labels, "image_offsets": []}
            if vlm and n >= 20:
                ids[2:10] = 5
                labels[:10] = -100
                s.update(image_offsets=[2], pixel_values=rng.standard_normal((1, 3, 16, 16)).astype(np.float32))
            pack.append(s)
        out.append(pack)
    return out


def run(model, raw, kind):
    from datacopilot.models.attention import Segments
    from datacopilot.models.lm import causal_lm_loss, lm_logits

    t = {k: paddle.to_tensor(v) for k, v in raw.items() if isinstance(v, np.ndarray)}
    mask = t["attention_mask"] if kind == "dense" else Segments.from_batch({**raw, **t}, kind)
    model.clear_gradients()
    if hasattr(model, "vision"):
        loss, logits = model(t["input_ids"], t["position_ids"], mask, t["labels"], t.get("pixel_values"),
                             t.get("image_pack"), t.get("image_offset"))
    else:
        logits = lm_logits(model, t["input_ids"], t["position_ids"], mask)
        loss = causal_lm_loss(logits, t["labels"])
    loss.backward()
    return float(loss), logits.astype("float32").numpy(), {
        n: p.grad.astype("float32").numpy() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("which", ["lm", "vlm"])
@pytest.mark.parametrize("kind", KINDS + ("varlen",))
def test_model_with_a_kernel_equals_the_dense_mask(models, which, kind):
    from datacopilot.models.lm import load_causal_lm
    from datacopilot.models.vlm import load_vlm
    from datacopilot.train.collate import PackedCollator

    model = (load_vlm if which == "vlm" else load_causal_lm)(models[which])
    samples = packs(np.random.default_rng(3), which == "vlm")
    dense_raw = PackedCollator(LENGTH, attention="dense", image_token_count=8)(samples)
    raw = PackedCollator(LENGTH, attention=kind, image_token_count=8)(samples)
    loss_d, logits_d, grads_d = run(model, dense_raw, "dense")
    loss_k, logits_k, grads_k = run(model, raw, kind)
    tol = 1e-5 if kind == "varlen" else None
    real = real_tokens(dense_raw["seq_lens"], LENGTH)
    scale = np.abs(logits_d).max()
    if tol:
        assert rel(loss_k, loss_d) < tol
        np.testing.assert_allclose(logits_k, logits_d, rtol=tol, atol=tol * scale)
    else:
        assert rel(loss_k, loss_d) < 2e-2, (loss_k, loss_d)
        np.testing.assert_allclose(logits_k[real], logits_d[real], atol=3e-2 * scale)
    for name, g in grads_d.items():
        if name.endswith("k_proj.bias") or np.linalg.norm(g) == 0:
            continue
        assert rel(grads_k[name], g) < (tol or 1e-1), (name, rel(grads_k[name], g))


@pytest.mark.parametrize("kind", KINDS)
def test_sft_trains_with_the_flash_kernels(tmp_path, kind):
    from tests.train.sft_setup import build, config

    from datacopilot.train import sft

    env = build(str(tmp_path / "env"), rows=48)
    over = {"max_steps": 3, "batch_size": 2, "precision": "bf16" if paddle.amp.is_bfloat16_supported() else "fp16"}
    flash = sft(config(env, str(tmp_path / kind), attention=kind, **over), echo=lambda s: None)
    varlen = sft(config(env, str(tmp_path / "varlen"), **over), echo=lambda s: None)
    assert flash["device"] == "gpu"
    a, b = [h["loss"] for h in flash["history"]], [h["loss"] for h in varlen["history"]]
    assert all(np.isfinite(a)) and len(a) == 3
    np.testing.assert_allclose(a, b, rtol=3e-2)
