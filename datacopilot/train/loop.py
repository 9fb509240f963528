"""The SFT loop: data -> tokenize -> check images -> pack -> batches -> AdamW with warmup/decay, accumulation, clipping.

Per optimizer step it logs loss, learning rate, effective tokens/s (target tokens only, not padding nor prompt
tokens) and the pack fill rate; a tqdm bar shows progress; checkpoints go to ``<output_dir>/checkpoints`` every
``save_every`` steps and at the end, with ``log.jsonl``, ``loss.png`` and the trained model in ``<output_dir>/final``.
The loss is the sum of token losses / number of target tokens over all micro-batches of the step (see
:mod:`datacopilot.train.build`).

Faults: every image is checked before training (a missing or undecodable one stops the run naming the sample and
the file, or under ``bad_samples: skip`` is left out, counted and listed in ``bad_samples.jsonl``); an error while
reading batches ends the run with its message, never a hang; Ctrl-C or SIGTERM saves the step the weights are at
(:mod:`datacopilot.train.runner`); resume uses the newest intact checkpoint (:mod:`datacopilot.train.checkpoint`)
and refuses a config whose data order or schedule differs from the checkpoint's.
"""

from __future__ import annotations

import os
import random

import numpy as np

from datacopilot.errors import InputError

from .config import DATA_ORDER_KEYS, SFTConfig
from .runner import Run


def _config(config) -> SFTConfig:
    if isinstance(config, SFTConfig):
        return config.check()
    if isinstance(config, dict):
        return SFTConfig.from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        return SFTConfig.from_yaml(os.fspath(config))
    raise InputError(f"`config` must be an SFTConfig, a dict or a yaml path, got {type(config).__name__}")


def load_data(cfg: SFTConfig):
    """The training rows: each ``data`` entry loaded (``schema``), mixed by ratio under ``seed`` if ratios are set."""
    import datacopilot
    from datacopilot.dataset import MMDataset

    from .mix import mix

    parts = []
    for path, ratio in cfg.data:
        ds = path if isinstance(path, MMDataset) else datacopilot.load(path, schema=cfg.schema, invalid="raise",
                                                                          root=cfg.root)
        if len(ds) == 0:
            raise InputError(f"{cfg.source}: data: {path if isinstance(path, str) else 'dataset'} has no rows")
        parts.append((ds, ratio))
    if len(parts) == 1 and parts[0][1] is None:
        return parts[0][0]
    if parts[0][1] is None:  # several datasets without ratios: all rows of each
        return parts[0][0].concat(*[p.convert(parts[0][0].schema) if p.schema != parts[0][0].schema else p
                                    for p, _ in parts[1:]])
    return mix(parts, seed=cfg.seed, n=cfg.mix_samples)


def prepare(cfg: SFTConfig):
    """(tokenizer, tokenized dataset, PackedData) for a config; tokenization is cached in ``cache_dir``."""
    from datacopilot.models.chat_template import ChatTemplate
    from datacopilot.models.tokenizer import load_tokenizer

    from .data import ImageLoader, PackedData
    from .tokenize import tokenize_dataset

    tokenizer = load_tokenizer(cfg.tokenizer)
    tpl = ChatTemplate(tokenizer, image_token_count=cfg.image_token_count, system=cfg.system)
    ds = load_data(cfg)
    cache = cfg.cache_dir or os.path.join(cfg.output_dir, "tokenized")
    tok = tokenize_dataset(ds, tpl, cfg.max_length, cache_dir=cache, num_workers=cfg.num_workers)
    images = ImageLoader(tok, cfg.image_size, cfg.image_token_count) if cfg.model_type == "vlm" else None
    data = PackedData(tok.to_arrow(), cfg.max_length, cfg.batch_size, seed=cfg.seed, strategy=cfg.pack_strategy,
                      overlong=cfg.overlong, images=images, bad_samples=cfg.bad_samples)
    data.check_images(num_workers=max(4, cfg.num_workers))  # before training: a bad image stops the run now
    return tokenizer, tok, data


class Collate:
    """The DataLoader's collate_fn: H2's PackedCollator at ``max_length`` (or, padded, at the batch's longest)."""

    def __init__(self, max_length: int, attention: str, pad_id: int, padded: bool = False,
                 image_token_count: int | None = None):
        self.max_length, self.attention, self.pad_id, self.padded = max_length, attention, pad_id, padded
        self.image_token_count = image_token_count
        self._cache: dict[int, object] = {}

    def __call__(self, packs: list[list[dict]]) -> dict:
        from .collate import PackedCollator

        length = self.max_length
        if self.padded:
            length = max(sum(len(s["input_ids"]) for s in p) for p in packs)
        if length not in self._cache:
            self._cache[length] = PackedCollator(length, attention=self.attention, pad_id=self.pad_id,
                                                 image_token_count=self.image_token_count)
        return self._cache[length](packs)


