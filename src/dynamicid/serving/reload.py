"""Switching to a newly published model while serving: the record `dynamicid run` publishes beside the model
(dynamicid_run.json) is read before each request for a folder, and every `interval` seconds for a Hub repo
(that one small file only); a new version is loaded beside the old one and swapped in between two requests,
so no queued request is lost."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from dynamicid.generation.published import RUN_RECORD, published_record

logger = logging.getLogger(__name__)


class ModelWatch:
    """`reference`: the folder or repo id served; `load(reference)` builds a pipeline from it."""

    def __init__(self, reference: str, load: Callable[[str], Any], interval: float = 60.0):
        self.reference, self.load, self.interval = reference, load, interval
        self.is_folder = os.path.isdir(reference)
        self.record = self._record()
        self.checked = time.monotonic()

    def _record(self) -> dict | None:
        if self.is_folder:
            return published_record(self.reference)
        from huggingface_hub import hf_hub_download

        from dynamicid.hub import split_reference

        try:
            repo, subfolder = split_reference(self.reference)
            with open(hf_hub_download(repo, RUN_RECORD, subfolder=subfolder), encoding="utf-8") as handle:
                record = json.load(handle)
        except Exception as err:  # not published there, or the Hub unreachable: keep serving what is loaded
            logger.debug("serve: no published record in %s (%s)", self.reference, err)
            return None
        return record if isinstance(record, dict) else None

    @staticmethod
    def _stamp(record: dict | None) -> Any:
        return None if record is None else (record.get("version"), record.get("fingerprint"))

    def label(self) -> str:
        """What the page shows of the model it serves: the published version, else the folder or repo."""
        if self.record is None:
            return self.reference
        return f"version {self.record.get('version')} (published {self.record.get('published', '?')})"

    def newer(self) -> Any | None:
        """A pipeline of a newly published version, or None. A folder is read every call (a stat and a small
        file); a Hub repo once per interval. A version that fails to load is logged and skipped."""
        if not self.is_folder and time.monotonic() - self.checked < self.interval:
            return None
        self.checked = time.monotonic()
        record = self._record()
        if record is None or self._stamp(record) == self._stamp(self.record):
            return None
        try:
            pipe = self.load(self.reference)
        except Exception as err:  # a half-copied or damaged upload: keep the model that works
            logger.warning(
                "serve: the newly published model in %s cannot be loaded (%s); still serving the old one",
                self.reference,
                err,
            )
            return None
        self.record = record
        logger.info("serve: switched to the newly published model %s", self.label())
        return pipe
