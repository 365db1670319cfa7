"""Options made from config dataclasses (`dynamicid.options`): one default and one help text per field."""

import argparse
import re
from dataclasses import dataclass

import pytest

from dynamicid.errors import ConfigError
from dynamicid.options import add_options, config_from, file_defaults, leaves, option


@dataclass(frozen=True)
class Inner:
    side: int = option(512, "a side")
    name: str = option("dlib", "a backend", choices=("dlib", "onnx"))


@dataclass(frozen=True)
class Outer:
    source: str = option(help="where from", positional=True)
    count: int = option(1, "how many")
    ratio: float = option(0.5, "a share")
    inner: Inner = option(factory=Inner)
    progress: bool = option(True, "no progress bar")
    verbose_report: bool = option(False, "a longer report")
    items: tuple[str, ...] = option(help="one per item", factory=tuple, append=True)
    model: str | None = option(None, "a folder")


def parse(argv, defaults=None):
    parser = argparse.ArgumentParser()
    add_options(parser, Outer)
    if defaults:
        parser.set_defaults(**defaults)
    return parser, config_from(parser.parse_args(argv), Outer)


def test_nested_fields_become_options_and_the_config_is_rebuilt():
    assert [leaf.name for leaf in leaves(Outer)] == [
        "source",
        "count",
        "ratio",
        "side",
        "name",
        "progress",
        "verbose_report",
        "items",
        "model",
    ]
    _, config = parse(["in", "--side", "256", "--no-progress", "--verbose-report", "--items", "a", "--items", "b"])
    assert config == Outer("in", 1, 0.5, Inner(256, "dlib"), False, True, ("a", "b"), None)


def test_help_shows_every_default_once_even_zero_and_one():
    parser, _ = parse(["in"])
    text = " ".join(parser.format_help().split())
    assert "how many (default: 1)" in text and "a share (default: 0.5)" in text and "a side (default: 512)" in text
    assert "--no-progress no progress bar" in text and "(default: None)" not in text


def test_a_file_fills_defaults_and_the_command_line_replaces_lists(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('count = 3\nitems = ["x", "y"]\nno-progress = true\n[inner]\nname = "onnx"\n')
    values = file_defaults(str(path), Outer)
    _, config = parse(["in"], values)
    assert (config.count, config.items, config.progress, config.inner.name) == (3, ("x", "y"), False, "onnx")
    _, config = parse(["in", "--items", "z", "--count", "4"], values)
    assert (config.count, config.items) == (4, ("z",))


@pytest.mark.parametrize(
    "text,words",
    [
        ("cuont = 3", "unknown option(s) cuont; this command's options are"),
        ('count = "three"', "count must be a whole number, not 'three'"),
        ("count = true", "count must be a whole number, not True"),
        ('name = "tflite"', "name must be one of dlib, onnx, not 'tflite'"),
        ("ratio = 1", None),  # an int is a fine float
    ],
)
def test_file_values_are_checked_against_the_fields(tmp_path, text, words):
    path = tmp_path / "c.toml"
    path.write_text(text + "\n")
    if words is None:
        assert file_defaults(str(path), Outer) == {"ratio": 1}
        return
    with pytest.raises(ConfigError, match=str(path)) as refused:
        file_defaults(str(path), Outer)
    assert words in str(refused.value)


@pytest.mark.parametrize(
    "text, places",
    [
        ("min-side = 64\nmin_side = 32\n", "as min-side and as min_side"),
        ('detector = "dlib-hog"\n[faces]\ndetector = "insightface"\n', "as detector and as [faces] detector"),
    ],
)
def test_a_config_file_that_sets_an_option_twice_is_refused_naming_both_places(tmp_path, text, places):
    from dynamicid.errors import ConfigError
    from dynamicid.options import read_config_file

    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ConfigError, match=f"sets .* twice, {re.escape(places)}"):
        read_config_file(str(tmp_path / "c.toml"))
