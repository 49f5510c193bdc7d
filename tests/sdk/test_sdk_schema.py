"""The TypeScript SDK's types held to the schema: docs/openapi.json through openapi-typescript, then `tsc --strict`
over checks generated from the schema (one per event, one per component's open fields) and the model checks of
sdk/typescript/test/schema-types.ts."""

import copy
import json
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.conftest import ROOT

SDK = ROOT / "sdk" / "typescript"
BIN = SDK / "node_modules" / ".bin"
SCHEMA_FILE = ROOT / "docs" / "openapi.json"
CHECKS = SDK / "test" / "schema-types.ts"
COMPONENTS = "#/components/schemas/"
# What makes a schema say something of its values; a property with none of these is open: any JSON (`{}`).
TYPED = {"type", "$ref", "oneOf", "anyOf", "allOf", "enum", "const", "properties", "items"}


def schema_events(schema: dict[str, Any]) -> dict[str, str]:
    """Each event type the schema documents (an `<Name>Event` component's `event` const) → its data component."""
    events = {}
    for component in schema["components"]["schemas"].values():
        properties = component.get("properties", {})
        if "const" in properties.get("event", {}):
            ref = properties["data"]["contentSchema"]["$ref"]
            assert ref.startswith(COMPONENTS), ref
            events[properties["event"]["const"]] = ref.removeprefix(COMPONENTS)
    return events


def streamed_events(schema: dict[str, Any]) -> set[str]:
    """The event types the operations stream (each event component a `$ref` of a `text/event-stream` oneOf)."""
    components = schema["components"]["schemas"]
    refs = [
        option["$ref"]
        for operations in schema["paths"].values()
        for operation in operations.values()
        for response in operation["responses"].values()
        for media, content in response.get("content", {}).items()
        if media == "text/event-stream"
        for option in content["schema"]["oneOf"]
    ]
    return {components[ref.removeprefix(COMPONENTS)]["properties"]["event"]["const"] for ref in refs}


def union(names: Iterable[str]) -> str:
    return " | ".join(json.dumps(name) for name in sorted(names)) or "never"


def open_keys(schema: dict[str, Any]) -> dict[str, set[str]]:
    """Each component with properties → those it leaves open (`{}`), the ones openapi-typescript makes `unknown`."""
    return {
        name: {key for key, node in component["properties"].items() if not TYPED & node.keys()}
        for name, component in schema["components"]["schemas"].items()
        if "properties" in component
    }


def generated_checks(events: dict[str, str], open_by_component: dict[str, set[str]]) -> str:
    """The TypeScript that checks the SDK against each event (its name, its data against the data component), and
    the generated types against the schema where they are `unknown`."""
    lines = [
        "// Written by tests/sdk/test_sdk_schema.py from the schema's components.",
        'import type { components } from "moonborn-schema";',
        'import type { EventAgrees, EventNamesAgree, Expect, OpenKeysAre } from "moonborn-schema-types";',
        "",
        f"export type Names = Expect<EventNamesAgree<{union(events)}>>;",
        "export type Events = [",
        *(
            f'  Expect<EventAgrees<{json.dumps(name)}, components["schemas"][{json.dumps(data)}]>>,'
            for name, data in sorted(events.items())
        ),
        "];",
        "export type Open = [",
        *(
            f'  Expect<OpenKeysAre<{json.dumps(name)}, components["schemas"][{json.dumps(name)}], {union(keys)}>>,'
            for name, keys in sorted(open_by_component.items())
        ),
        "];",
        "",
    ]
    return "\n".join(lines)


