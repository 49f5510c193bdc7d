"""The API's Swagger UI and Redoc in a real browser: headless Debian Chromium (Playwright) against uvicorn."""

from urllib.parse import urlsplit

from playwright.sync_api import expect, sync_playwright

from tests.e2e.helpers import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS


def test_the_docs_render_every_operation_from_the_servers_own_files(server) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(base_url=server.base_url, viewport={"width": 1280, "height": 1000}).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            # Where over the network (blob: and data: URLs stay in the page): a request that the pages'
            # Content-Security-Policy refuses fails without leaving the browser.
            fetched: set[str] = set()
            page.on(
                "requestfinished",
                lambda request: fetched.add(urlsplit(request.url).netloc) if request.url.startswith("http") else None,
            )

            page.goto("/v1/docs")
            # 18 operations (moonborn_site.urls.api), rendered from /v1/openapi.json.
            expect(page.locator(".opblock")).to_have_count(18, timeout=30_000)
            expect(page.get_by_text("/v1/chat/sessions/{session_id}/messages", exact=True).first).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "swagger-ui.png"))

            # The chat reply's responses: the event stream, and the JSON result without streaming.
            page.locator("#operations-chat-chat_sessions_messages_create .opblock-summary").click()
            reply = page.locator("#operations-chat-chat_sessions_messages_create")
            expect(reply.get_by_text("The event stream:", exact=False)).to_be_visible()
            expect(reply.get_by_text("Without streaming: the finished reply.")).to_be_visible()

            page.goto("/v1/redoc#tag/personas/operation/personas_create")
            expect(page.get_by_role("heading", name="Moonborn API (1)")).to_be_visible(timeout=30_000)
            expect(page.get_by_role("heading", name="personas_create")).to_be_visible()
        finally:
            browser.close()
    assert errors == []
    assert fetched == {urlsplit(server.base_url).netloc}
