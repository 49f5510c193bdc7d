"""The OpenAPI 3.1 schema of /v1/: valid, complete (every route, every method, every event), committed as generated,
and its pages served with their own files."""

import ast
import inspect
import json
import re
from types import SimpleNamespace
from typing import Any

import pytest
from django.test import Client
from django.urls import URLResolver
from django.utils import timezone
from djangorestframework_camel_case.util import camelize
from drf_spectacular.drainage import GENERATOR_STATS
from moonborn import events as sdk_events
from moonborn._sse import RawEvent
from moonborn.events import UnknownEvent, parse_event
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from chat import replies
from chat.serializers import CHAT_EVENTS, MessageSerializer
from chat.views import reply_json
from moonborn_site import urls
from moonborn_site.openapi import AsyncOperation, operation_of
from moonborn_site.schema import SCHEMA_FILE, event_component_name, generate_schema, schema_json
from personas import pipeline
from personas.serializers import PERSONA_EVENTS, PersonaSerializer
from tests.conftest import ROOT
from tests.factories import ChatSessionFactory, MessageFactory

REGENERATE = "python manage.py openapi_schema"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return generate_schema()


def api_routes() -> dict[str, dict[str, Any]]:
    """Every route of `urls.api` as the schema writes its path (`/v1/personas/{persona_id}`): method → view."""
    [mount] = [p for p in urls.urlpatterns if isinstance(p, URLResolver) and p.url_patterns is urls.api]
    prefix = "/" + str(mount.pattern)
    return {
        prefix + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", str(pattern.pattern)): dict(pattern.callback.handlers)
        for pattern in urls.api
    }


def streams() -> list[tuple[str, str, AsyncOperation]]:
    """(path, method, declaration) of every operation that answers with an event stream."""
    found = []
    for path, handlers in api_routes().items():
        for method, view in handlers.items():
            operation = operation_of(view)
            if operation is not None and operation.events:
                found.append((path, method, operation))
    return found


def event_refs(declaration: AsyncOperation) -> dict[str, str]:
    """Each declared event type → the reference to its component."""
    return {name: f"#/components/schemas/{event_component_name(name)}" for name in declaration.events}


def component(schema: dict[str, Any], ref: str) -> dict[str, Any]:
    name = ref.removeprefix("#/components/schemas/")
    assert ref == f"#/components/schemas/{name}", ref
    resolved: dict[str, Any] = schema["components"]["schemas"][name]
    return resolved


def test_the_served_schema_is_valid_openapi_3_1(client: Client) -> None:
    response = client.get("/v1/openapi.json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.content == schema_json(generate_schema())
    served = json.loads(response.content)
    assert served["openapi"] == "3.1.0"
    validate(served, cls=OpenAPIV31SpecValidator)


def test_the_schema_has_every_api_route_with_exactly_the_methods_it_routes(schema: dict[str, Any]) -> None:
    routes = {path: sorted(handlers) for path, handlers in api_routes().items()}
    documented = {path: sorted(method.upper() for method in operations) for path, operations in schema["paths"].items()}
    assert documented == routes
    assert len(routes) == 13
    assert sum(len(methods) for methods in routes.values()) == 18


def test_every_operation_answers_errors_with_the_one_error_body(schema: dict[str, Any]) -> None:
    error = {"$ref": "#/components/schemas/Error"}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            errors = {code: r for code, r in operation["responses"].items() if code == "default" or code >= "400"}
            assert {"401", "default"} <= errors.keys(), (method, path)
            for code, response in errors.items():
                assert response["content"] == {"application/json": {"schema": error}}, (method, path, code)
    assert set(schema["components"]["schemas"]["Error"]["properties"]) == {"error"}


def test_every_stream_has_one_schema_per_event_and_its_json_fallback(schema: dict[str, Any]) -> None:
    assert len(streams()) == 4
    for path, method, declaration in streams():
        operation = schema["paths"][path][method.lower()]
        assert list(operation["responses"]["200"]["content"]) == ["text/event-stream"], (method, path)
        stream = operation["responses"]["200"]["content"]["text/event-stream"]["schema"]
        refs = event_refs(declaration)
        assert [option["$ref"] for option in stream["oneOf"]] == list(refs.values())
        assert stream["discriminator"] == {"propertyName": "event", "mapping": refs}
        for name, ref in refs.items():
            event = component(schema, ref)
            assert event["required"] == ["id", "event", "data"]
            assert event["properties"]["event"] == {"type": "string", "const": name}
            data = event["properties"]["data"]
            assert (data["type"], data["contentMediaType"]) == ("string", "application/json")
            assert component(schema, data["contentSchema"]["$ref"])["type"] == "object"
        for status in declaration.responses:
            response = operation["responses"][str(status)]
            assert list(response.get("content", {})) == (["application/json"] if status != 204 else []), (path, status)


def yielded_events(module: Any) -> set[str]:
    """The event types a flow's source makes: `Event("<type>", …)`."""
    return {
        node.args[0].value
        for node in ast.walk(ast.parse(inspect.getsource(module)))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "Event"
        and isinstance(node.args[0], ast.Constant)
    }


def test_the_declared_events_are_the_ones_the_flows_make() -> None:
    # Every run can also end with the hub's `error` (runs.hub), whatever its flow.
    assert set(PERSONA_EVENTS) == yielded_events(pipeline) | {"error"}
    assert set(CHAT_EVENTS) == yielded_events(replies) | {"error"}


def sample(schema: dict[str, Any], node: dict[str, Any]) -> Any:
    """A value of the schema `node` (the first of an enum, the non-null of a nullable type)."""
    if "$ref" in node:
        return sample(schema, component(schema, node["$ref"]))
    if "allOf" in node:
        return sample(schema, node["allOf"][0])
    if "enum" in node:
        return node["enum"][0]
    kind = node.get("type")
    kind = next(t for t in kind if t != "null") if isinstance(kind, list) else kind
    values = {"string": "x", "integer": 1, "number": 0.5, "boolean": True, "array": []}
    if kind == "object":
        return {name: sample(schema, prop) for name, prop in node.get("properties", {}).items()}
    return values[kind]


def test_both_sdks_know_every_documented_event(schema: dict[str, Any]) -> None:
    documented = {
        name: component(schema, component(schema, ref)["properties"]["data"]["contentSchema"]["$ref"])
        for _, _, declaration in streams()
        for name, ref in event_refs(declaration).items()
    }
    for name, data in documented.items():
        event = parse_event(RawEvent(id="1", event=name, data=json.dumps(sample(schema, data))))
        assert not isinstance(event, UnknownEvent), name
    typescript = (ROOT / "sdk" / "typescript" / "src" / "index.ts").read_text()
    assert set(re.findall(r'Base<"([a-z_.]+)"', typescript)) == set(documented)


class Reading(dict[str, Any]):
    """An event's data that notes every key read from it."""

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__(data)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)


