"""The six-step persona generation flow: an async generator of small typed events."""

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from chat.scoring import calibrate_persona
from llm.base import CompletionRequest, Provider, ProviderError, Usage, complete
from runs.db import db
from runs.events import Event

from . import services
from .steps import STEPS, PipelineState, build_messages, card_data, drift_anchor_texts, json_schema, parse_output


@dataclass(frozen=True)
class PipelineInput:
    persona_id: str
    usage_id: int
    prompt: str
    name_hint: str


def _ms(since: float) -> int:
    return int((time.monotonic() - since) * 1000)


async def generate_persona(job: PipelineInput, provider: Provider) -> AsyncIterator[Event]:
    """Run the six steps in order, persisting each, and end with `pipeline.completed`."""
    started = time.monotonic()
    usage = Usage()
    state = PipelineState(prompt=job.prompt, name_hint=job.name_hint)
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
            duration = _ms(step_started)
            if step == "card_compile":
                anchors = drift_anchor_texts(state)
                calibrated = await asyncio.to_thread(calibrate_persona, anchors)
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
