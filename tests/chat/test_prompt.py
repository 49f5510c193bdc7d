"""chat.prompt: the story string, macros, lore placement and the token budget. Pure functions, no database."""

import pytest

from chat.lorebook import LoreInsert, estimate_tokens
from chat.prompt import (
    MAIN_INSTRUCTION,
    MESSAGE_OVERHEAD_TOKENS,
    Character,
    Prompt,
    assemble_prompt,
    example_dialogue,
    expand_macros,
)
from llm.base import ChatMessage
from llm.demo import step_output
from personas.steps import STEPS, PipelineState, card_data, compile_card

BIG = 1_000_000
EXAMPLES_HEADER = (
    "Example dialogue, showing how {} speaks (these exchanges are examples, not part of this conversation):"
)


def system(text: str) -> ChatMessage:
    return ChatMessage("system", text)


def user(text: str) -> ChatMessage:
    return ChatMessage("user", text)


def assistant(text: str) -> ChatMessage:
    return ChatMessage("assistant", text)


def main_for(char: str, user_name: str = "User") -> str:
    """MAIN_INSTRUCTION with its two macros filled by hand, independently of expand_macros."""
    return MAIN_INSTRUCTION.replace("{{char}}", char).replace("{{user}}", user_name)


def lore(
    entry_id: str, content: str, position: str, *, depth: int = 0, role: str = "system", order: int = 100
) -> LoreInsert:
    return LoreInsert(
        entry_id=entry_id,
        name=entry_id,
        content=content,
        position=position,
        depth=depth,
        role=role,
        insertion_order=order,
    )


def cost(message: ChatMessage) -> int:
    return estimate_tokens(message.content) + MESSAGE_OVERHEAD_TOKENS


def prompt_tokens(messages: tuple[ChatMessage, ...]) -> int:
    return sum(cost(m) for m in messages)


# -- macros ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{char}} greets {{user}}.", "Mara greets Ash."),
        ("{{CHAR}}, {{Char}}, {{USER}}, {{uSeR}}", "Mara, Mara, Ash, Ash"),
        ("{{ char }} and {{  user}} and {{char  }}", "Mara and Ash and Mara"),
        ("<BOT> meets <USER>.", "Mara meets Ash."),
        ("<bot>, <Char>, <CHAR>, <user>", "Mara, Mara, Mara, Ash"),
        ("{{char}}{{char}}<BOT>", "MaraMaraMara"),
        ("Before {{original}} after", "Before  after"),
        ("{{ORIGINAL}}", ""),
        ("{{random:a,b}} and {{time}} stay; {{char}} does not", "{{random:a,b}} and {{time}} stay; Mara does not"),
        ("{char} {{char} {{ch ar}} <BOT >", "{char} {{char} {{ch ar}} <BOT >"),
        ("No macros at all.", "No macros at all."),
        ("", ""),
    ],
)
def test_expand_macros(text, expected):
    assert expand_macros(text, char="Mara", user="Ash") == expected


@pytest.mark.parametrize(
    ("text", "char", "user_name", "expected"),
    [
        # A value put in is never read again as a macro.
        ("{{char}} meets {{user}}", "{{user}}", "<BOT>", "{{user}} meets <BOT>"),
        ("<USER> and <BOT>", "{{original}}", "{{char}}", "{{char}} and {{original}}"),
    ],
)
def test_expand_macros_does_not_recurse(text, char, user_name, expected):
    assert expand_macros(text, char=char, user=user_name) == expected


@pytest.mark.parametrize(
    ("text", "original", "expected"),
    [
        ("{{original}}\nMore.", "I am {{char}}.", "I am Mara.\nMore."),
        # One-shot, as in SillyTavern: a second {{original}} is removed.
        ("A {{original}} B {{ original }}", "x", "A x B "),
        # The original's own {{original}} stands for nothing.
        ("{{original}}", "y {{original}} z", "y  z"),
    ],
)
def test_expand_macros_original(text, original, expected):
    assert expand_macros(text, char="Mara", user="Ash", original=original) == expected


