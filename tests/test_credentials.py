"""Signed C2PA content credentials (issue 37 §2, §3, §4): generate and serve sign with the operator's chain,
`verify` reads the manifest back (valid, trusted, tampered, bound to the watermark) with the network off, and
`collect` honours a photo's training opt-out. Every certificate is made here, in the test."""

import io
import json
import os
import struct
import zlib

import c2pa
import numpy as np
import pytest
from PIL import Image, ImageOps
from signing_chain import make_chain

from dynamicid import cli
from dynamicid.errors import ConfigError
from dynamicid.responsible.credentials import ContentSigner, CredentialOptions, read_credentials
from dynamicid.responsible.provenance import COMPOSITE, GENERATED, read_provenance, save_with_provenance


def _offline():
    """A reading context with network fetches off (remote manifests, OCSP), as verify reads."""
    return c2pa.Context.from_dict({"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}})


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return make_chain(tmp_path_factory.mktemp("operator"))


@pytest.fixture(scope="module")
def signer(chain):
    return ContentSigner(CredentialOptions(str(chain.cert), str(chain.key)))


def _tampered(path: str, folder) -> str:
    """A copy that is still a good PNG, its other chunks (the manifest's included) kept, with one pixel
    changed: the IDAT data inflated, one byte altered, deflated again with its CRC."""
    data = open(path, "rb").read()
    chunks, at = [], 8
    while at < len(data):
        length = struct.unpack(">I", data[at : at + 4])[0]
        chunks.append((data[at + 4 : at + 8], data[at + 8 : at + 8 + length]))
        at += 12 + length
    pixels = bytearray(zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT")))
    pixels[-1] ^= 0x01  # the last byte: no later byte is filtered against it, so one pixel changes
    out, placed = [data[:8]], False
    for kind, body in chunks:
        if kind == b"IDAT":
            if placed:
                continue
            kind, body, placed = b"IDAT", zlib.compress(bytes(pixels)), True
        out.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)))
    copy = str(folder / "tampered.png")
    open(copy, "wb").write(b"".join(out))
    return copy


def test_generate_signs_each_image_with_the_operators_chain(tiny_models, shared_faces, tmp_path, chain):
    from test_generate import _small_generate

    out = tmp_path / "gen"
    assert (
        _small_generate(tiny_models, shared_faces, out, "--c2pa-cert", str(chain.cert), "--c2pa-key", str(chain.key))
        == 0
    )
    image = str(out / "dynamicid_0.png")
    sidecar = json.loads((out / "dynamicid_0.json").read_text())
    found = read_credentials(image, trust_anchors=str(chain.root))
    assert (found.state, found.trusted, found.issuer) == ("valid", True, "Test Operator")
    assert found.model_version == tiny_models["dynamicid"]
    assert found.soft_binding == sidecar["watermark"]["payload"]  # the watermark, bound as a soft binding
    assert sidecar["c2pa"]["signed"] and read_provenance(image)["source_type"] == GENERATED  # XMP kept
    assert read_credentials(image).trusted is None  # no anchor given: valid, trust not judged
    other = make_chain(tmp_path / "other")
    assert read_credentials(image, trust_anchors=str(other.root)).trusted is False
    with c2pa.Reader(image, context=_offline()) as reader:
        manifest = reader.json()
    assert "obama" not in manifest and "1.jpg" not in manifest and "thumbnail" not in manifest
    assert "c2pa.created" in manifest and "trainedAlgorithmicMedia" in manifest
    assert read_credentials(_tampered(image, tmp_path)).state == "invalid"
    assert not [name for name in os.listdir(out) if name.startswith(".signing-")]  # no temporary left


def test_signing_options_are_checked_before_anything_runs(tiny_models, shared_faces, chain, tmp_path, capsys):
    from test_generate import _small_generate

    with pytest.raises(ConfigError, match="needs both"):
        CredentialOptions(str(chain.cert), None)
    with pytest.raises(ConfigError, match="is not a file"):
        CredentialOptions(str(tmp_path / "missing.pem"), str(chain.key))
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="cannot be read as PEM"):
        ContentSigner(CredentialOptions(str(chain.cert), str(tmp_path / "junk.pem")))
    unusable = make_chain(tmp_path / "unusable", usable=False)
    with pytest.raises(ConfigError, match="C2PA refuses to sign with .*authority key identifier"):
        ContentSigner(CredentialOptions(str(unusable.cert), str(unusable.key)))
    other = make_chain(tmp_path / "other")
    out = tmp_path / "gen"
    given = ["--c2pa-cert", str(chain.cert), "--c2pa-key", str(other.key)]
    assert _small_generate(tiny_models, shared_faces, out, *given) != 0
    assert "is not the key of the first certificate" in capsys.readouterr().err
    assert not out.exists()  # refused before the model load and any output


