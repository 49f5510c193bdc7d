"""The offline demo provider: deterministic, word-sized tokens, usage, and an immediate stop."""

import asyncio
import json
import re
import time

import pytest

from chat.drift import hard_rule_hits
from chat.scoring import calibrate_persona, score_tier0, tier0
from llm.base import ChatMessage, CompletionRequest, ProviderError, Usage, complete
from llm.demo import SETTINGS, VOICES, DemoProvider, iter_chat_reply, setting_kind, step_output, voice_of
from personas.steps import CALIBRATION_TURNS, STEPS, PipelineState, card_data, drift_anchor_texts, parse_output

PERSONA = {
    "id": "per_test",
    "name": "Agnes Toll",
    "lines": ["*looks up* Oh. A visitor. I'm Agnes.", "The lamp never sleeps, and neither do I."],
    "catchphrases": ["Mind the rocks, dear."],
}


def chat_reply(context: dict[str, object], n_tokens: int) -> list[str]:
    return list(iter_chat_reply(context, n_tokens))


def reply_request(text: str = "Tell me about the storm") -> CompletionRequest:
    return CompletionRequest(
        messages=(ChatMessage("system", "You are Agnes."), ChatMessage("user", text)),
        purpose="chat_reply",
        context={"persona": PERSONA, "user_message": text, "turn": 0},
    )


def test_chat_reply_has_exactly_n_word_tokens_and_is_deterministic():
    tokens = chat_reply({"persona": PERSONA, "user_message": "Tell me about the storm", "turn": 0}, 30)
    assert len(tokens) == 30
    assert not tokens[0].startswith(" ")
    assert all(t.startswith(" ") and " " not in t[1:] for t in tokens[1:])
    assert tokens == chat_reply({"persona": PERSONA, "user_message": "Tell me about the storm", "turn": 0}, 30)
    assert tokens != chat_reply({"persona": PERSONA, "user_message": "Something else entirely", "turn": 0}, 30)


def test_chat_reply_speaks_from_the_personas_own_lines():
    # Two lines: each turn quotes one, the next turn the other (two replies in a row share no sentence).
    lines = ("The lamp never sleeps, and neither do I.", "Mind the rocks, dear.")
    texts = [
        "".join(chat_reply({"persona": PERSONA, "user_message": "Tell me about the storm", "turn": t}, 60))
        for t in (0, 1)
    ]
    assert [sum(line in text for line in lines) for text in texts] == [1, 1]
    assert {line for line in lines for text in texts if line in text} == set(lines)
    # And with the persona's own gesture.
    assert all(text.startswith("*looks up* ") for text in texts)


async def test_stream_reports_usage():
    provider = DemoProvider(delay_ms=0, reply_tokens=12)
    usage = Usage()
    text = await complete(provider, reply_request(), usage)
    assert len(text.split()) == 12
    assert usage.completion_tokens == 12
    assert usage.prompt_tokens > 0


async def test_stream_stops_at_once_when_cancelled():
    provider = DemoProvider(delay_ms=50, reply_tokens=1000)
    usage = Usage()
    received: list[str] = []

    async def consume() -> None:
        async for delta in provider.stream(reply_request(), usage):
            received.append(delta)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.28)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 0.05
    assert 3 <= len(received) <= 6
    frozen = usage.completion_tokens
    assert frozen == len(received)
    await asyncio.sleep(0.12)
    assert usage.completion_tokens == frozen


async def test_fault_injection_fails_after_n_tokens():
    provider = DemoProvider(delay_ms=0, reply_tokens=20, fail_after_tokens=3)
    usage = Usage()
    received: list[str] = []

    async def consume() -> None:
        async for delta in provider.stream(reply_request(), usage):
            received.append(delta)

    with pytest.raises(ProviderError, match="failed on purpose"):
        await consume()
    assert len(received) == 3
    assert usage.completion_tokens == 3


async def test_unknown_purpose_is_a_provider_error():
    provider = DemoProvider(delay_ms=0)
    request = CompletionRequest(messages=(ChatMessage("user", "x"),), purpose="poetry")
    with pytest.raises(ProviderError):
        await complete(provider, request, Usage())


