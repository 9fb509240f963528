"""Shared set-up of the training tests: demo shards, a tokenizer trained on them, a tiny LM and a tiny VLM."""

import os

import pytest

pytest.importorskip("paddlenlp")


def build(root: str, rows: int = 80) -> dict:
    import datacopilot
    from datacopilot.demo import run_demo
    from datacopilot.models.lm import build_tiny_lm
    from datacopilot.models.tokenizer import load_tokenizer, train_tokenizer
    from datacopilot.models.vlm import build_tiny_vlm

    report = run_demo(os.path.join(root, "demo"), n=rows, seed=1, echo=lambda s: None, train_steps=0)
    ds = datacopilot.load(report["shards_dir"])
    tok = train_tokenizer([t["value"] for r in ds for t in r["conversations"]], os.path.join(root, "tok"),
                          vocab_size=400)
    vocab = len(load_tokenizer(tok))
    lm = build_tiny_lm(os.path.join(root, "lm"), vocab, hidden=64, layers=2, heads=4, max_position=256)
    vlm = build_tiny_vlm(os.path.join(root, "vlm"), vocab, image_token_count=8, image_size=16, hidden=64,
                         layers=1, heads=4, vision_hidden=32, max_position=256)
    return {"shards": report["shards_dir"], "tokenizer": tok, "lm": lm, "vlm": vlm, "rows": len(ds)}


def config(env: dict, out: str, **overrides) -> dict:
    cfg = {"data": env["shards"], "model": env["lm"], "tokenizer": env["tokenizer"], "output_dir": out,
           "max_length": 192, "batch_size": 2, "grad_accum": 1, "lr": 3e-3, "warmup_steps": 1, "max_steps": 6,
           "seed": 0, "progress": False, "num_workers": 1, "cache_dir": os.path.join(os.path.dirname(out), "cache")}
    cfg.update(overrides)
    return cfg
