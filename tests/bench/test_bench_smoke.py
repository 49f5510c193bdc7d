"""A short run of the streaming benchmark (bench/): the load generator, the reference server and
Moonborn's chat streams work, and no token is lost or duplicated. Speed is not checked here."""

import asyncio
import json
import os
import re
import subprocess
import sys

import pytest

from bench import loadgen
from bench.perf import DJANGO_APP, chat_targets, reference_env, reference_targets, running
from tests.conftest import ROOT
from tests.e2e.helpers import make_persona, make_session

FRAMES = (
    b"retry: 3000\n"
    + b'id: 1\nevent: message.started\ndata: {"messageId":"m"}\n\n'
    + b'id: 2\nevent: token\ndata: {"delta":"a"}\n\n'
    + b": heartbeat\n"
    + b'id: 3\nevent: token\ndata: {"delta":" b"}\n\n'
    + b'id: 4\nevent: completed\ndata: {"messageId":"m"}\n\n'
)


def chunked(body: bytes, size: int) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size))
    return out + b"0\r\n\r\n"


def read(wire: bytes, piece: int) -> loadgen.StreamResult:
    """Feed a chunked body to the reader in `piece`-byte reads, as a socket might deliver it."""
    result = loadgen.StreamResult(status=200)
    reader = loadgen.SseReader(result, chunked=True)
    for i in range(0, len(wire), piece):
        reader.feed(wire[i : i + piece], now=float(i))
    assert reader.done
    return result


def test_reader_counts_every_token_whatever_the_chunk_and_read_boundaries():
    for chunk_size in (1, 7, 1000):
        for piece in (1, 5, 4096):
            result = read(chunked(FRAMES, chunk_size), piece)
            assert result.ids == [1, 2, 3, 4]
            assert result.tokens == 2
            assert result.terminal == "completed"
            assert loadgen.check_stream(result, expected_tokens=2) == ""


def test_check_stream_reports_duplicates_gaps_missing_tokens_and_no_end():
    duplicated = FRAMES.replace(b"id: 3\n", b"id: 2\n")
    assert loadgen.check_stream(read(chunked(duplicated, 64), 64), 2) == (
        "ids not 1..n (1 duplicates, first [1, 2, 2, 4], last [1, 2, 2, 4])"
    )
    gap = FRAMES.replace(b"id: 4\n", b"id: 5\n")
    assert loadgen.check_stream(read(chunked(gap, 64), 64), 2) == (
        "ids not 1..n (0 duplicates, first [1, 2, 3, 5], last [1, 2, 3, 5])"
    )
    assert loadgen.check_stream(read(chunked(FRAMES, 64), 64), 3) == "2 tokens, expected 3"
    unfinished = FRAMES.split(b"id: 4\n")[0]
    assert loadgen.check_stream(read(chunked(unfinished, 64), 64), 2) == "ended with no terminal event"


def test_reader_rejects_a_malformed_frame():
    bad = FRAMES.replace(b"event: token\ndata", b"event: token\nextra: 1\ndata", 1)
    reader = loadgen.SseReader(loadgen.StreamResult(status=200), chunked=False)
    with pytest.raises(loadgen.HttpError, match=r"^malformed SSE at b'id: 2\\nevent: token\\nextra: 1"):
        reader.feed(bad, now=0.0)


def test_percentiles_are_nearest_rank():
    assert loadgen.percentiles([float(v) for v in range(1, 101)]) == {
        "p50": 50.0,
        "p90": 90.0,
        "p99": 99.0,
        "max": 100.0,
    }
    assert loadgen.percentiles([]) == {}


@pytest.mark.parametrize("app", ["bench.reference_asgi:app", DJANGO_APP])
def test_bench_smoke_reference_servers(app):
    with running("reference", app, reference_env(), "/") as ref:
        report = asyncio.run(
            loadgen.run_streams(
                "127.0.0.1", ref.port, reference_targets(10, 50, 0), per_slot=3, expected_tokens=50, server_pid=ref.pid
            )
        )
    assert (report.streams, report.ok_streams, report.errors, report.tokens) == (30, 30, 0, 1500)
    assert report.error_samples == []
    assert set(report.ttft_ms) == {"p50", "p90", "p99", "max"}


def test_bench_smoke_moonborn_chat_streams(server):
    persona = make_persona(server)
    sessions = [make_session(server, persona) for _ in range(4)]
    key = server.keys["alice"]
    port = int(server.base_url.rsplit(":", 1)[1])
    report = asyncio.run(
        loadgen.run_streams(
            "127.0.0.1",
            port,
            chat_targets(key, sessions),
            per_slot=2,
            expected_tokens=int(server.env["MOONBORN_DEMO_REPLY_TOKENS"]),
            delay_ms=float(server.env["MOONBORN_DEMO_DELAY_MS"]),
            server_pid=server.process.pid,
        )
    )
    assert json.dumps(report.error_samples) == "[]"
    assert (report.streams, report.ok_streams, report.errors) == (8, 8, 0)
    assert report.tokens == 8 * 24


