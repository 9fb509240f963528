"""The built-in schemas: the files VLM SFT data comes in, each loaded as it is found in the wild and mapped to
and from the canonical sample (:mod:`datacopilot.schemas.canonical`).

Every schema is open: keys it does not name, at the top level, in turns, parts and image records, travel along
unchanged. Ids are strings or non-negative integers and stay what they were.
"""

from __future__ import annotations

import itertools
import re

from datacopilot.errors import ConversionError, SchemaError

from .canonical import (IMAGE_TOKEN, canon, extras, fail, from_turns, map_roles, no_more, one_image, part_text,
                        text_only)
from .image import Image
from .schema import Schema
from .types import Field, Float, Int, Json, List, OneOf, String, Struct

ID = OneOf((("str", String()), ("int", Int(minimum=0))))
IMAGES = List(Image())


def _id() -> Field:
    return Field("id", ID, required=False)


def _meta() -> Field:
    return Field("meta", Json(), required=False)


# -- MM: LLaVA / DataCopilot SCHEMA.MM (LLaVA-NeXT / OneVision: ``image`` may be a list) -----------------------
_MM_ROLES = {"human": "user", "gpt": "assistant"}
_INV_MM = {v: k for k, v in _MM_ROLES.items()}


def _image_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _mm_to(r: dict) -> dict:
    msgs = from_turns(r["conversations"], _MM_ROLES, "from", "value")
    return canon(r.get("id"), _image_list(r.get("image")), msgs, r.get("meta"))


def _mm_from(c: dict) -> dict:
    no_more(c, "MM", allowed=("meta",))
    imgs = c.get("images") or []
    image = imgs[0] if len(imgs) == 1 else (list(imgs) if imgs else None)
    convs = map_roles(text_only(c, "MM", keep=_turn_keys(c)), _INV_MM, "MM", "from", "value")
    return {"id": c.get("id"), "image": image, "conversations": convs, "meta": c.get("meta")}


def _turn_keys(c: dict) -> tuple[str, ...]:
    """Extra keys of the turns (a per-turn ``weight``): schemas whose turns are open carry them."""
    return tuple({k: None for m in c["messages"] for k in m if k not in ("role", "content")})


_TURN_MM = Struct((Field("from", String(("human", "gpt"))), Field("value", String())))
MM = Schema(
    "MM",
    [_id(), Field("image", OneOf((("one", Image()), ("many", IMAGES))), required=False),
     Field("conversations", List(_TURN_MM)), _meta()],
    _mm_to, _mm_from, doc="LLaVA / DataCopilot SCHEMA.MM: an optional image (or a list, LLaVA-NeXT), human/gpt turns",
)


# -- MIX: DataCopilot SCHEMA.MIX ----------------------------------------------------------------------------
# Its text refers to image N as ``<image>N</image>`` (paddlemix/datacopilot/core/__init__.py MODILATY_TOKENS); the
# canonical sample has one ``<image>`` per image in reading order. Files holding bare ``<image>`` placeholders
# instead (older writers, LLaVA habits) read as the canonical placeholders they are; a row that mixes the two
# forms is refused, since which image a bare one means would be a guess.
MIX_REF = re.compile(r"<image>(\d+)</image>")
_MIX_ROLES = {"user": "user", "assistant": "assistant"}


def _mix_error(why: str):
    raise ConversionError(f"cannot read MIX as a conversation without loss: {why}")


def _mix_to(r: dict) -> dict:
    imgs = r.get("images") or []
    turns, refs, bare = [], [], 0
    for t, turn in enumerate(r["conversations"]):
        value = turn.get("value")
        if value is not None and IMAGE_TOKEN in value:
            found = MIX_REF.findall(value)
            value = MIX_REF.sub(IMAGE_TOKEN, value) if found else value
            refs += [(t, int(n)) for n in found]
            bare += value.count(IMAGE_TOKEN) - len(found)
            turn = {**turn, "value": value}
        turns.append(turn)
    if refs and bare:
        _mix_error(f"conversations hold {len(refs)} <image>N</image> reference(s) and {bare} bare {IMAGE_TOKEN!r} "
                   f"placeholder(s); which image a bare one is would be a guess")
    ids = [i.get("id") for i in imgs]
    if refs:
        imgs, ids = _referenced(imgs, ids, refs)
    images = [{"path": i["url"], **extras(i, ("id", "url"))} for i in imgs]
    msgs = from_turns(turns, _MIX_ROLES, "from", "value")
    numbered = ids == list(range(len(ids)))  # 0, 1, ... in placeholder order: what MIX assigns, nothing to keep
    return canon(r.get("id"), images, msgs, r.get("meta"), None if numbered else ids)


