"""What consulting the lorebook and assembling the prompt add before a reply's first token, in CPU.

Runs the reply flow's own steps (chat.lorebook.activate, chat.prompt.assemble_prompt, the two tool events encoded
as frames) in process, for the demo model's generated persona and for the 40-entry community card of the tests,
over a conversation of 40 messages (the history a reply reads), and prints the median and p99 per reply:

    .venv/bin/python bench/lore_cost.py
"""

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moonborn_site.settings")
import django

django.setup()

from chat.lorebook import activate, parse_book  # noqa: E402
from chat.prompt import Character, assemble_prompt  # noqa: E402
from llm.demo import step_output  # noqa: E402
from personas.steps import STEPS, PipelineState, card_data  # noqa: E402
from runs.sse import encode_event  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REPEATS = 2000
HISTORY = [
    ("user" if n % 2 == 0 else "assistant", f"Message {n}: the harbour, the ferry and the weather at dawn, again.")
    for n in range(40)
]


def generated_card() -> tuple[dict[str, object], str]:
    state = PipelineState(prompt="A ferry captain who distrusts weather apps", name_hint="")
    for step in STEPS:
        state = state.with_output(step, step_output(step, {"prompt": state.prompt, "outputs": state.outputs}))
    name = str(state.outputs["soul_draft"].get("name") or "Captain")
    return card_data(state, state.outputs["card_compile"]), name


def community_card() -> tuple[dict[str, object], str]:
    card = json.loads((ROOT / "tests" / "fixtures" / "cards" / "lore_40.json").read_text())
    data = card.get("data", card)
    return data, str(data["name"])


def cost(data: dict[str, object], name: str) -> list[float]:
    book = parse_book(data.get("character_book"))  # type: ignore[arg-type]
    assert book is not None
    character = Character.from_card(data, name=name)
    user = "Tell me about the lighthouse and the storm, and the ferry."
    samples = []
    for turn in range(REPEATS):
        started = time.perf_counter()
        result = activate(book, messages=(*HISTORY, ("user", user)), turn=turn + 1, state={})
        encode_event(2, "tool_start", {"callId": "call_x", "tool": "lorebook", "args": {"turn": turn + 1}})
        encode_event(
            3,
            "tool_end",
            {
                "callId": "call_x",
                "tool": "lorebook",
                "status": "ok",
                "result": {
                    "activated": list(result.activated),
                    "skipped": list(result.skipped),
                    "tokens": result.tokens,
                },
            },
        )
        assemble_prompt(
            character=character, history=HISTORY, user_content=user, lore=result.inserts, budget_tokens=6000
        )
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def main() -> None:
    for label, (data, name) in (("generated (demo)", generated_card()), ("community, 40 entries", community_card())):
        samples = sorted(cost(data, name))
        p50 = statistics.median(samples)
        p99 = samples[int(len(samples) * 0.99)]
        print(f"{label:24} p50 {p50:.3f} ms   p99 {p99:.3f} ms   ({REPEATS} replies, 40 history messages)")


if __name__ == "__main__":
    main()
