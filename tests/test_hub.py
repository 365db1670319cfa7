"""Models by Hugging Face repo id (issue 16), through the real `huggingface_hub` client pointed (HF_ENDPOINT)
at a small Hub on the loopback address that serves the tiny models: download, resolution, the offline
cache and the errors. The commands run as a user runs them, in a subprocess with their own environment."""

import io
import os
import subprocess
import sys
import zipfile

import pytest
from hub_server import HubServer

DEFAULT_BASE, DEFAULT_CLIP, DEFAULT_WEIGHTS = (
    "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "h94/IP-Adapter",
    "meteorite2023/DynamicID",
)


@pytest.fixture(scope="module")
def hub(tiny_models, tmp_path_factory):
    """Repos: the defaults' names (the tiny models under them), the authors' files in a subfolder, and a
    buffalo_l.zip of stand-in files."""
    from dynamicid.models.checkpoints import load_ours, save_authors, unet_config_layout

    root = tmp_path_factory.mktemp("hub_repos")
    clip_repo = root / "ip_adapter"
    os.makedirs(clip_repo / "models")
    os.symlink(tiny_models["clip-image"], clip_repo / "models" / "image_encoder")
    authors = root / "authors"
    layout = unet_config_layout(os.path.join(tiny_models["sd15"], "unet", "config.json"))
    save_authors(load_ours(tiny_models["dynamicid"], layout), str(authors / "weights" / "v1"))
    pack = io.BytesIO()
    with zipfile.ZipFile(pack, "w") as bundle:
        for name in ("det_10g.onnx", "w600k_r50.onnx", "2d106det.onnx", "1k3d68.onnx", "genderage.onnx"):
            bundle.writestr(f"buffalo_l/{name}", b"stand-in")
    (root / "buffalo_l.zip").write_bytes(pack.getvalue())
    repos = {
        DEFAULT_BASE: tiny_models["sd15"],
        DEFAULT_CLIP: str(clip_repo),
        DEFAULT_WEIGHTS: str(authors),
        "tiny/sd15": tiny_models["sd15"],
        "tiny/dynamicid": tiny_models["dynamicid"],
    }
    with HubServer(repos, {"buffalo_l.zip": str(root / "buffalo_l.zip")}) as server:
        yield server


