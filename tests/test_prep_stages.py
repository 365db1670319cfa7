"""prep's per-file logic in process, through the stage objects, without Spark: statuses, policies, resume
decisions, writing, and a failing stage costing only its own file. (test_prep_pipeline.py is the one module
that runs prep end to end on Spark.)"""

import os
import shutil

import pytest
from conftest import before_curation

from dynamicid.imagefile import load_image
from dynamicid.prep import PrepConfig, outputs
from dynamicid.prep.process import PrepStage, timed


def _files(folder):
    listed = []
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            path = os.path.join(root, name)
            relative = os.path.relpath(path, folder)
            identity = relative.split(os.sep)[0] if os.sep in relative else None
            listed.append((path, relative, identity, os.path.getsize(path), None))
    return sorted(listed, key=lambda item: item[1])


@pytest.fixture(scope="module")
def stage_factory():
    def stage(output, **options) -> PrepStage:  # models load once per face settings, as in a Spark worker
        return PrepStage(PrepConfig(input=".", output=str(output), progress=False, **options)).setup()

    return stage


def test_every_sample_file_gets_its_documented_status_in_one_batch(sample, stage_factory, tmp_path):
    folder, expected = sample
    expected = before_curation(expected)  # the stages alone, without the curation after the job
    rows = stage_factory(tmp_path).process(_files(folder))
    assert {row["relative_path"]: (row["status"], row["reason"]) for row in rows} == expected
    for row in rows:
        if row["status"] == "ok":
            paths = outputs.face_paths(str(tmp_path), row["identity"], row["name"])
            assert all(os.path.getsize(p) > 0 for p in paths.values())
    # Kept or rejected, every file that was read has its completion record, and a rerun resumes all of them.
    read = {row["relative_path"] for row in rows if row["reason"] != "read_error"}
    assert {r for r in read if os.path.isfile(outputs.record_path(str(tmp_path), r))} == read
    again = stage_factory(tmp_path).process(_files(folder))
    assert {row["relative_path"] for row in again if row["resumed"]} == read
    assert [(r["relative_path"], r["status"], r["reason"]) for r in again] == [
        (r["relative_path"], r["status"], r["reason"]) for r in rows
    ]


@pytest.mark.parametrize("policy,rows_per_photo", [("largest", 1), ("skip", 1), ("all", None)])
def test_multi_face_policies(shared_faces, stage_factory, tmp_path, policy, rows_per_photo, analyzer):
    listed = _files(shared_faces / "groups")
    rows = stage_factory(tmp_path, multi_face=policy).process(listed)
    by_photo = {}
    for row in rows:
        by_photo.setdefault(row["relative_path"], []).append(row)
    assert sorted(by_photo) == [item[1] for item in listed]
    for photo_rows in by_photo.values():
        detected = photo_rows[0]["faces_detected"]
        assert detected >= 2
        assert len(photo_rows) == (rows_per_photo or detected)
        if policy == "skip":
            assert [r["reason"] for r in photo_rows] == ["multiple_faces"]
        else:
            assert {r["status"] for r in photo_rows} == {"ok"}
            assert [r["face_index"] for r in photo_rows] == list(range(len(photo_rows)))
            assert len({r["name"] for r in photo_rows}) == len(photo_rows)  # one output name per face
        if policy == "largest":  # the kept face is the largest of the detector's boxes (two may tie)
            image = load_image(photo_rows[0]["source_path"])
            areas = [box.width * box.height / image.decode_scale**2 for box in analyzer.detect(image.rgb)]
            x0, y0, x1, y1 = photo_rows[0]["bbox"]
            assert (x1 - x0) * (y1 - y0) == pytest.approx(max(areas), rel=1e-6)


def test_resume_decisions(sample, stage_factory, tmp_path):
    folder, _ = sample
    copy = shutil.copytree(folder / "astronaut", tmp_path / "in" / "astronaut")
    listed = [item for item in _files(tmp_path / "in") if item[1].endswith("original.png")]
    stage = stage_factory(tmp_path / "out")
    first = stage.process(listed)
    assert [r["status"] for r in first] == ["ok"] and not first[0]["resumed"]
    again = stage.process(listed)
    assert again[0]["resumed"] and again[0]["name"] == first[0]["name"]  # done: nothing is redone
    os.remove(outputs.face_paths(str(tmp_path / "out"), "astronaut", first[0]["name"])["txt"])
    assert not stage.process(listed)[0]["resumed"]  # an output is missing: redone
    with open(copy / "original.png", "ab") as handle:
        handle.write(b"\0")  # other content, same name
    changed = stage.process([(listed[0][0], listed[0][1], "astronaut", os.path.getsize(listed[0][0]), None)])
    assert not changed[0]["resumed"] and changed[0]["sha256"] != first[0]["sha256"]


