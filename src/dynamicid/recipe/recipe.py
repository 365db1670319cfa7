"""A recipe: one TOML file whose tables are the stages, each holding that command's own options (the keys its
--config file takes), checked by the same rule. Paths are read from the recipe's folder. Paths between the
stages are the run's to wire: setting one is refused, naming the key."""

from __future__ import annotations

import math
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
    "sim_ref": "sim_ref_mean",
    "sim_gt": "sim_gt_mean",
    "copy_paste": "copy_paste_mean",
    "id_conf": "id_conf_mean",
    "swapped": "swapped_share",
    "duplicate": "duplicate_share",
    "blended": "blended_share",
    "missing": "missing_share",
    "extra_face": "extra_face_share",
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
    _check_across_stages(recipe)
    if recipe.has("publish"):
        from dynamicid.recipe.target import check_target

        check_target(recipe)
    return recipe


def _check_across_stages(recipe: Recipe) -> None:
    """What one stage's table says that another's makes impossible, refused before the first stage runs."""
    from dynamicid.prep.curate import parse_split

    where = f"recipe {recipe.path}"
    if recipe.has("eval") and recipe.has("prep"):
        split = recipe.tables["eval"].get("split", "test")
        shares = dict(zip(("train", "val", "test"), parse_split(recipe.tables["prep"].get("split", "1,0,0")) or ()))
        if not shares.get(split):
            raise ConfigError(
                f"{where}: [eval] evaluates the {split} split, but [prep] split = "
                f"{recipe.tables['prep'].get('split', '1,0,0')!r} puts nobody in it; give [prep] split a {split} "
                f'share (e.g. split = "0.8,0.1,0.1"), or [eval] split = "train" to score the training people'
            )
    prompts = recipe.tables.get("eval", {}).get("prompts")
    if prompts and not os.path.isfile(prompts):
        raise ConfigError(
            f"{where}: [eval] prompts = {prompts}: no such file; write it (one prompt a line) or remove the key"
        )
    for key in ("base_model", "clip_image_encoder"):
        _check_model(getattr(recipe.run, key), f"{where}: [run] {key}", recipe)
    for stage, values in recipe.tables.items():
        for key in ("base_model", "clip_image_encoder", "clip_model", "weights"):
            if isinstance(values.get(key), str):
                _check_model(values[key], f"{where}: [{stage}] {key}", recipe)
    output = os.path.realpath(recipe.output)
    source = recipe.tables.get("prep", {}).get("input")
    if source and (output == os.path.realpath(source) or output.startswith(os.path.realpath(source) + os.sep)):
        raise ConfigError(
            f"{where}: [run] output {recipe.output} lies inside [prep] input {source}: prep would read the run's own "
            "files as photos; put the output beside the photos, not among them"
        )


def _check_model(reference: str | None, where: str, recipe: Recipe) -> None:
    """A model folder that is not there is refused now (a repo id is left to the Hub)."""
    from dynamicid.hub import looks_like_path

    if not reference or os.path.exists(reference):
        return
    folder = os.path.dirname(os.path.abspath(recipe.path))
    if reference.split("/", 1)[0] == "tiny":
        raise ConfigError(
            f"{where} = {reference!r}: no such folder; the tiny models are made by `dynamicid make-tiny-models "
            f"{os.path.join(folder, 'tiny')}` (then run the recipe again)"
        )
    if looks_like_path(reference):
        raise ConfigError(f"{where} = {reference!r}: no such folder; give the model's folder or a Hub repo id")


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
        if not isinstance(values.get("to"), str) or not values["to"].strip():
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
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key == "champion":
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: champion = {value!r} must be true or false (without quotes)")
        elif not key.startswith(("min_", "max_")) or not number:
            raise ConfigError(
                f"{where}: {key} = {value!r} is not a bound: use min_NAME or max_NAME = a number, NAME a key of "
                f"eval's summary.json or one of {', '.join(GATE_ALIASES)}; or {_listed(GATE_KEYS)}"
            )
        elif not math.isfinite(value):
            raise ConfigError(f"{where}: {key} = {value!r} is not a finite number; a bound must be one")
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
