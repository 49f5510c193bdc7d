"""The six-step persona generation flow: an async generator of small typed events."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from django.conf import settings

from chat.drift import hard_rule_hits
from chat.prompt import Character, assemble_prompt
from chat.scoring import calibrate_persona, tier0
from llm.base import CompletionRequest, Provider, ProviderError, Usage, complete
from runs.db import db
from runs.events import Event

from . import services
from .steps import (
    CALIBRATION_TURNS,
    STEPS,
    PipelineState,
    build_messages,
    card_data,
    drift_anchor_texts,
    json_schema,
    parse_output,
)

logger = logging.getLogger(__name__)

# Calibration replies asked of the model at a time (all of them: the persona waits for the slowest), and the length
# each may take (a long-winded persona's replies run to ~600 tokens; 400 keep their register and cap the cost).
CALIBRATION_CONCURRENCY = 8
CALIBRATION_MAX_TOKENS = 400


@dataclass(frozen=True)
class PipelineInput:
    persona_id: str
    usage_id: int
    prompt: str
    name_hint: str


def _ms(since: float) -> int:
    return int((time.monotonic() - since) * 1000)


async def calibration_samples(
    job: PipelineInput, provider: Provider, state: PipelineState, anchors: list[str], usage: Usage
) -> list[str]:
    """The persona's own model, playing it, answers the calibration turns: in-character replies as real replies are
    written (their length, their format), which drift's null is fitted on.

    Each call is a chat reply with the compiled system prompt, counted in the generation's usage. A call that fails
    or breaks character (a hard rule fires) gives no sample: calibration is thinner, never wrong. At most
    ``CALIBRATION_CONCURRENCY`` calls at a time.
    """
    name = str(state.get("soul_draft", "name") or state.name_hint)
    # The character as a chat reply sees it: the same prompt assembly, so the samples are replies to the same prompt.
    character = Character.from_card(card_data(state, state.outputs["card_compile"]), name=name)
    turns = CALIBRATION_TURNS[: max(0, settings.MOONBORN_DRIFT_CALIBRATION_REPLIES)]
    gate = asyncio.Semaphore(CALIBRATION_CONCURRENCY)
    usages = [Usage() for _ in turns]

    async def ask(number: int, turn: str) -> str:
        request = CompletionRequest(
            messages=assemble_prompt(
                character=character,
                history=(),
                user_content=turn,
                budget_tokens=settings.MOONBORN_PROMPT_BUDGET_TOKENS,
            ).messages,
            purpose="drift_calibration",
            context={
                "persona": {"id": job.persona_id, "name": name, "lines": anchors, "catchphrases": []},
                "user_message": turn,
                "turn": number,
            },
            max_tokens=CALIBRATION_MAX_TOKENS,
        )
        async with gate:
            try:
                return await complete(provider, request, usages[number])
            except ProviderError as exc:
                logger.warning("persona %s: a calibration reply failed (%s)", job.persona_id, exc)
                return ""

    try:
        answers = await asyncio.gather(*(ask(number, turn) for number, turn in enumerate(turns)))
    finally:
        usage.prompt_tokens += sum(u.prompt_tokens for u in usages)
        usage.completion_tokens += sum(u.completion_tokens for u in usages)
    samples = [" ".join(a.split()) for a in answers]
    return [s for s in samples if s and not hard_rule_hits(s, name)]


async def generate_persona(job: PipelineInput, provider: Provider) -> AsyncIterator[Event]:
    """Run the six steps in order, persisting each, and end with `pipeline.completed`."""
    started = time.monotonic()
    usage = Usage()
    state = PipelineState(prompt=job.prompt, name_hint=job.name_hint)
    # The steps the model answered in prose: the character's voice is recovered from their quoted speech.
    prose_answers: list[str] = []
    finished = False
    stop_status, error = "failed", ""
    try:
        yield Event("pipeline.started", {"personaId": job.persona_id})
        for position, step in enumerate(STEPS):
            yield Event("step.started", {"step": step})
            step_started = time.monotonic()
            await db(
                services.persona_step_start,
                persona_id=job.persona_id,
                name=step,
                position=position,
                model=provider.model,
            )
            request = CompletionRequest(
                messages=build_messages(step, state),
                purpose=step,
                context={"prompt": state.prompt, "name_hint": state.name_hint, "outputs": dict(state.outputs)},
                json_schema=json_schema(step),
            )
            text = await complete(provider, request, usage)
            result = parse_output(step, text, state)
            state = state.with_output(step, result.output)
            if not result.parsed_json:
                prose_answers.append(text)
            if step == "card_compile":
                anchors = drift_anchor_texts(state, prose_answers=prose_answers)
                samples = await calibration_samples(job, provider, state, anchors, usage)
                calibrated = await asyncio.to_thread(calibrate_persona, tier0(), anchors=anchors, samples=samples)
            duration = _ms(step_started)
            # The name the upstream reported (e.g. a dated snapshot), else the configured one.
            model = usage.model or provider.model
            await db(
                services.persona_step_complete,
                persona_id=job.persona_id,
                name=step,
                output=result.output,
                raw_output=text,
                fallback_fields=list(result.fallback_fields),
                duration_ms=duration,
                model=model,
            )
            yield Event("step.completed", {"step": step, "durationMs": duration, "model": model})
        compiled = state.outputs["card_compile"]
        total = _ms(started)
        await db(
            services.persona_finish,
            persona_id=job.persona_id,
            card=card_data(state, compiled),
            system_prompt=compiled["system_prompt"],
            post_history_instructions=compiled["post_history_instructions"],
            drift_anchors=anchors,
            drift_samples=samples,
            anchor_vectors=calibrated.anchor_vectors,
            embedding_model=calibrated.embedding_model,
            drift_threshold=calibrated.threshold,
            calibration=calibrated.calibration,
            duration_ms=total,
            usage_id=job.usage_id,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
        )
        finished = True
        yield Event("pipeline.completed", {"personaId": job.persona_id, "durationMs": total})
    except asyncio.CancelledError:
        stop_status, error = "cancelled", "Cancelled."
        raise
    except ProviderError as exc:
        error = str(exc)
        raise
    except Exception as exc:
        error = f"Internal error: {type(exc).__name__}"
        raise
    finally:
        if not finished:
            await db(
                services.persona_stop,
                persona_id=job.persona_id,
                status=stop_status,
                error=error,
                usage_id=job.usage_id,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
            )