def test_a_stage_that_fails_on_one_file_costs_only_that_file(sample, stage_factory, tmp_path, monkeypatch):
    folder, expected = sample
    expected = before_curation(expected)  # the stages alone, without the curation after the job
    kept = sorted(relative for relative, (status, _) in expected.items() if status == "ok")[:3]
    listed = [item for item in _files(folder) if item[1] in kept]
    stage = stage_factory(tmp_path)
    detect = stage.shared.analyzer.detect
    calls = []

    def detect_failing_on_the_second(rgb):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("a detector bug")
        return detect(rgb)

    monkeypatch.setattr(stage.shared.analyzer, "detect", detect_failing_on_the_second)
    rows = stage.process(listed)
    assert [(r["status"], r["reason"]) for r in rows] == [("ok", None), ("error", "internal_error"), ("ok", None)]
    assert "a detector bug" in rows[1]["message"]
    assert not os.path.exists(outputs.record_path(str(tmp_path), rows[1]["relative_path"]))  # retried next run


def test_a_write_that_fails_leaves_no_record_so_the_next_run_redoes_it(sample, stage_factory, tmp_path, monkeypatch):
    folder, _ = sample
    listed = [item for item in _files(folder) if item[1].endswith("original.png")]
    stage = stage_factory(tmp_path)

    def disk_full(path, data):
        raise OSError(28, "No space left on device", path)

    monkeypatch.setattr(outputs, "write_atomic", disk_full)
    rows = stage.process(listed)
    assert rows[0]["status"] == "error" and "No space left on device" in rows[0]["message"]
    assert not os.path.exists(outputs.record_path(str(tmp_path), listed[0][1]))
    monkeypatch.undo()
    assert stage.process(listed)[0]["status"] == "ok"


def test_the_timing_helper_adds_up_and_survives_an_error():
    timings = {"decode": 1.0}
    with timed(timings, "decode"):
        sum(range(10_000))
    assert timings["decode"] > 1.0
    with pytest.raises(ValueError), timed(timings, "detect"):
        raise ValueError
    assert timings["detect"] >= 0.0 and set(timings) == {"decode", "detect"}


def test_jobs_with_the_same_face_settings_share_one_set_of_models(tmp_path):
    first = PrepStage(PrepConfig(input=".", output=str(tmp_path / "a"), progress=False)).setup()
    second = PrepStage(PrepConfig(input=".", output=str(tmp_path / "b"), progress=False, jpeg_quality=80)).setup()
    assert second.shared.analyzer is first.shared.analyzer and second.shared.captioner is first.shared.captioner
    other = PrepStage(
        PrepConfig(input=".", output=str(tmp_path / "c"), progress=False, captioner_model=None, caption_max_tokens=8)
    ).setup()
    assert other.shared.captioner is not first.shared.captioner  # other caption settings: its own captioner


def test_per_file_stages_hold_one_decoded_photo_at_a_time(sample, stage_factory, tmp_path, monkeypatch):
    """Decode, detect and landmarks run file by file, so a task's memory is one photo, not its whole batch;
    only the batch stages (embed, expression, caption) see every face at once."""
    from dynamicid.prep.process import DecodeStage, EmbedStage, LandmarkStage

    folder, expected = sample
    expected = before_curation(expected)  # the stages alone, without the curation after the job
    kept = sorted(relative for relative, (status, _) in expected.items() if status == "ok")[:3]
    events = []
    for stage_class in (DecodeStage, LandmarkStage):
        original = stage_class.process

        def spy(self, file, original=original):
            events.append((self.name, file.relative))
            return original(self, file)

        monkeypatch.setattr(stage_class, "process", spy)
    original_faces = EmbedStage.process_faces
    monkeypatch.setattr(
        EmbedStage,
        "process_faces",
        lambda self, faces: events.append(("embed", len(faces))) or original_faces(self, faces),
    )
    stage_factory(tmp_path).process([item for item in _files(folder) if item[1] in kept])
    assert events == [step for name in kept for step in (("decode", name), ("landmarks", name))] + [("embed", 3)]


def test_the_next_file_is_read_ahead_one_at_a_time(sample, stage_factory, tmp_path, monkeypatch):
    """While a file goes through decode, detect and landmarks, the next one is read (and hashed) on the reader
    thread: never more than one read ahead, so at most two files' bytes are in memory; each file is read once,
    in order, and each row carries the hash of its own file."""
    import hashlib
    import threading

    from dynamicid.prep import process

    folder, _ = sample
    listed = _files(folder)
    prep = stage_factory(tmp_path)
    read_stage = prep.stages[0]
    reads, threads, ahead = [], set(), []
    original_read = process.read_limited

    def read_spy(path, limit):
        reads.append(path)
        threads.add(threading.current_thread().name)
        return original_read(path, limit)

    original_decode = process.DecodeStage.process

    def decode_spy(self, file):
        ahead.append(len(read_stage._reads))
        return original_decode(self, file)

    monkeypatch.setattr(process, "read_limited", read_spy)
    monkeypatch.setattr(process.DecodeStage, "process", decode_spy)
    rows = prep.process(listed)
    readable = [path for path, *_ in listed if os.path.isfile(path) and os.access(path, os.R_OK)]
    assert reads == [p for p in readable if os.path.getsize(p) <= prep.config.images.max_bytes]
    assert threads == {"prep-read_0"} and len(ahead) > 3 and max(ahead) == 1
    for row in rows:
        if row["sha256"]:
            with open(row["source_path"], "rb") as handle:
                assert row["sha256"] == hashlib.sha256(handle.read()).hexdigest()
