"""Typical replies of a generic, out-of-character AI assistant (``chat/generic_assistant.json``).

Drift scoring (``chat.drift``) reads the assistant's *register* from them: the word pieces these texts use give the
generic side of the unigram log-likelihood ratio (``generic_register``), against the persona's own reference texts.
The texts are deliberately varied in topic (how-tos, the subjects role-play touches, refusals, disclaimers, small
talk, summaries, code, advice, emotional support) and in length, so that they carry the register of assistant
speech, not a subject. Changing them changes every persona's calibration: bump ``chat.drift.CALIBRATION_VERSION``
and run ``bench/fit_drift_priors.py`` when you do."""

from __future__ import annotations

import json
from pathlib import Path

GENERIC_ASSISTANT_TEXTS: tuple[str, ...] = tuple(
    json.loads(Path(__file__).with_name("generic_assistant.json").read_text(encoding="utf-8"))["texts"]
)
