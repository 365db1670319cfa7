"""Reading the small text files users write (prompt lists, eval lists): UTF-8, and a file that is not says
which line, as one sentence, never a traceback."""

from __future__ import annotations

from dynamicid.errors import DynamicIDError, InputError


def read_utf8(path: str, what: str, error: type[DynamicIDError] = InputError) -> str:
    """The file's text; `error` naming the file, the line and the fix when it is not UTF-8 or cannot be read."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise error(f"{what} {path}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise error(
            f"{what} {path}, line {line}: the text is not UTF-8 ({err.reason} at byte {err.start}); save it as UTF-8"
        ) from None
