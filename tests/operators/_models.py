"""Models for the model-operator tests, all real and offline:

* ``tiny_lm`` / ``tiny_vlm``: tiny Paddle models with random weights and a sentencepiece tokenizer, built once per
  test session in a temporary directory and loaded by the operators through their user-facing ModelSpec path;
* ``rule_server(answer)``: ``datacopilot serve``'s ChatServer on 127.0.0.1 over a rule-based stand-in model
  (``answer(request) -> text``), reached through the ``openai`` backend: the way to get outputs that parse;
* ``image_rows(tmp_path, n)``: MM rows with PNG images on disk (``root`` is ``tmp_path``).
"""

from __future__ import annotations

import contextlib
import io
import random
import threading

import pytest
from datacopilot.models.backends import Backend, ModelSpec, Response

WORDS = "a red blue green circle square triangle small large the image shows on left right of".split()
COLORS = ["red", "green", "blue", "white", "black", "yellow"]


def corpus(n=300, seed=0):
    r = random.Random(seed)
    return [" ".join(r.choice(WORDS) for _ in range(r.randint(3, 14))) for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> str:
    pytest.importorskip("paddlenlp")
    from datacopilot.models.lm import build_tiny_lm
    from datacopilot.models.tokenizer import load_tokenizer, train_tokenizer

    d = str(tmp_path_factory.mktemp("op_tiny_lm"))
    train_tokenizer(corpus(), d, vocab_size=400)
    return build_tiny_lm(d, vocab_size=len(load_tokenizer(d)), hidden=64, layers=2, heads=4, max_position=512,
                         seed=0, init_std=0.125)


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory) -> str:
    pytest.importorskip("paddlenlp")
    from datacopilot.models.tokenizer import load_tokenizer, train_tokenizer
    from datacopilot.models.vlm import build_tiny_vlm

    d = tmp_path_factory.mktemp("op_tiny_vlm")
    tok = load_tokenizer(train_tokenizer(corpus(), str(d / "tokenizer"), vocab_size=400))
    return build_tiny_vlm(str(d), vocab_size=len(tok), image_token_count=4, image_size=16, hidden=64,
                          vision_hidden=32, max_position=512, image_token_id=tok.convert_tokens_to_ids("<image>"),
                          init_std=0.125)


def png(color: str, size: int = 20) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def image_rows(tmp_path, n: int, with_conversation: bool = True) -> list[dict]:
    """``n`` MM rows whose images are PNG files under ``tmp_path/img`` (colors cycle through COLORS)."""
    (tmp_path / "img").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        color = COLORS[i % len(COLORS)]
        path = tmp_path / "img" / f"{i}.png"
        path.write_bytes(png(color))
        conv = [{"from": "human", "value": f"<image>\nWhat color is image {i}?"},
                {"from": "gpt", "value": f"It is {color}."}] if with_conversation else []
        rows.append({"id": f"r{i}", "image": f"img/{i}.png", "conversations": conv})
    return rows


def image_color(data: bytes) -> str:
    """The name of a solid PNG's color (what the rule-based model "sees")."""
    from PIL import Image

    rgb = Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0))
    from PIL import ImageColor

    return next(c for c in COLORS if ImageColor.getrgb(c) == rgb)


class RuleModel(Backend):
    """A deterministic stand-in model for ChatServer: ``answer(request)`` gives the text; ``calls`` counts the
    requests it answered."""

    def __init__(self, answer):
        self.spec = ModelSpec(backend="openai", endpoint="http://127.0.0.1:1/v1", model="rules")
        self.answer, self.calls, self._lock = answer, 0, threading.Lock()

    def generate(self, requests):
        with self._lock:
            self.calls += len(requests)
        return [Response(self.answer(r), "stop") for r in requests]


@contextlib.contextmanager
def rule_server(answer, **spec):
    """A ChatServer on 127.0.0.1 over ``RuleModel(answer)``; yields (ModelSpec of the openai backend, model)."""
    from datacopilot.serve import ChatServer

    model = RuleModel(answer)
    with ChatServer(model, port=0, batch_size=16, max_wait=0.005) as server:
        yield ModelSpec(backend="openai", endpoint=server.url, model="rules", max_retries=1, timeout=10,
                        **spec), model
