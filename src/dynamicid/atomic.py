"""Files written whole or not at all: a temporary name beside the target, fsync, then a rename."""

from __future__ import annotations

import os
import uuid


def write_atomic(path: str, data: bytes) -> None:
    """Write `data` to `path` so that a kill at any moment leaves the old file or the new one, never half
    of either. Leftovers are named "<path>.tmp-<random>"."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
