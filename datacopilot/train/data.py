"""From tokenized rows to micro-batches: a deterministic epoch-by-epoch packing plan and a Paddle DataLoader.

The data order is a pure function of the seed: epoch ``e`` shuffles the samples with ``default_rng([seed, e])``,
packs them (``datacopilot.kernels.pack``) and shuffles the packs; micro-batch ``k`` of the whole run is the
``batch_size`` packs that follow the previous ones across epochs. So a run resumed at micro-batch ``k`` (the data
cursor saved in a checkpoint) sees exactly the batches an uninterrupted run would. ``mode="padded"`` is the baseline
of the benchmark: each sample alone, a micro-batch of ``batch_size`` samples padded to its longest.
"""

from __future__ import annotations

import os

import numpy as np

from datacopilot.errors import DataCopilotError, InputError

from .config import BAD_SAMPLES


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
                 overlong: str = "truncate", mode: str = "packed", images=None, bad_samples: str = "error"):
        """``bad_samples`` is what a sample whose image is missing or does not decode does: ``"error"`` stops the
        run naming the sample and the file, ``"skip"`` leaves it out and records it in :attr:`skipped`."""
        for name in ("input_ids", "labels", "length"):
            if name not in table.column_names:
                raise InputError(f"tokenized data has no {name!r} column (columns: {table.column_names})")
        if mode not in ("packed", "padded"):
            raise InputError(f"`mode` must be 'packed' or 'padded', got {mode!r}")
        if bad_samples not in BAD_SAMPLES:
            raise InputError(f"`bad_samples` must be one of {', '.join(map(repr, BAD_SAMPLES))}, got {bad_samples!r}")
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
        self.bad_samples = bad_samples
        self.skipped: list[dict] = []  # samples left out for a bad image: {"sample", "id", "error", "stage"}
        self._skipped_ids: set[int] = set()
        self.excluded = np.zeros(len(self.lengths), bool)  # left out of the plan (found by check_images)
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
            perm = perm[~self.excluded[perm]]
            if not len(perm):
                raise InputError(f"no samples to train on: all {len(self.lengths)} were skipped for a bad image")
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
            self.dropped = len(perm) - sum(len(p) for p in ids)
            kept = self.lengths[~self.excluded]
            self.truncated = int((kept > self.max_length).sum()) if self.overlong == "truncate" else 0
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

    # -- bad samples ------------------------------------------------------------------------------------
    def check_images(self, num_workers: int = 8) -> list[dict]:
        """Check every sample's images before training (:meth:`ImageLoader.check`: the file is there and starts
        like an image). Under ``bad_samples="error"`` any bad one raises InputError naming the samples and files;
        under ``"skip"`` they are left out of the plan and recorded in :attr:`skipped`. Returns the bad ones."""
        if self.images is None:
            return []
        bad = self.images.check(num_workers)
        if bad and self.bad_samples == "error":
            shown = "\n".join(f"  {b['error']}" for b in bad[:10])
            more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
            raise InputError(f"{len(bad)} sample(s) with a missing or undecodable image:\n{shown}{more}\n"
                             f"fix or remove them, or set `bad_samples: skip` to train without them")
        for b in bad:
            self.excluded[b["sample"]] = True
            self._skipped_ids.add(b["sample"])
            self.skipped.append({**b, "stage": "check"})
        self._epochs.clear()
        self._starts = [0]
        return bad

    def restore_skipped(self, records: list[dict]) -> None:
        """Take over the samples a checkpointed run skipped while decoding (so the summary counts them too)."""
        for r in records:
            if r.get("stage") == "decode" and r.get("sample") not in self._skipped_ids:
                self._skipped_ids.add(r["sample"])
                self.skipped.append(r)

    # -- the samples ------------------------------------------------------------------------------------
    def sample(self, i: int, length: int) -> dict:
        """Sample ``i`` cut to ``length`` tokens (images whose tokens are cut off are left out)."""
        a = self.offsets[i]
        out = {"input_ids": self.ids[a:a + length], "labels": self.labels[a:a + length]}
        offs = self.img_off[self.img_offsets[i]:self.img_offsets[i + 1]]
        if self.images is not None and len(offs):
            try:
                pix = self.images(i)
            except InputError as e:
                raise InputError(f"{self._name(i)}: {e}") from e
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
        return f"sample {i}" if self.row_ids is None else f"sample {i} (id {self._id(i)!r})"

    def pack(self, key: tuple[int, int]) -> list[dict]:
        """The samples of a pack; under ``bad_samples="skip"`` a sample whose image fails to decode here (it passed
        the header check before training) is left out and recorded in :attr:`skipped`."""
        ids, seg = self.epoch(key[0])
        out = []
        for i, n in zip(ids[key[1]], seg[key[1]]):
            if int(i) in self._skipped_ids:
                continue
            try:
                out.append(self.sample(int(i), int(n)))
            except InputError as e:
                if self.bad_samples != "skip":
                    raise
                self._skipped_ids.add(int(i))
                self.skipped.append({"sample": int(i), "id": self._id(int(i)), "error": str(e), "stage": "decode"})
        return out

    def _id(self, i: int):
        return None if self.row_ids is None else self.row_ids[i].as_py()


