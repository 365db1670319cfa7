"""OUTPUT/run.json: what each stage last did (status, fingerprint, time), written whole after every change,
so a run killed at any point leaves a record that says which stages are done."""

from __future__ import annotations

import json
import os
import time

from dynamicid.atomic import write_atomic

RUN_FILE = "run.json"


class RunState:
    def __init__(self, output: str):
        self.path = os.path.join(output, RUN_FILE)
        self.stages: dict[str, dict] = {}
        try:
            with open(self.path, encoding="utf-8") as handle:
                self.stages = json.load(handle).get("stages", {})
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError):  # a damaged record: every stage is checked again
            self.stages = {}

    def get(self, stage: str) -> dict:
        return self.stages.get(stage) or {}

    def update(self, stage: str, **fields) -> None:
        self.stages[stage] = self.get(stage) | fields | {"updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.save()

    def save(self) -> None:
        write_atomic(self.path, json.dumps({"format": 1, "stages": self.stages}, indent=2).encode("utf-8"))
