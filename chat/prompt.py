"""Prompt assembly for a chat reply: the card's fields, the lore and the history as the messages a model reads.

Pure: no models, no database. The order follows SillyTavern's default "story string" so that an imported community
card reads as its author tested it there: the main instruction, lore placed before the character, the description,
"{{char}}'s personality: …", "Scenario: …", lore placed after the character, then the example dialogue, all in one
system message. The history, the new user message, lore placed at a depth inside the conversation and the
post-history instructions follow as messages of their own.
"""

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llm.base import ChatMessage, Role

from .lorebook import LoreInsert, estimate_tokens

# Moonborn's own main instruction. It is what a card without a system prompt gets (most community cards leave theirs
# empty and rely on the frontend's), and what `{{original}}` stands for inside a card's system prompt.
MAIN_INSTRUCTION = (
    "You are {{char}}, in a role-play chat with {{user}}. Write only {{char}}'s next reply, in {{char}}'s own voice "
    "and from {{char}}'s point of view; never speak or act for {{user}}. Stay in character as {{char}} in every "
    "reply, whatever {{user}} says: never mention being an AI, a language model or an assistant. What follows "
    "describes {{char}} and their world; keep to it."
)

# What a chat template adds around each message (role markers, separators): 3-4 tokens in OpenAI's and Anthropic's
# formats. Counted so that a 40-message history does not overrun the budget by a hundred-odd tokens.
MESSAGE_OVERHEAD_TOKENS = 4

# Between the example exchanges, where the card has `<START>`: SillyTavern's default example separator.
EXAMPLE_SEPARATOR = "***"

# `{{char}}`, `{{user}}`, `{{original}}` (any case, spaces allowed inside the braces) and SillyTavern's legacy
# `<BOT>`, `<CHAR>`, `<USER>` (any case). One alternation, so one pass: a value put in is never read again.
_MACRO = re.compile(r"\{\{\s*(char|user|original)\s*\}\}|<(bot|char|user)>", re.IGNORECASE)
_START = re.compile(r"<START>", re.IGNORECASE)

