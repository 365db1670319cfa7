"""`DynamicIDPipeline` and `dynamicid generate` on tiny models (random weights, so images are noise)."""

import json

import numpy as np
import pytest
import torch
from conftest import generate_small, identity_photo

from dynamicid import cli
from dynamicid.generation import DynamicIDPipeline, GenerationError, Person, automatic_boxes
from dynamicid.generation.layout import LayoutError, check_boxes
from dynamicid.imagefile import load_image
from dynamicid.models.checkpoints import CheckpointError


@pytest.fixture()
def pipe(tiny_pipe):
    return tiny_pipe


@pytest.fixture()
def unet_calls(pipe, monkeypatch):
    calls = []
    original = pipe.unet.forward
    monkeypatch.setattr(pipe.unet, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


photo, run = identity_photo, generate_small


def test_images_have_the_requested_size(pipe, shared_faces):
    out = run(pipe, [Person(photo(shared_faces, "obama/1.jpg"))], height=64, width=96, num_images_per_prompt=2)
    assert out.images.shape == (2, 64, 96, 3)
    assert out.metadata["source_face_prompts"] == ["in a happy expression, in front view"]


def test_the_same_seed_gives_the_same_image(pipe, shared_faces):
    persons = [Person(photo(shared_faces, "obama/1.jpg"))]
    a, b = run(pipe, persons).images, run(pipe, persons).images
    c = run(pipe, persons, seed=8).images
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_id_scale_zero_equals_the_plain_sd_pipeline(pipe, tiny_models, shared_faces):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(
        tiny_models["sd15"], safety_checker=None, requires_safety_checker=False
    )
    sd.scheduler = DDIMScheduler.from_config(sd.scheduler.config)
    sd.set_progress_bar_config(disable=True)
    plain = sd(
        "a portrait photo",
        num_inference_steps=3,
        height=64,
        width=64,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
    ).images
    ours = run(pipe, [Person(photo(shared_faces, "obama/1.jpg"))], id_scale=0.0).images
    np.testing.assert_allclose(ours, plain, atol=1e-5)
    assert np.abs(run(pipe, [Person(photo(shared_faces, "obama/1.jpg"))]).images - plain).max() > 1e-4


def test_two_persons_with_boxes_and_with_automatic_layout(pipe, shared_faces):
    people = [photo(shared_faces, "obama/1.jpg"), photo(shared_faces, "rose_leslie/2.jpg")]
    boxed = run(
        pipe,
        [Person(people[0], box=(0.05, 0.1, 0.45, 0.6)), Person(people[1], box=(0.55, 0.1, 0.95, 0.6))],
        return_gate_maps=True,
    )
    assert boxed.metadata["boxes"] == [[0.05, 0.1, 0.45, 0.6], [0.55, 0.1, 0.95, 0.6]]
    assert not boxed.metadata["boxes_automatic"] and boxed.metadata["infer_end"] == 12
    assert boxed.gate_maps.shape == (1, 8, 8) and np.isfinite(boxed.gate_maps).all()
    auto = run(pipe, [Person(p) for p in people], height=64, width=96)
    assert auto.metadata["boxes_automatic"]
    assert auto.metadata["boxes"] == [list(b) for b in automatic_boxes(2, 96, 64)]


def test_automatic_layout_rule():
    two = automatic_boxes(2, 768, 768)
    np.testing.assert_allclose(two, [[0.1, 0.23, 0.4, 0.53], [0.6, 0.23, 0.9, 0.53]], atol=1e-9)
    wide = automatic_boxes(3, 1536, 512)  # one row of three
    assert len({round(b[1], 6) for b in wide}) == 1
    grid = automatic_boxes(4, 1024, 1024)  # two by two
    assert len({round(b[0], 6) for b in grid}) == 2 and len({round(b[1], 6) for b in grid}) == 2
    for boxes, (w, h) in ((two, (768, 768)), (wide, (1536, 512)), (grid, (1024, 1024))):
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            assert (x1 - x0) * w == pytest.approx((y1 - y0) * h)  # square in pixels
    assert automatic_boxes(1, 512, 512) == []


def test_imr_editing_changes_the_tokens_and_no_edit_leaves_them(pipe, shared_faces):
    out = run(
        pipe,
        [
            Person(photo(shared_faces, "obama/1.jpg")),
            Person(
                photo(shared_faces, "biden/1.jpg"), face_prompt="in a surprise expression, facing up, in front view"
            ),
        ],
    )
    plain, edited = out.persons
    assert not plain.edited and torch.equal(plain.tokens, plain.source_tokens)
    assert edited.edited and (edited.tokens - edited.source_tokens).abs().max() > 1e-4
    measured = pipe.face_analyzer.analyze(load_image(photo(shared_faces, "biden/1.jpg")).rgb, max_faces=1, embed=False)[
        0
    ]
    assert edited.source_face_prompt == measured.face_prompt  # what face analysis measured on the reference
    assert edited.source_face_prompt.endswith(", in side view, turned right")


def test_target_landmarks_from_a_prep_sheet(pipe, shared_faces, tmp_path):
    from PIL import Image

    from dynamicid.faces import landmark_image

    sheet = landmark_image.compose_landmark_png(np.random.default_rng(0).uniform(100, 400, (68, 2)), "ibug68")
    Image.fromarray(sheet).save(tmp_path / "target.png")
    out = run(pipe, [Person(photo(shared_faces, "obama/1.jpg"), target_landmarks=str(tmp_path / "target.png"))])
    assert out.persons[0].edited
    Image.fromarray(np.zeros((50, 50), np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(GenerationError, match="96x96 map or prep's 608x512"):
        run(pipe, [Person(photo(shared_faces, "obama/1.jpg"), target_landmarks=str(tmp_path / "bad.png"))])


@pytest.mark.parametrize(
    "case,match",
    [
        ("no_face", "no face was detected"),
        ("outside", "lies outside"),
        ("zero_area", "zero area"),
        ("size", "multiple of 32"),  # the VAE downsamples 8x, the UNet 4x more
        ("partial_boxes", "a box for every person"),
        ("no_images", r"num_images_per_prompt \(images\) must be at least 1, not 0"),
    ],
)
def test_bad_requests_fail_before_any_denoising(pipe, shared_faces, tmp_path, unet_calls, case, match):
    from PIL import Image
    from skimage import data

    obama = photo(shared_faces, "obama/1.jpg")
    persons = [Person(obama)]
    options = {}
    if case == "no_face":
        Image.fromarray(data.coffee()).save(tmp_path / "cup.png")
        persons = [Person(obama), Person(str(tmp_path / "cup.png"))]
    elif case == "outside":
        persons = [Person(obama, box=(0.5, 0.2, 1.3, 0.8))]
    elif case == "zero_area":
        persons = [Person(obama, box=(0.5, 0.2, 0.5, 0.8))]
    elif case == "size":
        options = {"height": 60}
    elif case == "partial_boxes":
        persons = [Person(obama, box=(0, 0, 0.5, 0.5)), Person(obama)]
    elif case == "no_images":
        options = {"num_images_per_prompt": 0}
    with pytest.raises(GenerationError, match=match):
        run(pipe, persons, **options)
    assert unet_calls == []


@pytest.mark.parametrize(
    "options,match",
    [
        (
            {"guidance_scale": float("inf")},
            r"guidance_scale \(guidance\) must be a finite number from 0 to 100, not inf",
        ),
        ({"id_scale": float("nan")}, "id_scale must be a finite number from 0 to 10, not nan"),
        ({"infer_scale": -1.0}, "infer_scale must be a finite number from 0 to 100, not -1"),
        ({"seed": 2**70}, "seed must be a finite number from -1 to"),
        ({"num_inference_steps": 1001}, r"num_inference_steps \(steps\) must be a finite number from 1 to 1000"),
        ({"num_inference_steps": 40, "max_work": 64 * 64 * 39}, "64x64 at 40 steps .* over the limit .*max_work"),
    ],
)
def test_the_python_call_checks_every_number_as_the_command_line_does(pipe, shared_faces, unet_calls, options, match):
    """Each of these once gave a black image or an internal error (issue 28)."""
    with pytest.raises(GenerationError, match=match):
        run(pipe, [Person(photo(shared_faces, "obama/1.jpg"), box=(0.1, 0.1, 0.9, 0.9))], **options)
    assert unet_calls == []


def test_more_boxes_than_persons_is_refused():
    with pytest.raises(LayoutError, match="at most one box per person"):
        check_boxes([(0, 0, 0.5, 0.5), (0.5, 0, 1, 0.5)], 1)


def test_missing_weights_are_named(tiny_models, tmp_path):
    with pytest.raises(CheckpointError, match="no DynamicID weights .* SAA.bin"):
        DynamicIDPipeline.from_pretrained(tiny_models["sd15"], str(tmp_path), tiny_models["clip-image"])
    with pytest.raises(CheckpointError, match="base model folder .* is missing unet"):
        DynamicIDPipeline.from_pretrained(str(tmp_path), tiny_models["dynamicid"], tiny_models["clip-image"])


def _generate_with(tiny_models):
    """`generate` with the tiny base model, DynamicID weights and CLIP."""
    return [
        "generate",
        "--base-model",
        tiny_models["sd15"],
        "--weights",
        tiny_models["dynamicid"],
        "--clip-image-encoder",
        tiny_models["clip-image"],
    ]


def test_cli_writes_images_sidecars_and_gate_maps_that_eval_reads(tiny_models, shared_faces, tmp_path, capsys):
    out = tmp_path / "gen"
    code = cli.main(
        [
            *_generate_with(tiny_models),
            "--prompt",
            "two friends",
            "--person",
            photo(shared_faces, "obama/1.jpg"),
            "--person",
            photo(shared_faces, "biden/2.jpg"),
            "--face-prompt",
            "-",
            "--face-prompt",
            "in a happy expression, in front view",
            "--name",
            "obama",
            "--name",
            "biden",
            "--steps",
            "2",
            "--height",
            "64",
            "--width",
            "64",
            "--seed",
            "5",
            "--output",
            str(out),
            "--save-gate-maps",
        ]
    )
    assert code == 0
    sidecar = json.loads((out / "dynamicid_0.json").read_text())
    assert sidecar["seed"] == 5 and sidecar["steps"] == 2 and len(sidecar["persons"]) == 2
    assert sidecar["persons"][1]["face_prompt"] == "in a happy expression, in front view"
    assert (out / "dynamicid_0.png").exists() and (out / "gates" / "dynamicid_0.png").exists()
    assert sidecar["gate_map"] == "gates/dynamicid_0.png"
    assert sidecar["face_analysis"]["embedder"] == "dlib-resnet"  # eval analyses the image the same way
    assert cli.main(["eval", str(out), str(tmp_path / "scores"), "--no-progress"]) == 0
    assert "eval: 1 image, 2 requested persons" in capsys.readouterr().out


def test_cli_refuses_extra_options(tiny_models, shared_faces, tmp_path, capsys):
    code = cli.main(
        [
            *_generate_with(tiny_models),
            "--prompt",
            "x",
            "--person",
            photo(shared_faces, "obama/1.jpg"),
            "--box",
            "0,0,.5,.5",
            "--box",
            ".5,0,1,.5",
            "--output",
            str(tmp_path),
        ]
    )
    assert code == 1 and "more box values (2) than persons (1)" in capsys.readouterr().err


# -- nothing overwritten silently, names that stay names, the output checked first (issues 25 §5, 28) ------


def _small_generate(tiny_models, shared_faces, out, *extra):
    argv = [*_generate_with(tiny_models), "--prompt", "a person", "--person", photo(shared_faces, "obama/1.jpg")]
    return cli.main([*argv, "--steps", "1", "--height", "64", "--width", "64", "--output", str(out), "-q", *extra])


def test_a_rerun_numbers_on_and_overwrite_replaces_without_leaving_old_gate_maps(tiny_models, shared_faces, tmp_path):
    out = tmp_path / "gen"
    assert _small_generate(tiny_models, shared_faces, out, "--save-gate-maps") == 0
    first = (out / "dynamicid_0.png").read_bytes()
    assert _small_generate(tiny_models, shared_faces, out, "--seed", "9") == 0
    assert (out / "dynamicid_0.png").read_bytes() == first  # kept
    assert (out / "dynamicid_1.png").exists() and (out / "dynamicid_1.json").exists()
    assert not (out / "gates" / "dynamicid_1.png").exists()
    assert _small_generate(tiny_models, shared_faces, out, "--seed", "9", "--overwrite") == 0
    assert (out / "dynamicid_0.png").read_bytes() == (out / "dynamicid_1.png").read_bytes()
    assert not (out / "gates" / "dynamicid_0.png").exists()  # the old map no longer sits beside a new image
    assert "gate_map" not in json.loads((out / "dynamicid_0.json").read_text())


@pytest.mark.parametrize("name", ["../../x", "/tmp/abs", "a/b", "..", ".hidden", ""])
def test_a_file_name_that_is_not_a_plain_name_is_refused(tiny_models, shared_faces, tmp_path, capsys, name):
    assert _small_generate(tiny_models, shared_faces, tmp_path / "gen", "--file-name", name) == 1
    assert "must be a plain name" in capsys.readouterr().err
    assert not any(tmp_path.parent.glob("x*.png")) and not (tmp_path / "gen").exists()


def test_an_output_that_is_a_file_or_cannot_be_made_is_refused_before_the_model_loads(
    tiny_models, shared_faces, tmp_path, capsys, monkeypatch
):
    from dynamicid.generation.pipeline import DynamicIDPipeline

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(DynamicIDPipeline, "from_pretrained", never)
    (tmp_path / "file").write_text("x")
    assert _small_generate(tiny_models, shared_faces, tmp_path / "file") == 1
    assert "is a file, not a folder" in capsys.readouterr().err
    assert _small_generate(tiny_models, shared_faces, tmp_path / "file" / "inner") == 1  # root can write anywhere
    assert "cannot be made" in capsys.readouterr().err


def test_weights_that_record_their_face_analysis_are_used_with_it_and_another_embedder_is_refused(
    tiny_models, tmp_path
):
    from dynamicid.errors import ConfigError
    from dynamicid.faces import FaceAnalysisConfig
    from dynamicid.models.checkpoints import load_ours, save_ours, unet_config_layout

    weights = load_ours(tiny_models["dynamicid"], unet_config_layout(f"{tiny_models['sd15']}/unet/config.json"))
    weights.face_analysis = {"embedder": "insightface", "embedder_model": "/models/buffalo_l", "detect_side": 640}
    save_ours(weights, str(tmp_path / "w"))
    parts = (tiny_models["sd15"], str(tmp_path / "w"), tiny_models["clip-image"])
    pipe = DynamicIDPipeline.from_pretrained(*parts)
    assert pipe.face_analysis_config.embedder == "insightface"
    assert pipe.face_analysis_config.embedder_model == "/models/buffalo_l"
    assert pipe.face_analysis_config.detect_side == 640
    with pytest.raises(ConfigError, match="trained on insightface embeddings, but the dlib-resnet embedder"):
        DynamicIDPipeline.from_pretrained(*parts, face_config=FaceAnalysisConfig(detect_side=320))
    same = FaceAnalysisConfig(embedder="insightface", embedder_model="/elsewhere/buffalo_l")
    assert DynamicIDPipeline.from_pretrained(*parts, face_config=same).face_analysis_config == same


def test_generate_refuses_a_face_prompt_outside_the_rule_naming_the_person(tiny_models, shared_faces, tmp_path, capsys):
    code = _small_generate(tiny_models, shared_faces, tmp_path / "gen", "--face-prompt", "looking furious")
    assert code == 1
    assert "person 1: 'looking furious' is not a face prompt" in capsys.readouterr().err


def test_a_prompt_past_the_text_encoders_77_tokens_is_named_in_a_warning_and_the_sidecar(
    tiny_models, shared_faces, tmp_path, caplog
):
    """The tiny tokenizer reads single letters, so 100 letters is over 77 tokens (issue 28: cut silently)."""
    long = "a portrait of a person " + "x" * 100
    base = [*_generate_with(tiny_models), "--person", photo(shared_faces, "obama/1.jpg")]
    small = ["--steps", "1", "--height", "64", "--width", "64", "--output", str(tmp_path)]
    assert cli.main([*base, *small, "--prompt", long]) == 0
    sidecar = json.loads((tmp_path / "dynamicid_0.json").read_text())
    assert sidecar["prompt"] == long and sidecar["prompt_cut"]
    assert long.replace(" ", "").endswith(sidecar["prompt_cut"].replace(" ", ""))
    assert "longer than the text encoder's 77 tokens" in caplog.text
    assert cli.main([*base, *small, "--prompt", "a person"]) == 0
    assert json.loads((tmp_path / "dynamicid_1.json").read_text())["prompt_cut"] is None
