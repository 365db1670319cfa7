"""Checks that keep a prep run from harming its dataset, made on the driver before any image is read:
INPUT and OUTPUT must not overlap in a way that makes prep read its own files, OUTPUT must be
writable, and only one run may write to an OUTPUT at a time."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time

from dynamicid.errors import InputError
from dynamicid.prep import outputs

logger = logging.getLogger(__name__)


class PrepError(InputError):
    """A problem with the job as a whole (bad input path, missing model), found before any image."""


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_paths(input_path: str, output: str) -> str | None:
    """Refuses an OUTPUT that is INPUT, and an INPUT inside what prep writes. Returns the folder to leave
    out of the listing (OUTPUT, when it lies inside INPUT), or None."""
    source, target = os.path.realpath(input_path), os.path.realpath(output)
    if source == target:
        raise PrepError(
            f"the output folder {output} is the input folder: prep would read its own outputs. "
            "Give an output folder outside the input, e.g. a sibling folder."
        )
    for written in (outputs.IMAGES_DIR, outputs.STATE_DIR):
        if _inside(source, os.path.join(target, written)):
            raise PrepError(
                f"the input {input_path} lies inside prep's own {written}/ folder of {output}; "
                "give the photos' own folder as input."
            )
    return target if _inside(target, source) else None


def check_writable(output: str, state: str = outputs.STATE_DIR) -> None:
    """Creates OUTPUT and writes a probe file in its `state` folder, so an unwritable folder fails now, not
    after every image."""
    probe = os.path.join(output, state, f"write-probe-{os.getpid()}")
    try:
        os.makedirs(os.path.dirname(probe), exist_ok=True)
        with open(probe, "wb") as handle:
            handle.write(b"ok")
        os.remove(probe)
    except OSError as err:
        raise PrepError(
            f"cannot write to the output folder {output}: {err.strerror}. Give a folder you can "
            "write to, or fix its permissions."
        ) from None


class OutputLock:
    """An exclusive lock on OUTPUT/_state/lock for the length of a run. The operating system drops it when
    the process ends, even by kill -9, so a crash never leaves OUTPUT locked. The file names the holder.

    A POSIX record lock (`lockf`) belongs to the process that took it: processes forked while it is held
    (DataLoader workers, say) do not hold it too, so a killed run's lock goes with the run itself. Within one
    process, `_HELD` refuses a second lock on the same file (record locks do not conflict within a process)."""

    _HELD: dict[str, str] = {}  # lock file -> what this process wrote in it
    _GUARD = threading.Lock()

    def __init__(self, output: str, state: str = outputs.STATE_DIR, command: str = "prep"):
        self.path = os.path.join(output, state, outputs.LOCK_FILE)
        self.command = command
        self.handle = None

    def _refuse(self, holder: str) -> PrepError:
        return PrepError(
            f"another {self.command} run is writing to {os.path.dirname(os.path.dirname(self.path))} "
            f"({holder}); wait for it to finish, or give another output folder."
        )

    def __enter__(self) -> OutputLock:
        try:
            import fcntl
        except ImportError:  # not POSIX: run without the lock
            logger.warning("no file locking on this system: do not start two prep runs on %s", self.path)
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with OutputLock._GUARD:  # threads of one process: the check and the taking are one step
            return self._take(fcntl)

    def _take(self, fcntl) -> OutputLock:
        key = os.path.realpath(self.path)
        if key in OutputLock._HELD:  # this process holds it: reading the file would close (and drop) its lock
            raise self._refuse(OutputLock._HELD[key])
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise self._refuse(holder) from None
        holder = json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv),
            }
        )
        OutputLock._HELD[key] = holder
        handle.seek(0)
        handle.truncate()
        handle.write(holder)
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.close()  # closing releases the lock
            self.handle = None
            OutputLock._HELD.pop(os.path.realpath(self.path), None)
