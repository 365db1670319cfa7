"""The stages of a run: each one's folder, its options as the run completes them (the recipe's table, the
[run] model options, the paths between stages) and the fingerprint of what it reads."""

from __future__ import annotations

import hashlib
import json
import os

from dynamicid.options import leaves
from dynamicid.recipe.recipe import STAGE_ORDER, Recipe

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
    if not path or not os.path.isfile(path):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_stamp(folder: str) -> str | None:
    """Every file under `folder` (but `_`- and dot-folders) by name, size and modification time: new, changed
    or removed photos change it without reading them."""
    if not os.path.isdir(folder):
        return None
    entries = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
        for name in sorted(names):
            path = os.path.join(root, name)
            try:
                stat = os.stat(path)
            except OSError:
                continue
            entries.append((os.path.relpath(path, folder), stat.st_size, stat.st_mtime_ns))
    return _digest(entries)


def fingerprints(recipe: Recipe) -> dict[str, str]:
    """Each stage's fingerprint: its options and what it reads (the fingerprints of the stages before it,
    and the content of the files the recipe names). Computed before anything runs, so a plan is exact."""
    found: dict[str, str] = {}
    for stage in STAGE_ORDER:
        if not recipe.has(stage):
            continue
        options = {k: v for k, v in options_of(recipe, stage).items() if k not in UNFINGERPRINTED}
        found[stage] = _digest({"stage": stage, "options": options, "reads": _reads(recipe, stage, found)})
    return found


def _reads(recipe: Recipe, stage: str, before: dict[str, str]) -> dict:
    table = recipe.tables[stage]
    if stage == "collect":
        return {"urls": file_digest(table["urls"])}
    if stage == "prep":
        return {"collect": before["collect"]} if "collect" in before else {"input": folder_stamp(table["input"])}
    if stage == "train.anchor":
        return {"prep": before["prep"]}
    if stage == "train.reconfig":
        return {"prep": before["prep"], "anchor": before["train.anchor"]}
    if stage == "eval":
        trained = {s: before[s] for s in ("train.anchor", "train.reconfig") if s in before}
        return {"prep": before["prep"], "prompts": file_digest(table.get("prompts"))} | trained
    return {"eval": before["eval"]} | ({"gate": before["gate"]} if stage == "publish" and "gate" in before else {})
