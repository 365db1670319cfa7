"""A published model: a saved DynamicIDPipeline folder (or Hub repo) with dynamicid_run.json, the record
`dynamicid run` writes beside it (version, fingerprint, scores). Serving reads the record to notice a new
version; the run reads it to find the champion."""

from __future__ import annotations

import json
import os
from typing import Any

RUN_RECORD = "dynamicid_run.json"


def published_record(folder: str | None) -> dict[str, Any] | None:
    """The folder's dynamicid_run.json, or None when it has none (or it cannot be read)."""
    if not folder:
        return None
    try:
        with open(os.path.join(folder, RUN_RECORD), encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
