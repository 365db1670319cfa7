"""No input gets a traceback (issue 14): every command, run on a corpus of bad inputs and bad options,
exits non-zero with one paragraph that names what is wrong. Extend CASES whenever a new case is found.

Everything runs in-process through `cli.main`; no case needs Spark, and generate's cases fail before any
model loads (the base model path does not even exist), except the two about damaged weights."""

import json
import os
import shutil

import pytest
import torch
from PIL import Image

from dynamicid import cli

BAD = "/nonexistent/dynamicid"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_models, sample):
    """The files the cases point at, made once."""
    from dynamicid.models.checkpoints import AUTHORS_FILES, load_ours, save_authors, unet_config_layout

    root = tmp_path_factory.mktemp("corpus")
    photo = str(sample[0] / "astronaut" / "original.png")
    (root / "file").write_text("a file, not a folder")
    (root / "not_a_dict.json").write_text("{}")

    # eval: one image per bad sidecar, each in its own folder
    def sidecar_case(name, meta):
        folder = root / "eval" / name
        folder.mkdir(parents=True)
        shutil.copy(photo, folder / "img.png")
        (folder / "img.json").write_text(json.dumps(meta))
        return str(folder)

    ref = {"reference": photo}
    paths = {
        "photo": photo,
        "file": str(root / "file"),
        "sidecar_list": sidecar_case("list", [ref]),
        "box_strings": sidecar_case("box_strings", {"persons": [ref | {"box": ["a", "b", "c", "d"]}]}),
        "persons_string": sidecar_case("persons_string", {"persons": "ann"}),
        "persons_empty": sidecar_case("persons_empty", {"persons": []}),
        "name_list": sidecar_case("name_list", {"persons": [ref | {"name": ["x"]}]}),
    }
    csv = root / "eval" / "boxes.csv"
    csv.write_text(f"image,person,reference,box\n{photo},ann,{photo},a b c d\n")
    paths["csv_box"] = str(csv)

    # weights: ours with a cut safetensors and a broken dynamicid.json; the authors' with damaged pickles
    weights = tiny_models["dynamicid"]
    for name, damage in (("cut", "saa.safetensors"), ("badjson", "dynamicid.json")):
        folder = root / "weights" / name
        shutil.copytree(weights, folder)
        target = folder / damage
        target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
        paths[f"weights_{name}"] = str(folder)
    layout = unet_config_layout(os.path.join(tiny_models["sd15"], "unet", "config.json"))
    authors = root / "authors" / "good"
    save_authors(load_ours(weights, layout), str(authors))
    blob = torch.load(authors / AUTHORS_FILES["saa"], weights_only=True)

    def authors_case(name, file, payload):
        folder = root / "authors" / name
        shutil.copytree(authors, folder)
        if isinstance(payload, bytes):
            (folder / file).write_bytes(payload)
        else:
            torch.save(payload, folder / file)
        paths[f"authors_{name}"] = str(folder)

    proj = dict(blob["proj_module"])
    proj.pop("norm.weight")
    authors_case("missing_key", AUTHORS_FILES["saa"], {"proj_module": proj, "SAA_module": blob["SAA_module"]})
    authors_case("proj_tensor", AUTHORS_FILES["saa"], {"proj_module": torch.zeros(3), "SAA_module": blob["SAA_module"]})
    authors_case("imr_list", AUTHORS_FILES["imr"], [torch.zeros(2)])
    authors_case("empty", AUTHORS_FILES["keypoint"], b"")
    nan = dict(blob["proj_module"]) | {"norm.weight": torch.full_like(blob["proj_module"]["norm.weight"], float("nan"))}
    authors_case("nan", AUTHORS_FILES["saa"], {"proj_module": nan, "SAA_module": blob["SAA_module"]})
    paths["unet_config"] = os.path.join(tiny_models["sd15"], "unet", "config.json")
    (root / "broken_unet.json").write_text("{not json")
    paths["broken_unet"] = str(root / "broken_unet.json")
    return root, paths, tiny_models