class ImageLoader:
    """``i -> [C, H, W] float32 arrays`` of row ``i``'s images, resized to ``size`` and scaled to [-1, 1].

    Images come from the schema's canonical form (so MM, MIX, PAIRS, MESSAGES and CAPTION all work), in the order
    of their ``<image>`` placeholders.
    """

    def __init__(self, ds, size: int, token_count: int):
        self.ds, self.size, self.token_count = ds, size, token_count
        table = ds.to_arrow()  # the schema's columns only: a row is read without its token lists
        self._rows = table.select([c for c in ds.schema.names if c in table.column_names])

    def values(self, row: dict) -> list:
        """The image values (path and/or bytes) of a row, in placeholder order."""
        schema = self.ds.schema
        canon = schema.to_canonical(schema.normalize_row(row)) if schema.to_canonical else row
        return list(canon.get("images") or [])

    def __call__(self, i: int) -> list[np.ndarray]:
        from datacopilot.schemas.image import decode_image

        out = []
        for value in self.values(self._rows.slice(i, 1).to_pylist()[0]):
            img = decode_image(value, self.ds.root).convert("RGB").resize((self.size, self.size))
            arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
            out.append(arr)
        return out

    def check(self, num_workers: int = 8) -> list[dict]:
        """Every image of every row checked cheaply before training: the file exists and its header names an
        image format Pillow reads (bytes: the same header check). Returns one record per bad sample,
        ``{"sample", "id", "error"}``, the error naming the file; empty when all are fine.

        A file that is cut after its header passes here and fails when its sample is first decoded in training.
        """
        from concurrent.futures import ThreadPoolExecutor

        jobs = []  # (row, image value)
        i = 0
        for batch in self._rows.to_batches(max_chunksize=4096):
            for row in batch.to_pylist():
                jobs.extend((i, v) for v in self.values(row))
                i += 1
        root = self.ds.root
        chunks = [jobs[a:a + 512] for a in range(0, len(jobs), 512)]
        with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
            errors = [e for part in pool.map(lambda c: [image_problem(v, root) for _, v in c], chunks) for e in part]
        ids = self.ds.to_arrow().column("id") if "id" in self.ds.columns else None
        bad: dict[int, dict] = {}
        for (i, _), err in zip(jobs, errors):
            if err is not None and i not in bad:
                rid = None if ids is None else ids[i].as_py()
                name = f"sample {i}" if rid is None else f"sample {i} (id {rid!r})"
                bad[i] = {"sample": i, "id": rid, "error": f"{name}: {err}"}
        return [bad[i] for i in sorted(bad)]