def test_the_python_sdk_reads_exactly_the_documented_fields_of_each_event(
    schema: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A field renamed on either side shows here: the SDK would read a key the schema does not have, or leave one out.
    documented = {
        name: component(schema, component(schema, ref)["properties"]["data"]["contentSchema"]["$ref"])
        for _, _, declaration in streams()
        for name, ref in event_refs(declaration).items()
    }
    readings: list[Reading] = []

    def loads(text: str) -> Reading:
        readings.append(Reading(json.loads(text)))
        return readings[-1]

    monkeypatch.setattr(sdk_events, "json", SimpleNamespace(loads=loads))
    read = {}
    for name, data in documented.items():
        parse_event(RawEvent(id="1", event=name, data=json.dumps(sample(schema, data))))
        read[name] = readings[-1].read
    assert read == {name: set(data["properties"]) for name, data in documented.items()}


def properties(schema: dict[str, Any], name: str) -> set[str]:
    return set(schema["components"]["schemas"][name]["properties"])


@pytest.mark.django_db
def test_the_bodies_declared_by_hand_are_the_ones_the_code_makes(schema: dict[str, Any]) -> None:
    # Declared for the schema only (the code builds these as dicts): each must have the code's keys.
    session = ChatSessionFactory()
    MessageFactory(session=session, index=0, role="user")
    reply = MessageFactory(
        session=session, index=1, tier1_score=0.3, tier1_threshold=0.5, tier1_scored_at=timezone.now()
    )
    body = camelize(reply_json(owner_id=session.owner_id, session_id=session.id, message_id=reply.id))
    assert set(body) == properties(schema, "Reply")
    assert set(camelize(MessageSerializer(reply).data)["driftTier1"]) == properties(schema, "DriftTier1")
    assert set(camelize(PersonaSerializer(session.persona).data)["drift"]) == properties(schema, "PersonaDrift")


def test_the_committed_schema_is_the_generated_one() -> None:
    generated = schema_json(generate_schema())
    assert not GENERATOR_STATS, "schema generation warned: see the messages above"
    committed = SCHEMA_FILE.read_bytes() if SCHEMA_FILE.is_file() else b""
    assert committed == generated, f"{SCHEMA_FILE.relative_to(ROOT)} is out of date: run `{REGENERATE}`."


# Each page, what shows it is that page, and the scripts the app itself serves it (Swagger UI's start-up script).
DOCS_PAGES = [
    pytest.param("/v1/docs", '<div id="swagger-ui">', ["/v1/docs?script="], id="swagger-ui"),
    pytest.param("/v1/redoc", '<redoc spec-url="/v1/openapi.json">', [], id="redoc"),
]


@pytest.mark.parametrize(("page", "marker", "own_scripts"), DOCS_PAGES)
def test_the_docs_pages_load_only_the_apps_own_files(
    client: Client, page: str, marker: str, own_scripts: list[str]
) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/html; charset=utf-8"
    policy = dict(directive.split(" ", 1) for directive in response["Content-Security-Policy"].split("; "))
    assert (policy["default-src"], policy["script-src"], policy["connect-src"]) == ("'self'", "'self'", "'self'")
    html = response.content.decode()
    assert marker in html
    assert "http://" not in html and "https://" not in html
    assert "<script>" not in html
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    sidecar = [source for source in sources if source.startswith("/static/drf_spectacular_sidecar/")]
    assert sidecar and sorted(set(sources) - set(sidecar)) == own_scripts
    for asset in sidecar:
        fetched = client.get(asset)
        assert fetched.status_code == 200, asset
        assert b"".join(fetched.streaming_content), asset  # type: ignore[attr-defined]
    for script in own_scripts:
        fetched = client.get(script)
        assert (fetched.status_code, fetched["Content-Type"]) == (200, "application/javascript"), script
        assert '"/v1/openapi.json"' in fetched.content.decode()


def test_a_sidecar_path_outside_its_files_is_not_found(client: Client) -> None:
    assert client.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css").status_code == 200
    for name in ("swagger-ui-dist/oauth2-redirect.html", "swagger-ui-dist/%2e%2e/LICENSE", "redoc/LICENSE"):
        assert client.get(f"/static/drf_spectacular_sidecar/{name}").status_code == 404, name
