"""`dynamicid run RECIPE`: plan which stages are out of date, then run them in order, each through its
command's own code, recording every step in OUTPUT/run.json."""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass

from dynamicid.errors import ConfigError, DynamicIDError
from dynamicid.recipe.recipe import STAGE_ORDER, Recipe
from dynamicid.recipe.state import RunState

logger = logging.getLogger(__name__)


class StageFailed(DynamicIDError):
    pass


@dataclass
class Step:
    stage: str
    fingerprint: str
    run: bool
    reason: str


def plan(recipe: Recipe, state: RunState, force=(), start: str | None = None, until: str | None = None) -> list[Step]:
    """Every stage of the recipe with whether it runs and why. Once one runs, every later one runs too: it
    reads what that one makes."""
    from dynamicid.recipe.stages import fingerprints

    prints = fingerprints(recipe, state)
    order = [stage for stage in STAGE_ORDER if recipe.has(stage)]
    first = order.index(start) if start else 0
    last = order.index(until) if until else len(order) - 1
    if first > last:
        raise ConfigError(f"--from {start} comes after --until {until}: the stages run in the order {', '.join(order)}")
    steps, upstream_ran = [], None
    for index, stage in enumerate(order):
        if not first <= index <= last:
            steps.append(Step(stage, prints[stage], False, "outside --from/--until"))
            continue
        reason = _why_run(stage, prints[stage], state.get(stage), force, upstream_ran, recipe)
        if stage == "prep" and reason and reason.startswith("its output changed") and _reviewed(recipe, state):
            steps.append(Step(stage, prints[stage], False, "reviewed since it ran: what reads the dataset runs"))
            upstream_ran = "a review of the dataset"
            continue
        steps.append(Step(stage, prints[stage], reason is not None, reason or "up to date"))
        if reason is not None and upstream_ran is None:
            upstream_ran = stage
    return steps


def _why_run(stage, fingerprint, record, force, upstream_ran, recipe) -> str | None:
    if stage in force:
        return "forced (--force)"
    if not record:
        return "never run"
    if record.get("fingerprint") != fingerprint:
        return "its options or inputs changed"
    if record.get("status") != "done":
        status = record.get("status")
        return {"interrupted": "its last run was interrupted", "failed": "its last run failed"}.get(
            status, "its last run did not finish"
        )
    problem = _output_problem(recipe, stage, record)
    if problem:
        return problem
    if upstream_ran:
        return upstream_ran + (" changed its input" if upstream_ran.startswith("a review") else " runs before it")
    return None


def _reviewed(recipe: Recipe, state: RunState) -> bool:
    """Prep's dataset differs from what prep made only by a review (`dynamicid review`): it is as the last
    review left it."""
    from dynamicid.prep.review import reviewed_stamp
    from dynamicid.recipe.stages import output_folder

    folder = output_folder(recipe, "prep", state.get("prep"))
    stamp = reviewed_stamp(folder) if folder else None
    return stamp is not None and _stamp(folder) == stamp


def _stamp(folder: str | None) -> str | None:
    """A stage output's stamp; a review's own record of the dataset is not part of it."""
    from dynamicid.filestamps import output_stamp
    from dynamicid.prep.review import REVIEW_STATE

    return output_stamp(folder, skip=(REVIEW_STATE,))


def _output_problem(recipe: Recipe, stage: str, record: dict) -> str | None:
    """Why a finished stage's output no longer is what it made (a file deleted or edited), or None."""
    from dynamicid.recipe.stages import output_folder

    folder = output_folder(recipe, stage, record)
    if folder is None:
        return None
    if not os.path.isdir(folder):
        return "the published model is missing" if stage == "publish" else "its output is missing"
    if record.get("output_stamp") and _stamp(folder) != record["output_stamp"]:
        return f"its output changed since it ran (a file in {folder} was removed, added or edited)"
    return None


def describe(steps: list[Step]) -> str:
    width = max(len(step.stage) for step in steps)
    return "\n".join(
        f"  {step.stage:<{width}}  {'run ' if step.run else 'skip'}  {step.reason}  [{step.fingerprint[:10]}]"
        for step in steps
    )


def execute(recipe: Recipe, steps: list[Step], state: RunState) -> None:
    """Runs the steps that run, in order, recording each in `state`. A failing stage is recorded and stops the
    run with its message."""
    from dynamicid.recipe import actions
    from dynamicid.recipe.stages import output_folder

    for step in steps:
        if step.stage == "prep" and not step.run and step.reason.startswith("reviewed"):
            # The reviewed dataset is prep's output from now on: the stages after it run on it once.
            state.update("prep", output_stamp=_stamp(output_folder(recipe, "prep", state.get("prep"))))
        if not step.run:
            continue
        logger.info("run: %s (%s)", step.stage, step.reason)
        record = state.get(step.stage)
        started = time.perf_counter()
        state.update(step.stage, status="started", fingerprint=step.fingerprint, message=None)
        try:
            extra = actions.run_stage(recipe, step, record, state)
        except KeyboardInterrupt:
            state.update(step.stage, status="interrupted", seconds=round(time.perf_counter() - started, 2))
            raise
        except DynamicIDError as err:
            state.update(step.stage, status="failed", message=str(err), seconds=round(time.perf_counter() - started, 2))
            raise StageFailed(
                f"stage {step.stage} failed: {err} (fix it, then `dynamicid run {recipe.path}` continues from here)"
            ) from None
        extra = extra or {}
        folder = output_folder(recipe, step.stage, extra)
        stamp = _stamp(folder) if folder else None
        seconds = round(time.perf_counter() - started, 2)
        state.update(step.stage, status="done", seconds=seconds, output_stamp=stamp, **extra)


def move_aside(folder: str) -> str | None:
    """An earlier run's output goes to FOLDER-previous (replacing an older one), so a new run starts clean
    and can still read the last weights. Returns the new place, or None when there was nothing."""
    if not os.path.isdir(folder):
        return None
    previous = folder.rstrip("/") + "-previous"
    if os.path.isdir(previous):
        shutil.rmtree(previous)
    os.replace(folder, previous)
    return previous
