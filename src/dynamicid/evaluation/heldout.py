"""Evaluation on a prep dataset's held-out identities: for each identity of the `val` or `test` split (which
training never reads), generate images from one of its photos with the weights under test, then score them
against the identity's other photos (or the same one when it has only one).

Generated images and their sidecars go to OUTPUT/generated, one STEM per (prompt, identities); a rerun keeps
the ones already there, so an interrupted eval resumes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace

from dynamicid.atomic import write_atomic
from dynamicid.errors import InputError
from dynamicid.evaluation.inputs import EvalItem, read_generated
from dynamicid.filestamps import folder_stamp

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "a photo of a person"
GENERATED_DIR = "generated"


class HeldOutError(InputError):
    pass


@dataclass(frozen=True)
class HeldOutIdentity:
    name: str
    photo: str  # what generation starts from
    references: tuple[str, ...]  # what the generated face is scored against


@dataclass(frozen=True)
class EvalPrompt:
    text: str
    face_prompt: str | None = None


def is_dataset(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "manifest.parquet"))


def held_out_identities(dataset: str, split: str, limit: int) -> list[HeldOutIdentity]:
    """The identities of `split` in prep's manifest, in name order, at most `limit`, each with its kept
    faces' images (the first by name starts generation)."""
    import pandas as pd

    from dynamicid.prep.outputs import face_paths

    manifest = pd.read_parquet(os.path.join(dataset, "manifest.parquet"))
    if "split" not in manifest:
        raise HeldOutError(f"{dataset}/manifest.parquet has no split column: rerun prep (it adds one) with --split")
    kept = manifest[(manifest.status == "ok") & (manifest.split == split) & manifest.identity.notna()]
    if kept.empty:
        raise HeldOutError(
            f"{dataset} has no identities in the {split!r} split; prep it with --split giving that split a share "
            f"(e.g. --split 0.8,0.1,0.1), or eval another --split"
        )
    identities = []
    for identity, faces in sorted(kept.groupby("identity"), key=lambda pair: pair[0])[:limit]:
        images = [face_paths(dataset, identity, name)["jpg"] for name in sorted(faces.name)]
        identities.append(HeldOutIdentity(identity, images[0], tuple(images[1:] or images)))
    return identities


def read_prompts(path: str | None) -> list[EvalPrompt]:
    """One prompt a line, optionally `prompt | face prompt`; blank lines and #-comments skipped."""
    from dynamicid.faces.face_prompt import normalise

    if path is None:
        return [EvalPrompt(DEFAULT_PROMPT)]
    from dynamicid.textfiles import read_utf8

    lines = [line.strip() for line in read_utf8(path, "prompts file", HeldOutError).splitlines()]
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line or line.startswith("#"):
            continue
        text, _, face = (part.strip() for part in line.partition("|"))
        if not text:
            raise HeldOutError(f"{path}:{number}: the line has a face prompt but no prompt before '|'")
        try:
            prompts.append(EvalPrompt(text, normalise(face) if face else None))
        except InputError as err:
            raise HeldOutError(f"{path}:{number}: {err}") from None
    if not prompts:
        raise HeldOutError(f"prompts file {path} has no prompt (one a line, optionally 'prompt | face prompt')")
    return prompts


def image_groups(identities: list[HeldOutIdentity], two_person: bool) -> list[tuple[HeldOutIdentity, ...]]:
    """Each identity alone and, for leakage, consecutive pairs (a, b), (c, d), ... when asked."""
    groups: list[tuple[HeldOutIdentity, ...]] = [(identity,) for identity in identities]
    if two_person:
        groups += [tuple(identities[i : i + 2]) for i in range(0, len(identities) - 1, 2)]
    return groups


