"""`dynamicid run` left alone (issue 35 §1, §2): publish never deletes or replaces what it did not make, takes
turns with another run on the same target, swaps a symbolic link; the gate's checks cannot be skipped or
fooled, and what cannot work is refused before the first stage."""

import json
import os
import threading
import time

import pytest

from dynamicid import cli
from dynamicid.errors import ConfigError
from dynamicid.recipe import publish, target
from dynamicid.recipe.recipe import read_recipe
from dynamicid.recipe.runner import plan
from dynamicid.recipe.state import RunState

BASE = '[run]\noutput = "runs/x"\n[prep]\ninput = "photos"\n[eval]\nsplit = "train"\n'


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    return tmp_path


def _recipe(folder, text: str) -> str:
    path = folder / "r.toml"
    path.write_text(text)
    return str(path)


def _published(folder, version: int, weights: str = "w") -> None:
    os.makedirs(folder, exist_ok=True)
    record = {"version": version, "weights_digest": weights}
    (folder / "dynamicid_run.json").write_text(json.dumps(record))


@pytest.mark.parametrize(
    "to, match",
    [
        ("mymodels", "holds files that no publish made"),
        ("photos", r"is \[prep\] input"),
        ("runs/x/dataset", r"overlaps the run's output"),
        ("runs", r"overlaps the run's output"),
        (".", r"overlaps"),
        ("", "needs to = "),
        ("hf://", "give a folder"),
        ("hf://just-a-name", "name the repo's owner"),
        ("model.bin", "is a file"),
        ("damaged", "cannot be read"),
        ("guarded", r"guarded.previous holds files that no publish made"),
    ],
)
def test_a_target_that_is_not_ours_is_refused_before_any_stage(project, to, match):
    (project / "mymodels").mkdir()
    (project / "mymodels" / "thesis.pdf").write_bytes(b"mine")
    (project / "model.bin").write_bytes(b"mine")
    (project / "damaged").mkdir()
    (project / "damaged" / "dynamicid_run.json").write_text("{not json")
    (project / "guarded.previous").mkdir()
    (project / "guarded.previous" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=match):
        read_recipe(_recipe(project, BASE + f'[publish]\nto = "{to}"\n'))
    assert (project / "mymodels" / "thesis.pdf").read_bytes() == b"mine" and (project / "photos" / "a.jpg").exists()


def test_an_earlier_publish_an_empty_folder_and_a_new_one_are_accepted(project):
    _published(project / "earlier", 3)
    (project / "empty").mkdir()
    for to in ("earlier", "empty", "new/models"):
        assert read_recipe(_recipe(project, BASE + f'[publish]\nto = "{to}"\n')).tables["publish"]["to"].endswith(to)


def _fake_save(delay: float = 0.0):
    def save(recipe, folder):
        os.makedirs(folder)
        time.sleep(delay)
        with open(os.path.join(folder, "model_index.json"), "w") as handle:
            handle.write("{}")

    return save


class _State:
    def __init__(self):
        self.stages = {"gate": {"scores": {}}}

    def get(self, stage):
        return self.stages.get(stage, {})


def test_two_runs_publishing_to_one_folder_take_turns(project, monkeypatch):
    """Each takes its version number and swaps under the lock: versions 1 and 2, never one model inside the
    other, and nothing left beside the target."""
    monkeypatch.setattr(publish, "_save_pipeline", _fake_save(0.3))
    monkeypatch.setattr(publish, "trained_weights", lambda recipe: None)
    real_install = target.install
    overlapping = []

    def slow_install(staging, to, version):
        overlapping.append(version)
        time.sleep(0.3)
        return real_install(staging, to, version)

    monkeypatch.setattr(target, "install", slow_install)
    recipes = []
    for name in ("one", "two"):
        (project / name).mkdir()
        text = BASE.replace('"runs/x"', f'"{name}-out"').replace('"photos"', '"../photos"')
        recipes.append(read_recipe(_recipe(project / name, text + '[publish]\nto = "../models"\n')))
    results, errors = [], []

    def go(recipe):
        try:
            results.append(publish.run_publish(recipe, _State(), "f")["version"])
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=go, args=(recipe,)) for recipe in recipes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and sorted(results) == [1, 2]
    assert json.loads((project / "models" / "dynamicid_run.json").read_text())["version"] == 2
    assert sorted(os.listdir(project / "models")) == ["README.md", "dynamicid_run.json", "model_index.json"]
    assert not (project / "models.previous").exists()


def test_a_symlinked_target_gets_a_new_folder_and_the_link_is_swapped(project, monkeypatch):
    monkeypatch.setattr(publish, "_save_pipeline", _fake_save())
    monkeypatch.setattr(publish, "trained_weights", lambda recipe: None)
    _published(project / "v1", 1)
    (project / "current").symlink_to("v1")
    recipe = read_recipe(_recipe(project, BASE + '[publish]\nto = "current"\n'))
    assert publish.run_publish(recipe, _State(), "f")["version"] == 2
    assert os.readlink(project / "current") == "current.v2" and (project / "v1" / "dynamicid_run.json").exists()
    assert json.loads((project / "current" / "dynamicid_run.json").read_text())["version"] == 2
    assert publish.run_publish(recipe, _State(), "f")["version"] == 3
    assert os.readlink(project / "current") == "current.v3" and (project / "current.v2").is_dir()


