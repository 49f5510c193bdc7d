"""The chat reply flow: lorebook (`tool_start`/`tool_end`) → prompt → provider stream → tokens → drift →
`completed`."""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings

from llm.base import CompletionRequest, Provider, ProviderError, Usage
from runs.db import db
from runs.events import Event

from . import services
from .lorebook import Book, LoreResult, activate
from .progress import get_progress_writer
from .prompt import Prompt, assemble_prompt
from .scoring import score_record, score_tier0_async, tier0
from .services import ReplyJob, ReplyStop
from .stops import get_stop_writer
from .text import ReplyText


def reply_request(job: ReplyJob, prompt: Prompt) -> CompletionRequest:
    return CompletionRequest(
        messages=prompt.messages,
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


def lore_record(result: LoreResult | None, prompt: Prompt) -> dict[str, Any]:
    """What the reply's row keeps of its prompt: the lore consulted (and its state for the next turn) and how many
    history messages the budget left out."""
    if result is None:
        return {"historyDropped": prompt.dropped} if prompt.dropped else {}
    return {
        "activated": list(result.activated),
        "skipped": list(result.skipped),
        "tokens": result.tokens,
        "state": result.state,
        "historyDropped": prompt.dropped,
    }


async def consult_lorebook(job: ReplyJob, book: Book) -> AsyncIterator[Event | LoreResult]:
    """The `lorebook` tool: `tool_start`, the activation (pure, well under a millisecond), `tool_end`, then the
    result itself for the flow to build its prompt from."""
    # One lorebook call per reply: the reply's own id names it, unique without drawing another.
    call_id = "call_" + job.assistant_message_id.partition("_")[2]
    yield Event("tool_start", {"callId": call_id, "tool": "lorebook", "args": {"turn": job.turn + 1}})
    started = time.perf_counter()
    # A book whose decorators remember earlier turns needs the state the last reply left (one read, before the
    # first token, only for such books).
    state = await db(services.lore_state, session_id=job.session_id, before_index=job.turn * 2) if book.stateful else {}
    messages = (*job.history, ("user", job.user_content))
    result = activate(book, messages=messages, turn=job.turn + 1, state=state)
    yield Event(
        "tool_end",
        {
            "callId": call_id,
            "tool": "lorebook",
            "status": "ok",
            "result": {"activated": list(result.activated), "skipped": list(result.skipped), "tokens": result.tokens},
            "durationMs": round((time.perf_counter() - started) * 1000, 2),
        },
    )
    yield result


async def generate_reply(job: ReplyJob, provider: Provider) -> AsyncIterator[Event]:
    """Stream one assistant reply; keep what was produced whatever ends it."""
    yield Event("message.started", {"messageId": job.assistant_message_id, "userMessageId": job.user_message_id})
    lore: LoreResult | None = None
    if job.voice.book is not None:
        async for item in consult_lorebook(job, job.voice.book):
            if isinstance(item, Event):
                yield item
            else:
                lore = item
    prompt = assemble_prompt(
        character=job.voice.character,
        history=job.history,
        user_content=job.user_content,
        lore=lore.inserts if lore is not None else (),
        budget_tokens=settings.MOONBORN_PROMPT_BUDGET_TOKENS,
    )
    record = lore_record(lore, prompt)
    usage = Usage()
    text = ReplyText()
    finished = False
    stop_status, error = "failed", ""
    stream = provider.stream(reply_request(job, prompt), usage)
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
            lore=record,
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
            # Stored with the ends of the other replies ending now (a server's shutdown cancels them all at once).
            await get_stop_writer().stop(
                ReplyStop(
                    message_id=job.assistant_message_id,
                    content=text.text(),
                    status=stop_status,
                    error=error,
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                    lore=record,
                )
            )