# the first bytes of the formats training data mostly holds (signature, offset, more bytes expected there); a file
# that starts otherwise falls back to Pillow's own header check
_MAGIC = ((b"\x89PNG\r\n\x1a\n", 12, b"IHDR"), (b"\xff\xd8\xff", 0, b""), (b"GIF87a", 0, b""), (b"GIF89a", 0, b""),
          (b"RIFF", 8, b"WEBP"), (b"BM", 0, b""), (b"II*\x00", 0, b""), (b"MM\x00*", 0, b""))


def _known_header(head: bytes) -> bool:
    return any(head.startswith(sig) and head[at:at + len(more)] == more for sig, at, more in _MAGIC)


def image_problem(value, root: str | None) -> str | None:
    """None when an image value is there and starts like an image, else what is wrong, naming the file.

    Reads the first bytes only: a known signature (PNG with its IHDR chunk, JPEG, GIF, WebP, BMP, TIFF) is
    enough; anything else must open in Pillow (which reads the header lazily). About one small read per image.
    """
    import io

    from PIL import Image as PILImage

    from datacopilot.schemas.image import Image, data_url_bytes, resolve_path

    try:
        value = Image().normalize(value)
    except Exception as e:  # a value the image type refuses
        return f"not an image value ({e})"
    path = value.get("path")
    name = repr(path) if path else "<bytes>"
    try:
        data = value.get("bytes")
        if data is None and path:
            data = data_url_bytes(path)
        if data is not None:
            if _known_header(bytes(data[:32])):
                return None
            with PILImage.open(io.BytesIO(bytes(data))):
                return None
        if not path:
            return "image has neither path nor bytes"
        full = resolve_path(path, root)
        if "://" in full:
            import fsspec

            with fsspec.open(full, "rb") as f, PILImage.open(f):
                return None
        with open(full, "rb") as f:
            if _known_header(f.read(32)):
                return None
            f.seek(0)
            with PILImage.open(f):
                return None
    except FileNotFoundError:
        return f"image {name} not found (looked at {resolve_path(path, root)!r})"
    except Exception as e:  # Pillow raises many types for data that is not an image
        return f"image {name} does not decode: {e}"


class Batches:
    """The micro-batches ``start .. stop-1`` of ``data``, collated, with numpy arrays as Paddle tensors.

    One background thread reads and collates ahead (``prefetch`` batches) so image decoding overlaps the step. An
    error in it (a missing or undecodable image) is raised in the training loop with its own message and
    traceback; a reader thread that stops without a batch or an error is an error too, never a wait: the process
    always exits.
    """

    def __init__(self, data: PackedData, collate, start: int, stop: int, prefetch: int = 2):
        self.data, self.collate, self.start, self.stop, self.prefetch = data, collate, start, stop, prefetch

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        import queue
        import threading

        q: queue.Queue = queue.Queue(maxsize=max(1, self.prefetch))
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def read():
            try:
                for k in range(self.start, self.stop):
                    batch = self.collate([self.data.pack(key) for key in self.data.micro_batch(k)])
                    if not put(("batch", batch)):
                        return
                put(("end", None))
            except BaseException as e:  # handed to the training loop, which raises it
                put(("error", e))

        thread = threading.Thread(target=read, name="datacopilot-batches", daemon=True)
        thread.start()
        try:
            while True:
                try:
                    kind, item = q.get(timeout=0.5)
                except queue.Empty:
                    if not thread.is_alive() and q.empty():
                        raise DataCopilotError("the batch reader thread stopped without a batch or an error")
                    continue
                if kind == "end":
                    return
                if kind == "error":
                    raise item
                yield _as_tensors(item)
        finally:
            stop.set()


def _as_tensors(batch: dict) -> dict:
    import paddle

    return {k: paddle.to_tensor(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}


def make_loader(data: PackedData, collate, start: int, stop: int):
    """The micro-batches ``start .. stop-1`` of ``data`` as collated dicts of Paddle tensors (see :class:`Batches`)."""
    return Batches(data, collate, start, stop)


__all__ = ["PackedData", "ImageLoader", "Batches", "make_loader", "image_problem"]
