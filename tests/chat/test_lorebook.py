"""The lorebook engine (chat/lorebook.py): parsing a card's character_book, and which entries a conversation
activates, with CCv3 and SillyTavern semantics. Pure functions: no database."""

import json
import re
import timeit
from typing import Any

import pytest

from chat.lorebook import (
    DEFAULT_SCAN_DEPTH,
    MAX_ENTRIES,
    MAX_RECURSION_DEPTH,
    Book,
    LoreInsert,
    LoreResult,
    activate,
    estimate_tokens,
    parse_book,
)
from personas.cards import MAX_BOOK_ENTRIES, parse_card
from tests.conftest import ROOT

FIXTURE = ROOT / "tests" / "fixtures" / "cards" / "lore_40.json"


def make_book(*entries: dict[str, Any], **settings: Any) -> Book:
    """A book of ``entries``; each gets ``content`` "<id> lore." unless it gives one, and ids 0, 1, ... unless it
    gives its own."""
    raw = {
        "entries": [{"id": i, "content": f"{e.get('id', i)} lore.", **e} for i, e in enumerate(entries)],
        **settings,
    }
    book = parse_book(raw)
    assert book is not None
    return book


def run(book: Book, *texts: str, turn: int = 1, state: dict[str, Any] | None = None) -> LoreResult:
    """Activate on ``texts`` as alternating messages ending with the user's."""
    roles = ["user" if (len(texts) - i) % 2 else "assistant" for i in range(len(texts))]
    return activate(book, messages=list(zip(roles, texts, strict=True)), turn=turn, state=state)


def active(result: LoreResult) -> list[str]:
    return [record["entry"] for record in result.activated]


def skips(result: LoreResult) -> dict[str, str]:
    return {record["entry"]: record["reason"]["kind"] for record in result.skipped}


# --- parsing -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100), ("x" * 401, 101)],
)
def test_estimate_tokens_is_ceil_of_a_quarter_of_the_characters(text: str, tokens: int) -> None:
    assert estimate_tokens(text) == tokens


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        "book",
        {},
        {"entries": []},
        {"entries": "x"},
        {"entries": [None, 3, "x"]},
        {"entries": [{"keys": ["a"], "content": ""}]},  # nothing to insert
        {"entries": [{"keys": ["a"], "content": "@@depth 2\n\n"}]},  # only decorators
        {"entries": [{"keys": ["a"], "content": 5}]},
        {"entries": [{"keys": ["a"], "content": "x", "enabled": False}]},
        {"entries": [{"keys": [], "content": "x"}]},  # no key, not constant: can never activate
        {"entries": [{"keys": ["  ", ""], "content": "x"}]},
    ],
)
def test_parse_book_is_none_without_a_usable_entry(raw: Any) -> None:
    assert parse_book(raw) is None


@pytest.mark.parametrize(
    ("entry", "field", "expected"),
    [
        ({"keys": ["a"], "secondary_keys": ["b"], "selective": True}, "secondary_keys", ("b",)),
        ({"keys": ["a"], "secondaryKeys": ["b"], "selective": True}, "secondary_keys", ("b",)),
        ({"keys": ["a"], "secondary_keys": ["b"], "selective": False}, "secondary_keys", ()),
        ({"keys": ["a"], "secondary_keys": ["b"]}, "secondary_keys", ()),
        ({"keys": "a, b ,,c"}, "keys", ("a", "b", "c")),
        ({"keys": ["a", 3, None, " b "]}, "keys", ("a", "b")),
        ({"keys": ["a"], "insertion_order": 7}, "insertion_order", 7),
        ({"keys": ["a"], "insertionOrder": 7}, "insertion_order", 7),
        ({"keys": ["a"], "insertion_order": "8"}, "insertion_order", 8),
        ({"keys": ["a"]}, "insertion_order", 100),
        ({"keys": ["a"], "insertion_order": 7}, "priority", 7),
        ({"keys": ["a"], "insertion_order": 7, "priority": 3}, "priority", 3),
        ({"keys": ["a"], "constant": True}, "constant", True),
        ({"keys": ["a"], "constant": "true"}, "constant", True),
        ({"keys": ["a"], "constant": "yes"}, "constant", False),
        ({"keys": ["a"], "extensions": {"scan_depth": 5}}, "scan_depth", 5),
        ({"keys": ["a"], "extensions": {"scanDepth": 5}}, "scan_depth", 5),
        ({"keys": ["a"], "extensions": {"scan_depth": None}}, "scan_depth", None),
        ({"keys": ["a"], "extensions": {"scan_depth": -1}}, "scan_depth", None),
        ({"keys": ["a"], "extensions": {"scan_depth": 5}, "content": "@@scan_depth 1\nx"}, "scan_depth", 1),
        ({"keys": ["a"], "extensions": {"scan_depth": 5000}}, "scan_depth", 1000),
        ({"keys": ["a"], "extensions": {"selectiveLogic": 3}}, "logic", 3),
        ({"keys": ["a"], "selective_logic": 2}, "logic", 2),
        ({"keys": ["a"], "extensions": {"selectiveLogic": 9}}, "logic", 0),
        ({"keys": ["a"], "extensions": {"exclude_recursion": True}}, "exclude_recursion", True),
        ({"keys": ["a"], "extensions": {"excludeRecursion": True}}, "exclude_recursion", True),
        ({"keys": ["a"], "extensions": {"prevent_recursion": True}}, "prevent_recursion", True),
        ({"keys": ["a"], "preventRecursion": True}, "prevent_recursion", True),
        ({"keys": ["a"], "name": "N", "comment": "C"}, "name", "N"),
        ({"keys": ["a"], "comment": "C"}, "name", "C"),
        ({"keys": ["a"], "name": 4}, "name", ""),
        ({"keys": ["a"], "content": "abcdefgh"}, "tokens", 2),
        ({"keys": ["a"], "content": "@@activate\nabcd"}, "tokens", 1),
    ],
)
def test_parse_book_reads_snake_camel_and_extension_fields(entry: dict[str, Any], field: str, expected: Any) -> None:
    value = getattr(make_book(entry).entries[0], field)
    if field in ("keys", "secondary_keys"):
        value = tuple(key.text for key in value)
    assert value == expected


@pytest.mark.parametrize(
    ("raw", "field", "expected"),
    [
        ({}, "scan_depth", DEFAULT_SCAN_DEPTH),
        ({"scan_depth": 5}, "scan_depth", 5),
        ({"scanDepth": 5}, "scan_depth", 5),
        ({"scan_depth": -3}, "scan_depth", DEFAULT_SCAN_DEPTH),
        ({"scan_depth": 0}, "scan_depth", 0),
        ({}, "token_budget", None),
        ({"token_budget": 300}, "token_budget", 300),
        ({"tokenBudget": 300}, "token_budget", 300),
        ({"token_budget": 0}, "token_budget", None),
        ({}, "recursive_scanning", True),
        ({"recursive_scanning": False}, "recursive_scanning", False),
        ({"recursiveScanning": False}, "recursive_scanning", False),
        ({"name": "Lore"}, "name", "Lore"),
    ],
)
def test_parse_book_reads_book_settings(raw: dict[str, Any], field: str, expected: Any) -> None:
    assert getattr(make_book({"keys": ["a"]}, **raw), field) == expected


