"""Switching to a newly published model while serving: the weights folder's dynamicid_run.json (what
`dynamicid run` publishes) is read before each request, a Hub repo is checked every `interval` seconds; a
new version is loaded beside the old one and swapped in between two requests, so no queued request is lost."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from dynamicid.generation.published import published_record, version_label

logger = logging.getLogger(__name__)


class ModelWatch:
    """`reference`: the folder or repo id served; `load(reference)` builds a pipeline from it."""

    def __init__(self, reference: str, load: Callable[[str], Any], interval: float = 60.0):
        self.reference, self.load, self.interval = reference, load, interval
        self.is_folder = os.path.isdir(reference)
        self.seen = self._stamp()
        self.checked = time.monotonic()

    def _local(self) -> str | None:
        if self.is_folder:
            return self.reference
        from dynamicid.hub import resolve

        try:
            return resolve(self.reference, "served DynamicID model")
        except Exception as err:  # the Hub is unreachable or the repo is gone: keep serving what is loaded
            logger.warning(
                "serve: cannot check %s for a new model (%s); still serving the loaded one", self.reference, err
            )
            return None

    def _stamp(self) -> Any:
        record = published_record(self._local())
        return None if record is None else (record.get("version"), record.get("fingerprint"))

    def label(self) -> str:
        return version_label(self._local(), self.reference)

    def newer(self) -> Any | None:
        """A pipeline of a newly published version, or None. A folder is read every call (a stat and a small
        file); a Hub repo once per interval. A version that fails to load is logged and skipped."""
        if not self.is_folder and time.monotonic() - self.checked < self.interval:
            return None
        self.checked = time.monotonic()
        stamp = self._stamp()
        if stamp is None or stamp == self.seen:
            return None
        try:
            pipe = self.load(self._local() or self.reference)
        except Exception as err:  # a half-copied or damaged upload: keep the model that works
            logger.warning(
                "serve: the newly published model in %s cannot be loaded (%s); still serving the old one",
                self.reference,
                err,
            )
            return None
        self.seen = stamp
        logger.info("serve: switched to the newly published model %s", self.label())
        return pipe
