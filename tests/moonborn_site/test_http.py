"""The API's HTTP plumbing in-process: what reaches the log from a request, which hosts are served."""

import io
import logging

import pytest
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse
from django.test import RequestFactory, override_settings

from moonborn_site.handlers import LeanRequest
from moonborn_site.middleware import ApiErrorMiddleware


def test_an_unhandled_error_logs_the_requests_path_with_its_cr_and_lf_escaped(caplog: pytest.LogCaptureFixture) -> None:
    # `%0d%0a` in the URL is a CR and an LF in `request.path`: written raw they would start a forged log line.
    request = RequestFactory().get("/v1/personas%0d%0a2026-01-01 INFO admin logged in")
    middleware = ApiErrorMiddleware(lambda request: HttpResponse())
    with caplog.at_level(logging.ERROR, logger="moonborn_site.middleware"):
        response = middleware.process_exception(request, RuntimeError("boom"))
    assert response is not None and response.status_code == 500
    [record] = caplog.records
    assert record.getMessage() == "unhandled error on GET /v1/personas\\r\\n2026-01-01 INFO admin logged in"


HOST_CASES = [
    pytest.param([(b"host", b"localhost:8000")], {}, True, id="allowed"),
    pytest.param([(b"host", b"evil.example")], {}, False, id="foreign"),
    pytest.param([(b"host", b"localhost"), (b"host", b"evil.example")], {}, False, id="repeated"),
    pytest.param([(b"host", b"localhost\r\nx")], {}, False, id="crlf"),
    pytest.param([(b"host", b"localhost"), (b"x-forwarded-host", b"evil.example")], {}, True, id="forwarded-ignored"),
    pytest.param(
        [(b"host", b"localhost"), (b"x-forwarded-host", b"evil.example")],
        {"USE_X_FORWARDED_HOST": True},
        False,
        id="forwarded-trusted",
    ),
    pytest.param([(b"host", b"app.localhost")], {"DEBUG": True, "ALLOWED_HOSTS": []}, True, id="debug-localhost"),
    pytest.param([(b"host", b"evil.example")], {"DEBUG": True, "ALLOWED_HOSTS": []}, False, id="debug-foreign"),
    pytest.param([(b"host", b"localhost")], {"DEBUG": False, "ALLOWED_HOSTS": []}, False, id="nothing-allowed"),
]


@pytest.mark.parametrize(("headers", "overrides", "allowed"), HOST_CASES)
def test_the_fast_path_judges_the_host_as_djangos_get_host_does(
    headers: list[tuple[bytes, bytes]], overrides: dict[str, object], allowed: bool
) -> None:
    scope = {"type": "http", "method": "POST", "path": "/v1/x", "headers": headers, "server": ("127.0.0.1", 8000)}
    with override_settings(**{"ALLOWED_HOSTS": ["localhost", "127.0.0.1"], "DEBUG": False, **overrides}):
        try:
            ASGIRequest(scope, io.BytesIO()).get_host()
            django_allows = True
        except DisallowedHost:
            django_allows = False
        assert (LeanRequest(scope).host_allowed(), django_allows) == (allowed, allowed)


def test_the_fast_path_leaves_a_request_without_a_host_to_django() -> None:
    scope = {"type": "http", "method": "POST", "path": "/v1/x", "headers": [], "server": ("127.0.0.1", 8000)}
    with override_settings(ALLOWED_HOSTS=["127.0.0.1"]):
        assert LeanRequest(scope).host_allowed() is False
        assert ASGIRequest(scope, io.BytesIO()).get_host() == "127.0.0.1:8000"
