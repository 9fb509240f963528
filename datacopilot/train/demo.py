"""The demo's last step: a short packed SFT run of a tiny VLM on the demo's curated shards.

Everything is made offline in ``out_dir``: a sentencepiece tokenizer trained on the shards' own text, a tiny
LLaVA-style VLM with random weights, then :func:`datacopilot.train.sft` with exact-fit packing. Without
paddle it reports what to install instead of failing.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass, replace
from typing import Callable

INSTALL = "pip install 'datacopilot[paddle]'"


@dataclass(frozen=True)
class Recipe:
    """How the demo builds and trains its tiny VLM. ``split_turns``: each conversation is cut into one row per
    question-answer pair (``split_conversations`` with ``max_turns=1``, the image kept on every part), so an
    optimizer step sees more images, each with one question."""

    steps: int
    image_size: int = 32
    image_tokens: int = 16
    encoder: str = "patch"
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    vision_hidden: int = 32
    vision_layers: int = 1
    lr: float = 3e-3
    warmup: int = 2
    batch_size: int = 2
    max_length: int = 256
    split_turns: bool = False
    vocab: int = 400


QUICK = Recipe(steps=16)  # the CI run (`datacopilot demo --quick`): the loss moves, the model learns little
# the full run: the conv encoder (the image less its mean colour, a 4x4 grid of cells, 2-D positions, tokens mixed
# from all cells) at the images' own 64 px, 8 tokens per image, one question per row; 300 steps of about 0.3 CPU
# seconds. bench/vlm_recipe.py measures it on new images: above chance on one or two attributes per seed, not yet
# the 0.9 on all four the issue asks for
FULL = Recipe(steps=300, image_size=64, image_tokens=8, encoder="conv", hidden=64, layers=2, vision_hidden=64,
              vision_layers=1, lr=3e-3, warmup=30, batch_size=4, max_length=256, split_turns=True)


def paddle_available() -> bool:
    """True when paddle and paddlenlp can be imported (checked without importing them)."""
    for name in ("paddle", "paddlenlp"):
        try:
            if importlib.util.find_spec(name) is None:
                return False
        except (ImportError, ValueError):  # ValueError: a module blocked with sys.modules[name] = None
            return False
    return True


def train_on_demo(shards_dir: str, out_dir: str, steps: int | None = None, seed: int = 0,
                  echo: Callable[[str], None] = print, recipe: Recipe = QUICK) -> dict | None:
    """Train the tiny VLM of ``recipe`` for ``steps`` optimizer steps (None: the recipe's) on ``shards_dir``;
    returns the sft result (None without paddle).

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
        if steps is not None:
            recipe = replace(recipe, steps=steps)
        return _train(shards_dir, out_dir, recipe, seed, echo)


def _quiet_paddlenlp() -> None:
    try:
        from paddlenlp.utils.log import logger

        logger.set_level("WARNING")
    except Exception:  # pragma: no cover - older or newer paddlenlp
        pass


def _train(shards_dir: str, out_dir: str, r: Recipe, seed: int, echo) -> dict:
    import datacopilot
    from datacopilot.models.tokenizer import load_tokenizer, train_tokenizer
    from datacopilot.models.vlm import build_tiny_vlm

    from . import SFTConfig, sft

    ds = datacopilot.load(shards_dir)
    texts = [t["value"] for row in ds for t in row["conversations"]]
    tok_dir = train_tokenizer(texts, os.path.join(out_dir, "tokenizer"), vocab_size=r.vocab)
    vocab = len(load_tokenizer(tok_dir))
    data = ds
    if r.split_turns:
        from datacopilot.operators import create

        data = ds.apply(create("split_conversations", max_turns=1, keep_image=True))
        echo(f"   {len(ds)} curated rows split into {len(data)} rows of one question-answer pair each")
    model_dir = build_tiny_vlm(os.path.join(out_dir, "tiny-vlm"), vocab, image_token_count=r.image_tokens,
                               image_size=r.image_size, hidden=r.hidden, layers=r.layers, heads=r.heads,
                               vision_hidden=r.vision_hidden, vision_layers=r.vision_layers, max_position=512,
                               seed=seed, encoder=r.encoder)
    echo(f"   tokenizer ({vocab} tokens) trained on the shards' text; tiny VLM ({r.encoder} encoder + projector + "
         f"{r.layers}-layer Llama of width {r.hidden}, {r.image_tokens} tokens per {r.image_size}px image) in "
         f"{model_dir}")
    cfg = SFTConfig(data=data, model=model_dir, model_type="vlm", tokenizer=tok_dir,
                    output_dir=os.path.join(out_dir, "run"), max_length=r.max_length, batch_size=r.batch_size,
                    grad_accum=1, lr=r.lr, warmup_steps=min(r.warmup, r.steps), max_steps=r.steps, seed=seed,
                    image_token_count=r.image_tokens, image_size=r.image_size, log_every=max(1, r.steps // 4),
                    progress=False, num_workers=1)
    result = sft(cfg.check(), echo=lambda line: echo(f"   {line}"))
    result["tokenizer_dir"] = tok_dir
    first, last = result["history"][0]["loss"], result["history"][-1]["loss"]
    echo(f"   packing: fill rate {result['fill_rate']:.1%} (exact fit, block-diagonal mask); "
         f"{result['tokens_per_s']:.0f} effective tokens/s (target tokens); loss {first:.3f} -> {last:.3f}")
    return result
