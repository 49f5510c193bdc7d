"""The web UI in a real browser: headless Debian Chromium driven by Playwright, against uvicorn."""

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.conftest import manage
from tests.e2e.cutproxy import CutProxy
from tests.e2e.helpers import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, make_persona, make_session

STEPS = ["soul_draft", "lore_weave", "psyche_profile", "voice_print", "dialogue_seed", "card_compile"]
# 60 tokens at 40 ms: long enough to watch the text grow and to press Stop mid-reply.
SLOW = {"MOONBORN_DEMO_DELAY_MS": "40", "MOONBORN_DEMO_REPLY_TOKENS": "60"}

# Records every change of a step's state, so the test sees the steps light up one by one.
WATCH_STEPS = """() => {
  window.stepLog = [];
  new MutationObserver((changes) => {
    for (const change of changes) {
      const li = change.target;
      if (change.oldValue !== li.dataset.state) window.stepLog.push([li.dataset.step, li.dataset.state]);
    }
  }).observe(document.getElementById("steps"),
             {subtree: true, attributes: true, attributeFilter: ["data-state"], attributeOldValue: true});
}"""


@pytest.fixture
def page(server_factory):
    server = server_factory(**SLOW)
    manage(
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model; U = get_user_model(); "
        "u, _ = U.objects.get_or_create(username='uma'); u.set_password('moon and stars 42'); u.save()",
        env=server.env,
    )
    proxy = CutProxy(int(server.base_url.rsplit(":", 1)[1])).start()
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(base_url=proxy.base_url, viewport={"width": 1000, "height": 900})
            page = context.new_page()
            page.proxy = proxy  # type: ignore[attr-defined]
            page.server = server  # type: ignore[attr-defined]
            page.errors = []  # type: ignore[attr-defined]
            page.on("pageerror", lambda error: page.errors.append(str(error)))  # type: ignore[attr-defined]
            yield page
        finally:
            browser.close()
            proxy.close()


# Records the text of every tool line added to the history (the `lorebook` call's "Consulting lorebook…" is
# replaced by its result within a few milliseconds, before the first token).
WATCH_TOOLS = """() => {
  window.toolLog = [];
  new MutationObserver((changes) => {
    for (const change of changes) {
      for (const node of change.addedNodes) {
        if (node.nodeType === 1 && node.classList.contains("tool")) window.toolLog.push(node.textContent);
      }
    }
  }).observe(document.getElementById("history"), {subtree: true, childList: true});
}"""


def shot(page: Page, name: str) -> Path:
    path = ARTIFACTS / f"ui-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def stored_messages(page: Page, session_id: str) -> list[dict]:
    body = page.evaluate(
        "async (id) => (await fetch(`/v1/chat/sessions/${id}/messages`,"
        " {headers: {Accept: 'application/json'}})).json()",
        session_id,
    )
    return list(body["results"])


def watch_reply(page: Page) -> list[str]:
    """Sample the streaming reply's text until it finishes; return every distinct value seen."""
    reply = page.locator("#history li.assistant").last
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text, status = reply.evaluate("li => [li.querySelector('.text').textContent, li.dataset.status]")
        if not seen or text != seen[-1]:
            seen.append(text)
        if status != "streaming":
            return seen
        time.sleep(0.03)
    raise AssertionError("the reply did not finish")


