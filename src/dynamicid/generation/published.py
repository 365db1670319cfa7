"""A published model: a saved DynamicIDPipeline folder (or Hub repo) with dynamicid_run.json, the record
`dynamicid run` writes beside it (version, fingerprint, scores). Serving reads the record to notice a new
version; the run reads it to find the champion."""

from __future__ import annotations

import json
import os
from typing import Any

RUN_RECORD = "dynamicid_run.json"


class RecordProblem(Exception):
    """A published record that exists but cannot be used (garbage, or a version that is not a version)."""


def read_record(path: str) -> dict[str, Any] | None:
    """A published record from its file: None when there is none; RecordProblem, saying why, when it cannot
    be used."""
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise RecordProblem(f"{path} cannot be read: {err}") from None
    if not isinstance(record, dict):
        raise RecordProblem(f"{path} is not a publish record (a JSON object)")
    version = record.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RecordProblem(f"{path}: version {version!r} is not a version (a whole number from 1)")
    return record


def published_record(folder: str | None) -> dict[str, Any] | None:
    """The folder's dynamicid_run.json, or None when it has none (or it cannot be used)."""
    if not folder:
        return None
    try:
        return read_record(os.path.join(folder, RUN_RECORD))
    except RecordProblem:
        return None
