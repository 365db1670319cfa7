"""Publish: the trained model as one diffusers-layout folder (`save_pretrained`) with a model card and
dynamicid_run.json (version, fingerprint, scores), swapped into place whole; or pushed to a Hub repo
(`to = "hf://owner/name"`). `dynamicid serve --weights FOLDER` notices a new version between requests."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time

from dynamicid.errors import ConfigError
from dynamicid.generation.published import RUN_RECORD, published_record
from dynamicid.recipe.recipe import HUB_PREFIX, Recipe
from dynamicid.recipe.stages import final_weights, folder_of, options_of

logger = logging.getLogger(__name__)

CARD = "README.md"


def published_folder(recipe: Recipe) -> str | None:
    """The model the recipe last published, on this machine (a Hub repo is fetched), or None."""
    to = recipe.tables.get("publish", {}).get("to")
    if not to:
        return None
    if to.startswith(HUB_PREFIX):
        from dynamicid.hub import resolve

        try:
            folder = resolve(to[len(HUB_PREFIX) :], "published DynamicID model")
        except Exception:  # no such repo yet: nothing published
            return None
        return folder if published_record(folder) else None
    for folder in (to, to.rstrip("/") + ".previous"):  # .previous: a swap cut short
        if published_record(folder):
            return folder
    return None


def run_publish(recipe: Recipe, state, fingerprint: str) -> dict:
    target = recipe.tables["publish"]["to"]
    previous = published_folder(recipe)
    version = int((published_record(previous) or {}).get("version", 0)) + 1 if previous else 1
    staging = os.path.join(recipe.output, "publish", "incoming")
    shutil.rmtree(staging, ignore_errors=True)
    _save_pipeline(recipe, staging)
    record = {
        "version": version,
        "fingerprint": fingerprint,
        "published": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "recipe": os.path.abspath(recipe.path),
        "scores": state.get("gate").get("scores") or {},
    }
    with open(os.path.join(staging, RUN_RECORD), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
    with open(os.path.join(staging, CARD), "w", encoding="utf-8") as handle:
        handle.write(model_card(recipe, record))
    if target.startswith(HUB_PREFIX):
        _push(staging, target[len(HUB_PREFIX) :], bool(recipe.tables["publish"].get("private", False)))
        shutil.rmtree(staging)
    else:
        swap_into_place(staging, target)
    logger.info("publish: version %d -> %s", version, target)
    return {"version": version, "to": target}


def _save_pipeline(recipe: Recipe, folder: str) -> None:
    from dynamicid.generation import DynamicIDPipeline

    values = options_of(recipe, "eval")
    weights = final_weights(recipe) or values.get("weights")
    pipe = DynamicIDPipeline.from_pretrained(values.get("base_model"), weights, values.get("clip_image_encoder"))
    pipe.save_pretrained(folder)


def swap_into_place(staging: str, target: str) -> None:
    """`target` becomes `staging` by renames: a kill at any moment leaves the old model or the new one
    (between the two renames, at TARGET.previous, which readers also look at)."""
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    previous = target.rstrip("/") + ".previous"
    shutil.rmtree(previous, ignore_errors=True)
    if os.path.exists(target):
        os.replace(target, previous)
    shutil.move(staging, target)
    shutil.rmtree(previous, ignore_errors=True)


def _push(folder: str, repo: str, private: bool) -> None:
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        api.upload_folder(folder_path=folder, repo_id=repo, commit_message="dynamicid run: publish")
    except Exception as err:  # huggingface_hub raises its own kinds for auth, network and quota problems
        raise ConfigError(
            f"publishing to the Hub repo {repo} failed: {err}; check HF_TOKEN (a write token) and the repo id"
        ) from None


def model_card(recipe: Recipe, record: dict) -> str:
    """What a user of the model wants to know: the data, the training, the scores against the gate, the
    licences of the models used, and the run that made it."""
    dataset = folder_of(recipe, "prep")
    lines = [
        "---",
        "library_name: diffusers",
        "tags: [dynamicid, identity-preserving, stable-diffusion]",
        "---",
        f"# DynamicID model, version {record['version']}",
        "",
        f"Published {record['published']} by `dynamicid run {os.path.basename(recipe.path)}` "
        f"(run fingerprint `{record['fingerprint'][:16]}`).",
        "",
        "## Data",
        "",
        *_data_lines(dataset),
        "",
        "## Training",
        "",
        *_training_lines(recipe),
        "",
        "## Evaluation and the gate",
        "",
        *_score_lines(recipe, record["scores"]),
        "",
        *_licence_lines(dataset),
    ]
    return "\n".join(lines) + "\n"


def _data_lines(dataset: str) -> list[str]:
    try:
        with open(os.path.join(dataset, "summary.json"), encoding="utf-8") as handle:
            summary = json.load(handle)
    except (OSError, ValueError):
        return ["(prep's summary is not available)"]
    splits = ", ".join(f"{k} {v}" for k, v in (summary.get("kept_faces_by_split") or {}).items())
    return [
        f"- files read: {summary.get('files')}; faces kept: {summary.get('kept_faces')}; "
        f"people: {summary.get('identities')}",
        f"- kept faces per split: {splits or 'none'} (identity-disjoint: eval never saw a training identity)",
        f"- the dataset card: `{os.path.join(dataset, 'dataset_card.md')}`",
    ]


def _training_lines(recipe: Recipe) -> list[str]:
    lines = []
    for stage in ("train.anchor", "train.reconfig"):
        if recipe.has(stage):
            values = options_of(recipe, stage)
            shown = {k: values.get(k) for k in ("steps", "batch_size", "learning_rate", "resolution", "base_model")}
            lines.append(f"- {stage}: " + ", ".join(f"{k} {v}" for k, v in shown.items() if v is not None))
    return lines or ["- no training in this recipe (the weights given to eval)"]


def _score_lines(recipe: Recipe, scores: dict) -> list[str]:
    bounds = recipe.tables.get("gate", {})
    lines = ["| score | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in scores.items() if isinstance(v, float)]
    gate = ", ".join(f"{k} = {v}" for k, v in bounds.items()) or "none"
    return lines + ["", f"Gate: {gate}."]


def _licence_lines(dataset: str) -> list[str]:
    from dynamicid.hub import DEFAULTS

    lines = ["## Models and their licences", ""]
    lines += [f"- {part}: {source.reference} ({source.licence}) when used" for part, source in DEFAULTS.items()]
    try:
        with open(os.path.join(dataset, "dataset_card.md"), encoding="utf-8") as handle:
            card = handle.read()
        lines += [
            "",
            "The data was made with:",
            "",
            card.split("## Models and their licences", 1)[1].split("\n## ", 1)[0].strip(),
        ]
    except (OSError, IndexError):
        pass
    return lines