def _referenced(imgs: list, ids: list, refs: list) -> tuple[list, list]:
    """The images in the order the text refers to them (an image referred to twice comes twice)."""
    index = {}
    for k, iid in enumerate(ids):
        if iid is not None and index.setdefault(iid, k) != k:
            _mix_error(f"images[{k}] repeats id {iid!r} of images[{index[iid]}]")
    for t, n in refs:
        if n not in index:
            _mix_error(f"conversations[{t}] refers to <image>{n}</image>, but no image has id {n} "
                       f"(image ids: {ids})")
    referred = {n for _, n in refs}
    unused = [iid for iid in ids if iid not in referred]
    if unused:
        _mix_error(f"image id(s) {unused} are not referred to by any <image>N</image>, so they have no place "
                   f"among the conversation's placeholders")
    listed = [iid for iid in ids if iid is not None]
    if listed != sorted(listed):  # written back in id order (the text says where each goes)
        _mix_error(f"images are listed with ids {listed}, not in id order; the text places them, so the listing "
                   f"order would be lost")
    return [imgs[index[n]] for _, n in refs], [n for _, n in refs]


def _mix_from(c: dict) -> dict:
    no_more(c, "MIX", allowed=("meta", "image_ids", "image_extras"))
    ids = _mix_ids(c.get("image_ids") or [None] * len(c["images"]))
    images = []
    for i, (img, iid) in enumerate(zip(c["images"], ids)):
        if img.get("bytes") is not None:
            fail("MIX", f"images[{i}] carries bytes; MIX refers to images by url only")
        images.append({"id": iid, "url": img["path"], **extras(img, ("path", "bytes"))})
    msgs = text_only(c, "MIX", keep=_turn_keys(c), nullable=True)
    n_refs = sum(m["content"].count(IMAGE_TOKEN) for m in msgs if m["content"] is not None)
    if n_refs:  # placeholders become <image>N</image>; without any, the images keep their order (it is the meaning)
        if n_refs != len(ids):
            fail("MIX", f"{n_refs} {IMAGE_TOKEN!r} placeholder(s) for {len(ids)} image(s); which <image>N</image> "
                        f"each is would be a guess")
        refs = iter(ids)
        for m in msgs:
            if m["content"] is not None and IMAGE_TOKEN in m["content"]:
                m["content"] = _PLACEHOLDER.sub(lambda _: f"<image>{next(refs)}</image>", m["content"])
        images = _by_id(images)
    convs = map_roles(msgs, _MIX_ROLES, "MIX", "from", "value")
    return {"id": c.get("id"), "images": images or None,  # SCHEMA.MIX: null or a non-empty list
            "conversations": convs, "meta": c.get("meta")}


def _by_id(images: list[dict]) -> list[dict]:
    """One record per id, in id order (the text says where each goes); an image placed twice is listed once."""
    records: dict[int, dict] = {}
    for i, rec in enumerate(images):
        if records.setdefault(rec["id"], rec) != rec:
            fail("MIX", f"images[{i}] has id {rec['id']}, which another image has: {records[rec['id']]!r}"[:300])
    return [records[k] for k in sorted(records)]


_PLACEHOLDER = re.compile(re.escape(IMAGE_TOKEN))


def _mix_ids(ids: list) -> list[int]:
    """MIX image ids: integers >= 0 (the N of ``<image>N</image>``); an image without one gets the smallest
    integer no other image has, in order."""
    for i, iid in enumerate(ids):
        if iid is not None and (isinstance(iid, bool) or not isinstance(iid, int) or iid < 0):
            fail("MIX", f"images[{i}] has id {iid!r}; MIX image ids are integers >= 0 (its text refers to image N "
                        f"as <image>N</image>)")
    taken = set(ids)
    free = (n for n in itertools.count() if n not in taken)
    return [iid if iid is not None else next(free) for iid in ids]


