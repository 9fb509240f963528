"""Attention over the segments of packed rows, wired into PaddleNLP's Llama: cost ``sum(si^2)``, not ``L^2``.

A packed batch ``[B, L]`` holds several samples (segments) per row; each token may attend only to the earlier
tokens of its own segment. The dense path hands the model an ``[B, 1, L, L]`` block-diagonal mask and pays
``L^2`` per row. Here the model is given a :class:`Segments` instead, where the mask would go
(``attention_mask=``), and every attention layer runs one of three kernels over the same segments:

- ``"varlen"`` (CPU and GPU, the default for packed training): segments grouped in buckets of one length
  (:func:`datacopilot.kernels.varlen_plan`), one batched ``[count, heads, m, m]`` matmul per bucket with a plain
  causal mask, one gather in and one gather out for the whole batch. No ``[L, L]`` array exists. The scores,
  the additive ``finfo.min`` mask and the float32 softmax are PaddleNLP's own, so the result equals the dense
  block-diagonal path (padding included: a padding position attends only to itself) to float rounding.
- ``"cu_seqlens"`` (GPU): ``paddle.nn.functional.flash_attention.flash_attn_unpadded`` over the flattened
  batch with :func:`datacopilot.kernels.cu_seqlens` boundaries (each row's padding run one extra sequence, so
  padding positions see earlier padding; nothing reads them).
- ``"flashmask"`` (GPU): ``paddle.nn.functional.flashmask_attention`` with the causal start rows of
  :func:`datacopilot.kernels.flashmask_row_indices` (exactly the block-diagonal mask).

The two GPU kernels take float16 / bfloat16 only: float32 inputs are cast to bfloat16 where the GPU supports
it (else float16) for the kernel and the output cast back. They raise :class:`ModelError` on a CPU tensor.

:func:`wire_attention` (called by :func:`datacopilot.models.lm.load_causal_lm`) turns each ``LlamaAttention``
of a model into :class:`VarlenLlamaAttention` and its ``LlamaModel`` into :class:`VarlenLlamaModel`: same
parameters and names (checkpoints, LoRA target names and ``save_pretrained`` are unchanged), same behaviour with
a tensor mask, and the segment path when the mask is a :class:`Segments`. Rotary positions come from the
``position_ids`` given (restarting per segment, as the collator makes them). Not supported on the segment path
(:func:`check_segments` says so): tensor / sequence / segment parallelism, alibi, long-sequence strategies, a KV
cache. Models other than PaddleNLP's Llama are not wired; they train with ``attention: dense``.

Example::

    >>> model = load_causal_lm(path)                                   # doctest: +SKIP
    >>> seg = Segments.from_lens([[300, 200, 12]], 1024)               # doctest: +SKIP
    >>> logits = lm_logits(model, ids, pos, attention_mask=seg)         # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from datacopilot.errors import InputError, ModelError

try:
    import paddle
    import paddle.nn.functional as F
    from paddlenlp.transformers.llama.modeling import LlamaAttention, LlamaModel, apply_rotary_pos_emb, repeat_kv
    from paddlenlp.transformers.model_outputs import BaseModelOutputWithPastAndCrossAttentions
except ImportError:  # pragma: no cover - require_paddlenlp raises MissingDependencyError before any use
    paddle = F = None
    LlamaAttention = LlamaModel = object

KINDS = ("varlen", "cu_seqlens", "flashmask")
GPU_KINDS = ("cu_seqlens", "flashmask")
# the collator's output keys each kind reads (datacopilot.train.collate.PackedCollator)
BATCH_KEYS = {"varlen": ("varlen_gather", "varlen_scatter", "varlen_buckets"),
              "cu_seqlens": ("cu_seqlens", "max_seqlen"), "flashmask": ("attn_mask_startend_row_indices",)}


@dataclass(frozen=True, eq=False)
class Segments:
    """The segments of a packed batch ``[batch, length]`` and the kernel (``kind``) that attends over them.

    Pass it as a wired model's ``attention_mask``. Build it from segment lengths (:meth:`from_lens`) or from a
    collated batch (:meth:`from_batch`). ``varlen`` holds the bucket plan (``gather``, ``scatter`` int64
    tensors, ``buckets`` as ``(m, count, first slot)`` tuples); ``cu_seqlens`` the int32 boundaries and
    ``max_seqlen``; ``flashmask`` the int32 ``[B, 1, L, 1]`` start rows.
    """

    kind: str
    batch: int
    length: int
    gather: object = None
    scatter: object = None
    buckets: tuple = ()
    cu_seqlens: object = None
    max_seqlen: int = 0
    startend_row_indices: object = None

    @classmethod
    def from_lens(cls, batch_seq_lens, length: int, kind: str = "varlen") -> "Segments":
        """Segments of rows of ``length`` tokens holding segments of ``batch_seq_lens`` (then padding)."""
        from datacopilot.kernels import cu_seqlens, flashmask_row_indices, varlen_plan

        _check_kind(kind)
        if kind == "varlen":
            plan = varlen_plan(batch_seq_lens, length)
            arrays = {"varlen_gather": plan.gather, "varlen_scatter": plan.scatter, "varlen_buckets": plan.buckets}
        elif kind == "cu_seqlens":
            cu = cu_seqlens(batch_seq_lens, length)
            arrays = {"cu_seqlens": cu, "max_seqlen": int(np.diff(cu).max())}
        else:
            arrays = {"attn_mask_startend_row_indices": flashmask_row_indices(batch_seq_lens, length)}
        return cls._from_arrays(arrays, kind, len(batch_seq_lens), int(length))

    @classmethod
    def from_batch(cls, batch: dict, kind: str) -> "Segments":
        """Segments of a batch from :class:`~datacopilot.train.collate.PackedCollator` (numpy or tensors)
        collated with ``attention=kind``; InputError names a missing key."""
        _check_kind(kind)
        missing = [k for k in BATCH_KEYS[kind] + ("input_ids",) if k not in batch]
        if missing:
            raise InputError(f"attention: {kind!r}: the batch has no {', '.join(map(repr, missing))}; collate it "
                             f"with PackedCollator(attention={kind!r})")
        b, length = (int(x) for x in batch["input_ids"].shape)
        return cls._from_arrays(batch, kind, b, length)

    @classmethod
    def _from_arrays(cls, batch: dict, kind: str, b: int, length: int) -> "Segments":
        if kind == "varlen":
            buckets = tuple(tuple(int(x) for x in row) for row in _numpy(batch["varlen_buckets"]).reshape(-1, 3))
            return cls(kind, b, length, gather=_tensor(batch["varlen_gather"], "int64"),
                       scatter=_tensor(batch["varlen_scatter"], "int64"), buckets=buckets)
        if kind == "cu_seqlens":
            return cls(kind, b, length, cu_seqlens=_tensor(batch["cu_seqlens"], "int32"),
                       max_seqlen=int(_numpy(batch["max_seqlen"])))
        return cls(kind, b, length, startend_row_indices=_tensor(batch["attn_mask_startend_row_indices"], "int32"))

    def check(self, batch: int, length: int) -> None:
        if (batch, length) != (self.batch, self.length):
            raise InputError(f"segments describe a batch [{self.batch}, {self.length}] but the model was given "
                             f"[{batch}, {length}]")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise InputError(f"`kind` must be one of {KINDS}, got {kind!r}")


def _numpy(x):
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def _tensor(x, dtype: str):
    t = x if isinstance(x, paddle.Tensor) else paddle.to_tensor(np.asarray(x))
    return t if t.dtype == getattr(paddle, dtype) else t.astype(dtype)


# ---------------------------------------------------------------- the kernels
def attend(q, k, v, segments: Segments):
    """Attention of ``q``, ``k``, ``v`` ``[B, L, H, D]`` (as many key as query heads) over ``segments``;
    returns ``[B, L, H * D]`` in ``q``'s dtype."""
    b, length, heads, dim = q.shape
    segments.check(b, length)
    if k.shape[2] != heads or v.shape[2] != heads:
        raise InputError(f"attend: {heads} query heads but {k.shape[2]} key and {v.shape[2]} value heads; "
                         f"repeat the key/value heads first")
    if segments.kind == "varlen":
        return varlen_attention(q, k, v, segments)
    require_gpu(q, segments.kind)
    if segments.kind == "cu_seqlens":  # pragma: no cover - needs a gpu (tests/gpu)
        from paddle.nn.functional.flash_attention import flash_attn_unpadded

        out, _ = flash_attn_unpadded(**flash_unpadded_args(q, k, v, segments))
    else:  # pragma: no cover - needs a gpu (tests/gpu)
        out = F.flashmask_attention(**flashmask_args(q, k, v, segments))
    return out.reshape([b, length, heads * dim]).astype(q.dtype)