def test_parse_book_reads_sillytavern_world_info_entries_keyed_by_uid() -> None:
    book = parse_book({"entries": {"7": {"uid": 7, "keys": ["a"], "content": "x"}}})
    assert book is not None
    assert [e.id for e in book.entries] == ["0"]


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        ([None, None, None], ["0", "1", "2"]),
        ([10, "abc", 2.0], ["10", "abc", "2"]),
        # A repeated id, a bool and an empty string fall back to the index; an index already taken by another
        # entry's id becomes "#<index>".
        ([5, 5, True, ""], ["5", "1", "2", "3"]),
        (["1", None, "x"], ["1", "#1", "x"]),
    ],
)
def test_entry_ids_are_the_cards_ids_else_the_index_and_unique(ids: list[Any], expected: list[str]) -> None:
    entries = [{"keys": ["a"], "content": "x"} | ({} if i is None else {"id": i}) for i in ids]
    book = parse_book({"entries": entries})
    assert book is not None
    assert [e.id for e in book.entries] == expected


def test_parse_book_keeps_book_indexes_of_the_entries_it_drops() -> None:
    book = parse_book({"entries": [{"keys": ["a"], "content": "x", "enabled": False}, {"keys": ["b"], "content": "y"}]})
    assert book is not None
    assert [(e.index, e.id) for e in book.entries] == [(1, "1")]


def test_parse_book_reads_at_most_max_entries_the_card_limit() -> None:
    assert MAX_ENTRIES == MAX_BOOK_ENTRIES
    book = parse_book({"entries": [{"keys": [f"k{i}"], "content": "x"} for i in range(MAX_ENTRIES + 5)]})
    assert book is not None
    assert len(book.entries) == MAX_ENTRIES


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({}, ("after_char", 0, "system")),  # SillyTavern reads anything but "before_char" as after
        ({"position": "before_char"}, ("before_char", 0, "system")),
        ({"position": "after_char"}, ("after_char", 0, "system")),
        ({"position": "elsewhere"}, ("after_char", 0, "system")),
        # SillyTavern's numeric extensions.position wins over the CCv3 string.
        ({"position": "after_char", "extensions": {"position": 0}}, ("before_char", 0, "system")),
        ({"position": "before_char", "extensions": {"position": 1}}, ("after_char", 0, "system")),
        ({"extensions": {"position": 2}}, ("before_char", 0, "system")),  # author's note, top
        ({"extensions": {"position": 3}}, ("after_char", 0, "system")),  # author's note, bottom
        ({"extensions": {"position": 5}}, ("before_char", 0, "system")),  # example messages, top
        ({"extensions": {"position": 6}}, ("after_char", 0, "system")),  # example messages, bottom
        ({"position": "before_char", "extensions": {"position": 42}}, ("before_char", 0, "system")),
        ({"extensions": {"position": 4}}, ("at_depth", 4, "system")),
        ({"extensions": {"position": 4, "depth": 0, "role": 2}}, ("at_depth", 0, "assistant")),
        ({"extensions": {"position": 4, "depth": 7, "role": 1}}, ("at_depth", 7, "user")),
        ({"extensions": {"position": 4, "depth": -2, "role": "user"}}, ("at_depth", 0, "user")),
        ({"extensions": {"position": 4, "role": 9}}, ("at_depth", 4, "system")),
        ({"content": "@@depth 2\nx"}, ("at_depth", 2, "system")),
        ({"content": "@@depth 0\n@@role assistant\nx"}, ("at_depth", 0, "assistant")),
        ({"content": "@@depth -3\nx"}, ("at_depth", 0, "system")),
        ({"content": "@@depth 3\nx", "extensions": {"position": 0, "depth": 9}}, ("at_depth", 3, "system")),
        ({"content": "@@role user\nx", "extensions": {"position": 1}}, ("after_char", 0, "user")),
        ({"content": "@@position before_desc\n@@depth 2\nx"}, ("before_char", 0, "system")),
        ({"content": "@@position after_desc\nx", "position": "before_char"}, ("after_char", 0, "system")),
        ({"content": "@@position personality\nx", "position": "before_char"}, ("before_char", 0, "system")),
        ({"content": "@@role narrator\nx"}, ("after_char", 0, "system")),
    ],
)
def test_positions_depths_and_roles(entry: dict[str, Any], expected: tuple[str, int, str]) -> None:
    parsed = make_book({"keys": ["a"], **entry}).entries[0]
    assert (parsed.position, parsed.depth, parsed.role) == expected


@pytest.mark.parametrize(
    ("content", "inserted", "flags"),
    [
        ("plain lore", "plain lore", {}),
        ("@@activate\nlore", "lore", {"activate": True}),
        (
            "@@activate\r\n@@dont_activate\r\n\r\nlore\r\nmore",
            "lore\r\nmore",
            {"activate": True, "dont_activate": False},
        ),
        ("@@dont_activate\n\n\nlore\n\n@@activate", "lore\n\n@@activate", {"activate": False, "dont_activate": True}),
        ("@@unknown_thing 3\nlore", "lore", {}),
        (" @@activate\nlore", " @@activate\nlore", {"activate": False}),
        ("@@activate_only_after 3\nlore", "lore", {"activate_only_after": 3}),
        ("@@activate_only_after x\nlore", "lore", {"activate_only_after": None}),
        ("@@activate_only_after -1\nlore", "lore", {"activate_only_after": None}),
        ("@@activate_only_every 0\nlore", "lore", {"activate_only_every": None}),
        ("@@activate_only_every\t2\nlore", "lore", {"activate_only_every": 2}),
        (
            "@@keep_activate_after_match\n@@dont_activate_after_match\nlore",
            "lore",
            {"keep_activate_after_match": True, "dont_activate_after_match": True},
        ),
        # Only the first of a repeated decorator counts.
        ("@@activate_only_after 2\n@@activate_only_after 5\nlore", "lore", {"activate_only_after": 2}),
        # A @@@ fallback is used when the decorator above it is unknown or invalid, and chains.
        ("@@risu_only 4\n@@@activate_only_after 4\nlore", "lore", {"activate_only_after": 4}),
        (
            "@@activate_only_every 2\n@@@activate_only_after 4\nlore",
            "lore",
            {"activate_only_every": 2, "activate_only_after": None},
        ),
        ("@@risu_only 4\n@@@agn_only 4\n@@@activate_only_every 3\nlore", "lore", {"activate_only_every": 3}),
        (
            "@@risu_only 4\n@@@activate_only_every x\n@@@activate_only_after 5\nlore",
            "lore",
            {"activate_only_every": None, "activate_only_after": 5},
        ),
        ("@@@activate\nlore", "lore", {"activate": False}),  # a fallback with nothing above it
    ],
)
def test_decorators_are_read_and_removed_from_the_content(content: str, inserted: str, flags: dict[str, Any]) -> None:
    entry = make_book({"keys": ["a"], "content": content}).entries[0]
    assert entry.content == inserted
    for name, value in flags.items():
        assert getattr(entry, name) == value


def test_additional_and_exclude_keys_decorators_are_parsed() -> None:
    entry = make_book(
        {
            "keys": ["a"],
            "content": "@@additional_keys b, c\n@@additional_keys d\n@@exclude_keys e,f\n@@exclude_keys g\nx",
        }
    ).entries[0]
    assert [[k.text for k in group] for group in entry.additional_keys] == [["b", "c"], ["d"]]
    assert [k.text for k in entry.exclude_keys] == ["e", "f"]


