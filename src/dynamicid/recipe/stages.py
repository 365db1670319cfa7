"""The stages of a run: each one's folder, its options as the run completes them (the recipe's table, the
[run] model options, the paths between stages) and the fingerprint of what it reads."""

from __future__ import annotations

import hashlib
import json
import os

from dynamicid.filestamps import file_sha256, folder_stamp
from dynamicid.options import leaves
from dynamicid.recipe.recipe import HUB_PREFIX, STAGE_ORDER, Recipe

FOLDERS = {
    "collect": "photos",
    "prep": "dataset",
    "train.anchor": "anchor",
    "train.reconfig": "reconfig",
    "eval": "eval",
    "gate": "gate",
    "publish": "publish",
}
COMMANDS = {
    "collect": ("collect",),
    "prep": ("prep",),
    "train.anchor": ("train", "anchor"),
    "train.reconfig": ("train", "reconfig"),
    "eval": ("eval",),
}
# Options that change how a stage is watched, not what it makes: left out of its fingerprint.
UNFINGERPRINTED = frozenset({"progress", "data_workers", "checkpoint_every", "keep_checkpoints", "master"})


def config_class(stage: str) -> type:
    from dynamicid.collect.config import CollectConfig
    from dynamicid.evaluation.config import EvalConfig
    from dynamicid.prep.config import PrepConfig
    from dynamicid.training.config import AnchorConfig, ReconfigConfig

    return {
        "collect": CollectConfig,
        "prep": PrepConfig,
        "train.anchor": AnchorConfig,
        "train.reconfig": ReconfigConfig,
        "eval": EvalConfig,
    }[stage]


def folder_of(recipe: Recipe, stage: str) -> str:
    return os.path.join(recipe.output, FOLDERS[stage])


def final_weights(recipe: Recipe) -> str | None:
    """The weights a run produces: stage 2's when the recipe trains it, else stage 1's; None without training."""
    for stage in ("train.reconfig", "train.anchor"):
        if recipe.has(stage):
            return os.path.join(folder_of(recipe, stage), "weights")
    return None


def options_of(recipe: Recipe, stage: str) -> dict:
    """The stage's options in full: the recipe's table, the [run] model options its command takes, and the
    paths the run wires between the stages."""
    table = dict(recipe.tables.get(stage, {}))
    if stage not in COMMANDS:
        return table
    fields = {leaf.name for leaf in leaves(config_class(stage))}
    shared = {key: getattr(recipe.run, key) for key in ("base_model", "clip_image_encoder") if getattr(recipe.run, key)}
    values = {key: value for key, value in shared.items() if key in fields} | table
    return values | _wired(recipe, stage)


def _wired(recipe: Recipe, stage: str) -> dict:
    output = folder_of(recipe, stage)
    dataset = folder_of(recipe, "prep")
    if stage == "collect":
        return {"output": output}
    if stage == "prep":
        return {"output": output} | ({"input": folder_of(recipe, "collect")} if recipe.has("collect") else {})
    if stage == "train.anchor":
        return {"data": dataset, "output": output}
    if stage == "train.reconfig":
        return {
            "data": dataset,
            "output": output,
            "weights": os.path.join(folder_of(recipe, "train.anchor"), "weights"),
        }
    trained = final_weights(recipe)
    return {"input": dataset, "output": output} | ({"weights": trained} if trained else {})  # eval


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: str | None) -> str | None:
    return file_sha256(path) if path and os.path.isfile(path) else None


def fingerprints(recipe: Recipe, state=None, upto: str | None = None) -> dict[str, str]:
    """Each stage's fingerprint: its options and what it reads (the fingerprints of the stages before it,
    the content of the files the recipe names, and for the gate what is published at the target). Paths
    are taken relative to the recipe's folder, so a moved or copied project keeps its fingerprints.
    Computed before anything runs, so a plan is exact."""
    base = os.path.dirname(os.path.abspath(recipe.path))
    found: dict[str, str] = {}
    for stage in STAGE_ORDER:
        if not recipe.has(stage):
            continue
        options = {k: v for k, v in options_of(recipe, stage).items() if k not in UNFINGERPRINTED}
        reads = _reads(recipe, stage, found, state)
        found[stage] = _digest({"stage": stage, "options": portable(options, base), "reads": portable(reads, base)})
        if stage == upto:
            break
    return found


def training_basis(recipe: Recipe, stage: str) -> dict:
    """What a training stage's weights come from: its own options and the dataset's fingerprint. Fine-tuning
    the last weights makes sense when only the data changed."""
    base = os.path.dirname(os.path.abspath(recipe.path))
    options = {k: v for k, v in options_of(recipe, stage).items() if k not in UNFINGERPRINTED | {"init_weights"}}
    return {"options": _digest(portable(options, base)), "data": fingerprints(recipe, upto="prep").get("prep")}


def portable(value, base: str):
    """`value` with every path inside `base` written relative to it."""
    if isinstance(value, dict):
        return {key: portable(item, base) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(item, base) for item in value]
    if isinstance(value, str) and os.path.isabs(value) and (value + os.sep).startswith(base + os.sep):
        return "./" + os.path.relpath(value, base)
    return value


def output_folder(recipe: Recipe, stage: str, record: dict) -> str | None:
    """Where a stage's output is, to stamp it: its folder, or for publish the folder it published to (None for
    a Hub repo, or for the gate, which writes nothing)."""
    if stage == "gate":
        return None
    if stage == "publish":
        to = recipe.tables["publish"]["to"]
        return None if to.startswith(HUB_PREFIX) else record.get("folder") or to
    return folder_of(recipe, stage)


def _reads(recipe: Recipe, stage: str, before: dict[str, str], state=None) -> dict:
    table = recipe.tables[stage]
    if stage == "collect":
        return {"urls": file_digest(table["urls"])}
    if stage == "prep":
        if "collect" in before:
            return {"collect": before["collect"]}
        return {"input": folder_stamp(table["input"], skip=("_", "."))}  # prep skips _- and dot-folders too
    if stage == "train.anchor":
        return {"prep": before["prep"]}
    if stage == "train.reconfig":
        return {"prep": before["prep"], "anchor": before["train.anchor"]}
    if stage == "eval":
        trained = {s: before[s] for s in ("train.anchor", "train.reconfig") if s in before}
        return {"prep": before["prep"], "prompts": file_digest(table.get("prompts"))} | trained
    if stage == "gate":
        from dynamicid.recipe.target import champion_token

        return {"eval": before["eval"], "champion": champion_token(recipe, state or _NoState())}
    return {"eval": before["eval"]} | ({"gate": before["gate"]} if "gate" in before else {})  # publish


class _NoState:
    def get(self, stage: str) -> dict:
        return {}
