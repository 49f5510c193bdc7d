"""How long does drift scoring hold back the `completed` event, and what does each tier cost? End to end on a
real server, and in process.

Starts uvicorn (demo provider, ``MOONBORN_DEMO_REPLY_TOKENS`` = ``--tokens``, ``MOONBORN_DEMO_DELAY_MS`` =
``--delay-ms``) on a free loopback port with a fresh SQLite database, creates a persona and a session, then streams
``--replies`` chat replies one after another and records, per reply, the time from the arrival of the last ``token``
event to the arrival of ``completed`` (tier 0: embedding + scoring, then the final database write and one SSE
frame). Then, in this process, the CPU time of each tier on the last reply's text (``time.process_time``, one BLAS
thread): tier 0 (the static table, embedding and scoring) and tier 1 (the full MiniLM).

    python bench/drift_latency.py [--replies 60] [--warmup 5] [--delay-ms 0] [--tokens 200]

Results are recorded in ``bench/RESULTS-drift.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def one_reply(client: httpx.Client, session_id: str, content: str) -> tuple[float, int, str]:
    """(ms from the last token to `completed`, tokens seen, the reply text)."""
    last_token_at = 0.0
    tokens = 0
    parts: list[str] = []
    event = ""
    with client.stream(
        "POST",
        f"/v1/chat/sessions/{session_id}/messages",
        json={"content": content},
        headers={"Accept": "text/event-stream"},
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                now = time.perf_counter()
                if event == "token":
                    last_token_at = now
                    tokens += 1
                    parts.append(json.loads(line[6:])["delta"])
                elif event == "completed":
                    return (now - last_token_at) * 1000, tokens, "".join(parts)
                elif event == "error":
                    raise RuntimeError(line)
    raise RuntimeError("stream ended without completed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replies", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--delay-ms", default="0", help="MOONBORN_DEMO_DELAY_MS (0: tokens as fast as possible)")
    parser.add_argument("--tokens", default="200", help="MOONBORN_DEMO_REPLY_TOKENS: tokens (words) per reply")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="moonborn-bench-"))
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
        "MOONBORN_DEMO_DELAY_MS": args.delay_ms,
        "MOONBORN_DEMO_REPLY_TOKENS": args.tokens,
        "MOONBORN_LOG_LEVEL": "WARNING",
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    }
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env, check=True,
                   capture_output=True)  # fmt: skip
    key = subprocess.run(
        [sys.executable, "manage.py", "create_api_key", "bench"], cwd=ROOT, env=env, check=True, capture_output=True,
        text=True,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "moonborn_site.asgi:application", "--host", "127.0.0.1", "--port",
         str(port), "--log-level", "warning", "--no-access-log"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/v1/usage", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            persona = client.post(
                "/v1/personas",
                json={"prompt": "A retired lighthouse keeper on a windy northern island"},
                headers={"Accept": "application/json"},
            ).json()
            session = client.post("/v1/chat/sessions", json={"personaId": persona["id"]}).json()
            gaps, token_counts, text = [], [], ""
            for i in range(args.warmup + args.replies):
                gap, tokens, text = one_reply(client, session["id"], f"Tell me about the lamp, night {i}.")
                if i >= args.warmup:
                    gaps.append(gap)
                    token_counts.append(tokens)
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)

    # The tiers' CPU time, in this process, on the last reply's text.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moonborn_site.settings")
    import django

    django.setup()
    from chat.scoring import calibrate_persona, embed_replies, score_tier0, score_vector, tier0, tier1
    from llm.embeddings import MiniLMEmbedder

    static = tier0()
    full = tier1()
    anchors = [s for s in text.split(". ") if s][:12] or [text]
    cal0 = calibrate_persona(static, anchors=anchors)
    cal1 = calibrate_persona(full, anchors=anchors)
    pieces = len(static.pieces(text))

    def cpu_ms(fn: object, runs: int) -> float:
        fn()  # type: ignore[operator]
        start = time.process_time()
        for _ in range(runs):
            fn()  # type: ignore[operator]
        return (time.process_time() - start) * 1000 / runs

    tier0_ms = cpu_ms(
        lambda: score_tier0(text, anchor_vectors=cal0.anchor_vectors, calibration=cal0.calibration, persona_name="x"),
        2000,
    )
    embed0_ms = cpu_ms(lambda: static.embed_one(text), 2000)

    def tier1_once() -> None:
        vector = embed_replies(full, [text])[0]
        score_vector(text, vector, full, anchor_vectors=cal1.anchor_vectors, calibration=cal1.calibration,
                     persona_name="x")  # fmt: skip

    tier1_ms = cpu_ms(tier1_once, 20)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average at the end {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"demo delay per token: {args.delay_ms} ms")
    print(f"replies: {len(gaps)} (after {args.warmup} warm-up), tokens per reply: {statistics.median(token_counts):.0f}"
          f" ({pieces} word pieces)")  # fmt: skip
    print(
        "last token -> completed (ms): "
        f"p50 {percentile(gaps, 0.5):.1f}  p95 {percentile(gaps, 0.95):.1f}  max {max(gaps):.1f}  min {min(gaps):.1f}"
    )
    one_thread = isinstance(full, MiniLMEmbedder)
    print(f"CPU per reply (ms): tier 0 {tier0_ms:.3f} (embedding {embed0_ms:.3f}, scoring {tier0_ms - embed0_ms:.3f});"
          f" tier 1 ({full.model_id}{', one BLAS thread' if one_thread else ''}) {tier1_ms:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
