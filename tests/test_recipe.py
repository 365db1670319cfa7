"""`dynamicid run RECIPE`: the whole loop on tiny models (photos on a loopback web server -> collect -> prep
-> 2 anchor steps -> 2 reconfig steps -> eval -> gate -> publish -> a server that switches to the newly
published model), reruns that do only what changed, and the recipe's checks."""

import dataclasses
import json
import os
import re
import subprocess
import sys
import time

import pandas as pd
import pytest

from dynamicid import cli
from dynamicid.errors import ConfigError
from dynamicid.evaluation.heldout import held_out_identities
from dynamicid.recipe.recipe import read_recipe
from dynamicid.recipe.runner import plan
from dynamicid.recipe.state import RunState

RECIPE = """\
[run]
output = "runs/faces"
base_model = "{tiny}/sd15"
clip_image_encoder = "{tiny}/clip-image"

[collect]
urls = "urls.csv"
allow_addresses = "127.0.0.1/32"  # the tests' photo server is on the loopback address

[prep]
split = "{split}"
split_seed = 1  # with 0.5,0,0.5, train: alex_lacamoire, biden, kit_harington; test: rose_leslie, obama

[train.anchor]
steps = 2
batch_size = 2
resolution = 64
lora_rank = 4

[train.reconfig]
steps = 2
resolution = 64
max_targets = 2

[eval]
steps = 2
height = 64
seed = {seed}

[gate]
min_detection_rate = 0.0
champion = {champion}

[publish]
to = "models/faces"
"""


def _write_recipe(folder, tiny, seed=0, champion="true", split="0.5,0,0.5"):
    path = folder / "recipe.toml"
    path.write_text(RECIPE.format(tiny=os.path.dirname(tiny["sd15"]), seed=seed, champion=champion, split=split))
    return str(path)


def _url_list(folder, server_url, people: dict) -> None:
    rows = [(f"{server_url}/file/{key}", person) for key, (_, person) in people.items()]
    pd.DataFrame(rows, columns=["url", "identity"]).to_csv(folder / "urls.csv", index=False)


def _ran(capsys) -> list[str]:
    """The stages the last run's plan said it runs."""
    return _ran_in(capsys.readouterr().out)


