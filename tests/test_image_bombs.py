"""A decompression bomb (a small file whose header claims a huge image) is refused by every command that reads
images, from its header, before any pixel is decoded. Pillow's own guard stays on in the process too."""

import json
import shutil
import struct
import zlib

import pytest
from PIL import Image

from dynamicid.imagefile import ImageRules, Rejected, check_header, open_image


def bomb_png(path, side=30_000):
    """A valid 1x1 PNG whose IHDR then claims side x side pixels (900 MP at the default): 70 bytes on disk."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(open(path, "rb").read())
    header = b"IHDR" + struct.pack(">II", side, side) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    open(path, "wb").write(bytes(data))
    return path


def test_the_readers_refuse_it_from_the_header(tmp_path):
    bomb = bomb_png(tmp_path / "bomb.png")
    for read in (check_header, open_image):
        with pytest.raises(Rejected) as refused:
            read(str(bomb))
        assert refused.value.reason == "decompression_bomb"
    # Over our limit but under Pillow's: our explicit limit refuses it, with its number.
    with pytest.raises(Rejected, match="over 1 MP"):
        check_header(str(bomb_png(tmp_path / "small_bomb.png", side=2000)), ImageRules(max_pixels=1_000_000))
    assert Image.MAX_IMAGE_PIXELS is not None  # the toolkit leaves Pillow's own guard on


def test_generate_refuses_a_bomb_before_any_model_loads(tmp_path, shared_faces):
    from dynamicid.generation.request import GenerationError, Person, check_request

    bomb = str(bomb_png(tmp_path / "me.png"))
    with pytest.raises(GenerationError, match="person 1: reference photo .*me.png: decompression_bomb"):
        check_request([Person(bomb)], 512, 512, 30, 5.0)
    photo = str(shared_faces / "identities" / "obama" / "1.jpg")
    with pytest.raises(GenerationError, match="person 1: target landmarks .*me.png: decompression_bomb"):
        check_request([Person(photo, target_landmarks=bomb)], 512, 512, 30, 5.0)


def test_eval_names_a_bomb_among_its_images(tmp_path, shared_faces):
    from dynamicid.evaluation import EvalConfig, run_eval
    from dynamicid.evaluation.inputs import EvalInputError

    folder = tmp_path / "images"
    folder.mkdir()
    bomb_png(folder / "generated.png")
    reference = str(shared_faces / "identities" / "obama" / "1.jpg")
    (folder / "generated.json").write_text(json.dumps({"prompt": "a photo", "persons": [{"reference": reference}]}))
    with pytest.raises(EvalInputError, match="generated.png: decompression_bomb"):
        run_eval(EvalConfig(input=str(folder), output=str(tmp_path / "out"), progress=False))


def test_training_leaves_out_a_face_whose_image_is_a_bomb(sample, tmp_path, caplog):
    from conftest import prep_in_process

    from dynamicid.prep import PrepConfig
    from dynamicid.training.data import load_faces

    folder, _ = sample
    rows = prep_in_process(PrepConfig(input=str(folder / "astronaut"), output=str(tmp_path / "data"), progress=False))
    rows.to_parquet(tmp_path / "data" / "manifest.parquet")  # what the runner writes after the job
    faces = load_faces(str(tmp_path / "data"))
    shutil.copy(bomb_png(tmp_path / "bomb.png"), faces[0].png)  # the landmark sheet, now a bomb
    kept = load_faces(str(tmp_path / "data"))
    assert [f.name for f in kept] == [f.name for f in faces[1:]]
    assert f"{faces[0].png}: decompression_bomb" in caplog.text
