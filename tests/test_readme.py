"""The README's code blocks: those a machine without real models can run are run as written (issue 25 §4,
§6); every other block is listed below with the reason it is not, so a new block cannot slip in unrun."""

import os
import shlex
from pathlib import Path

import pandas as pd
import pytest
from conftest import readme_block, readme_blocks

README = Path(__file__).parent.parent / "README.md"

# First line of each block a test runs, and the test (its file holds a test of that name).
RUN = {
    "dynamicid make-tiny-models tiny": "tests/test_readme.py::test_the_tiny_walkthrough_runs_as_written",
    ".venv/bin/dynamicid prep photos/ dataset/": "tests/test_readme.py::test_the_tiny_walkthrough_runs_as_written",
    ".venv/bin/dynamicid eval generated/": "tests/test_readme.py::test_the_tiny_walkthrough_runs_as_written",
    "import torch": "tests/test_readme.py::test_the_python_example_runs_as_written",
    "dynamicid collect urls.csv photos/": "tests/test_curation.py::test_the_readme_url_list_example_runs",
    "import json": "tests/test_serve.py::test_the_readme_api_examples_run_against_a_live_server",
    "# tiny.toml": "tests/test_readme.py::test_the_tiny_recipe_runs_as_written",
    "# first: dynamicid make-tiny-models tiny": "tests/test_readme.py::test_the_tiny_recipe_runs_as_written",
    "# the same with curl": "tests/test_serve.py::test_the_readme_api_examples_run_against_a_live_server",
    "dynamicid review dataset/": (
        "tests/test_review.py::test_merge_rename_move_and_reject_are_applied_and_survive_a_rerun_with_new_photos"
    ),
}

# First line of each block that is not run, and why.
NOT_RUN = {
    "# faces-v1.toml": "real SD1.5 and CLIP weights, 25,000 training steps (the tiny recipe is run)",
    "dynamicid run faces-v1.toml": "the recipe above, on real weights; test_recipe runs every stage on tiny models",
    "make demo   #": "the two commands themselves: CI runs `make test`, and the demo's job is tested",
    "OUTPUT/": "a picture of the output layout, not commands",
    "url,identity,caption": "a URL list's text, not commands (test_collect collects lists like it)",
    "src/dynamicid/": "a picture of the source layout, not commands",
    "dynamicid prep hdfs://": "a Spark cluster and HDFS",
    "dynamicid generate --base-model sd15/": "real SD1.5, CLIP and DynamicID weights",
    "dynamicid generate --person ann.jpg": "the default models, fetched from the Hugging Face Hub",
    "dynamicid serve ": "a server that runs until stopped (test_serve starts it)",
    "dynamicid train anchor dataset/ runs/anchor --base-model sd15/": "100,000 steps on real SD1.5 weights",
    "accelerate launch --multi_gpu": "several GPUs (test_training runs the CPU form with torchrun)",
    "# prep.toml": "a configuration file's text (test_options reads --config files)",
    "dynamicid prep photos/ dataset/ --detector insightface": "InsightFace's buffalo_l weights",
    "dynamicid prep photos/ dataset/ --captioner internvl": "InternVL weights",
    "spark-submit": "a Spark cluster",
}


def test_every_block_is_run_by_a_named_test_or_listed_with_its_reason():
    unlisted = []
    for _, text in readme_blocks():
        first = text.strip().splitlines()[0]
        if not any(first.startswith(prefix) for prefix in RUN | NOT_RUN):
            unlisted.append(first)
    assert unlisted == [], "README blocks neither run by a test nor listed in NOT_RUN with a reason"
    for test in set(RUN.values()):
        file, name = test.split("::")
        assert f"def {name}(" in (README.parent / file).read_text(), f"{test} does not exist"


