"""Setting up a run: device checks, the model (LM or VLM, full fine-tune or LoRA), AdamW, and the forward pass.

Loss convention (see also :func:`datacopilot.models.lm.causal_lm_loss`): the loss of an optimizer step is the sum
of the token losses of every micro-batch accumulated into it divided by the number of target tokens in all of
them. Each micro-batch's backward uses ``its token-loss sum / the step's total target tokens``, so the gradient
is exactly that of one big batch, however the samples were split into packs and micro-batches.
"""

from __future__ import annotations

from datacopilot.errors import InputError, ModelError

IGNORE_INDEX = -100


def require_training_stack():
    """Import paddle and paddlenlp or raise MissingDependencyError with ``pip install 'datacopilot[paddle]'``."""
    from datacopilot.models.lm import require_paddlenlp

    require_paddlenlp()
    import paddle

    return paddle


def has_gpu() -> bool:
    import paddle

    try:
        return paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    except Exception:  # pragma: no cover - broken cuda setups count as no gpu
        return False


def check_device(cfg) -> str:
    """``"gpu"`` or ``"cpu"``; refuses GPU-only precision and attention switches on a CPU with a clear error."""
    import paddle

    gpu = has_gpu()
    if not gpu:
        if cfg.precision != "fp32":
            raise InputError(f"{cfg.source}: precision: {cfg.precision!r} needs a gpu (bf16/fp16 training runs on "
                             f"gpu only); no gpu found, use precision: fp32 on cpu")
        if cfg.attention in ("flashmask", "cu_seqlens"):
            raise InputError(f"{cfg.source}: attention: {cfg.attention!r} needs a gpu (paddle's flash attention "
                             f"kernels); no gpu found, use attention: varlen (per segment) or dense on cpu")
    paddle.set_device("gpu" if gpu else "cpu")
    return "gpu" if gpu else "cpu"


def load_model(cfg):
    """Load ``cfg.model`` as a causal LM or TinyVLM and apply LoRA if configured; returns the model in train mode."""
    import paddle

    if cfg.model_type == "vlm":
        from datacopilot.models.vlm import load_vlm

        model = load_vlm(cfg.model)
    else:
        from datacopilot.models.lm import load_causal_lm

        model = load_causal_lm(cfg.model)
    if cfg.lora:
        paddle.seed(cfg.seed)  # LoRA's A matrices start random: the same seed gives the same run
        if cfg.model_type == "vlm":
            model.lm = _apply_lora(model.lm, cfg)  # vision encoder and projector stay fully trainable
        else:
            model = _apply_lora(model, cfg)
    if cfg.attention != "dense":
        from datacopilot.models.attention import check_segments

        try:
            check_segments(model, cfg.attention)
        except ModelError as e:
            raise ModelError(f"{cfg.model}: {e}") from e
    model.train()
    return model


def _apply_lora(lm, cfg):
    from paddlenlp.peft import LoRAConfig, LoRAModel

    lora = cfg.lora
    alpha = int(lora["alpha"]) if float(lora["alpha"]).is_integer() else lora["alpha"]
    lcfg = LoRAConfig(target_modules=lora["target_modules"], r=lora["r"], lora_alpha=alpha,
                      lora_dropout=lora["dropout"], merge_weights=False, dtype="float32")
    try:
        wrapped = LoRAModel(lm, lcfg)
    except (ValueError, RuntimeError) as e:
        raise InputError(f"{cfg.source}: lora: paddlenlp could not apply lora: {e}") from e
    wrapped.mark_only_lora_as_trainable()
    if not any("lora" in name for name, p in wrapped.named_parameters() if not p.stop_gradient):
        raise InputError(f"{cfg.source}: lora.target_modules: no layer of the model matches "
                         f"{lora['target_modules']!r} (names look like {_layer_names(lm)[:3]})")
    return wrapped


