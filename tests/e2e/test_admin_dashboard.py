"""The admin drift dashboard in a real browser: headless Debian Chromium (Playwright) against uvicorn.

A persona is imported over the API from a card whose dialogue includes an assistant-style line, so that some of the
demo model's replies (which quote the persona's lines) break character and are flagged by the hard rules, and some
do not. The admin then finds the charts and exactly those flagged replies, and reviews one from the page.
"""

import json

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.conftest import manage
from tests.e2e.helpers import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, JSON, make_session

CARD = {
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "data": {
        "name": "Captain Redbeard",
        "description": "A pirate captain.",
        "first_mes": "Ahoy there, landlubber, welcome aboard the Crimson Gull!",
        "alternate_greetings": ["Arr, state yer business or walk the plank, matey."],
        "mes_example": "<START>\n{{user}}: Help?\n{{char}}: As an AI language model I cannot sail any ship.",
        "extensions": {"fav": True},
    },
}
PASSWORD = "keel and compass 77"


@pytest.fixture
def scored_persona(server):
    """Alice's imported persona with one session of eight scored replies; returns (server, persona, drifted ids)."""
    manage(
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model; U = get_user_model(); "
        "u, _ = U.objects.get_or_create(username='ada'); u.is_staff = u.is_superuser = True; "
        f"u.set_password({PASSWORD!r}); u.save()",
        env=server.env,
    )
    with server.client() as client:
        # The demo model's replies depend on the persona's (random) id: which of them quote the assistant-style line
        # varies. The fixture is only useful with both kinds of reply, so a persona whose eight replies all came out
        # one way is deleted (so it cannot count as another persona in the bleed component) and the card imported
        # again (rarely needed; at most three times).
        for _ in range(3):
            response = client.post(
                "/v1/personas/import", content=json.dumps(CARD), headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 201, response.text
            persona = response.json()["id"]
            session = make_session(server, persona)
            drifted = []
            for i in range(8):
                reply = client.post(
                    f"/v1/chat/sessions/{session}/messages",
                    json={"content": f"Tell me about voyage {i}."},
                    headers=JSON,
                )
                assert reply.status_code == 201, reply.text
                body = reply.json()
                if body["drifted"]:
                    drifted.append(body["messageId"])
            if 0 < len(drifted) < 8:
                break
            assert client.delete(f"/v1/personas/{persona}").status_code == 204
    assert 0 < len(drifted) < 8, drifted
    return server, persona, drifted


def test_admin_finds_the_charts_and_the_flagged_replies(scored_persona) -> None:
    server, persona, drifted = scored_persona
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(base_url=server.base_url, viewport={"width": 1400, "height": 1000}).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto("/admin/login/?next=/admin/personas/persona/")
            page.fill("#id_username", "ada")
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            expect(page.locator("#result_list")).to_be_visible()
            row = page.locator("#result_list tr", has_text=persona)
            expect(row.locator(".drift-health")).to_have_count(1)

            page.goto(f"/admin/personas/persona/{persona}/change/")
            page.click("text=Open the drift dashboard")
            expect(page).to_have_url(f"{server.base_url}/admin/personas/persona/{persona}/drift/")
            for chart in ("#chart-over-time", "#chart-histogram", "#chart-by-turn"):
                expect(page.locator(chart)).to_be_visible()
            expect(page.locator("#chart-over-time circle")).to_have_count(8)
            expect(page.locator("#chart-over-time circle.flagged")).to_have_count(len(drifted))
            expect(page.locator("#chart-over-time line.threshold")).to_have_count(1)
            expect(page.locator("#chart-histogram rect.bar").first).to_be_visible()
            expect(page.locator("#chart-by-turn circle")).to_have_count(8)
            expect(page.locator("#reply-count")).to_have_text("8")
            rows = page.locator("#flagged-replies tr.flagged-reply")
            expect(rows).to_have_count(len(drifted))
            shown = sorted(rows.nth(i).locator("td").first.inner_text().strip() for i in range(len(drifted)))
            assert shown == sorted(drifted)
            expect(page.locator("#sessions svg.drift-chart")).to_have_count(1)
            page.screenshot(path=str(ARTIFACTS / "admin-drift-dashboard.png"), full_page=True)

            # Review the first flagged reply from the dashboard: it leaves the queue, the page comes back.
            rows.first.locator("button[value=in_character]").click()
            expect(page.locator("ul.messagelist")).to_contain_text("marked in character; calibration updated")
            expect(page).to_have_url(f"{server.base_url}/admin/personas/persona/{persona}/drift/")
            expect(page.locator("#flagged-replies tr.flagged-reply")).to_have_count(len(drifted) - 1)
            page.goto("/admin/chat/message/flag-queue/")
            expect(page.locator("#flag-queue tr.flagged-reply, #flag-queue-empty")).to_have_count(
                max(len(drifted) - 1, 1)
            )
            assert errors == []
        finally:
            browser.close()
