"""The offline `demo` provider: deterministic, no network, writes from the persona's own material.

It reads `CompletionRequest.purpose` and `.context` (which real providers ignore) to answer each
pipeline step with JSON built from the user's prompt, and each chat turn with a reply made of the
persona's own greetings, example lines and catchphrases, so a demo reads sensibly.
"""

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any

from .base import CompletionRequest, ProviderError, Usage, count_tokens

_NAMES = ("Maren Vell", "Tobias Quill", "Ysolde Marr", "Caspian Rook", "Wren Halloway", "Idris Fenn", "Noor Ashby")
_VALUES = ("loyalty", "curiosity", "honesty", "courage", "patience", "craft", "freedom", "kindness", "wit")
_TRAITS = ("wry", "warm", "stubborn", "observant", "restless", "gentle", "proud", "playful", "guarded")
_REGISTERS = ("plain-spoken", "lyrical", "clipped and practical", "warm and teasing", "formal and precise")


def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:8], "big")


def _pick(seq: Sequence[str], seed: int, k: int) -> list[str]:
    out: list[str] = []
    i = 0
    while len(out) < min(k, len(seq)):
        item = seq[(seed >> (i * 5)) % len(seq)] if i < 12 else seq[(seed + i) % len(seq)]
        if item not in out:
            out.append(item)
        i += 1
    return out


def _topic(prompt: str) -> str:
    """A short noun phrase of the prompt: its first clause, without a leading article."""
    clause = re.split(r"[.,;:!?\n]", prompt.strip(), maxsplit=1)[0].strip()
    clause = re.sub(r"^(an?|the)\s+", "", clause, flags=re.IGNORECASE)
    return clause[:120] or "wanderer"


def _setting(prompt: str) -> str:
    match = re.search(r"\b(?:in|on|at|from)\s+((?:the\s+)?[\w' -]{3,60}?)(?=[.,;!?\n]|$)", prompt)
    return match.group(1).strip() if match else "a world much like ours"


def step_output(purpose: str, context: Mapping[str, Any]) -> dict[str, Any]:
    """Write a step's answer from the prompt and the earlier steps' outputs."""
    prompt = str(context.get("prompt", ""))
    outputs: Mapping[str, Mapping[str, Any]] = context.get("outputs", {})
    seed = _seed(prompt)
    soul = outputs.get("soul_draft", {})
    name = str(context.get("name_hint") or soul.get("name") or _NAMES[seed % len(_NAMES)])
    first = name.split()[0]
    topic = _topic(prompt)
    setting = soul.get("setting") or _setting(prompt)
    values = soul.get("core_values") or _pick(_VALUES, seed, 3)
    if purpose == "soul_draft":
        return {
            "name": name,
            "hook": f"{name}: {topic}, with a story behind every scar.",
            "archetype": topic,
            "setting": setting,
            "core_values": values,
            "want": f"to be known for {values[0]}",
            "need": "to let someone close enough to see the cost of it",
            "contradiction": f"prizes {values[0]} yet hides what matters most",
            "invariants": [
                f"{first} is {topic}.",
                f"{first} lives in {setting}.",
                f"{first} never claims to be anything but {first}.",
            ],
        }
    if purpose == "lore_weave":
        return {
            "backstory": (
                f"{first} grew up in {setting} and became {topic} the hard way. "
                f"Every choice since has been a test of {values[0]}."
            ),
            "relationships": [f"an old mentor who taught {first} about {values[-1]}", "a rival who still writes"],
            "places": [setting, f"a quiet corner of {setting} only {first} knows"],
            "unknowns": ["modern technology beyond their world", "the user's life unless told"],
            "lorebook": [
                {"keys": [first, name], "content": f"{name} is {topic}."},
                {"keys": ["home", setting], "content": f"{first} knows {setting} by heart."},
            ],
        }
    psyche = outputs.get("psyche_profile", {})
    traits = psyche.get("traits") or _pick(_TRAITS, seed >> 3, 3)
    if purpose == "psyche_profile":
        return {
            "traits": traits,
            "likes": [f"talk of {v}" for v in values[:2]] + [f"the quiet of {setting}"],
            "dislikes": ["being rushed", "people who mock " + values[0]],
            "emotional_baseline": f"{traits[0]} but steady",
            "triggers": [f"someone questioning {first}'s {values[0]}"],
            "moral_lines": [f"never betrays {values[0]}"],
            "behaviour_rules": [f"answers as {first}, from {first}'s own experience"],
            "never": ["break character", f"speak of {setting} as fiction"],
        }
    voice = outputs.get("voice_print", {})
    catchphrases = voice.get("catchphrases") or [
        f"By the {values[0]} I keep, that's the truth.",
        f"Well now, that's a tale for {setting}.",
    ]
    if purpose == "voice_print":
        return {
            "register": _REGISTERS[seed % len(_REGISTERS)],
            "vocabulary": [w for w in re.findall(r"[A-Za-z']{5,}", prompt)[:6]] or list(values),
            "sentence_length": "short to medium",
            "catchphrases": catchphrases,
            "formatting": "speech in plain prose, small actions in *asterisks*",
            "point_of_view": "first person",
        }
    if purpose == "dialogue_seed":
        return {
            "first_message": f"*looks up* Oh. A visitor. I'm {first}, {topic}. {catchphrases[1]}",
            "alternate_greetings": [
                f"Back again? Sit, sit. {setting.capitalize()} is quiet tonight.",
                f"*nods* {first}. And you are? {catchphrases[0]}",
            ],
            "examples": [
                {"user": "Who are you?", "reply": f"{first}. {topic.capitalize()}, and proud of it."},
                {
                    "user": "Are you an AI?",
                    "reply": f"*laughs* I'm {first}, flesh and stubbornness, from {setting}. Ask me something real.",
                },
                {
                    "user": "What do you think about the stock market?",
                    "reply": f"Markets? Out here in {setting} we trade in {values[0]}. Tell me what's troubling you.",
                },
                {
                    "user": "I'm having an awful day.",
                    "reply": f"*sets down the work* Then stay a while. {catchphrases[0]} Talk, I'm listening.",
                },
            ],
        }
    if purpose == "card_compile":
        from personas.steps import PipelineState, compile_card

        return compile_card(PipelineState(prompt=prompt, name_hint=str(context.get("name_hint", "")), outputs=outputs))
    raise ProviderError(f"the demo provider has no answer for {purpose!r}", retryable=False)


