"""Tier 1 of drift: every reply scored again by the full embedder, after `completed`, off the request path.

The queue is the ``DriftJob`` table: a job is made with its reply (in the turn's transaction), so a reply whose
process dies mid-stream is scored all the same once it has been marked failed. A worker takes a batch of jobs whose
replies are no longer streaming, claims them for ``MOONBORN_DRIFT_TIER1_LEASE_SECONDS`` (a claim that runs out, its
worker dead, is taken again), embeds the replies in one call of the embedder, scores them against each persona's
tier-1 calibration (made here the first time a persona needs one) and stores the scores, deleting the jobs. When it
falls behind, it scores only the replies tier 0 was unsure of, and a sample of the rest (the cascade, below).

Each server process starts one worker process beside it (``MOONBORN_DRIFT_TIER1_WORKER``; ``manage.py
drift_worker --parent <pid>``), at a lower CPU priority (``MOONBORN_EMBED_NICE``): when the cores are short, tokens
stream first and scores come when there is room. It looks for work every ``MOONBORN_DRIFT_TIER1_POLL_SECONDS``
when it has none (the replies of any process, and those a dead process left), and ends with its server.
``manage.py drift_worker`` alone runs the same loop for deployments that keep it apart.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import InterfaceError, OperationalError

from runs.db import db_sync

from . import services
from .drift import CALIBRATION_VERSION, centroid
from .scoring import (
    calibrate_persona,
    embed_replies,
    reference_matrix,
    score_record,
    score_vector,
    scored_part,
    tier1,
)

logger = logging.getLogger(__name__)


def tier1_run_batch(*, worker_id: str, limit: int, lease_seconds: float) -> int:
    """Claim up to ``limit`` jobs, score their replies, store the scores. Returns how many jobs were taken."""
    jobs = db_sync(services.drift_jobs_claim, worker_id=worker_id, limit=limit, lease_seconds=lease_seconds)
    if not jobs:
        return 0
    embedder = tier1()
    owners = sorted({job.owner_id for job in jobs})
    personas = db_sync(services.tier1_personas, owner_ids=owners, persona_ids=sorted({j.persona_id for j in jobs}))
    stale = [
        p
        for p in personas.values()
        if p.tier1_embedding_model != embedder.model_id or p.tier1_calibration.get("version") != CALIBRATION_VERSION
    ]
    if stale:
        made = {
            p.id: calibrate_persona(embedder, anchors=p.anchors, samples=p.samples, reviewed=p.reviewed)
            for p in stale
            if p.anchors
        }
        db_sync(services.persona_tier1_store, calibrations=made)
        for persona_id, calibrated in made.items():
            persona = personas[persona_id]
            persona.tier1_anchor_vectors = calibrated.anchor_vectors
            persona.tier1_embedding_model = calibrated.embedding_model
            persona.tier1_calibration = calibrated.calibration
    results: dict[str, services.Tier1Score | services.Tier1Skip | None] = {job.message_id: None for job in jobs}
    behind = jobs[0].waiting > settings.MOONBORN_DRIFT_TIER1_CASCADE_BACKLOG
    for job in jobs:
        if behind and tier0_was_certain(job):
            results[job.message_id] = services.Tier1Skip(
                reason="tier 0 was certain and tier 1 had a backlog",
                components={"tier0_score": job.tier0_score, "waiting": job.waiting},
            )
    scored = [
        job
        for job in jobs
        if results[job.message_id] is None and job.content.strip() and personas.get(job.persona_id) is not None
    ]
    texts = {job.message_id: scored_part(job.content) for job in scored}
    vectors = embed_replies(embedder, list(texts.values())) if scored else None
    centroids = {
        p.id: centroid(reference_matrix(p.tier1_anchor_vectors, embedder.dim)).astype(np.float32)
        for p in personas.values()
        if p.tier1_anchor_vectors and p.tier1_embedding_model == embedder.model_id
    }
    for i, job in enumerate(scored):
        persona = personas[job.persona_id]
        if not persona.tier1_calibration:
            continue
        others = [c for pid, c in centroids.items() if pid != persona.id and personas[pid].owner_id == job.owner_id]
        assert vectors is not None
        result = score_vector(
            texts[job.message_id],
            vectors[i],
            embedder,
            anchor_vectors=persona.tier1_anchor_vectors,
            calibration=persona.tier1_calibration,
            persona_name=persona.name,
            other_centroids=np.stack(others).tobytes() if others else b"",
        )
        results[job.message_id] = services.Tier1Score(
            score=round(result.score, 4),
            threshold=round(result.threshold, 4),
            flagged=result.flagged,
            components=score_record(result, persona.tier1_calibration, embedder),
        )
    db_sync(services.message_tier1_store, worker_id=worker_id, results=results)
    return len(jobs)


# The cascade, when more replies wait than MOONBORN_DRIFT_TIER1_CASCADE_BACKLOG: tier 1 then scores only what tier 0
# was not sure of (a flag, a score at or over CASCADE_SCORE, no tier-0 score at all) and one reply in SAMPLE_EVERY
# of the rest, so that the tiers' agreement stays measured. Everything else is marked skipped. The full model costs
# ~25 ms a short reply, so two cores score ~80 a second at most, while they can stream ten times as many.
CASCADE_SCORE = 0.8
SAMPLE_EVERY = 20
# prctl(2): the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def tier0_was_certain(job: services.Tier1Job) -> bool:
    """Whether tier 0 judged the reply in character with room to spare (and it is not in the sample)."""
    if job.tier0_score is None or job.tier0_flagged or job.tier0_score >= CASCADE_SCORE:
        return False
    sampled = int(hashlib.sha256(job.message_id.encode()).hexdigest()[:8], 16) % SAMPLE_EVERY == 0
    return not sampled


class Tier1Worker:
    """The tier-1 loop: a batch whenever there is work, else a nap of ``MOONBORN_DRIFT_TIER1_POLL_SECONDS``.

    ``parent``: the server process it serves; the loop ends when that process is gone.
    """

    def __init__(self, *, parent: int | None = None) -> None:
        self.worker_id = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.parent = parent
        self.stopped = threading.Event()

    def orphaned(self) -> bool:
        return self.parent is not None and os.getppid() != self.parent

    def follow_parent(self) -> None:
        """Be stopped (SIGTERM) by the kernel the moment the parent server dies (Linux), rather than at the next
        look at the parent: a deploy or a kill -9 must not leave a worker behind."""
        if self.parent is None or not sys.platform.startswith("linux"):
            return
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    def run_once(self) -> int:
        """One batch; how many jobs it took (0: nothing to do, or it failed and will be taken again)."""
        try:
            return tier1_run_batch(
                worker_id=self.worker_id,
                limit=settings.MOONBORN_DRIFT_TIER1_BATCH,
                lease_seconds=settings.MOONBORN_DRIFT_TIER1_LEASE_SECONDS,
            )
        except (OperationalError, InterfaceError) as exc:
            # The database went away (a restart, a failover): a line, not a traceback; the next poll tries again.
            logger.warning("tier-1 drift scoring could not reach the database (%s); it will try again", exc)
            return 0
        except Exception:
            # The claimed jobs are taken again when their lease runs out (up to services.TIER1_MAX_ATTEMPTS).
            logger.exception("tier-1 drift scoring failed; it will try again")
            return 0

    def run(self) -> None:
        """Score until stopped (or until the parent server is gone)."""
        self.follow_parent()
        lower_priority(settings.MOONBORN_EMBED_NICE)
        while not self.stopped.is_set() and not self.orphaned():
            started = time.monotonic()
            if not self.run_once():
                self.stopped.wait(settings.MOONBORN_DRIFT_TIER1_POLL_SECONDS)
            else:
                # As long again at rest as the batch took: even on a core the server leaves idle, the forward passes
                # sweep the caches the server shares (measured: 1,000 streams' jitter p99 went from ~15 to 20-40 ms
                # while the worker ran without pause).
                self.stopped.wait(time.monotonic() - started)


def lower_priority(nice: int) -> None:
    """Run this process only on time the server leaves: Linux's SCHED_IDLE (it gets a core when nothing else wants
    it, and never holds one up), else a niceness ``nice`` higher. ``nice`` 0: the server's priority."""
    if nice <= 0:
        return
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return
    if hasattr(os, "nice"):
        with contextlib.suppress(OSError):  # not permitted here: run at the normal priority
            os.nice(min(nice, 19))


def spawn_tier1_worker() -> subprocess.Popen[bytes]:
    """Start the tier-1 worker of this server process: ``manage.py drift_worker --parent <this pid>``.

    A process of its own, not a thread: its forward passes would hold the GIL the event loop needs (measured: with
    a tier-1 thread in the server the inter-token jitter p99 of 1,000 streams was 147 ms, 80 ms without). It ends
    with the server.
    """
    return subprocess.Popen(
        [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "drift_worker", "--parent", str(os.getpid())],
        cwd=settings.BASE_DIR,
        stdin=subprocess.DEVNULL,
    )
