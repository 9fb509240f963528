"""From tokenized rows to micro-batches: a deterministic epoch-by-epoch packing plan and a Paddle DataLoader.

The data order is a pure function of the seed: epoch ``e`` shuffles the samples with ``default_rng([seed, e])``,
packs them (``datacopilot.kernels.pack``) and shuffles the packs; micro-batch ``k`` of the whole run is the
``batch_size`` packs that follow the previous ones across epochs. So a run resumed at micro-batch ``k`` (the data
cursor saved in a checkpoint) sees exactly the batches an uninterrupted run would. ``mode="padded"`` is the baseline
of the benchmark: each sample alone, a micro-batch of ``batch_size`` samples padded to its longest.
"""

from __future__ import annotations

import numpy as np

from datacopilot.errors import InputError


def _ragged(column) -> tuple[np.ndarray, np.ndarray]:
    """A list<int> Arrow column as (flat values int64, offsets int64)."""
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = np.asarray(arr.offsets, dtype=np.int64)
    values = np.asarray(arr.values.to_numpy(zero_copy_only=False), dtype=np.int64)
    return values[offsets[0]:offsets[-1]], offsets - offsets[0]


class PackedData:
    """Tokenized samples (``input_ids``, ``labels``, ``image_offsets``) and the run's packing plan.

    ``images`` (optional) is a callable ``i -> list of float32 [C, H, W] arrays`` giving sample ``i``'s images in
    placeholder order (the VLM case); a sample has 0..k of them, one per ``image_offsets`` entry, and its
    ``pixel_values`` are ``[k, C, H, W]`` (absent for a text-only sample). Keys of packs are ``(epoch, pack index)``; :meth:`pack` returns the pack's
    samples as dicts the collator takes.

    >>> data = PackedData(tokenized_table, max_length=512, batch_size=4, seed=0)   # doctest: +SKIP
    >>> data.micro_batch(0)                                                        # doctest: +SKIP
    [(0, 0), (0, 1), (0, 2), (0, 3)]
    """

    def __init__(self, table, max_length: int, batch_size: int, seed: int = 0, strategy: str = "exact_fit",
                 overlong: str = "truncate", mode: str = "packed", images=None):
        for name in ("input_ids", "labels", "length"):
            if name not in table.column_names:
                raise InputError(f"tokenized data has no {name!r} column (columns: {table.column_names})")
        if mode not in ("packed", "padded"):
            raise InputError(f"`mode` must be 'packed' or 'padded', got {mode!r}")
        self.ids, self.offsets = _ragged(table.column("input_ids"))
        self.labels, _ = _ragged(table.column("labels"))
        if "image_offsets" in table.column_names:
            self.img_off, self.img_offsets = _ragged(table.column("image_offsets"))
        else:
            self.img_off, self.img_offsets = np.zeros(0, np.int64), np.zeros(table.num_rows + 1, np.int64)
        self.row_ids = table.column("id") if "id" in table.column_names else None
        self.lengths = np.diff(self.offsets)
        if len(self.lengths) == 0:
            raise InputError("no samples to train on: the tokenized dataset is empty")
        if (self.lengths <= 0).any():
            i = int(np.flatnonzero(self.lengths <= 0)[0])
            raise InputError(f"sample {i}: empty input_ids")
        self.max_length, self.batch_size, self.seed = max_length, batch_size, seed
        self.strategy, self.overlong, self.mode, self.images = strategy, overlong, mode, images
        self._epochs: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        self._starts = [0]  # first micro-batch index of each epoch, extended as epochs are planned
        self.dropped = self.truncated = 0

    # -- the plan ---------------------------------------------------------------------------------------
    def epoch(self, e: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Packs of epoch ``e``: (sample ids per pack, their lengths in the pack), cached for the last two epochs."""
        if e not in self._epochs:
            from datacopilot.kernels import pack

            rng = np.random.default_rng([self.seed, e])
            perm = rng.permutation(len(self.lengths))
            if self.mode == "padded":
                lens = np.minimum(self.lengths[perm], self.max_length)
                ids, seg = [perm[i:i + 1] for i in range(len(perm))], [lens[i:i + 1] for i in range(len(perm))]
                if self.overlong == "drop":
                    keep = self.lengths[perm] <= self.max_length
                    ids = [p for p, k in zip(ids, keep) if k]
                    seg = [s for s, k in zip(seg, keep) if k]
            else:
                plan = pack(self.lengths[perm], self.max_length, strategy=self.strategy, overlong=self.overlong,
                            seed=int(rng.integers(2 ** 31)))
                bounds = plan.pack_offsets
                ids = [perm[plan.sample_ids[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]
                seg = [plan.lengths[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
            self.dropped = len(self.lengths) - sum(len(p) for p in ids)
            self.truncated = int((self.lengths > self.max_length).sum()) if self.overlong == "truncate" else 0
            if not ids:
                raise InputError(f"no samples fit `max_length` {self.max_length} (all were dropped as overlong)")
            self._epochs[e] = (ids, seg)
            for old in [k for k in self._epochs if k < e - 1]:
                del self._epochs[old]
        return self._epochs[e]

    def batches_in_epoch(self, e: int) -> int:
        return -(-len(self.epoch(e)[0]) // self.batch_size)

    def micro_batch(self, k: int) -> list[tuple[int, int]]:
        """The pack keys of micro-batch ``k`` of the run (0-based, across epochs)."""
        while len(self._starts) <= k or self._starts[-1] <= k:
            e = len(self._starts) - 1
            self._starts.append(self._starts[-1] + self.batches_in_epoch(e))
        e = int(np.searchsorted(self._starts, k, side="right")) - 1
        j = k - self._starts[e]
        n = len(self.epoch(e)[0])
        return [(e, p) for p in range(j * self.batch_size, min(n, (j + 1) * self.batch_size))]

    def fill_rate(self, epoch: int = 0) -> float:
        """Tokens / (packs * max_length) of an epoch's plan (for padded mode: tokens / padded batch sizes)."""
        ids, seg = self.epoch(epoch)
        tokens = sum(int(s.sum()) for s in seg)
        if self.mode == "padded":
            cap = sum(len(seg[i:i + self.batch_size]) * max(int(s.max()) for s in seg[i:i + self.batch_size])
                      for i in range(0, len(seg), self.batch_size))
            return tokens / cap
        return tokens / (len(ids) * self.max_length)

    # -- the samples ------------------------------------------------------------------------------------
    def sample(self, i: int, length: int) -> dict:
        """Sample ``i`` cut to ``length`` tokens (images whose tokens are cut off are left out)."""
        a = self.offsets[i]
        out = {"input_ids": self.ids[a:a + length], "labels": self.labels[a:a + length]}
        offs = self.img_off[self.img_offsets[i]:self.img_offsets[i + 1]]
        if self.images is not None and len(offs):
            pix = self.images(i)
            if len(pix) != len(offs):
                raise InputError(f"{self._name(i)}: {len(offs)} image placeholder(s) but {len(pix)} image(s)")
            count = self.images.token_count
            keep = [k for k, o in enumerate(offs) if o + count <= length]
            out["image_offsets"] = [int(offs[k]) for k in keep]
            if keep:
                out["pixel_values"] = np.stack([pix[k] for k in keep])
        else:
            out["image_offsets"] = []
        return out

    def _name(self, i: int) -> str:
        return f"sample {i}" if self.row_ids is None else f"sample {i} (id {self.row_ids[i].as_py()!r})"

    def pack(self, key: tuple[int, int]) -> list[dict]:
        ids, seg = self.epoch(key[0])
        return [self.sample(int(i), int(n)) for i, n in zip(ids[key[1]], seg[key[1]])]


class ImageLoader:
    """``i -> [C, H, W] float32 arrays`` of row ``i``'s images, resized to ``size`` and scaled to [-1, 1].

    Images come from the schema's canonical form (so MM, MIX, PAIRS, MESSAGES and CAPTION all work), in the order
    of their ``<image>`` placeholders.
    """

    def __init__(self, ds, size: int, token_count: int):
        self.ds, self.size, self.token_count = ds, size, token_count

    def __call__(self, i: int) -> list[np.ndarray]:
        from datacopilot.schemas.image import decode_image

        schema = self.ds.schema
        row = self.ds[i]
        canon = schema.to_canonical(schema.normalize_row(row)) if schema.to_canonical else row
        out = []
        for value in canon.get("images") or []:
            img = decode_image(value, self.ds.root).convert("RGB").resize((self.size, self.size))
            arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
            out.append(arr)
        return out


def make_loader(data: PackedData, collate, start: int, stop: int):
    """A Paddle DataLoader (num_workers=0) over micro-batches ``start .. stop-1`` of ``data``."""
    import paddle

    class _Packs(paddle.io.Dataset):
        def __len__(self):
            return len(data.lengths)

        def __getitem__(self, key):
            return data.pack(key)

    class _MicroBatches(paddle.io.Sampler):
        def __iter__(self):
            for k in range(start, stop):
                yield data.micro_batch(k)

        def __len__(self):
            return stop - start

    return paddle.io.DataLoader(_Packs(), batch_sampler=_MicroBatches(), collate_fn=collate, num_workers=0)


__all__ = ["PackedData", "ImageLoader", "make_loader"]
