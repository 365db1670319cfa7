"""InternVL captions: a tiny random InternVL (transformers' own classes) and a tokenizer built at test time,
loaded through the real folder-loading code; the guard on its text; batching inside prep."""

import json
import shutil

import pandas as pd
import pytest

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "InternVLForConditionalGeneration"):
    pytest.skip("this transformers has no InternVL", allow_module_level=True)

from dynamicid.faces.backends import BackendError, create  # noqa: E402
from dynamicid.faces.backends.internvl_backend import PREFILL, InternVLCaptioner, image_seq_length  # noqa: E402
from dynamicid.faces.caption import CaptionGuard, caption_from_description, guard_description  # noqa: E402
from dynamicid.testing.tiny_models import CHATML_TEMPLATE, tiny_internvl  # noqa: E402

FACTS = {"face_prompt": "with a smile, looking ahead", "grayscale": False}


def make_tiny_internvl(folder, chat_template=CHATML_TEMPLATE):
    tiny_internvl(str(folder), chat_template=chat_template)
    return folder


@pytest.fixture(scope="module")
def internvl_folder(tmp_path_factory):
    return make_tiny_internvl(tmp_path_factory.mktemp("internvl") / "InternVL-tiny-hf")


@pytest.fixture(scope="module")
def faces(shared_faces, analyzer):
    from conftest import load_rgb

    photos = ["identities/obama/1.jpg", "identities/obama/4.jpg", "identities/biden/1.jpg"]
    return [analyzer.analyze(load_rgb(shared_faces / p), max_faces=1)[0] for p in photos]


# -- the guard --------------------------------------------------------------------------------------


def test_guard_cuts_length_back_to_a_whole_clause():
    text = "A photo of a man in a grey suit, standing in a busy office, " + " ".join(f"word{i}" for i in range(30))
    guarded = guard_description(text, CaptionGuard(max_words=20))
    assert guarded == "a photo of a man in a grey suit, standing in a busy office"


def test_guard_cuts_repetition():
    assert guard_description("A photo of a man a man a man in a park") == "a photo of a man"  # a loop ends the text
    assert guard_description("A photo of the the dog in the park") == "a photo of the dog in the park"
    assert guard_description("A photo of a red hat, a red hat, a red hat") == "a photo of a red hat"


@pytest.mark.parametrize(
    "text",
    [
        "A photo of Barack Obama in a suit.",
        "A photo of a man named John at a desk.",
        "A photo of a man who looks like a famous actor.",
        "A photo of a celebrity at an event.",
    ],
)
def test_guard_drops_sentences_that_name_or_identify_people(text):
    assert guard_description(text) is None
    assert caption_from_description(guard_description(text), FACTS) == (
        "a close-up photo of a person's face, with a smile, looking ahead"
    )


def test_guard_keeps_the_other_sentences_and_ordinary_capitals():
    text = "A photo of a woman in a red coat in the snow. Behind her stands Joe Biden."
    assert guard_description(text) == "a photo of a woman in a red coat in the snow"
    assert guard_description("A photo of a man in a Grey suit, Black and White style") == (
        "a photo of a man in a Grey suit, Black and White style"
    )
    assert guard_description("A photo of a person with a TV") == "a photo of a person with a TV"


def test_caption_is_the_description_then_the_measured_face_prompt():
    assert caption_from_description("a photo of a man in a park", FACTS) == (
        "a photo of a man in a park, with a smile, looking ahead"
    )


# -- the model ----------------------------------------------------------------------------------------


def test_tokens_per_tile_follow_the_model_config():
    config = {"vision_config": {"image_size": [448, 448], "patch_size": [14, 14]}, "downsample_ratio": 0.5}
    assert image_seq_length(config, {}) == 256  # InternVL-2B's 448 px tile
    assert image_seq_length(config, {"image_seq_length": 64}) == 64