def varlen_attention(q, k, v, segments: Segments):
    """The bucketed per-segment attention (module docs); ``[B, L, H, D]`` in, ``[B, L, H * D]`` out."""
    b, length, heads, dim = q.shape
    dtype = q.dtype
    qkv = paddle.concat([q, k, v], axis=-1).reshape([b * length, heads, 3 * dim])
    qkv = paddle.concat([qkv, paddle.zeros([1, heads, 3 * dim], dtype)], axis=0)  # the filler slots' zero row
    slots = paddle.gather(qkv, segments.gather, axis=0)
    top = max(m for m, _, _ in segments.buckets)
    bias = causal_bias(top, dtype) if top > 1 else None
    size = bias.shape[0] if top > 1 else 0
    outs = []
    for m, count, first in segments.buckets:
        x = slots[first:first + count * m]
        if m == 1:  # a padding position or a one-token segment: its only key is itself
            outs.append(x[:, :, 2 * dim:].reshape([count, heads * dim]))
            continue
        x = x.reshape([count, m, heads, 3 * dim]).transpose([0, 2, 1, 3])
        qb, kb, vb = paddle.split(x, 3, axis=-1)
        scores = paddle.matmul(qb / math.sqrt(dim), kb, transpose_y=True)
        scores = scores + (bias[:m, :m] if m < size else bias).astype(scores.dtype)
        with paddle.amp.auto_cast(False):
            probs = F.softmax(scores, axis=-1, dtype="float32").astype(dtype)
        outs.append(paddle.matmul(probs, vb).transpose([0, 2, 1, 3]).reshape([count * m, heads * dim]))
    out = paddle.gather(paddle.concat(outs, axis=0), segments.scatter, axis=0)
    return out.reshape([b, length, heads * dim])


