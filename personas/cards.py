"""Character Card V3 / V2 export and import, as JSON and as PNG ``tEXt`` chunks. Pure functions, no Django.

A card is ``{"spec": "chara_card_v3", "spec_version": "3.0", "data": {...}}`` (V2: ``chara_card_v2`` / ``2.0``, the
same ``data`` fields minus the V3 additions). Moonborn's own data (the prompt, each step's output, model and
duration, the drift anchors and calibration figures) travels under ``data.extensions.moonborn``; every other
extension, and every ``data`` field Moonborn does not know, is kept as it came and written back on export.

PNG cards carry the JSON base64-encoded in ``tEXt`` chunks: ``ccv3`` (V3) and ``chara`` (V2, for older tools), as
SillyTavern writes them. Reading prefers ``ccv3`` and falls back to ``chara``. V1 cards (the fields at top level, no
``spec``) are accepted on import too.

An imported card is stored (``Persona.card``, each step's output) and sent again in every persona list page, so
what it may carry is bounded before anything else reads it: the JSON's size, nesting depth, keys per object, items
per list, string lengths, lorebook entries, and the size of the parts kept without being understood (extensions,
data fields outside the spec, step outputs). Breaking a bound is a ``CardTooLarge``; every refusal is a
``CardError`` whose message says what to fix.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CardError",
    "CardTooLarge",
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

# The `data` fields of the V2 and V3 specs; any other key of `data` is kept but bounded (MAX_UNKNOWN_FIELDS_BYTES).
V3_ONLY_FIELDS = ("assets", "creator_notes_multilingual", "source", "creation_date", "modification_date")
SPEC_FIELDS = frozenset(
    (*TEXT_FIELDS, *V3_TEXT_FIELDS, *LIST_FIELDS, *V3_LIST_FIELDS, *V3_ONLY_FIELDS, "character_book", "extensions")
)

MAX_NAME_CHARS = 200
MAX_TEXT_CHARS = 100_000
MAX_ANCHORS = 40
MAX_ANCHOR_CHARS = 2_000

# Import bounds. Big community cards have lorebooks of a few hundred entries, descriptions of tens of KB and
# extension blocks of a few KB (SillyTavern's regex scripts and RisuAI's background HTML are the largest), a few
# hundred KB of JSON in all; each bound sits several times above that. SillyTavern, a local app, sets none.
# The whole upload: a PNG card is an image as well as its card, twice (the `ccv3` and `chara` chunks).
MAX_CARD_FILE_BYTES = 8 * 1024 * 1024
# The card's JSON text: a JSON upload, or a PNG's chunk once base64-decoded. This is what may be stored.
MAX_CARD_JSON_BYTES = 2 * 1024 * 1024
# Objects and lists inside one another (the card itself is level 1). Community cards go 6 deep (a lorebook entry's
# extensions), Moonborn's own export 10 (the keys of a lorebook entry in a step's output); the bound also keeps
# every later recursive walk (json.dumps, the API's renderers) far from Python's recursion limit.
MAX_DEPTH = 32
MAX_OBJECT_KEYS = 1_000
MAX_KEY_CHARS = 1_000
MAX_LIST_ITEMS = 2_000
# Any string anywhere in the card, as long as the longest text field may be.
MAX_STRING_CHARS = MAX_TEXT_CHARS
MAX_BOOK_ENTRIES = 1_000
# `data.extensions` other than Moonborn's own, serialised (compact UTF-8 JSON): kept and written back on export,
# since other tools read their settings from it.
MAX_EXTENSIONS_BYTES = 256 * 1024
# `data` keys outside the V2/V3 specs, together, serialised. They are kept rather than dropped because a card
# round-trips through Moonborn back to the tool that wrote it (some tools add fields of their own, and a V1 card's
# top-level fields all land here), but nothing in Moonborn reads them, so they get less room than extensions.
MAX_UNKNOWN_FIELDS_BYTES = 64 * 1024
# Moonborn's own extension: one record per pipeline step (six today; room for more), each step's output bounded.
MAX_STEPS = 12
MAX_STEP_OUTPUT_BYTES = 128 * 1024
# A real PNG has a few dozen chunks (a large image some hundreds of IDAT chunks); each chunk costs a CRC and a loop.
MAX_PNG_CHUNKS = 10_000
# A step's duration is stored in a PositiveIntegerField.
MAX_DURATION_MS = 2**31 - 1

# Characters no database column can hold: NUL (PostgreSQL's text and jsonb refuse it) and unpaired surrogates
# (they have no UTF-8 form, so neither SQLite nor PostgreSQL can be sent them).
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


class CardError(ValueError):
    """The bytes or JSON are not a card Moonborn can import; the message says why, for the user."""

    code = "invalid_card"


class CardTooLarge(CardError):
    """The card, or a part of it, breaks one of the import bounds (size, depth, keys, items, entries)."""

    code = "card_too_large"


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
    count = 0
    while pos < len(png):
        count += 1
        if count > MAX_PNG_CHUNKS:
            raise CardError(f"The PNG image has more than {MAX_PNG_CHUNKS} chunks.")
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

# Where a value sits in the card, as a chain of (parent, key): built for every object and list the bounds walk
# visits, so it stays one small tuple each; the dotted path is spelt out only for an error message.
_Where = tuple[Any, str | int] | None


def _where(chain: _Where) -> str:
    keys: list[str | int] = []
    while chain is not None:
        chain, key = chain
        keys.append(key)
    path = ""
    for key in reversed(keys):
        if isinstance(key, int):
            path += f"[{key}]"
        else:
            shown = key if len(key) <= 40 else key[:40] + "…"
            path += f".{shown}" if path else shown
    return path or "The card"


def _check_string(value: str, chain: _Where, limit: int, what: str = "") -> None:
    if len(value) > limit:
        raise CardTooLarge(f"{_where(chain)}{what} is longer than {limit} characters.")
    if _UNSTORABLE.search(value):
        raise CardError(f"{_where(chain)}{what} contains a NUL character or an unpaired surrogate.")


# The types of JSON values with nothing to check (bool and None included), looked up by exact type: the walk below
# visits every value of the card, up to a million in 2 MiB, so its common cases are its fast ones.
_PLAIN = frozenset({int, bool, type(None)})


def _check_bounds(obj: Any) -> None:
    """Depth, keys per object, items per list, string lengths and numbers of a decoded card, all in one walk.

    Iterative, so a deep card costs no recursion; it runs before anything else touches the card (the validation
    below, json.dumps, the database), so those only ever see a card within the bounds.
    """
    stack: list[tuple[Any, _Where, int]] = [(obj, None, 1)]
    while stack:
        value, chain, depth = stack.pop()
        items: Iterable[tuple[Any, Any]]
        if isinstance(value, dict):
            if len(value) > MAX_OBJECT_KEYS:
                raise CardTooLarge(f"{_where(chain)} has more than {MAX_OBJECT_KEYS} keys.")
            if not all(type(key) is str for key in value):
                raise CardError(f"{_where(chain)} has a key that is not a string.")
            # All the keys at once; the slow look for the culprit only when one is wrong.
            if max(map(len, value), default=0) > MAX_KEY_CHARS or _UNSTORABLE.search("".join(value)):
                for key in value:
                    _check_string(key, chain, MAX_KEY_CHARS, what=" has a key that")
            items = value.items()
        elif isinstance(value, list):
            if len(value) > MAX_LIST_ITEMS:
                raise CardTooLarge(f"{_where(chain)} has more than {MAX_LIST_ITEMS} items.")
            items = enumerate(value)
        else:
            continue
        if depth > MAX_DEPTH:
            raise CardTooLarge(f"{_where(chain)} is nested more than {MAX_DEPTH} levels deep.")
        for key, item in items:
            kind = type(item)
            if kind in _PLAIN:
                continue
            if kind is str:
                if len(item) > MAX_STRING_CHARS or _UNSTORABLE.search(item):
                    _check_string(item, (chain, key), MAX_STRING_CHARS)
            elif isinstance(item, dict | list):
                stack.append((item, (chain, key), depth + 1))
            elif isinstance(item, str):
                _check_string(item, (chain, key), MAX_STRING_CHARS)
            elif isinstance(item, float) and not math.isfinite(item):
                # NaN, Infinity and 1e999 (which Python reads as infinity) are not JSON: the API could not send
                # the card back, and PostgreSQL's jsonb refuses them.
                raise CardError(f"{_where((chain, key))} is not a finite number.")


def _json_size(value: Any) -> int:
    """The bytes of ``value`` as compact UTF-8 JSON: how much of the card a part takes when stored."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def _text(data: Mapping[str, Any], key: str, *, limit: int = MAX_TEXT_CHARS) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CardError(f"data.{key} must be a string, not {type(value).__name__}.")
    if len(value) > limit:
        raise CardTooLarge(f"data.{key} is longer than {limit} characters.")
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
    if len(entries) > MAX_BOOK_ENTRIES:
        raise CardTooLarge(f"data.character_book has more than {MAX_BOOK_ENTRIES} entries.")
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
    requested = out.get("requestedModel")
    if requested is not None and not (isinstance(requested, str) and len(requested) <= MAX_NAME_CHARS):
        raise CardError(
            f"data.extensions.moonborn.requestedModel must be a string of at most {MAX_NAME_CHARS} characters."
        )
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
        isinstance(s, dict)
        and isinstance(s.get("step"), str)
        and isinstance(s.get("output", {}), dict)
        and isinstance(s.get("fallbackFields") or [], list)
        for s in steps
    )
    if steps is not None and not valid_steps:
        raise CardError("data.extensions.moonborn.steps must be a list of {step, output, fallbackFields} objects.")
    if isinstance(steps, list):
        if len(steps) > MAX_STEPS:
            raise CardTooLarge(f"data.extensions.moonborn.steps has more than {MAX_STEPS} steps.")
        for i, step in enumerate(steps):
            if _json_size(step.get("output", {})) > MAX_STEP_OUTPUT_BYTES:
                raise CardTooLarge(
                    f"data.extensions.moonborn.steps[{i}].output is larger than {MAX_STEP_OUTPUT_BYTES} bytes."
                )
    return out


