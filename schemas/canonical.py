"""The canonical sample every built-in schema maps to and from, and the helpers converters share.

A canonical sample is a dict::

    {"id": str | int | None,
     "images": [{"path", "bytes", ...extra keys}],       # in order; zero or more
     "image_ids": [str | int | None],                    # one per image (MIX's ids, MESSAGES image `id` keys)
     "messages": [{"role": "system" | "user" | "assistant" | "tool_call" | "tool",
                   "content": str | [part], ...extra keys}],
     "meta": json text | None,
     ...any other key a schema carries (``videos``, ``tools``)}

Each ``<image>`` placeholder in the text (or ``{"type": "image"}`` part) stands for the next image of ``images``.
Image ids are all None when they tell nothing: a MIX row whose images are numbered 0, 1, ... in placeholder order
(MIX's ``<image>N</image>`` references are rewritten to placeholders, see :mod:`datacopilot.schemas.builtin`).

A part is ``{"type": "text", "text": str}`` or ``{"type": "image"}`` (the next image of ``images``), plus any
extra keys. ``tool_call`` is an assistant turn that calls a tool (ShareGPT's ``function_call``), ``tool`` the tool's
answer (``observation``). A converter that cannot carry something raises :class:`ConversionError` naming it.
"""

from __future__ import annotations

from datacopilot.errors import ConversionError

from .image import Image

IMAGE_TOKEN = "<image>"
ROLES = ("system", "user", "assistant", "tool_call", "tool")


def fail(target: str, why: str):
    raise ConversionError(f"cannot convert to {target} without loss: {why}")


def canon(id, images, messages, meta=None, image_ids=None, **more) -> dict:
    images = [Image().normalize(i) for i in images if i is not None]
    out = {"id": id, "images": images,
           "image_ids": list(image_ids) if image_ids is not None else [None] * len(images),
           "messages": messages, "meta": meta}
    out.update((k, v) for k, v in more.items() if v is not None)
    return out


def extras(d: dict, known: tuple[str, ...]) -> dict:
    """The keys of ``d`` outside ``known`` whose value is set (a missing key and a null are the same)."""
    return {k: v for k, v in d.items() if k not in known and v is not None}


def part_text(content) -> str:
    """A turn's content as text: parts joined by newlines, image parts as ``<image>``.

    >>> part_text([{"type": "image"}, {"type": "text", "text": "What is it?"}])
    '<image>\\nWhat is it?'
    """
    if content is None or isinstance(content, str):
        return content
    out = []
    for p in content:
        kind = p.get("type")
        if kind == "text":
            out.append(p.get("text") or "")
        elif kind in ("image", "image_url", "input_image"):
            out.append(IMAGE_TOKEN)
        else:
            raise ConversionError(f"a content part of type {kind!r} has no text form")
    return "\n".join(out)


def text_only(c: dict, target: str, keep: tuple[str, ...] = (), nullable: bool = False) -> list[dict]:
    """The messages with parts rendered as text; raises when a part or a turn's extra key would be lost, or when
    a turn has no content (null: an OpenAI tool-calling turn, a MIX turn) and ``target``'s turns are not
    ``nullable``."""
    out = []
    for i, m in enumerate(c["messages"]):
        content = m.get("content")
        if content is None and not nullable:
            fail(target, f"messages[{i}] has no content (null); {target}'s turns hold text")
        if isinstance(content, list):
            for p in content:
                lost = extras(p, ("type", "text"))
                if lost:
                    fail(target, f"messages[{i}] has a content part with {sorted(lost)}, {target} holds text only")
            content = part_text(content)
        more = extras(m, ("role", "content") + keep)
        if more:
            fail(target, f"messages[{i}] has keys {sorted(more)} that {target}'s turns do not hold")
        out.append({"role": m["role"], "content": content, **{k: m[k] for k in keep if m.get(k) is not None}})
    return out


def no_more(c: dict, target: str, allowed: tuple[str, ...] = ()) -> None:
    """Raise when the sample holds something (meta, videos, tools, image ids or image extras) ``target`` cannot."""
    for key in ("meta", "videos", "tools"):
        if c.get(key) is not None and key not in allowed:
            fail(target, f"{target} has no {key} field, got {key} {c[key]!r}"[:300])
    if "image_ids" not in allowed and any(i is not None for i in c.get("image_ids") or []):
        fail(target, f"image ids {c['image_ids']!r} have no place in {target}")
    for i, img in enumerate(c.get("images") or []):
        lost = extras(img, ("path", "bytes"))
        if lost and "image_extras" not in allowed:
            fail(target, f"images[{i}] has keys {sorted(lost)} that {target}'s images do not hold")


def one_image(c: dict, target: str):
    imgs = c.get("images") or []
    if len(imgs) > 1:
        fail(target, f"{len(imgs)} images, {target} holds at most one")
    return imgs[0] if imgs else None


def map_roles(msgs: list[dict], mapping: dict, target: str, role_key: str, text_key: str) -> list[dict]:
    out = []
    for i, m in enumerate(msgs):
        if m["role"] not in mapping:
            fail(target, f"messages[{i}].role {m['role']!r} has no equivalent in {target}")
        turn = {role_key: mapping[m["role"]], text_key: m["content"]}
        turn.update((k, v) for k, v in m.items() if k not in ("role", "content"))
        out.append(turn)
    return out


def from_turns(turns: list[dict], mapping: dict, role_key: str, text_key: str) -> list[dict]:
    out = []
    for t in turns:
        m = {"role": mapping[t[role_key]], "content": t[text_key]}
        m.update((k, v) for k, v in t.items() if k not in (role_key, text_key) and v is not None)
        out.append(m)
    return out