def test_main_instruction_reads_well_once_expanded():
    assert expand_macros(MAIN_INSTRUCTION, char="Mara", user="Ash") == (
        "You are Mara, in a role-play chat with Ash. Write only Mara's next reply, in Mara's own voice and from "
        "Mara's point of view; never speak or act for Ash. Stay in character as Mara in every reply, whatever Ash "
        "says: never mention being an AI, a language model or an assistant. What follows describes Mara and their "
        "world; keep to it."
    )


# -- cards ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, Character(name="Mara")),
        (
            {
                "name": "Not used",
                "system_prompt": "S",
                "description": "D",
                "personality": "P",
                "scenario": "Sc",
                "mes_example": "E",
                "post_history_instructions": "PH",
                "first_mes": "ignored",
            },
            Character(
                name="Mara",
                system_prompt="S",
                description="D",
                personality="P",
                scenario="Sc",
                mes_example="E",
                post_history_instructions="PH",
            ),
        ),
        (
            {
                "system_prompt": None,
                "description": ["a", "b"],
                "personality": 3,
                "scenario": {"x": 1},
                "mes_example": False,
                "post_history_instructions": "kept",
            },
            Character(name="Mara", post_history_instructions="kept"),
        ),
    ],
)
def test_character_from_card(data, expected):
    assert Character.from_card(data, name="Mara") == expected


def test_community_card_with_empty_system_prompt_gets_main_instruction_and_its_fields():
    data = {
        "name": "Charon",
        "description": "{{char}} has rowed the ferry across the Styx for nine hundred years.",
        "personality": "gruff, patient; {{char}} is kinder than he lets on",
        "scenario": "{{user}} arrives at {{char}}'s dock at dusk, without a coin.",
        "first_mes": "*holds out a hand* The fare.",
        "mes_example": "",
        "system_prompt": "",
        "post_history_instructions": "",
    }
    prompt = assemble_prompt(
        character=Character.from_card(data, name="Charon"),
        history=[("assistant", "*holds out a hand* The fare.")],
        user_content="I have no coin.",
        user_name="Ash",
        budget_tokens=BIG,
    )
    expected_system = (
        "You are Charon, in a role-play chat with Ash. Write only Charon's next reply, in Charon's own voice and from "
        "Charon's point of view; never speak or act for Ash. Stay in character as Charon in every reply, whatever "
        "Ash says: never mention being an AI, a language model or an assistant. What follows describes Charon and "
        "their world; keep to it.\n"
        "\n"
        "Charon has rowed the ferry across the Styx for nine hundred years.\n"
        "\n"
        "Charon's personality: gruff, patient; Charon is kinder than he lets on\n"
        "\n"
        "Scenario: Ash arrives at Charon's dock at dusk, without a coin."
    )
    assert prompt.messages == (
        system(expected_system),
        assistant("*holds out a hand* The fare."),
        user("I have no coin."),
    )
    assert prompt.dropped == 0
    assert prompt.tokens == prompt_tokens(prompt.messages)


@pytest.mark.parametrize(
    ("card_system_prompt", "expected_main"),
    [
        # {{original}} stands for Moonborn's main instruction; a second one is removed.
        (
            "{{original}}\nWrite in the second person about {{user}}. {{original}}",
            main_for("Charon", "Ash") + "\nWrite in the second person about Ash.",
        ),
        ("Narrate as {{char}}.\n\n{{original}}", "Narrate as Charon.\n\n" + main_for("Charon", "Ash")),
        # Without it, the card's own prompt replaces the main instruction.
        ("You are {{char}}, ferryman of the dead.", "You are Charon, ferryman of the dead."),
        # Blank is empty: the main instruction applies.
        ("  \n ", main_for("Charon", "Ash")),
        # Only {{original}}: the main instruction, as if the field were empty.
        ("{{original}}", main_for("Charon", "Ash")),
    ],
)
def test_card_system_prompt_and_original(card_system_prompt, expected_main):
    character = Character(name="Charon", system_prompt=card_system_prompt, description="A ferryman.")
    prompt = assemble_prompt(character=character, history=(), user_content="Hi.", user_name="Ash", budget_tokens=BIG)
    assert prompt.messages == (system(expected_main + "\n\nA ferryman."), user("Hi."))