def test_bench_smoke_idle_streams_are_held_and_measured():
    with running("reference", "bench.reference_asgi:app", {**os.environ}, "/") as ref:
        report = asyncio.run(
            loadgen.hold_idle(
                "127.0.0.1",
                ref.port,
                reference_targets(20, 100, 200),
                server_pid=ref.pid,
                open_per_s=200.0,
                hold_s=1.0,
                alive_within_s=0.5,
            )
        )
    assert (report.wanted, report.opened, report.alive, report.errors) == (20, 20, 20, 0)
    assert report.rss_open_kib > 0
    # Gaps are measured (events every 200 ms); the bound only catches a stream that stalled.
    assert 0.15 < report.worst_gap_s < 5.0


def run_bench(script: str, *args: str) -> list[str]:
    """Run a bench/ script to the end; its output lines."""
    made = subprocess.run(
        [sys.executable, f"bench/{script}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    return made.stdout.splitlines()


def test_bench_smoke_starts_in_process():
    moonborn, reference = run_bench("starts.py", "-n", "20", "--rounds", "1", "--reference")
    row = r"20 starts · loop CPU \d+ µs each · first frame p50 \d+ ms, p99 \d+ ms"
    assert re.fullmatch(rf"0 /\S+: {row}", moonborn), moonborn
    assert re.fullmatch(rf"0 reference: {row}", reference), reference


def test_bench_smoke_turns_by_conversation_length():
    head, *rows = run_bench("turns.py", "--lengths", "0,60", "--turns", "15")
    assert head.endswith(": one turn's database work (ms) by messages already in the session"), head
    found = [re.fullmatch(r" +(\d+) messages: p50 \d+\.\d{3} · p90 \d+\.\d{3}", row) for row in rows]
    assert [match[1] if match else row for match, row in zip(found, rows, strict=True)] == ["0", "60"]


def test_bench_smoke_turn_batches_alone_and_with_a_busy_thread():
    head, *rows = run_bench("turns.py", "--batch", "6", "--turns", "2")
    assert head.endswith(": a batch of 6 turns' database work (ms)"), head
    # BEGIN, the reads, the three inserts (messages, tier-1 jobs, usage), the sessions' update: the same statements
    # for every size.
    assert [re.sub(r"median \d+\.\d · max \d+\.\d", "N", row) for row in rows] == [
        f"  {when}, {way} each time: N · 6 statements"
        for when in ("alone", "with a busy thread")
        for way in ("the same size", "a new size")
    ]


def test_bench_smoke_provider_deadline():
    lines = run_bench("provider_deadline.py", "--rounds", "1", "--streams", "20", "--deltas", "5", "--delay-ms", "1")
    ways = ("bare", "timeout_at", "resilient_stream")
    assert [re.sub(r"\d+\.\d\d", "N", line) for line in lines] == [
        *(f"0 {way}: N µs of loop CPU per delta" for way in ways),
        *(f"median {way}: N µs per delta" for way in ways),
    ]


def test_bench_smoke_sqlite_reads_under_a_busy_thread():
    lines = run_bench("sqlite_gil.py", "--rows", "40", "--reads", "2")
    ways = [
        f"40 rows, {way}, {when}: N ms (max N)"
        for when in ("alone", "with a busy thread")
        for way in ("a row at a time", "one row of JSON")
    ]
    assert [re.sub(r"median +\d+\.\d\d ms \(max +\d+\.\d\d\)", "N ms (max N)", line) for line in lines] == ways


def test_bench_smoke_shutdown_final_writes():
    head, *rows = run_bench("shutdown.py", "writes", "--replies", "5")
    assert head == "ends of replies cut short (~1008 characters each), SQLite file, one process"
    assert [re.sub(r"\d+\.\d\d s", "N s", row) for row in rows] == [
        "       5 replies, chat.stops (shared transactions): N s, 1 transaction(s), 0 left streaming",
        "       5 replies, one transaction each (before): N s, 5 transaction(s), 0 left streaming",
    ]


def test_bench_smoke_shutdown_with_open_streams():
    report = json.loads(
        "\n".join(
            run_bench("shutdown.py", "sigterm", "--streams", "10", "--hold", "0.5", "--drain", "2", "--cancel", "1")
        )
    )
    assert (report["streams"], report["streams_with_server_shutdown"], report["new_connection"]) == (10, 10, "refused")
    assert report["replies"] == [
        {"status": "cancelled", "usage": "cancelled", "count": 10, "with_content": 10, "with_completion_tokens": 10,
         "with_prompt_tokens": 10}
    ]  # fmt: skip
    assert report["exit_code"] == -15


def test_bench_smoke_timeline_of_simultaneous_streams():
    lines = run_bench("timeline.py", "--rounds", "1", "-n", "12", "--tokens", "6", "--delay-ms", "5")
    spread = r"p50 +\d+\.\d · p90 +\d+\.\d · p99 +\d+\.\d · max +\d+\.\d ms"
    patterns = [
        rf"0 client start: {spread}",
        rf"0 server entry: {spread}",
        rf"0 entry → headers: {spread}",
        rf"0 headers → first token: {spread}",
        rf"0 client first token: {spread}",
        # 12 streams of 6 tokens: 5 gaps each, every one of them counted.
        r"0 jitter p99 -?\d+\.\d ms · \d+ of 60 gaps over 25 ms late",
        r"0 late gaps by 100 ms, client: (none|(\d+\.\ds:\d+/\d+ ?)+)",
        r"0 late gaps by 100 ms, server: (none|(\d+\.\ds:\d+/\d+ ?)+)",
        r"0 the server wrote 72 tokens to 12 streams",
        r"0 collections: \d+ · longest \d+\.\d ms · sum \d+\.\d ms",
    ]
    assert len(lines) == len(patterns), lines
    for pattern, line in zip(patterns, lines, strict=True):
        assert re.fullmatch(pattern, line), (pattern, line)


def test_bench_smoke_perf_with_the_plain_django_view(tmp_path):
    out = tmp_path / "perf.json"
    lines = run_bench(
        "perf.py",
        *("--plain-django", "--rounds", "1", "--single", "2", "--c50-each", "1", "--c1000", "20"),
        *("--idle", "10", "--idle-rate", "50", "--idle-hold", "1", "--pause", "0", "--out", str(out)),
    )
    log = json.loads(out.read_text())
    assert [(row.get("round"), row["scenario"], row["server"]) for row in log] == [
        *(
            (0, scenario, server)
            for scenario in ("single", "c50", "c1000")
            for server in ("reference", "moonborn", "django")
        ),
        *((None, "idle", server) for server in ("reference", "moonborn", "django")),
    ]
    assert [(row["scenario"], row["errors"], row["error_samples"]) for row in log if row["errors"]] == []
    assert [(row["scenario"], row["server"], row["tokens"]) for row in log if "tokens" in row] == [
        (scenario, server, tokens)
        for scenario, tokens in (("single", 2 * 200), ("c50", 50 * 200), ("c1000", 20 * 100))
        for server in ("reference", "moonborn", "django")
    ]
    assert [(row["server"], row["alive"]) for row in log if row["scenario"] == "idle"] == [
        ("reference", 10),
        ("moonborn", 10),
        ("django", 10),
    ]
    table = lines[lines.index(next(line for line in lines if line.startswith("| scenario "))) :]
    assert table[0] == (
        "| scenario | metric | reference | Moonborn | ratio (Moonborn / reference) | plain Django view"
        " | ratio (Moonborn / Django) | errors ref · Moonborn · Django |"
    )
    number = r"[\d,]+(\.\d+)?"
    # A ratio to a CPU time too short for the clock to count (0 µs per token) is "–".
    ratio = rf"({number}×|–)"
    measured = rf"\| {number} \| {number} \| {ratio} \| {number} \| {ratio} \| 0 · 0 · 0 \|"
    assert [re.sub(measured, "N", row) for row in table[2:10]] == [
        "| single | tokens/s N",
        "| single | TTFT p50 (ms) N",
        "| single | server CPU per token (µs) N",
        "| c50 | tokens/s N",
        "| c50 | server CPU per token (µs) N",
        "| c1000 | TTFT p99 (ms) N",
        "| c1000 | inter-token jitter p99 (ms) N",
        "| c1000 | tokens/s N",
    ]
    idle = r"alive 10 of 10 · worst gap \d+\.\d\d s · RSS [\d,]+ MiB \| KiB per stream -?\d+\.\d \| \| \| \| \| 0 \|"
    assert [re.sub(idle, "N", row) for row in table[10:]] == [
        f"| idle | {server}: N" for server in ("reference", "moonborn", "django")
    ]


def test_bench_smoke_lists_on_sqlite():
    *_, head, columns, rule, row = run_bench("lists.py", "--databases", "sqlite", "--sizes", "100", "--requests", "2")
    assert re.fullmatch(
        r"\S+: p50 \(p90\) in ms over 2 requests; ×: p50 against the smallest size; load average [\d.]+–[\d.]+ on \d+ cores",
        head,
    ), head
    assert (columns, rule) == (
        "| database | messages | `GET /v1/personas` | × | server CPU | admin persona list | × | server CPU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    )
    page = r"[\d.]+ \([\d.]+\) \| 1\.00 \| [\d.]+"
    assert re.fullmatch(rf"\| SQLite \| 100 \| {page} \| {page} \|", row), row
