"""The `dynamicid` command line: a dispatcher. Each package owns its commands (`PACKAGE/cli.py`, a COMMANDS
tuple); their options come from their config dataclasses (`dynamicid.options`).

Exit codes: 0 done; 1 an error the message explains (bad input, configuration, model or machine), or
`prep --verify` found differences; 2 a usage error; 70 a bug (the traceback is saved to a file);
130 interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Iterator

from dynamicid import __version__
from dynamicid.errors import (
    EXIT_BUG,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    DynamicIDError,
    os_errors_reported,
)
from dynamicid.options import Command, add_command, parse_command_line

PACKAGES = (
    "collect",
    "prep",
    "evaluation",
    "models",
    "generation",
    "responsible",
    "serving",
    "testing",
    "training",
    "recipe",
)


def commands() -> list[Command]:
    return [command for package in PACKAGES for command in importlib.import_module(f"dynamicid.{package}.cli").COMMANDS]


def build_parser() -> tuple[argparse.ArgumentParser, dict[Command, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="dynamicid",
        description="DynamicID toolkit: prepare face datasets with Spark, train, generate, evaluate and serve.",
        epilog="Exit codes: 0 done, 1 error (explained), 2 usage, 70 bug, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"dynamicid {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more messages (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="only warnings and errors")
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND")
    parsers: dict[Command, argparse.ArgumentParser] = {}
    for command in commands():
        add_command(sub, command, parsers)
    return parser, parsers


def parse(argv: list[str] | None) -> argparse.Namespace | None:
    """The options, with a --config file's values under the command line's (None: no command given)."""
    parser, parsers = build_parser()
    args = parse_command_line(parser, parsers, argv)
    if args is None:
        parser.print_help()
    return args


@contextlib.contextmanager
def _logging_for(verbosity: int) -> Iterator[None]:
    """The toolkit's own messages as plain lines on stderr while a command runs: INFO and up by default; other
    libraries' are theirs. Put back as they were afterwards, so a caller of `main` in the same process (a
    notebook, a test) keeps its own logging."""
    package = logging.getLogger("dynamicid")
    level, handlers = package.level, list(package.handlers)
    if not handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        package.addHandler(handler)
    package.setLevel({-1: logging.WARNING, 0: logging.INFO}.get(max(-1, verbosity), logging.DEBUG))
    try:
        yield
    finally:
        package.setLevel(level)
        package.handlers[:] = handlers


def _quiet_libraries(quiet: bool, progress: bool) -> None:
    """-q or --no-progress reach the libraries too: no weight-loading bars (transformers, diffusers, the Hub)
    without progress; no advice about optional packages (torchvision) under -q (sparkenv keeps the Spark
    banner off the terminal then). Set as
    environment variables before the libraries load (they are imported late), and through their own switches
    when they are loaded already."""
    if not progress or quiet:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        for module in ("transformers.utils.logging", "diffusers.utils.logging"):
            if module in sys.modules:
                sys.modules[module].disable_progress_bar()
    if quiet:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        for name in ("transformers", "diffusers", "huggingface_hub", "py4j"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _save_traceback() -> str:
    import tempfile
    import traceback

    with tempfile.NamedTemporaryFile("w", prefix="dynamicid-error-", suffix=".txt", delete=False) as handle:
        traceback.print_exc(file=handle)
        return handle.name


def main(argv: list[str] | None = None) -> int:
    name = "dynamicid"
    try:
        args = parse(argv)
        if args is None:
            return EXIT_USAGE
        name = f"dynamicid {args.command_name}"
        _quiet_libraries(getattr(args, "quiet", 0) > 0, getattr(args, "progress", True))
        with _logging_for(getattr(args, "verbose", 0) - getattr(args, "quiet", 0)), os_errors_reported():
            return args.command.run(args)
    except DynamicIDError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # a bug: one paragraph for the user, the traceback in a file for the report
        print(
            f"{name}: internal error: {type(err).__name__}: {err}. This is a bug in dynamicid; the traceback "
            f"is in {_save_traceback()}; please attach it to a bug report.",
            file=sys.stderr,
        )
        return EXIT_BUG


if __name__ == "__main__":  # also the entry for spark-submit
    sys.exit(main())
