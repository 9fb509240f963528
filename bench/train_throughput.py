"""Training throughput on the tiny LM and VLM: varlen packed vs dense-mask packed vs padded, same data, same steps.

Every run uses the training loop's own parts (``PackedData``, the loader, the collator, the optimizer step of
``datacopilot.train``) on the same tokenized samples, with the same seed, at each ``max_length``:

- varlen: ``batch`` packs of ``max_length`` tokens per step (exact fit, the default), attention per segment
  (``attention: varlen``, the default: buckets of near-equal segments, ``sum(si^2)``, no ``[L, L]`` mask);
- dense: the same packs with the dense ``[B, 1, L, L]`` block-diagonal mask (``attention: dense``);
- padded: the same samples in the same shuffled order, ``batch * samples per pack`` of them per step (so a step
  sees about as many samples as a packed step), each batch padded to its longest sample, dense causal mask.

``batch`` is ``tokens_per_step // max_length`` packs (4 at 1024, as before; 1 at 4096), so every run's step holds
about the same tokens. Effective tokens/s counts target tokens only (labels != -100 after the shift), not padding
and not prompt tokens. Lengths follow the text-heavy SFT distribution of ``bench/packing.py`` (lognormal, median
200, sigma 1.0), cut at ``max_length``; 30% of each sample is prompt. For the VLM every other sample carries one
32x32 image (``image_tokens`` tokens after a 2-token prefix, no labels on them). The first step of each run is not
timed; the timed steps of the three runs alternate, so a busy shared machine slows all of them alike.

    python bench/train_throughput.py --out /tmp/train.md             # 1024, 2048, 4096; LM and VLM
    python bench/train_throughput.py --lengths 1024 --models lm       # one configuration
    python bench/packing.py --train                                   # appended to the packing results
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET_PADDED = 1.68   # packed / padded, kept from the packing work
TARGET_VARLEN = 1.5    # varlen / dense-mask packed at the longest max_length
IMAGE_TOKEN = 3
DEFAULTS = {"samples": 2000, "tokens_per_step": 4096, "steps": 3, "vocab": 1000, "hidden": 128, "layers": 2,
            "image_tokens": 16, "seed": 0}
LISTS = {"lengths": "1024,2048,4096", "models": "lm,vlm"}
MODES = ("varlen", "dense", "padded")


def synthetic_table(n: int, max_length: int, vocab: int, seed: int, image_tokens: int = 0):
    """Tokenized samples as the tokenizer leaves them: input_ids, labels (-100 on the first 30%), length; with
    ``image_tokens`` every other sample has one image at offset 2 (its tokens labelled -100)."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(200), 1.0, n).astype(np.int64), 8 + image_tokens, max_length)
    ids, labels, offsets = [], [], []
    for i, n_tok in enumerate(lengths):
        x = rng.integers(4, vocab, n_tok)
        y = x.copy()
        y[: max(1, int(0.3 * n_tok))] = -100
        off = []
        if image_tokens and i % 2 == 0:
            off = [2]
            x[2:2 + image_tokens] = IMAGE_TOKEN
            y[: 2 + image_tokens] = -100
        ids.append(x.astype(np.int32))
        labels.append(y.astype(np.int32))
        offsets.append(off)
    return pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32())),
                     "labels": pa.array(labels, pa.list_(pa.int32())),
                     "image_offsets": pa.array(offsets, pa.list_(pa.int32())),
                     "length": pa.array(lengths.astype(np.int32))})


class SyntheticImages:
    """``i -> [one float32 [3, size, size] array]`` for samples with an image (seeded by ``i``)."""

    def __init__(self, size: int, token_count: int):
        self.size, self.token_count = size, token_count

    def __call__(self, i: int) -> list[np.ndarray]:
        rng = np.random.default_rng(i)
        return [rng.uniform(-1, 1, (3, self.size, self.size)).astype(np.float32)]