def parse_card(obj: Any) -> ImportedCard:
    """Validate a decoded card (V3, V2 or V1) and normalise its ``data``. Raises CardError with a clear message."""
    _check_bounds(obj)
    if not isinstance(obj, dict):
        raise CardError(f"A card must be a JSON object, not {type(obj).__name__}.")
    spec = obj.get("spec")
    # A V2/V3 card's own top level (other than `data`) is not kept: SillyTavern repeats the V1 fields there for
    # old readers, and the export writes a fresh top level. A V1 card's top level is its data.
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
    unknown = {key: value for key, value in data.items() if key not in SPEC_FIELDS}
    if unknown and _json_size(unknown) > MAX_UNKNOWN_FIELDS_BYTES:
        names = ", ".join(sorted(unknown)[:5]) + (", …" if len(unknown) > 5 else "")
        raise CardTooLarge(
            f"The data fields outside the card spec ({names}) take more than {MAX_UNKNOWN_FIELDS_BYTES} bytes."
        )
    extensions = raw.get("extensions", {})
    if extensions is None:
        extensions = {}
    if not isinstance(extensions, dict):
        raise CardError("data.extensions must be an object.")
    extensions = dict(extensions)
    moonborn = _moonborn(extensions.pop(MOONBORN_EXTENSION, None))
    if _json_size(extensions) > MAX_EXTENSIONS_BYTES:
        raise CardTooLarge(f"data.extensions (other than moonborn) take more than {MAX_EXTENSIONS_BYTES} bytes.")
    data["extensions"] = extensions
    return ImportedCard(spec=str(spec), data=data, moonborn=moonborn)