# --- matching ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "entry", "text", "matches"),
    [
        # Case-insensitive by default, case-sensitive when the entry (CCv3 field or SillyTavern extension) says so.
        ("Vale", {}, "we reached vale at dusk", True),
        ("Vale", {"case_sensitive": True}, "we reached vale at dusk", False),
        ("Vale", {"case_sensitive": True}, "we reached Vale at dusk", True),
        ("Vale", {"extensions": {"case_sensitive": True}}, "VALE", False),
        ("Vale", {"extensions": {"case_sensitive": None}}, "VALE", True),
        ("straße", {}, "STRASSE", True),
        # Whole words by default, on the sides where the key ends in a word character.
        ("Vale", {}, "Valentine came", False),
        ("Vale", {}, "the Vale's edge", True),
        ("Vale", {}, "(vale)", True),
        ("eel", {}, "I feel cold", False),
        ("eel", {}, "eel-oil lamps", True),
        ("eel", {}, "eel_oil", False),
        ("old mill", {}, "the old millstone", False),
        ("old mill", {}, "by the old mill.", True),
        ("C++", {}, "I write C++17 daily", True),
        ("C++", {}, "I write ObjC++ daily", False),
        ("#tag", {}, "see x#tag", True),
        ("Vale", {"extensions": {"match_whole_words": False}}, "Valentine came", True),
        ("Vale", {"matchWholeWords": False}, "Valentine came", True),
        ("café", {}, "cafés", False),
        # Scripts without spaces between words match as substrings.
        ("東京", {}, "東京都に行く", True),
        ("ねこ", {}, "くろねこがいる", True),
        ("서울", {}, "서울에서 만나요", True),
        # Regex keys: /pattern/flags, JavaScript flags, whatever use_regex says.
        ("/drown(ed|ing) king/i", {}, "The DROWNED King", True),
        ("/drown(ed|ing) king/", {}, "The DROWNED King", False),
        ("/drown(ed|ing) king/", {"use_regex": False}, "the drowning king", True),
        ("/^start/m", {}, "x\nstart here", True),
        ("/^start/", {}, "x\nstart here", False),
        ("/a.b/s", {}, "a\nb", True),
        ("/a.b/gu", {}, "axb", True),
        ("/(?<n>ab)\\k<n>/", {}, "xababx", True),
        ("/a\\/b/", {}, "a/b", True),
        # IGNORECASE also matches K (Kelvin sign) for k: the literal prefilter must not rule it out.
        ("/kelvin/i", {}, "\u212aelvin", True),
        ("/\\x41BCD/", {}, "xABCDx", True),
        ("/Tide-?Bells/", {}, "TideBells", True),
        ("/Tide-?Bells/", {}, "tidebells", False),
        ("/(?i)abcd/", {}, "xABCDx", True),  # an inline flag turns the literal prefilter off
        ("/a(?i)bcd/", {}, "aBCD", False),  # Python refuses a global flag after the start: invalid
        # Not a regex key, so plain text: an unescaped slash inside, or an unknown flag.
        ("/a/b/", {}, "see /a/b/ here", True),
        ("/ab/q", {}, "ab", False),
        ("/ab/q", {}, "x /ab/q x", True),
        # A regex key that does not compile, repeats a flag or nests quantifiers never matches.
        ("/[unclosed/", {}, "[unclosed", False),
        ("/ab/ii", {}, "ab", False),
        ("/(a+)+$/", {}, "aaaa", False),
        ("/(\\w*x)*y/", {}, "xxy", False),
        ("/((a)+)?b/", {}, "ab", True),
        ("/(ab){2,}c/", {}, "ababc", True),
        ("/(a{1,3}){2,}/", {}, "aaaa", False),
        # A plain key under use_regex stays plain text, as SillyTavern exports plain keys with use_regex: true.
        ("Dr. Vale", {"use_regex": True}, "dr. vale waved", True),
        ("Dr. Vale", {"use_regex": True}, "Drx Vale waved", False),
        ("C++", {"useRegex": True}, "c++", True),
    ],
)
def test_primary_key_matching(key: str, entry: dict[str, Any], text: str, matches: bool) -> None:
    book = make_book({"keys": [key], **entry})
    assert active(run(book, text)) == (["0"] if matches else [])


@pytest.mark.parametrize(
    ("settings", "text", "matches"),
    [
        ({"case_sensitive": True}, "vale", False),
        ({"extensions": {"case_sensitive": True}}, "vale", False),
        ({"case_sensitive": True}, "Vale", True),
        ({"match_whole_words": False}, "Valentine", True),
        ({"extensions": {"match_whole_words": False}}, "Valentine", True),
    ],
)
def test_book_level_matching_defaults(settings: dict[str, Any], text: str, matches: bool) -> None:
    book = make_book({"keys": ["Vale"]}, **settings)
    assert active(run(book, text)) == (["0"] if matches else [])


@pytest.mark.parametrize(
    ("key", "needle"),
    [
        # The literal every match contains, looked for before the regex runs (case-folded under /i).
        ("/\\bmaps?\\b/i", "map"),
        ("/\\b\\d+\\s*pearls?\\b/i", "pearl"),
        ("/\\bdrown(?:ed|ing) king\\b/i", "drown"),  # k may match K, so " king" is not used
        ("/tide-?bells?/i", "bell"),
        ("/Tide-?Bells/", "Bells"),
        ("/TIDE/i", ""),  # i may match ı: "t" and "de" are left, too short to help
        ("/\\x41BCD/", "BCD"),
        ("/\\N{BULLET}xyz/", "xyz"),
        ("/(ab)\\1234abc/", "abc"),
        ("/abc{2}defg/", "defg"),
        ("/ab+cd/", ""),
        ("/cat|dog/", ""),
        ("/(?:cat|dog)house/", "house"),
        ("/(?i)house/", ""),
        ("/[a-z]+ville/", "ville"),
        ("/a\\.b\\.c/", "a.b.c"),
    ],
)
def test_regex_keys_carry_the_literal_every_match_contains(key: str, needle: str) -> None:
    assert make_book({"keys": [key]}).entries[0].keys[0].needle == needle


def test_regex_keys_run_on_each_message_alone() -> None:
    book = make_book({"keys": ["/^hello/"]}, {"keys": ["/bye$/"]}, {"keys": ["/old.*mill/s"]})
    assert active(run(book, "say bye", "hello there")) == ["0", "1"]
    assert active(run(book, "by the old", "mill")) == []


def test_invalid_regex_keys_are_listed_and_never_raise() -> None:
    book = make_book({"keys": ["/[x/", "ok"]}, {"keys": ["/(a*)*b/i"]}, {"keys": ["/fine/"]})
    assert book.invalid_keys == (("0", "/[x/"), ("1", "/(a*)*b/i"))
    assert active(run(book, "[x aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaac ok")) == ["0"]


@pytest.mark.parametrize(
    ("logic", "text", "outcome"),
    [
        # AND ANY (0): one secondary key must appear.
        (0, "ashe", "skip"),
        (0, "ashe ledger", "on"),
        (0, "ashe secret", "on"),
        # NOT ALL (1): not every secondary key may appear.
        (1, "ashe", "on"),
        (1, "ashe ledger", "on"),
        (1, "ashe ledger secret", "skip"),
        # NOT ANY (2): no secondary key may appear.
        (2, "ashe", "on"),
        (2, "ashe ledger", "skip"),
        # AND ALL (3): every secondary key must appear.
        (3, "ashe ledger", "skip"),
        (3, "ashe secret and ledger", "on"),
        # No primary key: not a candidate at all, whatever the secondary keys.
        (2, "ledger", "none"),
        (1, "nothing", "none"),
    ],
)
def test_selective_logic(logic: int, text: str, outcome: str) -> None:
    book = make_book(
        {
            "keys": ["Ashe"],
            "secondary_keys": ["ledger", "secret"],
            "selective": True,
            "extensions": {"selectiveLogic": logic},
        }
    )
    result = run(book, text)
    assert (active(result), skips(result)) == {
        "on": (["0"], {}),
        "skip": ([], {"0": "secondary_keys"}),
        "none": ([], {}),
    }[outcome]