class Trainer:
    """One run (a mode of :data:`MODES`) of the training loop's parts; :meth:`step` does one optimizer step."""

    def __init__(self, mode: str, kind: str, table, model_dir: str, max_length: int, batch_size: int, steps: int,
                 seed: int, image_tokens: int):
        from datacopilot.train import SFTConfig
        from datacopilot.train.build import load_model, make_optimizer
        from datacopilot.train.data import PackedData, make_loader
        from datacopilot.train.loop import Collate, seed_all
        from datacopilot.train.runner import Run
        from datacopilot.train.schedule import make_scheduler

        attention = "varlen" if mode == "varlen" else "dense"
        cfg = SFTConfig(data="synthetic", model=model_dir, tokenizer="-", output_dir=tempfile.mkdtemp(),
                        model_type=kind, max_length=max_length, batch_size=batch_size, max_steps=steps + 1, lr=1e-3,
                        seed=seed, attention=attention, image_token_count=image_tokens, image_size=32,
                        progress=False).check()
        seed_all(seed)
        images = SyntheticImages(32, image_tokens) if kind == "vlm" else None
        data = PackedData(table, max_length, batch_size, seed=seed, images=images)
        self.samples_per_pack = len(data.lengths) / len(data.epoch(0)[0])
        if mode == "padded":
            data = PackedData(table, max_length, max(1, round(batch_size * self.samples_per_pack)), seed=seed,
                              mode="padded", images=images)
        model = load_model(cfg)
        scheduler = make_scheduler(cfg)
        self.mode, self.data = mode, data
        self.run = Run(cfg, model, make_optimizer(cfg, model, scheduler), scheduler, data,
                       Collate(max_length, attention, 0, padded=mode == "padded",
                               image_token_count=image_tokens if kind == "vlm" else None), print)
        self.run._step = 0
        self.loader = iter(make_loader(data, self.run.collate, 0, steps + 1))
        self.timed: list[dict] = []

    def step(self, timed: bool = True) -> None:
        t0 = time.perf_counter()
        batch = next(self.loader)
        rec = self.run.step([batch])
        rec["seconds"] = time.perf_counter() - t0
        if timed:
            self.timed.append(rec)

    def summary(self) -> dict:
        tokens = sum(r["target_tokens"] for r in self.timed)
        seconds = sum(r["seconds"] for r in self.timed)
        return {"mode": self.mode, "tokens_per_s": tokens / seconds, "target_tokens": tokens, "seconds": seconds,
                "fill": float(np.mean([r["fill"] for r in self.timed])), "batch_size": self.data.batch_size,
                "loss_first": self.timed[0]["loss"], "loss_last": self.timed[-1]["loss"]}


def measure(kind: str, table, model_dir: str, max_length: int, batch_size: int, steps: int, seed: int,
            image_tokens: int) -> dict[str, dict]:
    """The three runs of :data:`MODES`, their steps interleaved (load on a shared machine hits all alike)."""
    runs = [Trainer(m, kind, table, model_dir, max_length, batch_size, steps, seed, image_tokens) for m in MODES]
    for r in runs:
        r.step(timed=False)  # warm-up: paddle's kernels and allocator
    for _ in range(steps):
        for r in runs:
            r.step()
    return {r.mode: r.summary() for r in runs}


def _options(args, overrides) -> dict:
    opts = {**DEFAULTS, **LISTS}
    if args is not None:
        opts["seed"] = getattr(args, "seed", opts["seed"])
        for key in list(DEFAULTS) + list(LISTS):
            value = getattr(args, f"train_{key}", None)
            if value is not None:
                opts[key] = value
    opts.update(overrides)
    opts["lengths"] = [int(x) for x in str(opts["lengths"]).split(",")]
    opts["models"] = [x.strip() for x in str(opts["models"]).split(",")]
    return opts