def test_browser_creates_a_persona_chats_stops_resumes_and_reloads(page):
    proxy: CutProxy = page.proxy  # type: ignore[attr-defined]
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    page.get_by_label("Username").fill("uma")
    page.get_by_label("Password").fill("moon and stars 42")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Your personas")).to_be_visible()

    # A persona is born: six steps light up in order, each with its duration and model.
    page.get_by_role("link", name="New persona").first.click()
    # The observer needs the new page's step list: wait until it is parsed, not just navigated to.
    expect(page).to_have_url(re.compile(r"/personas/new"))
    page.locator("#steps").wait_for(state="attached")
    page.evaluate(WATCH_STEPS)
    page.get_by_label("Who is this persona?").fill("A retired lighthouse keeper on a windy northern island")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#result")).to_be_visible(timeout=30_000)
    shot(page, "1-persona-born")
    assert page.evaluate("window.stepLog") == [[step, state] for step in STEPS for state in ("running", "done")]
    metas = page.locator("#steps .step-meta").all_text_contents()
    assert len(metas) == 6
    assert all(re.fullmatch(r"\d+ ms · demo", meta) for meta in metas), metas
    assert page.locator("#progress-bar").evaluate("bar => bar.value") == 6
    name = page.locator("#card-name").text_content()
    assert name
    expect(page.locator("#card-first")).not_to_be_empty()

    # Chat: tokens arrive incrementally, the reply ends with a drift badge.
    page.get_by_role("button", name=f"Chat with {name}").click()
    expect(page).to_have_url(re.compile(r"/chat/ses_[0-9a-z]+$"))
    session_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#chat")).to_have_attribute("data-loaded", "true")
    page.evaluate(WATCH_TOOLS)
    # "home" is a key of the demo lorebook's second entry (llm.demo's lore_weave: keys "home" and the setting).
    page.get_by_label("Your message").fill("Walk me through a stormy night at the lamp, far from home.")
    page.get_by_label("Your message").press("Enter")
    seen = watch_reply(page)
    growing = [text for text in seen if text]
    assert len(growing) >= 3, seen
    assert all(
        later.startswith(earlier) and later != earlier for earlier, later in zip(growing, growing[1:], strict=False)
    )
    first = page.locator("#history li.assistant").last
    expect(first).to_have_attribute("data-status", "completed")
    stored = stored_messages(page, session_id)
    assert [(m["role"], m["status"]) for m in stored] == [("user", "completed"), ("assistant", "completed")]
    assert first.locator(".text").text_content() == stored[1]["content"]
    assert len(stored[1]["content"].split()) == 60
    badge = f"drift {stored[1]['driftScore']:.2f} / {stored[1]['driftThreshold']:.2f}"
    expect(first.locator(".badge")).to_have_text(("drifted " if stored[1]["drifted"] else "") + badge)

    # The lorebook was consulted before the first token: "Consulting lorebook…", then the entries it put in and why.
    lore = stored[1]["lore"]
    home = next(a for a in lore["activated"] if a["reason"] == {"kind": "key", "key": "home"})
    assert page.evaluate("window.toolLog")[0] == "Consulting lorebook…"
    count = len(lore["activated"])
    summary = f"Lore: {count} {'entry' if count == 1 else 'entries'}"
    skipped = f" · {len(lore['skipped'])} skipped" if lore["skipped"] else ""
    expect(first.locator(".lore summary")).to_have_text(summary + skipped)
    expect(first.locator(".tool")).to_have_count(1)
    expect(first.locator(".lore .lore-list.activated li")).to_have_count(count)
    row = first.locator(f'.lore .lore-list.activated li[data-entry="{home["entry"]}"]')
    expect(row).to_be_hidden()  # collapsed until opened
    first.locator(".lore summary").click()
    expect(row).to_be_visible()
    expect(row).to_have_text(f"{home['name'] or 'entry ' + home['entry']} — key “home”")
    shot(page, "2-reply")

    # Stop mid-reply: the reply ends, marked cancelled, and keeps its partial text.
    page.get_by_label("Your message").fill("Tell me the whole history of the island.")
    page.get_by_role("button", name="Send").click()
    second = page.locator("#history li.assistant").last
    expect(second.locator(".text")).to_have_text(re.compile(r"^(\S+\s+){3}"))
    page.get_by_role("button", name="Stop").click()
    expect(second).to_have_attribute("data-status", "cancelled")
    expect(second.locator(".state")).to_have_text("cancelled")
    stored = stored_messages(page, session_id)
    assert [(m["role"], m["status"]) for m in stored][2:] == [("user", "completed"), ("assistant", "cancelled")]
    assert second.locator(".text").text_content() == stored[3]["content"]
    assert 3 <= len(stored[3]["content"].split()) < 60
    shot(page, "3-stopped")

    # A dropped connection: the page resumes from Last-Event-ID, no text repeated or lost.
    proxy.cut_on(b"on_disconnect=continue", after=900)
    page.get_by_label("Your message").fill("And the lamp itself?")
    page.get_by_role("button", name="Send").click()
    third = page.locator("#history li.assistant").last
    expect(third).to_have_attribute("data-status", "completed", timeout=30_000)
    assert proxy.cuts == 1
    stored = stored_messages(page, session_id)
    assert [(m["role"], m["status"]) for m in stored][4:] == [("user", "completed"), ("assistant", "completed")]
    assert third.locator(".text").text_content() == stored[5]["content"]
    assert len(stored[5]["content"].split()) == 60
    # The resumed reply shows its lore once, neither lost nor repeated.
    expect(third.locator(".tool")).to_have_count(1)
    expect(third.locator(".lore")).to_have_count(1)

    # Reload: the whole history is back, with badges and the cancelled mark.
    texts = page.locator("#history li .text").all_text_contents()
    page.reload()
    expect(page.locator("#chat")).to_have_attribute("data-loaded", "true")
    assert page.locator("#history li .text").all_text_contents() == texts
    roles = page.locator("#history > li").evaluate_all("items => items.map(li => li.dataset.role)")
    assert roles == ["user", "assistant"] * 3
    expect(page.locator("#history li.assistant").nth(1).locator(".state")).to_have_text("cancelled")
    expect(page.locator("#history li.assistant .badge")).to_have_count(2)
    # Each earlier reply shows its lore again, from the message's `lore`: the first one names the same entry.
    expect(page.locator("#history li.assistant .lore")).to_have_count(3)
    reloaded = page.locator("#history li.assistant").first
    expect(reloaded.locator(".lore summary")).to_have_text(summary + skipped)
    reloaded.locator(".lore summary").click()
    expect(reloaded.locator(f'.lore-list.activated li[data-entry="{home["entry"]}"]')).to_have_text(
        f"{home['name'] or 'entry ' + home['entry']} — key “home”"
    )
    shot(page, "4-reloaded")

    # The gallery lists the persona and its chat.
    page.get_by_role("link", name="Personas").click()
    expect(page.locator(".gallery .card h2")).to_have_text([name])
    assert page.errors == []  # type: ignore[attr-defined]


def test_pages_need_a_login_and_hide_other_owners_chats(page):
    proxy: CutProxy = page.proxy  # type: ignore[attr-defined]
    server = page.server  # type: ignore[attr-defined]
    alices_session = make_session(server, make_persona(server))
    anonymous = page.request.get("/personas/new", max_redirects=0)
    assert anonymous.status == 302
    assert anonymous.headers["location"] == "/accounts/login/?next=/personas/new"
    script = page.request.get("/ui/assets/app.js")
    assert (script.status, script.headers["content-type"]) == (200, "text/javascript; charset=utf-8")
    assert page.request.get("/ui/assets/app.css").headers["content-type"] == "text/css; charset=utf-8"
    assert page.request.get("/ui/assets/..%2Fviews.py").status == 404
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill("uma")
    page.get_by_label("Password").fill("moon and stars 42")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Your personas")).to_be_visible()
    assert page.goto(f"/chat/{alices_session}").status == 404  # type: ignore[union-attr]
    assert proxy.cuts == 0