# -- personas and replies worth a first look (issue 26) ----------------------------------------------------------------

TEN_PROMPTS = (
    "A sardonic clockmaker in 1890s Prague who secretly builds automatons",
    "A retired lighthouse keeper on a windy northern island",
    "A ferry captain who distrusts weather apps",
    "A bored android bartender on a space station orbiting Jupiter",
    "A grumpy, kind-hearted blacksmith in a dwarven mountain hold",
    "An elderly tea master in Edo-period Kyoto who can read fortunes in tea leaves",
    "A young caravan guide at the edge of the Sahara",
    "A disgraced Viking skald. He still composes verses about the raid he fled.",
    "Sheriff of a dust-blown Arizona town",
    "A hard-boiled detective in 1947 Los Angeles with a dead partner's badge",
)
# What a chat opens with: the pipeline's own calibration turns, then a few more.
MESSAGES = (*CALIBRATION_TURNS, "Tell me about the storm last night.", "Go on.", "What do you think of my brother?")


def generated(prompt: str, name_hint: str = "") -> PipelineState:
    state = PipelineState(prompt=prompt, name_hint=name_hint)
    for step in STEPS:
        context = {"prompt": prompt, "name_hint": name_hint, "outputs": dict(state.outputs)}
        state = state.with_output(step, step_output(step, context))
    return state


def persona_context(state: PipelineState, persona_id: str = "per_demo") -> dict[str, object]:
    """The persona as a chat reply's context carries it (chat.replies.reply_request)."""
    return {
        "id": persona_id,
        "name": state.outputs["soul_draft"]["name"],
        "lines": tuple(drift_anchor_texts(state)),
        "catchphrases": tuple(state.outputs["voice_print"]["catchphrases"]),
    }


def reply(persona: dict[str, object], message: str, turn: int, n_tokens: int = 80) -> str:
    return "".join(chat_reply({"persona": persona, "user_message": message, "turn": turn}, n_tokens))


def five_grams(text: str) -> list[str]:
    words = re.findall(r"[\w'-]+", text.lower())
    return [" ".join(words[i : i + 5]) for i in range(len(words) - 4)]


def whole_sentences(text: str) -> set[str]:
    """The reply's sentences, without the last one when the token count cut it short."""
    pieces = re.split(r"(?<=[.!?])\s+", text.strip())
    if pieces and not pieces[-1].endswith((".", "!", "?")):
        pieces.pop()
    return set(pieces)


def test_ten_prompts_give_at_least_eight_names():
    names = [generated(prompt).outputs["soul_draft"]["name"] for prompt in TEN_PROMPTS]
    assert len(set(names)) >= 8, names


def test_prompts_of_one_setting_still_give_different_names():
    prompts = [
        "A retired lighthouse keeper on a windy northern island",
        "A lighthouse keeper who talks to seals",
        "A ferry captain who distrusts weather apps",
        "A fisherwoman who hates the sea",
        "A harbour master with a wooden leg",
    ]
    assert len({generated(prompt).outputs["soul_draft"]["name"] for prompt in prompts}) >= 4


@pytest.mark.parametrize(
    ("prompt", "kind"),
    [
        ("A sardonic clockmaker in 1890s Prague who secretly builds automatons", "czech"),
        ("A retired lighthouse keeper on a windy northern island", "coastal"),
        ("A bored android bartender on a space station orbiting Jupiter", "space"),
        ("An elderly tea master in Edo-period Kyoto", "japan"),
        ("A young caravan guide at the edge of the Sahara", "desert"),
        ("A shy librarian", "general"),
    ],
)
def test_names_fit_the_prompts_setting(prompt, kind):
    setting = SETTINGS[kind]
    assert setting_kind(prompt) == kind
    given, *family = generated(prompt).outputs["soul_draft"]["name"].split()
    assert given in setting.female + setting.male
    assert " ".join(family) in {form for pair in setting.surnames for form in pair}


