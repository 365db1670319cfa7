"""Command-line options made from a configuration dataclass, so every default and help text is written once,
on the field (`field(metadata={"help": ..., "choices": ...})`)."""

from __future__ import annotations

import argparse
import dataclasses
import typing


def _base_type(annotation) -> type:
    """`int | None` -> int; the annotation itself otherwise (string annotations are resolved first)."""
    arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
    return arguments[0] if arguments else annotation


def add_options(parser: argparse.ArgumentParser, config_class, skip: tuple[str, ...] = ()) -> None:
    """One `--name` per field: booleans that default to False become flags, the rest take a value."""
    hints = typing.get_type_hints(config_class)
    for item in dataclasses.fields(config_class):
        if item.name in skip:
            continue
        flag = "--" + item.name.replace("_", "-")
        kind = _base_type(hints[item.name])
        text = item.metadata.get("help", "")
        if kind is bool and item.default is False:
            parser.add_argument(flag, action="store_true", help=text)
            continue
        parser.add_argument(flag, type=kind, default=item.default, choices=item.metadata.get("choices"),
                            help=text if item.default is None else f"{text} (default: {item.default})")


def config_from(args: argparse.Namespace, config_class, **extra):
    """The dataclass from parsed options of the same names (plus `extra`)."""
    values = {item.name: getattr(args, item.name) for item in dataclasses.fields(config_class) if hasattr(args, item.name)}
    return config_class(**(values | extra))
