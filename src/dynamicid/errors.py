"""The one error family. Every problem the toolkit reports to a user is a `DynamicIDError`, whose text is
the whole message: what is wrong, where (file, field, option) and how to fix it. The command line prints
that text, never a traceback."""

from __future__ import annotations

import contextlib


class DynamicIDError(Exception):
    """Root of every error the toolkit raises on purpose."""


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first line (library messages run long), or its type's name when it
    has none: what a one-paragraph error can quote of a cause."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class ConfigError(DynamicIDError, ValueError):
    """Bad configuration: a setting that cannot work, found before any work starts."""


class InputError(DynamicIDError, ValueError):
    """Bad input: a photo, a data folder, a request or a file the user gave that cannot be used."""


class ModelError(DynamicIDError, RuntimeError):
    """A model problem: weights missing, damaged or not shaped like the model, or a backend that cannot load."""


class SetupError(DynamicIDError, RuntimeError):
    """The machine lacks something the command needs (Java, a package, a writable folder)."""


class TrainingError(DynamicIDError, FloatingPointError):
    """Training cannot go on (the loss became NaN or infinite)."""


class EnvironmentProblem(DynamicIDError, OSError):
    """An operating-system error (disk full, permission denied) met while working, reported as it is."""


@contextlib.contextmanager
def os_errors_reported():
    """Inside: an operating-system error (a full disk, a folder that cannot be written) leaves as an
    EnvironmentProblem that names the file, so the command line reports it like any other DynamicIDError."""
    try:
        yield
    except DynamicIDError:
        raise
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        raise EnvironmentProblem(
            f"{err.strerror or first_line(err)}{where}; free the space or fix the "
            "permissions, then rerun the same command"
        ) from err


# The exit codes of the `dynamicid` command, documented in the README.
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 70, 130
