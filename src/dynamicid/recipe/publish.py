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
from dynamicid.generation.published import RUN_RECORD
from dynamicid.recipe.recipe import HUB_PREFIX, Recipe
from dynamicid.recipe.stages import final_weights, folder_of, options_of

logger = logging.getLogger(__name__)

CARD = "README.md"


def run_publish(recipe: Recipe, state, fingerprint: str) -> dict:
    """Publishes the run's model, unless the same weights are published already (said plainly, not a failure)."""
    from dynamicid.recipe import target as targets

    to = recipe.tables["publish"]["to"]
    ours = targets.weights_digest(trained_weights(recipe))
    published = targets.current(recipe)
    if published and ours and published.record.get("weights_digest") == ours and _intact(published, state):
        logger.info("publish: nothing new to publish: version %d at %s has the same weights", published.version, to)
        return {"version": published.version, "to": to, "unchanged": True, "record_digest": published.digest}
    staging = os.path.join(recipe.output, "publish", "incoming")
    shutil.rmtree(staging, ignore_errors=True)
    _save_pipeline(recipe, staging)
    scores = state.get("gate").get("scores") or {}
    if targets.is_hub(to):
        return _publish_to_hub(recipe, staging, fingerprint, ours, scores)
    with targets.target_lock(to):
        published = targets.current(recipe)  # again, under the lock: another run may have published meanwhile
        version = (published.version if published else 0) + 1
        record = _write_record(recipe, staging, version, fingerprint, ours, scores)
        folder = targets.install(staging, to, version)
    logger.info("publish: version %d -> %s", version, folder)
    return {"version": version, "to": to, "folder": folder, "record_digest": record}


def _intact(published, state) -> bool:
    """The published folder is as the last publish left it (a Hub repo is taken as it is)."""
    from dynamicid.filestamps import output_stamp

    stamp = state.get("publish").get("output_stamp")
    return published.folder is None or not stamp or output_stamp(published.folder) == stamp


def _publish_to_hub(recipe: Recipe, staging: str, fingerprint: str, ours: str | None, scores: dict) -> dict:
    from dynamicid.recipe import target as targets

    to = recipe.tables["publish"]["to"]
    published = targets.current(recipe)
    version = (published.version if published else 0) + 1
    record = _write_record(recipe, staging, version, fingerprint, ours, scores)
    _push(staging, to[len(HUB_PREFIX) :], bool(recipe.tables["publish"].get("private", False)))
    shutil.rmtree(staging)
    logger.info("publish: version %d -> %s", version, to)
    return {"version": version, "to": to, "record_digest": record}


def _write_record(recipe: Recipe, staging: str, version, fingerprint, weights, scores) -> str:
    """Writes the record and the model card into the staged model; returns the record's digest."""
    from dynamicid.filestamps import file_sha256

    record = {
        "version": version,
        "fingerprint": fingerprint,
        "weights_digest": weights,
        "published": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "recipe": os.path.abspath(recipe.path),
        "scores": scores,
    }
    with open(os.path.join(staging, CARD), "w", encoding="utf-8") as handle:
        handle.write(model_card(recipe, record))
    path = os.path.join(staging, RUN_RECORD)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
    return file_sha256(path)


def trained_weights(recipe: Recipe) -> str | None:
    """The weights this run publishes: its training's, else those given to eval."""
    return final_weights(recipe) or options_of(recipe, "eval").get("weights")


def _save_pipeline(recipe: Recipe, folder: str) -> None:
    from dynamicid.generation import DynamicIDPipeline

    values = options_of(recipe, "eval")
    weights = trained_weights(recipe)
    pipe = DynamicIDPipeline.from_pretrained(values.get("base_model"), weights, values.get("clip_image_encoder"))
    pipe.save_pretrained(folder)


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
        *_data_lines(recipe, dataset),
        "",
        "## Training",
        "",
        *_training_lines(recipe),
        "",
        "## Evaluation and the gate",
        "",
        *_score_lines(recipe, record["scores"]),
        "",
        *_licence_lines(recipe, dataset),
        "",
        *RESPONSIBLE_USE,
    ]
    return "\n".join(lines) + "\n"


RESPONSIBLE_USE = [
    "## Responsible use",
    "",
    "This model makes realistic images of real people from one photo each. With the dynamicid toolkit:",
    "- every image `generate` and `serve` make carries an invisible watermark (its payload names this model's "
    "version and the request) and the IPTC digital source type `trainedAlgorithmicMedia` in its XMP "
    "metadata, unless the operator turns the watermark off (`--no-watermark`, recorded in each sidecar);",
    "- with `--c2pa-cert` and `--c2pa-key`, each image also carries signed C2PA content credentials with the "
    "operator's certificate: created by dynamicid, this model's version, the watermark as a soft binding, and "
    "no person's name or photo;",
    "- `dynamicid verify IMAGE` (or `serve`'s `/verify`) reads the mark from the pixels, so a copy without its "
    "metadata is still recognised, and checks the C2PA manifest (valid, invalid or none);",
    "- `--consent-registry` with `--require-consent` generates only people who agreed, and `--deny` refuses "
    "listed people in every mode.",
    "",
    "It does not stop anyone who runs the weights without the toolkit, or without these options; the "
    "watermark is measured against JPEG, resizing, a crop and a screenshot round trip, not rotations, "
    "heavier crops, blurs or regeneration by another model. Stripping a file's metadata removes its credentials.",
]


def _data_lines(recipe: Recipe, dataset: str) -> list[str]:
    try:
        with open(os.path.join(dataset, "summary.json"), encoding="utf-8") as handle:
            summary = json.load(handle)
    except (OSError, ValueError):
        return ["(prep's summary is not available)"]
    by_split = summary.get("kept_faces_by_split") or {}
    splits = ", ".join(f"{k} {v}" for k, v in by_split.items())
    scored = options_of(recipe, "eval").get("split", "test") if recipe.has("eval") else None
    if scored == "train":
        held_out = "eval scored the training split: its people were seen in training"
    elif scored and by_split.get(scored):
        held_out = f"identity-disjoint: eval scored the {scored} split, whose people training never saw"
    else:
        held_out = "no held-out people were scored"
    return [
        f"- files read: {summary.get('files')}; faces kept: {summary.get('kept_faces')}; "
        f"people: {summary.get('identities')}",
        f"- kept faces per split: {splits or 'none'} ({held_out})",
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


def _licence_lines(recipe: Recipe, dataset: str) -> list[str]:
    """The models this run used, each with its licence where it is a known default; the face models from the
    dataset card."""
    lines = ["## Models and their licences", ""]
    values = options_of(recipe, "eval") if recipe.has("eval") else {}
    lines.append(f"- base_model: {_licence_of('base_model', values.get('base_model') or recipe.run.base_model)}")
    encoder = values.get("clip_image_encoder") or recipe.run.clip_image_encoder
    lines.append(f"- clip_image_encoder: {_licence_of('clip_image_encoder', encoder)}")
    if final_weights(recipe):
        lines.append("- weights: trained by this run (the face encoder, SAA, IMR and the KeyPointEncoder)")
    else:
        lines.append(f"- weights: {_licence_of('weights', values.get('weights'))}")
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


def _licence_of(part: str, reference: str | None) -> str:
    from dynamicid.hub import DEFAULTS

    default = DEFAULTS[part]
    if reference in (None, default.reference, default.repo):
        return f"{default.reference} ({default.licence})"
    if os.path.isdir(reference):
        return f"the local folder {reference} (its licence is its makers': see its own card)"
    return f"{reference} (see the repo's model card for its licence)"
