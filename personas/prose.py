"""What a model wrote when it answered a pipeline step in prose instead of JSON: pure functions, no database.

Small local models often ignore the request for a JSON object and write markdown, labelled lines, a short story
treatment or a JSON object they break off half way. What they wrote is the persona: its name, its description in
the model's own words, its voice (quoted speech, dialogue lines). :func:`read_prose` keeps all of that, as the
fields of the step it answers, and leaves to the caller's defaults only what the prose does not contain.

What is read, in order of trust:

1. ``"key": value`` pairs of a broken JSON object (unquoted keys too);
2. labelled lines (``Name: Mara``, ``**Voice:** dry``, ``- Likes: tea, rain``, ``1. Traits: …``), a label alone on
   its line followed by a list or a paragraph, and markdown sections (``## Backstory``) with their content;
3. for the fields prose carries without labels: the name the text gives the character ("Meet Mara Quillon",
   "Brannoc Hale has worked…"), the narrative paragraphs (description, backstory), quoted speech (greetings,
   catchphrases, example replies) and transcript lines (``User: …`` / ``Mara: …``) as example exchanges.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ProseReading", "label_key", "prose_name", "quoted_lines", "read_prose", "transcript_pairs"]

# Field name → the labels a model uses for it (compared after label_key()).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "name": ("name", "character_name", "full_name", "character"),
    "hook": ("hook", "one_line_hook", "logline", "tagline", "concept", "one_liner", "premise", "summary"),
    "archetype": ("archetype", "role", "type"),
    "setting": ("setting", "world", "location", "where"),
    "core_values": ("core_values", "values"),
    "want": ("want", "wants", "goal", "desire"),
    "need": ("need", "needs", "what_they_need"),
    "contradiction": ("contradiction", "central_contradiction", "inner_conflict", "conflict", "paradox"),
    "invariants": ("invariants", "always_true", "facts", "core_facts", "constants", "fixed_facts"),
    "backstory": ("backstory", "background", "history", "story"),
    "relationships": ("relationships", "people", "connections", "key_relationships"),
    "places": ("places", "locations", "key_places"),
    "unknowns": ("unknowns", "what_they_dont_know", "does_not_know", "doesnt_know", "blind_spots", "unknown"),
    "lorebook": ("lorebook", "lorebook_entries", "lore_entries", "lore", "world_info"),
    "traits": ("traits", "personality_traits", "key_traits"),
    "likes": ("likes", "loves"),
    "dislikes": ("dislikes", "hates", "pet_peeves"),
    "emotional_baseline": ("emotional_baseline", "baseline", "default_mood", "mood", "temperament"),
    "triggers": ("triggers", "emotional_triggers"),
    "moral_lines": ("moral_lines", "morals", "moral_code", "ethics", "lines_they_wont_cross"),
    "behaviour_rules": ("behaviour_rules", "behavior_rules", "rules", "behaviour", "behavior"),
    "never": ("never", "would_never", "things_they_would_never_do", "never_does", "hard_limits"),
    "register": ("register", "tone", "voice", "speech", "speaking_style", "style"),
    "vocabulary": ("vocabulary", "words", "characteristic_vocabulary", "diction", "word_choice"),
    "sentence_length": ("sentence_length", "sentences", "length", "rhythm"),
    "catchphrases": ("catchphrases", "catchphrase", "signature_phrases", "sayings", "verbal_tics", "phrases"),
    "formatting": ("formatting", "formatting_habits", "format"),
    "point_of_view": ("point_of_view", "pov", "perspective"),
    "first_message": ("first_message", "greeting", "opening", "opening_line", "first_line", "intro", "first_mes"),
    "alternate_greetings": ("alternate_greetings", "alternative_greetings", "other_greetings", "greetings"),
    "examples": ("examples", "example_exchanges", "example_dialogue", "sample_dialogue", "dialogue", "exchanges"),
    "description": ("description", "character_description", "who_they_are", "overview"),
    "personality": ("personality", "personality_summary"),
    "scenario": ("scenario", "situation", "the_scenario"),
    "system_prompt": ("system_prompt", "system", "instructions"),
    "post_history_instructions": ("post_history_instructions", "post_history", "reminder"),
    "tags": ("tags", "keywords"),
}

# Openers and sign-offs of chatty models, which are not the character.
_CHATTER = re.compile(
    r"^\s*(?:sure|certainly|of course|absolutely|okay|ok|alright|here(?:'s| is| are)|great|below|i hope|let me know|"
    r"feel free|this (?:character|persona)|note:)\b",
    re.IGNORECASE,
)
_LABEL_LINE = re.compile(
    r"^\s*(?:[-*•>]+\s*|\d{1,2}[.)]\s*|#{1,6}\s*)*(?:\*\*|__)?(?P<label>[A-Za-z][A-Za-z0-9 _'/()-]{0,40}?)(?:\*\*|__)?"
    r"\s*(?:\*\*|__)?\s*[:：]\s*(?:\*\*|__)?\s*(?P<value>.*?)\s*$"
)
_HEADING = re.compile(r"^\s*(?:#{1,6}\s+(?P<h1>.+?)|(?:\*\*|__)(?P<h2>[^*_]{1,60})(?:\*\*|__):?)\s*#*\s*$")
_BULLET = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)])\s+(?P<item>.+?)\s*$")
_QUOTE = re.compile(r"\"(?P<a>[^\"\n]{2,600}?)\"|\u201c(?P<b>[^\u201d\n]{2,600}?)\u201d")
_NAME_WORD = r"(?:[A-Z][\w'\u2019-]+|(?:Dr|Mr|Mrs|Ms|St|Capt|Prof)\.)"
_NAME = rf"(?P<name>{_NAME_WORD}(?:\s+(?:[A-Z][\w'\u2019-]+|de|van|von|da|del|of|the)){{0,3}})"
_NAME_INTRO = re.compile(
    rf"\b(?:[Mm]eet|[Ii]ntroducing|[Nn]amed|[Cc]alled|[Nn]ame is|[Nn]ame's|goes by|known as)\s+(?:the\s+)?{_NAME}"
)
_NAME_SUBJECT = re.compile(
    rf"^(?:\W*){_NAME}(?:,|\s+(?:is|was|has|had|runs|keeps|lives|works|works|spends|tends|sits|stands|grew|came))\b"
)
_NOT_NAME = frozenset(
    {
        "the", "a", "an", "he", "she", "they", "it", "this", "that", "there", "here", "sure", "certainly", "okay",
        "user", "you", "i", "we", "his", "her", "their", "when", "if", "as", "in", "on", "at", "for", "with",
        "name", "character", "persona", "hook", "setting", "description", "note", "example", "greeting", "first",
    }
)  # fmt: skip
# A sentence end, but not the dot of a title ("Dr. Adaeze Okafor").
_SENTENCE_BREAK = "".join(rf"(?<!\b{t}\.)" for t in ("Dr", "Mr", "Mrs", "Ms", "St", "Capt", "Prof")) + r"(?<=[.!?])\s+"
_USER_SPEAKERS = frozenset({"user", "you", "q", "player", "visitor", "guest", "customer", "traveler", "traveller"})


def label_key(label: str) -> str:
    """A label as a field-like key: ``"**One-line Hook**"`` → ``"one_line_hook"``."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower().replace("'", "")).strip("_")


