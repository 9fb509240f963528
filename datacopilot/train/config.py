"""The SFT configuration: one dataclass, loaded from YAML (or a dict) with errors that name the key.

Example YAML (every key but ``data``, ``model``, ``tokenizer`` and ``output_dir`` has a default)::

    data:                       # a path, a list of paths, or a list of {path, ratio}
      - {path: captions/, ratio: 0.7}
      - {path: vqa.jsonl, ratio: 0.3}
    schema: MM
    root: images/               # where relative image paths resolve (LLaVA's --image_folder)
    model: tiny-vlm/            # a model directory (save_pretrained layout)
    model_type: vlm             # lm | vlm
    tokenizer: tokenizer/
    output_dir: runs/sft
    max_length: 512
    batch_size: 4               # packs per micro-batch
    grad_accum: 2
    lr: 3.0e-4
    warmup_steps: 10
    decay: cosine               # cosine | linear | constant, after the warmup
    max_steps: 200
    lora: {r: 8, alpha: 16, target_modules: [".*q_proj.*", ".*v_proj.*"]}

>>> cfg = SFTConfig.from_dict({"data": "d.jsonl", "model": "m", "tokenizer": "t", "output_dir": "o"})
>>> cfg.data, cfg.lr
([('d.jsonl', None)], 0.0001)
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import Any

from datacopilot.errors import InputError

MODEL_TYPES = ("lm", "vlm")
PRECISIONS = ("fp32", "bf16", "fp16")
ATTENTIONS = ("varlen", "dense", "flashmask", "cu_seqlens")  # varlen: per segment (cpu/gpu); the last two: gpu
PACK_STRATEGIES = ("exact_fit", "bfd", "first_fit", "stream")  # as datacopilot.kernels.STRATEGIES
DECAYS = ("cosine", "linear", "constant")
OVERLONG = ("truncate", "drop")
BAD_SAMPLES = ("error", "skip")  # a sample with a missing or undecodable image: stop before training, or skip it
LORA_KEYS = ("r", "alpha", "target_modules", "dropout")
DEFAULT_LORA_TARGETS = (".*q_proj.*", ".*v_proj.*")
REQUIRED = ("data", "model", "tokenizer", "output_dir")
# keys that decide which samples each step sees: a resumed run must agree with its checkpoint on them
DATA_ORDER_KEYS = ("data", "schema", "max_length", "batch_size", "grad_accum", "seed", "pack_strategy", "overlong",
                   "mix_samples", "image_token_count", "bad_samples")


@dataclass
class SFTConfig:
    """Everything :func:`datacopilot.train.sft` needs; see the module docstring for a YAML example.

    ``data`` is normalized to a list of ``(path, ratio)`` pairs (ratio None when not mixing); an MMDataset may be
    given instead of a path when the config is built in Python. ``batch_size`` counts packs of ``max_length``
    tokens per micro-batch; an optimizer step sees ``batch_size * grad_accum`` packs. ``clip`` is the max global
    gradient norm (0 = off); ``save_every`` 0 saves only at the end.
    """

    data: Any = None
    model: str | None = None
    tokenizer: str | None = None
    output_dir: str | None = None
    schema: str | None = None
    root: str | None = None  # the image root of every data entry (LLaVA's --image_folder)
    model_type: str = "lm"
    max_length: int = 512
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-4
    warmup_steps: int = 0
    decay: str = "cosine"
    min_lr_ratio: float = 0.0
    max_steps: int = 100
    weight_decay: float = 0.0
    clip: float = 1.0
    seed: int = 0
    lora: dict | None = None
    precision: str = "fp32"
    attention: str = "varlen"
    pack_strategy: str = "exact_fit"
    overlong: str = "truncate"
    bad_samples: str = "error"
    mix_samples: int | None = None
    save_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 1
    image_token_count: int = 16
    image_size: int = 32
    system: str | None = None
    cache_dir: str | None = None
    num_workers: int = 2
    progress: bool = True
    source: str = field(default="config", repr=False, compare=False)

    # -- loading ---------------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str) -> "SFTConfig":
        """Read a YAML file; relative paths in it are taken relative to the file's directory.

        >>> SFTConfig.from_yaml("sft.yaml")  # doctest: +SKIP
        """
        import yaml

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise InputError(f"{path}: config file does not exist")
        with open(path, encoding="utf-8") as f:
            try:
                raw = yaml.safe_load(f)
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                where = f":{mark.line + 1}" if mark is not None else ""
                raise InputError(f"{path}{where}: not valid yaml: {getattr(e, 'problem', e)}") from e
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise InputError(f"{path}: expected a mapping of config keys, got {type(raw).__name__}")
        return cls.from_dict(raw, source=path, base_dir=os.path.dirname(os.path.abspath(path)))

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config", base_dir: str | None = None) -> "SFTConfig":
        """Build and check a config from a mapping; unknown keys are errors (with a suggestion)."""
        names = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
        for key in raw:
            if key not in names:
                near = difflib.get_close_matches(str(key), names, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise InputError(f"{source}: {key}: unknown config key{hint}")
        cfg = cls(**raw, source=source)
        if base_dir is not None:
            cfg._rebase(base_dir)
        return cfg.check()

    def _rebase(self, base: str) -> None:
        def fix(p):
            return p if not isinstance(p, str) or "://" in p or os.path.isabs(p) else os.path.join(base, p)

        for key in ("model", "tokenizer", "output_dir", "cache_dir", "root"):
            setattr(self, key, fix(getattr(self, key)))
        if isinstance(self.data, str):
            self.data = fix(self.data)
        elif isinstance(self.data, list):
            self.data = [fix(d) if isinstance(d, str) else ({**d, "path": fix(d.get("path"))}
                                                               if isinstance(d, dict) else d) for d in self.data]

    # -- checking --------------------------------------------------------------------------------------
    def check(self) -> "SFTConfig":
        """Validate every key; raise InputError naming the first bad one and what was given. Returns self."""
        src = self.source
        for key in REQUIRED:
            if getattr(self, key) in (None, "", []):
                raise InputError(f"{src}: {key}: required key is missing")
        for key in ("model", "tokenizer", "output_dir", "schema", "system", "cache_dir", "root"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise InputError(f"{src}: {key}: expected a string, got {value!r}")
        self.data = _normalize_data(self.data, src)
        for key, choices in (("model_type", MODEL_TYPES), ("precision", PRECISIONS), ("attention", ATTENTIONS),
                             ("pack_strategy", PACK_STRATEGIES), ("decay", DECAYS), ("overlong", OVERLONG),
                             ("bad_samples", BAD_SAMPLES)):
            value = getattr(self, key)
            if value not in choices:
                raise InputError(f"{src}: {key}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
        for key in ("max_length", "batch_size", "grad_accum", "max_steps", "log_every", "image_token_count",
                    "image_size", "num_workers", "keep_checkpoints"):
            _check_int(src, key, getattr(self, key), minimum=1)
        for key in ("warmup_steps", "save_every", "seed"):
            _check_int(src, key, getattr(self, key), minimum=0)
        if self.mix_samples is not None:
            _check_int(src, "mix_samples", self.mix_samples, minimum=1)
        self.lr = _check_float(src, "lr", self.lr, positive=True)
        for key in ("weight_decay", "clip", "min_lr_ratio"):
            setattr(self, key, _check_float(src, key, getattr(self, key), positive=False))
        if self.min_lr_ratio > 1:
            raise InputError(f"{src}: min_lr_ratio: expected a number between 0 and 1, got {self.min_lr_ratio!r}")
        self.lora = _normalize_lora(self.lora, src)
        if self.warmup_steps > self.max_steps:
            raise InputError(f"{src}: warmup_steps: expected at most max_steps ({self.max_steps}), got "
                             f"{self.warmup_steps}")
        return self

    def to_dict(self) -> dict:
        """A JSON-able dict of the config (an in-memory dataset is shown by its repr)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "source"}
        d["data"] = [[p if isinstance(p, str) else repr(p), r] for p, r in self.data]
        return d