def test_selective_reasons_name_the_keys() -> None:
    book = make_book(
        {"keys": ["Ashe"], "secondary_keys": ["ledger", "secret"], "selective": True},
        {
            "keys": ["Ashe"],
            "secondary_keys": ["ledger", "secret"],
            "selective": True,
            "extensions": {"selectiveLogic": 3},
        },
        {
            "keys": ["Ashe"],
            "secondary_keys": ["ledger", "secret"],
            "selective": True,
            "extensions": {"selectiveLogic": 2},
        },
    )
    result = run(book, "Ashe hides a ledger")
    assert result.activated == (
        {
            "entry": "0",
            "name": "",
            "reason": {"kind": "secondary_key", "key": "Ashe", "secondary": ["ledger"], "logic": "AND_ANY"},
        },
    )
    assert result.skipped == (
        {
            "entry": "1",
            "name": "",
            "reason": {"kind": "secondary_keys", "key": "Ashe", "logic": "AND_ALL", "secondary": ["ledger"]},
        },
        {
            "entry": "2",
            "name": "",
            "reason": {"kind": "secondary_keys", "key": "Ashe", "logic": "NOT_ANY", "secondary": ["ledger"]},
        },
    )


@pytest.mark.parametrize(
    ("entry", "text", "expected"),
    [
        ({"keys": ["a"], "constant": True}, "nothing here", {"kind": "constant"}),
        ({"keys": [], "constant": True}, "", {"kind": "constant"}),
        ({"keys": ["a"], "constant": True}, "a", {"kind": "constant"}),
        # Constants skip every key condition, secondary and decorator ones included.
        ({"keys": ["a"], "constant": True, "selective": True, "secondary_keys": ["b"]}, "a", {"kind": "constant"}),
        ({"keys": ["a"], "constant": True, "content": "@@exclude_keys a\nx"}, "a", {"kind": "constant"}),
        ({"keys": ["a"], "content": "@@activate\nx"}, "", {"kind": "decorator", "decorator": "@@activate"}),
        (
            {"keys": ["a"], "content": "@@activate\n@@dont_activate\nx"},
            "",
            {"kind": "decorator", "decorator": "@@activate"},
        ),
        (
            {"keys": ["a"], "content": "@@activate\n@@activate_only_after 9\nx"},
            "",
            {"kind": "decorator", "decorator": "@@activate"},
        ),
        ({"keys": ["a"]}, "an a here", {"kind": "key", "key": "a"}),
        ({"keys": ["b", "a"]}, "a then b", {"kind": "key", "key": "b"}),
    ],
)
def test_activation_reasons(entry: dict[str, Any], text: str, expected: dict[str, Any]) -> None:
    result = run(make_book(entry), text)
    assert result.activated == ({"entry": "0", "name": "", "reason": expected},)
    assert result.skipped == ()


@pytest.mark.parametrize(
    ("content", "text", "turn", "expected"),
    [
        ("@@dont_activate\nx", "key", 1, {"decorator": "@@dont_activate"}),
        # The spec counts the character's replies before this turn: turn - 1.
        ("@@activate_only_after 2\nx", "key", 2, {"decorator": "@@activate_only_after", "value": 2, "turn": 2}),
        ("@@activate_only_after 2\nx", "key", 3, None),
        ("@@activate_only_after 0\nx", "key", 1, None),
        ("@@activate_only_every 3\nx", "key", 1, None),
        ("@@activate_only_every 3\nx", "key", 2, {"decorator": "@@activate_only_every", "value": 3, "turn": 2}),
        ("@@activate_only_every 3\nx", "key", 3, {"decorator": "@@activate_only_every", "value": 3, "turn": 3}),
        ("@@activate_only_every 3\nx", "key", 4, None),
        ("@@activate_only_every 3\nx", "key", 7, None),
        ("@@activate_only_every 1\nx", "key", 5, None),
        # A refusal is reported only for a candidate: no key, no record.
        ("@@dont_activate\nx", "nothing", 1, "none"),
        ("@@activate_only_after 2\nx", "nothing", 1, "none"),
        # @@additional_keys: one key of each group must appear as well.
        ("@@additional_keys tide, flood\nx", "key and flood", 1, None),
        (
            "@@additional_keys tide, flood\nx",
            "key",
            1,
            {"decorator": "@@additional_keys", "key": "key", "keys": ["tide", "flood"]},
        ),
        (
            "@@additional_keys tide\n@@additional_keys bell\nx",
            "key tide",
            1,
            {"decorator": "@@additional_keys", "key": "key", "keys": ["bell"]},
        ),
        ("@@additional_keys tide\n@@additional_keys bell\nx", "key tide bell", 1, None),
        ("@@additional_keys tide\nx", "tide", 1, "none"),  # additional keys are not primary keys
        # @@exclude_keys: none of these may appear; matched like keys (case-insensitive, whole words).
        (
            "@@exclude_keys hush, curfew\nx",
            "key at the CURFEW",
            1,
            {"decorator": "@@exclude_keys", "key": "key", "excluded": "curfew"},
        ),
        ("@@exclude_keys hush\nx", "key, hushed", 1, None),
        ("@@exclude_keys hush\nx", "key", 1, None),
    ],
)
def test_gating_decorators(content: str, text: str, turn: int, expected: Any) -> None:
    result = run(make_book({"keys": ["key"], "content": content}), text, turn=turn)
    if expected is None:
        assert active(result) == ["0"]
        assert result.skipped == ()
    elif expected == "none":
        assert (active(result), result.skipped) == ([], ())
    else:
        assert active(result) == []
        assert result.skipped == ({"entry": "0", "name": "", "reason": {"kind": "decorator", **expected}},)


def test_constants_obey_timing_decorators() -> None:
    book = make_book({"keys": [], "constant": True, "content": "@@activate_only_after 1\nx"})
    assert skips(run(book, "hi", turn=1)) == {"0": "decorator"}
    assert active(run(book, "hi", turn=2)) == ["0"]


@pytest.mark.parametrize(
    ("decorator", "turns", "expected"),
    [
        # keep: once in a prompt, in every later turn, key or not.
        (
            "@@keep_activate_after_match",
            ["nothing", "key", "nothing", "nothing"],
            ["", "key", "decorator", "decorator"],
        ),
        # dont: once in a prompt, never again.
        ("@@dont_activate_after_match", ["key", "key", "nothing", "key"], ["key", "skip", "", "skip"]),
        # Without the decorator each turn stands alone.
        ("", ["key", "nothing", "key"], ["key", "", "key"]),
    ],
)
def test_match_state_decorators_carry_over_turns(decorator: str, turns: list[str], expected: list[str]) -> None:
    book = make_book({"keys": ["key"], "content": f"{decorator}\nx" if decorator else "x"}, {"keys": ["other"]})
    state = None
    seen = []
    for turn, text in enumerate(turns, 1):
        result = run(book, text, turn=turn, state=state)
        state = json.loads(json.dumps(result.state))  # it is stored as JSON between turns
        kind = result.activated[0]["reason"]["kind"] if result.activated else ""
        seen.append("skip" if result.skipped else kind)
    assert seen == expected


