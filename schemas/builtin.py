"""The built-in schemas, loading DataCopilot / LLaVA / ShareGPT-style files as they are found in the wild,
and their converters through one canonical conversation form.

Canonical form (internal): ``{"id", "images": [image], "image_ids": [str | None], "messages":
[{"role": "system" | "user" | "assistant", "content": str}], "meta": json-text | None}``. A converter
raises :class:`ConversionError` instead of dropping information the target schema cannot hold.
"""

from __future__ import annotations

import pyarrow as pa

from datacopilot.errors import ConversionError, SchemaError

from .image import Image
from .schema import Schema
from .types import Field, Json, List, String, Struct

IMAGE_TOKEN = "<image>"

_MM_ROLES = {"human": "user", "gpt": "assistant"}
_MIX_ROLES = {"user": "user", "assistant": "assistant"}


def _inv(d: dict) -> dict:
    return {v: k for k, v in d.items()}


def _fail(target: str, why: str):
    raise ConversionError(f"cannot convert to {target} without loss: {why}")


def _one_image(c: dict, target: str):
    imgs = c.get("images") or []
    if len(imgs) > 1:
        _fail(target, f"{len(imgs)} images, {target} holds at most one")
    if any(i is not None for i in c.get("image_ids") or []):
        _fail(target, f"image ids {c['image_ids']!r} have no place in {target}")
    return imgs[0] if imgs else None


def _no_meta(c: dict, target: str):
    if c.get("meta") is not None:
        _fail(target, f"{target} has no meta field, got meta {c['meta']!r}")


def _roles(c: dict, mapping: dict, target: str) -> list[dict]:
    out = []
    for i, m in enumerate(c["messages"]):
        if m["role"] not in mapping:
            _fail(target, f"messages[{i}].role {m['role']!r} has no equivalent in {target}")
        out.append({"from": mapping[m["role"]], "value": m["content"]})
    return out


def _canon(id, images, messages, meta=None, image_ids=None) -> dict:
    images = [Image().normalize(i) for i in images if i is not None]
    return {
        "id": id,
        "images": images,
        "image_ids": list(image_ids) if image_ids is not None else [None] * len(images),
        "messages": messages,
        "meta": meta,
    }


# -- MM: LLaVA / DataCopilot SCHEMA.MM ----------------------------------------------------------------------
def _mm_to(r: dict) -> dict:
    msgs = [{"role": _MM_ROLES[t["from"]], "content": t["value"]} for t in r["conversations"]]
    return _canon(r.get("id"), [r.get("image")], msgs, r.get("meta"))


def _mm_from(c: dict) -> dict:
    return {"id": c.get("id"), "image": _one_image(c, "MM"), "conversations": _roles(c, _inv(_MM_ROLES), "MM"),
            "meta": c.get("meta")}


_TURN_MM = Struct((Field("from", String(("human", "gpt"))), Field("value", String())))
MM = Schema(
    "MM",
    [Field("id", String(), required=False), Field("image", Image(), required=False),
     Field("conversations", List(_TURN_MM)), Field("meta", Json(), required=False)],
    _mm_to, _mm_from, doc="LLaVA / DataCopilot SCHEMA.MM: one optional image, human/gpt turns",
)


# -- MIX: DataCopilot SCHEMA.MIX ----------------------------------------------------------------------------
def _mix_to(r: dict) -> dict:
    imgs = r.get("images") or []
    msgs = [{"role": t["from"], "content": t["value"]} for t in r["conversations"]]
    return _canon(r.get("id"), [i["url"] for i in imgs], msgs, r.get("meta"), [i.get("id") for i in imgs])


def _mix_from(c: dict) -> dict:
    images = []
    for i, (img, iid) in enumerate(zip(c["images"], c["image_ids"])):
        if img.get("bytes") is not None:
            _fail("MIX", f"images[{i}] carries bytes; MIX refers to images by url only")
        images.append({"id": iid, "url": img["path"]})
    return {"id": c.get("id"), "images": images, "conversations": _roles(c, _MIX_ROLES, "MIX"), "meta": c.get("meta")}


_MIX_IMAGE = Struct((Field("id", String(), required=False), Field("url", String())))
_TURN_MIX = Struct((Field("from", String(("user", "assistant"))), Field("value", String())))
MIX = Schema(
    "MIX",
    [Field("id", String(), required=False), Field("images", List(_MIX_IMAGE), required=False),
     Field("conversations", List(_TURN_MIX)), Field("meta", Json(), required=False)],
    _mix_to, _mix_from, doc="DataCopilot SCHEMA.MIX: several images by id and url, user/assistant turns",
)