_BIAS: dict = {}  # (dtype, place) -> the largest causal bias built so far; a smaller one is its top-left corner


def causal_bias(m: int, dtype):
    """An additive causal mask of at least ``[m, m]`` (its top-left ``[m, m]`` corner is the one of size ``m``):
    0 on and below the diagonal, ``finfo(dtype).min`` above, as PaddleNLP's dense mask. Kept between calls."""
    key = (str(dtype), str(paddle.get_device()))
    have = _BIAS.get(key)
    if have is None or have.shape[0] < m:
        keep = paddle.tril(paddle.ones([m, m], "bool"))
        have = paddle.where(keep, paddle.zeros([m, m], dtype), paddle.full([m, m], paddle.finfo(dtype).min, dtype))
        _BIAS[key] = have
    return have


def kernel_dtype(dtype):
    """The dtype the flash kernels run in: float16 / bfloat16 as given, float32 as bfloat16 where supported."""
    if dtype in (paddle.float16, paddle.bfloat16):
        return dtype
    try:
        return paddle.bfloat16 if paddle.amp.is_bfloat16_supported() else paddle.float16
    except Exception:  # pragma: no cover - no device to ask
        return paddle.float16


def flash_unpadded_args(q, k, v, segments: Segments) -> dict:
    """Keyword arguments of ``flash_attn_unpadded`` for ``[B, L, H, D]`` inputs: the batch flattened to
    ``[B * L, H, D]``, one ``cu_seqlens`` for queries and keys, causal, no dropout, scale ``1 / sqrt(D)``."""
    b, length, heads, dim = q.shape
    half = kernel_dtype(q.dtype)

    def flat(t):
        return t.reshape([b * length, t.shape[2], dim]).astype(half)

    return {"query": flat(q), "key": flat(k), "value": flat(v), "cu_seqlens_q": segments.cu_seqlens,
            "cu_seqlens_k": segments.cu_seqlens, "max_seqlen_q": segments.max_seqlen,
            "max_seqlen_k": segments.max_seqlen, "scale": 1.0 / math.sqrt(dim), "dropout": 0.0, "causal": True}


def flashmask_args(q, k, v, segments: Segments) -> dict:
    """Keyword arguments of ``flashmask_attention``: ``[B, L, H, D]`` inputs, causal start rows ``[B, 1, L, 1]``."""
    half = kernel_dtype(q.dtype)
    return {"query": q.astype(half), "key": k.astype(half), "value": v.astype(half),
            "startend_row_indices": segments.startend_row_indices, "causal": True, "dropout": 0.0}


def require_gpu(x, kind: str) -> None:
    """ModelError unless ``x`` lives on a GPU (the flash kernels have no CPU implementation)."""
    if not x.place.is_gpu_place():
        raise ModelError(f"attention: {kind!r} runs paddle's flash attention kernels, which need a gpu (paddle "
                         f"built with cuda and a visible device); the tensors are on {x.place}; on a cpu use "
                         f"attention: varlen")