def test_match_state_is_json_and_records_only_entries_with_the_decorators() -> None:
    book = make_book(
        {"keys": ["a"], "content": "@@keep_activate_after_match\nx"},
        {"keys": ["b"], "content": "@@dont_activate_after_match\nx"},
        {"keys": ["c"]},
    )
    result = run(book, "a b c")
    assert result.state == {"version": 1, "kept": ["0"], "spent": ["1"]}
    assert run(book, "c").state == {"version": 1, "kept": [], "spent": []}
    # The state returned keeps what came in.
    assert run(book, "c", state=result.state).state == {"version": 1, "kept": ["0"], "spent": ["1"]}


@pytest.mark.parametrize(
    "state",
    [
        None,
        {},
        "garbage",
        {"kept": "0", "spent": 5},
        {"kept": [0, None], "spent": [{"x": 1}]},
        {"kept": ["2", "nope"], "spent": ["2"]},  # entry 2 has neither decorator
    ],
)
def test_foreign_or_stale_state_is_ignored(state: Any) -> None:
    book = make_book(
        {"keys": ["a"], "content": "@@keep_activate_after_match\nx"},
        {"keys": ["b"], "content": "@@dont_activate_after_match\nx"},
        {"keys": ["c"]},
    )
    result = run(book, "b c", state=state)
    assert active(result) == ["1", "2"]
    assert result.state == {"version": 1, "kept": [], "spent": ["1"]}


def test_dont_activate_wins_over_keep_activate_state() -> None:
    book = make_book({"keys": ["a"], "content": "@@dont_activate\n@@keep_activate_after_match\nx"})
    result = run(book, "a", turn=2, state={"kept": ["0"]})
    assert (active(result), skips(result)) == ([], {"0": "decorator"})


# --- scan depth ----------------------------------------------------------------------------------------------------


MESSAGES = ("m1 alpha", "m2 beta", "m3 gamma", "m4 delta", "m5 epsilon")


@pytest.mark.parametrize(
    ("book_depth", "entry", "expected_active", "expected_skips"),
    [
        # The default depth, 2: the last two messages.
        (None, {}, ["delta", "epsilon"], {"alpha": 2, "beta": 2, "gamma": 2}),
        (1, {}, ["epsilon"], {"alpha": 1, "beta": 1, "gamma": 1, "delta": 1}),
        (5, {}, ["alpha", "beta", "gamma", "delta", "epsilon"], {}),
        (50, {}, ["alpha", "beta", "gamma", "delta", "epsilon"], {}),
        (0, {}, [], {"alpha": 0, "beta": 0, "gamma": 0, "delta": 0, "epsilon": 0}),
        # An entry's own depth (SillyTavern's extensions.scan_depth, or @@scan_depth) overrides the book's.
        (1, {"extensions": {"scan_depth": 3}}, ["gamma", "delta", "epsilon"], {"alpha": 3, "beta": 3}),
        (
            1,
            {"content": "@@scan_depth 4\nx", "extensions": {"scan_depth": 2}},
            ["beta", "gamma", "delta", "epsilon"],
            {"alpha": 4},
        ),
    ],
)
def test_scan_depth_counts_the_most_recent_messages(
    book_depth: int | None, entry: dict[str, Any], expected_active: list[str], expected_skips: dict[str, int]
) -> None:
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]
    settings = {} if book_depth is None else {"scan_depth": book_depth}
    book = make_book(*({"id": w, "keys": [w], **entry} for w in words), **settings)
    result = run(book, *MESSAGES)
    assert active(result) == expected_active
    assert {r["entry"]: r["reason"] for r in result.skipped} == {
        w: {"kind": "scan_depth", "key": w, "scan_depth": depth} for w, depth in expected_skips.items()
    }


def test_a_key_nowhere_in_the_messages_is_not_reported() -> None:
    book = make_book(*({"keys": [f"k{i}"]} for i in range(200)))
    result = run(book, *MESSAGES)
    assert (result.activated, result.skipped) == ((), ())


def test_messages_are_scanned_apart_so_no_key_spans_two() -> None:
    book = make_book({"keys": ["old mill"]}, {"keys": ["/old\\smill/"]}, {"keys": ["/old\\s+mill/"]})
    assert active(run(book, "by the old", "mill")) == []
    assert active(run(book, "by the old\nmill")) == ["1", "2"]


def test_no_messages_activates_only_constants() -> None:
    book = make_book({"keys": ["a"]}, {"keys": ["b"], "constant": True})
    assert active(activate(book, messages=[], turn=1)) == ["1"]


# --- recursion -----------------------------------------------------------------------------------------------------


def chain(length: int, **extra: Any) -> list[dict[str, Any]]:
    """Entries k0 ... k<length-1>, each content naming the next key."""
    return [
        {"id": f"e{i}", "keys": [f"k{i}"], "content": f"Lore that mentions k{i + 1}.", **extra} for i in range(length)
    ]


def test_recursion_follows_contents_up_to_the_maximum_depth() -> None:
    result = run(make_book(*chain(7)), "k0")
    assert MAX_RECURSION_DEPTH == 3
    assert [r["reason"] for r in result.activated] == [
        {"kind": "key", "key": "k0"},
        {"kind": "recursion", "key": "k1", "via": "e0"},
        {"kind": "recursion", "key": "k2", "via": "e1"},
        {"kind": "recursion", "key": "k3", "via": "e2"},
    ]
    # One level past the limit is reported; further ones are not scanned at all.
    assert result.skipped == (
        {"entry": "e4", "name": "", "reason": {"kind": "recursion_limit", "via": "e3", "key": "k4", "max_depth": 3}},
    )


@pytest.mark.parametrize(
    ("book_settings", "entries", "expected"),
    [
        ({"recursive_scanning": False}, chain(3), ["e0"]),
        ({}, [chain(3)[0] | {"extensions": {"prevent_recursion": True}}, *chain(3)[1:]], ["e0"]),
        ({}, [chain(3)[0], chain(3)[1] | {"extensions": {"exclude_recursion": True}}, chain(3)[2]], ["e0"]),
        ({}, chain(3), ["e0", "e1", "e2"]),
    ],
)
def test_recursion_switches(book_settings: dict[str, Any], entries: list[dict[str, Any]], expected: list[str]) -> None:
    assert active(run(make_book(*entries, **book_settings), "k0")) == expected


def test_exclude_recursion_entries_still_match_messages() -> None:
    entries = [chain(3)[0], chain(3)[1] | {"extensions": {"exclude_recursion": True}}, chain(3)[2]]
    assert active(run(make_book(*entries), "k0 and k1")) == ["e0", "e1", "e2"]


