"""The chat reply flow: prompt → provider stream → token events → drift → `completed`."""

import asyncio
from collections.abc import AsyncIterator, Sequence

from llm.base import ChatMessage, CompletionRequest, Provider, ProviderError, Usage
from runs.db import db
from runs.events import Event

from . import services
from .progress import get_progress_writer
from .scoring import score_record, score_tier0_async, tier0
from .services import ReplyJob
from .text import ReplyText


def reply_messages(
    *, system_prompt: str, history: Sequence[tuple[str, str]], user_content: str, post_history_instructions: str
) -> tuple[ChatMessage, ...]:
    """System prompt, the history, the new message, then the post-history instructions."""
    messages = [ChatMessage("system", system_prompt)]
    for role, content in history:
        messages.append(ChatMessage("assistant" if role == "assistant" else "user", content))
    messages.append(ChatMessage("user", user_content))
    if post_history_instructions:
        messages.append(ChatMessage("system", post_history_instructions))
    return tuple(messages)


def build_reply_messages(job: ReplyJob) -> tuple[ChatMessage, ...]:
    return reply_messages(
        system_prompt=job.voice.system_prompt,
        history=job.history,
        user_content=job.user_content,
        post_history_instructions=job.voice.post_history_instructions,
    )


def reply_request(job: ReplyJob) -> CompletionRequest:
    return CompletionRequest(
        messages=build_reply_messages(job),
        purpose="chat_reply",
        context={
            "persona": {
                "id": job.persona_id,
                "name": job.persona_name,
                "lines": job.voice.anchor_texts,
                "catchphrases": job.voice.catchphrases,
            },
            "user_message": job.user_content,
            "turn": job.turn,
        },
        max_tokens=1024,
    )


async def generate_reply(job: ReplyJob, provider: Provider) -> AsyncIterator[Event]:
    """Stream one assistant reply; keep what was produced whatever ends it."""
    yield Event("message.started", {"messageId": job.assistant_message_id, "userMessageId": job.user_message_id})
    usage = Usage()
    text = ReplyText()
    finished = False
    stop_status, error = "failed", ""
    stream = provider.stream(reply_request(job), usage)
    # Partial content reaches the database on the progress writer's timer, never once per token.
    progress = get_progress_writer()
    progress.track(job.assistant_message_id, text)
    try:
        async for delta in stream:
            if not delta:
                continue
            text.append(delta)
            yield Event("token", {"delta": delta})
        content = text.text()
        # Tier 0: the static table, ~0.6 ms of CPU for a reply of 200 tokens, in the scoring thread (tier 1 scores
        # the reply again after `completed`, in chat.tier1).
        result = await score_tier0_async(
            content,
            anchor_vectors=job.voice.anchor_vectors,
            calibration=job.voice.calibration,
            persona_name=job.persona_name,
            other_centroids=job.other_centroids,
        )
        # Rounded once, so the event and the stored row carry the same figures.
        score, threshold = round(result.score, 4), round(result.threshold, 4)
        await db(
            services.message_complete,
            message_id=job.assistant_message_id,
            content=content,
            drift_score=score,
            drift_threshold=threshold,
            flagged=result.flagged,
            drift_components=score_record(result, job.voice.calibration, tier0()),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
        )
        finished = True
        yield Event(
            "completed",
            {
                "messageId": job.assistant_message_id,
                "driftScore": score,
                "driftThreshold": threshold,
                "drifted": result.flagged,
            },
        )
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
        progress.untrack(job.assistant_message_id)
        # Closing the provider's stream closes its upstream request: billing stops here.
        await stream.aclose()  # type: ignore[attr-defined]
        if not finished:
            await db(
                services.message_stop,
                message_id=job.assistant_message_id,
                content=text.text(),
                status=stop_status,
                error=error,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
            )
