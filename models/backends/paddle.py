"""The ``paddle`` backend: batched generation with a PaddleNLP causal LM or the project's TinyVLM, from local
directories.

How a batch is generated:

- Prompts: the chat template (:class:`~datacopilot.models.chat_template.ChatTemplate`) encodes the messages and an
  open assistant turn (``<|assistant|>``) is appended; a conversation ending with an assistant message is continued
  (its closing ``<|end|>`` is left off). Images (VLM only) are decoded with Pillow, converted to RGB, resized to the
  model's image size and scaled to [-1, 1] as in training; their tokens sit where the template puts them.
- Requests are sorted by prompt length and cut into batches of ``spec.batch_size`` (length buckets, so little
  padding), then put back in the caller's order.
- LEFT padding: each row is ``[pad ... pad, prompt]``. The boolean ``[B, 1, q, k]`` mask lets a query see only
  non-pad keys at or before it, and position ids count only real tokens, so a padded row computes the same
  attention as the row alone (up to float summation order). Greedy batched generation therefore gives the same
  texts as one request at a time (tested).
- KV cache: PaddleNLP 2.8.1's Llama passes a 4-D mask through unchanged also when ``past_key_values`` is given, so
  the prompt runs once (prefill) and each new token is one step over the cache with a ``[B, 1, 1, k]`` mask. Without
  a cache every step would rerun the whole sequence: with prompt length P and N new tokens about ``N * (P + N/2)``
  token positions instead of ``P + N``.
- Paddle's stride (view) kernels are switched off during generation (``FLAGS_use_stride_kernel``, restored after):
  a batched matmul over a transposed view is about 18x slower on CPU at batch 16 (see :func:`_contiguous_kernels`).
- Decoding: greedy (``temperature == 0``: argmax) or sampling (softmax of logits / temperature, nucleus ``top_p``)
  with one NumPy generator per request, seeded by ``Request.seed`` or by the spec's seed and the request's content,
  so a sample does not depend on which other requests share its batch. A row finishes at EOS or ``<|end|>``
  (``finish_reason="stop"``), at the first stop string (the text is cut before it; ``"stop"``), or after
  ``max_new_tokens`` (``"length"``). Finished rows leave the batch (their KV cache rows are dropped), and the batch
  ends when every row has finished.
- A request that cannot be run (a bad image, images sent to a text-only LM, a prompt longer than the model's
  positions) gets a Response with ``finish_reason="error"`` and the message; the other requests still run.

How a batch is scored (:meth:`PaddleBackend.loglikelihood`, no generation): each prompt goes through the same
chat template, open assistant turn and image path as in generation; the target text's tokens are appended (encoded
on their own, as the template encodes a message's content), the rows are left-padded and sorted by length as
above, and one forward pass per batch gives every target token's log-probability (position ``t`` predicts token
``t + 1``). A target's score is the mean over its tokens; the closing ``<|end|>`` is not scored.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import threading

import numpy as np

from datacopilot.errors import InputError, ModelError

from .spec import Backend, ModelSpec, Request, Response


class _Prepared:
    __slots__ = ("index", "ids", "offsets", "pixels", "seed", "target")

    def __init__(self, index, ids, offsets, pixels, seed, target=()):
        self.index, self.ids, self.offsets, self.pixels, self.seed = index, ids, offsets, pixels, seed
        self.target = list(target)  # token ids scored after the prompt (loglikelihood only)


class PaddleBackend(Backend):
    """Generate with a local PaddleNLP causal LM (``path/config.json``) or TinyVLM (``path/vlm_config.json``).

    ``model_calls`` counts forward passes (prefill and decode steps, scoring passes); ``batches`` counts batches
    (generated or scored).

    Example::

        >>> backend = PaddleBackend(ModelSpec(backend="paddle", path="/tmp/tiny_lm", max_new_tokens=8))  # doctest: +SKIP
        >>> backend.generate([Request([{"role": "user", "content": "hello"}])])[0].finish_reason         # doctest: +SKIP
        'length'
    """

    def __init__(self, spec: ModelSpec):
        spec.check()
        from datacopilot.models.chat_template import ChatTemplate
        from datacopilot.models.lm import load_causal_lm, require_paddle
        from datacopilot.models.tokenizer import load_tokenizer

        self.paddle = require_paddle()
        self.spec = spec
        self.tokenizer = load_tokenizer(spec.tokenizer_dir())
        self.is_vlm = os.path.isfile(os.path.join(spec.path, "vlm_config.json"))
        if self.is_vlm:
            from datacopilot.models.vlm import load_vlm

            self.vlm = load_vlm(spec.path)
            self.vlm.eval()
            self.lm = self.vlm.lm
            count, self.image_size = self.vlm.config.image_token_count, self.vlm.config.image_size
        else:
            self.vlm, self.lm, count, self.image_size = None, load_causal_lm(spec.path), 16, None
        self.lm.eval()
        self.template = ChatTemplate(self.tokenizer, image_token_count=count, system=spec.system)
        if self.is_vlm and self.vlm.config.image_token_id not in (None, self.template.image_token_id):
            raise ModelError(f"{spec.path}: the vlm's image_token_id {self.vlm.config.image_token_id} is not the "
                             f"tokenizer's <image> id {self.template.image_token_id}")
        pad = getattr(self.tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None and pad >= 0 else 0
        ends = {getattr(self.tokenizer, "eos_token_id", None), getattr(self.lm.config, "eos_token_id", None)}
        end_marker = self.template.markers["end"]
        ends.add(end_marker[0] if len(end_marker) == 1 else None)
        self.stop_ids = {int(i) for i in ends if isinstance(i, int) and i >= 0}
        self.max_positions = int(getattr(self.lm.config, "max_position_embeddings", 1 << 30))
        self.model_calls = 0
        self.batches = 0
        self._lock = threading.Lock()  # one generation at a time per model (Paddle layers are not re-entrant)

    # -- public ---------------------------------------------------------------------------------------
    def generate(self, requests: list[Request]) -> list[Response]:
        """Answer ``requests`` in order; batched by prompt length in groups of ``spec.batch_size``."""
        out: list[Response | None] = [None] * len(requests)
        ready = []
        for i, req in enumerate(requests):
            try:
                ready.append(self._prepare(i, req))
            except (InputError, ModelError, OSError, ValueError) as e:
                out[i] = Response("", "error", error=f"request {i}: {e}")
        ready.sort(key=lambda p: len(p.ids))
        size = self.spec.batch_size
        with self._lock, _contiguous_kernels(self.paddle):
            for start in range(0, len(ready), size):
                chunk = ready[start:start + size]
                for p, resp in zip(chunk, self._generate_batch(chunk)):
                    out[p.index] = resp
        return out  # type: ignore[return-value]

    def loglikelihood(self, requests: list[Request], targets: list[str]) -> list:
        """The mean log-probability per token of ``targets[i]`` as the assistant's answer to ``requests[i]``.

        The prompt is built as for :meth:`generate` (chat template, open assistant turn, images; a request ending
        with an assistant message has the target continue it), the target's tokens follow it, and requests are
        batched by length in groups of ``spec.batch_size``: one forward pass per batch, no generation. The
        target's closing ``<|end|>`` is not scored. Returns one float (<= 0) per request, in order; a request
        that cannot be scored (an empty target or one holding ``<image>``, a bad image, images sent to a
        text-only LM, too long for the model's positions) holds an :class:`InputError` naming it instead, and the
        others are still scored.

        Example::

            >>> req = Request([{"role": "user", "content": "<image>"}], images=(png,))           # doctest: +SKIP
            >>> backend.loglikelihood([req, req], ["a red square", "a blue square"])            # doctest: +SKIP
            [-1.02, -3.47]
        """
        from datacopilot.schemas import IMAGE_TOKEN

        if not isinstance(requests, (list, tuple)) or not isinstance(targets, (list, tuple)):
            raise InputError(f"loglikelihood: `requests` and `targets` must be lists, got "
                             f"{type(requests).__name__} and {type(targets).__name__}")
        if len(requests) != len(targets):
            raise InputError(f"loglikelihood: {len(requests)} requests but {len(targets)} targets")
        out: list = [None] * len(requests)
        ready = []
        for i, (req, text) in enumerate(zip(requests, targets)):
            try:
                if not isinstance(text, str):
                    raise InputError(f"targets[{i}]: expected a string, got {text!r}")
                if IMAGE_TOKEN in text:
                    raise InputError(f"targets[{i}]: a target cannot hold the {IMAGE_TOKEN!r} placeholder")
                ids = self.template.encode_text(text)
                if not ids:
                    raise InputError(f"targets[{i}]: empty target {text!r}: nothing to score")
                p = self._prepare(i, req, reserve=len(ids))
                p.target = list(ids)
                ready.append(p)
            except (InputError, ModelError, OSError, ValueError) as e:
                out[i] = InputError(f"request {i}: {e}")
        ready.sort(key=lambda p: len(p.ids) + len(p.target))
        size = self.spec.batch_size
        with self._lock, _contiguous_kernels(self.paddle):
            for start in range(0, len(ready), size):
                chunk = ready[start:start + size]
                for p, score in zip(chunk, self._score_batch(chunk)):
                    out[p.index] = score
        return out

    # -- one request -> token ids, image offsets, pixels, seed ----------------------------------------
    def _prepare(self, index: int, req: Request, reserve: int | None = None) -> _Prepared:
        """Token ids, image offsets and pixels of ``req``'s prompt; ``reserve`` positions must stay free after it
        (``max_new_tokens`` when generating, the target's length when scoring)."""
        if not isinstance(req, Request):
            raise InputError(f"expected a Request, got {type(req).__name__}")
        if req.images and not self.is_vlm:
            raise InputError(f"{len(req.images)} image(s) given but {self.spec.path} is a text-only lm")
        messages = [{"role": m["role"], "content": m["content"]} for m in req.messages]
        enc = self.template.encode_messages(messages, n_images=len(req.images))
        ids = list(enc["input_ids"])
        end = self.template.markers["end"]
        if messages[-1]["role"] == "assistant":
            ids = ids[:len(ids) - len(end)]          # continue the open assistant message
        else:
            ids += self.template.markers["assistant"]
        what = f"max_new_tokens {self.spec.max_new_tokens}" if reserve is None else f"a target of {reserve} tokens"
        if len(ids) + (self.spec.max_new_tokens if reserve is None else reserve) > self.max_positions:
            raise InputError(f"prompt of {len(ids)} tokens + {what} exceeds the model's {self.max_positions} "
                             f"positions")
        pixels = [self._pixels(b, k) for k, b in enumerate(req.images)]
        return _Prepared(index, ids, list(enc["image_offsets"]), pixels, self._seed(req))

    def _pixels(self, data: bytes, k: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            img = Image.open(io.BytesIO(data))
            img = img.convert("RGB").resize((self.image_size, self.image_size))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise InputError(f"images[{k}]: cannot decode the image ({len(data)} bytes): {e}") from e
        return np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0

    def _seed(self, req: Request) -> int | None:
        if self.spec.temperature == 0:
            return None
        if req.seed is not None:
            return int(req.seed)
        if self.spec.seed is None:
            return int.from_bytes(os.urandom(8), "little")
        digest = hashlib.sha256(f"{self.spec.seed}:{req.digest()}".encode()).digest()
        return int.from_bytes(digest[:8], "little")

    # -- one batch ------------------------------------------------------------------------------------
    def _generate_batch(self, items: list[_Prepared]) -> list[Response]:
        paddle, spec = self.paddle, self.spec
        self.batches += 1
        b = len(items)
        length = max(len(p.ids) for p in items)
        ids = np.full((b, length), self.pad_id, dtype=np.int64)
        valid = np.zeros((b, length + spec.max_new_tokens), dtype=bool)
        for r, p in enumerate(items):
            ids[r, length - len(p.ids):] = p.ids
            valid[r, length - len(p.ids):length] = True
        prompt_valid = valid[:, :length]
        positions = np.maximum(np.cumsum(prompt_valid, axis=1) - 1, 0)
        causal = np.tril(np.ones((length, length), dtype=bool))
        mask = causal[None] & (prompt_valid[:, None, :] | np.eye(length, dtype=bool)[None])
        rngs = [np.random.default_rng(p.seed) if p.seed is not None else None for p in items]
        generated: list[list[int]] = [[] for _ in items]
        reasons: list[str | None] = [None] * b
        texts: list[str | None] = [None] * b
        next_pos = prompt_valid.sum(axis=1)
        with paddle.no_grad():
            kwargs = dict(position_ids=paddle.to_tensor(positions),
                          attention_mask=paddle.to_tensor(mask[:, None]), use_cache=True, return_dict=True)
            if self.is_vlm and any(p.pixels for p in items):
                kwargs["inputs_embeds"] = self._embed(ids, items, [length - len(p.ids) for p in items])
            else:
                kwargs["input_ids"] = paddle.to_tensor(ids)
            out = self.lm(**kwargs)
            self.model_calls += 1
            cur, active, past = length, np.arange(b), None
            for step in range(spec.max_new_tokens):
                logits = out.logits[:, -1, :].astype("float32").numpy()   # row j of the model = row active[j]
                tokens = np.full(len(active), self.pad_id, dtype=np.int64)
                for j, r in enumerate(active):
                    tok = self._pick(logits[j], rngs[r])
                    if tok in self.stop_ids:
                        reasons[r] = "stop"
                        continue
                    generated[r].append(tok)
                    tokens[j] = tok
                    if spec.stop:
                        cut = _cut_at_stop(self._decode(generated[r]), spec.stop)
                        if cut is not None:
                            reasons[r], texts[r] = "stop", cut
                            continue
                    if len(generated[r]) >= spec.max_new_tokens:
                        reasons[r] = "length"
                keep = [j for j, r in enumerate(active) if reasons[r] is None]
                if not keep or step == spec.max_new_tokens - 1:
                    break
                past = out.past_key_values
                if len(keep) < len(active):              # drop finished rows from the batch and the cache
                    index = paddle.to_tensor(np.array(keep, dtype=np.int64))
                    past = tuple(tuple(paddle.index_select(t, index, axis=0) for t in layer) for layer in past)
                    active, tokens = active[keep], tokens[keep]
                valid[:, cur] = True
                cur += 1
                out = self.lm(input_ids=paddle.to_tensor(tokens[:, None]),
                              position_ids=paddle.to_tensor(next_pos[active][:, None].astype(np.int64)),
                              attention_mask=paddle.to_tensor(valid[active][:, None, None, :cur]),
                              past_key_values=past, use_cache=True, return_dict=True)
                self.model_calls += 1
                next_pos = next_pos + 1
        responses = []
        for r in range(b):
            text = texts[r] if texts[r] is not None else self._decode(generated[r])
            responses.append(Response(text, reasons[r] or "length",
                                      usage={"prompt_tokens": len(items[r].ids),
                                             "completion_tokens": len(generated[r])}))
        return responses

    def _score_batch(self, items: list[_Prepared]) -> list[float]:
        """Mean log-probability of each item's target tokens after its prompt: one left-padded forward pass."""
        paddle = self.paddle
        self.batches += 1
        seqs = [p.ids + p.target for p in items]
        b, length = len(items), max(len(s) for s in seqs)
        span = max(len(p.target) for p in items)
        ids = np.full((b, length), self.pad_id, dtype=np.int64)
        valid = np.zeros((b, length), dtype=bool)
        wanted = np.zeros((b, span), dtype=np.int64)         # the target ids, right-aligned like the rows
        scored = np.zeros((b, span), dtype=bool)
        for r, (p, seq) in enumerate(zip(items, seqs)):
            ids[r, length - len(seq):] = seq
            valid[r, length - len(seq):] = True
            wanted[r, span - len(p.target):] = p.target
            scored[r, span - len(p.target):] = True
        positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
        causal = np.tril(np.ones((length, length), dtype=bool))
        mask = causal[None] & (valid[:, None, :] | np.eye(length, dtype=bool)[None])
        with paddle.no_grad():
            kwargs = dict(position_ids=paddle.to_tensor(positions), attention_mask=paddle.to_tensor(mask[:, None]),
                          use_cache=False, return_dict=True)
            if self.is_vlm and any(p.pixels for p in items):
                kwargs["inputs_embeds"] = self._embed(ids, items, [length - len(s) for s in seqs])
            else:
                kwargs["input_ids"] = paddle.to_tensor(ids)
            logits = self.lm(**kwargs).logits[:, length - span - 1:length - 1, :].astype("float32")
            self.model_calls += 1
            logp = paddle.nn.functional.log_softmax(logits, axis=-1)
            picked = paddle.take_along_axis(logp, paddle.to_tensor(wanted[:, :, None]), axis=-1)
            picked = picked.squeeze(-1).numpy().astype(np.float64)
        return [float(picked[r][scored[r]].mean()) for r in range(b)]

    def _embed(self, ids: np.ndarray, items: list[_Prepared], pads: list[int]):
        paddle = self.paddle
        pixels, packs, offsets = [], [], []
        for r, (p, pad) in enumerate(zip(items, pads)):
            for arr, off in zip(p.pixels, p.offsets):
                pixels.append(arr)
                packs.append(r)
                offsets.append(pad + off)
        return self.vlm.embed(paddle.to_tensor(ids), paddle.to_tensor(np.stack(pixels)),
                              paddle.to_tensor(np.array(packs, dtype=np.int64)),
                              paddle.to_tensor(np.array(offsets, dtype=np.int64)))

    def _pick(self, logits: np.ndarray, rng) -> int:
        if rng is None:
            return int(np.argmax(logits))
        return _sample(logits, self.spec.temperature, self.spec.top_p, rng)

    def _decode(self, token_ids: list[int]) -> str:
        if not token_ids:
            return ""
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)


@contextlib.contextmanager
def _contiguous_kernels(paddle):
    """Turn Paddle's stride (view) kernels off while generating, then restore the flag.

    PaddleNLP's Llama attention transposes q/k/v to ``[B, heads, L, dim]`` before its matmuls; with stride kernels
    (Paddle 3's default) the transpose is a view and a batched matmul over it runs about 18x slower on CPU at batch
    16 (2.8 ms vs 0.15 ms for a [16, 4, 1, 32] x [16, 4, 32, 150] product), which ate most of the gain of batching.
    The flag is process-wide: other Paddle work in this process during a generate call runs without views too.
    """
    key = "FLAGS_use_stride_kernel"
    try:
        before = paddle.get_flags([key])[key]
    except (ValueError, KeyError):  # pragma: no cover - a Paddle without the flag
        yield
        return
    paddle.set_flags({key: False})
    try:
        yield
    finally:
        paddle.set_flags({key: before})


def _sample(logits: np.ndarray, temperature: float, top_p: float, rng) -> int:
    """One token from softmax(logits / temperature), restricted to the smallest set holding ``top_p`` mass."""
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    sorted_p = p[order]
    if top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(sorted_p), top_p) + 1)
        sorted_p = sorted_p[:keep]
        order = order[:keep]
    cdf = np.cumsum(sorted_p)
    u = rng.random() * cdf[-1]
    return int(order[min(int(np.searchsorted(cdf, u, side="right")), len(order) - 1)])


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> str | None:
    """``text`` up to the earliest stop string, or None when none occurs."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[:min(hits)] if hits else None