def test_recursion_scans_content_without_decorators_and_regardless_of_scan_depth() -> None:
    book = make_book(
        {"id": "a", "keys": ["anchor"], "content": "@@depth 1\nmentions bravo"},
        # Scan depth 0: no message is scanned for it, only the contents.
        {"id": "b", "keys": ["bravo"], "content": "@@scan_depth 0\nmentions zzz"},
        # "depth" is only in a's decorator line, which is not content.
        {"id": "c", "keys": ["depth"]},
        # Needs "zzz" as well, which only b's content (level 1) supplies: it goes in at level 2.
        {"id": "d", "keys": ["anchor"], "content": "@@additional_keys zzz\nd lore"},
    )
    result = run(book, "anchor")
    assert result.activated == (
        {"entry": "a", "name": "", "reason": {"kind": "key", "key": "anchor"}},
        {"entry": "b", "name": "", "reason": {"kind": "recursion", "key": "bravo", "via": "a"}},
        {"entry": "d", "name": "", "reason": {"kind": "recursion", "key": "anchor", "additional": ["zzz"], "via": "b"}},
    )
    assert result.skipped == ()


def test_recursion_combines_keys_from_messages_and_contents() -> None:
    # "guild" is in the message, the secondary key "smugglers" only in another entry's content.
    book = make_book(
        {"id": "bridge", "keys": ["bridge"], "content": "Smugglers hang from the bridge."},
        {"id": "guild", "keys": ["guild"], "selective": True, "secondary_keys": ["smugglers"], "content": "Secret."},
    )
    result = run(book, "the guild and the bridge")
    assert result.activated == (
        {"entry": "bridge", "name": "", "reason": {"kind": "key", "key": "bridge"}},
        {
            "entry": "guild",
            "name": "",
            "reason": {
                "kind": "recursion",
                "key": "guild",
                "secondary": ["smugglers"],
                "logic": "AND_ANY",
                "via": "bridge",
            },
        },
    )
    assert result.skipped == ()


def test_recursion_does_not_reactivate_or_duplicate() -> None:
    book = make_book(
        {"id": "a", "keys": ["a"], "content": "b and a"},
        {"id": "b", "keys": ["b"], "content": "a and b"},
    )
    assert active(run(book, "a")) == ["a", "b"]


# --- budget --------------------------------------------------------------------------------------------------------


def sized(entry_id: str, tokens: int, **extra: Any) -> dict[str, Any]:
    return {"id": entry_id, "keys": [entry_id], "content": "x" * (tokens * 4), **extra}


@pytest.mark.parametrize(
    ("budget", "entries", "expected_active", "expected_budget_skips"),
    [
        (None, [sized("a", 500), sized("b", 500)], ["a", "b"], []),
        (100, [sized("a", 50), sized("b", 50)], ["a", "b"], []),
        # Highest priority first (priority, else insertion_order); ties in book order.
        (100, [sized("a", 50, insertion_order=1), sized("b", 60, insertion_order=2)], ["b"], ["a"]),
        (100, [sized("a", 50, priority=9), sized("b", 60, priority=2)], ["a"], ["b"]),
        (100, [sized("a", 60), sized("b", 60)], ["a"], ["b"]),
        # Once one does not fit, every lower one is dropped, even a small one that would fit.
        (100, [sized("a", 60, priority=3), sized("b", 50, priority=2), sized("c", 10, priority=1)], ["a"], ["b", "c"]),
        # Constants compete like any entry.
        (100, [sized("a", 60, priority=3), sized("k", 50, priority=1, constant=True)], ["a"], ["k"]),
        (100, [sized("a", 60, priority=1), sized("k", 50, priority=3, constant=True)], ["k"], ["a"]),
        (100, [sized("a", 101)], [], ["a"]),
    ],
)
def test_token_budget_drops_the_lowest_priority(
    budget: int | None, entries: list[dict[str, Any]], expected_active: list[str], expected_budget_skips: list[str]
) -> None:
    settings = {} if budget is None else {"token_budget": budget}
    result = run(make_book(*entries, **settings), "a b c k")
    assert active(result) == expected_active
    assert skips(result) == dict.fromkeys(expected_budget_skips, "budget")
    assert result.tokens == sum(len(e["content"]) // 4 for e in entries if e["id"] in expected_active)


def test_budget_record_and_overflow_ends_recursion() -> None:
    book = make_book(
        {"id": "a", "keys": ["a"], "content": "a" * 160 + " b c", "insertion_order": 5},  # 41 tokens
        {"id": "c", "keys": ["c"], "content": "c" * 80, "insertion_order": 1},  # 20 tokens
        {"id": "b", "keys": ["b"], "content": "mentions d"},  # 3 tokens
        {"id": "d", "keys": ["d"], "content": "d"},
        token_budget=45,
    )
    result = run(book, "a and c")
    # a (priority 5) goes in first; c no longer fits, so the level overflowed and b, named in a's content, is
    # not scanned for.
    assert active(result) == ["a"]
    assert result.skipped == (
        {"entry": "c", "name": "", "reason": {"kind": "budget", "tokens": 20, "budget": 45, "used": 41}},
    )
    assert result.tokens == 41


# --- result --------------------------------------------------------------------------------------------------------


def test_inserts_are_sorted_by_insertion_order_then_book_order_and_carry_the_entry() -> None:
    book = make_book(
        {
            "id": "x",
            "keys": ["k"],
            "insertion_order": 5,
            "comment": "X",
            "content": "@@depth 1\n@@role user\nX {{char}}",
        },
        {
            "id": "y",
            "keys": ["k"],
            "insertion_order": 1,
            "name": "Y",
            "position": "before_char",
            "content": "Y {{user}}",
        },
        {"id": "z", "keys": ["k"], "insertion_order": 5, "content": "Z"},
    )
    result = run(book, "k")
    assert result.inserts == (
        LoreInsert(
            entry_id="y",
            name="Y",
            content="Y {{user}}",
            position="before_char",
            depth=0,
            role="system",
            insertion_order=1,
        ),
        LoreInsert(
            entry_id="x", name="X", content="X {{char}}", position="at_depth", depth=1, role="user", insertion_order=5
        ),
        LoreInsert(
            entry_id="z", name="", content="Z", position="after_char", depth=0, role="system", insertion_order=5
        ),
    )
    assert [r["entry"] for r in result.activated] == ["y", "x", "z"]
    assert result.tokens == estimate_tokens("X {{char}}") + estimate_tokens("Y {{user}}") + estimate_tokens("Z")
    json.dumps([result.activated, result.skipped, result.state])


def test_turn_below_one_counts_as_the_first() -> None:
    book = make_book({"keys": ["k"], "content": "@@activate_only_every 2\nx"})
    assert active(run(book, "k", turn=0)) == ["0"]


def test_moonborn_generated_book() -> None:
    # The shape personas/steps.py card_data writes.
    raw = {
        "name": "Mira lore",
        "entries": [
            {
                "keys": ["Mira", "smuggler"],
                "content": "Mira runs the back channels.",
                "enabled": True,
                "insertion_order": 0,
                "id": 0,
            },
            {
                "keys": ["Greyhaven"],
                "content": "Greyhaven is the rival port.",
                "enabled": True,
                "insertion_order": 1,
                "id": 1,
            },
        ],
    }
    book = parse_book(raw)
    assert book is not None
    result = run(book, "Tell me about the smuggler.")
    assert result.activated == ({"entry": "0", "name": "", "reason": {"kind": "key", "key": "smuggler"}},)
    assert result.inserts[0].position == "after_char"


@pytest.mark.parametrize(
    "entry",
    [
        {"keys": ["a"], "content": "x", "extensions": "nope"},
        {"keys": ["a"], "content": "x", "insertion_order": float("nan")},
        {"keys": ["a"], "content": "x", "insertion_order": float("inf"), "priority": [1]},
        {"keys": ["a"], "content": "x", "extensions": {"position": "4", "depth": "x", "role": None}},
        {"keys": ["a"], "content": "x", "extensions": {"position": True}},
        {"keys": ["a"], "content": "@@depth 99999999999999999999\nx"},
        {"keys": ["/" + "(" * 200 + "a" + ")" * 200 + "/"], "content": "x"},
        {"keys": ["/a{99999999999}/"], "content": "x"},
        {"keys": ["/(a{1," + "9" * 5000 + "})+/"], "content": "x"},
        {"keys": ["a"], "content": "@@activate_only_after " + "9" * 5000 + "\nx"},
        {"keys": ["a"], "content": "x", "insertion_order": "9" * 5000},
    ],
)
def test_parse_book_tolerates_odd_values(entry: dict[str, Any]) -> None:
    book = parse_book({"entries": [entry]})
    assert book is not None
    run(book, "a")


# --- performance ---------------------------------------------------------------------------------------------------


def fixture_book() -> Book:
    card = json.loads(FIXTURE.read_text(encoding="utf-8"))
    book = parse_book(card["data"]["character_book"])
    assert book is not None
    return book


def test_activate_compiles_no_regex(monkeypatch: pytest.MonkeyPatch) -> None:
    book = fixture_book()

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"regex compiled during activate: {args!r}")

    # re.compile and the module-level helpers (re.search, re.sub...) all go through re._compile.
    monkeypatch.setattr(re, "compile", refuse)
    monkeypatch.setattr(re, "_compile", refuse)
    result = activate(book, messages=conversation(9), turn=9, state={"kept": ["32"], "spent": ["31"]})
    assert result.activated


