"""What a turn costs the database does not grow with the conversation (SQLite, whose work can be counted).

SQLite's progress handler counts the virtual machine instructions the turn's statements run: a deterministic
measure of rows visited, unlike a timing. This file is not in the PostgreSQL run (scripts/test).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import factory
import pytest
from django.db import connection

from chat.models import ChatSession, Message
from chat.services import ReplyJob, TurnRequest, message_create_turns
from tests.factories import ChatSessionFactory, MessageFactory, UserFactory, calibrated_persona

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
    owner = UserFactory()
    short, long = ChatSessionFactory(owner=owner), ChatSessionFactory(owner=owner)
    talk(short, 20)
    talk(long, 2_000)

    def turn(session: ChatSession) -> int:
        request = TurnRequest(
            owner_id=session.owner_id, session_id=session.pk, content="Go on.", provider="demo", model="demo"
        )
        with counting_instructions() as counted:
            (outcome,) = message_create_turns(requests=[request])
        assert isinstance(outcome, ReplyJob)
        assert outcome.turn == Message.objects.filter(session=session).count() // 2 - 1
        Message.objects.filter(pk=outcome.assistant_message_id).update(status=Message.Status.COMPLETED)
        return counted[0]

    turn(short)  # the first turn of the process fills caches
    short_cost, long_cost = turn(short), turn(long)
    # The same statements over the same number of rows, give or take a level of B-tree: a scan of the long
    # conversation's 4,000 messages would add tens of thousands of instructions.
    assert short_cost > 0
    assert long_cost < short_cost * 1.2, (short_cost, long_cost)


def test_a_batch_of_turns_reads_one_row_per_statement_however_many_turns_it_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Python's sqlite3 lets go of the GIL for every row it steps, and under load each row then waits for the event
    # loop to hand the GIL back: a batch's reads must not cost a row per turn (chat.services._TurnSql).
    from django.db.backends.sqlite3.base import SQLiteCursorWrapper

    owner = UserFactory()
    personas = [calibrated_persona(anchors=["Aye."], owner=owner) for _ in range(4)]
    sessions = [ChatSessionFactory(persona=personas[number % 4]) for number in range(25)]
    for session in sessions:
        talk(session, 3)

    def batch(part: list[ChatSession]) -> list[object]:
        requests = [
            TurnRequest(owner_id=s.owner_id, session_id=s.pk, content="Go on.", provider="demo", model="demo")
            for s in part
        ]
        return list(message_create_turns(requests=requests))

    batch(sessions[:5])  # the process's caches of the personas and centroids are filled
    fetched: list[int] = []
    for name in ("fetchone", "fetchmany", "fetchall"):
        real = getattr(SQLiteCursorWrapper, name)

        def counted(self: SQLiteCursorWrapper, *args: object, _real: object = real) -> object:
            rows = _real(self, *args)  # type: ignore[operator]
            fetched.append(0 if rows is None else 1 if isinstance(rows, tuple) else len(rows))
            return rows

        monkeypatch.setattr(SQLiteCursorWrapper, name, counted)
    outcomes = batch(sessions[5:])
    assert len([outcome for outcome in outcomes if isinstance(outcome, ReplyJob)]) == 20
    # The sessions, their histories and the owner's other personas, in one row.
    assert fetched == [1]


def test_a_batch_of_turns_runs_the_same_five_statements_whatever_its_size() -> None:
    # Each statement hands the GIL over at least once, and a statement SQLite has not prepared yet once more: a
    # batch's statements are few, and their texts do not depend on how many turns it holds, so the connection's
    # cache of prepared statements serves every size (chat.turn_store.TurnSql.in_list).
    owner = UserFactory()
    personas = [calibrated_persona(anchors=["Aye."], owner=owner) for _ in range(2)]
    sessions = [ChatSessionFactory(persona=personas[number % 2]) for number in range(10)]
    for session in sessions:
        talk(session, 2)
    ran: list[str] = []

    def note(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if not sql.startswith(("SAVEPOINT", "RELEASE SAVEPOINT")):  # the test's own transaction around the batch
            ran.append(sql)
        return execute(sql, params, many, context)

    def batch(part: list[ChatSession]) -> list[str]:
        requests = [
            TurnRequest(owner_id=s.owner_id, session_id=s.pk, content="Go on.", provider="demo", model="demo")
            for s in part
        ]
        ran.clear()
        with connection.execute_wrapper(note):
            outcomes = message_create_turns(requests=requests)
        assert all(isinstance(outcome, ReplyJob) for outcome in outcomes)
        return list(ran)

    batch(sessions[:2])  # the personas' voices and centroids are cached
    three, five = batch(sessions[2:5]), batch(sessions[5:])
    assert [sql.split()[:3] for sql in three] == [
        ["SELECT", "(SELECT", "json_group_array(json_array(s.id,"],
        ["INSERT", "INTO", '"chat_message"'],
        ["INSERT", "INTO", '"chat_driftjob"'],
        ["INSERT", "INTO", '"accounts_usagerecord"'],
        ["UPDATE", '"chat_chatsession"', "SET"],
    ]
    assert five == three