# ---------------------------------------------------------------- the wiring into PaddleNLP's Llama
class VarlenLlamaAttention(LlamaAttention):
    """PaddleNLP's ``LlamaAttention`` that also takes :class:`Segments` as its ``attention_mask``."""

    def forward(self, hidden_states, position_ids=None, past_key_value=None, attention_mask=None,
                output_attentions=False, use_cache=False, alibi=None, npu_is_casual=False):
        if not isinstance(attention_mask, Segments):
            return super().forward(hidden_states, position_ids, past_key_value, attention_mask, output_attentions,
                                   use_cache, alibi, npu_is_casual)
        if past_key_value is not None or use_cache or output_attentions or alibi is not None:
            raise ModelError("attention over segments takes no kv cache, attention outputs or alibi")
        q, k, v = self._project(hidden_states)
        if self.config.rope:
            cos, sin = self.rotary_emb(v, seq_len=k.shape[1])
            q, k = apply_rotary_pos_emb(q, k, cos, sin, position_ids)
        k = repeat_kv(k, self.num_key_value_groups)
        v = repeat_kv(v, self.num_key_value_groups)
        return self.o_proj(attend(q, k, v, attention_mask))

    def _project(self, hidden):
        hd, kv = self.head_dim, self.num_key_value_heads
        if self.fuse_attention_qkv:
            mix = self.qkv_proj(hidden).reshape([0, 0, kv, (self.num_key_value_groups + 2) * hd])
            q, k, v = paddle.split(mix, [self.num_key_value_groups * hd, hd, hd], axis=-1)
            return q.reshape([0, 0, self.num_heads, hd]), k, v
        return (self.q_proj(hidden).reshape([0, 0, self.num_heads, hd]),
                self.k_proj(hidden).reshape([0, 0, kv, hd]), self.v_proj(hidden).reshape([0, 0, kv, hd]))


class VarlenLlamaModel(LlamaModel):
    """PaddleNLP's ``LlamaModel`` that also takes :class:`Segments` as its ``attention_mask``: no 4-D mask is
    built, the segments go to every layer's attention."""

    def forward(self, input_ids=None, position_ids=None, attention_mask=None, inputs_embeds=None, use_cache=None,
                past_key_values=None, output_attentions=False, output_hidden_states=None, return_dict=False,
                **kwargs):
        if not isinstance(attention_mask, Segments):
            return super().forward(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                                   inputs_embeds=inputs_embeds, use_cache=use_cache, past_key_values=past_key_values,
                                   output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                                   return_dict=return_dict, **kwargs)
        if use_cache or past_key_values is not None or output_attentions:
            raise ModelError("attention over segments takes no kv cache and returns no attentions")
        if (input_ids is None) == (inputs_embeds is None):
            raise InputError("give exactly one of `input_ids` and `inputs_embeds`")
        if position_ids is None:
            raise InputError("attention over segments needs `position_ids` (restarting at 0 in each segment)")
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        attention_mask.check(*hidden.shape[:2])
        states = [] if output_hidden_states else None
        for layer in self.layers:
            if states is not None:
                states.append(hidden)
            out = layer(hidden, position_ids, attention_mask)
            hidden = out[0] if isinstance(out, tuple) else out
        hidden = self.norm(hidden)
        if states is not None:
            states.append(hidden)
        if not return_dict:
            return (hidden,) if states is None else (hidden, tuple(states))
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=hidden, past_key_values=None,
                                                         hidden_states=tuple(states) if states else None)


def wire_attention(model) -> int:
    """Let ``model``'s PaddleNLP Llama layers take :class:`Segments` (module docs); returns the number of
    attention layers wired, 0 for a model that holds no PaddleNLP Llama or is already wired."""
    wired = 0
    for _, layer in model.named_sublayers(include_self=True):
        if type(layer) is LlamaAttention:
            layer.__class__ = VarlenLlamaAttention
            wired += 1
        elif type(layer) is LlamaModel:
            layer.__class__ = VarlenLlamaModel
    return wired


def check_segments(model, kind: str) -> None:
    """ModelError naming why ``model`` cannot take :class:`Segments` of ``kind``, if it cannot."""
    _check_kind(kind)
    base = next((layer for _, layer in model.named_sublayers(include_self=True)
                 if isinstance(layer, VarlenLlamaModel)), None)
    if base is None:
        raise ModelError(f"attention: {kind!r} needs a PaddleNLP Llama model loaded with load_causal_lm (got "
                         f"{type(model).__name__}); use attention: dense")
    cfg = base.config
    for key, bad in (("tensor_parallel_degree", cfg.tensor_parallel_degree > 1), ("sequence_parallel",
                     bool(cfg.sequence_parallel)), ("sep_parallel_degree", cfg.sep_parallel_degree > 1),
                     ("alibi", bool(cfg.alibi)), ("use_long_sequence_strategies",
                                                  bool(cfg.use_long_sequence_strategies))):
        if bad:
            raise ModelError(f"attention: {kind!r}: the model's config sets {key}={getattr(cfg, key)!r}, which "
                             f"attention over segments does not support; use attention: dense")


__all__ = ["KINDS", "GPU_KINDS", "Segments", "attend", "varlen_attention", "causal_bias", "kernel_dtype",
           "flash_unpadded_args", "flashmask_args", "require_gpu", "VarlenLlamaAttention",
           "VarlenLlamaModel", "wire_attention", "check_segments"]
