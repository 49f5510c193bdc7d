"""Schemathesis against a live uvicorn server: every operation of the schema the server publishes, with generated
valid and invalid inputs and an API key. No answer may be a 5xx or contradict the schema, and the server's log may
hold no traceback.

A longer run, as recorded in the README: `FUZZ_EXAMPLES=400 pytest tests/e2e/test_fuzz.py`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import LiveServer

# Examples per operation and phase: enough for the run to make at least MIN_REQUESTS requests in all.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "110"))
MIN_REQUESTS = 2_000
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)


def fuzz(server: LiveServer, report: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{server.base_url}/v1/openapi.json",
            "--url",
            server.base_url,
            "--header",
            f"Authorization: Bearer {server.keys['alice']}",
            "--checks",
            ",".join(CHECKS),
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            "20261207",
            # One worker: with two, CPython 3.11's `ast` can fail in schemathesis's threads ("AST constructor
            # recursion depth mismatch"), an error of the tool, not of the API.
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--generation-database",
            "none",
            "--no-color",
            "--report",
            "har",
            "--report-har-path",
            str(report),
        ],
        # Schemathesis keeps state in its working directory: a temporary one, not the checkout.
        cwd=report.parent,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_generated_requests_get_no_server_error_no_schema_violation_and_leave_no_traceback(
    server_factory: "object", tmp_path: Path
) -> None:
    server: LiveServer = server_factory(  # type: ignore[operator]
        MOONBORN_DEMO_DELAY_MS="0",
        # The limits answer 429 as documented; raised here so that the requests reach the views they fuzz.
        MOONBORN_RATE_POSTS_PER_MINUTE="1000000",
        MOONBORN_RATE_SESSIONS_PER_MINUTE="1000000",
        MOONBORN_RATE_IMPORTS_PER_MINUTE="1000000",
        MOONBORN_MAX_STREAMS_PER_KEY="1000",
        MOONBORN_LOG_LEVEL="INFO",
    )
    report = tmp_path / "fuzz.har"
    done = fuzz(server, report)
    entries = json.loads(report.read_text())["log"]["entries"]
    statuses = [entry["response"]["status"] for entry in entries]
    print(f"schemathesis: {len(entries)} requests, statuses {sorted(set(statuses))}")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert len(entries) >= MIN_REQUESTS, done.stdout[-3000:]
    assert [status for status in statuses if status >= 500] == []
    assert "Traceback" not in server.log()