# -- PAIRS: PaddleMIX chatml input --------------------------------------------------------------------------
def _pairs_to(r: dict) -> dict:
    msgs = []
    for q, a in r["conversations"]:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return _canon(r.get("id"), [r.get("image")], msgs)


def _pairs_from(c: dict) -> dict:
    img = _one_image(c, "PAIRS")
    _no_meta(c, "PAIRS")
    msgs = c["messages"]
    roles = [m["role"] for m in msgs]
    if len(msgs) % 2 or roles != ["user", "assistant"] * (len(msgs) // 2):
        _fail("PAIRS", f"roles {roles} are not user/assistant pairs")
    pairs = [[msgs[i]["content"], msgs[i + 1]["content"]] for i in range(0, len(msgs), 2)]
    return {"id": c.get("id"), "image": img, "conversations": pairs}


PAIRS = Schema(
    "PAIRS",
    [Field("id", String(), required=False), Field("image", Image(), required=False),
     Field("conversations", List(List(String(), length=2)))],
    _pairs_to, _pairs_from, doc="PaddleMIX chatml input: one optional image, [question, answer] pairs",
)


# -- MESSAGES: OpenAI / ShareGPT style ----------------------------------------------------------------------
def _msg_to(r: dict) -> dict:
    msgs = [{"role": m["role"], "content": m["content"]} for m in r["messages"]]
    return _canon(r.get("id"), r.get("images") or [], msgs, r.get("meta"))


def _msg_from(c: dict) -> dict:
    if any(i is not None for i in c.get("image_ids") or []):
        _fail("MESSAGES", f"image ids {c['image_ids']!r} have no place in MESSAGES")
    return {"id": c.get("id"), "messages": [dict(m) for m in c["messages"]], "images": list(c["images"]),
            "meta": c.get("meta")}


_MSG = Struct((Field("role", String(("system", "user", "assistant"))), Field("content", String())))
MESSAGES = Schema(
    "MESSAGES",
    [Field("id", String(), required=False), Field("messages", List(_MSG)),
     Field("images", List(Image()), required=False), Field("meta", Json(), required=False)],
    _msg_to, _msg_from, doc="OpenAI / ShareGPT style: system/user/assistant messages and a list of images",
)


# -- CAPTION ------------------------------------------------------------------------------------------------
def _cap_to(r: dict) -> dict:
    img = r.get("image")
    prompt = IMAGE_TOKEN if img is not None else ""
    msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": r["caption"]}]
    return _canon(r.get("id"), [img], msgs)


def _cap_from(c: dict) -> dict:
    img = _one_image(c, "CAPTION")
    _no_meta(c, "CAPTION")
    msgs = c["messages"]
    prompt = IMAGE_TOKEN if img is not None else ""
    if [m["role"] for m in msgs] != ["user", "assistant"] or msgs[0]["content"] != prompt:
        _fail("CAPTION", f"a caption is one bare {prompt!r} prompt and one answer, got {len(msgs)} messages")
    return {"id": c.get("id"), "image": img, "caption": msgs[1]["content"]}


CAPTION = Schema(
    "CAPTION",
    [Field("id", String(), required=False), Field("image", Image(), required=False), Field("caption", String())],
    _cap_to, _cap_from, doc="image-caption pairs",
)

BUILTIN = {s.name: s for s in (MM, MIX, PAIRS, MESSAGES, CAPTION)}


def get_schema(schema: "str | Schema") -> Schema:
    """A built-in schema by name (case-insensitive), or the schema given."""
    if isinstance(schema, Schema):
        return schema
    if isinstance(schema, str) and schema.upper() in BUILTIN:
        return BUILTIN[schema.upper()]
    raise SchemaError(f"unknown schema {schema!r}; built-in schemas: {sorted(BUILTIN)}")


def detect_schema(arrow_schema: pa.Schema) -> Schema | None:
    """The built-in schema whose shape the columns match, or None."""
    names = set(arrow_schema.names)
    if "messages" in names:
        return MESSAGES
    if "caption" in names and "conversations" not in names:
        return CAPTION
    if "conversations" in names:
        t = arrow_schema.field("conversations").type
        if pa.types.is_list(t) and pa.types.is_list(t.value_type):
            return PAIRS
        if "images" in names and "image" not in names:
            return MIX
        return MM
    return None