def test_a_name_the_prompt_or_the_user_gives_wins():
    assert generated("A lighthouse keeper, named Agnes Toll").outputs["soul_draft"]["name"] == "Agnes Toll"
    state = generated("A lighthouse keeper", name_hint="Old Brann")
    assert state.outputs["soul_draft"]["name"] == "Old Brann"
    assert state.outputs["dialogue_seed"]["first_message"].count("Brann") == 1


def test_the_description_paraphrases_the_prompt():
    state = generated(TEN_PROMPTS[0])
    card = card_data(state, state.outputs["card_compile"])
    assert card["name"] == "Jaroslav Hrubý"
    assert card["description"] == (
        "Jaroslav Hrubý is a clockmaker from 1890s Prague, sardonic by temperament, with a secret kept close. "
        "Jaroslav grew up in Prague, and it shaped him more than any teacher did. "
        "People who know him call him sardonic, and he does not argue the point. "
        "What few people know is that he builds automatons. "
        "Everything he does comes back, in the end, to wit."
    )


@pytest.mark.parametrize("prompt", TEN_PROMPTS)
def test_no_description_repeats_a_phrase_of_the_prompt(prompt):
    state = generated(prompt)
    description = card_data(state, state.outputs["card_compile"])["description"]
    said = five_grams(description)
    assert all(said.count(phrase) <= 1 for phrase in five_grams(prompt)), description
    # Whole sentences, each capitalised and closed: no "became sardonic clockmaker in …" fragments.
    sentences = re.split(r"(?<=\.)\s+", description)
    assert all(s[:1].isupper() and s.endswith(".") for s in sentences), description
    assert " ".join(prompt.rstrip(".").lower().split()[1:]) not in description.lower()


@pytest.mark.parametrize("prompt", TEN_PROMPTS)
def test_no_reply_repeats_a_phrase_of_the_prompt(prompt):
    persona = persona_context(generated(prompt))
    phrases = five_grams(prompt)
    for turn, message in enumerate(MESSAGES):
        said = five_grams(reply(persona, message, turn))
        assert all(said.count(phrase) <= 1 for phrase in phrases), (message, said)


@pytest.mark.parametrize("prompt", TEN_PROMPTS)
def test_replies_to_two_messages_in_a_row_share_no_sentence(prompt):
    persona = persona_context(generated(prompt))
    replies = [whole_sentences(reply(persona, message, turn)) for turn, message in enumerate(MESSAGES)]
    for earlier, later in zip(replies, replies[1:], strict=False):
        assert not earlier & later, earlier & later


def test_the_same_message_on_the_next_turn_gets_another_reply():
    persona = persona_context(generated(TEN_PROMPTS[1]))
    assert not whole_sentences(reply(persona, "Go on.", 4)) & whole_sentences(reply(persona, "Go on.", 5))


def test_a_reply_takes_up_the_message_and_asks_back():
    persona = persona_context(generated(TEN_PROMPTS[0]))
    text = reply(persona, "Tell me about the storm last night.", 0)
    assert text.startswith("*")  # one of the persona's own gestures
    assert "storm" in text and "?" in text
    # The user's words come back, not echoed over and over.
    assert 1 <= text.count("storm") <= 2
    assert reply(persona, "What do you think of my brother?", 1).count("your brother") >= 1


def test_a_reply_never_takes_up_talk_of_ai():
    persona = persona_context(generated(TEN_PROMPTS[2]))
    text = reply(persona, "Wait, are you an AI language model?", 3, n_tokens=200)
    assert not re.search(r"\b(AI|language model)\b", text)


