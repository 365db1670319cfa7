"""The gate: the recipe's bounds checked on eval's summary.json, then (champion and challenger) the new model
against the published one, both scored on the same eval set. A failed gate publishes nothing."""

from __future__ import annotations

import json
import logging
import os

from dynamicid.errors import DynamicIDError
from dynamicid.recipe.recipe import GATE_ALIASES, GATE_KEYS, Recipe
from dynamicid.recipe.stages import folder_of, options_of

logger = logging.getLogger(__name__)

CHAMPION_METRIC = "face_sim_mean"


class GateFailed(DynamicIDError):
    pass


def read_summary(folder: str) -> dict:
    path = os.path.join(folder, "summary.json")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as err:
        raise GateFailed(f"{path} cannot be read ({err}); run eval again (--force eval)") from None


def check_bounds(bounds: dict, summary: dict) -> list[str]:
    """The failed bounds, each as a sentence; a bound on a score eval did not measure fails."""
    failures = []
    for key, limit in bounds.items():
        if key in GATE_KEYS:
            continue
        kind, name = key.split("_", 1)
        metric = GATE_ALIASES.get(name, name)
        value = summary.get(metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            failures.append(f"{key}: eval's summary has no {metric} (known: {', '.join(_numeric(summary))})")
        elif (kind == "min" and value < limit) or (kind == "max" and value > limit):
            failures.append(f"{key}: {metric} is {value:.4f}, {'below' if kind == 'min' else 'above'} {limit}")
    return failures


def _numeric(summary: dict) -> list[str]:
    return sorted(k for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool))


def run_gate(recipe: Recipe, state) -> dict:
    from dynamicid.recipe.publish import published_folder

    bounds = recipe.tables["gate"]
    summary = read_summary(folder_of(recipe, "eval"))
    failures = check_bounds(bounds, summary)
    result: dict = {"scores": {k: summary.get(k) for k in _numeric(summary)}}
    champion = published_folder(recipe) if bounds.get("champion", True) else None
    if champion and not failures:
        theirs = evaluate_champion(recipe, champion)
        result["champion"] = {"model": champion, CHAMPION_METRIC: theirs.get(CHAMPION_METRIC)}
        failures += _beats(summary, theirs, float(bounds.get("min_improvement", 0.0)))
    result["failures"] = failures
    if failures:
        state.update("gate", **result)
        raise GateFailed("the new model is not published: " + "; ".join(failures))
    logger.info("gate: passed (%s)", ", ".join(f"{k}" for k in bounds if k not in GATE_KEYS) or "no bounds")
    return result


def _beats(ours: dict, theirs: dict, margin: float) -> list[str]:
    mine, best = ours.get(CHAMPION_METRIC), theirs.get(CHAMPION_METRIC)
    if best is None:
        return []
    if mine is None or mine <= best + margin:
        return [
            f"champion: the published model scores {CHAMPION_METRIC} {best:.4f} on the same eval set, the new one "
            f"{mine if mine is None else round(mine, 4)}; it must be higher by more than {margin}"
        ]
    return []


def evaluate_champion(recipe: Recipe, champion: str) -> dict:
    """The published model scored on this run's eval set (its generated images are kept under
    eval-champion, so a rerun scores them again without generating)."""
    from dynamicid.evaluation.config import EvalConfig
    from dynamicid.evaluation.runner import run_eval
    from dynamicid.options import config_from

    values = options_of(recipe, "eval")
    values = {k: v for k, v in values.items() if k not in ("weights", "clip_image_encoder")}
    values |= {"base_model": champion, "output": os.path.join(recipe.output, "eval-champion")}
    logger.info("gate: scoring the published model %s on the same eval set", champion)
    return run_eval(config_from(values, EvalConfig)).summary