def field_for_label(label: str, fields: Iterable[str]) -> str | None:
    """The field of ``fields`` a label names (its synonyms, or the label containing the field's name)."""
    key = label_key(label)
    if not key:
        return None
    wanted = list(fields)
    for name in wanted:
        if key == name or key in SYNONYMS.get(name, ()):
            return name
    for name in wanted:
        if name in key or any(len(s) > 4 and s in key for s in SYNONYMS.get(name, ())):
            return name
    return None


def _clean(text: str) -> str:
    """Markdown emphasis and bullets off, spaces collapsed, surrounding quotes off (``*actions*`` kept)."""
    text = re.sub(r"(\*\*|__|`)", "", text)
    text = re.sub(r"^\s*(?:[-•]|\*(?=\s))\s*", "", " ".join(text.split()))
    return _unquote(text.strip(" -•\t"))


def broken_json_pairs(text: str) -> dict[str, Any]:
    """``key: value`` pairs of a JSON object a model broke off or mangled (unquoted keys, a missing brace).

    String values are decoded as JSON strings; arrays as JSON when they parse, else as their quoted items.
    """
    found: dict[str, Any] = {}
    if "{" not in text:
        return found
    body = text[text.index("{") :]
    pair = re.compile(r"[\{,\n]\s*\"?(?P<key>[A-Za-z_][\w ]{0,40}?)\"?\s*:\s*(?P<value>\"(?:[^\"\\]|\\.)*\"|\[)")
    for match in pair.finditer(body):
        key = label_key(match.group("key"))
        raw = match.group("value")
        if raw == "[":
            start = match.end() - 1
            depth, end = 0, len(body)
            for i in range(start, len(body)):
                if body[i] == "[":
                    depth += 1
                elif body[i] == "]":
                    depth -= 1
                    if depth == 0:
                        end = i + 1
                        break
            chunk = body[start:end]
            try:
                value: Any = json.loads(chunk)
            except ValueError:
                value = [json.loads(q) for q in re.findall(r"\"(?:[^\"\\]|\\.)*\"", chunk)]
        else:
            try:
                value = json.loads(raw)
            except ValueError:
                continue
        found.setdefault(key, value)
    return found


