"""Character Card V3 / V2 export and import, as JSON and as PNG ``tEXt`` chunks. Pure functions, no Django.

A card is ``{"spec": "chara_card_v3", "spec_version": "3.0", "data": {...}}`` (V2: ``chara_card_v2`` / ``2.0``, the
same ``data`` fields minus the V3 additions). Moonborn's own data (the prompt, each step's output, model and
duration, the drift anchors and calibration figures) travels under ``data.extensions.moonborn``; every other
extension, and every ``data`` field Moonborn does not know, is kept as it came and written back on export.

PNG cards carry the JSON base64-encoded in ``tEXt`` chunks: ``ccv3`` (V3) and ``chara`` (V2, for older tools), as
SillyTavern writes them. Reading prefers ``ccv3`` and falls back to ``chara``. V1 cards (the fields at top level, no
``spec``) are accepted on import too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CardError",
    "ImportedCard",
    "anchor_texts_from_card",
    "card_v2",
    "card_v3",
    "parse_card",
    "parse_card_bytes",
    "png_read_text_chunks",
    "png_with_card",
]

V3_SPEC, V3_VERSION = "chara_card_v3", "3.0"
V2_SPEC, V2_VERSION = "chara_card_v2", "2.0"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MOONBORN_EXTENSION = "moonborn"
MOONBORN_EXTENSION_VERSION = 1

# The text fields of a card's `data` (V2 and V3), and its string lists.
TEXT_FIELDS = (
    "name",
    "description",
    "personality",
    "scenario",
    "first_mes",
    "mes_example",
    "creator_notes",
    "system_prompt",
    "post_history_instructions",
    "creator",
    "character_version",
)
V3_TEXT_FIELDS = ("nickname",)
LIST_FIELDS = ("alternate_greetings", "tags")
V3_LIST_FIELDS = ("group_only_greetings",)
# V1 cards used these names at top level.
V1_FIELDS = {
    "char_name": "name",
    "char_persona": "description",
    "world_scenario": "scenario",
    "char_greeting": "first_mes",
}

MAX_NAME_CHARS = 200
MAX_TEXT_CHARS = 100_000
MAX_ANCHORS = 40
MAX_ANCHOR_CHARS = 2_000


class CardError(ValueError):
    """The bytes or JSON are not a card Moonborn can import; the message says why, for the user."""


@dataclass(frozen=True)
class ImportedCard:
    """A parsed card: its spec, its ``data`` without Moonborn's extension, and that extension (or ``{}``)."""

    spec: str
    data: dict[str, Any]
    moonborn: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.data["name"])


# --- export ------------------------------------------------------------------------------------------------------


