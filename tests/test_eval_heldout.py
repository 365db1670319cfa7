"""eval on a prep dataset: the held-out identities' images are generated with the weights under test, then
scored against the identity's other photos; a rerun generates nothing."""

import os
import shutil

import pandas as pd
import pytest

from dynamicid.errors import InputError
from dynamicid.evaluation import heldout
from dynamicid.evaluation.config import EvalConfig
from dynamicid.evaluation.runner import run_eval
from dynamicid.prep.outputs import face_paths
from dynamicid.responsible.provenance import COMPOSITE, GENERATED, read_provenance

PEOPLE = {  # identity -> (split, photos)
    "alex_lacamoire": ("train", ["1.jpg", "2.jpg"]),
    "biden": ("test", ["1.jpg", "2.jpg"]),
    "kit_harington": ("test", ["1.jpg", "2.jpg"]),
    "rose_leslie": ("test", ["1.jpg"]),
    "obama": ("val", ["1.jpg"]),
}


def _dataset(shared_faces, folder) -> str:
    """A dataset as prep leaves it, as far as eval reads it: the manifest's kept faces with their split,
    and each face's image (here the real photo itself)."""
    rows = []
    for identity, (split, photos) in PEOPLE.items():
        source = shared_faces / "identities" / identity
        available = sorted(p.name for p in source.iterdir())
        for index, photo in enumerate(photos):
            name = f"{identity}-{index}"
            target = face_paths(str(folder), identity, name)["jpg"]
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy(source / (photo if photo in available else available[0]), target)
            rows.append({"identity": identity, "name": name, "status": "ok", "split": split})
    rows.append({"identity": "biden", "name": "biden-bad", "status": "rejected", "split": "test"})
    pd.DataFrame(rows).to_parquet(folder / "manifest.parquet")
    return str(folder)


def _config(dataset, output, tiny_models, **options) -> EvalConfig:
    settings = dict(
        weights=tiny_models["dynamicid"],
        base_model=tiny_models["sd15"],
        clip_image_encoder=tiny_models["clip-image"],
        steps=2,
        height=64,
        progress=False,
    )
    return EvalConfig(input=dataset, output=str(output), **(settings | options))


def test_held_out_identities_are_the_splits_kept_faces_by_name(shared_faces, tmp_path):
    dataset = _dataset(shared_faces, tmp_path / "data")
    found = heldout.held_out_identities(dataset, "test", limit=50)
    assert [i.name for i in found] == ["biden", "kit_harington", "rose_leslie"]
    biden = found[0]
    assert biden.photo.endswith("biden-0.jpg") and [os.path.basename(r) for r in biden.references] == ["biden-1.jpg"]
    assert found[2].references == (found[2].photo,)  # one photo: scored against itself
    assert [i.name for i in heldout.held_out_identities(dataset, "test", limit=2)] == ["biden", "kit_harington"]
    groups = heldout.image_groups(found, two_person=True)
    assert [[i.name for i in g] for g in groups][-1] == ["biden", "kit_harington"] and len(groups) == 4


def test_eval_of_a_dataset_generates_scores_and_resumes(shared_faces, tmp_path, tiny_models):
    dataset = _dataset(shared_faces, tmp_path / "data")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# held-out prompts\na photo of a person\n\na portrait | in an angry expression\n")
    config = _config(dataset, tmp_path / "eval", tiny_models, prompts=str(prompts))
    result = run_eval(config)
    generated = tmp_path / "eval" / heldout.GENERATED_DIR
    images = sorted(p for p in os.listdir(generated) if p.endswith(".png"))
    assert len(images) == 2 * 4  # 2 prompts x (3 identities alone + 1 pair)
    assert result.summary["split"] == "test" and result.summary["images"] == 8
    assert result.summary["multi_person_images"] == 2 and result.summary["persons"] == 2 * 5
    assert set(result.scores.person) == {"biden", "kit_harington", "rose_leslie"}
    angry = result.scores[result.scores.requested_face_prompt.fillna("").str.contains("anger")]
    assert len(angry) == 5  # the face prompt, in the method's words, reached every person of prompt 2
    # The generated images say so, and so do the report's annotated thumbnails drawn over them.
    assert read_provenance(str(generated / images[0]))["source_type"] == GENERATED
    assert read_provenance(str(tmp_path / "eval" / "thumbs" / "00000.jpg"))["source_type"] == COMPOSITE
    stamps = {name: os.stat(generated / name).st_mtime_ns for name in images}
    again = run_eval(config)  # nothing left to generate: the same images are scored again
    assert {name: os.stat(generated / name).st_mtime_ns for name in images} == stamps
    assert again.summary["face_sim_mean"] == pytest.approx(result.summary["face_sim_mean"], abs=1e-6)
    run_eval(_config(dataset, tmp_path / "eval", tiny_models, prompts=str(prompts), steps=3, two_person=False))
    remade = sorted(p for p in os.listdir(generated) if p.endswith(".png"))
    assert len(remade) == 2 * 3 and all(os.stat(generated / n).st_mtime_ns != stamps.get(n) for n in remade)


def test_held_out_problems_are_named(shared_faces, tmp_path, tiny_models):
    dataset = _dataset(shared_faces, tmp_path / "data")
    _all_in_train(dataset)
    with pytest.raises(InputError, match="no identities in the 'test' split.*--split"):
        run_eval(_config(dataset, tmp_path / "e", tiny_models))
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo | in a furious mood\n")
    with pytest.raises(InputError, match=r"bad.txt:1: .*is not a face prompt"):
        heldout.read_prompts(str(bad))
    bad.write_text("| in a happy expression\n")
    with pytest.raises(InputError, match="no prompt before"):
        heldout.read_prompts(str(bad))


def _all_in_train(dataset):
    manifest = pd.read_parquet(os.path.join(dataset, "manifest.parquet"))
    manifest["split"] = "train"
    manifest.to_parquet(os.path.join(dataset, "manifest.parquet"))
