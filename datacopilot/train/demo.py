"""The demo's last step: a short packed SFT run of a tiny VLM on the demo's curated shards.

Everything is made offline in ``out_dir``: a sentencepiece tokenizer trained on the shards' own text, a tiny
LLaVA-style VLM with random weights, then :func:`datacopilot.train.sft` with exact-fit packing. Without
paddle it reports what to install instead of failing.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Callable

INSTALL = "pip install 'datacopilot[paddle]'"


def paddle_available() -> bool:
    """True when paddle and paddlenlp can be imported (checked without importing them)."""
    for name in ("paddle", "paddlenlp"):
        try:
            if importlib.util.find_spec(name) is None:
                return False
        except (ImportError, ValueError):  # ValueError: a module blocked with sys.modules[name] = None
            return False
    return True


def train_on_demo(shards_dir: str, out_dir: str, steps: int = 16, seed: int = 0,
                  echo: Callable[[str], None] = print) -> dict | None:
    """Train the tiny VLM ``steps`` optimizer steps on ``shards_dir``; returns the sft result (None without paddle).

    >>> result = train_on_demo("demo/shards", "demo/train")   # doctest: +SKIP
    >>> result["history"][-1]["loss"] < result["history"][0]["loss"]  # doctest: +SKIP
    True
    """
    if not paddle_available():
        echo(f"   skipped: the training step needs paddle and paddlenlp: {INSTALL}")
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _quiet_paddlenlp()
        return _train(shards_dir, out_dir, steps, seed, echo)


def _quiet_paddlenlp() -> None:
    try:
        from paddlenlp.utils.log import logger

        logger.set_level("WARNING")
    except Exception:  # pragma: no cover - older or newer paddlenlp
        pass


def _train(shards_dir: str, out_dir: str, steps: int, seed: int, echo) -> dict:
    import datacopilot
    from datacopilot.models.tokenizer import load_tokenizer, train_tokenizer
    from datacopilot.models.vlm import build_tiny_vlm

    from . import SFTConfig, sft

    ds = datacopilot.load(shards_dir)
    texts = [t["value"] for row in ds for t in row["conversations"]]
    tok_dir = train_tokenizer(texts, os.path.join(out_dir, "tokenizer"), vocab_size=400)
    vocab = len(load_tokenizer(tok_dir))
    image_tokens, image_size = 16, 32
    model_dir = build_tiny_vlm(os.path.join(out_dir, "tiny-vlm"), vocab, image_token_count=image_tokens,
                               image_size=image_size, hidden=64, layers=2, heads=4, vision_hidden=32,
                               max_position=512, seed=seed)
    echo(f"   tokenizer ({vocab} tokens) trained on the shards' text; tiny VLM (CNN encoder + projector + "
         f"2-layer Llama, {image_tokens} tokens per image) in {model_dir}")
    cfg = SFTConfig(data=shards_dir, model=model_dir, model_type="vlm", tokenizer=tok_dir,
                    output_dir=os.path.join(out_dir, "run"), max_length=256, batch_size=2, grad_accum=1, lr=3e-3,
                    warmup_steps=2, max_steps=steps, seed=seed, image_token_count=image_tokens,
                    image_size=image_size, log_every=max(1, steps // 4), progress=False, num_workers=1)
    result = sft(cfg.check(), echo=lambda line: echo(f"   {line}"))
    result["tokenizer_dir"] = tok_dir
    first, last = result["history"][0]["loss"], result["history"][-1]["loss"]
    echo(f"   packing: fill rate {result['fill_rate']:.1%} (exact fit, block-diagonal mask); "
         f"{result['tokens_per_s']:.0f} effective tokens/s (target tokens); loss {first:.3f} -> {last:.3f}")
    return result