def _generation_settings(config) -> dict:
    """What the generated images depend on; a change empties OUTPUT/generated (weights by their files' sizes
    and times, so that retrained weights in the same folder count as new)."""
    return {
        "weights": config.weights,
        "weights_files": folder_stamp(config.weights),
        "base_model": config.base_model,
        "base_model_files": folder_stamp(config.base_model),  # a published model, replaced in place
        "clip_image_encoder": config.clip_image_encoder,
        "steps": config.steps,
        "height": config.height,
        "width": config.width,
        "seed": config.seed,
    }


def _fresh_folder(folder: str, settings: dict) -> None:
    """OUTPUT/generated holds images made with `settings` only: with other settings recorded, it is emptied."""
    import json
    import shutil

    record = os.path.join(folder, "settings.json")
    try:
        with open(record, encoding="utf-8") as handle:
            same = json.load(handle) == json.loads(json.dumps(settings))
    except (OSError, ValueError):
        same = False
    if not same:
        shutil.rmtree(folder, ignore_errors=True)
        write_atomic(record, json.dumps(settings, indent=2).encode("utf-8"))


def _stem(prompt_index: int, prompt: EvalPrompt, group: tuple[HeldOutIdentity, ...]) -> str:
    import hashlib

    key = "\n".join([prompt.text, prompt.face_prompt or "", *(f"{i.name}\t{i.photo}" for i in group)])
    return f"p{prompt_index:02d}-{len(group)}p-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def generate_held_out(config, pipeline_factory) -> list[EvalItem]:
    """Generates what OUTPUT/generated lacks and returns every image as an item to score, each person scored
    against the identity's references. `pipeline_factory()` loads the pipeline, only when something is left."""
    from dynamicid.generation.request import Person

    identities = held_out_identities(config.input, config.split, config.max_identities)
    prompts = read_prompts(config.prompts)
    folder = os.path.join(config.output, GENERATED_DIR)
    _fresh_folder(folder, _generation_settings(config))
    planned = [
        (prompt, group, _stem(index, prompt, group))
        for index, prompt in enumerate(prompts)
        for group in image_groups(identities, config.two_person)
    ]
    todo = [entry for entry in planned if not os.path.exists(os.path.join(folder, f"{entry[2]}_0.json"))]
    logger.info(
        "eval: %d held-out identities of split %s, %d prompts: %d images (%d already made)",
        len(identities),
        config.split,
        len(prompts),
        len(planned),
        len(planned) - len(todo),
    )
    pipe = pipeline_factory() if todo else None
    for prompt, group, stem in _progress(todo, config.progress):
        persons = [Person(i.photo, prompt.face_prompt, None, None, i.name) for i in group]
        _generate(pipe, config, prompt.text, persons, folder, stem)
    return [_scored_against(read_generated_stem(folder, stem), group) for _, group, stem in planned]


def read_generated_stem(folder: str, stem: str) -> EvalItem:
    return read_generated(os.path.join(folder, f"{stem}_0.png"))


def _scored_against(item: EvalItem, group: tuple[HeldOutIdentity, ...]) -> EvalItem:
    """FaceSim against the identity's other photos; Sim(Ref) against the photo generation was given; Sim(GT)
    and copy-paste when the identity has other photos."""
    item.persons = [
        replace(
            person,
            references=identity.references,
            used=person.references,
            ground_truth=identity.references if identity.references != (identity.photo,) else (),
        )
        for person, identity in zip(item.persons, group)
    ]
    return item


def _progress(items: list, show: bool):
    if not show or not items:
        return items
    from tqdm import tqdm

    return tqdm(items, unit="img", desc="eval: generating")


def _generate(pipe, config, prompt: str, persons: list, folder: str, stem: str) -> None:
    from dynamicid.generation.outputs import save_generation
    from dynamicid.generation.request import default_size

    height, width = default_size(len(persons), config.height, config.width)
    result = pipe(prompt, persons, num_inference_steps=config.steps, height=height, width=width, seed=config.seed)
    save_generation(result, persons, folder, stem, extra={"weights": config.weights}, overwrite=True)
