"""The one error family. Every problem the toolkit reports to a user is a `DynamicIDError`, whose text is
the whole message: what is wrong, where (file, field, option) and how to fix it. The command line prints
that text, never a traceback."""

from __future__ import annotations


class DynamicIDError(Exception):
    """Root of every error the toolkit raises on purpose."""


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first line (library messages run long), or its type's name when it
    has none: what a one-paragraph error can quote of a cause."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class ConfigError(DynamicIDError, ValueError):
    """A setting that cannot work, found before any work starts."""