def type_check(schema_file: Path, directory: Path) -> subprocess.CompletedProcess[str]:
    """Generate the schema's types into `directory`, write the checks and a tsconfig there, run tsc."""
    assert (BIN / "openapi-typescript").exists(), "run `npm ci` in sdk/typescript (scripts/install --dev does)"
    schema = json.loads(schema_file.read_text())
    generated = subprocess.run(
        [str(BIN / "openapi-typescript"), str(schema_file), "-o", str(directory / "schema.d.ts")],
        cwd=SDK,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    (directory / "checks.ts").write_text(generated_checks(schema_events(schema), open_keys(schema)))
    options = {
        "target": "ES2022",
        "module": "ES2022",
        "moduleResolution": "Bundler",
        "lib": ["ES2022", "DOM", "DOM.Iterable"],
        "types": [],
        "skipLibCheck": True,
        "noErrorTruncation": True,
        "paths": {"moonborn-schema": ["./schema.d.ts"], "moonborn-schema-types": [str(CHECKS)]},
    }
    (directory / "tsconfig.json").write_text(json.dumps({"compilerOptions": options, "files": ["checks.ts"]}))
    return subprocess.run(
        [str(BIN / "tsc"), "-p", str(directory / "tsconfig.json"), "--noEmit", "--strict", "--pretty", "false"],
        cwd=SDK,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_typescript_sdk_types_agree_with_the_schema(tmp_path: Path) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    events = schema_events(schema)
    assert set(events) == streamed_events(schema)
    assert set(events.values()) <= set(schema["components"]["schemas"])
    assert {name: keys for name, keys in open_keys(schema).items() if keys} == {
        "Persona": {"card", "driftAnchors"},
        "PersonaStep": {"fallbackFields", "output"},
    }
    done = type_check(SCHEMA_FILE, tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), done.stdout + done.stderr


def rename(component: dict[str, Any], old: str, new: str) -> None:
    component["properties"] = {new if key == old else key: value for key, value in component["properties"].items()}
    component["required"] = [new if key == old else key for key in component["required"]]


def test_the_check_fails_on_a_renamed_field_and_an_event_the_sdk_lacks(tmp_path: Path) -> None:
    # The same check over a copy of the schema with a renamed event field, a renamed event, a new event, a renamed
    # model field and a field typed only by a wrapper the generator reads as any JSON: each must fail the compile,
    # named in its error.
    schema = json.loads(SCHEMA_FILE.read_text())
    components = schema["components"]["schemas"]
    rename(components["TokenData"], "delta", "text")
    rename(components["Message"], "content", "body")
    components["StepStartedEvent"]["properties"]["event"]["const"] = "step.begun"
    ping = copy.deepcopy(components["TokenEvent"])
    ping["properties"]["event"]["const"] = "ping"
    ping["properties"]["data"]["contentSchema"]["$ref"] = f"{COMPONENTS}PingData"
    components["PingEvent"] = ping
    components["PingData"] = {"type": "object", "properties": {"at": {"type": "string"}}, "required": ["at"]}
    components["Reply"]["properties"]["model"] = {"allOf": [{}]}
    mutated = tmp_path / "openapi.json"
    mutated.write_text(json.dumps(schema))
    done = type_check(mutated, tmp_path)
    assert (done.returncode, done.stderr) == (2, ""), done.stdout + done.stderr
    failed = [
        re.fullmatch(r"\S+\(\d+,\d+\): error TS2344: Type '(.*)' does not satisfy the constraint 'true'\.", line)
        for line in done.stdout.splitlines()
    ]
    assert all(failed), done.stdout
    assert sorted(match[1] for match in failed if match) == [
        '{ component: "Reply"; openKeys: "model"; }',
        '{ event: "ping"; sdk: "has no type for this event"; }',
        '{ event: "step.begun"; sdk: "has no type for this event"; }',
        '{ event: "token"; sdkOnly: "delta"; schemaOnly: "text"; disagreeing: never; }',
        '{ eventsNotInSdk: "ping" | "step.begun"; eventsNotInSchema: "step.started"; }',
        '{ model: "Message"; sdkOnly: "content"; disagreeing: never; }',
        '{ model: "Page<Message>"; sdkOnly: never; disagreeing: "results"; }',
    ]
