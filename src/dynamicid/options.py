"""Typed configuration fields and the command-line options made from them.

Every command has one frozen config dataclass. Its fields carry their help text (`option(...)`), so each
default and each help text is written once, on the field. From the dataclass come the command's options
(`add_options`), a `--config FILE` reader that knows the same names (`file_defaults`) and the config
object itself (`config_from`). A field whose type is itself a config dataclass (prep's `faces`) gives its
own fields as options of the command, under their own names.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dynamicid.errors import ConfigError

REQUIRED = dataclasses.MISSING


def option(default=REQUIRED, help: str | Callable[[], str] = "", *, factory=None, **cli) -> typing.Any:
    """A config field with its help text. `cli` keys: choices (a tuple, or a function giving one),
    positional (True, "optional", or "many": a tuple of one or more), flag (the option's name when the field's
    would mislead), append
    (a list field given once per item), hidden (no command-line option), limits ((lowest, highest) a number
    may be, both included; `check_limits` refuses others, NaN and infinity included), nargs (a tuple field
    given as that many values) with metavar (their names)."""
    metadata = {"help": help, **cli}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    if default is REQUIRED:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


def check_limits(config) -> None:
    """Refuse a number field outside its `limits`, or of the wrong type, naming the field and its option. A
    config's `__post_init__` calls this, so the command line, --config files and Python all get the check."""
    import math

    hints = typing.get_type_hints(type(config))
    for item in dataclasses.fields(config):
        limits = item.metadata.get("limits")
        value = getattr(config, item.name)
        if limits is None or (value is None and item.default is None):
            continue
        low, high = limits
        kind = _plain_type(hints[item.name])
        accepted = (int,) if kind is int else (int, float)
        named = f"{item.name} (--{item.metadata.get('flag') or item.name.replace('_', '-')})"
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise ConfigError(f"{named} must be {'a whole number' if kind is int else 'a number'}, not {value!r}")
        if not math.isfinite(value) or not low <= value <= high:
            raise ConfigError(f"{named} must be from {_number(low)} to {_number(high)}, not {value!r}")


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


@dataclass(frozen=True)
class Leaf:
    """One option: the dataclass field it sets, where it sits, and its plain type."""

    path: tuple[str, ...]  # ("faces", "detector") for PrepConfig.faces.detector
    field: dataclasses.Field
    kind: type

    @property
    def name(self) -> str:
        return self.path[-1]

    def meta(self, key: str, default=None):
        value = self.field.metadata.get(key, default)
        return value() if callable(value) and key in ("help", "choices") else value

    @property
    def default(self):
        if self.field.default is not REQUIRED:
            return self.field.default
        if self.field.default_factory is not REQUIRED:
            return self.field.default_factory()
        return REQUIRED


def _plain_type(annotation) -> type:
    """`int | None` -> int, `list[str]` -> list; the annotation itself otherwise."""
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return origin
    arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
    return _plain_type(arguments[0]) if arguments else annotation


def leaves(config_class, path: tuple[str, ...] = ()) -> Iterator[Leaf]:
    """The options of a config dataclass, nested config dataclasses flattened, in field order."""
    hints = typing.get_type_hints(config_class)
    for item in dataclasses.fields(config_class):
        kind = _plain_type(hints[item.name])
        if dataclasses.is_dataclass(kind):
            yield from leaves(kind, path + (item.name,))
        else:
            yield Leaf(path + (item.name,), item, kind)