def dynamicid(*args, home, hub=None, offline=False, timeout=300):
    env = dict(os.environ, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1")
    env.pop("HF_HUB_OFFLINE", None)
    if hub is not None:
        env["HF_ENDPOINT"] = hub.url
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "dynamicid.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_download_fetches_every_default_part_and_says_where(hub, tmp_path):
    done = dynamicid(
        "download",
        "--to",
        str(tmp_path / "models"),
        "--no-progress",
        "--face-pack-url",
        f"{hub.url}/files/buffalo_l.zip",
        home=tmp_path / "home",
        hub=hub,
    )
    assert done.returncode == 0, done.stderr
    parts = dict(line.split(None, 1) for line in done.stdout.strip().splitlines())
    assert set(parts) == {"base_model", "clip_image_encoder", "weights", "face_pack"}
    assert os.path.isfile(os.path.join(parts["base_model"], "unet", "config.json"))
    assert os.path.isfile(os.path.join(parts["clip_image_encoder"], "model.safetensors"))
    assert os.path.isfile(os.path.join(parts["weights"], "weights", "v1", "SAA.bin"))  # found below the top
    assert sorted(os.listdir(parts["face_pack"]))[0] == "1k3d68.onnx"
    assert all(path.startswith(str(tmp_path / "models")) for path in parts.values())
    # Only the files the pipeline reads: no fp16 duplicates, no .bin next to the safetensors.
    fetched = [f for _, _, files in os.walk(parts["base_model"]) for f in files]
    assert not any(".fp16." in f or f.endswith(".bin") for f in fetched)


@pytest.mark.slow  # generate in subprocesses, twice
def test_generate_by_repo_ids_then_offline_from_the_cache(hub, tmp_path, shared_faces):
    home = tmp_path / "home"
    photo = str(shared_faces / "identities" / "obama" / "1.jpg")
    args = [
        "generate",
        "--base-model",
        "tiny/sd15",
        "--weights",
        "tiny/dynamicid",
        "--clip-image-encoder",
        f"{DEFAULT_CLIP}/models/image_encoder",
        "--prompt",
        "a portrait",
        "--person",
        photo,
        "--steps",
        "2",
        "--height",
        "64",
        "--width",
        "64",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--no-progress",
    ]
    online = dynamicid(*args, "--output", str(tmp_path / "a"), home=home, hub=hub)
    assert online.returncode == 0, online.stderr
    assert (tmp_path / "a" / "dynamicid_0.png").exists()
    requests = len(hub.requests)
    offline = dynamicid(*args, "--output", str(tmp_path / "b"), home=home, hub=hub, offline=True)
    assert offline.returncode == 0, offline.stderr
    assert len(hub.requests) == requests  # not one request: everything came from the cache
    assert (tmp_path / "b" / "dynamicid_0.png").read_bytes() == (tmp_path / "a" / "dynamicid_0.png").read_bytes()


@pytest.mark.parametrize(
    "case,words",
    [
        ("missing_repo", ["nobody/nothing", "the Hub has no repo"]),
        ("missing_folder", ["tiny/sd15", "no folder 'nowhere'"]),
        ("offline_not_cached", ["tiny/sd15", "not in the Hugging Face cache", "HF_HUB_OFFLINE"]),
        ("dot_dot", ["tiny/sd15/unet/../../..", "without '.', '..'"]),  # issue 28: it escaped the snapshot
    ],
)
def test_hub_errors_are_one_clear_paragraph(hub, tmp_path, shared_faces, case, words):
    base = {
        "missing_repo": "nobody/nothing",
        "missing_folder": "tiny/sd15/nowhere",
        "offline_not_cached": "tiny/sd15",
        "dot_dot": "tiny/sd15/unet/../../..",
    }[case]
    done = dynamicid(
        "generate",
        "--base-model",
        base,
        "--weights",
        "tiny/dynamicid",
        "--clip-image-encoder",
        f"{DEFAULT_CLIP}/models/image_encoder",
        "--prompt",
        "p",
        "--person",
        str(shared_faces / "identities" / "obama" / "1.jpg"),
        "--output",
        str(tmp_path / "o"),
        home=tmp_path / "empty_home",
        hub=hub,
        offline=case == "offline_not_cached",
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    message = [line for line in done.stderr.splitlines() if line.startswith("dynamicid generate: error:")]
    assert len(message) == 1, done.stderr
    for word in words:
        assert word in message[0], (word, message[0])


# -- the face pack: nothing half-written (issue 25 §5) ------------------------------------------------------


def _pack_bytes(cut: int | None = None) -> bytes:
    pack = io.BytesIO()
    with zipfile.ZipFile(pack, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name in ("det_10g.onnx", "w600k_r50.onnx", "2d106det.onnx", "1k3d68.onnx", "genderage.onnx"):
            bundle.writestr(f"buffalo_l/{name}", os.urandom(200_000))
    data = pack.getvalue()
    if cut is None:
        return data
    return data[:cut] + bytes(len(data) - cut)  # the same length, the tail zeroed: members fail their CRC


def test_a_corrupt_face_pack_is_a_message_and_leaves_nothing_behind(tmp_path):
    from dynamicid.hub import HubError, fetch_buffalo_l

    (tmp_path / "bad.zip").write_bytes(_pack_bytes(cut=300_000))
    (tmp_path / "good.zip").write_bytes(_pack_bytes())
    files = {"bad.zip": str(tmp_path / "bad.zip"), "good.zip": str(tmp_path / "good.zip")}
    target = tmp_path / "cache" / "buffalo_l"
    with HubServer({}, files) as server:
        with pytest.raises(HubError, match="fetching .*bad.zip failed"):
            fetch_buffalo_l(f"{server.url}/files/bad.zip", str(target), progress=False)
        assert os.listdir(tmp_path / "cache") == []  # no archive, no partial folder, no target
        # A pack cut short by a kill -9 (no record, a truncated file) is fetched again, not accepted.
        os.makedirs(target)
        for name in ("det_10g.onnx", "w600k_r50.onnx", "2d106det.onnx", "1k3d68.onnx", "genderage.onnx"):
            (target / name).write_bytes(b"cut")
        folder = fetch_buffalo_l(f"{server.url}/files/good.zip", str(target), progress=False)
        assert os.path.getsize(os.path.join(folder, "w600k_r50.onnx")) == 200_000
        assert sorted(os.listdir(tmp_path / "cache")) == ["buffalo_l"]
        # A complete pack is reused; one whose file was cut afterwards is fetched again.
        stamp = os.stat(os.path.join(folder, "det_10g.onnx")).st_mtime_ns
        assert fetch_buffalo_l(f"{server.url}/files/bad.zip", str(target), progress=False) == folder
        assert os.stat(os.path.join(folder, "det_10g.onnx")).st_mtime_ns == stamp
        with open(os.path.join(folder, "det_10g.onnx"), "r+b") as handle:
            handle.truncate(1000)
        fetch_buffalo_l(f"{server.url}/files/good.zip", str(target), progress=False)
        assert os.path.getsize(os.path.join(folder, "det_10g.onnx")) == 200_000


def test_a_face_pack_url_that_is_not_a_url_is_a_message(tmp_path):
    done = dynamicid("download", "--to", str(tmp_path), "--face-pack-url", "not a url", home=tmp_path / "home")
    assert done.returncode == 1, done.stderr
    assert "not an http(s) URL" in done.stderr and "Traceback" not in done.stderr


def test_download_fp16_falls_back_to_full_precision_and_a_repo_without_the_files_is_named(hub, tiny_models, tmp_path):
    """The tiny base repo has no fp16 files (issue 28: --fp16 exited 0 with no weights downloaded), and a weights
    repo without the authors' files said "has no folder None" under a raw Hub warning."""
    args = ["download", "--no-progress", "--face-pack-url"]
    done = dynamicid(
        *args, f"{hub.url}/files/buffalo_l.zip", "--fp16", "--to", str(tmp_path / "a"), home=tmp_path / "home", hub=hub
    )
    assert done.returncode == 0, done.stderr
    assert "has no fp16 files; using its full-precision files" in done.stderr
    base = dict(line.split(None, 1) for line in done.stdout.strip().splitlines())["base_model"]
    assert os.path.isfile(os.path.join(base, "unet", "diffusion_pytorch_model.safetensors"))

    no_weights = {
        DEFAULT_BASE: tiny_models["sd15"],
        DEFAULT_CLIP: hub.repos[DEFAULT_CLIP],
        DEFAULT_WEIGHTS: tiny_models["sd15"],
    }
    with HubServer(no_weights, hub.files) as other:
        done = dynamicid(
            *args, f"{other.url}/files/buffalo_l.zip", "--to", str(tmp_path / "b"), home=tmp_path / "home2", hub=other
        )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert (
        "the repo meteorite2023/DynamicID has none of the files weights needs "
        "(*SAA.bin, *IMR.bin, *key_point_encoder.bin)" in done.stderr
    )
    assert "None" not in done.stderr and "No files matched" not in done.stderr