@pytest.mark.parametrize(
    ("fields", "expected_rest"),
    [
        ({}, ""),
        ({"description": "A ferryman."}, "\n\nA ferryman."),
        ({"personality": "gruff"}, "\n\nMara's personality: gruff"),
        ({"scenario": "The dock at dusk."}, "\n\nScenario: The dock at dusk."),
        ({"description": " \n", "personality": "\t", "scenario": " "}, ""),
        ({"description": "  A ferryman.\n"}, "\n\nA ferryman."),
        (
            {"mes_example": "<START>\n{{user}}: Hi\n{{char}}: Hello"},
            "\n\n" + EXAMPLES_HEADER.format("Mara") + "\nAsh: Hi\nMara: Hello",
        ),
        ({"post_history_instructions": "  "}, ""),
    ],
)
def test_missing_and_blank_fields_are_left_out(fields, expected_rest):
    prompt = assemble_prompt(
        character=Character(name="Mara", **fields),
        history=(),
        user_content="Hi.",
        user_name="Ash",
        budget_tokens=BIG,
    )
    assert prompt.messages == (system(main_for("Mara", "Ash") + expected_rest), user("Hi."))


@pytest.mark.parametrize(
    ("mes_example", "expected"),
    [
        (
            "<START>\nAsh: Hi\nMara: Hello\n<START>\nAsh: Bye\nMara: Farewell\n",
            "Ash: Hi\nMara: Hello\n***\nAsh: Bye\nMara: Farewell",
        ),
        ("Ash: Hi\nMara: Hello", "Ash: Hi\nMara: Hello"),
        ("Intro line\n<start>\nAsh: Hi\n<Start>\nMara: Hey", "Intro line\n***\nAsh: Hi\n***\nMara: Hey"),
        ("<START>\n<START>\n\n<START>\nMara: Only this", "Mara: Only this"),
        ("<START>", ""),
        ("", ""),
    ],
)
def test_example_dialogue_blocks(mes_example, expected):
    assert example_dialogue(mes_example) == expected


def test_example_dialogue_reaches_the_system_message_with_macros_expanded():
    character = Character(
        name="Mara",
        description="A lamplighter.",
        mes_example="<START>\n{{user}}: Who are you?\n{{char}}: <BOT>, who keeps the lamps.\n"
        "<START>\n<USER>: Are you an AI?\n{{char}}: *laughs* An AI? I'm Mara.",
    )
    prompt = assemble_prompt(character=character, history=(), user_content="Hi.", user_name="Ash", budget_tokens=BIG)
    assert prompt.messages[0] == system(
        main_for("Mara", "Ash") + "\n\nA lamplighter.\n\n" + EXAMPLES_HEADER.format("Mara") + "\n"
        "Ash: Who are you?\nMara: Mara, who keeps the lamps.\n***\nAsh: Are you an AI?\nMara: *laughs* An AI? I'm Mara."
    )


# -- lore -------------------------------------------------------------------------------------------