def run(args=None, **overrides) -> list[str]:
    """Measure every model x max_length x mode; return markdown lines (``bench/packing.py --train`` appends them)."""
    from datacopilot.models.lm import build_tiny_lm
    from datacopilot.models.vlm import build_tiny_vlm

    opts = _options(args, overrides)
    rows, ratios = [], []
    top = max(opts["lengths"])
    with tempfile.TemporaryDirectory() as tmp:
        for kind in opts["models"]:
            path = os.path.join(tmp, kind)
            if kind == "vlm":
                build_tiny_vlm(path, opts["vocab"], image_token_count=opts["image_tokens"], image_size=32,
                               hidden=opts["hidden"], layers=opts["layers"], max_position=top,
                               image_token_id=IMAGE_TOKEN, seed=opts["seed"])
            else:
                build_tiny_lm(path, opts["vocab"], hidden=opts["hidden"], layers=opts["layers"], max_position=top,
                              seed=opts["seed"])
            for length in opts["lengths"]:
                image_tokens = opts["image_tokens"] if kind == "vlm" else 0
                table = synthetic_table(opts["samples"], length, opts["vocab"], opts["seed"], image_tokens)
                batch = max(1, opts["tokens_per_step"] // length)
                res = measure(kind, table, path, length, batch, opts["steps"], opts["seed"], opts["image_tokens"])
                print(f"{kind} {length}: " + ", ".join(f"{m} {res[m]['tokens_per_s']:,.0f} tok/s" for m in MODES),
                      flush=True)
                for m in MODES:
                    r = res[m]
                    shape = (f"{r['batch_size']} packs x {length}" if m != "padded"
                             else f"{r['batch_size']} samples, padded")
                    rows.append(f"| {kind} | {length} | {m} | {shape} | {r['fill']:.1%} | {r['tokens_per_s']:,.0f} | "
                                f"{r['loss_first']:.3f} -> {r['loss_last']:.3f} |")
                rate = {m: res[m]["tokens_per_s"] for m in MODES}
                ratios.append((kind, length, rate["varlen"] / rate["dense"], rate["varlen"] / rate["padded"],
                               rate["dense"] / rate["padded"]))
    out = [
        "## Training throughput: varlen packed vs dense-mask packed vs padded (tiny LM and VLM, CPU)", "",
        f"Tiny PaddleNLP Llama ({opts['layers']} layers, hidden {opts['hidden']}, vocab {opts['vocab']}; the VLM "
        f"adds a 1-layer vision encoder, one 32x32 image = {opts['image_tokens']} tokens on every other sample), "
        f"{opts['samples']} synthetic samples (lognormal, median 200, cut at max_length; 30% prompt), "
        f"{opts['tokens_per_step']} tokens per packed step, {opts['steps']} timed optimizer steps per run after one "
        f"warm-up step (the three runs' steps interleaved), seed {opts['seed']}, {os.cpu_count()} CPU core(s).", "",
        "| model | max_length | run | batch per step | fill | effective tokens/s (target tokens) "
        "| first -> last loss |",
        "|---|---:|---|---|---:|---:|---|", *rows, "",
        "| model | max_length | varlen / dense-mask packed | varlen / padded | dense-mask packed / padded |",
        "|---|---:|---:|---:|---:|",
        *[f"| {k} | {n} | **{a:.2f}x** | **{b:.2f}x** | {c:.2f}x |" for k, n, a, b, c in ratios], "",
    ]
    for kind, n, a, b, _ in ratios:
        if n == top:
            out.append(f"- {kind} at {n}: varlen / dense-mask packed {a:.2f}x (target >= {TARGET_VARLEN}x: "
                       f"{'meets' if a >= TARGET_VARLEN else 'misses'}).")
    for kind, n, a, b, _ in ratios:
        out.append(f"- {kind} at {n}: packed (varlen) / padded {b:.2f}x (target >= {TARGET_PADDED}x: "
                   f"{'meets' if b >= TARGET_PADDED else 'misses'}).")
    return out + [""]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for key, value in DEFAULTS.items():
        ap.add_argument(f"--{key.replace('_', '-')}", dest=f"train_{key}" if key != "seed" else "seed",
                        type=int, default=value)
    for key, value in LISTS.items():
        ap.add_argument(f"--{key}", dest=f"train_{key}", default=value, help=f"comma-separated (default {value})")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS_train.md"))
    args = ap.parse_args(argv)
    lines = run(args)
    command = "python bench/train_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join(["# Training throughput", "", f"Command: `{command.strip()}`", ""] + lines)
    print(text)
    with open(args.out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
