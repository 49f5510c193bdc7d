"""The six pipeline steps as pure functions: a prompt builder and a parser for each.

Nothing here touches the database or the network. Parsers accept what real models return (JSON,
JSON in a code fence, or prose with `Key: value` lines) and never fail: a field the answer lacks is
filled from the earlier steps and recorded in `StepResult.fallback_fields`.
"""

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from llm.base import ChatMessage

from .prose import prose_name, read_prose, voice_lines

FieldKind = Literal["str", "list", "pairs", "lore", "examples"]

STEPS: tuple[str, ...] = (
    "soul_draft",
    "lore_weave",
    "psyche_profile",
    "voice_print",
    "dialogue_seed",
    "card_compile",
)

# Each step's fields and their shapes: the contract between builder, parser and demo provider.
STEP_FIELDS: dict[str, dict[str, FieldKind]] = {
    "soul_draft": {
        "name": "str",
        "hook": "str",
        "archetype": "str",
        "setting": "str",
        "core_values": "list",
        "want": "str",
        "need": "str",
        "contradiction": "str",
        "invariants": "list",
    },
    "lore_weave": {
        "backstory": "str",
        "relationships": "list",
        "places": "list",
        "unknowns": "list",
        "lorebook": "lore",
    },
    "psyche_profile": {
        "traits": "list",
        "likes": "list",
        "dislikes": "list",
        "emotional_baseline": "str",
        "triggers": "list",
        "moral_lines": "list",
        "behaviour_rules": "list",
        "never": "list",
    },
    "voice_print": {
        "register": "str",
        "vocabulary": "list",
        "sentence_length": "str",
        "catchphrases": "list",
        "formatting": "str",
        "point_of_view": "str",
    },
    "dialogue_seed": {
        "first_message": "str",
        "alternate_greetings": "list",
        "examples": "examples",
    },
    "card_compile": {
        "description": "str",
        "personality": "str",
        "scenario": "str",
        "system_prompt": "str",
        "post_history_instructions": "str",
        "tags": "list",
    },
}

STEP_GUIDANCE: dict[str, str] = {
    "soul_draft": (
        "Draft the soul of a character from the user's idea: a name, a one-line hook, an archetype, "
        "the setting, 3-5 core values, what they want versus what they need, their central "
        "contradiction, and 3-7 invariants (facts about them that must always hold)."
    ),
    "lore_weave": (
        "Weave the character's lore: a backstory paragraph, relationships, places, what the character "
        "does NOT know, and lorebook entries (each with trigger keys and content)."
    ),
    "psyche_profile": (
        "Profile the character's psyche: traits, likes, dislikes, emotional baseline, triggers, moral "
        "lines, behaviour rules and a list of things they would never do."
    ),
    "voice_print": (
        "Describe how the character speaks: register, characteristic vocabulary, sentence length, "
        "catchphrases, formatting habits and point of view."
    ),
    "dialogue_seed": (
        "Write the character's first message, 2-3 alternate greetings, and 4-8 example exchanges in "
        "their voice, including adversarial ones: the user asks 'are you an AI?', goes off-topic, "
        "or is upset. The character stays in character in every reply."
    ),
    "card_compile": (
        "Compile the character card: a description, a personality summary, the scenario, a system "
        "prompt of instructions only (who to play, how to speak, what always holds, what never to do; "
        "it must not repeat the description, personality or scenario, which the model is given "
        "separately), post-history instructions that restate the invariants after the chat history, "
        "and 3-6 tags."
    ),
}

# What the persona's model is asked, in character, when the persona is made: replies to these are drift's
# calibration samples (personas.pipeline.calibration_samples). Varied on purpose: a greeting, its life, its people,
# its limits, the AI question, an off-topic request, the user upset, the user asking about themself.
CALIBRATION_TURNS: tuple[str, ...] = (
    "Hello! Who am I talking to?",
    "What did you get up to today?",
    "Tell me about someone who matters to you.",
    "What's one thing you would never do, whatever happened?",
    "Wait, are you an AI?",
    "Can you help me write a cover letter for a marketing job?",
    "I've had an awful week and I don't really know why I'm telling you this.",
    "So what do you make of me so far?",
)

_KIND_HINT: dict[FieldKind, str] = {
    "str": '"..."',
    "list": '["...", "..."]',
    "pairs": '["...", "..."]',
    "lore": '[{"keys": ["..."], "content": "..."}]',
    "examples": '[{"user": "...", "reply": "..."}]',
}


@dataclass(frozen=True)
class StepResult:
    output: dict[str, Any]
    fallback_fields: tuple[str, ...] = ()
    parsed_json: bool = False