def test_loads_from_a_folder_and_captions_faces_in_a_batch(internvl_folder, faces):
    captioner = create("captioner", "internvl", str(internvl_folder), max_new_tokens=12, batch_size=2)
    assert captioner.model_id.startswith("internvl:InternVL-tiny-hf:") and len(captioner.model_id.split(":")[-1]) == 12
    context_tokens = captioner.prompt.count("<IMG_CONTEXT>")
    assert context_tokens == image_seq_length(json.loads((internvl_folder / "config.json").read_text()), {}) == 4
    assert captioner.prompt.endswith("<|im_start|>assistant\n" + PREFILL)

    images = [face.aligned for face in faces]
    pixels = captioner.pixel_values(images)
    assert pixels.shape == (3, 3, 56, 56) and abs(float(pixels.mean())) < 3

    batched = captioner.describe(images)  # batches of 2 then 1
    one_by_one = [captioner.describe([image])[0] for image in images]
    assert batched == one_by_one
    static = create("captioner", "internvl", str(internvl_folder), max_new_tokens=12, batch_size=3, static_cache=True)
    assert static.describe(images) == batched  # issue 29: the static KV cache changes no caption
    assert len(captioner.tokenizer(batched[0])["input_ids"]) <= 12

    facts = [{"face_prompt": face.face_prompt, "grayscale": False} for face in faces]
    captions = captioner.caption_batch(images, facts)
    for caption, raw, fact in zip(captions, batched, facts):
        expected = guard_description(f"{PREFILL} {raw}")
        assert caption == caption_from_description(expected, fact)
        assert caption.endswith(fact["face_prompt"])


def test_text_generation_stops_at_the_token_limit(internvl_folder, faces):
    short = InternVLCaptioner(str(internvl_folder), max_new_tokens=3)
    longer = InternVLCaptioner(str(internvl_folder), max_new_tokens=12)
    image = [faces[0].aligned]
    short_words, longer_words = short.describe(image)[0].split(), longer.describe(image)[0].split()
    assert len(short_words) <= 3 < len(longer_words)
    assert longer_words[: len(short_words)] == short_words  # greedy: the same text, cut earlier


def test_a_folder_without_chat_template_uses_chatml(tmp_path):
    folder = make_tiny_internvl(tmp_path / "plain", chat_template=None)
    captioner = InternVLCaptioner(str(folder), max_new_tokens=2)
    assert captioner.prompt.startswith("<|im_start|>user\n<img><IMG_CONTEXT>")


def test_missing_or_wrong_folders_are_named(internvl_folder, tmp_path):
    with pytest.raises(BackendError, match="InternVL model folder not found.*InternVL3-2B-hf"):
        create("captioner", "internvl", str(tmp_path / "nowhere"))
    with pytest.raises(BackendError, match="no config.json"):
        create("captioner", "internvl", str(tmp_path))

    other = tmp_path / "clip"
    shutil.copytree(internvl_folder, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(config | {"model_type": "internvl_chat"}))
    with pytest.raises(BackendError, match="trust_remote_code.*-hf"):
        create("captioner", "internvl", str(other))

    no_weights = tmp_path / "no_weights"
    shutil.copytree(internvl_folder, no_weights)
    for weights in no_weights.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(BackendError, match="no \\*.safetensors"):
        create("captioner", "internvl", str(no_weights))

    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(internvl_folder, no_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / name).unlink()
    with pytest.raises(BackendError, match="no tokenizer"):
        create("captioner", "internvl", str(no_tokenizer))

    mismatched = tmp_path / "mismatched"
    shutil.copytree(internvl_folder, mismatched)
    config = json.loads((mismatched / "config.json").read_text())
    (mismatched / "config.json").write_text(json.dumps(config | {"image_token_id": 5}))
    with pytest.raises(BackendError, match="image token '<IMG_CONTEXT>' has id 6, but the model expects 5"):
        create("captioner", "internvl", str(mismatched))


# -- inside prep --------------------------------------------------------------------------------------


def _copy_photos(shared_faces, target, names):
    for person, name in names:
        (target / person).mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_faces / "identities" / person / name, target / person / name)
    return target


