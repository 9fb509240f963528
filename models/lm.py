"""Causal language models through PaddleNLP: build a tiny one, load any from a local directory, and the loss.

Paddle and PaddleNLP are imported lazily, inside the functions, so ``import datacopilot`` never needs them; a
missing paddle raises :class:`~datacopilot.errors.MissingDependencyError` with the install line.

The loss convention used everywhere in training (:func:`causal_lm_loss`)::

    loss = sum over target tokens of -log p(token) / number of target tokens

with labels aligned to ``input_ids`` and shifted by one inside the loss (position ``t`` predicts ``labels[t + 1]``).
Why a sum over tokens divided by the token count, rather than a mean of per-sample means: a packed batch holds a
varying number of samples of varying lengths, and with the block-diagonal mask every target token of a sample gets
exactly the logit it would get if the sample ran alone. The sum of token losses is therefore the same whether the
samples run one at a time or packed in any arrangement, and so is the number of target tokens; their ratio, the
packed batch's loss, equals the mean over all target tokens of the samples, independent of how they were packed.
A mean of per-sample means would weight a sample by 1 / its length and depend on the grouping.

Attention masks: PaddleNLP 2.8.1's ``LlamaModel._prepare_decoder_attention_mask`` passes a 4-D mask through
unchanged (only 2-D and 3-D masks are expanded and combined with a causal mask) and turns a boolean mask into an
additive float mask (``0`` where True, ``finfo.min`` where False). So a boolean ``[B, 1, L, L]`` block-diagonal
causal mask is used exactly as given. It must be boolean: a float 4-D mask would be fed to ``paddle.where`` as a
condition. With ``use_flash_attention=True`` the model checks whether the (float) mask is plainly causal
(``triu(mask) == mask``), replaces only such a mask with ``None`` and otherwise hands the block mask to
``paddle.nn.functional.scaled_dot_product_attention``; a block-diagonal mask is therefore never dropped.
:func:`build_tiny_lm` saves ``use_flash_attention=False`` and no fused kernels, the plain CPU path. PaddleNLP
2.8.1's Llama has no FlashMask input (``attn_mask_startend_row_indices``); instead :func:`load_causal_lm` wires
:mod:`datacopilot.models.attention` into a loaded Llama, so a :class:`~datacopilot.models.attention.Segments` can
go where the mask goes: attention per segment (``sum(si^2)``, no ``[L, L]`` mask) on CPU, FlashAttention varlen or
FlashMask on GPU.
"""

from __future__ import annotations

import os

from datacopilot.errors import InputError, MissingDependencyError, ModelError

IGNORE_INDEX = -100


def require_paddle():
    """Import and return ``paddle``, or raise MissingDependencyError with the install line."""
    try:
        import paddle
    except ImportError as e:  # pragma: no cover - paddle is installed in the test environment
        raise MissingDependencyError("paddlepaddle", "paddle") from e
    return paddle


def require_paddlenlp():
    """Import and return ``paddlenlp.transformers``, or raise MissingDependencyError with the install line."""
    require_paddle()
    try:
        from paddlenlp import transformers
    except ImportError as e:  # pragma: no cover
        raise MissingDependencyError("paddlenlp", "paddle") from e
    return transformers


def build_tiny_lm(out_dir: str, vocab_size: int, hidden: int = 128, layers: int = 2, heads: int = 4,
                  max_position: int = 2048, seed: int = 0, init_std: float = 0.02) -> str:
    """Build a small PaddleNLP ``LlamaForCausalLM`` with random float32 weights and save it to ``out_dir``.

    The weights depend only on the arguments (``seed`` seeds Paddle's generator; ``init_std`` is the normal
    initializer's standard deviation: LLaMA's 0.02 gives nearly uniform predictions at this size, about
    ``1 / sqrt(hidden)`` gives a model whose outputs depend strongly on its context). Flash attention and fused
    kernels are off so the model runs on CPU with a dense 4-D boolean mask. Returns ``out_dir``.

    Example::

        >>> path = build_tiny_lm("/tmp/tiny_lm", vocab_size=500, hidden=64)   # doctest: +SKIP
        >>> model = load_causal_lm(path)                                       # doctest: +SKIP
    """
    for name, value in (("vocab_size", vocab_size), ("hidden", hidden), ("layers", layers), ("heads", heads),
                        ("max_position", max_position)):
        if not isinstance(value, int) or value <= 0:
            raise InputError(f"`{name}` must be a positive integer, got {value!r}")
    if not isinstance(init_std, (int, float)) or init_std <= 0:
        raise InputError(f"`init_std` must be a positive number, got {init_std!r}")
    if hidden % heads:
        raise InputError(f"`hidden` must be divisible by `heads`, got hidden={hidden}, heads={heads}")
    paddle = require_paddle()
    tf = require_paddlenlp()
    config = tf.LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_position,
        use_flash_attention=False, fuse_attention_qkv=False, fuse_attention_ffn=False, use_fused_rms_norm=False,
        use_fused_rope=False, tie_word_embeddings=False, dtype="float32", initializer_range=float(init_std), pad_token_id=0, bos_token_id=1,
        eos_token_id=2,
    )
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype("float32")
    try:
        paddle.seed(seed)
        model = tf.LlamaForCausalLM(config)
    finally:
        paddle.set_default_dtype(previous)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    return out_dir


