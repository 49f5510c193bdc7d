"""The progress writer: partial replies reach the database on a timer, in one write, only while streaming."""

import asyncio

import pytest
from asgiref.sync import sync_to_async

from chat.models import Message
from chat.progress import ProgressWriter
from chat.text import ReplyText
from tests.factories import MessageFactory

pytestmark = pytest.mark.django_db(transaction=True)


async def contents(*messages: Message) -> list[str]:
    return [(await Message.objects.aget(pk=m.pk)).content for m in messages]


async def test_a_flush_saves_the_replies_that_grew_and_never_touches_a_finished_one() -> None:
    make = sync_to_async(MessageFactory)
    growing = await make(status=Message.Status.STREAMING, content="")
    quiet = await make(status=Message.Status.STREAMING, content="")
    finished = await make(status=Message.Status.COMPLETED, content="The final text.")
    writer = ProgressWriter(interval=3600)
    texts = {m.pk: ReplyText() for m in (growing, quiet, finished)}
    for message_id, text in texts.items():
        writer.track(message_id, text)

    assert await writer.flush() == 0
    texts[growing.pk].append("Aye")
    texts[growing.pk].append(", the")
    texts[finished.pk].append("late")
    assert await writer.flush() == 2
    assert await contents(growing, quiet, finished) == ["Aye, the", "", "The final text."]

    assert await writer.flush() == 0  # nothing grew since
    writer.untrack(growing.pk)
    texts[growing.pk].append(" lamp")
    assert await writer.flush() == 0
    assert await contents(growing) == ["Aye, the"]


async def test_the_timer_saves_without_being_asked_and_stops_when_no_reply_streams() -> None:
    message = await sync_to_async(MessageFactory)(status=Message.Status.STREAMING, content="")
    writer = ProgressWriter(interval=0.05)
    text = ReplyText()
    writer.track(message.pk, text)
    text.append("Storm's coming.")
    # Wait for the timer's write (reading the table meanwhile would race it on the shared in-memory test database).
    for _ in range(100):
        await asyncio.sleep(0.05)
        if writer.saved:
            break
    assert writer.saved == 1
    assert await contents(message) == ["Storm's coming."]
    writer.untrack(message.pk)
    task = writer._task
    assert task is not None
    await asyncio.wait_for(task, timeout=2)
    assert task.done() and task.exception() is None


def test_reply_text_gives_back_every_delta_in_order_from_any_offset() -> None:
    text = ReplyText()
    # Multi-byte characters, a lone surrogate (valid in a model's JSON string) and an empty delta.
    deltas = [" w1", " café", " ☾😀", "", " \ud800x", " end."] * 20
    for number, delta in enumerate(deltas, start=1):
        text.append(delta)
        assert text.deltas == number
        if number % 7 == 0:  # read now and then, as the progress writer does
            assert text.text() == "".join(deltas[:number])
    whole = "".join(deltas)
    assert text.text() == whole
    assert text.size() == len(whole.encode("utf-8", "surrogatepass"))
    head = "".join(deltas[:9])
    assert text.text(len(head.encode("utf-8", "surrogatepass"))) == whole[len(head) :]
    assert ReplyText().text() == ""