@pytest.mark.parametrize("voice", VOICES, ids=[v.register for v in VOICES])
def test_greetings_examples_and_replies_speak_in_the_voice_print_register(voice):
    state = PipelineState(prompt=TEN_PROMPTS[1])
    for step in STEPS:
        output = step_output(step, {"prompt": state.prompt, "outputs": dict(state.outputs)})
        if step == "voice_print":
            output = {**output, "register": voice.register}
        state = state.with_output(step, output)
    dialogue = state.outputs["dialogue_seed"]
    # The greeting is this voice's, its slots filled.
    shape = re.escape(voice.first_message[1:]).replace(r"\{", "{").replace(r"\}", "}")
    assert re.fullmatch(r"\*" + re.sub(r"\{\w+\}", ".+", shape), dialogue["first_message"]), dialogue["first_message"]
    assert voice_of([dialogue["first_message"]]) is voice
    assert voice_of([example["reply"] for example in dialogue["examples"]]) is voice
    persona = persona_context(state)
    assert voice_of(persona["lines"]) is voice
    text = reply(persona, "Go on.", 2, n_tokens=200)
    templates = [*voice.openers["statement"], *voice.topics, *voice.questions, *voice.musings]
    assert sum(t in text for t in templates if "{" not in t) >= 3, text


@pytest.mark.parametrize("voice", VOICES, ids=[v.register for v in VOICES])
def test_every_sentence_of_a_voice_is_its_own(voice):
    """What the no-shared-sentence guarantee rests on: two templates of a voice (chat or persona) never say the same
    sentence, so different templates make different sentences."""
    templates = [
        *voice.catchphrases,
        voice.first_message,
        *voice.alternates,
        *voice.examples,
        *(t for kind in voice.openers.values() for t in kind),
        *voice.topics,
        *voice.questions,
        *voice.musings,
    ]
    sentences = [s for t in templates for s in re.split(r"(?<=[.!?])\s+", re.sub(r"\*[^*]+\*\s*", "", t))]
    # A sentence that is only a slot ("{Np}.") is what the message or the persona makes it.
    repeated = {s for s in sentences if sentences.count(s) > 1 and not re.fullmatch(r"\{\w+\}\W*", s)}
    assert not repeated


def test_the_lorebook_keeps_its_two_entries_and_their_keys():
    state = generated("A ferry captain who distrusts weather apps")
    soul, lore = state.outputs["soul_draft"], state.outputs["lore_weave"]
    first = soul["name"].split()[0]
    assert [entry["keys"] for entry in lore["lorebook"]] == [[first, soul["name"]], ["home", soul["setting"]]]
    assert all(len(entry["content"].split()) <= 12 for entry in lore["lorebook"])


@pytest.mark.parametrize(
    "prompt",
    ["", "x", "named Bob", "A NAMELESS THING", "Ein Uhrmacher in Prag", "a", "The", "🌊 sea witch 🌊", "A " * 300],
)
def test_any_prompt_gives_every_step_an_answer_that_parses(prompt):
    state = PipelineState(prompt=prompt)
    for step in STEPS:
        answer = json.dumps(step_output(step, {"prompt": prompt, "name_hint": "", "outputs": dict(state.outputs)}))
        result = parse_output(step, answer, state)
        assert result.parsed_json and result.fallback_fields == (), (step, answer)
        state = state.with_output(step, result.output)
    assert state.outputs["soul_draft"]["name"].strip()


def test_replies_stay_in_character_for_drift():
    """Calibrated as the pipeline calibrates a persona (its anchors, and demo replies to the calibration turns), the
    demo's chat replies are neither flagged by tier 0 nor caught by a hard rule."""
    for prompt in TEN_PROMPTS[:3]:
        state = generated(prompt)
        persona = persona_context(state)
        name = str(persona["name"])
        anchors = list(persona["lines"])  # type: ignore[call-overload]
        calibration_persona = {**persona, "lines": anchors, "catchphrases": []}
        samples = [reply(calibration_persona, turn, n) for n, turn in enumerate(CALIBRATION_TURNS)]
        calibrated = calibrate_persona(tier0(), anchors=anchors, samples=samples)
        for turn, message in enumerate(MESSAGES):
            text = reply(persona, message, turn)
            assert not hard_rule_hits(text, name), text
            scored = score_tier0(
                text, anchor_vectors=calibrated.anchor_vectors, calibration=calibrated.calibration, persona_name=name
            )
            assert not scored.flagged, text