@dataclass(frozen=True)
class PipelineState:
    """What the earlier steps produced; the input of the next builder."""

    prompt: str
    name_hint: str = ""
    outputs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def with_output(self, step: str, output: Mapping[str, Any]) -> "PipelineState":
        return PipelineState(self.prompt, self.name_hint, {**self.outputs, step: dict(output)})

    def get(self, step: str, key: str, default: Any = None) -> Any:
        return self.outputs.get(step, {}).get(key, default)


def json_schema(step: str) -> dict[str, Any]:
    """The JSON schema of a step's answer, for providers with structured output."""
    props: dict[str, Any] = {}
    for name, kind in STEP_FIELDS[step].items():
        if kind == "str":
            props[name] = {"type": "string"}
        elif kind in ("list", "pairs"):
            props[name] = {"type": "array", "items": {"type": "string"}}
        elif kind == "lore":
            props[name] = {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "keys": {"type": "array", "items": {"type": "string"}},
                        "content": {"type": "string"},
                    },
                    "required": ["keys", "content"],
                },
            }
        else:
            props[name] = {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"user": {"type": "string"}, "reply": {"type": "string"}},
                    "required": ["user", "reply"],
                },
            }
    return {"type": "object", "properties": props, "required": list(props)}


def build_messages(step: str, state: PipelineState) -> tuple[ChatMessage, ...]:
    """Build the model messages for `step` from the user's prompt and the earlier steps."""
    shape = ", ".join(f'"{name}": {_KIND_HINT[kind]}' for name, kind in STEP_FIELDS[step].items())
    system = (
        "You are Moonborn's character designer. You create vivid, consistent characters for "
        "role-play chat. " + STEP_GUIDANCE[step] + f" Answer with one JSON object of this shape: {{{shape}}}. "
        "No commentary outside the JSON."
    )
    parts = [f"The user's idea for the character:\n{state.prompt}"]
    if state.name_hint:
        parts.append(f"The character's name must be: {state.name_hint}")
    for earlier in STEPS[: STEPS.index(step)]:
        if earlier in state.outputs:
            parts.append(f"{earlier} (already decided):\n{json.dumps(state.outputs[earlier], ensure_ascii=False)}")
    return (ChatMessage("system", system), ChatMessage("user", "\n\n".join(parts)))


# -- parsing -------------------------------------------------------------------------------------


def extract_json_object(text: str) -> dict[str, Any] | None:
    """Return the first JSON object in `text` (bare, fenced or embedded in prose), or None."""
    text = text.strip()
    fenced = re.search(r"```(?:json)?\s*(\{.*?\})\s*```", text, re.DOTALL)
    candidates = [fenced.group(1)] if fenced else []
    start = text.find("{")
    while start != -1:
        depth, in_string, escaped = 0, False, False
        for i in range(start, len(text)):
            ch = text[i]
            if in_string:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == '"':
                    in_string = False
            elif ch == '"':
                in_string = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    candidates.append(text[start : i + 1])
                    break
        start = text.find("{", start + 1) if not candidates else -1
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _as_str(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return "; ".join(v.strip() for v in value if v.strip()) or None
    return None


def _as_list(value: Any) -> list[str] | None:
    if isinstance(value, str) and value.strip():
        items = [p.strip(" -*•\t") for p in re.split(r"[;\n]|,\s(?=[A-Za-z])", value)]
        return [i for i in items if i] or None
    if isinstance(value, list):
        items = []
        for v in value:
            if isinstance(v, str) and v.strip():
                items.append(v.strip())
            elif isinstance(v, dict):
                text = ", ".join(f"{k}: {val}" for k, val in v.items() if isinstance(val, str) and val.strip())
                if text:
                    items.append(text)
        return items or None
    return None


def _as_lore(value: Any) -> list[dict[str, Any]] | None:
    if not isinstance(value, list):
        return None
    entries = []
    for v in value:
        if isinstance(v, dict):
            content = _as_str(v.get("content"))
            keys = _as_list(v.get("keys")) or _as_list(v.get("key"))
            if content and keys:
                entries.append({"keys": [str(k) for k in keys], "content": content})
    return entries or None


def _as_examples(value: Any) -> list[dict[str, str]] | None:
    if not isinstance(value, list):
        return None
    pairs = []
    for v in value:
        if isinstance(v, dict):
            user = _as_str(v.get("user") or v.get("input") or v.get("question"))
            reply = _as_str(v.get("reply") or v.get("response") or v.get("answer") or v.get("char"))
            if user and reply:
                pairs.append({"user": user, "reply": reply})
    return pairs or None


_COERCE: dict[FieldKind, Callable[[Any], Any]] = {
    "str": _as_str,
    "list": _as_list,
    "pairs": _as_list,
    "lore": _as_lore,
    "examples": _as_examples,
}


def parse_output(step: str, text: str, state: PipelineState) -> StepResult:
    """Parse a model's answer for `step`; fill what is missing from the earlier steps."""
    data = extract_json_object(text)
    parsed_json = data is not None
    if data is None:
        # Prose (or JSON broken off half way): keep what the model wrote, field by field.
        known_name = state.name_hint or state.get("soul_draft", "name") or ""
        data = read_prose(step, text, STEP_FIELDS[step], name=known_name).values
    normalised = {re.sub(r"[\s-]+", "_", str(k).strip().lower()): v for k, v in data.items()}
    parsed = {name: _COERCE[kind](normalised.get(name)) for name, kind in STEP_FIELDS[step].items()}
    # Defaults may build on what this same answer did give (a hook for the invariants, say).
    known = {name: value for name, value in parsed.items() if value is not None}
    defaults = fallback_values(step, state.with_output(step, known), raw_text=text)
    output: dict[str, Any] = {}
    fallbacks: list[str] = []
    for name, value in parsed.items():
        if value is None:
            value = defaults[name]
            fallbacks.append(name)
        output[name] = value
    if step == "soul_draft" and state.name_hint:
        output["name"] = state.name_hint
    return StepResult(output=output, fallback_fields=tuple(fallbacks), parsed_json=parsed_json)


def _first_sentence(text: str, limit: int = 160) -> str:
    sentence = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]
    return sentence[:limit].rstrip()