def test_the_same_weights_are_nothing_new_to_publish(project, monkeypatch, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "imr.safetensors").write_bytes(b"trained")
    monkeypatch.setattr(publish, "trained_weights", lambda recipe: str(weights))
    _published(project / "models", 4, target.weights_digest(str(weights)))
    recipe = read_recipe(_recipe(project, BASE + '[publish]\nto = "models"\n'))
    assert publish.run_publish(recipe, _State(), "f") | {"record_digest": None} == {
        "version": 4,
        "to": recipe.tables["publish"]["to"],
        "unchanged": True,
        "record_digest": None,
    }


def test_the_gate_bounds_are_checked_when_the_recipe_is_read(project):
    for gate, match in (
        ("min_face_similarity = nan", "not a finite number"),
        ('champion = "false"', "champion = 'false' must be true or false"),
        ('min_improvement = "abc"', "min_improvement = 'abc' is not a bound"),
        ("max_leak = inf", "not a finite number"),
    ):
        with pytest.raises(ConfigError, match=match):
            read_recipe(_recipe(project, BASE + f"[gate]\n{gate}\n"))


def test_a_tie_is_refused_with_the_ways_out():
    from dynamicid.recipe.gate import _beats

    (message,) = _beats({"face_sim_mean": 0.5}, {"face_sim_mean": 0.5}, 0.0, 3)
    assert "published version 3" in message and "min_improvement" in message and "champion = false" in message
    assert _beats({"face_sim_mean": 0.52}, {"face_sim_mean": 0.5}, 0.01, 3) == []


def test_the_gate_reruns_when_the_target_or_what_is_published_there_changes(project):
    _published(project / "a", 1)
    _published(project / "b", 7)
    recipe = read_recipe(_recipe(project, BASE + '[gate]\nmin_detection_rate = 0\n[publish]\nto = "a"\n'))
    state = RunState(recipe.output)
    os.makedirs(project / "runs" / "x" / "dataset")
    os.makedirs(project / "runs" / "x" / "eval")
    for step in plan(recipe, state):
        state.update(step.stage, status="done", fingerprint=step.fingerprint)
    assert [s.run for s in plan(recipe, state)] == [False, False, False, False]
    _published(project / "a", 2)  # someone else published to the target
    assert [s.stage for s in plan(recipe, state) if s.run] == ["gate", "publish"]
    other = read_recipe(_recipe(project, BASE + '[gate]\nmin_detection_rate = 0\n[publish]\nto = "b"\n'))
    assert [s.stage for s in plan(other, state) if s.run] == ["gate", "publish"]


def test_what_cannot_work_is_refused_before_the_first_stage(project, capsys):
    for text, match in (
        ('[run]\noutput = "o"\n[prep]\ninput = "photos"\n[eval]\n', r"\[eval\] evaluates the test split.*1,0,0"),
        (BASE + 'prompts = "prompts.txt"\n', r"prompts = .*prompts.txt: no such file"),
        (BASE + 'base_model = "tiny/sd15"\n', "make-tiny-models"),
        (BASE + 'weights = "./nowhere"\n', "no such folder"),
        ('[run]\noutput = "photos/out"\n[prep]\ninput = "photos"\n', "lies inside \\[prep\\] input"),
    ):
        with pytest.raises(ConfigError, match=match):
            read_recipe(_recipe(project, text))
    path = _recipe(project, BASE)
    assert cli.main(["run", path, "--from", "eval", "--until", "prep", "--dry-run"]) == 1
    assert "--from eval comes after --until prep" in capsys.readouterr().err


def test_a_moved_project_keeps_its_fingerprints(project, tmp_path):
    recipe = read_recipe(_recipe(project, BASE))
    state = RunState(recipe.output)
    for step in plan(recipe, state):
        state.update(step.stage, status="done", fingerprint=step.fingerprint)
    os.makedirs(project / "runs" / "x" / "dataset")
    os.makedirs(project / "runs" / "x" / "eval")
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    os.rename(project, moved)
    os.chdir(moved)
    recipe = read_recipe(str(moved / "r.toml"))
    assert [s.reason for s in plan(recipe, RunState(recipe.output))] == ["up to date", "up to date"]


def test_a_run_record_of_the_wrong_shape_is_one_line(project, capsys):
    path = _recipe(project, BASE)
    os.makedirs(project / "runs" / "x")
    (project / "runs" / "x" / "run.json").write_text('{"stages": ["prep"]}')
    assert cli.main(["run", path, "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "run.json: it is not a run record" in err and "Traceback" not in err
