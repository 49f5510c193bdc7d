"""Lorebook engine: which entries of a card's ``character_book`` a conversation activates, with Character Card V3
semantics read the way SillyTavern reads them. Pure: stdlib only, no Django, no database, no I/O.

``parse_book`` reads a ``character_book`` once (per persona version; the caller caches the ``Book``): it reads
snake_case and camelCase fields, SillyTavern's settings under ``extensions``, strips and applies the CCv3 ``@@``
decorators, and compiles every key's regular expression. ``activate`` then only scans text; it runs before the first
token of every reply. Its cost grows with the text passed, since every key is looked for in every message given
(for the "scan_depth" skip records): a few hundred microseconds for a 40-entry book over 20 short messages, about a
millisecond over 30 KB of messages. Pass only the messages that should be scanned or reported on.

Choices where the spec and SillyTavern leave room or disagree (each is also commented where it is made):

* Matching. A key written ``/pattern/flags`` is a regular expression, whatever ``use_regex`` says: SillyTavern
  treats keys that way and writes ``use_regex: true`` on every entry it exports, plain-word keys included, so
  reading ``use_regex: true`` as "every key is a pattern" would turn keys such as ``Dr. Vale`` or ``C++`` into
  regexes. For the same reason the spec's "ignore ``secondary_keys`` and ``constant`` when ``use_regex``" is not
  followed. A regex runs on each message (and each entry content) alone, so ``^`` and ``$`` are a message's start
  and end and no match spans two messages. A regex key that does not compile, or that nests quantifiers
  (``(a+)+``, which backtracks exponentially and Python's ``re`` has no timeout), never matches;
  ``Book.invalid_keys`` lists them.
* Other keys are case-insensitive unless the entry (or the book) says ``case_sensitive``, and match whole words by
  default (SillyTavern's shipped default): a key is not matched when glued to a letter or digit on a side where the
  key itself ends in one, so ``Vale`` does not match ``Valentine`` but ``C++`` matches ``C++17``. Keys of several
  words are bounded the same way (SillyTavern matches those as plain substrings). Keys containing CJK, kana, Thai,
  Lao, Khmer, Myanmar or Hangul characters match as substrings: those scripts do not put spaces between words, or
  (Korean) attach particles to them.
* Scan depth: the last ``scan_depth`` messages (book default 2, SillyTavern's default). Recursion scans the
  content of the entries activated so far, regardless of scan depth, up to ``MAX_RECURSION_DEPTH`` levels.
* Budget: when ``token_budget`` is set, the candidates are taken by ``priority`` (else ``insertion_order``), highest
  first, and once one does not fit it and every lower one are dropped ("remove the lowest priority lorebook fields
  if the total token count exceeds the value", and SillyTavern stops at the first overflow). Constants get no
  protection (neither the spec nor SillyTavern gives them any). A level that overflows ends recursion.
* ``@@additional_keys`` is a further condition, as the spec words it ("SHOULD NOT considered as a match if the chat
  log do not contains one of the strings in decorator's value") and as RisuAI implements it: each use of it is a
  group of which one key must also appear. It does not add primary keys.
* Constants skip every key condition (keys, secondary keys, ``@@additional_keys``, ``@@exclude_keys``), as RisuAI
  does; the other decorators (``@@dont_activate``, the timing and match-state ones) still apply to them.
* Not implemented: ``extensions.probability`` (activation stays deterministic), SillyTavern's sticky, cooldown,
  delay, inclusion groups and delay-until-recursion, and the decorators ``@@instruct_depth``,
  ``@@reverse_depth``, ``@@instruct_scan_depth``, ``@@is_greeting``, ``@@is_user_icon``,
  ``@@ignore_on_max_context`` and ``@@disable_ui_prompt``; they are ignored, so their ``@@@`` fallbacks apply.
  Macros (``{{char}}``, ``{{user}}``) are not expanded, in keys or content: prompt assembly expands content.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "DEFAULT_SCAN_DEPTH",
    "MAX_ENTRIES",
    "MAX_RECURSION_DEPTH",
    "Book",
    "LoreEntry",
    "LoreInsert",
    "LoreKey",
    "LoreProbe",
    "LoreResult",
    "activate",
    "estimate_tokens",
    "parse_book",
]

# personas.cards.MAX_BOOK_ENTRIES refuses larger books on import; a raw dict from elsewhere is cut to the same size.
MAX_ENTRIES: Final = 1_000
# SillyTavern's default world_info_depth: the character's last reply and the new user message.
DEFAULT_SCAN_DEPTH: Final = 2
# SillyTavern's MAX_SCAN_DEPTH.
MAX_SCAN_DEPTH: Final = 1_000
# Levels of recursion after the scan of the messages: an entry activated by an entry activated by an entry
# activated by the messages is the deepest that goes in. Deeper chains are reported as "recursion_limit".
MAX_RECURSION_DEPTH: Final = 3
# SillyTavern's and RisuAI's default `insertion_order` for a new entry.
DEFAULT_INSERTION_ORDER: Final = 100
# SillyTavern's DEFAULT_DEPTH for entries "at depth" that give none.
DEFAULT_AT_DEPTH: Final = 4
STATE_VERSION: Final = 1

LOGIC_NAMES: Final = ("AND_ANY", "NOT_ALL", "NOT_ANY", "AND_ALL")
AND_ANY, NOT_ALL, NOT_ANY, AND_ALL = range(4)
ROLES: Final = ("system", "user", "assistant")
# SillyTavern's numeric `extensions.position`: 0 before and 1 after the character definitions, 4 at a depth in the
# chat. Moonborn's prompt has no author's note (2 top, 3 bottom) and no example-messages block (5 top, 6 bottom),
# so each "top" goes before the character and each "bottom" after it.
_ST_POSITIONS: Final = {
    0: "before_char",
    1: "after_char",
    2: "before_char",
    3: "after_char",
    4: "at_depth",
    5: "before_char",
    6: "after_char",
}
# `@@position` values with a place in Moonborn's prompt; "personality" and "scenario" have none and are ignored.
_DECORATOR_POSITIONS: Final = {"before_desc": "before_char", "after_desc": "after_char"}

# Between two scanned parts (messages, contents), as SillyTavern joins its scan buffer: a plain key cannot span two
# parts, and word bounds hold at the seam. Regex keys run on each part alone.
_SEPARATOR: Final = "\n\x01"
_REGEX_KEY = re.compile(r"/(.+)/([a-z]*)", re.DOTALL)
_UNESCAPED_SLASH = re.compile(r"(?:^|[^\\])(?:\\\\)*/")
_JS_FLAGS: Final = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "g": 0, "u": 0, "y": 0}
_JS_NAMED_GROUP = re.compile(r"(?<!\\)\(\?<(?![=!])")
_JS_BACKREFERENCE = re.compile(r"\\k<(\w+)>")
# An inline flag group, (?i) or (?i:...), changes how the rest of a pattern matches.
_INLINE_FLAGS = re.compile(r"\(\?[aiLmsux-]+[:)]")
# ASCII characters that IGNORECASE matches only in their two cases (i, k and s also match ı, K and ſ).
_CASELESS_SAFE: Final = frozenset("abcdefghjlmnopqrtuvwxyz0123456789 !\"#%&',-/:;<=>@_`~")
_REPEAT_BRACES = re.compile(r"\{(\d*)(,(\d*))?\}")
_WORD_CHAR = re.compile(r"\w")
# Thai, Lao, Myanmar, Khmer, kana, CJK ideographs, Hangul syllables.
_UNSPACED_SCRIPT = re.compile(
    "[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]"
)


def estimate_tokens(text: str) -> int:
    """Estimated tokens of ``text``: ``ceil(len(text) / 4)``, about four characters per token as BPE tokenizers cut
    English prose. It under-counts CJK text (about one token per character) and is meant for budgets, not billing."""
    return -(-len(text) // 4)


@dataclass(frozen=True, slots=True)
class LoreKey:
    """One key, compiled. ``text`` is the key as written (trimmed), for reasons. A plain key looks for ``needle``
    (case-folded unless case-sensitive), not glued to a word character on the sides ``bound_before`` and
    ``bound_after``. A regex key runs ``pattern`` (None when it must never match) where ``needle``, a literal every
    match contains ("" when none is known), occurs in the text (``case_sensitive``) or in the folded text."""

    text: str
    needle: str
    case_sensitive: bool
    is_regex: bool
    pattern: re.Pattern[str] | None
    bound_before: bool = False
    bound_after: bool = False

    def hit(self, scope: _Text) -> bool:
        """Whether the key occurs in ``scope``: a plain key in the joined text, a regex key in one of its parts."""
        needle = self.needle
        # A substring test rules out almost every key at C speed; Python's regex engine scans about 15 ns a
        # character when a pattern has no literal prefix, so a regex runs only on the parts holding its literal.
        if self.is_regex:
            pattern = self.pattern
            if pattern is None:
                return False
            if self.case_sensitive:
                return needle in scope.text and any(
                    needle in text and pattern.search(text) is not None for text, _folded in scope.parts
                )
            return needle in scope.folded and any(
                needle in folded and pattern.search(text) is not None for text, folded in scope.parts
            )
        haystack = scope.text if self.case_sensitive else scope.folded
        at = haystack.find(needle)
        if not (self.bound_before or self.bound_after):
            return at >= 0
        end = len(needle)
        while at >= 0:
            # \w in Python's str patterns is exactly "alphanumeric or underscore".
            before = self.bound_before and at > 0 and (haystack[at - 1].isalnum() or haystack[at - 1] == "_")
            after_at = at + end
            after = (
                self.bound_after
                and after_at < len(haystack)
                and (haystack[after_at].isalnum() or haystack[after_at] == "_")
            )
            if not before and not after:
                return True
            at = haystack.find(needle, at + 1)
        return False


@dataclass(frozen=True, slots=True)
class LoreProbe:
    """A necessary condition for any of some keys to occur, cheap to test: one of ``folded`` in the case-folded
    text, or one of ``text`` in the text, or ``always`` (a regex key with no known literal)."""

    folded: tuple[str, ...]
    text: tuple[str, ...]
    always: bool

    @classmethod
    def of(cls, keys: Sequence[LoreKey]) -> LoreProbe:
        usable = [key for key in keys if not key.is_regex or key.pattern is not None]
        return cls(
            folded=tuple(dict.fromkeys(key.needle for key in usable if not key.case_sensitive and key.needle)),
            text=tuple(dict.fromkeys(key.needle for key in usable if key.case_sensitive and key.needle)),
            always=any(not key.needle for key in usable),
        )

    def maybe(self, scope: _Text) -> bool:
        if self.always:
            return True
        # A plain loop: the tuple holds one to three needles, and a generator would cost more than the tests.
        folded = scope.folded
        for needle in self.folded:
            if needle in folded:
                return True
        text = scope.text
        return any(needle in text for needle in self.text) if self.text else False


@dataclass(frozen=True, slots=True)
class LoreEntry:
    """One usable entry of a book, with its decorators applied and its keys compiled."""

    index: int  # position in the book's `entries`
    id: str
    name: str
    content: str  # decorators removed
    tokens: int
    keys: tuple[LoreKey, ...]
    secondary_keys: tuple[LoreKey, ...]  # empty unless `selective`
    logic: int  # AND_ANY, NOT_ALL, NOT_ANY or AND_ALL, for secondary_keys
    additional_keys: tuple[tuple[LoreKey, ...], ...]  # one group per `@@additional_keys`
    exclude_keys: tuple[LoreKey, ...]
    constant: bool
    scan_depth: int | None  # None: the book's
    position: str
    depth: int
    role: str
    insertion_order: int
    priority: int
    exclude_recursion: bool  # never activated by another entry's content
    prevent_recursion: bool  # its content activates no other entry
    activate: bool  # @@activate
    dont_activate: bool  # @@dont_activate
    activate_only_after: int | None
    activate_only_every: int | None
    keep_activate_after_match: bool
    dont_activate_after_match: bool
    key_probe: LoreProbe  # for the primary keys
    trigger_probe: LoreProbe  # for every key that can make the entry match (primary, secondary, additional)


@dataclass(frozen=True, slots=True)
class Book:
    """A parsed ``character_book``: the entries that can ever go into a prompt, in book order, and its settings."""

    name: str
    entries: tuple[LoreEntry, ...]
    scan_depth: int
    token_budget: int | None
    recursive_scanning: bool
    # (entry id, key) of regex keys that never match: they do not compile, or they nest quantifiers.
    invalid_keys: tuple[tuple[str, str], ...]
    # Whether an entry remembers earlier turns (`@@keep_activate_after_match`, `@@dont_activate_after_match`): only
    # then does a reply need the state the last one left. Set once, as every reply asks.
    stateful: bool = field(init=False)

    def __post_init__(self) -> None:
        stateful = any(entry.keep_activate_after_match or entry.dont_activate_after_match for entry in self.entries)
        object.__setattr__(self, "stateful", stateful)


@dataclass(frozen=True)
class LoreInsert:
    entry_id: str  # the entry's `id` (CCv3), else its index in the book, as a string
    name: str  # the entry's `name` or `comment` (for display), may be ""
    content: str  # the entry's content, macros NOT expanded (prompt assembly expands {{char}}/{{user}})
    position: str  # "before_char" | "after_char" | "at_depth"
    depth: int  # for "at_depth": how many messages from the end it goes (0 = after the last one)
    role: str  # "system" | "user" | "assistant" (used for "at_depth")
    insertion_order: int


@dataclass(frozen=True)
class LoreResult:
    inserts: tuple[LoreInsert, ...]  # sorted by insertion_order (ties: book order)
    activated: tuple[dict[str, Any], ...]  # {"entry", "name", "reason"}, one per insert, same order
    skipped: tuple[dict[str, Any], ...]  # {"entry", "name", "reason"}, candidates left out, in book order
    state: dict[str, Any]  # pass back in on the next turn of the same conversation
    tokens: int  # estimate_tokens of the inserted content, summed


# --- parsing -------------------------------------------------------------------------------------------------------


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _get(obj: Mapping[str, Any], name: str) -> Any:
    """``obj[name]``, else its camelCase spelling, else None."""
    value = obj.get(name)
    if value is None and "_" in name:
        value = obj.get(_camel(name))
    return value


def _pick(entry: Mapping[str, Any], extensions: Mapping[str, Any], name: str) -> Any:
    """The first non-null of the field and of its SillyTavern copy under ``extensions`` (null there means "use the
    default", as SillyTavern writes it)."""
    value = _get(entry, name)
    return _get(extensions, name) if value is None else value


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _strings(value: Any) -> list[str]:
    """Keys as a list of non-empty trimmed strings; a comma-separated string (CCv2 wording) is split."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple):
        return []
    return [item.strip() for item in value if isinstance(item, str) and item.strip()]


def _count(digits: str) -> int:
    """A repeat count, read from at most nine significant digits: int() refuses strings of thousands of digits, and
    any count of ten digits is more than enough to tell."""
    return int(digits.lstrip("0")[:9] or "0")


def _repeat_at(pattern: str, i: int) -> tuple[bool, int]:
    """Whether a quantifier that repeats more than once starts at ``i``, and where it ends."""
    if i >= len(pattern):
        return False, i
    char = pattern[i]
    if char in "*+":
        i += 1
        if i < len(pattern) and pattern[i] in "?+":
            i += 1
        return True, i
    if char == "{":
        match = _REPEAT_BRACES.match(pattern, i)
        if match is None:
            return False, i + 1
        low, comma, high = match.group(1), match.group(2), match.group(3)
        if not low and not comma:
            return False, match.end()
        repeats = bool(comma) and (not high or _count(high) > 1) or (not comma and _count(low) > 1)
        return repeats, match.end()
    return False, i


def _skip_class(pattern: str, i: int) -> int:
    """The index after the character class opening at ``i`` (a ``]`` right after ``[`` or ``[^`` is a member)."""
    i, n = i + 1, len(pattern)
    if i < n and pattern[i] == "^":
        i += 1
    if i < n and pattern[i] == "]":
        i += 1
    while i < n and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return i + 1


def _nested_quantifier(pattern: str) -> bool:
    """Whether a repeated group contains a repeat, as in ``(a+)+`` or ``(\\w*x)*``: the shape that backtracks
    exponentially on a near miss. Overlapping alternatives (``(a|a)*``) are not detected."""
    stack = [False]  # per open group: whether it contains a repeat
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\":
            i += 2
        elif char == "[":
            i = _skip_class(pattern, i)
        elif char == "(":
            stack.append(False)
            i += 1
        elif char == ")":
            inner = stack.pop() if len(stack) > 1 else False
            repeats, i = _repeat_at(pattern, i + 1)
            if repeats and inner:
                return True
            stack[-1] = stack[-1] or repeats or inner
        else:
            repeats, after = _repeat_at(pattern, i)
            if repeats:
                stack[-1] = True
                i = after
            else:
                i = max(after, i + 1)
    return False


def _regex_key(key: str) -> tuple[bool, re.Pattern[str] | None]:
    """(is a regex key, its compiled pattern or None when it must never match). A regex key is SillyTavern's
    ``/pattern/flags`` with JavaScript flags and no unescaped ``/`` inside the pattern."""
    match = _REGEX_KEY.fullmatch(key)
    if match is None:
        return False, None
    source, flags = match.groups()
    if any(flag not in _JS_FLAGS for flag in flags) or _UNESCAPED_SLASH.search(source):
        return False, None
    if len(set(flags)) != len(flags) or _nested_quantifier(source):
        return True, None
    options = 0
    for flag in flags:
        options |= _JS_FLAGS[flag]
    # JavaScript spells named groups (?<name>...) and \k<name>; Python (?P<name>...) and (?P=name).
    source = _JS_BACKREFERENCE.sub(r"(?P=\1)", _JS_NAMED_GROUP.sub("(?P<", source))
    try:
        return True, re.compile(source, options)
    except (re.error, OverflowError, RecursionError):
        return True, None


def _required_literal(source: str, *, ignore_case: bool) -> str:
    """The longest run of literal characters that every match of the regex ``source`` contains, or "" when none of
    three or more characters is found. Conservative: a top-level ``|`` or an inline flag gives "", groups, classes,
    escapes other than escaped punctuation, and optional characters end a run. Under IGNORECASE only ASCII
    characters whose case folds are plain (not i, k or s, which also match ı, K and ſ) are kept, lowered, so
    the run is a substring of the case-folded text wherever the regex matches."""
    if _INLINE_FLAGS.search(source):
        return ""
    best, run = "", ""
    i, n = 0, len(source)
    while i < n:
        char: str | None = None
        c = source[i]
        if c == "\\":
            escaped = source[i + 1 : i + 2]
            if escaped and not escaped.isalnum():
                char = escaped
                i += 2
            else:
                # \xhh, \uhhhh, \Uhhhhhhhh, \N{...}, octal and back-references run on past the letter.
                i += 2 + {"x": 2, "u": 4, "U": 8}.get(escaped, 0)
                if escaped == "N" and source[i : i + 1] == "{":
                    i = source.find("}", i) + 1 or n
                while escaped.isdigit() and i < n and source[i].isdigit():
                    i += 1
        elif c in "([":
            i = _skip_group(source, i)
        elif c == "|":
            return ""
        else:
            char = None if c in ".^$*+?{})]" else c
            i += 1
        if char is not None and ignore_case:
            char = char.lower() if char.lower() in _CASELESS_SAFE else None
        quantifier = source[i : i + 1]
        if char is not None and quantifier in ("?", "*", "{"):
            char = None  # optional, or a count this scan does not read
        if char is None:
            best, run = max(best, run, key=len), ""
        else:
            run += char
            if quantifier == "+":
                best, run = max(best, run, key=len), ""
    best = max(best, run, key=len)
    return best if len(best) >= 3 else ""


def _skip_group(source: str, i: int) -> int:
    """The index after the group or class opening at ``i``."""
    depth, n = 0, len(source)
    while i < n:
        c = source[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            i = _skip_class(source, i)
            if depth == 0:
                return i
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def _key(text: str, *, case_sensitive: bool, whole_words: bool) -> LoreKey:
    is_regex, pattern = _regex_key(text)
    if is_regex:
        if pattern is None:
            return LoreKey(text=text, needle="", case_sensitive=True, is_regex=True, pattern=None)
        ignore_case = bool(pattern.flags & re.IGNORECASE)
        needle = _required_literal(pattern.pattern, ignore_case=ignore_case)
        return LoreKey(text=text, needle=needle, case_sensitive=not ignore_case, is_regex=True, pattern=pattern)
    needle = text if case_sensitive else text.casefold()
    bounded = whole_words and not _UNSPACED_SCRIPT.search(needle)
    return LoreKey(
        text=text,
        needle=needle,
        case_sensitive=case_sensitive,
        is_regex=False,
        pattern=None,
        bound_before=bounded and bool(_WORD_CHAR.match(needle[0])),
        bound_after=bounded and bool(_WORD_CHAR.match(needle[-1])),
    )


class _Decorators:
    """The decorators at the start of one entry's content, as they are applied."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.flags: set[str] = set()
        self.numbers: dict[str, int] = {}
        self.role: str | None = None
        self.position: str | None = None
        self.additional_keys: list[list[str]] = []
        self.exclude_keys: list[str] = []

    def apply(self, line: str) -> bool:
        """Apply ``name value`` (the line without its ``@@``); False when the decorator is unknown, its value is
        not valid, or it was given before: the spec then has its ``@@@`` fallback considered instead."""
        name, value = [*line.split(None, 1), "", ""][:2]
        value = value.strip()
        if name == "additional_keys":
            # The only decorator the spec allows more than once: each use is one more group that must match.
            keys = _strings(value)
            if keys:
                self.additional_keys.append(keys)
            return bool(keys)
        if name in self.seen:
            # "If there is multiple decorators with same name, the application SHOULD only consider the first".
            return False
        applied = self._apply(name, value)
        if applied:
            self.seen.add(name)
        return applied

    def _apply(self, name: str, value: str) -> bool:
        if name in ("activate", "dont_activate", "keep_activate_after_match", "dont_activate_after_match"):
            self.flags.add(name)
            return True
        if name in ("activate_only_after", "activate_only_every", "depth", "scan_depth"):
            number = _int(value)
            if number is None or (name == "activate_only_every" and number < 1):
                return False
            if name in ("activate_only_after", "scan_depth") and number < 0:
                return False
            # "if the value of this decorator is less than 1, the application SHOULD add the content field after
            # the most recent message": depth 0.
            self.numbers[name] = max(number, 0)
            return True
        if name == "role":
            if value.lower() not in ROLES:
                return False
            self.role = value.lower()
            return True
        if name == "position":
            if value not in _DECORATOR_POSITIONS:
                return False
            self.position = _DECORATOR_POSITIONS[value]
            return True
        if name == "exclude_keys":
            self.exclude_keys = _strings(value)
            return bool(self.exclude_keys)
        return False


def _parse_decorators(content: str) -> tuple[_Decorators, str]:
    """The leading ``@@`` lines of ``content`` applied, and the content without them (and without the newlines
    right after them). A ``@@@`` line is the fallback of the line above: considered only when that one was not
    applied, and chained."""
    decorators = _Decorators()
    if not content.startswith("@@"):
        return decorators, content
    lines = content.split("\n")
    previous_applied = True
    i = 0
    while i < len(lines) and lines[i].startswith("@@"):
        line = lines[i].rstrip("\r")
        if line.startswith("@@@"):
            if not previous_applied:
                previous_applied = decorators.apply(line[3:])
        else:
            previous_applied = decorators.apply(line[2:])
        i += 1
    return decorators, "\n".join(lines[i:]).lstrip("\r\n")


def _entry_ids(items: Sequence[Any]) -> list[str]:
    """Each entry's id: its ``id`` (CCv3) as a string, else its index. A repeated id is replaced the same way, so
    ids stay unique: state and reasons refer to entries by id."""
    explicit: list[str | None] = []
    for item in items:
        raw = item.get("id") if isinstance(item, Mapping) else None
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        explicit.append(str(raw) if isinstance(raw, str | int) and not isinstance(raw, bool) and str(raw) else None)
    taken = {value for value in explicit if value is not None}
    ids: list[str] = []
    used: set[str] = set()
    for index, value in enumerate(explicit):
        if value is None or value in used:
            value = str(index) if str(index) not in taken and str(index) not in used else f"#{index}"
        used.add(value)
        ids.append(value)
    return ids


def _position(item: Mapping[str, Any], extensions: Mapping[str, Any], decorators: _Decorators) -> tuple[str, int]:
    if decorators.position is not None:
        # "If `@@position` decorator is present, the application SHOULD ignore [@@depth]."
        return decorators.position, 0
    if "depth" in decorators.numbers:
        return "at_depth", decorators.numbers["depth"]
    # SillyTavern reads its numeric extensions.position first and falls back to the CCv3 string.
    number = _int(extensions.get("position"))
    position = None if number is None else _ST_POSITIONS.get(number)
    if position is None:
        raw = item.get("position")
        number = _int(raw)
        if raw in ("before_char", "after_char"):
            position = raw
        else:
            # SillyTavern reads anything but "before_char" as after the character.
            position = _ST_POSITIONS.get(number, "after_char") if number is not None else "after_char"
    if position != "at_depth":
        return position, 0
    depth = _int(_pick(item, extensions, "depth"))
    return "at_depth", DEFAULT_AT_DEPTH if depth is None else max(depth, 0)


def _role(item: Mapping[str, Any], extensions: Mapping[str, Any], decorators: _Decorators) -> str:
    if decorators.role is not None:
        return decorators.role
    raw = _pick(item, extensions, "role")
    if isinstance(raw, str) and raw.lower() in ROLES:
        return raw.lower()
    number = _int(raw)
    # SillyTavern's extension_prompt_roles: 0 system, 1 user, 2 assistant.
    return ROLES[number] if number is not None and 0 <= number < len(ROLES) else "system"


def _parse_entry(
    item: Mapping[str, Any],
    *,
    index: int,
    entry_id: str,
    case_default: bool,
    whole_default: bool,
    invalid: list[tuple[str, str]],
) -> LoreEntry | None:
    extensions = _mapping(item.get("extensions"))
    if _bool(_get(item, "enabled")) is False:
        # "if this value is false, the lorebook field MUST NOT be considered as a match IN ANY CASE."
        return None
    raw_content = item.get("content")
    if not isinstance(raw_content, str):
        return None
    decorators, content = _parse_decorators(raw_content)
    if not content.strip():
        # "If the content field is empty, the application MUST not add anything to the prompt."
        return None
    case_flag = _bool(_pick(item, extensions, "case_sensitive"))
    whole_flag = _bool(_pick(item, extensions, "match_whole_words"))
    case_sensitive = case_default if case_flag is None else case_flag
    whole_words = whole_default if whole_flag is None else whole_flag

    def compile_keys(texts: list[str]) -> tuple[LoreKey, ...]:
        keys = tuple(_key(text, case_sensitive=case_sensitive, whole_words=whole_words) for text in texts)
        invalid.extend((entry_id, key.text) for key in keys if key.is_regex and key.pattern is None)
        return keys

    keys = compile_keys(_strings(_get(item, "keys")))
    selective = _bool(_get(item, "selective")) is True
    secondary = compile_keys(_strings(_get(item, "secondary_keys"))) if selective else ()
    logic = _int(_pick(item, extensions, "selective_logic"))
    additional = tuple(compile_keys(group) for group in decorators.additional_keys)
    constant = _bool(_get(item, "constant")) is True
    flags = decorators.flags
    if not keys and not constant and "activate" not in flags:
        # Nothing can ever activate it.
        return None
    scan_depth = decorators.numbers.get("scan_depth")
    if scan_depth is None:
        scan_depth = _int(_pick(item, extensions, "scan_depth"))
        scan_depth = None if scan_depth is None or scan_depth < 0 else scan_depth
    position, depth = _position(item, extensions, decorators)
    insertion_order = _int(_get(item, "insertion_order"))
    insertion_order = DEFAULT_INSERTION_ORDER if insertion_order is None else insertion_order
    priority = _int(_get(item, "priority"))
    name = item.get("name") or item.get("comment")
    return LoreEntry(
        index=index,
        id=entry_id,
        name=name if isinstance(name, str) else "",
        content=content,
        tokens=estimate_tokens(content),
        keys=keys,
        secondary_keys=secondary,
        logic=logic if logic is not None and 0 <= logic < len(LOGIC_NAMES) else AND_ANY,
        additional_keys=additional,
        exclude_keys=compile_keys(decorators.exclude_keys),
        constant=constant,
        scan_depth=None if scan_depth is None else min(scan_depth, MAX_SCAN_DEPTH),
        position=position,
        depth=depth,
        role=_role(item, extensions, decorators),
        insertion_order=insertion_order,
        priority=insertion_order if priority is None else priority,
        exclude_recursion=_bool(_pick(item, extensions, "exclude_recursion")) is True,
        prevent_recursion=_bool(_pick(item, extensions, "prevent_recursion")) is True,
        activate="activate" in flags,
        # "if `@@activate` decorator is present, this decorator SHOULD be ignored."
        dont_activate="dont_activate" in flags and "activate" not in flags,
        activate_only_after=decorators.numbers.get("activate_only_after"),
        activate_only_every=decorators.numbers.get("activate_only_every"),
        keep_activate_after_match="keep_activate_after_match" in flags,
        dont_activate_after_match="dont_activate_after_match" in flags,
        key_probe=LoreProbe.of(keys),
        trigger_probe=LoreProbe.of([*keys, *secondary, *(key for group in additional for key in group)]),
    )


def parse_book(raw: Mapping[str, Any] | None) -> Book | None:
    """A card's ``character_book`` (CCv3/CCv2), tolerant: snake_case and camelCase both read, SillyTavern's
    per-entry settings read from ``extensions`` (position, depth, role, scan_depth, match_whole_words,
    case_sensitive, selectiveLogic, exclude_recursion, prevent_recursion), unknown fields ignored, malformed entries
    skipped. None when there is no usable book: no entry that could ever go into a prompt. Never raises."""
    if not isinstance(raw, Mapping):
        return None
    items = raw.get("entries")
    if isinstance(items, Mapping):
        # SillyTavern's own world-info files key the entries by uid.
        items = list(items.values())
    if not isinstance(items, list | tuple) or not items:
        return None
    items = list(items[:MAX_ENTRIES])
    extensions = _mapping(raw.get("extensions"))
    case_default = _bool(_pick(raw, extensions, "case_sensitive")) is True
    whole_default = _bool(_pick(raw, extensions, "match_whole_words")) is not False
    invalid: list[tuple[str, str]] = []
    entries = []
    for index, (item, entry_id) in enumerate(zip(items, _entry_ids(items), strict=True)):
        if isinstance(item, Mapping):
            entry = _parse_entry(
                item,
                index=index,
                entry_id=entry_id,
                case_default=case_default,
                whole_default=whole_default,
                invalid=invalid,
            )
            if entry is not None:
                entries.append(entry)
    if not entries:
        return None
    scan_depth = _int(_pick(raw, extensions, "scan_depth"))
    budget = _int(_pick(raw, extensions, "token_budget"))
    recursive = _bool(_pick(raw, extensions, "recursive_scanning"))
    name = raw.get("name")
    return Book(
        name=name if isinstance(name, str) else "",
        entries=tuple(entries),
        scan_depth=DEFAULT_SCAN_DEPTH if scan_depth is None or scan_depth < 0 else min(scan_depth, MAX_SCAN_DEPTH),
        # A budget of 0 or less reads as "none set" (editors write 0 for an empty field), not "insert nothing".
        token_budget=budget if budget is not None and budget > 0 else None,
        # Undefined leaves it to the application: SillyTavern's shipped settings and RisuAI both recurse.
        recursive_scanning=recursive is not False,
        invalid_keys=tuple(invalid),
    )


# --- activation ----------------------------------------------------------------------------------------------------


class _Text:
    """Text to scan: its parts (messages, entry contents), each with its case-folded form, and both joined by
    ``_SEPARATOR``. Plain keys search the joined text in one call; regex keys search part by part."""

    __slots__ = ("folded", "parts", "text")

    def __init__(self, parts: list[tuple[str, str]]) -> None:
        self.parts = parts
        self.text = _SEPARATOR.join(text for text, _folded in parts)
        self.folded = _SEPARATOR.join(folded for _text, folded in parts)


class _Messages:
    """The most recent messages, case-folded once, and joined once per scan depth."""

    __slots__ = ("_cache", "_parts", "count")

    def __init__(self, messages: Sequence[tuple[str, str]]) -> None:
        self._parts = [(text, text.casefold()) for _role, text in messages]
        self.count = len(self._parts)
        self._cache: dict[int, _Text] = {}

    def last(self, depth: int) -> _Text:
        depth = min(depth, self.count)
        scope = self._cache.get(depth)
        if scope is None:
            scope = self._cache[depth] = _Text(self._parts[self.count - depth :] if depth else [])
        return scope


@dataclass(slots=True)
class _Source:
    """The content of an activated entry, scanned by the next levels of recursion."""

    entry_id: str
    scope: _Text


def _match(entry: LoreEntry, scope: _Text) -> tuple[bool, dict[str, Any], list[LoreKey]] | None:
    """``entry``'s key conditions against the text: None when no primary key occurs, else (True, reason, the keys
    that matched) or (False, why not, [])."""
    primary = next((key for key in entry.keys if key.hit(scope)), None)
    if primary is None:
        return None
    matched = [primary]
    reason: dict[str, Any] = {"kind": "key", "key": primary.text}
    additional: list[str] = []
    for group in entry.additional_keys:
        found = next((key for key in group if key.hit(scope)), None)
        if found is None:
            keys = [key.text for key in group]
            return False, {"kind": "decorator", "decorator": "@@additional_keys", "key": primary.text, "keys": keys}, []
        matched.append(found)
        additional.append(found.text)
    if entry.secondary_keys:
        hits = [key for key in entry.secondary_keys if key.hit(scope)]
        count, total = len(hits), len(entry.secondary_keys)
        logic = entry.logic
        passed = (
            (logic == AND_ANY and count > 0)
            or (logic == NOT_ALL and count < total)
            or (logic == NOT_ANY and count == 0)
            or (logic == AND_ALL and count == total)
        )
        secondary = [key.text for key in hits]
        if not passed:
            skip = {"kind": "secondary_keys", "key": primary.text, "logic": LOGIC_NAMES[logic], "secondary": secondary}
            return False, skip, []
        reason = {"kind": "secondary_key", "key": primary.text, "secondary": secondary, "logic": LOGIC_NAMES[logic]}
        if logic in (AND_ANY, AND_ALL):
            matched.extend(hits)
    for key in entry.exclude_keys:
        if key.hit(scope):
            excluded = {"kind": "decorator", "decorator": "@@exclude_keys", "key": primary.text, "excluded": key.text}
            return False, excluded, []
    if additional:
        reason["additional"] = additional
    return True, reason, matched


def _gate(entry: LoreEntry, turn: int, spent: set[str]) -> dict[str, Any] | None:
    """Why a decorator refuses an entry this turn, or None."""
    if entry.dont_activate:
        return {"kind": "decorator", "decorator": "@@dont_activate"}
    if entry.dont_activate_after_match and entry.id in spent:
        return {"kind": "decorator", "decorator": "@@dont_activate_after_match"}
    # The spec counts "the chat log's assistant (or character's) message count": "SHOULD NOT considered as a match
    # until [it] is equal to or greater than the value" (@@activate_only_after), and "SHOULD NOT be considered as a
    # match if [it] divided by the value of this decorator has a remainder" (@@activate_only_every). The count is
    # taken as the character's replies before this user turn, `turn - 1`, not from `messages` (which may be only the
    # recent ones) and without the greeting (not every conversation opens with one): `@@activate_only_after 2` opens
    # at turn 3, `@@activate_only_every 3` fires at turns 1, 4, 7...
    replies = turn - 1
    if entry.activate_only_after is not None and replies < entry.activate_only_after:
        return {
            "kind": "decorator",
            "decorator": "@@activate_only_after",
            "value": entry.activate_only_after,
            "turn": turn,
        }
    if entry.activate_only_every is not None and replies % entry.activate_only_every:
        return {
            "kind": "decorator",
            "decorator": "@@activate_only_every",
            "value": entry.activate_only_every,
            "turn": turn,
        }
    return None


def _via(matched: list[LoreKey], sources: list[_Source]) -> str:
    """The entry whose content supplied a matched key (the primary key first)."""
    for key in matched:
        for source in sources:
            if key.hit(source.scope):
                return source.entry_id
    # An entry first activated at a recursion level has a matched key in some content, so this is not reached;
    # crediting the first content keeps the record well-formed all the same.
    return sources[0].entry_id


def _read_state(book: Book, state: Mapping[str, Any] | None) -> tuple[set[str], set[str]]:
    """The ids remembered for ``@@keep_activate_after_match`` and ``@@dont_activate_after_match``; anything that is
    not a list of strings, or names an entry without the decorator (the book changed), is dropped."""
    if not isinstance(state, Mapping):
        return set(), set()

    def ids(name: str, wanted: Callable[[LoreEntry], bool]) -> set[str]:
        raw = state.get(name)
        if not isinstance(raw, list):
            return set()
        given = {item for item in raw if isinstance(item, str)}
        return {entry.id for entry in book.entries if entry.id in given and wanted(entry)} if given else set()

    return ids("kept", lambda e: e.keep_activate_after_match), ids("spent", lambda e: e.dont_activate_after_match)


def _record(entry: LoreEntry, reason: dict[str, Any]) -> dict[str, Any]:
    return {"entry": entry.id, "name": entry.name, "reason": reason}


class _Scan:
    """One call of ``activate``: the texts each level scans, and the evaluation of one entry at that level."""

    __slots__ = ("_hay", "book", "everything", "kept", "level", "new", "recent", "sources", "spent", "turn")

    def __init__(
        self, book: Book, messages: Sequence[tuple[str, str]], turn: int, kept: set[str], spent: set[str]
    ) -> None:
        self.book = book
        self.recent = _Messages(messages)
        self.everything = self.recent.last(self.recent.count)
        self.turn = turn
        self.kept = kept
        self.spent = spent
        self.level = 0
        self.sources: list[_Source] = []
        self.new = _Text([])  # the content the previous level added
        self._hay: dict[int, _Text] = {}

    def feed(self, entries: list[LoreEntry]) -> None:
        """Start the next level with the content of ``entries``, just activated."""
        added = [_Source(entry.id, _Text([(entry.content, entry.content.casefold())])) for entry in entries]
        self.sources.extend(added)
        self.new = _Text([source.scope.parts[0] for source in added])
        self.level += 1
        self._hay = {}

    def haystack(self, depth: int) -> _Text:
        """The last ``depth`` messages and, from level 1 on, every content activated so far."""
        if not self.level:
            return self.recent.last(depth)
        hay = self._hay.get(depth)
        if hay is None:
            parts = self.recent.last(depth).parts + [source.scope.parts[0] for source in self.sources]
            hay = self._hay[depth] = _Text(parts)
        return hay

    def evaluate(self, entry: LoreEntry) -> tuple[bool, dict[str, Any], bool] | None:
        """(activated, reason, final) for ``entry`` at this level, or None when nothing speaks for it. A refusal
        that is not final (a key condition) leaves the entry to the next level of recursion."""
        if self.level == 0:
            if entry.activate:
                return True, {"kind": "decorator", "decorator": "@@activate"}, True
            if entry.keep_activate_after_match and not entry.dont_activate and entry.id in self.kept:
                return True, {"kind": "decorator", "decorator": "@@keep_activate_after_match"}, True
            if entry.constant:
                gate = _gate(entry, self.turn, self.spent)
                return (False, gate, True) if gate else (True, {"kind": "constant"}, True)
        elif not entry.trigger_probe.maybe(self.new):
            # No key of the entry in the content the previous level added: nothing changed for it.
            return None
        depth = self.book.scan_depth if entry.scan_depth is None else entry.scan_depth
        beyond: LoreKey | None = None
        if self.level == 0:
            # All the messages first: most keys occur in none of them, and one cheap test then settles the entry.
            everything = self.everything
            if not entry.key_probe.maybe(everything):
                return None
            if depth < self.recent.count:
                beyond = next((key for key in entry.keys if key.hit(everything)), None)
                if beyond is None:
                    return None
        result = _match(entry, self.haystack(depth))
        if result is None:
            if beyond is not None:
                return False, {"kind": "scan_depth", "key": beyond.text, "scan_depth": depth}, False
            return None
        matched, reason, keys = result
        if not matched:
            return False, reason, False
        gate = _gate(entry, self.turn, self.spent)
        if gate is not None:
            return False, gate, True
        if self.level:
            reason = {**reason, "kind": "recursion", "via": _via(keys, self.sources)}
        return True, reason, True


def activate(
    book: Book, *, messages: Sequence[tuple[str, str]], turn: int, state: Mapping[str, Any] | None = None
) -> LoreResult:
    """Which entries the conversation activates now. ``messages`` are (role, text) pairs, oldest first, the newest
    user message last; ``turn`` is the 1-based number of this user turn in the conversation; ``state`` is the
    ``LoreResult.state`` of the previous turn (pass the same one again when a reply is regenerated).

    Level 0 scans each entry's last ``scan_depth`` messages; each further level scans those plus the content of the
    entries activated so far, for the entries one of whose keys occurs in the content the level before added.
    Precedence per entry: ``@@activate``; then ``exclude_recursion`` (from level 1 on); then
    ``@@keep_activate_after_match`` once the entry went into a prompt in an earlier turn; then ``constant`` or the
    key conditions (primary keys, ``@@additional_keys``, secondary keys, ``@@exclude_keys``); then the refusals
    ``@@dont_activate``, ``@@dont_activate_after_match``, ``@@activate_only_after``, ``@@activate_only_every``;
    then the budget. The match-state decorators count an entry as matched when it went into the prompt."""
    kept, spent = _read_state(book, state)
    scan = _Scan(book, messages, max(turn, 1), kept, spent)
    skipped: dict[int, dict[str, Any]] = {}
    accepted: list[tuple[LoreEntry, dict[str, Any]]] = []
    pending = list(book.entries)
    budget = book.token_budget
    used = 0
    overflow = False
    while pending:
        probe = scan.level > MAX_RECURSION_DEPTH
        candidates: list[tuple[LoreEntry, dict[str, Any]]] = []
        remaining: list[LoreEntry] = []
        for entry in pending:
            outcome = scan.evaluate(entry)
            if outcome is None:
                remaining.append(entry)
                continue
            activated, reason, final = outcome
            if probe:
                # One level past the limit is scanned only to report what the limit kept out.
                if activated:
                    limit = {"kind": "recursion_limit", "via": reason["via"], "key": reason["key"]}
                    skipped[entry.index] = _record(entry, {**limit, "max_depth": MAX_RECURSION_DEPTH})
            elif activated:
                candidates.append((entry, reason))
            else:
                skipped[entry.index] = _record(entry, reason)
                if not final:
                    remaining.append(entry)
        if probe:
            break
        fresh: list[LoreEntry] = []
        candidates.sort(key=lambda pair: (-pair[0].priority, pair[0].index))
        for entry, reason in candidates:
            if overflow or (budget is not None and used + entry.tokens > budget):
                overflow = True
                skipped[entry.index] = _record(
                    entry, {"kind": "budget", "tokens": entry.tokens, "budget": budget, "used": used}
                )
                continue
            used += entry.tokens
            accepted.append((entry, reason))
            skipped.pop(entry.index, None)
            fresh.append(entry)
        feeding = [entry for entry in fresh if not entry.prevent_recursion]
        if overflow or not book.recursive_scanning or not feeding:
            break
        scan.feed(feeding)
        pending = [entry for entry in remaining if not entry.exclude_recursion]

    accepted.sort(key=lambda pair: (pair[0].insertion_order, pair[0].index))
    inserts = tuple(
        LoreInsert(
            entry_id=entry.id,
            name=entry.name,
            content=entry.content,
            position=entry.position,
            depth=entry.depth,
            role=entry.role,
            insertion_order=entry.insertion_order,
        )
        for entry, _reason in accepted
    )
    kept.update(entry.id for entry, _reason in accepted if entry.keep_activate_after_match)
    spent.update(entry.id for entry, _reason in accepted if entry.dont_activate_after_match)
    order = [entry.id for entry in book.entries if entry.keep_activate_after_match or entry.dont_activate_after_match]
    return LoreResult(
        inserts=inserts,
        activated=tuple(_record(entry, reason) for entry, reason in accepted),
        skipped=tuple(skipped[index] for index in sorted(skipped)),
        state={
            "version": STATE_VERSION,
            "kept": [entry_id for entry_id in order if entry_id in kept],
            "spent": [entry_id for entry_id in order if entry_id in spent],
        },
        tokens=sum(entry.tokens for entry, _reason in accepted),
    )