def merged_model(model, cfg):
    """A plain copy of a LoRA-trained model, adapters folded into the weights (``W + A @ B * scaling``): the base
    model is loaded again from ``cfg.model`` and given the trained weights, so the copy loads without peft
    (``load_causal_lm`` / ``load_vlm``) and computes what the adapted model computes."""
    if cfg.model_type == "vlm":
        from datacopilot.models.vlm import load_vlm

        base = load_vlm(cfg.model)
        for name in ("vision", "projector"):
            _load(getattr(base, name), getattr(model, name).state_dict(), cfg)
        _load(base.lm, _merged_state(model.lm), cfg)
    else:
        from datacopilot.models.lm import load_causal_lm

        base = load_causal_lm(cfg.model)
        _load(base, _merged_state(model), cfg)
    base.eval()
    return base


def _merged_state(wrapped) -> dict:
    import paddle

    inner = wrapped.model
    state = {k: v for k, v in inner.state_dict().items() if "lora_" not in k}
    with paddle.no_grad():
        for name, layer in inner.named_sublayers():
            if hasattr(layer, "lora_A") and hasattr(layer, "lora_B") and not getattr(layer, "merged", False):
                state[f"{name}.weight"] = layer.weight + layer.lora_A @ layer.lora_B * layer.scaling
    return state


def _load(layer, state: dict, cfg) -> None:
    missing = sorted(set(layer.state_dict()) - set(state))
    if missing:
        raise ModelError(f"{cfg.model}: merging lora: the trained model lacks weights {missing[:3]}")
    layer.set_state_dict(state)


def _layer_names(model) -> list[str]:
    return [n for n, _ in model.named_sublayers() if n.endswith("proj")]


def make_optimizer(cfg, model, scheduler):
    """AdamW over the trainable parameters (weight decay on matrices only), global-norm clipping if ``clip``."""
    import paddle

    params = [p for p in model.parameters() if not p.stop_gradient]
    if not params:
        raise ModelError(f"{cfg.model}: the model has no trainable parameters")
    decay = {p.name for p in params if len(p.shape) >= 2}
    clip = paddle.nn.ClipGradByGlobalNorm(cfg.clip) if cfg.clip > 0 else None
    return paddle.optimizer.AdamW(learning_rate=scheduler, parameters=params, weight_decay=cfg.weight_decay,
                                  grad_clip=clip, apply_decay_param_fun=lambda name: name in decay)


def check_vocab(model, tokenizer, cfg) -> None:
    """The tokenizer's ids must fit the model's embedding table."""
    lm = model.lm if cfg.model_type == "vlm" else model
    vocab = int(getattr(lm.config, "vocab_size", 0) or 0)
    n = len(tokenizer)
    if vocab and n > vocab:
        raise ModelError(f"{cfg.tokenizer}: tokenizer has {n} tokens but the model {cfg.model} only "
                         f"{vocab} (vocab_size); rebuild the model with vocab_size >= {n}")


def target_tokens(labels) -> int:
    """Target tokens of a batch under the shift-by-one convention: labels[:, 1:] != -100."""
    return int((labels[:, 1:] != IGNORE_INDEX).astype("int64").sum())


def forward_sum(model, batch: dict, cfg):
    """``(sum of token losses, target tokens)`` of one collated micro-batch (tensors from the DataLoader)."""
    from datacopilot.models.lm import causal_lm_loss, lm_logits

    lm = model.lm if cfg.model_type == "vlm" else model
    ids, pos, labels = batch["input_ids"], batch["position_ids"], batch["labels"]
    if cfg.model_type == "vlm":
        embeds = model.embed(ids, batch.get("pixel_values"), batch.get("image_pack"), batch.get("image_offset"))
        inputs = {"inputs_embeds": embeds}
    else:
        inputs = {"input_ids": ids}
    if cfg.attention == "dense":
        mask = batch["attention_mask"]
    else:  # varlen, cu_seqlens, flashmask: the segments, never an [L, L] mask
        from datacopilot.models.attention import Segments

        mask = Segments.from_batch(batch, cfg.attention)
    logits = lm_logits(lm, position_ids=pos, attention_mask=mask, **inputs)
    return causal_lm_loss(logits, labels, return_sum=True)
