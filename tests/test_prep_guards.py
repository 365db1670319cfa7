"""prep keeps its dataset true under hostile input (issue 14, items 1-8): it never reads its own output,
identities never collide, stale outputs go, one run at a time, bounded memory, a row for every path."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynamicid.faces.analyzer import FaceAnalysisConfig
from dynamicid.prep import PrepConfig, outputs, run_prep
from dynamicid.prep.discover import list_local
from dynamicid.prep.guard import OutputLock, PrepError
from dynamicid.prep.verify import check_outputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prep(spark, input_dir, output_dir, **options):
    return run_prep(PrepConfig(input=str(input_dir), output=str(output_dir), progress=False, **options), spark=spark)


@pytest.fixture(scope="module")
def face_png(sample):
    return (sample[0] / "astronaut" / "original.png").read_bytes()


def test_output_inside_input_is_never_read_and_output_equal_to_input_is_refused(spark, sample, tmp_path):
    source = tmp_path / "in"
    shutil.copytree(sample[0], source)
    files = len(sample[1])
    first = prep(spark, source, source / "out").manifest()
    second = prep(spark, source, source / "out").manifest()
    assert len(first) == len(second) == files
    assert not second.relative_path.str.startswith("out/").any() and "out" not in set(second.identity)
    assert second.resumed.all()
    with pytest.raises(PrepError, match="is the input folder"):
        prep(spark, source, source)
    with pytest.raises(PrepError, match="inside prep's own images/"):
        prep(spark, source / "out" / "images", source / "out")


def _distinct_copy(png: bytes, label: str) -> bytes:
    """The same pixels in other bytes (a text chunk): not a duplicate file to prep's curation."""
    import io

    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("copy", label)
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def test_identities_are_their_folder_names_and_never_collide(spark, face_png, tmp_path):
    names = ["a b", "a_b", "ü", "é", "张伟", "阮文", "Nguyễn Văn"]
    for name in names:
        (tmp_path / "in" / name).mkdir(parents=True)
        (tmp_path / "in" / name / "photo.png").write_bytes(_distinct_copy(face_png, name))
    result = prep(spark, tmp_path / "in", tmp_path / "out")
    manifest = result.manifest()
    assert sorted(manifest.identity) == sorted(names)
    assert manifest.name.notna().all() and not manifest.resumed.any()  # none takes another's record
    # One photo under seven names, and none has another photo to match it: all seven are held for review,
    # their files set aside, each in its own person's folder.
    assert set(manifest.reason) == {"held_for_review"}
    folders = {
        row.identity: os.path.dirname(outputs.face_paths(str(tmp_path / "out"), row.identity, row.name, True)["jpg"])
        for row in manifest.itertuples()
    }
    assert len(set(folders.values())) == len(names)
    assert sorted(os.listdir(tmp_path / "out" / "_state" / "set_aside")) == sorted(names)  # readable, in any script
    again = prep(spark, tmp_path / "in", tmp_path / "out").manifest()
    assert again.resumed.all() and sorted(again.identity) == sorted(names)


def test_changed_inputs_and_settings_leave_no_stale_outputs_and_verify_finds_differences(
    spark, sample, tmp_path, capsys
):
    from dynamicid import cli

    source = tmp_path / "in"
    shutil.copytree(sample[0] / "astronaut", source / "astronaut")
    out = tmp_path / "out"
    first = prep(spark, source, out).manifest().set_index("relative_path")
    assert check_outputs(str(out)).ok
    old = [
        outputs.face_paths(str(out), "astronaut", first.loc[f"astronaut/{name}", "name"]).values()
        for name in ("original.png", "rgba.png")
    ]
    # New content under the same name: the old face's files are no longer listed.
    Image.open(source / "astronaut" / "mirrored.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
        source / "astronaut" / "original.png"
    )
    os.remove(source / "astronaut" / "rgba.png")  # an input that is gone takes its outputs with it
    result = prep(spark, source, out)
    check = check_outputs(str(out))
    assert check.ok and check.listed == 4 * result.summary["kept_faces"]  # images/ holds the kept faces alone
    assert not any(os.path.exists(path) for paths in old for path in paths)
    assert result.summary["stale_outputs_removed"] == 8  # both faces' four files, by the sweep after the job
    # A setting that renames every output (all faces get _f<k>): only the new names remain.
    prep(spark, source, out, multi_face="all")
    names = {p.rsplit(".", 1)[0] for p in os.listdir(out / "images" / "astronaut")}
    assert names and all(name.endswith("_f0") for name in names)
    assert check_outputs(str(out)).ok
    # --verify reports a stray file and a missing one, and fails.
    (out / "images" / "astronaut" / "stray.jpg").write_bytes(b"x")
    os.remove(out / "images" / "astronaut" / sorted(os.listdir(out / "images" / "astronaut"))[0])
    assert cli.main(["prep", "--verify", str(out)]) == 1
    text = capsys.readouterr().out
    assert "1 listed files missing, 1 files no row lists" in text and "images/astronaut/stray.jpg" in text