def card_v3(data: Mapping[str, Any], moonborn: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A CCv3 card from ``data`` fields (missing ones filled with empty values) and Moonborn's extension data."""
    out: dict[str, Any] = {k: v for k, v in data.items()}
    for key in TEXT_FIELDS + V3_TEXT_FIELDS:
        out.setdefault(key, "")
    for key in LIST_FIELDS + V3_LIST_FIELDS:
        out.setdefault(key, [])
    extensions = dict(out.get("extensions") or {})
    if moonborn is not None:
        extensions[MOONBORN_EXTENSION] = {"version": MOONBORN_EXTENSION_VERSION, **moonborn}
    out["extensions"] = extensions
    return {"spec": V3_SPEC, "spec_version": V3_VERSION, "data": out}


def card_v2(card: Mapping[str, Any]) -> dict[str, Any]:
    """The V2 form of a V3 card (the ``chara`` chunk of a PNG): V3-only fields left out, extensions kept."""
    data = dict(card["data"])
    for key in ("nickname", "group_only_greetings", "assets", "source", "creation_date", "modification_date"):
        data.pop(key, None)
    if isinstance(data.get("creator_notes_multilingual"), dict):
        data.pop("creator_notes_multilingual")
    return {"spec": V2_SPEC, "spec_version": V2_VERSION, "data": data}


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _iter_chunks(png: bytes) -> Iterator[tuple[bytes, bytes, int, int]]:
    """(type, payload, start, end) of each chunk; raises CardError on a truncated or corrupt PNG."""
    if not png.startswith(PNG_SIGNATURE):
        raise CardError("The file is not a PNG image.")
    pos = len(PNG_SIGNATURE)
    while pos < len(png):
        if pos + 8 > len(png):
            raise CardError("The PNG image is truncated.")
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind = png[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(png):
            raise CardError("The PNG image is truncated.")
        payload = png[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length : end])
        if zlib.crc32(kind + payload) != crc:
            raise CardError(f"The PNG chunk {kind.decode('latin-1')!r} is corrupt (bad CRC).")
        yield kind, payload, pos, end
        pos = end
        if kind == b"IEND":
            return
    raise CardError("The PNG image has no IEND chunk.")


def placeholder_png(seed: str, size: int = 64) -> bytes:
    """A small two-tone RGB PNG whose colours come from ``seed``: the picture of a card with no image of its own."""
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    top, bottom = digest[0:3], digest[3:6]
    raw = b"".join(b"\x00" + (top if y < size // 2 else bottom) * size for y in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")


def png_with_card(card: Mapping[str, Any], image: bytes | None = None) -> bytes:
    """``image`` (or a placeholder) with the card in ``ccv3`` and its V2 form in ``chara``; old card chunks dropped."""
    png = image if image is not None else placeholder_png(str(card.get("data", {}).get("name", "")))
    texts = (
        (b"chara", json.dumps(card_v2(card), ensure_ascii=False, separators=(",", ":"))),
        (b"ccv3", json.dumps(card, ensure_ascii=False, separators=(",", ":"))),
    )
    new = b"".join(_chunk(b"tEXt", key + b"\x00" + base64.b64encode(text.encode("utf-8"))) for key, text in texts)
    out = [PNG_SIGNATURE]
    for kind, payload, start, end in _iter_chunks(png):
        if kind == b"tEXt" and payload.split(b"\x00", 1)[0] in (b"chara", b"ccv3"):
            continue
        if kind == b"IEND":
            out.append(new)
        out.append(png[start:end])
    return b"".join(out)


def png_read_text_chunks(png: bytes) -> dict[str, str]:
    """The ``tEXt`` chunks of a PNG as ``{keyword: text}`` (Latin-1, as the PNG spec says; first one wins)."""
    found: dict[str, str] = {}
    for kind, payload, _, _ in _iter_chunks(png):
        if kind == b"tEXt" and b"\x00" in payload:
            key, text = payload.split(b"\x00", 1)
            found.setdefault(key.decode("latin-1"), text.decode("latin-1"))
    return found


# --- import ------------------------------------------------------------------------------------------------------


def _text(data: Mapping[str, Any], key: str, *, limit: int = MAX_TEXT_CHARS) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CardError(f"data.{key} must be a string, not {type(value).__name__}.")
    if len(value) > limit:
        raise CardError(f"data.{key} is longer than {limit} characters.")
    return value


def _text_list(data: Mapping[str, Any], key: str) -> list[str]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise CardError(f"data.{key} must be a list of strings.")
    return list(value)


def _character_book(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise CardError("data.character_book must be an object.")
    entries = value.get("entries", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CardError("data.character_book.entries must be a list of objects.")
    for i, entry in enumerate(entries):
        keys = entry.get("keys", [])
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise CardError(f"data.character_book.entries[{i}].keys must be a list of strings.")
        if not isinstance(entry.get("content", ""), str):
            raise CardError(f"data.character_book.entries[{i}].content must be a string.")
    return dict(value)


def _moonborn(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CardError("data.extensions.moonborn must be an object.")
    out = dict(value)
    if "prompt" in out and not isinstance(out["prompt"], str):
        raise CardError("data.extensions.moonborn.prompt must be a string.")
    for key in ("driftAnchors", "driftSamples"):
        texts = out.get(key)
        if texts is not None and (
            not isinstance(texts, list)
            or not all(isinstance(a, str) and 0 < len(a) <= MAX_ANCHOR_CHARS for a in texts)
            or len(texts) > MAX_ANCHORS
        ):
            raise CardError(
                f"data.extensions.moonborn.{key} must be a list of at most {MAX_ANCHORS} non-empty strings "
                f"of at most {MAX_ANCHOR_CHARS} characters."
            )
    steps = out.get("steps")
    valid_steps = isinstance(steps, list) and all(
        isinstance(s, dict) and isinstance(s.get("step"), str) and isinstance(s.get("output", {}), dict) for s in steps
    )
    if steps is not None and not valid_steps:
        raise CardError("data.extensions.moonborn.steps must be a list of {step, output} objects.")
    return out


def parse_card(obj: Any) -> ImportedCard:
    """Validate a decoded card (V3, V2 or V1) and normalise its ``data``. Raises CardError with a clear message."""
    if not isinstance(obj, dict):
        raise CardError(f"A card must be a JSON object, not {type(obj).__name__}.")
    spec = obj.get("spec")
    if spec in (V3_SPEC, V2_SPEC):
        raw = obj.get("data")
        if not isinstance(raw, dict):
            raise CardError(f"A {spec} card must have a data object.")
    elif spec is None:
        if not any(k in obj for k in ("name", *V1_FIELDS)):
            raise CardError("Not a character card: no spec and no name.")
        raw = {V1_FIELDS.get(k, k): v for k, v in obj.items()}
        spec = "chara_card_v1"
    else:
        raise CardError(f"Unsupported card spec {spec!r}; expected {V3_SPEC} or {V2_SPEC}.")
    data: dict[str, Any] = dict(raw)
    for key in TEXT_FIELDS + V3_TEXT_FIELDS:
        if key in data or key in TEXT_FIELDS:
            data[key] = _text(raw, key, limit=MAX_NAME_CHARS if key == "name" else MAX_TEXT_CHARS)
    for key in LIST_FIELDS + V3_LIST_FIELDS:
        if key in data or key in LIST_FIELDS:
            data[key] = _text_list(raw, key)
    if not data["name"].strip():
        raise CardError("The card has no name (data.name).")
    data["name"] = data["name"].strip()
    if "character_book" in data:
        data["character_book"] = _character_book(raw["character_book"])
    extensions = raw.get("extensions", {})
    if extensions is None:
        extensions = {}
    if not isinstance(extensions, dict):
        raise CardError("data.extensions must be an object.")
    extensions = dict(extensions)
    moonborn = _moonborn(extensions.pop(MOONBORN_EXTENSION, None))
    data["extensions"] = extensions
    return ImportedCard(spec=str(spec), data=data, moonborn=moonborn)


def _decode_chunk(text: str, key: str) -> Any:
    try:
        return json.loads(base64.b64decode(text.encode("latin-1"), validate=True).decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise CardError(f"The PNG's {key!r} chunk is not base64-encoded card JSON ({exc}).") from None


def parse_card_bytes(body: bytes) -> ImportedCard:
    """A card from an uploaded file: a PNG (``ccv3`` preferred, else ``chara``) or JSON (UTF-8)."""
    if body.startswith(PNG_SIGNATURE):
        chunks = png_read_text_chunks(body)
        for key in ("ccv3", "chara"):
            if key in chunks:
                return parse_card(_decode_chunk(chunks[key], key))
        raise CardError("The PNG image carries no character card (no 'ccv3' or 'chara' text chunk).")
    try:
        obj = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CardError(f"The card is neither a PNG nor valid JSON ({exc}).") from None
    return parse_card(obj)


def anchor_texts_from_card(data: Mapping[str, Any], *, limit: int = MAX_ANCHORS) -> list[str]:
    """Drift anchors of a card without Moonborn data: greetings and the character's example lines.

    ``{{char}}``/``<BOT>`` macros become the card's name and ``{{user}}``/``<USER>`` "you"; with no dialogue at all
    the description and personality are used.
    """
    name = str(data.get("name") or "")

    def clean(text: str) -> str:
        for macro in ("{{char}}", "<BOT>", "{{Char}}"):
            text = text.replace(macro, name)
        for macro in ("{{user}}", "<USER>", "{{User}}"):
            text = text.replace(macro, "you")
        return " ".join(text.split())[:MAX_ANCHOR_CHARS]

    texts: list[str] = [str(data.get("first_mes") or "")]
    texts += [str(g) for g in data.get("alternate_greetings") or []]
    for line in str(data.get("mes_example") or "").splitlines():
        stripped = line.strip()
        for prefix in ("{{char}}:", "<BOT>:", f"{name}:" if name else "{{char}}:"):
            if stripped.startswith(prefix):
                texts.append(stripped[len(prefix) :])
                break
    if not any(t.strip() for t in texts):
        texts = [str(data.get("description") or ""), str(data.get("personality") or "")]
    out: list[str] = []
    for text in texts:
        cleaned = clean(text)
        if cleaned and cleaned not in out:
            out.append(cleaned)
    return out[:limit]
