"""People stay who they are (issue 36 §1): the identity table, and names and splits that hold when photos are
added or the split shares change."""

import json
import shutil

import numpy as np
import pandas as pd

from dynamicid.prep import PrepConfig
from dynamicid.prep.people import PEOPLE_FILE, SUGGESTIONS_FILE, EarlierRun, PeopleTable, name_clusters, read_people
from dynamicid.prep.runner import run_prep
from dynamicid.prep.verify import check_outputs


def prep(spark, input_dir, output_dir, **options):
    return run_prep(PrepConfig(input=str(input_dir), output=str(output_dir), progress=False, **options), spark=spark)


def _flat_copy(shared_faces, target, keep=lambda person, photo: True):
    target.mkdir(exist_ok=True)
    for photo in sorted((shared_faces / "identities").rglob("*.*")):
        if keep(photo.parent.name, photo.name):
            shutil.copy(photo, target / f"{photo.parent.name}__{photo.name}")


def _people_of(manifest: pd.DataFrame) -> dict[str, str]:
    """photo -> person, for the kept faces."""
    ok = manifest[manifest.status == "ok"]
    return dict(zip(ok.relative_path, ok.identity))


def test_a_rerun_with_more_photos_keeps_every_name_and_split_and_numbers_new_people_on(spark, shared_faces, tmp_path):
    flat, out = tmp_path / "flat", tmp_path / "out"
    # First: four of the six people, some photos held back.
    first_people = {"obama", "kit_harington", "alex_lacamoire", "biden"}
    _flat_copy(shared_faces, flat, lambda person, photo: person in first_people and not photo.startswith("2."))
    first = prep(spark, flat, out, layout="cluster", split="0.5,0,0.5")
    before = first.manifest()
    names, splits = _people_of(before), dict(zip(before.identity, before.split))
    table = read_people(str(out))
    assert set(table.people) == set(names.values()) and table.shares == "0.5,0,0.5"
    assert all(p.source == "cluster" and p.faces > 0 and len(p.centre) == 128 for p in table.people.values())
    numbers_before = {int(name.split("-")[1]) for name in table.people}

    # Then: everyone, every photo, and other shares.
    _flat_copy(shared_faces, flat)
    again = prep(spark, flat, out, layout="cluster", split="0.9,0.05,0.05")
    after = again.manifest()
    now = _people_of(after)
    assert {photo: now[photo] for photo in names} == names, "a face changed person"
    assert {p: s for p, s in zip(after.identity, after.split) if p in splits} == splits, "a person changed split"
    new = set(now.values()) - set(names.values())
    assert new and min(int(name.split("-")[1]) for name in new) > max(numbers_before)
    # The photos held back joined their people.
    for held_back, seen in [("obama__2.jpg", "obama__1.jpg"), ("kit_harington__2.jpeg", "kit_harington__1.jpeg")]:
        assert now[held_back] == names[seen]
    assert again.summary["split_shares_changed"] is True and again.summary["new_people"] == len(new)
    assert read_people(str(out)).shares == "0.9,0.05,0.05"
    # At dlib's strict clustering point (0.937) two photos of one person can start as two people; a photo held
    # back then links them. They are not merged silently: a suggestion, counted. Every
    # suggestion pairs two clusters of one real person.
    suggested = json.loads((out / SUGGESTIONS_FILE).read_text())["suggested_merges"]
    real = {person: photo.split("__")[0] for photo, person in names.items()}
    assert suggested and all(real[pair["a"]] == real[pair["b"]] for pair in suggested)
    assert again.summary["suggested_merges"] == len(suggested)
    assert check_outputs(str(out)).ok


def test_labelled_people_keep_their_split_when_the_shares_change(spark, shared_faces, tmp_path):
    source, out = tmp_path / "in", tmp_path / "out"
    shutil.copytree(shared_faces / "identities", source)
    first = prep(spark, source, out, split="0.5,0,0.5").manifest()
    splits = dict(zip(first.identity, first.split))
    again = prep(spark, source, out, split="0,0,1")
    assert dict(zip(again.manifest().identity, again.manifest().split)) == splits
    table = pd.read_parquet(out / PEOPLE_FILE)
    assert dict(zip(table.identity, table.split)) == splits and set(table.source) == {"folder"}
    assert again.summary["split_shares_changed"] is True and again.summary["new_people"] == 0


def _earlier(placed: dict) -> EarlierRun:
    return EarlierRun(PeopleTable(), {(sha, 0): name for sha, name in placed.items()}, {})


def test_one_cluster_over_two_known_people_is_a_suggestion_not_a_merge():
    keys = [(f"file{i}", 0) for i in range(7)]
    label = np.array([0, 0, 0, 0, 1, 1, 2])  # cluster 0 holds two of ann's faces and one of bob's
    placed = {"file0": "person-0001", "file1": "person-0001", "file2": "person-0007", "file4": "person-0003"}
    named = name_clusters(keys, label, _earlier(placed))
    assert named.names[:3] == ["person-0001", "person-0001", "person-0007"]  # nobody moved
    assert named.names[3] == "person-0001"  # the new face joins the person most of its cluster is
    assert named.names[4:6] == ["person-0003"] * 2
    assert named.names[6] == "person-0008"  # past every number used, even one no longer in the table
    assert named.suggestions == [{"a": "person-0001", "b": "person-0007", "links": 1}]
    assert named.next_number == 9


def test_a_photo_under_two_people_stays_with_the_one_it_matches_and_path_order_never_decides(
    spark, shared_faces, tmp_path
):
    source, out = tmp_path / "in", tmp_path / "out"
    shutil.copytree(shared_faces / "identities", source)
    # Obama's photo planted in Biden's folder, whose path comes first; Lin's only photo (nobody to match it
    # against) planted in Rose's folder, whose other photos it does not match.
    shutil.copy(source / "obama" / "1.jpg", source / "biden" / "0_obama.jpg")
    shutil.copy(source / "lin_manuel_miranda" / "1.png", source / "rose_leslie" / "0_lin.png")
    manifest = prep(spark, source, out).manifest().set_index("relative_path")
    row = lambda path: tuple(manifest.loc[path, ["status", "reason"]])  # noqa: E731
    assert row("obama/1.jpg") == ("ok", None)
    assert row("biden/0_obama.jpg") == ("rejected", "duplicate")
    assert manifest.loc["biden/0_obama.jpg", "duplicate_of"] == "obama/1.jpg"
    assert not manifest.loc["obama/1.jpg", "identity_outlier"]
    for held in ("lin_manuel_miranda/1.png", "rose_leslie/0_lin.png"):
        assert row(held) == ("rejected", "held_for_review"), held
        assert "matches none of them: held out for review" in manifest.loc[held, "message"]
    assert all(row(f"biden/{n}.jpg") == ("ok", None) for n in (1, 2))
    assert check_outputs(str(out)).ok
