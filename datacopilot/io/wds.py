"""WebDataset ``.tar`` shards, read and written with :mod:`tarfile` (local or fsspec URLs).

Convention (WebDataset's): a member's *key* is its path up to the first dot of its base name, the rest is
its extension; members sharing a key make one sample. A sample holds:

- ``KEY.json``: the row as a JSON object (the schema's file form: images as path strings, ``meta`` as an object);
- its images, one member each, with extension ``.jpg .jpeg .png .webp .bmp .gif .tif .tiff``:

  - a schema with one image field of one image (PAIRS, CAPTION: ``image``): ``KEY.png``;
  - a schema with one list of images (MESSAGES: ``images``): ``KEY.0.png``, ``KEY.1.png``, ... by position;
  - a field that holds one image or a list (MM's ``image``, LLaVA-NeXT): ``KEY.png`` for one image,
    ``KEY.0.png``, ... for a list (a list of one included), so each row reads back in its own shape;
  - a schema with several image fields: the field name goes first, ``KEY.image.png``, ``KEY.images.0.png``.

On reading, each image member is embedded into its image value as ``{"path", "bytes"}``; ``path`` is the path
the JSON gave, or the member's name when the JSON gave none. An image the JSON names without a member keeps its
path (no bytes), to be resolved against the dataset's root later. MIX refers to images by url only (its images
are not image values), so MIX shards hold only ``KEY.json``; an image member in a MIX sample is an error.

**img2dataset tars** (and the generic WebDataset caption convention) are read too: samples of ``KEY.jpg`` (or
another image extension), ``KEY.txt`` (``.text`` and ``.caption`` are taken as well) and ``KEY.json`` holding
img2dataset's metadata rather than a row. A tar is read this way when a sample has a caption member, or when it
has image members and its ``.json`` members have no row shape (img2dataset run without ``--caption_col``). Each
sample becomes a CAPTION row: ``id`` the key, ``image`` ``{"path": member name, "bytes"}``, ``caption`` the text
(null without a caption member: validation reports the row), and ``meta``, the ``.json`` object as compact JSON
text (every key kept, ``caption`` and ``key`` included, in its order; the text a ``Json`` field holds, so the
JSON writers write it as the object it was and every reader gives the same text back). One column rather than a
column per key: a key's type may differ between rows and between shards (``--save_additional_columns``), and
``caption`` would clash with the caption itself. See :func:`read_caption_samples`.

:func:`iter_wds` streams a tar a batch of samples at a time (a sample's members must then be adjacent, as
webdataset's own readers want them).

Keys are written as ``000000``, ``000001``, ... in row order. Two members with the same key and extension, a
member of an unknown kind, a sample without ``.json`` or a ``.json`` that does not parse are errors naming the
tar and the key (with ``invalid="quarantine"`` the last three put the sample in the quarantine instead).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator

from datacopilot.errors import InputError
from datacopilot.loading import Loaded, guess_schema, load_rows
from datacopilot.schemas import CAPTION, Image, List, Schema, read_image_bytes

from ._common import raise_broken
from .json_rows import jsonable
from ._fs import atomic_open, get_fs

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
CAPTION_EXTENSIONS = ("txt", "text", "caption")
DETECT_SAMPLES = 50  # samples is_caption_tar looks at: the first batch streamed holds at least these
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpg"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
          (b"BM", "bmp"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"))


def split_name(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member name: ``"a/000123.0.png"`` -> ``("a/000123", "0.png")``; None without a dot."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return None
    return (f"{head}/{stem}" if head else stem), ext


def _image_kind(dtype) -> str | None:
    """``"one"`` (an Image), ``"many"`` (a list of them), ``"either"`` (one of both: MM's ``image``), or None."""
    if isinstance(dtype, Image):
        return "one"
    if isinstance(dtype, List):
        return "many" if isinstance(dtype.inner, Image) else None
    kinds = {_image_kind(d) for _, d in getattr(dtype, "alternatives", ())} - {None}  # a OneOf
    return None if not kinds else kinds.pop() if len(kinds) == 1 else "either"


def image_slots(schema: Schema) -> list[tuple[str, str]]:
    """(field name, ``"one"`` / ``"many"`` / ``"either"``) of the schema's image fields, in order."""
    out = []
    for f in schema.fields:
        kind = _image_kind(f.dtype)
        if kind is not None:
            out.append((f.name, kind))
    return out


def _slot_prefix(slots, name: str) -> str:
    return "" if len(slots) == 1 else name + "."


# -- reading --------------------------------------------------------------------------------------------
def _tar_members(path: str) -> Iterator[tuple[str, str, str, bytes]]:
    """(key, extension, member name, bytes) of every file member, in tar order, one held at a time;
    InputError for a tar that is not readable, truncated, or holds a member that is not a regular file."""
    fs, p = get_fs(path)
    try:
        with fs.open(p, "rb") as f, tarfile.open(fileobj=f, mode="r:*") as tar:
            last = None
            while (m := tar.next()) is not None:
                del tar.members[:]  # tarfile keeps every header it read: a streamed tar keeps none
                last = m.name
                if m.isdir():
                    continue
                parts = split_name(m.name)
                key, ext = parts if parts else (m.name, "")
                if not m.isfile():
                    raise InputError(f"{path}: key {key!r}: member {m.name!r} is not a regular file")
                yield key, ext, m.name, tar.extractfile(m).read()
            # tarfile stops quietly at a header cut short; a whole tar ends with zero blocks
            tar.fileobj.seek(tar.offset)
            if len(tar.fileobj.read(512)) < 512:
                after = f"after member {last!r}" if last else "at the start"
                raise InputError(f"{path}: truncated tar: it ends {after} without the end-of-archive blocks")
    except FileNotFoundError as e:
        raise InputError(f"{path}: no such file") from e
    except (tarfile.TarError, EOFError, OSError) as e:
        raise InputError(f"{path}: not a readable tar file (truncated or corrupt?): {e}") from e


def _add_member(path: str, sample: dict, key: str, ext: str, name: str, data: bytes) -> None:
    if ext.lower() in sample:
        raise InputError(f"{path}: key {key!r}: duplicate member {name!r} (another member already "
                         f"has extension {ext!r})")
    sample[ext.lower()] = (name, data)


def _members(path: str) -> dict[str, dict[str, tuple[str, bytes]]]:
    """{key: {extension: (member name, bytes)}} in the order keys first appear."""
    samples: dict[str, dict[str, tuple[str, bytes]]] = {}
    for key, ext, name, data in _tar_members(path):
        _add_member(path, samples.setdefault(key, {}), key, ext, name, data)
    return samples


def _sample_groups(path: str, first: int, size: int) -> Iterator[dict[str, dict[str, tuple[str, bytes]]]]:
    """The samples of a tar as :func:`_members` gives them, ``first`` samples in the first group and ``size`` in
    each other one. A sample's members must be adjacent (webdataset's rule): a key met again after another key's
    members is an InputError (only the keys seen are kept, never their members)."""
    group: dict[str, dict[str, tuple[str, bytes]]] = {}
    seen: set[str] = set()
    want, last = first, None
    for key, ext, name, data in _tar_members(path):
        if key != last:
            if key in seen:
                raise InputError(f"{path}: key {key!r}: member {name!r} comes after the members of other samples; "
                                 f"a streamed tar keeps each sample's members together (dc.load reads the tar "
                                 f"whole and takes it)")
            if len(group) >= want:
                yield group
                group, want = {}, size
            seen.add(key)
            last = key
        _add_member(path, group.setdefault(key, {}), key, ext, name, data)
    if group:
        yield group


def _parse(path: str, samples: dict, invalid: str) -> tuple[list, list[str], list]:
    rows, keys, broken = [], [], []
    for key, members in samples.items():
        where = f"{path}: key {key!r}"
        if "json" not in members:
            names = sorted(n for n, _ in members.values())
            broken.append((where, f"{where}: sample has no .json member (members: {names})", None))
            continue
        name, data = members["json"]
        try:
            rows.append(json.loads(data))
            keys.append(key)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            why = "nested too deeply" if isinstance(e, RecursionError) else getattr(e, "msg", e)
            broken.append((where, f"{where}: {name}: invalid JSON: {why}", data.decode("utf-8", "replace")))
    if invalid == "raise":
        raise_broken(broken, "sample")
    return rows, keys, broken


def _image_value(json_value, member: tuple[str, bytes] | None, given: bool = False):
    """The image value of a member: the JSON's path and extra keys (``width``) plus the member's bytes. The path
    is the member's name only when the JSON did not give this image (``given``): a null it gave stays null."""
    if member is None:
        return json_value
    name, data = member
    v = Image().normalize(json_value) if json_value is not None else None
    v = v if isinstance(v, dict) else {}
    path = v.get("path")
    return {**v, "path": name if path is None and not given else path, "bytes": data}


def _slot_of(ext: str, slots) -> tuple[str, int | None] | None:
    """The (field, list index or None) an image member's extension names, or None if it names none."""
    stem, _, img = ext.rpartition(".")
    if img not in IMAGE_EXTENSIONS or not slots:
        return None
    if len(slots) == 1:
        name, kind = slots[0]
        rest = stem
    else:
        name, _, rest = stem.partition(".")
        kind = dict(slots).get(name)
        if kind is None:
            return None
    if rest == "":
        return (name, None) if kind != "many" else None
    return (name, int(rest)) if rest.isdigit() and kind != "one" else None


def _embed(row, members: dict, slots, where: str, schema_name: str) -> str | None:
    """Put the sample's image members into ``row`` in place; the problem as text if a member has no place."""
    by_field: dict[str, dict] = {}
    unplaced = []
    for ext, member in members.items():
        if ext == "json":
            continue
        slot = _slot_of(ext, slots)
        if slot is None:
            unplaced.append(member[0])
            continue
        name, idx = slot
        if idx in by_field.setdefault(name, {}):
            other = by_field[name][idx][0]
            at = name if idx is None else f"{name}[{idx}]"
            return f"{where}: duplicate image members {other!r} and {member[0]!r} for {at}"
        by_field[name][idx] = member
    if unplaced:
        kinds = f"image members are named {_expected(slots)}" if slots else "it has no image fields"
        return f"{where}: member(s) {sorted(unplaced)} have no place in a {schema_name} row ({kinds})"
    if not isinstance(row, dict):
        return None  # validation reports it
    for name, kind in slots:
        got = by_field.get(name)
        if not got:
            continue
        if None in got:  # KEY.png: one image
            if len(got) > 1 or isinstance(row.get(name), list):
                return f"{where}: {name}: member {got[None][0]!r} is one image, but {name} is a list"
            row[name] = _image_value(row.get(name), got[None], given=name in row)
            continue
        current = row.get(name)
        current = list(current) if isinstance(current, list) else []
        given = len(current)
        current += [None] * (max(got) + 1 - len(current))
        row[name] = [_image_value(v, got.get(i), given=i < given) for i, v in enumerate(current)]
    return None


def _expected(slots) -> str:
    forms = {"one": "{p}png", "many": "{p}N.png", "either": "{p}png or KEY.{p}N.png"}
    return ", ".join("KEY." + forms[k].format(p=_slot_prefix(slots, n)) for n, k in slots)


def read_wds(path: str, schema: Schema | None, invalid: str = "raise") -> Loaded:
    """Read one WebDataset tar (local or fsspec URL); image members are embedded into the rows.

    Example
    -------
    >>> loaded = read_wds("shard-000000.tar", None)  # doctest: +SKIP
    >>> loaded.table.column("image")[0]["bytes"]  # doctest: +SKIP
    """
    samples = _members(path)
    if is_caption_tar(samples):
        return read_caption_samples(path, samples, schema, invalid)
    return _row_samples(path, samples, schema, invalid)


def iter_wds(path: str, schema: Schema | None, batch_size: int, invalid: str = "raise") -> Iterator[Loaded]:
    """The rows of one WebDataset tar in batches of at most ``batch_size`` samples, each read as :func:`read_wds`
    reads a tar (the same messages, naming the tar and key), while the tar is read member by member: only one
    batch's members are held (and the keys seen, to refuse a key whose members are not together).

    What :func:`read_wds` decides from the whole tar is decided from the first batch (at least 50 samples) here:
    whether it is an img2dataset caption tar, and the schema when ``schema`` is None.

    >>> [ld.table.num_rows for ld in iter_wds("shard-000000.tar", None, 100)]  # doctest: +SKIP
    [100, 100, 17]
    """
    caption = None
    for samples in _sample_groups(path, max(batch_size, DETECT_SAMPLES), batch_size):
        if caption is None:
            caption = is_caption_tar(samples)
        if caption:
            loaded = read_caption_samples(path, samples, schema, invalid)
        else:
            loaded = _row_samples(path, samples, schema, invalid)
        schema = schema or loaded.schema
        yield loaded


def _row_samples(path: str, samples: dict, schema: Schema | None, invalid: str) -> Loaded:
    """Samples of ``KEY.json`` rows and their image members -> rows of ``schema`` (guessed when None)."""
    rows, keys, broken = _parse(path, samples, invalid)
    if schema is None:
        schema = guess_schema(rows)
    slots = image_slots(schema) if schema is not None else []
    name = schema.name if schema is not None else "schemaless"
    good, good_keys = [], []
    for row, key in zip(rows, keys):
        where = f"{path}: key {key!r}"
        problem = _embed(row, samples[key], slots, where, name)
        if problem is None:
            good.append(row)
            good_keys.append(key)
        elif invalid == "raise":
            raise InputError(problem)
        else:
            broken.append((where, problem, row))
    loaded = load_rows(good, schema, path, where=lambda i: f"{path}: key {good_keys[i]!r}", invalid=invalid)
    loaded.bad = broken + loaded.bad
    return loaded


# -- img2dataset / caption tars -------------------------------------------------------------------------
def is_caption_tar(samples: dict[str, dict[str, tuple[str, bytes]]]) -> bool:
    """Whether a tar's samples (``{key: {extension: (member name, bytes)}}``) are img2dataset-style captions:
    some sample has a caption member (``KEY.txt``), or the tar has bare image members (``KEY.jpg``) and no
    ``.json`` among its first 50 has the shape of a row of a built-in schema.

    >>> is_caption_tar({"000000000": {"jpg": ("000000000.jpg", b""), "txt": ("000000000.txt", b"a cat")}})
    True
    >>> is_caption_tar({"000000": {"json": ("000000.json", b'{"conversations": []}'), "png": ("000000.png", b"")}})
    False
    """
    has_image, rows = False, []
    for members in samples.values():
        if any(ext in CAPTION_EXTENSIONS for ext in members):
            return True
        has_image = has_image or any(ext in IMAGE_EXTENSIONS for ext in members)
        if "json" in members and len(rows) < 50:
            try:
                rows.append(json.loads(members["json"][1]))
            except (ValueError, RecursionError):
                pass  # the reader that takes the tar reports it
    return has_image and guess_schema(rows) is None


def _text(name: str, data: bytes, where: str) -> tuple[str | None, str | None]:
    """(text, None) or (None, problem) for a member that must be UTF-8."""
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, f"{where}: {name}: invalid UTF-8 at byte {e.start}"


def _meta_text(name: str, data: bytes, where: str) -> tuple[str | None, str | None]:
    """(the .json member as compact JSON text, None) or (None, problem)."""
    text, problem = _text(name, data, where)
    if problem:
        return None, problem
    try:
        out = json.dumps(json.loads(text), ensure_ascii=False, separators=(",", ":"))
        out.encode("utf-8")  # a lone surrogate escaped in the JSON cannot be stored as text
        return out, None
    except json.JSONDecodeError as e:
        return None, f"{where}: {name}: invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
    except RecursionError:
        return None, f"{where}: {name}: invalid JSON: nested too deeply"
    except UnicodeEncodeError as e:
        return None, f"{where}: {name}: a string holds an unpaired surrogate ({e.object[e.start:e.end]!r})"


def _caption_sample(key: str, members: dict, where: str) -> tuple[dict | None, str | None]:
    """One caption sample as a CAPTION row (plus ``meta``), or the problem as text."""
    by_kind: dict[str, list] = {"image": [], "caption": [], "json": [], "other": []}
    for ext, member in members.items():
        kind = ("image" if ext in IMAGE_EXTENSIONS else "caption" if ext in CAPTION_EXTENSIONS
                else "json" if ext == "json" else "other")
        by_kind[kind].append(member)
    if by_kind["other"]:
        names = sorted(n for n, _ in by_kind["other"])
        return None, (f"{where}: member(s) {names} have no place in an img2dataset sample (expected KEY.<image "
                      f"extension>, KEY.txt and KEY.json)")
    for kind in ("image", "caption"):
        if len(by_kind[kind]) > 1:
            return None, f"{where}: duplicate {kind} members {sorted(n for n, _ in by_kind[kind])}"
    row: dict = {"id": key, "image": None, "caption": None}
    if by_kind["image"]:
        name, data = by_kind["image"][0]
        row["image"] = {"path": name, "bytes": data}
    if by_kind["caption"]:
        row["caption"], problem = _text(*by_kind["caption"][0], where)
        if problem:
            return None, problem
    if by_kind["json"]:
        row["meta"], problem = _meta_text(*by_kind["json"][0], where)
        if problem:
            return None, problem
    return row, None


def read_caption_samples(path: str, samples: dict, schema: Schema | None, invalid: str = "raise") -> Loaded:
    """An img2dataset-style tar's samples (as :func:`is_caption_tar` takes them) -> CAPTION rows.

    A member of another kind, two images or two captions for one key, a caption that is not UTF-8 or a ``.json``
    that does not parse are errors naming the tar and key (quarantined with ``invalid="quarantine"``); a sample
    without a caption is a CAPTION row without its required caption, reported by validation the same way.
    ``schema`` must be None or CAPTION: these rows convert to no other schema without losing ``meta``.

    Example
    -------
    >>> loaded = read_wds("img2dataset_out/00000.tar", None)  # doctest: +SKIP
    >>> loaded.table.column_names  # doctest: +SKIP
    ['id', 'image', 'caption', 'meta']
    """
    if schema is not None and schema.name != CAPTION.name:
        raise InputError(f"{path}: an img2dataset-style tar (KEY.jpg + KEY.txt + KEY.json) holds CAPTION rows, "
                         f"got schema={schema.name!r}: load it as CAPTION (or without a schema), then convert")
    rows, keys, broken = [], [], []
    for key, members in samples.items():
        where = f"{path}: key {key!r}"
        row, problem = _caption_sample(key, members, where)
        if problem is None:
            rows.append(row)
            keys.append(key)
        else:
            broken.append((where, problem, {"id": key, "members": sorted(n for n, _ in members.values())}))
    if invalid == "raise":
        raise_broken(broken, "sample")
    loaded = load_rows(rows, schema or CAPTION, path, where=lambda i: f"{path}: key {keys[i]!r}", invalid=invalid)
    loaded.bad = broken + loaded.bad
    return loaded


# -- writing --------------------------------------------------------------------------------------------
def _image_ext(data: bytes, path: str | None) -> str | None:
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if path and "." in path.rsplit("/", 1)[-1]:
        ext = path.rsplit(".", 1)[-1].lower()
        return ext if ext in IMAGE_EXTENSIONS else None
    return None


def _image_member(value, root, where: str) -> tuple[str | None, bytes, str]:
    """(path for the json, bytes, extension) of one image value."""
    path = value.get("path") if isinstance(value, dict) else value
    try:
        data = read_image_bytes(value, root=root)
    except InputError as e:
        raise InputError(f"{where}: {e}") from e
    ext = _image_ext(data, path)
    if ext is None:
        raise InputError(f"{where}: {path!r}: cannot tell the image format (expected one of {IMAGE_EXTENSIONS})")
    return path, data, ext


def _sample(row: dict, schema: Schema, slots, root, i: int) -> tuple[dict, list[tuple[str, bytes]]]:
    """A stored row -> (the json row with image paths, [(member extension, bytes)])."""
    row = dict(row)
    members = []
    for name, kind in slots:
        v = row.get(name)
        if v is None:
            continue
        pre = _slot_prefix(slots, name)
        if kind == "one" or (kind == "either" and not isinstance(v, list)):
            p, data, ext = _image_member(v, root, f"row {i}: {name}")
            row[name] = _json_image(v, p)
            members.append((f"{pre}{ext}", data))
            continue
        paths = []
        for j, x in enumerate(v):
            if x is None:
                paths.append(None)
                continue
            p, data, ext = _image_member(x, root, f"row {i}: {name}[{j}]")
            paths.append(_json_image(x, p))
            members.append((f"{pre}{j}.{ext}", data))
        row[name] = paths
    return jsonable(row, schema), members


def _json_image(value, path):
    """An image as its ``.json`` holds it: the path and any extra keys (``width``); the bytes go in a member."""
    if not isinstance(value, dict):
        return path
    return {"path": path, **{k: v for k, v in value.items() if k not in ("path", "bytes")}}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed mtime: the same rows give the same bytes
    tar.addfile(info, io.BytesIO(data))


def write_wds(ds, path: str, key_offset: int = 0) -> None:
    """Write ``ds`` to one WebDataset tar, atomically: ``KEY.json`` per row plus its images as members.

    Images stored only as paths are read from disk (relative to ``ds.root``). Keys number the rows from
    ``key_offset`` (a sharded writer gives each shard its first row's number, so keys are unique in an output).

    Example
    -------
    >>> write_wds(ds, "out/shard-000000.tar")  # doctest: +SKIP
    """
    schema = ds.schema
    slots = image_slots(schema)
    with atomic_open(path, "wb") as f, tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        i = 0
        for batch in ds.to_arrow().to_batches(max_chunksize=1024):
            for row in batch.to_pylist():
                key = f"{i + key_offset:06d}"
                js, members = _sample(row, schema, slots, ds.root, i)
                _add(tar, f"{key}.json", json.dumps(js, ensure_ascii=False).encode())
                for ext, data in members:
                    _add(tar, f"{key}.{ext}", data)
                i += 1
