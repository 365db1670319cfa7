"""`prep` end to end on one local Spark session: sample, real photos, policies, outputs and resume."""

import itertools
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dynamicid.faces import landmark_image
from dynamicid.prep import PrepConfig, outputs, run_prep
from dynamicid.prep.schema import MANIFEST_COLUMNS, points_array


def prep(spark, input_dir, output_dir, **options):
    return run_prep(PrepConfig(input=str(input_dir), output=str(output_dir), progress=False, **options), spark=spark)


@pytest.fixture(scope="module")
def sample_run(spark, sample, tmp_path_factory):
    folder, expected = sample
    result = prep(spark, folder, tmp_path_factory.mktemp("sample_out"))
    return result, expected


def test_every_sample_file_gets_its_documented_status(sample_run):
    result, expected = sample_run
    manifest = result.manifest()
    assert list(manifest.columns) == MANIFEST_COLUMNS
    recorded = {row.relative_path: (row.status, row.reason) for row in manifest.itertuples()}
    assert recorded == expected
    assert manifest.message[manifest.status != "ok"].notna().all()


def test_kept_faces_have_complete_outputs(sample_run):
    result, _ = sample_run
    manifest = result.manifest()
    output = os.path.dirname(result.manifest_path)
    for row in manifest[manifest.status == "ok"].itertuples():
        paths = outputs.face_paths(output, row.identity, row.name)
        image = Image.open(paths["jpg"])
        assert image.size == (512, 512) and image.mode == "RGB"
        sheet = np.asarray(Image.open(paths["png"]))
        drawing, map96 = landmark_image.split_landmark_png(sheet)
        np.testing.assert_array_equal(map96, landmark_image.render_map96(points_array(row.aligned_landmarks)))
        assert Image.open(paths["png"]).info["dynamicid-landmarks"].startswith("convention=ibug68")
        payload = torch.load(paths["pt"], weights_only=True)
        assert payload["embedding"].shape == (128,) and payload["dim"] == 128
        assert payload["model"] == row.embedding_model
        text = open(paths["txt"]).read().strip()
        assert text == row.caption and row.face_prompt in text
        assert np.asarray(row.affine.tolist()).shape == (2, 3)
        stages = {
            stage: getattr(row, f"ms_{stage}") for stage in ("read", "decode", "detect", "landmarks", "embed", "write")
        }
        assert all(ms > 0 for ms in stages.values()), stages  # every stage ran and was timed
        assert sum(stages.values()) <= row.ms_total, (stages, row.ms_total)  # the total covers its stages


def test_exif_rotated_photo_is_found_upright_and_matches_the_original(sample_run):
    manifest = sample_run[0].manifest().set_index("relative_path")
    rotated, original = manifest.loc["astronaut/exif_rotated.jpg"], manifest.loc["astronaut/original.png"]
    assert rotated.exif_rotated and rotated.faces_detected == 1
    # Its aligned face hashes as the other encodings' do: upright, and rejected as their near copy.
    assert (rotated.status, rotated.reason, rotated.duplicate_of) == ("rejected", "duplicate", "astronaut/cmyk.jpg")
    np.testing.assert_allclose(rotated.bbox, original.bbox, atol=6)
    assert abs(rotated.roll) < 10


def test_summary_and_contact_sheet(sample_run):
    result, expected = sample_run
    summary = result.summary
    assert summary["files"] == len(expected)
    assert summary["kept_faces"] == sum(status == "ok" for status, _ in expected.values())
    assert summary["rejected"]["no_face"] == 3
    sheet = Image.open(result.contact_sheet)
    assert sheet.width >= 1000 and np.asarray(sheet).std() > 20  # faces were drawn, not a blank canvas


def test_the_report_streams_over_the_manifest_in_batches(sample_run):
    """The summary counted a few rows at a time (files spanning batch boundaries) equals one pass over
    the whole manifest, and the manifest stays sorted with one row per file."""
    from dynamicid.prep import report

    result, _ = sample_run
    manifest = result.manifest()
    assert list(manifest.relative_path) == sorted(manifest.relative_path)
    whole = report.summarize(manifest[report.REPORT_COLUMNS], 1.0, 1.0)
    for rows in (1, 2, 3, 7):
        tally = report.tally_manifest(result.manifest_path, sheet_limit=48, batch_rows=rows)
        assert tally.summary(1.0, 1.0) == whole, rows
        assert len(tally.sheet_rows()) == whole["kept_faces"]  # fewer kept faces than the sheet holds
    assert whole["files"] == manifest.relative_path.nunique() and whole["kept_faces"] == (manifest.status == "ok").sum()
    few = report.tally_manifest(result.manifest_path, sheet_limit=1, batch_rows=2)
    assert len(few.sheet_rows()) == 1  # the sheet's candidates stay bounded by its size


def test_manifest_reads_in_spark(sample_run, spark):
    frame = spark.read.parquet(sample_run[0].manifest_path)
    assert frame.count() == len(sample_run[1])
    assert frame.schema["landmarks"].dataType.simpleString() == "array<array<double>>"


def test_rerun_resumes_without_duplicates_and_redoes_only_what_is_missing(spark, sample, tmp_path):
    folder, expected = sample
    out = tmp_path / "out"
    first = prep(spark, folder, out).manifest()
    again = prep(spark, folder, out)
    assert again.summary["resumed"] == len(expected)
    second = again.manifest()
    assert len(second) == len(first) and second.resumed.all()
    pd.testing.assert_frame_equal(first.drop(columns="resumed"), second.drop(columns="resumed"))
    # Lose one output file: only that image is processed again.
    kept = first[first.status == "ok"].iloc[0]
    os.remove(outputs.face_paths(str(out), kept.identity, kept["name"])["pt"])
    third = prep(spark, folder, out).manifest().set_index("relative_path")
    assert not third.loc[kept.relative_path, "resumed"]
    assert third.drop(index=kept.relative_path).resumed.all()
    # A changed setting is a new configuration: nothing is reused.
    fourth = prep(spark, folder, out, jpeg_quality=80).manifest()
    assert not fourth.resumed.any()
    assert not list(out.rglob("*.tmp-*"))


