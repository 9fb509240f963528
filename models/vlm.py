"""A small LLaVA-style vision-language model: a Paddle vision encoder, an MLP projector and a PaddleNLP causal LM.

Images ``[C, H, W]`` go through a vision encoder (``encoder: patch``: a patchify convolution, learned positions and
a few pre-norm transformer blocks, pooled; ``encoder: conv``: a stem of stride-2 3x3 convolutions down to a 4x4
grid of cells, a 2-D positional embedding (row + column), the same blocks, and each token a linear function of all
the cells), giving ``image_token_count`` feature vectors, projected into the LM's hidden size, and written over the embeddings of
the image-token positions of a (packed) batch: image ``i`` occupies positions ``image_offset[i] ..
image_offset[i] + image_token_count - 1`` of pack ``image_pack[i]``. The LM then runs on ``inputs_embeds`` with
the given per-segment ``position_ids`` and either a boolean ``[B, 1, L, L]`` mask or a
:class:`~datacopilot.models.attention.Segments` (attention per segment, no ``[L, L]`` mask), and the loss is
:func:`datacopilot.models.lm.causal_lm_loss` (sum of token losses / number of target tokens).

A saved model is a directory: ``vlm_config.json``, ``vision.pdparams`` (encoder), ``projector.pdparams`` and the
LM in ``lm/`` (a normal PaddleNLP model directory). Paddle is imported when this module is imported; a missing
paddle raises MissingDependencyError when a model is built or loaded.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields

from datacopilot.errors import InputError, ModelError
from datacopilot.models.lm import (build_tiny_lm, causal_lm_loss, lm_logits, load_causal_lm, require_paddle,
                                   require_paddlenlp)

try:
    import paddle
    from paddle import nn

    _Layer = nn.Layer
except ImportError:  # pragma: no cover - construction raises MissingDependencyError instead
    paddle = nn = None
    _Layer = object

CONFIG_NAME = "vlm_config.json"
LM_DIR = "lm"
ENCODERS = ("patch", "conv")
CONV_GRID = 4  # the conv encoder's grid of cells is CONV_GRID x CONV_GRID


@dataclass(frozen=True)
class VLMConfig:
    """Settings of the vision side; the LM keeps its own config in ``lm/config.json``.

    ``image_token_count`` features per image (need not be a square: the patch grid is pooled to it);
    ``patch_size`` 0 means ``image_size // ceil(sqrt(image_token_count))``; ``lm_hidden`` is the LM's hidden size;
    ``image_token_id`` is recorded for tokenizers and templates, the model itself places features by offset.
    ``encoder`` is ``"patch"`` (the first design; configs written before the key existed load as it) or ``"conv"``
    (:class:`ConvEncoder`: ``image_size`` 4 times a power of two; ``patch_size`` is not used).
    """

    lm_hidden: int
    image_size: int = 32
    image_channels: int = 3
    image_token_count: int = 16
    patch_size: int = 0
    vision_hidden: int = 64
    vision_layers: int = 1
    vision_heads: int = 4
    image_token_id: int | None = None
    encoder: str = "patch"

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("image_token_id", "encoder"):
                continue
            if not isinstance(v, int) or v < (0 if f.name in ("patch_size", "vision_layers") else 1):
                raise InputError(f"VLMConfig.{f.name}: expected a positive integer, got {v!r}")
        if self.vision_hidden % self.vision_heads:
            raise InputError(f"VLMConfig: vision_hidden ({self.vision_hidden}) must be divisible by vision_heads "
                             f"({self.vision_heads})")
        if self.encoder not in ENCODERS:
            raise InputError(f"VLMConfig.encoder: expected one of {', '.join(map(repr, ENCODERS))}, got "
                             f"{self.encoder!r}")
        if self.encoder == "conv":
            ratio = self.image_size // CONV_GRID
            if not ratio or ratio * CONV_GRID != self.image_size or ratio & (ratio - 1):
                raise InputError(f"VLMConfig: encoder 'conv' needs image_size {CONV_GRID} times a power of two "
                                 f"(16, 32, 64, ...), got {self.image_size}")
        elif self.patch > self.image_size:
            raise InputError(f"VLMConfig: patch_size {self.patch} is larger than image_size {self.image_size}")

    @property
    def patch(self) -> int:
        """The patch size actually used."""
        return self.patch_size or max(1, self.image_size // math.ceil(math.sqrt(self.image_token_count)))

    @classmethod
    def from_json(cls, path: str) -> "VLMConfig":
        """Read a config written by :meth:`to_json`; ModelError names the file when it is unreadable."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            return cls(**data)
        except (OSError, ValueError, TypeError, InputError) as e:
            raise ModelError(f"{path}: not a vlm config: {e}") from e

    def to_json(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, indent=2)