@dataclass
class _Block:
    """A run of lines under one heading or label: its own text and the bullet items in it."""

    label: str
    value: str = ""
    lines: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)


def _blocks(text: str) -> list[_Block]:
    """The labelled lines and sections of ``text``, in order (a label's following lines belong to it)."""
    blocks: list[_Block] = []
    current: _Block | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        heading = _HEADING.match(line)
        if heading:
            current = _Block(label=(heading.group("h1") or heading.group("h2") or "").strip(" :*#"))
            blocks.append(current)
            continue
        labelled = _LABEL_LINE.match(line)
        if labelled and _is_label_line(line):
            value = labelled.group("value")
            is_item = bool(_BULLET.match(line))
            if is_item and current is not None and value and field_for_label(labelled.group("label"), SYNONYMS) is None:
                current.items.append(_clean(line.split(":", 1)[0]) + ": " + _clean(value))
                current.lines.append(line)
                continue
            current = _Block(label=labelled.group("label"), value=_clean(value))
            blocks.append(current)
            continue
        if current is None:
            continue
        bullet = _BULLET.match(line)
        if bullet:
            current.items.append(_clean(bullet.group("item")))
        current.lines.append(line)
    return blocks


def _is_label_line(line: str) -> bool:
    """``Label: value`` with a label of a few words (a sentence with a colon in it is narrative)."""
    match = _LABEL_LINE.match(line)
    return match is not None and len(match.group("label").split()) <= 5


def _paragraphs(text: str) -> list[str]:
    """The narrative paragraphs: not headings, labels, bullets, transcript lines or the model's chatter."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        lines = [
            ln
            for ln in para.splitlines()
            if ln.strip()
            and not _HEADING.match(ln)
            and not _is_label_line(ln)
            and not _BULLET.match(ln)
            and not ln.strip().startswith(("{", "}", "[", "]", "```"))
        ]
        joined = " ".join(" ".join(lines).split())
        if len(joined.split()) >= 8 and not _CHATTER.match(joined):
            out.append(joined)
    return out


def prose_name(text: str) -> str | None:
    """The name the prose gives the character ("Meet Mara Quillon", "Brannoc Hale has worked the forge…")."""
    for pattern in (_NAME_INTRO,):
        for match in pattern.finditer(text):
            name = _trim_name(match.group("name"))
            if name:
                return name
    for para in re.split(r"\n\s*\n|" + _SENTENCE_BREAK, text):
        subject = _NAME_SUBJECT.match(_clean(para))
        if subject:
            name = _trim_name(subject.group("name"))
            if name:
                return name
    return None


def _trim_name(name: str) -> str | None:
    words = name.split()
    while words and words[-1].lower() in {"of", "the", "de", "van", "von", "da", "del"}:
        words.pop()
    if not words or words[0].lower().strip(".") in _NOT_NAME:
        return None
    return " ".join(words)


def quoted_lines(text: str, *, min_words: int = 3) -> list[str]:
    """Quoted speech in ``text`` ("…" or “…”) of at least ``min_words`` words, in order, without repeats."""
    out: list[str] = []
    for match in _QUOTE.finditer(text):
        quote = " ".join((match.group("a") or match.group("b") or "").split())
        if len(quote.split()) >= min_words and quote not in out:
            out.append(quote)
    return out


def transcript_pairs(text: str, name: str = "") -> list[dict[str, str]]:
    """``User: …`` / ``<Character>: …`` lines as example exchanges (the character's lines joined per turn)."""
    speaker = re.compile(
        r"^\s*(?:[-*•>]\s*)?(?:\*\*|__)?(?P<who>[A-Z][\w .'\u2019-]{0,40}?)(?:\*\*|__)?\s*:\s*(?P<said>.+)$"
    )
    first = name.split()[0].lower() if name else ""
    pairs: list[dict[str, str]] = []
    user = ""
    for line in text.splitlines():
        match = speaker.match(line)
        if not match:
            continue
        who = match.group("who").strip().lower()
        said = _unquote(_clean(match.group("said")))
        if not said:
            continue
        if who in _USER_SPEAKERS or who.startswith("user"):
            user = said
        elif user and (not first or who == name.lower() or first in who.split() or who in {"char", "a", "character"}):
            pairs.append({"user": user, "reply": said})
            user = ""
    return pairs


_LORE_KEYS = re.compile(
    r"^(?:keys?|triggers?|keywords?)\s*:\s*(?P<keys>.+?)\s*(?:[\u2014\u2013;|]|--|\s-\s)\s*"
    r"(?:content|entry|text)\s*:\s*(?P<content>.+)$",
    re.IGNORECASE,
)


def _lore_entry(item: str) -> dict[str, Any] | None:
    """A lorebook entry from a list item: ``Keys: a, b — Content: …`` or ``a / b: …``."""
    match = _LORE_KEYS.match(item)
    if match:
        key_part, content = match.group("keys"), match.group("content")
    else:
        key_part, _, content = item.partition(":")
    keys = [k.strip(" *\"'") for k in re.split(r"[,/;]| or ", key_part) if k.strip(" *\"'")]
    return {"keys": keys, "content": content.strip()} if keys and content.strip() else None


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] in '"\u201c' and text[-1] in '"\u201d' and text.count('"') <= 2:
        return text[1:-1].strip()
    return text


