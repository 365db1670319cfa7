"""A recipe: one TOML file whose tables are the stages, each holding that command's own options (the keys its
--config file takes), checked by the same rule. Paths are read from the recipe's folder. Paths between the
stages are the run's to wire: setting one is refused, naming the key."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field

from dynamicid.errors import ConfigError
from dynamicid.options import check_limits, check_values, flatten_table, option

# The stages, in run order.
STAGE_ORDER = ("collect", "prep", "train.anchor", "train.reconfig", "eval", "gate", "publish")


@dataclass(frozen=True)
class RunSettings:
    """The recipe's [run] table."""

    output: str = option(help="the folder every stage writes under")
    base_model: str | None = option(None, "Stable Diffusion 1.5 for training, eval and publish: a folder or a repo id")
    clip_image_encoder: str | None = option(None, "CLIP ViT-H/14 for training, eval and publish: a folder or a repo id")
    fine_tune: bool = option(True, "a rerun of training on changed data starts from the last weights (false: anew)")
    processes: int = option(1, "training processes (GPUs): above 1, training runs under `launcher`", limits=(1, 4096))
    launcher: str = option(
        "accelerate",
        "accelerate (GPUs) or torchrun (CPU processes with ACCELERATE_USE_CPU=1)",
        choices=("accelerate", "torchrun"),
    )

    def __post_init__(self) -> None:
        check_limits(self)


@dataclass(frozen=True)
class PublishSettings:
    """The recipe's [publish] table."""

    to: str = option(help="a folder, or hf://owner/name for a Hugging Face Hub repo")
    private: bool = option(False, "a private Hub repo")


GATE_KEYS = {
    "champion": "true: the new model must also beat the published one on the same eval set",
    "min_improvement": "how much higher its face_sim_mean must be than the published model's",
}
# Short names of the gate, each a bound on a key of eval's summary.json; min_KEY / max_KEY work for any key.
GATE_ALIASES = {
    "face_similarity": "face_sim_mean",
    "leak": "leak_positive_share",
    "detection_rate": "detection_rate",
    "prompt_agreement": "prompt_agreement_mean",
}
HUB_PREFIX = "hf://"
# Options each stage gets from the run: setting them in the recipe is refused.
WIRED = {
    "collect": ("output",),
    "prep": ("output",),
    "train.anchor": ("data", "output", "init_weights"),
    "train.reconfig": ("data", "output", "weights", "init_weights"),
    "eval": ("input", "output"),
}
PATH_KEYS = ("output", "urls", "input", "prompts", "to", "base_model", "clip_image_encoder", "clip_model")


@dataclass
class Recipe:
    path: str
    output: str
    run: RunSettings
    tables: dict[str, dict] = field(default_factory=dict)  # stage -> its options (paths resolved)

    def has(self, stage: str) -> bool:
        return stage in self.tables


def read_recipe(path: str) -> Recipe:
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as err:
        raise ConfigError(f"recipe {path}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"recipe {path} is not valid TOML: {err}") from None
    folder = os.path.dirname(os.path.abspath(path))
    tables = _stage_tables(document, path)
    run = _run_table(document.get("run"), path, folder)
    recipe = Recipe(path, run.output, run)
    for stage, values in tables.items():
        recipe.tables[stage] = _checked_stage(stage, values, path, folder)
    _check_inputs(recipe)
    _check_configs(recipe)
    return recipe


def _check_configs(recipe: Recipe) -> None:
    """Each command's config built now from its completed options, so a value out of its limits (or a missing
    required one) is refused before the first stage runs, naming the table."""
    from dynamicid.options import config_from, missing_options
    from dynamicid.recipe.stages import COMMANDS, config_class, options_of

    for stage in (stage for stage in STAGE_ORDER if stage in COMMANDS and recipe.has(stage)):
        cls = config_class(stage)
        values = options_of(recipe, stage)
        missing = missing_options(values, cls, positional=True)
        if missing:
            raise ConfigError(f"recipe {recipe.path}: [{stage}] needs {', '.join(missing)}")
        try:
            config_from(values, cls)
        except ConfigError as err:
            raise ConfigError(f"recipe {recipe.path}: [{stage}]: {err}") from None


def _stage_tables(document: dict, path: str) -> dict[str, dict]:
    tables = {}
    for key, value in document.items():
        if key == "train" and isinstance(value, dict):
            extra = sorted(set(value) - {"anchor", "reconfig"})
            if extra:
                raise ConfigError(f"recipe {path}: [train] holds [train.anchor] and [train.reconfig], not {extra}")
            tables.update({f"train.{stage}": table for stage, table in value.items()})
        elif key in STAGE_ORDER:
            tables[key] = value
        elif key != "run":
            known = ", ".join(f"[{stage}]" for stage in STAGE_ORDER)
            raise ConfigError(f"recipe {path}: unknown table [{key}]; the tables are [run], {known}")
    for stage, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"recipe {path}: {stage} must be a table ([{stage}]), not a {type(table).__name__}")
    return tables