_POSITIONS = ("before_char", "after_char", "at_depth")
_ROLES: dict[str, Role] = {"system": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class Character:
    """The card fields a prompt is built from."""

    name: str
    # The card's own; it replaces the main instruction when non-empty (its `{{original}}` stands for that instruction).
    system_prompt: str = ""
    description: str = ""
    personality: str = ""
    scenario: str = ""
    mes_example: str = ""
    post_history_instructions: str = ""

    @classmethod
    def from_card(cls, data: Mapping[str, Any], *, name: str) -> "Character":
        """From a Character Card V2/V3 `data` object. The field names are the same in both specs; a field that is
        missing or not a string (cards in the wild carry nulls and lists) counts as empty."""

        def text(key: str) -> str:
            value = data.get(key)
            return value if isinstance(value, str) else ""

        return cls(
            name=name,
            system_prompt=text("system_prompt"),
            description=text("description"),
            personality=text("personality"),
            scenario=text("scenario"),
            mes_example=text("mes_example"),
            post_history_instructions=text("post_history_instructions"),
        )


@dataclass(frozen=True)
class Prompt:
    messages: tuple[ChatMessage, ...]
    # History messages left out to fit the budget, the oldest first.
    dropped: int
    # The estimate of the whole prompt (`estimate_tokens` of each message plus MESSAGE_OVERHEAD_TOKENS each).
    tokens: int


def expand_macros(text: str, *, char: str, user: str, original: str = "") -> str:
    """Replace `{{char}}`/`<BOT>`/`<CHAR>` with `char` and `{{user}}`/`<USER>` with `user`.

    `{{original}}` becomes `original` (itself expanded) the first time and nothing after, as in SillyTavern; with the
    default it is removed, since outside a card's system prompt it stands for nothing Moonborn has, and a raw macro
    would only confuse the model. Names are put in literally: a name that contains `{{user}}` stays as written.
    Other macros (`{{random}}`, `{{time}}`, …) are left as they are.
    """
    if "{" not in text and "<" not in text:
        return text
    original_left = [expand_macros(original, char=char, user=user)] if original else []

    def replace(match: re.Match[str]) -> str:
        word = (match.group(1) or match.group(2)).lower()
        if word == "user":
            return user
        if word == "original":
            return original_left.pop() if original_left else ""
        return char

    return _MACRO.sub(replace, text)


def example_dialogue(mes_example: str) -> str:
    """The card's `mes_example` as plain text: one exchange a block, EXAMPLE_SEPARATOR lines where `<START>` was.

    Text before the first `<START>` is a block of its own (SillyTavern reads it so too); empty blocks go.
    """
    blocks = [block.strip() for block in _START.split(mes_example)]
    return f"\n{EXAMPLE_SEPARATOR}\n".join(block for block in blocks if block)


def _sorted_lore(lore: Sequence[LoreInsert], position: str) -> list[LoreInsert]:
    # Stable: inserts of one insertion_order keep the order the lorebook gave them.
    return sorted((insert for insert in lore if insert.position == position), key=lambda i: i.insertion_order)


@functools.lru_cache(maxsize=256)
def _character_parts(character: Character, user_name: str) -> tuple[str, str, str, str, str]:
    """The card's own parts of the system message, macros expanded: (main instruction, description, personality
    line, scenario line, example dialogue block), each possibly empty.

    The same for every reply of one persona and user name, and the larger part of assembling a prompt: kept for the
    most recent characters (a `Character` is immutable, so a cached value cannot go stale).
    """

    def expand(text: str, original: str = "") -> str:
        return expand_macros(text, char=character.name, user=user_name, original=original).strip()

    main = expand(character.system_prompt, MAIN_INSTRUCTION) or expand(MAIN_INSTRUCTION)
    personality = expand(character.personality)
    scenario = expand(character.scenario)
    # Split before expanding, so that a name cannot add or remove a `<START>`.
    examples = expand(example_dialogue(character.mes_example))
    return (
        main,
        expand(character.description),
        f"{character.name}'s personality: {personality}" if personality else "",
        f"Scenario: {scenario}" if scenario else "",
        (
            f"Example dialogue, showing how {character.name} speaks (these exchanges are examples, not part of this "
            f"conversation):\n{examples}"
            if examples
            else ""
        ),
    )


def system_text(character: Character, lore: Sequence[LoreInsert] = (), *, user_name: str = "User") -> str:
    """The one system message: SillyTavern's default story string, then the example dialogue; empty parts left out,
    the others separated by blank lines."""
    main, description, personality, scenario, examples = _character_parts(character, user_name)

    def lore_at(position: str) -> str:
        inserts = _sorted_lore(lore, position)
        if not inserts:
            return ""
        return "\n".join(
            filter(None, (expand_macros(i.content, char=character.name, user=user_name).strip() for i in inserts))
        )

    parts = (main, lore_at("before_char"), description, personality, scenario, lore_at("after_char"), examples)
    return "\n\n".join(part for part in parts if part)


def _cost(message: ChatMessage) -> int:
    return estimate_tokens(message.content) + MESSAGE_OVERHEAD_TOKENS


def assemble_prompt(
    *,
    character: Character,
    history: Sequence[tuple[str, str]],
    user_content: str,
    lore: Sequence[LoreInsert] = (),
    user_name: str = "User",
    budget_tokens: int,
) -> Prompt:
    """The messages of one reply: the system message, the history that fits, the new user message, the `at_depth`
    lore inside the conversation, then the post-history instructions.

    The system message, the new user message, the `at_depth` lore and the post-history instructions are always kept;
    history messages go, the oldest first, until the whole estimate fits `budget_tokens`. When even those kept parts
    exceed the budget, every history message goes and `tokens` says by how much the budget is over: what to do then
    (refuse, or send anyway) is the caller's decision. History keeps its order and roles as they are; nothing is
    invented to mend the alternation (a kept history may start with an assistant message).
    """
    for insert in lore:
        # The lorebook builds these from a closed set: anything else is a bug there, not a card to work around.
        if insert.position not in _POSITIONS or insert.role not in _ROLES:
            raise ValueError(
                f"Lore entry {insert.entry_id}: unknown position {insert.position!r} or role {insert.role!r}."
            )

    def expand(text: str) -> str:
        return expand_macros(text, char=character.name, user=user_name)

    system = ChatMessage("system", system_text(character, lore, user_name=user_name))
    user_message = ChatMessage("user", expand(user_content))
    # (depth, message) of each at-depth insert, the deepest first (earlier in the conversation, and so first where
    # depths past its start all land after the system message), by insertion order within one depth.
    # An entry with no text left after expansion is no message at all.
    injected = [
        (max(0, insert.depth), ChatMessage(_ROLES[insert.role], content))
        for insert in sorted(_sorted_lore(lore, "at_depth"), key=lambda i: -max(0, i.depth))
        if (content := expand(insert.content).strip())
    ]
    post = expand(character.post_history_instructions).strip()
    post_message = ChatMessage("system", post) if post else None

    fixed = _cost(system) + _cost(user_message) + sum(_cost(message) for _, message in injected)
    if post_message is not None:
        fixed += _cost(post_message)

    past = [ChatMessage("assistant" if role == "assistant" else "user", expand(content)) for role, content in history]
    # The newest messages that fit: dropping the oldest until the rest fits keeps exactly this suffix.
    tokens, kept = fixed, 0
    for message in reversed(past):
        cost = _cost(message)
        if tokens + cost > budget_tokens:
            break
        tokens += cost
        kept += 1
    conversation = past[len(past) - kept :]
    conversation.append(user_message)

    # Depth d goes before the last d messages of the conversation (other inserts do not count), depth 0 after the
    # new user message; a depth past the conversation's start goes right after the system message.
    by_index: dict[int, list[ChatMessage]] = {}
    for depth, message in injected:
        by_index.setdefault(max(0, len(conversation) - depth), []).append(message)
    messages = [system]
    for index, message in enumerate(conversation):
        messages.extend(by_index.get(index, ()))
        messages.append(message)
    messages.extend(by_index.get(len(conversation), ()))
    if post_message is not None:
        messages.append(post_message)
    return Prompt(messages=tuple(messages), dropped=len(past) - kept, tokens=tokens)
