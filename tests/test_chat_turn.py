"""Starting a turn: what the reply job carries from its persona, read once per persona version."""

import pytest

from chat.models import ChatSession, Message
from chat.services import ReplyJob, message_create_turn
from tests.factories import ChatSessionFactory

pytestmark = pytest.mark.django_db


def turn(session: ChatSession, text: str) -> ReplyJob:
    job = message_create_turn(
        owner_id=session.owner_id, session_id=session.pk, content=text, provider="demo", model="demo"
    )
    Message.objects.filter(pk=job.assistant_message_id).update(status=Message.Status.COMPLETED, content="Aye.")
    return job


def test_replies_share_their_persona_until_it_changes_and_then_read_it_again() -> None:
    session = ChatSessionFactory(persona__system_prompt="You keep the lamp.", persona__calibration={"version": 1})
    persona = session.persona
    first = turn(session, "Hello.")
    second = turn(session, "Still there?")
    assert (first.voice.system_prompt, first.voice.calibration) == ("You keep the lamp.", {"version": 1})
    # The same persona version: one shared copy, not one per reply.
    assert second.voice is first.voice

    persona.system_prompt = "You keep the lamp, and the logbook."
    persona.calibration = {"version": 2}
    persona.save()
    third = turn(session, "And now?")
    assert (third.voice.system_prompt, third.voice.calibration) == (
        "You keep the lamp, and the logbook.",
        {"version": 2},
    )
    assert [third.turn, third.history[-2:]] == [2, (("user", "Still there?"), ("assistant", "Aye."))]