def test_story_string_order_with_lore_before_and_after_the_character():
    character = Character(
        name="Mara",
        system_prompt="Play {{char}}.",
        description="{{char}} lights the lamps of Vell.",
        personality="quiet",
        scenario="Night in Vell.",
        mes_example="{{user}}: Hi\n{{char}}: Evening.",
        post_history_instructions="Stay {{char}}.",
    )
    inserts = [
        lore("after-2", "The river floods in spring.", "after_char", order=20),
        lore("before-2", "The Guild taxes oil.", "before_char", order=50),
        lore("before-1", "Vell is a city of canals; {{user}} is new here.", "before_char", order=10),
        lore("after-1", "Lamps burn whale oil.", "after_char", order=5),
        lore("before-3", "Curfew rings at ten.", "before_char", order=50),
    ]
    prompt = assemble_prompt(
        character=character, history=(), user_content="Hi.", lore=inserts, user_name="Ash", budget_tokens=BIG
    )
    assert prompt.messages == (
        system(
            "Play Mara.\n"
            "\n"
            "Vell is a city of canals; Ash is new here.\nThe Guild taxes oil.\nCurfew rings at ten.\n"
            "\n"
            "Mara lights the lamps of Vell.\n"
            "\n"
            "Mara's personality: quiet\n"
            "\n"
            "Scenario: Night in Vell.\n"
            "\n"
            "Lamps burn whale oil.\nThe river floods in spring.\n"
            "\n" + EXAMPLES_HEADER.format("Mara") + "\nAsh: Hi\nMara: Evening."
        ),
        user("Hi."),
        system("Stay Mara."),
    )


HISTORY = [("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2")]
CONVERSATION = [user("u1"), assistant("a1"), user("u2"), assistant("a2"), user("u3")]


@pytest.mark.parametrize(
    ("inserts", "expected_after_system"),
    [
        ([lore("x", "L", "at_depth", depth=0)], [*CONVERSATION, system("L")]),
        ([lore("x", "L", "at_depth", depth=1)], [*CONVERSATION[:4], system("L"), CONVERSATION[4]]),
        ([lore("x", "L", "at_depth", depth=2, role="user")], [*CONVERSATION[:3], user("L"), *CONVERSATION[3:]]),
        ([lore("x", "L", "at_depth", depth=4, role="assistant")], [CONVERSATION[0], assistant("L"), *CONVERSATION[1:]]),
        # The whole conversation's length: before the first history message.
        ([lore("x", "L", "at_depth", depth=5)], [system("L"), *CONVERSATION]),
        # Deeper than the conversation: the same place.
        ([lore("x", "L", "at_depth", depth=40)], [system("L"), *CONVERSATION]),
        # Negative depth counts as 0.
        ([lore("x", "L", "at_depth", depth=-3)], [*CONVERSATION, system("L")]),
        # One depth: insertion order, then the order given.
        (
            [
                lore("b", "B", "at_depth", depth=2, order=9),
                lore("a", "A", "at_depth", depth=2, order=1, role="user"),
                lore("c", "C", "at_depth", depth=2, order=9),
            ],
            [*CONVERSATION[:3], user("A"), system("B"), system("C"), *CONVERSATION[3:]],
        ),
        # Several depths; the ones past the start keep their depth order (deepest first), whatever the insertion order.
        (
            [
                lore("d0", "D0", "at_depth", depth=0, order=1),
                lore("d7", "D7", "at_depth", depth=7, order=1),
                lore("d3", "D3", "at_depth", depth=3, order=1),
                lore("d9", "D9", "at_depth", depth=9, order=5),
            ],
            [system("D9"), system("D7"), *CONVERSATION[:2], system("D3"), *CONVERSATION[2:], system("D0")],
        ),
        # Each position in its place at once.
        (
            [lore("bc", "BC", "before_char"), lore("ac", "AC", "after_char"), lore("d1", "D1", "at_depth", depth=1)],
            [*CONVERSATION[:4], system("D1"), CONVERSATION[4]],
        ),
    ],
)
def test_at_depth_lore_placement(inserts, expected_after_system):
    prompt = assemble_prompt(
        character=Character(name="Mara", post_history_instructions="Stay in character."),
        history=HISTORY,
        user_content="u3",
        lore=inserts,
        budget_tokens=BIG,
    )
    assert prompt.messages[1:] == (*expected_after_system, system("Stay in character."))
    before_after = [i.content for i in inserts if i.position != "at_depth"]
    assert prompt.messages[0] == system("\n\n".join([main_for("Mara"), *before_after]))


