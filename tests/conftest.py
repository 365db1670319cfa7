import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_FACES = REPO.parent / "shared" / "faces"


def _shared_missing() -> str | None:
    if (SHARED_FACES / "identities").is_dir():
        return None
    return f"real test photos not found at {SHARED_FACES} (see ../shared/faces/SOURCES.md)"


def pytest_sessionstart(session):
    """Under CI the real photos are part of the suite: their absence fails the run instead of skipping ~80 tests."""
    missing = _shared_missing()
    if missing and os.environ.get("CI", "").lower() == "true":
        pytest.exit(f"CI=true and {missing}; check out ../shared beside the repository", returncode=1)


def shared_faces_or_skip() -> Path:
    missing = _shared_missing()
    if missing:
        pytest.skip(missing)
    return SHARED_FACES


@pytest.fixture(scope="session")
def shared_faces() -> Path:
    return shared_faces_or_skip()


@pytest.fixture(scope="session")
def spark():
    """One local Spark for the whole session."""
    from dynamicid.prep.sparkenv import build_session

    session = build_session("local[2]", app_name="dynamicid-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def sample(tmp_path_factory):
    """The project's own sample input (make-sample) and what prep must record for each file."""
    from dynamicid.prep.sample import make_sample

    folder = tmp_path_factory.mktemp("sample")
    expected = make_sample(str(folder))
    return folder, expected


def before_curation(expected: dict) -> dict:
    """make-sample's expected statuses as the job records them, before curation rejects the near copies."""
    return {path: ("ok", None) if found == ("rejected", "duplicate") else found for path, found in expected.items()}


def copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


@pytest.fixture(scope="session")
def analyzer():
    from dynamicid.faces import FaceAnalyzer

    return FaceAnalyzer()


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright (its own browser download does not work here)."""
    if not chromium_path():
        pytest.skip("Chromium is not installed (make test installs it from Debian's packages)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield chromium
        chromium.close()


def readme_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block in the README."""
    import re

    return re.findall(r"^```(\w*)\n(.*?)^```", (REPO / "README.md").read_text(), flags=re.S | re.M)


def readme_block(first_line: str) -> str:
    """The one README block whose text starts with `first_line`."""
    (text,) = [text for _, text in readme_blocks() if text.startswith(first_line)]
    return text


def load_rgb(path):
    import numpy as np
    from PIL import Image, ImageOps

    return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))


os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """`make-tiny-models` output: DIR/sd15, DIR/clip-image, DIR/dynamicid."""
    from dynamicid.testing.tiny_models import make_tiny_models

    return make_tiny_models(str(tmp_path_factory.mktemp("tiny_models")))


@pytest.fixture(scope="session")
def tiny_pipe(tiny_models):
    """The generation pipeline on the tiny models, shared by the generation tests."""
    from dynamicid.generation import DynamicIDPipeline

    pipe = DynamicIDPipeline.from_pretrained(tiny_models["sd15"], tiny_models["dynamicid"], tiny_models["clip-image"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def identity_photo(shared_faces, name: str) -> str:
    return str(shared_faces / "identities" / name)


def generate_small(pipe, persons, **options):
    """Three steps at 64x64, seed 7, as numpy arrays, unless `options` say otherwise; the watermark off, as
    these tests compare the model's own pixels (marking rounds them to bytes; test_watermark covers it)."""
    settings = dict(num_inference_steps=3, height=64, width=64, seed=7, output_type="np", watermark=False) | options
    return pipe("a portrait photo", persons, **settings)


def prep_in_process(config):
    """prep's per-file work on every input, in this process, through the stage objects (no Spark): the
    manifest rows as a DataFrame, in path order. For tests of per-image logic; test_prep_pipeline runs Spark."""
    import pandas as pd

    from dynamicid.prep.discover import list_local
    from dynamicid.prep.process import PrepStage
    from dynamicid.prep.schema import COLUMN_NAMES

    listed = [(f.path, f.relative, f.identity, f.size, f.problem) for f in list_local(config.input, config.layout)]
    return pd.DataFrame(PrepStage(config).setup().process(listed), columns=COLUMN_NAMES)


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs `--dist loadgroup`), every test on the suite's Spark session runs in
    one worker, so Spark starts once per run; the other tests go by file, so module fixtures are built once.
    A test that takes the session only for some cases marks those itself (`xdist_group("spark")`)."""
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        group = "spark" if "spark" in getattr(item, "fixturenames", ()) else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))