def _prose_paragraph(text: str) -> str:
    """The answer's prose without JSON or `Key: value` lines, for free-text fields."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not re.match(r"^\s*[\w *#-]{1,40}:\s", ln)]
    return " ".join(" ".join(lines).split())[:2000]


def fallback_values(step: str, state: PipelineState, *, raw_text: str = "") -> dict[str, Any]:
    """Sensible values for every field of `step`, derived only from the prompt and earlier steps."""
    name = (
        state.name_hint
        or state.get("soul_draft", "name")
        # A model that answered in prose usually still introduces the character by name.
        or prose_name(raw_text)
        or _name_from_prompt(state.prompt)
    )
    prose = _prose_paragraph(raw_text)
    hook = state.get("soul_draft", "hook") or _first_sentence(state.prompt)
    # "Mara is the last keeper…", or the hook as it is when it already starts with the name.
    invariant = hook if hook.startswith(name.split()[0]) else f"{name} is {hook[0].lower() + hook[1:]}"
    invariants = list(state.get("soul_draft", "invariants") or [invariant])
    values = list(state.get("soul_draft", "core_values") or ["honesty", "curiosity"])
    likes = list(state.get("psyche_profile", "likes") or values)
    catchphrases = list(state.get("voice_print", "catchphrases") or [])
    first = state.get("dialogue_seed", "first_message") or f"Hello. I'm {name}. {hook}"
    if step == "soul_draft":
        return {
            "name": name,
            "hook": hook,
            "archetype": "original character",
            "setting": "the world the user described",
            "core_values": values,
            "want": "to be understood",
            "need": "to stay true to themself",
            "contradiction": "shows less than they feel",
            "invariants": invariants,
        }
    if step == "lore_weave":
        return {
            "backstory": prose or state.prompt,
            "relationships": [],
            "places": [state.get("soul_draft", "setting") or "the world the user described"],
            "unknowns": ["anything beyond their own world and time"],
            "lorebook": [{"keys": [name], "content": hook}],
        }
    if step == "psyche_profile":
        return {
            "traits": values,
            "likes": values,
            "dislikes": ["being rushed"],
            "emotional_baseline": "steady",
            "triggers": [],
            "moral_lines": invariants,
            "behaviour_rules": [f"Always speak as {name}."],
            "never": ["break character", "claim to be an AI model"],
        }
    if step == "voice_print":
        return {
            "register": "conversational",
            "vocabulary": likes,
            "sentence_length": "medium",
            "catchphrases": catchphrases,
            "formatting": "plain prose, actions in asterisks",
            "point_of_view": "first person",
        }
    if step == "dialogue_seed":
        return {
            "first_message": first,
            "alternate_greetings": [f"Ah, it's you again. {hook}"],
            "examples": [{"user": "Who are you?", "reply": f"I'm {name}. {hook}"}],
        }
    return compile_card(state)


def _name_from_prompt(prompt: str) -> str:
    match = re.search(r"\b(?:named|called)\s+([A-Z][\w'-]+(?:\s+[A-Z][\w'-]+)?)", prompt)
    return match.group(1) if match else "The Stranger"


def compile_card(state: PipelineState) -> dict[str, Any]:
    """Compile the card fields deterministically from the five earlier steps."""
    soul = state.outputs.get("soul_draft", {})
    lore = state.outputs.get("lore_weave", {})
    psyche = state.outputs.get("psyche_profile", {})
    voice = state.outputs.get("voice_print", {})
    name = soul.get("name") or state.name_hint or "The Stranger"
    invariants = soul.get("invariants") or []
    never = psyche.get("never") or []
    description = " ".join(p for p in (soul.get("hook", ""), lore.get("backstory", "")) if p) or state.prompt
    personality = ", ".join(psyche.get("traits") or soul.get("core_values") or [])
    scenario = f"{name} in {soul.get('setting', 'their world')}."
    voice_line = "; ".join(
        p
        for p in (
            voice.get("register") and f"register: {voice['register']}",
            voice.get("sentence_length") and f"sentences: {voice['sentence_length']}",
            voice.get("point_of_view") and f"point of view: {voice['point_of_view']}",
            voice.get("catchphrases") and "catchphrases: " + ", ".join(voice["catchphrases"]),
        )
        if p
    )
    # Instructions only: the description, personality and scenario reach the model from the card's own fields
    # (chat.prompt.assemble_prompt), so repeating them here would put each in the prompt twice.
    system_prompt = "\n".join(
        line
        for line in (
            f"You are {name}. Stay in character as {name} in every reply; never mention being an AI or a model.",
            f"How you speak: {voice_line}" if voice_line else "",
            "Always true: " + "; ".join(invariants) if invariants else "",
            "Never: " + "; ".join(never) if never else "",
        )
        if line
    )
    post_history = (
        f"Reply as {name}, in {name}'s own voice. "
        + ("Remember: " + "; ".join(invariants) + ". " if invariants else "")
        + "Do not step out of character."
    )
    tags = [t for t in (soul.get("archetype"), soul.get("setting")) if t][:6] or ["original"]
    return {
        "description": description,
        "personality": personality,
        "scenario": scenario,
        "system_prompt": system_prompt,
        "post_history_instructions": post_history,
        "tags": tags,
    }


def drift_anchor_texts(state: PipelineState, *, prose_answers: Sequence[str] = ()) -> list[str]:
    """The texts a reply in character should sound like: greetings, example replies, catchphrases, and the quoted
    speech of the steps the model answered in prose (``prose_answers``: the character's voice in its own words)."""
    dialogue = state.outputs.get("dialogue_seed", {})
    voice = state.outputs.get("voice_print", {})
    examples = dialogue.get("examples") or []
    texts: list[str] = []
    for text in (
        [dialogue.get("first_message", "")]
        + list(dialogue.get("alternate_greetings") or [])
        + [ex.get("reply", "") for ex in examples]
        + list(voice.get("catchphrases") or [])
        + voice_lines(prose_answers, user_lines=[ex.get("user", "") for ex in examples])
    ):
        text = " ".join(str(text).split())
        if text and text not in texts:
            texts.append(text)
    # A line inside another (a catchphrase the examples already say) is not a second piece of evidence: as two
    # anchors it would make the persona look more uniform than it is.
    folded = [t.lower() for t in texts]
    kept = [t for t, f in zip(texts, folded, strict=True) if not any(f != o and f in o for o in folded)]
    return kept[:40]


def card_data(state: PipelineState, compiled: Mapping[str, Any]) -> dict[str, Any]:
    """The Character Card V2/V3 `data` fields of the finished persona."""
    soul = state.outputs.get("soul_draft", {})
    lore = state.outputs.get("lore_weave", {})
    dialogue = state.outputs.get("dialogue_seed", {})
    name = soul.get("name") or state.name_hint
    examples = "\n".join(
        f"<START>\n{{{{user}}}}: {ex['user']}\n{{{{char}}}}: {ex['reply']}" for ex in dialogue.get("examples") or []
    )
    return {
        "name": name,
        "nickname": "",
        "description": compiled["description"],
        "personality": compiled["personality"],
        "scenario": compiled["scenario"],
        "first_mes": dialogue.get("first_message", ""),
        "alternate_greetings": list(dialogue.get("alternate_greetings") or []),
        "mes_example": examples,
        "system_prompt": compiled["system_prompt"],
        "post_history_instructions": compiled["post_history_instructions"],
        "character_book": {
            "name": f"{name} lore",
            "entries": [
                {"keys": e["keys"], "content": e["content"], "enabled": True, "insertion_order": i, "id": i}
                for i, e in enumerate(lore.get("lorebook") or [])
            ],
        },
        "tags": list(compiled.get("tags") or []),
        "creator_notes": f"Generated by Moonborn from: {state.prompt[:500]}",
    }
