"""The paddle backend over tiny random models built in a temporary directory and loaded through load_backend:
batched greedy == one at a time, seeded sampling independent of the batch, stop strings, images, spec checks."""

from __future__ import annotations

import io
import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")
pytest.importorskip("paddlenlp")

from datacopilot.errors import InputError, MissingDependencyError, ModelError  # noqa: E402
from datacopilot.models.backends import ModelSpec, Request, Response, load_backend  # noqa: E402
from datacopilot.models.lm import build_tiny_lm, lm_logits  # noqa: E402
from datacopilot.models.tokenizer import load_tokenizer, train_tokenizer  # noqa: E402
from datacopilot.models.vlm import build_tiny_vlm  # noqa: E402

WORDS = "a red blue green circle square triangle small large the image shows on left right of".split()
PROMPTS = ["hi", "a red circle on the left of a blue square", "shows " * 12, "the image", "small green triangle",
           "large " * 25, "of", "right of the square is a circle"]


def corpus(n=300, seed=0):
    r = random.Random(seed)
    return [" ".join(r.choice(WORDS) for _ in range(r.randint(3, 14))) for _ in range(n)]


def make_lm(directory, seed=0) -> str:
    """A tiny LM with its tokenizer in the same directory (init_std 1/8: outputs depend on the context)."""
    train_tokenizer(corpus(), str(directory), vocab_size=400)
    vocab = len(load_tokenizer(str(directory)))
    return build_tiny_lm(str(directory), vocab_size=vocab, hidden=64, layers=2, heads=4, max_position=256,
                         seed=seed, init_std=0.125)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return make_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_vlm")
    tok = train_tokenizer(corpus(), str(d / "tokenizer"), vocab_size=400)
    t = load_tokenizer(tok)
    return build_tiny_vlm(str(d), vocab_size=len(t), image_token_count=4, image_size=16, hidden=64,
                          vision_hidden=32, max_position=256, image_token_id=t.convert_tokens_to_ids("<image>"),
                          init_std=0.125)


def user(text):
    return Request([{"role": "user", "content": text}])


def png(color, size=20):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def test_batched_greedy_equals_one_at_a_time(lm_dir):
    spec = ModelSpec(backend="paddle", path=lm_dir, max_new_tokens=12, batch_size=16)
    backend = load_backend(spec)
    reqs = [user(p) for p in PROMPTS]
    batched = backend.generate(reqs)
    assert backend.batches == 1
    single = [backend.generate([r])[0] for r in reqs]
    assert [r.text for r in batched] == [r.text for r in single]
    assert all(isinstance(r, Response) and r.error is None and r.finish_reason in ("stop", "length") for r in batched)
    assert len({r.text for r in batched}) > 1                      # the prompts matter
    # smaller buckets (3 batches of <= 3, sorted by length) give the same texts, in the caller's order
    small = load_backend(ModelSpec(backend="paddle", path=lm_dir, max_new_tokens=12, batch_size=3))
    assert [r.text for r in small.generate(reqs)] == [r.text for r in single]
    assert small.batches == 3


def test_greedy_matches_a_full_recompute_without_cache(lm_dir):
    """The KV-cached loop picks the same tokens as rerunning the whole sequence with a plain causal mask."""
    spec = ModelSpec(backend="paddle", path=lm_dir, max_new_tokens=8)
    backend = load_backend(spec)
    for prompt in (PROMPTS[1], PROMPTS[5]):
        enc = backend.template.encode_messages([{"role": "user", "content": prompt}])
        ids = enc["input_ids"] + backend.template.markers["assistant"]
        out = []
        with paddle.no_grad():
            for _ in range(8):
                n = len(ids)
                mask = paddle.to_tensor(np.tril(np.ones((n, n), bool))[None, None])
                logits = lm_logits(backend.lm, paddle.to_tensor([ids]), paddle.to_tensor([list(range(n))]), mask)
                tok = int(np.argmax(logits[0, -1].numpy()))
                if tok in backend.stop_ids:
                    break
                out.append(tok)
                ids = ids + [tok]
        assert backend.generate([user(prompt)])[0].text == backend._decode(out)