def _ran_in(out: str) -> list[str]:
    plan_lines = out.split("plan for", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    return [line.split()[0] for line in plan_lines if line.split()[1] == "run"]


def _served_version(engine, photo) -> str:
    from dynamicid.generation.request import Settings
    from dynamicid.serving.engine import GenerationRequest, PersonRequest

    settings = Settings(steps=2, height=64, width=64)
    return engine.generate(GenerationRequest("a portrait", [PersonRequest(photo)], settings)).sidecars[0][
        "model_version"
    ]


@pytest.mark.slow  # a Spark job, four training runs, eval, publish
def test_the_whole_recipe_reruns_only_what_changed_and_the_server_switches(
    spark, shared_faces, tiny_models, tmp_path, monkeypatch, capsys
):
    from photo_server import PhotoServer

    from dynamicid.generation import DynamicIDPipeline
    from dynamicid.serving.engine import Engine
    from dynamicid.serving.reload import ModelWatch

    monkeypatch.chdir(tmp_path)
    faces = shared_faces / "identities"
    people = {
        f"{person}-{photo.stem}": (str(photo), person)
        for person in ("alex_lacamoire", "biden", "kit_harington", "rose_leslie")
        for photo in sorted((faces / person).iterdir())
    }
    later = {f"obama-{p.stem}": (str(p), "obama") for p in sorted((faces / "obama").iterdir())[:3]}
    with PhotoServer({key: path for key, (path, _) in (people | later).items()}) as server:
        _url_list(tmp_path, server.url, people)
        recipe = _write_recipe(tmp_path, tiny_models)
        assert cli.main(["run", recipe]) == 0
        assert _ran(capsys) == ["collect", "prep", "train.anchor", "train.reconfig", "eval", "gate", "publish"]
        record = json.loads((tmp_path / "runs/faces/run.json").read_text())["stages"]
        assert {stage: r["status"] for stage, r in record.items()} == dict.fromkeys(record, "done")
        published = tmp_path / "models/faces"
        assert json.loads((published / "dynamicid_run.json").read_text())["version"] == 1
        assert (published / "model_index.json").exists() and "## Evaluation and the gate" in (
            published / "README.md"
        ).read_text()
        report = (tmp_path / "runs/faces/report.html").read_text()
        assert all(link in report for link in ("dataset/dataset_card.html", "anchor/loss.png", "eval/report.html"))

        # Served from the published folder: requests name the version they were made with.
        load = lambda reference: DynamicIDPipeline.from_pretrained(reference)  # noqa: E731
        engine = Engine(load(str(published)), watch=ModelWatch(str(published), load))
        photo = str(faces / "biden" / sorted(os.listdir(faces / "biden"))[0])
        assert _served_version(engine, photo).startswith("version 1")

        # Nothing changed: nothing runs, and the command (a new process) says so quickly.
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "dynamicid.cli", "run", recipe], capture_output=True, text=True, check=False
        )
        seconds = time.perf_counter() - started
        assert done.returncode == 0 and "0 stage(s) run" in done.stdout and seconds < 10, (seconds, done.stdout)

        # Another eval seed: eval, gate and publish only. The weights are those already published: nothing new
        # to publish, said plainly, and not a failure; the server keeps version 1.
        _write_recipe(tmp_path, tiny_models, seed=1)
        assert cli.main(["run", recipe]) == 0
        out = capsys.readouterr().out
        assert _ran_in(out) == ["eval", "gate", "publish"] and "nothing new to publish: version 1" in out
        stages = json.loads((tmp_path / "runs/faces/run.json").read_text())["stages"]
        assert stages["gate"]["status"] == "done" and stages["gate"]["unchanged"] == 1
        assert json.loads((published / "dynamicid_run.json").read_text())["version"] == 1
        assert _served_version(engine, photo).startswith("version 1")
        assert cli.main(["run", recipe]) == 0 and _ran(capsys) == []  # and it stays up to date

        # A garbled published config: the plan checks outputs, not only folders; publish runs again and puts
        # a whole model in place, as a new version.
        (published / "model_index.json").write_text("{garbled")
        assert cli.main(["run", recipe, "--dry-run"]) == 0
        assert "publish         run   its output changed" in capsys.readouterr().out
        assert cli.main(["run", recipe]) == 0 and _ran(capsys) == ["publish"]
        assert json.loads((published / "model_index.json").read_text())["_class_name"] == "DynamicIDPipeline"
        assert json.loads((published / "dynamicid_run.json").read_text())["version"] == 2

        # A deleted weights file: stage 2 runs again, anew (its weights are damaged). On a CPU the retrained
        # weights are either the published ones bit for bit (torch's threads may sum in the same order or not):
        # nothing new to publish, exit 0; or they differ in the last bits and score the same: a tie, refused
        # with advice that names the ways out. Either way version 2 stays.
        os.remove(tmp_path / "runs/faces/reconfig/weights/imr.safetensors")
        assert cli.main(["run", recipe, "--dry-run"]) == 0
        assert "train.reconfig  run   its output changed" in capsys.readouterr().out
        code = cli.main(["run", recipe])
        captured = capsys.readouterr()
        assert _ran_in(captured.out) == ["train.reconfig", "eval", "gate", "publish"]
        if code == 0:
            assert "nothing new to publish: version 2" in captured.out and "has the same weights" in captured.out
        else:
            assert code == 1 and "min_improvement" in captured.err and "champion = false" in captured.err
        assert (tmp_path / "runs/faces/reconfig/weights/imr.safetensors").is_file()
        assert json.loads((published / "dynamicid_run.json").read_text())["version"] == 2

        # New photos in the URL list, and no champion rule: collect fetches only them, prep does only them,
        # stage 1 continues from its last weights, and version 2 replaces version 1 in the server. The split
        # shares change too (everyone to test): they apply to the new person alone, so the fine-tuned model is
        # never evaluated on a person an earlier round trained on.
        trained = {person.name for person in held_out_identities(str(tmp_path / "runs/faces/dataset"), "train", 100)}
        assert trained == {"alex_lacamoire", "biden", "kit_harington"}
        _url_list(tmp_path, server.url, people | later)
        _write_recipe(tmp_path, tiny_models, seed=1, champion="false", split="0,0,1")
        fetched_before = len(server.requests)
        assert cli.main(["run", recipe]) == 0
        assert _ran(capsys) == ["collect", "prep", "train.anchor", "train.reconfig", "eval", "gate", "publish"]
        assert len(server.requests) - fetched_before == len(later)
        summary = json.loads((tmp_path / "runs/faces/dataset/summary.json").read_text())
        assert summary["processed_this_run"] == len(later)
        stages = json.loads((tmp_path / "runs/faces/run.json").read_text())["stages"]
        assert stages["train.anchor"]["init_weights"] == str(tmp_path / "runs/faces/anchor-previous/weights")
        assert stages["train.reconfig"]["init_weights"] == str(tmp_path / "runs/faces/reconfig-previous/weights")
        evaluated = {person.name for person in held_out_identities(str(tmp_path / "runs/faces/dataset"), "test", 100)}
        assert evaluated == {"obama", "rose_leslie"} and not evaluated & trained
        assert json.loads((published / "dynamicid_run.json").read_text())["version"] == 3
        assert _served_version(engine, photo).startswith("version 3")
        assert _page_model_line(engine).startswith("Model: version 3")

        # A curator's review of the dataset: what reads the dataset runs again on it, and nothing before it.
        dataset = str(tmp_path / "runs/faces/dataset")
        assert cli.main(["review", dataset, "--rename", "obama", "barack_obama"]) == 0
        capsys.readouterr()
        assert cli.main(["run", recipe]) == 0
        out = capsys.readouterr().out
        assert _ran_in(out) == ["train.anchor", "train.reconfig", "eval", "gate", "publish"]
        assert "reviewed since it ran" in out and "a review of the dataset changed its input" in out
        assert {person.name for person in held_out_identities(dataset, "test", 100)} == {"barack_obama", "rose_leslie"}
        assert cli.main(["run", recipe]) == 0 and _ran(capsys) == []