_MIX_IMAGE = Struct((Field("id", Int(minimum=0), required=False), Field("url", String())))
# SCHEMA.MIX allows a null value (``anyOf: [string, null]``); SCHEMA.MM does not
_TURN_MIX = Struct((Field("from", String(tuple(_MIX_ROLES))),
                    Field("value", String(), required=False, null_key=True)))
MIX = Schema(
    "MIX",
    [_id(), Field("images", List(_MIX_IMAGE), required=False, null_key=True), Field("conversations", List(_TURN_MIX)),
     _meta()],
    _mix_to, _mix_from,
    doc="DataCopilot SCHEMA.MIX: several images by integer id and url, referred to as <image>N</image>; "
        "user/assistant turns whose value may be null",
)


# -- SHAREGPT: ShareGPT and LLaMA-Factory's multimodal ShareGPT ---------------------------------------------
_SG_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "function_call": "tool_call",
             "observation": "tool", "user": "user", "assistant": "assistant"}
_INV_SG = {"user": "human", "assistant": "gpt", "system": "system", "tool_call": "function_call",
           "tool": "observation"}


def _sg_to(r: dict) -> dict:
    msgs = from_turns(r["conversations"], _SG_ROLES, "from", "value")
    if r.get("system") is not None:
        msgs = [{"role": "system", "content": r["system"]}] + msgs
    return canon(r.get("id"), r.get("images") or [], msgs, r.get("meta"), videos=r.get("videos"),
                 tools=r.get("tools"))


def _sg_from(c: dict) -> dict:
    no_more(c, "SHAREGPT", allowed=("meta", "videos", "tools"))
    msgs = text_only(c, "SHAREGPT", keep=_turn_keys(c))
    system = None
    if msgs and msgs[0]["role"] == "system" and len(msgs[0]) == 2:
        system, msgs = msgs[0]["content"], msgs[1:]
    return {"id": c.get("id"), "conversations": map_roles(msgs, _INV_SG, "SHAREGPT", "from", "value"),
            "images": list(c["images"]) or None, "videos": c.get("videos"), "system": system,
            "tools": c.get("tools"), "meta": c.get("meta")}


_TURN_SG = Struct((Field("from", String(tuple(_SG_ROLES))), Field("value", String())))
SHAREGPT = Schema(
    "SHAREGPT",
    [_id(), Field("conversations", List(_TURN_SG)), Field("images", IMAGES, required=False),
     Field("videos", List(String()), required=False), Field("system", String(), required=False),
     Field("tools", String(), required=False), _meta()],
    _sg_to, _sg_from,
    doc="ShareGPT / LLaMA-Factory: human/gpt/system/function_call/observation turns, image and video lists, "
        "system and tools columns",
)


# -- PAIRS: PaddleMIX chatml input --------------------------------------------------------------------------
def _pairs_to(r: dict) -> dict:
    msgs = []
    for q, a in r["conversations"]:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return canon(r.get("id"), [r.get("image")], msgs)


