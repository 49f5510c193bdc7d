"""Reading what a model wrote in prose (personas/prose.py) and the pipeline's parsers on top of it. Pure, no DB."""

import json

import pytest

from bench.drift_set import FIXTURES
from personas.prose import broken_json_pairs, prose_name, quoted_lines, read_prose, transcript_pairs, voice_lines
from personas.steps import STEP_FIELDS, STEPS, PipelineState, card_data, drift_anchor_texts, parse_output


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Sure! Here's a character.\n\n**Name:** Mara Quillon\n**Hook:** keeps the light", None),  # labels: not here
        ("Meet Mara Quillon, the last keeper of Skerrow Head.", "Mara Quillon"),
        ("Brannoc Hale has worked the forge at Kettle Pass for thirty years.", "Brannoc Hale"),
        ("Dr. Adaeze Okafor runs the Greenhouse on Halcyon Station.", "Dr. Adaeze Okafor"),
        ("She is known as Old Nell of the marsh to everyone.", "Old Nell"),
        ("The keeper is a woman who talks to gulls.", None),
        ("Here is your character: a grumpy smith.", None),
    ],
)
def test_prose_name(text: str, name: str | None) -> None:
    assert prose_name(text) == name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('He says "Shut the door. Heat\'s getting out." and turns away.', ["Shut the door. Heat's getting out."]),
        ("\u201cMind the sky, not the screen,\u201d she says. \u201cOk.\u201d", ["Mind the sky, not the screen,"]),
        ('A "good enough" job and "the glass" are terms.', []),
        ('"One two three" and "One two three" again', ["One two three"]),
    ],
)
def test_quoted_lines(text: str, expected: list[str]) -> None:
    assert quoted_lines(text) == expected


def test_transcript_pairs_match_the_character_and_the_user() -> None:
    text = (
        "User: Are you an AI?\n"
        "Mara: A what? I keep the light.\n"
        "**User:** What's the weather doing?\n"
        '**Mara Quillon:** "*taps the glass* Falling."\n'
        "Narrator: the wind rises.\n"
        "You: Tea?\n"
        "Mara: Tea first."
    )
    assert transcript_pairs(text, "Mara Quillon") == [
        {"user": "Are you an AI?", "reply": "A what? I keep the light."},
        {"user": "What's the weather doing?", "reply": "*taps the glass* Falling."},
        {"user": "Tea?", "reply": "Tea first."},
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"name": "Adaeze", "hook": "Grows tomatoes in orbit", "values": ["care", "patience"', None),
        ('Here you go:\n{\n  name: "Adaeze",\n  "traits": ["warm", "chatty"],\n  "mood": "sunny\n', None),
        ("No JSON here at all.", {}),
    ],
)
def test_broken_json_pairs(text: str, expected: dict[str, object] | None) -> None:
    found = broken_json_pairs(text)
    if expected is not None:
        assert found == expected
        return
    assert found["name"] == "Adaeze"
    assert ("values" in found and found["values"] == ["care", "patience"]) or found["traits"] == ["warm", "chatty"]


def test_labelled_markdown_lists_sections_and_lore() -> None:
    text = (
        "Sure! Here's the lore.\n\n"
        "### Backstory\n\nMara grew up in the keeper's cottage and took over the light when her father died.\n\n"
        "### Relationships\n- **Tomas** (father) - her teacher.\n- **Lise** (niece) - studies the weather.\n\n"
        "### Lorebook Entries\n"
        "- **Keys:** lighthouse, lamp \u2014 **Content:** One of the last manned lights.\n"
        "- glass / barometer: Her father's brass barometer.\n\n"
        "Hope this helps!"
    )
    reading = read_prose("lore_weave", text, STEP_FIELDS["lore_weave"], name="Mara Quillon")
    assert reading.values["backstory"].startswith("Mara grew up in the keeper's cottage")
    assert reading.values["relationships"] == ["Tomas (father) - her teacher.", "Lise (niece) - studies the weather."]
    assert reading.values["lorebook"] == [
        {"keys": ["lighthouse", "lamp"], "content": "One of the last manned lights."},
        {"keys": ["glass", "barometer"], "content": "Her father's brass barometer."},
    ]
    assert "Hope this helps" not in reading.values["backstory"]
    assert reading.how["backstory"] == "label" and reading.how["lorebook"] == "label"