def _page_model_line(engine) -> str:
    """The page's model line as a browser loading the page gets it (its load event refreshes it)."""
    from dynamicid.serving.app import build_app

    app = build_app(engine, tiny=True)
    (refresh,) = [f.fn for f in app.fns.values() if getattr(f.fn, "__name__", "") == "current_model"]
    assert any(target[1] == "load" for f in app.fns.values() if f.fn is refresh for target in f.targets)
    return refresh()


def test_a_recipe_is_checked_with_the_commands_own_rules(tmp_path):
    def refused(text: str, match: str) -> None:
        path = tmp_path / "bad.toml"
        path.write_text('[run]\noutput = "out"\n' + text)
        with pytest.raises(ConfigError, match=match):
            read_recipe(str(path))

    refused('[prep]\ninput = "p"\nstepz = 3\n', r"bad.toml: \[prep\]: unknown option\(s\) stepz; this command's")
    refused(
        '[prep]\ninput = "p"\nimages_per_partition = "many"\n', r"\[prep\]: images_per_partition must be a whole number"
    )
    refused('[prep]\ninput = "p"\noutput = "elsewhere"\n', r"\[prep\] sets output, which the run wires")
    refused('[prepare]\ninput = "p"\n', r"unknown table \[prepare\]")
    refused(
        '[prep]\ninput = "p"\n[eval]\nsplit = "train"\n[gate]\nleak = 0.1\n',
        r"\[gate\]: leak = 0.1 is not a bound: use min_NAME",
    )
    refused('[prep]\nlayout = "cluster"\n', r"\[prep\] needs input")
    refused('[prep]\ninput = "p"\n[train.reconfig]\nsteps = 1\n', r"\[train.reconfig\] needs \[train.anchor\]")
    refused(
        '[prep]\ninput = "p"\n[train.anchor]\nsteps = 2\n', r"\[train.anchor\] needs base_model, clip_image_encoder"
    )
    models = 'base_model = "b"\nclip_image_encoder = "c"\n'
    refused(
        f'[prep]\ninput = "p"\n[train.anchor]\nsteps = 0\n{models}', r"\[train.anchor\]: steps .* must be from 1 to"
    )
    refused("[collect]\nthreads = 4\n", r"\[collect\] needs urls")
    refused('[publish]\nto = "m"\nprivat = true\n', r"\[publish\]: unknown option\(s\) privat")
    with pytest.raises(ConfigError, match=r"\[run\] needs output"):
        (tmp_path / "none.toml").write_text("[prep]\ninput = 'p'\n")
        read_recipe(str(tmp_path / "none.toml"))