def _train(run_dir, models, *extra):
    """`train anchor` on run_dir with the tiny base model and CLIP, then `extra`."""
    return [
        "train",
        "anchor",
        str(run_dir),
        str(run_dir / "t"),
        "--base-model",
        models["sd15"],
        "--clip-image-encoder",
        models["clip-image"],
        *extra,
    ]


def _generate(models, *extra, person=None, weights=None, base=BAD):
    return [
        "generate",
        "--base-model",
        base,
        "--weights",
        weights or BAD,
        "--clip-image-encoder",
        models["clip-image"] if base != BAD else BAD,
        "--prompt",
        "a photo",
        "--person",
        person,
        "--output",
        "/tmp/dynamicid-never-written",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--steps",
        "1",
        *extra,
    ]


# (case id, argv builder, words the one-paragraph message must hold)
CASES = [
    (
        "prep-missing-input",
        lambda r, p, m: ["prep", str(r / "missing"), str(r / "out")],
        ["input not found", "missing"],
    ),
    ("prep-output-is-input", lambda r, p, m: ["prep", str(r / "eval"), str(r / "eval")], ["is the input folder"]),
    (
        "prep-detect-side-0",
        lambda r, p, m: ["prep", str(r / "eval"), str(r / "o"), "--detect-side", "0"],
        ["detect_side (--detect-side) must be from 64"],
    ),
    ("prep-no-folders", lambda r, p, m: ["prep"], ["needs INPUT and OUTPUT"]),
    ("prep-verify-not-output", lambda r, p, m: ["prep", "--verify", str(r / "eval")], ["manifest.parquet not found"]),
    (
        "prep-output-under-a-file",
        lambda r, p, m: ["prep", str(r / "eval"), p["file"] + "/out"],
        ["cannot write to the output folder", "file/out"],
    ),
    ("prep-unknown-embedder", lambda r, p, m: ["prep", str(r / "eval"), str(r / "o"), "--embedder", "nope"], ["nope"]),
    (
        "generate-box-words",
        lambda r, p, m: _generate(m, "--box", "a,b,c,d", person=p["photo"]),
        ["box", "four numbers"],
    ),
    (
        "generate-box-zero-area",
        lambda r, p, m: _generate(m, "--box", "0.5,0.5,0.2,0.9", person=p["photo"]),
        ["zero area"],
    ),
    (
        "generate-8192-square",
        lambda r, p, m: _generate(m, "--height", "8192", "--width", "8192", person=p["photo"]),
        ["64.0 megapixels", "max_output_pixels"],
    ),
    ("generate-images-0", lambda r, p, m: _generate(m, "--images", "0", person=p["photo"]), ["(images)", "at least 1"]),
    (
        "generate-missing-photo",
        lambda r, p, m: _generate(m, person=str(r / "nobody.jpg")),
        ["reference photo", "nobody.jpg"],
    ),
    ("generate-photo-not-an-image", lambda r, p, m: _generate(m, person=p["file"]), ["reference photo", "file"]),
    (
        "generate-cut-safetensors",
        lambda r, p, m: _generate(m, person=p["photo"], weights=p["weights_cut"], base=m["sd15"]),
        ["saa.safetensors", "truncated or damaged"],
    ),
    (
        "generate-broken-dynamicid-json",
        lambda r, p, m: _generate(m, person=p["photo"], weights=p["weights_badjson"], base=m["sd15"]),
        ["dynamicid.json", "not valid JSON"],
    ),
    (
        "train-no-manifest",
        lambda r, p, m: _train(r, m),
        ["no manifest.parquet"],
    ),
    (
        "train-keep-0",
        lambda r, p, m: _train(r, m, "--keep-checkpoints", "0"),
        ["keep_checkpoints"],
    ),
    ("eval-sidecar-list", lambda r, p, m: ["eval", p["sidecar_list"], str(r / "e")], ["img.json", "found a list"]),
    ("eval-box-strings", lambda r, p, m: ["eval", p["box_strings"], str(r / "e")], ["img.json", "person 0", "'box'"]),
    ("eval-persons-string", lambda r, p, m: ["eval", p["persons_string"], str(r / "e")], ["img.json", "'persons'"]),
    (
        "eval-persons-empty",
        lambda r, p, m: ["eval", p["persons_empty"], str(r / "e")],
        ["img.json", "at least one person"],
    ),
    ("eval-name-list", lambda r, p, m: ["eval", p["name_list"], str(r / "e")], ["img.json", "'name'"]),
    ("eval-csv-box-words", lambda r, p, m: ["eval", p["csv_box"], str(r / "e")], ["boxes.csv:2", "'box'", "a b c d"]),
    (
        "convert-missing-key",
        lambda r, p, m: ["convert-weights", p["authors_missing_key"], str(r / "c"), "--unet-config", p["unet_config"]],
        ["SAA.bin proj_module", "norm.weight"],
    ),
    (
        "convert-proj-tensor",
        lambda r, p, m: ["convert-weights", p["authors_proj_tensor"], str(r / "c"), "--unet-config", p["unet_config"]],
        ["proj_module must be a state dict", "Tensor"],
    ),
    (
        "convert-imr-list",
        lambda r, p, m: ["convert-weights", p["authors_imr_list"], str(r / "c"), "--unet-config", p["unet_config"]],
        ["IMR.bin must be a state dict", "list"],
    ),
    (
        "convert-empty-file",
        lambda r, p, m: ["convert-weights", p["authors_empty"], str(r / "c"), "--unet-config", p["unet_config"]],
        ["key_point_encoder.bin is empty"],
    ),
    (
        "convert-nan",
        lambda r, p, m: ["convert-weights", p["authors_nan"], str(r / "c"), "--unet-config", p["unet_config"]],
        ["norm.weight", "NaN or infinite"],
    ),
    (
        "convert-broken-unet-config",
        lambda r, p, m: ["convert-weights", str(r), str(r / "c"), "--unet-config", p["broken_unet"]],
        ["unet_config", "not valid JSON"],
    ),
    # issue 28: every number is checked before any work
    (
        "generate-guidance-inf",
        lambda r, p, m: _generate(m, "--guidance", "inf", person=p["photo"]),
        ["guidance", "finite number from 0 to 100"],
    ),
    (
        "generate-id-scale-nan",
        lambda r, p, m: _generate(m, "--id-scale", "nan", person=p["photo"]),
        ["id_scale", "not nan"],
    ),
    ("generate-seed-2-70", lambda r, p, m: _generate(m, "--seed", str(2**70), person=p["photo"]), ["seed", "from -1"]),
    ("generate-steps-1001", lambda r, p, m: _generate(m, "--steps", "1001", person=p["photo"]), ["steps", "1000"]),
    (
        "generate-over-max-work",
        lambda r, p, m: _generate(m, "--steps", "40", "--max-work", "1000000", person=p["photo"]),
        ["megapixel-steps", "max_work"],
    ),
    (
        "prep-decode-side-0",
        lambda r, p, m: ["prep", str(r / "eval"), str(r / "o"), "--decode-side", "0"],
        ["decode_side"],
    ),
    (
        "prep-min-detection-score-nan",
        lambda r, p, m: ["prep", str(r / "eval"), str(r / "o"), "--min-detection-score", "nan"],
        ["min_detection_score", "not nan"],
    ),
    (
        "prep-max-bytes-negative",
        lambda r, p, m: ["prep", str(r / "eval"), str(r / "o"), "--max-bytes", "-1"],
        ["max_bytes"],
    ),
    ("train-learning-rate-nan", lambda r, p, m: _train(r, m, "--learning-rate", "nan"), ["learning_rate", "not nan"]),
    ("serve-port-0", lambda r, p, m: ["serve", "--tiny", "--port", "0"], ["port (--port) must be from 1 to 65,535"]),
    (
        "config-file-not-a-table",
        lambda r, p, m: ["prep", "--config", str(r / "eval" / "list" / "img.json"), "a", "b"],
        ["must hold a table of options"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_every_bad_input_gets_one_paragraph_and_no_traceback(corpus, case, capsys):
    root, paths, models = corpus
    _, argv, words = case
    code = cli.main(argv(root, paths, models))
    out, err = capsys.readouterr()
    assert code not in (0, 70), (code, err)  # 70: the catch-all for bugs, which none of these may reach
    assert "Traceback" not in out + err
    message = [line for line in err.strip().splitlines() if line.startswith("dynamicid")]
    assert len(message) == 1 and err.strip().endswith(message[0]), err  # one paragraph, one line, last
    for word in words:
        assert word in message[0], (word, message[0])


def test_a_bug_is_one_paragraph_with_the_traceback_in_a_file(monkeypatch, capsys):
    from dynamicid.prep import sample

    def broken(folder):
        raise KeyError("boom")

    monkeypatch.setattr(sample, "make_sample", broken)
    assert cli.main(["make-sample", "/tmp/x"]) == 70
    err = capsys.readouterr().err
    assert "internal error: KeyError" in err and "Traceback" not in err
    path = err.split("the traceback is in ")[1].split(";")[0]
    assert "KeyError: 'boom'" in open(path).read()
    os.remove(path)


def test_generate_checks_the_request_before_loading_any_model(corpus, monkeypatch, capsys):
    """A bad box fails in the request check; the model load is never reached."""
    from dynamicid.generation import pipeline

    loads = []
    monkeypatch.setattr(pipeline.DynamicIDPipeline, "from_pretrained", classmethod(lambda *a, **k: loads.append(a)))
    root, paths, models = corpus
    assert cli.main(_generate(models, "--box", "0.1,0.1,0.5", person=paths["photo"], base=models["sd15"])) == 1
    assert loads == [] and "four numbers" in capsys.readouterr().err


def test_authors_files_for_any_unet_size_load(corpus):
    """Every width is read from the tensors: the tiny UNet's authors' files load and match ours exactly."""
    from dynamicid.models.checkpoints import load_authors, load_ours, public_config, unet_config_layout

    root, paths, models = corpus
    layout = unet_config_layout(paths["unet_config"])
    ours, theirs = load_ours(models["dynamicid"], layout), load_authors(os.path.join(root, "authors", "good"), layout)
    assert public_config(theirs.face_encoder) == public_config(ours.face_encoder)
    assert public_config(theirs.imr) == public_config(ours.imr)
    assert (theirs.keypoint_encoder.out_dim, theirs.keypoint_encoder.base) == (
        ours.keypoint_encoder.out_dim,
        ours.keypoint_encoder.base,
    )
    for name in ("face_encoder", "attention", "imr", "keypoint_encoder"):
        a, b = getattr(ours, name).state_dict(), getattr(theirs, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_eval_with_output_equal_to_input_never_reads_its_report(shared_faces, tmp_path):
    from dynamicid.evaluation import EvalConfig, run_eval

    photo = shared_faces / "identities" / "obama" / "1.jpg"
    shutil.copy(photo, tmp_path / "img.jpg")
    (tmp_path / "img.json").write_text(json.dumps({"persons": [{"name": "obama", "reference": str(photo)}]}))
    for _ in range(2):
        result = run_eval(EvalConfig(input=str(tmp_path), output=str(tmp_path), progress=False))
        assert len(result.scores) == 1 and (tmp_path / "report.png").exists()
    assert Image.open(tmp_path / "report.png").size[0] > 100