def test_narrative_answers_are_read_by_their_cue_words() -> None:
    text = (
        "Brannoc's nature is stubborn and gruff, but underneath it lives a patient man.\n\n"
        "He likes good charcoal, a clean weld and silence. He dislikes chatter and flattery.\n\n"
        "His resting state is a low, steady irritation. He would never grovel, never boast, and never let the "
        "fire go out."
    )
    values = read_prose("psyche_profile", text, STEP_FIELDS["psyche_profile"]).values
    assert values["traits"] == ["stubborn", "gruff"]
    assert values["likes"] == ["good charcoal", "a clean weld", "silence"]
    assert values["dislikes"] == ["chatter", "flattery"]
    assert values["emotional_baseline"] == "His resting state is a low, steady irritation."
    assert values["never"] == ["grovel", "boast", "let the fire go out"]


def test_dialogue_told_in_narrative_gives_greetings_and_examples() -> None:
    text = (
        'He greets strangers with "Shut the door. Heat\'s getting out." On a slow morning he says "Snow by dark. '
        'Get your business done." When someone asks whether he is a machine, he snorts: "Only machine here\'s the '
        'bellows."'
    )
    values = read_prose("dialogue_seed", text, STEP_FIELDS["dialogue_seed"], name="Brannoc Hale").values
    assert values["first_message"] == "Shut the door. Heat's getting out."
    assert values["examples"][-1] == {
        "user": "When someone asks whether he is a machine, he snorts",
        "reply": "Only machine here's the bellows.",
    }


def test_voice_lines_skip_json_values_terms_and_user_lines() -> None:
    texts = [
        '{"hook": "The sunniest botanist in orbit, who talks to her tomatoes.", "name": "Adaeze"',
        'She calls apps "guesses made by a computer in London". She says "Mind the sky, not the screen."',
        'User: "Is it going to rain today?"',
    ]
    assert voice_lines(texts, user_lines=["Is it going to rain today?"]) == ["Mind the sky, not the screen."]


def _labelled(source: str) -> list[dict[str, object]]:
    data = json.loads((FIXTURES / "labelled.json").read_text(encoding="utf-8"))
    return [p for p in data["personas"] if p["source"] == source]


@pytest.mark.parametrize("entry", _labelled("pipeline-prose"), ids=lambda e: str(e["name"]))
def test_a_persona_answered_in_prose_is_the_one_the_model_wrote(entry: dict[str, object]) -> None:
    """The three prose personas of the labelled set (markdown, pure narrative, broken JSON): what the pipeline
    keeps is the model's character, never a template around the user's prompt."""
    steps = entry["steps"]
    assert isinstance(steps, dict)
    state = PipelineState(prompt=str(entry["prompt"]))
    prose = []
    for step in STEPS:
        result = parse_output(step, steps[step], state)
        state = state.with_output(step, result.output)
        assert not result.parsed_json
        prose.append(steps[step])
        # The fields a persona is made of come from the prose, never from the defaults.
        kept = {"soul_draft": {"name", "hook"}, "dialogue_seed": {"first_message", "examples"}}.get(step, set())
        assert not kept & set(result.fallback_fields), (step, result.fallback_fields)
    card = card_data(state, state.outputs["card_compile"])
    assert card["name"] == entry["name"]
    assert str(entry["prompt"]) not in card["description"]
    assert len(card["description"].split()) >= 30
    assert str(entry["prompt"]) not in card["first_mes"]
    anchors = drift_anchor_texts(state, prose_answers=prose)
    assert len(anchors) >= 8
    # Every anchor is something the model wrote (quoted or in a dialogue line), not the prompt.
    every_answer = " ".join(" ".join(str(s).split()) for s in steps.values())
    for anchor in anchors:
        assert anchor in every_answer.replace("**", ""), anchor
        assert str(entry["prompt"]) not in anchor