def test_the_plan_follows_the_fingerprints(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"x")
    recipe_path = tmp_path / "r.toml"
    recipe_path.write_text('[run]\noutput = "out"\n[prep]\ninput = "photos"\n[eval]\nsplit = "train"\nsteps = 2\n')
    recipe = read_recipe(str(recipe_path))
    state = RunState(recipe.output)
    steps = plan(recipe, state)
    assert [(s.stage, s.run, s.reason) for s in steps] == [("prep", True, "never run"), ("eval", True, "never run")]
    for step in steps:
        state.update(step.stage, status="done", fingerprint=step.fingerprint)
    os.makedirs(tmp_path / "out" / "dataset")
    os.makedirs(tmp_path / "out" / "eval")
    assert [s.reason for s in plan(recipe, state)] == ["up to date", "up to date"]
    assert [s.run for s in plan(recipe, state, force=("prep",))] == [True, True]
    assert [s.reason for s in plan(recipe, state, until="prep", force=("prep",))][1] == "outside --from/--until"
    (photos / "b.jpg").write_bytes(b"y")  # a new photo: prep's input changed, and eval reads prep
    assert [s.reason for s in plan(recipe, state)] == ["its options or inputs changed", "its options or inputs changed"]
    (photos / "b.jpg").unlink()
    recipe_path.write_text('[run]\noutput = "out"\n[prep]\ninput = "photos"\n[eval]\nsplit = "train"\nsteps = 3\n')
    assert [s.run for s in plan(read_recipe(str(recipe_path)), state)] == [False, True]
    state.update("eval", status="interrupted")
    assert plan(recipe, state)[1].reason == "its last run was interrupted"