class VisionEncoder(_Layer):
    """Patchify conv + learned positions + pre-norm transformer blocks, pooled to ``image_token_count`` tokens."""

    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.count = cfg.image_token_count
        d, p = cfg.vision_hidden, cfg.patch
        self.patchify = nn.Conv2D(cfg.image_channels, d, kernel_size=p, stride=p)
        n_patches = (cfg.image_size // p) ** 2
        self.pos = self.create_parameter([1, n_patches, d], default_initializer=nn.initializer.Normal(std=0.02))
        self.blocks = nn.LayerList([
            nn.TransformerEncoderLayer(d, cfg.vision_heads, 2 * d, dropout=0.0, normalize_before=True)
            for _ in range(cfg.vision_layers)])
        self.norm = nn.LayerNorm(d)

    def forward(self, pixel_values):
        x = self.patchify(pixel_values)                       # [N, d, h, w]
        x = x.flatten(2).transpose([0, 2, 1]) + self.pos       # [N, P, d]
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        if x.shape[1] != self.count:                           # pool the patch grid to image_token_count tokens
            x = nn.functional.adaptive_avg_pool1d(x.transpose([0, 2, 1]), self.count).transpose([0, 2, 1])
        return x                                               # [N, count, d]


class ConvEncoder(_Layer):
    """The image less its mean colour (per channel: what differs from the background stands out), a 3x3
    convolution and stride-2 3x3 convolutions (GELU) from ``image_size`` down to a ``4 x 4`` grid of cells that keeps the image's
    layout, a learned row and column embedding added to each cell, the pre-norm transformer blocks over the cells,
    then ``image_token_count`` tokens each a learned linear function of all the cells (flattened in reading
    order) plus one of the cells' maximum and one of the mean colour: every token can carry what is drawn and
    where, so the LM need not find the one cell that holds it, and the maximum sees a shape the same wherever it
    is drawn."""

    def __init__(self, cfg: VLMConfig):
        super().__init__()
        d, g = cfg.vision_hidden, CONV_GRID
        self.count = cfg.image_token_count
        n = int(math.log2(cfg.image_size // g))
        widths = [max(16, d >> (n - 1 - i)) for i in range(n)]
        convs, c_in = [nn.Conv2D(cfg.image_channels, widths[0] if n else d, kernel_size=3, padding=1)], None
        c_in = widths[0] if n else d
        for w in widths:
            convs.append(nn.Conv2D(c_in, w, kernel_size=3, stride=2, padding=1))
            c_in = w
        self.convs = nn.LayerList(convs)
        self.cell = nn.Linear(c_in, d)
        self.row = self.create_parameter([g, 1, d], default_initializer=nn.initializer.Normal(std=0.02))
        self.col = self.create_parameter([1, g, d], default_initializer=nn.initializer.Normal(std=0.02))
        self.blocks = nn.LayerList([
            nn.TransformerEncoderLayer(d, cfg.vision_heads, 2 * d, dropout=0.0, normalize_before=True)
            for _ in range(cfg.vision_layers)])
        self.mix = nn.Linear(g * g * d, self.count * d)
        self.pool = nn.Linear(c_in, d)
        self.mean = nn.Linear(cfg.image_channels, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, pixel_values):
        mean = pixel_values.mean(axis=[2, 3])                  # [N, C]: mostly the background's colour
        x = pixel_values - mean.unsqueeze(-1).unsqueeze(-1)    # what differs from it: the drawing stands out
        for conv in self.convs:
            x = nn.functional.gelu(conv(x))                    # [N, c, h/2, w/2]
        d = self.row.shape[-1]
        cells = x.flatten(2).transpose([0, 2, 1])              # [N, 16, c], cells in reading order
        x = self.cell(cells) + (self.row + self.col).reshape([1, -1, d])
        for block in self.blocks:
            x = block(x)
        x = self.mix(x.flatten(1)).reshape([-1, self.count, d]) + (self.pool(cells.max(axis=1))
                                                                    + self.mean(mean)).unsqueeze(1)
        return self.norm(x)                                    # [N, count, d]


class Projector(_Layer):
    """Two-layer MLP from the vision width to the LM's hidden size (LLaVA-1.5 style)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_out)
        self.fc2 = nn.Linear(d_out, d_out)

    def forward(self, x):
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class TinyVLM(_Layer):
    """Vision encoder + projector + a PaddleNLP causal LM, trained on packed batches.

    Example::

        >>> path = build_tiny_vlm("/tmp/vlm", vocab_size=500, image_token_count=16)    # doctest: +SKIP
        >>> vlm = load_vlm(path)                                                       # doctest: +SKIP
        >>> loss, logits = vlm(input_ids, position_ids, attention_mask, labels,
        ...                    pixel_values, image_pack, image_offset)                  # doctest: +SKIP
    """

    def __init__(self, config: VLMConfig, lm):
        require_paddle()
        super().__init__()
        lm_hidden = lm.config.hidden_size
        if config.lm_hidden != lm_hidden:
            raise ModelError(f"vlm config lm_hidden {config.lm_hidden} does not match the lm's hidden_size {lm_hidden}")
        self.config = config
        self.vision = ConvEncoder(config) if config.encoder == "conv" else VisionEncoder(config)
        self.projector = Projector(config.vision_hidden, lm_hidden)
        self.lm = lm

    def image_features(self, pixel_values):
        """``[n_img, C, H, W]`` -> ``[n_img, image_token_count, lm_hidden]``."""
        c = self.config
        want = [c.image_channels, c.image_size, c.image_size]
        if len(pixel_values.shape) != 4 or list(pixel_values.shape[1:]) != want:
            raise InputError(f"`pixel_values` must have shape [n_images, {want[0]}, {want[1]}, {want[2]}], got "
                             f"{list(pixel_values.shape)}")
        return self.projector(self.vision(pixel_values.astype("float32")))

    def embed(self, input_ids, pixel_values=None, image_pack=None, image_offset=None):
        """Token embeddings ``[B, L, H]`` with each image's projected features written over its token positions."""
        embeds = self.lm.get_input_embeddings()(input_ids)
        if pixel_values is None or pixel_values.shape[0] == 0:
            return embeds
        if image_pack is None or image_offset is None:
            raise InputError("`pixel_values` given without `image_pack` and `image_offset`")
        n_img, count = pixel_values.shape[0], self.config.image_token_count
        if image_pack.shape[0] != n_img or image_offset.shape[0] != n_img:
            raise InputError(f"{n_img} images but {image_pack.shape[0]} image_pack and {image_offset.shape[0]} "
                             f"image_offset entries")
        b, length, hidden = embeds.shape
        pack = image_pack.astype("int64").reshape([-1, 1])
        start = image_offset.astype("int64").reshape([-1, 1])
        if n_img and (int(pack.min()) < 0 or int(pack.max()) >= b or int(start.min()) < 0
                      or int(start.max()) + count > length):
            raise InputError(f"image positions out of range: packs {pack.flatten().tolist()}, offsets "
                             f"{start.flatten().tolist()} with {count} tokens per image, batch [{b}, {length}]")
        index = (pack * length + start + paddle.arange(count, dtype="int64").reshape([1, -1])).flatten()
        if n_img > 1 and len(set(index.numpy().tolist())) != n_img * count:
            raise InputError(f"images overlap: packs {pack.flatten().tolist()}, offsets {start.flatten().tolist()} "
                             f"with {count} tokens per image")
        feats = self.image_features(pixel_values).reshape([n_img * count, hidden]).astype(embeds.dtype)
        flat = paddle.scatter(embeds.reshape([b * length, hidden]), index, feats, overwrite=True)
        return flat.reshape([b, length, hidden])

    def forward(self, input_ids, position_ids, attention_mask, labels=None, pixel_values=None, image_pack=None,
                image_offset=None):
        """Returns ``(loss, logits)``; loss is None without labels, else sum of token losses / target tokens.

        ``attention_mask`` is a boolean ``[B, 1, L, L]`` tensor or a :class:`~datacopilot.models.attention.Segments`
        (the LM is wired for it by :func:`load_vlm`)."""
        embeds = self.embed(input_ids, pixel_values, image_pack, image_offset)
        logits = lm_logits(self.lm, position_ids=position_ids, attention_mask=attention_mask, inputs_embeds=embeds)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return loss, logits

    def save_pretrained(self, out_dir: str) -> str:
        """Write ``vlm_config.json``, ``vision.pdparams``, ``projector.pdparams`` and ``lm/``; returns ``out_dir``."""
        os.makedirs(out_dir, exist_ok=True)
        self.config.to_json(os.path.join(out_dir, CONFIG_NAME))
        paddle.save(self.vision.state_dict(), os.path.join(out_dir, "vision.pdparams"))
        paddle.save(self.projector.state_dict(), os.path.join(out_dir, "projector.pdparams"))
        self.lm.save_pretrained(os.path.join(out_dir, LM_DIR))
        return out_dir

    @classmethod
    def from_pretrained(cls, path: str) -> "TinyVLM":
        """Load a directory written by :meth:`save_pretrained`; ModelError names what is missing."""
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise ModelError(f"{path}: vlm directory does not exist")
        cfg_path = os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(cfg_path):
            raise ModelError(f"{path}: not a vlm directory (no {CONFIG_NAME})")
        require_paddlenlp()
        config = VLMConfig.from_json(cfg_path)
        model = cls(config, load_causal_lm(os.path.join(path, LM_DIR)))
        for name, layer in (("vision", model.vision), ("projector", model.projector)):
            weights = os.path.join(path, f"{name}.pdparams")
            if not os.path.isfile(weights):
                raise ModelError(f"{path}: missing {name}.pdparams")
            state = paddle.load(weights)
            missing = sorted(set(layer.state_dict()) - set(state))
            if missing:
                raise ModelError(f"{weights}: missing weights {missing[:5]}")
            layer.set_state_dict(state)
        model.train()
        return model


def load_vlm(path: str) -> TinyVLM:
    """Load a TinyVLM saved with ``save_pretrained`` / :func:`build_tiny_vlm` (same as ``TinyVLM.from_pretrained``)."""
    return TinyVLM.from_pretrained(path)


def build_tiny_vlm(out_dir: str, vocab_size: int, image_token_count: int = 16, image_size: int = 32,
                   hidden: int = 128, layers: int = 2, heads: int = 4, vision_hidden: int = 64,
                   vision_layers: int = 1, max_position: int = 2048, image_token_id: int | None = None,
                   seed: int = 0, init_std: float = 0.02, encoder: str = "patch") -> str:
    """Build a TinyVLM with random float32 weights (seeded) and save it to ``out_dir``; returns ``out_dir``.

    ``init_std`` is the LM's initializer scale (see :func:`~datacopilot.models.lm.build_tiny_lm`); the vision
    encoder and projector use Paddle's default initializers. ``encoder`` is ``"patch"`` or ``"conv"`` (see
    :class:`VLMConfig`).

    Example::

        >>> vlm = load_vlm(build_tiny_vlm("/tmp/vlm", vocab_size=500, hidden=64))      # doctest: +SKIP
    """
    require_paddle()
    config = VLMConfig(lm_hidden=hidden, image_size=image_size, image_token_count=image_token_count,
                       vision_hidden=vision_hidden, vision_layers=vision_layers, image_token_id=image_token_id,
                       encoder=encoder)
    lm_dir = os.path.join(out_dir, LM_DIR)
    build_tiny_lm(lm_dir, vocab_size, hidden=hidden, layers=layers, heads=heads, max_position=max_position, seed=seed,
                  init_std=init_std)
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype("float32")
    try:
        paddle.seed(seed + 1)
        model = TinyVLM(config, load_causal_lm(lm_dir))
    finally:
        paddle.set_default_dtype(previous)
    return model.save_pretrained(out_dir)