def test_at_depth_lore_without_history():
    inserts = [lore("d0", "After {{user}}.", "at_depth", depth=0), lore("d1", "Before.", "at_depth", depth=1)]
    prompt = assemble_prompt(
        character=Character(name="Mara"), history=(), user_content="Hi.", lore=inserts, budget_tokens=BIG
    )
    assert prompt.messages == (system(main_for("Mara")), system("Before."), user("Hi."), system("After User."))


def test_unknown_lore_position_or_role_is_refused():
    for insert in (lore("x", "L", "in_chat"), lore("y", "L", "at_depth", role="narrator")):
        with pytest.raises(ValueError, match="unknown position"):
            assemble_prompt(
                character=Character(name="Mara"), history=(), user_content="Hi.", lore=[insert], budget_tokens=BIG
            )


# -- history and post-history instructions ---------------------------------------------------------


def test_history_roles_and_macros():
    prompt = assemble_prompt(
        character=Character(name="Mara"),
        history=[
            ("assistant", "*waves* Evening, {{user}}."),
            ("user", "Hi <BOT>."),
            ("system", "odd role"),
            ("narrator", "another"),
            ("assistant", "Well."),
        ],
        user_content="Tell me about {{char}}.",
        user_name="Ash",
        budget_tokens=BIG,
    )
    assert prompt.messages == (
        system(main_for("Mara", "Ash")),
        assistant("*waves* Evening, Ash."),
        user("Hi Mara."),
        user("odd role"),
        user("another"),
        assistant("Well."),
        user("Tell me about Mara."),
    )


def test_post_history_instructions_come_last_with_macros_expanded():
    prompt = assemble_prompt(
        character=Character(name="Mara", post_history_instructions="  Reply as {{char}} to {{user}}. {{original}}\n"),
        history=[("user", "u1"), ("assistant", "a1")],
        user_content="u2",
        lore=[lore("d0", "Lore at 0.", "at_depth", depth=0, role="user")],
        user_name="Ash",
        budget_tokens=BIG,
    )
    assert prompt.messages == (
        system(main_for("Mara", "Ash")),
        user("u1"),
        assistant("a1"),
        user("u2"),
        user("Lore at 0."),
        system("Reply as Mara to Ash."),
    )


# -- budget -----------------------------------------------------------------------------------------

CHARACTER = Character(name="Mara", description="A lamplighter.", post_history_instructions="Stay Mara.")
LONG_HISTORY = [
    ("user", "first " * 10),
    ("assistant", "second " * 20),
    ("user", "third " * 5),
    ("assistant", "fourth " * 30),
    ("user", "fifth " * 8),
    ("assistant", "sixth " * 12),
]
AT_DEPTH = [lore("d2", "The lamps are out tonight.", "at_depth", depth=2)]


def fixed_tokens() -> int:
    """The estimate of what is always kept: system message, new user message, at-depth lore, post-history."""
    return assemble_prompt(character=CHARACTER, history=(), user_content="now", lore=AT_DEPTH, budget_tokens=BIG).tokens


def newest_cost(count: int) -> int:
    return sum(cost(user(content)) for _, content in LONG_HISTORY[len(LONG_HISTORY) - count :])


@pytest.mark.parametrize(
    ("fits", "extra", "expected_kept"),
    [
        (6, 0, 6),
        (6, 10_000, 6),
        (5, 0, 5),
        (4, 0, 4),
        (3, 0, 3),
        (1, 0, 1),
        (0, 0, 0),
        # One token short of the newest three: two fit.
        (3, -1, 2),
        # One token short of the next older message: still four.
        (4, "next - 1", 4),
        # Less than the kept parts alone: no history at all.
        (0, -1, 0),
    ],
)
def test_budget_drops_the_oldest_history_first(fits, extra, expected_kept):
    if extra == "next - 1":
        extra = cost(user(LONG_HISTORY[len(LONG_HISTORY) - fits - 1][1])) - 1
    budget = fixed_tokens() + newest_cost(fits) + extra
    prompt = assemble_prompt(
        character=CHARACTER, history=LONG_HISTORY, user_content="now", lore=AT_DEPTH, budget_tokens=budget
    )
    kept = [assistant(c) if r == "assistant" else user(c) for r, c in LONG_HISTORY[len(LONG_HISTORY) - expected_kept :]]
    conversation = [*kept, user("now")]
    # The at-depth lore stays, two messages from the end of what is kept (or right after the system message).
    conversation.insert(max(0, len(conversation) - 2), system("The lamps are out tonight."))
    assert prompt.dropped == 6 - expected_kept
    assert prompt.messages == (system(main_for("Mara") + "\n\nA lamplighter."), *conversation, system("Stay Mara."))
    assert prompt.tokens == prompt_tokens(prompt.messages) == fixed_tokens() + newest_cost(expected_kept)
    assert (prompt.tokens <= budget) == (extra >= 0 or expected_kept > 0)


