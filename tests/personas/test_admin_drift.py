"""The admin drift dashboard, the flag queue feeding calibration, session sparklines and card import/export."""

import io
import json
import re
import zipfile

import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from bench import drift_set
from chat.charts import Point, histogram, line_chart, sparkline
from chat.models import Message
from personas.admin import drift_health
from personas.cards import card_v3, png_with_card
from personas.models import Persona
from tests.factories import ChatSessionFactory, MessageFactory, PersonaFactory, UserFactory, calibrated_persona

pytestmark = pytest.mark.django_db

_ZED = next(p for p in drift_set.load("dev") if p.name == "Zed")
ZED = {"anchors": _ZED.anchors, "samples": _ZED.samples, "in_character": _ZED.in_character, "generic": _ZED.generic}


def zed_with_chats() -> tuple[Persona, list[Message]]:
    """Zed, calibrated on the labelled anchors, with two sessions: one calm, one drifting (three flagged replies)."""
    persona = calibrated_persona(anchors=ZED["anchors"], samples=ZED["samples"], name="Zed")
    threshold = persona.drift_threshold
    calm = ChatSessionFactory(persona=persona, drift_ewma=0.3)
    drifting = ChatSessionFactory(persona=persona, drift_ewma=0.99, drift_streak=3, sustained_drift_at=timezone.now())
    flagged = []
    for i, score in enumerate([0.2, 0.4, 0.3]):
        MessageFactory(session=calm, index=2 * i, role=Message.Role.USER, drift_score=None, drift_threshold=None)
        MessageFactory(session=calm, index=2 * i + 1, content=ZED["in_character"][i], drift_score=score)
    for i, score in enumerate([0.5, 0.999, 0.9995, 0.9999]):
        MessageFactory(session=drifting, index=2 * i, role=Message.Role.USER, drift_score=None, drift_threshold=None)
        message = MessageFactory(
            session=drifting,
            index=2 * i + 1,
            content=ZED["generic"][i] if score > 0.99 else ZED["in_character"][5],
            drift_score=score,
            drift_threshold=threshold,
            flagged=score > threshold,
        )
        if message.flagged:
            flagged.append(message)
    return persona, flagged


def svg(html: str, chart_id: str) -> str:
    match = re.search(rf'<svg class="drift-chart" id="{chart_id}".*?</svg>', html, re.S)
    assert match, chart_id
    return match.group(0)


