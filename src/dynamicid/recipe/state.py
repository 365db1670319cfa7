"""OUTPUT/run.json: what each stage last did (status, fingerprint, time), written whole after every change,
so a run killed at any point leaves a record that says which stages are done."""

from __future__ import annotations

import json
import os
import time

from dynamicid.atomic import write_atomic
from dynamicid.errors import ConfigError

RUN_FILE = "run.json"


class RunState:
    def __init__(self, output: str):
        self.path = os.path.join(output, RUN_FILE)
        self.stages: dict[str, dict] = {}
        try:
            with open(self.path, encoding="utf-8") as handle:
                document = json.load(handle)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            raise self._refused(f"it cannot be read ({err})") from None
        stages = document.get("stages") if isinstance(document, dict) else None
        if not isinstance(stages, dict) or not all(isinstance(record, dict) for record in stages.values()):
            raise self._refused('it is not a run record ({"format": 1, "stages": {STAGE: {...}}})')
        self.stages = stages

    def _refused(self, why: str) -> ConfigError:
        return ConfigError(
            f"{self.path}: {why}. It says which stages are done; restore it, or move it aside to run every stage "
            "again (each resumes what it finished)"
        )

    def get(self, stage: str) -> dict:
        return self.stages.get(stage) or {}

    def update(self, stage: str, **fields) -> None:
        self.stages[stage] = self.get(stage) | fields | {"updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.save()

    def save(self) -> None:
        write_atomic(self.path, json.dumps({"format": 1, "stages": self.stages}, indent=2).encode("utf-8"))