def test_leftover_temporary_files_are_removed(spark, sample, tmp_path):
    folder, _ = sample
    stale = tmp_path / "out" / "images" / "astronaut" / "x.jpg.tmp-deadbeef"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    prep(spark, folder, tmp_path / "out")
    assert not stale.exists()


@pytest.fixture(scope="module")
def identities_run(spark, shared_faces, tmp_path_factory):
    out = tmp_path_factory.mktemp("identities_out")
    return prep(spark, shared_faces / "identities", out), out


def test_all_sixteen_identity_photos_are_kept_with_their_person_but_the_240p_copy(identities_run, shared_faces):
    manifest = identities_run[0].manifest().set_index("relative_path", drop=False)
    files = sorted(
        p.relative_to(shared_faces / "identities").as_posix() for p in (shared_faces / "identities").rglob("*.*")
    )
    assert sorted(manifest.relative_path) == files and len(files) == 16
    # obama/5_240p.jpg is obama/1.jpg shrunk to 240 lines: a near copy, found by curation.
    copy = manifest.loc["obama/5_240p.jpg"]
    assert (copy.status, copy.reason, copy.duplicate_of) == ("rejected", "duplicate", "obama/1.jpg")
    assert (manifest.drop(index="obama/5_240p.jpg").status == "ok").all()
    assert not manifest.identity_outlier.any() and (manifest.identity_source == "folder").all()
    assert (manifest.identity == manifest.relative_path.str.split("/").str[0]).all()


def test_real_embeddings_separate_every_person(identities_run):
    result, out = identities_run
    manifest = result.manifest()
    manifest = manifest[manifest.status == "ok"].reset_index(drop=True)  # a copy's files are set aside
    vectors = [
        torch.load(outputs.face_paths(str(out), row.identity, row.name)["pt"], weights_only=True)["embedding"].numpy()
        for row in manifest.itertuples()
    ]
    same, different = [], []
    for i, j in itertools.combinations(range(len(manifest)), 2):
        distance = float(np.linalg.norm(vectors[i] - vectors[j]))
        (same if manifest.identity[i] == manifest.identity[j] else different).append(distance)
    # SOURCES.md measured 0.509 and 0.697 with a plain full-image pipeline.
    assert max(same) < min(different), (max(same), min(different))


def test_hard_photos_each_get_a_row(spark, shared_faces, tmp_path):
    manifest = prep(spark, shared_faces / "hard", tmp_path, layout="flat").manifest().set_index("relative_path")
    assert sorted(manifest.index) == sorted(p.name for p in (shared_faces / "hard").iterdir())
    assert manifest.loc["32bit_rgba.png", "status"] == "ok"
    assert manifest.identity.isna().all()


def test_listing_through_spark_and_reading_uris(spark, sample):
    """The path taken for hdfs://, s3a:// and other inputs: Spark lists, pyarrow reads; run here on file://."""
    from dynamicid.prep.discover import list_local, list_with_spark, read_uri

    folder, expected = sample
    listed = list_with_spark(spark, "file://" + str(folder), "by-identity")
    assert sorted(f.relative for f in listed) == sorted(expected)
    assert {f.relative: f.identity for f in listed} == {
        f.relative: f.identity for f in list_local(str(folder), "by-identity")
    }
    one = next(f for f in listed if f.relative == "astronaut/original.png")
    assert read_uri(one.path) == (folder / "astronaut/original.png").read_bytes()


def test_a_config_file_reaches_the_job(spark, sample, tmp_path):
    from dynamicid import cli

    folder, expected = sample
    (tmp_path / "strict.toml").write_text("min-sharpness = 100000.0\nno-progress = true\n")
    assert cli.main(["prep", str(folder), str(tmp_path / "out"), "--config", str(tmp_path / "strict.toml")]) == 0
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    faces = [path for path, (status, _) in expected.items() if status == "ok"]
    assert (manifest.set_index("relative_path").loc[faces, "reason"] == "too_blurry").all()


def test_a_local_jvm_on_few_cores_runs_its_first_tier_compiler_only(spark, monkeypatch):
    """On up to four local cores the JVM shares them with the Python workers and starts with C1 alone
    (benchmarks/RESULTS.md); the setting reaches the running JVM, not only the configuration. Larger local
    machines and clusters keep the JVM's own compilers."""
    from dynamicid.prep import sparkenv

    arguments = list(spark._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    assert "-XX:TieredStopAtLevel=1" in arguments  # the test session is local[2]
    assert sparkenv._local_jit("local") == sparkenv._local_jit("local[4]") == " -XX:TieredStopAtLevel=1"
    assert sparkenv._local_jit("local[4,3]") == " -XX:TieredStopAtLevel=1"
    assert sparkenv._local_jit("local[16]") == sparkenv._local_jit("spark://head:7077") == ""
    assert sparkenv._local_jit("") == ""  # under spark-submit the JVM is already running
    monkeypatch.setattr(sparkenv.os, "cpu_count", lambda: 64)
    assert sparkenv._local_jit("local[*]") == ""
    monkeypatch.setattr(sparkenv.os, "cpu_count", lambda: 2)
    assert sparkenv._local_jit("local[*]") == " -XX:TieredStopAtLevel=1"