def test_budget_keeps_a_contiguous_newest_run_past_a_long_message():
    history = [("user", "old and short"), ("assistant", "x" * 4000), ("user", "recent"), ("assistant", "newest")]
    fixed = assemble_prompt(character=CHARACTER, history=(), user_content="now", budget_tokens=BIG).tokens
    # Room for every message but the long one: the short oldest one goes with it, never skipped over.
    budget = fixed + sum(cost(user(c)) for c in ("old and short", "recent", "newest"))
    prompt = assemble_prompt(character=CHARACTER, history=history, user_content="now", budget_tokens=budget)
    assert prompt.dropped == 2
    assert prompt.messages[1:] == (user("recent"), assistant("newest"), user("now"), system("Stay Mara."))


def test_budget_may_leave_an_assistant_message_first():
    history = [("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2")]
    fixed = assemble_prompt(character=CHARACTER, history=(), user_content="now", budget_tokens=BIG).tokens
    budget = fixed + cost(user("a1")) + cost(user("u2")) + cost(user("a2"))
    prompt = assemble_prompt(character=CHARACTER, history=history, user_content="now", budget_tokens=budget)
    assert prompt.dropped == 1
    assert prompt.messages[1:] == (assistant("a1"), user("u2"), assistant("a2"), user("now"), system("Stay Mara."))


def test_budget_smaller_than_the_kept_parts_drops_all_history_and_reports_the_overrun():
    big_lore = [lore("b", "lore " * 200, "before_char"), lore("d", "deep " * 100, "at_depth", depth=1)]
    prompt = assemble_prompt(character=CHARACTER, history=HISTORY, user_content="now", lore=big_lore, budget_tokens=50)
    assert prompt.dropped == 4
    assert prompt.messages[1:] == (system(("deep " * 100).strip()), user("now"), system("Stay Mara."))
    assert prompt.tokens == prompt_tokens(prompt.messages) > 50


def test_prompt_is_a_frozen_value():
    prompt = assemble_prompt(character=CHARACTER, history=(), user_content="now", budget_tokens=BIG)
    assert isinstance(prompt, Prompt) and isinstance(prompt.messages, tuple)
    with pytest.raises(AttributeError):
        prompt.dropped = 3  # type: ignore[misc]


# -- generated personas -----------------------------------------------------------------------------

PERSONA_PROMPT = "A retired lighthouse keeper on a windy northern island, named Agnes Toll"


def demo_state() -> PipelineState:
    state = PipelineState(prompt=PERSONA_PROMPT)
    for step in STEPS:
        context = {"prompt": PERSONA_PROMPT, "name_hint": "", "outputs": dict(state.outputs)}
        state = state.with_output(step, step_output(step, context))
    return state


def test_compiled_system_prompt_holds_only_the_instructions():
    state = demo_state()
    soul, psyche, voice = (state.outputs[s] for s in ("soul_draft", "psyche_profile", "voice_print"))
    name = soul["name"]
    assert compile_card(state)["system_prompt"] == "\n".join(
        [
            f"You are {name}. Stay in character as {name} in every reply; never mention being an AI or a model.",
            f"How you speak: register: {voice['register']}; sentences: {voice['sentence_length']}; "
            f"point of view: {voice['point_of_view']}; catchphrases: " + ", ".join(voice["catchphrases"]),
            "Always true: " + "; ".join(soul["invariants"]),
            "Never: " + "; ".join(psyche["never"]),
        ]
    )