def test_dashboard_shows_the_three_charts_the_sessions_and_the_flagged_replies(admin_client) -> None:
    persona, flagged = zed_with_chats()
    response = admin_client.get(reverse("admin:personas_persona_drift", args=[persona.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    over_time = svg(html, "chart-over-time")
    assert over_time.count('class="point flagged"') == 3
    assert over_time.count('class="point"') == 4
    assert over_time.count('class="threshold"') == 1
    assert f"threshold {persona.drift_threshold:.3f}" in over_time
    by_turn = svg(html, "chart-by-turn")
    assert by_turn.count("<circle") == 7 and "<polyline" not in by_turn
    hist = svg(html, "chart-histogram")
    # The calibration's null: every point as often as it counts (the samples weigh half of it).
    assert "replies (7)" in hist and f"calibration set ({len(persona.calibration['null_distances'])})" in hist
    assert hist.count('class="calibration"') == 1
    assert 'id="flag-rate">42.9%<' in html  # 3 of 7
    assert 'id="sustained-sessions">1<' in html
    assert "drift-health-drifting" in html
    rows = re.findall(r'<tr class="flagged-reply">(.*?)</tr>', html, re.S)
    assert len(rows) == 3
    assert [m.pk for m in reversed(flagged)] == [re.search(r"(msg_\w+)", r).group(1) for r in rows]
    assert html.count('class="drift-chart" id="spark-') == 2
    # Nothing is loaded from another host: the charts are inline SVG.
    assert not re.search(r'(?:src|href)="(?:https?:)?//', html)


def test_flag_queue_review_feeds_the_persona_calibration(admin_client) -> None:
    persona, flagged = zed_with_chats()
    queue_url = reverse("admin:chat_message_flag_queue")
    page = admin_client.get(queue_url).content.decode()
    assert page.count('<tr class="flagged-reply">') == 3
    target = flagged[0]
    response = admin_client.post(queue_url, {"message": target.pk, "review": "in_character"})
    assert response.status_code == 302 and response["Location"] == queue_url
    target.refresh_from_db()
    persona.refresh_from_db()
    assert target.review == "in_character" and target.reviewed_by is not None
    assert persona.calibration["n_replies"] == 1
    assert admin_client.get(queue_url).content.decode().count('<tr class="flagged-reply">') == 2
    # out of character: recorded, and not part of the calibration
    back = reverse("admin:personas_persona_drift", args=[persona.pk])
    response = admin_client.post(queue_url, {"message": flagged[1].pk, "review": "out_of_character", "next": back})
    assert response["Location"] == back
    persona.refresh_from_db()
    assert persona.calibration["n_replies"] == 1
    # an unknown verdict or an open redirect changes nothing
    response = admin_client.post(
        queue_url, {"message": flagged[2].pk, "review": "meh", "next": "https://evil.example/"}
    )
    assert response["Location"] == queue_url
    flagged[2].refresh_from_db()
    assert flagged[2].review == ""


def test_message_list_actions_review_and_recalibrate(admin_client) -> None:
    persona, flagged = zed_with_chats()
    url = reverse("admin:chat_message_changelist")
    response = admin_client.post(
        url, {"action": "mark_in_character", "_selected_action": [m.pk for m in flagged[:2]]}, follow=True
    )
    assert response.status_code == 200
    assert "2 replies marked in character; calibration updated." in response.content.decode()
    persona.refresh_from_db()
    assert persona.calibration["n_replies"] == 2
    admin_client.post(url, {"action": "clear_review", "_selected_action": [flagged[0].pk]})
    persona.refresh_from_db()
    assert persona.calibration["n_replies"] == 1


def test_staff_without_change_permission_cannot_review(client) -> None:
    _, flagged = zed_with_chats()
    staff = UserFactory(is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_message"))
    client.force_login(staff)
    queue_url = reverse("admin:chat_message_flag_queue")
    page = client.get(queue_url)
    assert page.status_code == 200
    assert page.content.decode().count('<tr class="flagged-reply">') == 3
    assert 'value="in_character"' not in page.content.decode()
    assert client.post(queue_url, {"message": flagged[0].pk, "review": "in_character"}).status_code == 403
    flagged[0].refresh_from_db()
    assert flagged[0].review == ""


def test_persona_list_health_badges(admin_client) -> None:
    drifting, _ = zed_with_chats()
    healthy = PersonaFactory(name="Calm")
    MessageFactory(session=ChatSessionFactory(persona=healthy), drift_score=0.1)
    PersonaFactory(name="Quiet")
    html = admin_client.get(reverse("admin:personas_persona_changelist")).content.decode()
    assert html.count("drift-health-drifting") == 1
    assert html.count("drift-health-healthy") == 1
    assert html.count("drift-health-no-data") == 1
    assert reverse("admin:personas_persona_import") in html
    assert drifting.pk in html


@pytest.mark.parametrize(
    ("replies", "share", "sustained", "label"),
    [
        (0, None, 0, "no data"),
        (10, 0.0, 0, "healthy"),
        (100, 0.10, 0, "healthy"),
        (100, 0.11, 0, "watch"),
        (100, 0.20, 0, "watch"),
        (100, 0.21, 0, "drifting"),
        (100, 0.0, 1, "drifting"),
    ],
)
def test_drift_health(replies: int, share: float | None, sustained: int, label: str) -> None:
    assert drift_health(replies, share, sustained) == label


def test_session_page_has_a_per_turn_sparkline(admin_client) -> None:
    persona, _ = zed_with_chats()
    session = persona.chat_sessions.get(sustained_drift_at__isnull=False)
    html = admin_client.get(reverse("admin:chat_chatsession_change", args=[session.pk])).content.decode()
    spark = svg(html, f"spark-{session.pk}")
    assert spark.count("<circle") == 4 and spark.count('class="point flagged"') == 3
    assert 'class="sustained-drift"' in html


def test_chart_markup_escapes_labels() -> None:
    chart = line_chart([Point(0, 0.5, False, "<b>&")], threshold=0.9, title="t<", x_label="x>", chart_id="c")
    assert "<b>" not in chart and "&lt;b&gt;&amp;" in chart and "t&lt;" in chart
    assert "no scored replies" in line_chart([], threshold=None, title="t", x_label="x", chart_id="e")
    assert histogram([0.0, 1.0], [0.5], threshold=0.9, title="h", chart_id="h").count('class="bar"') == 2
    assert sparkline([None, 0.5], [False, False], threshold=None, chart_id="s").count("<circle") == 1


def test_admin_export_and_import_cards(admin_client) -> None:
    persona, _ = zed_with_chats()
    other = PersonaFactory(name="Other", anchor_vectors=persona.anchor_vectors, drift_anchors=ZED["anchors"])
    url = reverse("admin:personas_persona_changelist")
    one = admin_client.post(url, {"action": "export_cards", "_selected_action": [persona.pk]})
    assert one["Content-Type"] == "application/json; charset=utf-8"
    card = json.loads(one.content)
    assert card["spec"] == "chara_card_v3" and card["data"]["name"] == "Zed"
    both = admin_client.post(url, {"action": "export_cards", "_selected_action": [persona.pk, other.pk]})
    assert both["Content-Type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(both.content)).namelist()
    assert sorted(names) == sorted([f"Zed-{persona.pk}.json", f"Other-{other.pk}.json"])

    owner = UserFactory(username="carol")
    import_url = reverse("admin:personas_persona_import")
    assert admin_client.get(import_url).status_code == 200
    png = png_with_card(card_v3({"name": "Imported Zed", "first_mes": ZED["anchors"][0]}))
    response = admin_client.post(
        import_url, {"owner": owner.pk, "card": SimpleUploadedFile("zed.png", png, content_type="image/png")}
    )
    assert response.status_code == 302
    imported = Persona.objects.get(owner=owner)
    assert imported.name == "Imported Zed" and imported.status == Persona.Status.READY
    assert response["Location"] == reverse("admin:personas_persona_change", args=[imported.pk])
    bad = admin_client.post(
        import_url, {"owner": owner.pk, "card": SimpleUploadedFile("x.json", b"{}", content_type="application/json")}
    )
    assert bad.status_code == 200 and "Not a character card" in bad.content.decode()
    assert Persona.objects.filter(owner=owner).count() == 1


def test_admin_export_names_each_card_after_its_names_slug_and_its_id(admin_client) -> None:
    climber = PersonaFactory(name="../../etc/passwd")
    rooted = PersonaFactory(name="/abs\\path")
    long = PersonaFactory(name="Zoë " + "y" * 196)
    # Nothing of it survives as a file name (PostgreSQL stores no NUL, so control characters stand for the worst).
    unnamed = PersonaFactory(name="\x01..\\\x7f")
    twins = [PersonaFactory(name="Twin"), PersonaFactory(name="Twin")]
    chosen = [climber, rooted, long, unnamed, *twins]
    url = reverse("admin:personas_persona_changelist")
    response = admin_client.post(url, {"action": "export_cards", "_selected_action": [p.pk for p in chosen]})
    assert response["Content-Type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(response.content)).namelist()
    assert sorted(names) == sorted(
        [
            f"etc-passwd-{climber.pk}.json",
            f"abs-path-{rooted.pk}.json",
            f"Zoe-{'y' * 56}-{long.pk}.json",
            f"{unnamed.pk}.json",
            f"Twin-{twins[0].pk}.json",
            f"Twin-{twins[1].pk}.json",
        ]
    )
    one = admin_client.post(url, {"action": "export_cards", "_selected_action": [climber.pk]})
    assert one["Content-Disposition"] == f'attachment; filename="etc-passwd-{climber.pk}.json"'
