"""The SQL of the chat path's hot writes: a batch of turns, a reply's progress and its end.

In plain SQL with named rows: the ORM spends milliseconds of CPU building these statements, and every reply runs
them. The services in `chat.services` decide; this module reads and writes.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any, NamedTuple

from django.db import connection
from django.utils.dateparse import parse_datetime

from accounts.models import UsageRecord
from moonborn_site.state import process_state
from personas.models import Persona, PersonaDriftStats

from .models import ChatSession, DriftJob, Message

# How many earlier messages go into the model's context.
HISTORY_LIMIT = 40


class SessionRow(NamedTuple):
    """A session a turn is asked for, with its persona and its last message (None in a new session)."""

    owner_id: int
    persona_id: str
    persona_name: str
    persona_status: str
    persona_version: datetime
    embedding_model: str
    last_index: int | None
    last_status: str | None


@dataclass
class TurnReads:
    """What a batch of turns reads before it writes."""

    sessions: dict[str, SessionRow] = field(default_factory=dict)
    # Session id → its last HISTORY_LIMIT (role, content) pairs with content, oldest first.
    histories: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    # Owner id → their ready personas with anchor vectors, newest first: (persona id, updated_at, embedding model).
    others: dict[int, list[tuple[str, Any, str]]] = field(default_factory=dict)


def read_turns(cursor: Any, sql: "TurnSql", requests: Sequence[Any]) -> TurnReads:
    """Read what the turns of `requests` need: their sessions (locked on PostgreSQL), histories, other personas.

    On SQLite in one statement, which answers one row (see TurnSql); on PostgreSQL as three, the sessions locked
    before their histories are read.
    """
    read = TurnReads()
    wanted = sorted({r.session_id for r in requests})
    owner_ids = sorted({r.owner_id for r in requests})
    if sql.one_row:
        listed = sql.in_list(wanted)
        # The sessions; their histories; the other personas of their owners.
        cursor.execute(sql.turn_reads(), [*listed, *listed, Persona.Status.READY, *listed])
        sessions, histories, others = (json.loads(text) for text in cursor.fetchone())
    else:
        cursor.execute(sql.sessions(len(wanted)), wanted)
        sessions = cursor.fetchall()
        cursor.execute(sql.histories(len(wanted)), wanted)
        histories = cursor.fetchall()
        cursor.execute(sql.others(len(owner_ids)), [Persona.Status.READY, *owner_ids])
        others = cursor.fetchall()
    for sid, owner_id, pid, name, status, version, model, last_index, last_status in sessions:
        read.sessions[sid] = SessionRow(
            int(owner_id), pid, name, status, _datetime(version), model, last_index, last_status
        )
    for sid, role, text, _ in sorted(histories, key=itemgetter(3)):
        read.histories.setdefault(sid, []).append((str(role), str(text)))
    for owner_id, persona_id, version, embedding_model, _ in sorted(
        others, key=lambda row: _datetime(row[4]), reverse=True
    ):
        read.others.setdefault(int(owner_id), []).append((persona_id, _datetime(version), embedding_model))
    return read


def _datetime(value: Any) -> Any:
    """A datetime column read on SQLite, where the JSON has its stored text, parsed as Django's converter does."""
    return parse_datetime(value) if isinstance(value, str) else value