def _pairs_from(c: dict) -> dict:
    no_more(c, "PAIRS")
    img = one_image(c, "PAIRS")
    msgs = text_only(c, "PAIRS")
    roles = [m["role"] for m in msgs]
    if len(msgs) % 2 or roles != ["user", "assistant"] * (len(msgs) // 2):
        fail("PAIRS", f"roles {roles} are not user/assistant pairs")
    pairs = [[msgs[i]["content"], msgs[i + 1]["content"]] for i in range(0, len(msgs), 2)]
    return {"id": c.get("id"), "image": img, "conversations": pairs}


PAIRS = Schema(
    "PAIRS",
    [_id(), Field("image", Image(), required=False), Field("conversations", List(List(String(), length=2)))],
    _pairs_to, _pairs_from, doc="PaddleMIX chatml input: one optional image, [question, answer] pairs",
)


# -- MESSAGES: OpenAI chat (content text or parts), HF llava-instruct-mix-vsft, LLaMA-Factory openai style ---
def _parts_to(content, images: list) -> object:
    """OpenAI ``image_url`` parts become ``{"type": "image"}`` parts and their url an image, in order."""
    if not isinstance(content, list):
        return content
    out = []
    for p in content:
        if p.get("type") == "image_url" and isinstance(p.get("image_url"), dict):
            more = extras(p["image_url"], ("url",))
            images.append({"path": p["image_url"].get("url"), "bytes": None, **more})
            out.append({"type": "image", **extras(p, ("type", "image_url"))})
        else:
            out.append(dict(p))
    return out


def _msg_to(r: dict) -> dict:
    images = list(r.get("images") or [])
    msgs = []
    for m in r["messages"]:
        msg = {"role": m["role"], "content": _parts_to(m.get("content"), images)}
        msg.update((k, v) for k, v in m.items() if k not in ("role", "content") and v is not None)
        msgs.append(msg)
    ids = [i.get("id") if isinstance(i, dict) else None for i in images]
    if not any(i is not None for i in ids):
        return canon(r.get("id"), images, msgs, r.get("meta"))
    images = [{k: v for k, v in i.items() if k != "id"} for i in images]  # an image record's id: MIX's image id
    return canon(r.get("id"), images, msgs, r.get("meta"), ids)


def _msg_from(c: dict) -> dict:
    """MESSAGES rows; MIX image ids go into the image records as ``id``, LLaMA-Factory's ``videos`` and
    ``tools`` (its openai-style files carry them beside ``messages``) into columns of their own."""
    no_more(c, "MESSAGES", allowed=("meta", "image_extras", "image_ids", "videos", "tools"))
    msgs = []
    for i, m in enumerate(c["messages"]):
        if m["role"] == "tool_call":
            fail("MESSAGES", f"messages[{i}] is a tool call; MESSAGES has no tool-call turns")
        msgs.append(dict(m))
    images = [dict(img) for img in c["images"]]
    for img, iid in zip(images, c.get("image_ids") or []):
        if iid is not None:
            if img.get("id") is not None:
                fail("MESSAGES", f"an image with id {iid!r} already has an `id` key {img['id']!r}")
            img["id"] = iid
    out = {"id": c.get("id"), "messages": msgs, "images": images, "meta": c.get("meta")}
    out.update((k, c[k]) for k in ("videos", "tools") if c.get(k) is not None)
    return out


_PART = Struct((Field("type", String()), Field("text", String(), required=False),
                Field("image_url", Struct((Field("url", String()),)), required=False)))
# OpenAI chat: an assistant turn that only calls tools has ``content: null`` (and ``tool_calls``)
_MSG = Struct((Field("role", String(("system", "user", "assistant", "tool"))),
               Field("content", OneOf((("text", String()), ("parts", List(_PART)))), required=False)))
MESSAGES = Schema(
    "MESSAGES",
    [_id(), Field("messages", List(_MSG)), Field("images", IMAGES, required=False), _meta()],
    _msg_to, _msg_from,
    doc="OpenAI chat style: system/user/assistant/tool messages whose content is text or a list of parts "
        "(text, image, image_url incl. data URLs), and an optional list of images",
)


# -- CAPTION (img2dataset rows keep their json metadata in meta) -------------------------------------------
def _cap_to(r: dict) -> dict:
    img = r.get("image")
    prompt = IMAGE_TOKEN if img is not None else ""
    msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": r["caption"]}]
    return canon(r.get("id"), [img], msgs, r.get("meta"))


def _cap_from(c: dict) -> dict:
    no_more(c, "CAPTION", allowed=("meta",))
    img = one_image(c, "CAPTION")
    msgs = text_only(c, "CAPTION")
    prompt = IMAGE_TOKEN if img is not None else ""
    if [m["role"] for m in msgs] != ["user", "assistant"] or msgs[0]["content"] != prompt:
        fail("CAPTION", f"a caption is one bare {prompt!r} prompt and one answer, got {len(msgs)} messages")
    return {"id": c.get("id"), "image": img, "caption": msgs[1]["content"], "meta": c.get("meta")}


CAPTION = Schema(
    "CAPTION",
    [_id(), Field("image", Image(), required=False), Field("caption", String()), _meta()],
    _cap_to, _cap_from, doc="image-caption pairs (img2dataset: its json metadata in meta)",
)


# -- CAULDRON: HuggingFaceM4/the_cauldron -------------------------------------------------------------------
def _cauldron_to(r: dict) -> dict:
    msgs = []
    for t in r["texts"]:
        more = extras(t, ("user", "assistant"))
        msgs += [{"role": "user", "content": t["user"], **more}, {"role": "assistant", "content": t["assistant"]}]
    return canon(r.get("id"), r.get("images") or [], msgs)


def _cauldron_from(c: dict) -> dict:
    no_more(c, "CAULDRON")
    msgs = text_only(c, "CAULDRON", keep=_turn_keys(c))
    if [m["role"] for m in msgs] != ["user", "assistant"] * (len(msgs) // 2) or len(msgs) % 2:
        fail("CAULDRON", f"roles {[m['role'] for m in msgs]} are not user/assistant pairs")
    texts = []
    for q, a in zip(msgs[::2], msgs[1::2]):
        if len(a) > 2:
            fail("CAULDRON", f"an assistant turn with keys {sorted(set(a) - {'role', 'content'})}")
        texts.append({"user": q["content"], "assistant": a["content"], **extras(q, ("role", "content"))})
    return {"id": c.get("id"), "images": list(c["images"]), "texts": texts}


_TEXT = Struct((Field("user", String()), Field("assistant", String()), Field("source", String(), required=False)))
CAULDRON = Schema(
    "CAULDRON",
    [_id(), Field("images", IMAGES, required=False), Field("texts", List(_TEXT))],
    _cauldron_to, _cauldron_from, doc="The Cauldron: a list of images and user/assistant/source texts",
)


# -- MMC4: interleaved documents ----------------------------------------------------------------------------
def _mmc4_to(r: dict) -> dict:
    infos = r.get("image_info") or []
    images, parts = [], []
    by_sentence: dict[int, list] = {}
    for info in infos:
        by_sentence.setdefault(info.get("matched_text_index"), []).append(info)
    for i, text in enumerate(r["text_list"]):
        for info in by_sentence.pop(i, []):
            images.append({"path": info["image_name"], "bytes": None, **extras(info, ("image_name",))})
            parts.append({"type": "image"})
        parts.append({"type": "text", "text": text})
    if by_sentence:
        raise SchemaError(f"image_info matched_text_index {sorted(by_sentence)} outside text_list "
                          f"(0..{len(r['text_list']) - 1})")
    return canon(r.get("id"), images, [{"role": "assistant", "content": parts}])


_IMAGE_INFO = Struct((Field("image_name", String()), Field("raw_url", String(), required=False),
                      Field("matched_text_index", Int(minimum=0)), Field("matched_sim", Float(), required=False)))
MMC4 = Schema(
    "MMC4",
    [_id(), Field("image_info", List(_IMAGE_INFO)), Field("text_list", List(String()))],
    _mmc4_to, None, doc="MMC4-style interleaved documents: sentences and images placed at their matched sentence",
)

BUILTIN = {s.name: s for s in (MM, MIX, SHAREGPT, PAIRS, MESSAGES, CAPTION, CAULDRON, MMC4)}


def get_schema(schema: "str | Schema") -> Schema:
    """A built-in schema by name (case-insensitive), or the schema given."""
    if isinstance(schema, Schema):
        return schema
    if isinstance(schema, str) and schema.upper() in BUILTIN:
        return BUILTIN[schema.upper()]
    raise SchemaError(f"unknown schema {schema!r}; built-in schemas: {sorted(BUILTIN)}")


__all__ = ["BUILTIN", "CAPTION", "CAULDRON", "IMAGE_TOKEN", "MESSAGES", "MIX", "MM", "MMC4", "PAIRS", "SHAREGPT",
           "get_schema", "part_text"]