def test_sampling_is_seeded_per_request_and_independent_of_the_batch(lm_dir):
    reqs = [user(p) for p in PROMPTS]
    runs = {}
    for bs in (1, 3, 16):
        spec = ModelSpec(backend="paddle", path=lm_dir, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7,
                         batch_size=bs)
        runs[bs] = [r.text for r in load_backend(spec).generate(reqs)]
    assert runs[1] == runs[3] == runs[16]
    # reversed order, mixed batch: each request keeps its own sample
    spec16 = ModelSpec(backend="paddle", path=lm_dir, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    backend = load_backend(spec16)
    assert [r.text for r in backend.generate(reqs[::-1])] == runs[16][::-1]
    other = load_backend(ModelSpec(backend="paddle", path=lm_dir, max_new_tokens=10, temperature=1.0, top_p=0.9,
                                   seed=8))
    assert [r.text for r in other.generate(reqs)] != runs[16]
    greedy = [r.text for r in load_backend(ModelSpec(backend="paddle", path=lm_dir, max_new_tokens=10))
              .generate(reqs)]
    assert greedy != runs[16]
    # Request.seed overrides the derived seed: two copies with different seeds differ, equal seeds agree
    twins = backend.generate([Request(reqs[1].messages, seed=s) for s in (1, 2, 1)])
    assert twins[0].text == twins[2].text and twins[0].text != twins[1].text


def test_stop_strings_cut_the_text_and_end_generation(lm_dir):
    reqs = [user(p) for p in PROMPTS[:4]]
    full = load_backend(ModelSpec(backend="paddle", path=lm_dir, max_new_tokens=24)).generate(reqs)
    text = full[1].text
    start = next(i for i in range(3, len(text) - 1) if text[i:i + 2].isascii() and text[i:i + 2].strip())
    stop = text[start:start + 2]
    backend = load_backend(ModelSpec(backend="paddle", path=lm_dir, max_new_tokens=24, stop=(stop, "\x00never")))
    cut = backend.generate(reqs)
    assert cut[1].text == text[:text.find(stop)]
    assert cut[1].finish_reason == "stop"
    for before, after in zip(full, cut):
        i = before.text.find(stop)
        assert after.text == (before.text if i < 0 else before.text[:i])
        assert stop not in after.text
    only = load_backend(ModelSpec(backend="paddle", path=lm_dir, max_new_tokens=24, stop=(stop,)))
    only.generate([reqs[1]])
    assert only.model_calls < 24                                   # stopped early, not after max_new_tokens


def test_continuing_an_assistant_message(lm_dir):
    backend = load_backend(ModelSpec(backend="paddle", path=lm_dir, max_new_tokens=6))
    msgs = [{"role": "user", "content": "a red circle"}, {"role": "assistant", "content": "the image"}]
    a, b = backend.generate([Request(msgs), user("a red circle")])
    assert a.error is None and b.error is None and a.text != b.text


def test_vlm_images_batched_equals_single_and_bad_images_fail_alone(vlm_dir):
    backend = load_backend(ModelSpec(backend="paddle", path=vlm_dir, max_new_tokens=8))
    assert backend.is_vlm
    reqs = [Request([{"role": "user", "content": "<image>what is shown?"}], images=(png("red"),)),
            Request([{"role": "user", "content": "describe the picture in detail please"}], images=(png("blue", 40),)),
            user("no image here"),
            Request([{"role": "user", "content": "<image> and <image>"}], images=(png("green"), png("white"))),
            Request([{"role": "user", "content": "<image>broken"}], images=(b"not an image",))]
    batched = backend.generate(reqs)
    assert batched[4].finish_reason == "error" and "images[0]" in batched[4].error and "request 4" in batched[4].error
    single = [backend.generate([r])[0] for r in reqs[:4]]
    assert [r.text for r in batched[:4]] == [r.text for r in single]
    assert all(r.error is None for r in batched[:4])
    colors = [backend.generate([Request(reqs[0].messages, images=(png(c),))])[0].text
              for c in ("red", "black", "white", "yellow")]
    assert colors[0] == batched[0].text and len(set(colors)) > 1      # the image reaches the model


def test_text_lm_rejects_images_and_overlong_prompts_per_request(lm_dir):
    backend = load_backend(ModelSpec(backend="paddle", path=lm_dir, max_new_tokens=200))
    out = backend.generate([Request([{"role": "user", "content": "hi"}], images=(png("red"),)), user("hi"),
                            user("large " * 200)])
    assert out[0].finish_reason == "error" and "text-only" in out[0].error
    assert out[1].error is None
    assert out[2].finish_reason == "error" and "256 positions" in out[2].error


def test_spec_check_errors(lm_dir, tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        ModelSpec(backend="paddle", path=str(tmp_path / "nope")).check()
    with pytest.raises(ModelError, match="needs a local model directory"):
        ModelSpec(backend="paddle").check()
    with pytest.raises(ModelError, match="not a model directory"):
        load_backend(ModelSpec(backend="paddle", path=str(tmp_path)))
    model_only = tmp_path / "m"
    model_only.mkdir()
    (model_only / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="no tokenizer"):
        ModelSpec(backend="paddle", path=str(model_only)).check()
    with pytest.raises(ModelError, match="expected one of"):
        ModelSpec(backend="torch", path=lm_dir).check()
    with pytest.raises(ModelError, match="endpoint"):
        ModelSpec(backend="openai").check()
    for bad in (dict(max_new_tokens=0), dict(temperature=-1), dict(top_p=0), dict(batch_size=2.5),
                dict(stop=("",)), dict(seed="x"), dict(timeout=0)):
        with pytest.raises(InputError):
            ModelSpec(backend="paddle", path=lm_dir, **bad)
    ModelSpec(backend="paddle", path=lm_dir).check()


def test_paddle_missing_raises_missing_dependency_error(lm_dir):
    code = ("import sys; sys.modules['paddle'] = None\n"
            "from datacopilot.models.backends import ModelSpec\n"
            "from datacopilot.errors import MissingDependencyError\n"
            f"try:\n    ModelSpec(backend='paddle', path={lm_dir!r}).check()\n"
            "except MissingDependencyError as e:\n    print('MISSING', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "MISSING paddlepaddle is not installed: pip install 'datacopilot[paddle]'" in out.stdout, out.stderr
    assert issubclass(MissingDependencyError, ImportError)


def test_spec_key_and_pickle(lm_dir, tmp_path):
    spec = ModelSpec(backend="paddle", path=lm_dir, stop=["</s>"])
    assert spec.stop == ("</s>",)
    assert pickle.loads(pickle.dumps(spec)) == spec and ModelSpec(**spec.to_dict()) == spec
    assert spec.key() == ModelSpec(backend="paddle", path=lm_dir, stop=("</s>",), batch_size=3).key()
    assert spec.key() != ModelSpec(backend="paddle", path=lm_dir, stop=("</s>",), max_new_tokens=5).key()
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(lm_dir, copy)
    assert ModelSpec(backend="paddle", path=str(copy), stop=("</s>",)).key() == spec.key()   # same contents
    build_tiny_lm(str(copy), vocab_size=len(load_tokenizer(lm_dir)), hidden=64, max_position=256, seed=1)
    assert ModelSpec(backend="paddle", path=str(copy), stop=("</s>",)).key() != spec.key()   # new weights
    assert os.path.isfile(copy / "config.json")


# -- loglikelihood: scoring a target answer, no generation ------------------------------------------------------
TARGETS = ["a red square", "the image shows a circle", "small", "right of the blue triangle", "large large",
           "on the left", "green", "the image"]


def manual_loglikelihood(backend, messages, target) -> float:
    """Mean log p(target tokens) by hand: the prompt as generate builds it, one unpadded causal pass."""
    enc = backend.template.encode_messages(messages)
    prompt = enc["input_ids"] + backend.template.markers["assistant"]
    tgt = backend.template.encode_text(target)
    ids = prompt + tgt
    n = len(ids)
    with paddle.no_grad():
        logits = lm_logits(backend.lm, paddle.to_tensor([ids]), paddle.to_tensor([list(range(n))]),
                           paddle.to_tensor(np.tril(np.ones((n, n), bool))[None, None]))
        logp = paddle.nn.functional.log_softmax(logits.astype("float32"), axis=-1)[0].numpy()
    return float(np.mean([logp[len(prompt) + k - 1, t] for k, t in enumerate(tgt)]))


def test_loglikelihood_batched_equals_one_at_a_time_and_a_manual_computation(lm_dir):
    backend = load_backend(ModelSpec(backend="paddle", path=lm_dir, batch_size=16))
    reqs = [user(p) for p in PROMPTS]
    batched = backend.loglikelihood(reqs, TARGETS)
    assert backend.batches == 1 and backend.model_calls == 1                   # one forward pass, no generation
    assert all(isinstance(s, float) and s < 0 for s in batched)
    single = [backend.loglikelihood([r], [t])[0] for r, t in zip(reqs, TARGETS)]
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-4)
    small = load_backend(ModelSpec(backend="paddle", path=lm_dir, batch_size=3))
    np.testing.assert_allclose(small.loglikelihood(reqs, TARGETS), single, rtol=0, atol=1e-4)
    assert small.batches == 3
    for k in (0, 1, 5):
        assert batched[k] == pytest.approx(manual_loglikelihood(backend, reqs[k].messages, TARGETS[k]), abs=1e-4)
    assert len({round(s, 3) for s in batched}) == len(batched)                # targets and prompts matter
    # the prompt matters: the same target after another prompt scores differently
    other = backend.loglikelihood([user("of")], [TARGETS[0]])[0]
    assert abs(other - batched[0]) > 1e-3


def test_loglikelihood_prefers_the_answer_the_model_was_trained_on(lm_dir):
    """A few optimizer steps on one answer make it score higher than before and than another answer."""
    from datacopilot.models.lm import causal_lm_loss

    backend = load_backend(ModelSpec(backend="paddle", path=lm_dir))
    prompt, good, bad = user("what is shown"), "a red circle", "a blue square"
    before = backend.loglikelihood([prompt, prompt], [good, bad])
    enc = backend.template.encode_messages(prompt.messages)
    head = enc["input_ids"] + backend.template.markers["assistant"]
    tgt = backend.template.encode_text(good)
    ids = head + tgt
    labels = [-100] * len(head) + tgt
    n = len(ids)
    args = (paddle.to_tensor([ids]), paddle.to_tensor([list(range(n))]),
            paddle.to_tensor(np.tril(np.ones((n, n), bool))[None, None]))
    opt = paddle.optimizer.Adam(learning_rate=1e-2, parameters=backend.lm.parameters())
    for _ in range(10):
        loss = causal_lm_loss(lm_logits(backend.lm, *args), paddle.to_tensor([labels]))
        loss.backward()
        opt.step()
        opt.clear_grad()
    after = backend.loglikelihood([prompt, prompt], [good, bad])
    assert after[0] > before[0] + 1.0 and after[0] > after[1] + 1.0
    assert after[0] == pytest.approx(-float(loss), abs=0.5)                   # the training loss, seen from the scorer
    assert after[0] == pytest.approx(manual_loglikelihood(backend, prompt.messages, good), abs=1e-4)


def test_loglikelihood_continues_an_assistant_message(lm_dir):
    backend = load_backend(ModelSpec(backend="paddle", path=lm_dir))
    msgs = [{"role": "user", "content": "a red circle"}, {"role": "assistant", "content": "the image"}]
    cont, fresh = backend.loglikelihood([Request(msgs), user("a red circle")], ["shows a circle"] * 2)
    assert abs(cont - fresh) > 1e-3


def test_vlm_loglikelihood_batched_equals_single_and_sees_the_image(vlm_dir):
    backend = load_backend(ModelSpec(backend="paddle", path=vlm_dir, batch_size=16))
    ask = [{"role": "user", "content": "<image>what is shown?"}]
    reqs = [Request(ask, images=(png("red"),)), Request(ask, images=(png("blue", 40),)), user("no image here"),
            Request([{"role": "user", "content": "<image> and <image>"}], images=(png("green"), png("white"))),
            Request(ask, images=(b"not an image",))]
    targets = ["a red square", "a blue square", "small", "green and white", "red"]
    batched = backend.loglikelihood(reqs, targets)
    assert isinstance(batched[4], InputError) and "request 4" in str(batched[4]) and "images[0]" in str(batched[4])
    single = [backend.loglikelihood([r], [t])[0] for r, t in zip(reqs[:4], targets[:4])]
    np.testing.assert_allclose(batched[:4], single, rtol=0, atol=1e-4)
    colors = backend.loglikelihood([Request(ask, images=(png(c),)) for c in ("red", "black", "white")],
                                   ["a red square"] * 3)
    assert colors[0] == pytest.approx(batched[0], abs=1e-4) and len({round(c, 4) for c in colors}) == 3


def test_loglikelihood_refuses_what_it_cannot_score_per_request(lm_dir):
    backend = load_backend(ModelSpec(backend="paddle", path=lm_dir))
    out = backend.loglikelihood(
        [Request([{"role": "user", "content": "hi"}], images=(png("red"),)), user("hi"), user("hi"), user("hi"),
         user("hi"), user("large " * 100)],
        ["red", "", "a <image> here", "a red circle", 3, "large " * 200])
    assert isinstance(out[0], InputError) and "text-only" in str(out[0])
    assert isinstance(out[1], InputError) and "empty target" in str(out[1])
    assert isinstance(out[2], InputError) and "<image>" in str(out[2])
    assert isinstance(out[3], float)
    assert isinstance(out[4], InputError) and "targets[4]" in str(out[4])
    assert isinstance(out[5], InputError) and "256 positions" in str(out[5])
    with pytest.raises(InputError, match="2 requests but 1 targets"):
        backend.loglikelihood([user("a"), user("b")], ["x"])