def test_activate_is_fast_on_the_fixture_book() -> None:
    # Not a benchmark (CI machines vary): a generous bound that still catches per-call compiling or quadratic scans.
    book = fixture_book()
    messages = conversation(10)[-20:]
    per_call = min(timeit.repeat(lambda: activate(book, messages=messages, turn=10), number=20, repeat=3)) / 20
    assert per_call < 0.02


# --- the fixture card: ten scripted turns --------------------------------------------------------------------------

GREETING = (
    "*Water laps at the stairs of the Sunken Archive as {{char}} lifts her storm-lamp.* You came in on the last "
    "ferry, didn't you? Nobody visits the reading rooms this late."
)

# (user message, the character's reply)
SCRIPT = [
    (
        "I'm looking for records about my mother's family. They lived in the Marrow, I think.",
        "*{{char}} sets the lamp on a dry shelf.* Marrow records are mostly salt and mould. If your family was there "
        "during the Night of Two Tides, the Tidebook might list them.",
    ),
    (
        "What is the Tidebook? And who is Tamsin? The ferrywoman told me to ask for you. I feel lost here.",
        "Old Tamsin? She has poled that ferry since before I was born. Pay her fare in coin, not scrip, or she will "
        "leave you on the mud.",
    ),
    (
        "Thanks. Someone at the Brinemarket said the Magistrate wants the flood records sealed, all very hush-hush.",
        "*She lowers her voice.* Ashe keeps a ledger of favours. Everyone knows that. What nobody knows is where he "
        "hides it.",
    ),
    (
        "Is that ledger the secret he keeps in some vault? I heard the bell tower ringing at night.",
        "That was only the hour. *She glances at the dark window.* If you ever hear the tide-bells, though, get off "
        "the walkways.",
    ),
    (
        "What's down in the vault? I saw a door marked with a lamp.",
        "*{{char}} hesitates.* Abel's letter said never to open it. *A long howl rolls across the mud outside.* "
        "Mire-hounds. They're close tonight.",
    ),
    (
        "Who is Abel? And what are those hounds? I'm chilled to the marrow.",
        "Abel was my brother, a Tidewarden. *She touches the folded paper in her coat.* The hounds came the night he "
        "vanished.",
    ),
    (
        "I'm sorry. The mire-hounds sound terrible. Is it safe to go out during the Hush?",
        "Nobody goes out in the Hush. Even the Brinemarket shuts before midnight.",
    ),
    (
        "Then I'll go to the market at dawn. How much are 3 pearls worth there?",
        "Three pearls? In the Marrow that buys a boat. At the Brinemarket, a good knife and a bad map, unless you "
        "swear an oath to the seller.",
    ),
    (
        "A map would help. Do the lamplighters of the Lantern Guild sell them, or only smugglers?",
        "The lamplighters sell oil, not maps. *She rolls up a damp chart and hands it over.* Take this one. It was "
        "Abel's.",
    ),
    ("Thank you. I'll keep it dry. Will you walk me back past the Gallowbridge?", ""),
]


def conversation(turn: int) -> list[tuple[str, str]]:
    """The messages before the reply to user turn ``turn``: the greeting, earlier turns, this user message."""
    messages = [("assistant", GREETING)]
    for user, reply in SCRIPT[: turn - 1]:
        messages += [("user", user), ("assistant", reply)]
    return [*messages, ("user", SCRIPT[turn - 1][0])]