def test_prep_captions_with_internvl_and_records_it(internvl_folder, shared_faces, tmp_path):
    from conftest import prep_in_process

    from dynamicid.prep import PrepConfig

    source = _copy_photos(shared_faces, tmp_path / "in", [("obama", "1.jpg"), ("obama", "4.jpg"), ("biden", "1.jpg")])
    config = PrepConfig(
        input=str(source),
        output=str(tmp_path / "out"),
        progress=False,
        captioner="internvl",
        captioner_model=str(internvl_folder),
        caption_max_tokens=8,
    )
    manifest = prep_in_process(config)
    assert (manifest.status == "ok").all() and len(manifest) == 3
    assert manifest.captioner_model.str.startswith("internvl:InternVL-tiny-hf:").all()
    for row in manifest.itertuples():
        assert row.caption.endswith(row.face_prompt)
        text = (tmp_path / "out" / "images" / row.identity / f"{row.name}.txt").read_text().strip()
        assert text == row.caption


class FailingOnOneFace:
    """Captions in batches, but fails on any batch holding the second face of the first batch it sees."""

    name, model_id = "failing", "failing-v1"

    def __init__(self, fail: bool = True):
        self.fail = fail
        self.bad = None
        self.batches = []

    def caption_batch(self, images, facts):
        self.batches.append(len(images))
        if self.fail and self.bad is None:
            self.bad = id(images[1])
        if any(id(image) == self.bad for image in images):
            raise RuntimeError("CUDA out of memory (simulated)")
        return [f"a photo of a person, {fact['face_prompt']}" for fact in facts]


def _stage_and_three_files(shared_faces, tmp_path):
    """A prep stage (default backends) and a batch of three real photos, two people."""
    from dynamicid.prep import PrepConfig
    from dynamicid.prep.process import PrepStage

    photos = [("obama", "1.jpg"), ("obama", "4.jpg"), ("biden", "1.jpg")]
    source = _copy_photos(shared_faces, tmp_path / "in", photos)
    config = PrepConfig(input=str(source), output=str(tmp_path / "out"), progress=False)
    files = pd.DataFrame(
        [(str(source / p / n), f"{p}/{n}", p) for p, n in photos], columns=["path", "relative", "identity"]
    )
    return PrepStage(config).setup(), files


def test_one_failing_face_gets_caption_error_and_is_retried_on_rerun(shared_faces, tmp_path):
    stage, files = _stage_and_three_files(shared_faces, tmp_path)
    stage.shared.captioner = FailingOnOneFace()
    rows = stage.process_batch(files)
    assert stage.shared.captioner.batches == [3, 1, 1, 1]  # the whole batch at once, then face by face
    assert list(rows.status) == ["ok", "error", "ok"]
    assert rows.reason[1] == "caption_error" and "out of memory" in rows.message[1]
    assert [p.name for p in (tmp_path / "out" / "images" / "obama").glob("*.txt")] == [f"{rows.name[0]}.txt"]

    stage.shared.captioner = FailingOnOneFace(fail=False)  # the GPU is free again
    rerun = stage.process_batch(files)
    assert list(rerun.status) == ["ok", "ok", "ok"]
    assert list(rerun.resumed) == [True, False, True]
    assert stage.shared.captioner.batches == [1]


def test_one_face_the_embedder_fails_on_is_an_error_row_and_the_rest_are_kept(shared_faces, tmp_path, monkeypatch):
    """The embedding network runs over the task's faces at once; a face it fails on costs only itself."""
    stage, files = _stage_and_three_files(shared_faces, tmp_path)
    embedder = stage.shared.analyzer.embedder
    real_prepare, real_embed = embedder.prepare, embedder.embed_prepared
    chips, batches = [], []

    def prepare(*args, **kwargs):
        chips.append(real_prepare(*args, **kwargs))
        return chips[-1]

    def embed_prepared(inputs):
        batches.append(len(inputs))
        if any(x is chips[0] for x in inputs):  # the first file's face breaks the network
            raise RuntimeError("embedding failed (simulated)")
        return real_embed(inputs)

    monkeypatch.setattr(embedder, "prepare", prepare)
    monkeypatch.setattr(embedder, "embed_prepared", embed_prepared)
    rows = stage.process_batch(files)
    assert batches == [3, 1, 1, 1]  # the whole batch, then face by face
    assert list(rows.status) == ["error", "ok", "ok"]
    assert rows.reason[0] == "internal_error" and "embedding failed" in rows.message[0]
    monkeypatch.undo()
    rerun = stage.process_batch(files)
    assert list(rerun.status) == ["ok", "ok", "ok"] and list(rerun.resumed) == [False, True, True]