def test_training_on_several_processes_runs_under_its_launcher(tmp_path):
    from dynamicid.recipe.actions import command_line

    recipe_path = tmp_path / "r.toml"
    recipe_path.write_text(
        '[run]\noutput = "out"\nprocesses = 2\n[prep]\ninput = "p"\n[train.anchor]\nsteps = 2\nbase_model = "b"\n'
        'clip_image_encoder = "c"\n'
    )
    recipe = read_recipe(str(recipe_path))
    values = {"data": "D", "output": "O", "steps": 2}
    assert command_line(recipe, "train.anchor", values, "cfg.json") == [
        "accelerate", "launch", "--multi_gpu", "--num_processes", "2", "-m", "dynamicid.cli",
        "train", "anchor", "--config", "cfg.json", "D", "O",
    ]  # fmt: skip
    recipe.run = dataclasses.replace(recipe.run, launcher="torchrun")
    assert command_line(recipe, "train.anchor", values, "cfg.json")[:5] == [
        "torchrun",
        "--nproc_per_node",
        "2",
        "-m",
        "dynamicid.cli",
    ]


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    recipe_path = tmp_path / "r.toml"
    recipe_path.write_text('[run]\noutput = "out"\n[prep]\ninput = "photos"\n')
    assert cli.main(["run", str(recipe_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "prep  run   never run" in out and not (tmp_path / "out").exists()
    assert cli.main(["run", str(recipe_path), "--force", "eval"]) == 1
    assert "eval is not a stage of" in capsys.readouterr().err


@pytest.fixture
def loopback_hub(tmp_path, monkeypatch):
    """The real huggingface_hub client, in this process, pointed at the loopback Hub with its own cache."""
    import importlib

    from hub_server import HubServer
    from huggingface_hub import constants

    with HubServer({}, upload_root=str(tmp_path)) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        importlib.reload(constants)
        yield hub
    monkeypatch.undo()
    importlib.reload(constants)


def _published(folder, version: int) -> str:
    os.makedirs(folder, exist_ok=True)
    (folder / "dynamicid_run.json").write_text(json.dumps({"version": version, "published": f"day {version}"}))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DynamicIDPipeline"}))
    (folder / "README.md").write_text("---\nlibrary_name: diffusers\n---\n# model\n")
    return str(folder)


def test_publishing_to_a_hub_repo_and_a_server_that_checks_it(loopback_hub, tmp_path):
    from dynamicid.recipe import publish, target
    from dynamicid.recipe.recipe import Recipe, RunSettings
    from dynamicid.serving.reload import ModelWatch

    settings = RunSettings(output=str(tmp_path / "out"))
    recipe = Recipe(str(tmp_path / "r.toml"), settings.output, settings, {"publish": {"to": "hf://user/faces"}})
    assert target.current(recipe) is None  # no such repo yet: nothing published
    publish._push(_published(tmp_path / "v1", 1), "user/faces", private=False)
    champion = target.champion_folder(target.current(recipe), "hf://user/faces")
    assert json.loads(open(os.path.join(champion, "dynamicid_run.json")).read())["version"] == 1
    # A Hub that answers 503: the record is unknown, which fails the gate and the publish (never "nothing
    # published", which would push version 1 over version 2), and the gate's fingerprint says so.
    loopback_hub.failing = True
    with pytest.raises(target.TargetError, match="cannot be read .*503|cannot be read .*Service"):
        target.current(recipe)
    assert target.champion_token(recipe, RunState(str(tmp_path / "out"))) == "hf://user/faces: unreadable"
    loopback_hub.failing = False
    loaded = []
    watch = ModelWatch("user/faces", lambda reference: loaded.append(reference) or reference, interval=0.0)
    assert watch.label() == "version 1 (published day 1)" and watch.newer() is None
    publish._push(_published(tmp_path / "v2", 2), "user/faces", private=False)
    assert watch.newer() is not None and watch.label() == "version 2 (published day 2)"
    assert loaded == ["user/faces"] and watch.newer() is None  # loaded once, from the repo, by from_pretrained
    assert ("POST", "/api/models/user/faces/commit/main") in loopback_hub.requests


def test_an_interrupted_stage_is_recorded_and_the_next_run_continues_there(tmp_path, monkeypatch, capsys):
    """Ctrl-C in a stage: run.json says interrupted, the exit code is 130, the report is written; the next
    run skips what was done and runs that stage again (the command itself resumes its own work)."""
    from dynamicid.recipe import actions

    (tmp_path / "photos").mkdir()
    recipe_path = tmp_path / "r.toml"
    recipe_path.write_text('[run]\noutput = "out"\n[prep]\ninput = "photos"\n[eval]\nsplit = "train"\nsteps = 2\n')
    calls = []

    def command(stage, values):
        calls.append(stage)
        os.makedirs(values["output"], exist_ok=True)
        if stage == "eval" and calls.count("eval") == 1:
            raise KeyboardInterrupt
        return 0

    monkeypatch.setattr(actions, "run_command", command)
    assert cli.main(["run", str(recipe_path)]) == 130
    stages = json.loads((tmp_path / "out/run.json").read_text())["stages"]
    assert stages["prep"]["status"] == "done" and stages["eval"]["status"] == "interrupted"
    assert "interrupted" in (tmp_path / "out/report.html").read_text()
    assert cli.main(["run", str(recipe_path)]) == 0
    assert calls == ["prep", "eval", "eval"] and "eval  run   its last run was interrupted" in capsys.readouterr().out


def test_training_resumes_its_own_run_or_starts_a_new_one_from_the_last_weights(tmp_path):
    from dynamicid.recipe.actions import _training_start
    from dynamicid.recipe.runner import Step

    recipe_path = tmp_path / "r.toml"
    recipe_path.write_text(
        '[run]\noutput = "out"\nbase_model = "b"\nclip_image_encoder = "c"\n[prep]\ninput = "p"\n[train.anchor]\n'
    )
    recipe = read_recipe(str(recipe_path))
    from dynamicid.filestamps import output_stamp
    from dynamicid.recipe.stages import training_basis

    anchor = tmp_path / "out" / "anchor"
    previous = str(tmp_path / "out" / "anchor-previous" / "weights")
    basis = training_basis(recipe, "train.anchor")
    step = Step("train.anchor", "F2", True, "")

    def finished(**changes) -> dict:
        """A finished run's record: its output as stamped, its data and options (changed as given)."""
        os.makedirs(anchor / "weights", exist_ok=True)
        (anchor / "weights" / "imr.safetensors").write_bytes(b"weights")
        return {
            "fingerprint": "F1",
            "status": "done",
            "output_stamp": output_stamp(str(anchor)),
            "basis": basis | changes,
        }

    # Its own run, interrupted: the folder stays (the command resumes from its checkpoints), same start.
    os.makedirs(anchor / "weights")
    values, extra = _training_start(
        recipe, step, {"fingerprint": "F2", "status": "interrupted", "init_weights": None}, {}
    )
    assert anchor.is_dir() and values == {} and extra == {"init_weights": None, "basis": basis}
    # A finished run on other data: moved aside, and the new run fine-tunes its weights.
    values, extra = _training_start(recipe, step, finished(data="older photos"), {})
    assert not anchor.exists() and values["init_weights"] == previous
    # Its own options changed (a step count): a new run, not fine-tuning.
    values, _ = _training_start(recipe, step, finished(data="older photos", options="other steps"), {})
    assert "init_weights" not in values and os.path.isdir(previous)
    # Its weights damaged since it finished: never built on.
    record = finished(data="older photos")
    os.remove(anchor / "weights" / "imr.safetensors")
    assert "init_weights" not in _training_start(recipe, step, record, {})[0]
    recipe.run = dataclasses.replace(recipe.run, fine_tune=False)
    values, _ = _training_start(recipe, step, finished(data="older photos"), {})
    assert "init_weights" not in values and os.path.isdir(previous)


def test_a_published_model_that_is_gone_is_published_again(tmp_path):
    (tmp_path / "photos").mkdir()
    recipe_path = tmp_path / "r.toml"
    recipe_path.write_text(
        '[run]\noutput = "out"\n[prep]\ninput = "photos"\n[eval]\nsplit = "train"\n[publish]\nto = "models/m"\n'
    )
    recipe = read_recipe(str(recipe_path))
    state = RunState(recipe.output)
    for step in plan(recipe, state):
        state.update(step.stage, status="done", fingerprint=step.fingerprint)
    for folder in ("out/dataset", "out/eval"):
        os.makedirs(tmp_path / folder)
    assert [s.reason for s in plan(recipe, state)] == ["up to date", "up to date", "the published model is missing"]
    _published(tmp_path / "models" / "m", 1)
    assert not any(s.run for s in plan(recipe, state))


def _training_recipe(folder, tiny_models, photos, run_extra: str, anchor_extra: str):
    """A recipe of prep and stage 1 on the tiny models, at sizes that train in seconds."""
    tiny = os.path.dirname(tiny_models["sd15"])
    recipe = folder / "r.toml"
    recipe.write_text(
        f'[run]\noutput = "out"\nbase_model = "{tiny}/sd15"\nclip_image_encoder = "{tiny}/clip-image"\n{run_extra}'
        f'[prep]\ninput = "{photos}"\n[train.anchor]\nbatch_size = 2\nresolution = 64\nlora_rank = 4\n'
        f"no_progress = true\n{anchor_extra}"
    )
    return recipe


@pytest.mark.slow  # a Spark job and a training process
def test_training_on_several_processes_goes_through_the_launcher_with_its_options(
    spark, tiny_models, tmp_path, monkeypatch, capsys
):
    """[run] processes = 2 hands training to the launcher with a --config file of the stage's options. A
    stand-in `torchrun` on PATH records its arguments and runs the command in one process (the real
    two-process training is test_training's); a launcher that fails stops the run with its exit code."""
    from dynamicid.prep.sample import make_sample

    make_sample(str(tmp_path / "photos"))
    launcher = tmp_path / "bin" / "torchrun"
    launcher.parent.mkdir()
    launcher.write_text(
        f'#!/bin/sh\necho "$@" > {tmp_path}/launched\nshift 4\nexec {sys.executable} -m dynamicid.cli "$@"\n'
    )
    launcher.chmod(0o755)
    monkeypatch.setenv("PATH", f"{launcher.parent}{os.pathsep}{os.environ['PATH']}")
    tiny = os.path.dirname(tiny_models["sd15"])
    recipe = _training_recipe(tmp_path, tiny_models, "photos", 'processes = 2\nlauncher = "torchrun"\n', "steps = 2\n")
    assert cli.main(["run", str(recipe)]) == 0
    launched = (tmp_path / "launched").read_text().split()
    assert launched[:6] == ["--nproc_per_node", "2", "-m", "dynamicid.cli", "train", "anchor"]
    options = json.loads((tmp_path / "out/.run/train.anchor.json").read_text())
    assert options["steps"] == 2 and options["base_model"] == f"{tiny}/sd15" and "data" not in options
    assert (tmp_path / "out/anchor/weights").is_dir()
    launcher.write_text("#!/bin/sh\nexit 3\n")
    assert cli.main(["run", str(recipe), "--force", "train.anchor"]) == 1
    assert "train.anchor failed: torchrun --nproc_per_node 2 ... ended with exit code 3" in capsys.readouterr().err


@pytest.mark.slow  # a Spark job and training in a process that is killed
def test_a_run_killed_during_training_resumes_from_its_checkpoint(spark, sample, tiny_models, tmp_path, capsys, caplog):
    """kill -9 while stage 1 trains: run.json says started, the next run skips prep, and training resumes from
    its last checkpoint and finishes."""
    import logging
    import signal

    caplog.set_level(logging.INFO, logger="dynamicid")
    photos, _ = sample
    recipe = _training_recipe(tmp_path, tiny_models, photos, "", "steps = 30\ncheckpoint_every = 5\n")
    assert cli.main(["run", str(recipe), "--until", "prep"]) == 0  # here, on the session's Spark
    command = [sys.executable, "-m", "dynamicid.cli", "run", str(recipe)]  # prep is up to date: no Spark to start
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoints = tmp_path / "out" / "anchor" / "checkpoints"
    deadline = time.monotonic() + 240
    # A checkpoint is whole once its trainer.json is there (written last); one cut short would be skipped.
    while not list(checkpoints.glob("*/trainer.json")) and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    stages = json.loads((tmp_path / "out" / "run.json").read_text())["stages"]
    assert stages["prep"]["status"] == "done" and stages["train.anchor"]["status"] == "started"
    assert cli.main(["run", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"prep +skip +up to date", out) and "its last run did not finish" in out
    assert "resumed from" in caplog.text and "train anchor: 30 steps" in out
    assert (tmp_path / "out" / "anchor" / "weights").is_dir()