def test_verify_reads_the_manifest_validity_trust_and_binding(shared_faces, signer, chain, tmp_path, capsys):
    from dynamicid.responsible.watermark import code_word, payload_bits, shared_watermarker

    photo = ImageOps.exif_transpose(Image.open(shared_faces / "identities/kit_harington/1.jpeg")).convert("RGB")
    rgb = np.asarray(ImageOps.fit(photo, (256, 256)))
    marked = Image.fromarray(shared_watermarker(0).mark(rgb, payload_bits("org/model@v1", "req-1")))
    word = f"{code_word('org/model@v1', 'req-1'):08x}"
    for name, binding in (("made.png", word), ("rebound.png", f"{code_word('org/model@v1', 'req-2'):08x}")):
        save_with_provenance(marked, str(tmp_path / name), "org/model@v1")
        signer.sign(str(tmp_path / name), "org/model@v1", binding)
    tampered = _tampered(str(tmp_path / "made.png"), tmp_path)
    paths = [str(tmp_path / "made.png"), str(tmp_path / "rebound.png"), tampered]
    assert cli.main(["verify", *paths, "--c2pa-trust", str(chain.root), "--json"]) == 0
    found = {os.path.basename(entry["path"]): entry for entry in json.loads(capsys.readouterr().out)}
    made = found["made.png"]
    assert (made["c2pa"], made["c2pa_trusted"], made["c2pa_signer"], made["c2pa_binding"]) == (
        "valid",
        True,
        "Test Operator",
        "match",
    )
    assert found["rebound.png"]["c2pa"] == "valid" and found["rebound.png"]["c2pa_binding"] == "differs"
    assert found["tampered.png"]["c2pa"] == "invalid"
    assert cli.main(["verify", str(tmp_path / "made.png")]) == 0
    assert " valid " in capsys.readouterr().out  # the table's c2pa column


def test_the_server_signs_its_images_and_gate_overlays(tiny_pipe, shared_faces, signer):
    from dynamicid.generation.request import Settings
    from dynamicid.serving.app import _responsible_line
    from dynamicid.serving.engine import Engine, GenerationRequest, PersonRequest

    photo = str(shared_faces / "identities/obama/1.jpg")
    engine = Engine(tiny_pipe, signer=signer)
    assert "signed C2PA content credentials" in _responsible_line(engine)
    assert "C2PA" not in _responsible_line(Engine(tiny_pipe))
    settings = Settings(steps=1, height=64, width=64, gate_maps=True)
    served = engine.generate(GenerationRequest("a portrait", [PersonRequest(photo)], settings))
    assert read_credentials(served.images[0]).state == "valid"
    with c2pa.Reader(served.overlays[0], context=_offline()) as reader:
        assert reader.get_validation_state() == "Valid" and COMPOSITE in reader.json()


CAMERA = "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"


def _signed_jpeg(chain, folder, name: str, use: str) -> str:
    """A photo whose owner's credentials say `use` for generative AI training (cawg.training-mining)."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    buffer.seek(0)
    definition = {
        "claim_generator_info": [{"name": "a photographer's app", "version": "1"}],
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": CAMERA}]}},
            {"label": "cawg.training-mining", "data": {"entries": {"cawg.ai_generative_training": {"use": use}}}},
        ],
    }
    info = c2pa.C2paSignerInfo(b"es256", chain.cert.read_bytes(), chain.key.read_bytes(), None)
    target = folder / name
    with c2pa.Signer.from_info(info) as signer, open(target, "wb") as out:
        c2pa.Builder(json.dumps(definition)).sign(signer, "image/jpeg", buffer, out)
    return str(target)


def test_collect_treats_a_c2pa_training_opt_out_as_opted_out(chain, tmp_path):
    from photo_server import PhotoServer
    from test_collect_hostile import LOOPBACK, _fetch

    files = {
        name: _signed_jpeg(chain, tmp_path, name, use)
        for name, use in [("no.jpg", "notAllowed"), ("ok.jpg", "allowed")]
    }
    with PhotoServer(files) as server:
        refused = _fetch(f"{server.url}/file/no.jpg", tmp_path / "a", allow_addresses=LOOPBACK)
        assert refused.status == "opted_out" and "cawg.ai_generative_training: notAllowed" in refused.message
        assert not list((tmp_path / "a").glob("photo*"))  # nothing kept, not even the temporary
        assert _fetch(f"{server.url}/file/ok.jpg", tmp_path / "b", allow_addresses=LOOPBACK).status == "ok"
        overridden = _fetch(
            f"{server.url}/file/no.jpg", tmp_path / "c", allow_addresses=LOOPBACK, respect_opt_out=False
        )
        assert overridden.status == "ok"
