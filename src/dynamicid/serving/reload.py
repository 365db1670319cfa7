"""Switching to a newly published model while serving: the record `dynamicid run` publishes beside the model
(dynamicid_run.json) is read before each request for a folder, and every `interval` seconds for a Hub repo
(that one small file only); a new version is loaded beside the old one and swapped in between two requests,
so no queued request is lost.

The server keeps serving the last good model. A published folder is copied first (a snapshot of the server's
own), so the weights in memory never map the watched files: a file cut short or overwritten there later
changes nothing served. A new version must make a one-step image (`probe`) before it is switched to; one
that cannot, or a record that cannot be read, is logged once with the reason and the old model stays."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from dynamicid.generation.published import RUN_RECORD, RecordProblem, read_record

logger = logging.getLogger(__name__)


class ModelWatch:
    """`reference`: the folder or repo id served; `load(reference)` builds a pipeline from it; `probe(pipe)`
    makes a one-step image with it (the engine sets it) and raises when it cannot."""

    def __init__(
        self,
        reference: str,
        load: Callable[[str], Any],
        interval: float = 60.0,
        probe: Callable[[Any], None] | None = None,
        snapshots: str | None = None,
    ):
        self.reference, self.load, self.interval, self.probe = reference, load, interval, probe
        self.is_folder = os.path.isdir(reference)
        self.snapshots = snapshots or tempfile.mkdtemp(prefix="dynamicid-served-models-")
        self.snapshot: str | None = None  # the copy the served model was loaded from
        self._said: set[str] = set()  # problems logged already: each once, not on every request
        self.refused: Any = None  # the stamp of a version that failed: not tried again
        self.record = self._record()
        self.checked = time.monotonic()

    def _say(self, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            logger.warning("serve: %s", message)

    def _record(self) -> dict | None:
        try:
            if self.is_folder:
                return read_record(os.path.join(self.reference, RUN_RECORD))
            return self._hub_record()
        except RecordProblem as err:
            self._say(f"{err}; still serving {self.label() if hasattr(self, 'record') else 'the loaded model'}")
            return None

    def _hub_record(self) -> dict | None:
        from huggingface_hub import hf_hub_download

        from dynamicid.hub import split_reference

        try:
            repo, subfolder = split_reference(self.reference)
            path = hf_hub_download(repo, RUN_RECORD, subfolder=subfolder)
        except Exception as err:  # not published there, or the Hub unreachable: keep serving what is loaded
            logger.debug("serve: no published record in %s (%s)", self.reference, err)
            return None
        return read_record(path)

    @staticmethod
    def _stamp(record: dict | None) -> Any:
        return None if record is None else (record.get("version"), record.get("fingerprint"))

    def label(self) -> str:
        """What the page shows of the model it serves: the published version, else the folder or repo."""
        if self.record is None:
            return self.reference
        return f"version {self.record.get('version')} (published {self.record.get('published', '?')})"

    def load_current(self) -> Any:
        """The model published now, loaded from the server's own copy (a folder) or the repo."""
        source = self._copy() if self.is_folder else self.reference
        pipe = self.load(source)
        self._keep(source)
        return pipe

    def newer(self) -> Any | None:
        """A pipeline of a newly published version that made its one-step image, or None. A folder is read
        every call (a stat and a small file); a Hub repo once per interval."""
        if not self.is_folder and time.monotonic() - self.checked < self.interval:
            return None
        self.checked = time.monotonic()
        record = self._record()
        stamp = self._stamp(record)
        if record is None or stamp == self._stamp(self.record) or stamp == self.refused:
            return None
        source = None
        try:
            source = self._copy() if self.is_folder else self.reference
            pipe = self.load(source)
            if self.probe is not None:
                self.probe(pipe)
        except Exception as err:  # a half-copied or damaged model: keep the one that works
            self.refused = stamp
            self._discard(source)
            self._say(
                f"the newly published version {record.get('version')} in {self.reference} cannot serve "
                f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}); still serving "
                f"{self.label()}"
            )
            return None
        self.record = record
        self._keep(source)
        logger.info("serve: switched to the newly published model %s", self.label())
        return pipe

    def _copy(self) -> str:
        """A copy of the published folder, made while its record stayed the same (a publish swapping the folder
        meanwhile is copied again)."""
        os.makedirs(self.snapshots, exist_ok=True)
        for _ in range(3):
            before = read_record(os.path.join(self.reference, RUN_RECORD))
            target = tempfile.mkdtemp(prefix=f"v{(before or {}).get('version', 0)}-", dir=self.snapshots)
            shutil.copytree(self.reference, target, dirs_exist_ok=True)
            after = read_record(os.path.join(self.reference, RUN_RECORD))
            if self._stamp(before) == self._stamp(after):
                return target
            shutil.rmtree(target, ignore_errors=True)
        raise RecordProblem(f"{self.reference} kept changing while it was copied")

    def _keep(self, source: str | None) -> None:
        """The served model is now loaded from `source`: the copy before it goes."""
        if self.snapshot and self.snapshot != source:
            self._discard(self.snapshot)
        self.snapshot = source if self.is_folder else None

    def _discard(self, source: str | None) -> None:
        if source and self.is_folder and source.startswith(self.snapshots + os.sep):
            shutil.rmtree(source, ignore_errors=True)