def _loads(text: str, what: str, not_json: str) -> Any:
    """``text`` (``what``, for messages) as JSON; too deep a nesting is refused, not a crash."""
    try:
        return json.loads(text)
    except RecursionError:
        # The C decoder gives up at Python's recursion limit (~1000 levels), at once and cleanly; shallower
        # nesting beyond MAX_DEPTH is refused by _check_bounds.
        raise CardTooLarge(f"{what} is nested more than {MAX_DEPTH} levels deep.") from None
    except ValueError as exc:
        raise CardError(f"{not_json} ({exc}).") from None


def _decode_chunk(text: str, key: str) -> Any:
    # Base64 of n bytes is 4 * ceil(n / 3) characters: an oversized chunk is refused before it is decoded.
    if len(text) > 4 * -(-MAX_CARD_JSON_BYTES // 3):
        raise CardTooLarge(f"The card in the PNG's {key!r} chunk is larger than {MAX_CARD_JSON_BYTES} bytes.")
    try:
        raw = base64.b64decode(text.encode("latin-1"), validate=True)
    except binascii.Error as exc:
        raise CardError(f"The PNG's {key!r} chunk is not base64-encoded card JSON ({exc}).") from None
    if len(raw) > MAX_CARD_JSON_BYTES:
        raise CardTooLarge(f"The card in the PNG's {key!r} chunk is larger than {MAX_CARD_JSON_BYTES} bytes.")
    try:
        decoded = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CardError(f"The PNG's {key!r} chunk is not UTF-8 card JSON ({exc}).") from None
    return _loads(decoded, f"The PNG's {key!r} chunk", f"The PNG's {key!r} chunk does not hold card JSON")


def parse_card_bytes(body: bytes) -> ImportedCard:
    """A card from an uploaded file: a PNG (``ccv3`` preferred, else ``chara``) or JSON (UTF-8)."""
    if len(body) > MAX_CARD_FILE_BYTES:
        raise CardTooLarge(f"A card file may be at most {MAX_CARD_FILE_BYTES} bytes.")
    if body.startswith(PNG_SIGNATURE):
        chunks = png_read_text_chunks(body)
        for key in ("ccv3", "chara"):
            if key in chunks:
                return parse_card(_decode_chunk(chunks[key], key))
        raise CardError("The PNG image carries no character card (no 'ccv3' or 'chara' text chunk).")
    if len(body) > MAX_CARD_JSON_BYTES:
        raise CardTooLarge(f"A JSON card may be at most {MAX_CARD_JSON_BYTES} bytes.")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CardError(f"The card is neither a PNG nor valid JSON ({exc}).") from None
    # Duplicate keys are not refused: the last one wins, as in JavaScript's JSON.parse, which SillyTavern uses.
    return parse_card(_loads(text, "The card", "The card is neither a PNG nor valid JSON"))


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
        if len(out) >= limit:
            # A card may have thousands of greetings or dialogue lines; only the first `limit` distinct ones count.
            break
        cleaned = clean(text)
        if cleaned and cleaned not in out:
            out.append(cleaned)
    return out