def test_the_python_example_runs_as_written(tiny_models, shared_faces, tmp_path, monkeypatch):
    (code,) = [text for language, text in readme_blocks() if language == "python" and text.startswith("import torch")]
    for name, target in (("sd15", "sd15"), ("weights", "dynamicid"), ("clip-image", "clip-image")):
        os.symlink(tiny_models[target], tmp_path / name)
    for name, photo in (("ann.jpg", "obama/1.jpg"), ("bob.jpg", "biden/2.jpg")):
        os.symlink(shared_faces / "identities" / photo, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    side = scope["side"]
    assert len(scope["out"].images) == 1 and scope["out"].images[0].size == (side, side)
    assert len(scope["more"].images) == 2 and scope["out"].metadata["boxes"][1] == [0.55, 0.2, 0.95, 0.6]


def _run_lines(code: str) -> None:
    """Each command line of a README block through the command's entry point in this process, as `bash -e`
    would run them (a backslash joins lines; any failure stops the block). This reuses the session's Spark
    and imports: a fresh interpreter and JVM per line cost about 20 s each. The console script itself is
    run in a subprocess by test_cli_and_env."""
    from dynamicid import cli

    for line in code.replace("\\\n", " ").splitlines():
        program, *argv = shlex.split(line, comments=True)
        assert program in ("dynamicid", ".venv/bin/dynamicid"), line
        try:
            code_ = cli.main(argv)
        except SystemExit as exit_:  # --help exits, as argparse does
            code_ = exit_.code
        assert code_ == 0, line


@pytest.mark.slow
def test_the_tiny_walkthrough_runs_as_written(tmp_path, spark, monkeypatch, capsys):
    from dynamicid.testing.cli import walkthrough

    (code,) = [text for language, text in readme_blocks() if text.startswith("dynamicid make-tiny-models tiny")]
    assert code == walkthrough("tiny")
    monkeypatch.chdir(tmp_path)
    _run_lines(code)
    assert (tmp_path / "runs" / "reconfig" / "weights" / "dynamicid.json").exists()
    assert (tmp_path / "generated" / "dynamicid_0.png").exists() and (tmp_path / "scores" / "report.html").exists()
    out = capsys.readouterr().out
    assert "Try every command on them" in out
    printed = out.split("(images are noise):\n\n", 1)[1]
    assert printed.startswith(
        walkthrough(str(tmp_path / "tiny")).split("\n", 1)[1].replace(str(tmp_path / "tiny"), "tiny")
    )
    _run_the_prep_and_eval_blocks_on_what_the_walkthrough_made(tmp_path)


def _run_the_prep_and_eval_blocks_on_what_the_walkthrough_made(folder: Path) -> None:
    """The user's photos/ and generated/ are the walkthrough's, and the CLIP model the eval block names is the
    tiny one. Each line goes through the command's entry point in this process, which reuses the session's
    Spark, as the walkthrough above does."""
    with open(folder / "pairs.csv", "w") as handle:
        handle.write("image,person,reference,face_prompt,prompt,box\n")
        handle.write("generated/dynamicid_0.png,astronaut,photos/astronaut/original.png,,a photo of a person,\n")
    for first_line in (".venv/bin/dynamicid prep photos/ dataset/", ".venv/bin/dynamicid eval generated/"):
        _run_lines(readme_block(first_line).replace("/models/clip-vit-l-14", "tiny/clip"))
    multi_face = pd.read_parquet(folder / "dataset" / "manifest.parquet")
    assert (multi_face.status == "ok").sum() >= 1
    scores = pd.read_parquet(folder / "eval_out" / "scores.parquet")
    assert len(scores) == 1 and scores.clip_t.notna().all()  # pairs.csv, the last block run, with CLIP-T


@pytest.mark.slow  # a Spark job and every stage
def test_the_tiny_recipe_runs_as_written(tmp_path, spark, monkeypatch, capsys):
    """The README's tiny recipe and its commands, run in this process (the session's Spark)."""
    import json
    import re

    from dynamicid import cli

    recipe = readme_block("# tiny.toml")
    commands = readme_block("# first: dynamicid make-tiny-models tiny").splitlines()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(recipe)
    first = commands[0].removeprefix("# first: ").split(";")
    for line in [*first, *commands[1:]]:
        program, *argv = shlex.split(line, comments=True)
        assert program == "dynamicid" and cli.main(argv) == 0, line
    out = capsys.readouterr().out
    plans = out.split("plan for tiny.toml")[1:]
    assert len(plans) == 3 and " run " not in plans[1].split("\n\n")[0]  # the second run does nothing
    assert re.search(r"eval +run +forced \(--force\)", plans[2]) and re.search(
        r"publish +run +eval runs before", plans[2]
    )
    assert json.loads((tmp_path / "models/tiny/dynamicid_run.json").read_text())["version"] == 1
    assert os.path.exists("runs/tiny/report.html") and os.path.exists("runs/tiny/eval/report.html")
