"""What a turn costs the database does not grow with the conversation (SQLite, whose work can be counted).

SQLite's progress handler counts the virtual machine instructions the turn's statements run: a deterministic
measure of rows visited, unlike a timing. This file is not in the PostgreSQL run (scripts/test).
"""

from collections.abc import Iterator
from contextlib import contextmanager

import factory
import pytest
from django.db import connection

from accounts.services import api_key_create
from chat.models import ChatSession, Message
from chat.services import TurnRequest, message_create_turns
from tests.factories import ChatSessionFactory, MessageFactory

pytestmark = pytest.mark.django_db


@contextmanager
def counting_instructions() -> Iterator[list[int]]:
    """Count SQLite VM instructions (in steps of 10) run on the default connection inside the block."""
    assert connection.vendor == "sqlite", "this file measures SQLite's work; run it with the SQLite settings"
    connection.ensure_connection()
    raw = connection.connection
    counted = [0]

    def tick() -> int:
        counted[0] += 10
        return 0  # non-zero would abort the statement

    raw.set_progress_handler(tick, 10)
    try:
        yield counted
    finally:
        raw.set_progress_handler(None, 0)


def talk(session: ChatSession, turns: int) -> None:
    roles = factory.Iterator([Message.Role.USER, Message.Role.ASSISTANT])
    messages = MessageFactory.build_batch(
        2 * turns, session=session, index=factory.Iterator(range(2 * turns)), role=roles
    )
    Message.objects.bulk_create(messages)


def test_a_turn_in_a_long_conversation_visits_as_many_rows_as_in_a_short_one() -> None:
    key_row, key = api_key_create(username="alice")
    short, long = ChatSessionFactory(owner=key_row.owner), ChatSessionFactory(owner=key_row.owner)
    talk(short, 20)
    talk(long, 2_000)

    def turn(session: ChatSession) -> int:
        request = TurnRequest(session_id=session.pk, content="Go on.", provider="demo", model="demo", key=key)
        with counting_instructions() as counted:
            (outcome,) = message_create_turns(requests=[request])
        assert isinstance(outcome, tuple)
        assert outcome[1].turn == Message.objects.filter(session=session).count() // 2 - 1
        Message.objects.filter(pk=outcome[1].assistant_message_id).update(status=Message.Status.COMPLETED)
        return counted[0]

    turn(short)  # the first turn of the process also writes the key's last use and fills caches
    short_cost, long_cost = turn(short), turn(long)
    # The same statements over the same number of rows, give or take a level of B-tree: a scan of the long
    # conversation's 4,000 messages would add tens of thousands of instructions.
    assert short_cost > 0
    assert long_cost < short_cost * 1.2, (short_cost, long_cost)
