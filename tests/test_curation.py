"""prep's curation (issue 26 §2): near copies, strangers in labelled folders, clusters of unlabelled photos,
and the pieces they are made of."""

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from dynamicid.faces.face_hash import face_hash, hash_distance
from dynamicid.prep import PrepConfig
from dynamicid.prep.identities import chinese_whispers, distance_to_identity, pairwise_precision_recall
from dynamicid.prep.runner import run_prep
from dynamicid.prep.verify import check_outputs


def prep(spark, input_dir, output_dir, **options):
    return run_prep(PrepConfig(input=str(input_dir), output=str(output_dir), progress=False, **options), spark=spark)


def _upright(path: Path) -> Image.Image:
    return ImageOps.exif_transpose(Image.open(path)).convert("RGB")


def _jpeg(image: Image.Image, target: Path, quality: int = 92) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    target.write_bytes(buffer.getvalue())


def _cropped(image: Image.Image, share: float) -> Image.Image:
    dx, dy = int(image.width * share), int(image.height * share)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


@pytest.fixture(scope="module")
def labelled_run(spark, shared_faces, tmp_path_factory):
    """../shared/faces by person, with biden/2.jpg moved into obama's folder (a stranger), and four near
    copies: re-encoded, halved, cropped, and one re-encoded in another person's folder (tom/, after
    rose_leslie/ by path, so hers is the one kept)."""
    root = tmp_path_factory.mktemp("labelled")
    source = root / "in"
    shutil.copytree(shared_faces / "identities", source)
    shutil.move(source / "biden" / "2.jpg", source / "obama" / "stranger.jpg")
    faces = shared_faces / "identities"
    _jpeg(_upright(faces / "obama" / "2.jpg"), source / "obama" / "2_q50.jpg", quality=50)
    half = _upright(faces / "kit_harington" / "1.jpeg")
    _jpeg(
        half.resize((half.width // 2, half.height // 2), Image.Resampling.LANCZOS),
        source / "kit_harington" / "1_half.jpg",
    )
    _jpeg(_cropped(_upright(faces / "alex_lacamoire" / "1.jpg"), 0.06), source / "alex_lacamoire" / "1_crop.jpg")
    _jpeg(_upright(faces / "rose_leslie" / "1.jpg"), source / "tom" / "rose.jpg", quality=60)
    return prep(spark, source, root / "out"), root / "out"


def test_near_copies_are_rejected_naming_the_kept_photo_and_other_photos_of_a_person_are_not(labelled_run):
    manifest = labelled_run[0].manifest().set_index("relative_path")
    copies = {
        "obama/2_q50.jpg": "obama/2.jpg",
        "kit_harington/1_half.jpg": "kit_harington/1.jpeg",
        "alex_lacamoire/1_crop.jpg": "alex_lacamoire/1.jpg",
        "tom/rose.jpg": "rose_leslie/1.jpg",
        "obama/5_240p.jpg": "obama/1.jpg",  # shipped in ../shared/faces: obama/1.jpg at 240 lines
    }
    for copy, kept in copies.items():
        row = manifest.loc[copy]
        assert (row.status, row.reason, row.duplicate_of) == ("rejected", "duplicate", kept), copy
        assert row.message.startswith(f"a near copy of {kept}"), row.message
    assert "under another identity (rose_leslie)" in manifest.loc["tom/rose.jpg", "message"]
    assert "another identity" not in manifest.loc["obama/2_q50.jpg", "message"]
    others = manifest.drop(index=list(copies))
    assert (others.status == "ok").all(), others.loc[others.status != "ok", ["reason", "message"]]
    assert labelled_run[0].summary["rejected"] == {"duplicate": len(copies)}


def test_a_stranger_in_a_folder_is_flagged_and_training_leaves_it_out_unless_asked(labelled_run):
    from dynamicid.training.data import load_faces

    result, out = labelled_run
    manifest = result.manifest().set_index("relative_path")
    kept = manifest[manifest.status == "ok"]
    assert list(kept.index[kept.identity_outlier]) == ["obama/stranger.jpg"]
    obama = kept[kept.identity == "obama"].identity_distance
    assert obama["obama/stranger.jpg"] > 2 * obama.drop("obama/stranger.jpg").max()
    assert np.isnan(manifest.loc["biden/1.jpg", "identity_distance"])  # alone in its folder: nothing to compare
    assert result.summary["identity_outliers"] == 1
    stranger = manifest.loc["obama/stranger.jpg", "name"]
    assert stranger not in {face.name for face in load_faces(str(out))}
    assert stranger in {face.name for face in load_faces(str(out), keep_outliers=True)}
    assert check_outputs(str(out)).ok


def test_the_dataset_card_shows_the_counts_the_strangers_and_the_copies_and_renders_in_chromium(labelled_run):
    result, out = labelled_run
    card = (out / "dataset_card.md").read_text()
    for line in (
        "| files read | 20 |",
        "| faces kept | 15 |",
        "| people | 6 |",
        "| duplicates (exact and near copies) | 5 |",
    ):
        assert line in card, line
    assert "| obama/stranger.jpg | obama |" in card and "| tom/rose.jpg | rose_leslie/1.jpg |" in card
    assert "| landmarks | dlib-68 | dlib's 68-point predictor, trained on iBUG 300-W" in card
    charts = sorted((out / "dataset_card").glob("*.png"))
    assert len(charts) == 6 and all(np.asarray(Image.open(chart)).std() > 10 for chart in charts)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (make test installs it from Debian's packages)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto((out / "dataset_card.html").as_uri())
        loaded = page.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])")
        browser.close()
    assert len(loaded) == 6 + 1 and all(width > 0 for _, width in loaded), loaded  # the charts, the stranger's face
    assert any(src.startswith("images/obama/") for src, _ in loaded)


@pytest.mark.slow
def test_unlabelled_photos_are_clustered_into_their_people(spark, shared_faces, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for photo in (shared_faces / "identities").rglob("*.*"):
        shutil.copy(photo, flat / f"{photo.parent.name}__{photo.name}")
    out = tmp_path / "out"
    manifest = prep(spark, flat, out, layout="cluster").manifest()
    truth = manifest.relative_path.str.split("__").str[0]
    assert manifest.identity.str.fullmatch(r"person-\d{4}").all() and (manifest.identity_source == "cluster").all()
    codes = lambda column: column.astype("category").cat.codes.to_numpy()  # noqa: E731
    precision, recall = pairwise_precision_recall(codes(manifest.identity), codes(truth))
    assert precision >= 0.98 and recall >= 0.90, (precision, recall)
    # Each person's faces sit in their cluster's folder, copies included, and a rerun resumes every file.
    folders = {p.parent.name for p in (out / "images").rglob("*.jpg")}
    assert folders == set(manifest.identity)
    again = prep(spark, flat, out, layout="cluster").manifest()
    assert again.resumed.all() and list(again.identity) == list(manifest.identity)
    assert check_outputs(str(out)).ok


def test_chinese_whispers_splits_two_groups_joined_by_one_weak_edge():
    # Two cliques of four, and one edge between them: two clusters, not one chain.
    edges = [(a, b, 0.9) for group in (range(4), range(4, 8)) for a in group for b in group if a < b]
    edges.append((3, 4, 0.5))
    source = np.array([a for a, b, _ in edges] + [b for a, b, _ in edges])
    target = np.array([b for a, b, _ in edges] + [a for a, b, _ in edges])
    weight = np.array([w for *_, w in edges] * 2)
    labels = chinese_whispers(9, source, target, weight)  # node 8 has no edge: alone
    assert len(set(labels[:4])) == 1 and len(set(labels[4:8])) == 1 and labels[0] != labels[4]
    assert labels[8] not in set(labels[:8])
    assert pairwise_precision_recall(labels, np.array([0] * 4 + [1] * 4 + [2])) == (1.0, 1.0)


def test_the_cluster_graph_draws_its_edges_at_the_stricter_clustering_point():
    """Two faces at cosine 0.92 pass dlib's verification point (0.91) but not its clustering point (0.937):
    in the cluster layout they stay two people, as one such edge would merge two whole people."""
    from dynamicid.faces.identity_thresholds import thresholds_for
    from dynamicid.prep.identities import find_identities
    from dynamicid.prep.neighbours import FaceVectors

    angle = np.arccos(0.92)
    vectors = np.array([[1, 0, 0], [np.cos(angle), np.sin(angle), 0]], np.float32)
    faces = FaceVectors(
        ["a.jpg", "b.jpg"], np.zeros(2, np.int64), [None, None], vectors, np.array([0, 2**64 - 1], np.uint64)
    )
    points = thresholds_for("dlib-resnet")
    assert points.same_person < 0.92 < points.cluster_edge
    assert len(set(find_identities(faces, points, cluster=True).names)) == 2
    loose = thresholds_for("dlib-resnet", cluster_edge=points.same_person)
    assert len(set(find_identities(faces, loose, cluster=True).names)) == 1
    assert thresholds_for("custom", 0.5, 0.9).cluster_edge == 0.5  # an unmeasured embedder: the given point


def test_distances_leave_each_face_and_copies_out_of_its_identity_centre():
    vectors = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=np.float32)
    groups = np.array([0, 0, 0, 1])
    members = np.array([True, True, True, False])  # the last is a copy: not a member
    distance = distance_to_identity(vectors, groups, members)
    assert distance[0] == pytest.approx(1 - 1 / np.sqrt(2), abs=1e-6)  # the mean of (1,0) and (0,1)
    assert distance[2] == pytest.approx(1.0, abs=1e-6)  # the mean of the others is (1,0)
    assert np.isnan(distance[3])  # no member in its group


def test_the_inverted_index_finds_the_neighbours_the_exact_one_does(monkeypatch):
    from dynamicid.prep import neighbours

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((300, 64)).astype(np.float32)
    vectors = np.repeat(centres, 4, axis=0) + 0.3 * rng.standard_normal((1200, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    exact, _ = neighbours.nearest_neighbours(vectors, 3)
    monkeypatch.setattr(neighbours, "EXACT_UP_TO", 100)
    approximate, similarity = neighbours.nearest_neighbours(vectors, 3)
    assert (approximate != np.arange(1200)[:, None]).all()  # never a face itself
    assert (approximate[:, 0] == exact[:, 0]).mean() > 0.95
    assert (np.diff(similarity, axis=1) <= 1e-6).all()  # most similar first


def test_face_hashes_of_copies_are_close_and_of_other_photos_far(shared_faces):
    from dynamicid.faces import FaceAnalyzer

    analyzer = FaceAnalyzer()

    def hash_of(image: Image.Image) -> str:
        rgb = np.asarray(image)
        (analysis,) = analyzer.analyze_faces(rgb, analyzer.detect(rgb)[:1], embed=False, expressions=False)
        return face_hash(analysis.aligned)

    photo = _upright(shared_faces / "identities" / "obama" / "2.jpg")
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=40)
    original = hash_of(photo)
    assert hash_distance(original, hash_of(Image.open(buffer))) <= 8
    assert hash_distance(original, hash_of(photo.resize((photo.width // 2, photo.height // 2)))) <= 8
    assert hash_distance(original, hash_of(_upright(shared_faces / "identities" / "obama" / "3.jpg"))) > 16


def test_the_readme_url_list_example_runs(spark, shared_faces, tmp_path, monkeypatch):
    """The README's three lines, as written, on a list of ../shared/faces served on the loopback address,
    with a re-encoded copy and another person's photo planted under obama."""
    import shlex

    import pandas as pd
    from conftest import readme_block
    from photo_server import PhotoServer

    from dynamicid import cli
    from dynamicid.training.data import load_faces

    faces = shared_faces / "identities"
    copy = tmp_path / "obama_2_again.jpg"
    _jpeg(_upright(faces / "obama" / "2.jpg"), copy, quality=50)
    listed = {f"{p.parent.name}-{p.stem}": (str(p), p.parent.name) for p in sorted(faces.rglob("*.*"))}
    listed |= {"obama-copy": (str(copy), "obama"), "obama-stranger": (str(faces / "biden" / "2.jpg"), "obama")}
    del listed["biden-2"]  # only under obama's name
    monkeypatch.chdir(tmp_path)
    with PhotoServer({key: path for key, (path, _) in listed.items()}) as server:
        given = {"kit_harington-1": "a man with curly hair at a premiere"}  # one photo comes with a caption
        rows = [(f"{server.url}/file/{key}", person, given.get(key, "")) for key, (_, person) in listed.items()]
        pd.DataFrame(rows, columns=["url", "identity", "caption"]).to_csv("urls.csv", index=False)
        for line in readme_block("dynamicid collect urls.csv photos/").splitlines():
            program, *argv = shlex.split(line, comments=True)
            loopback = ["--allow-addresses", "127.0.0.1/32"] if argv[0] == "collect" else []  # the local server
            assert program == "dynamicid" and cli.main([*argv, "--no-progress", *loopback]) == 0, line
    manifest = pd.read_parquet("dataset/manifest.parquet")
    assert len(manifest) == len(listed) and (tmp_path / "dataset" / "dataset_card.html").is_file()
    copies = manifest[manifest.reason == "duplicate"].relative_path
    assert sorted(copies.str.split("-").str[1]) == ["5_240p", "copy"], copies  # collect names: <key>-<sha>.jpg
    (stranger,) = manifest.relative_path[manifest.identity_outlier]
    assert stranger.startswith("obama/obama-stranger-")
    kept = manifest[manifest.status == "ok"]
    assert (kept.groupby("identity").split.nunique() == 1).all()  # every person in one split
    captioned = kept[kept.relative_path.str.startswith("kit_harington/kit_harington-1-")]
    assert captioned.caption.tolist() == [given["kit_harington-1"]]  # the URL list's caption, not a measured one
    assert captioned.captioner_model.tolist() == ["given (the URL list's caption)"]
    assert (kept.captioner_model == "measured-v1").sum() == len(kept) - 1
    (name,) = captioned.name
    text = (tmp_path / "dataset" / "images" / "kit_harington" / f"{name}.txt").read_text()
    assert text.strip() == given["kit_harington-1"]
    trained_on = {face.name for face in load_faces("dataset")}
    assert trained_on == set(kept[(kept.split == "train") & ~kept.identity_outlier].name)