class _AppendReplacing(argparse.Action):
    """`append`, except that the first item given on the command line replaces a config file's list."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(namespace, "_appended", set())
        items = list(getattr(namespace, self.dest) or []) if self.dest in given else []
        setattr(namespace, self.dest, items + [values])
        namespace._appended = given | {self.dest}


def _help(leaf: Leaf) -> str:
    text = leaf.meta("help", "")
    limits = leaf.meta("limits")
    span = f"{_number(limits[0])} to {_number(limits[1])}" if limits else ""
    if leaf.default is REQUIRED or leaf.meta("required"):
        return f"{text} (required{'; ' + span if span else ''})"
    default = leaf.default
    if default is REQUIRED or default is None or isinstance(default, bool | list | tuple) or leaf.meta("append"):
        return f"{text} ({span})" if span else text
    return f"{text} (default: {default}{'; ' + span if span else ''})"


def add_options(parser: argparse.ArgumentParser, config_class, skip: tuple[str, ...] = ()) -> None:
    """One option per leaf field: `--name VALUE`; a bool that defaults to False is a flag `--name`, one that
    defaults to True is `--no-name`; positional fields are arguments."""
    seen: set[str] = set()
    for leaf in leaves(config_class):
        if leaf.name in skip or leaf.meta("hidden"):
            continue
        if leaf.name in seen:
            raise TypeError(f"{config_class.__name__}: two fields named {leaf.name}; options must be unique")
        seen.add(leaf.name)
        _add_leaf(parser, leaf)


def _add_leaf(parser: argparse.ArgumentParser, leaf: Leaf) -> None:
    name = leaf.meta("flag") or leaf.name.replace("_", "-")
    positional = leaf.meta("positional")
    if positional:
        parser.add_argument(
            leaf.name,
            metavar=leaf.name.upper(),
            nargs={"optional": "?", "many": "+"}.get(positional),
            help=leaf.meta("help", ""),
        )
    elif leaf.kind is bool:
        negate = leaf.default is True
        parser.add_argument(
            f"--no-{name}" if negate else f"--{name}",
            dest=leaf.name,
            action="store_false" if negate else "store_true",
            help=leaf.meta("help", ""),
        )
    elif leaf.meta("append"):
        parser.add_argument(
            f"--{name}",
            dest=leaf.name,
            action=_AppendReplacing,
            default=leaf.default,
            metavar=leaf.meta("metavar"),
            help=_help(leaf),
        )
    else:  # a required option may come from --config FILE too: Command.missing checks it after both
        default = None if leaf.default is REQUIRED else leaf.default
        items = leaf.meta("nargs")  # a tuple field given as that many values: --merge A B
        parser.add_argument(
            f"--{name}",
            dest=leaf.name,
            type=str if items else leaf.kind,
            nargs=items,
            metavar=leaf.meta("metavar"),
            default=default,
            choices=leaf.meta("choices"),
            help=_help(leaf),
        )


def config_from(values: argparse.Namespace | dict, config_class, path: tuple[str, ...] = ()):
    """The config object from parsed options (or a dict) named as the leaf fields; nested configs rebuilt."""
    found = vars(values) if isinstance(values, argparse.Namespace) else values
    hints = typing.get_type_hints(config_class)
    arguments = {}
    for item in dataclasses.fields(config_class):
        kind = _plain_type(hints[item.name])
        if dataclasses.is_dataclass(kind):
            arguments[item.name] = config_from(found, kind, path + (item.name,))
        elif item.name in found and not (
            item.metadata.get("positional") and found[item.name] is None and item.default is REQUIRED
        ):
            value = found[item.name]
            arguments[item.name] = tuple(value) if kind is tuple and value is not None else value
    return config_class(**arguments)


def read_config_file(path: str) -> dict:
    """A TOML or JSON file's table; nested tables (`[faces]`) are flattened into their keys."""
    import tomllib

    is_json = path.lower().endswith(".json")
    try:
        with open(path, "rb") as handle:
            values = json.load(handle) if is_json else tomllib.load(handle)
    except OSError as err:
        raise ConfigError(f"config file {path}: {err.strerror}") from None
    except (ValueError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"config file {path} is not valid {'JSON' if is_json else 'TOML'}: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(
            f"config file {path} must hold a table of options (name = value), not a {type(values).__name__}"
        )
    return flatten_table(values, f"config file {path}")


def flatten_table(values: dict, where: str) -> dict:
    """Option values with nested tables (`[faces]`) flattened into their keys, `-` read as `_`; an option set
    twice is an error that names both places."""
    flat: dict = {}
    places: dict[str, str] = {}  # option -> where it was set, to name both places of a repeat
    for key, value in values.items():
        entries = value.items() if isinstance(value, dict) else [(key, value)]
        for name, item in entries:
            place = f"[{key}] {name}" if isinstance(value, dict) else name
            option_name = name.replace("-", "_")
            if option_name in places:
                raise ConfigError(
                    f"{where} sets {option_name} twice, as {places[option_name]} and as {place}; keep one"
                )
            places[option_name], flat[option_name] = place, item
    return flat


def file_defaults(path: str, config_class) -> dict:
    """A config file's values, checked against the command's fields: unknown names, wrong types and
    values outside a field's choices are errors that name the file, the field and what it accepts."""
    return check_values(read_config_file(path), config_class, f"config file {path}")