def seed_all(seed: int) -> None:
    import paddle

    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def sft(config, resume: bool = False, echo=print, stop_at: int | None = None) -> dict:
    """Fine-tune ``config.model`` on ``config.data``; returns ``{"loss", "steps", "history", ...}``.

    ``config`` is an :class:`SFTConfig`, a dict or a YAML path. With ``resume=True`` the newest intact checkpoint
    in ``output_dir/checkpoints`` is restored (model, optimizer, scheduler, RNG, data cursor) and training
    continues with the batches and learning rates an uninterrupted run would have had; a damaged newer checkpoint
    is reported by file name and skipped; without one, training starts from step 0. A resumed run must keep the
    config keys that fix the data order and the schedule (``max_steps`` among them), or it is refused.

    ``stop_at`` stops after that optimizer step (at most ``max_steps``) with a checkpoint and no final model; the
    schedule and data order stay those of the configured ``max_steps``, so resuming to the end gives the
    uninterrupted run's losses. Images are checked before training (``bad_samples`` in the config).

    >>> result = sft("sft.yaml")                                 # doctest: +SKIP
    >>> result["history"][0]["loss"] > result["loss"]            # doctest: +SKIP
    True
    """
    from .build import check_device, check_vocab, load_model, make_optimizer, require_training_stack
    from .checkpoint import load_latest
    from .schedule import make_scheduler, set_step

    cfg = _config(config)
    if stop_at is not None and (isinstance(stop_at, bool) or not isinstance(stop_at, int) or stop_at < 1
                                or stop_at > cfg.max_steps):
        raise InputError(f"{cfg.source}: a run can stop at a step from 1 to max_steps ({cfg.max_steps}), got "
                         f"{stop_at!r}; to train longer raise max_steps, which fixes the learning-rate schedule")
    require_training_stack()
    device = check_device(cfg)
    os.makedirs(cfg.output_dir, exist_ok=True)
    seed_all(cfg.seed)
    tokenizer, tok, data = prepare(cfg)
    model = load_model(cfg)
    check_vocab(model, tokenizer, cfg)
    scheduler = make_scheduler(cfg)
    optimizer = make_optimizer(cfg, model, scheduler)
    start, history = 0, []
    ckpt = load_latest(cfg.output_dir, model, optimizer, warn=echo) if resume else None
    if ckpt:
        _check_same_run(cfg, ckpt.state, ckpt.path, data)
        start, history = ckpt.step, list(ckpt.state["history"])
        set_step(scheduler, start)  # the rate of step `start` of this schedule, not the saved scheduler's last
        data.restore_skipped(ckpt.state.get("skipped") or [])
        echo(f"resuming from {ckpt.path} at step {start}")
        if stop_at is not None and stop_at < start:
            raise InputError(f"{cfg.source}: the checkpoint {ckpt.path} is at step {start}, past the requested stop "
                             f"at step {stop_at}")
    elif resume:
        echo(f"no checkpoint in {cfg.output_dir}; starting from step 0")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    collate = Collate(cfg.max_length, cfg.attention, pad_id,
                      image_token_count=cfg.image_token_count if cfg.model_type == "vlm" else None)
    run = Run(cfg, model, optimizer, scheduler, data, collate, echo)
    history = run.train(start, history, stop=stop_at)
    return run.finish(history, tokenizer, device, len(tok))


def _check_same_run(cfg: SFTConfig, state: dict, ckpt: str, data) -> None:
    """A resumed run must be the run its checkpoint was cut from: same data order, same schedule, same samples
    skipped for bad images; else InputError saying which key changed and why it matters."""
    from .schedule import SCHEDULE_KEYS

    saved = state.get("config", {})
    now = cfg.to_dict()
    for keys, what in ((DATA_ORDER_KEYS, "the data order"), (SCHEDULE_KEYS, "the learning-rate schedule")):
        for key in keys:
            a, b = saved.get(key), now.get(key)
            if key == "data":
                a = [list(x) for x in a or []]
            if key in saved and a != b:
                raise InputError(f"{cfg.source}: {key}: is {b!r} but the checkpoint {ckpt} was written with {a!r}; "
                                 f"a resumed run must keep the keys that fix {what} ({', '.join(keys)}), or it "
                                 f"would not repeat the run it continues; to stop a run early use --max-steps "
                                 f"(stop_at) and keep max_steps")
    if "skipped" in state:
        then = sorted(r["sample"] for r in state["skipped"] if r.get("stage") == "check")
        now_ = sorted(r["sample"] for r in data.skipped if r.get("stage") == "check")
        if then != now_:
            raise InputError(f"{cfg.source}: the samples with a bad image changed since the checkpoint {ckpt} "
                             f"({len(then)} skipped then, {len(now_)} now): the data order would differ; fix the "
                             f"images back or start again without resume")


__all__ = ["sft", "load_data", "prepare", "Collate", "seed_all"]