# Worked out by hand from the fixture. The book sets no scan_depth, so each entry sees the character's last message
# and the user's new one, except the Saltwater Oath (35, extensions.scan_depth 6). Constants 0, 1 and 2 are in
# every turn; 0 has prevent_recursion, so its mentions of the Lowmere and the stilt-houses never recurse. The budget
# is 512 tokens (estimate_tokens of each content). Recursion: 5 (Tamsin) names the Gallowbridge (11), which names
# the Tidewardens (13), who name the Saltwater Oath (35), which names the Drowned King (7), the Gallowbridge and a
# Tidewarden; 3 (Abel) names a Tidewarden; 38 (Tidebook) names the Sunken Archive (12); 23 names the Drowned King.
# Skips are {entry: kind}; "sd" is scan_depth.
EXPECTED: list[tuple[set[int], dict[int, str]]] = [
    # 1: the greeting names the Sunken Archive (12) and the storm-lamp (39: "lamp" as a whole word after a hyphen);
    #    "Marrow" (10, case-sensitive) is in the user message. "mother" belongs to a disabled entry (34).
    ({0, 1, 2, 10, 12, 39}, {}),
    # 2: the reply names the lamp (39), Marrow (10), Two Tides (16), the Tidebook (38); the user names Tamsin and the
    #    ferrywoman (5). Tamsin's fare (20) needs fare/pay/price: refused. "feel" does not match "eel" (14).
    #    Recursion: 38 -> 12 and 5 -> 11 (level 1), 11 -> 13 (level 2), 13 -> 35 (level 3) would bring the total to
    #    525 tokens > 512: 35 is dropped for the budget, and the overflow ends the scan (7 is never reached).
    ({0, 1, 2, 5, 10, 11, 12, 13, 16, 38, 39}, {20: "secondary_keys", 35: "budget"}),
    # 3: the reply names Tamsin with "Pay" and "fare" (5 and 20) and scrip (15); the user names the Magistrate (4);
    #    Ashe's ledger (21, AND ALL of secret+ledger) is refused; the Brinemarket (33) is refused by @@exclude_keys
    #    (its "Hush" matches "hush-hush" case-insensitively, while The Hush (28) is case-sensitive and stays out).
    #    5 -> 11 -> 13 -> 35 (levels 1-3, 462 tokens), and 35 -> 7 is one level too deep. The greeting and turn 1-2
    #    keys (10, 12, 16, 38, 39) are now beyond the scan depth.
    (
        {0, 1, 2, 4, 5, 11, 13, 15, 20, 35},
        {7: "recursion_limit", 10: "sd", 12: "sd", 16: "sd", 21: "secondary_keys", 33: "decorator", 38: "sd", 39: "sd"},
    ),
    # 4: "Ashe" (reply) with "secret" and "ledger" (user) satisfies 21's AND ALL; the bell tower (24, NOT ALL of
    #    night+toll) has "night" but no "toll", so it goes in. The vault (30, @@activate_only_after 4) is refused:
    #    turn 4 follows 3 replies.
    (
        {0, 1, 2, 4, 21, 24},
        {5: "sd", 10: "sd", 12: "sd", 15: "sd", 16: "sd", 20: "sd", 30: "decorator", 33: "sd", 38: "sd", 39: "sd"},
    ),
    # 5: tide-bells (26, regex) in the reply; the vault (30) now opens (4 replies); the lamp (39).
    (
        {0, 1, 2, 26, 30, 39},
        {4: "sd", 5: "sd", 10: "sd", 12: "sd", 15: "sd", 16: "sd", 20: "sd", 21: "sd", 24: "sd", 33: "sd", 38: "sd"},
    ),
    # 6: Abel (3), his letter (32, @@keep_activate_after_match) and the mire-hounds (31, @@dont_activate_after_match)
    #    in the reply; lowercase "marrow" does not match the case-sensitive 10. 3 -> 13 (1) -> 35 (2) -> 7 and 11
    #    (3); the letter has prevent_recursion. 441 tokens.
    (
        {0, 1, 2, 3, 7, 11, 13, 31, 32, 35},
        {
            4: "sd",
            5: "sd",
            10: "sd",
            12: "sd",
            15: "sd",
            16: "sd",
            20: "sd",
            21: "sd",
            24: "sd",
            26: "sd",
            30: "sd",
            33: "sd",
            38: "sd",
            39: "sd",
        },
    ),
    # 7: the letter (32) stays by state; the mire-hounds (31) are named again but spent; Abel (3) and a Tidewarden
    #    (13) in the reply, the Hush (28) from the user. 13 -> 35 (1) -> 7 and 11 (2).
    (
        {0, 1, 2, 3, 7, 11, 13, 28, 32, 35},
        {
            4: "sd",
            5: "sd",
            10: "sd",
            12: "sd",
            15: "sd",
            16: "sd",
            20: "sd",
            21: "sd",
            24: "sd",
            26: "sd",
            30: "sd",
            31: "decorator",
            33: "sd",
            38: "sd",
            39: "sd",
        },
    ),
    # 8: "3 pearls" (27, regex); the Hush (28) in the reply, which also excludes the Brinemarket (33) named in
    #    both messages; the letter (32) by state. 31 is now only beyond the scan depth.
    (
        {0, 1, 2, 27, 28, 32},
        {
            3: "sd",
            4: "sd",
            5: "sd",
            10: "sd",
            12: "sd",
            13: "sd",
            15: "sd",
            16: "sd",
            20: "sd",
            21: "sd",
            24: "sd",
            26: "sd",
            30: "sd",
            31: "sd",
            33: "decorator",
            38: "sd",
            39: "sd",
        },
    ),
    # 9: the reply names Marrow (10), the Brinemarket (33, no Hush in these two messages), a map (37, regex) and an
    #    oath (35); the user names the Lantern Guild with "smugglers": the hidden face (23, AND ANY) goes in, the
    #    public face (22, NOT ANY) is refused. "Three pearls" has no digits (27). 23 and 35 -> 7, 11, 13 (level 1):
    #    508 tokens.
    (
        {0, 1, 2, 7, 10, 11, 13, 23, 32, 33, 35, 37},
        {
            3: "sd",
            4: "sd",
            5: "sd",
            12: "sd",
            15: "sd",
            16: "sd",
            20: "sd",
            21: "sd",
            22: "secondary_keys",
            24: "sd",
            26: "sd",
            27: "sd",
            28: "sd",
            30: "sd",
            31: "sd",
            38: "sd",
            39: "sd",
        },
    ),
    # 10: "lamplighters" without heresy/smuggling in the two messages: the public face (22) goes in, the hidden one
    #    (23) not yet; maps and a chart (37), Abel's (3), the Gallowbridge (11); the oath two turns back still
    #    reaches 35 (scan depth 6), while Marrow and the Brinemarket there are beyond everyone else's depth. Level 1:
    #    22's content names the Lantern Guild and 11's names smugglers, so 23 now passes (by recursion); 3 and 11 ->
    #    13; 35 -> 7. By priority 23 (181) and 13 (115) fit; 7 (90) would make 515 > 512 and is dropped.
    (
        {0, 1, 2, 3, 11, 13, 22, 23, 32, 35, 37},
        {
            4: "sd",
            5: "sd",
            7: "budget",
            10: "sd",
            12: "sd",
            15: "sd",
            16: "sd",
            20: "sd",
            21: "sd",
            24: "sd",
            26: "sd",
            27: "sd",
            28: "sd",
            30: "sd",
            31: "sd",
            33: "sd",
            38: "sd",
            39: "sd",
        },
    ),
]


def test_fixture_card_imports_and_its_book_parses() -> None:
    card = parse_card(json.loads(FIXTURE.read_text(encoding="utf-8")))
    assert card.spec == "chara_card_v3"
    assert len(card.data["character_book"]["entries"]) == 40
    book = fixture_book()
    assert len(book.entries) == 39  # entry 34 is disabled
    assert (book.scan_depth, book.token_budget, book.recursive_scanning, book.invalid_keys) == (2, 512, True, ())


def test_scripted_conversation_over_the_fixture_card() -> None:
    book = fixture_book()
    state: dict[str, Any] | None = None
    for turn, (expected_active, expected_skips) in enumerate(EXPECTED, 1):
        result = activate(book, messages=conversation(turn), turn=turn, state=state)
        state = json.loads(json.dumps(result.state))
        kinds = {"sd": "scan_depth"}
        assert ({int(i) for i in active(result)}, {int(k): v for k, v in skips(result).items()}) == (
            expected_active,
            {k: kinds.get(v, v) for k, v in expected_skips.items()},
        ), f"turn {turn}"
    assert state == {"version": 1, "kept": ["32"], "spent": ["31"]}


def test_scripted_conversation_reasons_on_turn_ten() -> None:
    book = fixture_book()
    state: dict[str, Any] = {"version": 1, "kept": ["32"], "spent": ["31"]}
    result = activate(book, messages=conversation(10), turn=10, state=state)
    reasons = {r["entry"]: r["reason"] for r in result.activated}
    assert reasons["0"] == {"kind": "constant"}
    assert reasons["32"] == {"kind": "decorator", "decorator": "@@keep_activate_after_match"}
    assert reasons["35"] == {"kind": "key", "key": "oath"}
    assert reasons["22"] == {"kind": "secondary_key", "key": "lamplighters", "secondary": [], "logic": "NOT_ANY"}
    assert reasons["23"] == {
        "kind": "recursion",
        "key": "Lantern Guild",
        "secondary": ["smugglers"],
        "logic": "AND_ANY",
        "via": "22",
    }
    assert reasons["13"]["kind"] == "recursion"
    assert reasons["13"]["via"] in ("3", "11", "35")
    # Sorted by insertion_order: the world (10) first, the style note (300) last.
    assert [i.entry_id for i in result.inserts][0] == "0"
    assert [i.entry_id for i in result.inserts][-1] == "2"
    assert result.inserts[-1].position == "at_depth"
    assert result.tokens == 479
