"""Consent for the people depicted (issue 37 §4): a registry of people who agreed, a deny list, on real photos
from ../shared/faces, through the gate, `generate`, the Python pipeline and the server's photo check."""

import datetime as dt
import json
import logging
import shutil

import pytest

from dynamicid import cli
from dynamicid.errors import ConfigError
from dynamicid.responsible.consent import ConsentGate, ConsentOptions, ConsentRefused, read_record

TODAY = dt.date(2026, 12, 7)


def _enrol(registry, shared_faces, person, photos, **record):
    folder = registry / person
    folder.mkdir(parents=True)
    for name in photos:
        shutil.copy(shared_faces / "identities" / person / name, folder / name)
    fields = {"who": person, "granted": "2026-01-01", "scope": ["generation"], "expires": None} | record
    (folder / "consent.json").write_text(json.dumps(fields))


@pytest.fixture(scope="module")
def folders(shared_faces, tmp_path_factory):
    """A registry (obama, consent valid; biden, expired) and a deny list (one photo of kit_harington)."""
    root = tmp_path_factory.mktemp("consent")
    _enrol(root / "registry", shared_faces, "obama", ["1.jpg", "2.jpg"], who="Barack Obama")
    _enrol(root / "registry", shared_faces, "biden", ["1.jpg"], expires="2026-06-30")
    (root / "deny" / "kit").mkdir(parents=True)
    shutil.copy(shared_faces / "identities/kit_harington/1.jpeg", root / "deny" / "kit" / "1.jpeg")
    return root


@pytest.fixture(scope="module")
def analyzer():
    from dynamicid.faces import FaceAnalyzer

    return FaceAnalyzer()


def _embedding(analyzer, path):
    from dynamicid.imagefile import load_image

    return analyzer.analyze(load_image(str(path)).rgb, max_faces=1)[0].embedding


def test_enrolled_people_pass_others_are_refused_and_a_denied_person_is_refused_with_another_photo(
    folders, analyzer, shared_faces, caplog
):
    options = ConsentOptions(str(folders / "registry"), require_consent=True, deny=str(folders / "deny"))
    gate = ConsentGate.build(options, analyzer)
    assert gate is not None and len(gate.enrolled) == 2 and len(gate.denied) == 1
    assert gate.threshold == pytest.approx(0.91)  # dlib's published verification point, as prep uses
    faces = shared_faces / "identities"
    # Another photo of an enrolled person than those enrolled.
    assert gate.check(_embedding(analyzer, faces / "obama/3.jpg"), "obama 3", today=TODAY) == "Barack Obama"
    caplog.set_level(logging.WARNING, logger="dynamicid.responsible.consent")
    with pytest.raises(ConsentRefused, match="matches nobody in the consent registry"):
        gate.check(_embedding(analyzer, faces / "rose_leslie/1.jpg"), "rose", "ab" * 32, today=TODAY)
    with pytest.raises(ConsentRefused, match="biden's consent does not cover generation today"):
        gate.check(_embedding(analyzer, faces / "biden/2.jpg"), "biden 2", today=TODAY)
    # The deny list holds kit_harington/1.jpeg; his other photo is refused too, with or without the registry.
    deny_only = ConsentGate.build(ConsentOptions(deny=str(folders / "deny")), analyzer)
    for each in (gate, deny_only):
        with pytest.raises(ConsentRefused, match="deny list"):
            each.check(_embedding(analyzer, faces / "kit_harington/3.jpg"), "kit 3", today=TODAY)
    assert deny_only.check(_embedding(analyzer, faces / "rose_leslie/1.jpg"), "rose", today=TODAY) is None
    # Refusals are logged by content hash, without the photo.
    assert "content sha256 abababababababab" in caplog.text and "refused rose" in caplog.text


def test_consent_records_and_options_are_checked_naming_the_file_and_field(tmp_path):
    record = tmp_path / "consent.json"
    record.write_text(json.dumps({"who": "Ann", "granted": "2026-01-01", "scope": "generation", "expires": None}))
    assert read_record(str(record)).valid_on(TODAY)
    for broken, field in [
        ({"granted": "2026-01-01", "scope": []}, "who"),
        ({"who": "A", "granted": "soon"}, "granted"),
    ]:
        record.write_text(json.dumps(broken))
        with pytest.raises(ConfigError, match=f"consent.json: {field}"):
            read_record(str(record))
    record.write_text(json.dumps({"who": "A", "granted": "2026-01-01", "scope": ["research"], "expires": None}))
    assert not read_record(str(record)).valid_on(TODAY)  # agreed to another use
    with pytest.raises(ConfigError, match="require_consent needs consent_registry"):
        ConsentOptions(require_consent=True)
    with pytest.raises(ConfigError, match="deny .* is not a folder"):
        ConsentOptions(deny=str(tmp_path / "nowhere"))
    no_face = tmp_path / "deny"
    no_face.mkdir()
    from PIL import Image

    Image.new("RGB", (200, 200), "grey").save(no_face / "blank.png")
    from dynamicid.faces import FaceAnalyzer

    with pytest.raises(ConfigError, match="deny-list photo .*blank.png: no face was detected"):
        ConsentGate.build(ConsentOptions(deny=str(no_face)), FaceAnalyzer())


def test_generate_refuses_a_denied_person_and_requires_consent_when_asked(
    folders, tiny_models, shared_faces, tmp_path, capsys
):
    from test_generate import _generate_with

    def generate(person, *options):
        argv = [
            *_generate_with(tiny_models),
            "--prompt",
            "a person",
            "--person",
            str(shared_faces / "identities" / person),
        ]
        out = tmp_path / person.replace("/", "_")
        code = cli.main(
            [*argv, "--steps", "1", "--height", "64", "--width", "64", "--output", str(out), "-q", *options]
        )
        return code, out

    code, out = generate("kit_harington/2.jpeg", "--deny", str(folders / "deny"))
    assert code == 1 and "is refused: the face is on the deny list" in capsys.readouterr().err
    assert not out.exists() or not list(out.glob("*.png"))
    registry = ["--consent-registry", str(folders / "registry"), "--require-consent"]
    code, out = generate("obama/4.jpg", *registry)
    assert code == 0 and (out / "dynamicid_0.png").exists()
    code, _ = generate("rose_leslie/2.jpg", *registry)
    assert code == 1 and "matches nobody in the consent registry" in capsys.readouterr().err
    assert cli.main(["generate", "--prompt", "p", "--person", "x.jpg", "--output", "o", "--require-consent"]) == 1
    assert "require_consent needs consent_registry" in capsys.readouterr().err


def test_the_servers_photo_check_and_the_pipeline_refuse_a_denied_face(folders, tiny_pipe, shared_faces):
    from dynamicid.generation.request import Person
    from dynamicid.serving.engine import Engine

    try:
        engine = Engine(tiny_pipe, consent=ConsentOptions(deny=str(folders / "deny")))
        denied = engine.check_photo(str(shared_faces / "identities/kit_harington/3.jpg"))
        assert not denied.ok and "deny list" in denied.message
        assert engine.check_photo(str(shared_faces / "identities/obama/1.jpg")).ok
        with pytest.raises(ConsentRefused, match="reference photo of kit is refused"):
            tiny_pipe.encode_persons([Person(str(shared_faces / "identities/kit_harington/2.jpeg"), name="kit")])
    finally:
        tiny_pipe.consent = None  # the pipeline is shared by the session's generation tests
