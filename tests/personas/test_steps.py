"""Prompt builders and parsers of the six steps: pure functions, no database."""

import json

import pytest

from llm.demo import step_output
from personas.steps import (
    STEP_FIELDS,
    STEPS,
    PipelineState,
    build_messages,
    compile_card,
    drift_anchor_texts,
    extract_json_object,
    json_schema,
    parse_output,
)

PROMPT = "A retired lighthouse keeper on a windy northern island, named Agnes Toll"


def full_state() -> PipelineState:
    state = PipelineState(prompt=PROMPT)
    for step in STEPS:
        context = {"prompt": PROMPT, "name_hint": "", "outputs": dict(state.outputs)}
        state = state.with_output(step, step_output(step, context))
    return state


def test_steps_are_the_six_of_the_contract_in_order():
    assert STEPS == ("soul_draft", "lore_weave", "psyche_profile", "voice_print", "dialogue_seed", "card_compile")
    assert set(STEP_FIELDS) == set(STEPS)


def test_builder_includes_prompt_and_only_earlier_steps():
    state = (
        PipelineState(prompt=PROMPT)
        .with_output("soul_draft", {"name": "Agnes"})
        .with_output("voice_print", {"register": "salty"})
    )
    system, user = build_messages("lore_weave", state)
    assert system.role == "system" and user.role == "user"
    assert '"backstory"' in system.content and '"lorebook"' in system.content
    assert PROMPT in user.content
    assert 'soul_draft (already decided):\n{"name": "Agnes"}' in user.content
    assert "voice_print" not in user.content


def test_builder_passes_the_name_hint():
    _, user = build_messages("soul_draft", PipelineState(prompt=PROMPT, name_hint="Agnes Toll"))
    assert "The character's name must be: Agnes Toll" in user.content


def test_json_schema_requires_every_field():
    schema = json_schema("dialogue_seed")
    assert schema["required"] == ["first_message", "alternate_greetings", "examples"]
    assert schema["properties"]["examples"]["items"]["required"] == ["user", "reply"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('Here you go:\n```json\n{"a": "}"}\n```\nEnjoy!', {"a": "}"}),
        ('Sure! {"a": {"b": [1, 2]}} hope that helps', {"a": {"b": [1, 2]}}),
        ("no json here", None),
        ("[1, 2, 3]", None),
        ('{"broken": ', None),
    ],
)
def test_extract_json_object(text, expected):
    assert extract_json_object(text) == expected


def test_parse_json_answer_keeps_every_field():
    answer = {
        "name": "Agnes Toll",
        "hook": "Keeps the light.",
        "archetype": "keeper",
        "setting": "Skerry Isle",
        "core_values": ["duty", "solitude"],
        "want": "peace",
        "need": "company",
        "contradiction": "lonely but proud",
        "invariants": ["Agnes keeps the light.", "Agnes is 71."],
    }
    result = parse_output("soul_draft", json.dumps(answer), PipelineState(prompt=PROMPT))
    assert result.output == answer
    assert result.fallback_fields == ()
    assert result.parsed_json is True


def test_parse_prose_answer_falls_back_and_records_it():
    prose = (
        "Name: Agnes Toll\n"
        "**Hook**: The last keeper of the Skerry light.\n"
        "- Core values: duty; solitude; honesty\n"
        "She is a stubborn woman who talks to gulls."
    )
    result = parse_output("soul_draft", prose, PipelineState(prompt=PROMPT))
    assert result.parsed_json is False
    assert result.output["name"] == "Agnes Toll"
    assert result.output["hook"] == "The last keeper of the Skerry light."
    assert result.output["core_values"] == ["duty", "solitude", "honesty"]
    assert result.fallback_fields == ("archetype", "setting", "want", "need", "contradiction", "invariants")
    assert result.output["invariants"] == ["Agnes Toll is the last keeper of the Skerry light."]


def test_parse_wrong_shapes_are_coerced_or_replaced():
    answer = {"first_message": ["Hello", "there"], "alternate_greetings": "Hi; Hey", "examples": [{"q": 1}]}
    state = PipelineState(prompt=PROMPT).with_output("soul_draft", {"name": "Agnes", "hook": "Keeps the light."})
    result = parse_output("dialogue_seed", json.dumps(answer), state)
    assert result.output["first_message"] == "Hello; there"
    assert result.output["alternate_greetings"] == ["Hi", "Hey"]
    assert result.output["examples"] == [{"user": "Who are you?", "reply": "I'm Agnes. Keeps the light."}]
    assert result.fallback_fields == ("examples",)


def test_every_step_parses_an_empty_answer_with_defaults():
    state = PipelineState(prompt=PROMPT)
    for step in STEPS:
        result = parse_output(step, "", state)
        assert set(result.output) == set(STEP_FIELDS[step])
        assert result.fallback_fields == tuple(STEP_FIELDS[step])
        state = state.with_output(step, result.output)
    assert state.outputs["card_compile"]["system_prompt"].startswith("You are Agnes Toll.")


def test_name_hint_wins_over_the_model():
    result = parse_output("soul_draft", '{"name": "Bob"}', PipelineState(prompt=PROMPT, name_hint="Agnes"))
    assert result.output["name"] == "Agnes"


def test_demo_answers_parse_without_fallbacks():
    state = PipelineState(prompt=PROMPT)
    for step in STEPS:
        context = {"prompt": PROMPT, "name_hint": "", "outputs": dict(state.outputs)}
        result = parse_output(step, json.dumps(step_output(step, context)), state)
        assert result.fallback_fields == (), step
        state = state.with_output(step, result.output)


def test_compiled_card_restates_invariants_after_history():
    state = full_state()
    card = compile_card(state)
    invariants = state.outputs["soul_draft"]["invariants"]
    assert card["system_prompt"].startswith(f"You are {state.outputs['soul_draft']['name']}.")
    for invariant in invariants:
        assert invariant in card["post_history_instructions"]


def test_anchor_texts_come_from_greetings_examples_and_catchphrases():
    state = full_state()
    anchors = drift_anchor_texts(state)
    dialogue = state.outputs["dialogue_seed"]
    assert anchors[0] == " ".join(dialogue["first_message"].split())
    lines = [dialogue["first_message"], *dialogue["alternate_greetings"]]
    lines += [ex["reply"] for ex in dialogue["examples"]] + state.outputs["voice_print"]["catchphrases"]
    lines = [" ".join(t.split()) for t in lines]
    # Every line, except one said inside another (a catchphrase an example line repeats): once is evidence enough.
    assert anchors == [t for t in dict.fromkeys(lines) if not any(t != o and t.lower() in o.lower() for o in lines)]
    assert len(set(anchors)) == len(anchors) and len(anchors) >= 6
