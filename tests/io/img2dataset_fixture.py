"""An img2dataset ``--output_format webdataset`` output folder, written exactly as img2dataset writes one.

Shapes taken from rom1504/img2dataset at commit 95523bc7579745a1749b8132d408b9fea89a338e (2025-08-16):

- ``img2dataset/writer.py``, ``WebDatasetSampleWriter``: per shard ``{shard_id:05d}.tar`` written with
  ``webdataset.TarWriter`` (members ``KEY.<ext>`` in sorted extension order: ``KEY.jpg``, ``KEY.json``,
  ``KEY.txt``; mode 0o444, user and group ``bigdata``); a sample is written to the tar only when it has an image;
  ``txt`` is ``str(caption)``, or ``""`` for a null caption, and present only with ``--caption_col``; ``json`` is
  ``json.dumps(meta, indent=4)``. Every sample, failed ones included, goes to ``{shard_id:05d}.parquet``
  (``BufferedParquetWriter``) with the same metadata and no image.
- ``img2dataset/downloader.py``, ``download_shard``: the metadata is the input columns in
  ``Reader.column_list`` order (``--save_additional_columns``, then ``caption``, then ``url``), then ``key``,
  ``status``, ``error_message``, ``width``, ``height``, ``original_width``, ``original_height``, ``exif`` (with
  ``--extract_exif``, the default: a JSON *string* of the EXIF tags, ``"{}"`` for an image without any) and
  ``sha256`` (``--compute_hash``, the default); the parquet schema is the input's plus ``key`` string, ``status``
  string, ``error_message`` string, the four sizes int32, ``exif`` string, ``sha256`` string. A failed sample
  has ``status`` ``"failed_to_download"``, its ``error_message``, and nulls for the sizes, exif and hash.
  ``compute_key``: the key is ``10**ceil(log10(number_sample_per_shard)) * shard_id + index``, zero-padded to
  ``oom_sample_per_shard + oom_shard_count`` digits (9 by default: shard 1, index 3 -> ``"000010003"``).
  Samples are written in download-completion order (``imap_unordered``), so keys in a tar need not be sorted.
- ``img2dataset/logger.py``, ``write_stats``: ``{shard_id:05d}_stats.json`` beside the tar (``indent=4``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset
from PIL import Image as PILImage


@dataclass
class Sample:
    """One input row: its url, caption, the image a download gave (None: the download failed) and the
    ``--save_additional_columns`` values."""

    url: str
    caption: str | None = None
    image: bytes | None = None
    extra: dict = field(default_factory=dict)
    error_message: str = "<urlopen error [Errno 111] Connection refused>"


def image_bytes(color, size=(6, 4), fmt="JPEG") -> bytes:
    """A small image drawn with Pillow, encoded as ``fmt``."""
    img = PILImage.new("RGB", size, color)
    img.putpixel((0, 0), (1, 2, 3))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def compute_key(index: int, shard_id: int, number_sample_per_shard: int = 10000, oom_shard_count: int = 5) -> str:
    oom_sample = math.ceil(math.log10(number_sample_per_shard))
    return f"{10 ** oom_sample * shard_id + index:0{oom_sample + oom_shard_count}d}"


def write_shard(folder, shard_id: int, samples: list[Sample], *, encode_format: str = "jpg",
                caption_col: bool = True, additional_columns: dict | None = None, order=None) -> list[dict]:
    """Write ``{shard_id:05d}.tar``, ``.parquet`` and ``_stats.json`` into ``folder`` as img2dataset does;
    ``order`` is the completion order of the downloads (indices into ``samples``; input order by default).
    ``additional_columns`` maps each ``--save_additional_columns`` name to its Arrow type in the input.
    Returns the metadata of every sample, in the order written."""
    additional_columns = additional_columns or {}
    os.makedirs(folder, exist_ok=True)
    name = f"{shard_id:05d}"
    input_fields = [pa.field(c, t) for c, t in additional_columns.items()]
    if caption_col:
        input_fields.append(pa.field("caption", pa.string()))
    input_fields.append(pa.field("url", pa.string()))
    schema = pa.schema(input_fields + [
        pa.field("key", pa.string()), pa.field("status", pa.string()), pa.field("error_message", pa.string()),
        pa.field("width", pa.int32()), pa.field("height", pa.int32()),
        pa.field("original_width", pa.int32()), pa.field("original_height", pa.int32()),
        pa.field("exif", pa.string()), pa.field("sha256", pa.string())])
    metas = []
    status: dict[str, int] = {}
    with open(os.path.join(folder, name + ".tar"), "wb") as f:
        tar = webdataset.TarWriter(f)
        for i in (order if order is not None else range(len(samples))):
            s = samples[i]
            meta = {c: s.extra.get(c) for c in additional_columns}
            if caption_col:
                meta["caption"] = s.caption
            meta.update({"url": s.url, "key": compute_key(i, shard_id), "status": None,
                         "error_message": None if s.image is not None else s.error_message, "width": None,
                         "height": None, "original_width": None, "original_height": None, "exif": None,
                         "sha256": None})
            if s.image is None:
                meta["status"] = "failed_to_download"
                status[s.error_message] = status.get(s.error_message, 0) + 1
            else:
                w, h = PILImage.open(io.BytesIO(s.image)).size
                meta.update({"exif": json.dumps({}), "sha256": hashlib.sha256(s.image).hexdigest(),
                             "status": "success", "width": w, "height": h, "original_width": w,
                             "original_height": h})
                status["success"] = status.get("success", 0) + 1
                sample = {"__key__": meta["key"], encode_format: s.image}
                if caption_col:
                    sample["txt"] = str(s.caption) if s.caption is not None else ""
                sample["json"] = json.dumps(meta, indent=4)
                tar.write(sample)
            metas.append(meta)
        tar.close()
    table = pa.Table.from_pydict({k: [m[k] for m in metas] for k in schema.names}, schema)
    pq.write_table(table, os.path.join(folder, name + ".parquet"))
    ok = sum(m["status"] == "success" for m in metas)
    stats = {"count": len(samples), "successes": ok, "failed_to_download": len(samples) - ok,
             "failed_to_resize": 0, "duration": 1.5, "start_time": 1700000000.0, "end_time": 1700000001.5,
             "status_dict": status}
    with open(os.path.join(folder, name + "_stats.json"), "w") as f:
        json.dump(stats, f, indent=4)
    return metas