def _run_table(table, path: str, folder: str) -> RunSettings:
    where = f"recipe {path}: [run]"
    if not isinstance(table, dict) or not table.get("output"):
        raise ConfigError(f'{where} needs output = "FOLDER", where every stage writes')
    checked = check_values(table, RunSettings, where)
    try:
        return RunSettings(**{key: _resolved(key, value, folder) for key, value in checked.items()})
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def _checked_stage(stage: str, values: dict, path: str, folder: str) -> dict:
    from dynamicid.recipe.stages import config_class

    where = f"recipe {path}: [{stage}]"
    if stage == "gate":
        return _checked_gate(values, where)
    if stage == "publish":
        if not isinstance(values.get("to"), str):
            raise ConfigError(f'{where} needs to = "FOLDER" or to = "hf://owner/name"')
        checked = check_values(values, PublishSettings, where)
        return {key: _resolved(key, value, folder) for key, value in checked.items()}
    flat = flatten_table(values, where)
    wired = sorted(set(flat) & set(WIRED.get(stage, ())))
    if wired:
        raise ConfigError(f"{where} sets {', '.join(wired)}, which the run wires between the stages; remove it")
    checked = check_values(flat, config_class(stage), where)
    return {key: _resolved(key, value, folder) for key, value in checked.items()}


def _checked_gate(values: dict, where: str) -> dict:
    for key, value in values.items():
        bound = key.partition("_")[2] if key.startswith(("min_", "max_")) else None
        if key in GATE_KEYS:
            continue
        if bound is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(
                f"{where}: {key} = {value!r} is not a bound: use min_NAME or max_NAME = a number, NAME a key of "
                f"eval's summary.json or one of {', '.join(GATE_ALIASES)}; or {_listed(GATE_KEYS)}"
            )
    return values


def _check_inputs(recipe: Recipe) -> None:
    if recipe.has("prep") and not recipe.has("collect") and "input" not in recipe.tables["prep"]:
        raise ConfigError(f'recipe {recipe.path}: [prep] needs input = "PHOTOS" when the recipe has no [collect]')
    if recipe.has("collect") and "input" in recipe.tables.get("prep", {}):
        raise ConfigError(f"recipe {recipe.path}: [prep] input is collect's output here; remove input, or [collect]")
    needs = {"train.reconfig": "train.anchor", "gate": "eval", "publish": "eval"}
    for stage, before in needs.items():
        if recipe.has(stage) and not recipe.has(before):
            raise ConfigError(f"recipe {recipe.path}: [{stage}] needs [{before}] before it")
    if "weights" in recipe.tables.get("eval", {}) and recipe.has("train.anchor"):
        raise ConfigError(f"recipe {recipe.path}: [eval] weights are the run's trained weights here; remove weights")
    if (recipe.has("train.anchor") or recipe.has("eval")) and not (recipe.has("prep")):
        raise ConfigError(f"recipe {recipe.path}: training and eval read prep's dataset; add [prep]")


def _resolved(key: str, value, folder: str):
    """A relative path is read from the recipe's folder; a model reference stays a repo id unless that
    folder has it; `to = "hf://owner/name"` is a Hub repo."""
    if key not in PATH_KEYS or not isinstance(value, str) or os.path.isabs(value) or value.startswith(HUB_PREFIX):
        return value
    joined = os.path.normpath(os.path.join(folder, os.path.expanduser(value)))
    if key in ("base_model", "clip_image_encoder", "clip_model") and not os.path.exists(joined):
        return value
    return joined


def _listed(keys: dict) -> str:
    return "; ".join(f"{key} ({text})" for key, text in keys.items())
