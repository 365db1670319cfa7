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
    """The bounds, then the champion rule. The same weights as the published model's are nothing to compare
    (publish will say there is nothing new); a published record that cannot be read fails the gate."""
    from dynamicid.recipe import target as targets
    from dynamicid.recipe.publish import trained_weights

    bounds = recipe.tables["gate"]
    summary = read_summary(folder_of(recipe, "eval"))
    failures = check_bounds(bounds, summary)
    result: dict = {"scores": {k: summary.get(k) for k in _numeric(summary)}}
    result["champion_seen"] = targets.champion_token(recipe, state)
    published = targets.current(recipe) if recipe.has("publish") else None
    ours = targets.weights_digest(trained_weights(recipe))
    if published and ours and published.record.get("weights_digest") == ours:
        result["unchanged"] = published.version
        logger.info("gate: these are the weights of published version %d; nothing to compare", published.version)
    elif published and bounds.get("champion", True) and not failures:
        champion = targets.champion_folder(published, recipe.tables["publish"]["to"])
        theirs = evaluate_champion(recipe, champion)
        result["champion"] = {
            "model": champion,
            "version": published.version,
            CHAMPION_METRIC: theirs.get(CHAMPION_METRIC),
        }
        failures += _beats(summary, theirs, float(bounds.get("min_improvement", 0.0)), published.version)
    result["failures"] = failures
    if failures:
        state.update("gate", **result)
        raise GateFailed("the new model is not published: " + "; ".join(failures))
    logger.info("gate: passed (%s)", ", ".join(f"{k}" for k in bounds if k not in GATE_KEYS) or "no bounds")
    return result


def _beats(ours: dict, theirs: dict, margin: float, version: int) -> list[str]:
    mine, best = ours.get(CHAMPION_METRIC), theirs.get(CHAMPION_METRIC)
    if best is None:
        return []
    if mine is None or mine <= best + margin:
        tie = mine is not None and abs(mine - best) <= 1e-9
        return [
            f"champion: published version {version} scores {CHAMPION_METRIC} {best:.4f} on the same eval set and "
            f"the new model {'the same' if tie else mine if mine is None else round(mine, 4)}; it must be higher by "
            f"more than min_improvement = {margin}. To publish it anyway, set [gate] min_improvement to a negative "
            "margin you accept (e.g. -0.01), or champion = false to check the bounds only"
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