def load_causal_lm(path: str, use_flash_attention: bool | None = None):
    """Load any PaddleNLP causal LM saved in the local directory ``path`` (``AutoModelForCausalLM``).

    ``use_flash_attention`` overrides the saved config's flag when given (None keeps it). Raises ModelError
    when ``path`` does not exist or holds no loadable model. The model is returned in training mode with
    float32 weights unless the saved config says otherwise.

    Example::

        >>> model = load_causal_lm("/tmp/tiny_lm")                  # doctest: +SKIP
        >>> logits = lm_logits(model, input_ids, position_ids, mask)  # doctest: +SKIP
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ModelError(f"{path}: model directory does not exist")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelError(f"{path}: not a model directory (no config.json); build one with build_tiny_lm or "
                         f"save_pretrained")
    tf = require_paddlenlp()
    try:
        extra = {} if use_flash_attention is None else {"use_flash_attention": bool(use_flash_attention)}
        model = tf.AutoModelForCausalLM.from_pretrained(path, **extra)
    except Exception as e:  # PaddleNLP raises many types (ValueError, KeyError, OSError, EnvironmentError)
        raise ModelError(f"{path}: could not load a causal lm: {type(e).__name__}: {e}") from e
    from datacopilot.models.attention import wire_attention

    wire_attention(model)  # a Llama also takes Segments as its attention_mask; other models are left as they are
    model.train()
    return model


def lm_logits(model, input_ids=None, position_ids=None, attention_mask=None, inputs_embeds=None):
    """Run a PaddleNLP causal LM and return its logits ``[B, L, V]``.

    ``attention_mask`` should be a boolean ``[B, 1, L, L]`` tensor (True = may attend), passed through
    unchanged, or a :class:`~datacopilot.models.attention.Segments` (a model from :func:`load_causal_lm` only).
    Labels are never given to the model: PaddleNLP's own criterion neither shifts nor counts tokens the way
    :func:`causal_lm_loss` does.
    """
    paddle = require_paddle()
    from datacopilot.models.attention import Segments, check_segments

    if isinstance(attention_mask, Segments):
        check_segments(model, attention_mask.kind)
    elif attention_mask is not None and attention_mask.dtype != paddle.bool:
        raise InputError(f"`attention_mask` must be a boolean tensor (True = may attend), got {attention_mask.dtype}")
    elif attention_mask is not None and len(attention_mask.shape) != 4:
        raise InputError(f"`attention_mask` must have shape [B, 1, L, L], got {list(attention_mask.shape)}")
    out = model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                inputs_embeds=inputs_embeds, return_dict=True)
    return out.logits


def token_losses(logits, labels):
    """Per-token cross entropy with the shift-by-one convention: ``(losses [B, L-1], target mask [B, L-1])``.

    Position ``t`` predicts ``labels[t + 1]``; positions whose next label is -100 contribute 0 and are not
    targets.
    """
    paddle = require_paddle()
    if len(logits.shape) != 3 or len(labels.shape) != 2 or list(logits.shape[:2]) != list(labels.shape):
        raise InputError(f"`logits` [B, L, V] and `labels` [B, L] do not match: got {list(logits.shape)} and "
                         f"{list(labels.shape)}")
    shift_logits = logits[:, :-1, :].astype("float32")
    shift_labels = labels[:, 1:].astype("int64")
    target = shift_labels != IGNORE_INDEX
    safe = paddle.where(target, shift_labels, paddle.zeros_like(shift_labels))
    losses = paddle.nn.functional.cross_entropy(shift_logits, safe.unsqueeze(-1), reduction="none").squeeze(-1)
    losses = losses * target.astype(losses.dtype)
    return losses, target


def causal_lm_loss(logits, labels, return_sum: bool = False):
    """Sum of token losses / number of target tokens, labels shifted by one (see the module docstring for why).

    ``logits`` ``[B, L, V]``, ``labels`` ``[B, L]`` aligned with ``input_ids`` (-100 = not a target). Returns a
    scalar tensor; with ``return_sum=True`` returns ``(sum of token losses, number of target tokens)`` so callers
    can accumulate over micro-batches and divide once. A batch without any target token has loss 0.

    Example::

        >>> logits = lm_logits(model, ids, pos, mask)                  # doctest: +SKIP
        >>> loss = causal_lm_loss(logits, labels); loss.backward()      # doctest: +SKIP
    """
    paddle = require_paddle()
    losses, target = token_losses(logits, labels)
    total = losses.sum()
    count = target.astype("int64").sum()
    if return_sum:
        return total, int(count)
    return total / paddle.clip(count.astype(total.dtype), min=1.0)
