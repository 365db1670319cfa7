"""Plain provenance metadata on generated images (issue 37 §2): the IPTC digital source type, the toolkit and
the model version as XMP, readable by exiftool with no certificate; nothing about the people depicted."""

import json
import shutil
import subprocess

import pytest
from PIL import Image

from dynamicid import __version__
from dynamicid.responsible.provenance import COMPOSITE, GENERATED, read_provenance, save_with_provenance


def _exiftool() -> str:
    found = shutil.which("exiftool")
    if found is None:  # the read above has been checked already; this is the second, independent reader
        pytest.skip("exiftool is not installed (Debian: libimage-exiftool-perl; `make test` installs it as root)")
    return found


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_png_and_jpeg_carry_the_digital_source_type_that_exiftool_reads(tmp_path, suffix):
    path = str(tmp_path / f"made{suffix}")
    save_with_provenance(Image.new("RGB", (64, 48), "teal"), path, 'org/model "v2"', COMPOSITE)
    assert read_provenance(path) == {
        "source_type": COMPOSITE,
        "creator_tool": f"dynamicid {__version__}",
        "model_version": 'org/model "v2"',  # escaped in the XML attribute, read back as given
    }
    tags = ["-XMP-iptcExt:DigitalSourceType", "-XMP-xmp:CreatorTool", "-XMP-dynamicid:all", "-j"]
    read = json.loads(subprocess.run([_exiftool(), *tags, path], capture_output=True, text=True, check=True).stdout)
    assert read[0]["DigitalSourceType"].endswith("/compositeWithTrainedAlgorithmicMedia")
    assert read[0]["CreatorTool"] == f"dynamicid {__version__}" and read[0]["ModelVersion"] == 'org/model "v2"'
    plain = str(tmp_path / f"plain{suffix}")
    Image.new("RGB", (64, 48), "teal").save(plain)
    assert read_provenance(plain) is None


def test_generated_images_say_what_they_are_and_name_nobody(tiny_models, shared_faces, tmp_path):
    from test_generate import _small_generate

    out = tmp_path / "gen"
    assert _small_generate(tiny_models, shared_faces, out) == 0
    image = out / "dynamicid_0.png"
    made = read_provenance(str(image))
    assert made == {
        "source_type": GENERATED,
        "creator_tool": f"dynamicid {__version__}",
        "model_version": tiny_models["dynamicid"],
    }
    with Image.open(image) as opened:
        packet = opened.info["XML:com.adobe.xmp"]
    assert "obama" not in packet and "1.jpg" not in packet  # the reference and the person stay out


def test_the_servers_images_and_gate_overlays_carry_it_too(tiny_pipe, shared_faces):
    from dynamicid.generation.request import Settings
    from dynamicid.serving.engine import Engine, GenerationRequest, PersonRequest

    photo = str(shared_faces / "identities/obama/1.jpg")
    settings = Settings(steps=1, height=64, width=64, gate_maps=True)
    served = Engine(tiny_pipe).generate(GenerationRequest("a portrait", [PersonRequest(photo)], settings))
    assert read_provenance(served.images[0])["source_type"] == GENERATED
    assert read_provenance(served.overlays[0])["source_type"] == COMPOSITE