def test_generated_persona_card_reaches_the_model_with_each_part_once():
    state = demo_state()
    card = card_data(state, compile_card(state))
    name = card["name"]
    prompt = assemble_prompt(
        character=Character.from_card(card, name=name),
        history=(),
        user_content="Who are you?",
        user_name="Ash",
        budget_tokens=BIG,
    )
    examples = card["mes_example"].replace("{{user}}", "Ash").replace("{{char}}", name)
    examples = "\n***\n".join(block.strip() for block in examples.split("<START>") if block.strip())
    assert prompt.messages == (
        system(
            "\n\n".join(
                [
                    card["system_prompt"],
                    card["description"],
                    f"{name}'s personality: {card['personality']}",
                    f"Scenario: {card['scenario']}",
                    EXAMPLES_HEADER.format(name) + "\n" + examples,
                ]
            )
        ),
        user("Who are you?"),
        system(card["post_history_instructions"]),
    )
    content = prompt.messages[0].content
    for part in (card["description"], card["personality"], card["scenario"], card["system_prompt"]):
        assert content.count(part) == 1, part
    assert content.count(f"You are {name}.") == 1


def test_literal_generated_card_gets_each_part_once():
    card = {
        "name": "Agnes Toll",
        "description": "Agnes Toll kept the Skerry light for forty years.",
        "personality": "dry, watchful, kind",
        "scenario": "Agnes Toll in the Skerry lighthouse.",
        "mes_example": "<START>\n{{user}}: Lonely out here?\n{{char}}: The gulls talk enough.",
        "system_prompt": (
            "You are Agnes Toll. Stay in character as Agnes Toll in every reply; never mention being an AI or a "
            "model.\nHow you speak: register: dry; sentences: short\nAlways true: Agnes kept the light.\n"
            "Never: break character"
        ),
        "post_history_instructions": "Reply as Agnes Toll, in Agnes Toll's own voice. Do not step out of character.",
    }
    prompt = assemble_prompt(
        character=Character.from_card(card, name="Agnes Toll"),
        history=[("assistant", "Mind the step.")],
        user_content="Evening.",
        budget_tokens=BIG,
    )
    assert prompt.messages == (
        system(
            "You are Agnes Toll. Stay in character as Agnes Toll in every reply; never mention being an AI or a "
            "model.\nHow you speak: register: dry; sentences: short\nAlways true: Agnes kept the light.\n"
            "Never: break character\n"
            "\n"
            "Agnes Toll kept the Skerry light for forty years.\n"
            "\n"
            "Agnes Toll's personality: dry, watchful, kind\n"
            "\n"
            "Scenario: Agnes Toll in the Skerry lighthouse.\n"
            "\n"
            "Example dialogue, showing how Agnes Toll speaks (these exchanges are examples, not part of this "
            "conversation):\n"
            "User: Lonely out here?\nAgnes Toll: The gulls talk enough."
        ),
        assistant("Mind the step."),
        user("Evening."),
        system("Reply as Agnes Toll, in Agnes Toll's own voice. Do not step out of character."),
    )


def test_a_name_with_start_in_it_does_not_split_the_examples():
    prompt = assemble_prompt(
        character=Character(name="<START> Mara", mes_example="<START>\n{{char}}: Hello.\n<START>\n{{user}}: Hi."),
        history=(),
        user_content="Hi.",
        user_name="Ash",
        budget_tokens=BIG,
    )
    assert prompt.messages[0] == system(
        main_for("<START> Mara", "Ash")
        + "\n\n"
        + EXAMPLES_HEADER.format("<START> Mara")
        + "\n<START> Mara: Hello.\n***\nAsh: Hi."
    )