def _check_int(src: str, key: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{src}: {key}: expected an integer >= {minimum}, got {value!r}")


def _check_float(src: str, key: str, value, positive: bool) -> float:
    if isinstance(value, str):  # YAML 1.1 reads ``3e-4`` (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and (value > 0 if positive else value >= 0)
    if not ok:
        raise InputError(f"{src}: {key}: expected a {'positive' if positive else 'non-negative'} number, got "
                         f"{value!r}")
    return float(value)


def _normalize_data(data, src: str) -> list[tuple[Any, float | None]]:
    from datacopilot.dataset import MMDataset

    items = data if isinstance(data, (list, tuple)) else [data]
    if not items:
        raise InputError(f"{src}: data: required key is missing")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, (tuple, list)) and len(item) == 2:
            item = {"path": item[0], "ratio": item[1]}
        if isinstance(item, (str, os.PathLike, MMDataset)):
            out.append((os.fspath(item) if not isinstance(item, MMDataset) else item, None))
            continue
        if not isinstance(item, dict):
            raise InputError(f"{src}: data[{i}]: expected a path or {{path, ratio}}, got {item!r}")
        extra = set(item) - {"path", "ratio"}
        if extra:
            raise InputError(f"{src}: data[{i}]: unknown key(s) {sorted(extra)}; expected path and ratio")
        path, ratio = item.get("path"), item.get("ratio")
        if not isinstance(path, (str, os.PathLike, MMDataset)) or path == "":
            raise InputError(f"{src}: data[{i}].path: expected a path, got {path!r}")
        if ratio is not None:
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0:
                raise InputError(f"{src}: data[{i}].ratio: expected a positive number, got {ratio!r}")
            ratio = float(ratio)
        out.append((path if isinstance(path, MMDataset) else os.fspath(path), ratio))
    ratios = [r for _, r in out]
    if len(out) > 1 and any(r is not None for r in ratios) and any(r is None for r in ratios):
        i = ratios.index(None)
        raise InputError(f"{src}: data[{i}].ratio: either every dataset has a ratio or none has")
    return out


def _normalize_lora(lora, src: str) -> dict | None:
    if lora in (None, False):
        return None
    if lora is True:
        lora = {}
    if not isinstance(lora, dict):
        raise InputError(f"{src}: lora: expected a mapping {{r, alpha, target_modules}} or null, got {lora!r}")
    for key in lora:
        if key not in LORA_KEYS:
            raise InputError(f"{src}: lora.{key}: unknown key; expected one of {', '.join(LORA_KEYS)}")
    out = {"r": lora.get("r", 8), "alpha": lora.get("alpha", 16),
           "target_modules": lora.get("target_modules", list(DEFAULT_LORA_TARGETS)),
           "dropout": lora.get("dropout", 0.0)}
    _check_int(src, "lora.r", out["r"], minimum=1)
    out["alpha"] = _check_float(src, "lora.alpha", out["alpha"], positive=True)
    out["dropout"] = _check_float(src, "lora.dropout", out["dropout"], positive=False)
    mods = out["target_modules"]
    if isinstance(mods, str):
        mods = [mods]
    if not isinstance(mods, list) or not mods or not all(isinstance(m, str) and m for m in mods):
        raise InputError(f"{src}: lora.target_modules: expected a non-empty list of name patterns, got "
                         f"{out['target_modules']!r}")
    out["target_modules"] = list(mods)
    return out
