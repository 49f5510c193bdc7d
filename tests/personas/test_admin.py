"""The Django admin: pages render, drift flags are visible, statistics are exact and cost no N+1 queries."""

from datetime import timedelta
from html.parser import HTMLParser

import factory
import pytest
from django.contrib import admin
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.models import ApiKey, UsageRecord
from accounts.services import api_key_create
from chat.models import ChatSession, Message
from personas.models import STEP_NAMES, PersonaDriftStats, PersonaStep
from personas.selectors import drift_counts
from tests.factories import ChatSessionFactory, MessageFactory, PersonaFactory, UserFactory

pytestmark = pytest.mark.django_db

FLAG_TEXT = "⚑ drifted"


class PersonaStepFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = PersonaStep

    persona = factory.SubFactory(PersonaFactory)
    position = factory.Sequence(lambda n: n % len(STEP_NAMES))
    name = factory.LazyAttribute(lambda s: STEP_NAMES[s.position])
    status = PersonaStep.Status.COMPLETED
    output = factory.LazyAttribute(lambda s: {"step": s.name, "traits": ["stoic", "weathered"]})
    model = "demo"
    duration_ms = 120


class ResultTable(HTMLParser):
    """Rows of the changelist's `#result_list` table, each a dict of column class (`field-…`) to text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self.in_table = False
        self.in_body = False
        self.cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table" and attributes.get("id") == "result_list":
            self.in_table = True
        elif self.in_table and tag == "tbody":
            self.in_body = True
        elif self.in_body and tag == "tr":
            self.rows.append({})
        elif self.in_body and tag in ("td", "th"):
            classes = (attributes.get("class") or "").split()
            self.cell = next((c.removeprefix("field-") for c in classes if c.startswith("field-")), "")
            self.rows[-1][self.cell] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self.cell = None
        elif tag == "tbody":
            self.in_body = False
        elif tag == "table":
            self.in_table = False

    def handle_data(self, data: str) -> None:
        if self.in_body and self.cell is not None and self.rows:
            self.rows[-1][self.cell] += data


def result_rows(response) -> list[dict[str, str]]:
    assert response.status_code == 200
    parser = ResultTable()
    parser.feed(response.content.decode())
    return [{key: " ".join(value.split()) for key, value in row.items()} for row in parser.rows]


def make_persona_with_history(**kwargs):
    """A ready persona with six steps, two chat sessions and a mix of scored, unscored and flagged messages."""
    persona = PersonaFactory(
        drift_anchors=["I keep the light.", "The sea gives and takes."],
        anchor_vectors=b"\x00\x01\x02\x03" * 8,
        card={"name": "Keeper", "description": "A lighthouse keeper", "tags": ["sea"]},
        calibration={"generic_mean": 0.61},
        **kwargs,
    )
    for position, name in enumerate(STEP_NAMES):
        PersonaStepFactory(persona=persona, position=position, name=name)
    first, second = ChatSessionFactory(persona=persona), ChatSessionFactory(persona=persona)
    MessageFactory(session=first, index=0, role=Message.Role.USER, drift_score=None, drift_threshold=None)
    MessageFactory(session=first, index=1, drift_score=0.5)
    MessageFactory(session=second, index=0, role=Message.Role.USER, drift_score=None, drift_threshold=None)
    MessageFactory(session=second, index=1, drift_score=0.97, flagged=True)
    return persona


# ---------------------------------------------------------------- every page renders


def test_every_changelist_and_change_page_returns_200(admin_client):
    persona = make_persona_with_history()
    session = persona.chat_sessions.first()
    message = session.messages.get(index=1)
    api_key, _ = api_key_create(username="alice", name="laptop")
    usage = UsageRecord.objects.create(
        owner=persona.owner, kind=UsageRecord.Kind.PERSONA, run_id=persona.id, provider="demo", model="demo"
    )

    assert admin_client.get(reverse("admin:index")).status_code == 200
    pages = [
        ("personas", "persona", persona.pk),
        ("personas", "persona", None),
        ("chat", "chatsession", session.pk),
        ("chat", "message", message.pk),
        ("accounts", "apikey", api_key.pk),
        ("accounts", "usagerecord", usage.pk),
    ]
    for app, model, pk in pages:
        changelist = admin_client.get(reverse(f"admin:{app}_{model}_changelist"))
        assert changelist.status_code == 200, (app, model)
        if pk is not None:
            change = admin_client.get(reverse(f"admin:{app}_{model}_change", args=[pk]))
            assert change.status_code == 200, (app, model)


def test_changelists_render_empty(admin_client):
    for name in ("personas_persona", "chat_chatsession", "chat_message", "accounts_apikey", "accounts_usagerecord"):
        assert admin_client.get(reverse(f"admin:{name}_changelist")).status_code == 200


def test_changelist_search_and_filters_return_200(admin_client):
    persona = make_persona_with_history()
    queries = [
        ("admin:personas_persona_changelist", {"q": "lighthouse"}),
        ("admin:personas_persona_changelist", {"q": persona.pk}),
        ("admin:personas_persona_changelist", {"status__exact": "ready"}),
        ("admin:personas_persona_changelist", {"owner__id__exact": str(persona.owner_id)}),
        ("admin:chat_message_changelist", {"session__persona__id__exact": persona.pk}),
        ("admin:chat_message_changelist", {"role__exact": "user", "status__exact": "completed"}),
        ("admin:chat_message_changelist", {"q": "lamp"}),
        ("admin:chat_chatsession_changelist", {"q": persona.name}),
        ("admin:accounts_usagerecord_changelist", {"kind__exact": "chat", "status__exact": "running"}),
        ("admin:accounts_apikey_changelist", {"state": "revoked"}),
    ]
    for name, params in queries:
        response = admin_client.get(reverse(name), params)
        assert response.status_code == 200, (name, params)
        assert "errornote" not in response.content.decode(), (name, params)


# ---------------------------------------------------------------- personas


def test_persona_changelist_shows_steps_and_drift_statistics(admin_client):
    persona = make_persona_with_history()
    # One more scored reply and two messages that are not scored replies (streaming, and a user turn).
    session = persona.chat_sessions.order_by("created_at").first()
    MessageFactory(session=session, index=2, drift_score=0.33)
    MessageFactory(session=session, index=3, drift_score=None, status=Message.Status.STREAMING)
    # Replies: 0.5, 0.97 (flagged), 0.33 → 3 replies, mean 0.6, 1 of 3 flagged.
    persona.steps.filter(name__in=STEP_NAMES[4:]).update(status=PersonaStep.Status.RUNNING)
    quiet = PersonaFactory(name="Quiet One", drift_threshold=None)

    rows = {row["id"]: row for row in result_rows(admin_client.get(reverse("admin:personas_persona_changelist")))}

    assert rows[persona.pk]["steps_display"] == "4/6"
    assert rows[persona.pk]["reply_count_display"] == "3"
    assert rows[persona.pk]["mean_drift_display"] == "0.600"
    assert rows[persona.pk]["flagged_share_display"] == "33.3%"
    assert rows[persona.pk]["drift_threshold_display"] == "0.950"
    assert rows[persona.pk]["status"] == "Ready"
    assert rows[quiet.pk]["steps_display"] == "0/6"
    assert rows[quiet.pk]["reply_count_display"] == "0"
    assert rows[quiet.pk]["mean_drift_display"] == "—"
    assert rows[quiet.pk]["flagged_share_display"] == "—"
    assert rows[quiet.pk]["drift_threshold_display"] == "—"


def test_persona_changelist_sorts_on_annotated_columns(admin_client):
    calm = PersonaFactory(name="Calm")
    MessageFactory(session=ChatSessionFactory(persona=calm), drift_score=0.1)
    wild = PersonaFactory(name="Wild")
    wild_session = ChatSessionFactory(persona=wild)
    MessageFactory(session=wild_session, index=0, drift_score=0.9, flagged=True)
    MessageFactory(session=wild_session, index=1, drift_score=0.7)
    url = reverse("admin:personas_persona_changelist")
    list_display = admin_client.get(url).context["cl"].list_display

    for column, ascending in [
        ("mean_drift_display", [calm.pk, wild.pk]),
        ("reply_count_display", [calm.pk, wild.pk]),
        ("flagged_share_display", [calm.pk, wild.pk]),
    ]:
        index = list_display.index(column)
        assert [r["id"] for r in result_rows(admin_client.get(url, {"o": str(index)}))] == ascending
        assert [r["id"] for r in result_rows(admin_client.get(url, {"o": f"-{index}"}))] == ascending[::-1]
    rows = {row["id"]: row for row in result_rows(admin_client.get(url))}
    assert rows[wild.pk]["flagged_share_display"] == "50.0%"
    assert rows[wild.pk]["mean_drift_display"] == "0.800"


def test_persona_changelist_query_count_does_not_grow_with_personas(admin_client):
    url = reverse("admin:personas_persona_changelist")
    make_persona_with_history()
    admin_client.get(url)  # warm up session and content-type caches

    with CaptureQueriesContext(connection) as one:
        assert admin_client.get(url).status_code == 200
    for _ in range(4):
        make_persona_with_history()
    with CaptureQueriesContext(connection) as five:
        response = admin_client.get(url)
    assert len(result_rows(response)) == 5
    assert len(five) == len(one), [q["sql"] for q in five.captured_queries]


def test_persona_changelist_reads_the_drift_counters_and_no_message(admin_client):
    make_persona_with_history()
    url = reverse("admin:personas_persona_changelist")
    admin_client.get(url)
    with CaptureQueriesContext(connection) as queries:
        assert admin_client.get(url).status_code == 200
    assert [q["sql"] for q in queries.captured_queries if "chat_message" in q["sql"]] == []
    assert any("personas_personadriftstats" in q["sql"] for q in queries.captured_queries)


def test_persona_changelist_stays_within_a_fixed_query_budget(admin_client, django_assert_max_num_queries):
    for _ in range(5):
        make_persona_with_history()
    url = reverse("admin:personas_persona_changelist")
    admin_client.get(url)
    with django_assert_max_num_queries(8):
        admin_client.get(url)


def test_persona_change_page_shows_generated_data_read_only(admin_client):
    persona = make_persona_with_history()
    persona.steps.filter(name="voice_print").update(fallback_fields=["quirks"])
    response = admin_client.get(reverse("admin:personas_persona_change", args=[persona.pk]))
    html = response.content.decode()

    # Only the name and the status are editable.
    assert set(response.context["adminform"].form.fields) == {"name", "status"}
    # Card and step outputs pretty-printed, the system prompt and drift anchors shown.
    assert "&quot;description&quot;: &quot;A lighthouse keeper&quot;" in html
    assert "\n  &quot;tags&quot;: [\n    &quot;sea&quot;\n  ]" in html
    assert "&quot;step&quot;: &quot;soul_draft&quot;" in html
    assert f"You are {persona.name}." in html
    assert "<li>I keep the light.</li>" in html
    assert "quirks" in html
    assert "120 ms" in html
    # Binary calibration data is not shown, and steps cannot be edited, added or deleted.
    assert "anchor_vectors" not in html
    assert "Anchor vectors" not in html
    assert 'name="steps-0-output"' not in html
    assert "steps-0-DELETE" not in html
    (steps_inline,) = response.context["inline_admin_formsets"]
    assert not steps_inline.has_add_permission
    assert not steps_inline.has_change_permission
    assert not steps_inline.has_delete_permission


def test_persona_name_and_status_are_editable_but_outputs_are_not(admin_client):
    persona = make_persona_with_history()
    url = reverse("admin:personas_persona_change", args=[persona.pk])
    management = {
        "steps-TOTAL_FORMS": "6",
        "steps-INITIAL_FORMS": "6",
        "steps-MIN_NUM_FORMS": "0",
        "steps-MAX_NUM_FORMS": "0",
    }
    steps = {f"steps-{i}-id": str(step.pk) for i, step in enumerate(persona.steps.order_by("position"))}
    steps |= {f"steps-{i}-persona": persona.pk for i in range(6)}
    response = admin_client.post(
        url,
        {"name": "Renamed", "status": "failed", "prompt": "hijacked", "system_prompt": "hijacked"} | management | steps,
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    persona.refresh_from_db()
    assert (persona.name, persona.status) == ("Renamed", "failed")
    assert persona.prompt != "hijacked"
    assert persona.system_prompt != "hijacked"


def test_persona_cannot_be_added_in_admin(admin_client):
    assert admin_client.get(reverse("admin:personas_persona_add")).status_code == 403


# ---------------------------------------------------------------- messages and sessions


def test_message_changelist_marks_flagged_replies(admin_client):
    flagged = MessageFactory(drift_score=0.97, flagged=True)
    calm = MessageFactory(drift_score=0.2, flagged=False)
    user = MessageFactory(role=Message.Role.USER, drift_score=None, drift_threshold=None)
    url = reverse("admin:chat_message_changelist")

    rows = {row["id"]: row for row in result_rows(admin_client.get(url))}
    assert rows[flagged.pk]["flag"] == FLAG_TEXT
    assert rows[calm.pk]["flag"] == "in character"
    assert rows[user.pk]["flag"] == "—"
    assert rows[flagged.pk]["drift_score_display"] == "0.970"
    assert rows[flagged.pk]["threshold_display"] == "0.950"
    assert rows[flagged.pk]["persona"] == str(flagged.session.persona)

    only_calm = admin_client.get(url, {"flagged__exact": "0"})
    assert FLAG_TEXT not in only_calm.content.decode()
    assert {row["id"] for row in result_rows(only_calm)} == {calm.pk, user.pk}

    only_flagged = admin_client.get(url, {"flagged__exact": "1"})
    assert FLAG_TEXT in only_flagged.content.decode()
    assert [row["id"] for row in result_rows(only_flagged)] == [flagged.pk]


def test_message_changelist_filters_by_persona_role_and_status(admin_client):
    mine = MessageFactory()
    other = MessageFactory()
    streaming = MessageFactory(session=other.session, index=99, status=Message.Status.STREAMING, drift_score=None)
    url = reverse("admin:chat_message_changelist")

    by_persona = result_rows(admin_client.get(url, {"session__persona__id__exact": mine.session.persona_id}))
    assert [row["id"] for row in by_persona] == [mine.pk]
    by_status = result_rows(admin_client.get(url, {"status__exact": "streaming"}))
    assert [row["id"] for row in by_status] == [streaming.pk]
    assert result_rows(admin_client.get(url, {"role__exact": "user"})) == []


def test_message_changelist_sorts_by_drift_and_defaults_to_newest_first(admin_client):
    middle = MessageFactory(drift_score=0.5)
    low = MessageFactory(drift_score=0.1)
    high = MessageFactory(drift_score=0.9, flagged=True)
    url = reverse("admin:chat_message_changelist")

    response = admin_client.get(url)
    assert [row["id"] for row in result_rows(response)] == [high.pk, low.pk, middle.pk]
    index = response.context["cl"].list_display.index("drift_score_display")
    ascending = admin_client.get(url, {"o": str(index)})
    assert [row["id"] for row in result_rows(ascending)] == [low.pk, middle.pk, high.pk]
    descending = admin_client.get(url, {"o": f"-{index}"})
    assert [row["id"] for row in result_rows(descending)] == [high.pk, middle.pk, low.pk]
    # The sorted column's header links are on the drift column.
    assert f"o=-{index}" in ascending.content.decode()


def test_message_changelist_query_count_does_not_grow_with_messages(admin_client):
    url = reverse("admin:chat_message_changelist")
    MessageFactory()
    admin_client.get(url)
    with CaptureQueriesContext(connection) as one:
        admin_client.get(url)
    for _ in range(6):
        MessageFactory()
    with CaptureQueriesContext(connection) as seven:
        response = admin_client.get(url)
    assert len(result_rows(response)) == 7
    assert len(seven) == len(one)


def test_message_admin_is_read_only(admin_client):
    message = MessageFactory(content="Original")
    change_url = reverse("admin:chat_message_change", args=[message.pk])
    assert admin_client.post(change_url, {"content": "Edited"}).status_code == 403
    assert admin_client.get(reverse("admin:chat_message_add")).status_code == 403
    assert admin_client.get(reverse("admin:chat_message_delete", args=[message.pk])).status_code == 403
    message.refresh_from_db()
    assert message.content == "Original"


def drift_counters(persona) -> tuple[int, int, float]:
    row = PersonaDriftStats.objects.get(persona=persona)
    return row.replies, row.flagged, row.drift_sum


def test_sessions_deleted_by_the_admin_leave_their_personas_counters_equal_to_a_recount(admin_client, admin_user):
    persona = make_persona_with_history()  # replies 0.5 and 0.97 (flagged), one in each session
    first, second = persona.chat_sessions.order_by("created_at")
    other = make_persona_with_history()
    assert drift_counters(persona) == drift_counters(other) == (2, 1, pytest.approx(1.47))
    # The admin's delete pages refuse: a session's messages would go with it, and the admin never deletes messages.
    delete_page = reverse("admin:chat_chatsession_delete", args=[second.pk])
    assert admin_client.post(delete_page, {"post": "yes"}).status_code == 403
    assert drift_counters(persona) == (2, 1, pytest.approx(1.47))

    # Its delete hooks, for when those pages allow it, go through the chat services.
    model_admin = admin.site._registry[ChatSession]
    request = RequestFactory().post("/")
    request.user = admin_user
    model_admin.delete_model(request, second)
    assert drift_counters(persona) == (1, 0, 0.5)
    model_admin.delete_queryset(request, ChatSession.objects.filter(pk=first.pk) | other.chat_sessions.all())
    assert ChatSession.objects.count() == 0
    assert drift_counters(persona) == drift_counters(other) == (0, 0, 0.0)
    assert drift_counts(persona_ids=[persona.pk, other.pk]) == {persona.pk: (0, 0, 0.0), other.pk: (0, 0, 0.0)}


def test_session_page_lists_its_messages_read_only(admin_client):
    session = ChatSessionFactory(title="Storm night", drift_ewma=0.4321)
    MessageFactory(session=session, index=0, role=Message.Role.USER, content="Tell me of storms.", drift_score=None)
    MessageFactory(session=session, index=1, content="The sea was wild " * 20, drift_score=0.97, flagged=True)

    rows = result_rows(admin_client.get(reverse("admin:chat_chatsession_changelist")))
    assert rows[0]["message_count"] == "2"
    assert rows[0]["flagged_count"] == "1"
    assert rows[0]["drift_ewma_display"] == "0.432"
    assert rows[0]["persona"] == str(session.persona)

    response = admin_client.get(reverse("admin:chat_chatsession_change", args=[session.pk]))
    html = response.content.decode()
    assert "Tell me of storms." in html
    assert FLAG_TEXT in html
    assert "The sea was wild The sea was wild" in html
    assert "…" in html  # the long reply is shown as an excerpt
    assert 'name="messages-0-content"' not in html
    assert admin_client.post(reverse("admin:chat_chatsession_change", args=[session.pk]), {}).status_code == 403


LORE = {
    "activated": [
        {"entry": "3", "name": "<script>alert('lore')</script> Weather", "reason": {"kind": "constant"}},
        {"entry": "1", "name": "", "reason": {"kind": "key", "key": "lighthouse"}},
        {"entry": "4", "name": "Storms", "reason": {"kind": "recursion", "via": "3", "key": "<b>gale</b>"}},
        {"entry": "5", "name": "Lamp", "reason": {"kind": "decorator", "decorator": "@@activate"}},
    ],
    "skipped": [
        {"entry": "7", "name": "Kraken", "reason": {"kind": "budget", "tokens": 120, "budget": 100, "used": 57}},
        {"entry": "8", "name": "Tides", "reason": {"kind": "scan_depth", "key": "tide", "scan_depth": 2}},
        {
            "entry": "9",
            "name": "Wreck",
            "reason": {"kind": "secondary_keys", "key": "wreck", "logic": "AND_ALL", "secondary": ["reef"]},
        },
        {
            "entry": "10",
            "name": "Gulls",
            "reason": {"kind": "decorator", "decorator": "@@activate_only_after", "value": 2, "turn": 1},
        },
    ],
    "tokens": 57,
    "state": {"version": 1, "kept": ["5"], "spent": []},
    "historyDropped": 2,
}


def test_message_change_page_shows_the_lore_of_a_reply_escaped(admin_client):
    message = MessageFactory(index=1, lore=LORE)
    html = admin_client.get(reverse("admin:chat_message_change", args=[message.pk])).content.decode()
    assert "Lore in the prompt" in html
    assert "<script>alert(" not in html and "<b>gale</b>" not in html
    assert "&lt;script&gt;alert(&#x27;lore&#x27;)&lt;/script&gt; Weather</strong> (entry 3) — always on" in html
    assert "<strong>entry 1</strong> — key “lighthouse”" in html
    assert "<strong>Storms</strong> (entry 4) — via entry 3, key “&lt;b&gt;gale&lt;/b&gt;”" in html
    assert "<strong>Lamp</strong> (entry 5) — decorator @@activate" in html
    assert "In the prompt</strong> (4 entries, 57 tokens)" in html
    assert "Left out</strong> (4 candidates)" in html
    assert "<strong>Kraken</strong> (entry 7) — over the token budget (120 tokens; 57 of 100 used)" in html
    assert "<strong>Tides</strong> (entry 8) — key “tide” only beyond the last 2 messages" in html
    assert "<strong>Wreck</strong> (entry 9) — key “wreck” but secondary keys not met (AND_ALL, found “reef”)" in html
    assert "<strong>Gulls</strong> (entry 10) — decorator @@activate_only_after 2 (turn 1)" in html
    assert "2 earlier messages left out of the prompt" in html
    assert "kept 5; spent none" in html

    rows = result_rows(admin_client.get(reverse("admin:chat_message_changelist")))
    assert rows[0]["lore_display"] == "4 entries · 4 skipped"
    session_page = admin_client.get(reverse("admin:chat_chatsession_change", args=[message.session_id]))
    assert "4 entries · 4 skipped" in session_page.content.decode()


def test_a_reply_without_lore_shows_none(admin_client):
    message = MessageFactory(index=1)
    html = admin_client.get(reverse("admin:chat_message_change", args=[message.pk])).content.decode()
    assert 'class="lore"' not in html
    assert result_rows(admin_client.get(reverse("admin:chat_message_changelist")))[0]["lore_display"] == "—"


# ---------------------------------------------------------------- API keys and usage


def test_api_key_pages_never_show_the_hash(admin_client):
    api_key, plain = api_key_create(username="alice", name="laptop")
    pages = [
        reverse("admin:accounts_apikey_changelist"),
        reverse("admin:accounts_apikey_change", args=[api_key.pk]),
        reverse("admin:accounts_apikey_delete", args=[api_key.pk]),
        reverse("admin:accounts_apikey_history", args=[api_key.pk]),
        reverse("admin:accounts_apikey_changelist") + "?q=laptop",
    ]
    for url in pages:
        html = admin_client.get(url).content.decode()
        assert api_key.key_hash not in html, url
        assert plain not in html, url
        assert "key_hash" not in html, url
    changelist = admin_client.get(reverse("admin:accounts_apikey_changelist")).content.decode()
    assert f"mb_{api_key.prefix}_…" in changelist
    assert "laptop" in changelist
    assert admin_client.get(reverse("admin:accounts_apikey_add")).status_code == 403


def test_api_key_change_form_has_no_hash_field(admin_client):
    api_key, _ = api_key_create(username="alice")
    response = admin_client.get(reverse("admin:accounts_apikey_change", args=[api_key.pk]))
    assert "key_hash" not in response.context["adminform"].form.fields
    # Posting a hash does not change it.
    admin_client.post(
        reverse("admin:accounts_apikey_change", args=[api_key.pk]), {"name": "renamed", "key_hash": "0" * 64}
    )
    refreshed = ApiKey.objects.get(pk=api_key.pk)
    assert refreshed.key_hash == api_key.key_hash
    assert refreshed.name == "renamed"


def test_revoke_action_sets_revoked_at(admin_client):
    first, _ = api_key_create(username="alice", name="one")
    second, _ = api_key_create(username="alice", name="two")
    kept, _ = api_key_create(username="bob", name="kept")
    earlier = timezone.now() - timedelta(days=3)
    ApiKey.objects.filter(pk=second.pk).update(revoked_at=earlier)

    response = admin_client.post(
        reverse("admin:accounts_apikey_changelist"),
        {"action": "revoke_selected", "_selected_action": [str(first.pk), str(second.pk)]},
        follow=True,
    )
    assert response.status_code == 200
    assert "Revoked 1 key." in response.content.decode()
    first.refresh_from_db()
    second.refresh_from_db()
    kept.refresh_from_db()
    assert first.revoked_at is not None
    assert second.revoked_at == earlier  # already revoked: left as it was
    assert kept.revoked_at is None
    active = result_rows(admin_client.get(reverse("admin:accounts_apikey_changelist"), {"state": "active"}))
    assert [row["key_display"] for row in active] == [f"mb_{kept.prefix}_…"]


def test_usage_records_are_listed_read_only_and_filter_by_kind_and_status(admin_client):
    owner = UserFactory()
    chat = UsageRecord.objects.create(
        owner=owner,
        kind=UsageRecord.Kind.CHAT,
        run_id="msg_1",
        provider="demo",
        model="demo-small",
        prompt_tokens=12,
        completion_tokens=34,
        status=UsageRecord.Status.COMPLETED,
        ended_at=timezone.now(),
    )
    persona_run = UsageRecord.objects.create(
        owner=owner, kind=UsageRecord.Kind.PERSONA, run_id="per_1", provider="demo", model="demo-large"
    )
    url = reverse("admin:accounts_usagerecord_changelist")

    rows = {row["run_id"]: row for row in result_rows(admin_client.get(url))}
    assert rows["msg_1"]["prompt_tokens"] == "12"
    assert rows["msg_1"]["completion_tokens"] == "34"
    assert rows["msg_1"]["model"] == "demo-small"
    assert rows["msg_1"]["owner"] == owner.username
    assert [r["run_id"] for r in result_rows(admin_client.get(url, {"kind__exact": "chat"}))] == ["msg_1"]
    assert [r["run_id"] for r in result_rows(admin_client.get(url, {"status__exact": "running"}))] == ["per_1"]
    change_url = reverse("admin:accounts_usagerecord_change", args=[chat.pk])
    assert admin_client.post(change_url, {"prompt_tokens": "0"}).status_code == 403
    assert admin_client.get(reverse("admin:accounts_usagerecord_add")).status_code == 403
    assert persona_run.pk != chat.pk