def test_verify_finds_files_training_would_refuse_and_a_rerun_rewrites_them(spark, sample, tmp_path, capsys):
    """A cut JPEG and an unreadable embedding: --verify names both as training would, the rerun redoes those
    two inputs (and only those), and the output then verifies and trains."""
    from dynamicid import cli
    from dynamicid.training.data import load_faces

    source = tmp_path / "in"
    shutil.copytree(sample[0] / "astronaut", source / "astronaut")
    out = tmp_path / "out"
    first = prep(spark, source, out).manifest()
    kept = first[first.status == "ok"].sort_values("relative_path")
    cut, garbled = (outputs.face_paths(str(out), "astronaut", name) for name in kept.name[:2])
    with open(cut["jpg"], "r+b") as handle:
        handle.truncate(os.path.getsize(cut["jpg"]) // 2)
    Path(garbled["pt"]).write_bytes(b"not a tensor")
    assert cli.main(["prep", "--verify", str(out)]) == 1
    text = capsys.readouterr().out
    assert "2 faces with damaged files" in text
    assert f"images/astronaut/{Path(cut['jpg']).name}: the file is cut short" in text
    assert f"images/astronaut/{Path(garbled['pt']).name}:" in text
    again = prep(spark, source, out).manifest().set_index("relative_path")
    assert sorted(again.index[~again.resumed]) == sorted(kept.relative_path[:2])
    assert check_outputs(str(out)).ok and len(load_faces(str(out))) == len(kept)


def test_a_second_run_on_the_same_output_stops_at_once_naming_the_first(spark, sample, tmp_path):
    out = tmp_path / "out"
    with OutputLock(str(out)):
        with pytest.raises(PrepError, match=rf"another prep run is writing to .*\"pid\": {os.getpid()}"):
            prep(spark, sample[0], out)
    assert not (out / "manifest.parquet").exists()
    prep(spark, sample[0], out)  # the lock went with its holder


def test_an_unwritable_output_fails_before_any_image(spark, sample, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PrepError, match="cannot write to the output folder"):
        prep(spark, sample[0], blocker / "out")
    if os.getuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(PrepError, match="cannot write to the output folder"):
            prep(spark, sample[0], locked)


def test_every_listed_path_gets_a_row_and_folder_links_are_followed_once(spark, face_png, tmp_path):
    source = tmp_path / "in"
    (source / "ann").mkdir(parents=True)
    (source / "ann" / "a.png").write_bytes(face_png)
    elsewhere = tmp_path / "elsewhere" / "bob"
    elsewhere.mkdir(parents=True)
    (elsewhere / "b.png").write_bytes(_distinct_copy(face_png, "bob"))
    os.symlink(elsewhere, source / "bob")  # a linked identity folder is read
    os.symlink(source / "ann", source / "ann" / "again")  # a folder loop is walked once
    os.symlink(source / "ann" / "loop.png", source / "ann" / "loop.png")  # a link to itself
    os.symlink(tmp_path / "nowhere.png", source / "ann" / "broken.png")
    os.mkfifo(source / "ann" / "pipe.png")
    listed = {f.relative: f.problem for f in list_local(str(source), "by-identity")}
    assert set(listed) == {"ann/a.png", "ann/loop.png", "ann/broken.png", "ann/pipe.png", "bob/b.png"}
    manifest = prep(spark, source, tmp_path / "out").manifest().set_index("relative_path")
    bob = manifest.loc["bob/b.png"]
    # A near copy of ann's photo, and neither has another photo to tell whose it is: both held for review.
    assert bob.identity == "bob" and bob.faces_detected == 1 and bob.reason == "held_for_review"
    for name, words in (
        ("loop.png", "symbolic link loop"),
        ("broken.png", "broken symbolic link"),
        ("pipe.png", "not a regular file"),
    ):
        row = manifest.loc[f"ann/{name}"]
        assert (row.status, row.reason) == ("error", "read_error") and words in row.message, row.message


def _streamed_png(path, width: int, height: int) -> None:
    """A large RGB PNG written a row at a time, so the test itself never holds the pixels."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")

    row = b"\x00" + (np.arange(width * 3) % 251).astype(np.uint8).tobytes()
    packer = zlib.compressobj(1)
    with open(path, "wb") as handle:
        handle.write(
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", width.to_bytes(4, "big") + height.to_bytes(4, "big") + b"\x08\x02\x00\x00\x00")
        )
        data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
        handle.write(chunk(b"IDAT", data) + chunk(b"IEND", b""))


# The peak is read from VmHWM, this process's own high-water mark: getrusage's ru_maxrss would carry the
# forking pytest process's size across the exec.
MEMORY_PROBE = """
import json, os, sys
from dynamicid.prep import PrepConfig
from dynamicid.prep.process import PrepStage

def peak_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024

stage = PrepStage(PrepConfig(input=".", output=sys.argv[1], progress=False)).setup()
before = peak_mb()
rows = [stage.process_file(p, os.path.basename(p), None, os.path.getsize(p))[0] for p in sys.argv[2:]]
print(json.dumps({"models_mb": before, "peak_mb": peak_mb(), "reasons": [r["reason"] for r in rows]}))
"""


@pytest.mark.slow  # a subprocess that measures its own peak memory
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak from Linux's /proc")
def test_no_single_input_takes_a_worker_past_1_5_gb(tmp_path):
    """At the defaults: the largest PNG under the pixel limits (13370x13370 = 178.8 MP, under Pillow's own
    guard of 178.96 MP; 4 MB on disk) and a 3 GiB file. The worker's whole peak, models included, stays
    under 1.5 GB."""
    png, huge = tmp_path / "wide.png", tmp_path / "huge.jpg"
    _streamed_png(png, 13370, 13370)
    with open(huge, "wb") as handle:
        handle.truncate(3 * 2**30)  # sparse: no disk used, but 3 GiB to read
    probe = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(tmp_path / "out"), str(png), str(huge)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert result["reasons"] == ["no_face", "too_large_file"]
    assert result["peak_mb"] < 1536, result
    assert result["peak_mb"] - result["models_mb"] < 1000, result


def test_degenerate_images_are_rejections_with_reasons():
    from dynamicid.imagefile import ImageRules, Rejected, decode_image
    from dynamicid.prep.sample import png_bytes

    rules = ImageRules()
    strip = png_bytes(Image.new("L", (100000, 64), 128))
    with pytest.raises(Rejected) as caught:
        decode_image(strip, rules)
    assert caught.value.reason == "extreme_aspect_ratio"
    with pytest.raises(ValueError, match=r"detect_side \(--detect-side\) must be from 64"):
        PrepConfig(input="in", output="out", faces=FaceAnalysisConfig(detect_side=0))


def test_a_file_that_grows_past_the_limit_is_cut_off_while_streaming(tmp_path):
    from dynamicid.imagefile import Rejected
    from dynamicid.prep.discover import read_limited

    path = tmp_path / "x.bin"
    path.write_bytes(b"\x01" * 5000)
    data, sha = read_limited(str(path), 5000, chunk=1024)
    assert len(data) == 5000 and sha == hashlib.sha256(data).hexdigest()
    with pytest.raises(Rejected, match="over 4999 bytes"):
        read_limited(str(path), 4999, chunk=1024)


def test_path_components_are_readable_and_distinct():
    texts = ["a b", "a_b", "ü", "u\u0308", "张伟", "a/b", "a%2Fb", ".x", "%2Ex", "_", "x" * 400, "x" * 401, "a\udcffb"]
    encoded = [outputs.path_component(t) for t in texts]
    assert len(set(encoded)) == len(texts)
    assert encoded[:3] == ["a b", "a_b", "ü"] and encoded[4] == "张伟"
    assert all("/" not in e and not e.startswith((".", "_")) and len(e.encode()) <= 200 for e in encoded)


def test_the_listing_streams_to_parquet_a_batch_at_a_time(tmp_path):
    """The driver writes the listing as it walks (a row group per batch) and never gathers it."""
    import pyarrow.parquet as pq

    from dynamicid.prep.discover import InputFile
    from dynamicid.prep.spark_job import write_listing

    def walk():
        for i in range(10):
            yield InputFile(f"/in/p/{i}.jpg", f"p/{i}.jpg", "p", i * 10, None if i else "a broken symbolic link")

    path = tmp_path / "listing.parquet"
    assert write_listing(walk(), str(path), batch_rows=3) == 10
    table = pq.ParquetFile(path)
    assert table.metadata.num_row_groups == 4 and table.metadata.num_rows == 10
    rows = table.read().to_pylist()
    assert rows[0]["problem"] == "a broken symbolic link" and rows[9] == {
        "path": "/in/p/9.jpg",
        "relative": "p/9.jpg",
        "identity": "p",
        "size": 90,
        "problem": None,
    }
    assert write_listing(iter(()), str(tmp_path / "empty.parquet")) == 0


def test_a_folder_that_cannot_be_listed_gets_a_manifest_row(face_png, tmp_path, monkeypatch):
    """chmod 000 on an identity's folder (issue 28: a warning only, the person silently missing). Root reads
    any folder, so there the listing error is made as os.walk would report it."""
    from conftest import prep_in_process

    from dynamicid.prep import discover

    source = tmp_path / "in"
    for person in ("ann", "bob"):
        (source / person).mkdir(parents=True)
        (source / person / "a.png").write_bytes(_distinct_copy(face_png, person))
    locked = source / "bob"
    if os.getuid() == 0:
        real_walk = os.walk

        def walk(top, **options):
            for folder, dirs, files in real_walk(top, **options):
                if folder == str(locked):
                    options["onerror"](PermissionError(13, "Permission denied", folder))
                    continue
                yield folder, dirs, files

        monkeypatch.setattr(discover.os, "walk", walk)
    else:
        locked.chmod(0)
    try:
        rows = prep_in_process(PrepConfig(input=str(source), output=str(tmp_path / "out"), progress=False))
    finally:
        locked.chmod(0o755)
    bob = rows[rows.identity == "bob"]
    assert len(bob) == 1 and bob.status.iloc[0] == "error" and bob.reason.iloc[0] == "read_error"
    assert "cannot be listed" in bob.message.iloc[0] and "Permission denied" in bob.message.iloc[0]
    assert (rows[rows.identity == "ann"].status == "ok").all()


def _small_filesystem(folder, size: str = "2m") -> bool:
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


def test_a_full_disk_is_said_once_and_a_rerun_with_space_resumes(spark, sample, tmp_path):
    """issue 28: it ended with "This is a bug" under 700 lines of Java stack traces."""
    small = tmp_path / "small"
    if not _small_filesystem(small):
        pytest.skip("needs a small tmpfs to fill (mount, as root)")
    try:
        filler = small / "filler"
        filler.write_bytes(b"\0" * (2 * 1024 * 1024 - 160 * 1024))  # leaves about 160 KB: a face or two
        photos = tmp_path / "in" / "astronaut"  # three photos: enough to fill 160 KB
        photos.mkdir(parents=True)
        for name in ("original.png", "mirrored.jpg", "rgba.png"):
            shutil.copy(sample[0] / "astronaut" / name, photos / name)
        with pytest.raises(PrepError, match=r"no space left on the device that holds .*small/out: free some space"):
            prep(spark, photos, small / "out")
        filler.unlink()
        result = prep(spark, photos, small / "out")
        assert result.summary["kept_faces"] > 0 and check_outputs(str(small / "out")).ok
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_the_same_file_twice_is_a_duplicate_and_under_two_identities_it_is_flagged(spark, face_png, sample, tmp_path):
    source = tmp_path / "in"
    for relative in ("ann/a.png", "ann/b.png", "bob/c.png"):
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_bytes(face_png)
    shutil.copy(sample[0] / "astronaut" / "mirrored.jpg", source / "ann" / "d.jpg")
    out = tmp_path / "out"
    manifest = prep(spark, source, out).manifest().set_index("relative_path")
    assert manifest.loc["ann/a.png", "status"] == "ok" and manifest.loc["ann/d.jpg", "status"] == "ok"
    for copy in ("ann/b.png", "bob/c.png"):
        assert (manifest.loc[copy, "status"], manifest.loc[copy, "reason"]) == ("rejected", "duplicate")
        assert manifest.loc[copy, "duplicate_of"] == "ann/a.png"
    assert "under another identity (ann)" in manifest.loc["bob/c.png", "message"]
    assert "another identity" not in manifest.loc["ann/b.png", "message"]
    assert check_outputs(str(out)).ok
    # images/ holds the kept faces alone (scripts that read the folder see what training sees); the copies'
    # files are set aside, so a rerun resumes them instead of redoing them.
    on_disk = {p.stem for p in (out / "images").rglob("*.jpg")}
    assert on_disk == set(manifest[manifest.status == "ok"].name)
    set_aside = {p.stem for p in (out / "_state" / "set_aside").rglob("*.jpg")}
    assert set_aside == set(manifest.loc[["ann/b.png", "bob/c.png"], "name"])
    again = prep(spark, source, out).manifest()
    assert again.resumed.all() and check_outputs(str(out)).ok
    (out / "images" / "bob").mkdir(exist_ok=True)
    shutil.copy(next((out / "_state" / "set_aside" / "bob").glob("*.jpg")), out / "images" / "bob")
    assert [path.split("/")[0] for path in check_outputs(str(out)).unlisted] == ["bob"]


def test_splits_keep_every_identity_in_one_split_and_training_reads_train(spark, shared_faces, tmp_path):
    from dynamicid.errors import ConfigError
    from dynamicid.training.data import load_faces

    out = tmp_path / "out"
    manifest = prep(spark, shared_faces / "identities", out, split="0.5,0.25,0.25", split_seed=3).manifest()
    kept = manifest[manifest.status == "ok"]
    per_identity = kept.groupby("identity").split.nunique()
    assert (per_identity == 1).all() and kept.split.nunique() >= 2
    again = prep(spark, shared_faces / "identities", out, split="0.5,0.25,0.25", split_seed=3).manifest()
    assert again.set_index("relative_path").split.equals(manifest.set_index("relative_path").split)  # seeded
    train_names = set(kept[kept.split == "train"].name)
    assert {face.name for face in load_faces(str(out))} == train_names
    with pytest.raises(ConfigError, match=r"split \(--split\) must be three shares"):
        PrepConfig(input="in", output="out", split="0.9,0.2,0")


def test_the_lock_is_its_process_own_not_its_forked_childrens(tmp_path):
    """Another process is refused while the lock is held; a child forked meanwhile (a DataLoader worker, say)
    does not keep it once its parent lets go, so a killed run's lock goes with the run."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    code = (
        "import sys\nfrom dynamicid.prep.guard import OutputLock, PrepError\n"
        "try:\n    OutputLock(sys.argv[1]).__enter__()\n    print('locked')\nexcept PrepError as err:\n    print(err)\n"
    )

    def other_process() -> str:
        return subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True).stdout.strip()

    with OutputLock(str(out)):
        assert f'"pid": {os.getpid()}' in other_process()
        child = os.fork()
        if child == 0:  # holds the inherited file, as a forked worker would
            time.sleep(30)
            os._exit(0)
    try:
        assert other_process() == "locked"
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