def _narrative_pairs(text: str) -> list[dict[str, str]]:
    """Quoted replies told in narrative ("When asked whether he is a machine, he snorts: "…""): each quote with
    the words before it (in its sentence) as what prompted it."""
    pairs: list[dict[str, str]] = []
    for sentence in re.split(r"(?<=[.!?\"\u201d])\s+(?=[A-Z\"\u201c])", " ".join(text.split())):
        quotes = quoted_lines(sentence)
        if not quotes:
            continue
        before = _QUOTE.split(sentence, maxsplit=1)[0].strip(" ,:;-\u2014")
        for quote in quotes:
            pairs.append({"user": before or "(the user speaks)", "reply": quote})
    return pairs


# Words that show which field a narrative sentence is about ("He likes good charcoal, …", "He would never grovel,
# never boast, …"). A list field takes what follows the cue, split at commas and "and"; a str field the sentence,
# or for the fields in WHOLE_PARAGRAPH the paragraph from the cue on.
CUES: dict[str, tuple[str, ...]] = {
    "likes": ("likes", "loves", "enjoys"),
    "dislikes": ("dislikes", "hates", "can't stand", "cannot stand"),
    "never": ("would never", "will never"),
    "moral_lines": ("will not", "won't", "refuses to"),
    "triggers": ("sets him off", "sets her off", "sets them off", "what sets", "triggers"),
    "emotional_baseline": ("resting state", "baseline", "default mood", "usual mood"),
    "behaviour_rules": ("in how he behaves", "in how she behaves", "in how they behave", "as a rule"),
    "traits": ("nature is", "by nature", "temperament"),
    "register": ("speaks", "talks"),
    "vocabulary": ("his words", "her words", "their words", "vocabulary", "uses the"),
    "sentence_length": ("sentences are", "his sentences", "her sentences", "their sentences"),
    "point_of_view": ("first person", "third person", "point of view"),
    "formatting": ("asterisks", "formatting", "no lists", "written"),
    "personality": ("in personality", "personality"),
    "scenario": ("scenario",),
    "system_prompt": ("you are ",),
    "post_history_instructions": ("reminded", "after the conversation", "post-history", "post history"),
    "tags": ("tagged", "tags"),
    "want": ("wants", "longs for", "dreams of"),
    "need": ("needs", "what he needs", "what she needs"),
    "contradiction": ("contradiction", "and yet", "yet he", "yet she"),
    "setting": ("lives in", "lives on", "set in", "is the blacksmith of", "the keeper of"),
}
WHOLE_PARAGRAPH = frozenset({"personality", "scenario", "system_prompt", "post_history_instructions"})


def _cued(paragraphs: list[str], cues: tuple[str, ...], *, whole: bool, as_list: bool) -> str | list[str] | None:
    """The first narrative sentence (or paragraph) about a field, found by its cue words (see CUES)."""
    found: list[str] = []
    for para in paragraphs:
        sentences = [para] if whole else re.split(r"(?<=[.!?])\s+", para)
        for sentence in sentences:
            # Cue words inside quoted speech are the character talking, not the prose describing.
            low = _QUOTE.sub(lambda m: " " * len(m.group(0)), sentence).lower()
            for cue in cues:
                at = low.find(cue)
                if at < 0 or (at and low[at - 1].isalpha()):
                    continue
                if not as_list:
                    return sentence[at:].strip() if cue == "you are " else sentence.strip()
                rest = re.split(r"\s+but\s+|;|\u2014|,\s*which\b", sentence[at + len(cue) :])[0]
                rest = re.sub(r"^\s*(?:is|are|was|to|of)\s+", "", rest.strip(" :,."))
                items = [
                    re.sub(r"^(?:and|or|never|to)\s+", "", item.strip(" .")).strip()
                    for item in re.split(r",\s*(?:and\s+)?|\s+and\s+", rest)
                ]
                found += [i for i in items if i and len(i.split()) <= 12 and i not in found]
                break
        if found:
            return found
    return None