def check_values(values: dict, config_class, where: str) -> dict:
    """Option values by name (a --config file's, a recipe table's) checked against the command's fields, with
    errors that name `where`, the field and what it accepts. `no_NAME = true` becomes `NAME = false`."""
    known = {leaf.name: leaf for leaf in leaves(config_class) if not leaf.meta("hidden")}
    values = {key.replace("-", "_"): value for key, value in values.items()}
    for key in [k for k in values if k.startswith("no_") and isinstance(values[k], bool)]:
        flag = known.get(key[3:])  # `no-progress = true`, as the command line's --no-progress, means progress = false
        if flag is not None and flag.kind is bool and flag.default is True:
            values[key[3:]] = not values.pop(key)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"{where}: unknown option(s) {', '.join(unknown)}; this command's options are {', '.join(sorted(known))}"
        )
    for key, value in values.items():
        leaf = known[key]
        choices = leaf.meta("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{where}: {key} must be one of {', '.join(map(str, choices))}, not {value!r}")
        expected = (int, float) if leaf.kind is float else (list,) if leaf.kind in (list, tuple) else (leaf.kind,)
        if (
            value is not None
            and leaf.kind in (bool, int, float, str, list, tuple)
            and (not isinstance(value, expected) or (leaf.kind is not bool and isinstance(value, bool)))
        ):
            raise ConfigError(f"{where}: {key} must be {KIND_WORDS.get(leaf.kind, leaf.kind.__name__)}, not {value!r}")
    return values


# What a value of each type is called in a message ("must be a whole number"), never "a int".
KIND_WORDS = {
    int: "a whole number",
    float: "a number",
    str: "a text (in quotes)",
    bool: "true or false",
    list: "a list",
    tuple: "a list",
}


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """'1 URL', '3 URLs': a count with its noun in the right number."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def missing_options(values: dict, config_class, positional: bool = False) -> list[str]:
    """Required fields (no default, or marked required) that `values` lacks or leaves empty; positional ones
    too when asked (argparse checks those on a command line)."""
    return [
        leaf.name
        for leaf in leaves(config_class)
        if (positional or not leaf.meta("positional"))
        and (leaf.default is REQUIRED or leaf.meta("required"))
        and values.get(leaf.name) in (None, [], "")
    ]


@dataclass(frozen=True)
class Command:
    """One `dynamicid` command, owned by its package (`PACKAGE/cli.py` lists its commands in COMMANDS).
    `run` gets the parsed options and builds its config with `config_from`; `extra` adds options that are
    modes of the command rather than settings (prep's --verify); `stages` makes a command with
    sub-commands (train anchor | reconfig)."""

    name: str
    summary: str  # one line in `dynamicid --help`
    description: str = ""
    config: type | None = None
    run: Callable[[argparse.Namespace], int] | None = None
    extra: Callable[[argparse.ArgumentParser], None] | None = None
    stages: tuple[Command, ...] = ()

    def missing(self, args: argparse.Namespace) -> list[str]:
        """Required options that neither the command line nor the config file gave."""
        return missing_options(vars(args), self.config) if self.config is not None else []


def add_command(sub: Any, command: Command, parsers: dict[Command, argparse.ArgumentParser]) -> None:
    """The command's parser (and its stages'), with --config, -v and -q; `parsers` maps each runnable command
    to its parser, for `parse_command_line`."""
    parser = sub.add_parser(command.name, help=command.summary, description=command.description or command.summary)
    if command.stages:
        stages = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
        for stage in command.stages:
            add_command(stages, stage, parsers)
        return
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help='a TOML or JSON file setting any of these options by name (detector = "insightface"); '
        "the command line wins",
    )
    parser.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more messages")
    parser.add_argument("-q", "--quiet", action="count", default=argparse.SUPPRESS, help="warnings and errors only")
    if command.extra:
        command.extra(parser)
    if command.config:
        add_options(parser, command.config)
    parser.set_defaults(command=command)
    parsers[command] = parser


def parse_command_line(
    parser: argparse.ArgumentParser, parsers: dict[Command, argparse.ArgumentParser], argv: list[str] | None
) -> argparse.Namespace | None:
    """Parsed options; a --config file's values become the command's defaults, so the command line wins.
    ConfigError when a required option is given by neither. None when no command was given."""
    args = parser.parse_args(argv)
    command = getattr(args, "command", None)
    if command is None:
        return None
    if args.config and command.config:
        parsers[command].set_defaults(**file_defaults(args.config, command.config))
        args = parser.parse_args(argv)
    missing = command.missing(args)
    if missing:
        flags = ", ".join("--" + name.replace("_", "-") for name in missing)
        raise ConfigError(
            f"{command.name} needs {flags} (on the command line, or as {', '.join(missing)} in a "
            f"--config file); see dynamicid {command.name} --help"
        )
    return args