class TurnSql:
    """The statements of a turn and of a reply's end, in plain SQL: the ORM spends milliseconds of CPU building them.

    Built from the models' tables and columns, so they follow the models; `n` is how many values an `IN` list or
    a multi-row `VALUES` has (on SQLite, whose texts do not depend on it, see `in_list`).
    """

    def __init__(self) -> None:
        q = connection.ops.quote_name
        self.session, self.persona = q(ChatSession._meta.db_table), q(Persona._meta.db_table)
        self.message, self.usage_table = q(Message._meta.db_table), q(UsageRecord._meta.db_table)
        self.drift_job = q(DriftJob._meta.db_table)
        self.index = q("index")
        # Only the session rows are locked (PostgreSQL): one turn at a time per session, any number per persona.
        self.lock = " FOR UPDATE OF s" if connection.features.has_select_for_update_of else ""
        # On SQLite a batch reads with one statement that answers one row of JSON, not a row per session. Python's
        # sqlite3 lets go of the GIL for every row it steps (and every statement it prepares, and every statement),
        # and the worker thread must then win it back from the event loop: while the loop is busy, that takes up to
        # a switch interval (5 ms) each time. A batch of 256 turns took 120-220 ms that way while a thousand streams
        # started, against 17 ms alone (bench/sqlite_gil.py). A database server sends the
        # rows at once, so there they stay rows, and its statements stay apart (see read_turns).
        self.one_row = connection.vendor == "sqlite"
        # A JSON column set from a `VALUES` row: text there, which PostgreSQL's jsonb takes only cast.
        self.jsonb = "::jsonb" if connection.vendor == "postgresql" else ""

        self.session_drift = (
            f"SELECT s.id, s.drift_ewma, s.drift_streak, s.persona_id, m.role, m.drift_score, m.flagged"
            f" FROM {self.session} s JOIN {self.message} m ON m.session_id = s.id WHERE m.id = %s"
        )
        self.complete = (
            f"UPDATE {self.message} SET content = %s, status = %s, drift_score = %s, drift_threshold = %s,"
            " flagged = %s, drift_components = %s, lore = %s, completed_at = %s WHERE id = %s"
        )
        self.session_drifted = (
            f"UPDATE {self.session} SET drift_ewma = %s, drift_streak = %s,"
            " sustained_drift_at = COALESCE(sustained_drift_at, %s), updated_at = %s WHERE id = %s"
        )
        # A persona's drift counters (personas.models.PersonaDriftStats): a new reply added to them (its row made by
        # the persona's first), and a reply scored again, whose row is there. Apart, since an insert's values are
        # checked before its conflict is found: a change that lowers a count cannot go through one.
        stats = q(PersonaDriftStats._meta.db_table)
        self.drift_stats_add = (
            f"INSERT INTO {stats} (persona_id, replies, flagged, drift_sum) VALUES (%s, 1, %s, %s)"
            f" ON CONFLICT (persona_id) DO UPDATE SET replies = {stats}.replies + 1,"
            f" flagged = {stats}.flagged + excluded.flagged, drift_sum = {stats}.drift_sum + excluded.drift_sum"
        )
        self.drift_stats_change = (
            f"UPDATE {stats} SET flagged = flagged + %s, drift_sum = drift_sum + %s WHERE persona_id = %s"
        )
        self.usage_ended = (
            f"UPDATE {self.usage_table} SET status = %s, prompt_tokens = %s, completion_tokens = %s, ended_at = %s"
            " WHERE run_id = %s AND kind = %s"
        )

    @staticmethod
    def _list(n: int) -> str:
        return ", ".join(["%s"] * n)

    def _in(self, n: int) -> str:
        """`IN` n values, given by `in_list`. On SQLite one parameter, a JSON array: see `in_list`."""
        if self.one_row:
            return "IN (SELECT value FROM json_each(%s))"
        return f"IN ({self._list(n)})"

    def in_list(self, values: Sequence[Any]) -> list[Any]:
        """The parameters of an `_in` list.

        On SQLite one JSON array, so that a statement's text does not depend on how many turns a batch has: the
        connection prepares it once and keeps it, where a text per size made SQLite prepare most statements again
        (and hand the GIL over once more for it). Binding one value, Django's conversion of `%s` to `?` also no
        longer runs over thousands of placeholders.
        """
        return [json.dumps(list(values), ensure_ascii=False)] if self.one_row else list(values)

    def _table(self, n: int, width: int) -> str:
        """n rows of `width` values, given by `table`, to insert: `VALUES`, or on SQLite a JSON array of rows."""
        if self.one_row:
            columns = ", ".join(f"json_extract(value, '$[{number}]')" for number in range(width))
            return f"SELECT {columns} FROM json_each(%s)"
        return "VALUES " + ", ".join(["(" + self._list(width) + ")"] * n)

    def table(self, rows: Sequence[Sequence[Any]]) -> list[Any]:
        """The parameters of a `_table` (see `in_list`). Text, integers and booleans only, as JSON has them."""
        if self.one_row:
            return [json.dumps([list(row) for row in rows], ensure_ascii=False)]
        return [value for row in rows for value in row]

    def _select(self, columns: str, rest: str) -> str:
        """`SELECT columns rest`; on SQLite one row, a JSON array of the rows. Text, integers or datetimes only."""
        if self.one_row:
            return f"SELECT json_group_array(json_array({columns})) {rest}"
        return f"SELECT {columns} {rest}"

    def turn_reads(self) -> str:
        """SQLite: a batch's reads in one statement, one row of three JSON arrays: sessions, histories, others.

        The others are those of the sessions' owners (on PostgreSQL, of the requests' owners): the same for every
        turn that is taken, since a turn is only taken in a session of its own owner.
        """
        others = self._select(
            "owner_id, id, updated_at, embedding_model, created_at",
            f"FROM {self.persona} WHERE status = %s AND LENGTH(anchor_vectors) > 0"
            f" AND owner_id IN (SELECT owner_id FROM {self.session} WHERE id {self._in(0)})",
        )
        parts = (self.sessions(0), self.histories(0), others)
        return "SELECT " + ", ".join(f"({part})" for part in parts)

    def sessions(self, n: int) -> str:
        """Each session with its persona, and the index and status of its last message (NULL for a new session).

        The last message is found backwards along the (session, index) index: a long conversation costs no more
        than a short one (an aggregate over the session's messages cost ~0.7 ms per thousand of them, per turn).
        Its status tells whether a reply is streaming, since the only streaming message a session can have is its
        last: a turn adds a user message and a streaming reply at the end, and no turn is taken while a reply
        streams.
        """
        last = f"SELECT m.{{}} FROM {self.message} m WHERE m.session_id = s.id ORDER BY m.{self.index} DESC LIMIT 1"
        return self._select(
            "s.id, s.owner_id, p.id, p.name, p.status, p.updated_at, p.embedding_model,"
            f" ({last.format(self.index)}), ({last.format('status')})",
            f"FROM {self.session} s JOIN {self.persona} p ON p.id = s.persona_id WHERE s.id {self._in(n)}{self.lock}",
        )

    def histories(self, n: int) -> str:
        """The last HISTORY_LIMIT messages with content of each session, with their index to put them in order.

        Read backwards along the (session, index) index: a long conversation costs its last HISTORY_LIMIT rows,
        not all of its rows (as a window over each whole session would). On PostgreSQL one LIMIT per session; on
        SQLite each session's rows from the index of its HISTORY_LIMIT-th last, in one statement for any number of
        sessions (and without SQLite's ceiling of 500 SELECTs joined by UNION ALL).
        """
        if self.one_row:
            start = (
                f"SELECT b.{self.index} FROM {self.message} b WHERE b.session_id = j.value AND b.content <> ''"
                f" ORDER BY b.{self.index} DESC LIMIT 1 OFFSET {HISTORY_LIMIT - 1}"
            )
            return self._select(
                f"m.session_id, m.role, m.content, m.{self.index}",
                f"FROM json_each(%s) AS j JOIN {self.message} m ON m.session_id = j.value"
                f" AND m.{self.index} >= COALESCE(({start}), 0) WHERE m.content <> ''",
            )
        last = (
            f"SELECT * FROM (SELECT session_id, role, content, {self.index} FROM {self.message}"
            f" WHERE session_id = %s AND content <> '' ORDER BY {self.index} DESC LIMIT {HISTORY_LIMIT}) AS h{{}}"
        )
        parts = " UNION ALL ".join(last.format(number) for number in range(n))
        return self._select(f"session_id, role, content, {self.index}", f"FROM ({parts}) AS recent")

    def messages(self, n: int) -> str:
        columns = (
            f"id, session_id, {self.index}, role, content, status, model, error, flagged, drift_components,"
            " tier1_components, lore, review, created_at"
        )
        return f"INSERT INTO {self.message} ({columns}) {self._table(n, 14)}"

    def drift_jobs(self, n: int) -> str:
        return f"INSERT INTO {self.drift_job} (message_id, created_at, claimed_by, attempts) {self._table(n, 4)}"

    def usage(self, n: int) -> str:
        return (
            f"INSERT INTO {self.usage_table} (owner_id, kind, run_id, provider, model, prompt_tokens,"
            f" completion_tokens, status, started_at) {self._table(n, 9)}"
        )

    def progress(self, n: int) -> str:
        """Set `content` of n messages still streaming, from (id, content) rows, in one statement."""
        rows = ", ".join(["(%s, %s)"] * n)
        return (
            f"UPDATE {self.message} SET content = v.column2 FROM (VALUES {rows}) AS v"
            f" WHERE {self.message}.id = v.column1 AND {self.message}.status = %s"
        )

    def stops(self, n: int) -> str:
        """End n replies still streaming from (id, content, status, error, lore) rows, in one statement; the time is
        the first parameter, the status they must still have the last."""
        rows = ", ".join(["(%s, %s, %s, %s, %s)"] * n)
        return (
            f"UPDATE {self.message} SET content = v.column2, status = v.column3, error = v.column4,"
            f" lore = v.column5{self.jsonb}, completed_at = %s FROM (VALUES {rows}) AS v"
            f" WHERE {self.message}.id = v.column1 AND {self.message}.status = %s"
        )

    def usage_stops(self, n: int) -> str:
        """End n replies' usage records still running from (run id, status, prompt tokens, completion tokens) rows,
        in one statement; the time is the first parameter, then the rows, the kind, the status they must have."""
        rows = ", ".join(["(%s, %s, %s, %s)"] * n)
        return (
            f"UPDATE {self.usage_table} SET status = v.column2, prompt_tokens = v.column3,"
            f" completion_tokens = v.column4, ended_at = %s FROM (VALUES {rows}) AS v"
            f" WHERE {self.usage_table}.run_id = v.column1 AND {self.usage_table}.kind = %s"
            f" AND {self.usage_table}.status = %s"
        )

    def touch(self, n: int) -> str:
        return f"UPDATE {self.session} SET updated_at = %s WHERE id {self._in(n)}"

    def others(self, n: int) -> str:
        """The ready personas with anchor vectors of n owners, and when each was made (for the bleed component)."""
        return self._select(
            "owner_id, id, updated_at, embedding_model, created_at",
            f"FROM {self.persona} WHERE status = %s AND owner_id {self._in(n)} AND LENGTH(anchor_vectors) > 0",
        )


def turn_sql() -> TurnSql:
    """The statements for the default database (made once per process)."""
    return process_state("chat.turn_sql", TurnSql)