@dataclass(frozen=True)
class ProseReading:
    """What prose gave for a step's fields (raw values, coerced by the caller), and how each was found."""

    values: dict[str, Any]
    how: dict[str, str]


def read_prose(step: str, text: str, fields: Mapping[str, str], *, name: str = "") -> ProseReading:
    """Read the fields ``fields`` (name → kind) of ``step`` from a prose (or broken JSON) answer.

    ``name``: the character's name as known so far (transcript lines are matched against it).
    """
    values: dict[str, Any] = {}
    how: dict[str, str] = {}

    def put(key: str, value: Any, source: str) -> None:
        if key in fields and key not in values and value not in (None, "", [], {}):
            values[key] = value
            how[key] = source

    for key, value in broken_json_pairs(text).items():
        target = field_for_label(key, fields)
        if target is not None:
            put(target, value, "json")

    for block in _blocks(text):
        target = field_for_label(block.label, fields)
        if target is None:
            continue
        kind = fields[target]
        body = [ln for ln in block.lines if not _BULLET.match(ln)]
        paragraph = " ".join(_clean(ln) for ln in body)
        if kind in ("list", "pairs"):
            put(target, block.items or block.value or paragraph, "label")
        elif kind == "str":
            put(target, block.value or paragraph or "; ".join(block.items), "label")
        elif kind == "examples":
            section = "\n".join(block.lines)
            put(target, transcript_pairs(section, name) or _narrative_pairs(section), "label")
        elif kind == "lore":
            put(target, [e for e in (_lore_entry(i) for i in block.items or [block.value]) if e], "label")

    paragraphs = _paragraphs(text)
    for key, kind in fields.items():
        if key not in values and key in CUES and paragraphs:
            put(key, _cued(paragraphs, CUES[key], whole=key in WHOLE_PARAGRAPH, as_list=kind == "list"), "prose")
    if "name" in fields:
        put("name", prose_name(text), "prose")
    character = values.get("name") or name
    if "hook" in fields and paragraphs:
        put("hook", _first_sentence(paragraphs[0]), "prose")
    for key in ("backstory", "description"):
        if key in fields:
            put(key, " ".join(paragraphs)[:2000], "prose")
    if step == "dialogue_seed":
        pairs = transcript_pairs(text, character)
        quotes = [q for q in quoted_lines(text) if all(q != p["reply"] for p in pairs)]
        pairs = pairs or _narrative_pairs(text)
        replies = {p["reply"] for p in pairs}
        greetings = [q for q in quotes if q not in replies]
        put("first_message", greetings[0] if greetings else (pairs[0]["reply"] if pairs else None), "prose")
        put("alternate_greetings", greetings[1:4], "prose")
        put("examples", pairs, "prose")
    if step == "voice_print" and "catchphrases" in fields:
        put("catchphrases", [q for q in quoted_lines(text, min_words=2) if len(q.split()) <= 12][:6], "prose")
    return ProseReading(values=values, how=how)


def _first_sentence(text: str, limit: int = 200) -> str:
    sentence = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]
    return sentence[:limit].rstrip()


def voice_lines(texts: Iterable[str], *, user_lines: Iterable[str] = ()) -> list[str]:
    """Quoted speech from a persona's prose answers: the character's voice in the model's own words (what drift
    anchors are recovered from). Only quotes that read as something said (a sentence end inside), not quoted
    terms or beliefs ("guesses made by a computer")."""
    skip = {" ".join(u.split()) for u in user_lines}
    out: list[str] = []
    for text in texts:
        # The values of a broken JSON object are quoted too, and are not speech.
        values = {" ".join(str(v).split()) for v in broken_json_pairs(text).values() if isinstance(v, str)}
        for quote in quoted_lines(text, min_words=3):
            spoken = re.search(r"[.!?\u2026]['\u2019)*]*$", quote) and quote not in values
            if spoken and quote not in skip and quote not in out:
                out.append(quote)
    return out