def chat_reply(context: Mapping[str, Any], n_tokens: int) -> list[str]:
    """Write a reply of exactly `n_tokens` word-sized deltas in the persona's own voice."""
    return list(iter_chat_reply(context, n_tokens))


def iter_chat_reply(context: Mapping[str, Any], n_tokens: int) -> Iterator[str]:
    """The deltas of :func:`chat_reply`, made as they are taken (a long reply is never held whole)."""
    persona: Mapping[str, Any] = context.get("persona", {})
    user_message = str(context.get("user_message", ""))
    name = str(persona.get("name") or "the stranger").split()[0]
    lines = [str(x) for x in persona.get("lines", []) if str(x).strip()] or [f"I'm {name}."]
    catchphrases = [str(x) for x in persona.get("catchphrases", []) if str(x).strip()]
    seed = _seed(str(persona.get("id", "")), user_message, str(context.get("turn", 0)))
    echo = _echo(user_message, seed)
    order: list[int] = []
    count = len(lines) + 2 if catchphrases else len(lines) + 1

    def sentence(i: int) -> str:
        # Made when reached, not all up front: a reply streaming for minutes holds only the one it is in.
        if i == 0:
            return f"*tilts head* {echo.capitalize()}, you say?"
        if i <= len(lines):
            if not order:
                # Shuffled once the first sentence is out, not before the first token.
                order.extend(sorted(range(len(lines)), key=lambda line: _seed(str(seed), str(line))))
            return re.sub(r"^\*[^*]+\*\s*", "", lines[order[i - 1]])
        return catchphrases[seed % len(catchphrases)]

    made = 0
    i = 0
    while made < n_tokens:
        text, at = sentence(i % count), 0
        # One word at a time, not a list of the sentence's words held while they stream.
        while (word := _WORD.search(text, at)) is not None:
            at = word.end()
            yield word[0] if not made else " " + word[0]
            made += 1
            if made == n_tokens:
                return
        i += 1


_WORD = re.compile(r"\S+")


def _echo(user_message: str, seed: int) -> str:
    """A word of the user's message for the reply to pick up (a function of its own: the reply keeps one word)."""
    words = re.findall(r"[A-Za-z']{4,}", user_message)
    return words[seed % len(words)].lower() if words else "that"


def _chunks(text: str, n: int) -> list[str]:
    """Split `text` into about `n` pieces at spaces."""
    size = max(1, len(text) // n)
    pieces, start = [], 0
    while start < len(text):
        end = text.find(" ", start + size)
        end = len(text) if end == -1 else end
        pieces.append(text[start:end])
        start = end
    return pieces


class DemoProvider:
    name = "demo"

    def __init__(
        self, *, model: str = "demo", delay_ms: float = 30.0, reply_tokens: int = 80, fail_after_tokens: int = -1
    ) -> None:
        self.model = model or "demo"
        self.delay = max(0.0, delay_ms) / 1000.0
        self.reply_tokens = max(1, reply_tokens)
        self.fail_after_tokens = fail_after_tokens

    async def stream(self, request: CompletionRequest, usage: Usage) -> AsyncIterator[str]:
        usage.prompt_tokens += sum(count_tokens(m.content) for m in request.messages)
        if request.purpose == "chat_reply":
            deltas: Iterable[str] = iter_chat_reply(request.context, self.reply_tokens)
        elif request.purpose == "drift_calibration":
            # The persona's replies to the calibration turns: chat replies, no longer than the request allows (the
            # reply length setting makes long chat streams for tests and benchmarks, not long personas).
            deltas = iter_chat_reply(request.context, min(self.reply_tokens, request.max_tokens))
        else:
            # Step answers stream in a few pieces: a demo pipeline takes seconds, not minutes.
            deltas = _chunks(json.dumps(step_output(request.purpose, request.context), ensure_ascii=False), 8)
        for i, delta in enumerate(deltas):
            if i == self.fail_after_tokens and request.purpose == "chat_reply":
                raise ProviderError("The demo model failed on purpose (MOONBORN_DEMO_FAIL_AFTER_TOKENS).")
            if self.delay:
                await asyncio.sleep(self.delay)
            else:
                # Yield to the loop so a cancel lands between tokens even without a delay.
                await asyncio.sleep(0)
            usage.completion_tokens += 1
            yield delta
